"""The scheduler's part of the sandbox demo: a web unit placed, found and moved.

``up`` ends with ``start_web``: a ``web.service`` unit (``python3 -m http.server`` with
``[X-Weft] Network=true`` and ``Service=web:8000``, on any host but h1, which holds dnsd)
started with ``weftctl start`` from a
host, its name resolved with ``dig`` from a container on another host, and an HTTP GET
through the overlay. ``weftctl sandbox failover [UNIT]`` (the end of ``make demo``) kills
the unit's host and shows the unit coming back elsewhere with its name following.

Everything is driven through the CLI inside the sandbox's namespaces (``weftctl`` with
``ETCDCTL_ENDPOINTS`` set, ``dig``, a Python GET), as a user would.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from overlay.sandbox.model import DOMAIN, SandboxError, Site, State, agent_machine_id
from overlay.testbed import run

WEB_UNIT = "web.service"
WEB_PORT = 8000
FAILOVER_WITHIN = 30.0


class Writer(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


def web_unit_text(www: Path, hosts: Sequence[str] = ()) -> str:
    """The demo unit; with ``hosts``, it may run on those only (metadata ``host=``, the
    values OR'ed): the sandbox keeps it off h1, whose dnsd must survive ``failover``."""
    fleet = "".join(f"MachineMetadata=host={h}\n" for h in hosts)
    return ("[Unit]\nDescription=weft demo web server\n\n[Service]\n"
            f"ExecStart=/usr/bin/python3 -m http.server {WEB_PORT} --directory {www}\n"
            "Restart=always\nRestartSec=1\n\n"
            f"[X-Weft]\nNetwork=true\nService=web:{WEB_PORT}\n"
            + (f"\n[X-Fleet]\n{fleet}" if fleet else ""))


def _weftctl(state: State, host: str, *args: str, timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
    weftctl = str(Path(sys.executable).parent / "weftctl")
    return run(["ip", "netns", "exec", state.host(host).netns, "env",
                f"ETCDCTL_ENDPOINTS=http://{state.store_ip}:2379", weftctl, *args],
               check=False, timeout=timeout)


def _web_states(state: State) -> list[dict[str, object]]:
    """Every machine's report on the web unit, read with etcdctl in the underlay (one
    short Go process: on a loaded machine each weftctl start-up costs seconds)."""
    proc = run(["ip", "netns", "exec", state.underlay_ns, "etcdctl", "--endpoints",
                f"http://{state.store_ip}:2379", "get", "--prefix", "--print-value-only",
                f"/weft/sched/state/{WEB_UNIT}/"], check=False, timeout=20)
    out = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def _host_of(state: State, machine: object) -> str:
    for h in state.hosts:
        site = Site(h.name, h.netns, ipaddress.IPv4Address(h.ip), Path(h.dir))
        if agent_machine_id(site) == machine:
            return h.name
    return str(machine)


def _dig(state: State, netns: str, name: str) -> list[str]:
    proc = run(["ip", "netns", "exec", netns, "dig", f"@{state.dns_ip}", name, "+short",
                "+time=1", "+tries=1"], check=False, timeout=10)
    return sorted(w for w in proc.stdout.split() if w[:1].isdigit())


def _get(netns: str, address: str) -> str:
    code = (f"import urllib.request as u; r = u.urlopen('http://{address}:{WEB_PORT}/', "
            "timeout=2); print(r.status, r.read().decode().splitlines()[0][:60])")
    proc = run(["ip", "netns", "exec", netns, "python3", "-c", code], check=False, timeout=10)
    return proc.stdout.strip()


def _observer(state: State, skip: set[str]) -> tuple[str, str]:
    """(host, container netns) where dig and the GET run from: on a host not in ``skip``
    if there is one (a one-host sandbox looks from its own container)."""
    usable = [c for c in state.containers if c.ip]
    for c in usable:
        if c.host not in skip:
            return c.host, c.netns
    if usable:
        return usable[0].host, usable[0].netns
    raise SandboxError("demo", "no container to look from")


def _wait_web(state: State, within: float, not_at: str = "") -> tuple[str, str, float]:
    """(host, address, seconds) once the web unit runs (elsewhere than ``not_at``)."""
    t0 = time.monotonic()
    while True:
        for st in _web_states(state):
            addr = str(st.get("address") or "")
            if st.get("sub") == "running" and addr and addr != not_at:
                return _host_of(state, st.get("machine")), addr, time.monotonic() - t0
        if time.monotonic() - t0 > within:
            raise SandboxError(WEB_UNIT, f"not running within {within:.0f} s")
        time.sleep(0.3)


def _show_name(state: State, out: Writer, where: str, skip: set[str], address: str,
               within: float) -> bool:
    obs_host, netns = _observer(state, skip)
    t0 = time.monotonic()
    got: list[str] = []
    while time.monotonic() - t0 < within:
        got = _dig(state, netns, f"web.{DOMAIN}")
        if got == [address]:
            break
        time.sleep(0.3)
    out.write(f"$ weftctl sandbox exec c1.{obs_host} -- dig @{state.dns_ip} web.{DOMAIN} +short"
              f"   # from {obs_host}, the unit runs on {where}\n{chr(10).join(got) or '(none)'}\n")
    # "running" means the unit's process started: give its server the rest of ``within``
    # to listen (seconds on a loaded machine), as the name had
    answer = _get(netns, address)
    while not answer.startswith("200") and time.monotonic() - t0 < within:
        time.sleep(0.3)
        answer = _get(netns, address)
    out.write(f"$ weftctl sandbox exec c1.{obs_host} -- curl http://{address}:{WEB_PORT}/\n"
              f"{answer or '(no answer)'}\n")
    out.flush()
    return got == [address] and answer.startswith("200")


def start_web(state: State, state_dir: Path, out: Writer) -> bool:
    """Start the demo web unit and show it resolved and answering from another host."""
    www = state_dir / "www"
    www.mkdir(exist_ok=True)
    (www / "index.html").write_text("<h1>hello from a weft unit</h1>\n")
    unit = state_dir / WEB_UNIT
    # off h1 (dnsd's host) when there is anywhere else to go
    unit.write_text(web_unit_text(www, [h.name for h in state.hosts[1:]]))
    first = state.hosts[0].name
    # --no-block, then watch its state with etcdctl: start's own wait polls once a second
    proc = _weftctl(state, first, "start", "--no-block", str(unit))
    out.write(f"$ weftctl sandbox exec {first} -- weftctl start --no-block {unit}\n"
              f"{(proc.stdout + proc.stderr).strip()}\n")
    if proc.returncode != 0:
        return False
    host, address, took = _wait_web(state, 30)
    out.write(f"{WEB_UNIT} active on {host} at {address} ({took:.1f} s later)\n")
    return _show_name(state, out, host, {host}, address, 10)


def failover(state: State, out: Writer, kill: list[str]) -> bool:
    """Kill the web unit's host (``kill``: the argv that kills a host, less the host) and
    show the unit, its name and its answer coming back on another host."""
    if len(state.hosts) < 2:
        out.write("failover: a one-host sandbox has nowhere to move a unit to; skipped\n")
        return True
    host, address, _ = _wait_web(state, 10)
    out.write(f"{WEB_UNIT} runs on {host} at {address}; killing {host}\n")
    out.flush()
    proc = run([*kill, host], check=False, timeout=60)
    out.write(proc.stdout)
    t0 = time.monotonic()
    new_host, new_address, _ = _wait_web(state, FAILOVER_WITHIN, not_at=address)
    took = time.monotonic() - t0
    out.write(f"{WEB_UNIT} moved to {new_host} ({new_address}) {took:.1f} s after the kill\n")
    return _show_name(state, out, new_host, {host, new_host}, new_address, 10)
