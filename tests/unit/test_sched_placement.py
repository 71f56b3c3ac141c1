"""Placement (least loaded, ties by id; metadata, conflicts, MachineOf, Global, Replaces)
and the lost-machine rule (grace period, majority of listed machines)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping

import pytest

from overlay.sched.model import DesiredState, MachineRecord, UnitRecord
from overlay.sched.placement import (
    Change,
    PlacementUnit,
    glob_matches,
    lost_machine_moves,
    machine_of_cycles,
    place,
    placement_unit,
)
from overlay.sched.unitfile import FleetOptions

IP = ipaddress.ip_address("198.18.0.1")


def M(mid: str, **meta: str) -> MachineRecord:
    return MachineRecord(mid, IP, 0, meta)


def U(name: str, desired: DesiredState = DesiredState.LAUNCHED, *,
      machine_id: str | None = None, machine_of: tuple[str, ...] = (),
      metadata: Mapping[str, set[str]] | None = None, conflicts: tuple[str, ...] = (),
      global_: bool = False, replaces: tuple[str, ...] = ()) -> PlacementUnit:
    meta = {k: frozenset(v) for k, v in (metadata or {}).items()}
    return PlacementUnit(name, FleetOptions(machine_id, machine_of, meta, conflicts, global_,
                                            replaces), desired)


THREE = [M("m1", region="us"), M("m2", region="eu"), M("m3", region="us", disk="ssd")]

CASES = [
    # (units, machines, assignments, hold, want placements, want unscheduled substrings)
    ([U("a.service"), U("b.service"), U("c.service"), U("d.service")], THREE, {}, (),
     {"a.service": ("m1",), "b.service": ("m2",), "c.service": ("m3",), "d.service": ("m1",)},
     {}),
    ([U("a.service")], [M("m2"), M("m10")], {}, (), {"a.service": ("m10",)}, {}),
    ([U("new.service"), U("x.service"), U("y.service")], THREE,
     {"x.service": ["m1"], "y.service": ["m2"]}, (), {"new.service": ("m3",)}, {}),
    ([U("a.service", metadata={"region": {"eu"}})], THREE, {}, (),
     {"a.service": ("m2",)}, {}),
    ([U("a.service", metadata={"region": {"us", "eu"}, "disk": {"ssd"}})], THREE, {}, (),
     {"a.service": ("m3",)}, {}),
    ([U("a.service", metadata={"region": {"ap"}})], THREE, {}, (), {},
     {"a.service": "metadata lacks region=ap"}),
    ([U("a.service", machine_id="m2")], THREE, {}, (), {"a.service": ("m2",)}, {}),
    ([U("a.service", machine_id="gone")], THREE, {}, (), {},
     {"a.service": "MachineID=gone"}),
    ([U("a.service", conflicts=("b*",)), U("b1.service")], [M("m1"), M("m2")],
     {"b1.service": ["m1"]}, (), {"a.service": ("m2",), "b1.service": ("m1",)}, {}),
    ([U("a.service"), U("b.service", conflicts=("a.service",))], [M("m1"), M("m2")],
     {"b.service": ["m1"]}, (), {"a.service": ("m2",), "b.service": ("m1",)}, {}),
    ([U(f"w@{i}.service", conflicts=("w@*.service",)) for i in (1, 2, 3)],
     [M("m1"), M("m2")], {}, (), {"w@1.service": ("m1",), "w@2.service": ("m2",)},
     {"w@3.service": "conflicts with w@"}),
    ([U("app.service", machine_of=("db.service",)), U("db.service"), U("z.service")], THREE,
     {"z.service": ["m1"]}, (), {"db.service": ("m2",), "app.service": ("m2",),
                                 "z.service": ("m1",)}, {}),
    ([U("app.service", machine_of=("db.service",))], THREE, {}, (), {},
     {"app.service": "MachineOf=db.service not there"}),
    ([U("a.service", machine_of=("b.service",)), U("b.service", machine_of=("a.service",))],
     THREE, {}, (), {}, {"a.service": "cyclic MachineOf", "b.service": "cyclic MachineOf"}),
    ([U("g.service", global_=True, metadata={"region": {"us"}}), U("a.service")], THREE, {},
     (), {"g.service": ("m1", "m3"), "a.service": ("m2",)}, {}),
    ([U("g.service", global_=True, conflicts=("x.service",)), U("x.service")],
     [M("m1"), M("m2")], {"x.service": ["m1"]}, (),
     {"g.service": ("m2",), "x.service": ("m1",)}, {}),
    ([U("new.service", replaces=("old.service",)), U("old.service"), U("f.service"),
      U("g.service")], [M("m1"), M("m2")],
     {"old.service": ["m1"], "f.service": ["m2"], "g.service": ["m2"]}, (),
     {"new.service": ("m1",), "old.service": ("m2",)}, {}),
    ([U("a.service", replaces=("b.service",)), U("b.service", replaces=("a.service",))],
     [M("m1")], {"a.service": ["m1"], "b.service": ["m1"]}, (),
     {"a.service": ("m1",), "b.service": ("m1",)}, {}),
    ([U("a.service", DesiredState.INACTIVE), U("b.service", DesiredState.LOADED)], THREE,
     {"a.service": ["m3"]}, (), {"b.service": ("m1",)}, {}),
    ([U("a.service")], [M("m2")], {"a.service": ["m1"]}, ("m1",), {"a.service": ("m1",)}, {}),
    ([U("a.service")], [M("m2")], {"a.service": ["m1"]}, (), {"a.service": ("m2",)}, {}),
    ([U("a.service")], [], {}, (), {}, {"a.service": "no machines are present"}),
    ([U("a.service", metadata={"region": {"us"}})], [M("m1", region="eu")],
     {"a.service": ["m1"]}, (), {}, {"a.service": "metadata lacks"}),
    ([U("a.service"), U("b.service")], [M("m1"), M("m2")],
     {"a.service": ["m1", "m2"]}, (), {"a.service": ("m1",), "b.service": ("m2",)}, {}),
]
IDS = ["spread-least-loaded", "tie-by-machine-id-string-order", "existing-load-counts",
       "metadata-match", "metadata-keys-and-values-or", "metadata-none-match",
       "machine-id", "machine-id-absent", "conflicts-glob", "conflicts-checked-both-ways",
       "conflicts-template-instances", "machine-of-follows-peer", "machine-of-peer-missing",
       "machine-of-cycle", "global-on-every-matching", "global-skips-conflict",
       "replaces-pushes-old-elsewhere", "mutual-replaces-ignored", "inactive-removed",
       "held-machine-kept", "lost-machine-moved", "no-machines", "stale-placement-dropped",
       "duplicate-assignment-fixed"]


@pytest.mark.parametrize(("units", "machines", "assigned", "hold", "want", "unsched"), CASES,
                         ids=IDS)
def test_place(units: list[PlacementUnit], machines: list[MachineRecord],
               assigned: Mapping[str, list[str]], hold: tuple[str, ...],
               want: Mapping[str, tuple[str, ...]], unsched: Mapping[str, str]) -> None:
    plan = place(units, machines, assigned, hold)
    for name, ms in want.items():
        assert plan.placements.get(name, ()) == ms, (name, plan)
    assert set(plan.unscheduled) == set(unsched), plan.unscheduled
    for name, words in unsched.items():
        assert words in plan.unscheduled[name]
    # add/remove are exactly the difference between input and output
    before = {(u, m) for u, ms in assigned.items() for m in ms}
    after = {(u, m) for u, ms in plan.placements.items() for m in ms}
    assert {(c.unit, c.machine) for c in plan.add} == after - before
    assert {(c.unit, c.machine) for c in plan.remove} == before - after


def test_move_reasons() -> None:
    plan = place([U("a.service")], [M("m2")], {"a.service": ["m1"]})
    assert plan.remove == (Change("a.service", "m1", "machine m1 is gone"),)
    assert plan.add == (Change("a.service", "m2", "least-loaded eligible"),)


def test_stable_when_nothing_changes() -> None:
    units = [U(f"u{i}.service") for i in range(20)]
    first = place(units, THREE, {})
    assigned = {u: list(ms) for u, ms in first.placements.items()}
    again = place(units, [*THREE, M("m4")], assigned)
    assert again.add == () and again.remove == ()  # no rebalancing, as fleet


def test_placement_unit_from_record() -> None:
    rec = UnitRecord.new("a@2.service", "[X-Fleet]\nConflicts=a@*.service\n",
                         DesiredState.LOADED)
    pu = placement_unit(rec)
    assert pu.fleet.conflicts == ("a@*.service",) and pu.desired is DesiredState.LOADED


@pytest.mark.parametrize(("pattern", "name", "match"), [
    ("web@*.service", "web@1.service", True), ("web@?.service", "web@10.service", False),
    ("[^a]*", "b.service", True), ("[!a]*", "a.service", False), ("db.service", "db.service",
                                                                  True),
], ids=["star", "question", "go-negation", "bang-negation", "literal"])
def test_glob(pattern: str, name: str, match: bool) -> None:
    assert glob_matches(pattern, name) is match


def test_machine_of_cycles() -> None:
    assert machine_of_cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == \
        [["a", "b", "c", "a"]]
    assert machine_of_cycles({"a": ["b"], "b": []}) == []


@pytest.mark.parametrize(("listed", "present", "since", "now", "release", "hold", "words"), [
    ({"m1", "m2", "m3"}, {"m1", "m2", "m3"}, {}, 100.0, set(), set(), ""),
    ({"m1", "m2", "m3"}, {"m1", "m2"}, {"m3": 90.0}, 100.0, {"m3"}, set(), ""),
    ({"m1", "m2", "m3"}, {"m1", "m2"}, {"m3": 97.0}, 100.0, set(), {"m3"}, "grace"),
    ({"m1", "m2", "m3"}, {"m1", "m2"}, {}, 100.0, set(), {"m3"}, "grace"),
    ({"m1", "m2", "m3"}, {"m1"}, {"m2": 0.0, "m3": 0.0}, 100.0, set(), {"m2", "m3"},
     "only 1 of 3"),
    ({"m1", "m2"}, {"m1"}, {"m2": 0.0}, 100.0, set(), {"m2"}, "majority is 2"),
    ({"m1", "m2", "m3", "m4", "m5"}, {"m1", "m2", "m3"}, {"m4": 0.0, "m5": 99.0}, 100.0,
     {"m4"}, {"m5"}, "grace"),
    (set(), {"m1"}, {}, 100.0, set(), set(), ""),
    ({"m1", "m2", "m3"}, set(), {}, 100.0, set(), {"m1", "m2", "m3"}, "store or network"),
], ids=["all-present", "after-grace", "within-grace", "just-noticed", "minority-present",
        "two-machines-one-lost", "five-two-lost-mixed", "new-machine-unlisted",
        "store-outage"])
def test_lost_machine_moves(listed: set[str], present: set[str], since: dict[str, float],
                            now: float, release: set[str], hold: set[str],
                            words: str) -> None:
    v = lost_machine_moves(listed, present, since, now, grace=5.0)
    assert (set(v.release), set(v.hold)) == (release, hold)
    assert words in v.reason
    assert bool(v.reason) == bool(hold)


def test_thousand_units_fifty_machines_fast() -> None:
    machines = [M(f"m{i:02d}", zone=f"z{i % 3}") for i in range(50)]
    units = [U(f"u{i}.service", metadata={"zone": {"z0", "z1"}} if i % 5 == 0 else None,
               conflicts=(f"u{i + 1}.service",) if i % 50 == 0 else ())
             for i in range(1000)]
    units.append(U("g.service", global_=True))
    start = time.perf_counter()
    plan = place(units, machines, {})
    elapsed = time.perf_counter() - start
    assert len(plan.placements) == 1001 and not plan.unscheduled
    loads = {}
    for ms in plan.placements.values():
        for m in ms:
            loads[m] = loads.get(m, 0) + 1
    assert max(loads.values()) - min(loads.values()) <= 1
    assert elapsed < 1.0, elapsed  # typically ~0.05 s; margin for a loaded machine
