import hf_starsse  # noqa: F401, I001  (first: torchvision compatibility)
from hf_starsse.cli import main
from hf_starsse.ensemble import Ensemble
from hf_starsse.eval_data import load_eval_dataset, make_eval_dataloader
from hf_starsse.evaluation_passes import saved_soup_key
from hf_starsse.prediction_cache import PredictionCache, weights_key
from hf_starsse.run_folder import RunFolder

import contextlib
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from run_folder_helpers import make_run_folder, single_thread

os.environ.setdefault("HF_HUB_OFFLINE", "1")
_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)

EVALUATE = ["--soup", "greedy", "--ood", "--corruptions", "fog", "--ood-max-samples", "32"]
EVALUATE += ["--interpolation-points", "3", "--no-plots", "--no-progress"]


@contextlib.contextmanager
def count_forward_passes():
    """Count the forward calls of whole classifiers (every model evaluate runs, BatchNorm recalibration included)."""
    calls = []

    def hook(module, args, output):
        if type(module).__name__.endswith("ForImageClassification"):
            calls.append(type(module).__name__)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("runs") / "cached_run", num_members=3, arch="resnet")


def _evaluate(run, *extra, capsys=None):
    with count_forward_passes() as calls:
        assert main(["evaluate", str(run), *EVALUATE, *extra]) == 0
    printed = capsys.readouterr().out if capsys is not None else ""
    text = (run / "eval" / "eval.json").read_text()
    evaluation_id = json.loads(text)["evaluation_id"]  # a fresh id per evaluation (the soups' soup.json point at it)
    return len(calls), text.replace(evaluation_id, "<id>"), printed


def test_repeated_evaluate_runs_no_model_and_gives_identical_results(bn_run, capsys):
    first_calls, first, printed = _evaluate(bn_run, "--severities", "2", capsys=capsys)
    assert first_calls > 0
    assert "[evaluate] plan" in printed and "OOD on a seeded random subset of 32 of the 96 test images" in printed
    cached = sorted(RunFolder(bn_run).predictions_dir.glob("*.safetensors"))
    assert cached and not list(RunFolder(bn_run).predictions_dir.glob(".*"))  # no temporaries left
    folder = RunFolder(bn_run)
    models = {saved_soup_key(folder.soup_dir(k)) for k in ("uniform", "greedy")}  # a 1-member soup is that member
    models |= {weights_key(p) for p in folder.member_paths(folder.read_manifest())}
    soup_mtime = (RunFolder(bn_run).soup_dir("uniform") / "model.safetensors").stat().st_mtime_ns

    again_calls, again, printed = _evaluate(bn_run, "--severities", "2", capsys=capsys)
    assert again_calls == 0
    assert again == first
    assert "0 to compute" in printed and "[evaluate] done: 0 model passes" in printed
    assert (RunFolder(bn_run).soup_dir("uniform") / "model.safetensors").stat().st_mtime_ns == soup_mtime

    # a new severity: each distinct model (members, soups) once on the new corrupted data (one batch of 32)
    new_calls, _, _ = _evaluate(bn_run, "--severities", "2", "4", capsys=capsys)
    assert new_calls == len(models) >= 4
    results = json.loads((bn_run / "eval" / "eval.json").read_text())
    assert (
        results["ood"]["corruptions"]["fog"]["severities"]["2"]
        == json.loads(first)["ood"]["corruptions"]["fog"]["severities"]["2"]
    )
    assert results["ood"]["settings"]["max_samples"] == 32


def test_derived_models_that_are_members_reuse_the_members_predictions(bn_run):
    results = json.loads((bn_run / "eval" / "eval.json").read_text()) if (bn_run / "eval").exists() else None
    if results is None:
        assert main(["evaluate", str(bn_run), *EVALUATE]) == 0
        results = json.loads((bn_run / "eval" / "eval.json").read_text())
    members = results["test"]["members"]
    assert results["soup_vs_size"][0]["accuracy"] == members[0]["accuracy"]  # the 1-member soup is member 0
    assert results["soup_vs_size"][0]["nll"] == members[0]["nll"]
    line = results["basin"]["interpolation"]["points"]
    assert line[0]["nll"] == members[0]["nll"] and line[-1]["nll"] == members[1]["nll"]
    assert line[1]["nll"] not in (members[0]["nll"], members[1]["nll"])  # the mid point is a model of its own


def test_cached_probabilities_are_the_models_probabilities(bn_run, tmp_path):
    paths = RunFolder(bn_run).member_paths(RunFolder(bn_run).read_manifest())
    member = paths[1]
    digest = hashlib.sha256((member / "model.safetensors").read_bytes()).hexdigest()
    assert weights_key(member) == digest
    loader = make_eval_dataloader(load_eval_dataset(bn_run / "eval_data", "test"), batch_size=40)
    expected, labels = Ensemble.from_pretrained([member], device="cpu").member_probs(loader)
    cache = PredictionCache(tmp_path / "predictions")
    cache.put(digest, "data-key", expected[0], labels)
    reread = PredictionCache(tmp_path / "predictions").get(digest, "data-key")
    np.testing.assert_array_equal(reread[0], expected[0])
    np.testing.assert_array_equal(reread[1], labels)
    assert PredictionCache(tmp_path / "predictions").get(digest, "other-data") is None
