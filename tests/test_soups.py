import hf_starsse  # noqa: F401, I001  (first: torchvision compatibility)
from hf_starsse.eval_data import make_eval_dataloader
from hf_starsse.manifest import EnsembleManifest
from hf_starsse.soups import (
    greedy_soup,
    held_out_score_fn,
    save_soup,
    save_uniform_soup,
    uniform_soup,
)

import os
from pathlib import Path

import pytest
import torch
from run_folder_helpers import eval_dataset_dict, make_run_folder, single_thread, tiny_model
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


@pytest.fixture(scope="module")
def three_members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    paths = []
    for seed in range(3):
        model = tiny_model("resnet", seed=seed)
        path = root / f"m{seed}"
        model.save_pretrained(path)
        paths.append(path)
    return paths


def test_uniform_soup_is_exact_elementwise_mean(three_members):
    states = [load_file(str(p / "model.safetensors")) for p in three_members]
    soup = uniform_soup(three_members)
    assert set(soup) == set(states[0])
    compared = 0
    for key, value in soup.items():
        if key.endswith(BN_STATS):
            continue
        expected = (states[0][key] + states[1][key] + states[2][key]) / 3
        assert value.dtype == states[0][key].dtype
        assert torch.equal(value, expected), key
        assert torch.allclose(value, torch.stack([s[key] for s in states]).mean(dim=0), atol=1e-7)
        compared += 1
    assert compared > 10
    assert not torch.equal(soup["classifier.1.weight"], states[0]["classifier.1.weight"])
    two = uniform_soup(three_members[:2])
    key = "resnet.embedder.embedder.convolution.weight"
    assert torch.equal(two[key], (states[0][key] + states[1][key]) / 2)
    # integer buffers come from the first member
    assert torch.equal(
        soup["resnet.embedder.embedder.normalization.num_batches_tracked"],
        states[0]["resnet.embedder.embedder.normalization.num_batches_tracked"],
    )
    weighted = uniform_soup(three_members[:2], weights=[1.0, 3.0])
    assert torch.allclose(weighted[key], (states[0][key] + 3 * states[1][key]) / 4, atol=1e-7)


def test_saved_soup_loads_with_auto_model(three_members, tmp_path):
    from transformers import AutoModelForImageClassification

    out = save_uniform_soup(three_members, tmp_path / "soup")
    model = AutoModelForImageClassification.from_pretrained(out)
    soup = uniform_soup(three_members)
    for key, value in model.state_dict().items():
        assert torch.equal(value, soup[key]), key
    assert (out / "soup.json").is_file() and (out / "config.json").is_file()
    with pytest.raises(FileExistsError, match="Refusing to overwrite"):
        save_uniform_soup(three_members, out)


def _assert_nothing_left(parent: Path, name: str):
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}")], list(parent.iterdir())


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_mismatched_architectures_refused(three_members, tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    tiny_model("vit").save_pretrained(tmp_path / "vit")
    resnet = dict(num_channels=3, embedding_size=8, depths=[1, 1])
    ResNetForImageClassification(ResNetConfig(**resnet, hidden_sizes=[8, 32], num_labels=4)).save_pretrained(
        tmp_path / "wide"
    )
    ResNetForImageClassification(ResNetConfig(**resnet, hidden_sizes=[8, 16], num_labels=5)).save_pretrained(
        tmp_path / "head"
    )
    cases = [
        ("vit", "config.json", "not the same architecture"),  # another model type: the config is named
        ("wide", "config.json", "(other sizes)"),  # same type, other sizes: the one architecture check names it
        ("head", "model.safetensors", "shape"),  # same config sizes, other head: the file and the tensor are named
    ]
    for name, named_file, words in cases:
        with pytest.raises(ValueError) as excinfo:
            save_uniform_soup([three_members[0], tmp_path / name], tmp_path / "soup")
        message = _one_line_error(excinfo)
        assert str(tmp_path / name / named_file) in message and words in message, message
        _assert_nothing_left(tmp_path, "soup")


def test_empty_member_list_refused(tmp_path):
    for call in (lambda: uniform_soup([]), lambda: save_uniform_soup([], tmp_path / "soup")):
        with pytest.raises(ValueError, match="`members` should list at least one member, got an empty list."):
            call()
    with pytest.raises(ValueError, match="`members` should list at least one member"):
        greedy_soup([], score_fn=lambda state: 0.0)
    _assert_nothing_left(tmp_path, "soup")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_safetensors_refused(three_members, tmp_path, damage):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(three_members[1], broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\x00\x01not a safetensors file" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError) as excinfo:
        save_uniform_soup([three_members[0], broken], tmp_path / "soup")
    message = _one_line_error(excinfo)
    assert str(weights) in message
    _assert_nothing_left(tmp_path, "soup")
    # an existing soup is not touched by a failed overwrite
    good = save_uniform_soup(three_members, tmp_path / "good")
    before = (good / "model.safetensors").read_bytes()
    with pytest.raises(ValueError):
        save_uniform_soup([three_members[0], broken], good, overwrite=True)
    assert (good / "model.safetensors").read_bytes() == before


def test_save_soup_refuses_foreign_state(three_members, tmp_path):
    with pytest.raises(ValueError, match="differ from those of"):
        save_soup({"x": torch.zeros(1)}, tmp_path / "soup", three_members[0])
    _assert_nothing_left(tmp_path, "soup")


def test_greedy_soup_logic_on_scalar_members(tmp_path):
    paths = []
    for i, value in enumerate([1.0, 2.0, 10.0]):
        path = tmp_path / f"w{i}.safetensors"
        save_file({"w": torch.tensor([value])}, str(path))
        paths.append(path)

    def score(state):  # best soup value is 1.6
        return -abs(float(state["w"]) - 1.6)

    result = greedy_soup(paths, score)
    assert result.order == [1, 0, 2]  # member scores -0.6, -0.4, -8.4
    assert result.selected == [1, 0]  # 2 -> 1.5 improves (-0.1); adding 10 -> 4.33 does not
    assert result.score == pytest.approx(-0.1)
    assert [h["accepted"] for h in result.history] == [True, True, False]
    assert float(result.state_dict["w"]) == pytest.approx(1.5)


def test_greedy_soup_leaves_out_a_bad_member(tmp_path):
    run = make_run_folder(tmp_path / "run", num_members=4, bad_member=2, cycle_steps=8)
    members = EnsembleManifest.load(run).member_paths(run)
    data = eval_dataset_dict()
    val = make_eval_dataloader(data["validation"], batch_size=32)
    train = make_eval_dataloader(data["train"], batch_size=32)
    from transformers import AutoModelForImageClassification

    template = AutoModelForImageClassification.from_pretrained(members[0])
    result = greedy_soup(members, held_out_score_fn(template, val, bn_dataloader=train))
    assert result.member_scores[2] < 0.5 < min(result.member_scores[i] for i in (0, 1, 3))
    assert 2 not in result.selected
    assert result.order[-1] == 2
    assert result.history[-1] == {"index": 2, "score": result.history[-1]["score"], "accepted": False}
    assert result.history[-1]["score"] <= result.score
    expected = uniform_soup([members[i] for i in result.selected])
    assert all(torch.equal(expected[k], v) for k, v in result.state_dict.items())
