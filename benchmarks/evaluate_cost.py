"""Benchmark: forward passes `hf-starsse evaluate` does vs the minimum its settings need; a first and a repeated run.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/evaluate_cost.py /tmp/demo/star_sse
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/evaluate_cost.py RUN --args --soup greedy --ood \\
        --corruptions gaussian_noise fog --severities 1 3 5

The run folder is copied (without its `predictions/`, `eval/` and `soups/`) into a temporary folder, so the first
evaluation starts cold. Every image that goes through a whole classifier (evaluation and BatchNorm recalibration) is
counted with a global forward hook. The minimum is derived from the settings and the results, independently of the
cache: each distinct model once per dataset (members and soups on the test split, members and the greedy soup's
candidate soups on the validation split, line points, OOD data), plus one BatchNorm recalibration pass per derived
model built (soups of more than one member and line points; a soup of one member is that member, the line's end
points are members, saved soups are reloaded, not rebuilt). Printed: images counted, minimum, ratio, wall time of the
first and of the repeated run, the 1-minute load before each.
"""

from __future__ import annotations

import hf_starsse  # noqa: F401  (first: makes torchvision importable for transformers' vision models)
from hf_starsse.cli import main as cli_main
from hf_starsse.run_folder import EVAL_DIR, PREDICTIONS_DIR, SOUPS_DIR

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

README_EXAMPLE = ["--soup", "greedy", "--ood", "--corruptions", "gaussian_noise", "fog", "--severities", "1", "3", "5"]


@contextlib.contextmanager
def count_images():
    counted = {"images": 0, "calls": 0}

    def hook(module, args, output):
        if type(module).__name__.endswith("ForImageClassification"):
            logits = output.logits if hasattr(output, "logits") else output[0]
            counted["images"] += int(logits.shape[0])
            counted["calls"] += 1

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield counted
    finally:
        handle.remove()


def minimum_images(results: dict, sizes: dict[str, int], interpolation_points: int) -> int:
    """The fewest images through a model the settings need (see the module docstring)."""
    k, n_test, n_val, n_bn = results["num_members"], sizes["test"], sizes["validation"], sizes["bn"]
    bn = n_bn if results.get("data", {}).get("bn_recalibration") else 0
    total = k * n_test  # members on test
    first_k = [list(range(j)) for j in range(2, k + 1)]
    if "soup_vs_size" in results:
        total += (k - 1) * (n_test + bn)  # uniform soups of the first k members
    greedy = results.get("soups", {}).get("greedy")
    if greedy:
        total += k * n_val  # members on validation
        selected: list[int] = [greedy["history"][0]["index"]]
        for step in greedy["history"][1:]:
            candidate = sorted(selected + [step["index"]])
            total += n_val + bn  # a candidate soup on validation (its model rebuilt unless kept from the test pass)
            if step["accepted"]:
                selected = candidate
        if len(selected) > 1 and sorted(selected) not in first_k:
            total += n_test + bn
    if interpolation_points:
        total += max(interpolation_points - 2, 0) * (n_test + bn)
    if "ood" in results:
        settings = results["ood"]["settings"]
        soups = {tuple(sorted(s["members"])) for s in results.get("soups", {}).values()}
        distinct = k + len([s for s in soups if len(s) > 1])
        total += len(settings["corruptions"]) * len(settings["severities"]) * distinct * settings["max_samples"]
    return total


def run(run_dir: Path, extra: list[str]) -> tuple[float, dict, dict]:
    load = os.getloadavg()[0]
    with count_images() as counted:
        start = time.perf_counter()
        assert cli_main(["evaluate", str(run_dir), "--no-progress", "--no-plots", *extra]) == 0
        wall = time.perf_counter() - start
    return wall, dict(counted, load=load), json.loads((run_dir / EVAL_DIR / "eval.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="A run folder with eval_data/ (e.g. the demo's star_sse).")
    parser.add_argument("--args", nargs=argparse.REMAINDER, default=README_EXAMPLE, help="evaluate's options.")
    parser.add_argument("--keep-predictions", action="store_true", help="Start from the run's own predictions/.")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / Path(options.run).name
        skip = {EVAL_DIR, SOUPS_DIR} | (set() if options.keep_predictions else {PREDICTIONS_DIR})
        top = Path(options.run)
        shutil.copytree(top, run_dir, ignore=lambda d, names: [n for n in names if Path(d) == top and n in skip])
        first_wall, first, results = run(run_dir, options.args)
        again_wall, again, results_again = run(run_dir, options.args)
    from datasets import load_from_disk

    data = load_from_disk(str(Path(options.run) / "eval_data"))
    bn_split = "train" if "train" in data else "validation"
    sizes = {"test": len(data["test"]), "validation": len(data["validation"]), "bn": len(data[bn_split])}
    points = len(results["basin"].get("interpolation", {}).get("points", [])) or 0
    minimum = minimum_images(results, sizes, points)
    print(f"evaluate {' '.join(options.args)}  on {options.run} (torch threads {torch.get_num_threads()})")
    print(f"  minimum needed (images through a model): {minimum}")
    for name, wall, counted in (("first", first_wall, first), ("repeated", again_wall, again)):
        print(
            f"  {name:>8}: {counted['images']:6d} images in {counted['calls']:4d} forward calls "
            f"({counted['images'] / minimum:.3f}x the minimum), wall {wall:7.1f} s, load1 before {counted['load']:.1f}"
        )

    def comparable(res: dict) -> str:  # without this call's cost, files and fresh evaluation id
        text = json.dumps({k: v for k, v in res.items() if k not in ("written", "cost")}, sort_keys=True)
        return text.replace(res.get("evaluation_id", "<none>"), "<id>")

    same = comparable(results) == comparable(results_again)
    print(f"  repeated results identical to the first: {same}")


if __name__ == "__main__":
    main()
