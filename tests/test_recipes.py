"""Every recipe parses and validates for every strategy (`hf-starsse train --config R --dry-run`); the CLI and
recipes/train.py are one code path; `--help` lists every field."""

from hf_starsse.cli import main as cli_main
from hf_starsse.train_entry import ARGUMENT_CLASSES, load_recipe, parse_arguments

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
STRATEGIES = ["local_de", "sse", "star_sse"]


def test_one_recipe_per_paper_setup():
    names = {p.stem for p in RECIPES}
    for model in ("byol", "supervised"):
        for data in ("cifar10", "cifar100", "sun397"):
            assert f"resnet50_{model}_{data}" in names
    assert {"swin_t_cifar100", "vit_b32_clip_imagenet"} <= names
    configs = {p.name for p in (ROOT / "recipes" / "accelerate_configs").glob("*.yaml")}
    assert configs == {"single_gpu.yaml", "multi_gpu.yaml", "fsdp.yaml", "cpu.yaml"}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_dry_run_prints_plan(recipe, strategy, capsys):
    assert cli_main(["train", "--config", str(recipe), "--ensemble_strategy", strategy, "--dry-run"]) == 0
    out = capsys.readouterr().out
    values = load_recipe(recipe)
    epochs, train_size, lr = values["num_train_epochs"], values["train_size"], values["learning_rate"]
    steps_per_epoch = math.ceil(train_size / values["per_device_train_batch_size"])
    first = math.ceil(epochs * steps_per_epoch)
    assert f"optimizer steps per epoch: {steps_per_epoch}" in out
    rows = re.findall(r"^\s+(\d+)\s+(\S+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\S+)\s+(\d+)$", out, flags=re.M)
    assert [int(r[0]) for r in rows] == list(range(values["num_members"]))
    assert int(rows[0][3]) == first and math.isclose(float(rows[0][5]), lr, rel_tol=1e-3)
    if strategy == "local_de":
        assert all(int(r[3]) == first for r in rows) and "steps per cycle" not in out
        total = first * values["num_members"]
    else:
        cycle = round(values["cycle_epoch_ratio"] * first)
        cycle_lr = values["cycle_lr_ratio"] * lr
        parents = [r[1] for r in rows[1:]]
        assert parents == (["member-0"] * 4 if strategy == "star_sse" else [f"member-{i}" for i in range(4)])
        assert f"steps per cycle: {cycle}, LR per cycle: {cycle_lr:g} (peak)" in out
        total = first + cycle * (values["num_members"] - 1)
    assert f"total optimizer steps: {total}" in out


def test_overrides_win_over_the_recipe(capsys):
    recipe = str(ROOT / "recipes" / "resnet50_byol_cifar100.yaml")
    argv = ["--config", recipe, "--learning_rate", "0.01", "--num_members", "3", "--cycle_lr_ratio", "2"]
    model_args, data_args, args, run_args = parse_arguments(argv)
    assert (args.learning_rate, args.num_members, args.resolved_cycle_lr_ratio) == (0.01, 3, 2.0)
    assert (args.optim_args, args.weight_decay, data_args.label_column) == ("momentum=0.9", 1e-4, "fine_label")
    assert cli_main(["train", *argv, "--dry-run", "--dry_run_num_processes", "4"]) == 0
    out = capsys.readouterr().out
    assert "processes: 4, global batch: 1024, optimizer steps per epoch: 44" in out
    assert "steps per cycle: 1100, LR per cycle: 0.02 (peak)" in out


def test_bad_recipes_fail_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: m\ndataset_name: d\nlearning_rte: 0.1\n")
    assert cli_main(["train", "--config", str(bad), "--dry-run"]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"hf-starsse train: error: Recipe {str(bad)!r}: unknown field(s) learning_rte."
    )
    bad.write_text("model_name_or_path: m\ndataset_name: d\ntrain_size: 10\ncycle_lr_ratio: 0\n")
    assert cli_main(["train", "--config", str(bad), "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "hf-starsse train: error: `cycle_lr_ratio` should be positive, got 0.", err
    assert cli_main(["train", "--config", str(tmp_path / "missing.yaml"), "--dry-run"]) == 1
    assert "missing.yaml' does not exist" in capsys.readouterr().err


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: hf-starsse train")
    for cls in ARGUMENT_CLASSES:
        for f in dataclasses.fields(cls):
            if f.init and not f.name.startswith("_"):
                assert f"--{f.name}" in text, f.name
    for help_text in (
        "Number of ensemble members K.",
        "CLIP: initialise the head from the text tower",
        "YAML or JSON",
    ):
        assert help_text in text
    # recipes/train.py is the same parser
    script = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "train.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert script.returncode == 0
    assert script.stdout.replace("recipes/train.py", "hf-starsse train").split() == text.split()
