"""Atomic writes: the finished file or folder has the mode `open` / `mkdir` give, not 0600 / 0700 (temporaries)."""

import hf_starsse  # noqa: F401
from hf_starsse.file_utils import atomic_directory, atomic_write_json

import os
import stat


def test_atomic_writes_get_the_umask_mode_not_the_temporary_one(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "run" / "ensemble.json", {"a": 1})
        with atomic_directory(tmp_path / "run" / "members" / "member-0") as tmp:
            atomic_write_json(tmp / "member.json", {"index": 0})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run" / "ensemble.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run" / "members" / "member-0").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "run" / "members" / "member-0" / "member.json").stat().st_mode) == 0o644
