"""Lease diffing: snapshots and watch batches into ADDED/REMOVED events; malformed dropped."""

from __future__ import annotations

import ipaddress

import pytest

from overlay.lease.model import EventKind, Lease, encode_lease
from overlay.lease.watcher import apply_watch_events, diff, resync, table_from_listing
from overlay.store.api import EventType, KeyValue, WatchEvent

N = ipaddress.IPv4Network
P = "/coreos.com/network/subnets/"


def kv(subnet: str, ip: str = "198.18.0.12", mac: str = "0e:00:00:00:00:01", rev: int = 1,
       raw: bytes | None = None, btype: str = "vxlan") -> KeyValue:
    key = (P + subnet.replace("/", "-")).encode()
    value = raw if raw is not None else encode_lease(
        Lease(N(subnet), ipaddress.IPv4Address(ip), btype, {"VNI": 1, "VtepMAC": mac}))
    return KeyValue(key, value, rev, rev, 1)


def put(item: KeyValue) -> WatchEvent:
    return WatchEvent(EventType.PUT, item)


def delete(subnet: str, rev: int = 9) -> WatchEvent:
    return WatchEvent(EventType.DELETE, KeyValue((P + subnet.replace("/", "-")).encode(), b"",
                                                 0, rev, 0))


def summary(events: tuple[object, ...]) -> list[tuple[str, str]]:
    return sorted((e.kind.value, str(e.lease.subnet)) for e in events)  # type: ignore[attr-defined]


BASE = table_from_listing([kv("10.244.1.0/24"), kv("10.244.2.0/24", "198.18.0.13")]).table


@pytest.mark.parametrize(
    ("batch", "events", "size", "errors"),
    [
        ([put(kv("10.244.3.0/24", "198.18.0.14"))], [("added", "10.244.3.0/24")], 3, 0),
        ([delete("10.244.1.0/24")], [("removed", "10.244.1.0/24")], 1, 0),
        ([put(kv("10.244.1.0/24", mac="0e:00:00:00:00:99"))], [("added", "10.244.1.0/24")],
         2, 0),
        ([put(kv("10.244.1.0/24", rev=50))], [], 2, 0),
        ([put(kv("10.244.7.0/24", raw=b"not json"))], [], 2, 1),
        ([put(kv("10.244.1.0/24", raw=b"{\"PublicIP\": 5}"))], [("removed", "10.244.1.0/24")],
         1, 1),
        ([put(KeyValue(P.encode() + b"garbage", b"{}", 3, 3, 1))], [], 2, 1),
        ([delete("10.244.9.0/24")], [], 2, 0),
        ([put(kv("10.244.3.0/24")), delete("10.244.3.0/24")], [], 2, 0),
        ([put(kv("10.244.4.0/24", btype="wireguard"))], [("added", "10.244.4.0/24")], 3, 0),
    ],
    ids=["add", "remove", "mac-change", "renewal-re-put-no-event", "non-json-ignored",
         "malformed-overwrite-drops-old", "bad-key-ignored", "delete-unknown",
         "add-then-delete-in-one-batch", "unknown-backend-kept-for-daemon-to-filter"],
)
def test_apply_watch_events(batch: list[WatchEvent], events: list[tuple[str, str]], size: int,
                            errors: int) -> None:
    upd = apply_watch_events(BASE, batch)
    assert summary(upd.events) == events
    assert len(upd.table) == size
    assert len(upd.errors) == errors
    assert len(BASE) == 2  # input never mutated


def test_resync_after_compaction_diffs_against_table() -> None:
    upd = resync(BASE, [kv("10.244.2.0/24", "198.18.0.13"), kv("10.244.5.0/24"),
                        kv("10.244.6.0/24", raw=b"\xff")])
    assert summary(upd.events) == [("added", "10.244.5.0/24"), ("removed", "10.244.1.0/24")]
    assert len(upd.errors) == 1
    assert upd.errors[0].key.endswith("10.244.6.0-24")


def test_diff_is_symmetric_and_empty_on_equal() -> None:
    assert diff(BASE, BASE) == ()
    assert summary(diff({}, BASE)) == [("added", "10.244.1.0/24"), ("added", "10.244.2.0/24")]
    assert {e.kind for e in diff(BASE, {})} == {EventKind.REMOVED}
