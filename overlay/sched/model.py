"""The scheduler's store records: frozen values with their JSON encoding.

Each record maps one value under ``/weft/sched/`` (see ``keys`` for the layout)::

    UnitRecord     units/<name>                 what the user submitted + desired state
    MachineRecord  machines/<id>, members/<id>  an agent's registration
    Assignment     assign/<machine>/<name>      the leader's placement of a unit
    UnitState      state/<name>                 what the running agent reports
    Unscheduled    unscheduled/<name>           why a unit has no machine
    Leader         leader                       which engine places units

``to_json()`` emits compact JSON; ``from_json(key, value)`` is strict about every
field the scheduler acts on and raises ``RecordError`` naming the key, so a
corrupt value is reported (and skipped by the caller) instead of crashing a
daemon. Unknown fields are ignored, so newer writers can add some.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Self

from overlay.sched.errors import RecordError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DesiredState(enum.StrEnum):
    """fleet's three cluster-level states; units move only between neighbours."""

    INACTIVE = "inactive"  # known, not assigned to a machine
    LOADED = "loaded"  # assigned to a machine, not started
    LAUNCHED = "launched"  # assigned and started


def unit_hash(contents: str) -> str:
    """SHA-1 hex of a unit file's text: a unit's identity (units are immutable)."""
    return hashlib.sha1(contents.encode()).hexdigest()


class _Fields:
    """Typed access to one decoded JSON object; every failure names the key."""

    def __init__(self, key: str, value: bytes) -> None:
        self.key = key
        try:
            obj = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RecordError(key, f"value is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise RecordError(key, "value is not a JSON object")
        self.obj: dict[str, object] = obj

    def _bad(self, name: str, want: str) -> RecordError:
        return RecordError(self.key, f"field {name!r} is {self.obj.get(name)!r}, want {want}")

    def str_(self, name: str, *, empty: bool = False) -> str:
        val = self.obj.get(name)
        if not isinstance(val, str) or (not empty and not val):
            raise self._bad(name, "a string" if empty else "a non-empty string")
        return val

    def opt_str(self, name: str) -> str | None:
        val = self.obj.get(name)
        if val is None:
            return None
        if not isinstance(val, str):
            raise self._bad(name, "a string or null")
        return val

    def int_(self, name: str, lo: int = 0, hi: int | None = None) -> int:
        val = self.obj.get(name)
        if isinstance(val, bool) or not isinstance(val, int) or val < lo or (
                hi is not None and val > hi):
            raise self._bad(name, f"an integer in [{lo}, {hi if hi is not None else '...'}]")
        return val

    def opt_int(self, name: str) -> int | None:
        val = self.obj.get(name)
        if val is None:
            return None
        if isinstance(val, bool) or not isinstance(val, int):
            raise self._bad(name, "an integer or null")
        return val

    def num(self, name: str) -> float:
        val = self.obj.get(name)
        if isinstance(val, bool) or not isinstance(val, int | float) or val < 0:
            raise self._bad(name, "a non-negative number")
        return float(val)

    def ip(self, name: str) -> IPAddress:
        val = self.str_(name)
        try:
            return ipaddress.ip_address(val)
        except ValueError:
            raise self._bad(name, "an IP address") from None

    def opt_ip(self, name: str) -> IPAddress | None:
        return None if self.obj.get(name) is None else self.ip(name)

    def str_map(self, name: str) -> dict[str, str]:
        val = self.obj.get(name, {})
        if val is None:
            return {}
        if not isinstance(val, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in val.items()):
            raise self._bad(name, "an object of strings")
        return dict(val)

    def desired(self, name: str, allowed: tuple[DesiredState, ...]) -> DesiredState:
        val = self.obj.get(name)
        for state in allowed:
            if val == state.value:
                return state
        raise self._bad(name, " or ".join(repr(s.value) for s in allowed))


def _dump(obj: Mapping[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class UnitRecord:
    """``units/<name>``: a submitted unit (template or not) and its desired state."""

    name: str
    contents: str
    hash: str
    desired: DesiredState = DesiredState.INACTIVE

    @classmethod
    def new(cls, name: str, contents: str, desired: DesiredState) -> UnitRecord:
        return cls(name, contents, unit_hash(contents), desired)

    def to_json(self) -> bytes:
        return _dump({"name": self.name, "contents": self.contents, "hash": self.hash,
                      "desired": self.desired.value})

    @classmethod
    def from_json(cls, key: str, value: bytes) -> Self:
        f = _Fields(key, value)
        return cls(f.str_("name"), f.str_("contents", empty=True), f.str_("hash"),
                   f.desired("desired", tuple(DesiredState)))


@dataclass(frozen=True, slots=True)
class MachineRecord:
    """``machines/<id>`` (with the agent's presence lease) and ``members/<id>`` (no lease).

    ``port`` is the agent's HTTP endpoint (``/journal/<unit>``, ``/presence``).
    """

    id: str
    ip: IPAddress
    port: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    version: str = ""

    def to_json(self) -> bytes:
        return _dump({"id": self.id, "ip": str(self.ip), "port": self.port,
                      "metadata": dict(self.metadata), "version": self.version})

    @classmethod
    def from_json(cls, key: str, value: bytes) -> Self:
        f = _Fields(key, value)
        return cls(f.str_("id"), f.ip("ip"),
                   f.int_("port", 0, 65535) if "port" in f.obj else 0, f.str_map("metadata"),
                   f.str_("version", empty=True) if "version" in f.obj else "")


@dataclass(frozen=True, slots=True)
class Assignment:
    """``assign/<machine>/<name>``: the leader engine's placement of one unit.

    Carries the unit's contents so the agent needs no second read; ``engine`` is
    the lease id of the leader that wrote it (fences a deposed leader's writes).
    """

    name: str
    hash: str
    contents: str
    desired: DesiredState
    engine: int = 0

    def to_json(self) -> bytes:
        return _dump({"name": self.name, "hash": self.hash, "contents": self.contents,
                      "desired": self.desired.value, "engine": self.engine})

    @classmethod
    def from_json(cls, key: str, value: bytes) -> Self:
        f = _Fields(key, value)
        return cls(f.str_("name"), f.str_("hash"), f.str_("contents", empty=True),
                   f.desired("desired", (DesiredState.LOADED, DesiredState.LAUNCHED)),
                   f.int_("engine") if "engine" in f.obj else 0)


@dataclass(frozen=True, slots=True)
class UnitState:
    """``state/<name>``: the running agent's report (systemd's ACTIVE and SUB words)."""

    machine: str
    active: str  # active, activating, deactivating, inactive, failed
    sub: str  # running, exited, dead, failed, auto-restart, ...
    since: float = 0.0  # unix seconds of the last active change
    exit: int | None = None  # last exit status
    address: IPAddress | None = None  # container address with [X-Weft] Network=true
    pid: int | None = None

    def to_json(self) -> bytes:
        return _dump({"machine": self.machine, "active": self.active, "sub": self.sub,
                      "since": self.since, "exit": self.exit,
                      "address": None if self.address is None else str(self.address),
                      "pid": self.pid})

    @classmethod
    def from_json(cls, key: str, value: bytes) -> Self:
        f = _Fields(key, value)
        return cls(f.str_("machine"), f.str_("active"), f.str_("sub", empty=True),
                   f.num("since") if "since" in f.obj else 0.0, f.opt_int("exit"),
                   f.opt_ip("address"), f.opt_int("pid"))


@dataclass(frozen=True, slots=True)
class Unscheduled:
    """``unscheduled/<name>``: why the engine found no machine for a unit."""

    reason: str

    def to_json(self) -> bytes:
        return _dump({"reason": self.reason})

    @classmethod
    def from_json(cls, key: str, value: bytes) -> Self:
        return cls(_Fields(key, value).str_("reason", empty=True))


@dataclass(frozen=True, slots=True)
class Leader:
    """``leader``: the engine that holds the leader lease."""

    machine: str
    since: float = 0.0

    def to_json(self) -> bytes:
        return _dump({"machine": self.machine, "since": self.since})

    @classmethod
    def from_json(cls, key: str, value: bytes) -> Self:
        f = _Fields(key, value)
        return cls(f.str_("machine"), f.num("since") if "since" in f.obj else 0.0)
