"""Atomic writes: a file or folder appears complete under its final name or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .run_folder import owner_tag, replace_directory


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def use_default_permissions(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a temporary from `tempfile.mkstemp` / `mkdtemp` (0600 / 0700) the mode `open` / `mkdir` would have given
    (0666 / 0777 less the umask), so that other jobs and users sharing a run folder can read what it becomes."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, crash_at: str | None = None) -> Iterator[Path]:
    """Yield a temporary file path next to `path` (named after its writer); once the block has written it, it gets
    the umask mode and is renamed to `path`; on failure it is removed. `crash_at` names a [`crash_point`] passed once
    the temporary is written, before it is renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        use_default_permissions(tmp)
        if crash_at is not None:
            crash_point(crash_at)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str, crash_at: str | None = None) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an `os.replace` ([`atomic_file`])."""
    with atomic_file(path, crash_at=crash_at) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path: str | os.PathLike, data: Any, crash_at: str | None = None) -> None:
    """Write `data` as indented JSON to `path`, atomically (`crash_at`: see [`atomic_write_text`])."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write_text(path, text, crash_at=crash_at)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it is renamed to `path`, on failure removed.

    Args:
        path (`str` or `os.PathLike`):
            The final folder.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace an existing `path`. When `False`, an existing `path` raises `FileExistsError` before anything is
            written, so a finished folder is never clobbered.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"Refusing to overwrite the finished folder {path}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp", dir=path.parent))
    try:
        use_default_permissions(tmp, directory=True)
        yield tmp
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


CRASH_POINT_ENV = "HF_STARSSE_CRASH_AT"
_CRASH_COUNTS: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process here when the environment variable `HF_STARSSE_CRASH_AT` names this point.

    `HF_STARSSE_CRASH_AT=<name>` kills at the first pass, `<name>:<n>` at the n-th pass of this process. Crash-safety
    tests set it in a subprocess to kill the run at a named moment and then check that the same command again
    completes. The points (one list, keep it complete):

    - `member_step` (`EnsembleTrainer.training_step`): after each forward/backward of a member's training.
    - `checkpoint_save` (`EnsembleTrainer._save_checkpoint`): a Trainer checkpoint is written into its temporary
      folder, not yet renamed into place.
    - `member_renamed` (`EnsembleTrainer`): a member folder was renamed into place; `ensemble.json` not yet rebuilt.
    - `manifest_write` (`RunFolder.write_manifest`): the new `ensemble.json` is written to its temporary file, not yet
      renamed.
    - `replace_directory@<parent>/<name>` (`replace_directory`): the old folder moved aside, the new one not yet in
      place (e.g. `replace_directory@soups/uniform`).
    - `soup_written` (`soups`): the new soup is written, the old one not yet replaced.
    - `push_staged` (`hub`): everything checked and staged, nothing sent yet.
    """
    spec = os.environ.get(CRASH_POINT_ENV)
    if not spec or spec.partition(":")[0] != name:
        return
    _CRASH_COUNTS[name] = _CRASH_COUNTS.get(name, 0) + 1
    wanted = int(spec.partition(":")[2] or 1)
    if _CRASH_COUNTS[name] == wanted:
        os.kill(os.getpid(), signal.SIGKILL)
