"""FGE (hf_starsse.methods.fge): the LR at a cycle's ends and middle, snapshots at the low points, the run layout."""

from hf_starsse import EnsembleManifest, member_dir
from hf_starsse.methods import FGEConfig, build_fge
from hf_starsse.methods.fge import fge_learning_rate, is_snapshot_step

import json

import pytest
import torch
from methods_fixtures import make_image_dataset, make_member0, trainable_vector
from torch.optim.optimizer import register_optimizer_step_pre_hook

HIGH, LOW = 0.05, 0.001


@pytest.fixture(scope="module")
def member0(tmp_path_factory):
    return make_member0(tmp_path_factory.mktemp("fge"))


@pytest.mark.parametrize("cycle_steps", [2, 4, 5, 8])
@pytest.mark.parametrize("schedule", ["triangular", "cosine"])
def test_lr_at_cycle_ends_and_middle(cycle_steps, schedule):
    half = cycle_steps // 2
    for cycle in range(3):
        start = cycle * cycle_steps
        lrs = [fge_learning_rate(start + s, cycle_steps, HIGH, LOW, schedule) for s in range(cycle_steps + 1)]
        assert lrs[0] == pytest.approx(HIGH)  # a cycle's start (and the previous cycle's end)
        assert lrs[half] == pytest.approx(LOW)  # its middle: the low point
        assert lrs[-1] == pytest.approx(HIGH)  # its end = the next cycle's start
        assert all(a > b for a, b in zip(lrs[: half + 1], lrs[1 : half + 1]))  # strictly down, then up
        assert all(a < b for a, b in zip(lrs[half:-1], lrs[half + 1 :]))
        assert [is_snapshot_step(start + s, cycle_steps) for s in range(cycle_steps)] == [
            s == half for s in range(cycle_steps)
        ]
    # triangular: linear, so a quarter of the way down is the average of the ends
    assert fge_learning_rate(1, 4, HIGH, LOW) == pytest.approx((HIGH + LOW) / 2)


def test_build_fge_snapshots_at_low_points(member0, tmp_path):
    seen_lrs = []

    def hook(optimizer, args, kwargs):
        seen_lrs.append(optimizer.param_groups[0]["lr"])

    handle = register_optimizer_step_pre_hook(hook)
    try:
        config = FGEConfig(num_members=4, cycle_steps=4, learning_rate=HIGH, min_learning_rate=LOW, batch_size=8)
        out = build_fge(member0, make_image_dataset(32), tmp_path / "run", config)
    finally:
        handle.remove()
    # 2 full cycles + half of the third, ending on its low point: the LRs the optimizer really used
    expected = [fge_learning_rate(t, 4, HIGH, LOW) for t in range(2 * 4 + 2 + 1)]
    assert seen_lrs == pytest.approx(expected)
    assert seen_lrs[2] == seen_lrs[6] == seen_lrs[10] == pytest.approx(LOW)

    manifest = EnsembleManifest.load(tmp_path / "run")
    assert manifest.strategy == "fge" and manifest.num_members == 4 and len(manifest.members) == 4
    assert [m.metrics.get("snapshot_step") for m in manifest.members] == [None, 2, 6, 10]
    assert [m.metrics.get("snapshot_lr") for m in manifest.members[1:]] == pytest.approx([LOW] * 3)
    vectors = [trainable_vector(p) for p in manifest.member_paths(tmp_path / "run")]
    assert torch.equal(vectors[0], trainable_vector(member0))  # member 0 is the starting model
    for a, b in zip(vectors, vectors[1:]):
        assert (a - b).abs().max() > 1e-4  # every snapshot moved
    folder = member_dir(tmp_path / "run", 2)
    assert (folder / "preprocessor_config.json").is_file()  # the processor travels with each member
    assert json.loads((folder / "member.json").read_text())["index"] == 2
    assert out.details["cycle_steps"] == 4
    # the run loads like any other ensemble
    from hf_starsse.modeling_ensemble import EnsembleForImageClassification

    ensemble = EnsembleForImageClassification.from_pretrained(tmp_path / "run")
    assert ensemble.num_members == 4 and ensemble.config.strategy == "fge" and ensemble.image_processor is not None


def test_invalid_cycles_fail_before_training(member0, tmp_path):
    with pytest.raises(ValueError, match="`cycle_steps`"):
        FGEConfig(cycle_steps=1)
    with pytest.raises(ValueError, match="`min_learning_rate`"):
        FGEConfig(cycle_steps=4, learning_rate=0.01, min_learning_rate=0.1)
    with pytest.raises(ValueError, match="`cycle_steps`.*`cycle_epochs`"):
        FGEConfig()
    # 0.1 epoch of 4 steps per epoch is under 2 steps: refused before anything is written
    config = FGEConfig(num_members=2, cycle_epochs=0.1, batch_size=8)
    with pytest.raises(ValueError, match="`cycle_epochs`"):
        build_fge(member0, make_image_dataset(32), tmp_path / "run", config)
    assert not (tmp_path / "run").exists()


def test_never_overwrites_a_finished_run(member0, tmp_path):
    config = FGEConfig(num_members=2, cycle_steps=2, batch_size=8)
    build_fge(member0, make_image_dataset(16), tmp_path / "run", config)
    before = (member_dir(tmp_path / "run", 1) / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="`output_dir`"):
        build_fge(member0, make_image_dataset(16), tmp_path / "run", config)
    assert (member_dir(tmp_path / "run", 1) / "model.safetensors").read_bytes() == before
