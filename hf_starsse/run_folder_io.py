"""How a run folder is written safely: temporaries named after their writer, recovery of what killed writers left,
crash-safe folder replacement and the `flock`s that let several processes or machines share a run folder. The names
themselves belong to [`hf_starsse.run_folder`], which re-exports these helpers."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
OLD_SUFFIX = ".old"
TMP_SUFFIX = ".tmp"
# temporaries and `.old` copies carry their writer: `.<name>.w<pid>~<host>.<random>.tmp` (see `owner_tag`)
_OWNER_RE = re.compile(r"\.w(?P<pid>\d+)~(?P<host>[A-Za-z0-9_-]+)(?=\.)")


class MemberBusyError(RuntimeError):
    """Another process (job) is training this member right now."""


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive `flock` on `path`, re-entrant within a process (a second `open` would deadlock on itself)."""
    key = os.path.realpath(path)
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        _HELD_LOCKS[key] = 1
        try:
            yield
        finally:
            del _HELD_LOCKS[key]
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def try_exclusive_lock(path: Path, busy: Exception) -> Iterator[None]:
    """An exclusive `flock` on `path` taken without waiting; raises `busy` when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if not _try_flock(handle, fcntl.LOCK_EX):
            raise busy
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def shared_lock(path: Path, on_start: Callable[[bool], T]) -> Iterator[T]:
    """A shared `flock` on `path` for the block. First `on_start(alone)` runs, `alone` telling whether no other process
    held the lock (then `on_start` runs under the exclusive lock, converted to a shared one afterwards); yields its
    result."""
    with open(path, "a+") as handle:
        alone = _try_flock(handle, fcntl.LOCK_EX)
        try:
            result = on_start(alone)
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)  # converts the exclusive lock, or waits for its holder
            yield result
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def nobody_holds(path: Path) -> bool:
    """Whether no process holds a `flock` on `path` (checked with a non-blocking exclusive lock, released at once)."""
    try:
        handle = open(path, "a+")
    except OSError:  # a read-only run folder: leave its leftovers alone
        return False
    with handle:
        if not _try_flock(handle, fcntl.LOCK_EX):
            return False
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return True


_HELD_LOCKS: dict[str, int] = {}


def owner_tag() -> str:
    """`w<pid>~<host>`: put in the names of temporaries so that [`RunFolder.recover`] can tell a live writer's."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
    return f"w{os.getpid()}~{host}"


def writer_is_gone(name: str, alone: bool) -> bool:
    match = _OWNER_RE.search(name)
    if match is None:
        return alone
    if match["host"] == owner_tag().split("~", 1)[1]:
        return not _pid_alive(int(match["pid"]))  # this host: ask the kernel
    return alone


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not reaped yet is a zombie: gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _try_flock(handle, operation: int) -> bool:
    try:
        fcntl.flock(handle.fileno(), operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def recover_replacements(folder: str | os.PathLike, is_stale: Callable[[str], bool] | None = None) -> list[Path]:
    """In `folder`: restore `.X.old` to `X` when `X` is missing (a kill between the two renames of
    [`replace_directory`]), else remove it; remove `.X.*.tmp` temporaries. Returns what changed.

    Args:
        is_stale (`Callable[[str], bool]`, *optional*):
            Given a leftover's name, whether its writer is gone (see [`RunFolder.recover`]); by default every leftover
            is taken as stale (only for folders no live process writes into).
    """
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return []
    changed = []
    for child in sorted(folder.iterdir()):
        name = child.name
        if not name.startswith(".") or not name.endswith((OLD_SUFFIX, TMP_SUFFIX)):
            continue
        if is_stale is not None and not is_stale(name):
            continue
        if name.endswith(OLD_SUFFIX):
            final = folder / re.sub(r"\.w\d+~[A-Za-z0-9_-]+$", "", name[1 : -len(OLD_SUFFIX)])
            if final.exists():
                _remove(child)
            else:
                os.replace(child, final)
        else:
            _remove(child)
        changed.append(child)
    return changed


def replace_directory(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished folder `tmp` to `final`, replacing an existing `final` so that a kill at any moment leaves
    the old or the new folder under `final` (or the old one as `.final.<writer>.old`, restored by
    [`recover_replacements`])."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.with_name(f".{final.name}.{owner_tag()}{OLD_SUFFIX}")
    _remove(old)
    os.replace(final, old)
    _crash_point(f"replace_directory@{final.parent.name}/{final.name}")  # test hook: between the two renames
    os.replace(tmp, final)
    _remove(old)


def _crash_point(name: str) -> None:
    from .file_utils import crash_point  # file_utils imports this module

    crash_point(name)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
