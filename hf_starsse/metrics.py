"""Ensemble metrics as pure functions over class probabilities and integer labels.

Every function takes `probs` of shape `(num_samples, num_classes)` (rows sum to 1) or, for the ensemble-level ones,
`member_probs` of shape `(num_members, num_samples, num_classes)`, and `labels` of shape `(num_samples,)`. NumPy arrays
and torch tensors are both accepted. Accuracy, ECE and error rates are fractions in [0, 1]; diversity is in percent,
as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_NUM_BINS = 15


def _to_numpy(array: Any, name: str, ndim: int | None = None) -> np.ndarray:
    if hasattr(array, "detach"):  # torch.Tensor
        array = array.detach().cpu().float().numpy() if array.is_floating_point() else array.detach().cpu().numpy()
    array = np.asarray(array)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"`{name}` should have {ndim} dimensions, got shape {array.shape}.")
    return array


def _check(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    probs = _to_numpy(probs, "probs", 2).astype(np.float64)
    labels = _to_numpy(labels, "labels", 1).astype(np.int64)
    if probs.shape[0] != labels.shape[0]:
        raise ValueError(f"`probs` has {probs.shape[0]} rows but `labels` has {labels.shape[0]} entries.")
    if probs.shape[0] == 0:
        raise ValueError("`probs` and `labels` should hold at least one sample, got 0.")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(
            f"`labels` should lie in [0, {probs.shape[1]}), got values in [{labels.min()}, {labels.max()}]."
        )
    return probs, labels


def softmax(logits: Any, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of `logits` (computed in float64)."""
    logits = _to_numpy(logits, "logits").astype(np.float64)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def accuracy(probs: Any, labels: Any) -> float:
    """Fraction of samples whose most probable class is the label."""
    probs, labels = _check(probs, labels)
    return float(np.mean(probs.argmax(axis=1) == labels))


def error_rate(probs: Any, labels: Any) -> float:
    """`1 - accuracy`."""
    return 1.0 - accuracy(probs, labels)


def nll(probs: Any, labels: Any, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood `-mean(log p[label])` (probabilities clipped at `eps`)."""
    probs, labels = _check(probs, labels)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, None))))


def brier(probs: Any, labels: Any) -> float:
    """Brier score: mean over samples of `sum_c (p_c - onehot(label)_c) ** 2` (in [0, 2])."""
    probs, labels = _check(probs, labels)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def ece(probs: Any, labels: Any, num_bins: int = DEFAULT_NUM_BINS) -> float:
    """Expected calibration error with `num_bins` equal-width confidence bins.

    A sample falls into bin `b` when its confidence (top probability) lies in `(b / num_bins, (b + 1) / num_bins]`
    (boundaries from `np.linspace(0, 1, num_bins + 1)`);
    `ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|`.

    Args:
        probs (`np.ndarray` or `torch.Tensor` of shape `(N, C)`): Class probabilities.
        labels (`np.ndarray` or `torch.Tensor` of shape `(N,)`): Integer labels.
        num_bins (`int`, *optional*, defaults to 15): Number of equal-width bins over [0, 1].
    """
    if num_bins < 1:
        raise ValueError(f"`num_bins` should be positive, got {num_bins}.")
    probs, labels = _check(probs, labels)
    confidences = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # bin b holds (boundaries[b], boundaries[b + 1]], boundaries = linspace(0, 1, num_bins + 1) (Guo et al. 2017)
    boundaries = np.linspace(0.0, 1.0, num_bins + 1)
    bins = np.searchsorted(boundaries[1:-1], confidences, side="left")
    total = 0.0
    for b in np.unique(bins):
        mask = bins == b
        total += mask.sum() / len(labels) * abs(correct[mask].mean() - confidences[mask].mean())
    return float(total)


def classification_metrics(probs: Any, labels: Any, num_bins: int = DEFAULT_NUM_BINS) -> dict[str, float]:
    """`accuracy`, `nll`, `ece` and `brier` of one predictor."""
    return {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "ece": ece(probs, labels, num_bins=num_bins),
        "brier": brier(probs, labels),
    }


def _check_members(member_probs: Any) -> np.ndarray:
    if isinstance(member_probs, (list, tuple)):
        if not member_probs:
            raise ValueError("`member_probs` should hold at least one member, got none.")
        member_probs = np.stack([_to_numpy(p, "member_probs[i]", 2) for p in member_probs])
    member_probs = _to_numpy(member_probs, "member_probs", 3).astype(np.float64)
    if member_probs.shape[0] == 0:
        raise ValueError("`member_probs` should hold at least one member, got none.")
    return member_probs


def ensemble_probs(member_probs: Any) -> np.ndarray:
    """The ensemble's prediction: the mean of the members' probabilities, shape `(N, C)`."""
    return _check_members(member_probs).mean(axis=0)


def pairwise_diversity(preds_a: Any, preds_b: Any, labels: Any) -> float:
    """The paper's diversity of two predictors, in percent: `100 * P[pred_a != pred_b] / max(err_a, err_b)`.

    `preds_a`, `preds_b` are predicted classes (shape `(N,)`) or probabilities (shape `(N, C)`). Two perfect predictors
    agree everywhere and get 0.
    """
    labels = _to_numpy(labels, "labels", 1).astype(np.int64)
    preds = []
    for name, p in (("preds_a", preds_a), ("preds_b", preds_b)):
        p = _to_numpy(p, name)
        p = p.argmax(axis=1) if p.ndim == 2 else p.astype(np.int64)
        if p.shape != labels.shape:
            raise ValueError(f"`{name}` should have {labels.shape[0]} predictions, got shape {p.shape}.")
        preds.append(p)
    disagreement = float(np.mean(preds[0] != preds[1]))
    max_error = max(float(np.mean(preds[0] != labels)), float(np.mean(preds[1] != labels)))
    if max_error == 0.0:
        return 0.0
    return 100.0 * disagreement / max_error


def diversity_matrix(member_probs: Any, labels: Any) -> np.ndarray:
    """`(K, K)` matrix of pairwise diversities (percent), 0 on the diagonal."""
    member_probs = _check_members(member_probs)
    preds = member_probs.argmax(axis=2)
    k = len(preds)
    matrix = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            matrix[i, j] = matrix[j, i] = pairwise_diversity(preds[i], preds[j], labels)
    return matrix


def diversity(member_probs: Any, labels: Any) -> float:
    """The paper's ensemble diversity (percent): the mean of `pairwise_diversity` over pairs of members.

    `100 * mean_{m1 != m2} P_x[pred_m1(x) != pred_m2(x)] / max(err_m1, err_m2)`; 0 for a single member.
    """
    matrix = diversity_matrix(member_probs, labels)
    k = len(matrix)
    if k < 2:
        return 0.0
    return float(matrix[np.triu_indices(k, 1)].mean())


def quality_vs_size(member_probs: Any, labels: Any, num_bins: int = DEFAULT_NUM_BINS) -> list[dict[str, float]]:
    """Metrics of the ensembles of the first `k` members, `k = 1..K` (entry `k - 1` has `"size": k`)."""
    member_probs = _check_members(member_probs)
    rows = []
    running = np.zeros_like(member_probs[0])
    for k in range(1, len(member_probs) + 1):
        running += member_probs[k - 1]
        row = {"size": k, **classification_metrics(running / k, labels, num_bins=num_bins)}
        row["diversity"] = diversity(member_probs[:k], labels)
        rows.append(row)
    return rows


def ensemble_metrics(member_probs: Any, labels: Any, num_bins: int = DEFAULT_NUM_BINS) -> dict[str, Any]:
    """Everything about an ensemble: `members` (per-member metrics), `ensemble`, `quality_vs_size`, `diversity`,
    `diversity_matrix`, and `mean_member` (the members' metrics averaged)."""
    member_probs = _check_members(member_probs)
    members = [classification_metrics(p, labels, num_bins=num_bins) for p in member_probs]
    return {
        "members": members,
        "mean_member": {key: float(np.mean([m[key] for m in members])) for key in members[0]},
        "ensemble": classification_metrics(member_probs.mean(axis=0), labels, num_bins=num_bins),
        "diversity": diversity(member_probs, labels),
        "diversity_matrix": diversity_matrix(member_probs, labels).tolist(),
        "quality_vs_size": quality_vs_size(member_probs, labels, num_bins=num_bins),
    }


def make_compute_metrics(num_bins: int = DEFAULT_NUM_BINS) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for `transformers.Trainer`: softmax of the logits, then `classification_metrics`."""

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits, labels = _unpack_eval_prediction(eval_pred)
        return classification_metrics(softmax(logits), labels, num_bins=num_bins)

    return compute_metrics


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """`transformers.Trainer` `compute_metrics`: accuracy, NLL, ECE (15 bins) and Brier from an `EvalPrediction`."""
    return make_compute_metrics()(eval_pred)


def _unpack_eval_prediction(eval_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(eval_pred, "predictions"):
        logits, labels = eval_pred.predictions, eval_pred.label_ids
    else:
        logits, labels = eval_pred
    if isinstance(logits, (tuple, list)):  # models returning extra outputs: logits come first
        logits = logits[0]
    return np.asarray(logits), np.asarray(labels)


def load_evaluate_metric(name: str = "probabilistic_classification") -> Any:
    """Load one of the library's local `evaluate` metric modules (works offline, unlike `evaluate.load("accuracy")`).

    Example:

    ```python
    >>> metric = load_evaluate_metric()
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 0])["accuracy"]
    0.5
    ```
    """
    from pathlib import Path

    import evaluate

    path = Path(__file__).parent / "evaluate_metrics" / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"No local evaluate metric named {name!r} (looked in {path.parent}).")
    return evaluate.load(str(path))


def summarize(rows: Sequence[dict[str, float]], key: str) -> list[float]:
    """The column `key` of a list of metric rows (e.g. of `quality_vs_size`)."""
    return [float(row[key]) for row in rows]
