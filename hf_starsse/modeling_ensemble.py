"""An ensemble of image classifiers as one `PreTrainedModel`: averaged softmax probabilities, `pipeline`-ready.

```python
from transformers import pipeline
from hf_starsse.modeling_ensemble import EnsembleForImageClassification

ensemble = EnsembleForImageClassification.from_pretrained("user/my-star-sse-run")  # a Hub repo or a run folder
classifier = pipeline("image-classification", model=ensemble, image_processor=ensemble.image_processor)
```

`from_pretrained` accepts an `hf_starsse` run folder or a repository pushed by `hf_starsse.hub.push_to_hub` (both
hold `ensemble.json` and `members/member-<i>/`), and also a folder written by `EnsembleForImageClassification.
save_pretrained` (a `config.json` of model type `hf_starsse_ensemble` + one safetensors file with every member), which
`AutoModelForImageClassification` and `pipeline("image-classification", model=folder)` load once this module is
imported (it registers `EnsembleConfig` / `EnsembleForImageClassification` with the Auto classes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import ImageClassifierOutput

from .manifest import MANIFEST_NAME, EnsembleManifest

ENSEMBLE_MODEL_TYPE = "hf_starsse_ensemble"
# Keyword arguments of `from_pretrained` that locate files on the Hub, forwarded to every download.
_HUB_KWARGS = ("revision", "cache_dir", "force_download", "local_files_only", "token", "proxies")


class EnsembleConfig(PreTrainedConfig):
    r"""
    Configuration of [`EnsembleForImageClassification`]: the members' own configurations plus the labels they share.

    Args:
        member_configs (`list[dict]`, *optional*):
            The `to_dict()` of each member's configuration (any `AutoModelForImageClassification` model).
        strategy (`str`, *optional*):
            The ensemble strategy that produced the members (`local_de`, `global_de`, `sse`, `star_sse`).
        member_subfolders (`list[str]`, *optional*):
            Where each member lives in the repository or run folder it was loaded from (informative).
    """

    model_type = ENSEMBLE_MODEL_TYPE

    member_configs: list[dict] | None = None
    strategy: str | None = None
    member_subfolders: list[str] | None = None

    @property
    def num_members(self) -> int:
        return len(self.member_configs or [])


class EnsembleForImageClassification(PreTrainedModel):
    """Holds K image classifiers and predicts the mean of their softmax probabilities.

    The output `logits` are the log of the averaged probabilities, so the `softmax` that `pipeline` (or any caller)
    applies gives back exactly the ensemble's probabilities, also exposed on the output as `probs`. With `labels`,
    `loss` is the NLL of the averaged probabilities.
    """

    config_class = EnsembleConfig
    base_model_prefix = "ensemble"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = []

    def __init__(self, config: EnsembleConfig, members: list[PreTrainedModel] | None = None):
        super().__init__(config)
        if members is None:
            if not config.member_configs:
                raise ValueError("`member_configs` of the EnsembleConfig should list at least one member, got none.")
            members = [
                AutoModelForImageClassification.from_config(AutoConfig.for_model(**dict(member_config)))
                for member_config in config.member_configs
            ]
        if not members:
            raise ValueError("`members` should hold at least one model, got none.")
        self.members = nn.ModuleList(members)
        self.image_processor = None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Members are complete models initialised (or loaded) by their own classes: never re-initialise them here.
        pass

    @property
    def num_members(self) -> int:
        return len(self.members)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ImageClassifierOutput:
        probs = None
        for member in self.members:
            logits = member(pixel_values=pixel_values).logits.float()
            p = logits.softmax(dim=-1)
            probs = p if probs is None else probs + p
        probs = probs / len(self.members)
        log_probs = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        loss = nn.functional.nll_loss(log_probs, labels.to(log_probs.device)) if labels is not None else None
        output = ImageClassifierOutput(loss=loss, logits=log_probs)
        output["probs"] = probs
        return output

    @classmethod
    def from_members(
        cls, members: list[PreTrainedModel], strategy: str | None = None, subfolders: list[str] | None = None
    ) -> EnsembleForImageClassification:
        """Wrap already loaded members (all classifying over the same labels)."""
        if not members:
            raise ValueError("`members` should hold at least one model, got none.")
        first = members[0].config
        for i, member in enumerate(members[1:], start=1):
            if member.config.num_labels != first.num_labels:
                raise ValueError(
                    f"Member {i} has {member.config.num_labels} labels, member 0 has {first.num_labels}: an ensemble "
                    "averages probabilities over the same labels."
                )
        config = EnsembleConfig(
            member_configs=[m.config.to_dict() for m in members],
            strategy=strategy,
            member_subfolders=subfolders,
            id2label=dict(first.id2label),
            label2id=dict(first.label2id),
        )
        model = cls(config, members=members)
        return model.eval()

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any
    ) -> EnsembleForImageClassification:
        """Load an ensemble from an `hf_starsse` run folder, a repository pushed by `push_to_hub`, or a folder / repo
        written by `save_pretrained`.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A run folder, a local folder, or a Hub repo id.
            revision (`str`, *optional*):
                Branch, tag or commit of the Hub repository (every member is read from that same revision).
            kwargs (*optional*):
                `cache_dir`, `token`, `local_files_only`, `force_download`, `proxies` are forwarded to every download;
                `dtype`, `device_map`, ... to each member's `from_pretrained`.
        """
        hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
        subfolder = kwargs.pop("subfolder", "") or ""
        manifest_file = _find_file(pretrained_model_name_or_path, _join(subfolder, MANIFEST_NAME), hub_kwargs)
        if manifest_file is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, subfolder=subfolder, **kwargs)
        manifest = _load_manifest(pretrained_model_name_or_path, manifest_file)
        if not manifest.members:
            raise ValueError(f"The ensemble manifest {manifest_file} lists no finished member.")
        members, subfolders = [], []
        for record in manifest.members:
            member_subfolder = _join(subfolder, Path(record.path).as_posix())
            subfolders.append(member_subfolder)
            members.append(
                AutoModelForImageClassification.from_pretrained(
                    pretrained_model_name_or_path, *model_args, subfolder=member_subfolder, **kwargs
                )
            )
        model = cls.from_members(members, strategy=manifest.strategy, subfolders=subfolders)
        model.config._name_or_path = str(pretrained_model_name_or_path)
        try:
            model.image_processor = AutoImageProcessor.from_pretrained(
                pretrained_model_name_or_path, subfolder=subfolders[0], **hub_kwargs
            )
        except (OSError, ValueError):
            model.image_processor = None
        return model


def _load_manifest(name_or_path: str | os.PathLike, manifest_file: str) -> EnsembleManifest:
    """A run folder's manifest is checked against its member folders; a downloaded one (only `ensemble.json` is in
    the Hub cache at this point) is checked for its schema and member paths, whose files are downloaded next."""
    if Path(name_or_path).is_dir():
        return EnsembleManifest.load(manifest_file)
    import json

    from .run_folder import MEMBER_PREFIX, MEMBERS_DIR, validate_manifest_data

    data = json.loads(Path(manifest_file).read_text(encoding="utf-8"))
    validate_manifest_data(data, Path(manifest_file))
    manifest = EnsembleManifest.from_dict(data)
    for record in manifest.members:
        parts = Path(record.path).parts
        if len(parts) != 2 or parts[0] != MEMBERS_DIR or not parts[1].startswith(MEMBER_PREFIX):
            raise ValueError(
                f"{manifest_file}: member path {record.path!r} should be `{MEMBERS_DIR}/{MEMBER_PREFIX}<i>`."
            )
    return manifest


def _join(subfolder: str, name: str) -> str:
    return f"{subfolder.strip('/')}/{name}" if subfolder else name


def _find_file(name_or_path: str | os.PathLike, filename: str, hub_kwargs: dict[str, Any]) -> str | None:
    """Path of `filename` in a local folder or (downloaded from) a Hub repo; `None` when it is not there."""
    local = Path(name_or_path)
    if local.is_dir():
        return str(local / filename) if (local / filename).is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(str(name_or_path), filename, **hub_kwargs)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


AutoConfig.register(ENSEMBLE_MODEL_TYPE, EnsembleConfig, exist_ok=True)
AutoModelForImageClassification.register(EnsembleConfig, EnsembleForImageClassification, exist_ok=True)
