"""Every key the scheduler uses, built and parsed here and nowhere else.

Layout under the root ``/weft/sched/`` (values: JSON records of ``model``)::

    units/<unit>                  UnitRecord     weftctl submit/load/start/stop/unload/destroy
                                                 (CAS on mod_revision; no lease)
    machines/<machine>            MachineRecord  each agent, with its presence lease (TTL)
    members/<machine>             MachineRecord  each agent at registration, no lease: the
                                                 machines "last listed" for the majority rule;
                                                 the leader deletes it once it has moved a lost
                                                 machine's units
    assign/<machine>/<unit>       Assignment     the leader engine (Txn CAS; a move deletes the
                                                 old key and puts the new one in one Txn)
    state/<unit>/<machine>        UnitState      the agent running the unit there, with its
                                                 presence lease (per machine, as fleet's
                                                 states/<unit>/<machine>: a Global unit runs
                                                 on many)
    unscheduled/<unit>            Unscheduled    the leader, for units with no eligible machine
                                                 (deleted once placed)
    leader                        Leader         the engine that wins (create_revision == 0), with
                                                 the leader lease

An agent watches only ``assign/<its id>/``; the leader watches ``units/``,
``machines/`` and ``state/``. Unit names are systemd unit names (no ``/``);
machine ids are free-form but must not contain ``/``.

DNS (SkyDNS, outside the root): a unit with ``[X-Weft] Service=<svc>[:port]`` is
published while active at ``/skydns/<reversed domain>/<svc>/<instance label>``,
``instance_label`` being the unit name made a DNS label (``web@1.service`` ->
``web-1-service``), so ``<svc>.<domain>`` answers every instance.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass

from dnsd.keys import name_to_key
from overlay.sched.errors import RecordError
from overlay.sched.unitfile import check_unit_name

DEFAULT_ROOT = "/weft/sched/"


class KeyKind(enum.Enum):
    UNIT = "units"
    MACHINE = "machines"
    MEMBER = "members"
    ASSIGN = "assign"
    STATE = "state"
    UNSCHEDULED = "unscheduled"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """What a key names: its kind, and the machine and/or unit in it ("" if none)."""

    kind: KeyKind
    machine: str = ""
    unit: str = ""


def _check_machine(machine: str) -> str:
    if not machine or "/" in machine or machine.strip() != machine:
        raise ValueError(f"machine id {machine!r} must be non-empty, without '/' or blanks")
    return machine


@dataclass(frozen=True, slots=True)
class Layout:
    """The key layout below ``root`` (``/weft/sched/`` unless a test isolates itself)."""

    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        if not self.root.startswith("/") or not self.root.endswith("/"):
            raise ValueError(f"scheduler root {self.root!r} must start and end with '/'")

    # --- prefixes (for range reads and watches) ---
    def prefix(self, kind: KeyKind) -> str:
        """``<root><kind>/`` (``<root>leader`` for the single leader key)."""
        return self.root + kind.value + ("" if kind is KeyKind.LEADER else "/")

    def assign_prefix(self, machine: str) -> str:
        """``assign/<machine>/``: the only range an agent watches."""
        return f"{self.root}assign/{_check_machine(machine)}/"

    # --- keys ---
    def unit(self, name: str) -> str:
        return self.prefix(KeyKind.UNIT) + name

    def machine(self, machine: str) -> str:
        return self.prefix(KeyKind.MACHINE) + _check_machine(machine)

    def member(self, machine: str) -> str:
        return self.prefix(KeyKind.MEMBER) + _check_machine(machine)

    def assign(self, machine: str, name: str) -> str:
        return self.assign_prefix(machine) + name

    def state(self, name: str, machine: str) -> str:
        return f"{self.prefix(KeyKind.STATE)}{name}/{_check_machine(machine)}"

    def state_prefix(self, name: str) -> str:
        """``state/<unit>/``: every machine's report on one unit."""
        return f"{self.prefix(KeyKind.STATE)}{name}/"

    def unscheduled(self, name: str) -> str:
        return self.prefix(KeyKind.UNSCHEDULED) + name

    def leader(self) -> str:
        return self.prefix(KeyKind.LEADER)

    # --- parsing ---
    def parse(self, key: str) -> ParsedKey:
        """The kind, machine and unit a key names; ``RecordError`` for a foreign key."""
        if not key.startswith(self.root):
            raise RecordError(key, f"not under {self.root}")
        rest = key[len(self.root):]
        if rest == KeyKind.LEADER.value:
            return ParsedKey(KeyKind.LEADER)
        head, _, tail = rest.partition("/")
        try:
            kind = KeyKind(head)
        except ValueError:
            raise RecordError(key, f"unknown kind {head!r}") from None
        try:
            if kind is KeyKind.ASSIGN:
                machine, sep, name = tail.partition("/")
                if not sep:
                    raise ValueError("want assign/<machine>/<unit>")
                return ParsedKey(kind, _check_machine(machine), check_unit_name(name))
            if kind in (KeyKind.MACHINE, KeyKind.MEMBER):
                return ParsedKey(kind, machine=_check_machine(tail))
            if kind is KeyKind.STATE:
                name, sep, machine = tail.partition("/")
                if not sep:
                    raise ValueError("want state/<unit>/<machine>")
                return ParsedKey(kind, _check_machine(machine), check_unit_name(name))
            if kind is KeyKind.LEADER:
                raise ValueError("the leader key has no children")
            return ParsedKey(kind, unit=check_unit_name(tail))
        except ValueError as exc:
            raise RecordError(key, str(exc)) from None


LAYOUT = Layout()

_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


def instance_label(unit: str) -> str:
    """A unit name as one DNS label: lower-case, other characters as ``-``, <= 63 bytes.

    ``web@1.service`` -> ``web-1-service``. A name that would exceed 63 bytes is
    cut and suffixed with 8 hex digits of its SHA-1, so labels stay unique.
    """
    label = _NOT_LABEL.sub("-", unit.lower()).strip("-") or "unit"
    if len(label) > 63:
        label = label[:54].rstrip("-") + "-" + hashlib.sha1(unit.encode()).hexdigest()[:8]
    return label


def service_key(domain: str, service: str, unit: str, prefix: str = "/skydns") -> str:
    """SkyDNS key of one instance of ``service`` (``[X-Weft] Service=``) run by ``unit``."""
    return name_to_key(f"{instance_label(unit)}.{service}.{domain}", prefix)
