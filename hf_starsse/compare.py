"""`hf-starsse compare`: every method on one setup (the offline demo: ImageNet EfficientNet-Lite0 on a small split of
scikit-learn's digits) with matched budgets, one table and one plot.

Budgets: every method gets about `num_members * epochs` epochs of optimizer steps in total. Local DE trains K members
of `epochs` epochs; SSE / StarSSE a first fine-tuning of `epochs` and K - 1 cycles of `epochs` (ratios 1). The post-hoc
methods start from one shared member 0 (the same recipe and seed as Local DE's member 0, taken from a trained run when
there is one) and spend the remaining `(K - 1) * epochs` epochs: FGE in K - 1 cycles, SWA / SWAG collecting 20
snapshots at a constant LR, cSGLD in K cycles, SPRO training 2 vertices; Laplace does not train. Their wall time
includes member 0's.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .demo import load_demo_data, train_demo_ensemble
from .efficientnet_lite0 import build_efficientnet_lite0_checkpoint
from .ensemble import Ensemble, evaluate_model, load_member_model
from .eval_data import make_eval_dataloader
from .file_utils import atomic_write_json, atomic_write_text
from .manifest import EnsembleManifest
from .methods import (
    CSGLDConfig,
    FGEConfig,
    LaplaceConfig,
    SPROConfig,
    SWAGConfig,
    build_csgld,
    build_fge,
    build_laplace,
    build_spro,
    build_swag,
    laplace_predictive_metrics,
)
from .methods._common import _recalibrate_bn
from .run_folder import LAPLACE_PREDICTIVE_NAME, RunFolder
from .soups import load_soup_into, uniform_soup

TRAINER_METHODS = ("local_de", "sse", "star_sse")
POSTHOC_METHODS = ("fge", "swa", "swag", "csgld", "laplace", "spro")
COMPARE_METHODS = TRAINER_METHODS + POSTHOC_METHODS
RESULTS_NAME = "compare_results.json"
TABLE_NAME = "compare_table.md"
PLOT_NAME = "compare.png"


@dataclass
class CompareConfig:
    """Settings of `hf-starsse compare`.

    Args:
        output_dir (`str`): Where the checkpoint, one run folder per method, the table and the plot go.
        methods (`tuple[str, ...]`): Methods to run, among `COMPARE_METHODS`.
        num_members (`int`): Ensemble size K (SWA is always one model).
        train_per_class (`int`): Training images per digit class.
        image_size (`int`): Side of the upscaled digit images.
        epochs (`float`): Epochs of one fine-tuning (member 0, and each SSE / StarSSE cycle).
        learning_rate (`float`): SGD learning rate of the fine-tunings and the post-hoc methods' peak LR.
        batch_size (`int`): Training batch size.
        seed (`int`): Base seed.
        csgld_temperature (`float`): cSGLD posterior temperature.
        max_test_examples (`int`, *optional*): Evaluate on the first this many test images only (all when `None`).
    """

    output_dir: str = "hf_starsse_compare"
    methods: tuple[str, ...] = COMPARE_METHODS
    num_members: int = 3
    train_per_class: int = 10
    image_size: int = 32  # the demo's size (members reach ~0.83 test accuracy; the partial last batch is dropped)
    epochs: float = 5
    learning_rate: float = 0.01
    batch_size: int = 16
    seed: int = 42
    csgld_temperature: float = 1e-3
    max_test_examples: int | None = None

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in COMPARE_METHODS]
        if unknown or not self.methods:
            raise ValueError(f"`methods` should be taken from {', '.join(COMPARE_METHODS)}, got {unknown or '[]'}.")
        if self.num_members < 2:
            raise ValueError(f"`num_members` should be at least 2, got {self.num_members}.")
        if self.max_test_examples is not None and self.max_test_examples < 1:
            raise ValueError(f"`max_test_examples` should be positive or None, got {self.max_test_examples}.")
        if self.epochs <= 0:
            raise ValueError(f"`epochs` should be positive, got {self.epochs}.")
        if Path(self.output_dir, RESULTS_NAME).exists():
            raise FileExistsError(f"`output_dir` {self.output_dir} already holds a comparison; choose another folder.")


# ----- running the methods -------------------------------------------------------------------------------------------
def _trainer_run(
    config: CompareConfig, strategy: str, checkpoint: str, processor, data, num_members: int, first_member=None
) -> Path:
    run_dir = Path(config.output_dir) / (strategy if num_members > 1 else "member0")
    train_demo_ensemble(
        run_dir, strategy, num_members, config, checkpoint, processor, data["train"], data["validation"],
        first_member=str(first_member) if first_member is not None else None,
    )  # fmt: skip
    return run_dir


def _posthoc_run(config: CompareConfig, method: str, member0: Path, train, test=None) -> Path:
    k, lr, seed, bs = config.num_members, config.learning_rate, config.seed, config.batch_size
    steps_per_epoch = max(1, len(train) // bs)  # full batches only, as the trainer runs (dataloader_drop_last)
    budget = max(2, round((k - 1) * config.epochs * steps_per_epoch))  # optimizer steps after member 0
    run_dir = Path(config.output_dir) / method
    common = dict(batch_size=bs, seed=seed, weight_decay=1e-4)
    if method == "fge":
        cfg = FGEConfig(
            num_members=k,
            learning_rate=lr,
            min_learning_rate=lr / 100,
            **common,
            cycle_steps=max(2, budget // (k - 1)),
        )
        build_fge(member0, train, run_dir, cfg)
    elif method in ("swa", "swag"):
        snapshots = max(2, min(20, budget))
        cfg = SWAGConfig(
            method=method,
            num_members=1 if method == "swa" else k,
            learning_rate=lr / 2,
            num_snapshots=snapshots,
            collect_every_steps=max(1, budget // snapshots),
            rank=min(20, snapshots),
            **common,
        )
        build_swag(member0, train, run_dir, cfg)
    elif method == "csgld":
        cycle = max(2, budget // k)
        cfg = CSGLDConfig(
            num_members=k,
            learning_rate=lr,
            cycle_steps=cycle,
            exploration_fraction=min(0.8, (cycle - 1) / cycle),  # at least one sampling step per cycle
            temperature=config.csgld_temperature,
            **common,
        )
        build_csgld(member0, train, run_dir, cfg)
    elif method == "laplace":
        output = build_laplace(member0, train, run_dir, LaplaceConfig(num_members=k, **common))
        if test is not None:  # laplace-torch's predictive (probit GLM) over the posterior, next to the sampled members
            predictive = laplace_predictive_metrics(output.details["laplace"], test, batch_size=256)
            atomic_write_json(run_dir / LAPLACE_PREDICTIVE_NAME, predictive)
    elif method == "spro":
        cfg = SPROConfig(
            num_members=k, num_vertices=3, vertex_steps=max(1, budget // 2), learning_rate=lr / 2, **common
        )
        build_spro(member0, train, run_dir, cfg)
    return run_dir


def _total_steps(run_dir: Path) -> int:
    return int(sum(m.num_steps for m in EnsembleManifest.load(run_dir).members))


def evaluate_method(run_dir: Path, data, batch_size: int) -> dict:
    """Ensemble accuracy / NLL / ECE, member diversity and uniform-soup accuracy of a run on the test split."""
    members = EnsembleManifest.load(run_dir).member_paths(run_dir)
    test_loader = make_eval_dataloader(data["test"], batch_size=256)
    result = Ensemble.from_pretrained(members, device="cpu").evaluate(test_loader)
    soup_model = load_member_model(members[0], device="cpu")
    load_soup_into(soup_model, uniform_soup(members))
    _recalibrate_bn(soup_model, data["train"], batch_size)
    soup = evaluate_model(soup_model, test_loader)
    return {
        "num_members": len(members),
        "accuracy": result["ensemble"]["accuracy"],
        "nll": result["ensemble"]["nll"],
        "ece": result["ensemble"]["ece"],
        "diversity": result["diversity"] if len(members) > 1 else float("nan"),
        "soup_accuracy": soup["accuracy"],
        "mean_member_accuracy": result["mean_member"]["accuracy"],
    }


def format_compare_table(rows: list[dict]) -> str:
    lines = [
        "| method | members | train steps | accuracy | NLL | ECE | diversity | soup accuracy | mean member acc. "
        "| wall time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['num_members']} | {r['train_steps']} | {r['accuracy']:.4f} | {r['nll']:.4f} | "
            f"{r['ece']:.4f} | {r['diversity']:.1f} | {r['soup_accuracy']:.4f} | {r['mean_member_accuracy']:.4f} | "
            f"{r['wall_time_s']:.0f} |"
        )
    return "\n".join(lines)


def plot_compare(rows: list[dict], path: Path) -> None:
    from .evaluation_report import pyplot, save_figure

    plt = pyplot()
    names = [r["method"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title in zip(
        axes, ("accuracy", "nll", "soup_accuracy"), ("ensemble test accuracy", "ensemble test NLL", "soup accuracy")
    ):
        ax.bar(names, [r[key] for r in rows], color="tab:blue")
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    save_figure(fig, path)


def run_compare(config: CompareConfig) -> list[dict]:
    """Run every method of `config.methods` on the demo setup; writes the results JSON, the table and the plot."""
    out = Path(config.output_dir)
    start = time.time()
    checkpoint = str(build_efficientnet_lite0_checkpoint(out / "pretrained" / "efficientnet_lite0"))
    processor, _, data = load_demo_data(checkpoint, config.image_size, config.train_per_class, config.seed)
    if config.max_test_examples is not None and config.max_test_examples < len(data["test"]):
        data["test"] = data["test"].select(range(config.max_test_examples))
    print(
        f"[compare] {len(data['train'])} train / {len(data['test'])} test digits at {config.image_size}px", flush=True
    )
    times: dict[str, float] = {}
    run_dirs: dict[str, Path] = {}
    adopted: dict[str, int] = {}  # SSE / StarSSE reusing Local DE's member 0 (same recipe and seed): its steps
    for method in [m for m in TRAINER_METHODS if m in config.methods]:
        t = time.time()
        reuse = method in ("sse", "star_sse") and "local_de" in run_dirs
        first = RunFolder(run_dirs["local_de"]).member_dir(0) if reuse else None
        run_dirs[method] = _trainer_run(config, method, checkpoint, processor, data, config.num_members, first)
        times[method] = time.time() - t
        if first is not None:  # charged its share of Local DE's time and steps, as if trained here
            times[method] += times["local_de"] / config.num_members
            adopted[method] = EnsembleManifest.load(run_dirs["local_de"]).members[0].num_steps
        print(f"[compare] {method}: trained in {times[method]:.0f}s", flush=True)
    posthoc = [m for m in POSTHOC_METHODS if m in config.methods]
    if posthoc:
        source = next((m for m in ("local_de", "star_sse", "sse") if m in run_dirs), None)
        if source is not None:  # same recipe and seed as a fresh member 0: reuse it, at its share of the time
            member0_run, member0_time = RunFolder(run_dirs[source]), times[source] / config.num_members
        else:
            t = time.time()
            member0_run = RunFolder(_trainer_run(config, "local_de", checkpoint, processor, data, 1))
            member0_time = time.time() - t
        member0 = member0_run.member_dir(0)
        member0_steps = member0_run.read_manifest().members[0].num_steps
        for method in posthoc:
            t = time.time()
            run_dirs[method] = _posthoc_run(config, method, member0, data["train"], data["test"])
            times[method] = time.time() - t + member0_time
            print(f"[compare] {method}: built in {time.time() - t:.0f}s (+ member 0)", flush=True)
    rows = []
    for method in [m for m in COMPARE_METHODS if m in run_dirs]:
        steps = _total_steps(run_dirs[method]) + adopted.get(method, 0)
        if method in POSTHOC_METHODS:
            steps = member0_steps + _posthoc_steps(run_dirs[method])
        rows.append(
            {
                "method": method,
                "train_steps": steps,
                "wall_time_s": times[method],
                **evaluate_method(run_dirs[method], data, config.batch_size),
            }
        )
        predictive_file = run_dirs[method] / LAPLACE_PREDICTIVE_NAME
        if method == "laplace" and predictive_file.is_file():
            predictive = json.loads(predictive_file.read_text())
            nan = float("nan")
            rows.append(
                {
                    **rows[-1],
                    "method": "laplace (predictive)",
                    "accuracy": predictive["accuracy"],
                    "nll": predictive["nll"],
                    "ece": predictive["ece"],
                    "diversity": nan,
                    "soup_accuracy": nan,
                    "mean_member_accuracy": nan,
                }
            )
    table = format_compare_table(rows)
    atomic_write_json(out / RESULTS_NAME, {"config": asdict(config), "rows": rows})
    atomic_write_text(out / TABLE_NAME, table + "\n")
    plot_compare(rows, out / PLOT_NAME)
    print("\n" + table + "\n", flush=True)
    print(f"[compare] done in {time.time() - start:.0f}s; {out / TABLE_NAME}, {out / PLOT_NAME}", flush=True)
    return rows


def _posthoc_steps(run_dir: Path) -> int:
    """Optimizer steps a post-hoc builder ran (its manifest's hyper-parameters and members)."""
    manifest = EnsembleManifest.load(run_dir)
    h = manifest.hyperparameters
    if manifest.strategy == "laplace":
        return 0
    if manifest.strategy == "spro":
        return int(h["resolved_vertex_steps"]) * (int(h["num_vertices"]) - 1)
    return int(max(m.num_steps for m in manifest.members))


def load_compare_results(output_dir: str | os.PathLike) -> dict:
    return json.loads((Path(output_dir) / RESULTS_NAME).read_text())
