"""Fixed per-member costs of `Trainer.train()` that `EnsembleTrainer` avoids (benchmarks/trainer_overhead.py)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


@contextlib.contextmanager
def without_full_gc_on_cpu(accelerator: Any, device: torch.device) -> Any:
    """Each `Trainer.train()` starts with `accelerator.free_memory()`, whose `gc.collect()` is a full collection of a
    process holding the whole torch / transformers stack (~0.27 s of CPU per member, measured in
    benchmarks/trainer_overhead.py). On CPU there is no device cache for it to give back, so while a member trains on
    CPU `free_memory` only drops the accelerator's references (as accelerate does) and leaves collection to Python's
    generational GC; on accelerators (and under DeepSpeed) it is accelerate's own."""
    if torch.device(device).type != "cpu" or getattr(accelerator, "deepspeed_engine_wrapped", None) is not None:
        yield
        return

    def free_memory(*objects: Any) -> list:
        for name in ("_schedulers", "_optimizers", "_models", "_dataloaders"):
            setattr(accelerator, name, [])
        accelerator.step = 0
        return [None] * len(objects)

    accelerator.free_memory = free_memory
    try:
        yield
    finally:
        if accelerator.__dict__.get("free_memory") is free_memory:
            del accelerator.free_memory  # back to accelerate's method
