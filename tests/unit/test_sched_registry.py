"""The fleetctl verbs' core: state machine, argument resolution, refusals before any write,
CAS writes, blocking waits, and the rows the list commands print (over MemoryStore)."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json

import pytest

from overlay.cli.fleet_cmd import (
    render_machines,
    render_unit_files,
    render_units,
    run_verb,
    status_text,
    table,
)
from overlay.sched.errors import UnitFileError, UnitStateError
from overlay.sched.keys import Layout
from overlay.sched.model import (
    Assignment,
    DesiredState,
    MachineRecord,
    UnitRecord,
    UnitState,
    Unscheduled,
)
from overlay.sched.registry import (
    Snapshot,
    Verb,
    check_units,
    next_desired,
    read_snapshot,
    resolve,
    snapshot,
)
from overlay.store.api import KeyValue
from overlay.store.memory import MemoryStore

L = Layout("/t/sched/")
HELLO = "[Service]\nExecStart=/bin/sleep 1000\n"
IN, LO, R = DesiredState.INACTIVE, DesiredState.LOADED, DesiredState.LAUNCHED


@pytest.mark.parametrize(("verb", "current", "want"), [
    (Verb.SUBMIT, None, IN), (Verb.SUBMIT, R, None),
    (Verb.LOAD, None, LO), (Verb.LOAD, IN, LO), (Verb.LOAD, R, None),
    (Verb.START, None, R), (Verb.START, IN, R), (Verb.START, LO, R), (Verb.START, R, None),
    (Verb.STOP, R, LO), (Verb.STOP, LO, None), (Verb.STOP, IN, None), (Verb.STOP, None, None),
    (Verb.UNLOAD, R, IN), (Verb.UNLOAD, LO, IN), (Verb.UNLOAD, IN, None),
], ids=["submit-new", "submit-existing", "load-new", "load-inactive", "load-launched-unchanged",
        "start-new", "start-inactive", "start-loaded", "start-launched", "stop-launched",
        "stop-loaded", "stop-inactive", "stop-missing", "unload-launched", "unload-loaded",
        "unload-inactive"])
def test_state_machine(verb: Verb, current: DesiredState | None,
                       want: DesiredState | None) -> None:
    assert next_desired(verb, current) == want


def _snap(*units: UnitRecord) -> Snapshot:
    items = [KeyValue(L.unit(u.name).encode(), u.to_json(), 5, 5 + i, 1)
             for i, u in enumerate(units)]
    return snapshot(items, 10, L)


def _files(files: dict[str, str]):  # type: ignore[no-untyped-def]
    return lambda path: files.get(path)


def test_resolve_file_registry_template() -> None:
    snap = _snap(UnitRecord.new("web@.service", HELLO, IN), UnitRecord.new("a.service", HELLO, R))
    files = _files({"dir/b.service": "B", "dir/x@.service": "X"})
    assert resolve("dir/b.service", snap, files).contents == "B"
    got = resolve("a.service", snap, files)
    assert (got.contents, got.stored is not None) == (HELLO, True)
    got = resolve("web@3.service", snap, files)
    assert (got.name, got.contents, got.source) == ("web@3.service", HELLO,
                                                      "template web@.service")
    assert resolve("dir/x@1.service", snap, files).contents == "X"
    with pytest.raises(UnitFileError, match="not found"):
        resolve("nope.service", snap, files)
    with pytest.raises(UnitFileError, match="unit type"):
        resolve("nope", snap, files)


def _local(name: str, text: str, snap: Snapshot):  # type: ignore[no-untyped-def]
    return resolve(name, snap, _files({name: text}))


@pytest.mark.parametrize(("verb", "files", "stored", "error", "words"), [
    (Verb.SUBMIT, {"a.service": "[X-Fleet]\nBogus=1\n"}, [], UnitFileError, "a.service:2: Bogus"),
    (Verb.START, {"t@.service": HELLO}, [], UnitStateError, "instance such as t@1.service"),
    (Verb.SUBMIT, {"a.service": HELLO + "# changed\n"}, [UnitRecord.new("a.service", HELLO, IN)],
     UnitStateError, "destroy it first"),
    (Verb.SUBMIT, {"a.service": "[X-Fleet]\nMachineOf=b.service\n"},
     [UnitRecord.new("b.service", "[X-Fleet]\nMachineOf=a.service\n", IN)], UnitFileError,
     "a.service:2: MachineOf: cyclic MachineOf"),
    (Verb.SUBMIT, {"a.service": "[X-Fleet]\nMachineOf=b.service\n",
                   "b.service": "[X-Fleet]\nMachineOf=a.service\n"}, [], UnitFileError,
     "cyclic MachineOf: a.service -> b.service -> a.service"),
], ids=["unknown-fleet-key", "start-template", "immutable", "cycle-with-registry",
        "cycle-within-command"])
def test_check_units_refuses(verb: Verb, files: dict[str, str], stored: list[UnitRecord],
                             error: type, words: str) -> None:
    snap = _snap(*stored)
    local = [resolve(n, snap, _files(files)) for n in files]
    with pytest.raises(error) as info:
        check_units(verb, local, snap)
    assert words in str(info.value)


def test_destroy_ignores_a_different_local_file() -> None:
    snap = _snap(UnitRecord.new("a.service", HELLO, IN))
    check_units(Verb.DESTROY, [_local("a.service", "other", snap)], snap)


def test_snapshot_skips_bad_records_with_a_note() -> None:
    good = UnitRecord.new("a.service", HELLO, R)
    ip = ipaddress.ip_address("198.18.0.2")
    items = [
        KeyValue(L.unit("a.service").encode(), good.to_json(), 2, 2, 1),
        KeyValue(L.unit("b.service").encode(), b"{not json", 3, 3, 1),
        KeyValue(L.unit("c.service").encode(), good.to_json(), 4, 4, 1),  # name mismatch
        KeyValue(b"/t/sched/units/bad", b"{}", 5, 5, 1),
        KeyValue(L.machine("m1").encode(), MachineRecord("m1", ip, 80).to_json(), 6, 6, 1),
        KeyValue(L.assign("m1", "a.service").encode(), b"{}", 7, 7, 1),
        KeyValue(L.state("a.service", "m1").encode(),
                 UnitState("m1", "active", "running").to_json(), 8, 8, 1),
        KeyValue(L.unscheduled("z.service").encode(), Unscheduled("why").to_json(), 9, 9, 1),
    ]
    snap = snapshot(items, 9, L)
    assert list(snap.units) == ["a.service"]
    assert len(snap.problems) == 3 and any("/t/sched/units/b.service" in p
                                           for p in snap.problems)
    assert snap.assignments == {"a.service": ("m1",)}
    assert snap.states["a.service"]["m1"].active == "active"
    assert snap.unscheduled == {"z.service": "why"}


async def _seed_machine(store: MemoryStore, mid: str, ip: str, **meta: str) -> None:
    rec = MachineRecord(mid, ipaddress.ip_address(ip), 7070, meta)
    await store.put(L.machine(mid).encode(), rec.to_json())


async def test_verbs_walk_the_state_machine_with_cas() -> None:
    store = MemoryStore()
    files = _files({"a.service": HELLO, "a2.service": HELLO + "#2\n"})
    out = io.StringIO()

    async def verb(v: Verb, *names: str) -> int:
        return await run_verb(store, L, v, names, block=False, attempts=0, out=out,
                              read_file=files)

    async def desired(name: str) -> str | None:
        snap = await read_snapshot(store, L)
        return snap.units[name].record.desired.value if name in snap.units else None

    assert await verb(Verb.SUBMIT, "a.service") == 0
    assert await desired("a.service") == "inactive"
    rev = store.revision
    assert await verb(Verb.SUBMIT, "a.service") == 0  # same file: nothing written
    assert store.revision == rev
    assert await verb(Verb.LOAD, "a.service") == 0 and await desired("a.service") == "loaded"
    assert await verb(Verb.START, "a.service") == 0 and await desired("a.service") == "launched"
    assert await verb(Verb.STOP, "a.service") == 0 and await desired("a.service") == "loaded"
    assert await verb(Verb.UNLOAD, "a.service") == 0
    assert await desired("a.service") == "inactive"
    assert await verb(Verb.DESTROY, "a.service") == 0 and await desired("a.service") is None
    assert "Triggered unit a.service start" in out.getvalue()
    assert "Destroyed a.service" in out.getvalue()


async def test_bad_input_writes_nothing() -> None:
    store = MemoryStore()
    files = _files({"good.service": HELLO, "bad.service": "[X-Weft]\nService=web:port\n"})
    rev = store.revision
    with pytest.raises(UnitFileError) as info:
        await run_verb(store, L, Verb.START, ["good.service", "bad.service"], block=False,
                       attempts=0, out=io.StringIO(), read_file=files)
    assert (info.value.source, info.value.line, info.value.key) == ("bad.service", 2, "Service")
    assert store.revision == rev


async def test_template_instance_start_creates_instance_record() -> None:
    store = MemoryStore()
    files = _files({"web@.service": HELLO})
    await run_verb(store, L, Verb.SUBMIT, ["web@.service"], block=False, attempts=0,
                   out=io.StringIO(), read_file=files)
    await run_verb(store, L, Verb.START, ["web@1.service"], block=False, attempts=0,
                   out=io.StringIO(), read_file=_files({}))
    snap = await read_snapshot(store, L)
    assert snap.units["web@.service"].record.desired is IN
    inst = snap.units["web@1.service"].record
    assert (inst.desired, inst.contents) == (R, HELLO)


async def test_start_blocks_until_a_machine_reports_active() -> None:
    store = MemoryStore()
    await _seed_machine(store, "m1", "198.18.0.5")
    out = io.StringIO()
    task = asyncio.create_task(run_verb(store, L, Verb.START, ["a.service"], block=True,
                                        attempts=0, out=out,
                                        read_file=_files({"a.service": HELLO})))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not task.done()
    rec = UnitRecord.new("a.service", HELLO, R)
    await store.put(L.assign("m1", "a.service").encode(),
                    Assignment("a.service", rec.hash, HELLO, R).to_json())
    await store.put(L.state("a.service", "m1").encode(),
                    UnitState("m1", "activating", "start").to_json())
    for _ in range(50):
        await asyncio.sleep(0)
    assert not task.done()
    await store.put(L.state("a.service", "m1").encode(),
                    UnitState("m1", "active", "running").to_json())
    assert await asyncio.wait_for(task, 5) == 0
    assert "Unit a.service launched on m1/198.18.0.5" in out.getvalue()


async def test_start_gives_up_after_block_attempts() -> None:
    store = MemoryStore()
    # fractional attempts are not a flag value; wait_for takes seconds, tested via run_verb
    from overlay.cli import fleet_cmd

    old = fleet_cmd.BLOCK_ATTEMPT_SECONDS
    fleet_cmd.BLOCK_ATTEMPT_SECONDS = 0.05
    try:
        status = await run_verb(store, L, Verb.START, ["a.service"], block=True, attempts=1,
                                out=io.StringIO(), read_file=_files({"a.service": HELLO}))
    finally:
        fleet_cmd.BLOCK_ATTEMPT_SECONDS = old
    assert status == 1


def _cluster_snapshot() -> Snapshot:
    ip1, ip2 = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.2")
    web = UnitRecord.new("web.service", "[X-Weft]\nNetwork=true\n", R)
    glob = UnitRecord.new("g.service", "[X-Fleet]\nGlobal=true\n", R)
    lost = UnitRecord.new("far.service", "[X-Fleet]\nMachineMetadata=region=mars\n", R)
    items = [
        KeyValue(L.unit(u.name).encode(), u.to_json(), 2, 2, 1) for u in (web, glob, lost)
    ] + [
        KeyValue(L.machine("m1").encode(), MachineRecord("m1", ip1, 1, {"host": "h1"}).to_json(),
                 3, 3, 1),
        KeyValue(L.machine("machine-with-long-id").encode(),
                 MachineRecord("machine-with-long-id", ip2).to_json(), 3, 3, 1),
        KeyValue(L.assign("m1", "web.service").encode(), b"{}", 4, 4, 1),
        KeyValue(L.assign("m1", "g.service").encode(), b"{}", 4, 4, 1),
        KeyValue(L.assign("machine-with-long-id", "g.service").encode(), b"{}", 4, 4, 1),
        KeyValue(L.state("web.service", "m1").encode(), UnitState(
            "m1", "active", "running", 1.7e9, 0, ipaddress.ip_address("10.244.1.2"),
            99).to_json(), 5, 5, 1),
        KeyValue(L.state("g.service", "m1").encode(),
                 UnitState("m1", "failed", "failed", 0, 3).to_json(), 5, 5, 1),
        KeyValue(L.unscheduled("far.service").encode(),
                 Unscheduled("no eligible machine among 2").to_json(), 6, 6, 1),
    ]
    return snapshot(items, 6, L)


def test_list_json_fields_are_exactly_the_issues() -> None:
    snap = _cluster_snapshot()
    units = json.loads(render_units(snap, True, False, True))
    assert all(set(r) == {"unit", "machine", "ip", "address", "active", "sub"} for r in units)
    assert {"unit": "web.service", "machine": "m1", "ip": "198.18.0.1",
            "address": "10.244.1.2", "active": "active", "sub": "running"} in units
    files = json.loads(render_unit_files(snap, True, False, True))
    assert all(set(r) == {"unit", "hash", "desired", "state", "target", "reason"}
               for r in files)
    by = {r["unit"]: r for r in files}
    assert by["far.service"]["reason"] == "no eligible machine among 2"
    assert by["far.service"]["target"] is None and by["far.service"]["state"] == "inactive"
    assert by["g.service"]["target"] == "global" and by["web.service"]["target"] == "m1"
    assert (by["web.service"]["state"], by["g.service"]["state"]) == ("launched", "loaded")
    machines = json.loads(render_machines(snap, True, False, True))
    assert machines[0] == {"machine": "m1", "ip": "198.18.0.1", "metadata": {"host": "h1"}}


def test_list_tables() -> None:
    snap = _cluster_snapshot()
    text = render_units(snap, False, False, True)
    assert text.splitlines()[0].split() == ["UNIT", "MACHINE", "ACTIVE", "SUB", "ADDRESS"]
    assert "machine-.../198.18.0.2" in text and "m1/198.18.0.1" in text
    assert "machine-with-long-id/198.18.0.2" in render_units(snap, False, True, True)
    files = render_unit_files(snap, False, False, False).splitlines()
    assert files[0].split()[:5] == ["far.service", files[0].split()[1], "launched",
                                    "inactive", "-"]
    assert len(files[0].split()[1]) == 7
    assert render_machines(snap, False, False, True).splitlines()[1].split() == [
        "m1", "198.18.0.1", "host=h1"]
    assert table(("A", "B"), []) == "A  B\n"


def test_status_text() -> None:
    snap = _cluster_snapshot()
    text = status_text(snap, "web.service", 1.7e9 + 5)
    assert "Machine: m1/198.18.0.1" in text and "Active: active (running)" in text
    assert "pid 99" in text and "Address: 10.244.1.2" in text and "Last exit: 0" in text
    assert "no machine: no eligible machine" in status_text(snap, "far.service", 0)
    assert "does not exist" in status_text(snap, "nope.service", 0)


def test_unload_done_and_rows_despite_a_leftover_inactive_report() -> None:
    from overlay.sched.registry import Waiter, unit_rows
    from overlay.store.api import EventType, WatchEvent

    rec = UnitRecord.new("a.service", HELLO, IN)
    items = [KeyValue(L.unit("a.service").encode(), rec.to_json(), 2, 2, 1),
             KeyValue(L.assign("m1", "a.service").encode(), b"{}", 3, 3, 1),
             KeyValue(L.state("a.service", "m1").encode(),
                      UnitState("m1", "active", "running").to_json(), 4, 4, 1)]
    snap = snapshot(items, 4, L)
    w = Waiter(Verb.UNLOAD, ["a.service"], snap, L)
    assert not w.done("a.service")
    w.feed([WatchEvent(EventType.DELETE, KeyValue(L.assign("m1", "a.service").encode(), b"",
                                                  0, 5, 0)),
            WatchEvent(EventType.PUT, KeyValue(L.state("a.service", "m1").encode(),
                                               UnitState("m1", "inactive", "dead").to_json(),
                                               4, 6, 2))])
    assert w.done("a.service")
    dead = KeyValue(L.state("a.service", "m1").encode(),
                    UnitState("m1", "inactive", "dead").to_json(), 4, 6, 2)
    left = snapshot([items[0], dead], 6, L)
    assert unit_rows(left) == []


async def test_apply_rereads_after_losing_a_race() -> None:
    from overlay.sched.registry import apply

    store = MemoryStore()
    rec = UnitRecord.new("a.service", HELLO, IN)
    await store.put(L.unit("a.service").encode(), rec.to_json())
    stale = resolve("a.service", await read_snapshot(store, L), _files({}))
    # someone else loads it meanwhile: our start's CAS fails, it re-reads and starts
    await store.put(L.unit("a.service").encode(),
                    UnitRecord.new("a.service", HELLO, LO).to_json())
    rev = store.revision
    out = await apply(store, L, Verb.START, stale)
    assert (out.changed, out.desired, store.revision) == (True, R, rev + 1)
    # destroyed and resubmitted with a different file meanwhile: refused, not overwritten
    await store.put(L.unit("a.service").encode(),
                    UnitRecord.new("a.service", HELLO, IN).to_json())
    stale = resolve("a.service", await read_snapshot(store, L), _files({}))
    other = UnitRecord.new("a.service", HELLO + "#x\n", IN)
    await store.put(L.unit("a.service").encode(), other.to_json())
    with pytest.raises(UnitStateError, match="meanwhile"):
        await apply(store, L, Verb.START, stale)
    # destroy of a unit changed since it was read still destroys what is there
    stale = resolve("a.service", await read_snapshot(store, L), _files({}))
    await store.put(L.unit("a.service").encode(), other.to_json())
    assert (await apply(store, L, Verb.DESTROY, stale)).changed
    assert await store.get(L.unit("a.service").encode()) is None
