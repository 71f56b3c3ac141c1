"""Scheduler store records and keys: round trips, strict decoding naming the key, layout."""

from __future__ import annotations

import ipaddress

import pytest

from overlay.sched.errors import RecordError
from overlay.sched.keys import LAYOUT, KeyKind, Layout, ParsedKey, instance_label, service_key
from overlay.sched.model import (
    Assignment,
    DesiredState,
    Leader,
    MachineRecord,
    UnitRecord,
    UnitState,
    Unscheduled,
    unit_hash,
)

IP = ipaddress.ip_address("198.18.0.11")

RECORDS = [
    UnitRecord.new("web.service", "[Service]\nExecStart=/bin/true\n", DesiredState.LAUNCHED),
    MachineRecord("m1", IP, 7070, {"host": "h1"}, "0.1.0"),
    Assignment("web.service", unit_hash("x"), "x", DesiredState.LOADED, 0x1234),
    UnitState("m1", "active", "running", 1700000000.5, None,
              ipaddress.ip_address("10.244.3.5"), 42),
    UnitState("m1", "failed", "failed", 0.0, 1, None, None),
    Unscheduled("no eligible machine"),
    Leader("m1", 1700000000.0),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_round_trip(record: object) -> None:
    cls = type(record)
    assert cls.from_json("/k", record.to_json()) == record  # type: ignore[attr-defined]


def test_unit_record_new_hashes_contents() -> None:
    rec = UnitRecord.new("a.service", "abc", DesiredState.INACTIVE)
    assert rec.hash == "a9993e364706816aba3e25717850c26c9cd0d89d"


@pytest.mark.parametrize(("cls", "value", "words"), [
    (UnitRecord, b"not json", "not JSON"),
    (UnitRecord, b"[1]", "not a JSON object"),
    (UnitRecord, b'{"name":"a.service","contents":"","hash":"h","desired":"running"}',
     "desired"),
    (UnitRecord, b'{"contents":"","hash":"h","desired":"loaded"}', "name"),
    (MachineRecord, b'{"id":"m1","ip":"nope"}', "'ip'"),
    (MachineRecord, b'{"id":"m1","ip":"198.18.0.1","port":70000}', "'port'"),
    (MachineRecord, b'{"id":"m1","ip":"198.18.0.1","metadata":{"a":1}}', "metadata"),
    (Assignment, b'{"name":"a.service","hash":"h","contents":"","desired":"inactive"}',
     "desired"),
    (UnitState, b'{"machine":"m1","active":"active","sub":"running","exit":"x"}', "exit"),
    (UnitState, b'{"machine":"m1","active":"active","sub":"","address":"10.0.0"}', "address"),
    (UnitState, b'{"machine":"m1","active":"active","sub":"","since":true}', "since"),
    (Leader, b'{"since":1}', "machine"),
    (Unscheduled, b'{"reason":5}', "reason"),
], ids=["unit-not-json", "unit-not-object", "unit-bad-desired", "unit-no-name",
        "machine-bad-ip", "machine-bad-port", "machine-bad-metadata", "assign-inactive",
        "state-bad-exit", "state-bad-address", "state-bool-since", "leader-no-machine",
        "unscheduled-bad-reason"])
def test_malformed_values_name_the_key(cls: type, value: bytes, words: str) -> None:
    key = "/weft/sched/units/a.service"
    with pytest.raises(RecordError) as info:
        cls.from_json(key, value)
    assert info.value.key == key and words in str(info.value)
    assert str(info.value).startswith(key)


def test_unknown_fields_ignored() -> None:
    rec = Leader.from_json("/k", b'{"machine":"m1","since":2,"extra":[1]}')
    assert rec == Leader("m1", 2.0)


@pytest.mark.parametrize(("key", "parsed"), [
    (LAYOUT.unit("web@1.service"), ParsedKey(KeyKind.UNIT, unit="web@1.service")),
    (LAYOUT.machine("m1"), ParsedKey(KeyKind.MACHINE, machine="m1")),
    (LAYOUT.member("m1"), ParsedKey(KeyKind.MEMBER, machine="m1")),
    (LAYOUT.assign("m1", "a.service"), ParsedKey(KeyKind.ASSIGN, "m1", "a.service")),
    (LAYOUT.state("a.service", "m2"), ParsedKey(KeyKind.STATE, "m2", "a.service")),
    (LAYOUT.unscheduled("a.service"), ParsedKey(KeyKind.UNSCHEDULED, unit="a.service")),
    (LAYOUT.leader(), ParsedKey(KeyKind.LEADER)),
], ids=["unit", "machine", "member", "assign", "state", "unscheduled", "leader"])
def test_keys_build_and_parse(key: str, parsed: ParsedKey) -> None:
    assert key.startswith("/weft/sched/")
    assert LAYOUT.parse(key) == parsed


def test_layout_strings() -> None:
    assert LAYOUT.assign("m1", "a.service") == "/weft/sched/assign/m1/a.service"
    assert LAYOUT.assign_prefix("m1") == "/weft/sched/assign/m1/"
    assert LAYOUT.prefix(KeyKind.UNIT) == "/weft/sched/units/"
    assert LAYOUT.leader() == "/weft/sched/leader"
    assert LAYOUT.state("a.service", "m1") == "/weft/sched/state/a.service/m1"
    assert LAYOUT.state_prefix("a.service") == "/weft/sched/state/a.service/"
    assert Layout("/t/x/").unit("a.service") == "/t/x/units/a.service"


@pytest.mark.parametrize("key", [
    "/other/units/a.service", "/weft/sched/jobs/a.service", "/weft/sched/units/bad",
    "/weft/sched/assign/m1", "/weft/sched/leader/x", "/weft/sched/machines/",
    "/weft/sched/state/a.service",
], ids=["foreign-root", "unknown-kind", "bad-unit-name", "assign-no-unit", "leader-child",
        "machine-empty", "state-no-machine"])
def test_bad_keys(key: str) -> None:
    with pytest.raises(RecordError) as info:
        LAYOUT.parse(key)
    assert info.value.key == key


def test_bad_machine_and_root_refused() -> None:
    with pytest.raises(ValueError):
        LAYOUT.machine("a/b")
    with pytest.raises(ValueError):
        Layout("weft")


@pytest.mark.parametrize(("unit", "label"), [
    ("web@1.service", "web-1-service"),
    ("Web.Service", "web-service"),
    ("a" * 80 + ".service", None),
], ids=["instance", "lower", "long"])
def test_instance_label(unit: str, label: str | None) -> None:
    got = instance_label(unit)
    assert len(got) <= 63
    if label is not None:
        assert got == label


def test_service_key() -> None:
    assert service_key("skydns.local", "web", "web@1.service") == \
        "/skydns/local/skydns/web/web-1-service"
