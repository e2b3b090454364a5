"""The run folder: the one module that names every file and folder of an hf_starsse run.

```
<run>/
    ensemble.json                 # the manifest: an index of the finished members, rebuilt from their folders
    .ensemble.lock                # file lock held while the index is rewritten (several processes / jobs)
    .writers.lock                 # shared lock held by every process writing into the run (see `RunFolder.writing`)
    members/member-<i>/           # a member exists iff this folder (with member.json) was renamed into place
        member.json               # its MemberRecord (seed, parent, LR facts, fingerprints, metrics)
        config.json, model.safetensors, preprocessor_config.json, ...
    checkpoints/member-<i>/       # Trainer checkpoints while member i trains (resumable), removed once it is saved
        checkpoint-<step>/        # a checkpoint exists iff renamed into place from `.checkpoint-<step>.tmp/`
    checkpoints/member-<i>.lock   # held by the process (job) training member i
    eval_data/                    # held-out data saved with the run (the demo's raw test images)
    eval/                         # `hf-starsse evaluate`: eval.json, eval.md and the plots (*.png)
    soups/uniform/, soups/greedy/ # BatchNorm-recalibrated soups written by `hf-starsse evaluate`
    predictions/                  # prediction cache: class probabilities per (weights hash, data fingerprint)
    launch.json                   # `hf-starsse train`: processes of the launch and which saved
    demo_results.json             # `hf-starsse demo`: test metrics of the run
```

Every other module asks a [`RunFolder`] for a path instead of spelling it, reads the manifest through
[`RunFolder.read_manifest`] (schema-checked, member paths resolved inside the run) and replaces finished outputs
through [`replace_directory`] (a kill at any moment leaves the old or the new folder, never none).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .run_folder_io import (  # noqa: F401  (the layout's temporaries and locks; re-exported here)
    OLD_SUFFIX,
    TMP_SUFFIX,
    MemberBusyError,
    exclusive_lock,
    nobody_holds,
    owner_tag,
    recover_replacements,
    replace_directory,
    shared_lock,
    try_exclusive_lock,
    writer_is_gone,
)

MANIFEST_NAME = "ensemble.json"
LOCK_NAME = ".ensemble.lock"
WRITERS_LOCK_NAME = ".writers.lock"
MEMBERS_DIR = "members"
MEMBER_PREFIX = "member-"
MEMBER_INFO_NAME = "member.json"
CHECKPOINTS_DIR = "checkpoints"
EVAL_DATA_DIR = "eval_data"
EVAL_DIR = "eval"
EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"
SOUPS_DIR = "soups"
SOUP_KINDS = ("uniform", "greedy")
SOUP_INFO_NAME = "soup.json"
PLOT_SUFFIX = ".png"
PREDICTIONS_DIR = "predictions"
PREDICTION_KEY_CHARS = 24  # characters of each key in a prediction file name


def prediction_file_name(weights_key: str, data_key: str) -> str:
    """`predictions/<weights>-<data>.safetensors`: the class probabilities of one set of weights on one dataset."""
    return f"{weights_key[:PREDICTION_KEY_CHARS]}-{data_key[:PREDICTION_KEY_CHARS]}.safetensors"


LAPLACE_PREDICTIVE_NAME = "laplace_predictive.json"  # a Laplace run: metrics of laplace-torch's predictive (compare)
LAUNCH_INFO_NAME = "launch.json"
DEMO_RESULTS_NAME = "demo_results.json"

LOCK_SUFFIX = ".lock"
CHECKPOINT_PREFIX = "checkpoint-"  # transformers' `PREFIX_CHECKPOINT_DIR`


def member_name(index: int) -> str:
    """The folder name of member `index` (`member-<index>`, counted from 0 like the logs)."""
    return f"{MEMBER_PREFIX}{index}"


class RunFolder:
    """The paths of one run folder, and the checks that keep every read and write inside it.

    Args:
        root (`str` or `os.PathLike`):
            The run folder (the trainer's `output_dir`).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # ----- names ---------------------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def members_dir(self) -> Path:
        return self.root / MEMBERS_DIR

    def member_dir(self, index: int) -> Path:
        return self.members_dir / member_name(index)

    def member_relpath(self, index: int) -> str:
        """The member's folder relative to the run folder, as the manifest records it (POSIX separators)."""
        return f"{MEMBERS_DIR}/{member_name(index)}"

    def member_info_path(self, index: int) -> Path:
        return self.member_dir(index) / MEMBER_INFO_NAME

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    def member_checkpoints_dir(self, index: int) -> Path:
        return self.checkpoints_dir / member_name(index)

    @property
    def eval_data_dir(self) -> Path:
        return self.root / EVAL_DATA_DIR

    @property
    def eval_dir(self) -> Path:
        return self.root / EVAL_DIR

    @property
    def eval_json(self) -> Path:
        return self.eval_dir / EVAL_JSON

    @property
    def eval_md(self) -> Path:
        return self.eval_dir / EVAL_MD

    @property
    def soups_dir(self) -> Path:
        return self.root / SOUPS_DIR

    def soup_dir(self, kind: str) -> Path:
        if kind not in SOUP_KINDS:
            raise ValueError(f"`soup` should be one of {', '.join(SOUP_KINDS)}, got {kind!r}.")
        return self.soups_dir / kind

    def soup_info_path(self, kind: str) -> Path:
        return self.soup_dir(kind) / SOUP_INFO_NAME

    def readable_soup_dir(self, kind: str) -> Path | None:
        """The soup of `kind` for a reader: `soups/<kind>/`, else its `.<kind>.old` copy (a kill between the two
        renames of [`replace_directory`] leaves only that; the next writer's [`recover`] puts it back); else `None`."""
        final = self.soup_dir(kind)
        olds = sorted(self.soups_dir.glob(f".{kind}*{OLD_SUFFIX}"))  # `.X.old`, or `.X.<writer>.old`
        for folder in (final, *olds):
            if folder.is_dir() and not folder.is_symlink():
                return folder
        return None

    def eval_plots(self) -> list[Path]:
        """The plots `hf-starsse evaluate` wrote (`eval/*.png`), sorted."""
        return sorted(p for p in self.eval_dir.glob(f"*{PLOT_SUFFIX}") if not p.name.startswith("."))

    def check_regular_file(self, path: str | os.PathLike, what: str = "file") -> Path:
        """Check that `path` is a regular file of this run reached without any symbolic link; return it.

        Raises:
            `ValueError`: one line naming the file, when it lies outside the run or a link is on its way.
            `FileNotFoundError`: when it is not a file.
        """
        path = Path(path)
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            raise ValueError(f"The {what} {path} is outside the run folder {self.root}.") from None
        current = self.root
        for part in relative.parts:
            current = current / part
            if part == ".." or current.is_symlink():
                raise ValueError(f"The {what} {current} is a symbolic link or leaves the run folder: refused.")
        if not path.is_file():
            raise FileNotFoundError(f"The {what} {path} is missing.")
        return path

    @property
    def predictions_dir(self) -> Path:
        return self.root / PREDICTIONS_DIR

    def prediction_path(self, weights_key: str, data_key: str) -> Path:
        return self.predictions_dir / prediction_file_name(weights_key, data_key)

    @property
    def launch_info_path(self) -> Path:
        return self.root / LAUNCH_INFO_NAME

    @property
    def demo_results_path(self) -> Path:
        return self.root / DEMO_RESULTS_NAME

    def member_lock_path(self, index: int) -> Path:
        """Held (`flock`) by the process or job that trains member `index`."""
        return self.checkpoints_dir / f"{member_name(index)}{LOCK_SUFFIX}"

    def checkpoint_dir(self, index: int, step: int) -> Path:
        """A complete Trainer checkpoint of member `index` (transformers' `checkpoint-<step>` name)."""
        return self.member_checkpoints_dir(index) / f"{CHECKPOINT_PREFIX}{step}"

    def checkpoint_staging_dir(self, index: int, step: int) -> Path:
        """Where the Trainer writes checkpoint `step` of member `index` before it is renamed into place (one name
        shared by the processes of one launch; only the job that holds [`member_lock`] writes there)."""
        return self.member_checkpoints_dir(index) / f".{CHECKPOINT_PREFIX}{step}{TMP_SUFFIX}"

    @property
    def writers_lock_path(self) -> Path:
        return self.root / WRITERS_LOCK_NAME

    def folders_with_atomic_writes(self) -> list[Path]:
        """Every folder of the layout in which atomic writes leave temporaries / `.old` copies when killed."""
        folders = [self.root, self.members_dir, self.checkpoints_dir, self.eval_dir, self.soups_dir]
        folders.append(self.predictions_dir)
        if self.checkpoints_dir.is_dir() and not self.checkpoints_dir.is_symlink():
            folders += sorted(p for p in self.checkpoints_dir.glob(f"{MEMBER_PREFIX}*") if p.is_dir())
        return folders

    # ----- manifest ------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def read_manifest(self) -> Any:
        """Load `ensemble.json`, check its schema and resolve every member path inside the run.

        Returns:
            [`EnsembleManifest`]. Raises `FileNotFoundError` when there is none, `ValueError` (one line naming the
            entry and field) when it is malformed or a member path is not a member folder of this run.
        """
        from .manifest import EnsembleManifest

        path = self.manifest_path
        if not path.is_file():
            raise FileNotFoundError(f"No ensemble manifest at {path}: is this an hf_starsse run folder?")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"The ensemble manifest {path} is not valid JSON: {err}") from None
        validate_manifest_data(data, path)
        manifest = EnsembleManifest.from_dict(data)
        for position, record in enumerate(manifest.members):
            self.resolve_member_path(record.path, entry=f"members[{position}]")
        return manifest

    def member_paths(self, manifest: Any) -> list[Path]:
        """The checked, absolute folders of the manifest's members, in manifest order."""
        return [self.resolve_member_path(m.path, entry=f"members[{i}]") for i, m in enumerate(manifest.members)]

    def resolve_member_path(self, relpath: str, entry: str = "member") -> Path:
        """Resolve a manifest member path: relative, `members/member-<i>`, no symlink, inside the run, present.

        Raises:
            `ValueError`: one line naming the manifest entry, for anything that could read outside the run.
        """
        where = f"{self.manifest_path} {entry}.path"
        folder = self.root / check_member_relpath(relpath, where)
        for link in (self.members_dir, folder):
            if link.is_symlink():
                raise ValueError(f"{where}: {link} is a symbolic link; member folders are real folders of the run.")
        if not folder.is_dir():
            raise ValueError(f"{where}: the member folder {folder} is missing.")
        root = self.root.resolve()
        if root not in folder.resolve().parents:
            raise ValueError(f"{where}: {folder} resolves outside the run folder {root}.")
        return folder

    # ----- members: the folders are the source of truth, the manifest an index ----------------------------------
    def scan_members(self) -> dict[int, dict[str, Any]]:
        """The `member.json` of every member folder, by index: a member exists iff its folder was renamed into place.

        Raises:
            `ValueError`: one line naming the folder, for a member folder without a valid `member.json` (not written
            by hf_starsse) or whose `member.json` names another index.
        """
        found: dict[int, dict[str, Any]] = {}
        if not self.members_dir.is_dir():
            return found
        for child in sorted(self.members_dir.iterdir()):
            match = re.fullmatch(rf"{MEMBER_PREFIX}(\d+)", child.name)
            if match is None:
                continue
            info = child / MEMBER_INFO_NAME
            if child.is_symlink() or not info.is_file():
                raise ValueError(f"{child} is not a member folder written by hf_starsse (no {MEMBER_INFO_NAME}).")
            try:
                data = json.loads(info.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{info} is not valid JSON: {err}") from None
            index = int(match.group(1))
            if not isinstance(data, dict) or data.get("index") != index:
                got = data.get("index") if isinstance(data, dict) else data
                raise ValueError(f"{info} `index` should be {index} (its folder), got {got!r}.")
            found[index] = data
        return found

    def rebuild_index(self, header: Any) -> Any:
        """Rewrite `ensemble.json` from `header` (an [`EnsembleManifest`] whose members are ignored) and the member
        folders on disk, under [`lock`]; returns the written manifest. Every process that renamed a member folder
        into place calls it, so the last call of several concurrent jobs lists every member."""
        import dataclasses

        from .manifest import MemberRecord

        with self.lock():
            records = [MemberRecord.from_dict(data) for _, data in sorted(self.scan_members().items())]
            manifest = dataclasses.replace(header, members=records)
            self.write_manifest(manifest)
        return manifest

    def write_manifest(self, manifest: Any) -> Path:
        """Write `ensemble.json` atomically (crash point `manifest_write`: temporary written, not yet renamed)."""
        from .file_utils import atomic_write_json

        atomic_write_json(self.manifest_path, manifest.to_dict(), crash_at="manifest_write")
        return self.manifest_path

    # ----- concurrency and crash recovery ----------------------------------------------------------------------
    def lock(self) -> contextlib.AbstractContextManager:
        """Hold an exclusive `flock` on `.ensemble.lock` (processes and jobs sharing the run folder). Re-entrant
        within a process."""
        return exclusive_lock(self.lock_path)

    def member_lock(self, index: int) -> contextlib.AbstractContextManager:
        """Hold member `index`'s lock while it trains; raises [`MemberBusyError`] when another process holds it."""
        path = self.member_lock_path(index)
        busy = MemberBusyError(f"member {index} is being trained by another process (it holds {path}).")
        return try_exclusive_lock(path, busy)

    @contextlib.contextmanager
    def writing(self) -> Iterator[list[Path]]:
        """Run the block as a writer of this run: first [`recover`] what dead writers left, then hold a shared `flock`
        on `.writers.lock` until the block ends (the kernel drops it when the process dies, even on SIGKILL).

        Yields the paths `recover` removed or restored.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with shared_lock(self.writers_lock_path, on_start=self._recover_under_lock) as changed:
            yield changed

    def _recover_under_lock(self, alone: bool) -> list[Path]:
        with self.lock():
            return self.recover(alone=alone)

    def recover(self, alone: bool | None = None) -> list[Path]:
        """Finish or undo what a killed process left in every folder of the layout: restore `.X.old` where `X` is
        missing, drop stale `.X.*.tmp` temporaries.

        Safe while other processes write into the run: a temporary (or `.old` copy) is touched only when its writer
        is known to be dead: its name carries the writer (`w<pid>~<host>`, see [`owner_tag`]) and that process is
        gone from this host; or no process holds [`writing`] (`alone`: checked with a non-blocking exclusive `flock`
        on `.writers.lock`, which the kernel releases when a writer dies), and it is not a live writer of this host.

        Returns the paths removed or restored.
        """
        if alone is None:
            alone = self.root.is_dir() and nobody_holds(self.writers_lock_path)
        changed: list[Path] = []
        for folder in self.folders_with_atomic_writes():
            changed += recover_replacements(folder, is_stale=lambda name: writer_is_gone(name, alone))
        return changed


def check_member_relpath(relpath: Any, where: str) -> str:
    """Check the syntax of a manifest member path (`members/member-<i>`, relative, no `..`) without touching the disk.

    Used for local runs by [`RunFolder.resolve_member_path`] and, for a manifest downloaded from the Hub, on its own.
    Returns the path with POSIX separators; raises a one-line `ValueError` starting with `where` otherwise.
    """
    if not isinstance(relpath, str) or not relpath:
        raise ValueError(f"{where} should be a non-empty string, got {relpath!r}.")
    if os.path.isabs(relpath) or relpath.startswith(("~", "/", "\\")):
        raise ValueError(f"{where} should be relative to the run folder, got the absolute path {relpath!r}.")
    parts = Path(relpath).parts
    if ".." in parts or len(parts) != 2 or parts[0] != MEMBERS_DIR or not parts[1].startswith(MEMBER_PREFIX):
        raise ValueError(f"{where} should be `{MEMBERS_DIR}/{MEMBER_PREFIX}<i>` inside the run, got {relpath!r}.")
    return f"{parts[0]}/{parts[1]}"


def validate_manifest_data(data: Any, path: Path) -> None:
    """Check the JSON structure of a manifest; raise one `ValueError` line naming the entry and field."""
    if not isinstance(data, dict):
        raise ValueError(f"The ensemble manifest {path} should hold a JSON object, got {type(data).__name__}.")
    for key, kind in (("strategy", str), ("num_members", int), ("members", list)):
        if key not in data:
            raise ValueError(f"The ensemble manifest {path} has no `{key}` field.")
        if not isinstance(data[key], kind) or isinstance(data[key], bool):
            raise ValueError(f"{path} `{key}` should be {kind.__name__}, got {type(data[key]).__name__}.")
    seen_index: dict[int, int] = {}
    seen_path: dict[str, int] = {}
    for position, entry in enumerate(data["members"]):
        name = f"{path} members[{position}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{name} should be an object, got {type(entry).__name__}.")
        for key, kind in (("index", int), ("path", str), ("seed", int)):
            value = entry.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"{name}.{key} should be {kind.__name__}, got {value!r}.")
        parent = entry.get("parent")
        if parent is not None and (not isinstance(parent, int) or isinstance(parent, bool)):
            raise ValueError(f"{name}.parent should be an integer or null, got {parent!r}.")
        index, member_path = entry["index"], os.path.normpath(entry["path"])
        if index < 0:
            raise ValueError(f"{name}.index should be >= 0, got {index}.")
        if index in seen_index:
            raise ValueError(f"{name}.index {index} is listed twice (also members[{seen_index[index]}]).")
        if member_path in seen_path:
            raise ValueError(
                f"{name}.path {entry['path']!r} is listed twice (also members[{seen_path[member_path]}])."
            )
        seen_index[index], seen_path[member_path] = position, position
