"""Model soups over members saved as `save_pretrained` folders (safetensors), as small pure functions."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

SAFE_WEIGHTS_NAME = "model.safetensors"


def member_weights_file(member: str | os.PathLike) -> Path:
    """The safetensors file of a member folder (or the file itself)."""
    path = Path(member)
    if path.is_dir():
        path = path / SAFE_WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No safetensors weights at {path}.")
    return path


def uniform_soup(
    members: Sequence[str | os.PathLike], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """Average the members' state dicts, streaming one member at a time (peak memory ~ two models).

    Args:
        members (`Sequence[str | os.PathLike]`):
            Member folders (`save_pretrained` output) or `.safetensors` files.
        weights (`Sequence[float]`, *optional*):
            Mixing weights (normalised to sum to 1). Uniform when omitted.

    Returns:
        `dict[str, torch.Tensor]`: the averaged state dict (float tensors averaged in float32 and cast back;
        integer buffers such as `num_batches_tracked` taken from the first member).
    """
    if not members:
        raise ValueError("`members` should list at least one member, got an empty list.")
    if weights is None:
        weights = [1.0] * len(members)
    if len(weights) != len(members):
        raise ValueError(f"`weights` should have one entry per member ({len(members)}), got {len(weights)}.")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"`weights` should sum to a positive number, got {total}.")
    soup: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    reference = None
    for i, (member, w) in enumerate(zip(members, weights)):
        path = member_weights_file(member)
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if reference is None:
                reference = (path, keys)
            elif keys != reference[1]:
                diff = sorted(keys ^ reference[1])[:3]
                raise ValueError(f"{path} has other tensors than {reference[0]} (e.g. {diff}): not the same architecture.")
            for key in keys:
                tensor = f.get_tensor(key)
                if i == 0:
                    dtypes[key] = tensor.dtype
                    soup[key] = tensor.float() * (w / total) if tensor.is_floating_point() else tensor.clone()
                    continue
                if tensor.shape != soup[key].shape:
                    raise ValueError(
                        f"{path}: tensor `{key}` has shape {tuple(tensor.shape)}, {reference[0]} has "
                        f"{tuple(soup[key].shape)}: not the same architecture."
                    )
                if tensor.is_floating_point():
                    soup[key].add_(tensor.float(), alpha=w / total)
                del tensor
    return {k: v.to(dtypes[k]) for k, v in soup.items()}
