"""Benchmark: `EnsembleTrainer` (K members) vs one plain `Trainer` doing the same optimizer steps and evaluations.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/trainer_overhead.py                 # tiny ResNet + EfficientNet
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/trainer_overhead.py --models tiny --members 5 --steps 5

The ensemble trains a Local DE of K members of S steps each (one `Trainer.train()` per member, each followed by an
evaluation on the validation split when `--evaluate`). The baseline is one plain `Trainer.train()` of K x S steps
evaluated every S steps: the same optimizer steps, forward passes and evaluations, with the fixed costs of one
`train()` instead of K. Both are built the same way (`model_init` per member vs once) and timed around `train()`.

Printed per model, for `--repeats` interleaved repeats (plain, ensemble, plain, ...): min and median wall time of each,
the ratio ensemble / plain (min, median), the fixed cost per member ((ensemble - plain) / K) and the 1-minute load
average (os.getloadavg) before each repeat. `--profile` adds a cProfile of one ensemble run (top functions by
cumulative time) to explain what remains.
"""

from __future__ import annotations

import hf_starsse  # noqa: F401  (first: makes torchvision importable for transformers' vision models)
from hf_starsse.ensemble_config import EnsembleTrainingArguments
from hf_starsse.ensemble_trainer import EnsembleTrainer

import argparse
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from statistics import median

import torch
from transformers import (
    AutoModelForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainingArguments,
)


def tiny_setup(workdir: Path) -> tuple:
    """A tiny random ResNet (8/16 channels) on 16x16 images: per-step compute is negligible, fixed costs show."""
    from datasets import Array3D, Dataset, Features, Value

    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4)
    ResNetForImageClassification(config).save_pretrained(workdir / "tiny")
    g = torch.Generator().manual_seed(0)
    features = Features({"pixel_values": Array3D(shape=(3, 16, 16), dtype="float32"), "labels": Value("int64")})

    def split(n: int) -> Dataset:
        data = {"pixel_values": torch.randn(n, 3, 16, 16, generator=g).numpy(), "labels": torch.randint(0, 4, (n,))}
        return Dataset.from_dict(data, features=features).with_format("torch")

    return partial(_load, str(workdir / "tiny"), 4), split(64), split(64), None


def efficientnet_setup(workdir: Path) -> tuple:
    """The demo's model and data: EfficientNet-Lite0 (ImageNet) on 64 px digits, 100 train / 300 validation."""
    from hf_starsse.demo import load_demo_data
    from hf_starsse.efficientnet_lite0 import build_efficientnet_lite0_checkpoint

    checkpoint = str(build_efficientnet_lite0_checkpoint(workdir / "efficientnet_lite0"))
    processor, _, data = load_demo_data(checkpoint, 64, 10, 42)
    return partial(_load, checkpoint, 10), data["train"], data["validation"], processor


def _load(checkpoint: str, num_labels: int) -> torch.nn.Module:
    return AutoModelForImageClassification.from_pretrained(
        checkpoint, num_labels=num_labels, ignore_mismatched_sizes=True
    )


def _common(output_dir: str, batch_size: int) -> dict:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=256,
        learning_rate=0.01,
        optim="sgd",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )


def run_plain(setup: tuple, members: int, steps: int, evaluate: bool, batch_size: int) -> float:
    model_init, train, validation, processor = setup
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            **_common(out, batch_size),
            max_steps=members * steps,
            eval_strategy="steps" if evaluate else "no",
            eval_steps=steps,
        )
        trainer = Trainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=validation)
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def run_ensemble_with_gc(setup: tuple, members: int, steps: int, evaluate: bool, batch_size: int) -> float:
    """The ensemble with accelerate's own `free_memory()` (a full `gc.collect()`) at every member's `train()`: what
    `EnsembleTrainer` did before `without_full_gc_on_cpu`."""
    from hf_starsse import ensemble_trainer

    import contextlib

    patched = ensemble_trainer.without_full_gc_on_cpu
    ensemble_trainer.without_full_gc_on_cpu = lambda *args: contextlib.nullcontext()
    try:
        return run_ensemble(setup, members, steps, evaluate, batch_size)
    finally:
        ensemble_trainer.without_full_gc_on_cpu = patched


def run_ensemble(setup: tuple, members: int, steps: int, evaluate: bool, batch_size: int) -> float:
    model_init, train, validation, processor = setup
    with tempfile.TemporaryDirectory() as out:
        args = EnsembleTrainingArguments(
            **_common(out, batch_size),
            ensemble_strategy="local_de",
            num_members=members,
            max_steps=steps,
            eval_strategy="no",
            evaluate_members=evaluate,
        )
        trainer = EnsembleTrainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=validation)
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def benchmark(name: str, setup: tuple, options: argparse.Namespace) -> None:
    runners = {"plain": run_plain, "ensemble": run_ensemble, "ensemble+gc": run_ensemble_with_gc}
    times: dict[str, list[float]] = {k: [] for k in runners}
    loads = []
    run_plain(setup, 1, 1, False, options.batch_size)  # warm-up: imports, first allocations
    for _ in range(options.repeats):
        loads.append(os.getloadavg()[0])
        for key, runner in runners.items():  # interleaved: plain, ensemble, ensemble+gc, plain, ...
            times[key].append(runner(setup, options.members, options.steps, options.evaluate, options.batch_size))
    plain = times["plain"]
    print(
        f"\n{name}: K={options.members} members x {options.steps} steps, per-member evaluation={options.evaluate}, "
        f"{options.repeats} interleaved repeats, load1 before each: {', '.join(f'{x:.1f}' for x in loads)}"
    )
    for key, values in times.items():
        ratios = [v / p for v, p in zip(values, plain)]
        fixed = [(v - p) / options.members for v, p in zip(values, plain)]
        print(
            f"  {key:>12}: min {min(values):7.2f} s  median {median(values):7.2f} s | vs plain: min/min "
            f"{min(values) / min(plain):.3f}x, median of paired ratios {median(ratios):.3f}x | fixed cost per member "
            f"(median of pairs) {median(fixed):+.3f} s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "efficientnet"], choices=["tiny", "efficientnet"])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--steps", type=int, default=7, help="Optimizer steps per member (the demo: 70).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false", help="No per-member evaluation.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile one ensemble run of the first model.")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load1 at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as workdir:
        for name in options.models:
            setup = (tiny_setup if name == "tiny" else efficientnet_setup)(Path(workdir))
            benchmark(name, setup, options)
            if options.profile and name == options.models[0]:
                import cProfile
                import pstats

                profile = cProfile.Profile()
                profile.runcall(run_ensemble, setup, options.members, options.steps, options.evaluate, 16)
                pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
