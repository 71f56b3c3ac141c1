"""-ip-blackhole-route: the wanted blackhole and the diff (pure), and its apply over FakeKernel."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from pathlib import Path

from overlay.backend.base import Backend, ExternalInterface
from overlay.backend.netlink import sync_blackholes
from overlay.backend.plan import BlackholeOps, blackhole_diff, desired_blackholes
from overlay.cli.flanneld import parse_args
from overlay.config import DaemonConfig, NetworkConfig
from overlay.daemon import Flanneld
from overlay.lease.model import Lease, encode_lease, subnet_key
from tests.fakekernel import FakeKernel
from tests.unit.test_daemon import CONFIG, GOOD, PREFIX, FakeBackend, Harness, ext, until

N = ipaddress.IPv4Network
NET = N("10.244.0.0/16")
OWN, MOVED = N("10.244.7.0/24"), N("10.244.9.0/24")


def test_flag_on_wants_the_own_subnet_only() -> None:
    assert desired_blackholes(OWN, True) == {OWN}
    assert desired_blackholes(None, True) == frozenset()


def test_flag_off_wants_none() -> None:
    assert desired_blackholes(OWN, False) == frozenset()


def test_missing_blackhole_is_added() -> None:
    assert blackhole_diff(frozenset({OWN}), [], NET) == BlackholeOps(add=(OWN,))


def test_present_blackhole_is_left_alone_on_restart() -> None:
    assert blackhole_diff(frozenset({OWN}), [OWN], NET) == BlackholeOps()


def test_lease_change_adds_new_then_removes_old() -> None:
    ops = blackhole_diff(desired_blackholes(MOVED, True), [OWN], NET)
    assert ops == BlackholeOps(add=(MOVED,), remove=(OWN,))


def test_flag_off_removes_a_leftover() -> None:
    assert blackhole_diff(desired_blackholes(OWN, False), [OWN], NET) == \
        BlackholeOps(remove=(OWN,))


def test_other_networks_blackholes_are_never_removed() -> None:
    other = N("10.245.3.0/24")  # a second flanneld (-etcd-prefix) in the same namespace
    assert blackhole_diff(frozenset({OWN}), [OWN, other], NET) == BlackholeOps()
    assert blackhole_diff(frozenset(), [other], None) == BlackholeOps(remove=(other,))


def test_sync_converges_and_is_idempotent() -> None:
    k = FakeKernel()
    assert sync_blackholes(k, frozenset({OWN}), NET) == []
    assert k.holes == {OWN}
    k.calls.clear()
    assert sync_blackholes(k, frozenset({OWN}), NET) == []
    assert k.calls == ["observe"]  # nothing to do: nothing sent
    assert sync_blackholes(k, frozenset({MOVED}), NET) == []
    assert k.holes == {MOVED}
    assert k.calls[-2:] == [f"blackhole-add {MOVED}", f"blackhole-del {OWN}"]


def test_flag_and_env() -> None:
    assert parse_args(["-etcd-endpoints", "http://127.0.0.1:2379"], {})[1].blackhole_route \
        is False
    assert parse_args(["--ip-blackhole-route"], {})[1].blackhole_route is True
    assert parse_args([], {"FLANNELD_IP_BLACKHOLE_ROUTE": "true"})[1].blackhole_route is True


async def test_daemon_keeps_the_blackhole_with_its_lease(tmp_path: Path) -> None:
    """Start-up adds it; a lease taken over by another host moves it to the new subnet."""
    h = Harness(tmp_path)
    k = FakeKernel()
    be = FakeBackend()

    async def sync(want: frozenset[N], network: N) -> Sequence[str]:
        return sync_blackholes(k, want, network)

    def factory(cfg: NetworkConfig, e: ExternalInterface) -> Backend:
        return be

    cfg = DaemonConfig(subnet_file=tmp_path / "subnet.env", lease_ttl=30, blackhole_route=True)
    d = Flanneld(cfg, h.store, ext(), factory, rng=random.Random(1), clock=h.clock,
                 blackhole=sync)
    await h.store.put(CONFIG, GOOD)
    h.start(d)
    try:
        await until(lambda: d.health.ready, "flanneld ready")
        old = d.own
        assert old is not None and k.holes == {old.subnet}
        taken = Lease(old.subnet, ipaddress.IPv4Address("198.18.0.99"), "vxlan",
                      {"VNI": 1, "VtepMAC": "0e:00:00:00:00:09"})
        await h.store.put(subnet_key(PREFIX, old.subnet).encode(), encode_lease(taken))
        await h.clock.tick(11)
        await until(lambda: d.own is not None and d.own.subnet != old.subnet, "moved lease")
        assert d.own is not None
        await until(lambda: k.holes == {d.own.subnet} if d.own else False, "blackhole moved")
        assert d.health.reconcile_errors_total == 0
    finally:
        for task in h.tasks:
            await h.stop(task)
