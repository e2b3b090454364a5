"""Out-of-distribution evaluation on corrupted copies of a test set (the ImageNet-C / CIFAR-C corruptions).

Corruptions come from the `imagecorruptions` package (Michaelis et al. 2019, the ImageNet-C code) and are applied on
the fly, per sample, with a seed derived from (seed, corruption, severity, sample index), so results are
reproducible and no corrupted copy is stored.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .ensemble import predict_probs
from .eval_data import ImageTransform, make_eval_dataloader
from .metrics import DEFAULT_NUM_BINS, classification_metrics

CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)
SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_OOD_SAMPLES = 200  # `evaluate --ood` uses a seeded random subset of this many test images by default
MIN_IMAGE_SIZE = 32  # imagecorruptions refuses smaller images


class _NumpyWithFloat_(types.ModuleType):
    """numpy as `imagecorruptions` 1.1.2 expects it: with `np.float_` (removed in NumPy 2)."""

    float_ = np.float64

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


class _SkimageSeeded(types.ModuleType):
    """skimage as `imagecorruptions` uses it, with `util.random_noise` drawing its seed from NumPy's global RNG (which
    `corruption_transform` seeds per sample), so `impulse_noise` is reproducible like the other corruptions."""

    def __init__(self, skimage: Any):
        super().__init__("skimage")
        self._skimage = skimage
        util = types.ModuleType("skimage.util")
        util.__getattr__ = lambda name: getattr(skimage.util, name)  # type: ignore[method-assign]

        def random_noise(image: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("rng", int(np.random.randint(0, 2**31 - 1)))
            return skimage.util.random_noise(image, *args, **kwargs)

        util.random_noise = random_noise
        self.util = util

    def __getattr__(self, name: str) -> Any:
        return getattr(self._skimage, name)


def load_imagecorruptions() -> Any:
    """Import `imagecorruptions`, adapting its last release (1.1.2) to current dependencies where needed.

    That release imports `pkg_resources` (gone from recent setuptools), uses `np.float_` (gone in NumPy 2) and calls
    `skimage.filters.gaussian(..., multichannel=True)` (renamed `channel_axis` in scikit-image 0.19). Each fix is
    applied only when the corresponding incompatibility is present, and only inside `imagecorruptions`. Its
    `impulse_noise` is also made to take its randomness from NumPy's global RNG, so corruptions are reproducible.
    """
    if "imagecorruptions" in sys.modules:
        return sys.modules["imagecorruptions"]
    if importlib.util.find_spec("imagecorruptions") is None:
        raise ImportError("OOD evaluation needs the `imagecorruptions` package: `pip install imagecorruptions`.")
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package: str, name: str) -> str:
            origin = importlib.util.find_spec(package).origin
            return os.path.join(os.path.dirname(origin), name)

        shim.resource_filename = resource_filename
        sys.modules.setdefault("pkg_resources", shim)
    module = importlib.import_module("imagecorruptions")
    corruptions = importlib.import_module("imagecorruptions.corruptions")
    if not hasattr(np, "float_") and not isinstance(corruptions.np, _NumpyWithFloat_):
        corruptions.np = _NumpyWithFloat_("numpy")
    if not isinstance(corruptions.sk, _SkimageSeeded):
        corruptions.sk = _SkimageSeeded(corruptions.sk)
    import inspect

    gaussian = corruptions.gaussian
    if "multichannel" not in inspect.signature(gaussian).parameters:

        def gaussian_compat(image: Any, *args: Any, multichannel: bool | None = None, **kwargs: Any) -> Any:
            if multichannel:
                kwargs.setdefault("channel_axis", -1)
            return gaussian(image, *args, **kwargs)

        corruptions.gaussian = gaussian_compat
    return module


def corruption_transform(corruption: str, severity: int, seed: int = 0) -> ImageTransform:
    """An image transform `(uint8 HWC image, sample index) -> corrupted image` for `make_eval_dataloader`."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"`corruption` should be one of {', '.join(CORRUPTIONS)}; got {corruption!r}.")
    if severity not in SEVERITIES:
        raise ValueError(f"`severity` should be in 1..5, got {severity}.")
    module = load_imagecorruptions()
    salt = zlib.crc32(f"{corruption}-{severity}".encode())

    def transform(image: np.ndarray, index: int) -> np.ndarray:
        if image.shape[0] < MIN_IMAGE_SIZE or image.shape[1] < MIN_IMAGE_SIZE:
            raise ValueError(
                f"Corruptions need images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels, got "
                f"{image.shape[0]}x{image.shape[1]}."
            )
        state = np.random.get_state()
        np.random.seed((seed * 1_000_003 + salt + index * 7919) % (2**32))
        try:
            return module.corrupt(image, corruption_name=corruption, severity=severity)
        finally:
            np.random.set_state(state)

    return transform


def _mean_metrics(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def check_ood_settings(
    corruptions: Sequence[str] | None = None, severities: Sequence[int] | None = None
) -> tuple[list[str], list[int]]:
    """Validate (and default) the corruption names and severities; one-line errors name the bad entries."""
    corruptions = list(CORRUPTIONS if corruptions is None else corruptions)
    severities = list(SEVERITIES if severities is None else severities)
    if not corruptions or not severities:
        raise ValueError("`corruptions` and `severities` should each hold at least one entry.")
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"Unknown corruption(s) {unknown}; choose from {', '.join(CORRUPTIONS)}.")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise ValueError(f"`severities` should be in 1..5, got {bad}.")
    return corruptions, severities


def ood_subset(num_rows: int, max_samples: int | None, seed: int = 0) -> list[int] | None:
    """Sorted indices of a seeded random subset of `max_samples` rows (`None`: all rows, when they are fewer)."""
    if max_samples is None or max_samples >= num_rows:
        return None
    if max_samples < 1:
        raise ValueError(f"`ood_max_samples` should be positive, got {max_samples}.")
    return sorted(int(i) for i in np.random.default_rng(seed).choice(num_rows, size=max_samples, replace=False))


def evaluate_ood(
    models: Sequence[torch.nn.Module],
    names: Sequence[str],
    dataset: Any,
    image_processor: Any,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    ensemble_indices: Sequence[int] | None = None,
    batch_size: int = 64,
    max_samples: int | None = None,
    seed: int = 0,
    num_bins: int = DEFAULT_NUM_BINS,
    device: torch.device | str | None = None,
    progress: bool = False,
    predict: Callable[[str, int, Any], tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Metrics of several models (members, soups) and of their ensemble on corrupted copies of `dataset`.

    Args:
        models (`Sequence[torch.nn.Module]`):
            The classifiers to evaluate (one data pass per corruption and severity feeds them all).
        names (`Sequence[str]`):
            A name per model, used as keys of the result.
        dataset (`datasets.Dataset`):
            The clean test split (`pixel_values` or raw images, and labels).
        image_processor:
            The members' image processor (de-normalises `pixel_values`, or processes raw images).
        corruptions (`Sequence[str]`, *optional*):
            A subset of `CORRUPTIONS`; all 19 by default.
        severities (`Sequence[int]`, *optional*):
            A subset of 1..5; all 5 by default.
        ensemble_indices (`Sequence[int]`, *optional*):
            Indices of the models averaged into the `ensemble` entry (none when omitted).
        batch_size (`int`, *optional*, defaults to 64): Samples per batch.
        max_samples (`int`, *optional*): Use only the first samples of `dataset`.
        seed (`int`, *optional*, defaults to 0): Seed of the random corruptions.
        num_bins (`int`, *optional*, defaults to 15): ECE bins.
        device (`torch.device` or `str`, *optional*): Where the models run.
        progress (`bool`, *optional*, defaults to `False`): Show progress bars.
        predict (`Callable`, *optional*): `(corruption, severity, dataloader) -> (probs (M, N, C), labels)` in place
            of running `models` on the dataloader (e.g. a prediction cache).

    Returns:
        `dict`: `{"corruptions": {name: {"severities": {s: {model: metrics}}, "mean": {model: metrics}}},
        "mean": {model: metrics}, "settings": ...}` where `model` ranges over `names` (and `ensemble`).
    """
    corruptions, severities = check_ood_settings(corruptions, severities)
    if len(names) != len(models):
        raise ValueError(f"`names` should have one entry per model ({len(models)}), got {len(names)}.")
    ensemble_indices = list(ensemble_indices or [])
    result: dict[str, Any] = {"corruptions": {}}
    all_rows: dict[str, list[dict[str, float]]] = {}
    bar = tqdm(total=len(corruptions) * len(severities), desc="OOD", disable=not progress)
    for corruption in corruptions:
        per_severity: dict[str, dict[str, dict[str, float]]] = {}
        for severity in severities:
            loader = make_eval_dataloader(
                dataset,
                batch_size=batch_size,
                image_processor=image_processor,
                image_transform=corruption_transform(corruption, severity, seed=seed),
                max_samples=max_samples,
            )
            if predict is not None:
                probs, labels = predict(corruption, severity, loader)
            else:
                probs, labels = predict_probs(models, loader, device=device)
            row = {name: classification_metrics(p, labels, num_bins=num_bins) for name, p in zip(names, probs)}
            if ensemble_indices:
                row["ensemble"] = classification_metrics(probs[ensemble_indices].mean(axis=0), labels, num_bins)
            per_severity[str(severity)] = row
            for name, metrics in row.items():
                all_rows.setdefault(name, []).append(metrics)
            bar.update(1)
        names_here = list(per_severity[str(severities[0])])
        result["corruptions"][corruption] = {
            "severities": per_severity,
            "mean": {n: _mean_metrics([per_severity[str(s)][n] for s in severities]) for n in names_here},
        }
    bar.close()
    result["mean"] = {name: _mean_metrics(rows) for name, rows in all_rows.items()}
    result["settings"] = {
        "corruptions": corruptions,
        "severities": severities,
        "seed": seed,
        "max_samples": max_samples,
    }
    return result
