"""One architecture check for everything that combines models: soups, ensembles and Global DE checkpoints."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"
# config fields that change the shapes of the weights (compared on top of the model type and architecture)
SIZE_KEYS = (
    "hidden_size",
    "hidden_sizes",
    "depths",
    "num_hidden_layers",
    "embedding_size",
    "image_size",
    "patch_size",
)


def _config(name_or_path: str | os.PathLike) -> tuple[dict[str, Any] | None, str]:
    """The config of a member folder, a weights file (none) or a Hub checkpoint id, and where it was read."""
    path = Path(name_or_path)
    if path.is_file():
        return None, str(path)  # a bare weights file: nothing to compare
    if path.is_dir():
        config = path / CONFIG_NAME
        if not config.is_file():
            return None, str(config)
        try:
            return json.loads(config.read_text(encoding="utf-8")), str(config)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{config} is not valid JSON ({err}).") from None
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(name_or_path)).to_dict(), repr(str(name_or_path))
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Cannot load the config of {str(name_or_path)!r}: {first}") from None


def architecture_signature(config: dict[str, Any]) -> tuple[str | None, str | None, tuple[str, ...]]:
    """`(model_type, architecture, sizes)` of a config dict: equal signatures mean interchangeable weights."""
    return (
        config.get("model_type"),
        config.get("architecture"),
        tuple(str(config.get(key)) for key in SIZE_KEYS),
    )


def check_same_architecture(models: Sequence[str | os.PathLike], field: str = "members") -> None:
    """Raise a one-line `ValueError` naming the first model whose architecture differs from the first one's.

    Args:
        models (`Sequence[str | os.PathLike]`):
            Member folders, `.safetensors` files (not compared) or Hub checkpoint ids.
        field (`str`, *optional*, defaults to `"members"`):
            The argument named in the error (e.g. `pretrained_checkpoints`).
    """
    if not models:
        raise ValueError(f"`{field}` should list at least one member, got an empty list.")
    reference = None
    for model in models:
        config, where = _config(model)
        if config is None:
            continue
        signature = architecture_signature(config)
        if reference is None:
            reference = (where, signature)
        elif signature != reference[1]:
            kind, ref_kind = signature[1] or signature[0], reference[1][1] or reference[1][0]
            sizes = " (other sizes)" if kind == ref_kind else ""
            raise ValueError(
                f"`{field}` should share one architecture: {where} is a `{kind}` model{sizes} but {reference[0]} is a "
                f"`{ref_kind}` model: not the same architecture."
            )
