"""One loader for the paper's model families: transformers ResNet / ViT / Swin, CLIP image towers (with an optional
zero-shot head) and timm checkpoints (through transformers' `TimmWrapper`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    PreTrainedModel,
)

from .modeling_clip_classifier import CLIPVisionForImageClassification

MODEL_FAMILIES = ("auto", "resnet", "vit", "swin", "clip", "timm")

# The 7 prompt templates OpenAI selected from its 80 ImageNet templates (CLIP's "prompt ensembling" notebook).
DEFAULT_PROMPT_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


def load_classifier(
    name_or_path: str,
    num_labels: int,
    id2label: dict[int, str] | None = None,
    label2id: dict[str, int] | None = None,
    *,
    family: str | None = None,
    clip_zero_shot_class_names: Sequence[str] | None = None,
    prompt_templates: Sequence[str] | None = None,
    config_overrides: dict | None = None,
    **kwargs,
) -> PreTrainedModel:
    """Load an image classifier with a `num_labels`-way head from a Hub id or a local folder.

    A fresh head is created when the checkpoint's label count differs (its init follows the torch RNG state, which
    `EnsembleTrainer` seeds with the member's seed before calling `model_init`).

    Args:
        name_or_path (`str`):
            Hub repo id (`microsoft/resnet-50`, `openai/clip-vit-base-patch32`, `timm/resnet50.a1_in1k`) or folder.
        num_labels (`int`):
            Number of classes of the target task.
        id2label (`dict[int, str]`, *optional*):
            Class names; defaults to `"0"`, `"1"`, ....
        label2id (`dict[str, int]`, *optional*):
            Inverse of `id2label`.
        family (`str`, *optional*):
            One of `auto`, `resnet`, `vit`, `swin`, `clip`, `timm`; detected from the config when not given.
        clip_zero_shot_class_names (`list[str]`, *optional*):
            CLIP only: initialise the head as a zero-shot classifier from the text tower's embeddings of
            `prompt_templates` filled with these class names.
        prompt_templates (`list[str]`, *optional*):
            Templates with one `{}`; defaults to [`DEFAULT_PROMPT_TEMPLATES`].
        config_overrides (`dict`, *optional*):
            Config attributes to set (e.g. `{"drop_path_rate": 0.1}` for Swin).
        kwargs:
            Passed to `from_pretrained` (`revision`, `cache_dir`, `torch_dtype`, ...).
    """
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"`num_labels` should be a positive integer, got {num_labels!r}.")
    if id2label is None:
        id2label = {i: str(i) for i in range(num_labels)}
    id2label = {int(k): str(v) for k, v in id2label.items()}
    if len(id2label) != num_labels:
        raise ValueError(f"`id2label` should name {num_labels} classes, got {len(id2label)}.")
    label2id = label2id or {v: k for k, v in id2label.items()}
    config_overrides = dict(config_overrides or {})
    config = _load_config(name_or_path, **kwargs)
    family = family or detect_family(config)
    if family not in MODEL_FAMILIES:
        raise ValueError(f"`family` should be one of {', '.join(MODEL_FAMILIES)}, got {family!r}.")
    if family == "clip" and isinstance(config, CLIPConfig | CLIPVisionConfig):
        return _load_clip(
            name_or_path,
            config,
            num_labels,
            id2label,
            label2id,
            clip_zero_shot_class_names,
            prompt_templates,
            config_overrides,
            **kwargs,
        )
    if clip_zero_shot_class_names:
        raise ValueError(f"`clip_zero_shot_class_names` needs a CLIP checkpoint; {name_or_path!r} is {family!r}.")
    if family == "timm":
        # timm's own `save_for_hf` folders repeat `num_classes` in `model_args`, which clashes with the new head size
        config = AutoConfig.from_pretrained(
            name_or_path, num_labels=num_labels, id2label=id2label, label2id=label2id, **_hub_kwargs(kwargs)
        )
        config.model_args = {k: v for k, v in (config.model_args or {}).items() if k != "num_classes"} or None
        for key, value in config_overrides.items():
            setattr(config, key, value)
        return AutoModelForImageClassification.from_pretrained(
            name_or_path, config=config, ignore_mismatched_sizes=True, **kwargs
        )
    return AutoModelForImageClassification.from_pretrained(
        name_or_path,
        num_labels=num_labels,
        id2label=id2label,
        label2id=label2id,
        ignore_mismatched_sizes=True,
        **config_overrides,
        **kwargs,
    )


def make_model_init(name_or_path: str, num_labels: int, **kwargs) -> functools.partial:
    """A picklable zero-argument `model_init` for `EnsembleTrainer` (same arguments as [`load_classifier`])."""
    return functools.partial(load_classifier, name_or_path, num_labels, **kwargs)


def load_global_de_member(checkpoint: str, num_labels: int, **kwargs) -> PreTrainedModel:
    """Global DE `model_init(checkpoint)`: bind everything but the checkpoint with `functools.partial`."""
    return load_classifier(checkpoint, num_labels, **kwargs)


def detect_family(config) -> str:
    """The loader family of a config (`resnet`, `vit`, `swin`, `clip`, `timm` or `auto`)."""
    model_type = getattr(config, "model_type", "")
    if model_type in ("clip", "clip_vision_model"):
        return "clip"
    if model_type == "timm_wrapper":
        return "timm"
    return model_type if model_type in ("resnet", "vit", "swin") else "auto"


def _load_config(name_or_path: str, **kwargs):
    try:
        return AutoConfig.from_pretrained(name_or_path, **_hub_kwargs(kwargs))
    except (OSError, ValueError) as err:
        where = "folder" if os.path.isdir(name_or_path) else "Hub model"
        offline = " (offline: HF_HUB_OFFLINE is set and it is not in the cache)" if _offline() else ""
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Cannot load model {name_or_path!r}: no such {where}{offline}. {first_line}") from None


def _hub_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k in ("revision", "cache_dir", "token", "local_files_only")}


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


# ----- CLIP ------------------------------------------------------------------------------------------------------
def _load_clip(
    name_or_path, config, num_labels, id2label, label2id, class_names, templates, config_overrides, **kwargs
) -> PreTrainedModel:
    if isinstance(config, CLIPVisionConfig):  # an already fine-tuned classifier (e.g. a member)
        if class_names:
            raise ValueError(f"{name_or_path!r} has no text tower: `clip_zero_shot_class_names` needs a full CLIP.")
        return CLIPVisionForImageClassification.from_pretrained(
            name_or_path,
            num_labels=num_labels,
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,
            **config_overrides,
            **kwargs,
        )
    clip = CLIPModel.from_pretrained(name_or_path, **kwargs)
    vision_config = CLIPVisionConfig(
        **{**config.vision_config.to_dict(), "projection_dim": config.projection_dim, **config_overrides},
    )
    vision_config.num_labels = num_labels
    vision_config.id2label, vision_config.label2id = id2label, label2id
    vision_config._name_or_path = name_or_path
    model = CLIPVisionForImageClassification(vision_config)
    model.vision_model.load_state_dict(clip.vision_model.state_dict())
    model.visual_projection.load_state_dict(clip.visual_projection.state_dict())
    if class_names:
        if len(class_names) != num_labels:
            raise ValueError(f"`clip_zero_shot_class_names` should name {num_labels} classes, got {len(class_names)}.")
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **_hub_kwargs(kwargs))
        weight = zero_shot_head_weights(clip, tokenizer, class_names, templates)
        with torch.no_grad():
            model.classifier.weight.copy_(weight)
            model.classifier.bias.zero_()
    model.to(clip.dtype)
    return model


@torch.no_grad()
def zero_shot_head_weights(
    clip: CLIPModel, tokenizer, class_names: Sequence[str], templates: Sequence[str] | None = None
) -> torch.Tensor:
    """model-soups' `zeroshot_classifier`: per class, the mean of the normalised text embeddings of the prompts,
    renormalised, times `exp(logit_scale)`. Returns a `(num_classes, projection_dim)` head weight.

    Args:
        clip (`CLIPModel`): The full CLIP model (text tower used).
        tokenizer: Its tokenizer.
        class_names (`list[str]`): One name per class, in label order.
        templates (`list[str]`, *optional*): Prompt templates with one `{}`; defaults to [`DEFAULT_PROMPT_TEMPLATES`].
    """
    templates = list(templates or DEFAULT_PROMPT_TEMPLATES)
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"`prompt_templates` should each hold one `{{}}`, got {bad[0]!r}.")
    was_training = clip.training
    clip.eval()
    rows = []
    for name in class_names:
        texts = [t.format(name) for t in templates]
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        embeds = clip.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens.get("attention_mask"))
        embeds = getattr(embeds, "pooler_output", embeds)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        mean = embeds.mean(dim=0)
        rows.append(mean / mean.norm())
    clip.train(was_training)
    return torch.stack(rows) * clip.logit_scale.exp()
