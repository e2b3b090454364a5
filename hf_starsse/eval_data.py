"""Evaluation data: `datasets` splits turned into dict-batch dataloaders, with optional on-the-fly image transforms.

Two dataset shapes are accepted:

- preprocessed: a `pixel_values` column (`(C, H, W)` floats, normalised by the model's image processor) and a
  `labels` (or `label`) column, as the run's `eval_data/` folder holds;
- raw: an image column (`datasets.Image`, e.g. `image` / `img`) and a label column; the members' image processor
  turns it into `pixel_values` lazily.

An `image_transform` (uint8 `(H, W, C)` array -> array, e.g. an ImageNet-C corruption) is applied on the fly: before
the processor for raw images, or between de-normalising and re-normalising `pixel_values`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

ImageTransform = Callable[[np.ndarray, int], np.ndarray]  # (uint8 HWC image, sample index) -> image

LABEL_COLUMNS = ("labels", "label", "fine_label", "target")
IMAGE_COLUMNS = ("image", "img", "pixel_values")


def load_eval_dataset(path: str | os.PathLike, split: str | None = None) -> Any:
    """Load a `save_to_disk` folder; for a `DatasetDict`, return `split` (an error lists the available splits)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No saved dataset at {path}.")
    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        if split is None:
            raise ValueError(f"{path} holds splits {sorted(data)}: choose one with `--split`.")
        if split not in data:
            raise ValueError(f"`split` should be one of {sorted(data)} in {path}, got {split!r}.")
        return data[split]
    if not isinstance(data, Dataset):
        raise ValueError(f"{path} is not a saved `datasets.Dataset` / `DatasetDict`.")
    return data


def find_label_column(dataset: Any, label_column: str | None = None) -> str:
    """The label column: `label_column` when given, else the first of `labels`, `label`, `fine_label`, `target`."""
    if label_column is not None:
        if label_column not in dataset.column_names:
            raise ValueError(
                f"`label_column` {label_column!r} is not a column of the dataset ({dataset.column_names})."
            )
        return label_column
    for name in LABEL_COLUMNS:
        if name in dataset.column_names:
            return name
    raise ValueError(f"No label column in the dataset (looked for {LABEL_COLUMNS}; columns: {dataset.column_names}).")


def find_image_column(dataset: Any) -> str:
    """`pixel_values` when present, else the first `datasets.Image` column (or `image` / `img`)."""
    if "pixel_values" in dataset.column_names:
        return "pixel_values"
    from datasets import Image

    for name, feature in dataset.features.items():
        if isinstance(feature, Image):
            return name
    for name in IMAGE_COLUMNS:
        if name in dataset.column_names:
            return name
    raise ValueError(
        f"No image column in the dataset (need `pixel_values` or an image column; got {dataset.column_names})."
    )


def processor_mean_std(image_processor: Any) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel normalisation of an image processor (transformers or `TimmWrapperImageProcessor`)."""
    mean = getattr(image_processor, "image_mean", None)
    std = getattr(image_processor, "image_std", None)
    data_config = getattr(image_processor, "data_config", None)
    if mean is None and isinstance(data_config, dict):
        mean, std = data_config.get("mean"), data_config.get("std")
    if mean is None or std is None:
        raise ValueError(
            f"Cannot tell how `pixel_values` were normalised: {type(image_processor).__name__} has no image_mean/std."
        )
    return np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)


def _pixel_values_collate(
    label_column: str, image_transform: ImageTransform | None, mean: np.ndarray | None, std: np.ndarray | None
) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixel_values = torch.stack([torch.as_tensor(r["pixel_values"], dtype=torch.float32) for r in rows])
        labels = torch.as_tensor([int(r[label_column]) for r in rows], dtype=torch.long)
        if image_transform is not None:
            images = pixel_values.permute(0, 2, 3, 1).numpy() * std + mean  # (B, H, W, C) in [0, 1]
            images = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
            out = []
            for row, image in zip(rows, images):
                changed = np.asarray(image_transform(image, int(row["__index__"])), dtype=np.float32)
                out.append((np.clip(changed, 0, 255) / 255.0 - mean) / std)
            pixel_values = torch.from_numpy(np.stack(out).astype(np.float32)).permute(0, 3, 1, 2).contiguous()
        return {"pixel_values": pixel_values, "labels": labels}

    return collate


def _raw_image_collate(
    image_column: str, label_column: str, image_processor: Any, image_transform: ImageTransform | None
) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    def collate(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from PIL import Image

        images = []
        for row in rows:
            image = row[image_column]
            image = image.convert("RGB") if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
            if image_transform is not None:
                array = np.asarray(image_transform(np.asarray(image), int(row["__index__"])))
                image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))
            images.append(image)
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        labels = torch.as_tensor([int(r[label_column]) for r in rows], dtype=torch.long)
        return {"pixel_values": pixel_values, "labels": labels}

    return collate


class _IndexedRows(torch.utils.data.Dataset):
    """Rows of a `datasets.Dataset` with their index (so per-sample corruptions are reproducible)."""

    def __init__(self, dataset: Any, columns: list[str]):
        self.dataset = dataset.with_format("numpy", columns=columns) if "pixel_values" in columns else dataset
        self.columns = columns

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.dataset[int(index)]
        return {**{c: row[c] for c in self.columns}, "__index__": int(index)}


def make_eval_dataloader(
    dataset: Any,
    batch_size: int = 64,
    image_processor: Any = None,
    image_transform: ImageTransform | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    num_workers: int = 0,
) -> DataLoader:
    """A dataloader of `{"pixel_values", "labels"}` batches over a `datasets.Dataset`, in dataset order.

    Args:
        dataset (`datasets.Dataset`):
            Preprocessed (`pixel_values` column) or raw (image column) data with a label column.
        batch_size (`int`, *optional*, defaults to 64):
            Samples per batch.
        image_processor (*optional*):
            The members' image processor: needed for raw images, and to de-normalise `pixel_values` when an
            `image_transform` is given.
        image_transform (`Callable`, *optional*):
            `(uint8 (H, W, C) image, sample index) -> image`, applied on the fly (e.g. a corruption).
        label_column (`str`, *optional*):
            The label column; auto-detected when omitted.
        max_samples (`int`, *optional*):
            Use only the first `max_samples` samples.
        num_workers (`int`, *optional*, defaults to 0):
            `DataLoader` worker processes.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` should be positive, got {batch_size}.")
    label_column = find_label_column(dataset, label_column)
    image_column = find_image_column(dataset)
    if max_samples is not None:
        if max_samples < 1:
            raise ValueError(f"`max_samples` should be positive, got {max_samples}.")
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if image_column == "pixel_values":
        mean = std = None
        if image_transform is not None:
            if image_processor is None:
                raise ValueError(
                    "An `image_processor` is needed to de-normalise `pixel_values` for an image transform."
                )
            mean, std = processor_mean_std(image_processor)
        collate = _pixel_values_collate(label_column, image_transform, mean, std)
    else:
        if image_processor is None:
            raise ValueError(f"The dataset holds raw images (`{image_column}`): an `image_processor` is needed.")
        collate = _raw_image_collate(image_column, label_column, image_processor, image_transform)
    rows = _IndexedRows(dataset, [image_column, label_column])
    return DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)


def model_inputs(batch: Any, device: torch.device | str | None = None) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a batch (dict, `(inputs, labels)` tuple or bare tensor) into model keyword inputs and labels."""
    if isinstance(batch, dict) or hasattr(batch, "keys"):
        labels = batch.get("labels", batch.get("label"))
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "label")}
    elif isinstance(batch, (tuple, list)):
        inputs, labels = {"pixel_values": batch[0]}, (batch[1] if len(batch) > 1 else None)
    elif isinstance(batch, torch.Tensor):
        inputs, labels = {"pixel_values": batch}, None
    else:
        raise TypeError(f"Batches should be dicts, (inputs, labels) tuples or tensors, got {type(batch).__name__}.")
    if device is not None:
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs, labels
