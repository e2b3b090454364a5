"""Real `accelerate launch` runs of recipes/train.py: 2 processes over gloo on CPU vs 1 process, same global batch."""

from hf_starsse import EnsembleManifest
from hf_starsse.data import build_transforms, image_spec_from_processor, load_image_dataset, with_image_transforms
from hf_starsse.manifest import MEMBER_INFO_NAME

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from recipe_fixtures import make_checkpoint, save_dataset
from transformers import AutoImageProcessor, AutoModelForImageClassification

ROOT = Path(__file__).resolve().parent.parent
# `python -m accelerate.commands.launch` is `accelerate launch`; the `accelerate` console script itself imports timm
# (for `accelerate estimate-memory`) and so torchvision before hf_starsse can make it importable on this machine.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
TWO_PROCESSES = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
TWO_PROCESSES += ["--dynamo_backend", "no"]
GLOBAL_BATCH = 8


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _train_args(checkpoint, data, run_dir, per_device_batch):
    return [
        str(ROOT / "recipes" / "train.py"),
        "--model_name_or_path", checkpoint,
        "--dataset_name", data,
        "--output_dir", str(run_dir),
        "--ensemble_strategy", "star_sse",
        "--num_members", "2",
        "--num_train_epochs", "3",
        "--cycle_epoch_ratio", "0.5",
        "--cycle_lr_ratio", "2",
        "--learning_rate", "0.003",
        "--per_device_train_batch_size", str(per_device_batch),
        "--train_augmentation", "none",  # random crops would draw different numbers in 1 and 2 processes
        "--use_cpu", "true",
        "--report_to", "none",
        "--save_strategy", "no",
        "--disable_tqdm", "true",
        "--dataloader_num_workers", "0",
    ]  # fmt: skip


def _run(cmd):
    result = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2-process and one 1-process StarSSE run of a tiny ViT (LayerNorm: no per-process batch statistics)."""
    tmp = tmp_path_factory.mktemp("launch")
    checkpoint = make_checkpoint(tmp / "vit", "vit")
    data = save_dataset(tmp / "data", num_train=32, num_test=32, with_validation=True)  # 32 = 4 global batches
    two = _run([*LAUNCH, *TWO_PROCESSES, *_train_args(checkpoint, data, tmp / "run-2proc", GLOBAL_BATCH // 2)])
    one = _run([sys.executable, *_train_args(checkpoint, data, tmp / "run-1proc", GLOBAL_BATCH)])
    return {"tmp": tmp, "checkpoint": checkpoint, "data": data, "two": two, "one": one}


def test_two_process_launch_writes_each_member_once(runs):
    run_dir = runs["tmp"] / "run-2proc"
    launch = json.loads((run_dir / "launch.json").read_text())
    assert launch["num_processes"] == 2 and launch["world_size"] == 2
    assert launch["distributed_type"].endswith("MULTI_CPU")
    assert sorted(p["process_index"] for p in launch["processes"]) == [0, 1]
    assert [p["process_index"] for p in launch["processes"] if p["should_save"]] == [0]  # only the main one writes
    manifest = EnsembleManifest.load(run_dir)
    assert manifest.strategy == "star_sse" and [m.index for m in manifest.members] == [0, 1]
    assert [m.parent for m in manifest.members] == [None, 0]
    # 32 examples / global batch 8 = 4 steps per epoch: 3 epochs, then a cycle of half that
    assert [m.num_steps for m in manifest.members] == [12, 6]
    members_dir = run_dir / "members"
    assert sorted(p.name for p in members_dir.iterdir()) == ["member-0", "member-1"]  # no temporaries left
    for m in manifest.members:
        files = sorted(p.name for p in (run_dir / m.path).iterdir())
        assert {"config.json", "model.safetensors", "preprocessor_config.json", MEMBER_INFO_NAME} <= set(files)
    stdout = runs["two"].stdout
    assert (
        stdout.count("[hf_starsse] member-0 of 2 saved") == 1 and stdout.count("[hf_starsse] member-1 of 2 saved") == 1
    )


def _test_accuracy(member_path, data):
    processor = AutoImageProcessor.from_pretrained(member_path)
    loaded = load_image_dataset(data)
    _, eval_tf = build_transforms(image_spec_from_processor(processor), "none")
    test = with_image_transforms(loaded, eval_tf, eval_tf)["test"]
    model = AutoModelForImageClassification.from_pretrained(member_path).eval()
    batch = test[: len(test)]
    with torch.no_grad():
        predictions = model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
    return float((predictions == batch["labels"]).float().mean()), model.state_dict()


def test_one_and_two_processes_give_the_same_members(runs):
    """Same global batch (8 = 2 x 4 vs 1 x 8), same seeds and data order: same members up to float noise.

    Tolerance: weights within 1e-4 (measured ~2e-5) and test accuracy equal to within one example of the 32.
    """
    tmp, data = runs["tmp"], runs["data"]
    pretrained = AutoModelForImageClassification.from_pretrained(runs["checkpoint"]).state_dict()
    for i in range(2):
        acc2, state2 = _test_accuracy(tmp / "run-2proc" / "members" / f"member-{i}", data)
        acc1, state1 = _test_accuracy(tmp / "run-1proc" / "members" / f"member-{i}", data)
        print(f"member {i}: test accuracy 2 processes {acc2:.4f}, 1 process {acc1:.4f}")
        assert abs(acc1 - acc2) <= 1 / 32 + 1e-9
        diff = max((state1[k] - state2[k]).abs().max().item() for k in state1)
        moved = max(
            (state1[k] - pretrained[k]).abs().max().item() for k in state1 if state1[k].shape == pretrained[k].shape
        )
        print(f"member {i}: max |w_1proc - w_2proc| = {diff:.2e}, max |w - w_pretrained| = {moved:.2e}")
        assert diff < 1e-4 and moved > 100 * diff
    launch = json.loads((tmp / "run-1proc" / "launch.json").read_text())
    assert launch["num_processes"] == 1


def test_cpu_accelerate_config_really_gives_two_processes(runs):
    """recipes/accelerate_configs/cpu.yaml: 2 processes (unlike `--cpu --num_processes 2`, which runs one)."""
    cmd = [*LAUNCH, "--config_file", str(ROOT / "recipes/accelerate_configs/cpu.yaml")]
    cmd += _train_args(runs["checkpoint"], runs["data"], runs["tmp"] / "unused", GLOBAL_BATCH // 2) + ["--dry_run"]
    out = _run(cmd).stdout
    lines = [line for line in out.splitlines() if line.startswith("training examples:")]
    assert len(lines) == 2, out  # both processes planned
    assert all("processes: 2, global batch: 8, optimizer steps per epoch: 4" in line for line in lines)
    assert np.all([not (runs["tmp"] / "unused").exists()])  # a dry run writes nothing
