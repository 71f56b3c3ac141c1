"""The unit registry as fleetctl's verbs see it: read the cluster, change desired states.

Pure parts: ``snapshot`` (one listing of ``/weft/sched/`` -> a typed view, skipping
malformed records with a note), ``next_desired`` (fleet's state machine per verb),
``resolve`` (FILE-or-NAME -> unit text, as fleetctl looks in the registry, then for
an instance's template, then on disk), ``check_units`` (parse, immutability,
MachineOf cycles: everything refused before anything is written), ``unit_rows``
and friends (what the list commands print) and ``Waiter`` (when a blocking verb is
done, fed by watch events).

I/O: ``read_snapshot`` and ``apply`` over the ``Store`` protocol. Every write is a
compare-and-swap: a new unit is created only if absent (create_revision 0), a
desired-state change is a replace on the unit's mod_revision, and destroy is a
transaction deleting the key only at the mod_revision it was read at. A lost race
re-reads the key and decides again.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from overlay.sched.errors import RecordError, UnitFileError, UnitStateError
from overlay.sched.keys import KeyKind, Layout
from overlay.sched.model import (
    DesiredState,
    Leader,
    MachineRecord,
    UnitRecord,
    UnitState,
    Unscheduled,
    unit_hash,
)
from overlay.sched.placement import machine_of_cycles
from overlay.sched.unitfile import UnitFile, parse_unit, parse_unit_name
from overlay.store.api import Compare, KeyValue, Listing, Store, TxnOp, WatchEvent

# -- reading ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredUnit:
    record: UnitRecord
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything under the scheduler root at one revision."""

    revision: int = 0
    units: Mapping[str, StoredUnit] = field(default_factory=dict)
    machines: Mapping[str, MachineRecord] = field(default_factory=dict)
    members: Mapping[str, MachineRecord] = field(default_factory=dict)
    assignments: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # unit -> machines
    states: Mapping[str, Mapping[str, UnitState]] = field(default_factory=dict)  # unit -> m ->
    unscheduled: Mapping[str, str] = field(default_factory=dict)
    leader: Leader | None = None
    problems: tuple[str, ...] = ()  # malformed records that were skipped


def snapshot(items: Iterable[KeyValue], revision: int, layout: Layout) -> Snapshot:
    """A typed view of a listing of ``layout.root`` (bad records become ``problems``)."""
    units: dict[str, StoredUnit] = {}
    machines: dict[str, MachineRecord] = {}
    members: dict[str, MachineRecord] = {}
    assigned: dict[str, list[str]] = {}
    states: dict[str, dict[str, UnitState]] = {}
    unscheduled: dict[str, str] = {}
    leader: Leader | None = None
    problems: list[str] = []
    for kv in items:
        key = kv.key.decode(errors="replace")
        try:
            parsed = layout.parse(key)
            if parsed.kind is KeyKind.UNIT:
                rec = UnitRecord.from_json(key, kv.value)
                if rec.name != parsed.unit:
                    raise RecordError(key, f"record names {rec.name!r}")
                units[parsed.unit] = StoredUnit(rec, kv.mod_revision)
            elif parsed.kind is KeyKind.MACHINE:
                machines[parsed.machine] = MachineRecord.from_json(key, kv.value)
            elif parsed.kind is KeyKind.MEMBER:
                members[parsed.machine] = MachineRecord.from_json(key, kv.value)
            elif parsed.kind is KeyKind.ASSIGN:
                assigned.setdefault(parsed.unit, []).append(parsed.machine)
            elif parsed.kind is KeyKind.STATE:
                states.setdefault(parsed.unit, {})[parsed.machine] = UnitState.from_json(
                    key, kv.value)
            elif parsed.kind is KeyKind.UNSCHEDULED:
                unscheduled[parsed.unit] = Unscheduled.from_json(key, kv.value).reason
            else:
                leader = Leader.from_json(key, kv.value)
        except RecordError as exc:
            problems.append(str(exc))
    return Snapshot(revision, units, machines, members,
                    {u: tuple(sorted(ms)) for u, ms in assigned.items()}, states, unscheduled,
                    leader, tuple(problems))


async def read_snapshot(store: Store, layout: Layout) -> Snapshot:
    listing: Listing = await store.list(layout.root.encode())
    return snapshot(listing.items, listing.revision, layout)


# -- the state machine ----------------------------------------------------------------------


class Verb(enum.StrEnum):
    SUBMIT = "submit"
    LOAD = "load"
    START = "start"
    STOP = "stop"
    UNLOAD = "unload"
    DESTROY = "destroy"


_I, _L, _R = DesiredState.INACTIVE, DesiredState.LOADED, DesiredState.LAUNCHED
# verb -> {current desired (None = not submitted): new desired}; absent = unchanged.
# Straight from fleet's table: load from none/inactive, start from anything, stop only
# a launched unit, unload a loaded or launched one.
_TRANSITIONS: Mapping[Verb, Mapping[DesiredState | None, DesiredState]] = {
    Verb.SUBMIT: {None: _I},
    Verb.LOAD: {None: _L, _I: _L},
    Verb.START: {None: _R, _I: _R, _L: _R},
    Verb.STOP: {_R: _L},
    Verb.UNLOAD: {_L: _I, _R: _I},
}


def next_desired(verb: Verb, current: DesiredState | None) -> DesiredState | None:
    """The desired state ``verb`` sets on a unit now in ``current``; None = no change."""
    return _TRANSITIONS.get(verb, {}).get(current)


# -- arguments -> unit files -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalUnit:
    """A unit named on the command line with the text it will have in the registry."""

    name: str
    contents: str
    source: str  # the file, or "registry" / "template <name>" (for error messages)
    stored: StoredUnit | None = None


def resolve(arg: str, snap: Snapshot, read_file: Callable[[str], str | None]) -> LocalUnit:
    """FILE-or-NAME -> unit, as fleetctl: a readable file wins; else the registry (an
    instance falls back to its template there); else a template file next to it.

    ``read_file(path)`` returns the text or None when there is no such file.
    """
    text = read_file(arg)
    name = os.path.basename(arg)
    if text is not None:
        return LocalUnit(name, text, arg, snap.units.get(name))
    if name in snap.units:
        stored = snap.units[name]
        return LocalUnit(name, stored.record.contents, "registry " + name, stored)
    try:
        un = parse_unit_name(name)
    except ValueError as exc:
        raise UnitFileError(arg, 0, "", f"no such file, and {exc}") from None
    if un.is_instance:
        tmpl = snap.units.get(un.template)
        if tmpl is not None:
            return LocalUnit(name, tmpl.record.contents, "template " + un.template)
        path = os.path.join(os.path.dirname(arg), un.template)
        text = read_file(path)
        if text is not None:
            return LocalUnit(name, text, path)
    raise UnitFileError(arg, 0, "", "unit not found in the registry or on disk")


def check_units(verb: Verb, local: Sequence[LocalUnit], snap: Snapshot) -> list[UnitFile]:
    """Refuse the whole command before any write: bad files (``UnitFileError`` with file,
    line and key), templates where an instance is needed, a different file under a
    submitted name (units are immutable), MachineOf cycles with the registry."""
    if verb is Verb.DESTROY:
        return []  # destroy goes by name: a broken or changed local file does not matter
    parsed: list[UnitFile] = []
    for lu in local:
        uf = parse_unit(lu.name, lu.contents, lu.source)
        if uf.unit.is_template and verb not in (Verb.SUBMIT, Verb.DESTROY):
            raise UnitStateError(lu.name, f"cannot {verb.value} a template unit; "
                                 f"{verb.value} an instance such as "
                                 f"{uf.unit.instantiate('1')}")
        stored = snap.units.get(lu.name)
        if stored is not None and stored.record.hash != unit_hash(lu.contents):
            raise UnitStateError(lu.name, (
                f"a different unit file is submitted under this name (hash "
                f"{stored.record.hash[:7]}, {lu.source} has {unit_hash(lu.contents)[:7]}); "
                "units are immutable: destroy it first"))
        parsed.append(uf)
    _check_cycles(parsed, local, snap)
    return parsed


def _check_cycles(parsed: Sequence[UnitFile], local: Sequence[LocalUnit],
                  snap: Snapshot) -> None:
    peers: dict[str, tuple[str, ...]] = {}
    for name, stored in snap.units.items():
        try:
            uf = parse_unit(name, stored.record.contents, name)
        except UnitFileError:
            continue  # a bad stored unit is the engine's to report, not this command's
        if not uf.unit.is_template:
            peers[name] = uf.fleet.machine_of
    new = {uf.name: (uf, lu) for uf, lu in zip(parsed, local, strict=True)
           if not uf.unit.is_template}
    for name, (uf, _) in new.items():
        peers[name] = uf.fleet.machine_of
    for cycle in machine_of_cycles(peers):
        for name in cycle:
            if name in new:
                uf, lu = new[name]
                line = next((e.line for e in uf.entries if e.section == "X-Fleet"
                             and e.key in ("MachineOf", "X-ConditionMachineOf")), 0)
                raise UnitFileError(lu.source, line, "MachineOf",
                                    "cyclic MachineOf: " + " -> ".join(cycle))


# -- writing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a verb did to one unit: ``desired`` after (None = destroyed / absent)."""

    name: str
    changed: bool
    desired: DesiredState | None
    note: str = ""


CAS_ATTEMPTS = 8


async def apply(store: Store, layout: Layout, verb: Verb, unit: LocalUnit) -> Outcome:
    """Apply ``verb`` to one checked unit with compare-and-swap writes (re-read on a lost
    race; ``UnitStateError`` if the race shows a different file under the name)."""
    key = layout.unit(unit.name).encode()
    stored = unit.stored
    for _ in range(CAS_ATTEMPTS):
        if verb is Verb.DESTROY:
            if stored is None:
                return Outcome(unit.name, False, None, "not in the registry")
            rev = await store.txn([Compare(key, "mod", stored.mod_revision)],
                                  [TxnOp(key, delete=True)])
            if rev is not None:
                return Outcome(unit.name, True, None)
        else:
            current = stored.record.desired if stored is not None else None
            new = next_desired(verb, current)
            if new is None:
                return Outcome(unit.name, False, current)
            if stored is None:
                rec = UnitRecord.new(unit.name, unit.contents, new)
                if await store.create(key, rec.to_json()) is not None:
                    return Outcome(unit.name, True, new)
            else:
                if stored.record.hash != unit_hash(unit.contents):
                    raise UnitStateError(unit.name, "a different unit file was submitted "
                                         "under this name meanwhile; destroy it first")
                rec = replace(stored.record, desired=new)
                if await store.replace(key, rec.to_json(), stored.mod_revision) is not None:
                    return Outcome(unit.name, True, new)
        kv = await store.get(key)  # lost a race: look again
        stored = None if kv is None else StoredUnit(
            UnitRecord.from_json(key.decode(), kv.value), kv.mod_revision)
    raise UnitStateError(unit.name, f"gave up after {CAS_ATTEMPTS} concurrent changes")


# -- waiting for a blocking verb ------------------------------------------------------------


ACTIVE_STATES = frozenset({"active", "activating", "reloading", "deactivating"})


class Waiter:
    """Tracks assignments and states of some units from watch events (pure).

    ``done(name)`` says whether ``verb`` has taken effect for the unit: start -> a
    machine reports it ``active``; load -> it is assigned; stop -> no machine reports
    it running; unload/destroy -> it is assigned nowhere and no machine reports it running
    (an agent may keep reporting a stopped unit as inactive).
    """

    def __init__(self, verb: Verb, names: Iterable[str], snap: Snapshot,
                 layout: Layout) -> None:
        self.verb = verb
        self.names = set(names)
        self.layout = layout
        self.assigned: dict[str, set[str]] = {n: set(snap.assignments.get(n, ()))
                                              for n in self.names}
        self.states: dict[str, dict[str, UnitState]] = {
            n: dict(snap.states.get(n, {})) for n in self.names}

    def feed(self, events: Iterable[WatchEvent]) -> None:
        for ev in events:
            key = ev.kv.key.decode(errors="replace")
            try:
                parsed = self.layout.parse(key)
            except RecordError:
                continue
            if parsed.unit not in self.names:
                continue
            deleted = ev.type.value == "delete"
            if parsed.kind is KeyKind.ASSIGN:
                target = self.assigned[parsed.unit]
                (target.discard if deleted else target.add)(parsed.machine)
            elif parsed.kind is KeyKind.STATE:
                states = self.states[parsed.unit]
                if deleted:
                    states.pop(parsed.machine, None)
                else:
                    try:
                        states[parsed.machine] = UnitState.from_json(key, ev.kv.value)
                    except RecordError:
                        states.pop(parsed.machine, None)

    def where(self, name: str) -> tuple[str, ...]:
        """Machines that report the unit active (start) or hold it (otherwise)."""
        if self.verb is Verb.START:
            return tuple(sorted(m for m, s in self.states[name].items() if s.active == "active"))
        return tuple(sorted(self.assigned[name]))

    def done(self, name: str) -> bool:
        states = self.states[name]
        if self.verb is Verb.START:
            return any(s.active == "active" for s in states.values())
        if self.verb is Verb.LOAD:
            return bool(self.assigned[name])
        if self.verb is Verb.STOP:
            return not any(s.active in ACTIVE_STATES for s in states.values())
        return not self.assigned[name] and not any(s.active in ACTIVE_STATES
                                                   for s in states.values())


# -- what the list commands show ---------------------------------------------------------------


def _machine_ip(snap: Snapshot, machine: str) -> str | None:
    rec = snap.machines.get(machine) or snap.members.get(machine)
    return None if rec is None else str(rec.ip)


def unit_rows(snap: Snapshot) -> list[dict[str, str | None]]:
    """list-units: one row per (unit, machine) where the unit is assigned or still runs
    (a stopped unit's leftover report on a machine it left is not shown).

    Fields: unit, machine, ip, address, active, sub (None where unknown).
    """
    rows: list[dict[str, str | None]] = []
    for name in sorted(set(snap.assignments) | set(snap.states)):
        machines = set(snap.assignments.get(name, ())) | {
            m for m, s in snap.states.get(name, {}).items() if s.active in ACTIVE_STATES}
        for m in sorted(machines):
            st = snap.states.get(name, {}).get(m)
            rows.append({
                "unit": name, "machine": m, "ip": _machine_ip(snap, m),
                "address": None if st is None or st.address is None else str(st.address),
                "active": None if st is None else st.active,
                "sub": None if st is None else st.sub,
            })
    return rows


def current_state(snap: Snapshot, name: str) -> DesiredState:
    """fleet's STATE column: launched if a machine runs it, loaded if one holds it and
    reports it, else inactive."""
    states = snap.states.get(name, {})
    if any(s.active in ACTIVE_STATES for s in states.values()):
        return DesiredState.LAUNCHED
    if states and set(states) & set(snap.assignments.get(name, ())):
        return DesiredState.LOADED
    return DesiredState.INACTIVE


def unit_file_rows(snap: Snapshot) -> list[dict[str, str | None]]:
    """list-unit-files: unit, hash, desired, state, target, reason.

    ``target`` is the machine id, ``"global"`` for a Global unit, None when the unit
    has no machine; ``reason`` says why an active unit has none (from the engine).
    """
    rows: list[dict[str, str | None]] = []
    for name in sorted(snap.units):
        rec = snap.units[name].record
        machines = snap.assignments.get(name, ())
        is_global = False
        with contextlib.suppress(UnitFileError):
            is_global = parse_unit(name, rec.contents, name).fleet.global_
        target = "global" if is_global and rec.desired is not DesiredState.INACTIVE else (
            machines[0] if machines else None)
        rows.append({"unit": name, "hash": rec.hash, "desired": rec.desired.value,
                     "state": current_state(snap, name).value, "target": target,
                     "reason": snap.unscheduled.get(name)})
    return rows


def machine_rows(snap: Snapshot) -> list[dict[str, object]]:
    """list-machines: machine, ip, metadata (an object)."""
    return [{"machine": m, "ip": str(rec.ip), "metadata": dict(rec.metadata)}
            for m, rec in sorted(snap.machines.items())]


def dumps(rows: object) -> str:
    """The ``--json`` form: one JSON array."""
    return json.dumps(rows, indent=None, separators=(",", ":"))
