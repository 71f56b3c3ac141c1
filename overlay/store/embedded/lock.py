"""The embedded store's data-dir lock: one server per data dir, as etcd locks its own.

Two servers on one SQLite file would each keep their own memory image and revision
counter, so a put on one is invisible to the other and both write the same log rows.
``lock_data_dir`` takes an exclusive ``flock(2)`` on ``<data-dir>/lock`` and writes the
holder's pid into it. The kernel drops the lock when the holder's process ends however it
ends (SIGKILL included), so a stale lock file never blocks a restart: only a live holder
does, and a second server is refused with the dir and that holder's pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from overlay.errors import StoreError

LOCK_FILE = "lock"


class DataDirLockedError(StoreError, OSError):
    """Another live process holds the data dir (``pid`` None when it has not said yet)."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid else "a process that has not written its pid yet"
        super().__init__(
            f"data dir {data_dir} is in use by another store server ({holder}); stop it "
            "or give a different --data-dir")
        self.data_dir = data_dir
        self.pid = pid


class DataDirLock:
    """A held lock; ``release()`` (or process exit) frees it."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(text: str) -> int | None:
    """The pid a lock file holds (None for an empty or foreign file)."""
    first = text.strip().split("\n", 1)[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Lock ``data_dir`` (created if missing) for this process, or raise
    ``DataDirLockedError`` naming the live holder."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            pid = holder_pid(os.pread(fd, 64, 0).decode("ascii", "replace"))
        finally:
            os.close(fd)
        raise DataDirLockedError(data_dir, pid) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DataDirLock(data_dir, fd)
