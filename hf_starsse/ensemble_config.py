"""`EnsembleTrainingArguments`: the `TrainingArguments` of a whole ensemble (Local DE, Global DE, SSE, StarSSE)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

ENSEMBLE_STRATEGIES = ("local_de", "global_de", "sse", "star_sse")
DIVERGENCE_ACTIONS = ("stop", "skip")
DEFAULT_LR_SCHEDULER = TrainingArguments.lr_scheduler_type  # the dataclass default: left unset by the user


@dataclass
class EnsembleTrainingArguments(TrainingArguments):
    r"""
    Configuration class for [`EnsembleTrainer`].

    The first fine-tuning (member 0, and every Local / Global DE member) uses the usual `learning_rate`,
    `num_train_epochs` / `max_steps`, `warmup_steps` and a cosine decay to 0. SSE and StarSSE members after the first
    are "cycles": the LR jumps to the cycle LR and decays by cosine to 0 over the cycle length. Cycle LR and length
    can be given as absolute values or as the paper's ratios to the first fine-tuning.

    Parameters:
        ensemble_strategy (`str`, *optional*, defaults to `"star_sse"`):
            One of `local_de`, `global_de`, `sse`, `star_sse`.
        num_members (`int`, *optional*, defaults to 5):
            Number of ensemble members K.
        cycle_learning_rate (`float`, *optional*):
            Peak LR of each SSE / StarSSE cycle. Exclusive with `cycle_lr_ratio`.
        cycle_lr_ratio (`float`, *optional*):
            Cycle peak LR divided by `learning_rate` (the paper's grid: 0.25, 0.5, 1, 2, 4). Defaults to 1.0 when
            neither `cycle_learning_rate` nor `cycle_lr_ratio` is set.
        cycle_epochs (`float`, *optional*):
            Length of each cycle in epochs. Exclusive with `cycle_steps` and `cycle_epoch_ratio`.
        cycle_steps (`int`, *optional*):
            Length of each cycle in optimizer steps.
        cycle_epoch_ratio (`float`, *optional*):
            Cycle length divided by the first fine-tuning's length (the paper's grid: 0.5, 1, 2, 4). Defaults to 1.0
            when no cycle length is set.
        cycle_warmup_steps (`float`, *optional*, defaults to 0):
            Linear warmup at each cycle start: steps (>= 1) or a ratio of the cycle length (in [0, 1)).
        reset_optimizer_each_cycle (`bool`, *optional*, defaults to `True`):
            Start every member with a fresh optimizer state (momentum reset), as the authors do.
        member_seeds (`list[int]`, *optional*):
            One seed per member (head init of fresh heads + data order). Defaults to `seed + i` for member i.
        pretrained_checkpoints (`list[str]`, *optional*):
            Global DE only: one independently pre-trained checkpoint (Hub id or folder) per member.
        member_parallel (`bool`, *optional*, defaults to `False`):
            Under `accelerate launch --num_processes N`, each process trains its own independent members (StarSSE
            members 1..K-1 after a data-parallel member 0; every Local / Global DE member), assigned round-robin,
            with no gradient all-reduce between them. The default trains each member data-parallel.
        evaluate_members (`bool`, *optional*, defaults to `True`):
            Evaluate each member on `eval_dataset` (when given) before it is saved; the metrics go into its
            `member.json`.
        weight_decay_on_norm_and_bias (`bool`, *optional*, defaults to `False`):
            Decay every parameter (biases and normalisation weights included), like
            `torch.optim.SGD(model.parameters(), weight_decay=...)` in the authors' ResNet recipes. The default keeps
            the `Trainer`'s grouping (no decay on biases and LayerNorm / `*norm*` parameters).
        on_divergence (`str`, *optional*, defaults to `"stop"`):
            What to do when a member's loss or weights become non-finite: `"stop"` saves nothing for that member and
            raises; `"skip"` records it as diverged (its `member.json` only, no weights) and trains the next member.
        first_member (`str`, *optional*):
            SSE / StarSSE: an already fine-tuned classifier (a `save_pretrained` folder or a Hub repo id) taken as
            member 0 instead of training it. It is copied into `members/member-0` (the run stays self-contained),
            recorded with its source and the sha256 of its weights, and only the cycles are trained. The cycle LR and
            length ratios still refer to `learning_rate` and `num_train_epochs` (set them to how it was fine-tuned).
        member_indices (`list[int]` or `str`, *optional*):
            Train only these members (`[3, 4]`, or `"3,4"` on the command line), e.g. one per job of a cluster job
            array sharing the run folder. Each must depend on no member still untrained: any Local / Global DE member,
            StarSSE members >= 1 once member 0 is finished (or listed too), SSE member i once member i-1 is.
            Several processes or machines may train different members into one run folder at the same time.
    """

    ensemble_strategy: str = field(
        default="star_sse",
        metadata={"help": "Ensemble strategy.", "choices": list(ENSEMBLE_STRATEGIES)},
    )
    num_members: int = field(default=5, metadata={"help": "Number of ensemble members K."})
    cycle_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak LR of each SSE/StarSSE cycle (absolute). Exclusive with `cycle_lr_ratio`."},
    )
    cycle_lr_ratio: float | None = field(
        default=None,
        metadata={"help": "Cycle peak LR / `learning_rate` (paper grid 0.25..4). Defaults to 1.0 if no cycle LR."},
    )
    cycle_epochs: float | None = field(
        default=None,
        metadata={"help": "Cycle length in epochs. Exclusive with `cycle_steps` and `cycle_epoch_ratio`."},
    )
    cycle_steps: int | None = field(
        default=None,
        metadata={"help": "Cycle length in optimizer steps. Exclusive with `cycle_epochs` and `cycle_epoch_ratio`."},
    )
    cycle_epoch_ratio: float | None = field(
        default=None,
        metadata={"help": "Cycle length / first fine-tuning length (paper grid 0.5..4). Defaults to 1.0."},
    )
    cycle_warmup_steps: float = field(
        default=0,
        metadata={"help": "Linear warmup at each cycle start: steps (>= 1) or a ratio of the cycle (in [0, 1))."},
    )
    reset_optimizer_each_cycle: bool = field(
        default=True,
        metadata={"help": "Start every member with a fresh optimizer state (momentum reset), the authors' default."},
    )
    member_seeds: list[int] | None = field(
        default=None,
        metadata={"help": "One seed per member (fresh head init + data order). Defaults to `seed + i`."},
    )
    pretrained_checkpoints: list[str] | None = field(
        default=None,
        metadata={"help": "Global DE: one independently pre-trained checkpoint (Hub id or folder) per member."},
    )
    member_parallel: bool = field(
        default=False,
        metadata={
            "help": "Under `accelerate launch --num_processes N`, give each process its own independent members "
            "(StarSSE members 1..K-1, all Local / Global DE members; round-robin) instead of data-parallel members."
        },
    )
    evaluate_members: bool = field(
        default=True,
        metadata={"help": "Evaluate each member on `eval_dataset` before saving it (metrics go to member.json)."},
    )
    weight_decay_on_norm_and_bias: bool = field(
        default=False,
        metadata={
            "help": "Decay every parameter, biases and norm weights included (the authors' ResNet recipes: "
            "`torch.optim.SGD(model.parameters(), weight_decay=...)`). Default: the Trainer's grouping."
        },
    )
    on_divergence: str = field(
        default="stop",
        metadata={
            "help": "When a member's loss or weights become non-finite: `stop` (save nothing, raise) or `skip` "
            "(record the member as diverged, without weights, and go on).",
            "choices": list(DIVERGENCE_ACTIONS),
        },
    )

    first_member: str | None = field(
        default=None,
        metadata={
            "help": "SSE/StarSSE: an already fine-tuned classifier (folder or Hub repo id) taken as member 0; only "
            "the cycles are trained. Cycle ratios still refer to `learning_rate` / `num_train_epochs`."
        },
    )

    member_indices: list[int] | str | None = field(
        default=None,
        metadata={
            "help": "Train only these members, e.g. `3,4` (one job per member of a cluster job array sharing the "
            "run folder); each must depend on no untrained member (StarSSE members >= 1 once member 0 exists)."
        },
    )

    def __post_init__(self):
        self.member_indices = _parse_member_indices(self.member_indices, self.num_members)
        self._validate_ensemble_fields()
        super().__post_init__()

    def _validate_ensemble_fields(self) -> None:
        if self.ensemble_strategy not in ENSEMBLE_STRATEGIES:
            raise ValueError(
                f"`ensemble_strategy` should be one of {', '.join(ENSEMBLE_STRATEGIES)}, "
                f"got {self.ensemble_strategy!r}."
            )
        if not _is_int(self.num_members) or self.num_members < 1:
            raise ValueError(f"`num_members` should be a positive integer, got {self.num_members!r}.")
        if self.on_divergence not in DIVERGENCE_ACTIONS:
            raise ValueError(
                f"`on_divergence` should be one of {', '.join(DIVERGENCE_ACTIONS)}, got {self.on_divergence!r}."
            )
        for name in ("weight_decay_on_norm_and_bias", "reset_optimizer_each_cycle", "member_parallel"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` should be True or False, got {getattr(self, name)!r}.")
        if self.member_seeds is not None and not all(_is_int(s) for s in self.member_seeds):
            raise ValueError(f"`member_seeds` should be integers, got {self.member_seeds!r}.")
        scheduler = str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type))
        if scheduler != DEFAULT_LR_SCHEDULER:
            raise ValueError(
                f"`lr_scheduler_type` is not used by an ensemble run, got {scheduler!r}: the cyclic cosine schedule "
                "(first fine-tuning, then one cycle per member) is the method; set `warmup_steps` and the `cycle_*` "
                "fields instead."
            )
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` should be positive, got {self.learning_rate}.")
        if self.max_steps is not None and self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError(f"`num_train_epochs` should be positive, got {self.num_train_epochs}.")
        _exclusive(self, "cycle_learning_rate", "cycle_lr_ratio")
        _exclusive(self, "cycle_epochs", "cycle_steps", "cycle_epoch_ratio")
        for name in ("cycle_learning_rate", "cycle_lr_ratio", "cycle_epochs", "cycle_steps", "cycle_epoch_ratio"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"`{name}` should be positive, got {value}.")
        if self.cycle_steps is not None and (
            isinstance(self.cycle_steps, bool) or int(self.cycle_steps) != self.cycle_steps
        ):
            raise ValueError(f"`cycle_steps` should be an integer, got {self.cycle_steps}.")
        if self.cycle_warmup_steps < 0:
            raise ValueError(f"`cycle_warmup_steps` should be >= 0, got {self.cycle_warmup_steps}.")
        if self.member_seeds is not None:
            if len(self.member_seeds) != self.num_members:
                raise ValueError(
                    f"`member_seeds` should hold one seed per member ({self.num_members}), "
                    f"got {len(self.member_seeds)}."
                )
            if len(set(self.member_seeds)) != len(self.member_seeds) and self.ensemble_strategy != "global_de":
                raise ValueError(f"`member_seeds` should be distinct, got {self.member_seeds}.")
        if self.member_parallel and self.ensemble_strategy == "sse":
            raise ValueError(
                "`member_parallel` needs independent members (star_sse, local_de, global_de); SSE members are "
                "sequential by definition."
            )
        if self.first_member is not None:
            if self.ensemble_strategy not in ("sse", "star_sse"):
                raise ValueError(
                    f"`first_member` is only used by `ensemble_strategy` sse / star_sse (whose members 1.. start from "
                    f"member 0), got it with {self.ensemble_strategy!r}."
                )
            if not isinstance(self.first_member, str) or not self.first_member.strip():
                raise ValueError(f"`first_member` should be a folder or a Hub repo id, got {self.first_member!r}.")
        if self.ensemble_strategy == "global_de":
            if not self.pretrained_checkpoints:
                raise ValueError("`pretrained_checkpoints` is required for `ensemble_strategy='global_de'`.")
            if len(self.pretrained_checkpoints) != self.num_members:
                raise ValueError(
                    f"`pretrained_checkpoints` should list one checkpoint per member ({self.num_members}), got "
                    f"{len(self.pretrained_checkpoints)}."
                )
        elif self.pretrained_checkpoints:
            raise ValueError(
                f"`pretrained_checkpoints` is only used by `ensemble_strategy='global_de'`, got it with "
                f"{self.ensemble_strategy!r}."
            )

    # ----- resolved values --------------------------------------------------------------------------------------
    @property
    def seeds(self) -> list[int]:
        """The seed of each member."""
        return (
            list(self.member_seeds)
            if self.member_seeds is not None
            else [self.seed + i for i in range(self.num_members)]
        )

    @property
    def resolved_cycle_lr_ratio(self) -> float:
        """Cycle peak LR divided by `learning_rate`."""
        if self.cycle_learning_rate is not None:
            return self.cycle_learning_rate / self.learning_rate
        return 1.0 if self.cycle_lr_ratio is None else float(self.cycle_lr_ratio)

    def resolve_num_first_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the first fine-tuning, given the optimizer steps of one epoch."""
        if self.max_steps is not None and self.max_steps > 0:
            return int(self.max_steps)
        return max(1, math.ceil(self.num_train_epochs * steps_per_epoch))

    def resolve_num_cycle_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of one cycle, given the optimizer steps of one epoch."""
        if self.cycle_steps is not None:
            return int(self.cycle_steps)
        if self.cycle_epochs is not None:
            return max(1, math.ceil(self.cycle_epochs * steps_per_epoch))
        ratio = 1.0 if self.cycle_epoch_ratio is None else self.cycle_epoch_ratio
        return max(1, round(ratio * self.resolve_num_first_steps(steps_per_epoch)))

    @staticmethod
    def resolve_warmup(value: float, num_steps: int) -> int:
        """Warmup steps from a step count (>= 1) or a ratio (< 1) of `num_steps`, kept below `num_steps`."""
        steps = int(value) if value >= 1 else math.ceil(num_steps * value)
        return min(steps, num_steps - 1)

    def ensemble_hyperparameters(self) -> dict[str, Any]:
        """The settings that define the ensemble (recorded in the manifest and compared when a run resumes)."""
        return {
            "ensemble_strategy": self.ensemble_strategy,
            "num_members": self.num_members,
            "member_seeds": self.seeds,
            "learning_rate": self.learning_rate,
            "num_train_epochs": self.num_train_epochs,
            "max_steps": self.max_steps,
            "warmup_steps": self.warmup_steps,
            "cycle_lr_ratio": self.resolved_cycle_lr_ratio,
            "cycle_epochs": self.cycle_epochs,
            "cycle_steps": self.cycle_steps,
            "cycle_epoch_ratio": self.cycle_epoch_ratio,
            "cycle_warmup_steps": self.cycle_warmup_steps,
            "reset_optimizer_each_cycle": self.reset_optimizer_each_cycle,
            "pretrained_checkpoints": self.pretrained_checkpoints,
            "first_member": self.first_member,
            "optim": str(getattr(self.optim, "value", self.optim)),
            "weight_decay": self.weight_decay,
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "max_grad_norm": self.max_grad_norm,
            "weight_decay_on_norm_and_bias": self.weight_decay_on_norm_and_bias,
        }


def _parse_member_indices(value: list[int] | str | None, num_members: int) -> list[int] | None:
    """`"3,4"` / `[3, 4]` -> `[3, 4]`, checked: distinct integers in `[0, num_members)`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    try:
        indices = [int(item) for item in items if not isinstance(item, bool) and int(item) == float(item)]
    except (TypeError, ValueError):
        indices = []
    if len(indices) != len(items) or not indices:
        raise ValueError(f"`member_indices` should be member indices like `3,4`, got {value!r}.")
    bad = [i for i in indices if not 0 <= i < (num_members if isinstance(num_members, int) else 0)]
    if bad:
        raise ValueError(f"`member_indices` should be in [0, {num_members}) (`num_members`), got {bad[0]}.")
    if len(set(indices)) != len(indices):
        raise ValueError(f"`member_indices` should be distinct, got {value!r}.")
    return sorted(indices)


def _exclusive(args: EnsembleTrainingArguments, *names: str) -> None:
    given = [n for n in names if getattr(args, n) is not None]
    if len(given) > 1:
        raise ValueError(f"Set only one of {', '.join(f'`{n}`' for n in names)}; got {', '.join(given)}.")


def _is_int(value: Any) -> bool:
    """An integer that is not a bool (`True` is an `int` in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)
