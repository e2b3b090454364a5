"""Settings of `hf-starsse sweep`: the paper's grid of SSE / StarSSE cycle ratios against Local DE, over seeds."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

SWEEP_METHODS = ("local_de", "sse", "star_sse")
CYCLE_METHODS = ("sse", "star_sse")
# the paper's grid (arXiv 2303.03374, Sec. 4): cycle LR and cycle length as ratios to the first fine-tuning's
PAPER_LR_RATIOS = (0.25, 0.5, 1.0, 2.0, 4.0)
PAPER_EPOCH_RATIOS = (0.5, 1.0, 2.0, 4.0)
SEED_SPACING = 1000  # sweep seed j is `seed + 1000 j`: member seeds `seed_j + i` of two sweep seeds never meet


@dataclass
class SweepConfig:
    """What `hf-starsse sweep` trains and evaluates.

    Args:
        output_dir (`str`):
            The sweep folder: one run folder per (seed, method, configuration) under `runs/`, the results and the
            report (see [`SweepFolder`]).
        recipe (`dict`):
            The training recipe every run starts from (the fields of `hf-starsse train --config`). The sweep sets
            `output_dir`, `ensemble_strategy`, `num_members`, `seed`, the cycle ratios and `first_member` per run;
            those fields of the recipe (and the other cycle settings) are dropped and listed in `overridden`. The
            recipe's `seed` is the base seed.
        lr_ratios (`tuple[float, ...]`, *optional*, defaults to the paper's `(0.25, 0.5, 1, 2, 4)`):
            Cycle peak LR / the first fine-tuning's LR.
        epoch_ratios (`tuple[float, ...]`, *optional*, defaults to the paper's `(0.5, 1, 2, 4)`):
            Cycle length / the first fine-tuning's length.
        methods (`tuple[str, ...]`, *optional*, defaults to `("local_de", "sse", "star_sse")`):
            Methods to run.
        num_seeds (`int`, *optional*, defaults to 3):
            Independent repetitions; seed `j` is `recipe seed + 1000 j`.
        num_members (`int`, *optional*, defaults to 5):
            Ensemble size K of every run.
        eval_batch_size (`int`, *optional*, defaults to 256):
            Batch size of the evaluation passes.
        bootstrap_samples (`int`, *optional*, defaults to 2000):
            Resamples of the test examples for the paired bootstrap intervals.
        confidence (`float`, *optional*, defaults to 0.95):
            Level of the confidence intervals.
        device (`str`, *optional*):
            Device of the evaluation passes (CUDA when available by default).
        plots (`bool`, *optional*, defaults to `True`):
            Write the report's PNG figures.
    """

    output_dir: str
    recipe: dict[str, Any] = field(default_factory=dict)
    lr_ratios: tuple[float, ...] = PAPER_LR_RATIOS
    epoch_ratios: tuple[float, ...] = PAPER_EPOCH_RATIOS
    methods: tuple[str, ...] = SWEEP_METHODS
    num_seeds: int = 3
    num_members: int = 5
    eval_batch_size: int = 256
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    device: str | None = None
    plots: bool = True

    def __post_init__(self) -> None:
        self.lr_ratios = _positive_ratios("lr_ratios", self.lr_ratios)
        self.epoch_ratios = _positive_ratios("epoch_ratios", self.epoch_ratios)
        self.methods = tuple(self.methods)
        unknown = [m for m in self.methods if m not in SWEEP_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"`methods` should be taken from {', '.join(SWEEP_METHODS)}, got {unknown or '[]'}.")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"`methods` should not repeat a method, got {list(self.methods)}.")
        for name, low in (("num_seeds", 1), ("num_members", 2), ("eval_batch_size", 1), ("bootstrap_samples", 100)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` should be an integer >= {low}, got {value!r}.")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"`confidence` should be in [0.5, 1), got {self.confidence}.")
        if not isinstance(self.recipe, dict):
            raise ValueError(f"`recipe` should be a mapping of training arguments, got {type(self.recipe).__name__}.")
        if not os.fspath(self.output_dir).strip():
            raise ValueError("`output_dir` should name a folder, got an empty string.")
        # a training recipe names one run: what the sweep sets per run is taken out (and listed in `overridden`)
        self.overridden = sorted(set(self.recipe) & SWEEP_SET_FIELDS)
        self.recipe = {k: v for k, v in self.recipe.items() if k not in SWEEP_SET_FIELDS}

    @property
    def base_seed(self) -> int:
        return int(self.recipe.get("seed", 42))

    @property
    def seeds(self) -> list[int]:
        """The base seed of each repetition."""
        return [self.base_seed + SEED_SPACING * j for j in range(self.num_seeds)]

    @property
    def cycle_methods(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m in CYCLE_METHODS)


# recipe fields the sweep sets for each run (a recipe that sets them would be silently overridden)
SWEEP_SET_FIELDS = frozenset(
    {
        "output_dir",
        "ensemble_strategy",
        "num_members",
        "cycle_lr_ratio",
        "cycle_learning_rate",
        "cycle_epoch_ratio",
        "cycle_epochs",
        "cycle_steps",
        "first_member",
        "member_indices",
        "member_seeds",
        "pretrained_checkpoints",
    }
)


def _positive_ratios(name: str, values: Any) -> tuple[float, ...]:
    try:
        ratios = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` should be a list of positive numbers, got {values!r}.") from None
    if not ratios or any(not math.isfinite(r) or r <= 0 for r in ratios):
        raise ValueError(f"`{name}` should be a non-empty list of positive numbers, got {list(values)}.")
    if len(set(ratios)) != len(ratios):
        raise ValueError(f"`{name}` should not repeat a value, got {list(ratios)}.")
    return ratios
