"""`hf-starsse demo`: the offline end-to-end demo (Local DE vs StarSSE on a real ImageNet checkpoint)."""

from __future__ import annotations

import argparse
import dataclasses
from types import SimpleNamespace

# `DemoConfig`'s defaults, spelled here so that `--help` does not import torch (tests/test_cli.py checks they match).
DEFAULTS = {
    "output_dir": "hf_starsse_demo",
    "strategies": ("local_de", "star_sse"),
    "num_members": 5,
    "train_per_class": 10,
    "image_size": 32,
    "epochs": 10,
    "learning_rate": 0.01,
    "batch_size": 16,
    "seed": 42,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = SimpleNamespace(**DEFAULTS)
    parser = subparsers.add_parser(
        "demo",
        help="Offline demo: ImageNet EfficientNet-Lite0 fine-tuned on sklearn digits, Local DE vs StarSSE.",
        description="Runs offline end to end and prints member / ensemble test accuracy and NLL.",
    )
    parser.add_argument("--output-dir", default=defaults.output_dir, help="Where runs and results go.")
    parser.add_argument(
        "--strategies", default=",".join(defaults.strategies), help="Comma-separated strategies to compare."
    )
    parser.add_argument("--num-members", type=int, default=defaults.num_members, help="Ensemble size K.")
    parser.add_argument("--train-per-class", type=int, default=defaults.train_per_class, help="Train images/class.")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="Upscaled image side (px).")
    parser.add_argument("--epochs", type=float, default=defaults.epochs, help="Epochs of the first fine-tuning.")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate, help="First fine-tuning LR.")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="Training batch size.")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="Base seed.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, run_demo

    fields = {f.name for f in dataclasses.fields(DemoConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["strategies"] = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    run_demo(DemoConfig(**values))
    return 0
