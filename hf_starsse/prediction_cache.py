"""The prediction cache: the class probabilities of each distinct set of weights on each dataset, computed once.

A result is keyed by a *weights key* (the sha256 of a member's `model.safetensors`, or for a model that only exists in
memory (a soup, a point on an interpolation line) a hash of what defines it: its members' keys, the mixing
coefficients and the BatchNorm-recalibration data) and a *data key* (a hash of the split's path, row count and
`datasets` fingerprint, the subset, the corruption and the image processor's settings). Results are stored as
safetensors in the run's `predictions/` folder (atomic writes), so a second `evaluate` with the same settings runs no
model at all, and a new option computes only what is new.

Evaluation images are decoded and transformed once per process ([`EvalData`] keeps the batches in memory when they
fit in [`max_in_memory_bytes`]).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .file_utils import atomic_file

CACHE_FORMAT = 1
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file (memoised per path, size and modification time within a process)."""
    path = Path(path)
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _SHA_MEMO[memo_key] = digest.hexdigest()
    return _SHA_MEMO[memo_key]


def weights_key(model_dir: str | os.PathLike) -> str:
    """The weights key of a saved model: the sha256 of its safetensors file."""
    from .soups import member_weights_file

    return file_sha256(member_weights_file(model_dir))


def derived_key(description: dict[str, Any]) -> str:
    """A deterministic key for anything described by a JSON-able dict (in-memory soups, datasets)."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def processor_signature(processor: Any) -> Any:
    """The settings of an image processor that change `pixel_values` (its `to_dict()`), or `None`."""
    if processor is None or not hasattr(processor, "to_dict"):
        return None
    return {k: v for k, v in processor.to_dict().items() if not k.startswith("_")}


def max_in_memory_bytes() -> int:
    """How many bytes of decoded evaluation tensors a process keeps: a quarter of the RAM, at most 4 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return min(4 << 30, total // 4)


class EvalData:
    """One evaluation dataset: its key, its size and its batches, decoded / transformed once.

    Args:
        name (`str`): Shown in the plan (e.g. `test`, `fog-3`).
        description (`dict`): What defines the data (hashed into `key`).
        make_loader (`Callable[[], Iterable]`): Builds the dataloader of dict batches.
        num_samples (`int`): Rows.
        keep_in_memory (`bool`, *optional*, defaults to `True`): Keep the decoded batches for the next passes.
    """

    def __init__(
        self,
        name: str,
        description: dict[str, Any],
        make_loader: Callable[[], Iterable[Any]],
        num_samples: int,
        keep_in_memory: bool = True,
    ):
        self.name, self.description, self.num_samples = name, description, num_samples
        self.key = derived_key(description)
        self._make_loader = make_loader
        self._keep = keep_in_memory
        self._batches: list[dict[str, torch.Tensor]] | None = None

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The batches; the first full pass decodes them and keeps them when they fit in memory."""
        if self._batches is not None:
            yield from self._batches
            return
        kept: list[dict[str, torch.Tensor]] | None = [] if self._keep else None
        for batch in self._make_loader():
            if kept is not None and not kept:  # the first batch tells whether the whole split fits
                tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
                rows = max(len(tensors[0]), 1) if tensors else 1
                per_row = sum(v.numel() * v.element_size() for v in tensors) / rows
                kept = kept if per_row * self.num_samples <= max_in_memory_bytes() else None
            if kept is not None:
                kept.append(batch)
            yield batch
        if kept is not None:
            self._batches = kept


@dataclass
class Predictor:
    """A model the cache can ask for: its key, a name and how to build it (only when a result is missing).

    Args:
        name (`str`): Shown in the plan.
        key (`str`): Its weights key.
        build (`Callable[[], torch.nn.Module]`): Loads / builds the model in eval mode.
        keep (`bool`, *optional*, defaults to `False`): Keep the built model for later passes of this process.
        build_images (`int`, *optional*, defaults to 0): Forward passes of images that building costs (BatchNorm
            recalibration of a soup), for the plan.
    """

    name: str
    key: str
    build: Callable[[], torch.nn.Module]
    keep: bool = False
    build_images: int = 0
    _model: torch.nn.Module | None = field(default=None, repr=False)

    def model(self) -> torch.nn.Module:
        if self._model is not None:
            return self._model
        model = self.build()
        if self.keep:
            self._model = model
        return model


class PredictionCache:
    """Class probabilities per (weights key, data key), in memory and (with `folder`) in safetensors files.

    Args:
        folder (`str` or `os.PathLike`, *optional*): The run's `predictions/` folder; `None` keeps results in memory.
        device (`torch.device` or `str`, *optional*): Where models run.
        progress (`bool`, *optional*, defaults to `False`): Show progress bars.
        max_models (`int`, *optional*, defaults to 8): Models held at once during one pass over a dataset.
        log (`Callable[[str], None]`, *optional*): Where the estimate from the first batches goes (`print`).
        memory (`dict`, *optional*): An in-memory store shared with other caches of this process (e.g. the demo's
            two runs, whose member 0 is the same file): a result found there is also written to `folder`.
    """

    def __init__(
        self,
        folder: str | os.PathLike | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        max_models: int = 8,
        log: Callable[[str], None] | None = print,
        memory: dict | None = None,
    ):
        self.folder = Path(folder) if folder is not None else None
        self.device, self.progress, self.max_models, self.log = device, progress, max_models, log
        self._memory: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {} if memory is None else memory
        self.stats = {"passes": 0, "images": 0, "build_images": 0, "reused": 0, "seconds": 0.0}
        self.images_to_do: int | None = None  # set from the plan: the estimate after the first batches uses it
        self._estimated = False

    def path(self, weights: str, data: str) -> Path:
        if self.folder is None:
            raise ValueError("This prediction cache has no folder.")
        from .run_folder import prediction_file_name

        return self.folder / prediction_file_name(weights, data)

    def has(self, weights: str, data: str) -> bool:
        if (weights, data) in self._memory:
            return True
        return self.folder is not None and self.path(weights, data).is_file()

    def get(self, weights: str, data: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached `(probs (N, C), labels (N,))`, or `None`."""
        if (weights, data) in self._memory:
            probs, labels = self._memory[(weights, data)]
            if self.folder is not None and not self.path(weights, data).is_file():
                self.put(weights, data, probs, labels)
            return probs, labels
        if self.folder is None or not self.path(weights, data).is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path(weights, data)), framework="np") as f:
                meta = f.metadata() or {}
                if meta.get("weights") != weights or meta.get("data") != data:
                    return None  # a key-prefix collision: recompute
                value = (f.get_tensor("probs"), f.get_tensor("labels"))
        except Exception:  # an unreadable file (e.g. disk full when it was written) is recomputed
            return None
        self._memory[(weights, data)] = value
        return value

    def put(self, weights: str, data: str, probs: np.ndarray, labels: np.ndarray, info: dict | None = None) -> None:
        self._memory[(weights, data)] = (probs, labels)
        if self.folder is None:
            return
        from safetensors.numpy import save_file

        meta = {"weights": weights, "data": data, "format": str(CACHE_FORMAT), "info": json.dumps(info or {})}
        with atomic_file(self.path(weights, data)) as tmp:
            save_file(
                {"probs": np.ascontiguousarray(probs), "labels": labels.astype(np.int64)}, str(tmp), metadata=meta
            )

    def probs(self, predictors: Sequence[Predictor], data: EvalData) -> tuple[np.ndarray, np.ndarray]:
        """`(probs (len(predictors), N, C), labels (N,))`: cached results, the missing ones in one data pass."""
        missing: dict[str, Predictor] = {}
        for p in predictors:
            if p.key not in missing and not self.has(p.key, data.key):
                missing[p.key] = p
        self.stats["reused"] += len({p.key for p in predictors}) - len(missing)
        todo = list(missing.values())
        for start in range(0, len(todo), self.max_models):
            self._compute(todo[start : start + self.max_models], data)
        results = [self.get(p.key, data.key) for p in predictors]
        return np.stack([r[0] for r in results]), results[0][1]

    def _compute(self, predictors: Sequence[Predictor], data: EvalData) -> None:
        from .ensemble import predict_probs

        models = [p.model() for p in predictors]
        start = time.perf_counter()
        desc = f"{len(models)} model(s) on {data.name}" if self.progress else False
        probs, labels = predict_probs(models, self._timed(data, len(models), start), self.device, progress=desc)
        self.stats["seconds"] += time.perf_counter() - start
        self.stats["passes"] += len(models)
        self.stats["images"] += len(models) * len(labels)
        for p, row in zip(predictors, probs):
            self.put(p.key, data.key, row, labels, info={"model": p.name, "data": data.name})

    def _timed(self, data: EvalData, num_models: int, start: float) -> Iterator[Any]:
        """The data's batches; after the first two, print an estimate of the remaining work (once)."""
        seen = 0
        for i, batch in enumerate(data.batches()):
            if i == 2 and not self._estimated and self.images_to_do and self.log is not None:
                self._estimated = True
                rate = seen * num_models / max(time.perf_counter() - start, 1e-9)
                self.log(
                    f"[evaluate] estimate from the first batches: {rate:.0f} images/s through a model -> about "
                    f"{self.images_to_do / rate:.0f} s for the {self.images_to_do} image passes to do"
                )
            yield batch
            labels = batch.get("labels") if isinstance(batch, dict) else None
            seen += len(labels) if labels is not None else 0

    def count_build(self, num_images: int) -> None:
        """Record forward passes spent building a model (BatchNorm recalibration)."""
        self.stats["build_images"] += num_images
