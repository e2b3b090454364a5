import hf_starsse  # noqa: F401, I001  (first: torchvision compatibility)
from hf_starsse import metrics

import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Four samples, two classes: confidences 0.85 (right), 0.85 (wrong), 0.75 (right), 0.65 (right).
PROBS = np.array([[0.85, 0.15], [0.85, 0.15], [0.25, 0.75], [0.65, 0.35]])
LABELS = np.array([0, 1, 1, 0])


def test_accuracy_nll_brier_by_hand():
    assert metrics.accuracy(PROBS, LABELS) == 0.75
    assert metrics.error_rate(PROBS, LABELS) == 0.25
    expected_nll = -(math.log(0.85) + math.log(0.15) + math.log(0.75) + math.log(0.65)) / 4
    assert metrics.nll(PROBS, LABELS) == pytest.approx(expected_nll, abs=1e-12)
    # per sample sum_c (p_c - onehot_c)^2: 2*0.15^2, 2*0.85^2, 2*0.25^2, 2*0.35^2
    assert metrics.brier(PROBS, LABELS) == pytest.approx((0.045 + 1.445 + 0.125 + 0.245) / 4, abs=1e-12)


def test_ece_exact_values():
    # 10 bins: (0.8, 0.9] holds samples 0, 1: |0.5 - 0.85| * 2/4;
    # (0.7, 0.8]: |1 - 0.75| / 4; (0.6, 0.7]: |1 - 0.65| / 4
    assert metrics.ece(PROBS, LABELS, num_bins=10) == pytest.approx(0.175 + 0.0625 + 0.0875, abs=1e-12)
    # the default 15 bins separate the same groups
    assert metrics.ece(PROBS, LABELS) == pytest.approx(0.325, abs=1e-12)
    # one bin: |accuracy - mean confidence| = |0.75 - 0.775|
    assert metrics.ece(PROBS, LABELS, num_bins=1) == pytest.approx(0.025, abs=1e-12)
    # perfectly calibrated: confidence 1 and always right
    assert metrics.ece(np.eye(3), np.arange(3)) == 0.0
    with pytest.raises(ValueError, match="`num_bins` should be positive, got 0"):
        metrics.ece(PROBS, LABELS, num_bins=0)


def _onehotish(preds, num_classes=4):
    probs = np.full((len(preds), num_classes), 0.1)
    probs[np.arange(len(preds)), preds] = 0.7
    return probs


def test_diversity_exact_value():
    labels = np.array([0, 1, 2, 3])
    m1 = _onehotish([0, 1, 2, 0])  # error 0.25
    m2 = _onehotish([0, 1, 1, 1])  # error 0.5
    m3 = _onehotish([0, 0, 2, 3])  # error 0.25
    # pairs: (1,2) disagree 0.5 / 0.5 -> 100; (1,3) 0.5 / 0.25 -> 200; (2,3) 0.75 / 0.5 -> 150
    matrix = metrics.diversity_matrix([m1, m2, m3], labels)
    np.testing.assert_allclose(matrix, [[0, 100, 200], [100, 0, 150], [200, 150, 0]], atol=1e-12)
    assert metrics.diversity([m1, m2, m3], labels) == pytest.approx(150.0, abs=1e-12)
    assert metrics.pairwise_diversity([0, 1, 2, 0], [0, 0, 2, 3], labels) == pytest.approx(200.0)
    # identical members and perfect members have no diversity
    assert metrics.diversity([m1, m1], labels) == 0.0
    assert metrics.diversity([np.eye(4), np.eye(4)], labels) == 0.0
    assert metrics.diversity([m1], labels) == 0.0


def test_quality_vs_size_and_ensemble_metrics():
    rng = np.random.default_rng(0)
    member_probs = rng.dirichlet(np.ones(5), size=(4, 50))
    labels = rng.integers(0, 5, size=50)
    rows = metrics.quality_vs_size(member_probs, labels)
    assert [r["size"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["accuracy"] == metrics.accuracy(member_probs[0], labels)
    for k, row in enumerate(rows, start=1):
        mean = member_probs[:k].mean(axis=0)
        assert row["nll"] == pytest.approx(metrics.nll(mean, labels), abs=1e-12)
        assert row["diversity"] == pytest.approx(metrics.diversity(member_probs[:k], labels), abs=1e-12)
    report = metrics.ensemble_metrics(member_probs, labels)
    for key in ("accuracy", "nll", "ece", "brier"):
        assert report["ensemble"][key] == pytest.approx(rows[-1][key], abs=1e-12)
    np.testing.assert_allclose(metrics.ensemble_probs(member_probs), member_probs.mean(axis=0), atol=1e-15)
    assert report["mean_member"]["accuracy"] == pytest.approx(
        np.mean([metrics.accuracy(p, labels) for p in member_probs])
    )


def test_torch_inputs_and_trainer_compute_metrics():
    from transformers import EvalPrediction

    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.4, 3.0], [0.0, 1.0, 0.0]])
    labels = np.array([0, 1, 1])
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    out = metrics.compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["nll"] == pytest.approx(-np.mean(np.log(probs[[0, 1, 2], [0, 1, 1]])), abs=1e-12)
    assert out["ece"] == pytest.approx(metrics.ece(probs, labels))
    assert metrics.make_compute_metrics(num_bins=1)((logits, labels))["ece"] == pytest.approx(
        abs(2 / 3 - probs.max(axis=1).mean()), abs=1e-12
    )
    assert metrics.accuracy(torch.tensor(probs), torch.tensor(labels)) == pytest.approx(2 / 3)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="`probs` has 4 rows but `labels` has 3 entries"):
        metrics.accuracy(PROBS, LABELS[:3])
    with pytest.raises(ValueError, match=r"`labels` should lie in \[0, 2\)"):
        metrics.nll(PROBS, np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="at least one member"):
        metrics.diversity([], LABELS)


def test_local_evaluate_module_matches_functions():
    metric = metrics.load_evaluate_metric()
    out = metric.compute(predictions=PROBS.tolist(), references=LABELS.tolist(), num_bins=10)
    assert out["accuracy"] == 0.75
    assert out["ece"] == pytest.approx(0.325, abs=1e-12)
    assert out["brier"] == pytest.approx(0.465, abs=1e-12)
    with pytest.raises(ValueError, match="No local evaluate metric named 'nope'"):
        metrics.load_evaluate_metric("nope")
