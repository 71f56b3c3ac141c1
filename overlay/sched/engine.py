"""The scheduler engine: one leader in the cluster places units and moves those of lost
machines, writing every change as a compare-and-swap guarded by its leadership.

Theory of operation
-------------------
Every agent runs an engine; one leads. **Election**: grant a lease of the presence TTL
and create ``leader`` on it only if absent (``create_revision == 0``); the winner keeps
the lease alive every renew interval, the others watch the single ``leader`` key and
campaign again when it is deleted (its lease expired or was revoked). A leader that
cannot renew for a whole TTL, or whose guarded write fails because ``leader`` is no
longer its key, steps down at once.

**Leading**: watch ``units/``, ``machines/`` and ``members/`` (only while leader), and
after each burst of changes run one pass (``plan_pass``, pure):

1. ``lost_machine_moves`` (placement): machines listed in ``members/`` or holding
   assignments but without presence are lost; their units may move only ``grace``
   seconds after this engine first saw them lost and only while a majority of the
   listed machines hold presence. Held machines keep their assignments.
2. ``place`` computes the assignments; the pass turns the difference into one
   transaction per unit: every transaction compares ``leader``'s create revision with
   this engine's (a deposed leader writes nothing), each deleted assignment's mod
   revision (and, off a lost machine, that machine's continued absence), and each new
   assignment's absence. A move is the delete and the put in
   one transaction, so no store state ever has a unit on two machines.
3. ``unscheduled/<unit>`` carries the reason for units with no machine; a lost machine
   whose units have all moved is dropped from ``members/``.

Nothing is polled: a quiet cluster costs the leader one lease keep-alive per renew
interval, and a pass runs only after a change (or, while a machine is lost, once per
renew interval until the grace period is over).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from overlay.clock import Clock, SystemClock
from overlay.sched.errors import SchedError
from overlay.sched.fence import Timings
from overlay.sched.keys import KeyKind, Layout
from overlay.sched.model import (
    Assignment,
    DesiredState,
    Leader,
    MachineRecord,
    UnitRecord,
    Unscheduled,
)
from overlay.sched.placement import (
    PlacementUnit,
    lost_machine_moves,
    place,
    placement_unit,
)
from overlay.store.api import (
    Compare,
    EventType,
    LeaseNotFoundError,
    Store,
    StoreError,
    TxnOp,
)

log = logging.getLogger(__name__)

DEBOUNCE = 0.05  # coalesce a burst of submits into one pass
WRITES_IN_FLIGHT = 64  # a pass's guarded transactions sent concurrently


class Deposed(Exception):
    """This engine is no longer the leader."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one pass reads: records by name and the mod revisions to compare against."""

    units: Mapping[str, UnitRecord]
    machines: Mapping[str, MachineRecord]  # present (machines/)
    members: frozenset[str]  # listed (members/)
    assignments: Mapping[tuple[str, str], tuple[Assignment, int]]  # (machine, unit)
    unscheduled: Mapping[str, tuple[str, int]]  # unit -> (reason, mod revision)


@dataclass(frozen=True, slots=True)
class UnitWrite:
    """One transaction of a pass: the changes for one unit (or one bookkeeping key)."""

    unit: str
    compares: tuple[Compare, ...]
    ops: tuple[TxnOp, ...]
    why: str


@dataclass(frozen=True, slots=True)
class PassResult:
    writes: tuple[UnitWrite, ...]
    held_reason: str  # why lost machines' units stay put ("" if none are lost)
    lost: frozenset[str]


def plan_pass(snap: Snapshot, layout: Layout, leader_key: bytes, leader_rev: int,
              engine_lease: int, lost_since: dict[str, float], now: float,
              timings: Timings) -> PassResult:
    """One engine pass as data (pure; ``lost_since`` is updated in place)."""
    present = set(snap.machines)
    assigned_on = {m for m, _ in snap.assignments}
    listed = set(snap.members) | assigned_on
    lost = listed - present
    for m in list(lost_since):
        if m not in lost:
            del lost_since[m]
    for m in lost:
        lost_since.setdefault(m, now)
    verdict = lost_machine_moves(listed, present, lost_since, now, timings.grace)

    punits: list[PlacementUnit] = []
    broken: dict[str, str] = {}
    for name, rec in sorted(snap.units.items()):
        try:
            punits.append(placement_unit(rec, layout.unit(name)))
        except SchedError as exc:
            broken[name] = f"unit file refused: {exc}"
    current: dict[str, list[str]] = {}
    for m, name in snap.assignments:
        current.setdefault(name, []).append(m)
    plan = place(punits, list(snap.machines.values()), current, hold=verdict.hold)

    guard = Compare(leader_key, "create", leader_rev)
    per_unit: dict[str, tuple[list[Compare], list[TxnOp], list[str]]] = {}

    def entry(name: str) -> tuple[list[Compare], list[TxnOp], list[str]]:
        return per_unit.setdefault(name, ([guard], [], []))

    for ch in plan.remove:
        a, rev = snap.assignments[ch.machine, ch.unit]
        key = layout.assign(ch.machine, ch.unit).encode()
        cmps, ops, why = entry(ch.unit)
        cmps.append(Compare(key, "mod", rev))
        if ch.machine not in present:
            # moving off a lost machine: only while it is still absent. An agent that
            # came back registers before it reads its assignments, so it either sees
            # the move or the move fails: never both copies running.
            cmps.append(Compare(layout.machine(ch.machine).encode(), "create", 0))
        ops.append(TxnOp(key, delete=True))
        why.append(f"off {ch.machine} ({ch.reason})")
    for ch in plan.add:
        rec = snap.units[ch.unit]
        key = layout.assign(ch.machine, ch.unit).encode()
        a = Assignment(rec.name, rec.hash, rec.contents, rec.desired, engine_lease)
        cmps, ops, why = entry(ch.unit)
        cmps.append(Compare(key, "create", 0))
        ops.append(TxnOp(key, a.to_json()))
        why.append(f"onto {ch.machine} ({ch.reason})")
    removed = {(c.machine, c.unit) for c in plan.remove}
    for (m, name), (a, rev) in sorted(snap.assignments.items()):
        now_rec = snap.units.get(name)
        if (m, name) in removed or now_rec is None or now_rec.desired is DesiredState.INACTIVE:
            continue
        rec = now_rec
        if (a.hash, a.desired, a.contents) != (rec.hash, rec.desired, rec.contents):
            key = layout.assign(m, name).encode()
            new = Assignment(rec.name, rec.hash, rec.contents, rec.desired, engine_lease)
            cmps, ops, why = entry(name)
            cmps.append(Compare(key, "mod", rev))
            ops.append(TxnOp(key, new.to_json()))
            why.append(f"on {m}: now {rec.desired.value}")

    reasons = {**plan.unscheduled, **broken}
    for name in sorted(set(reasons) | set(snap.unscheduled)):
        key = layout.unscheduled(name).encode()
        old = snap.unscheduled.get(name)
        want = reasons.get(name) if name in snap.units else None
        if want is not None and (old is None or old[0] != want):
            cmps, ops, why = entry(name)
            cmps.append(Compare(key, "mod", old[1] if old else 0))
            ops.append(TxnOp(key, Unscheduled(want).to_json()))
            why.append(f"unscheduled: {want}")
        elif want is None and old is not None:
            cmps, ops, why = entry(name)
            cmps.append(Compare(key, "mod", old[1]))
            ops.append(TxnOp(key, delete=True))

    writes = [UnitWrite(name, tuple(c), tuple(o), "; ".join(w))
              for name, (c, o, w) in sorted(per_unit.items()) if o]
    # a released machine whose units all moved in this pass leaves the electorate
    after = {(m, n) for m, n in snap.assignments} - removed
    for m in sorted(verdict.release):
        if m in snap.members and not any(am == m for am, _ in after):
            writes.append(UnitWrite(f"members/{m}", (guard,),
                                    (TxnOp(layout.member(m).encode(), delete=True),),
                                    f"machine {m} lost for over {timings.grace:g} s; "
                                    "its units moved"))
    return PassResult(tuple(writes), verdict.reason, frozenset(lost))


class Engine:
    """Leader election and the leader's passes (see the module docstring)."""

    def __init__(self, store: Store, machine_id: str, timings: Timings,
                 layout: Layout, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.store = store
        self.machine_id = machine_id
        self.timings = timings
        self.layout = layout
        self.leader_key = layout.leader().encode()
        self.lease = 0
        self.leader_rev = 0
        self.leading = False
        self._lost_since: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._last_held = ""
        self.passes = 0

    async def run(self) -> None:
        """Campaign, lead, step down, campaign again; until cancelled."""
        while True:
            try:
                if await self._campaign():
                    await self._lead()
                else:
                    await self._wait_for_vacancy()
            except Deposed as exc:
                log.warning("engine %s: no longer leader (%s)", self.machine_id, exc)
            except (StoreError, TimeoutError, OSError) as exc:
                log.debug("engine %s: store: %s", self.machine_id, exc)
            finally:
                self.leading = False
            await self.clock.sleep(self.timings.renew)

    async def _campaign(self) -> bool:
        t = max(self.timings.renew, 1.0) * 2
        async with asyncio.timeout(t):
            lease = await self.store.grant(max(2, round(self.timings.ttl)))
            leader = Leader(self.machine_id, self.clock.now())
            rev = await self.store.create(self.leader_key, leader.to_json(), lease)
        if rev is None:
            with contextlib.suppress(StoreError, TimeoutError):
                async with asyncio.timeout(t):
                    await self.store.revoke(lease)
            return False
        self.lease, self.leader_rev = lease, rev
        log.info("engine %s: elected leader (lease %x)", self.machine_id, lease)
        return True

    async def _wait_for_vacancy(self) -> None:
        """Return when ``leader`` is deleted. One idle watch stream, no polling: a quiet
        cluster's followers send the store nothing (the client resumes a lost stream from
        the next revision, and a store that stays away ends the wait with an error)."""
        kv = await self.store.get(self.leader_key)
        if kv is None:
            return
        async for batch in self.store.watch(self.leader_key, kv.mod_revision + 1):
            if any(ev.type is EventType.DELETE and ev.kv.key == self.leader_key
                   for ev in batch):
                return

    async def _lead(self) -> None:
        self.leading = True
        self._lost_since.clear()
        self._last_held = ""
        # Not a TaskGroup: on Python 3.11 a TaskGroup whose child fails drops a cancel of
        # the parent that lands at the same moment ("errors have priority"), so an agent
        # being stopped while its leadership lapses would campaign forever; and it leaves
        # the parent's cancelling() count raised, so the count cannot tell the two apart.
        # asyncio.wait() never swallows the caller's cancel.
        children = [asyncio.create_task(self._keepalive())]
        children += [asyncio.create_task(self._watch(self.layout.prefix(kind).encode()))
                     for kind in (KeyKind.UNIT, KeyKind.MACHINE, KeyKind.MEMBER)]
        children.append(asyncio.create_task(self._passes()))
        try:
            done, _ = await asyncio.wait(children, return_when=asyncio.FIRST_EXCEPTION)
            failed = [e for t in done if not t.cancelled() and (e := t.exception()) is not None]
            for exc in failed:
                if isinstance(exc, Deposed):
                    raise exc
            for exc in failed:
                if isinstance(exc, (StoreError, TimeoutError, OSError)):
                    raise Deposed(f"store: {exc}") from None
            if failed:
                raise failed[0]  # a bug: let it surface
        finally:
            for t in children:
                t.cancel()
            await asyncio.gather(*children, return_exceptions=True)
            self.leading = False
            if self.lease:
                with contextlib.suppress(StoreError, TimeoutError, OSError):
                    async with asyncio.timeout(1.0):
                        await self.store.revoke(self.lease)
                self.lease = 0

    async def _keepalive(self) -> None:
        t = self.timings
        last_ok = self.clock.monotonic()
        while True:
            sent = self.clock.monotonic()
            try:
                async with asyncio.timeout(t.renew):
                    await self.store.keepalive(self.lease)
                last_ok = sent
            except LeaseNotFoundError:
                raise Deposed("leader lease expired") from None
            except (StoreError, TimeoutError, OSError) as exc:
                if self.clock.monotonic() - last_ok >= t.ttl:
                    raise Deposed(f"leader lease not renewed for {t.ttl:g} s ({exc})") from None
            await self.clock.sleep(max(0.0, t.renew - (self.clock.monotonic() - sent)))

    async def _watch(self, prefix: bytes) -> None:
        listing = await self.store.list(prefix)
        self._wake.set()
        async for _batch in self.store.watch(prefix, listing.revision + 1):
            self._wake.set()

    async def _passes(self) -> None:
        while True:
            if self._lost_since:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.timings.renew):
                        await self._wake.wait()
            else:
                await self._wake.wait()
            await self.clock.sleep(DEBOUNCE)
            self._wake.clear()
            await self.one_pass()

    async def snapshot(self) -> Snapshot:
        L = self.layout
        units: dict[str, UnitRecord] = {}
        machines: dict[str, MachineRecord] = {}
        members: set[str] = set()
        assignments: dict[tuple[str, str], tuple[Assignment, int]] = {}
        unscheduled: dict[str, tuple[str, int]] = {}
        for kind in (KeyKind.UNIT, KeyKind.MACHINE, KeyKind.MEMBER, KeyKind.ASSIGN,
                     KeyKind.UNSCHEDULED):
            listing = await self.store.list(L.prefix(kind).encode())
            for kv in listing.items:
                key = kv.key.decode(errors="replace")
                try:
                    parsed = L.parse(key)
                    if kind is KeyKind.UNIT:
                        units[parsed.unit] = UnitRecord.from_json(key, kv.value)
                    elif kind is KeyKind.MACHINE:
                        machines[parsed.machine] = MachineRecord.from_json(key, kv.value)
                    elif kind is KeyKind.MEMBER:
                        members.add(parsed.machine)
                    elif kind is KeyKind.ASSIGN:
                        a = Assignment.from_json(key, kv.value)
                        assignments[parsed.machine, parsed.unit] = (a, kv.mod_revision)
                    else:
                        reason = Unscheduled.from_json(key, kv.value).reason
                        unscheduled[parsed.unit] = (reason, kv.mod_revision)
                except SchedError as exc:
                    log.warning("engine: ignoring %s", exc)
        return Snapshot(units, machines, frozenset(members), assignments, unscheduled)

    async def one_pass(self) -> None:
        """Read, plan, write; a failed compare means a concurrent change: plan again."""
        for _attempt in range(3):
            snap = await self.snapshot()
            result = plan_pass(snap, self.layout, self.leader_key, self.leader_rev, self.lease,
                               self._lost_since, self.clock.monotonic(), self.timings)
            self.passes += 1
            if result.held_reason and result.held_reason != self._last_held:
                log.warning("engine: %s", result.held_reason)
            self._last_held = result.held_reason
            # units are independent and each write is guarded: send them together (the
            # store batches concurrent commits), the members bookkeeping after the moves
            units = [w for w in result.writes if not w.unit.startswith("members/")]
            rest = [w for w in result.writes if w.unit.startswith("members/")]
            conflicts = 0
            for batch in (units, rest):
                for i in range(0, len(batch), WRITES_IN_FLIGHT):
                    chunk = batch[i:i + WRITES_IN_FLIGHT]
                    revs = await asyncio.gather(*(self.store.txn(w.compares, w.ops)
                                                  for w in chunk))
                    for w, rev in zip(chunk, revs, strict=True):
                        if rev is None:
                            conflicts += 1
                        else:
                            log.info("engine: %s %s", w.unit, w.why)
            if conflicts:
                kv = await self.store.get(self.leader_key)
                if kv is None or kv.create_revision != self.leader_rev:
                    raise Deposed("the leader key is no longer ours")
            if not conflicts:
                return
        self._wake.set()  # still racing someone (a weftctl command): try again soon


async def run_engine(store: Store, machine_id: str, timings: Timings, layout: Layout,
                     clock: Clock | None = None) -> None:
    await Engine(store, machine_id, timings, layout, clock).run()
