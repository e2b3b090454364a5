"""`hf-starsse demo`: the offline end-to-end demo (filled in by the core issue)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="Offline demo: Local DE vs StarSSE on a real pre-trained model.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("demo is being built")
