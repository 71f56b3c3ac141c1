"""A line-driven harness around one weft backend, for tests and benchmarks.

Run as ``python -m tests.backend_driver --type vxlan --iface eth0`` (from the
project root, inside whatever network namespace it should program: ``ip netns
exec``), it reads JSON requests on stdin (``{"op": "prepare"}``,
``{"op": "attach", "lease": L}``, ``{"op": "reconcile", "peers": [L, ...]}``,
``{"op": "close"}`` with ``L = {"subnet": "10.244.1.0/24", "public_ip": ...,
"type": "vxlan", "data": {...}}``) and writes one JSON reply per line on stdout.
The IPv6 half: ``{"op": "prepare_v6"}`` and, in ``L``, ``"subnet6"``, ``"public_ip6"``,
``"data6"`` (an IPv6-only lease has ``"subnet": "0.0.0.0/0"``).
``DriverProcess`` is the client side. (Moved here from overlay/backend/registry.py:
test code does not ship in the production package.)
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

from overlay import metrics
from overlay.backend.base import (
    DEFAULT_BACKEND,
    Backend,
    BackendConfigError,
    BackendError,
    Measured,
    lease_backend_type,
)
from overlay.backend.registry import BACKEND_TYPES, make_backend
from overlay.lease.model import Lease

__all__ = ["DriverProcess", "lease_backend_type", "lease_from_json", "lease_to_json"]


def lease_from_json(obj: Mapping[str, Any]) -> Lease:
    subnet6, public6 = obj.get("subnet6"), obj.get("public_ip6")
    return Lease(ipaddress.IPv4Network(obj["subnet"]), ipaddress.IPv4Address(obj["public_ip"]),
                 str(obj.get("type", "")), dict(obj.get("data") or {}),
                 ipv6_subnet=ipaddress.IPv6Network(subnet6) if subnet6 else None,
                 public_ipv6=ipaddress.IPv6Address(public6) if public6 else None,
                 backend_v6_data=dict(obj.get("data6") or {}))


def lease_to_json(lease: Lease) -> dict[str, Any]:
    """The harness's dict for ``lease`` (inverse of ``lease_from_json``)."""
    out: dict[str, Any] = {"subnet": str(lease.subnet), "public_ip": str(lease.public_ip),
                           "type": lease.backend_type, "data": dict(lease.backend_data)}
    if lease.ipv6_subnet is not None:
        out["subnet6"] = str(lease.ipv6_subnet)
    if lease.public_ipv6 is not None:
        out["public_ip6"] = str(lease.public_ipv6)
    if lease.backend_v6_data:
        out["data6"] = dict(lease.backend_v6_data)
    return out


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
            elif op == "prepare_v6":
                reply = {"ok": True, "data": dict(await backend.prepare_v6()),
                         "mtu": backend.mtu}
            elif op == "attach":
                await backend.attach(lease_from_json(req["lease"]))
                reply = {"ok": True}
            elif op == "reconcile":
                peers = [lease_from_json(p) for p in req.get("peers", [])]
                reply = {"ok": True, "report": _report_json(await backend.reconcile(peers))}
            elif op == "metrics":
                families = backend.metric_families() if isinstance(backend, Measured) else []
                reply = {"ok": True, "text": metrics.render(families)}
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

    ap = argparse.ArgumentParser(prog="python -m tests.backend_driver",
                                 description="drive one weft backend over JSON lines")
    ap.add_argument("--type", default=DEFAULT_BACKEND, choices=BACKEND_TYPES)
    ap.add_argument("--config", default="{}", help="the Backend JSON object")
    ap.add_argument("--iface", required=True)
    ap.add_argument("--public-ip", default=None)
    ap.add_argument("--network", default=None)
    ap.add_argument("--public-ipv6", default=None)
    ap.add_argument("--network6", default=None)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    pub = ipaddress.IPv4Address(args.public_ip) if args.public_ip else None
    pub6 = ipaddress.IPv6Address(args.public_ipv6) if args.public_ipv6 else None
    ext = external_interface(args.iface, pub, public_ipv6=pub6)
    net = ipaddress.IPv4Network(args.network) if args.network else None
    net6 = ipaddress.IPv6Network(args.network6) if args.network6 else None
    backend = make_backend(args.type, json.loads(args.config), ext, network=net, network6=net6)
    return asyncio.run(_serve(backend))


class DriverProcess:
    """Client side of the harness: one backend process inside namespace ``netns``."""

    def __init__(self, netns: str, type_: str, iface: str, *, config: Mapping[str, Any] | None
                 = None, network: str | None = None, public_ip: str | None = None,
                 python: str = sys.executable, log_path: str | None = None,
                 network6: str | None = None, public_ipv6: str | None = None) -> None:
        import subprocess

        argv = ["ip", "netns", "exec", netns, python, "-m", "tests.backend_driver",
                "--type", type_, "--iface", iface, "--config", json.dumps(dict(config or {}))]
        if network:
            argv += ["--network", network]
        if public_ip:
            argv += ["--public-ip", public_ip]
        if network6:
            argv += ["--network6", network6]
        if public_ipv6:
            argv += ["--public-ipv6", public_ipv6]
        err = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            # run from the project root so no stray module (e.g. bench/overlay.py)
            # shadows the overlay package
            root = Path(__file__).resolve().parent.parent
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
