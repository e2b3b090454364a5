"""The model passes of `hf-starsse evaluate`, each done at most once (through the run's prediction cache).

Every model `evaluate` looks at is a [`Predictor`]: the members (keyed by the sha256 of their weights), and the models
built from them (uniform soups of a set of members, points on the line between two members or on the plane through
three; keyed by what defines them). A soup of one member *is* that member, and the end points of the line are the
members, so they cost nothing once the members are done. [`EvaluationPasses.plan`] says, before any pass, how many
forward passes over how many images are left to do and what is cached.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .prediction_cache import EvalData, PredictionCache, Predictor, derived_key, processor_signature, weights_key


def split_data(
    name: str,
    dataset: Any,
    data_path: str | os.PathLike,
    split: str,
    make_loader: Callable[[Any], Any],
    processor: Any = None,
    max_samples: int | None = None,
    indices: Sequence[int] | None = None,
    transform: dict[str, Any] | None = None,
    keep_in_memory: bool = True,
    batch_size: int | None = None,
) -> EvalData:
    """An [`EvalData`] of one split (optionally a subset, optionally transformed), keyed by everything that defines
    its `pixel_values`: the rows and `datasets` fingerprint (the folder and split when there is no fingerprint), the
    subset, the transform and the image processor. Two copies of one dataset (e.g. the `eval_data/` of two runs made
    from the same split) share a key, so they share predictions of identical weights."""
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if indices is not None:
        dataset = dataset.select(indices)
    fingerprint = getattr(dataset, "_fingerprint", None)
    description = {
        "path": None if fingerprint else str(Path(data_path).resolve()),
        "split": None if fingerprint else split,
        "rows": len(dataset),
        "fingerprint": fingerprint,
        "subset": derived_key({"indices": list(indices)}) if indices is not None else max_samples,
        "transform": transform,
        "processor": processor_signature(processor),
    }
    if batch_size is not None:  # BatchNorm recalibration depends on the batches, predictions do not
        description["batch_size"] = batch_size
    return EvalData(name, description, lambda: make_loader(dataset), len(dataset), keep_in_memory=keep_in_memory)


class EvaluationPasses:
    """The members of a run and the models derived from them, with their predictions from a [`PredictionCache`].

    Args:
        members (`Sequence[Path]`): The member folders, in manifest order.
        names (`Sequence[str]`): Their names (`member-<i>`).
        cache (`PredictionCache`): Where predictions come from and go.
        device (`torch.device`): Where models run.
        bn_data (`EvalData`, *optional*): Data to recalibrate the BatchNorm of derived models (when they have it).
        num_bins (`int`): ECE bins.
    """

    def __init__(
        self,
        members: Sequence[Path],
        names: Sequence[str],
        cache: PredictionCache,
        device: torch.device,
        bn_data: EvalData | None,
        num_bins: int,
    ):
        from .ensemble import load_member_model

        self.members, self.cache, self.device, self.num_bins = list(members), cache, device, num_bins
        self.keys = [weights_key(m) for m in self.members]
        self.predictors = [
            Predictor(name, key, (lambda m=m: load_member_model(m, device=device)), keep=True)
            for name, key, m in zip(names, self.keys, self.members)
        ]
        self._template: torch.nn.Module | None = None
        self._needs_bn: bool | None = None
        self._bn_data = bn_data
        self._states: dict[int, dict[str, torch.Tensor]] = {}
        self._planned: set[tuple[str, str]] = set()  # (model, data) pairs already counted by `plan_stage`

    # ----- derived models -----------------------------------------------------------------------------------------
    def template(self) -> torch.nn.Module:
        from .ensemble import load_member_model

        if self._template is None:
            self._template = load_member_model(self.members[0], device=self.device)
        return self._template

    @property
    def needs_bn(self) -> bool:
        """Whether derived models need their BatchNorm statistics recalibrated (the members have BatchNorm)."""
        if self._needs_bn is None:
            from .bn_recalibration import has_batchnorm

            self._needs_bn = has_batchnorm(self.template())
        return self._needs_bn

    def _bn_description(self) -> Any:
        if not self.needs_bn:
            return None
        if self._bn_data is None:
            raise ValueError("The members have BatchNorm: derived models need a split to recalibrate it.")
        return {"data": self._bn_data.key, "batches": self._bn_data.description.get("batch_size")}

    def _build(self, state: Callable[[], dict[str, torch.Tensor]]) -> torch.nn.Module:
        from .bn_recalibration import recalibrate_batchnorm
        from .soups import load_soup_into

        model = copy.deepcopy(self.template())
        load_soup_into(model, state())
        if self.needs_bn:
            recalibrate_batchnorm(model, self._bn_data.batches(), device=self.device)
            self.cache.count_build(self._bn_data.num_samples)
        return model.eval()

    def _build_images(self) -> int:
        return self._bn_data.num_samples if self.needs_bn and self._bn_data is not None else 0

    def soup(self, indices: Sequence[int], name: str | None = None, saved: Path | None = None) -> Predictor:
        """The uniform soup of the members at `indices` (sorted); one member is the member itself.

        A soup already saved at `saved` with the same key (its `soup.json`) is loaded instead of rebuilt."""
        indices = sorted(indices)
        if len(indices) == 1:
            return self.predictors[indices[0]]
        description = {"kind": "uniform_soup", "members": [self.keys[i] for i in indices]}
        key = derived_key({**description, "bn": self._bn_description()})

        def build() -> torch.nn.Module:
            from .ensemble import load_member_model
            from .soups import uniform_soup

            if saved is not None and saved_soup_key(saved) == key:
                return load_member_model(saved, device=self.device)
            return self._build(lambda: uniform_soup([self.members[i] for i in indices]))

        name = name or f"soup of members {indices}"
        return Predictor(name, key, build, keep=saved is not None, build_images=self._build_images())

    def _member_state(self, index: int) -> dict[str, torch.Tensor]:
        from .soups import uniform_soup

        if index not in self._states:
            self._states[index] = uniform_soup([self.members[index]])
        return self._states[index]

    def combination(self, indices: Sequence[int], coefficients: Sequence[float], kind: str) -> Predictor:
        """`w_a + sum_i c_i (w_i - w_a)` for the members at `indices` (a point on a line or a plane)."""
        coefficients = [round(float(c), 12) for c in coefficients]
        if kind == "interpolation" and coefficients[0] in (0.0, 1.0):
            return self.predictors[indices[int(coefficients[0])]]
        description = {
            "kind": kind,
            "members": [self.keys[i] for i in indices],
            "coefficients": coefficients,
            "bn": self._bn_description(),
        }

        def state() -> dict[str, torch.Tensor]:
            from .basin import combine

            return combine([self._member_state(i) for i in indices], coefficients)

        name = f"{kind} {coefficients}"
        return Predictor(name, derived_key(description), lambda: self._build(state), build_images=self._build_images())

    # ----- predictions and metrics --------------------------------------------------------------------------------
    def probs(self, predictors: Sequence[Predictor], data: EvalData) -> tuple[np.ndarray, np.ndarray]:
        return self.cache.probs(predictors, data)

    def metrics(self, predictor: Predictor, data: EvalData) -> dict[str, float]:
        from .metrics import classification_metrics

        probs, labels = self.cache.probs([predictor], data)
        return classification_metrics(probs[0], labels, num_bins=self.num_bins)

    def ensemble_metrics(self, data: EvalData) -> dict[str, Any]:
        from .metrics import ensemble_metrics

        probs, labels = self.cache.probs(self.predictors, data)
        result = ensemble_metrics(probs, labels, num_bins=self.num_bins)
        result["member_names"] = [p.name for p in self.predictors]
        result["num_samples"] = int(len(labels))
        return result

    def interpolation(self, a: int, b: int, num_points: int, data: EvalData) -> list[dict[str, float]]:
        """Metrics at `num_points` evenly spaced points of the line from member `a` to member `b`."""
        return [
            {"alpha": float(alpha), **self.metrics(self.combination([a, b], [alpha], "interpolation"), data)}
            for alpha in np.linspace(0.0, 1.0, num_points)
        ]

    def plane(self, grid_size: int, data: EvalData, progress: bool = False) -> dict[str, Any]:
        """Metrics on the plane through members 0, 1, 2 (see `basin.plane_grid`)."""
        from .basin import plane_grid

        states = [self._member_state(i) for i in range(3)]

        def point(alpha: float, beta: float) -> dict[str, float]:
            return self.metrics(self.combination([0, 1, 2], [alpha, beta], "plane"), data)

        return plane_grid(None, states, None, grid_size=grid_size, progress=progress, point_metrics=point)

    # ----- the plan ------------------------------------------------------------------------------------------------
    def plan_stage(self, label: str, predictors: Sequence[Predictor], data: EvalData) -> dict[str, Any]:
        """What one stage (these models on this data) still costs: passes, images, cached results. A model already
        counted on this data by an earlier stage (e.g. a line's end point, which is a member) counts as cached."""
        unique = {p.key: p for p in predictors}
        todo = [
            p
            for p in unique.values()
            if not self.cache.has(p.key, data.key) and (p.key, data.key) not in self._planned
        ]
        self._planned.update((p.key, data.key) for p in todo)
        images = len(todo) * data.num_samples + sum(p.build_images for p in todo if p._model is None)
        return {
            "label": label,
            "data": data.name,
            "num_samples": data.num_samples,
            "models": len(unique),
            "todo": len(todo),
            "images": images,
        }


def saved_soup_key(folder: Path) -> str | None:
    """The prediction-cache key recorded in a saved soup's `soup.json` (`None` when absent)."""
    import json

    from .soups import SAFE_WEIGHTS_NAME, SOUP_INFO_NAME

    info = folder / SOUP_INFO_NAME
    if not info.is_file() or not (folder / SAFE_WEIGHTS_NAME).is_file():
        return None
    try:
        return json.loads(info.read_text(encoding="utf-8")).get("key")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def format_plan(stages: Sequence[dict[str, Any]], notes: Sequence[str] = ()) -> str:
    """The plan `evaluate` prints before its passes."""
    lines = ["[evaluate] plan (forward passes of a model over a dataset; cached results are reused):"]
    for s in stages:
        cached = s["models"] - s["todo"]
        lines.append(
            f"  {s['label']}: {s['models']} model(s) x {s['data']} ({s['num_samples']} images): "
            f"{s['todo']} to compute, {cached} cached or counted above"
        )
    lines += [f"  {note}" for note in notes]
    total = sum(s["images"] for s in stages)
    passes = sum(s["todo"] for s in stages)
    lines.append(f"  total: {passes} model passes, {total} images through a model (BatchNorm recalibration included)")
    return "\n".join(lines)
