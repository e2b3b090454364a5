"""Statistics of a sweep: mean ± std over seeds per configuration, each method's best configuration (chosen on the
validation split), and paired differences with two confidence intervals.

- **Over seeds**: the per-seed differences `d_s = metric(A, seed s) - metric(B, seed s)` get a Student-t interval,
  `mean(d) ± t_{(1+c)/2, n-1} · std(d) / sqrt(n)`; it covers training noise (head init, data order) and needs n ≥ 2.
- **Paired bootstrap over test examples**: the per-example differences `δ_s(i) = correct_A,s(i) - correct_B,s(i)`,
  averaged over seeds, are resampled (examples with replacement, the same indices for both methods); the percentile
  interval of the resampled means covers the finite test set's noise for these trained models.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

# what the report aggregates per configuration: (name, path in a run's result record)
AGGREGATED = {
    "ensemble_accuracy": ("ensemble", "accuracy"),
    "ensemble_nll": ("ensemble", "nll"),
    "ensemble_ece": ("ensemble", "ece"),
    "soup_accuracy": ("soup", "accuracy"),
    "soup_nll": ("soup", "nll"),
    "soup_ece": ("soup", "ece"),
    "mean_member_accuracy": ("mean_member", "accuracy"),
    "diversity": ("diversity",),
    "steps": ("cost", "steps"),
    "member_epochs": ("cost", "member_epochs"),
    "train_seconds": ("cost", "train_seconds"),
    "validation_ensemble_accuracy": ("validation", "ensemble_accuracy"),
    "validation_soup_accuracy": ("validation", "soup_accuracy"),
}


def _lookup(record: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = record
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return float("nan")
        value = value[key]
    return float(value)


def derived_values(record: dict[str, Any], reference: dict[str, Any] | None = None) -> dict[str, float]:
    """Per-run quantities of members 1.. against member 0: their accuracy difference, their mean L2 distance from
    member 0 and that distance divided by the same for `reference` (Local DE of the same seed: how far independent
    fine-tunings are from each other). All undefined for a one-member run.

    The distance to the pre-trained weights is not used: with BatchNorm, the stem convolution's scale does not change
    the function and drifts with the seed (on the digits preset, member 0 of seed 42 moved its stem 33.4 in L2 and
    Local DE's members 1..3 moved theirs 6.7 to 13.5), so it swamps what the cycles do."""
    members = record["members"]
    nan = float("nan")
    out = {"member_drop": nan, "distance_from_member_0": nan, "distance_ratio": nan}
    if len(members) > 1:
        out["member_drop"] = float(np.mean([m["accuracy"] for m in members[1:]]) - members[0]["accuracy"])
    from_0 = (record.get("distances") or {}).get("from_member_0") or []
    if from_0:
        out["distance_from_member_0"] = float(np.mean(from_0))
        ref = ((reference or {}).get("distances") or {}).get("from_member_0") or []
        if ref and np.mean(ref) > 0:
            out["distance_ratio"] = float(np.mean(from_0) / np.mean(ref))
    return out


DERIVED = ("member_drop", "distance_from_member_0", "distance_ratio")


def reference_runs(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Local DE's run of each seed (the spread of independent fine-tunings), by seed."""
    return {r["seed"]: r for r in records if r["method"] == "local_de"}


def config_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, configuration), in first-seen order: mean and std over seeds of every aggregated value."""
    references = reference_runs(records)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["config"]].append(record)
    rows = []
    for config, group in groups.items():
        first = group[0]
        row: dict[str, Any] = {
            "config": config,
            "method": first["method"],
            "lr_ratio": first["lr_ratio"],
            "epoch_ratio": first["epoch_ratio"],
            "seeds": [r["seed"] for r in group],
        }
        values = {name: [_lookup(r, path) for r in group] for name, path in AGGREGATED.items()}
        derived = [derived_values(r, references.get(r["seed"])) for r in group]
        values.update({key: [d[key] for d in derived] for key in DERIVED})
        for name, series in values.items():
            row[name] = _mean_std(series)
        row["ensemble_vs_size"] = _mean_curve([r["ensemble_vs_size"] for r in group])
        rows.append(row)
    return rows


def _mean_std(series: list[float]) -> dict[str, float | None]:
    array = np.asarray(series, dtype=float)
    if np.isnan(array).all():
        return {"mean": None, "std": None}
    return {
        "mean": float(np.nanmean(array)),
        "std": float(np.nanstd(array, ddof=1)) if np.isfinite(array).sum() > 1 else 0.0,
    }


def _mean_curve(curves: list[list[dict[str, float]]]) -> list[dict[str, float]]:
    sizes = min(len(c) for c in curves)
    return [
        {
            "size": k + 1,
            "accuracy": float(np.mean([c[k]["accuracy"] for c in curves])),
            "accuracy_std": float(np.std([c[k]["accuracy"] for c in curves], ddof=1)) if len(curves) > 1 else 0.0,
        }
        for k in range(sizes)
    ]


def best_configs(rows: list[dict[str, Any]], target: str) -> dict[str, str]:
    """Each method's configuration with the highest mean validation accuracy of its `target` (`ensemble` or
    `soup`); the test split is not looked at."""
    best: dict[str, tuple[float, str]] = {}
    for row in rows:
        score = row[f"validation_{target}_accuracy"]["mean"]
        if score is None:
            continue
        if row["method"] not in best or score > best[row["method"]][0]:
            best[row["method"]] = (score, row["config"])
    return {method: config for method, (_, config) in best.items()}


def seed_interval(differences: list[float], confidence: float) -> list[float] | None:
    """Student-t interval of the mean of per-seed differences (`None` for fewer than 2 seeds)."""
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return None
    half = stats.t.ppf((1 + confidence) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return [float(d.mean() - half), float(d.mean() + half)]


def bootstrap_interval(
    per_example_differences: np.ndarray, confidence: float, num_samples: int, seed: int = 0
) -> list[float]:
    """Percentile interval of the mean of `per_example_differences` (one value per test example, already averaged
    over seeds) under resampling of the test examples with replacement."""
    rng = np.random.default_rng(seed)
    n = len(per_example_differences)
    means = np.empty(num_samples)
    for start in range(0, num_samples, 256):  # chunks keep memory at 256 x n
        idx = rng.integers(0, n, size=(min(256, num_samples - start), n))
        means[start : start + len(idx)] = per_example_differences[idx].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return [float(low), float(high)]


def paired_difference(
    records_a: dict[int, dict[str, Any]],
    records_b: dict[int, dict[str, Any]],
    target: str,
    predictions: Callable[[dict[str, Any]], dict[str, np.ndarray]],
    confidence: float,
    num_samples: int,
) -> dict[str, Any] | None:
    """`accuracy(A) - accuracy(B)` of `target` (`ensemble` / `soup`) over the seeds both ran: mean, per-seed values,
    the interval over seeds and the paired bootstrap interval over test examples."""
    seeds = sorted(set(records_a) & set(records_b))
    if not seeds or any(records_a[s].get(target) is None or records_b[s].get(target) is None for s in seeds):
        return None
    per_seed = [records_a[s][target]["accuracy"] - records_b[s][target]["accuracy"] for s in seeds]
    per_example = np.mean(
        [
            predictions(records_a[s])[f"{target}_correct"].astype(float)
            - predictions(records_b[s])[f"{target}_correct"].astype(float)
            for s in seeds
        ],
        axis=0,
    )
    return {
        "seeds": seeds,
        "per_seed": per_seed,
        "mean": float(np.mean(per_seed)),
        "seed_ci": seed_interval(per_seed, confidence),
        "bootstrap_ci": bootstrap_interval(per_example, confidence, num_samples),
        "num_test_examples": int(len(per_example)),
    }


def verdict(difference: dict[str, Any] | None) -> str:
    """`holds` / `reversed` when both intervals exclude 0 on the same side, `not resolved` otherwise."""
    if difference is None:
        return "not measured"
    intervals = [difference["bootstrap_ci"]]
    if difference["seed_ci"] is not None:
        intervals.append(difference["seed_ci"])
    if all(low > 0 for low, _ in intervals):
        return "holds"
    if all(high < 0 for _, high in intervals):
        return "reversed"
    return "not resolved"
