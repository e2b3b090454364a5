"""SIGKILL during `hf-starsse evaluate`'s soup replacement and during `hf-starsse push` staging (crash points of
`hf_starsse.file_utils.crash_point`): the run keeps the old or the new soup, and the same command again completes."""

import hf_starsse  # noqa: F401, I001  (first: torchvision compatibility)
from hf_starsse.cli import main as cli_main
from hf_starsse.file_utils import CRASH_POINT_ENV
from hf_starsse.push_plan import plan_push
from hf_starsse.run_folder import RunFolder

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HUB_TOKEN
from run_folder_helpers import make_run_folder, single_thread
from tiny_run import make_tiny_run

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)
EVALUATE = ["--soup", "uniform", "--interpolation-points", "0", "--no-plots", "--no-progress", "--max-samples", "32"]


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _killed_at(point: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run `hf-starsse ARGV` in a subprocess that SIGKILLs itself at the crash point `point`."""
    env = {**os.environ, CRASH_POINT_ENV: point, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "import sys; from hf_starsse.cli import main; sys.exit(main())", *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    return done


def _soup_matches_report(run: RunFolder, kind: str = "uniform") -> None:
    report = json.loads(run.eval_json.read_text())
    info = json.loads(run.soup_info_path(kind).read_text())
    assert info["evaluation_id"] == report["evaluation_id"] and info["metrics"] == report["soups"][kind]["metrics"]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    run_dir = make_run_folder(tmp_path_factory.mktemp("runs") / "bn_run", num_members=3, arch="resnet")
    assert cli_main(["evaluate", str(run_dir), *EVALUATE]) == 0
    return RunFolder(run_dir)


@pytest.mark.parametrize("point", ["replace_directory@soups/uniform", "soup_written"])
def test_kill_during_soup_replacement_keeps_a_soup_and_evaluate_again_completes(evaluated_run, point):
    run = evaluated_run
    old_soup = _snapshot(run.soup_dir("uniform"))
    _killed_at(point, ["evaluate", str(run.root), *EVALUATE])
    # old or new, never none: between the renames only `.uniform.old` is left, and readers (push) take it
    readable = run.readable_soup_dir("uniform")
    assert readable is not None and _snapshot(readable) == old_soup
    if point == "soup_written":
        assert run.soup_dir("uniform").is_dir()  # the old soup was not touched; the new one is a temporary
        assert [p.name for p in run.soups_dir.iterdir() if p.name.endswith(".tmp")]
    else:
        assert not run.soup_dir("uniform").exists() and readable.name.startswith(".uniform")
        assert plan_push(run).root == "uniform"  # push still finds the evaluated soup
    assert cli_main(["evaluate", str(run.root), *EVALUATE]) == 0
    assert sorted(p.name for p in run.soups_dir.iterdir()) == ["uniform"]  # recovered: no .old, no temporaries
    _soup_matches_report(run)


def test_kill_during_push_staging_leaves_the_run_and_hub_untouched_and_push_again_completes(hub, tmp_path):
    run_dir = make_tiny_run(tmp_path / "run", num_members=3)
    before = _snapshot(run_dir)
    repo = "alice/crash-push"
    argv = ["push", str(run_dir), repo, "--token", HUB_TOKEN, "--endpoint", hub.url]
    _killed_at("push_staged", argv)
    assert _snapshot(run_dir) == before and not hub.repo_exists(repo)
    assert cli_main(argv) == 0
    assert _snapshot(run_dir) == before and hub.commit_count(repo) == 2
    assert hub.files(repo)["model.safetensors"] == (run_dir / "soups" / "uniform" / "model.safetensors").read_bytes()
