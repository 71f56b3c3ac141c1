"""Names and store keys: ``a.b.skydns.local.`` <-> ``/skydns/local/skydns/b/a``.

SkyDNS's mapping: lower-case, reverse the labels, join with ``/`` under the path
prefix. Names are handled as tuples of lower-case labels (root order, i.e. the
reversed labels) so the index can walk them directly.
"""

from __future__ import annotations

from overlay.errors import DnsError

Labels = tuple[str, ...]  # reversed, lower-case: ("local", "skydns", "east")


class BadNameError(DnsError, ValueError):
    """A name or key that cannot be mapped (``name``, ``reason``)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name!r}: {reason}")
        self.name = name
        self.reason = reason


def split_name(name: str) -> tuple[str, ...]:
    """Labels of a dotted name in written order, lower-case, root dropped."""
    text = name.strip().rstrip(".").lower()
    if not text:
        return ()
    labels = tuple(text.split("."))
    for label in labels:
        if not label:
            raise BadNameError(name, "empty label")
        if len(label) > 63:
            raise BadNameError(name, f"label {label[:20]!r}... longer than 63 bytes")
    if len(text) > 253:
        raise BadNameError(name, "longer than 253 bytes")
    return labels


def name_to_path(name: str) -> Labels:
    """Reversed labels of ``name`` (the path below the prefix)."""
    return tuple(reversed(split_name(name)))


def name_to_key(name: str, prefix: str = "/skydns") -> str:
    """The store key SkyDNS uses for ``name``."""
    path = name_to_path(name)
    return prefix.rstrip("/") + "/" + "/".join(path) if path else prefix.rstrip("/")


def key_to_path(key: str, prefix: str = "/skydns") -> Labels | None:
    """Reversed labels of ``key`` below ``prefix``; None if outside it."""
    base = prefix.rstrip("/")
    if key != base and not key.startswith(base + "/"):
        return None
    return tuple(seg.lower() for seg in key[len(base):].split("/") if seg)


def path_to_name(path: Labels) -> str:
    """Absolute dotted name of a reversed-label path."""
    return ".".join(reversed(path)) + "." if path else "."
