"""SWA and SWAG (Izmailov et al. 2018; Maddox et al. 2019) as a post-hoc builder over a fine-tuned member 0.

From member 0, SGD runs at a constant LR (or along FGE-style triangular cycles) and the trainable weights are collected
`num_snapshots` times (every `collect_every_steps` steps, or at each cycle's low point). The running mean and variance
(Welford's update) and the last `rank` deviations `theta_i - mean_i` are kept on the CPU as flat float32 vectors,
outside the optimizer. SWA is the mean; a SWAG sample is, as in the authors' code,

    theta = mean + sqrt(scale) * (sqrt(var) * z1 + D^T z2 / sqrt(max(K - 1, 1))) / sqrt(2),   z1, z2 ~ N(0, I)

(`covariance="lowrank"`, K = collected deviations) or `theta = mean + sqrt(scale) * sqrt(var) * z1`
(`covariance="diagonal"`, SWAG-Diag). Sample `i` is drawn with its own generator seeded `seed + i`. Models with
BatchNorm get their running statistics recomputed on the training data for the mean and every sample.
"""

from __future__ import annotations

import copy
import json
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from transformers import PreTrainedModel

from ._common import (
    BuildOutput,
    PosthocConfig,
    RunWriter,
    _check,
    _recalibrate_bn,
    batches,
    flat_params,
    has_batchnorm,
    load_flat_params,
    load_member0,
    make_optimizer,
    steps_from,
    train_steps,
    trainable_names,
)
from .fge import fge_learning_rate, is_snapshot_step

SWAG_METHODS = ("swag", "swa")
SWAG_COVARIANCES = ("lowrank", "diagonal")
SWAG_SCHEDULES = ("constant", "cyclic")
MOMENTS_NAME = "swag_moments.safetensors"


@dataclass
class SWAGConfig(PosthocConfig):
    """Settings of SWA / SWAG (all of [`PosthocConfig`] plus the collection and the sampling).

    Args:
        method (`str`, *optional*, defaults to `"swag"`):
            `"swag"`: `num_members` samples of the Gaussian; `"swa"`: one member, the mean (`num_members` must be 1).
        num_snapshots (`int`, *optional*, defaults to 20):
            Weight collections along the trajectory (at least 2).
        collect_every_steps (`int`, *optional*):
            Steps between collections (and cycle length when `schedule="cyclic"`). Give this or
            `collect_every_epochs`.
        collect_every_epochs (`float`, *optional*):
            The same in epochs (the authors collect once per epoch).
        rank (`int`, *optional*, defaults to 20):
            Columns of the low-rank deviation matrix (the last `rank` deviations are kept), at least 1.
        scale (`float`, *optional*, defaults to 0.5):
            Multiplies the covariance of the samples (the authors use 0.5).
        covariance (`str`, *optional*, defaults to `"lowrank"`):
            `"lowrank"` (diagonal + low-rank, SWAG) or `"diagonal"` (SWAG-Diag).
        schedule (`str`, *optional*, defaults to `"constant"`):
            `"constant"` LR (`learning_rate`), or `"cyclic"`: FGE triangular cycles from `learning_rate` down to
            `min_learning_rate`, collecting at each low point.
        min_learning_rate (`float`, *optional*, defaults to 0.0005):
            Low point of the cyclic schedule.
        var_clamp (`float`, *optional*, defaults to 1e-30):
            Lower bound of the diagonal variance (rounding can make `E[x^2] - E[x]^2` negative).
    """

    method: str = "swag"
    num_snapshots: int = 20
    collect_every_steps: int | None = None
    collect_every_epochs: float | None = None
    rank: int = 20
    scale: float = 0.5
    covariance: str = "lowrank"
    schedule: str = "constant"
    min_learning_rate: float = 0.0005
    var_clamp: float = 1e-30

    def validate(self) -> None:
        super().validate()
        _check(self.method in SWAG_METHODS, "method", self.method, f"should be one of {SWAG_METHODS}")
        if self.method == "swa":
            _check(self.num_members == 1, "num_members", self.num_members, "should be 1 for `method='swa'`")
        _check(self.num_snapshots >= 2, "num_snapshots", self.num_snapshots, "should be at least 2")
        _check(self.rank >= 1, "rank", self.rank, "should be at least 1")
        _check(self.scale >= 0, "scale", self.scale, "should be >= 0")
        _check(
            self.covariance in SWAG_COVARIANCES, "covariance", self.covariance, f"should be one of {SWAG_COVARIANCES}"
        )
        _check(self.schedule in SWAG_SCHEDULES, "schedule", self.schedule, f"should be one of {SWAG_SCHEDULES}")
        if self.collect_every_steps is None and self.collect_every_epochs is None:
            raise ValueError("Give the collection interval: `collect_every_steps` or `collect_every_epochs`.")
        if self.collect_every_steps is not None:
            _check(self.collect_every_steps >= 1, "collect_every_steps", self.collect_every_steps, "should be >= 1")
            if self.schedule == "cyclic":
                _check(
                    self.collect_every_steps >= 2,
                    "collect_every_steps",
                    self.collect_every_steps,
                    "should be at least 2 with `schedule='cyclic'` (it is the cycle length)",
                )
        _check(
            0 <= self.min_learning_rate <= self.learning_rate,
            "min_learning_rate",
            self.min_learning_rate,
            f"should be in [0, learning_rate={self.learning_rate}]",
        )
        _check(self.var_clamp >= 0, "var_clamp", self.var_clamp, "should be >= 0")

    def resolve_interval(self, dataset_size: int) -> int:
        per_epoch = self.steps_per_epoch(dataset_size)
        steps = steps_from(
            self.collect_every_steps,
            self.collect_every_epochs,
            "collect_every_steps",
            "collect_every_epochs",
            per_epoch,
        )
        if self.schedule == "cyclic" and steps < 2:
            raise ValueError(
                f"`collect_every_epochs`={self.collect_every_epochs} gives {steps} step per cycle; "
                "`schedule='cyclic'` needs at least 2."
            )
        return steps


class SWAGMoments:
    """Running SWAG moments of flat parameter vectors, on the CPU in float32.

    Args:
        names (`list[str]`): The parameters, in the order of the flat vectors.
        num_params (`int`): Length of the flat vectors.
        rank (`int`): Deviations kept (the most recent).
    """

    def __init__(self, names: list[str], num_params: int, rank: int):
        self.names = list(names)
        self.rank = rank
        self.num_collected = 0
        self.mean = torch.zeros(num_params, dtype=torch.float32)
        self.m2 = torch.zeros(num_params, dtype=torch.float32)  # sum of squared deviations from the running mean
        self.deviations: deque[torch.Tensor] = deque(maxlen=rank)

    def collect(self, vector: torch.Tensor) -> None:
        """Add one snapshot (a flat vector) to the running moments (Welford's update: stable in float32, where the
        authors' `E[x^2] - E[x]^2` loses the small variances of large weights to rounding)."""
        v = vector.detach().to("cpu", torch.float32)
        self.num_collected += 1
        delta = v - self.mean
        self.mean.add_(delta, alpha=1 / self.num_collected)
        deviation = v - self.mean
        self.m2.add_(delta * deviation)
        self.deviations.append(deviation)

    @property
    def sq_mean(self) -> torch.Tensor:
        """The second moment `E[x^2]`."""
        return self.variance(0.0) + self.mean * self.mean

    def variance(self, var_clamp: float = 1e-30) -> torch.Tensor:
        """The diagonal (population) variance of the snapshots, clamped below at `var_clamp`."""
        return torch.clamp(self.m2 / max(self.num_collected, 1), min=var_clamp)

    def deviation_matrix(self) -> torch.Tensor:
        """`D`, `(K, num_params)`: the kept deviations as rows."""
        if not self.deviations:
            return torch.zeros(0, self.mean.numel())
        return torch.stack(list(self.deviations))

    def sample(
        self, seed: int, scale: float = 0.5, covariance: str = "lowrank", var_clamp: float = 1e-30
    ) -> torch.Tensor:
        """One seeded sample (a flat vector); see the module docstring for the formula."""
        generator = torch.Generator().manual_seed(seed)
        std = self.variance(var_clamp).sqrt()
        z1 = torch.randn(self.mean.shape, generator=generator)
        if covariance == "diagonal":
            return self.mean + scale**0.5 * std * z1
        d = self.deviation_matrix()
        z2 = torch.randn(d.shape[0], generator=generator)
        lowrank = d.T @ z2 / max(d.shape[0] - 1, 1) ** 0.5
        return self.mean + scale**0.5 * (std * z1 + lowrank) / 2**0.5

    def sample_variance(
        self, scale: float = 0.5, covariance: str = "lowrank", var_clamp: float = 1e-30
    ) -> torch.Tensor:
        """The exact diagonal variance of `sample` (for checks)."""
        var = self.variance(var_clamp)
        if covariance == "diagonal":
            return scale * var
        d = self.deviation_matrix()
        return scale * (var + (d * d).sum(0) / max(d.shape[0] - 1, 1)) / 2

    def save(self, path: str | os.PathLike) -> None:
        """Write the moments to a safetensors file (through a temporary file and a rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tensors = {"mean": self.mean, "m2": self.m2, "deviations": self.deviation_matrix().contiguous()}
        metadata = {"names": json.dumps(self.names), "rank": str(self.rank), "num_collected": str(self.num_collected)}
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SWAGMoments:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        moments = cls(json.loads(metadata["names"]), tensors["mean"].numel(), int(metadata["rank"]))
        moments.mean, moments.m2 = tensors["mean"], tensors["m2"]
        moments.deviations.extend(tensors["deviations"].unbind(0))
        moments.num_collected = int(metadata["num_collected"])
        return moments


def build_swag(
    member0: str | os.PathLike | PreTrainedModel,
    train_dataset,
    output_dir: str | os.PathLike,
    config: SWAGConfig,
    data_collator=None,
    on_collect=None,
) -> BuildOutput:
    """Collect SWAG moments from member 0's trajectory and write the SWA mean (`method="swa"`) or SWAG samples.

    Args:
        member0 (`str`, `os.PathLike` or `PreTrainedModel`):
            The fine-tuned starting point.
        train_dataset (`Dataset`):
            Training data yielding dict examples.
        output_dir (`str` or `os.PathLike`):
            The new run folder (must not hold a run). The moments are saved there as `swag_moments.safetensors`.
        config ([`SWAGConfig`]):
            The settings.
        data_collator (`Callable`, *optional*):
            Collates examples; `transformers.default_data_collator` when omitted.
        on_collect (`Callable[[int, torch.Tensor], None]`, *optional*):
            Called with `(step, flat_vector)` at every collection.

    Returns:
        [`BuildOutput`] with `details["moments"]` ([`SWAGMoments`]) and `details["interval"]` (steps).
    """
    interval = config.resolve_interval(len(train_dataset))
    model, source, name = load_member0(member0)
    writer = RunWriter(output_dir, config.method, config, name, source, {"resolved_interval_steps": interval})
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    names = trainable_names(model)
    moments = SWAGMoments(names, sum(p.numel() for n, p in model.named_parameters() if n in set(names)), config.rank)
    writer.start()

    if config.schedule == "constant":
        num_steps = config.num_snapshots * interval

        def lr_at(step: int) -> float:
            return config.learning_rate

        def collects(step: int) -> bool:
            return (step + 1) % interval == 0

    else:
        num_steps = (config.num_snapshots - 1) * interval + interval // 2 + 1

        def lr_at(step: int) -> float:
            return fge_learning_rate(step, interval, config.learning_rate, config.min_learning_rate)

        def collects(step: int) -> bool:
            return is_snapshot_step(step, interval)

    def after_step(step: int, lr: float, loss: float) -> None:
        if collects(step):
            vector = flat_params(model, names)
            moments.collect(vector)
            if on_collect is not None:
                on_collect(step, vector)

    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
    train_steps(
        model,
        batches(train_dataset, config.batch_size, config.seed, device, data_collator),
        optimizer,
        lr_at,
        num_steps,
        max_grad_norm=config.max_grad_norm,
        after_step=after_step,
        desc=f"{config.method}: collecting moments",
    )
    del optimizer
    moments.save(writer.run_dir / MOMENTS_NAME)
    bn = has_batchnorm(model)
    per_epoch = config.steps_per_epoch(len(train_dataset))
    common = dict(learning_rate=config.learning_rate, num_steps=num_steps, num_epochs=num_steps / per_epoch)
    if config.method == "swa":
        load_flat_params(model, names, moments.mean)
        _recalibrate_bn(model, train_dataset, config.batch_size, config.bn_recalibration_batches)
        writer.save_member(
            model,
            seed=config.seed,
            metrics={"role": "swa_mean", "num_collected": moments.num_collected, "bn_recalibrated": bn},
            **common,
        )
    else:
        for i in range(config.num_members):
            seed = config.seed + i
            load_flat_params(model, names, moments.sample(seed, config.scale, config.covariance, config.var_clamp))
            _recalibrate_bn(model, train_dataset, config.batch_size, config.bn_recalibration_batches)
            writer.save_member(
                model, seed=seed, metrics={"role": "swag_sample", "sample_seed": seed, "bn_recalibrated": bn}, **common
            )
    return BuildOutput(writer.run_dir, writer.manifest, {"moments": moments, "interval": interval})
