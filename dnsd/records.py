"""SkyDNS service records: the JSON value stored under ``/skydns/...`` and its decoding.

A value is a JSON object; unknown fields are ignored (SkyDNS and CoreDNS do the
same), so values written by other tools still load. ``host`` is either an IP
literal (A/AAAA) or a name (CNAME, SRV/MX target); it may be empty for TXT-only
entries. Decoding is strict about types and ranges and raises ``RecordError``
naming the key and the field, so one bad value is reported, not fatal.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from overlay.errors import DnsError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_HOST_LABEL = re.compile(r"[a-z0-9_*]([a-z0-9_*-]{0,61}[a-z0-9_*])?")


class RecordError(DnsError, ValueError):
    """A stored value is not a valid SkyDNS record (``key``, ``reason``)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Service:
    """One SkyDNS entry. ``key`` is the store path it came from (not serialised)."""

    key: str
    host: str = ""
    port: int = 0
    priority: int = 0
    weight: int = 0
    text: str = ""
    ttl: int = 0
    mail: bool = False
    targetstrip: int = 0
    group: str = ""
    ip: IPAddress | None = None  # host parsed as an IP literal, else None

    def to_json(self) -> bytes:
        """Compact SkyDNS JSON with only the non-default fields (plus ``host``)."""
        out: dict[str, object] = {"host": self.host}
        for name in ("port", "priority", "weight", "text", "ttl", "mail",
                     "targetstrip", "group"):
            value = getattr(self, name)
            if value:
                out[name] = value
        return json.dumps(out, separators=(",", ":")).encode()


_INT_FIELDS = {"port": 65535, "priority": 65535, "weight": 65535, "ttl": 2**31 - 1,
               "targetstrip": 255}


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address, or None when it is a name.

    An IPv4-mapped IPv6 address (``::ffff:10.0.0.7``) is its IPv4 address, as SkyDNS and
    CoreDNS read a host (``net.ParseIP(host).To4() != nil`` makes an A record).
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def decode(key: str, raw: bytes) -> Service:
    """Decode one stored value; ``RecordError`` when it is not a SkyDNS record."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(key, f"not JSON ({exc})") from None
    except RecursionError:
        raise RecordError(key, "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise RecordError(key, "not a JSON object")
    host = data.get("host", "")
    if not isinstance(host, str):
        raise RecordError(key, "host must be a string")
    host = host.strip()
    ints: dict[str, int] = {}
    for name, limit in _INT_FIELDS.items():
        value = data.get(name, 0)
        if value is None:
            value = 0
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(key, f"{name} must be an integer")
        if not 0 <= value <= limit:
            raise RecordError(key, f"{name} {value} out of range 0..{limit}")
        ints[name] = value
    text = data.get("text", "") or ""
    group = data.get("group", "") or ""
    mail = data.get("mail", False) or False
    if not isinstance(text, str) or not isinstance(group, str):
        raise RecordError(key, "text and group must be strings")
    if not isinstance(mail, bool):
        raise RecordError(key, "mail must be a boolean")
    ip = parse_ip(host) if host else None
    if host and ip is None:
        host = host.rstrip(".").lower()
        if not host or len(host) > 253 or \
                any(not _HOST_LABEL.fullmatch(lab) for lab in host.split(".")):
            raise RecordError(key, f"host {data.get('host')!r} is neither an IP nor a name")
    return Service(key=key, host=str(ip) if ip else host, text=text, mail=mail,
                   group=group, ip=ip, **ints)
