"""Snapshot files' pure parts: etcdctl's size and status formats, the digest check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from overlay.store.embedded.snapshot import (
    SnapshotError,
    SnapshotStatus,
    format_status,
    human_bytes,
    split,
)


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (9, "9 B"), (10, "10 B"), (999, "999 B"), (1000, "1.0 kB"), (20480, "20 kB"),
    (1_572_864, "1.6 MB"), (70_048, "70 kB"), (2_121_728, "2.1 MB"), (10**12, "1.0 TB"),
])
def test_human_bytes_like_etcdctl(n: int, text: str) -> None:
    assert human_bytes(n) == text


ST = SnapshotStatus(0x63458419, 9, 14, 20480)


@pytest.mark.parametrize(("fmt", "text"), [
    ("simple", "63458419, 9, 14, 20 kB"),
    ("json", '{"hash":1665500185,"revision":9,"totalKey":14,"totalSize":20480}'),
    ("fields", '"Hash" : 1665500185\n"Revision" : 9\n"Keys" : 14\n"Size" : 20480'),
    ("table", "+----------+----------+------------+------------+\n"
              "|   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n"
              "+----------+----------+------------+------------+\n"
              "| 63458419 |        9 |         14 |      20 kB |\n"
              "+----------+----------+------------+------------+"),
])
def test_status_formats_are_etcdctls(fmt: str, text: str) -> None:
    # etcdctl 3.4.23's output for the same figures (a bbolt snapshot of 20480 bytes)
    assert format_status(ST, fmt) == text


def test_split_checks_digest_and_kind() -> None:
    db = b"SQLite format 3\0" + b"x" * 100
    assert split(Path("f"), db + hashlib.sha256(db).digest()) == db
    with pytest.raises(SnapshotError, match="SHA-256 mismatch"):
        split(Path("f"), db + b"\0" * 32)
    assert split(Path("f"), db + b"\0" * 32, skip_hash_check=True) == db
    bolt = b"\0" * 16 + (0xED0CDAED).to_bytes(4, "little") + b"\0" * 100
    with pytest.raises(SnapshotError, match="etcd's"):
        split(Path("f"), bolt + hashlib.sha256(bolt).digest())
    with pytest.raises(SnapshotError, match="not a snapshot"):
        split(Path("f"), b"short")


def test_failed_restore_leaves_no_dir_behind(tmp_path: Path) -> None:
    from overlay.store.embedded.snapshot import restore

    db = b"SQLite format 3\0" + b"\xff" * 4000  # the right digest, not a database
    bad = tmp_path / "bad.snap"
    bad.write_bytes(db + hashlib.sha256(db).digest())
    with pytest.raises(SnapshotError, match=r"unreadable database|integrity"):
        restore(bad, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SnapshotError):
        restore(bad, tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []  # an empty dir given stays empty


def test_restore_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    from overlay.store.embedded.snapshot import restore

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "store.db").write_bytes(b"x")
    with pytest.raises(SnapshotError, match="not empty"):
        restore(tmp_path / "whatever.snap", tmp_path / "d")
