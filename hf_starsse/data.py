"""Image-classification data through `datasets`: load (Hub name, local folder, in-memory), find the image / label
columns, make train / validation / test splits, and apply the paper's transforms lazily (`with_transform`)."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset, load_from_disk

IMAGE_COLUMN_NAMES = ("image", "img", "images", "picture", "pixel_values")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "class", "target", "category")
TRAIN_AUGMENTATIONS = ("standard", "randaugment", "none")
_INDEX_COLUMN = "__hf_starsse_index__"

logger = logging.getLogger(__name__)


@dataclass
class ImageClassificationData:
    """Splits of an image-classification dataset and what they hold.

    Args:
        splits (`DatasetDict`): `train`, `validation` and (when available) `test`, raw (not transformed).
        image_column (`str`): Column with the images.
        label_column (`str`): Column with integer labels.
        label_names (`list[str]`): Class names in label order.
    """

    splits: DatasetDict
    image_column: str
    label_column: str
    label_names: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}


def load_image_dataset(
    dataset: str | os.PathLike | Dataset | DatasetDict,
    *,
    dataset_config_name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    validation_split: str | None = None,
    test_split: str | None = None,
    validation_size: float = 0.1,
    seed: int = 42,
    cache_dir: str | None = None,
) -> ImageClassificationData:
    """Load an image-classification dataset and its train / validation / test splits.

    Args:
        dataset (`str`, `Dataset` or `DatasetDict`):
            A Hub dataset name, a folder saved with `save_to_disk`, a folder of class sub-folders (`imagefolder`), or
            an in-memory dataset (a `Dataset` is the train split).
        dataset_config_name (`str`, *optional*):
            Hub dataset configuration.
        image_column (`str`, *optional*):
            Image column; the first `Image` feature (or a usual name) when not given.
        label_column (`str`, *optional*):
            Label column; a usual name (`label`, `labels`, `fine_label`, ...) or the first `ClassLabel` when not given.
        train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        validation_split (`str`, *optional*):
            Held-out split (early model selection, greedy soups). Defaults to `validation` when the dataset has one
            that is not the test split; otherwise `validation_size` of the train split is carved out (seeded,
            stratified when the labels are a `ClassLabel`).
        test_split (`str`, *optional*):
            Split to report test metrics on; defaults to `test` when present.
        validation_size (`float`, *optional*, defaults to 0.1):
            Fraction (or count, if >= 1) of the train split to carve out as validation when needed.
        seed (`int`, *optional*, defaults to 42):
            Seed of the carved validation split.
        cache_dir (`str`, *optional*):
            `datasets` cache folder.
    """
    raw = _load(dataset, dataset_config_name, cache_dir)
    if train_split not in raw:
        raise ValueError(f"`train_split` {train_split!r} is not a split of the dataset (it has {', '.join(raw)}).")
    if test_split is None and "test" in raw and train_split != "test":
        test_split = "test"
    if test_split is not None and test_split not in raw:
        raise ValueError(f"`test_split` {test_split!r} is not a split of the dataset (it has {', '.join(raw)}).")
    if validation_split is None and "validation" in raw and "validation" not in (test_split, train_split):
        validation_split = "validation"
    if validation_split is not None and validation_split not in raw:
        raise ValueError(
            f"`validation_split` {validation_split!r} is not a split of the dataset (it has {', '.join(raw)})."
        )
    train = raw[train_split]
    if len(train) == 0:
        raise ValueError(f"`train_split` {train_split!r} of the dataset is empty (0 examples): nothing to train on.")
    image_column, label_column = detect_columns(train, image_column, label_column)
    splits = {"train": train}
    if validation_split is not None:
        splits["validation"] = raw[validation_split]
    else:
        if not 0 < validation_size < len(train):
            raise ValueError(f"`validation_size` should be in (0, {len(train)}), got {validation_size}.")
        stratify = label_column if isinstance(train.features[label_column], ClassLabel) else None
        try:
            parts = train.train_test_split(test_size=validation_size, seed=seed, stratify_by_column=stratify)
        except ValueError:  # too few examples per class to stratify
            parts = train.train_test_split(test_size=validation_size, seed=seed)
        splits["train"], splits["validation"] = parts["train"], parts["test"]
    if test_split is not None:
        splits["test"] = raw[test_split]
    for name, split in splits.items():
        for column in (image_column, label_column):
            if column not in split.column_names:
                raise ValueError(f"Split {name!r} has no column {column!r} (it has {', '.join(split.column_names)}).")
    label_names = resolve_label_names(splits, label_column)
    return ImageClassificationData(DatasetDict(splits), image_column, label_column, label_names)


def _load(dataset, config_name, cache_dir) -> DatasetDict:
    if isinstance(dataset, DatasetDict):
        return dataset
    if isinstance(dataset, Dataset):
        return DatasetDict({"train": dataset})
    path = str(dataset)
    if os.path.isdir(path):
        _check_saved_splits_not_empty(path)
    try:
        if os.path.isdir(path):
            if os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(
                os.path.join(path, "dataset_info.json")
            ):
                loaded = load_from_disk(path)
            else:
                loaded = load_dataset("imagefolder", data_dir=path, cache_dir=cache_dir)
        else:
            loaded = load_dataset(path, config_name, cache_dir=cache_dir)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as err:
        from datasets import config as datasets_config

        offline = " (offline: HF_HUB_OFFLINE is set)" if datasets_config.HF_HUB_OFFLINE else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Cannot load dataset {path!r}{offline}: {first}") from None
    return DatasetDict({"train": loaded}) if isinstance(loaded, Dataset) else loaded


def _check_saved_splits_not_empty(path: str) -> None:
    """`load_from_disk` fails deep inside `datasets` (IndexError) on a saved split with no data file: say which."""
    import json

    root = Path(path)
    index = root / "dataset_dict.json"
    names = json.loads(index.read_text()).get("splits", []) if index.is_file() else [None]
    for name in names:
        state = (root / name if name else root) / "state.json"
        if state.is_file() and not json.loads(state.read_text()).get("_data_files"):
            split = f"split {name!r}" if name else "the dataset"
            raise ValueError(f"Cannot load dataset {path!r}: {split} is empty (0 examples).")


def detect_columns(dataset: Dataset, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """The (image, label) column names of `dataset`: the given ones (checked) or detected from its features."""
    features, names = dataset.features, dataset.column_names
    for field, column in (("image_column", image_column), ("label_column", label_column)):
        if column is not None and column not in names:
            raise ValueError(f"`{field}` {column!r} is not a column of the dataset (it has {', '.join(names)}).")
    if image_column is None:
        image_column = next((n for n in names if isinstance(features[n], Image)), None) or next(
            (n for n in IMAGE_COLUMN_NAMES if n in names), None
        )
        if image_column is None:
            raise ValueError(f"No image column found (columns: {', '.join(names)}); set `image_column`.")
    if label_column is None:
        label_column = next((n for n in LABEL_COLUMN_NAMES if n in names and n != image_column), None) or next(
            (n for n in names if isinstance(features[n], ClassLabel)), None
        )
        if label_column is None:
            raise ValueError(f"No label column found (columns: {', '.join(names)}); set `label_column`.")
    feature = features[label_column]
    if getattr(feature, "dtype", None) not in _INT_DTYPES:
        raise ValueError(
            f"`label_column` {label_column!r} should hold integer class labels, got feature {feature!r}; "
            "set `label_column` to the right column."
        )
    return image_column, label_column


_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def resolve_label_names(splits: dict[str, Dataset], label_column: str) -> list[str]:
    """The class names: the train split's `ClassLabel` names, else `"0".."N-1"` with N = 1 + the largest integer
    label of any split (integer labels are class ids as they are: gaps become classes without examples).

    Raises a one-line `ValueError` naming the split and the value when a label is outside `[0, N)` (-1, the usual
    "unlabelled" mark, included), and warns when a class never occurs in the train split.
    """
    train = splits["train"]
    feature = train.features[label_column]
    values = {name: {int(v) for v in split.unique(label_column)} for name, split in splits.items()}
    if isinstance(feature, ClassLabel):
        names, source = list(feature.names), f"the `ClassLabel` of `{label_column}`"
    else:
        names, source = [str(i) for i in range(max(max(v, default=0) for v in values.values()) + 1)], "the labels"
    for name, found in values.items():
        bad = sorted(v for v in found if not 0 <= v < len(names))
        if bad:
            hint = " (-1 marks unlabelled examples: choose a labelled split)" if bad[0] == -1 else ""
            raise ValueError(
                f"Split {name!r} has label {bad[0]} in `{label_column}`, outside [0, {len(names)}) set by {source}"
                f"{hint}."
            )
    missing = [i for i in range(len(names)) if i not in values["train"]]
    if missing:
        elsewhere = sorted({i for name, v in values.items() if name != "train" for i in v if i in missing})
        shown = ", ".join(names[i] for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        logger.warning(
            f"{len(missing)} of {len(names)} classes never occur in the train split ({shown}); the model cannot "
            f"learn them{f' but {len(elsewhere)} of them occur in the held-out splits' if elsewhere else ''}."
        )
    return names


def check_num_labels(data: ImageClassificationData, num_labels: int, where: str = "the model") -> None:
    """Raise when the dataset's class count differs from `num_labels` (e.g. a model's head)."""
    if num_labels != data.num_labels:
        raise ValueError(
            f"Label count mismatch: the dataset's `{data.label_column}` has {data.num_labels} classes but {where} "
            f"has {num_labels}."
        )


# ----- transforms --------------------------------------------------------------------------------------------------
@dataclass
class ImageSpec:
    """How images enter the model: crop side, eval resize ratio, normalisation, interpolation."""

    size: int
    crop_pct: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"


def image_spec_from_processor(processor, image_size: int | None = None) -> ImageSpec:
    """Read the input size / normalisation of a transformers image processor or a timm data config."""
    data_config = getattr(processor, "data_config", None)  # TimmWrapperImageProcessor
    if data_config:
        size = int(data_config["input_size"][-1])
        spec = ImageSpec(
            size,
            float(data_config.get("crop_pct") or 0.875),
            tuple(data_config["mean"]),
            tuple(data_config["std"]),
            str(data_config.get("interpolation", "bicubic")),
        )
    else:
        crop = getattr(processor, "crop_size", None) or {}
        size_cfg = getattr(processor, "size", None) or {}
        side = crop.get("height") or size_cfg.get("height") or size_cfg.get("shortest_edge") or 224
        do_crop = bool(getattr(processor, "do_center_crop", False)) and bool(crop)
        crop_pct = getattr(processor, "crop_pct", None)
        if crop_pct is None:  # CLIP-style: resize the short side to the crop side, then crop; else the paper's 0.875
            crop_pct = 1.0 if do_crop and size_cfg.get("shortest_edge") == crop.get("height") else 0.875
        mean = tuple(getattr(processor, "image_mean", None) or (0.485, 0.456, 0.406))
        std = tuple(getattr(processor, "image_std", None) or (0.229, 0.224, 0.225))
        resample = getattr(processor, "resample", None)
        interpolation = {2: "bilinear", 3: "bicubic"}.get(int(resample) if resample is not None else 2, "bilinear")
        spec = ImageSpec(int(side), float(crop_pct), mean, std, interpolation)
    if image_size is not None:
        spec.size = int(image_size)
    return spec


def build_transforms(
    spec: ImageSpec,
    train_augmentation: str = "standard",
    rand_augment: str = "rand-m9-mstd0.5-inc1",
) -> tuple[Callable, Callable]:
    """(train, eval) torchvision pipelines: train = RandomResizedCrop + horizontal flip (+ timm RandAugment), eval =
    Resize(size / crop_pct) + CenterCrop(size); both end with ToTensor + Normalize."""
    from torchvision import transforms as T

    if train_augmentation not in TRAIN_AUGMENTATIONS:
        raise ValueError(
            f"`train_augmentation` should be one of {', '.join(TRAIN_AUGMENTATIONS)}, got {train_augmentation!r}."
        )
    mode = T.InterpolationMode.BICUBIC if spec.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    tail = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    eval_tf = T.Compose(
        [T.Resize(round(spec.size / spec.crop_pct), interpolation=mode), T.CenterCrop(spec.size), *tail]
    )
    if train_augmentation == "none":
        return eval_tf, eval_tf
    train = [T.RandomResizedCrop(spec.size, interpolation=mode), T.RandomHorizontalFlip()]
    if train_augmentation == "randaugment":
        from timm.data.auto_augment import rand_augment_transform

        hparams = {"translate_const": int(spec.size * 0.45), "img_mean": tuple(round(255 * m) for m in spec.mean)}
        train.append(rand_augment_transform(rand_augment, hparams))
    return T.Compose([*train, *tail]), eval_tf


def with_image_transforms(
    data: ImageClassificationData, train_transform: Callable, eval_transform: Callable
) -> DatasetDict:
    """The splits with lazy transforms giving `pixel_values` (float tensors) and `labels` (ints).

    Images are decoded inside the transform, so an image that fails to decode raises a `ValueError` naming its split
    and index (and file, when known).
    """
    out = {}
    for name, split in data.splits.items():
        split = (
            split.cast_column(data.image_column, Image(decode=False)) if _is_image(split, data.image_column) else split
        )
        split = split.add_column(_INDEX_COLUMN, list(range(len(split))))
        transform = train_transform if name == "train" else eval_transform
        out[name] = split.with_transform(
            _Transform(transform, data.image_column, data.label_column, name),
            columns=[data.image_column, data.label_column, _INDEX_COLUMN],
        )
    return DatasetDict(out)


def _is_image(split: Dataset, column: str) -> bool:
    return isinstance(split.features[column], Image)


class _Transform:
    """Picklable batch transform (dataloader workers): decode, convert to RGB, transform, stack."""

    def __init__(self, transform: Callable, image_column: str, label_column: str, split: str):
        self.transform, self.image_column, self.label_column, self.split = transform, image_column, label_column, split

    def __call__(self, batch: dict) -> dict:
        pixels = []
        for image, index in zip(batch[self.image_column], batch[_INDEX_COLUMN]):
            pixels.append(self.transform(_decode(image, index, self.split)))
        return {"pixel_values": torch.stack(pixels), "labels": torch.as_tensor(batch[self.label_column])}


def _decode(image, index: int, split: str):
    from PIL import Image as PILImage

    if isinstance(image, PILImage.Image):
        return image.convert("RGB")
    where = f"image {index} of split {split!r}"
    if isinstance(image, dict):
        path = image.get("path")
        where += f" ({path})" if path else ""
        try:
            raw = image.get("bytes")
            opened = PILImage.open(io.BytesIO(raw)) if raw is not None else PILImage.open(path)
            opened.load()
            return opened.convert("RGB")
        except Exception as err:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
            raise ValueError(f"Cannot decode {where}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    try:
        import numpy as np

        array = np.asarray(image)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)
        return PILImage.fromarray(array.astype("uint8").squeeze()).convert("RGB")
    except Exception as err:
        raise ValueError(f"Cannot decode {where}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
