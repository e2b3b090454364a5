"""The report of a sweep: `sweep.json` (everything), `sweep.md` (tables, figures, a generated reading) and the PNG
figures, each written atomically."""

from __future__ import annotations

from functools import cache, partial
from typing import Any

import numpy as np

from .file_utils import atomic_write_json, atomic_write_text
from .sweep_config import SweepConfig
from .sweep_folder import SweepFolder
from .sweep_stats import (
    best_configs,
    config_rows,
    derived_values,
    paired_difference,
    reference_runs,
    seed_interval,
)

COMPARISONS = (("star_sse", "sse"), ("star_sse", "local_de"), ("sse", "local_de"))


def build_report(folder: SweepFolder, config: SweepConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows, best configurations, paired differences and the semi-local analysis of the evaluated runs."""
    rows = config_rows(records)
    by_config: dict[str, dict[int, dict[str, Any]]] = {}
    for record in records:
        by_config.setdefault(record["config"], {})[record["seed"]] = record

    from .sweep import load_run_predictions

    load = cache(partial(load_run_predictions, folder))  # each run's file is read once per report

    def predictions(record: dict[str, Any]) -> dict[str, np.ndarray]:
        return load(record["seed"], record["config"])

    def compare(a: str, b: str, target: str) -> dict[str, Any] | None:
        return paired_difference(
            by_config[a], by_config[b], target, predictions, config.confidence, config.bootstrap_samples
        )

    comparisons = []
    for target in ("ensemble", "soup"):
        best = best_configs(rows, target)
        for a, b in COMPARISONS:
            if a in best and b in best:
                diff = compare(best[a], best[b], target)
                comparisons.append({"target": target, "a": best[a], "b": best[b], "difference": diff})
    per_config = []
    for row in rows:
        if row["method"] == "star_sse":
            partner = row["config"].replace("star_sse", "sse", 1)
            if partner in by_config:
                per_config.append(
                    {
                        "star_sse": row["config"],
                        "sse": partner,
                        **{t: compare(row["config"], partner, t) for t in ("ensemble", "soup")},
                    }
                )
    firsts = [r for r in records if r["lr_ratio"] is None]
    return {
        "first_fine_tuning": {  # member 0 of each seed: did it converge (training accuracy), how good is it
            "train_accuracy": [r["train_accuracy"][0] for r in firsts if r.get("train_accuracy")],
            "test_accuracy": [r["members"][0]["accuracy"] for r in firsts],
        },
        "rows": rows,
        "best": {t: best_configs(rows, t) for t in ("ensemble", "soup")},
        "comparisons": comparisons,
        "star_sse_minus_sse_per_config": per_config,
        "locality": _locality(rows, by_config, reference_runs(records), config.confidence),
        "num_test_examples": int(len(predictions(records[0])["labels"])) if records else 0,
    }


def _locality(rows: list[dict[str, Any]], by_config: dict, references: dict, confidence: float) -> list[dict]:
    """Per cycle configuration: how much the cycle members lose against member 0 (with its interval over seeds) and
    how far from member 0 they move, relative to how far Local DE's independent fine-tunings are from each other."""
    out = []
    for row in rows:
        if row["lr_ratio"] is None:
            continue
        runs = by_config[row["config"]].values()
        drops = [derived_values(r, references.get(r["seed"]))["member_drop"] for r in runs]
        out.append(
            {
                "config": row["config"],
                "method": row["method"],
                "lr_ratio": row["lr_ratio"],
                "epoch_ratio": row["epoch_ratio"],
                "member_drop": row["member_drop"]["mean"],
                "member_drop_ci": seed_interval(drops, confidence),
                "distance_from_member_0": row["distance_from_member_0"]["mean"],
                "distance_ratio": row["distance_ratio"]["mean"],
            }
        )
    return out


def write_sweep_report(folder: SweepFolder, config: SweepConfig, command: str | None = None) -> dict[str, Any]:
    """Build the report from the runs that are done and write `sweep.json`, `sweep.md` and the figures."""
    from .sweep import load_run_results, read_sessions, sweep_runs
    from .sweep_markdown import format_report

    runs = sweep_runs(config)
    records = load_run_results(folder, runs)
    report = {
        "command": command,
        "config": {k: v for k, v in vars(config).items()},
        "num_runs_done": len(records),
        "num_runs_planned": len(runs),
        **build_report(folder, config, records),
        "sessions": read_sessions(folder),
    }
    figures = {}
    if config.plots and records:
        from .sweep_figures import write_figures

        figures = write_figures(folder, config, report)
    report["figures"] = {name: path.relative_to(folder.root).as_posix() for name, path in figures.items()}
    atomic_write_json(folder.report_json, report)
    atomic_write_text(folder.report_md, format_report(report, config))
    return report
