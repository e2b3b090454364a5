"""Checks on the weights of members: readable safetensors files (one line naming the file) and finite values.

Used before members enter an ensemble, a soup or a push ([`EnsembleManifest.usable`]), and by the trainer before a
member is saved.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a `save_pretrained` folder (one, or the shards of a sharded checkpoint)."""
    return sorted(Path(folder).glob("*.safetensors"))


@contextlib.contextmanager
def open_safetensors(path: str | os.PathLike) -> Iterator[Any]:
    """`safe_open(path)` with a one-line `ValueError` naming the file when it is truncated or not safetensors."""
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({_one_line(err)}): truncated or corrupt."
        ) from None
    with handle as f:
        yield f


def check_readable(folder: str | os.PathLike) -> None:
    """Open (header only) every safetensors file of `folder`: a truncated or garbage file raises, naming it."""
    for path in weight_files(folder):
        with open_safetensors(path):
            pass


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of `state` holding a NaN or an infinity (one device sync)."""
    names = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()]
    if not names:
        return []
    flags = torch.stack([~torch.isfinite(state[k]).all() for k in names]).cpu().tolist()
    return [k for k, bad in zip(names, flags) if bad]


def nonfinite_in_files(folder: str | os.PathLike) -> tuple[list[str], int]:
    """(names of the non-finite tensors, number of tensors) over the safetensors files of `folder`, one at a time."""
    bad, total = [], 0
    for path in weight_files(folder):
        with open_safetensors(path) as f:
            for key in f.keys():
                try:
                    tensor = f.get_tensor(key)
                except SafetensorError as err:
                    raise ValueError(
                        f"{path}: cannot read tensor `{key}` ({_one_line(err)}): truncated or corrupt."
                    ) from None
                total += 1
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad.append(key)
    return bad, total


def check_finite_member(folder: str | os.PathLike, name: str) -> None:
    """Raise a one-line `ValueError` when the member in `folder` has non-finite weights (or unreadable files)."""
    bad, total = nonfinite_in_files(folder)
    if bad:
        raise ValueError(
            f"{name} ({folder}) has non-finite weights ({len(bad)} of {total} tensors, e.g. `{bad[0]}`): it diverged; "
            "retrain it with a lower learning rate, or remove it from the run."
        )
