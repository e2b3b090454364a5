"""`hf-starsse`: both spellings of every flag of every sub-command, light `--help`, defaults in sync."""

from __future__ import annotations

from hf_starsse.cli import build_parser, flag_spellings

import argparse
import dataclasses
import subprocess
import sys

import pytest


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _example_value(action: argparse.Action) -> list[str]:
    """Command-line tokens that follow the flag (none for store_true)."""
    if action.nargs == 0:
        return []
    if getattr(action.type, "__name__", "") in _TYPED_EXAMPLES:
        value = _TYPED_EXAMPLES[action.type.__name__]
    elif action.choices:
        value = str(list(action.choices)[-1])
    elif action.type is int:
        value = str((action.default if isinstance(action.default, int) else 0) + 7)
    elif action.type is float:
        value = "0.125"
    else:
        value = "some_value"
    count = action.nargs if isinstance(action.nargs, int) else 1
    return [value] * count


_POSITIONALS = {"evaluate": ["RUN"], "push": ["RUN", "user/repo"], "sweep": ["--preset", "gpu-digits"]}
_TYPED_EXAMPLES = {"_ratios": "0.5,2", "_shard": "1/3"}  # values of the sweep's own argument types
_CASES = [
    (command, action.dest)
    for command, sub in _subparsers().items()
    if command != "train"
    for action in sub._actions
    if any(flag_spellings(s)[1] for s in action.option_strings)
]


@pytest.mark.parametrize("command,dest", _CASES, ids=[f"{c}--{d}" for c, d in _CASES])
def test_both_spellings(command, dest):
    sub = _subparsers()[command]
    action = next(a for a in sub._actions if a.dest == dest)
    long_flag = next(s for s in action.option_strings if flag_spellings(s)[1])
    underscore, dash = flag_spellings(long_flag)
    assert underscore in action.option_strings and dash in action.option_strings
    parser = build_parser()
    values = _example_value(action)
    base = [command, *_POSITIONALS.get(command, [])]
    if command == "sweep" and dest in ("config", "preset"):  # the two exclusive sources: the flag alone
        base = [command]
    parsed = {}
    for flag in (underscore, dash):
        args = vars(parser.parse_args([*base, flag, *values]))
        args.pop("func", None)
        parsed[flag] = args
    assert parsed[underscore] == parsed[dash]
    assert parsed[dash][dest] != (action.default if action.nargs != 0 else False)  # the flag took effect


def test_help_shows_one_spelling(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--help"])
    text = capsys.readouterr().out
    assert "--max_samples" in text and "--max-samples" not in text


def test_train_forwards_both_spellings():
    from hf_starsse.train_entry import build_parser as train_parser

    parser = train_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    underscored = sorted(s for s in flags if s.startswith("--") and "_" in s)
    assert len(underscored) > 50
    assert [s for s in underscored if s.replace("_", "-") not in flags] == []
    argv = ["--model_name_or_path", "m", "--dataset_name", "d", "--output_dir", "o"]
    one = parser.parse_args_into_dataclasses(args=[*argv, "--dry_run_num_processes", "8", "--num_members", "4"])
    two = parser.parse_args_into_dataclasses(args=[*argv, "--dry-run-num-processes", "8", "--num-members", "4"])
    assert one[3].dry_run_num_processes == two[3].dry_run_num_processes == 8
    assert one[2].num_members == two[2].num_members == 4


def test_command_defaults_match_configs():
    from hf_starsse.commands import compare as compare_cmd
    from hf_starsse.commands import demo as demo_cmd
    from hf_starsse.compare import COMPARE_METHODS, CompareConfig
    from hf_starsse.demo import DemoConfig

    assert compare_cmd.COMPARE_METHODS == COMPARE_METHODS
    compare_defaults = {f.name: f.default for f in dataclasses.fields(CompareConfig)}
    assert {k: compare_defaults[k] for k in compare_cmd.DEFAULTS} == compare_cmd.DEFAULTS
    demo_defaults = {f.name: f.default for f in dataclasses.fields(DemoConfig)}
    assert {k: demo_defaults[k] for k in demo_cmd.DEFAULTS} == demo_cmd.DEFAULTS
    from hf_starsse.commands import sweep as sweep_cmd
    from hf_starsse.sweep_config import SWEEP_METHODS, SweepConfig

    assert sweep_cmd.METHODS == SWEEP_METHODS
    sweep_defaults = {f.name: f.default for f in dataclasses.fields(SweepConfig)}
    assert {k: sweep_defaults[k] for k in sweep_cmd.DEFAULTS} == sweep_cmd.DEFAULTS


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from hf_starsse.cli import build_parser; build_parser(); import hf_starsse; "
        "print(sorted(m for m in ('torch', 'transformers', 'torchvision', 'datasets') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_train_help_is_cached_and_equal_to_the_live_help(tmp_path, monkeypatch):
    from hf_starsse.commands import train as train_cmd
    from hf_starsse.train_entry import build_parser as train_parser

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    live = train_parser(train_cmd.PROG).format_help()
    assert train_cmd.help_text() == live  # built, then written
    cache = train_cmd._help_cache_file()
    assert cache.read_text() == live
    cache.write_text("cached text")
    assert train_cmd.help_text() == "cached text"  # read back without building the parser
