"""`EnsembleTrainer`: a `transformers.Trainer` whose `train()` produces a whole ensemble.

Every member is one training phase of the underlying `Trainer` (fresh optimizer, the phase's slice of the run's
cyclic schedule, the member's seed). Finished members are written atomically to their member folder of the run
([`RunFolder`]) and indexed in its manifest; running the same command again resumes after the finished members.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer
from transformers.trainer_utils import get_last_checkpoint, set_seed

from .architecture import check_same_architecture
from .divergence import (
    MemberDivergedError,
    check_parent_usable,
    raise_if_nonfinite_loss,
    raise_if_nonfinite_weights,
    write_diverged_member,
)
from .ensemble_config import EnsembleTrainingArguments
from .ensemble_plan import MemberPlan, SchedulePlan, plan_members, plan_schedule
from .ensemble_run import open_run, run_header, save_checkpoint_atomically, select_members
from .file_utils import atomic_directory, atomic_write_json, crash_point
from .fingerprints import checkpoint_fingerprint, data_fingerprint, labels_fingerprint, model_fingerprint
from .manifest import EnsembleManifest, MemberRecord
from .member_overhead import without_full_gc_on_cpu
from .quiet_loading import expected_new_head
from .run_folder import RunFolder, member_name
from .training_checks import (
    check_output_dir_writable,
    check_train_dataset,
    is_write_error,
    warn_small_batchnorm_tail,
    write_error,
)

logger = logging.getLogger(__name__)


@dataclass
class EnsembleTrainOutput:
    """What `EnsembleTrainer.train()` returns.

    Args:
        run_dir (`str`): The run folder.
        manifest (`EnsembleManifest`): The manifest after training.
        trained (`list[int]`): Members trained by this call.
        skipped (`list[int]`): Members already finished on disk (resumed run).
        adopted (`list[int]`): Members taken as given by this call (`first_member`), not trained.
        metrics (`dict`): Per-member train metrics of this call, keyed `member-<i>`.
    """

    run_dir: str
    manifest: EnsembleManifest
    trained: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    adopted: list[int] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


class EnsembleTrainer(Trainer):
    r"""
    Trainer for Local DE, Global DE, SSE and StarSSE ensembles of a `PreTrainedModel` classifier.

    Args:
        model (`PreTrainedModel`, *optional*):
            The model to fine-tune as member 0 (SSE / StarSSE). Local DE and Global DE need `model_init` instead, so
            that every member gets its own seeded head.
        args (`EnsembleTrainingArguments`):
            The ensemble's arguments.
        model_init (`Callable`, *optional*):
            Builds a fresh model from the pre-trained checkpoint; called after seeding with the member's seed, so a
            new classifier head is initialised per member. Takes no argument, or, for Global DE, the checkpoint to
            load (`model_init(checkpoint)`).
        train_data_info (`dict`, *optional*):
            What the training data is (`source`, `split`, `fingerprint`, ...), recorded in the manifest's data
            fingerprint instead of what `train_dataset` tells (see [`hf_starsse.fingerprints.data_fingerprint`]).
        **kwargs:
            Everything else a `Trainer` takes (`train_dataset`, `eval_dataset`, `processing_class`, `data_collator`,
            `compute_metrics`, `callbacks`, ...).
    """

    def __init__(
        self,
        model: PreTrainedModel | torch.nn.Module | None = None,
        args: EnsembleTrainingArguments | None = None,
        model_init: Callable[..., PreTrainedModel] | None = None,
        train_data_info: dict[str, Any] | None = None,
        **kwargs,
    ):
        if not isinstance(args, EnsembleTrainingArguments):
            raise TypeError(f"`args` should be an `EnsembleTrainingArguments`, got {type(args).__name__}.")
        strategy = args.ensemble_strategy
        if model_init is None and model is None and args.first_member is not None:
            from transformers import AutoModelForImageClassification

            from .first_member import resolve_first_member

            model = AutoModelForImageClassification.from_pretrained(resolve_first_member(args.first_member))
        if model_init is None and model is None:
            raise ValueError("`EnsembleTrainer` needs `model_init` (or, for SSE / StarSSE, `model`).")
        if model_init is None and strategy in ("local_de", "global_de"):
            raise ValueError(
                f"`model_init` is required for `ensemble_strategy={strategy!r}`: each member is a fresh fine-tuning "
                "with its own seeded head, which a single `model` cannot give."
            )
        if strategy == "global_de":
            if len(inspect.signature(model_init).parameters) < 1:
                raise ValueError("`model_init` should take the checkpoint to load as its argument for Global DE.")
            check_same_architecture(args.pretrained_checkpoints, field="pretrained_checkpoints")
        self._member_init = model_init
        if model is None:
            set_seed(args.seeds[0])
            model = self._init_model(args.pretrained_checkpoints[0] if strategy == "global_de" else None)
        self._base_model_name = _model_name(model) if strategy != "global_de" else args.pretrained_checkpoints[0]
        self._base_model_fingerprint = (
            model_fingerprint(model)
            if strategy != "global_de"
            else [checkpoint_fingerprint(c) for c in args.pretrained_checkpoints]
        )
        self._labels_fingerprint = labels_fingerprint(model)
        self.train_data_info = train_data_info
        # `push_to_hub` publishes the whole run once at the end (hf_starsse.hub), not each member's checkpoints
        self._push_run_at_end = bool(args.push_to_hub)
        args.push_to_hub = False
        if args.should_save:
            check_output_dir_writable(args.output_dir)  # the Trainer creates it: one line instead of its traceback
        super().__init__(model=model, args=args, **kwargs)
        self._fresh_model_for_member0 = True
        self._phase: MemberPlan | None = None
        self._schedule: SchedulePlan | None = None
        self._parent_states: dict[int, dict[str, torch.Tensor]] = {}
        self._optimizer_states: dict[int, dict] = {}
        self._pending_optimizer_state: dict | None = None
        self._run_output_dir = args.output_dir  # `args.output_dir` points at a member's checkpoints while it trains

    # ----- plan ------------------------------------------------------------------------------------------------
    def optimizer_steps_per_epoch(self) -> int:
        """Optimizer steps of one epoch of the training data loader (per process)."""
        num_batches = len(self.get_train_dataloader())
        accum = self.args.gradient_accumulation_steps
        return num_batches // accum + int(num_batches % accum > 0)

    def plan(self) -> list[MemberPlan]:
        """The phase of every member (parents, seeds, steps, LRs), computed from the data and the arguments."""
        steps = self.optimizer_steps_per_epoch()
        self._schedule = plan_schedule(self.args, steps)
        return plan_members(self.args, steps, base_model=self._base_model_name)

    # ----- the ensemble loop -----------------------------------------------------------------------------------
    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs,
    ) -> EnsembleTrainOutput:
        """Train every member that is not finished on disk yet.

        Args:
            resume_from_checkpoint (`bool` or `str`, *optional*):
                `True` resumes the first unfinished member from its last Trainer checkpoint in
                `output_dir/checkpoints/member-<i>/` (finished members are always kept and skipped).

        Returns:
            [`EnsembleTrainOutput`]
        """
        args = self.args
        run = RunFolder(args.output_dir)
        self._run_output_dir = str(run.root)
        check_train_dataset(self.train_dataset)
        if args.should_save:
            check_output_dir_writable(run.root)
        plans = self.plan()
        warn_small_batchnorm_tail(self)
        with run.writing():  # recovers what killed writers left; marks this process as a writer of the run
            self._header = self._run_header()
            manifest = open_run(run, self._header, plans, write=args.should_save)
            finished = {m.index for m in manifest.members}
            todo = select_members(args, plans, finished, run)
            output = EnsembleTrainOutput(run_dir=str(run.root), manifest=manifest)
            selected = set(args.member_indices) if args.member_indices is not None else {p.index for p in plans}
            output.skipped = sorted(finished & selected)
            for index in output.skipped:
                logger.info(f"{member_name(index)} of {args.num_members}: finished on disk, kept as is.")
            self.accelerator.wait_for_everyone()
            parallel = args.member_parallel and args.world_size > 1
            for plan in todo:
                if plan.index == 0 and args.first_member is not None:  # member 0 is given: copied, not trained
                    self._adopt_first_member(plan, output)
                    output.adopted.append(0)
                    continue
                if parallel and self._is_independent(plan):
                    continue  # trained below, by the process it is assigned to
                check_parent_usable(plan, output.manifest)
                _log_progress(args, plan)
                with self._member_lock(run, plan.index):
                    if args.world_size == 1 and run.member_info_path(plan.index).is_file():
                        output.skipped.append(plan.index)  # finished by another job since this one started
                        continue
                    record = self._train_and_save_member(
                        plan, output, resume_from_checkpoint, trial, ignore_keys_for_eval
                    )
                if isinstance(resume_from_checkpoint, str):
                    resume_from_checkpoint = None  # a checkpoint path belongs to the first member trained by this call
                output.trained.append(plan.index)
                _log_member_done(args, record)
                output.metrics[member_name(plan.index)] = record.metrics
            if parallel:
                self._train_members_in_parallel([p for p in todo if self._is_independent(p)], output)
        self._phase = None
        if self._push_run_at_end:
            self._push_run(run.root)
        return output

    def _member_lock(self, run: RunFolder, index: int):
        """The member's lock on the process that saves (one job trains a member at a time)."""
        return run.member_lock(index) if self.args.should_save else contextlib.nullcontext()

    def _run_header(self) -> EnsembleManifest:
        args = self.args
        base_models = (
            list(args.pretrained_checkpoints) if args.ensemble_strategy == "global_de" else [self._base_model_name]
        )
        fingerprints = {
            "base_model": self._base_model_fingerprint,
            "train_data": data_fingerprint(self.train_dataset, self.train_data_info),
            "labels": self._labels_fingerprint,
        }
        return run_header(args, _jsonable(args.ensemble_hyperparameters()), base_models, fingerprints)

    def _push_run(self, run_dir: Path) -> None:
        from .hub import push_run_if_requested

        self.args.push_to_hub = True
        try:
            push_run_if_requested(self.args, run_dir)
        finally:
            self.args.push_to_hub = False
        self.accelerator.wait_for_everyone()

    def _train_member(self, plan: MemberPlan, resume_from_checkpoint, trial, ignore_keys_for_eval) -> dict:
        args = self.args
        set_seed(plan.seed)
        self._load_member_start(plan)
        self._phase = plan
        self.optimizer, self.lr_scheduler = None, None
        self.model_wrapped = self.model
        self._pending_optimizer_state = None
        if plan.is_cycle and not args.reset_optimizer_each_cycle:
            self._pending_optimizer_state = self._optimizer_states.get(plan.parent)
            if self._pending_optimizer_state is None:
                logger.warning(f"member {plan.index}: parent's optimizer state is not in memory; starting it fresh.")
        # each member: its own data order (epoch e: `plan.data_seed + e`), its own length and Trainer checkpoint folder
        self.accelerator.dataloader_config.data_seed = plan.data_seed
        saved = {k: getattr(args, k) for k in ("seed", "max_steps", "output_dir")}
        checkpoint_dir = str(RunFolder(self._run_output_dir).member_checkpoints_dir(plan.index))
        try:
            args.seed, args.max_steps, args.output_dir = plan.seed, plan.num_steps, checkpoint_dir
            resume = resume_from_checkpoint
            if resume is True:
                resume = get_last_checkpoint(checkpoint_dir) if os.path.isdir(checkpoint_dir) else None
            if resume:
                _log_resume(args, plan, resume)
            with without_full_gc_on_cpu(self.accelerator, self.args.device):
                result = super().train(
                    resume_from_checkpoint=resume, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
                )
            metrics = dict(result.metrics)
            if args.evaluate_members and self.eval_dataset is not None:
                metrics.update(self.evaluate(ignore_keys=ignore_keys_for_eval))
        finally:
            for k, v in saved.items():
                setattr(args, k, v)
        if not args.reset_optimizer_each_cycle and self._keeps_parent_state(plan.index):
            self._optimizer_states = {plan.index: _to_cpu(self.optimizer.state_dict())}
        return metrics

    def _train_and_save_member(
        self, plan: MemberPlan, output: EnsembleTrainOutput, resume_from_checkpoint, trial, ignore_keys_for_eval
    ) -> MemberRecord:
        """Train one member and save it; a divergence stops the run or is recorded (`on_divergence`), a write error
        becomes one line naming the member folder."""
        try:
            metrics = self._train_member(plan, resume_from_checkpoint, trial, ignore_keys_for_eval)
            return self._save_member(plan, metrics, output)
        except MemberDivergedError as err:
            if self.args.on_divergence == "stop":
                raise
            record = self._record_diverged_member(plan, err, output, write=self.args.should_save)
            self.accelerator.wait_for_everyone()
            return record
        except Exception as err:
            if is_write_error(err):
                folder = RunFolder(self._run_output_dir).member_dir(plan.index)
                raise write_error(err, f"member {plan.index} into {folder}") from err
            raise

    def _is_independent(self, plan: MemberPlan) -> bool:
        """Members that depend on no other member still to be trained (they can train in parallel)."""
        return self.args.ensemble_strategy in ("local_de", "global_de") or (
            self.args.ensemble_strategy == "star_sse" and plan.parent == 0
        )

    def _train_members_in_parallel(self, pending: list[MemberPlan], output: EnsembleTrainOutput) -> None:
        """Each process trains and writes its own members (round-robin), each followed by an index rebuild."""
        from accelerate.utils import gather_object

        from .member_parallel import assign_members, save_pretrained_on_this_process, train_member_locally

        args, run = self.args, RunFolder(self._run_output_dir)
        self.model_wrapped = self.model  # drop the data-parallel wrapper of the previous phase (and its hooks)
        self.accelerator.free_memory()
        mine = assign_members([p.index for p in pending], args.world_size, args.process_index)
        failures: list[dict] = []
        for plan in pending:
            if plan.index not in mine or failures:  # after a divergence with `on_divergence="stop"`: no more
                continue
            _log_progress(args, plan, force=True)
            with run.member_lock(plan.index):
                set_seed(plan.seed)
                self._load_member_start(plan)
                try:
                    metrics = train_member_locally(self, self.model, plan, self._schedule)
                except MemberDivergedError as err:
                    if args.on_divergence == "stop":
                        failures.append(err.fields())
                    else:
                        self._record_diverged_member(plan, err, output, write=True)
                        output.trained.append(plan.index)
                    continue
                metrics.update({"process_index": args.process_index, "world_size": args.world_size})
                record = self._member_record(plan, metrics)
                with atomic_directory(run.member_dir(plan.index)) as tmp:
                    save_pretrained_on_this_process(self.model, tmp)
                    if self.processing_class is not None:
                        self.processing_class.save_pretrained(tmp)
                    atomic_write_json(tmp / run.member_info_path(plan.index).name, record.to_dict())
                crash_point("member_renamed")
                run.rebuild_index(self._header)
            output.trained.append(plan.index)
            output.metrics[member_name(plan.index)] = record.metrics
            _log_member_done(args, record, force=True)
        self.accelerator.wait_for_everyone()
        output.manifest = run.read_manifest()
        failures = gather_object(failures) if args.world_size > 1 else failures
        self.accelerator.wait_for_everyone()
        if failures:
            raise MemberDivergedError(**min(failures, key=lambda f: f["member"]))

    def _adopt_first_member(self, plan: MemberPlan, output: EnsembleTrainOutput) -> MemberRecord:
        """Copy `args.first_member` into `members/member-0` and record it (source, sha256); nothing is trained."""
        from .first_member import adopt_first_member

        return adopt_first_member(self, plan, output)

    def _load_member_start(self, plan: MemberPlan) -> None:
        """Put the member's starting weights into `self.model`."""
        if plan.parent is None:
            if plan.index == 0 and self._fresh_model_for_member0:
                pass  # the model built in __init__ (seeded with member 0's seed, or the user's `model`)
            else:
                self.model = self._init_model(plan.init_from if self.args.ensemble_strategy == "global_de" else None)
                if self.place_model_on_device:
                    self._move_model_to_device(self.model, self.args.device)
            self._fresh_model_for_member0 = False
            return
        self._fresh_model_for_member0 = False
        model = self.accelerator.unwrap_model(self.model)
        state = self._parent_states.get(plan.parent)
        if state is None:  # resumed run: the parent is on disk (from_pretrained maps saved key names back)
            parent_dir = RunFolder(self._run_output_dir).member_dir(plan.parent)
            state = type(model).from_pretrained(parent_dir).state_dict()
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not _is_tied(model, k)]:
            raise ValueError(
                f"member {plan.index}: the weights of member {plan.parent} do not fit the model "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})."
            )

    def _init_model(self, checkpoint: str | None) -> PreTrainedModel:
        init = self._member_init
        with expected_new_head():  # the fresh head's size-mismatch report is expected: not printed per member
            model = init(checkpoint) if checkpoint is not None else init()
        if model is None:
            raise ValueError("`model_init` returned None.")
        return model

    # ----- schedule and optimizer --------------------------------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self._phase is None or self._schedule is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            optimizer = optimizer if optimizer is not None else self.optimizer
            self.lr_scheduler = self._schedule.create_scheduler(optimizer, step_offset=self._phase.schedule_offset)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        """All parameters if `weight_decay_on_norm_and_bias` (the authors' plain SGD), else the Trainer's grouping."""
        if self.args.weight_decay_on_norm_and_bias:
            return [name for name, _ in model.named_parameters()]
        return super().get_decay_parameter_names(model)

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        """The `Trainer`'s step, then a check that the loss is finite (see `hf_starsse.divergence` for the cost)."""
        if self._phase is not None:
            crash_point(
                f"train_step-member-{self._phase.index}-after-{self.state.global_step}"
            )  # tests: kill at a step
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._phase is not None:
            raise_if_nonfinite_loss(self, loss, self._phase)
        crash_point("member_step")  # tests: kill during a member's training (`member_step:<n>`: the n-th step)
        return loss

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self._pending_optimizer_state is not None:
            optimizer.load_state_dict(self._pending_optimizer_state)
            self._pending_optimizer_state = None
        return optimizer

    # ----- saving ------------------------------------------------------------------------------------------------
    def _save_member(self, plan: MemberPlan, metrics: dict, output: EnsembleTrainOutput) -> MemberRecord:
        """Rename the member's folder into place, then rebuild the index from the member folders."""
        run = RunFolder(self._run_output_dir)
        record = self._member_record(plan, metrics)
        state_dict = self.accelerator.get_state_dict(self.model_wrapped)  # collective under FSDP / DeepSpeed
        raise_if_nonfinite_weights(self, self.accelerator.unwrap_model(self.model).state_dict(), plan)
        if self._keeps_parent_state(plan.index):
            self._parent_states = {plan.index: _to_cpu(self.accelerator.unwrap_model(self.model).state_dict())}
        if self.args.should_save:
            model = self.accelerator.unwrap_model(self.model)
            with atomic_directory(run.member_dir(plan.index)) as tmp:
                model.save_pretrained(tmp, state_dict=state_dict)
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(tmp)
                atomic_write_json(tmp / run.member_info_path(plan.index).name, record.to_dict())
            crash_point("member_renamed")
            output.manifest = run.rebuild_index(self._header)
            shutil.rmtree(run.member_checkpoints_dir(plan.index), ignore_errors=True)
        else:
            output.manifest.members = sorted([*output.manifest.members, record], key=lambda m: m.index)
        self.accelerator.wait_for_everyone()
        logger.info(f"member {plan.index}: saved to {run.member_dir(plan.index)}")
        return record

    def _record_diverged_member(
        self, plan: MemberPlan, err: MemberDivergedError, output: EnsembleTrainOutput, write: bool
    ) -> MemberRecord:
        """`on_divergence="skip"`: record the member as diverged (its folder holds only `member.json`)."""
        run = RunFolder(self._run_output_dir)
        record = self._member_record(plan, {})
        record.diverged = err.info()
        logger.warning(f"{err} Recorded as diverged (`on_divergence='skip'`).")
        if write:
            write_diverged_member(run.root, record)
            shutil.rmtree(run.member_checkpoints_dir(plan.index), ignore_errors=True)
            output.manifest = run.rebuild_index(self._header)
        else:
            output.manifest.members = sorted([*output.manifest.members, record], key=lambda m: m.index)
        return record

    def _member_record(self, plan: MemberPlan, metrics: dict) -> MemberRecord:
        return MemberRecord(
            index=plan.index,
            path=RunFolder(self._run_output_dir).member_relpath(plan.index),
            seed=plan.seed,
            data_seed=plan.data_seed,
            parent=plan.parent,
            init_from=plan.init_from,
            learning_rate=plan.peak_learning_rate,
            num_steps=plan.num_steps,
            num_epochs=plan.num_epochs,
            schedule_offset=plan.schedule_offset,
            metrics=_jsonable(metrics),
            hyperparameters=self._header.hyperparameters,
            fingerprints=self._header.fingerprints,
        )

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written into a temporary folder and renamed into place: a checkpoint folder
        exists complete or not at all, so `resume_from_checkpoint=True` never picks a half-written one."""
        if self._phase is None:
            return super()._save_checkpoint(model, trial)
        run = RunFolder(self._run_output_dir)
        save_checkpoint_atomically(
            self, run, self._phase.index, lambda: super(EnsembleTrainer, self)._save_checkpoint(model, trial)
        )

    def _keeps_parent_state(self, index: int) -> bool:
        strategy = self.args.ensemble_strategy
        return (strategy == "star_sse" and index == 0) or strategy == "sse"


def _model_name(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or type(model).__name__


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    tied = getattr(model, "_tied_weights_keys", None) or []
    return any(key.endswith(t) or t in key for t in (tied if isinstance(tied, (list, tuple)) else list(tied)))


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


def _jsonable(data: dict) -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (str, int, float, bool)) or x is None else str(x) for x in v]
        elif hasattr(v, "item"):
            out[k] = v.item()
        else:
            out[k] = str(v)
    return out


def _log_member_done(args: EnsembleTrainingArguments, record: MemberRecord, force: bool = False) -> None:
    shown = {k: v for k, v in record.metrics.items() if k in ("train_loss", "train_runtime") or k.startswith("eval_")}
    shown = {k: v for k, v in shown.items() if "per_second" not in k}
    message = f"[hf_starsse] member-{record.index} of {args.num_members} saved: " + ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()
    )
    logger.info(message)
    if args.should_log or force:
        print(message if not force else f"[process {args.process_index}] {message}", flush=True)


def _log_resume(args: EnsembleTrainingArguments, plan: MemberPlan, checkpoint: str) -> None:
    state = Path(checkpoint) / "trainer_state.json"
    step = json.loads(state.read_text()).get("global_step", "?") if state.is_file() else "?"
    message = (
        f"[hf_starsse] member-{plan.index}: resuming from {Path(checkpoint).name} (step {step} of {plan.num_steps})"
    )
    logger.info(message)
    if args.should_log:
        print(message, flush=True)


def _log_progress(args: EnsembleTrainingArguments, plan: MemberPlan, force: bool = False) -> None:
    message = (
        f"[hf_starsse] {args.ensemble_strategy} member-{plan.index} of {args.num_members}: from {plan.init_from}, "
        f"seed {plan.seed}, {plan.num_steps} steps ({plan.num_epochs:.2g} epochs), "
        f"peak LR {plan.peak_learning_rate:.3g}"
    )
    logger.info(message)
    if args.should_log or force:
        print(message if not force else f"[process {args.process_index}] {message}", flush=True)
