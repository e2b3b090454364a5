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

from .manifest import EnsembleManifest
from .run_folder import MANIFEST_NAME, RunFolder, check_member_relpath, validate_manifest_data

ENSEMBLE_MODEL_TYPE = "hf_starsse_ensemble"
# Keyword arguments of `from_pretrained` that locate files on the Hub, forwarded to every download.
_HUB_KWARGS = ("revision", "cache_dir", "force_download", "local_files_only", "token", "proxies")


def member_probs(models: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Softmax probabilities `(K, B, C)` (float32) of each of the K models on one batch of keyword `inputs`.

    The one place where an ensemble's members turn a batch into probabilities: [`EnsembleForImageClassification`]
    averages them, and the evaluation [`hf_starsse.ensemble.Ensemble`] keeps them per member for its metrics.
    """
    probs = []
    for model in models:
        out = model(**inputs)
        logits = out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)
        probs.append(torch.softmax(logits.float(), dim=-1))
    return torch.stack(probs)


def average_probs(models: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The ensemble's prediction on one batch: the mean of the models' softmax probabilities `(B, C)`."""
    return member_probs(models, inputs).mean(dim=0)


def check_same_labels(models: Any) -> None:
    """Raise a one-line `ValueError` when the models do not all predict the same number of classes."""
    counts = [getattr(getattr(m, "config", None), "num_labels", None) for m in models]
    for i, count in enumerate(counts[1:], start=1):
        if count != counts[0]:
            raise ValueError(
                f"Member {i} has {count} labels, member 0 has {counts[0]}: an ensemble averages probabilities over "
                "the same labels."
            )


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
        probs = average_probs(self.members, {"pixel_values": pixel_values})
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
        check_same_labels(members)
        first = members[0].config
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
        found = _manifest_and_member_locations(pretrained_model_name_or_path, subfolder, hub_kwargs)
        if found is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, subfolder=subfolder, **kwargs)
        manifest, locations = found
        if not manifest.members:
            raise ValueError(f"The ensemble manifest of {pretrained_model_name_or_path} lists no finished member.")
        members = [
            AutoModelForImageClassification.from_pretrained(where, *model_args, subfolder=sub, **kwargs)
            for where, sub in locations
        ]
        subfolders = [_join(subfolder, m.path) for m in manifest.members]
        model = cls.from_members(members, strategy=manifest.strategy, subfolders=subfolders)
        model.config._name_or_path = str(pretrained_model_name_or_path)
        try:
            where, sub = locations[0]
            model.image_processor = AutoImageProcessor.from_pretrained(where, subfolder=sub, **hub_kwargs)
        except (OSError, ValueError):
            model.image_processor = None
        return model


def _manifest_and_member_locations(
    name_or_path: str | os.PathLike, subfolder: str, hub_kwargs: dict[str, Any]
) -> tuple[EnsembleManifest, list[tuple[str, str]]] | None:
    """The checked manifest of a run folder or Hub repo and, per member, `(folder or repo, subfolder)` to load it from;
    `None` when there is no `ensemble.json` (a `save_pretrained` folder or repo)."""
    local = Path(name_or_path) / subfolder
    if local.is_dir():
        if not (local / MANIFEST_NAME).is_file():
            return None
        run = RunFolder(local)
        manifest = run.read_manifest()  # schema checked, member paths resolved inside the run (no links out)
        return manifest, [(str(path), "") for path in run.member_paths(manifest)]
    manifest_file = _find_file(name_or_path, _join(subfolder, MANIFEST_NAME), hub_kwargs)
    if manifest_file is None:
        return None
    manifest = _read_remote_manifest(manifest_file, f"{name_or_path}/{_join(subfolder, MANIFEST_NAME)}")
    return manifest, [(str(name_or_path), _join(subfolder, m.path)) for m in manifest.members]


def _read_remote_manifest(path: str, name: str) -> EnsembleManifest:
    """A downloaded `ensemble.json`: the schema and every member path checked (relative, `members/member-<i>`)."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"The ensemble manifest {name} is not valid JSON: {err}") from None
    validate_manifest_data(data, Path(name))
    manifest = EnsembleManifest.from_dict(data)
    for position, record in enumerate(manifest.members):
        record.path = check_member_relpath(record.path, f"{name} members[{position}].path")
    return manifest


def _join(subfolder: str, name: str) -> str:
    return f"{subfolder.strip('/')}/{name}" if subfolder else name


def _find_file(name_or_path: str | os.PathLike, filename: str, hub_kwargs: dict[str, Any]) -> str | None:
    """Path of `filename` downloaded from a Hub repo; `None` when it is not there."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return hf_hub_download(str(name_or_path), filename, **hub_kwargs)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None


AutoConfig.register(ENSEMBLE_MODEL_TYPE, EnsembleConfig, exist_ok=True)
AutoModelForImageClassification.register(EnsembleConfig, EnsembleForImageClassification, exist_ok=True)
