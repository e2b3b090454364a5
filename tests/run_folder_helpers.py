"""The one builder of tiny run folders for tests (evaluation, soups, Hub, model card, docs).

`make_run_folder` writes the layout of `hf_starsse.manifest` (members as `save_pretrained` folders + `ensemble.json`)
and `eval_data/` (a DatasetDict with `pixel_values` + `labels`), training tiny models a few steps on a synthetic
colour task: member 0 is fine-tuned from a random "pre-trained" model, members 1..K-1 continue from member 0 with
their own seed (StarSSE-like). The real `EnsembleTrainer` can replace `_train` / the member loop later.
"""

from __future__ import annotations

import hf_starsse  # noqa: F401, I001  (first: torchvision compatibility)
from hf_starsse.manifest import EnsembleManifest, MemberRecord, member_dir

import os
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NUM_LABELS = 4
IMAGE_SIZE = 32


def synthetic_images(num: int, seed: int, image_size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """uint8 `(N, H, W, 3)` images whose class is a colour (red, green, blue, gray) under noise, and labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_LABELS, size=num)
    colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.6, 0.6]], dtype=np.float32)
    strength = rng.uniform(0.05, 0.45, size=(num, 1, 1, 1)).astype(np.float32)
    images = rng.uniform(0.2, 0.6, size=(num, image_size, image_size, 3)).astype(np.float32)
    images += strength * colours[labels][:, None, None, :]
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)


def to_pixel_values(images: np.ndarray) -> np.ndarray:
    """Normalise like `ViTImageProcessor(image_mean=0.5, image_std=0.5)`: `(N, 3, H, W)` float32."""
    return ((images.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()


def image_processor(image_size: int = IMAGE_SIZE):
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )


def tiny_model(arch: str = "resnet", seed: int = 0, num_labels: int = NUM_LABELS) -> torch.nn.Module:
    """A tiny random-config ResNet (with BatchNorm) or ViT (LayerNorm only)."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    if arch == "resnet":
        config = ResNetConfig(
            num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels
        )
        return ResNetForImageClassification(config)
    if arch == "vit":
        config = ViTConfig(
            image_size=IMAGE_SIZE,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=num_labels,
        )
        return ViTForImageClassification(config)
    raise ValueError(f"unknown arch {arch}")


def eval_dataset_dict(num_train: int = 128, num_val: int = 64, num_test: int = 96, seed: int = 0):
    """`DatasetDict` with `train`, `validation`, `test` splits of `pixel_values` (Array3D) + `labels`."""
    from datasets import Array3D, ClassLabel, Dataset, DatasetDict, Features

    features = Features(
        {
            "pixel_values": Array3D(shape=(3, IMAGE_SIZE, IMAGE_SIZE), dtype="float32"),
            "labels": ClassLabel(names=["red", "green", "blue", "gray"]),
        }
    )
    splits = {}
    for offset, (name, num) in enumerate((("train", num_train), ("validation", num_val), ("test", num_test))):
        images, labels = synthetic_images(num, seed=seed * 10 + offset)
        splits[name] = Dataset.from_dict(
            {"pixel_values": to_pixel_values(images), "labels": labels.tolist()}, features=features
        )
    return DatasetDict(splits)


def _train(model: torch.nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor, steps: int, lr: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (32,), generator=generator)
        loss = model(pixel_values=pixel_values[idx], labels=labels[idx]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def make_run_folder(
    run_dir: str | os.PathLike,
    num_members: int = 3,
    arch: str = "resnet",
    first_steps: int = 40,
    cycle_steps: int = 10,
    lr: float = 1e-2,
    bad_member: int | None = None,
    with_eval_data: bool = True,
    seed: int = 0,
) -> Path:
    """Write a StarSSE-like run of tiny models into `run_dir` (see the module docstring); returns `run_dir`."""
    run_dir = Path(run_dir)
    data = eval_dataset_dict(seed=seed)
    train = data["train"].with_format("torch")
    pixel_values, labels = train["pixel_values"], train["labels"]
    processor = image_processor()
    pretrained = tiny_model(arch, seed=seed)
    pretrained.save_pretrained(run_dir / "pretrained")
    member0 = _train(tiny_model(arch, seed=seed), pixel_values, labels, first_steps, lr, seed)
    records = []
    for i in range(num_members):
        if i == 0:
            model = member0
        else:
            model = tiny_model(arch, seed=seed)
            model.load_state_dict(member0.state_dict())
            _train(model, pixel_values, labels, cycle_steps, lr, seed + 1000 * i)
        if i == bad_member:
            model = tiny_model(arch, seed=seed + 777)  # deliberately bad: untrained random weights
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(3.0)
        folder = member_dir(run_dir, i)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        records.append(
            MemberRecord(
                index=i,
                path=str(folder.relative_to(run_dir)),
                seed=seed + 1000 * i,
                parent=None if i == 0 else 0,
                init_from=str(run_dir / "pretrained") if i == 0 else "member-0",
                learning_rate=lr,
                num_steps=first_steps if i == 0 else cycle_steps,
                num_epochs=1.0,
                schedule_offset=0 if i == 0 else first_steps,
            )
        )
    manifest = EnsembleManifest(
        strategy="star_sse",
        num_members=num_members,
        hyperparameters={"learning_rate": lr, "warmup_steps": 0, "cycle_warmup_steps": 0, "cycle_lr_ratio": 1.0},
        base_models=[str(run_dir / "pretrained")],
        members=records,
    )
    manifest.save(run_dir)
    if with_eval_data:
        data.save_to_disk(str(run_dir / "eval_data"))
    return run_dir


def single_thread():
    """Generator for an autouse fixture: tiny models run much faster on one thread on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
