"""The data-dir lock: one holder at a time, the holder's pid in the refusal, freed on release."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from overlay.store.embedded.lock import DataDirLockedError, holder_pid, lock_data_dir


def test_second_lock_is_refused_naming_dir_and_pid(tmp_path: Path) -> None:
    d = tmp_path / "data"
    with lock_data_dir(d):
        with pytest.raises(DataDirLockedError) as info:
            lock_data_dir(d)  # a new open file description: flock refuses it as for a process
        assert info.value.pid == os.getpid()
        assert str(d) in str(info.value) and f"pid {os.getpid()}" in str(info.value)
    with lock_data_dir(d):  # released: free again
        pass


def test_a_stale_lock_file_does_not_block(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text("999999\n")  # left by a killed server: nobody holds it
    with lock_data_dir(tmp_path) as lock:
        assert lock.data_dir == tmp_path
        assert (tmp_path / "lock").read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize(("text", "pid"), [
    ("123\n", 123), ("", None), ("  42  \n", 42), ("x\n", None), ("0\n", None),
], ids=["pid", "empty", "spaces", "garbage", "zero"])
def test_holder_pid(text: str, pid: int | None) -> None:
    assert holder_pid(text) == pid
