"""cSGLD (hf_starsse.methods.csgld): noise only in each cycle's sampling phase, with std sqrt(2 lr T / N)."""

from hf_starsse import EnsembleManifest
from hf_starsse.methods import CSGLDConfig, build_csgld
from hf_starsse.methods.csgld import csgld_learning_rate, in_sampling_phase, sgld_noise_std

import math

import pytest
from methods_fixtures import make_image_dataset, make_member0, trainable_vector

LR, CYCLE, N = 0.05, 5, 32


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same cSGLD run (same seed, data order) at temperature 0 (no noise) and at temperature 2."""
    tmp = tmp_path_factory.mktemp("csgld")
    member0 = make_member0(tmp)
    data = make_image_dataset(N)
    outs = {}
    for temperature in (0.0, 2.0):
        config = CSGLDConfig(
            num_members=2,
            cycle_steps=CYCLE,
            exploration_fraction=0.6,
            temperature=temperature,
            learning_rate=LR,
            batch_size=8,
        )
        outs[temperature] = build_csgld(member0, data, tmp / f"run-T{temperature}", config)
    return outs


def test_schedule_and_phases():
    lrs = [csgld_learning_rate(t, CYCLE, LR) for t in range(2 * CYCLE)]
    assert lrs[0] == lrs[CYCLE] == pytest.approx(LR)
    assert lrs[CYCLE - 1] == pytest.approx(LR / 2 * (math.cos(math.pi * 4 / 5) + 1))
    # exploration_fraction 0.6 of 5 steps: steps 0-2 explore, 3-4 sample, in every cycle
    assert [in_sampling_phase(t, CYCLE, 0.6) for t in range(2 * CYCLE)] == [False, False, False, True, True] * 2
    assert sgld_noise_std(0.01, 2.0, 100) == pytest.approx(math.sqrt(2 * 0.01 * 2.0 / 100))


def test_noise_only_in_the_sampling_phase_with_the_stated_scale(runs):
    trace = runs[2.0].details["trace"]
    assert len(trace) == 2 * CYCLE
    for row in trace:
        sampling = row["step"] % CYCLE >= 3
        assert row["sampling"] is sampling
        if sampling:
            expected = math.sqrt(2 * row["lr"] * 2.0 / N)
            assert row["noise_std"] == pytest.approx(expected)
            # the noise actually added (~1.8k weights): its empirical std within 5% of the stated one
            assert row["injected_std"] == pytest.approx(expected, rel=0.05)
        else:
            assert row["noise_std"] == 0.0 and row["injected_std"] == 0.0
    assert all(row["injected_std"] == 0.0 for row in runs[0.0].details["trace"])


def test_exploration_is_noiseless_sgd_and_sampling_adds_the_stated_noise(runs, tmp_path):
    """The T=2 and T=0 runs share seeds and data order: through the first exploration phase their weights are
    identical; the first sampling step's SGD update is the same in both, so their difference after it is exactly the
    injected noise. Checked on the weights with a third build stopping right there (`num_members=1`, cycle of 4 whose
    last step is its only sampling step)."""
    member0 = runs[0.0].manifest.base_models[0]
    data = make_image_dataset(N)
    vectors = {}
    for temperature in (0.0, 2.0):
        config = CSGLDConfig(
            num_members=1,
            cycle_steps=4,
            exploration_fraction=0.75,
            temperature=temperature,
            learning_rate=LR,
            batch_size=8,
        )
        out = build_csgld(member0, data, tmp_path / f"T{temperature}", config)
        assert [row["sampling"] for row in out.details["trace"]] == [False, False, False, True]
        vectors[temperature] = trainable_vector(out.manifest.member_paths(out.run_dir)[0])
    diff = (vectors[2.0] - vectors[0.0]).double()
    expected = sgld_noise_std(csgld_learning_rate(3, 4, LR), 2.0, N)
    assert diff.std().item() == pytest.approx(expected, rel=0.05)
    assert abs(diff.mean().item()) < 4 * expected / math.sqrt(diff.numel())


def test_members_at_each_cycle_end(runs):
    out = runs[2.0]
    manifest = EnsembleManifest.load(out.run_dir)
    assert manifest.strategy == "csgld" and len(manifest.members) == 2
    assert [m.num_steps for m in manifest.members] == [CYCLE, 2 * CYCLE]
    assert [m.metrics["cycle"] for m in manifest.members] == [0, 1]
    a, b = (trainable_vector(p) for p in manifest.member_paths(out.run_dir))
    assert (a - b).abs().max() > 1e-4


def test_invalid_settings_name_the_field():
    with pytest.raises(ValueError, match="`exploration_fraction`"):
        CSGLDConfig(cycle_steps=10, exploration_fraction=1.0)
    with pytest.raises(ValueError, match="`temperature`"):
        CSGLDConfig(cycle_steps=10, temperature=-1)
    with pytest.raises(ValueError, match="`cycle_steps`"):
        CSGLDConfig(cycle_steps=1)
    # 0.9 of a 5-step cycle leaves no sampling step: refused when the cycle length is resolved, before training
    with pytest.raises(ValueError, match="`exploration_fraction`=0.9 with 5 steps"):
        CSGLDConfig(cycle_steps=5, exploration_fraction=0.9).resolve_cycle_steps(32)
