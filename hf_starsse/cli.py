"""The `hf-starsse` command line: one sub-command per module in `hf_starsse.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines `register(subparsers)` that adds its sub-command and sets `func` (args -> int exit code).
COMMAND_MODULES = [
    "hf_starsse.commands.compare",
    "hf_starsse.commands.demo",
    "hf_starsse.commands.push",
    "hf_starsse.commands.evaluate",
    "hf_starsse.commands.train",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-starsse", description="Ensembles in transfer learning (Local DE, Global DE, SSE, StarSSE)."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .divergence import MemberDivergedError

    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, TypeError, MemberDivergedError) as err:  # OSError: full disk, read-only folder, ...
        if getattr(args, "traceback", False):
            raise
        print(f"hf-starsse {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
