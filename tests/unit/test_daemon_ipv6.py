"""flanneld with dual-stack and IPv6-only networks (issue 17): MemoryStore, fake clock and
a fake dual-stack backend; no root. The kernel side is overlay/backend's."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from overlay import subnetfile
from overlay.backend.base import Backend, BackendError, ExternalInterface, ReconcileReport
from overlay.config import DaemonConfig, NetworkConfig, parse_network_config
from overlay.daemon import FatalError, Flanneld, peer_view
from overlay.lease.model import (
    Lease,
    SubnetPair,
    decode_lease,
    encode_lease,
    lease_key,
    subnet_key,
    subnets_of,
)
from overlay.store.memory import MemoryStore
from tests.fakeclock import FakeClock, settle
from tests.unit.test_daemon import until

A = ipaddress.IPv4Address
A6 = ipaddress.IPv6Address
N = ipaddress.IPv4Network
N6 = ipaddress.IPv6Network
PREFIX = "/coreos.com/network"
CONFIG = f"{PREFIX}/config".encode()
DUAL = (b'{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",'
        b'"Backend":{"Type":"vxlan"}}')
V6ONLY = (b'{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",'
          b'"Backend":{"Type":"vxlan"}}')
NO4 = N("0.0.0.0/0")
VX = {"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}
VX6 = {"VNI": 1, "VtepMAC": "0e:00:00:00:00:61"}


class DualBackend:
    """Records what the daemon asks of a dual-stack data path."""

    def __init__(self, name: str = "vxlan", refuse_v6: bool = False) -> None:
        self.name = name
        self.refuse_v6 = refuse_v6
        self.attached: list[Lease] = []
        self.programmed: dict[SubnetPair, Lease] = {}
        self.prepared_v6 = 0
        self.prepared = 0

    @property
    def mtu(self) -> int:
        return 1450

    async def prepare(self) -> Mapping[str, Any]:
        self.prepared += 1
        return {"VNI": 1, "VtepMAC": "0e:00:00:00:00:aa"}

    async def prepare_v6(self) -> Mapping[str, Any]:
        if self.refuse_v6:
            raise BackendError("the udp backend is IPv4-only, as flannel's")
        self.prepared_v6 += 1
        return {"VNI": 1, "VtepMAC": "0e:00:00:00:00:bb"}

    async def attach(self, own: Lease) -> None:
        self.attached.append(own)

    async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport:
        self.programmed = {subnets_of(p): p for p in peers}
        return ReconcileReport(peers=len(peers))

    async def close(self) -> None:
        pass


_: Backend = DualBackend()


def ext(i: int, v4: bool = True, v6: bool = True) -> ExternalInterface:
    ip = A(f"198.18.0.{i}") if v4 else A("0.0.0.0")
    ip6 = A6(f"fd00:198:18::{i}") if v6 else None
    return ExternalInterface("eth0", 2, ip, ip, 1500, ip6, ip6)


class Rig:
    def __init__(self, tmp: Path) -> None:
        self.clock = FakeClock()
        self.store = MemoryStore(self.clock)
        self.tmp = tmp
        self.tasks: list[asyncio.Task[None]] = []

    def daemon(self, i: int, *, v4: bool = True, v6: bool = True, seed: int | None = None,
               backend: DualBackend | None = None) -> tuple[Flanneld, DualBackend]:
        be = backend or DualBackend()

        def factory(cfg: NetworkConfig, e: ExternalInterface) -> Backend:
            return be

        cfg = DaemonConfig(subnet_file=self.tmp / f"h{i}" / "subnet.env", lease_ttl=30)
        return Flanneld(cfg, self.store, ext(i, v4, v6), factory,
                        rng=random.Random(i if seed is None else seed), clock=self.clock), be

    async def running(self, i: int, **kw: Any) -> tuple[Flanneld, DualBackend,
                                                         asyncio.Task[None]]:
        d, be = self.daemon(i, **kw)
        task = asyncio.create_task(d.run())
        self.tasks.append(task)
        await until(lambda: d.health.ready or task.done(), "flanneld ready")
        if task.done():
            self.tasks.remove(task)
            task.result()
        return d, be, task

    async def stop(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def stored(self, lease: Lease) -> Lease | None:
        kv = await self.store.get(lease_key(PREFIX, lease).encode())
        return None if kv is None else decode_lease(kv.key.decode(), kv.value, kv.lease,
                                                    kv.mod_revision)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    yield r
    for task in r.tasks:
        await r.stop(task)


async def test_dual_stack_hosts_hold_both_halves_and_see_each_other(rig: Rig) -> None:
    await rig.store.put(CONFIG, DUAL)
    d1, be1, _ = await rig.running(11)
    d2, be2, _ = await rig.running(12)
    own1, own2 = d1.own, d2.own
    assert own1 is not None and own2 is not None
    for own, i in ((own1, 11), (own2, 12)):
        assert own.subnet.subnet_of(N("10.244.0.0/16")) and own.ipv6_subnet is not None
        assert own.ipv6_subnet.subnet_of(N6("fd00:10:244::/56"))
        assert own.ipv6_subnet.prefixlen == 64
        stored = await rig.stored(own)
        assert stored is not None and stored.public_ipv6 == A6(f"fd00:198:18::{i}")
        assert stored.backend_v6_data == {"VNI": 1, "VtepMAC": "0e:00:00:00:00:bb"}
        assert stored.public_ip == A(f"198.18.0.{i}")
    await until(lambda: subnets_of(own2) in be1.programmed, "h1 programs h2")
    assert be2.programmed.keys() == {subnets_of(own1)}
    peer = be1.programmed[subnets_of(own2)]
    assert peer.public_ipv6 == A6("fd00:198:18::12") and peer.backend_v6_data["VNI"] == 1
    env = subnetfile.read(rig.tmp / "h11" / "subnet.env")
    assert (env.network, env.subnet) == (N("10.244.0.0/16"), own1.subnet)
    assert (env.ipv6_network, env.ipv6_subnet) == (N6("fd00:10:244::/56"), own1.ipv6_subnet)
    assert be1.prepared_v6 == 1 and be1.attached == [own1]


async def test_ipv6_only_hosts_do_not_collide_on_the_zero_ipv4_half(rig: Rig) -> None:
    await rig.store.put(CONFIG, V6ONLY)
    hosts = [await rig.running(i, v4=False) for i in (11, 12, 13)]
    owns = [d.own for d, _, _ in hosts]
    assert all(o is not None and o.subnet == NO4 and o.public_ip == A("0.0.0.0") for o in owns)
    assert len({o.ipv6_subnet for o in owns if o is not None}) == 3
    listing = await rig.store.list(f"{PREFIX}/subnets/".encode())
    keys = sorted(kv.key.decode().rsplit("/", 1)[1] for kv in listing.items)
    assert all(k.startswith("0.0.0.0-0&fd00:10:244:") and k.endswith("::-64") for k in keys)
    for d, be, _ in hosts:
        mine = d.own
        assert mine is not None
        await until(lambda be=be: len(be.programmed) == 2, "two peers each")  # type: ignore[misc]
        assert subnets_of(mine) not in be.programmed
        assert d.health.leases_known == 3
    d1, be1, _ = hosts[0]
    assert be1.prepared == 0 and be1.prepared_v6 == 1  # no IPv4 device on IPv6-only hosts
    assert d1.own is not None
    stored = await rig.stored(d1.own)
    assert stored is not None and stored.backend_data == {}  # flannel: BackendData null
    assert stored.backend_v6_data == {"VNI": 1, "VtepMAC": "0e:00:00:00:00:bb"}
    env = subnetfile.read(rig.tmp / "h11" / "subnet.env")
    assert not env.ipv4 and env.ipv6_subnet == owns[0].ipv6_subnet  # type: ignore[union-attr]
    text = (rig.tmp / "h11" / "subnet.env").read_text()
    assert "FLANNEL_SUBNET" not in text and "FLANNEL_IPV6_SUBNET=fd00:10:244:" in text
    # one host leaves (its key expires): the others drop it and only it
    d3, _, t3 = hosts[2]
    gone = d3.own
    assert gone is not None
    await rig.stop(t3)
    await rig.store.delete(lease_key(PREFIX, gone).encode())
    await until(lambda: subnets_of(gone) not in be1.programmed, "h3 removed on h1")
    assert len(be1.programmed) == 1


@pytest.mark.parametrize("config", [DUAL, V6ONLY], ids=["dual-stack", "ipv6-only"])
@pytest.mark.parametrize("how", ["restart", "restart-after-expiry", "key-deleted"])
async def test_both_halves_stick(rig: Rig, config: bytes, how: str) -> None:
    """Restart (lease in the store, reused by PublicIP(v6)), restart after it expired
    (subnet.env's pair), and a deleted key while running (re-acquire) keep both halves."""
    v4 = config == DUAL
    await rig.store.put(CONFIG, config)
    # another host so that a random pick would likely differ
    await rig.running(12, v4=v4)
    d, _, task = await rig.running(11, v4=v4, seed=5)
    own = d.own
    assert own is not None
    if how == "key-deleted":
        await rig.store.delete(lease_key(PREFIX, own).encode())
        await rig.clock.tick(11)
        await until(lambda: d.own is not None and d.own.lease_id != own.lease_id,
                    "re-acquired")
        again = d.own
    else:
        await rig.stop(task)
        if how == "restart-after-expiry":
            await rig.store.delete(lease_key(PREFIX, own).encode())
        d2, _, _ = await rig.running(11, v4=v4, seed=99)
        again = d2.own
    assert again is not None and subnets_of(again) == subnets_of(own)
    stored = await rig.stored(own)
    assert stored is not None and stored.public_ipv6 == own.public_ipv6


async def test_mixed_cluster_ipv4_only_peers_keep_their_ipv4_half(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "overlay.daemon")
    await rig.store.put(CONFIG, DUAL)
    # an IPv4-only flannel host (written before the network went dual-stack)
    await rig.store.put(subnet_key(PREFIX, N("10.244.77.0/24")).encode(),
                        encode_lease(Lease(N("10.244.77.0/24"), A("198.18.0.77"), "vxlan", VX)))
    _, be, _ = await rig.running(11)
    assert set(be.programmed) == {(N("10.244.77.0/24"), None)}
    # a dual-stack peer whose IPv6 half lies outside IPv6Network is refused whole
    bad = Lease(N("10.244.78.0/24"), A("198.18.0.78"), "vxlan", VX,
                ipv6_subnet=N6("fd99::/64"), public_ipv6=A6("fd00:198:18::78"),
                backend_v6_data=VX6)
    await rig.store.put(lease_key(PREFIX, bad).encode(), encode_lease(bad))
    await until(lambda: "outside the IPv6Network" in caplog.text, "refusal logged")
    await settle()
    assert set(be.programmed) == {(N("10.244.77.0/24"), None)}


async def test_ipv6_only_network_ignores_ipv4_only_peers(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "overlay.daemon")
    await rig.store.put(CONFIG, V6ONLY)
    await rig.store.put(subnet_key(PREFIX, N("10.244.77.0/24")).encode(),
                        encode_lease(Lease(N("10.244.77.0/24"), A("198.18.0.77"), "vxlan", VX)))
    _, be, _ = await rig.running(11, v4=False)
    assert be.programmed == {}
    assert "no subnet in a family the network enables" in caplog.text


async def test_a_data_path_refusing_ipv6_stops_flanneld_naming_the_field(rig: Rig) -> None:
    await rig.store.put(CONFIG, DUAL)
    with pytest.raises(FatalError, match=r"EnableIPv6: .*IPv4-only"):
        await rig.running(11, backend=DualBackend(refuse_v6=True))
    listing = await rig.store.list(f"{PREFIX}/subnets/".encode())
    assert not listing.items  # refused before it took a lease


OWN = Lease(N("10.244.1.0/24"), A("198.18.0.11"), "vxlan", VX, ipv6_subnet=N6("fd00:10:244:1::/64"),
            public_ipv6=A6("fd00::11"), backend_v6_data=VX6)
DUAL_CFG = parse_network_config(DUAL)
V4_CFG = parse_network_config(b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
V6_CFG = parse_network_config(V6ONLY)


def peer(sn: str | None, sn6: str | None, ip: str = "198.18.0.12", ip6: str | None = "fd00::12"
         ) -> Lease:
    return Lease(N(sn) if sn else NO4, A(ip) if sn else A("0.0.0.0"), "vxlan", VX,
                 ipv6_subnet=N6(sn6) if sn6 else None, public_ipv6=A6(ip6) if ip6 else None,
                 backend_v6_data=VX6 if sn6 else {})


@pytest.mark.parametrize(("config", "lease", "want"), [
    (DUAL_CFG, peer("10.244.2.0/24", "fd00:10:244:2::/64"),
     ("10.244.2.0/24", "fd00:10:244:2::/64")),
    (DUAL_CFG, peer("10.244.2.0/24", None, ip6=None), ("10.244.2.0/24", None)),
    (V4_CFG, peer("10.244.2.0/24", "fd00:10:244:2::/64"), ("10.244.2.0/24", None)),
    (V6_CFG, peer("10.244.2.0/24", "fd00:10:244:2::/64"), ("0.0.0.0/0", "fd00:10:244:2::/64")),
    (V6_CFG, peer(None, "fd00:10:244:2::/64"), ("0.0.0.0/0", "fd00:10:244:2::/64")),
    (V6_CFG, peer("10.244.2.0/24", None, ip6=None), "no subnet in a family"),
    (DUAL_CFG, peer("10.244.2.0/24", "fd00:10:244::/56"), "overlaps our own"),
    (DUAL_CFG, peer("10.244.2.0/24", "fd00:10:244:2::/64", ip6=None), "no PublicIPv6"),
    (DUAL_CFG, peer("10.244.2.0/24", "fd00:10:244:2::/64", ip6="fd00::11"), "own public IPv6"),
    (DUAL_CFG, peer("10.244.2.0/24", "2001:db8::/64"), "outside the IPv6Network"),
], ids=["dual", "ipv4-only-peer", "v4-network-strips-v6", "v6-network-strips-v4", "v6-only",
        "v4-peer-in-v6-network", "v6-overlaps-own", "no-public-ipv6", "own-public-ipv6",
        "v6-outside"])
def test_peer_view(config: NetworkConfig, lease: Lease, want: tuple[str, str | None] | str
                   ) -> None:
    got = peer_view(lease, OWN, config, "vxlan", A("198.18.0.11"), A6("fd00::11"))
    if isinstance(want, str):
        assert isinstance(got, str) and want in got
        return
    assert isinstance(got, Lease)
    assert (str(got.subnet), None if got.ipv6_subnet is None else str(got.ipv6_subnet)) == want
    if got.ipv6_subnet is None:
        assert got.public_ipv6 is None and not got.backend_v6_data


async def test_turning_a_network_dual_stack_keeps_each_hosts_ipv4_subnet(rig: Rig) -> None:
    await rig.store.put(CONFIG, b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}')
    d, _, task = await rig.running(11)
    before = d.own
    assert before is not None and before.ipv6_subnet is None
    await rig.stop(task)
    await rig.store.put(CONFIG, DUAL)  # then every flanneld restarts, as flannel needs
    d2, _, _ = await rig.running(11, seed=77)
    after = d2.own
    assert after is not None and after.subnet == before.subnet  # pods keep their IPv4
    assert after.ipv6_subnet is not None
    assert await rig.stored(before) is None  # the IPv4-only key is replaced
    assert await rig.stored(after) is not None
