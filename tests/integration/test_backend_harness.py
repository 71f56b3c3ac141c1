"""Test harness (no tests here): weft backends driven inside testbed host namespaces.

Each weft host runs ``python -m tests.backend_driver`` under ``ip netns exec``
(the backend harness), so the backends program that host's kernel exactly as
flanneld would, without the control plane. Leases travel between hosts as
flannel's lease JSON (``encode_lease``/``decode_lease``), the same bytes a
flannel host would read from etcd.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overlay.lease.model import Lease, decode_lease, encode_lease, subnet_key
from overlay.testbed import Testbed
from tests.backend_driver import DriverProcess, lease_backend_type

NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
PREFIX = "/coreos.com/network"


def lease_json(lease: Lease) -> dict[str, Any]:
    """Round-trip through flannel's stored form, then to the harness's dict."""
    key = subnet_key(PREFIX, lease.subnet)
    back = decode_lease(key, encode_lease(lease))
    return {"subnet": str(back.subnet), "public_ip": str(back.public_ip),
            "type": back.backend_type, "data": dict(back.backend_data)}


def subnet_of(i: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(f"10.244.{i}.0/24")


def container_ip(i: int) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface(f"10.244.{i}.2/24")


@dataclass
class WeftHost:
    name: str
    index: int
    driver: DriverProcess
    lease: Lease
    mtu: int


@dataclass
class Cluster:
    tb: Testbed
    btype: str
    config: Mapping[str, Any] = field(default_factory=dict)
    log_dir: Path | None = None
    hosts: dict[str, WeftHost] = field(default_factory=dict)
    foreign: dict[str, Lease] = field(default_factory=dict)  # leases not run by weft

    def start(self, name: str, *, container: bool = True) -> WeftHost:
        """Run the backend on host ``name`` (h<i> gets subnet 10.244.<i>.0/24)."""
        host = self.tb.hosts[name]
        index = int(name[1:])
        log = str(self.log_dir / f"{name}.log") if self.log_dir else None
        d = DriverProcess(host.netns, self.btype, host.iface, config=self.config,
                          network=str(NETWORK), python=sys.executable, log_path=log)
        try:
            ready = d.call({"op": "prepare"})
            lease = Lease(subnet_of(index), host.ip, lease_backend_type(self.btype),
                          ready["data"])
            d.call({"op": "attach", "lease": lease_json(lease)})
        except BaseException:
            d.stop()
            raise
        wh = WeftHost(name, index, d, lease, int(ready["mtu"]))
        self.hosts[name] = wh
        if container and f"{name}/c" not in self.tb.containers:
            self.tb.add_container(name, "c", container_ip(index), mtu=wh.mtu)
        return wh

    def stop(self, name: str) -> None:
        self.hosts.pop(name).driver.stop()

    def leases(self) -> list[Lease]:
        return [h.lease for h in self.hosts.values()] + list(self.foreign.values())

    def reconcile(self, name: str) -> dict[str, Any]:
        me = self.hosts[name]
        peers = [lease_json(lease) for lease in self.leases() if lease.subnet != me.lease.subnet]
        report: dict[str, Any] = me.driver.call({"op": "reconcile", "peers": peers})["report"]
        return report

    def reconcile_all(self) -> dict[str, dict[str, Any]]:
        return {name: self.reconcile(name) for name in self.hosts}

    def close(self) -> None:
        for h in list(self.hosts.values()):
            h.driver.stop()
        self.hosts.clear()


@contextlib.contextmanager
def cluster(tb: Testbed, btype: str, config: Mapping[str, Any] | None = None,
            log_dir: Path | None = None) -> Iterator[Cluster]:
    c = Cluster(tb, btype, dict(config or {}), log_dir)
    try:
        yield c
    finally:
        c.close()


def ping_matrix(tb: Testbed, names: list[str], within: float = 5) -> list[str]:
    """Every container pings every other host's container; returns the failures."""
    failed = []
    for a in names:
        for b in names:
            if a == b:
                continue
            target = str(tb.containers[f"{b}/c"].ip.ip)  # type: ignore[union-attr]
            if not tb.wait_ping(tb.containers[f"{a}/c"].netns, target, within=within):
                failed.append(f"{a}->{b}")
    return failed


def ip_show(tb: Testbed, host: str, *argv: str) -> str:
    return tb.exec(tb.hosts[host].netns, argv).stdout


# -- underlay capture (scapy runs in a child inside the underlay namespace) -------

SNIFFER = """
import json, sys
from scapy.all import sniff
from scapy.layers.inet import IP, UDP
from scapy.layers.vxlan import VXLAN
pkts = sniff(iface="ul0", filter="udp", timeout=float(sys.argv[1]), count=int(sys.argv[2]),
             started_callback=lambda: print("ready", flush=True))
out = []
for p in pkts:
    if UDP not in p:
        continue
    row = {"src": p[IP].src, "dst": p[IP].dst, "dport": p[UDP].dport, "vni": None,
           "inner_src": None, "inner_dst": None}
    if VXLAN in p:
        row["vni"] = p[VXLAN].vni
        inner = p[VXLAN].payload.getlayer(IP)
    else:
        raw = bytes(p[UDP].payload)
        inner = IP(raw) if raw and raw[0] >> 4 == 4 else None
    if inner is not None:
        row["inner_src"], row["inner_dst"] = inner.src, inner.dst
    out.append(row)
print(json.dumps(out), flush=True)
"""


def start_sniffer(tb: Testbed, timeout: float, count: int) -> subprocess.Popen[str]:
    """Capture UDP on the underlay bridge until ``count`` packets or ``timeout`` s."""
    proc = subprocess.Popen(["ip", "netns", "exec", tb.underlay_ns, sys.executable, "-c",
                             SNIFFER, str(timeout), str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        proc.wait()
        raise AssertionError(f"sniffer did not start: {line!r} {proc.stderr.read()!r}")
    return proc


def collect(proc: subprocess.Popen[str], timeout: float = 20) -> list[dict[str, Any]]:
    """The captured packets (the sniffer is killed if it outlives ``timeout``)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out.strip().splitlines()
    assert lines, f"sniffer printed nothing: {err}"
    rows: list[dict[str, Any]] = json.loads(lines[-1])
    return rows


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric_value(text: str, sample: str) -> int:
    """The value of ``sample`` (name with labels) in Prometheus text ``text``."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return int(float(line.split()[-1]))
    raise AssertionError(f"{sample} not in metrics:\n{text}")
