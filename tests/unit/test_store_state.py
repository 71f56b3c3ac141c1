"""State (the embedded server's durable core): persistence across reopen, lease expiry while
down, compaction, all on a fake wall clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlay.store.api import CompactedError, EventType
from overlay.store.embedded.state import DeleteOp, PutOp, RangeOp, State
from tests.fakeclock import FakeClock


def reopen(path: Path, wall: FakeClock, **kw: int) -> State:
    return State(path, clock=wall, **kw)


def test_revisions_and_values_survive_reopen(tmp_path: Path) -> None:
    wall = FakeClock()
    s = reopen(tmp_path / "db", wall)
    revs = [s.put(PutOp(b"/k%d" % i, b"v%d" % i))[0] for i in range(5)]
    s.delete(DeleteOp(b"/k0"))
    assert revs == [2, 3, 4, 5, 6]
    s.commit()
    s.close()
    s = reopen(tmp_path / "db", wall)
    assert s.revision == 7
    got = s.range(RangeOp(b"/", b"0"))
    assert [kv.key for kv in got.kvs] == [b"/k1", b"/k2", b"/k3", b"/k4"]
    assert s.range(RangeOp(b"/k0", revision=2)).kvs[0].value == b"v0"
    assert s.put(PutOp(b"/k1", b"again"))[0] == 8
    assert [(r, [e.type for e in evs]) for r, evs in s.events_since(7)] == [
        (7, [EventType.DELETE])]
    s.close()


def test_uncommitted_writes_are_lost_not_half_applied(tmp_path: Path) -> None:
    wall = FakeClock()
    s = reopen(tmp_path / "db", wall)
    s.put(PutOp(b"/a", b"1"))
    s.commit()
    s.put(PutOp(b"/b", b"1"))  # never committed: a crash before the ack
    s.close()
    s = reopen(tmp_path / "db", wall)
    assert s.revision == 2 and s.get(b"/b") is None
    s.close()


def test_lease_expired_while_down_is_revoked_on_start(tmp_path: Path) -> None:
    wall = FakeClock()
    s = reopen(tmp_path / "db", wall)
    short, _ = s.grant(10)
    long, _ = s.grant(100)
    s.put(PutOp(b"/short", b"v", lease=short))
    s.put(PutOp(b"/long", b"v", lease=long))
    s.commit()
    s.close()
    wall.advance(30)
    s = reopen(tmp_path / "db", wall)
    assert s.get(b"/short") is None and s.get(b"/long") is not None
    assert s.time_to_live(short)[0] == -1
    assert s.time_to_live(long) == (70, 100, (b"/long",))
    (_rev, events), = s.events_since(s.revision)
    assert [(e.type, e.kv.key) for e in events] == [(EventType.DELETE, b"/short")]
    s.close()


def test_a_wall_clock_step_expires_no_lease_while_running(tmp_path: Path) -> None:
    """Running leases count monotonic time, as etcd's lessor does: NTP stepping the
    clock an hour ahead (a bad RTC corrected) expires nothing; the persisted deadline
    follows the wall clock, so after a restart the lease has what it had left."""
    wall = FakeClock()
    s = reopen(tmp_path / "db", wall)
    lease, _ = s.grant(30)
    s.put(PutOp(b"/k", b"v", lease=lease))
    s.commit()
    wall.step_wall(3600)
    assert s.expire_leases() == 0 and s.get(b"/k") is not None
    assert s.time_to_live(lease)[0] == 30
    wall.advance(10)
    assert s.keepalive(lease) == 30  # persisted: a wall deadline 30 s from the new now
    nxt = s.next_expiry_in()
    assert nxt is not None and nxt == pytest.approx(30)
    s.commit()
    s.close()
    wall.advance(5)
    s = reopen(tmp_path / "db", wall)
    assert s.get(b"/k") is not None and s.time_to_live(lease)[0] == 25
    wall.advance(26)
    assert s.expire_leases() == 1 and s.get(b"/k") is None
    s.close()


def test_keepalive_deadline_is_persisted(tmp_path: Path) -> None:
    wall = FakeClock()
    s = reopen(tmp_path / "db", wall)
    lease, _ = s.grant(10)
    s.put(PutOp(b"/k", b"v", lease=lease))
    wall.advance(8)
    s.keepalive(lease)
    s.commit()
    s.close()
    wall.advance(8)  # 16 s after grant, 8 after the keepalive
    s = reopen(tmp_path / "db", wall)
    assert s.get(b"/k") is not None
    s.close()


def test_compaction_is_persisted_and_auto(tmp_path: Path) -> None:
    wall = FakeClock()
    s = reopen(tmp_path / "db", wall, retain=20)
    for i in range(30):
        s.put(PutOp(b"/k", b"%d" % i))
        s.put(PutOp(b"/gone%d" % i, b"x"))
        s.delete(DeleteOp(b"/gone%d" % i))
    assert s.auto_compact() == s.revision - 20
    s.commit()
    s.close()
    s = reopen(tmp_path / "db", wall, retain=20)
    c = s.compact_revision
    assert c == s.revision - 20
    with pytest.raises(CompactedError):
        s.events_since(c - 1)
    assert s.range(RangeOp(b"/k", revision=c)).kvs
    rows = s._db.execute("SELECT COUNT(*) FROM log").fetchone()[0]
    assert rows <= 22, "history before the compaction point is gone from disk"
    s.close()
