"""The cyclic cosine learning-rate schedule of snapshot ensembles, built the transformers way.

The whole run is: a first fine-tuning of `num_first_steps` steps (optional linear warmup, then cosine from the base LR
to 0), followed by `num_cycles` cycles of `num_cycle_steps` steps, each jumping to `cycle_lr_ratio` x the base LR
(optional linear warmup) and decaying by cosine to 0. The multiplier is a module-level function bound with
`functools.partial` into a `LambdaLR`, so it pickles and Trainer checkpoints resume.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def _cosine_with_warmup(step: int, num_steps: int, num_warmup_steps: int) -> float:
    if step < num_warmup_steps:
        return float(step + 1) / float(num_warmup_steps + 1)
    progress = float(step - num_warmup_steps) / float(max(1, num_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _get_cyclic_cosine_lr_lambda(
    current_step: int,
    *,
    num_first_steps: int,
    num_cycle_steps: int,
    num_cycles: int,
    cycle_lr_ratio: float,
    num_first_warmup_steps: int = 0,
    num_cycle_warmup_steps: int = 0,
    step_offset: int = 0,
) -> float:
    step = current_step + step_offset
    if step < num_first_steps:
        return _cosine_with_warmup(step, num_first_steps, num_first_warmup_steps)
    step -= num_first_steps
    if step >= num_cycles * num_cycle_steps:
        return 0.0
    return cycle_lr_ratio * _cosine_with_warmup(step % num_cycle_steps, num_cycle_steps, num_cycle_warmup_steps)


def get_cyclic_cosine_schedule(
    optimizer: Optimizer,
    num_first_steps: int,
    num_cycle_steps: int,
    num_cycles: int,
    cycle_lr_ratio: float = 1.0,
    num_first_warmup_steps: int = 0,
    num_cycle_warmup_steps: int = 0,
    step_offset: int = 0,
    last_epoch: int = -1,
) -> LambdaLR:
    """Create the snapshot-ensemble schedule: a first fine-tuning, then `num_cycles` restarts to a cycle LR.

    The multiplier at step `t` of the whole run is, with `T0 = num_first_steps`, `Tc = num_cycle_steps`:
    `cos_w(t, T0, W0)` for `t < T0`, then `cycle_lr_ratio * cos_w((t - T0) % Tc, Tc, Wc)` for the next
    `num_cycles * Tc` steps, and 0 after, where `cos_w(s, T, W) = (s + 1) / (W + 1)` for `s < W` and
    `0.5 * (1 + cos(pi * (s - W) / (T - W)))` otherwise.

    Args:
        optimizer (`torch.optim.Optimizer`):
            The optimizer whose LR is scheduled; its LR is the first fine-tuning's peak LR.
        num_first_steps (`int`):
            Optimizer steps of the first fine-tuning (member 0).
        num_cycle_steps (`int`):
            Optimizer steps of each later cycle.
        num_cycles (`int`):
            Number of cycles after the first fine-tuning (K - 1 for K members).
        cycle_lr_ratio (`float`, *optional*, defaults to 1.0):
            Peak LR of each cycle divided by the first fine-tuning's LR.
        num_first_warmup_steps (`int`, *optional*, defaults to 0):
            Linear warmup steps of the first fine-tuning.
        num_cycle_warmup_steps (`int`, *optional*, defaults to 0):
            Linear warmup steps at the start of each cycle.
        step_offset (`int`, *optional*, defaults to 0):
            Step of the whole run at which this scheduler's step 0 lies: a trainer running one cycle on its own
            (a StarSSE member) uses `num_first_steps` here.
        last_epoch (`int`, *optional*, defaults to -1):
            The index of the last step when resuming.

    Return:
        `torch.optim.lr_scheduler.LambdaLR` with the appropriate schedule.
    """
    for name, value in (("num_first_steps", num_first_steps), ("num_cycle_steps", num_cycle_steps)):
        if value < 1:
            raise ValueError(f"`{name}` should be positive, got {value}.")
    if num_cycles < 0:
        raise ValueError(f"`num_cycles` should be >= 0, got {num_cycles}.")
    if cycle_lr_ratio <= 0:
        raise ValueError(f"`cycle_lr_ratio` should be positive, got {cycle_lr_ratio}.")
    if not 0 <= num_first_warmup_steps < num_first_steps:
        raise ValueError(
            f"`num_first_warmup_steps` should be in [0, {num_first_steps}), got {num_first_warmup_steps}."
        )
    if not 0 <= num_cycle_warmup_steps < num_cycle_steps:
        raise ValueError(
            f"`num_cycle_warmup_steps` should be in [0, {num_cycle_steps}), got {num_cycle_warmup_steps}."
        )
    lr_lambda = partial(
        _get_cyclic_cosine_lr_lambda,
        num_first_steps=num_first_steps,
        num_cycle_steps=num_cycle_steps,
        num_cycles=num_cycles,
        cycle_lr_ratio=cycle_lr_ratio,
        num_first_warmup_steps=num_first_warmup_steps,
        num_cycle_warmup_steps=num_cycle_warmup_steps,
        step_offset=step_offset,
    )
    return LambdaLR(optimizer, lr_lambda, last_epoch)


def cycle_boundaries(num_first_steps: int, num_cycle_steps: int, num_cycles: int) -> list[tuple[int, int]]:
    """`(start, end)` steps (end exclusive) of the first fine-tuning and of each cycle in the whole run."""
    bounds = [(0, num_first_steps)]
    for c in range(num_cycles):
        start = num_first_steps + c * num_cycle_steps
        bounds.append((start, start + num_cycle_steps))
    return bounds
