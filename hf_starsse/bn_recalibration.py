"""Recompute BatchNorm running statistics of a soup with a pass over training data.

Averaged weights make the averaged running statistics meaningless, so a soup of BatchNorm models needs new ones
(Wortsman et al. 2022; Izmailov et al. 2018). `torch.optim.swa_utils.update_bn` does this but only for tensor or
`(input, target)` batches (pytorch#49082); this version takes the dict batches of `datasets` / `Trainer` dataloaders
and dataloaders prepared by Accelerate.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from .eval_data import model_inputs


def batchnorm_modules(model: torch.nn.Module) -> list[_BatchNorm]:
    """All BatchNorm layers (`BatchNorm1d/2d/3d`, `SyncBatchNorm`, ...) of `model` that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def has_batchnorm(model: torch.nn.Module) -> bool:
    """Whether `model` has BatchNorm layers with running statistics."""
    return bool(batchnorm_modules(model))


@torch.no_grad()
def recalibrate_batchnorm(
    model: torch.nn.Module,
    dataloader: Iterable[Any],
    device: torch.device | str | None = None,
    num_batches: int | None = None,
    accelerator: Any = None,
    progress: bool = False,
) -> torch.nn.Module:
    """Reset and recompute the running statistics of every BatchNorm layer of `model` over `dataloader`.

    Each layer's running mean / variance becomes the cumulative (equal-weight) average over the batches of the batch
    statistics, exactly as PyTorch computes it with `momentum=None`: the model runs in train mode, without gradients.
    Afterwards each module's train/eval mode and each BatchNorm's `momentum` are restored. Layers without running
    statistics are untouched; a model without BatchNorm is returned as is.

    Args:
        model (`torch.nn.Module`):
            The model (e.g. a soup), possibly wrapped by Accelerate / DDP.
        dataloader (`Iterable`):
            Training batches: dicts (`{"pixel_values": ..., "labels": ...}`; labels are not passed to the model),
            `(inputs, labels)` tuples or tensors.
        device (`torch.device` or `str`, *optional*):
            Where batches are moved; defaults to the model's device (batches from an Accelerate-prepared dataloader
            are already there).
        num_batches (`int`, *optional*):
            Stop after this many batches.
        accelerator (`accelerate.Accelerator`, *optional*):
            When given and running several processes, the statistics are averaged over processes afterwards (each
            process saw its own shard); `SyncBatchNorm` layers are already synchronised.
        progress (`bool`, *optional*, defaults to `False`):
            Show a progress bar.

    Returns:
        `torch.nn.Module`: `model`, recalibrated in place.
    """
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"`num_batches` should be positive, got {num_batches}.")
    bn_layers = batchnorm_modules(model)
    if not bn_layers:
        return model
    if device is None:
        device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    momenta = {bn: bn.momentum for bn in bn_layers}
    for bn in bn_layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over batches
    seen = 0
    try:
        model.train()
        for batch in tqdm(dataloader, desc="BN recalibration", disable=not progress, leave=False):
            inputs, _ = model_inputs(batch, device)
            model(**inputs)
            seen += 1
            if num_batches is not None and seen >= num_batches:
                break
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for module, mode in modes.items():
            module.training = mode
    if seen == 0:
        raise ValueError("The BatchNorm recalibration dataloader yielded no batches.")
    if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
        for bn in bn_layers:
            if isinstance(bn, torch.nn.SyncBatchNorm):
                continue
            bn.running_mean.copy_(accelerator.reduce(bn.running_mean.clone(), reduction="mean"))
            bn.running_var.copy_(accelerator.reduce(bn.running_var.clone(), reduction="mean"))
    return model
