"""Member parallelism: under `accelerate launch --num_processes N`, each process trains its own independent members.

No gradient is all-reduced between processes and no collective runs while members train, so processes may hold
different numbers of members. To keep every member's recipe identical to a data-parallel run, a process sees the
whole training set and accumulates `gradient_accumulation_steps x N` micro-batches of `per_device_train_batch_size`
per optimizer step: the same effective batch, the same number of optimizer steps and the same schedule.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

if TYPE_CHECKING:
    from .ensemble_plan import MemberPlan, SchedulePlan
    from .ensemble_trainer import EnsembleTrainer


def assign_members(indices: list[int], world_size: int, rank: int) -> list[int]:
    """Round-robin assignment of independent members to processes."""
    return [index for position, index in enumerate(indices) if position % world_size == rank]


def _loader(trainer: EnsembleTrainer, dataset, batch_size: int, generator: torch.Generator | None) -> DataLoader:
    dataset = trainer._remove_unused_columns(dataset, description="member-parallel")
    sampler = RandomSampler(dataset, generator=generator) if generator is not None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=trainer.data_collator,
        num_workers=trainer.args.dataloader_num_workers,
        drop_last=trainer.args.dataloader_drop_last,
    )


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train_member_locally(
    trainer: EnsembleTrainer, model: torch.nn.Module, plan: MemberPlan, schedule: SchedulePlan
) -> dict[str, float]:
    """Train one member on this process alone (no collectives); returns its train (and eval) metrics.

    Args:
        trainer (`EnsembleTrainer`): Supplies the arguments, datasets, collator, loss and optimizer recipe.
        model (`torch.nn.Module`): The member's starting model, on this process's device.
        plan (`MemberPlan`): The member's phase.
        schedule (`SchedulePlan`): The run's schedule (this member runs its slice from `plan.schedule_offset`).
    """
    args = trainer.args
    device = args.device
    model.to(device).train()
    trainer.model = model
    trainer.optimizer, trainer.lr_scheduler = None, None
    optimizer = trainer.create_optimizer()
    scheduler = schedule.create_scheduler(optimizer, step_offset=plan.schedule_offset)
    generator = torch.Generator().manual_seed(plan.data_seed)  # one persistent generator: a new order every epoch
    loader = _loader(trainer, trainer.train_dataset, args.per_device_train_batch_size, generator)
    accumulation = args.gradient_accumulation_steps * max(1, args.world_size)
    batches = _endless(loader)
    losses, start = [], time.time()
    for _ in range(plan.num_steps):
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for _ in range(accumulation):
            loss = trainer.compute_loss(model, _to_device(next(batches), device)) / accumulation
            loss.backward()
            step_loss += float(loss.detach())
        if args.max_grad_norm is not None and args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(step_loss)
    metrics = {"train_loss": float(np.mean(losses)), "train_runtime": round(time.time() - start, 4)}
    if args.evaluate_members and trainer.eval_dataset is not None:
        metrics.update(evaluate_locally(trainer, model))
    trainer.optimizer, trainer.lr_scheduler = None, None
    return metrics


@torch.no_grad()
def evaluate_locally(trainer: EnsembleTrainer, model: torch.nn.Module) -> dict[str, float]:
    """`eval_loss` (and `compute_metrics`) of `model` on the whole eval set, on this process alone."""
    from transformers import EvalPrediction

    model.eval()
    loader = _loader(trainer, trainer.eval_dataset, trainer.args.per_device_eval_batch_size, None)
    losses, logits, labels = [], [], []
    for batch in loader:
        batch = _to_device(batch, trainer.args.device)
        outputs = model(**batch)
        losses.append(float(outputs.loss) * len(batch["labels"]))
        logits.append(outputs.logits.float().cpu().numpy())
        labels.append(batch["labels"].cpu().numpy())
    model.train()
    count = sum(len(x) for x in labels)
    metrics = {"eval_loss": sum(losses) / max(1, count)}
    if trainer.compute_metrics is not None and count:
        prediction = EvalPrediction(predictions=np.concatenate(logits), label_ids=np.concatenate(labels))
        metrics.update({f"eval_{k}": v for k, v in trainer.compute_metrics(prediction).items()})
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}


def save_pretrained_on_this_process(model: torch.nn.Module, folder) -> None:
    """`model.save_pretrained(folder)` from any process.

    Under `torch.distributed`, transformers writes weights from rank 0 only (`should_save_on_this_rank`); a member
    trained by another process must still be written, by that process.
    """
    if "should_save_on_this_rank" not in dir(model):
        model.save_pretrained(folder)
        return
    model.should_save_on_this_rank = lambda is_main_process: is_main_process  # instance attribute, removed below
    try:
        model.save_pretrained(folder)
    finally:
        del model.should_save_on_this_rank


def _endless(loader: DataLoader):
    while True:
        yield from loader
