"""The embedded store's snapshots: taking one while writes go on, and reading, checking and
restoring the file.

Format (it is not etcd's bbolt file): the store's SQLite database as of one committed
revision, followed by the SHA-256 of those bytes (32 bytes), as etcd appends a SHA-256 to
its own snapshot. The database holds the tables ``meta`` (ids, revision floor, compaction
point), ``log`` (every write since the compaction point: revision, key, value or NULL for a
deletion, create revision, version, lease) and ``leases`` (id, granted TTL, deadline).

* ``take`` copies the database with SQLite's online backup API through a read-only
  connection of its own. In WAL mode that connection reads one committed transaction's
  view for the whole copy while the server's committer keeps writing: a consistent
  point-in-time copy, and writes never stop. Maintenance Snapshot streams the copy in
  32 KiB chunks (etcd's size) with the digest last, so ``etcdctl snapshot save`` and
  ``weftctl store snapshot save`` both write the file above.
* ``status`` reads a file without changing it: hash, revision, live keys, size.
* ``restore`` makes a new data dir from a file (refusing a non-empty one): the database,
  checked (digest, SQLite integrity), with new member and cluster ids (a restored store is
  a new cluster, as etcd's restore makes one) and every lease's deadline renewed to its
  granted TTL from now (as etcd's leader renews every lease when it takes office), so the
  keys attached to leases are there when it starts. Keys, values, revisions and lease ids
  are exactly as at the snapshot; the revision keeps rising from there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sqlite3
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from overlay.store.api import StoreError
from overlay.store.embedded.lock import LOCK_FILE, lock_data_dir

DB_FILE = "store.db"
CHUNK = 32 * 1024
DIGEST_BYTES = 32
_SQLITE_MAGIC = b"SQLite format 3\0"
_BOLT_MAGIC = (0xED0CDAED).to_bytes(4, "little")  # bbolt's meta page, after its page header


class SnapshotError(StoreError):
    """A snapshot file that cannot be used (what is wrong, and which file)."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"snapshot {path}: {why}")
        self.path = path


@dataclass(frozen=True, slots=True)
class SnapshotStatus:
    """What ``etcdctl snapshot status`` reports, for this store's files."""

    hash: int  # CRC-32 of the database bytes
    revision: int
    total_keys: int  # live keys at ``revision``
    total_size: int  # bytes of the file


# -- taking one (the server side) ---------------------------------------------------------


def take(db_path: Path, dest: Path) -> None:
    """Copy the live database at ``db_path`` to ``dest`` as of one committed transaction,
    without blocking writers (blocks the calling thread: run it in a worker)."""
    src = sqlite3.connect(_read_only_uri(db_path), uri=True)
    try:
        dst = sqlite3.connect(str(dest))
        try:
            src.backup(dst)  # one step: one read transaction, one consistent view
        finally:
            dst.close()
    finally:
        src.close()


def _read_only_uri(path: Path) -> str:
    """SQLite's read-only URI for ``path`` (percent-encoded: any character may be in it)."""
    return path.absolute().as_uri() + "?mode=ro"


def chunks(path: Path, size: int = CHUNK) -> Iterator[tuple[bytes, int]]:
    """The snapshot stream of the database file at ``path``: (blob, database bytes remaining
    after it), then the SHA-256 of the database with 0 remaining, as etcd sends them."""
    total = path.stat().st_size
    sent = 0
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(size):
            digest.update(block)
            sent += len(block)
            yield block, total - sent
    yield digest.digest(), 0


def snapshot_file(data_dir: Path) -> tuple[Path, Callable[[], None]]:
    """A fresh temporary file in ``data_dir`` for ``take``, and its remover."""
    fd, name = tempfile.mkstemp(prefix=".snapshot-", suffix=".db", dir=data_dir)
    os.close(fd)
    path = Path(name)

    def remove() -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    return path, remove


# -- reading one -----------------------------------------------------------------------------


def split(path: Path, blob: bytes, skip_hash_check: bool = False) -> bytes:
    """The database bytes of a snapshot file's content, its digest checked."""
    if len(blob) <= DIGEST_BYTES:
        raise SnapshotError(path, f"only {len(blob)} bytes: not a snapshot")
    db, digest = blob[:-DIGEST_BYTES], blob[-DIGEST_BYTES:]
    if not db.startswith(_SQLITE_MAGIC):
        why = "not a weft embedded store snapshot"
        if db[16:20] == _BOLT_MAGIC:
            why += " but etcd's (bbolt): restore it with `etcdctl snapshot restore`"
        raise SnapshotError(path, why)
    if not skip_hash_check and hashlib.sha256(db).digest() != digest:
        raise SnapshotError(path, "SHA-256 mismatch: the file is damaged or incomplete")
    return db


@contextlib.contextmanager
def _opened(path: Path, db: bytes) -> Iterator[sqlite3.Connection]:
    """The database bytes opened read-only from a private temporary copy."""
    with tempfile.TemporaryDirectory(prefix="weft-snapshot-") as tmp:
        copy = Path(tmp) / DB_FILE
        copy.write_bytes(db)
        conn = sqlite3.connect(_read_only_uri(copy), uri=True)
        try:
            yield conn
        except sqlite3.DatabaseError as e:
            raise SnapshotError(path, f"unreadable database: {e}") from e
        finally:
            conn.close()


def _revision_and_keys(conn: sqlite3.Connection) -> tuple[int, int]:
    meta = dict(conn.execute("SELECT k, v FROM meta").fetchall())
    revision = int(meta.get("revision", 1))
    live: dict[bytes, bool] = {}
    for rev, key, value in conn.execute("SELECT rev, key, value FROM log ORDER BY rev, sub"):
        revision = max(revision, int(rev))
        live[bytes(key)] = value is not None
    return revision, sum(live.values())


def status(path: Path) -> SnapshotStatus:
    """Hash, revision, live keys and size of the snapshot file at ``path``."""
    blob = _read(path)
    db = split(path, blob)
    with _opened(path, db) as conn:
        revision, keys = _revision_and_keys(conn)
    return SnapshotStatus(zlib.crc32(db), revision, keys, len(blob))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SnapshotError(path, f"cannot read: {e.strerror or e}") from e


def verify(path: Path) -> SnapshotStatus | None:
    """After a save: the status of a weft snapshot, None for a file that is not one (a
    real etcd's bbolt snapshot), SnapshotError if a weft snapshot is damaged."""
    with path.open("rb") as f:
        if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
            return None
    return status(path)


# -- restoring one ---------------------------------------------------------------------------


def restore(path: Path, data_dir: Path, skip_hash_check: bool = False,
            now: Callable[[], float] = time.time) -> SnapshotStatus:
    """Make ``data_dir`` (new or empty) a store holding the snapshot at ``path``."""
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise SnapshotError(path, f"data dir {data_dir} is not empty: restore makes a new "
                                  "store, so give a new (or empty) directory")
    blob = _read(path)
    db = split(path, blob, skip_hash_check)
    created = not data_dir.exists()
    try:
        return _restore(path, db, len(blob), data_dir, now)
    except BaseException:
        # leave nothing that would make a second attempt find the dir "not empty"
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                (data_dir / LOCK_FILE).unlink()
        raise


def _restore(path: Path, db: bytes, size: int, data_dir: Path,
             now: Callable[[], float]) -> SnapshotStatus:
    with lock_data_dir(data_dir):
        part = data_dir / (DB_FILE + ".part")
        part.write_bytes(db)
        try:
            conn = sqlite3.connect(str(part), isolation_level=None)
            try:
                if (check := conn.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
                    raise SnapshotError(path, f"database integrity check failed: {check}")
                revision, keys = _revision_and_keys(conn)
                ids = random.SystemRandom()
                conn.execute("BEGIN")
                conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                    ("member_id", ids.randrange(1, 1 << 63)),
                    ("cluster_id", ids.randrange(1, 1 << 63)),
                    ("revision", revision)])
                conn.execute("UPDATE leases SET deadline = ? + ttl", (math.floor(now()),))
                conn.execute("COMMIT")
                conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as e:
                raise SnapshotError(path, f"unreadable database: {e}") from e
            finally:
                conn.close()
            with part.open("rb+") as f:
                os.fsync(f.fileno())
            part.rename(data_dir / DB_FILE)
            dir_fd = os.open(data_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise
    return SnapshotStatus(zlib.crc32(db), revision, keys, size)


# -- presentation (etcdctl's) ----------------------------------------------------------------


def human_bytes(n: int) -> str:
    """Sizes as etcdctl prints them (go-humanize's Bytes: SI units, ``20 kB``)."""
    if n < 10:
        return f"{n} B"
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    e = min(math.floor(math.log(n) / math.log(1000)), len(units) - 1)
    val = math.floor(n / 1000**e * 10 + 0.5) / 10
    return f"{val:.1f} {units[e]}" if val < 10 else f"{val:.0f} {units[e]}"


def format_status(st: SnapshotStatus, write_out: str) -> str:
    """``etcdctl snapshot status -w simple|table|json|fields`` output."""
    if write_out == "json":
        return json.dumps({"hash": st.hash, "revision": st.revision, "totalKey": st.total_keys,
                           "totalSize": st.total_size}, separators=(",", ":"))
    if write_out == "fields":
        return (f'"Hash" : {st.hash}\n"Revision" : {st.revision}\n"Keys" : {st.total_keys}\n'
                f'"Size" : {st.total_size}')
    row = (f"{st.hash:x}", str(st.revision), str(st.total_keys), human_bytes(st.total_size))
    if write_out == "table":
        head = ("HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE")
        widths = [max(len(h), len(c)) + 2 for h, c in zip(head, row, strict=True)]
        rule = "+" + "+".join("-" * w for w in widths) + "+"
        titles = "|" + "|".join(h.center(w) for h, w in zip(head, widths, strict=True)) + "|"
        cells = "|" + "|".join(f" {c:>{w - 2}} " for c, w in zip(row, widths, strict=True)) + "|"
        return "\n".join((rule, titles, rule, cells, rule))
    return ", ".join(row)
