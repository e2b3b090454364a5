"""A user's journey through the run folder: `hf-starsse train` a 4-member StarSSE on a tiny BatchNorm model, SIGKILL
it between a member's rename and the index update, train again (completes, the killed member adopted), `hf-starsse
evaluate --soup greedy`, `hf-starsse push` to the local test Hub, and download into a fresh cache: the root model is
the evaluated soup `soups/uniform` tensor for tensor, and the card reports what the evaluation measured."""

import hf_starsse  # noqa: F401, I001  (first: torchvision compatibility)
from hf_starsse.cli import main as cli_main
from hf_starsse.file_utils import CRASH_POINT_ENV
from hf_starsse.run_folder import RunFolder

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import HUB_TOKEN
from huggingface_hub import ModelCard, hf_hub_download
from recipe_fixtures import make_checkpoint, save_dataset
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

from ensemble_fixtures import file_digests

REPO = "alice/journey-star-sse"
KILLED_MEMBER = 2

pytestmark = pytest.mark.skipif(
    not hasattr(RunFolder, "rebuild_index"),
    reason="needs issue-10a: a member renamed into place before the index update is adopted on resume",
)


def _train_argv(checkpoint: str, data: str, run_dir) -> list[str]:
    argv = ["train", "--model_name_or_path", checkpoint, "--dataset_name", data, "--output_dir", str(run_dir)]
    argv += ["--ensemble_strategy", "star_sse", "--num_members", "4", "--max_steps", "4", "--seed", "0"]
    argv += ["--per_device_train_batch_size", "8", "--learning_rate", "0.01", "--use_cpu", "true"]
    return argv + ["--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]


def _train_killed_after_rename(argv: list[str]) -> None:
    """`hf-starsse train` in a subprocess SIGKILLed right after member `KILLED_MEMBER`'s folder is renamed."""
    env = {**os.environ, CRASH_POINT_ENV: f"member_renamed:{KILLED_MEMBER + 1}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "import sys; from hf_starsse.cli import main; sys.exit(main())", *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def test_train_kill_resume_evaluate_push_download(hub, tmp_path, capsys):
    checkpoint = make_checkpoint(tmp_path / "resnet", "resnet")  # tiny ResNet: BatchNorm everywhere
    data = save_dataset(tmp_path / "data", num_train=32, num_test=16, with_validation=True)
    run = RunFolder(tmp_path / "run")
    argv = _train_argv(checkpoint, data, run.root)

    _train_killed_after_rename(argv)
    assert run.member_info_path(KILLED_MEMBER).is_file()
    assert [m.index for m in run.read_manifest().members] == list(range(KILLED_MEMBER))  # the index missed it
    killed = file_digests(run.member_dir(KILLED_MEMBER))
    assert cli_main(argv) == 0, capsys.readouterr().err[-3000:]
    assert [m.index for m in run.read_manifest().members] == [0, 1, 2, 3]
    assert file_digests(run.member_dir(KILLED_MEMBER)) == killed  # adopted as it was, not trained again

    evaluate = ["evaluate", str(run.root), "--dataset", data, "--soup", "greedy", "--interpolation-points", "0"]
    assert cli_main([*evaluate, "--no-progress"]) == 0, capsys.readouterr().err[-3000:]
    assert cli_main(["push", str(run.root), REPO, "--token", HUB_TOKEN, "--endpoint", hub.url]) == 0
    report = json.loads(run.eval_json.read_text())

    # fresh cache: the root model is `soups/uniform`, every tensor (BatchNorm buffers included) equal
    cache = tmp_path / "fresh_cache"
    root = load_file(hf_hub_download(REPO, "model.safetensors", cache_dir=cache))
    soup = load_file(str(run.soup_dir("uniform") / "model.safetensors"))
    assert root.keys() == soup.keys() and any(k.endswith("running_var") for k in root)
    assert all(torch.equal(root[k], soup[k]) for k in soup)
    downloaded = AutoModelForImageClassification.from_pretrained(REPO, cache_dir=cache).state_dict()
    local = AutoModelForImageClassification.from_pretrained(run.soup_dir("uniform")).state_dict()
    assert downloaded.keys() == local.keys() and all(torch.equal(downloaded[k], local[k]) for k in local)

    # the card: the soup at the root and the ensemble first, with the evaluation's numbers; no runtimes / FLOs
    card = ModelCard.load(hf_hub_download(REPO, "README.md", cache_dir=cache), ignore_metadata_errors=False)
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    names = [r.metric_name for r in card.data.eval_results]
    assert names[:4] == [f"Uniform soup (repository root) {m}" for m in ("accuracy", "nll", "ece")] + [
        "Ensemble (4 members) accuracy"
    ]
    assert results["Ensemble (4 members) accuracy"] == report["test"]["ensemble"]["accuracy"]
    assert results["Uniform soup (repository root) accuracy"] == report["soups"]["uniform"]["metrics"]["accuracy"]
    assert results["Greedy soup accuracy"] == report["soups"]["greedy"]["metrics"]["accuracy"]
    raw = yaml.safe_load(str(card).split("---")[1])
    metrics = raw["model-index"][0]["results"][0]["metrics"]
    assert metrics[0]["name"].startswith("Uniform soup") and metrics[3]["name"].startswith("Ensemble")
    assert "runtime" not in str(card).lower() and "flos" not in str(card).lower()
    assert "Not recorded for this run" not in card.text and "![metric vs size](eval/metric_vs_size.png)" in card.text
