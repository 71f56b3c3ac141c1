"""Parse systemd unit files with fleet's ``[X-Fleet]`` and weft's ``[X-Weft]`` sections.

Pure: text in, frozen ``UnitFile`` out, or ``UnitFileError(source, line, key,
message)``. The syntax is systemd's: ``[Section]`` headers, ``Key=Value``
assignments, ``#``/``;`` comment lines, a trailing backslash continuing a line
(comment lines inside a continuation are skipped), repeated keys accumulating
(an empty assignment resets list options), words split with systemd's quoting
(``"..."``, ``'...'``, backslash escapes).

Specifiers ``%n`` (full name), ``%N`` (name without type suffix), ``%p``
(prefix before ``@``), ``%i`` (instance) and ``%%`` are expanded in the options
this module interprets; other specifiers (``%H`` ...) are left for systemd.

Options are checked as fleet and systemd would refuse them at load time, but
here at submit time: a syntax error, an unknown ``[X-Fleet]``/``[X-Weft]`` key,
a bad boolean, ``Restart=``/``RestartSec=`` value, metadata term, glob or
``Service=`` value, and ``Global=true`` with ``MachineID``/``MachineOf``/
``Replaces`` (fleet: only metadata and conflicts may accompany it). Other
sections and keys are systemd's business and kept verbatim in ``entries``.

Names (``check_unit_name``): ``prefix[@instance].type`` with systemd's
characters; ``foo@.service`` is a template, ``foo@1.service`` an instance of
it. A template's options are checked by expanding it for the sample instance
``0``; call ``parse_unit`` with an instance name for the real values.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from overlay.sched.errors import UnitFileError

UNIT_TYPES = frozenset({"service", "socket", "device", "mount", "automount", "swap",
                        "target", "path", "timer", "slice", "scope"})
UNIT_NAME_MAX = 255  # systemd's UNIT_NAME_MAX (256) less the NUL
_NAME_CHARS = re.compile(r"[A-Za-z0-9:_.\\-]+")
_KEY_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
TEMPLATE_SAMPLE_INSTANCE = "0"


@dataclass(frozen=True, slots=True)
class UnitName:
    """A parsed unit name; ``instance`` is None (plain), "" (template) or the instance."""

    name: str
    prefix: str
    instance: str | None
    type: str

    @property
    def is_template(self) -> bool:
        return self.instance == ""

    @property
    def is_instance(self) -> bool:
        return bool(self.instance)

    @property
    def template(self) -> str:
        """``foo@.service`` for ``foo@1.service`` (and for the template itself)."""
        return f"{self.prefix}@.{self.type}" if self.instance is not None else self.name

    def instantiate(self, instance: str) -> str:
        return f"{self.prefix}@{instance}.{self.type}"


@functools.lru_cache(maxsize=16384)
def parse_unit_name(name: str) -> UnitName:
    """Split and check a unit name; ``ValueError`` says what is wrong (cached: every
    store key the scheduler reads carries a unit name)."""
    if not name or len(name) > UNIT_NAME_MAX:
        raise ValueError(f"unit name {name!r} must be 1 to {UNIT_NAME_MAX} characters")
    stem, dot, utype = name.rpartition(".")
    if not dot or utype not in UNIT_TYPES:
        raise ValueError(f"unit name {name!r} must end in a unit type "
                         f"(.{', .'.join(sorted(UNIT_TYPES))})")
    prefix, at, instance = stem.partition("@")
    if not prefix:
        raise ValueError(f"unit name {name!r} has an empty prefix")
    for part in (prefix, instance) if at else (prefix,):
        if part and not _NAME_CHARS.fullmatch(part):
            raise ValueError(f"unit name {name!r} may hold only letters, digits and "
                             r"':', '_', '.', '\', '-' (and one '@')")
    return UnitName(name, prefix, instance if at else None, utype)


def check_unit_name(name: str) -> str:
    """``name`` if it is a valid unit name, else ``ValueError``."""
    parse_unit_name(name)
    return name


# --- raw syntax ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One ``Key=Value`` assignment; ``line`` is where it starts (1-based)."""

    section: str
    key: str
    value: str
    line: int


def parse_entries(text: str, source: str) -> tuple[Entry, ...]:
    """The assignments of a unit file in order, continuation lines joined."""
    entries: list[Entry] = []
    section = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        raw = lines[i].strip()
        i += 1
        if not raw or raw[0] in "#;":
            continue
        if raw.startswith("["):
            if not raw.endswith("]") or len(raw) < 3 or any(c in raw[1:-1] for c in "[]"):
                raise UnitFileError(source, start + 1, "", f"bad section header {raw!r}")
            section = raw[1:-1]
            continue
        # a trailing backslash continues the line; comment lines inside are skipped
        parts = [raw]
        while parts[-1].endswith("\\") and i < len(lines):
            parts[-1] = parts[-1][:-1]
            nxt = lines[i].strip()
            i += 1
            if nxt and nxt[0] in "#;":
                parts.append("\\")  # keep continuing past the comment
                continue
            parts.append(nxt)
        if parts[-1].endswith("\\"):
            parts[-1] = parts[-1][:-1]
        joined = " ".join(p.strip() for p in parts if p.strip())
        key, eq, value = joined.partition("=")
        key = key.strip()
        if not eq:
            raise UnitFileError(source, start + 1, "",
                                f"syntax error: {joined!r} is not a section header or "
                                "Key=Value assignment")
        if not key or not _KEY_CHARS.fullmatch(key):
            raise UnitFileError(source, start + 1, key, f"syntax error: bad key name {key!r}")
        if not section:
            raise UnitFileError(source, start + 1, key, "assignment outside of any section")
        entries.append(Entry(section, key, value.strip(), start + 1))
    return tuple(entries)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "s": " ", "\\": "\\", '"': '"', "'": "'"}


def split_words(value: str) -> tuple[str, ...]:
    """Words of a value with systemd's quoting; ``ValueError`` on unbalanced quotes."""
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    quote = ""
    i = 0
    while i < len(value):
        c = value[i]
        i += 1
        if c == "\\":
            if i >= len(value):
                raise ValueError("trailing backslash")
            nxt = value[i]
            i += 1
            cur.append(_ESCAPES.get(nxt, nxt))
            in_word = True
        elif quote:
            if c == quote:
                quote = ""
            else:
                cur.append(c)
        elif c in "\"'":
            quote = c
            in_word = True
        elif c.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        else:
            cur.append(c)
            in_word = True
    if quote:
        raise ValueError(f"unbalanced {quote} quote")
    if in_word:
        words.append("".join(cur))
    return tuple(words)


def expand_specifiers(value: str, unit: UnitName) -> str:
    """Expand ``%n %N %p %i %%``; leave other specifiers for systemd."""
    if "%" not in value:
        return value
    table = {"n": unit.name, "N": unit.name.rsplit(".", 1)[0], "p": unit.prefix,
             "i": unit.instance or "", "%": "%"}
    return re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), value)


# --- interpreted options -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceName:
    """``[X-Weft] Service=<name>[:port]``: a DNS name below the cluster domain."""

    name: str
    port: int | None = None

    def __str__(self) -> str:
        return self.name if self.port is None else f"{self.name}:{self.port}"


@dataclass(frozen=True, slots=True)
class FleetOptions:
    """``[X-Fleet]``: where a unit may run."""

    machine_id: str | None = None
    machine_of: tuple[str, ...] = ()
    metadata: Mapping[str, frozenset[str]] = field(default_factory=dict)  # AND of ORs
    conflicts: tuple[str, ...] = ()  # globs
    global_: bool = False
    replaces: tuple[str, ...] = ()  # globs


@dataclass(frozen=True, slots=True)
class WeftOptions:
    """``[X-Weft]``: container network and DNS name."""

    network: bool = False
    service: ServiceName | None = None


@dataclass(frozen=True, slots=True)
class ExecCommand:
    """One ``Exec*=`` command line; ``-`` prefix: a failure is ignored."""

    argv: tuple[str, ...]
    ignore_failure: bool = False


@dataclass(frozen=True, slots=True)
class UnitFile:
    name: str
    unit: UnitName
    entries: tuple[Entry, ...]
    description: str = ""
    service_type: str = "simple"
    exec_start_pre: tuple[ExecCommand, ...] = ()
    exec_start: tuple[ExecCommand, ...] = ()
    exec_start_post: tuple[ExecCommand, ...] = ()
    exec_stop: tuple[ExecCommand, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    restart: str = "no"
    restart_sec: float = 0.1  # systemd's default 100ms
    fleet: FleetOptions = field(default_factory=FleetOptions)
    weft: WeftOptions = field(default_factory=WeftOptions)

    def values(self, section: str, key: str) -> tuple[str, ...]:
        """Raw values of any option, in file order (for what this module does not read)."""
        return tuple(e.value for e in self.entries if e.section == section and e.key == key)


RESTART_VALUES = frozenset({"no", "on-success", "on-failure", "on-abnormal", "on-watchdog",
                            "on-abort", "always"})
_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE = frozenset({"0", "no", "n", "false", "f", "off"})
_TIME_UNITS = {
    "us": 1e-6, "usec": 1e-6, "µs": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0, "w": 604800.0, "week": 604800.0,
    "weeks": 604800.0,
}
_TIME_TERM = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zµ]*)")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
FLEET_KEYS = {  # fleet's option names, and the X-Condition* names fleet still accepts
    "MachineID": "MachineID", "X-ConditionMachineID": "MachineID",
    "MachineOf": "MachineOf", "X-ConditionMachineOf": "MachineOf",
    "MachineMetadata": "MachineMetadata", "X-ConditionMachineMetadata": "MachineMetadata",
    "Conflicts": "Conflicts", "X-Conflicts": "Conflicts",
    "Global": "Global", "Replaces": "Replaces",
}
WEFT_KEYS = frozenset({"Network", "Service"})


def parse_bool(value: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (yes/no, true/false, on/off, 1/0)")


def parse_timespan(value: str) -> float:
    """systemd time span in seconds: ``5``, ``500ms``, ``1min 30s``."""
    text = value.strip()
    if not text:
        raise ValueError("empty time span")
    total, pos = 0.0, 0
    while pos < len(text):
        m = _TIME_TERM.match(text, pos)
        if not m or m.group(2) not in _TIME_UNITS:
            raise ValueError(f"{value!r} is not a time span (like 5, 500ms, 1min 30s)")
        total += float(m.group(1)) * _TIME_UNITS[m.group(2)]
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return total


def parse_service(value: str) -> ServiceName:
    """``<name>[:port]``: a dotted DNS name of labels, an optional port 1-65535."""
    name, colon, port_text = value.strip().partition(":")
    name = name.lower().rstrip(".")
    if not name or len(name) > 200 or not all(
            _DNS_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{value!r}: want <name>[:port] where name is DNS labels "
                         "(letters, digits, '-')")
    if not colon:
        return ServiceName(name)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: port {port_text!r} is not 1-65535")
    return ServiceName(name, int(port_text))


def check_glob(pattern: str) -> str:
    """A fleet glob (Go's path.Match: ``*``, ``?``, ``[...]``); refuse unbalanced brackets."""
    depth = 0
    for c in pattern:
        if c == "[":
            if depth:
                raise ValueError(f"glob {pattern!r}: nested '['")
            depth = 1
        elif c == "]" and depth:
            depth = 0
    if depth:
        raise ValueError(f"glob {pattern!r}: unterminated '['")
    return pattern


def _exec_command(words: tuple[str, ...]) -> ExecCommand:
    if not words:
        raise ValueError("empty command")
    first = words[0]
    ignore = False
    while first and first[0] in "-@+!:":
        ignore = ignore or first[0] == "-"
        at = first[0] == "@"
        first = first[1:]
        if at:  # "@exe argv0 args": argv[0] given separately; we run exe with the rest
            words = (first, *words[2:]) if len(words) > 1 else (first,)
            break
    argv = (first, *words[1:]) if first else words[1:]
    if not argv or not argv[0]:
        raise ValueError("no executable")
    return ExecCommand(tuple(argv), ignore)


def _unit_name_for(name: str, source: str) -> tuple[UnitName, UnitName]:
    """(name as given, name used for expansion) — a template expands as sample instance."""
    try:
        unit = parse_unit_name(name)
    except ValueError as exc:
        raise UnitFileError(source, 0, "", str(exc)) from None
    if unit.is_template:
        return unit, parse_unit_name(unit.instantiate(TEMPLATE_SAMPLE_INSTANCE))
    return unit, unit


def parse_unit(name: str, text: str, source: str) -> UnitFile:
    """Parse and check the unit file ``text`` named ``name``; ``source`` names it in errors."""
    unit, expand_as = _unit_name_for(name, source)
    entries = parse_entries(text, source)
    opts: dict[str, object] = {}
    execs: dict[str, list[ExecCommand]] = {"ExecStartPre": [], "ExecStart": [],
                                          "ExecStartPost": [], "ExecStop": []}
    env: dict[str, str] = {}
    machine_of: list[str] = []
    conflicts: list[str] = []
    replaces: list[str] = []
    metadata: dict[str, set[str]] = {}
    fleet_seen: dict[str, Entry] = {}

    for e in entries:
        value = expand_specifiers(e.value, expand_as)
        try:
            if e.section == "X-Fleet":
                canon = FLEET_KEYS.get(e.key)
                if canon is None:
                    raise ValueError(f"unknown [X-Fleet] option (known: "
                                     f"{', '.join(sorted(set(FLEET_KEYS.values())))})")
                fleet_seen.setdefault(canon, e)
                if canon == "MachineID":
                    words = split_words(value)
                    if len(words) != 1:
                        raise ValueError(f"want one machine id, got {value!r}")
                    opts["machine_id"] = words[0]
                elif canon == "MachineOf":
                    machine_of.extend(check_unit_name(w) for w in split_words(value))
                elif canon == "MachineMetadata":
                    for term in split_words(value):
                        k, eq, v = term.partition("=")
                        if not eq or not k.strip():
                            raise ValueError(f"metadata term {term!r} is not key=value")
                        metadata.setdefault(k.strip(), set()).add(v.strip())
                elif canon == "Conflicts":
                    conflicts.extend(check_glob(w) for w in split_words(value))
                elif canon == "Replaces":
                    replaces.extend(check_glob(w) for w in split_words(value))
                else:  # Global
                    opts["global"] = parse_bool(value)
            elif e.section == "X-Weft":
                if e.key not in WEFT_KEYS:
                    raise ValueError(f"unknown [X-Weft] option (known: "
                                     f"{', '.join(sorted(WEFT_KEYS))})")
                if e.key == "Network":
                    opts["network"] = parse_bool(value)
                else:
                    opts["service"] = parse_service(value)
            elif e.section == "Unit" and e.key == "Description":
                opts["description"] = value
            elif e.section == "Service":
                if e.key in execs:
                    if not value:
                        execs[e.key].clear()  # systemd: an empty assignment resets the list
                    else:
                        execs[e.key].append(_exec_command(split_words(value)))
                elif e.key == "Environment":
                    if not value:
                        env.clear()
                    for word in split_words(value):
                        k, eq, v = word.partition("=")
                        if not eq or not k:
                            raise ValueError(f"{word!r} is not VAR=value")
                        env[k] = v
                elif e.key == "Restart":
                    if value not in RESTART_VALUES:
                        raise ValueError(f"{value!r} is not one of "
                                         f"{', '.join(sorted(RESTART_VALUES))}")
                    opts["restart"] = value
                elif e.key == "RestartSec":
                    opts["restart_sec"] = parse_timespan(value)
                elif e.key == "Type":
                    opts["type"] = value
        except ValueError as exc:
            raise UnitFileError(source, e.line, e.key, str(exc)) from None

    if opts.get("global"):
        for other in ("MachineID", "MachineOf", "Replaces"):
            if other in fleet_seen:
                e = fleet_seen[other]
                raise UnitFileError(source, e.line, e.key,
                                    "a Global unit may only carry MachineMetadata and Conflicts")
    if expand_as.name in machine_of:
        e = fleet_seen["MachineOf"]
        raise UnitFileError(source, e.line, e.key, "a unit cannot be MachineOf itself")

    service = opts.get("service")
    machine_id = opts.get("machine_id")
    fleet = FleetOptions(
        machine_id=machine_id if isinstance(machine_id, str) else None,
        machine_of=tuple(dict.fromkeys(machine_of)),
        metadata={k: frozenset(v) for k, v in metadata.items()},
        conflicts=tuple(dict.fromkeys(conflicts)),
        global_=opts.get("global") is True,
        replaces=tuple(dict.fromkeys(replaces)),
    )
    restart_sec = opts.get("restart_sec", 0.1)
    return UnitFile(
        name=name,
        unit=unit,
        entries=entries,
        description=str(opts.get("description", "")),
        service_type=str(opts.get("type", "simple")),
        exec_start_pre=tuple(execs["ExecStartPre"]),
        exec_start=tuple(execs["ExecStart"]),
        exec_start_post=tuple(execs["ExecStartPost"]),
        exec_stop=tuple(execs["ExecStop"]),
        environment=env,
        restart=str(opts.get("restart", "no")),
        restart_sec=float(restart_sec) if isinstance(restart_sec, int | float) else 0.1,
        fleet=fleet,
        weft=WeftOptions(network=opts.get("network") is True,
                         service=service if isinstance(service, ServiceName) else None),
    )
