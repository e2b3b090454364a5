"""Benchmark: the offline demo's recipe at several image sizes / weight-decay groupings / tail-batch settings.

Runs `hf-starsse demo` (Local DE + StarSSE, 5 members) once per variant, one after the other in this process, and
prints member / mean-member / ensemble test accuracy and wall time side by side:

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/demo_recipe.py --output-dir /tmp/demo_bench \
        --variants 32,64 32:keep_last 64:trainer_wd

`--step-timing 32 64` instead times training steps of the demo's model (batch 16, SGD) at those sizes, interleaved
(size after size, `--repeats` rounds of `--steps` steps; min and median per size, and their ratio to the first size):
the cost side of the image-size choice, steadier than whole-demo wall times on a shared machine.

A variant is `SIZE[:flag,...]` with flags `keep_last` (do not drop the partial last batch: the pre-fix recipe) and
`trainer_wd` (the Trainer's grouping: no decay on biases / norm weights). Results go to `<output-dir>/<variant>/` and
`<output-dir>/demo_recipe.json`. Wall times on a shared machine are indicative only: compare variants of one run.
"""

from __future__ import annotations

import hf_starsse  # noqa: F401  (first: makes torchvision importable for transformers' vision models)
from hf_starsse.demo import DemoConfig, run_demo

import argparse
import dataclasses
import json
import time
from pathlib import Path


@dataclasses.dataclass
class VariantConfig(DemoConfig):
    dataloader_drop_last: bool = True


def parse_variant(text: str) -> tuple[int, set[str]]:
    size, _, flags = text.partition(":")
    return int(size), {f for f in flags.split(",") if f}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="demo_recipe_bench")
    parser.add_argument("--variants", nargs="+", default=["32", "64"])
    parser.add_argument("--epochs", type=float, default=DemoConfig.epochs)
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument("--step-timing", type=int, nargs="+", default=None, help="Image sizes to time steps at.")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    out = Path(args.output_dir)
    if args.step_timing:
        print(time_steps(out, args.step_timing, args.steps, args.repeats))
        return
    rows = []
    for variant in args.variants:
        size, flags = parse_variant(variant)
        config = VariantConfig(
            output_dir=str(out / variant.replace(":", "_").replace(",", "_")),
            image_size=size,
            epochs=args.epochs,
            seed=args.seed,
            weight_decay_on_norm_and_bias="trainer_wd" not in flags,
            dataloader_drop_last="keep_last" not in flags,
        )
        start = time.time()
        results = run_demo(config)
        rows.append({"variant": variant, "wall_s": time.time() - start, "results": results})
        (out / "demo_recipe.json").write_text(json.dumps(rows, indent=2))
    print(format_rows(rows))


def time_steps(out: Path, sizes: list[int], steps: int, repeats: int) -> str:
    """Interleaved timing of SGD training steps (batch 16, train mode) of the demo's EfficientNet-Lite0 per size."""
    from hf_starsse.demo import _model_init
    from hf_starsse.efficientnet_lite0 import build_efficientnet_lite0_checkpoint

    from statistics import median

    import torch

    checkpoint = str(build_efficientnet_lite0_checkpoint(out / "pretrained" / "efficientnet_lite0"))
    model = _model_init(checkpoint, 10).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    labels = torch.randint(0, 10, (16,))
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        for size in sizes:
            pixels = torch.randn(16, 3, size, size)
            start = time.perf_counter()
            for _ in range(steps):
                optimizer.zero_grad()
                model(pixel_values=pixels, labels=labels).loss.backward()
                optimizer.step()
            times[size].append((time.perf_counter() - start) / steps)
    lines = ["| size | s/step min | s/step median | ratio (median) |", "|---:|---:|---:|---:|"]
    base = median(times[sizes[0]][1:])
    for size in sizes:
        t = times[size][1:]
        lines.append(f"| {size} | {min(t):.4f} | {median(t):.4f} | {median(t) / base:.2f} |")
    return "\n".join(lines)


def format_rows(rows: list[dict]) -> str:
    lines = [
        "| variant | strategy | member accuracies | mean member | ensemble | wall (s, both) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        for res in row["results"]:
            members = " ".join(f"{m['accuracy']:.3f}" for m in res["members"])
            lines.append(
                f"| {row['variant']} | {res['strategy']} | {members} | {res['mean_member']['accuracy']:.3f} | "
                f"{res['ensemble']['accuracy']:.3f} | {row['wall_s']:.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
