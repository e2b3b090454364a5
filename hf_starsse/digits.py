"""Real image data available offline: scikit-learn's bundled 8x8 handwritten digits as a `datasets.DatasetDict`."""

from __future__ import annotations

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image


def load_digits_dataset(
    train_per_class: int = 10, validation_size: int = 300, seed: int = 0, image_size: int | None = None
) -> DatasetDict:
    """Split sklearn's 1797 digits into a small stratified `train`, a `validation` and a `test` split.

    Images are 8x8 grayscale PIL images (values 0..16 scaled to 0..255) with a `label` `ClassLabel` ("0".."9").

    Args:
        train_per_class (`int`, *optional*, defaults to 10):
            Training images per class (a small target set leaves room for ensembling to help).
        validation_size (`int`, *optional*, defaults to 300):
            Held-out images for validation (the greedy soup needs them).
        seed (`int`, *optional*, defaults to 0):
            Seed of the split.
        image_size (`int`, *optional*):
            Upscale the images (bilinear) to `image_size` x `image_size` RGB; 8x8 when omitted.
    """
    from sklearn.datasets import load_digits

    if train_per_class < 1:
        raise ValueError(f"`train_per_class` should be positive, got {train_per_class}.")
    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    train_idx = np.concatenate([order[labels[order] == c][:train_per_class] for c in range(10)])
    rest = np.setdiff1d(order, train_idx, assume_unique=True)
    rest = rest[rng.permutation(len(rest))]
    if validation_size >= len(rest):
        raise ValueError(f"`validation_size` should be below {len(rest)}, got {validation_size}.")
    splits = {
        "train": rng.permutation(train_idx),
        "validation": rest[:validation_size],
        "test": rest[validation_size:],
    }
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    return DatasetDict(
        {
            name: Dataset.from_dict(
                {"image": [_to_pil(images[i], image_size) for i in idx], "label": labels[idx].tolist()},
                features=features,
            )
            for name, idx in splits.items()
        }
    )


def _to_pil(array: np.ndarray, image_size: int | None):
    from PIL import Image as PILImage

    image = PILImage.fromarray(array, mode="L").convert("RGB")
    return image.resize((image_size, image_size), PILImage.BILINEAR) if image_size else image
