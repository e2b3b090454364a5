"""What each member of an ensemble run does: its parent, seed, length and place in the cyclic schedule."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .cyclic_schedule import get_cyclic_cosine_schedule
from .ensemble_config import EnsembleTrainingArguments
from .run_folder import member_name
from .seeds import member_data_seed


@dataclass(frozen=True)
class MemberPlan:
    """The training phase that produces one member.

    Args:
        index (`int`): Member index.
        seed (`int`): Seed of its fresh head (if any) and of its other global random draws (dropout, augmentation).
        parent (`int`, *optional*): Member whose final weights it starts from; `None` = a pre-trained checkpoint.
        init_from (`str`): The pre-trained checkpoint or `member-<parent>`.
        num_steps (`int`): Optimizer steps.
        steps_per_epoch (`int`): Optimizer steps of one epoch.
        peak_learning_rate (`float`): Highest LR of its phase.
        schedule_offset (`int`): Step of the whole-run schedule where the phase starts.
        is_cycle (`bool`): `True` for SSE / StarSSE cycles (no head re-init, cycle LR).
        data_seed (`int`, *optional*): Seed of its data order; defaults to `member_data_seed(seed, index)`, which keeps
            the orders of a run's (member, epoch) pairs apart (see `hf_starsse.seeds`).
    """

    index: int
    seed: int
    parent: int | None
    init_from: str
    num_steps: int
    steps_per_epoch: int
    peak_learning_rate: float
    schedule_offset: int
    is_cycle: bool
    data_seed: int | None = None

    def __post_init__(self):
        if self.data_seed is None:
            object.__setattr__(self, "data_seed", member_data_seed(self.seed, self.index))

    @property
    def num_epochs(self) -> float:
        return self.num_steps / self.steps_per_epoch

    def to_dict(self) -> dict:
        return {**asdict(self), "num_epochs": self.num_epochs}


@dataclass(frozen=True)
class SchedulePlan:
    """Arguments of `get_cyclic_cosine_schedule` shared by every member of a run (all but `step_offset`)."""

    num_first_steps: int
    num_cycle_steps: int
    num_cycles: int
    cycle_lr_ratio: float
    num_first_warmup_steps: int
    num_cycle_warmup_steps: int

    def create_scheduler(self, optimizer, step_offset: int = 0):
        """The run's `get_cyclic_cosine_schedule` on `optimizer`, starting at step `step_offset` of the run."""
        return get_cyclic_cosine_schedule(optimizer, **asdict(self), step_offset=step_offset)


def plan_schedule(args: EnsembleTrainingArguments, steps_per_epoch: int) -> SchedulePlan:
    """The whole-run schedule of `args` for a data loader with `steps_per_epoch` optimizer steps per epoch."""
    if steps_per_epoch < 1:
        raise ValueError(f"The training data gives {steps_per_epoch} optimizer steps per epoch: it is empty.")
    first = args.resolve_num_first_steps(steps_per_epoch)
    cycle = args.resolve_num_cycle_steps(steps_per_epoch)
    cyclic = args.ensemble_strategy in ("sse", "star_sse")
    return SchedulePlan(
        num_first_steps=first,
        num_cycle_steps=cycle,
        num_cycles=args.num_members - 1 if cyclic else 0,
        cycle_lr_ratio=args.resolved_cycle_lr_ratio,
        num_first_warmup_steps=args.resolve_warmup(args.warmup_steps, first),
        num_cycle_warmup_steps=args.resolve_warmup(args.cycle_warmup_steps, cycle),
    )


def plan_members(
    args: EnsembleTrainingArguments, steps_per_epoch: int, base_model: str = "pretrained"
) -> list[MemberPlan]:
    """The phase of every member, in training order.

    Args:
        args (`EnsembleTrainingArguments`): The run's arguments.
        steps_per_epoch (`int`): Optimizer steps per epoch of the training data loader.
        base_model (`str`, *optional*, defaults to `"pretrained"`): Name of the pre-trained checkpoint (all
            strategies but Global DE, whose checkpoints come from `args.pretrained_checkpoints`).
    """
    schedule = plan_schedule(args, steps_per_epoch)
    seeds, lr, strategy = args.seeds, args.learning_rate, args.ensemble_strategy
    plans = []
    for i in range(args.num_members):
        if i == 0 or strategy in ("local_de", "global_de"):
            checkpoint = args.pretrained_checkpoints[i] if strategy == "global_de" else base_model
            plans.append(
                MemberPlan(i, seeds[i], None, checkpoint, schedule.num_first_steps, steps_per_epoch, lr, 0, False)
            )
            continue
        parent = i - 1 if strategy == "sse" else 0
        offset = schedule.num_first_steps + (i - 1 if strategy == "sse" else 0) * schedule.num_cycle_steps
        plans.append(
            MemberPlan(
                i,
                seeds[i],
                parent,
                member_name(parent),
                schedule.num_cycle_steps,
                steps_per_epoch,
                lr * schedule.cycle_lr_ratio,
                offset,
                True,
            )
        )
    return plans


def describe_plan(args: EnsembleTrainingArguments, plans: list[MemberPlan]) -> str:
    """A human-readable table of the plan (what `--dry-run` prints)."""
    lines = [
        f"strategy: {args.ensemble_strategy}, members: {args.num_members}, "
        f"total optimizer steps: {sum(p.num_steps for p in plans)}",
        f"{'member':>6}  {'starts from':<28} {'seed':>6} {'steps':>7} {'epochs':>7} {'peak LR':>10} {'offset':>7}",
    ]
    for p in plans:
        lines.append(
            f"{p.index:>6}  {p.init_from[-28:]:<28} {p.seed:>6} {p.num_steps:>7} {p.num_epochs:>7.2f} "
            f"{p.peak_learning_rate:>10.3g} {p.schedule_offset:>7}"
        )
    return "\n".join(lines)
