"""The layout of a sweep folder and the runs of a sweep (one owner: every sweep path is named here).

```
SWEEP/
  sweep_config.json          the settings and the recipe the runs were made from (a rerun must match)
  sessions.json              every `hf-starsse sweep` call: start, wall seconds, runs trained / evaluated / kept
  runs/seed-<s>/local_de/                          ordinary run folders (train / evaluate / push them as any run)
  runs/seed-<s>/member-0/                          member 0 alone, when Local DE is not part of the sweep
  runs/seed-<s>/<sse|star_sse>-lr<r>-ep<e>/
  results/<seed-s>__<run>.json / .npz              per-run metrics and test predictions, written once evaluated
  sweep.json, sweep.md, figures/*.png              the report
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .sweep_config import SweepConfig

CONFIG_NAME = "sweep_config.json"
REPORT_JSON_NAME = "sweep.json"
REPORT_MD_NAME = "sweep.md"
FIGURES_DIR_NAME = "figures"


def ratio_label(value: float) -> str:
    """`0.25 -> "0.25"`, `1.0 -> "1"`: the ratio as written in run names and tables."""
    return f"{value:g}"


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep.

    Args:
        seed (`int`): The run's base seed (member `i` has seed `seed + i`).
        method (`str`): `local_de`, `sse` or `star_sse` (`member_0` for the lone first fine-tuning).
        lr_ratio (`float`, *optional*): Cycle LR ratio (SSE / StarSSE).
        epoch_ratio (`float`, *optional*): Cycle length ratio (SSE / StarSSE).
        num_members (`int`): Members of the run.
    """

    seed: int
    method: str
    lr_ratio: float | None
    epoch_ratio: float | None
    num_members: int

    @property
    def config_name(self) -> str:
        """The configuration, the same for every seed: `local_de`, `star_sse-lr4-ep0.5`, ..."""
        if self.lr_ratio is None:
            return self.method if self.method != "member_0" else "member-0"
        return f"{self.method}-lr{ratio_label(self.lr_ratio)}-ep{ratio_label(self.epoch_ratio)}"

    @property
    def name(self) -> str:
        return f"seed-{self.seed}/{self.config_name}"

    @property
    def is_cycle_run(self) -> bool:
        return self.lr_ratio is not None


def plan_sweep(config: SweepConfig) -> list[tuple[SweepRun, SweepRun | None]]:
    """Every run of the sweep, in training order, with the run whose member 0 it starts from (`None` for the run that
    trains member 0). Per seed, member 0 is trained once: by Local DE when it is part of the sweep (its member 0 is a
    first fine-tuning with the same recipe and seed), else by a one-member run."""
    plan: list[tuple[SweepRun, SweepRun | None]] = []
    for seed in config.seeds:
        if "local_de" in config.methods:
            first = SweepRun(seed, "local_de", None, None, config.num_members)
        else:
            first = SweepRun(seed, "member_0", None, None, 1)
        plan.append((first, None))
        for epoch_ratio in config.epoch_ratios:
            for lr_ratio in config.lr_ratios:
                for method in config.cycle_methods:
                    plan.append((SweepRun(seed, method, lr_ratio, epoch_ratio, config.num_members), first))
    return plan


class SweepFolder:
    """The paths of a sweep folder.

    Args:
        root (`str` or `os.PathLike`): The sweep's `output_dir`.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def sessions_path(self) -> Path:
        """One entry per `hf-starsse sweep` call: when, how long, what it trained / evaluated / kept."""
        return self.root / "sessions.json"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run: SweepRun) -> Path:
        return self.runs_dir / f"seed-{run.seed}" / run.config_name

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    def result_path(self, run: SweepRun) -> Path:
        """Metrics, cost and settings of an evaluated run (its presence means the run is done)."""
        return self.results_dir / f"seed-{run.seed}__{run.config_name}.json"

    def predictions_path(self, run: SweepRun) -> Path:
        return self.predictions_file(run.seed, run.config_name)

    def predictions_file(self, seed: int, config_name: str) -> Path:
        """Per test example: the ensemble's and the soup's correctness and log-probability of the true class (for the
        paired bootstrap), as an `.npz` of plain arrays (read with `allow_pickle=False`)."""
        return self.results_dir / f"seed-{seed}__{config_name}.npz"

    @property
    def report_json(self) -> Path:
        return self.root / REPORT_JSON_NAME

    @property
    def report_md(self) -> Path:
        return self.root / REPORT_MD_NAME

    @property
    def figures_dir(self) -> Path:
        return self.root / FIGURES_DIR_NAME

    def figure_path(self, name: str) -> Path:
        return self.figures_dir / f"{name}.png"
