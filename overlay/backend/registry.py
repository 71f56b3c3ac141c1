"""The backend name table: parse a network config's ``Backend`` object and build the backend.

``make_backend(type, config, ext)`` is what flanneld's control plane calls;
``parse_backend(type, config)`` only validates (for ``weftctl network set`` and
config checks). Both raise ``BackendConfigError`` naming the offending field.
Unknown keys are ignored, as flannel ignores them.

Backend fields (flannel's names):

* ``vxlan``: ``VNI`` (1, 1..16777215), ``Port`` (0 = 8472), ``Learning`` (false),
  ``DirectRouting`` (false), ``MTU`` (underlay MTU override), ``GBP`` (only false).
* ``host-gw``: no fields.
* ``udp``: ``Port`` (8285).

``lease_backend_type(type)`` is the ``BackendType`` to publish in the lease:
flannel's udp backend leaves it empty, so weft does too.

Run as ``python -m overlay.backend.registry --type vxlan --iface eth0`` it is a
line-driven harness for tests and benchmarks: JSON requests on stdin
(``{"op": "prepare"}``, ``{"op": "attach", "lease": L}``,
``{"op": "reconcile", "peers": [L, …]}``, ``{"op": "close"}`` with
``L = {"subnet": "10.244.1.0/24", "public_ip": …, "type": "vxlan", "data": {…}}``),
one JSON reply per line on stdout. It runs in whatever network namespace it is
started in (``ip netns exec``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from overlay.backend.base import Backend, BackendConfigError, BackendError, ExternalInterface
from overlay.backend.hostgw import HostGwBackend, HostGwConfig
from overlay.backend.netlink import KernelThread
from overlay.backend.udp import DEFAULT_UDP_PORT, UdpBackend, UdpConfig
from overlay.backend.vxlan import DEFAULT_PORT, VxlanBackend, VxlanConfig
from overlay.lease.model import Lease

BACKEND_TYPES = ("vxlan", "host-gw", "udp")
DEFAULT_BACKEND = "vxlan"

BackendSettings = VxlanConfig | HostGwConfig | UdpConfig


def _int(cfg: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = cfg.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BackendConfigError(key, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise BackendConfigError(key, f"{value} is out of range {lo}..{hi}")
    return value


def _bool(cfg: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BackendConfigError(key, f"must be true or false, got {value!r}")
    return value


def lease_backend_type(type_: str) -> str:
    """The ``BackendType`` flannel writes into its lease for this backend."""
    return "" if type_ == "udp" else type_


def parse_backend(type_: str | None, config: Mapping[str, Any] | None) -> BackendSettings:
    """Validate a ``Backend`` object (``Type`` may be given separately or inside it)."""
    cfg: Mapping[str, Any] = config or {}
    if not isinstance(cfg, Mapping):
        raise BackendConfigError("", f"must be a JSON object, got {type(cfg).__name__}")
    kind = type_ if type_ is not None else cfg.get("Type", DEFAULT_BACKEND)
    if kind in ("", None):
        kind = DEFAULT_BACKEND
    if kind not in BACKEND_TYPES:
        raise BackendConfigError(
            "Type", f"unknown backend type {kind!r} (weft supports {', '.join(BACKEND_TYPES)})")
    if kind == "vxlan":
        if _bool(cfg, "GBP"):
            raise BackendConfigError("GBP", "group-based policy is not supported by weft")
        return VxlanConfig(
            vni=_int(cfg, "VNI", 1, 0, 16_777_215) or 1,
            port=_int(cfg, "Port", 0, 0, 65_535) or DEFAULT_PORT,
            learning=_bool(cfg, "Learning"),
            direct_routing=_bool(cfg, "DirectRouting"),
            mtu=_int(cfg, "MTU", 0, 0, 65_535) or None,
        )
    if kind == "udp":
        return UdpConfig(port=_int(cfg, "Port", 0, 0, 65_535) or DEFAULT_UDP_PORT)
    return HostGwConfig()


def make_backend(type_: str | None, config: Mapping[str, Any] | None, ext: ExternalInterface,
                 *, network: ipaddress.IPv4Network | None = None,
                 kernel: KernelThread | None = None) -> Backend:
    """Build the backend named ``type_`` (None/"" = vxlan) for ``ext``.

    ``network`` is the cluster network (``Network``): backends only ever touch
    routes inside it (so daemons for different networks coexist), and the udp
    backend routes all of it into its TUN device (else one route per peer).
    ``kernel`` defaults to netlink in the calling process's namespace.
    """
    settings = parse_backend(type_, config)
    if isinstance(settings, VxlanConfig):
        return VxlanBackend(settings, ext, kernel, network=network)
    if isinstance(settings, UdpConfig):
        return UdpBackend(settings, ext, network=network, kernel=kernel)
    return HostGwBackend(settings, ext, kernel, network=network)


# ---------------------------------------------------------------------------
# the line-driven harness (tests, benchmarks)


def lease_from_json(obj: Mapping[str, Any]) -> Lease:
    return Lease(ipaddress.IPv4Network(obj["subnet"]), ipaddress.IPv4Address(obj["public_ip"]),
                 str(obj.get("type", "")), dict(obj.get("data") or {}))


def _report_json(r: Any) -> dict[str, Any]:
    return {"added": r.added, "removed": r.removed, "changed": r.changed,
            "errors": list(r.errors), "peers": r.peers}


async def _serve(backend: Backend) -> int:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        if not line.strip():
            continue
        reply: dict[str, Any]
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "prepare":
                reply = {"ok": True, "data": dict(await backend.prepare()), "mtu": backend.mtu}
            elif op == "attach":
                await backend.attach(lease_from_json(req["lease"]))
                reply = {"ok": True}
            elif op == "reconcile":
                peers = [lease_from_json(p) for p in req.get("peers", [])]
                reply = {"ok": True, "report": _report_json(await backend.reconcile(peers))}
            elif op == "close":
                await backend.close()
                sys.stdout.write(json.dumps({"ok": True}) + "\n")
                sys.stdout.flush()
                return 0
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except (BackendError, BackendConfigError, ValueError, KeyError) as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    await backend.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    from overlay.backend.netlink import external_interface

    ap = argparse.ArgumentParser(prog="python -m overlay.backend.registry",
                                 description="drive one weft backend over JSON lines")
    ap.add_argument("--type", default=DEFAULT_BACKEND, choices=BACKEND_TYPES)
    ap.add_argument("--config", default="{}", help="the Backend JSON object")
    ap.add_argument("--iface", required=True)
    ap.add_argument("--public-ip", default=None)
    ap.add_argument("--network", default=None)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    pub = ipaddress.IPv4Address(args.public_ip) if args.public_ip else None
    ext = external_interface(args.iface, pub)
    net = ipaddress.IPv4Network(args.network) if args.network else None
    backend = make_backend(args.type, json.loads(args.config), ext, network=net)
    return asyncio.run(_serve(backend))


class DriverProcess:
    """Client side of the harness: one backend process inside namespace ``netns``."""

    def __init__(self, netns: str, type_: str, iface: str, *, config: Mapping[str, Any] | None
                 = None, network: str | None = None, public_ip: str | None = None,
                 python: str = sys.executable, log_path: str | None = None) -> None:
        import subprocess

        argv = ["ip", "netns", "exec", netns, python, "-m", "overlay.backend.registry",
                "--type", type_, "--iface", iface, "--config", json.dumps(dict(config or {}))]
        if network:
            argv += ["--network", network]
        if public_ip:
            argv += ["--public-ip", public_ip]
        err = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            # run from the project root so no stray module (e.g. bench/overlay.py)
            # shadows the overlay package
            root = Path(__file__).resolve().parent.parent.parent
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True, start_new_session=True,
                                         cwd=root)
        finally:
            if not isinstance(err, int):
                err.close()

    def call(self, req: Mapping[str, Any], timeout: float = 30) -> dict[str, Any]:
        """Send one request, return the reply; raises ``BackendError`` on a failed reply."""
        import select as _select

        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = _select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise BackendError(f"backend driver: no reply to {req.get('op')} within {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise BackendError(f"backend driver exited (rc={self.proc.poll()}) on {req}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise BackendError(f"backend driver: {req.get('op')}: {reply.get('error')}")
        return reply

    def stop(self) -> None:
        import contextlib
        import os
        import signal
        import subprocess

        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.call({"op": "close"}, timeout=5)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(Exception):
                    f.close()


if __name__ == "__main__":
    sys.exit(main())
