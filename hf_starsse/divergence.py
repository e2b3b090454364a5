"""Divergence of a member (a non-finite loss, or non-finite weights when it ends) and the run's answer to it.

`on_divergence="stop"` (the default) saves nothing for the member and raises [`MemberDivergedError`], one line naming
the member, the step and its learning rate. `on_divergence="skip"` writes the member's folder with its `member.json`
only (`MemberRecord.diverged` set, no weights): it is part of the run, left out of ensembles, soups and uploads, and
members that would start from it fail clearly.

Cost: the loss is checked at every micro-batch with one `.item()` (a device sync). With the `Trainer`'s default
`logging_nan_inf_filter=True` the training loop already syncs on the loss there, so the check adds no sync; under
several processes one scalar all-reduce per micro-batch keeps every process's decision the same. The weights are
checked once per member, before it is saved.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from .file_utils import atomic_directory, atomic_write_json
from .manifest import MEMBER_INFO_NAME, EnsembleManifest, MemberRecord, member_dir
from .member_weights import nonfinite_tensors

if TYPE_CHECKING:
    from .ensemble_plan import MemberPlan


class MemberDivergedError(RuntimeError):
    """A member's loss or weights became non-finite (NaN / infinity).

    Args:
        member (`int`): The member's index.
        step (`int`): Optimizer step of the member's phase (1-based) at which it was seen.
        num_steps (`int`): Optimizer steps of the member's phase.
        learning_rate (`float`): Learning rate of that step.
        reason (`str`): What was non-finite.
        is_cycle (`bool`): Whether the member is an SSE / StarSSE cycle (its LR is the cycle LR).
    """

    def __init__(self, member: int, step: int, num_steps: int, learning_rate: float, reason: str, is_cycle: bool):
        self.member, self.step, self.num_steps = member, step, num_steps
        self.learning_rate, self.reason, self.is_cycle = float(learning_rate), reason, is_cycle
        fix = "the cycle learning rate (`cycle_lr_ratio` / `cycle_learning_rate`)" if is_cycle else "`learning_rate`"
        super().__init__(
            f"member {member} diverged at step {step}/{num_steps} (learning rate {self.learning_rate:.4g}): {reason}; "
            f"nothing was saved for it. Lower {fix}, or set `on_divergence='skip'` to record it and go on."
        )

    def fields(self) -> dict[str, Any]:
        """The constructor's arguments (to send the error to other processes)."""
        return {
            "member": self.member,
            "step": self.step,
            "num_steps": self.num_steps,
            "learning_rate": self.learning_rate,
            "reason": self.reason,
            "is_cycle": self.is_cycle,
        }

    def info(self) -> dict[str, Any]:
        """What `MemberRecord.diverged` records."""
        return {"step": self.step, "learning_rate": self.learning_rate, "reason": self.reason}


def raise_if_nonfinite_loss(trainer: Any, loss: torch.Tensor, plan: MemberPlan) -> None:
    """Raise [`MemberDivergedError`] when this micro-batch's loss (on any process) is not finite."""
    bad = ~torch.isfinite(loss.detach()).all()
    if trainer.args.world_size > 1:
        bad = trainer.accelerator.reduce(bad.float().reshape(1), reduction="sum")[0] > 0
    if not bool(bad):
        return
    value = float(loss.detach().float().mean()) if loss.numel() else float("nan")
    raise MemberDivergedError(
        plan.index,
        trainer.state.global_step + 1,
        plan.num_steps,
        _current_lr(trainer),
        f"its training loss is {value}" if not math.isfinite(value) else "a training loss is not finite",
        plan.is_cycle,
    )


def raise_if_nonfinite_weights(trainer: Any, state: dict[str, torch.Tensor], plan: MemberPlan) -> None:
    """Raise [`MemberDivergedError`] when the member's final weights (or buffers), on any process, hold a NaN or an
    infinity (the learning rate named is the member's peak)."""
    bad = nonfinite_tensors(state)
    count = torch.tensor([float(len(bad))], device=trainer.args.device)
    if trainer.args.world_size > 1:
        count = trainer.accelerator.reduce(count, reduction="sum")
    if float(count[0]) > 0:
        example = f" (e.g. `{bad[0]}`)" if bad else ""
        raise MemberDivergedError(
            plan.index,
            plan.num_steps,
            plan.num_steps,
            plan.peak_learning_rate,
            f"{len(bad) or int(count[0])} of {len(state)} weight tensors are not finite when it ends{example}",
            plan.is_cycle,
        )


def _current_lr(trainer: Any) -> float:
    scheduler = getattr(trainer, "lr_scheduler", None)
    if scheduler is not None:
        try:
            return float(scheduler.get_last_lr()[0])
        except (AttributeError, IndexError, RuntimeError):
            pass
    optimizer = getattr(trainer, "optimizer", None)
    return float(optimizer.param_groups[0]["lr"]) if optimizer is not None else float("nan")


def write_diverged_member(run_dir: Any, record: MemberRecord) -> None:
    """Write `members/member-<i>/` holding only the diverged member's `member.json`, atomically."""
    with atomic_directory(member_dir(run_dir, record.index)) as tmp:
        atomic_write_json(tmp / MEMBER_INFO_NAME, record.to_dict())


def check_parent_usable(plan: MemberPlan, manifest: EnsembleManifest) -> None:
    """Raise a one-line `ValueError` when `plan` would start from a member that diverged."""
    if plan.parent is None:
        return
    parent = next((m for m in manifest.members if m.index == plan.parent), None)
    if parent is None or not parent.diverged:
        return
    info = parent.diverged
    raise ValueError(
        f"member {plan.index} would start from member {plan.parent}, which diverged (step {info.get('step')}, "
        f"learning rate {info.get('learning_rate')}) and has no weights: the {manifest.strategy} run cannot go on; "
        "start a new run (another `output_dir`) with a lower learning rate."
    )
