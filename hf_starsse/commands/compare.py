"""`hf-starsse compare`: all methods on the offline demo setup with matched budgets; one table and one plot."""

from __future__ import annotations

import argparse
import dataclasses

# `CompareConfig`'s defaults, spelled here so that `--help` does not import torch (tests/test_cli.py checks them).
COMPARE_METHODS = ("local_de", "sse", "star_sse", "fge", "swa", "swag", "csgld", "laplace", "spro")
DEFAULTS = {
    "output_dir": "hf_starsse_compare",
    "num_members": 3,
    "train_per_class": 10,
    "image_size": 32,
    "epochs": 5,
    "learning_rate": 0.01,
    "batch_size": 16,
    "seed": 42,
    "csgld_temperature": 1e-3,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    defaults = DEFAULTS
    parser = subparsers.add_parser(
        "compare",
        help="Compare Local DE, SSE, StarSSE, FGE, SWA, SWAG, cSGLD, Laplace and SPRO on the offline demo setup.",
        description="Runs each method with matched optimizer-step budgets and writes a table (accuracy, NLL, ECE, "
        "diversity, soup accuracy, wall time) and a plot.",
    )
    parser.add_argument("--output-dir", default=defaults["output_dir"], help="Where runs, table and plot go.")
    parser.add_argument(
        "--methods", default=",".join(COMPARE_METHODS), help=f"Comma-separated, among {','.join(COMPARE_METHODS)}."
    )
    parser.add_argument("--num-members", type=int, default=defaults["num_members"], help="Ensemble size K.")
    parser.add_argument("--train-per-class", type=int, default=defaults["train_per_class"], help="Train images/class.")
    parser.add_argument("--image-size", type=int, default=defaults["image_size"], help="Upscaled image side (px).")
    parser.add_argument("--epochs", type=float, default=defaults["epochs"], help="Epochs of one fine-tuning.")
    parser.add_argument("--learning-rate", type=float, default=defaults["learning_rate"], help="Fine-tuning LR.")
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="Training batch size.")
    parser.add_argument("--seed", type=int, default=defaults["seed"], help="Base seed.")
    parser.add_argument(
        "--csgld-temperature", type=float, default=defaults["csgld_temperature"], help="cSGLD temperature."
    )
    parser.add_argument(
        "--max-test-examples", type=int, default=None, help="Evaluate on this many test images (default: all)."
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..compare import CompareConfig, run_compare

    fields = {f.name for f in dataclasses.fields(CompareConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["methods"] = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    run_compare(CompareConfig(**values))
    return 0
