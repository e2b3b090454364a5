"""Opening a run folder for training: the manifest header, resume checks, adoption of member folders and the choice of
the members this process trains (`member_indices`).

A member exists iff its folder `members/member-<i>/` (with `member.json`) was renamed into place; `ensemble.json` is an
index rebuilt from those folders ([`RunFolder.rebuild_index`]). A member folder the index does not list (a kill
between the rename and the index update, or another job's member) is adopted when its `member.json` matches the plan.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from transformers.trainer_utils import rotate_checkpoints

from . import __version__
from .ensemble_config import EnsembleTrainingArguments
from .ensemble_plan import MemberPlan
from .file_utils import crash_point
from .fingerprints import FIELD_HINTS, fingerprint_differences
from .manifest import EnsembleManifest
from .run_folder import MANIFEST_NAME, RunFolder, replace_directory


def run_header(
    args: EnsembleTrainingArguments, hyperparameters: dict, base_models: list[str], fingerprints: dict[str, Any]
) -> EnsembleManifest:
    """The manifest of a run without its members (they come from the member folders)."""
    return EnsembleManifest(
        strategy=args.ensemble_strategy,
        num_members=args.num_members,
        hyperparameters=hyperparameters,
        base_models=base_models,
        library_version=__version__,
        fingerprints=fingerprints,
    )


def open_run(run: RunFolder, header: EnsembleManifest, plans: list[MemberPlan], write: bool) -> EnsembleManifest:
    """Check that the run on disk (if any) is the run `header` describes, adopt its member folders and (when `write`)
    rewrite the index; all under the run's lock. Returns the manifest listing every finished member.

    Raises:
        `ValueError`: one line, before any training, when the run on disk has other settings, another base model,
        data or labels, or a member folder that does not match the plan (naming what differs).
    """
    with run.lock():
        listed: set[int] = set()
        if run.exists():
            on_disk = run.read_manifest()
            check_same_run(run, on_disk, header)
            listed = {m.index for m in on_disk.members}
        by_index = {p.index: p for p in plans}
        for index, data in sorted(run.scan_members().items()):
            check_member_matches(run, data, by_index.get(index), header, trusted=index in listed)
        if write:
            return run.rebuild_index(header)
        from .manifest import MemberRecord

        members = [MemberRecord.from_dict(d) for _, d in sorted(run.scan_members().items())]
        return EnsembleManifest.from_dict({**header.to_dict(), "members": [m.to_dict() for m in members]})


def check_same_run(run: RunFolder, on_disk: EnsembleManifest, header: EnsembleManifest) -> None:
    """Refuse to resume a run recorded with other settings, base model, data or labels (one line naming the field)."""
    hparams = header.hyperparameters
    diff = [k for k in hparams if on_disk.hyperparameters.get(k) != hparams[k]]
    if diff:
        details = ", ".join(f"`{k}`: {on_disk.hyperparameters.get(k)!r} on disk vs {hparams[k]!r}" for k in diff)
        raise ValueError(
            f"`output_dir` {run.root} holds a run with other settings ({details}); use another `output_dir` "
            "or the same settings to resume it."
        )
    differences = fingerprint_differences(on_disk.fingerprints, header.fingerprints)
    if differences:
        field = differences[0].split("`")[1].split(".")[0].split("[")[0]
        raise ValueError(
            f"`output_dir` {run.root} holds a run trained with another {FIELD_HINTS[field]} "
            f"({'; '.join(differences)}); use another `output_dir` or the same model, data and labels to resume it."
        )


def check_member_matches(
    run: RunFolder, data: dict, plan: MemberPlan | None, header: EnsembleManifest, trusted: bool
) -> None:
    """Check a member folder's `member.json` against its plan (index, seed, parent, steps, LR, hyper-parameters,
    fingerprints). `trusted`: listed by the index already (a run written before member records held their settings)."""
    where = f"{run.member_info_path(data['index'])}"
    if plan is None:
        raise ValueError(f"{where}: member {data['index']} is not in this run's plan ({header.num_members} members).")
    expected = {
        "seed": plan.seed,
        "parent": plan.parent,
        # a member 0 taken as given (`first_member`) was not trained by this run: it records 0 steps
        "num_steps": 0 if plan.index == 0 and data.get("adopted_from") else plan.num_steps,
        "schedule_offset": plan.schedule_offset,
        "learning_rate": plan.peak_learning_rate,
    }
    differences = [
        f"`{k}`: {data.get(k)!r} in the folder vs {v!r} planned" for k, v in expected.items() if data.get(k) != v
    ]
    recorded = data.get("hyperparameters") or {}
    if not recorded and not trusted:
        raise ValueError(
            f"{where}: member {plan.index} is not listed in {MANIFEST_NAME} and records no settings to check it "
            "against this run; move it away or train it again."
        )
    differences += [
        f"`{k}`: {recorded.get(k)!r} in the folder vs {v!r} planned"
        for k, v in header.hyperparameters.items()
        if recorded and recorded.get(k) != v
    ]
    differences += [
        d.replace(" on disk vs ", " in the folder vs ")
        for d in fingerprint_differences(data.get("fingerprints") or {}, header.fingerprints)
    ]
    if differences:
        raise ValueError(
            f"{where}: the finished member {plan.index} does not match this run ({'; '.join(differences)}); use "
            "another `output_dir` or the settings it was trained with."
        )


def select_members(
    args: EnsembleTrainingArguments, plans: list[MemberPlan], finished: set[int], run: RunFolder
) -> list[MemberPlan]:
    """The members this process trains, in order: every unfinished one, or those of `member_indices`, each checked to
    depend on no member that is neither finished nor trained before it by this process."""
    if args.member_indices is None:
        return [p for p in plans if p.index not in finished]
    chosen = [p for p in plans if p.index in args.member_indices and p.index not in finished]
    trained_here = {p.index for p in chosen}
    for plan in chosen:
        if plan.parent is None or plan.parent in finished:
            if plan.parent is not None and not args.reset_optimizer_each_cycle:
                raise ValueError(
                    f"`member_indices`: member {plan.index} continues member {plan.parent}'s optimizer state "
                    "(`reset_optimizer_each_cycle=False`), which is not saved; train them in one process."
                )
            continue
        if plan.parent not in trained_here:
            raise ValueError(
                f"`member_indices`: member {plan.index} starts from member {plan.parent}, which is neither finished "
                f"in {run.root} nor in `member_indices`; train member {plan.parent} first."
            )
    return chosen


def save_checkpoint_atomically(trainer: Any, run: RunFolder, index: int, save: Callable[[], None]) -> None:
    """Run the Trainer's `_save_checkpoint` (`save`) into `.checkpoint-<step>.tmp/` and rename the checkpoint into
    `checkpoints/member-<index>/checkpoint-<step>` (crash point `checkpoint_save` in between), then rotate."""
    args, step = trainer.args, trainer.state.global_step
    staging, final, member_checkpoints = (
        run.checkpoint_staging_dir(index, step),
        run.checkpoint_dir(index, step),
        args.output_dir,
    )
    if args.should_save:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    args.output_dir = str(staging)  # the Trainer writes `staging/checkpoint-<step>` (every process: its RNG state)
    try:
        save()
    finally:
        args.output_dir = member_checkpoints
    trainer.accelerator.wait_for_everyone()
    if args.should_save:
        crash_point("checkpoint_save")
        replace_directory(staging / final.name, final)
        shutil.rmtree(staging, ignore_errors=True)
        rotate_checkpoints(
            output_dir=member_checkpoints,
            save_total_limit=args.save_total_limit,
            best_model_checkpoint=trainer.state.best_model_checkpoint,
            use_mtime=False,
        )
    trainer.accelerator.wait_for_everyone()
