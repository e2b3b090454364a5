"""SWA / SWAG (hf_starsse.methods.swag): SWA = the mean of the collected snapshots, SWAG samples have the collected
mean and variance, sampling is seeded, the moments live on the CPU."""

from hf_starsse import EnsembleManifest
from hf_starsse.methods import SWAGConfig, SWAGMoments, build_swag
from hf_starsse.methods.fge import fge_learning_rate
from hf_starsse.methods.swag import MOMENTS_NAME

import pytest
import torch
from methods_fixtures import make_image_dataset, make_member0, trainable_vector
from transformers import AutoModelForImageClassification

NUM_DRAWS = 4000  # samples for the moment checks


@pytest.fixture(scope="module")
def member0(tmp_path_factory):
    return make_member0(tmp_path_factory.mktemp("swag"))


@pytest.fixture(scope="module")
def swag_run(member0, tmp_path_factory):
    """A SWAG run (3 samples) over 6 snapshots at a constant LR, with the snapshots recorded as they are collected."""
    snapshots = []
    config = SWAGConfig(
        num_members=3, num_snapshots=6, collect_every_steps=2, rank=4, learning_rate=0.05, batch_size=8, scale=0.5
    )
    run = tmp_path_factory.mktemp("swag-run") / "run"
    out = build_swag(member0, make_image_dataset(32), run, config, on_collect=lambda s, v: snapshots.append((s, v)))
    return out, snapshots, config


def test_swa_is_the_mean_of_the_collected_snapshots(member0, tmp_path):
    snapshots = []
    config = SWAGConfig(
        method="swa",
        num_members=1,
        num_snapshots=5,
        collect_every_steps=4,
        schedule="cyclic",
        learning_rate=0.05,
        min_learning_rate=0.001,
        batch_size=8,
    )
    build_swag(
        member0, make_image_dataset(32), tmp_path / "run", config, on_collect=lambda s, v: snapshots.append((s, v))
    )
    # cyclic: collected at each cycle's low point (step 2 of every 4-step cycle)
    assert [s for s, _ in snapshots] == [2, 6, 10, 14, 18]
    assert all(fge_learning_rate(s, 4, 0.05, 0.001) == pytest.approx(0.001) for s, _ in snapshots)
    mean = torch.stack([v for _, v in snapshots]).mean(0)
    manifest = EnsembleManifest.load(tmp_path / "run")
    assert manifest.strategy == "swa" and len(manifest.members) == 1
    saved = trainable_vector(manifest.member_paths(tmp_path / "run")[0])
    torch.testing.assert_close(saved, mean, rtol=0, atol=1e-6)  # SWA weights = mean of the snapshots
    assert (saved - snapshots[-1][1]).abs().max() > 1e-4  # ... and not just the last one
    # the SWA model's BatchNorm statistics were recomputed for the averaged weights (not the trajectory's)
    model = AutoModelForImageClassification.from_pretrained(manifest.member_paths(tmp_path / "run")[0])
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert manifest.members[0].metrics["bn_recalibrated"] is True
    assert bn.num_batches_tracked.item() == 4  # one cumulative pass: 32 examples / batch 8


def test_collected_moments_match_the_snapshots(swag_run):
    out, snapshots, config = swag_run
    moments = out.details["moments"]
    stack = torch.stack([v for _, v in snapshots]).double()
    assert [s for s, _ in snapshots] == [1, 3, 5, 7, 9, 11] and moments.num_collected == 6
    assert moments.mean.device.type == "cpu" and moments.mean.dtype == torch.float32
    torch.testing.assert_close(moments.mean.double(), stack.mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        moments.variance().double(), stack.var(0, unbiased=False).clamp_min(1e-30), rtol=1e-3, atol=1e-9
    )
    d = moments.deviation_matrix()
    assert d.shape == (4, stack.shape[1])  # rank 4: the last 4 deviations theta_i - mean_i
    running = [stack[: i + 1].mean(0) for i in range(6)]
    torch.testing.assert_close(
        d.double(), torch.stack([stack[i] - running[i] for i in range(2, 6)]), rtol=0, atol=1e-5
    )
    # saved next to the members, and reloadable
    again = SWAGMoments.load(out.run_dir / MOMENTS_NAME)
    assert torch.equal(again.mean, moments.mean) and torch.equal(again.deviation_matrix(), d)


@pytest.mark.parametrize("covariance", ["diagonal", "lowrank"])
def test_sample_mean_and_variance_converge(swag_run, covariance):
    """Over NUM_DRAWS samples: per weight, |sample mean - SWA mean| < 5 standard errors, and the sample variance
    within 15% of the target (diagonal: scale * collected variance; low rank: scale * (var + diag(D^T D)/(K-1)) / 2).
    With 4000 draws the relative s.e. of a variance is sqrt(2/4000) = 2.2%, so 15% is ~6.7 s.e. over ~1.8k weights."""
    moments = swag_run[0].details["moments"]
    scale = 0.5
    draws = torch.stack([moments.sample(seed, scale, covariance) for seed in range(NUM_DRAWS)]).double()
    target_var = moments.sample_variance(scale, covariance).double()
    if covariance == "diagonal":
        torch.testing.assert_close(target_var, scale * moments.variance().double())
    sem = (target_var / NUM_DRAWS).sqrt()
    assert ((draws.mean(0) - moments.mean.double()).abs() / sem).max() < 5
    ratio = draws.var(0) / target_var
    assert (ratio - 1).abs().max() < 0.15


def test_members_are_seeded_reproducible_samples(swag_run):
    out, _, config = swag_run
    moments = out.details["moments"]
    manifest = out.manifest
    assert manifest.strategy == "swag" and len(manifest.members) == 3
    vectors = [trainable_vector(p) for p in manifest.member_paths(out.run_dir)]
    for record, vector in zip(manifest.members, vectors):
        assert record.seed == config.seed + record.index
        torch.testing.assert_close(
            vector, moments.sample(record.seed, config.scale, config.covariance), rtol=0, atol=0
        )
    assert (vectors[0] - vectors[1]).abs().max() > 1e-4


def test_invalid_settings_name_the_field(member0, tmp_path):
    with pytest.raises(ValueError, match="`rank` should be at least 1, got 0"):
        SWAGConfig(rank=0, collect_every_steps=1)
    with pytest.raises(ValueError, match="`num_members` should be 1"):
        SWAGConfig(method="swa", num_members=3, collect_every_steps=1)
    with pytest.raises(ValueError, match="`collect_every_steps`"):
        SWAGConfig(schedule="cyclic", collect_every_steps=1)
    with pytest.raises(ValueError, match="`num_snapshots`"):
        SWAGConfig(num_snapshots=1, collect_every_steps=1)
    with pytest.raises(ValueError, match="`covariance`"):
        SWAGConfig(covariance="full", collect_every_steps=1)
