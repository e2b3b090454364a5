"""The sweep's figures (as in the paper): accuracy against the cycle LR ratio, against the ensemble size for each
method's best configuration, and against compute (member-epochs). Each PNG is written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .evaluation_report import pyplot, save_figure
from .sweep_config import SweepConfig
from .sweep_folder import SweepFolder
from .sweep_markdown import METHOD_NAMES

COLORS = {"local_de": "tab:gray", "sse": "tab:blue", "star_sse": "tab:red", "member_0": "black"}
STYLES = {"sse": "--", "star_sse": "-"}
MARKERS = ["o", "s", "^", "D", "v", "P"]
TITLES = {"ensemble": "ensemble of members", "soup": "uniform soup, BatchNorm recalibrated"}


def _finish(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _scaled(stat: dict[str, Any]) -> tuple[float, float]:
    return 100 * stat["mean"], 100 * (stat["std"] or 0.0)


def plot_accuracy_vs_lr_ratio(rows: list[dict[str, Any]], config: SweepConfig, path: Path) -> Path:
    """Ensemble and soup test accuracy against the cycle LR ratio: one line per (method, epoch ratio), error bars
    = std over seeds, Local DE as a band (mean ± std)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    local = next((r for r in rows if r["method"] == "local_de"), None)
    for ax, target in zip(axes, ("ensemble", "soup")):
        key = f"{target}_accuracy"
        if local is not None and local[key]["mean"] is not None:
            mean, std = _scaled(local[key])
            ax.axhspan(mean - std, mean + std, color=COLORS["local_de"], alpha=0.25, label="Local DE (mean ± std)")
            ax.axhline(mean, color=COLORS["local_de"], lw=1)
        for method in config.cycle_methods:
            for j, epoch_ratio in enumerate(config.epoch_ratios):
                line = sorted(
                    (r for r in rows if r["method"] == method and r["epoch_ratio"] == epoch_ratio and r[key]["mean"]),
                    key=lambda r: r["lr_ratio"],
                )
                if not line:
                    continue
                ax.errorbar(
                    [r["lr_ratio"] for r in line],
                    [_scaled(r[key])[0] for r in line],
                    yerr=[_scaled(r[key])[1] for r in line],
                    color=COLORS[method],
                    ls=STYLES[method],
                    marker=MARKERS[j % len(MARKERS)],
                    capsize=3,
                    label=f"{METHOD_NAMES[method]}, epoch ratio {epoch_ratio:g}",
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(config.lr_ratios), [f"{r:g}" for r in config.lr_ratios])
        ax.set_xlabel("cycle LR ratio (cycle peak LR / first fine-tuning LR)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{TITLES[target]} (mean ± std over {config.num_seeds} seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_accuracy_vs_size(rows: list[dict[str, Any]], best: dict[str, str], config: SweepConfig, path: Path) -> Path:
    """Ensemble test accuracy of the first k members against k, for each method's best configuration."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    by_config = {r["config"]: r for r in rows}
    for method, config_name in best.items():
        curve = by_config[config_name]["ensemble_vs_size"]
        sizes = [p["size"] for p in curve]
        mean = [100 * p["accuracy"] for p in curve]
        std = [100 * p["accuracy_std"] for p in curve]
        ax.plot(sizes, mean, color=COLORS[method], ls=STYLES.get(method, ":"), marker="o", label=config_name)
        ax.fill_between(sizes, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=COLORS[method], alpha=0.15)  # fmt: skip
    ax.set_xticks(range(1, config.num_members + 1))
    title = "each method's best configuration (on validation); band = std over seeds"
    return _finish(fig, ax, path, "ensemble size k (first k members)", "ensemble test accuracy (%)", title)


def plot_accuracy_vs_compute(rows: list[dict[str, Any]], config: SweepConfig, path: Path) -> Path:
    """Test accuracy against compute. Left: the ensembles of the first k members (k = 1..K) of Local DE and of each
    cycle method's best LR ratio (on validation) per epoch ratio, at the member-epochs they cost (SSE / StarSSE:
    member 0's epochs plus k - 1 cycles). Right: the uniform soup of the same runs' K members at their cost."""
    plt = pyplot()
    fig, (ax, soup_ax) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    first_epochs = _first_member_epochs(rows, config)
    for j, (row, label) in enumerate(_compute_lines(rows, config)):
        method, k_all = row["method"], len(row["ensemble_vs_size"])
        cycle = (row["member_epochs"]["mean"] - first_epochs) / max(1, k_all - 1) if row["lr_ratio"] else first_epochs
        cost = [first_epochs + (k - 1) * cycle for k in range(1, k_all + 1)]
        accuracy = [100 * p["accuracy"] for p in row["ensemble_vs_size"]]
        style = dict(color=COLORS[method], marker=MARKERS[j % len(MARKERS)])
        ax.plot(cost, accuracy, ls=STYLES.get(method, ":"), ms=4, label=label, **style)
        if row["soup_accuracy"]["mean"] is not None:
            mean, std = _scaled(row["soup_accuracy"])
            soup_ax.errorbar(cost[-1], mean, yerr=std, ls="none", mfc="white", capsize=3, **style)
    soup_ax.set_xlabel("compute (member-epochs, member 0 included)")
    soup_ax.set_ylabel("test accuracy (%)")
    soup_ax.set_title("uniform soup of the K members (± std over seeds), same lines", fontsize=9)
    soup_ax.grid(alpha=0.3)
    title = "ensembles of the first k members: Local DE and each method's best LR ratio per epoch ratio"
    return _finish(fig, ax, path, "compute (member-epochs, member 0 included)", "ensemble test accuracy (%)", title)


def _first_member_epochs(rows: list[dict[str, Any]], config: SweepConfig) -> float:
    """Epochs of one first fine-tuning: Local DE's member-epochs / K, else the recipe's `num_train_epochs`."""
    local = next((r for r in rows if r["method"] == "local_de" and r["member_epochs"]["mean"]), None)
    if local is not None:
        return local["member_epochs"]["mean"] / len(local["ensemble_vs_size"])
    return float(config.recipe.get("num_train_epochs", 1))


def _compute_lines(rows: list[dict[str, Any]], config: SweepConfig) -> list[tuple[dict[str, Any], str]]:
    lines = [(r, METHOD_NAMES[r["method"]]) for r in rows if r["lr_ratio"] is None]
    for method in config.cycle_methods:
        for epoch_ratio in config.epoch_ratios:
            candidates = [
                r
                for r in rows
                if r["method"] == method
                and r["epoch_ratio"] == epoch_ratio
                and r["validation_ensemble_accuracy"]["mean"] is not None
            ]
            if candidates:
                best = max(candidates, key=lambda r: r["validation_ensemble_accuracy"]["mean"])
                label = f"{METHOD_NAMES[method]}, epoch ratio {epoch_ratio:g} (best LR ratio {best['lr_ratio']:g})"
                lines.append((best, label))
    return lines


def write_figures(folder: SweepFolder, config: SweepConfig, report: dict[str, Any]) -> dict[str, Path]:
    rows = report["rows"]
    figures = {}
    if config.cycle_methods:
        figures["accuracy_vs_lr_ratio"] = plot_accuracy_vs_lr_ratio(
            rows, config, folder.figure_path("accuracy_vs_lr_ratio")
        )
    figures["accuracy_vs_ensemble_size"] = plot_accuracy_vs_size(
        rows, report["best"]["ensemble"], config, folder.figure_path("accuracy_vs_ensemble_size")
    )
    figures["accuracy_vs_compute"] = plot_accuracy_vs_compute(rows, config, folder.figure_path("accuracy_vs_compute"))
    return figures
