"""The engine: one pass as data (plan_pass: placement, the grace-and-majority rule, one
guarded transaction per unit), and leader election on the in-memory store, with the
store's history checked so that no revision ever has a unit on two machines."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time

from overlay.sched.engine import Engine, Snapshot, plan_pass
from overlay.sched.fence import Timings
from overlay.sched.keys import LAYOUT, KeyKind
from overlay.sched.model import (
    Assignment,
    DesiredState,
    MachineRecord,
    UnitRecord,
)
from overlay.store.api import EventType, LeaseNotFoundError, Store
from overlay.store.memory import MemoryStore

T = Timings(ttl=2, renew=0.5, grace=1.0, probe_timeout=0.3)
LEADER = LAYOUT.leader().encode()


def machine(mid: str, **meta: str) -> MachineRecord:
    return MachineRecord(mid, ipaddress.IPv4Address("198.18.0.1"), 9180, meta)


def unit(name: str, desired: DesiredState = DesiredState.LAUNCHED, fleet: str = "") -> UnitRecord:
    text = "[Service]\nExecStart=/bin/sleep 60\n" + (f"[X-Fleet]\n{fleet}\n" if fleet else "")
    return UnitRecord.new(name, text, desired)


def snap(units: list[UnitRecord], present: list[str], members: list[str] | None = None,
         assigned: dict[tuple[str, str], int] | None = None) -> Snapshot:
    by = {u.name: u for u in units}
    assignments = {(m, n): (Assignment(n, by[n].hash, by[n].contents, by[n].desired), rev)
                   for (m, n), rev in (assigned or {}).items()}
    return Snapshot(by, {m: machine(m) for m in present},
                    frozenset(members if members is not None else present), assignments, {})


def ops(result_writes: object) -> list[tuple[str, str]]:
    out = []
    for w in result_writes:  # type: ignore[attr-defined]
        for op in w.ops:
            out.append(("del" if op.delete else "put", op.key.decode()))
    return out


def test_new_unit_goes_to_the_least_loaded_machine_in_one_guarded_txn() -> None:
    s = snap([unit("a.service"), unit("b.service")], ["m1", "m2"],
             assigned={("m1", "a.service"): 5})
    r = plan_pass(s, LAYOUT, LEADER, 7, 0x99, {}, 100.0, T)
    assert ops(r.writes) == [("put", LAYOUT.assign("m2", "b.service"))]
    (w,) = r.writes
    assert w.compares[0].key == LEADER and w.compares[0].expect == 7
    assert (w.compares[1].target, w.compares[1].expect) == ("create", 0)
    assert Assignment.from_json("k", w.ops[0].value).engine == 0x99


def test_lost_machine_moves_only_after_grace_in_one_txn_then_leaves_members() -> None:
    s = snap([unit("a.service")], ["m2", "m3"], ["m1", "m2", "m3"], {("m1", "a.service"): 5})
    lost: dict[str, float] = {}
    r = plan_pass(s, LAYOUT, LEADER, 7, 1, lost, 100.0, T)
    assert r.writes == () and lost == {"m1": 100.0} and "grace" in r.held_reason
    r = plan_pass(s, LAYOUT, LEADER, 7, 1, lost, 100.0 + T.grace, T)
    move, forget = r.writes
    assert ops([move]) == [("del", LAYOUT.assign("m1", "a.service")),
                           ("put", LAYOUT.assign("m2", "a.service"))]
    assert ("mod", 5) in [(c.target, c.expect) for c in move.compares]
    # only while m1 is still absent: a returning agent registers before it reads
    assert (LAYOUT.machine("m1").encode(), "create", 0) in [
        (c.key, c.target, c.expect) for c in move.compares]
    assert ops([forget]) == [("del", LAYOUT.member("m1"))]


def test_majority_lost_at_once_moves_nothing() -> None:
    s = snap([unit("a.service"), unit("b.service")], ["m3"], ["m1", "m2", "m3"],
             {("m1", "a.service"): 5, ("m2", "b.service"): 6})
    lost = {"m1": 0.0, "m2": 0.0}
    r = plan_pass(s, LAYOUT, LEADER, 7, 1, lost, 1e6, T)
    assert r.writes == () and "1 of 3" in r.held_reason


def test_desired_state_change_rewrites_the_assignment_and_unplaceable_is_unscheduled() -> None:
    loaded = unit("a.service", DesiredState.LOADED)
    launched = UnitRecord(loaded.name, loaded.contents, loaded.hash, DesiredState.LAUNCHED)
    s = snap([loaded], ["m1"], assigned={("m1", "a.service"): 5})
    s = Snapshot({"a.service": launched, "x.service": unit("x.service", fleet="MachineID=zz")},
                 s.machines, s.members, s.assignments, {})
    r = plan_pass(s, LAYOUT, LEADER, 7, 1, {}, 0.0, T)
    assert sorted(ops(r.writes)) == [("put", LAYOUT.assign("m1", "a.service")),
                                     ("put", LAYOUT.unscheduled("x.service"))]


def test_inactive_unit_is_unassigned() -> None:
    s = snap([unit("a.service", DesiredState.INACTIVE)], ["m1"],
             assigned={("m1", "a.service"): 5})
    r = plan_pass(s, LAYOUT, LEADER, 7, 1, {}, 0.0, T)
    assert ops(r.writes) == [("del", LAYOUT.assign("m1", "a.service"))]


async def never_twice(store: Store, upto: int) -> None:
    """Replay assign/ history: at no revision is a unit assigned to two machines."""
    where: dict[str, set[str]] = {}
    prefix = LAYOUT.prefix(KeyKind.ASSIGN).encode()
    agen = store.watch(prefix, 1)
    async for batch in agen:
        for ev in batch:
            p = LAYOUT.parse(ev.kv.key.decode())
            if ev.type is EventType.DELETE:
                where.get(p.unit, set()).discard(p.machine)
            else:
                where.setdefault(p.unit, set()).add(p.machine)
        assert all(len(ms) <= 1 for ms in where.values()), where
        if batch[-1].kv.mod_revision >= upto:
            break
    await agen.aclose()  # type: ignore[attr-defined]


async def wait_for(check, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


async def test_one_leader_places_and_a_successor_takes_over() -> None:
    store = MemoryStore()
    lease = await store.grant(60)
    for m in ("m1", "m2"):
        await store.put(LAYOUT.machine(m).encode(), machine(m).to_json(), lease)
        await store.put(LAYOUT.member(m).encode(), machine(m).to_json())
    engines = [Engine(store, m, T, LAYOUT) for m in ("m1", "m2")]
    tasks = [asyncio.create_task(e.run()) for e in engines]
    try:
        await store.put(LAYOUT.unit("a.service").encode(), unit("a.service").to_json())

        async def placed(name: str) -> bool:
            listing = await store.list(LAYOUT.prefix(KeyKind.ASSIGN).encode())
            return any(kv.key.decode().endswith("/" + name) for kv in listing.items)

        await wait_for(lambda: placed("a.service"))
        assert sum(e.leading for e in engines) == 1
        first = next(i for i, e in enumerate(engines) if e.leading)
        tasks[first].cancel()  # the leader goes away (its lease is revoked)
        with contextlib.suppress(asyncio.CancelledError):
            await tasks[first]
        other = engines[1 - first]
        await wait_for(lambda: _true(other.leading), 5)
        await store.put(LAYOUT.unit("b.service").encode(), unit("b.service").to_json())
        await wait_for(lambda: placed("b.service"))
        await never_twice(store, store.revision)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


async def test_engine_on_a_fake_clock_waits_out_grace_then_moves_in_one_revision() -> None:
    from tests.fakeclock import FakeClock

    clock = FakeClock()
    store = MemoryStore(clock)
    leases = {m: await store.grant(int(T.ttl)) for m in ("m1", "m2", "m3")}
    for m, lease in leases.items():
        await store.put(LAYOUT.machine(m).encode(), machine(m).to_json(), lease)
        await store.put(LAYOUT.member(m).encode(), machine(m).to_json())
    await store.put(LAYOUT.unit("a.service").encode(), unit("a.service").to_json())
    engine = Engine(store, "m2", T, LAYOUT, clock)
    assert await engine._campaign()

    async def where() -> list[str]:
        listing = await store.list(LAYOUT.prefix(KeyKind.ASSIGN).encode())
        return [LAYOUT.parse(kv.key.decode()).machine for kv in listing.items]

    await engine.one_pass()
    assert await where() == ["m1"]  # least loaded, ties by id
    # m1 goes silent: m2 and m3 (and the engine's own lease) keep renewing
    for _ in range(int(T.ttl / T.renew) + 1):
        clock.advance(T.renew)
        for m in ("m2", "m3"):
            await store.keepalive(leases[m])
        await store.keepalive(engine.lease)
    store.expire_leases()
    await engine.one_pass()
    assert await where() == ["m1"], "moved inside the grace period"
    clock.advance(T.grace - 0.1)
    await engine.one_pass()
    assert await where() == ["m1"]
    clock.advance(0.1)
    rev = store.revision
    await engine.one_pass()
    assert await where() == ["m2"]
    kv = await store.get(LAYOUT.assign("m2", "a.service").encode())
    assert kv is not None and kv.mod_revision == rev + 1, "delete + put in one revision"
    assert await store.get(LAYOUT.member("m1").encode()) is None


async def test_engine_moves_nothing_when_a_majority_vanishes_at_once() -> None:
    from tests.fakeclock import FakeClock

    clock = FakeClock()
    store = MemoryStore(clock)
    leases = {m: await store.grant(int(T.ttl)) for m in ("m1", "m2", "m3")}
    for m, lease in leases.items():
        await store.put(LAYOUT.machine(m).encode(), machine(m).to_json(), lease)
        await store.put(LAYOUT.member(m).encode(), machine(m).to_json())
    await store.put(LAYOUT.unit("a.service").encode(), unit("a.service").to_json())
    engine = Engine(store, "m3", T, LAYOUT, clock)
    assert await engine._campaign()
    await engine.one_pass()
    for _ in range(10):  # m1 and m2 silent (a store-side event), only m3 renews
        clock.advance(T.renew)
        await store.keepalive(leases["m3"])
        await store.keepalive(engine.lease)
    store.expire_leases()
    for _ in range(5):
        clock.advance(T.grace)
        await store.keepalive(leases["m3"])
        await store.keepalive(engine.lease)
        await engine.one_pass()
    listing = await store.list(LAYOUT.prefix(KeyKind.ASSIGN).encode())
    assert [LAYOUT.parse(kv.key.decode()).machine for kv in listing.items] == ["m1"]


class _CancelOnKeepalive(MemoryStore):
    """Cancels ``victim`` from inside keepalive() and then reports the lease gone: the
    engine's cancel and its deposition land at the same moment."""

    victim: asyncio.Task[None] | None = None

    async def keepalive(self, lease: int) -> int:
        if self.victim is not None:
            self.victim.cancel()
            raise LeaseNotFoundError(lease)
        return await super().keepalive(lease)


async def test_a_cancel_that_lands_with_a_deposition_stops_the_engine() -> None:
    store = _CancelOnKeepalive()
    engine = Engine(store, "m1", T, LAYOUT)
    task = asyncio.create_task(engine.run())
    try:
        async with asyncio.timeout(5):
            while not engine.leading:
                await asyncio.sleep(0.01)
        store.victim = task
        done, _ = await asyncio.wait([task], timeout=5)
        assert done, "the engine swallowed its cancel and campaigned again"
        assert task.cancelled()
    finally:
        store.victim = None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_deposition_alone_does_not_stop_the_engine() -> None:
    class Lapsing(MemoryStore):
        lapse = 0

        async def keepalive(self, lease: int) -> int:
            if self.lapse:
                self.lapse -= 1
                raise LeaseNotFoundError(lease)
            return await super().keepalive(lease)

    store = Lapsing()
    engine = Engine(store, "m1", T, LAYOUT)
    task = asyncio.create_task(engine.run())
    try:
        async with asyncio.timeout(10):
            while not engine.leading:
                await asyncio.sleep(0.01)
            store.lapse = 1
            while engine.leading:
                await asyncio.sleep(0.01)
            while not engine.leading:  # campaigns again and wins
                await asyncio.sleep(0.01)
        assert not task.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
