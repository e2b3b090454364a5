"""SIGKILL at named moments of training (`hf_starsse.file_utils.crash_point`): the same command again completes with
members bit-identical to an uninterrupted run, nothing lost; and members trained as independent jobs
(`member_indices`) at the same time into one run folder equal a sequential run."""

import hf_starsse  # noqa: F401, I001  (first)
from hf_starsse.run_folder import RunFolder

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ensemble_fixtures import make_pretrained

SCRIPT = str(Path(__file__).parent / "scripts" / "train_star_run.py")
NUM_MEMBERS = 5  # the script's StarSSE run: 16 examples, batch 8, 2 optimizer steps per member


def _run(base: str, run_dir: Path, *extra: str, crash_at: str | None = None, wait: bool = True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_STARSSE_CRASH_AT", None)
    if crash_at is not None:
        env["HF_STARSSE_CRASH_AT"] = crash_at
    command = [sys.executable, SCRIPT, base, str(run_dir), *extra]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=env, capture_output=True, text=True)


def _result(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.split("RESULT ")[1])


def _weights(run_dir: Path) -> dict[int, str]:
    run = RunFolder(run_dir)
    return {
        m.index: hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
        for m, path in zip(run.read_manifest().members, run.member_paths(run.read_manifest()))
    }


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.name.endswith((".tmp", ".old")))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The pre-trained checkpoint and the weights of an uninterrupted run."""
    folder = tmp_path_factory.mktemp("crash")
    base = make_pretrained(folder / "pretrained")
    result = _result(_run(base, folder / "reference"))
    assert result["trained"] == list(range(NUM_MEMBERS))
    weights = _weights(folder / "reference")
    assert len(set(weights.values())) == NUM_MEMBERS  # members differ
    return base, weights


def _members_on_disk(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "members").iterdir() if not p.name.startswith("."))


def test_kill_during_a_members_training(tmp_path, reference):
    base, weights = reference
    killed = _run(base, tmp_path / "run", crash_at="member_step:3")  # member 1, first step
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _members_on_disk(tmp_path / "run") == ["member-0"]
    result = _result(_run(base, tmp_path / "run"))
    assert result["skipped"] == [0] and result["trained"] == [1, 2, 3, 4]
    assert _weights(tmp_path / "run") == weights
    assert _leftovers(tmp_path / "run") == []


def test_kill_between_member_rename_and_manifest(tmp_path, reference):
    base, weights = reference
    killed = _run(base, tmp_path / "run", crash_at="member_renamed:2")  # member 1 renamed into place
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _members_on_disk(tmp_path / "run") == ["member-0", "member-1"]
    assert [m.index for m in RunFolder(tmp_path / "run").read_manifest().members] == [0]  # not indexed yet
    result = _result(_run(base, tmp_path / "run"))
    assert result["skipped"] == [0, 1] and result["trained"] == [2, 3, 4]  # member 1 adopted
    assert _weights(tmp_path / "run") == weights
    assert _leftovers(tmp_path / "run") == []


def test_kill_while_the_manifest_is_written(tmp_path, reference):
    base, weights = reference
    # 1st write: the header when the run opens, 2nd: after member 0, 3rd: after member 1 (temporary written)
    killed = _run(base, tmp_path / "run", crash_at="manifest_write:3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [p.startswith(".ensemble.json.") for p in _leftovers(tmp_path / "run")] == [True]
    assert [m.index for m in RunFolder(tmp_path / "run").read_manifest().members] == [0]
    result = _result(_run(base, tmp_path / "run"))
    assert result["skipped"] == [0, 1] and result["trained"] == [2, 3, 4]
    assert _weights(tmp_path / "run") == weights
    assert _leftovers(tmp_path / "run") == []


def test_kill_during_a_trainer_checkpoint_save(tmp_path, reference):
    base, weights = reference
    # a checkpoint every step: the 4th save is member 1's step 2, killed before it is renamed into place
    killed = _run(base, tmp_path / "run", "--save_steps", "1", crash_at="checkpoint_save:4")
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoints = tmp_path / "run" / "checkpoints" / "member-1"
    assert sorted(p.name for p in checkpoints.iterdir()) == [".checkpoint-2.tmp", "checkpoint-1"]
    result = _result(_run(base, tmp_path / "run", "--save_steps", "1"))
    assert result["skipped"] == [0] and result["trained"] == [1, 2, 3, 4]
    assert result["steps"] == 1 + 2 * 3  # member 1 resumed from its complete checkpoint-1
    assert _weights(tmp_path / "run") == weights
    assert _leftovers(tmp_path / "run") == []
    assert not checkpoints.exists()


def test_member_jobs_at_the_same_time_equal_a_sequential_run(tmp_path, reference):
    base, weights = reference
    run = tmp_path / "run"
    assert _result(_run(base, run, "--member_indices", "0"))["trained"] == [0]
    jobs = [_run(base, run, "--member_indices", indices, wait=False) for indices in ("1,3", "2,4")]
    results = []
    for job in jobs:
        stdout, stderr = job.communicate(timeout=600)
        job.stdout, job.stderr = stdout, stderr
        results.append(_result(job))
    assert [r["trained"] for r in results] == [[1, 3], [2, 4]]
    assert [m.index for m in RunFolder(run).read_manifest().members] == [0, 1, 2, 3, 4]
    assert _weights(run) == weights
    assert _leftovers(run) == []
