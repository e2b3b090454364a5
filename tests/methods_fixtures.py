"""A tiny member 0 on disk for the post-hoc method builders (hf_starsse.methods)."""

from __future__ import annotations

import hf_starsse  # noqa: F401

from pathlib import Path

import torch
from ensemble_fixtures import NUM_LABELS, make_image_dataset, make_pretrained, model_init_for
from transformers import ViTImageProcessor


def make_member0(tmp_path: Path, family: str = "resnet", train_steps: int = 4) -> Path:
    """A "fine-tuned member 0": the tiny random checkpoint with a fresh 4-way head, a few SGD steps on the toy task.

    (Stands in for member 0 of an `EnsembleTrainer` run; any `save_pretrained` folder works.)
    """
    base = make_pretrained(tmp_path / f"pretrained-{family}", family)
    torch.manual_seed(0)
    model = model_init_for(base)()
    data = make_image_dataset(16, seed=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(train_steps):
        batch = data[(step % 2) * 8 : (step % 2) * 8 + 8]
        loss = model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path / f"member0-{family}"
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def trainable_vector(folder: Path) -> torch.Tensor:
    """The trainable parameters of a saved member as one flat float32 vector (order of `named_parameters`)."""
    from hf_starsse.methods._common import flat_params, trainable_names

    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder)
    return flat_params(model, trainable_names(model))


__all__ = ["NUM_LABELS", "make_image_dataset", "make_member0", "trainable_vector"]
