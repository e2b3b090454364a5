"""What the post-hoc builders share: member 0 loading, config checks, a plain training loop, BN recalibration and the
run writer (the `hf_starsse.run_folder` layout, atomic member folders, the index rebuilt from them)."""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.utils.data import DataLoader
from transformers import AutoConfig, PreTrainedModel, default_data_collator

from .. import __version__
from ..bn_recalibration import has_batchnorm, recalibrate_batchnorm
from ..file_utils import atomic_directory, atomic_write_json, crash_point
from ..manifest import EnsembleManifest, MemberRecord
from ..run_folder import MEMBER_INFO_NAME, RunFolder
from ..seeds import member_data_seed

logger = logging.getLogger(__name__)

# files of a member folder that `save_pretrained` writes itself (or that are ours): never copied from member 0
_MODEL_FILES = ("config.json", "generation_config.json", MEMBER_INFO_NAME)
_MODEL_SUFFIXES = (".safetensors", ".bin", ".index.json", ".pt", ".pth")


@dataclass
class PosthocConfig:
    """Settings every post-hoc builder shares.

    Args:
        num_members (`int`, *optional*, defaults to 5):
            Members of the written ensemble.
        learning_rate (`float`, *optional*, defaults to 0.01):
            Peak learning rate of the builder's SGD.
        batch_size (`int`, *optional*, defaults to 32):
            Training batch size.
        momentum (`float`, *optional*, defaults to 0.9):
            SGD momentum.
        weight_decay (`float`, *optional*, defaults to 0.0):
            SGD weight decay.
        max_grad_norm (`float`, *optional*):
            Gradient clipping norm; no clipping when `None`.
        seed (`int`, *optional*, defaults to 0):
            Seeds the data order, the noise and the samples: the same seed gives the same members.
        bn_recalibration_batches (`int`, *optional*):
            Batches of the training data used to recompute BatchNorm statistics of averaged / sampled weights; a full
            pass when `None`. Ignored for models without BatchNorm.
    """

    num_members: int = 5
    learning_rate: float = 0.01
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    seed: int = 0
    bn_recalibration_batches: int | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check the settings; raises `ValueError` naming the first bad field."""
        _check(self.num_members >= 1, "num_members", self.num_members, "should be >= 1")
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "should be positive")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "should be >= 1")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "should be in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "should be >= 0")
        if self.max_grad_norm is not None:
            _check(self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm, "should be positive or None")
        if self.bn_recalibration_batches is not None:
            _check(
                self.bn_recalibration_batches >= 1,
                "bn_recalibration_batches",
                self.bn_recalibration_batches,
                "should be >= 1 or None",
            )

    def steps_per_epoch(self, dataset_size: int) -> int:
        """Optimizer steps in one pass over `dataset_size` examples."""
        return math.ceil(dataset_size / self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(ok: bool, name: str, value: Any, requirement: str) -> None:
    if not ok:
        raise ValueError(f"`{name}` {requirement}, got {value!r}.")


def steps_from(
    steps: int | None, epochs: float | None, steps_name: str, epochs_name: str, steps_per_epoch: int
) -> int:
    """Resolve a length given either in steps or in epochs (exactly one) to optimizer steps."""
    if (steps is None) == (epochs is None):
        raise ValueError(f"Give exactly one of `{steps_name}` and `{epochs_name}`, got {steps!r} and {epochs!r}.")
    if steps is not None:
        return int(steps)
    _check(epochs > 0, epochs_name, epochs, "should be positive")
    return max(1, round(epochs * steps_per_epoch))


# ----- member 0 -----------------------------------------------------------------------------------------------------
def load_member0(member0: str | os.PathLike | PreTrainedModel) -> tuple[PreTrainedModel, Path | None, str]:
    """Load the starting model.

    Args:
        member0 (`str`, `os.PathLike` or `PreTrainedModel`):
            A `save_pretrained` folder, a run folder (its member 0 is used) or a model.

    Returns:
        `(model, folder or None, name)`.
    """
    if isinstance(member0, PreTrainedModel):
        name = getattr(member0.config, "_name_or_path", "") or type(member0).__name__
        return member0, None, name
    path = Path(member0)
    if RunFolder(path).exists() and not (path / "config.json").is_file():
        path = RunFolder(path).member_paths(RunFolder(path).read_manifest())[0]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"`member0`: no `save_pretrained` folder (config.json) at {path}.")
    config = AutoConfig.from_pretrained(path)
    architecture = (config.architectures or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None:
        raise ValueError(f"`member0`: {path / 'config.json'} names no transformers architecture ({architecture!r}).")
    return model_class.from_pretrained(path), path, str(member0)


# ----- data and training ---------------------------------------------------------------------------------------------
def batches(
    dataset, batch_size: int, seed: int, device: torch.device, collate_fn: Callable | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled dict batches, moved to `device`: one generator seeded `member_data_seed(seed, 0)` draws a new
    order every epoch (the trajectory continues member 0; its data stream stays apart from the run's other streams).

    Every batch is full when the dataset holds at least one (the partial last batch of an epoch is dropped: train-mode
    BatchNorm over a few samples corrupts the running statistics, e.g. 4 of 100 images at batch 16)."""
    generator = torch.Generator().manual_seed(member_data_seed(seed, 0))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=collate_fn or default_data_collator,
        drop_last=len(dataset) >= batch_size,
    )
    if len(loader) == 0:
        raise ValueError("`train_dataset` is empty.")
    while True:
        for batch in loader:
            yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def make_optimizer(params, config: PosthocConfig) -> torch.optim.SGD:
    """SGD with the config's momentum and weight decay (its LR is set at every step by the loop)."""
    return torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay)


def train_steps(
    model: torch.nn.Module,
    batch_iter: Iterator[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    num_steps: int,
    *,
    max_grad_norm: float | None = None,
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None,
    after_step: Callable[[int, float, float], None] | None = None,
    desc: str | None = None,
) -> list[float]:
    """A plain training loop: at step `t` the LR is `lr_at(t)`, the loss `model(**batch).loss` (or `loss_fn`).

    `after_step(t, lr, loss)` runs after each optimizer step (snapshots, noise, moment collection). Returns the losses.
    `desc` names the phase on a tqdm progress bar (no bar when `None`).
    """
    losses = []
    model.train()
    steps = range(num_steps)
    if desc is not None:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=desc, unit="step", dynamic_ncols=True)
    for step in steps:
        lr = float(lr_at(step))
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = next(batch_iter)
        loss = loss_fn(model, batch) if loss_fn is not None else model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], max_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(step, lr, losses[-1])
    return losses


# ----- BatchNorm -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def _recalibrate_bn(model: torch.nn.Module, dataset, batch_size: int, num_batches: int | None = None) -> bool:
    """`hf_starsse.bn_recalibration.recalibrate_batchnorm` over `dataset` (in order); returns whether the model has
    BatchNorm layers."""
    if not has_batchnorm(model):
        return False
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=default_data_collator)
    recalibrate_batchnorm(model, loader, num_batches=num_batches)
    return True


# ----- flat parameter vectors ----------------------------------------------------------------------------------------
def trainable_names(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def flat_params(model: torch.nn.Module, names: list[str]) -> torch.Tensor:
    """The named parameters as one float32 CPU vector."""
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1).float().cpu() for n in names])


@torch.no_grad()
def load_flat_params(model: torch.nn.Module, names: list[str], vector: torch.Tensor) -> None:
    """Write a flat vector (as returned by `flat_params`) back into the named parameters."""
    params = dict(model.named_parameters())
    offset = 0
    for n in names:
        p = params[n]
        p.copy_(vector[offset : offset + p.numel()].view_as(p).to(p.dtype))
        offset += p.numel()
    if offset != vector.numel():
        raise ValueError(f"The vector has {vector.numel()} values, the parameters {offset}.")


# ----- the run folder ------------------------------------------------------------------------------------------------
def log_member_saved(method: str, index: int, num_members: int, metrics: dict[str, Any]) -> None:
    """`[hf_starsse] fge member-2 of 5 saved: ...`, the trainer's member line (numbered like the folders)."""
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and k != "process_index"}
    details = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
    message = f"[hf_starsse] {method} member-{index} of {num_members} saved" + (f": {details}" if details else "")
    logger.info(message)
    print(message, flush=True)


def log_phase(method: str, message: str) -> None:
    """`[hf_starsse] laplace: fitting ...`: one line per phase without a progress bar of its own."""
    logger.info(f"{method}: {message}")
    print(f"[hf_starsse] {method}: {message}", flush=True)


class RunWriter:
    """Writes a run folder member by member, in the layout of `hf_starsse.run_folder`.

    Refuses (before any training) an `output_dir` that already holds a manifest or members, so finished runs are never
    overwritten. Each member folder appears atomically, then the manifest is rewritten atomically.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        strategy: str,
        config: PosthocConfig,
        base_model: str,
        source_dir: Path | None,
        extra_hyperparameters: dict[str, Any] | None = None,
    ):
        self.run_dir = Path(output_dir)
        self.run = RunFolder(self.run_dir)
        if self.run.exists() or (self.run.members_dir.is_dir() and any(self.run.members_dir.iterdir())):
            raise FileExistsError(
                f"`output_dir` {self.run_dir} already holds a run; choose an empty folder (finished runs are never "
                "overwritten)."
            )
        self.source_dir = source_dir
        self.base_model = base_model
        self.data_seed = member_data_seed(config.seed, 0)  # the order `batches(..., config.seed, ...)` draws
        hyperparameters = {"method": strategy, **config.to_dict(), **(extra_hyperparameters or {})}
        self.manifest = EnsembleManifest(
            strategy=strategy,
            num_members=config.num_members,
            hyperparameters=hyperparameters,
            base_models=[base_model],
            library_version=__version__,
        )

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run.write_manifest(self.manifest)

    def save_member(
        self,
        model: PreTrainedModel,
        *,
        seed: int,
        learning_rate: float = 0.0,
        num_steps: int = 0,
        num_epochs: float = 0.0,
        schedule_offset: int = 0,
        metrics: dict[str, Any] | None = None,
    ) -> MemberRecord:
        """Save `model` as the next member (`init_from`: the member 0 it was built from; no parent in this run)."""
        index = len(self.manifest.members)
        record = MemberRecord(
            index=index,
            path=self.run.member_relpath(index),
            seed=seed,
            data_seed=self.data_seed,
            parent=None,
            init_from=self.base_model,
            learning_rate=float(learning_rate),
            num_steps=int(num_steps),
            num_epochs=float(num_epochs),
            schedule_offset=int(schedule_offset),
            metrics=dict(metrics or {}),
        )
        with atomic_directory(self.run.member_dir(index)) as tmp:
            model.save_pretrained(tmp)
            self._copy_processor_files(tmp)
            atomic_write_json(tmp / MEMBER_INFO_NAME, record.to_dict())
        crash_point("member_renamed")
        self.manifest = self.run.rebuild_index(self.manifest)
        log_member_saved(self.manifest.strategy, index, self.manifest.num_members, record.metrics)
        return record

    def _copy_processor_files(self, folder: Path) -> None:
        if self.source_dir is None:
            return
        for f in self.source_dir.iterdir():
            if f.is_file() and f.name not in _MODEL_FILES and not f.name.endswith(_MODEL_SUFFIXES):
                if not (folder / f.name).exists():
                    shutil.copy2(f, folder / f.name)


@dataclass
class BuildOutput:
    """What a post-hoc builder returns.

    Args:
        run_dir (`Path`): The written run folder.
        manifest (`EnsembleManifest`): Its manifest.
        details (`dict`): Method-specific results (SWAG moments, cSGLD step trace, SPRO vertices, the Laplace object).
    """

    run_dir: Path
    manifest: EnsembleManifest
    details: dict[str, Any] = field(default_factory=dict)
