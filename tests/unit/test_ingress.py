"""Members-only ingress: the nft scripts (pure) and the daemon's ordering with a fake guard."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

from overlay import metrics
from overlay.backend.base import Backend, ExternalInterface, ReconcileReport
from overlay.cli.flanneld import ingress_factory, parse_args
from overlay.config import DaemonConfig, NetworkConfig, parse_network_config
from overlay.daemon import Flanneld, IngressGuard
from overlay.health import render_metrics
from overlay.ingress import MembersOnly, parse_counter, render, render_members
from overlay.lease.model import Lease, encode_lease, subnet_key
from overlay.store.memory import MemoryStore
from tests.fakeclock import FakeClock
from tests.unit.test_daemon import CONFIG, GOOD, FakeBackend, until

A = ipaddress.IPv4Address
A6 = ipaddress.IPv6Address


def test_render_drops_non_members_on_the_port_only() -> None:
    text = render(8472, [A("198.18.0.13"), A("198.18.0.12"), A6("fd00:198:18::12")])
    assert "table inet weft_ingress {}\ndelete table inet weft_ingress\n" in text
    # the IPv4-only table of earlier releases goes in the same transaction
    assert "table ip weft_ingress {}\ndelete table ip weft_ingress\n" in text
    assert "elements = { 198.18.0.12, 198.18.0.13 }" in text
    assert "elements = { fd00:198:18::12 }" in text
    assert 'udp dport 8472 ip saddr != @members counter name "dropped" drop' in text
    assert 'udp dport 8472 ip6 saddr != @members6 counter name "dropped" drop' in text
    assert "priority raw; policy accept;" in text
    assert "elements" not in render(8285, [])  # an empty set is still a set: all dropped


def test_render_members_replaces_the_sets_in_one_script() -> None:
    assert render_members([A("10.0.0.2"), A("10.0.0.1"), A6("fd00::1")]) == (
        "flush set inet weft_ingress members\n"
        "add element inet weft_ingress members { 10.0.0.1, 10.0.0.2 }\n"
        "flush set inet weft_ingress members6\n"
        "add element inet weft_ingress members6 { fd00::1 }\n")
    assert render_members([]) == ("flush set inet weft_ingress members\n"
                                  "flush set inet weft_ingress members6\n")


def test_parse_counter() -> None:
    listing = "table ip weft_ingress {\n\tcounter dropped {\n\t\tpackets 3 bytes 150\n\t}\n}\n"
    assert parse_counter(listing) == (3, 150)
    assert parse_counter("") == (0, 0)


def test_guard_families_label_the_backend() -> None:
    guard = MembersOnly("udp", 8285, dropped_packets=4, dropped_bytes=400)
    text = metrics.render(guard.families())
    assert 'weft_ingress_dropped_total{backend="udp"} 4' in text
    assert 'weft_ingress_members{backend="udp"} 0' in text


def test_flag_defaults_on_and_turns_off_by_flag_or_env() -> None:
    assert parse_args([], {})[1].ingress_members_only is True
    assert parse_args(["-vxlan-ingress-members-only=false"], {})[1].ingress_members_only is False
    env = {"FLANNELD_VXLAN_INGRESS_MEMBERS_ONLY": "false"}
    assert parse_args([], env)[1].ingress_members_only is False


def test_factory_guards_tunnel_ports_only() -> None:
    def net(backend: str) -> NetworkConfig:
        return parse_network_config(
            f'{{"Network":"10.244.0.0/16","Backend":{backend}}}'.encode())

    vx = ingress_factory(net('{"Type":"vxlan","Port":4789}'))
    assert isinstance(vx, MembersOnly) and (vx.backend, vx.port) == ("vxlan", 4789)
    udp = ingress_factory(net('{"Type":"udp"}'))
    assert isinstance(udp, MembersOnly) and (udp.backend, udp.port) == ("udp", 8285)
    assert ingress_factory(net('{"Type":"host-gw"}')) is None


class FakeGuard:
    """Records the guard calls in one log shared with the backend."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def update(self, members: Iterable[ipaddress.IPv4Address]) -> bool:
        self.log.append("members " + ",".join(sorted(map(str, members))))
        return True

    async def refresh(self) -> None:
        self.log.append("refresh")

    async def remove(self) -> bool:
        self.log.append("remove")
        return True

    def families(self) -> Sequence[metrics.Family]:
        return [metrics.counter("weft_ingress_dropped_total", "", {("vxlan",): 7},
                                labels=("backend",))]


_: IngressGuard = FakeGuard([])


class LoggingBackend(FakeBackend):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport:
        self.log.append("routes " + ",".join(sorted(str(p.public_ip) for p in peers)))
        return await super().reconcile(peers)


async def run_daemon(tmp_path: Path, members_only: bool, log: list[str]) -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    await store.put(CONFIG, GOOD)
    be = LoggingBackend(log)

    def factory(cfg: NetworkConfig, e: ExternalInterface) -> Backend:
        return be

    cfg = DaemonConfig(subnet_file=tmp_path / "subnet.env", ingress_members_only=members_only)
    ip = A("198.18.0.11")
    d = Flanneld(cfg, store, ExternalInterface("eth0", 2, ip, ip, 1500), factory,
                 rng=random.Random(1), clock=clock, ingress=lambda c: FakeGuard(log))
    task = asyncio.create_task(d.run())
    try:
        await until(lambda: d.health.ready, "ready")
        peer = Lease(ipaddress.IPv4Network("10.244.77.0/24"), A("198.18.0.77"), "vxlan",
                     {"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"})
        await store.put(subnet_key("/coreos.com/network", peer.subnet).encode(),
                        encode_lease(peer))
        await until(lambda: any("198.18.0.77" in e for e in log), "peer programmed")
        if members_only:
            assert 'weft_ingress_dropped_total{backend="vxlan"} 7' in render_metrics(d.health)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_members_are_allowed_before_routes_and_the_guard_goes_on_exit(
        tmp_path: Path) -> None:
    log: list[str] = []
    await run_daemon(tmp_path, True, log)
    events = [e for e in log if e != "refresh"]
    assert events[:2] == ["members ", "routes "]  # start-up: no peers yet
    join = events.index("routes 198.18.0.77")
    assert events[join - 1] == "members 198.18.0.77"  # accepted no later than routed
    assert events[-1] == "remove"


async def test_flag_off_removes_a_left_over_guard_and_never_installs_one(
        tmp_path: Path) -> None:
    log: list[str] = []
    await run_daemon(tmp_path, False, log)
    assert log[0] == "remove"
    assert not [e for e in log if e.startswith("members")]


def test_members_are_each_halfs_public_address() -> None:
    from overlay.daemon import ingress_members

    net = ipaddress.IPv4Network
    v4 = Lease(net("10.244.1.0/24"), A("198.18.0.11"), "vxlan")
    dual = Lease(net("10.244.2.0/24"), A("198.18.0.12"), "vxlan",
                 ipv6_subnet=ipaddress.IPv6Network("fd00:10:244:2::/64"),
                 public_ipv6=A6("fd00:198:18::12"))
    v6only = Lease(net("0.0.0.0/0"), A("0.0.0.0"), "vxlan",
                   ipv6_subnet=ipaddress.IPv6Network("fd00:10:244:3::/64"),
                   public_ipv6=A6("fd00:198:18::13"))
    assert ingress_members([v4, dual, v6only]) == [
        A("198.18.0.11"), A("198.18.0.12"), A6("fd00:198:18::12"), A6("fd00:198:18::13")]
