"""Cyclical SGLD (Zhang et al. 2020) as a post-hoc builder over a fine-tuned member 0.

From member 0, `num_members` cycles of `C` steps with the cyclical cosine LR
`lr_t = learning_rate / 2 * (cos(pi * (t mod C) / C) + 1)`. The first `exploration_fraction` of each cycle is plain
(optimisation) SGD; in the rest of the cycle, the sampling phase, every step is an SGLD step: after the SGD update,
Gaussian noise of standard deviation

    sigma_t = sqrt(2 * lr_t * temperature / N)

is added to every trainable weight (N = `dataset_size`, the training set size: the loss is a mean over examples, so
this is SGLD on the posterior `exp(-N * loss / temperature)`). The weights at each cycle's end are a member.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..seeds import derive_seed
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


@dataclass
class CSGLDConfig(PosthocConfig):
    """Settings of cSGLD (all of [`PosthocConfig`] plus the cycles and the noise).

    Args:
        cycle_steps (`int`, *optional*):
            Optimizer steps per cycle. Give this or `cycle_epochs`.
        cycle_epochs (`float`, *optional*):
            Epochs per cycle.
        exploration_fraction (`float`, *optional*, defaults to 0.8):
            Fraction of each cycle without noise (the paper's beta); the sampling phase is the rest and must hold at
            least one step.
        temperature (`float`, *optional*, defaults to 1.0):
            Posterior temperature; the noise variance is proportional to it (0 gives noiseless cyclic SGD).
        dataset_size (`int`, *optional*):
            N in the noise scale; the training set's length when `None`.
        momentum (`float`, *optional*, defaults to 0.0):
            SGD momentum (0: plain SGLD, as in the paper's cSGLD).
    """

    cycle_steps: int | None = None
    cycle_epochs: float | None = None
    exploration_fraction: float = 0.8
    temperature: float = 1.0
    dataset_size: int | None = None
    momentum: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.cycle_steps is None and self.cycle_epochs is None:
            raise ValueError("Give the cycle length: `cycle_steps` or `cycle_epochs`.")
        if self.cycle_steps is not None:
            _check(self.cycle_steps >= 2, "cycle_steps", self.cycle_steps, "should be at least 2")
        _check(
            0 <= self.exploration_fraction < 1,
            "exploration_fraction",
            self.exploration_fraction,
            "should be in [0, 1) (the sampling phase needs steps)",
        )
        _check(self.temperature >= 0, "temperature", self.temperature, "should be >= 0")
        if self.dataset_size is not None:
            _check(self.dataset_size >= 1, "dataset_size", self.dataset_size, "should be >= 1")

    def resolve_cycle_steps(self, dataset_size: int) -> int:
        per_epoch = self.steps_per_epoch(dataset_size)
        steps = steps_from(self.cycle_steps, self.cycle_epochs, "cycle_steps", "cycle_epochs", per_epoch)
        first_sampling = sampling_start(steps, self.exploration_fraction)
        if steps < 2 or first_sampling >= steps:
            raise ValueError(
                f"`exploration_fraction`={self.exploration_fraction} with {steps} steps per cycle leaves no sampling "
                "step; lower it or lengthen the cycle (`cycle_steps` / `cycle_epochs`)."
            )
        return steps


def csgld_learning_rate(step: int, cycle_steps: int, learning_rate: float) -> float:
    """The cyclical cosine LR at `step`: `learning_rate` at each cycle's start, decaying towards 0 at its end."""
    return learning_rate / 2 * (math.cos(math.pi * (step % cycle_steps) / cycle_steps) + 1)


def sampling_start(cycle_steps: int, exploration_fraction: float) -> int:
    """First in-cycle step of the sampling phase: the first `s` with `s / cycle_steps >= exploration_fraction`."""
    return math.ceil(exploration_fraction * cycle_steps - 1e-9)


def in_sampling_phase(step: int, cycle_steps: int, exploration_fraction: float) -> bool:
    return step % cycle_steps >= sampling_start(cycle_steps, exploration_fraction)


def sgld_noise_std(learning_rate: float, temperature: float, dataset_size: int) -> float:
    """`sqrt(2 * lr * temperature / N)`."""
    return math.sqrt(2.0 * learning_rate * temperature / dataset_size)


def build_csgld(
    member0: str | os.PathLike | PreTrainedModel,
    train_dataset,
    output_dir: str | os.PathLike,
    config: CSGLDConfig,
    data_collator=None,
) -> BuildOutput:
    """Run cSGLD from member 0 and write a member at each cycle's end.

    Args:
        member0 (`str`, `os.PathLike` or `PreTrainedModel`):
            The fine-tuned starting point.
        train_dataset (`Dataset`):
            Training data yielding dict examples.
        output_dir (`str` or `os.PathLike`):
            The new run folder (must not hold a run).
        config ([`CSGLDConfig`]):
            The settings.
        data_collator (`Callable`, *optional*):
            Collates examples; `transformers.default_data_collator` when omitted.

    Returns:
        [`BuildOutput`] with `details["trace"]`: per step `{"step", "lr", "sampling", "noise_std",
        "injected_std"}` (`injected_std`: the empirical std of the noise actually added, 0 outside sampling).
    """
    cycle_steps = config.resolve_cycle_steps(len(train_dataset))
    dataset_size = config.dataset_size or len(train_dataset)
    model, source, name = load_member0(member0)
    writer = RunWriter(output_dir, "csgld", config, name, source, {"resolved_cycle_steps": cycle_steps})
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    noise_generator = torch.Generator().manual_seed(derive_seed(config.seed, "noise"))
    per_epoch = config.steps_per_epoch(len(train_dataset))
    trace: list[dict] = []
    writer.start()

    def lr_at(step: int) -> float:
        return csgld_learning_rate(step, cycle_steps, config.learning_rate)

    @torch.no_grad()
    def after_step(step: int, lr: float, loss: float) -> None:
        sampling = in_sampling_phase(step, cycle_steps, config.exploration_fraction)
        std = sgld_noise_std(lr, config.temperature, dataset_size) if sampling else 0.0
        sq_sum, count = 0.0, 0
        if std > 0:
            for p in params:
                noise = torch.randn(p.shape, generator=noise_generator).to(p.device, p.dtype) * std
                p.add_(noise)
                sq_sum += float((noise.double() ** 2).sum())
                count += noise.numel()
        injected = math.sqrt(sq_sum / count) if count else 0.0
        trace.append({"step": step, "lr": lr, "sampling": sampling, "noise_std": std, "injected_std": injected})
        if step % cycle_steps == cycle_steps - 1:
            writer.save_member(
                model,
                seed=config.seed,
                learning_rate=config.learning_rate,
                num_steps=step + 1,
                num_epochs=(step + 1) / per_epoch,
                schedule_offset=step + 1 - cycle_steps,
                metrics={"cycle": step // cycle_steps, "train_loss": loss},
            )

    train_steps(
        model,
        batches(train_dataset, config.batch_size, config.seed, device, data_collator),
        optimizer,
        lr_at,
        config.num_members * cycle_steps,
        max_grad_norm=config.max_grad_norm,
        after_step=after_step,
    )
    return BuildOutput(writer.run_dir, writer.manifest, {"trace": trace, "cycle_steps": cycle_steps})
