"""Evaluation reports: `eval.json`, a markdown summary and PNG plots (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cyclic_schedule import get_cyclic_cosine_schedule
from .file_utils import atomic_write_json, atomic_write_text
from .manifest import EnsembleManifest
from .run_folder import EVAL_JSON, EVAL_MD

METRIC_COLUMNS = (("accuracy", "acc"), ("nll", "NLL"), ("ece", "ECE"), ("brier", "Brier"))


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Save a figure atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        pyplot().close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------- tables


def _row(name: str, metrics: dict[str, float]) -> str:
    cells = [f"{100 * metrics['accuracy']:.2f}"] + [f"{metrics[key]:.4f}" for key, _ in METRIC_COLUMNS[1:]]
    return f"| {name} | " + " | ".join(cells) + " |"


def markdown_report(results: dict[str, Any]) -> str:
    """The markdown summary of an evaluation (`results` as written to `eval.json`)."""
    test = results["test"]
    lines = [f"## Evaluation of `{results.get('run', '')}`", ""]
    lines.append(
        f"Strategy `{results.get('strategy')}`, {len(test['members'])} members, "
        f"{test['num_samples']} samples of `{results.get('data', {}).get('test', 'test')}`."
    )
    lines += ["", "| model | accuracy (%) | NLL | ECE | Brier |", "|---|---|---|---|---|"]
    for name, metrics in zip(test["member_names"], test["members"]):
        lines.append(_row(name, metrics))
    lines.append(_row("mean member", test["mean_member"]))
    lines.append(_row(f"**ensemble ({len(test['members'])})**", test["ensemble"]))
    for kind, soup in results.get("soups", {}).items():
        lines.append(_row(f"**{kind} soup** ({len(soup['members'])} members)", soup["metrics"]))
    lines += ["", f"Diversity (paper's normalised disagreement): {test['diversity']:.2f}", ""]
    soup_rows = {row["size"]: row for row in results.get("soup_vs_size", [])}
    lines += [
        "| size k | ensemble acc (%) | ensemble NLL | soup acc (%) | soup NLL | diversity |",
        "|---|---|---|---|---|---|",
    ]
    for row in test["quality_vs_size"]:
        soup = soup_rows.get(row["size"])
        soup_cells = f"{100 * soup['accuracy']:.2f} | {soup['nll']:.4f}" if soup else "- | -"
        lines.append(
            f"| {row['size']} | {100 * row['accuracy']:.2f} | {row['nll']:.4f} | {soup_cells} "
            f"| {row['diversity']:.2f} |"
        )
    distances = results.get("basin", {}).get("distances")
    if distances:
        lines += ["", "L2 distances between members (weights, BN statistics excluded):", ""]
        names = test["member_names"]
        lines += ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for name, row in zip(names, distances["between_members"]):
            lines.append(f"| {name} | " + " | ".join(f"{d:.3f}" for d in row) + " |")
        if distances.get("to_pretrained"):
            to_pre = ", ".join(f"{n}: {d:.3f}" for n, d in zip(names, distances["to_pretrained"]))
            lines += ["", f"Distance to the pre-trained checkpoint: {to_pre}"]
        elif distances.get("pretrained"):
            lines += ["", f"Pre-trained checkpoint: {distances['pretrained']}"]
    interpolation = results.get("basin", {}).get("interpolation")
    if interpolation:
        accs = ", ".join(f"{p['alpha']:.2f}: {100 * p['accuracy']:.1f}" for p in interpolation["points"])
        a, b = interpolation["members"]
        lines += ["", f"Accuracy (%) along the line member-{a} -> member-{b} (alpha: acc): {accs}"]
    ood = results.get("ood")
    if ood:
        names = list(ood["mean"])
        lines += ["", f"OOD accuracy (%), mean over severities {ood['settings']['severities']}:", ""]
        lines += ["| corruption | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for corruption, entry in ood["corruptions"].items():
            lines.append(
                f"| {corruption} | " + " | ".join(f"{100 * entry['mean'][n]['accuracy']:.2f}" for n in names) + " |"
            )
        lines.append("| **mean** | " + " | ".join(f"{100 * ood['mean'][n]['accuracy']:.2f}" for n in names) + " |")
    plots = results.get("plots")
    if plots:
        lines += [""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------ plots


def plot_metric_vs_size(
    quality_vs_size: Sequence[dict[str, float]],
    path: str | os.PathLike,
    soup_vs_size: Sequence[dict[str, float]] | None = None,
    mean_member: dict[str, float] | None = None,
    title: str = "",
) -> Path:
    """Accuracy and NLL of the ensemble (and the uniform soup) of the first k members, k = 1..K."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, label) in zip(axes, (("accuracy", "accuracy (%)"), ("nll", "NLL"))):
        scale = 100.0 if key == "accuracy" else 1.0
        sizes = [r["size"] for r in quality_vs_size]
        ax.plot(sizes, [scale * r[key] for r in quality_vs_size], "o-", label="ensemble")
        if soup_vs_size:
            ax.plot(
                [r["size"] for r in soup_vs_size], [scale * r[key] for r in soup_vs_size], "s--", label="uniform soup"
            )
        if mean_member:
            ax.axhline(scale * mean_member[key], color="gray", linestyle=":", label="mean member")
        ax.set_xlabel("ensemble size k (first k members)")
        ax.set_ylabel(label)
        ax.set_xticks(sizes)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "Quality vs ensemble size")
    return save_figure(fig, Path(path))


def plot_diversity_matrix(matrix: Sequence[Sequence[float]], names: Sequence[str], path: str | os.PathLike) -> Path:
    """Heat map of the pairwise diversity (percent) between members."""
    plt = pyplot()
    matrix = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 1.2 * len(names) + 1.5))
    image = ax.imshow(matrix, cmap="viridis", vmin=0)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.1f}",
                ha="center",
                va="center",
                color="w" if matrix[i, j] < matrix.max() / 2 else "k",
            )
    fig.colorbar(image, ax=ax, label="diversity (%)")
    ax.set_title("Pairwise diversity: 100 * disagreement / max error")
    return save_figure(fig, Path(path))


def member_lr_curves(manifest: EnsembleManifest) -> list[dict[str, Any]]:
    """The learning rate of each member's training phase against the whole run's step axis.

    Each member's phase is the cosine decay (after its optional warmup) of `hf_starsse.cyclic_schedule`, from its
    `learning_rate` over its `num_steps`, placed at its `schedule_offset`.
    """
    from .ensemble_config import EnsembleTrainingArguments

    hp = manifest.hyperparameters or {}
    curves = []
    for member in manifest.members:
        if member.num_steps < 1:
            continue
        if member.parent is None:
            warmup = int(hp.get("warmup_steps") or 0)
        else:
            warmup = EnsembleTrainingArguments.resolve_warmup(
                float(hp.get("cycle_warmup_steps") or 0), member.num_steps
            )
        warmup = max(0, min(warmup, member.num_steps - 1))
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=member.learning_rate)
        schedule = get_cyclic_cosine_schedule(
            optimizer, num_first_steps=member.num_steps, num_cycle_steps=1, num_cycles=0, num_first_warmup_steps=warmup
        )
        multiplier = schedule.lr_lambdas[0]
        steps = np.arange(member.num_steps)
        curves.append(
            {
                "index": member.index,
                "steps": (steps + member.schedule_offset).tolist(),
                "lr": [member.learning_rate * multiplier(int(t)) for t in steps],
                "parent": member.parent,
            }
        )
    return curves


def plot_lr_schedule(manifest: EnsembleManifest, path: str | os.PathLike) -> Path | None:
    """The members' learning-rate schedules on the run's step axis (None when the manifest has no step facts)."""
    curves = member_lr_curves(manifest)
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    styles = ("-", "--", "-.", ":")
    for rank, curve in enumerate(curves):
        parent = "" if curve["parent"] is None else f" (from member-{curve['parent']})"
        # StarSSE / Local DE phases overlap: earlier members are drawn thicker underneath so every one stays visible
        ax.plot(
            curve["steps"],
            curve["lr"],
            styles[rank % len(styles)],
            linewidth=max(1.0, 1.0 + 0.7 * (len(curves) - 1 - rank)),
            label=f"member-{curve['index']}{parent}",
        )
    ax.set_xlabel("optimizer step of the run")
    ax.set_ylabel("learning rate")
    ax.set_title(f"Learning-rate schedule ({manifest.strategy})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, Path(path))


def plot_interpolation(points: Sequence[dict[str, float]], path: str | os.PathLike, label: str = "") -> Path:
    """Accuracy and NLL along the straight line between two models."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    alphas = [p["alpha"] for p in points]
    axes[0].plot(alphas, [100 * p["accuracy"] for p in points], "o-")
    axes[0].set_ylabel("accuracy (%)")
    axes[1].plot(alphas, [p["nll"] for p in points], "o-", color="tab:red")
    axes[1].set_ylabel("NLL")
    for ax in axes:
        ax.set_xlabel("alpha (0 = first model, 1 = second)")
        ax.grid(alpha=0.3)
    fig.suptitle(label or "Linear interpolation between two members")
    return save_figure(fig, Path(path))


def plot_plane(plane: dict[str, Any], path: str | os.PathLike, metric: str = "accuracy") -> Path:
    """Contour map of `metric` on the plane through three models, with the three models marked and named.

    Axes are weight-space distances: x along the line from the first model to the second, y orthogonal to it, towards
    the third. Each name is placed on the side of its marker that faces the middle of the plot, so it stays inside.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.8))
    grid = np.asarray(plane["metrics"][metric]) * (100.0 if metric == "accuracy" else 1.0)
    contour = ax.contourf(plane["x"], plane["y"], grid, levels=12, cmap="viridis")
    fig.colorbar(contour, ax=ax, label=f"{metric} (%)" if metric == "accuracy" else metric)
    names = plane.get("names", ["0", "1", "2"])
    x_mid = (min(plane["x"]) + max(plane["x"])) / 2
    y_mid = (min(plane["y"]) + max(plane["y"])) / 2
    for i, (x, y) in enumerate(plane["points"]):
        ax.plot(x, y, "w*", markersize=12, markeredgecolor="k")
        right, up = x <= x_mid, y <= y_mid  # the label goes towards the centre
        ax.annotate(
            names[i],
            (x, y),
            xytext=(6 if right else -6, 6 if up else -6),
            textcoords="offset points",
            ha="left" if right else "right",
            va="bottom" if up else "top",
            color="w",
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.2", "fc": "black", "alpha": 0.45, "lw": 0},
        )
    ax.set_xlabel(f"weight-space distance along {names[0]} \u2192 {names[1]}")
    ax.set_ylabel(f"orthogonal distance towards {names[2]}")
    ax.set_title(f"{metric} on the plane through three models")
    fig.tight_layout()
    return save_figure(fig, Path(path))


# ----------------------------------------------------------------------------------------------------------- writer


def write_report(
    results: dict[str, Any],
    output_dir: str | os.PathLike,
    manifest: EnsembleManifest | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write `eval.json`, `eval.md` and the PNG plots into `output_dir` (each file atomically).

    Returns:
        `dict[str, Path]`: what was written, by name (`json`, `markdown`, and one entry per plot).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if plots:
        test = results["test"]
        written["metric_vs_size"] = plot_metric_vs_size(
            test["quality_vs_size"],
            output_dir / "metric_vs_size.png",
            soup_vs_size=results.get("soup_vs_size"),
            mean_member=test["mean_member"],
            title=f"Quality vs ensemble size ({results.get('strategy', '')})",
        )
        if len(test["members"]) > 1:
            written["diversity_matrix"] = plot_diversity_matrix(
                test["diversity_matrix"], test["member_names"], output_dir / "diversity_matrix.png"
            )
        if manifest is not None:
            lr_path = plot_lr_schedule(manifest, output_dir / "lr_schedule.png")
            if lr_path is not None:
                written["lr_schedule"] = lr_path
        interpolation = results.get("basin", {}).get("interpolation")
        if interpolation:
            a, b = interpolation["members"]
            written["interpolation"] = plot_interpolation(
                interpolation["points"], output_dir / "interpolation.png", label=f"member-{a} -> member-{b}"
            )
        plane = results.get("basin", {}).get("plane")
        if plane:
            written["plane"] = plot_plane(plane, output_dir / "plane.png")
        results["plots"] = [str(p.name) for p in written.values()]
    atomic_write_json(output_dir / EVAL_JSON, results)
    written["json"] = output_dir / EVAL_JSON
    atomic_write_text(output_dir / EVAL_MD, markdown_report(results))
    written["markdown"] = output_dir / EVAL_MD
    return written
