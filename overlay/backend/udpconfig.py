"""The udp backend's settings, and what its data path needs of the CPU: numpy-free.

``weftctl network set`` and flanneld validate a udp Backend object through this
module, so neither imports the forwarder (``overlay.backend.udp``) or numpy unless
the udp data path really starts. numpy 2's wheels are built for x86-64-v2 and die
with SIGILL (which nothing can catch) on a CPU without SSE4.2/POPCNT, such as
QEMU's default ``qemu64``; ``missing_cpu_features`` lets the forwarder refuse
such a host with a message instead.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay.backend.base import BackendConfigError, int_field

DEFAULT_UDP_PORT = 8285
# x86-64-v2, numpy 2's baseline on x86_64 (its __cpu_baseline__ X86_V2)
X86_64_V2 = ("ssse3", "sse4_1", "sse4_2", "popcnt")


@dataclass(frozen=True, slots=True)
class UdpConfig:
    port: int = DEFAULT_UDP_PORT
    key_files: tuple[str, ...] = ()  # Encryption.KeyFile: encrypt when set (first seals)


def parse_config(cfg: Mapping[str, Any]) -> UdpConfig:
    """flannel's udp Backend field: Port (0 = 8285); weft's ``Encryption``:
    ``{"KeyFile": PATH}`` or ``{"KeyFile": [NEW, OLD]}`` during a key roll."""
    port = int_field(cfg, "Port", 0, 0, 65_535) or DEFAULT_UDP_PORT
    enc = cfg.get("Encryption")
    if enc is None:
        return UdpConfig(port=port)
    if not isinstance(enc, Mapping):
        raise BackendConfigError("Encryption", f"must be an object, got {enc!r}")
    files = enc.get("KeyFile")
    paths = [files] if isinstance(files, str) else files
    if not isinstance(paths, list) or not 1 <= len(paths) <= 2 or not all(
            isinstance(p, str) and p.startswith("/") for p in paths):
        raise BackendConfigError("Encryption.KeyFile", "must be an absolute path, or a list "
                                 f"of two during a key roll, got {files!r}")
    return UdpConfig(port=port, key_files=tuple(paths))


def missing_cpu_features(cpuinfo: str, machine: str) -> list[str]:
    """The x86-64-v2 flags ``/proc/cpuinfo``'s text lacks ([] when not x86_64, or when
    the text names no flags at all: then nothing is known and nothing is refused)."""
    if machine not in ("x86_64", "AMD64"):
        return []
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            have = set(value.split())
            return [f for f in X86_64_V2 if f not in have]
    return []


def cpu_problem() -> str | None:
    """Why this host's CPU cannot run the udp forwarder (numpy's baseline), or None."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    missing = missing_cpu_features(text, platform.machine())
    if not missing:
        return None
    return (f"the udp backend's forwarder needs an x86-64-v2 CPU (numpy's baseline); this "
            f"CPU lacks {', '.join(missing)} (on QEMU give the VM e.g. -cpu max or Nehalem)")
