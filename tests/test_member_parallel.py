"""Member parallelism across processes, with a real 2-process `accelerate launch` (gloo on CPU)."""

from hf_starsse import EnsembleManifest, EnsembleTrainingArguments
from hf_starsse.member_parallel import assign_members
from hf_starsse.seeds import member_data_seed

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ensemble_fixtures import make_pretrained

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny_ensemble.py"
# `--cpu --num_processes 2` silently starts ONE process; `--multi_gpu` on a CPU-only machine starts 2 over gloo.
LAUNCH_2 = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
LAUNCH_2 += ["--dynamo_backend", "no", "--main_process_port", "0"]


def _launch(tmp_path, *script_args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH_2, str(SCRIPT), *map(str, script_args)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_round_robin_assignment():
    assert assign_members([1, 2, 3, 4], 2, 0) == [1, 3]
    assert assign_members([1, 2, 3, 4], 2, 1) == [2, 4]
    assert assign_members([0, 1, 2], 4, 3) == []


def test_member_parallel_is_refused_for_sse(tmp_path):
    with pytest.raises(ValueError, match="`member_parallel`"):
        EnsembleTrainingArguments(output_dir=str(tmp_path), ensemble_strategy="sse", member_parallel=True)


def test_two_processes_train_their_own_star_sse_members(tmp_path):
    base = make_pretrained(tmp_path / "pretrained")
    run = tmp_path / "run"
    _launch(tmp_path, base, run, "star_sse", 5, "--member-parallel")
    reports = sorted(
        (json.loads((run / f"process-{r}.json").read_text()) for r in range(2)), key=lambda r: r["process_index"]
    )
    assert [r["world_size"] for r in reports] == [2, 2]  # really two processes
    # member 0 is data-parallel on both processes; members 1..4 are split round-robin, each trained by one process
    assert reports[0]["trained"] == [0, 1, 3] and reports[1]["trained"] == [0, 2, 4]
    manifest = EnsembleManifest.load(run)
    assert [m.index for m in manifest.members] == [0, 1, 2, 3, 4]
    assert [m.parent for m in manifest.members] == [None, 0, 0, 0, 0]
    for m in manifest.members[1:]:
        assert m.metrics["process_index"] == (m.index - 1) % 2 and m.metrics["world_size"] == 2
        assert (run / m.path / "model.safetensors").is_file()
    # the Trainer's own loop only ran member 0 (8 steps: 32 examples / (4 x 2 processes) x 2 epochs)
    assert [r["trainer_steps"] for r in reports] == [8, 8]
    assert not [p for p in (run / "members").iterdir() if p.name.startswith(".")]


def test_two_processes_split_all_local_de_members(tmp_path):
    base = make_pretrained(tmp_path / "pretrained")
    run = tmp_path / "run"
    _launch(tmp_path, base, run, "local_de", 4, "--member-parallel")
    reports = sorted(
        (json.loads((run / f"process-{r}.json").read_text()) for r in range(2)), key=lambda r: r["process_index"]
    )
    assert [r["world_size"] for r in reports] == [2, 2]
    assert reports[0]["trained"] == [0, 2] and reports[1]["trained"] == [1, 3]  # each process only its own
    assert [r["trainer_steps"] for r in reports] == [0, 0]  # no data-parallel phase at all
    manifest = EnsembleManifest.load(run)
    # each process gave its members their own derived data seed, recorded in member.json
    assert [m.data_seed for m in manifest.members] == [member_data_seed(m.seed, m.index) for m in manifest.members]
    assert [(m.index, m.metrics["process_index"], m.num_steps) for m in manifest.members] == [
        (0, 0, 8),
        (1, 1, 8),
        (2, 0, 8),
        (3, 1, 8),
    ]
