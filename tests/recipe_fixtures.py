"""Tiny offline checkpoints of every loader family (with image processors / tokenizers) and small image datasets."""

from __future__ import annotations

import hf_starsse  # noqa: F401  (first: makes torchvision importable on CPU-only torch)

import json
import string
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

SIZE = 16
CLASS_NAMES = ["cat", "dog", "car", "tree"]


def quadrant_images(num_examples: int, seed: int = 0, size: int = SIZE) -> tuple[list, list[int]]:
    """RGB uint8 PIL images whose label is the bright quadrant (a learnable 4-class task)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, num_examples).tolist()
    images, half = [], size // 2
    for label in labels:
        pixels = rng.integers(0, 110, (size, size, 3))
        r, c = divmod(label, 2)
        pixels[r * half : (r + 1) * half, c * half : (c + 1) * half] += 140
        images.append(PILImage.fromarray(pixels.astype(np.uint8)))
    return images, labels


def make_dataset_dict(num_train: int = 32, num_test: int = 16, with_validation: bool = False) -> DatasetDict:
    features = Features({"image": Image(), "label": ClassLabel(names=CLASS_NAMES)})
    splits = {"train": num_train, "test": num_test}
    if with_validation:
        splits["validation"] = num_test
    out = {}
    for i, (name, n) in enumerate(splits.items()):
        images, labels = quadrant_images(n, seed=i)
        out[name] = Dataset.from_dict({"image": images, "label": labels}, features=features)
    return DatasetDict(out)


def save_dataset(folder: Path, **kwargs) -> str:
    make_dataset_dict(**kwargs).save_to_disk(str(folder))
    return str(folder)


def _processor(folder: Path, family: str) -> None:
    from transformers import CLIPImageProcessor, ConvNextImageProcessor, ViTImageProcessor

    if family == "clip":
        CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}).save_pretrained(
            folder
        )
    elif family == "resnet":
        ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=1.0).save_pretrained(folder)
    else:
        ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(folder)


def make_checkpoint(folder: Path, family: str, seed: int = 0) -> str:
    """Save a tiny random-config "pre-trained" checkpoint of `family` (10-way head where it has one) to `folder`."""
    from transformers import (
        ResNetConfig,
        ResNetForImageClassification,
        SwinConfig,
        SwinForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    if family == "resnet":
        model = ResNetForImageClassification(
            ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
        )
    elif family == "vit":
        model = ViTForImageClassification(
            ViTConfig(
                image_size=SIZE,
                patch_size=8,
                hidden_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=32,
                num_labels=10,
            )
        )
    elif family == "swin":
        model = SwinForImageClassification(
            SwinConfig(
                image_size=SIZE,
                patch_size=2,
                embed_dim=8,
                depths=[1, 1],
                num_heads=[2, 2],
                window_size=4,
                num_labels=10,
            )
        )
    elif family == "clip":
        return make_clip_checkpoint(folder, seed)
    elif family == "timm":
        import timm
        from timm.models._hub import save_for_hf

        model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
        save_for_hf(model, str(folder), safe_serialization=True)
        return str(folder)
    else:
        raise ValueError(family)
    model.save_pretrained(folder)
    _processor(folder, family)
    return str(folder)


def make_clip_checkpoint(folder: Path, seed: int = 0) -> str:
    """A tiny random CLIP (text + vision towers) with a character-level CLIP tokenizer written offline."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits + ".,'-":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            image_size=SIZE,
            patch_size=8,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _processor(folder, "clip")
    return str(folder)
