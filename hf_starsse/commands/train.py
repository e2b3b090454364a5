"""`hf-starsse train --config RECIPE [overrides] [--dry-run]`: the same code path as `recipes/train.py`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    # Every argument (including --help) goes to the HfArgumentParser of `hf_starsse.train_entry`: '+' as the only
    # prefix character keeps this sub-parser from interpreting `--...` itself.
    parser = subparsers.add_parser(
        "train",
        help="Train an ensemble from a YAML/JSON recipe (`hf-starsse train --help` lists every field).",
        add_help=False,
        prefix_chars="+",
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train_entry import cli_main

    return cli_main(args.argv, prog="hf-starsse train")
