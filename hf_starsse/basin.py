"""Basin analysis: metrics along the line between two members, on the plane through three models, and distances.

A drop of accuracy in the middle of the line between two members means they lie in different basins (the paper's
"semi-local" members); members that stay close to the pre-trained checkpoint lie in its basin. States are plain state
dicts (e.g. `uniform_soup([member])` reads one member); a template model evaluates each point.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .bn_recalibration import has_batchnorm, recalibrate_batchnorm
from .ensemble import predict_probs
from .metrics import DEFAULT_NUM_BINS, classification_metrics
from .soups import load_soup_into, member_weights_file, open_weights, read_tensor

# buffers excluded from distances and plane geometry (they are statistics of activations, not weights)
_STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _is_weight(key: str, tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and not key.endswith(_STAT_SUFFIXES)


def l2_distance(a: str | os.PathLike, b: str | os.PathLike) -> tuple[float, int, list[str]]:
    """L2 distance between the weights of two checkpoints, streamed from safetensors.

    Only tensors present in both with equal shapes count (a new classification head has another shape than the
    pre-trained one); BatchNorm running statistics are left out.

    Returns:
        `(distance, num_compared, skipped)`: the distance, how many tensors were compared, and the keys skipped.
    """
    path_a, path_b = member_weights_file(a), member_weights_file(b)
    total = 0.0
    compared = 0
    skipped: list[str] = []
    with open_weights(path_a) as fa, open_weights(path_b) as fb:
        keys_b = set(fb.keys())
        for key in sorted(fa.keys()):
            ta = read_tensor(fa, key, path_a)
            if key not in keys_b:
                skipped.append(key)
                continue
            tb = read_tensor(fb, key, path_b)
            if ta.shape != tb.shape or not _is_weight(key, ta):
                if ta.shape != tb.shape:
                    skipped.append(key)
                continue
            total += float(torch.sum((ta.double() - tb.double()) ** 2))
            compared += 1
        skipped += sorted(keys_b - set(fa.keys()))
    return math.sqrt(total), compared, skipped


def distance_report(
    members: Sequence[str | os.PathLike], pretrained: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Pairwise L2 distances between members and, when `pretrained` is readable, from each member to it.

    Returns:
        `dict`: `between_members` (K x K list), `to_pretrained` (list, or `None`), `pretrained` (its path or why it
        was not used), `skipped_tensors` (keys left out of the distance to the pre-trained checkpoint).
    """
    k = len(members)
    matrix = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            matrix[i, j] = matrix[j, i] = l2_distance(members[i], members[j])[0]
    report: dict[str, Any] = {"between_members": matrix.tolist(), "to_pretrained": None, "pretrained": None}
    if pretrained is not None:
        path = resolve_local_weights(pretrained)
        if path is None:
            report["pretrained"] = f"{pretrained} (not available locally: distances to it skipped)"
        else:
            distances = [l2_distance(m, path) for m in members]
            report["pretrained"] = str(path)
            report["to_pretrained"] = [d[0] for d in distances]
            report["skipped_tensors"] = distances[0][2]
    return report


def resolve_local_weights(name_or_path: str | os.PathLike) -> str | None:
    """A local safetensors file for a folder, a file, or a Hub repo id already in the cache (no download)."""
    try:
        return str(member_weights_file(name_or_path))
    except FileNotFoundError:
        pass
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(name_or_path), "model.safetensors")
    except Exception:  # not a valid repo id
        return None
    return cached if isinstance(cached, str) else None


def combine(states: Sequence[dict[str, torch.Tensor]], coefficients: Sequence[float]) -> dict[str, torch.Tensor]:
    """`states[0] + sum_i coefficients[i] * (states[i] - states[0])` for float tensors (others from `states[0]`)."""
    if len(coefficients) != len(states) - 1:
        raise ValueError(f"`coefficients` should have {len(states) - 1} entries, got {len(coefficients)}.")
    out = {}
    for key, base in states[0].items():
        if not base.is_floating_point():
            out[key] = base.clone()
            continue
        value = base.float().clone()
        for c, state in zip(coefficients, states[1:]):
            value.add_(state[key].float() - base.float(), alpha=float(c))
        out[key] = value.to(base.dtype)
    return out


def _evaluate_state(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    dataloader: Iterable[Any],
    bn_dataloader: Iterable[Any] | None,
    device: torch.device | str | None,
    num_bins: int,
) -> dict[str, float]:
    load_soup_into(model, state)
    if bn_dataloader is not None and has_batchnorm(model):
        recalibrate_batchnorm(model, bn_dataloader, device=device)
    probs, labels = predict_probs([model], dataloader, device=device)
    return classification_metrics(probs[0], labels, num_bins=num_bins)


def interpolation_curve(
    model: torch.nn.Module,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    dataloader: Iterable[Any],
    num_points: int = 11,
    bn_dataloader: Iterable[Any] | None = None,
    device: torch.device | str | None = None,
    num_bins: int = DEFAULT_NUM_BINS,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Metrics of `(1 - alpha) * a + alpha * b` for `num_points` values of alpha evenly spaced in [0, 1].

    Args:
        model (`torch.nn.Module`): A model of the members' architecture (its weights are overwritten).
        state_a, state_b (`dict[str, torch.Tensor]`): The two end points.
        dataloader (`Iterable`): Evaluation batches.
        num_points (`int`, *optional*, defaults to 11): Points on the line, end points included (>= 2).
        bn_dataloader (`Iterable`, *optional*): Training batches to recalibrate BatchNorm at each point.
        device (`torch.device` or `str`, *optional*): Where the model runs.
        num_bins (`int`, *optional*, defaults to 15): ECE bins.
        progress (`bool`, *optional*, defaults to `False`): Show a progress bar.

    Returns:
        `list[dict]`: one row per point: `alpha` and the metrics.
    """
    if num_points < 2:
        raise ValueError(f"`num_points` should be at least 2, got {num_points}.")
    rows = []
    for alpha in tqdm(np.linspace(0.0, 1.0, num_points), desc="interpolation", disable=not progress, leave=False):
        state = combine([state_a, state_b], [float(alpha)])
        rows.append(
            {"alpha": float(alpha), **_evaluate_state(model, state, dataloader, bn_dataloader, device, num_bins)}
        )
    return rows


def plane_coordinates(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """An orthonormal frame of the plane through three states (Garipov et al. 2018).

    With `u = w1 - w0` and `v = w2 - w0` (weights only), `e1 = u / |u|` and `e2` the unit part of `v` orthogonal to
    `e1`. Returns the 2-D coordinates of the three states and the matrix mapping plane coordinates `(x, y)` to the
    coefficients `(alpha, beta)` of `w0 + alpha * u + beta * v`.
    """
    if len(states) != 3:
        raise ValueError(f"A plane needs exactly three states, got {len(states)}.")
    uu = vv = uv = 0.0
    for key, base in states[0].items():
        if not _is_weight(key, base):
            continue
        u = (states[1][key].double() - base.double()).flatten()
        v = (states[2][key].double() - base.double()).flatten()
        uu += float(u @ u)
        vv += float(v @ v)
        uv += float(u @ v)
    norm_u = math.sqrt(uu)
    if norm_u == 0:
        raise ValueError("The first two states are identical: they span no plane.")
    v_along = uv / norm_u
    v_perp = math.sqrt(max(vv - v_along**2, 0.0))
    if v_perp == 0:
        raise ValueError("The three states are collinear: they span no plane.")
    # (x, y) = alpha * (|u|, 0) + beta * (v_along, v_perp)  =>  solve for (alpha, beta)
    to_coefficients = np.linalg.inv(np.array([[norm_u, v_along], [0.0, v_perp]]))
    return {
        "points": [(0.0, 0.0), (norm_u, 0.0), (v_along, v_perp)],
        "to_coefficients": to_coefficients,
    }


def plane_grid(
    model: torch.nn.Module,
    states: Sequence[dict[str, torch.Tensor]],
    dataloader: Iterable[Any],
    grid_size: int = 5,
    margin: float = 0.2,
    bn_dataloader: Iterable[Any] | None = None,
    device: torch.device | str | None = None,
    num_bins: int = DEFAULT_NUM_BINS,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics on a `grid_size x grid_size` grid over the plane through three states.

    Args:
        model (`torch.nn.Module`): A model of the members' architecture (its weights are overwritten).
        states (`Sequence[dict[str, torch.Tensor]]`): Three state dicts (e.g. three members).
        dataloader (`Iterable`): Evaluation batches.
        grid_size (`int`, *optional*, defaults to 5): Points per axis (>= 2).
        margin (`float`, *optional*, defaults to 0.2): Extra room around the three points, as a fraction of the span.
        bn_dataloader (`Iterable`, *optional*): Training batches to recalibrate BatchNorm at each point.
        device (`torch.device` or `str`, *optional*): Where the model runs.
        num_bins (`int`, *optional*, defaults to 15): ECE bins.
        progress (`bool`, *optional*, defaults to `False`): Show a progress bar.

    Returns:
        `dict`: `x`, `y` (axis values), `points` (the three states' coordinates) and `metrics` (`{name: grid}` with
        `grid[i][j]` at `(x[j], y[i])`).
    """
    if grid_size < 2:
        raise ValueError(f"`grid_size` should be at least 2, got {grid_size}.")
    frame = plane_coordinates(states)
    points = np.array(frame["points"])
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.maximum(high - low, 1e-12)
    xs = np.linspace(low[0] - margin * span[0], high[0] + margin * span[0], grid_size)
    ys = np.linspace(low[1] - margin * span[1], high[1] + margin * span[1], grid_size)
    grids: dict[str, list[list[float]]] = {}
    bar = tqdm(total=grid_size * grid_size, desc="plane", disable=not progress, leave=False)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            alpha, beta = frame["to_coefficients"] @ np.array([x, y])
            metrics = _evaluate_state(
                model, combine(states, [alpha, beta]), dataloader, bn_dataloader, device, num_bins
            )
            for name, value in metrics.items():
                grids.setdefault(name, [[0.0] * grid_size for _ in range(grid_size)])[i][j] = value
            bar.update(1)
    bar.close()
    return {"x": xs.tolist(), "y": ys.tolist(), "points": points.tolist(), "metrics": grids}
