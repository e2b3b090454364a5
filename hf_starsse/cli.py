"""The `hf-starsse` command line: one sub-command per module in `hf_starsse.commands`.

Every flag is accepted in both spellings, `--a_b` and `--a-b` (`_DualSpellingParser`, the parser class of every
sub-command; `train` forwards to `HfArgumentParser`, which does the same). Help shows the `--a_b` spelling.
Importing this module and building the parser imports no torch / transformers: the command modules import their
heavy dependencies inside their `run` functions, so `hf-starsse --help` and `hf-starsse <cmd> --help` are fast.
"""

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
    "hf_starsse.commands.sweep",
    "hf_starsse.commands.train",
]


def flag_spellings(flag: str) -> tuple[str, str | None]:
    """`("--a_b", "--a-b")` for a long flag with `_` or `-` inside its name; `(flag, None)` for other flags."""
    if not flag.startswith("--") or ("-" not in flag[2:] and "_" not in flag[2:]):
        return flag, None
    name = flag[2:]
    return "--" + name.replace("-", "_"), "--" + name.replace("_", "-")


class _HideAliasesFormatter(argparse.HelpFormatter):
    """Shows each option under its first spelling only (the `--a-b` aliases stay accepted, just not listed)."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "hidden_aliases", ())
        if hidden:
            shown = argparse.Action(
                [s for s in action.option_strings if s not in hidden], action.dest, nargs=action.nargs
            )
            shown.metavar = action.metavar
            return super()._format_action_invocation(shown)
        return super()._format_action_invocation(action)


class _DualSpellingParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose `add_argument` registers `--a_b` and `--a-b` for every long flag."""

    def add_argument(self, *flags: str, **kwargs) -> argparse.Action:
        spellings, hidden = [], []
        for flag in flags:
            primary, alias = flag_spellings(flag)
            spellings.append(primary)
            if alias is not None and alias != primary:
                spellings.append(alias)
                hidden.append(alias)
        action = super().add_argument(*spellings, **kwargs)
        action.hidden_aliases = tuple(hidden)
        return action

    def _get_formatter(self) -> argparse.HelpFormatter:
        base = self.formatter_class
        if not issubclass(base, _HideAliasesFormatter):
            base = type(f"HideAliases{base.__name__}", (_HideAliasesFormatter, base), {})
        return base(prog=self.prog)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-starsse", description="Ensembles in transfer learning (Local DE, Global DE, SSE, StarSSE)."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_DualSpellingParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = list(sys.argv[1:] if argv is None else argv)  # as given (recorded by reports)
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
