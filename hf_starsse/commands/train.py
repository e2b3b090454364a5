"""`hf-starsse train --config RECIPE [overrides] [--dry_run]`: the same code path as `recipes/train.py`."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
from pathlib import Path

PROG = "hf-starsse train"


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
    if args.argv in (["--help"], ["-h"]):
        print(help_text(), end="")
        raise SystemExit(0)  # like argparse's --help
    from ..train_entry import cli_main

    return cli_main(args.argv, prog=PROG)


def _help_cache_file() -> Path:
    """Where the rendered help is kept: keyed by the versions and sources it is built from, and the terminal width."""
    from importlib.metadata import version

    package = Path(__file__).resolve().parents[1]
    key = [version("transformers"), str(shutil.get_terminal_size().columns), sys.version]
    for name in ("train_entry.py", "ensemble_config.py", "model_loading.py", "data.py", "__init__.py"):
        stat = (package / name).stat()
        key.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    digest = hashlib.sha256("|".join(key).encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hf_starsse"
    return root / f"train_help-{digest}.txt"


def help_text() -> str:
    """`hf-starsse train --help`: building it imports transformers' `TrainingArguments` (torch, accelerate: seconds),
    so the text is cached per source / version / terminal width and read back on later calls."""
    cache = _help_cache_file()
    if cache.is_file():
        return cache.read_text(encoding="utf-8")
    from ..train_entry import build_parser

    text = build_parser(PROG).format_help()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home: no cache, the help is still right
    return text
