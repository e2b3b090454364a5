"""The manifest of an ensemble run (`ensemble.json`): `EnsembleManifest` and `MemberRecord`. The layout itself (every
file and folder name of a run, reading and writing the manifest) belongs to `hf_starsse.run_folder`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .run_folder import CHECKPOINTS_DIR, MANIFEST_NAME, MEMBER_INFO_NAME, MEMBERS_DIR, RunFolder  # noqa: F401

FORMAT_VERSION = 1

logger = logging.getLogger(__name__)


def member_dir(run_dir: str | os.PathLike, index: int) -> Path:
    """The folder of member `index` in `run_dir` (see [`RunFolder.member_dir`])."""
    return RunFolder(run_dir).member_dir(index)


@dataclass
class MemberRecord:
    """What made one member, and how it scored.

    Args:
        index (`int`): Position in the ensemble (0-based).
        path (`str`): Folder of the member, relative to the run folder.
        seed (`int`): Seed of its head init (when it had a fresh head) and data order.
        parent (`int`, *optional*): Index of the member whose final weights it started from; `None` for members
            fine-tuned from a pre-trained checkpoint.
        init_from (`str`): The pre-trained checkpoint, or `member-<parent>`.
        learning_rate (`float`): Peak learning rate of its training phase.
        num_steps (`int`): Optimizer steps of its training phase.
        num_epochs (`float`): Epochs of its training phase.
        schedule_offset (`int`): Step of the whole-run cyclic schedule at which its phase starts.
        metrics (`dict`): Its own train / eval metrics.
        data_seed (`int`, *optional*): Seed of its data order, `hf_starsse.seeds.member_data_seed(seed, index)`.
        diverged (`dict`, *optional*): Set (step, learning rate, reason) when training diverged and the member was
            skipped (`on_divergence="skip"`); such a member has no weights and is left out of ensembles and soups.
        adopted_from (`dict`, *optional*): For a member taken as given (`first_member`): its `source`, the folder it
            `resolved` to and the `sha256` of its weights; it was not trained by this run.
        hyperparameters (`dict`): The run-defining settings it was trained under (checked when a member folder the
            manifest does not list is adopted on resume).
        fingerprints (`dict`): Base model, training data and labels it was trained from (see
            `hf_starsse.fingerprints`).
    """

    index: int
    path: str
    seed: int
    parent: int | None
    init_from: str
    learning_rate: float
    num_steps: int
    num_epochs: float
    schedule_offset: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    data_seed: int | None = None
    diverged: dict[str, Any] | None = None
    adopted_from: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemberRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class EnsembleManifest:
    """The manifest of a run: the strategy, the hyper-parameters that define it, and its finished members.

    Args:
        strategy (`str`): One of `local_de`, `global_de`, `sse`, `star_sse`.
        num_members (`int`): Planned ensemble size K.
        hyperparameters (`dict`): The run-defining settings (learning rates, lengths, seeds, ...).
        base_models (`list[str]`): Pre-trained checkpoint(s) the run started from.
        members (`list[MemberRecord]`): Finished members, in index order (an index rebuilt from the member folders).
        fingerprints (`dict`): Base model (name + revision or weights hash), training data (source, split, rows,
            features) and labels (`id2label`); resuming with others is refused (see `hf_starsse.fingerprints`).
    """

    strategy: str
    num_members: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    base_models: list[str] = field(default_factory=list)
    members: list[MemberRecord] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    library_version: str = ""
    fingerprints: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["members"] = [m.to_dict() for m in self.members]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnsembleManifest:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["members"] = [MemberRecord.from_dict(m) for m in data.get("members", [])]
        return cls(**kwargs)

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write `ensemble.json` into `run_dir` atomically ([`RunFolder.write_manifest`])."""
        return RunFolder(run_dir).write_manifest(self)

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> EnsembleManifest:
        """Read and check `run_dir/ensemble.json` (or the manifest path itself): [`RunFolder.read_manifest`]."""
        path = Path(run_dir)
        if path.name == MANIFEST_NAME and not path.is_dir():
            path = path.parent
        return RunFolder(path).read_manifest()

    def member_paths(self, run_dir: str | os.PathLike) -> list[Path]:
        """Absolute folders of the finished members, each checked to be a member folder inside the run."""
        return RunFolder(run_dir).member_paths(self)

    def usable(self, run_dir: str | os.PathLike, check_weights: bool = True) -> EnsembleManifest:
        """A copy holding only the members that can enter an ensemble, a soup or a push.

        Members recorded as diverged (`on_divergence="skip"`) are left out with a warning naming them. With
        `check_weights`, every other member's safetensors files are read once: a truncated file or non-finite weights
        raise a one-line `ValueError` naming the member and the file.
        """
        from .member_weights import check_finite_member, check_readable

        diverged = [m for m in self.members if m.diverged]
        for m in diverged:
            info = m.diverged or {}
            logger.warning(
                f"member {m.index} diverged during training (step {info.get('step')}, learning rate "
                f"{info.get('learning_rate')}): left out of the ensemble, soups and uploads."
            )
        kept = [m for m in self.members if not m.diverged]
        for record, folder in zip(kept, RunFolder(run_dir).member_paths(_with_members(self, kept))):
            if check_weights:
                check_finite_member(folder, f"member {record.index}")
            else:
                check_readable(folder)
        return _with_members(self, kept)


def _with_members(manifest: EnsembleManifest, members: list[MemberRecord]) -> EnsembleManifest:
    return dataclasses.replace(manifest, members=list(members))
