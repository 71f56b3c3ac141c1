"""SkyDNS's ``<path-prefix>/config`` key: parse its JSON and merge it over dnsd's flags.

SkyDNS reads this key once at startup and unmarshals it over the config its
flags built, so a field present in the key wins over the flag, even one given
explicitly. dnsd does the same, once at startup (no watch: a change needs a
restart), and the shell logs at INFO every field that overrode an explicit flag.

Fields and what dnsd does with them:

- honoured: ``dns_addr`` (``ip:port``; empty ip = all addresses, as ``-addr``),
  ``domain``, ``nameservers`` (list of ``ip[:port]``; turns forwarding on, as
  ``-nameservers``), ``no_rec`` (as ``-no-rec``: true turns forwarding off, false
  turns a ``-no-rec`` back off), ``read_timeout`` (as ``-rtimeout``: the
  upstream read timeout; a number is Go's ``time.Duration`` in nanoseconds, as
  SkyDNS writes it, a string like ``"2s"``/``"500ms"`` is also taken),
  ``round_robin``, ``ttl``, ``min_ttl``, ``priority`` (SRV/MX priority for
  records that say 0).
- accepted but ignored (listed in one INFO line): ``local``, ``hostmaster``
  (dnsd's SOA mbox is ``hostmaster.<zone>``), ``dnssec``, ``ns_rotate`` (dnsd
  always picks the first upstream by query ID), ``scache``, ``rcache``,
  ``rcache_ttl`` (dnsd's answer cache is always on and dropped on every change),
  ``ndot``/``ndots``, ``systemd``, ``etcd3``.
- a number 0 means "unset" (SkyDNS's ``omitempty`` + defaults), so the flag value
  stays; an empty ``nameservers`` list likewise.
- anything else is unknown and ignored (one WARNING: likely a typo).

Bad input never stops dnsd: a key that is not JSON or not an object is ignored
whole, a field with the wrong type or an invalid value is ignored alone; each
becomes a ``Problem`` the shell logs as a WARNING naming the key and the field.
This module is pure: no store, no logging.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from overlay.flags import go_duration

from .engine import EngineConfig
from .forward import Forwarder, parse_hostport
from .keys import BadNameError, split_name

if TYPE_CHECKING:
    from .config import DnsdConfig

HONOURED = ("dns_addr", "domain", "nameservers", "no_rec", "read_timeout", "round_robin",
            "ttl", "min_ttl", "priority")
IGNORED = ("local", "hostmaster", "dnssec", "ns_rotate", "scache", "rcache", "rcache_ttl",
           "ndot", "ndots", "systemd", "etcd3")
# the dnsd flags each honoured field overrides (fields without a flag cannot be explicit);
# no_rec true overrides -nameservers too, since it turns the forwarding they set off
FLAG_OF: dict[str, tuple[str, ...]] = {
    "dns_addr": ("addr",), "domain": ("domain",), "nameservers": ("nameservers",),
    "no_rec": ("no-rec", "nameservers"), "read_timeout": ("rtimeout",),
    "round_robin": ("round-robin",), "ttl": ("ttl",), "min_ttl": ("min-ttl",)}
MAX_TTL = 2**31 - 1  # RFC 2181 8


@dataclass(frozen=True, slots=True)
class Problem:
    """Why ``field`` (None = the whole key) was ignored."""

    field: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class SkyConfig:
    """The valid, set fields of the key (None = absent/unset) and what was left out."""

    dns_addr: tuple[str, int] | None = None
    domain: str | None = None
    nameservers: tuple[tuple[str, int], ...] | None = None
    no_rec: bool | None = None
    read_timeout: float | None = None
    round_robin: bool | None = None
    ttl: int | None = None
    min_ttl: int | None = None
    priority: int | None = None
    ignored: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()

    def present(self) -> tuple[str, ...]:
        """Honoured fields that carry a value, in ``HONOURED`` order."""
        return tuple(f for f in HONOURED if getattr(self, f) is not None)


@dataclass(frozen=True, slots=True)
class Override:
    """A key field that replaced the value of a flag given explicitly."""

    field: str
    flag: str
    value: object


class _Bad(ValueError):
    pass


def _int(value: object, lo: int, hi: int) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _Bad(f"want an integer, got {json.dumps(value)}")
    if value == 0:
        return None
    if not lo <= value <= hi:
        raise _Bad(f"{value} out of range {lo}..{hi}")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"want true or false, got {json.dumps(value)}")
    return value


def _ip_port(text: object, default_port: int | None) -> tuple[str, int]:
    if not isinstance(text, str):
        raise _Bad(f"want a string \"ip:port\", got {json.dumps(text)}")
    try:
        host, port = parse_hostport(text, default_port or 0)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    if port == 0:
        raise _Bad(f"{text!r}: want ip:port with a port 1..65535")
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise _Bad(f"{text!r}: {host!r} is not an IP address") from None
    return host, port


def _addr(value: object) -> tuple[str, int]:
    host, port = _ip_port(value, None)
    return host or "0.0.0.0", port


def _domain(value: object) -> str:
    if not isinstance(value, str):
        raise _Bad(f"want a string, got {json.dumps(value)}")
    try:
        labels = split_name(value)
    except BadNameError as exc:
        raise _Bad(str(exc)) from None
    if not labels:
        raise _Bad(f"{value!r}: empty (the root zone is not served)")
    return ".".join(labels) + "."


def _nameservers(value: object) -> tuple[tuple[str, int], ...] | None:
    if not isinstance(value, list):
        raise _Bad(f"want a list of \"ip:port\" strings, got {json.dumps(value)}")
    ups = tuple(_ip_port(v, 53) for v in value)
    if any(not host for host, _ in ups):
        raise _Bad("an entry has no IP address")
    return ups or None


def _duration(value: object) -> float | None:
    if isinstance(value, str):
        try:
            seconds = go_duration(value)
        except ValueError:
            raise _Bad(f"{value!r}: want a duration like \"2s\" or \"500ms\"") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1e9  # Go's time.Duration marshals as nanoseconds
    else:
        raise _Bad(f"want nanoseconds or a string like \"2s\", got {json.dumps(value)}")
    if seconds == 0:
        return None
    if not 0.001 <= seconds <= 60:
        raise _Bad(f"{value!r} is {seconds:g}s; want 1ms..60s")
    return seconds


_PARSERS: dict[str, Callable[[object], object]] = {
    "dns_addr": _addr,
    "domain": _domain,
    "nameservers": _nameservers,
    "no_rec": _bool,
    "read_timeout": _duration,
    "round_robin": _bool,
    "ttl": lambda v: _int(v, 1, MAX_TTL),
    "min_ttl": lambda v: _int(v, 1, MAX_TTL),
    "priority": lambda v: _int(v, 1, 65535),
}


def parse(raw: bytes) -> SkyConfig:
    """The key's value as a ``SkyConfig``; never raises, problems are carried in it."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return SkyConfig(problems=(Problem(None, f"not JSON: {exc}"),))
    if not isinstance(doc, dict):
        return SkyConfig(problems=(Problem(None, f"not a JSON object but {type(doc).__name__}"),))
    values: dict[str, object] = {}
    problems: list[Problem] = []
    for name in HONOURED:
        if name not in doc:
            continue
        try:
            values[name] = _PARSERS[name](doc[name])
        except _Bad as exc:
            problems.append(Problem(name, str(exc)))
    ignored = tuple(f for f in IGNORED if f in doc)
    unknown = tuple(sorted(f for f in doc if f not in HONOURED and f not in IGNORED))
    return SkyConfig(**values, ignored=ignored, unknown=unknown,  # type: ignore[arg-type]
                     problems=tuple(problems))


def merge(cfg: DnsdConfig, sky: SkyConfig,
          explicit: Collection[str] = ()) -> tuple[DnsdConfig, tuple[Override, ...]]:
    """``cfg`` with the key's fields applied, and the explicit flags they overrode.

    ``explicit`` holds the dnsd flag names (``ttl``, ``min-ttl``...) that were set
    on the command line or in the environment rather than left at their default.
    """
    overrides = tuple(Override(f, flag, getattr(sky, f)) for f in sky.present()
                      for flag in FLAG_OF.get(f, ()) if flag in explicit
                      and not (f == "no_rec" and flag == "nameservers" and not sky.no_rec))
    host, port = sky.dns_addr or (cfg.host, cfg.port)
    engine = cfg.engine
    if sky.domain is not None:
        engine = EngineConfig.from_domains([sky.domain], ttl=engine.ttl,
                                           min_ttl=engine.min_ttl)
        engine = dataclasses.replace(engine, priority=cfg.engine.priority)
    engine = dataclasses.replace(
        engine,
        ttl=sky.ttl if sky.ttl is not None else engine.ttl,
        min_ttl=sky.min_ttl if sky.min_ttl is not None else engine.min_ttl,
        priority=sky.priority if sky.priority is not None else engine.priority)
    old = cfg.forwarder
    upstreams = sky.nameservers or (old.upstreams if old else ())
    timeout = sky.read_timeout or cfg.read_timeout
    forwarder = Forwarder(upstreams, cfg.forward_allow, timeout) if upstreams else None
    no_rec = cfg.no_rec if sky.no_rec is None else sky.no_rec
    round_robin = cfg.round_robin if sky.round_robin is None else sky.round_robin
    merged = dataclasses.replace(cfg, host=host, port=port, engine=engine,
                                 forwarder=forwarder, no_rec=no_rec, read_timeout=timeout,
                                 round_robin=round_robin)
    return merged, overrides


# flags a /skydns/config field can override
_OVERRIDABLE = frozenset(flag for flags in FLAG_OF.values() for flag in flags)


def explicit_flags(argv: Sequence[str], environ: Mapping[str, str]) -> frozenset[str]:
    """The overridable flags set on the command line or via ``SKYDNS_*``, not defaulted.

    FlagParser folds defaults in, so this looks at the raw spellings it accepts:
    ``-f``, ``--f``, ``-f=v``, ``--f=v``.
    """
    given = {arg.lstrip("-").split("=", 1)[0] for arg in argv if arg.startswith("-")}
    env = {f for f in _OVERRIDABLE if "SKYDNS_" + f.upper().replace("-", "_") in environ}
    return frozenset((given & _OVERRIDABLE) | env)


def describe_changes(old: DnsdConfig, new: DnsdConfig) -> list[str]:
    """What ``new`` changes about the running answers, one phrase per setting (pure).

    Used when the key arrives after dnsd has started serving on its flags.
    """
    def zones(cfg: DnsdConfig) -> str:
        return ",".join(".".join(z) + "." for z in cfg.engine.zones)

    def forwarding(cfg: DnsdConfig) -> str:
        fwd = cfg.forwarding
        if fwd is None:
            return "off"
        return (",".join(f"{h}:{p}" for h, p in fwd.upstreams)
                + f" (timeout {fwd.timeout:g}s)")

    pairs = (
        ("dns_addr", f"{old.host}:{old.port}", f"{new.host}:{new.port}"),
        ("domain", zones(old), zones(new)),
        ("ttl", str(old.engine.ttl), str(new.engine.ttl)),
        ("min_ttl", str(old.engine.min_ttl), str(new.engine.min_ttl)),
        ("priority", str(old.engine.priority), str(new.engine.priority)),
        ("forwarding", forwarding(old), forwarding(new)),
        ("round_robin", str(old.round_robin).lower(), str(new.round_robin).lower()),
    )
    return [f"{name} {a} -> {b}" for name, a, b in pairs if a != b]
