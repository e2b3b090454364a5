"""Damaged runs: truncated / garbage weights, a missing member folder, non-finite or diverged members, through
`hf-starsse evaluate`, `Ensemble.from_run`, `EnsembleForImageClassification.from_pretrained`, soups and push; and
run strings escaped in the model card."""

from hf_starsse.cli import main as cli_main
from hf_starsse.ensemble import Ensemble
from hf_starsse.hub import push_to_hub
from hf_starsse.manifest import EnsembleManifest, member_dir
from hf_starsse.model_card import build_model_card
from hf_starsse.modeling_ensemble import EnsembleForImageClassification
from hf_starsse.soups import uniform_soup

import json
import shutil

import pytest
import torch
import yaml
from ensemble_fixtures import file_digests
from run_folder_helpers import make_run_folder
from safetensors.torch import load_file, save_file

EVAL = ["--no-plots", "--no-progress", "--soup", "uniform", "--interpolation-points", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("runs") / "run", num_members=3, first_steps=4, cycle_steps=2)


@pytest.fixture
def run(clean_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(clean_run, copy)
    return copy


def _evaluate(run, capsys):
    code = cli_main(["evaluate", str(run), *EVAL])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, [line for line in captured.err.splitlines() if "error:" in line]


def _truncate(run, index, garbage=False):
    weights = member_dir(run, index) / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file" * 4 if garbage else data[: len(data) // 2])
    return weights


@pytest.mark.parametrize("garbage", [False, True])
def test_truncated_or_garbage_weights_name_the_file(run, capsys, garbage):
    weights = _truncate(run, 1, garbage)
    detail = "header too large" if garbage else "incomplete metadata, file not fully covered"
    expected = (
        f"{weights} is not a readable safetensors file (Error while deserializing header: {detail}): truncated or "
        "corrupt."
    )
    before = file_digests(run)
    code, err = _evaluate(run, capsys)
    assert code == 1 and err == [f"hf-starsse evaluate: error: {expected}"]
    with pytest.raises(ValueError) as info:
        Ensemble.from_run(run, device="cpu")
    assert str(info.value) == expected
    with pytest.raises(ValueError) as info:
        EnsembleForImageClassification.from_pretrained(str(run))
    assert str(info.value) == expected
    assert file_digests(run) == before  # nothing written, nothing changed


def test_manifest_member_path_to_a_missing_folder(run, capsys):
    shutil.rmtree(member_dir(run, 2))
    expected = f"{run / 'ensemble.json'} members[2].path: the member folder {member_dir(run, 2)} is missing."
    code, err = _evaluate(run, capsys)
    assert code == 1 and err == [f"hf-starsse evaluate: error: {expected}"]
    with pytest.raises(ValueError) as info:
        Ensemble.from_run(run, device="cpu")
    assert str(info.value) == expected


def _poison(run, index):
    path = member_dir(run, index) / "model.safetensors"
    state = load_file(path)
    key = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, path, metadata={"format": "pt"})
    return key, len(state)


def test_nonfinite_member_is_refused_by_evaluate_from_run_soups_and_push(run, capsys):
    key, total = _poison(run, 1)
    expected = (
        f"member 1 ({member_dir(run, 1)}) has non-finite weights (1 of {total} tensors, e.g. `{key}`): it diverged; "
        "retrain it with a lower learning rate, or remove it from the run."
    )
    code, err = _evaluate(run, capsys)
    assert code == 1 and err == [f"hf-starsse evaluate: error: {expected}"]
    assert not (run / "eval").exists() and not (run / "soups").exists()
    with pytest.raises(ValueError) as info:
        Ensemble.from_run(run, device="cpu")
    assert str(info.value) == expected
    with pytest.raises(ValueError) as info:
        push_to_hub(run, "user/repo", token="hf_x")
    assert str(info.value) == expected
    with pytest.raises(ValueError, match=r"tensor `.*` holds NaN or infinity: this member's weights are not finite"):
        uniform_soup(EnsembleManifest.load(run).member_paths(run))
    with pytest.raises(ValueError, match="^member 1 .* has non-finite weights"):
        EnsembleForImageClassification.from_pretrained(str(run))


def _mark_diverged(run, index):
    data = json.loads((run / "ensemble.json").read_text())
    data["members"][index]["diverged"] = {"step": 3, "learning_rate": 0.4, "reason": "its training loss is nan"}
    (run / "ensemble.json").write_text(json.dumps(data))
    for path in member_dir(run, index).iterdir():
        path.unlink()
    (member_dir(run, index) / "member.json").write_text(json.dumps(data["members"][index]))


def test_diverged_member_is_left_out_of_evaluate_and_ensembles_with_a_warning(run, capsys, caplog):
    _mark_diverged(run, 2)
    code, err = _evaluate(run, capsys)
    assert code == 0 and err == []
    warning = (
        "member 2 diverged during training (step 3, learning rate 0.4): left out of the ensemble, soups and uploads."
    )
    assert warning in caplog.messages
    results = json.loads((run / "eval" / "eval.json").read_text())
    assert results["num_members"] == 2 and results["soups"]["uniform"]["members"] == [0, 1]
    assert Ensemble.from_run(run, device="cpu").names == ["member-0", "member-1"]
    assert EnsembleForImageClassification.from_pretrained(str(run)).num_members == 2


def test_model_card_escapes_run_strings(run):
    manifest = EnsembleManifest.load(run)
    hostile = "evil\n---\nlicense: evil\n<script>alert(1)</script> | col"
    manifest.base_models = [hostile]
    manifest.members[0].init_from = hostile
    manifest.hyperparameters["max_grad_norm"] = 0.0
    manifest.hyperparameters["weight_decay_on_norm_and_bias"] = True
    manifest.hyperparameters["weight_decay"] = 1e-4
    card = str(build_model_card(manifest, eval_results={"dataset": hostile, "split": "te|st\n---"}))
    metadata, body = card.split("---", 2)[1], card.split("---", 2)[2]
    assert "license" not in yaml.safe_load(metadata)  # metadata injection blocked
    assert "<script>" not in body and "\n---\nlicense" not in body
    assert "evil --- license: evil &lt;script&gt;alert(1)&lt;/script&gt; \\| col" in body
    for line in body.splitlines():
        if line.startswith("| `members/member-0`"):
            assert line.count(" | ") == 5  # the members table keeps its columns
    assert (
        "Optimizer: no gradient clipping; weight decay 0.0001 on every parameter (biases and norm weights included, "
        "as the authors' SGD)." in body
    )
