"""Tiny offline models and data for trainer tests: random-config "pre-trained" checkpoints saved to disk."""

from __future__ import annotations

import hf_starsse  # noqa: F401  (first: makes torchvision importable on CPU-only torch)

import hashlib
from functools import partial
from pathlib import Path

import torch
from datasets import Array3D, Dataset, Features, Value
from transformers import (
    AutoModelForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    TrainerCallback,
    ViTConfig,
    ViTForImageClassification,
)

IMAGE_SIZE = 16
NUM_LABELS = 4


def make_image_dataset(num_examples: int = 32, seed: int = 0, num_labels: int = NUM_LABELS) -> Dataset:
    """A learnable toy task: the label is which quadrant of the image is brightest."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(num_examples, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) * 0.5
    labels = torch.randint(0, num_labels, (num_examples,), generator=g)
    half = IMAGE_SIZE // 2
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label % 4, 2)
        pixels[i, :, r * half : (r + 1) * half, c * half : (c + 1) * half] += 1.5
    features = Features(
        {"pixel_values": Array3D(shape=(3, IMAGE_SIZE, IMAGE_SIZE), dtype="float32"), "labels": Value("int64")}
    )
    return Dataset.from_dict(
        {"pixel_values": pixels.numpy(), "labels": labels.numpy()}, features=features
    ).with_format("torch")


def make_pretrained(folder: Path, family: str = "resnet", seed: int = 0, **overrides) -> str:
    """Save a tiny random-config classifier (1000-way head, so fine-tuning builds a fresh head) to `folder`."""
    torch.manual_seed(seed)
    if family == "resnet":
        config = ResNetConfig(
            num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10, **overrides
        )
        model = ResNetForImageClassification(config)
    elif family == "vit":
        config = ViTConfig(
            image_size=IMAGE_SIZE,
            patch_size=8,
            num_channels=3,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=10,
            **overrides,
        )
        model = ViTForImageClassification(config)
    else:
        raise ValueError(family)
    model.save_pretrained(folder)
    return str(folder)


def _load(checkpoint: str, num_labels: int = NUM_LABELS):
    return AutoModelForImageClassification.from_pretrained(
        checkpoint, num_labels=num_labels, ignore_mismatched_sizes=True
    )


def model_init_for(checkpoint: str):
    """A zero-argument `model_init` loading `checkpoint` with a fresh `NUM_LABELS`-way head."""
    return partial(_load, checkpoint)


def global_model_init(checkpoint: str):
    """Global DE `model_init(checkpoint)`."""
    return _load(checkpoint)


def file_digests(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime_ns of every file below `folder`."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class StepCounter(TrainerCallback):
    """Counts the optimizer steps a run actually trained (the subprocess scripts report it)."""

    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
