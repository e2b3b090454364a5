"""Member 0 taken as given (`first_member`): an already fine-tuned classifier that SSE / StarSSE cycles start from.

The checkpoint (a `save_pretrained` folder, or a Hub repo id resolved through the local Hub cache or a download) is
copied file by file into the run's `members/member-0/`, so the run stays self-contained and member 0's weights are
byte-identical to the source (same sha256, so the prediction cache shares its predictions with the source run).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .prediction_cache import file_sha256
from .run_folder import MEMBER_INFO_NAME

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Trainer state of the source run is not part of a member
_NOT_COPIED = {
    MEMBER_INFO_NAME,
    "training_args.bin",
    "trainer_state.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
}


def resolve_first_member(source: str | os.PathLike) -> Path:
    """The local folder of `first_member`: the folder itself, or the Hub snapshot of a repo id (one-line errors)."""
    path = Path(source)
    if not path.exists():
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(str(source), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.md"]))
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"`first_member` {str(source)!r} is neither a folder nor a reachable Hub repo: {first}"
            ) from None
    if not path.is_dir():
        raise ValueError(f"`first_member` should be a `save_pretrained` folder or a Hub repo id, got the file {path}.")
    if not (path / SAFE_WEIGHTS_NAME).is_file() and not (path / SAFE_WEIGHTS_INDEX_NAME).is_file():
        raise ValueError(f"`first_member` {path} holds no safetensors weights ({SAFE_WEIGHTS_NAME}).")
    if not (path / "config.json").is_file():
        raise ValueError(f"`first_member` {path} holds no config.json.")
    return path


def weights_fingerprint(folder: Path) -> str:
    """sha256 of the safetensors weights (of the sorted shard digests for a sharded checkpoint)."""
    if (folder / SAFE_WEIGHTS_NAME).is_file():
        return file_sha256(folder / SAFE_WEIGHTS_NAME)
    index = json.loads((folder / SAFE_WEIGHTS_INDEX_NAME).read_text(encoding="utf-8"))
    shards = sorted(set(index["weight_map"].values()))
    return file_sha256_of_text("\n".join(f"{s} {file_sha256(folder / s)}" for s in shards))


def file_sha256_of_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def copy_first_member(source: str | os.PathLike, target: Path) -> dict[str, Any]:
    """Copy the checkpoint's files into `target` (a member folder being written); returns what member.json records
    under `adopted_from`: the source as given, the folder it resolved to and the sha256 of its weights."""
    folder = resolve_first_member(source)
    for child in sorted(folder.iterdir()):
        if child.is_file() and child.name not in _NOT_COPIED:
            shutil.copyfile(child, target / child.name)  # follows Hub-cache symlinks: real files in the run
    fingerprint = weights_fingerprint(target)
    if fingerprint != weights_fingerprint(folder):
        raise ValueError(f"`first_member`: the copy of {folder} in {target} differs from the source.")
    return {"source": str(source), "resolved": str(folder), "sha256": fingerprint}


def adopt_first_member(trainer: Any, plan: Any, output: Any) -> Any:
    """`EnsembleTrainer`'s member 0 when `first_member` is set: copy it into `members/member-0` (main process),
    record it in member.json and the index (`adopted_from`, `num_steps: 0`) and keep its weights in memory as the
    parent state of the cycles. Returns its `MemberRecord`."""
    from .ensemble_trainer import logger
    from .file_utils import atomic_directory, atomic_write_json
    from .manifest import MemberRecord
    from .run_folder import RunFolder, member_name

    run = RunFolder(trainer._run_output_dir)
    record = trainer._member_record(plan, {})
    record.init_from, record.num_steps, record.num_epochs = trainer.args.first_member, 0, 0.0
    if trainer.args.should_save:
        with atomic_directory(run.member_dir(0)) as tmp:
            record.adopted_from = copy_first_member(trainer.args.first_member, tmp)
            if trainer.processing_class is not None and not (tmp / "preprocessor_config.json").is_file():
                trainer.processing_class.save_pretrained(tmp)
            atomic_write_json(tmp / run.member_info_path(0).name, record.to_dict())
        output.manifest = run.rebuild_index(trainer._header)
    trainer.accelerator.wait_for_everyone()
    record = MemberRecord.from_dict(json.loads(run.member_info_path(0).read_text()))
    if not trainer.args.should_save:
        output.manifest.members = sorted([*output.manifest.members, record], key=lambda m: m.index)
    trainer._fresh_model_for_member0 = False
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainer._parent_states = {0: type(model).from_pretrained(run.member_dir(0)).state_dict()}
    logger.info(f"member 0: taken from {trainer.args.first_member} (sha256 {record.adopted_from['sha256'][:12]})")
    if trainer.args.should_log:
        source = trainer.args.first_member
        print(f"[hf_starsse] {member_name(0)} of {trainer.args.num_members}: taken as given from {source}")
    return record
