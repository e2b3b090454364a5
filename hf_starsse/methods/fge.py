"""Fast Geometric Ensembling (Garipov et al. 2018) as a post-hoc builder over a fine-tuned member 0.

From member 0, SGD runs `num_members - 1` short cycles. In each cycle of `C` steps the LR goes from `learning_rate`
(the cycle's high point, at its start and end) to `min_learning_rate` (its low point, at step `C // 2`) and back,
linearly (`triangular`, as in the paper) or along a half cosine each way (`cosine`); the weights after the low-point
step are a member. Member 0 itself is member 0 of the written ensemble.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass

from transformers import PreTrainedModel

from ._common import (
    BuildOutput,
    PosthocConfig,
    RunWriter,
    _check,
    batches,
    load_member0,
    make_optimizer,
    steps_from,
    train_steps,
)

FGE_SCHEDULES = ("triangular", "cosine")


@dataclass
class FGEConfig(PosthocConfig):
    """Settings of FGE (all of [`PosthocConfig`] plus the cycles).

    Args:
        cycle_steps (`int`, *optional*):
            Optimizer steps per cycle (at least 2). Give this or `cycle_epochs`.
        cycle_epochs (`float`, *optional*):
            Epochs per cycle (converted to steps with the dataset size and `batch_size`; at least 2 steps).
        min_learning_rate (`float`, *optional*, defaults to 0.0005):
            LR at each cycle's low point (the paper's alpha_2); `learning_rate` is the high point (alpha_1).
        schedule (`str`, *optional*, defaults to `"triangular"`):
            `"triangular"` (linear down then up, as in the paper) or `"cosine"`.
    """

    cycle_steps: int | None = None
    cycle_epochs: float | None = None
    min_learning_rate: float = 0.0005
    schedule: str = "triangular"

    def validate(self) -> None:
        super().validate()
        if self.cycle_steps is None and self.cycle_epochs is None:
            raise ValueError("Give the cycle length: `cycle_steps` or `cycle_epochs`.")
        if self.cycle_steps is not None and self.cycle_epochs is not None:
            raise ValueError(
                f"Give only one of `cycle_steps` ({self.cycle_steps}) and `cycle_epochs` ({self.cycle_epochs})."
            )
        if self.cycle_steps is not None:
            _check(
                self.cycle_steps >= 2,
                "cycle_steps",
                self.cycle_steps,
                "should be at least 2 (a cycle goes down and up)",
            )
        if self.cycle_epochs is not None:
            _check(self.cycle_epochs > 0, "cycle_epochs", self.cycle_epochs, "should be positive")
        _check(
            0 <= self.min_learning_rate <= self.learning_rate,
            "min_learning_rate",
            self.min_learning_rate,
            f"should be in [0, learning_rate={self.learning_rate}]",
        )
        _check(self.schedule in FGE_SCHEDULES, "schedule", self.schedule, f"should be one of {FGE_SCHEDULES}")

    def resolve_cycle_steps(self, dataset_size: int) -> int:
        """Cycle length in steps for a dataset of `dataset_size` examples; raises when under 2 steps."""
        per_epoch = self.steps_per_epoch(dataset_size)
        steps = steps_from(self.cycle_steps, self.cycle_epochs, "cycle_steps", "cycle_epochs", per_epoch)
        if steps < 2:
            raise ValueError(
                f"`cycle_epochs`={self.cycle_epochs} gives {steps} step per cycle ({per_epoch} steps per epoch); a "
                "cycle needs at least 2 steps."
            )
        return steps


def fge_learning_rate(
    step: int, cycle_steps: int, max_lr: float, min_lr: float, schedule: str = "triangular"
) -> float:
    """LR at `step` (counted from the first cycle's start): `max_lr` at each cycle's start, `min_lr` at step
    `cycle_steps // 2` of the cycle, back towards `max_lr` at its end."""
    s = step % cycle_steps
    half = cycle_steps // 2
    if s <= half:
        frac = s / half  # 0 -> 1 going down
        shape = frac if schedule == "triangular" else 0.5 * (1 - math.cos(math.pi * frac))
        return max_lr + (min_lr - max_lr) * shape
    frac = (s - half) / (cycle_steps - half)  # 0 -> 1 going up
    shape = frac if schedule == "triangular" else 0.5 * (1 - math.cos(math.pi * frac))
    return min_lr + (max_lr - min_lr) * shape


def is_snapshot_step(step: int, cycle_steps: int) -> bool:
    """Whether the weights after `step` are a member: the low point of a cycle."""
    return step % cycle_steps == cycle_steps // 2


def build_fge(
    member0: str | os.PathLike | PreTrainedModel,
    train_dataset,
    output_dir: str | os.PathLike,
    config: FGEConfig,
    data_collator=None,
) -> BuildOutput:
    """Write an FGE ensemble: member 0, then one snapshot per cycle at its low-LR point.

    Args:
        member0 (`str`, `os.PathLike` or `PreTrainedModel`):
            The fine-tuned starting point (`save_pretrained` folder, a run folder, or a model).
        train_dataset (`Dataset`):
            Training data yielding dict examples (`pixel_values`, `labels`, ...).
        output_dir (`str` or `os.PathLike`):
            The new run folder (must not hold a run).
        config ([`FGEConfig`]):
            The settings.
        data_collator (`Callable`, *optional*):
            Collates examples into a batch; `transformers.default_data_collator` when omitted.

    Returns:
        [`BuildOutput`] (`details["cycle_steps"]`: the cycle length in steps).
    """
    cycle_steps = config.resolve_cycle_steps(len(train_dataset))
    model, source, name = load_member0(member0)
    writer = RunWriter(output_dir, "fge", config, name, source, {"resolved_cycle_steps": cycle_steps})
    writer.start()
    writer.save_member(model, seed=config.seed, metrics={"role": "member0"})
    num_cycles = config.num_members - 1
    output = BuildOutput(writer.run_dir, writer.manifest, {"cycle_steps": cycle_steps})
    if num_cycles == 0:
        return output
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
    per_epoch = config.steps_per_epoch(len(train_dataset))

    def lr_at(step: int) -> float:
        return fge_learning_rate(step, cycle_steps, config.learning_rate, config.min_learning_rate, config.schedule)

    def after_step(step: int, lr: float, loss: float) -> None:
        if is_snapshot_step(step, cycle_steps) and len(writer.manifest.members) < config.num_members:
            writer.save_member(
                model,
                seed=config.seed,
                learning_rate=lr,
                num_steps=step + 1,
                num_epochs=(step + 1) / per_epoch,
                metrics={"cycle": step // cycle_steps, "snapshot_step": step, "snapshot_lr": lr, "train_loss": loss},
            )

    # the last cycle stops at its low point: (num_cycles - 1) full cycles + half a cycle
    num_steps = (num_cycles - 1) * cycle_steps + cycle_steps // 2 + 1
    train_steps(
        model,
        batches(train_dataset, config.batch_size, config.seed, device, data_collator),
        optimizer,
        lr_at,
        num_steps,
        max_grad_norm=config.max_grad_norm,
        after_step=after_step,
        desc=f"fge: {num_cycles} cycles",
    )
    return output
