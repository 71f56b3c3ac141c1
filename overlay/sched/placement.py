"""Where units run: pure placement and the rule for moving units of lost machines.

Theory of operation. ``place`` is one engine pass, fleet's reconciler without I/O:

1. Keep what is placed and still fits. An assignment is dropped (and its unit
   re-placed) when the unit is gone or ``inactive``, its machine has neither
   presence nor a hold (see 4), or the machine no longer fits the unit
   (MachineID, metadata, a MachineOf peer not there, a conflict either way, a
   unit there that ``Replaces`` it). Checked to a fixpoint in name order, so of
   two conflicting units on one machine the first name moves.
2. Global units go on every present machine whose metadata matches and where
   no conflict either way exists with the units kept there.
3. The other units, MachineOf peers first then by name, each go to the
   least-loaded eligible machine: fewest units (global units included), ties
   by machine id. ``Replaces`` does not make a machine ineligible: the replaced
   unit is pushed off it and re-placed. A unit with no eligible machine stays
   unscheduled with a reason saying why each machine was refused.
4. Machines in ``hold`` (presence lost, but ``lost_machine_moves`` says not yet)
   keep their assignments untouched and take no new units.

``lost_machine_moves`` is the engine half of the fencing rule: a lost machine's
units move only after ``grace`` seconds, and only while a strict majority of the
listed machines (``members/``) hold presence. A majority lost at once is a store
or network event: nothing moves, and the verdict says why. Two disjoint groups
cannot both hold a majority, so units never run twice.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from overlay.sched.model import DesiredState, MachineRecord, UnitRecord
from overlay.sched.unitfile import FleetOptions, parse_unit


@dataclass(frozen=True, slots=True)
class PlacementUnit:
    """What placement needs of a unit: its name, [X-Fleet] options, desired state."""

    name: str
    fleet: FleetOptions = field(default_factory=FleetOptions)
    desired: DesiredState = DesiredState.LAUNCHED


def placement_unit(record: UnitRecord, source: str = "") -> PlacementUnit:
    """Parse a stored unit for placement (``UnitFileError`` if its file is bad).

    Units are immutable, so the parse is cached by name and contents: an engine pass
    over 1,000 unchanged units does not parse 1,000 files again.
    """
    return PlacementUnit(record.name, _fleet_options(record.name, record.contents,
                                                     source or record.name), record.desired)


@functools.lru_cache(maxsize=16384)
def _fleet_options(name: str, contents: str, source: str) -> FleetOptions:
    return parse_unit(name, contents, source).fleet


@dataclass(frozen=True, slots=True)
class Change:
    """One assignment to create or delete, and why."""

    unit: str
    machine: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The outcome of one pass.

    ``placements``: unit -> machines it should be assigned to (one, or several
    for a Global unit); ``unscheduled``: unit -> reason; ``add``/``remove``: the
    assignment changes relative to the input (a move is a remove plus an add of
    the same unit; write them in one transaction).
    """

    placements: Mapping[str, tuple[str, ...]]
    unscheduled: Mapping[str, str]
    add: tuple[Change, ...]
    remove: tuple[Change, ...]


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    # Go's path.Match negates classes with '^'; fnmatch with '!'
    return re.compile(fnmatch.translate(pattern.replace("[^", "[!")))


def glob_matches(pattern: str, name: str) -> bool:
    return _glob(pattern).match(name) is not None


def metadata_matches(required: Mapping[str, frozenset[str]], have: Mapping[str, str]) -> bool:
    """Every required key present with one of its allowed values (keys AND, values OR)."""
    return all(have.get(k) in allowed for k, allowed in required.items())


def _replaces(a: PlacementUnit, b: str, units: Mapping[str, PlacementUnit]) -> bool:
    """``a`` replaces ``b`` (and not the other way round: mutual replaces are ignored)."""
    if not any(glob_matches(p, b) for p in a.fleet.replaces):
        return False
    other = units.get(b)
    return other is None or not any(glob_matches(p, a.name) for p in other.fleet.replaces)


def _conflicts(a: PlacementUnit, b: str, units: Mapping[str, PlacementUnit]) -> bool:
    """``a`` and ``b`` may not share a machine (Conflicts checked both ways)."""
    if any(glob_matches(p, b) for p in a.fleet.conflicts):
        return True
    other = units.get(b)
    return other is not None and any(glob_matches(p, a.name) for p in other.fleet.conflicts)


class _Cluster:
    """Mutable working state of one pass: who is on which machine."""

    def __init__(self, units: Mapping[str, PlacementUnit],
                 machines: Mapping[str, MachineRecord]) -> None:
        self.units = units
        self.machines = machines
        self.on: dict[str, set[str]] = {m: set() for m in machines}
        self.load: dict[str, int] = dict.fromkeys(machines, 0)
        self.where: dict[str, set[str]] = {}
        # units whose options can refuse a neighbour; the common unit has none
        self.picky = {n for n, u in units.items() if u.fleet.conflicts or u.fleet.replaces}

    def put(self, unit: str, machine: str) -> None:
        self.on[machine].add(unit)
        self.load[machine] = len(self.on[machine])
        self.where.setdefault(unit, set()).add(machine)

    def take(self, unit: str, machine: str) -> None:
        self.on[machine].discard(unit)
        self.load[machine] = len(self.on[machine])
        self.where.get(unit, set()).discard(machine)

    def refusal(self, u: PlacementUnit, m: str) -> str:
        """Why ``u`` cannot be (or stay) on ``m``; "" if it can."""
        rec = self.machines[m]
        f = u.fleet
        if f.machine_id is not None and f.machine_id != m:
            return f"MachineID={f.machine_id}"
        if f.metadata and not metadata_matches(f.metadata, rec.metadata):
            want = " ".join(f"{k}={'|'.join(sorted(v))}" for k, v in sorted(f.metadata.items()))
            return f"metadata lacks {want}"
        for peer in f.machine_of:
            if m not in self.where.get(peer, ()):
                return f"MachineOf={peer} not there"
        here = self.on[m]
        candidates: Iterable[str] = here if f.conflicts or f.replaces else here & self.picky
        for other in sorted(candidates):
            if other == u.name:
                continue
            if _conflicts(u, other, self.units):
                return f"conflicts with {other}"
            o = self.units.get(other)
            if o is not None and _replaces(o, u.name, self.units):
                return f"replaced by {other}"
        return ""


def machine_of_cycles(peers: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Cycles in the MachineOf graph (unit -> peers), each as a list of unit names."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for p in peers.get(n, ()):
            if state.get(p) == 1:
                cycles.append([*stack[stack.index(p):], p])
            elif p not in state:
                visit(p)
        stack.pop()
        state[n] = 2

    for name in sorted(peers):
        if name not in state:
            visit(name)
    return cycles


def _order(units: Mapping[str, PlacementUnit], names: Iterable[str]) -> tuple[list[str], set[str]]:
    """Names with MachineOf peers first (then by name), and the names stuck in cycles."""
    wanted = set(names)
    cyclic = {n for c in machine_of_cycles({n: u.fleet.machine_of for n, u in units.items()})
              for n in c}
    out: list[str] = []
    done: set[str] = set()

    def visit(n: str) -> None:
        if n in done:
            return
        done.add(n)
        u = units.get(n)
        for p in u.fleet.machine_of if u else ():
            if p not in cyclic:
                visit(p)
        if n in wanted and n not in cyclic:
            out.append(n)

    for n in sorted(wanted):
        visit(n)
    return out, cyclic & wanted


def _no_machine_reason(reasons: Mapping[str, str], total: int) -> str:
    if total == 0:
        return "no machines are present"
    if not reasons:
        return "no eligible machine"
    shown = sorted(reasons.items())[:5]
    text = "; ".join(f"{m}: {r}" for m, r in shown)
    more = f"; and {len(reasons) - len(shown)} more" if len(reasons) > len(shown) else ""
    return f"no eligible machine among {total}: {text}{more}"


def place(units: Collection[PlacementUnit], machines: Collection[MachineRecord],
          assignments: Mapping[str, Collection[str]],
          hold: Collection[str] = ()) -> Plan:
    """One engine pass: see the module docstring. ``assignments``: unit -> machines now."""
    by_name = {u.name: u for u in units}
    present = {m.id: m for m in machines}
    held = frozenset(hold) - present.keys()
    cl = _Cluster(by_name, present)
    why_removed: dict[tuple[str, str], str] = {}
    held_placements: dict[str, set[str]] = {}

    # 1. keep what still fits
    for name in sorted(assignments):
        u = by_name.get(name)
        for m in sorted(assignments[name]):
            if u is None or u.desired is DesiredState.INACTIVE:
                why_removed[name, m] = "unit inactive or destroyed"
            elif m in held:
                held_placements.setdefault(name, set()).add(m)
            elif m not in present:
                why_removed[name, m] = f"machine {m} is gone"
            elif not u.fleet.global_ and cl.where.get(name):
                why_removed[name, m] = "assigned to more than one machine"
            else:
                cl.put(name, m)
    changed = True
    while changed:
        changed = False
        for name in sorted(cl.where):
            for m in sorted(cl.where[name]):
                why = cl.refusal(by_name[name], m)
                if why:
                    cl.take(name, m)
                    why_removed[name, m] = f"machine {m} no longer fits: {why}"
                    changed = True

    unscheduled: dict[str, str] = {}
    active = sorted((u for u in by_name.values() if u.desired is not DesiredState.INACTIVE),
                    key=lambda u: u.name)

    # 2. global units on every matching machine
    for u in (u for u in active if u.fleet.global_):
        for m in sorted(present):
            if m not in cl.where.get(u.name, ()) and not cl.refusal(u, m):
                cl.put(u.name, m)
        if not cl.where.get(u.name) and u.name not in held_placements:
            unscheduled[u.name] = _no_machine_reason(
                {m: cl.refusal(u, m) for m in present}, len(present))

    # 3. the rest, least loaded first
    pending = [u.name for u in active if not u.fleet.global_ and not cl.where.get(u.name)
               and u.name not in held_placements]
    order, cyclic = _order(by_name, pending)
    for name in sorted(cyclic):
        unscheduled[name] = "cyclic MachineOf"
    queue = list(reversed(order))
    pushes = 0
    while queue:
        name = queue.pop()
        u = by_name[name]
        best: str | None = None
        best_load = 0
        reasons: dict[str, str] = {}
        for m, load in cl.load.items():
            if best is not None and (load > best_load or (load == best_load and m > best)):
                continue  # cannot beat the best so far: skip the checks
            why = cl.refusal(u, m)
            if why:
                reasons[m] = why
            else:
                best, best_load = m, load
        if best is None:  # nothing was skipped, so every machine has its reason
            unscheduled[name] = _no_machine_reason(reasons, len(present))
            continue
        unscheduled.pop(name, None)
        cl.put(name, best)
        for other in sorted(cl.on[best]) if u.fleet.replaces else ():
            if other != name and _replaces(u, other, by_name) and pushes < len(by_name):
                pushes += 1  # bounded, so replace chains cannot loop
                cl.take(other, best)
                why_removed[other, best] = f"replaced by {name}"
                queue.append(other)

    placements: dict[str, tuple[str, ...]] = {}
    for name in sorted(set(cl.where) | set(held_placements)):
        ms = cl.where.get(name, set()) | held_placements.get(name, set())
        if ms:
            placements[name] = tuple(sorted(ms))
    add: list[Change] = []
    remove: list[Change] = []
    for name in sorted(set(placements) | set(assignments)):
        before = set(assignments.get(name, ()))
        after = set(placements.get(name, ()))
        for m in sorted(after - before):
            why = "global unit" if by_name[name].fleet.global_ else "least-loaded eligible"
            add.append(Change(name, m, why))
        for m in sorted(before - after):
            remove.append(Change(name, m, why_removed.get((name, m), "moved")))
    return Plan(placements, unscheduled, tuple(add), tuple(remove))


@dataclass(frozen=True, slots=True)
class LostVerdict:
    """Which lost machines' units may move now (``release``) and which stay (``hold``)."""

    release: frozenset[str]
    hold: frozenset[str]
    reason: str  # why anything is held; "" when nothing is


def lost_machine_moves(listed: Collection[str], present: Collection[str],
                       lost_since: Mapping[str, float], now: float,
                       grace: float) -> LostVerdict:
    """The majority-and-grace rule for rescheduling units of machines without presence.

    ``listed``: machines last listed (``members/``); ``present``: machines holding
    presence now; ``lost_since``: when this engine first saw each lost machine
    without presence (missing = just now). Lost machines are ``listed - present``.
    """
    electorate = set(listed) | set(present)
    up = set(present)
    lost = frozenset(electorate - up)
    if not lost:
        return LostVerdict(frozenset(), frozenset(), "")
    need = len(electorate) // 2 + 1
    if len(up) < need:
        return LostVerdict(frozenset(), lost, (
            f"only {len(up)} of {len(electorate)} listed machines hold presence (a majority "
            f"is {need}): a store or network event, not moving units of "
            f"{', '.join(sorted(lost))}"))
    release = frozenset(m for m in lost if now - lost_since.get(m, now) >= grace)
    waiting = lost - release
    reason = ""
    if waiting:
        reason = "within the grace period of {:g} s: {}".format(grace, ", ".join(
            f"{m} (lost {now - lost_since.get(m, now):.1f} s)" for m in sorted(waiting)))
    return LostVerdict(release, waiting, reason)
