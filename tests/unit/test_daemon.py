"""flanneld's control loop on MemoryStore + fake clock + fake backend: no sleeps, no root."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from overlay import subnetfile
from overlay.backend.base import Backend, ExternalInterface, ReconcileReport
from overlay.config import DaemonConfig, NetworkConfig
from overlay.daemon import Flanneld
from overlay.health import respond
from overlay.lease.model import Lease, decode_lease, encode_lease, subnet_key
from overlay.store.memory import MemoryStore
from tests import cancelrace
from tests.fakeclock import FakeClock, settle

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network
PREFIX = "/coreos.com/network"
CONFIG = f"{PREFIX}/config".encode()
GOOD = b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'


async def until(pred: Callable[[], bool], what: str, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class FakeBackend:
    """Records what the daemon asks of a data path."""

    def __init__(self, name: str = "vxlan") -> None:
        self.name = name
        self.attached: list[Lease] = []
        self.programmed: dict[N, Lease] = {}
        self.reconciles = 0
        self.closed = False

    @property
    def mtu(self) -> int:
        return 1450

    async def prepare(self) -> Mapping[str, Any]:
        return {"VNI": 1, "VtepMAC": "0e:00:00:00:00:aa"}

    async def prepare_v6(self) -> Mapping[str, Any]:
        return {"VNI": 1, "VtepMAC": "0e:00:00:00:00:ab"}

    async def attach(self, own: Lease) -> None:
        self.attached.append(own)

    async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport:
        new = {p.subnet: p for p in peers}
        added = len(set(new) - set(self.programmed))
        removed = len(set(self.programmed) - set(new))
        self.programmed = new
        self.reconciles += 1
        return ReconcileReport(added, removed, 0, (), len(new))

    async def close(self) -> None:
        self.closed = True


_: Backend = FakeBackend()


def ext(ip: str = "198.18.0.11") -> ExternalInterface:
    return ExternalInterface("eth0", 2, A(ip), A(ip), 1500)


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = FakeClock()
        self.store = MemoryStore(self.clock)
        self.tmp = tmp_path
        self.tasks: list[asyncio.Task[None]] = []

    def daemon(self, ip: str = "198.18.0.11", seed: int = 1, ttl: int = 30,
               backend: FakeBackend | None = None, name: str = "h") -> tuple[Flanneld,
                                                                             FakeBackend]:
        be = backend or FakeBackend()

        def factory(cfg: NetworkConfig, e: ExternalInterface) -> Backend:
            return be

        cfg = DaemonConfig(subnet_file=self.tmp / name / "subnet.env", lease_ttl=ttl)
        d = Flanneld(cfg, self.store, ext(ip), factory, rng=random.Random(seed),
                     clock=self.clock)
        return d, be

    def start(self, d: Flanneld) -> asyncio.Task[None]:
        task = asyncio.create_task(d.run())
        self.tasks.append(task)
        return task

    async def running(self, **kw: Any) -> tuple[Flanneld, FakeBackend, asyncio.Task[None]]:
        """A daemon built with ``daemon(**kw)``, started, and ready."""
        d, be = self.daemon(**kw)
        task = self.start(d)
        await until(lambda: d.health.ready, "flanneld ready")
        return d, be, task

    async def stop(self, task: asyncio.Task[None]) -> None:
        task.cancel()
        # bounded: a flanneld that ignores its cancel fails the test rather than hanging it
        await asyncio.wait([task], timeout=10)
        assert task.done(), "flanneld did not stop when cancelled"
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def key(self, subnet: N) -> Lease | None:
        kv = await self.store.get(subnet_key(PREFIX, subnet).encode())
        if kv is None:
            return None
        return decode_lease(kv.key.decode(), kv.value, kv.lease, kv.mod_revision)

    async def put_peer(self, subnet: str, ip: str, btype: str = "vxlan",
                       raw: bytes | None = None) -> None:
        value = raw if raw is not None else encode_lease(
            Lease(N(subnet), A(ip), btype, {"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}))
        await self.store.put(subnet_key(PREFIX, N(subnet)).encode(), value)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    for task in harness.tasks:
        await harness.stop(task)


async def ready(h: Harness, d: Flanneld) -> None:
    await until(lambda: d.health.ready, "flanneld ready")


async def test_waits_for_config_then_picks_it_up(h: Harness,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "overlay.daemon")
    d, be = h.daemon()
    h.start(d)
    await h.clock.tick(5)
    assert not d.health.ready and respond(d.health, "/readyz")[0] == 503
    await h.store.put(CONFIG, b"{not json")
    await until(lambda: "invalid network config" in caplog.text, "invalid-config log")
    await h.store.put(CONFIG, b'{"Network":"10.244.0.0/30"}')
    await until(lambda: "too small" in caplog.text, "too-small log")
    await h.store.put(CONFIG, b'{"Network":"10.244.0.0/16","Backend":{"Type":"nope"}}')
    await until(lambda: "unknown backend type" in caplog.text, "unknown-backend log")
    await h.clock.tick(10)  # ten retries: still one message per distinct problem
    assert caplog.text.count("unknown backend type") == 1
    assert caplog.text.count("no network config") == 1
    assert not d.health.ready
    # a valid dual-stack config on a host without IPv6 (issue 17): flanneld waits, naming
    # the field, rather than joining without its IPv6 half (no lease, no subnet.env)
    await h.store.put(CONFIG, b'{"Network":"10.244.0.0/16","EnableIPv6":true,'
                              b'"IPv6Network":"fd00:10:244::/56"}')
    await until(lambda: "EnableIPv6: interface eth0 has no global IPv6 address" in caplog.text,
                "ipv6-wait log")
    await h.clock.tick(3)
    assert not d.health.ready and d.own is None
    assert not (h.tmp / "h" / "subnet.env").exists()
    await h.store.put(CONFIG, GOOD)
    await ready(h, d)
    own = d.own
    assert own is not None and own.subnet.subnet_of(N("10.244.0.0/16"))
    env = subnetfile.read(h.tmp / "h" / "subnet.env")
    assert (env.subnet, env.mtu, env.network) == (own.subnet, 1450, N("10.244.0.0/16"))
    stored = await h.key(own.subnet)
    assert stored is not None and stored.public_ip == A("198.18.0.11")
    assert stored.backend_type == "vxlan" and stored.backend_data["VtepMAC"] == \
        "0e:00:00:00:00:aa"
    assert be.attached == [own]
    assert respond(d.health, "/readyz")[0] == 200


async def test_renewal_keeps_the_same_lease(h: Harness) -> None:
    await h.store.put(CONFIG, GOOD)
    d, _, _ = await h.running(ttl=30)
    own = d.own
    assert own is not None
    await h.clock.tick(300)  # ten lease lifetimes
    stored = await h.key(own.subnet)
    assert stored is not None and stored.lease_id == own.lease_id
    assert d.health.lease_renewals_total >= 25
    assert (await h.store.time_to_live(own.lease_id)).ttl > 0


async def test_stop_closes_handles_and_keeps_the_lease(h: Harness) -> None:
    await h.store.put(CONFIG, GOOD)
    d, be, task = await h.running()
    await h.stop(task)
    assert be.closed and d.own is not None
    assert await h.key(d.own.subnet) is not None  # flannel leaves its lease on shutdown


async def test_lease_expires_without_flanneld(h: Harness) -> None:
    await h.store.put(CONFIG, GOOD)
    d, _, task = await h.running(ttl=30)
    own = d.own
    assert own is not None
    await h.stop(task)
    h.clock.advance(31)
    h.store.expire_leases()
    assert await h.key(own.subnet) is None


@pytest.mark.parametrize("how", ["delete-key", "revoke-lease"])
async def test_vanished_lease_is_reacquired_same_subnet(
        h: Harness, how: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "overlay.daemon")
    await h.store.put(CONFIG, GOOD)
    d, _be, _ = await h.running()
    own = d.own
    assert own is not None
    if how == "delete-key":
        await h.store.delete(subnet_key(PREFIX, own.subnet).encode())
    else:
        await h.store.revoke(own.lease_id)
    await until(lambda: "lost" in caplog.text, "the lost-lease log")
    await h.clock.tick(11)  # the renew loop may notice on its next tick
    await until(lambda: d.own is not None and d.own.lease_id != own.lease_id, "re-acquired")
    stored = await h.key(own.subnet)
    assert stored is not None and stored.public_ip == own.public_ip
    assert d.own is not None and d.own.subnet == own.subnet
    assert d.health.lease_acquisitions_total == 2
    await h.clock.tick(60)  # and it is renewed from then on
    assert await h.key(own.subnet) is not None


async def test_peers_programmed_and_bad_leases_ignored(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "overlay.daemon")
    await h.store.put(CONFIG, GOOD)
    await h.put_peer("10.244.50.0/24", "198.18.0.12")  # present before start
    d, be, _ = await h.running()
    assert set(be.programmed) == {N("10.244.50.0/24")}
    await h.put_peer("10.244.51.0/24", "198.18.0.13")
    await h.put_peer("10.244.52.0/24", "198.18.0.14", raw=b"this is not json")
    await h.put_peer("10.244.53.0/24", "198.18.0.15", btype="ipsec")
    await h.put_peer("10.244.54.0/24", "", raw=json.dumps({"PublicIP": "x"}).encode())
    await h.put_peer("8.8.8.0/24", "198.18.0.16")  # would hijack traffic to the outside
    await h.put_peer("10.244.0.0/16", "198.18.0.17")  # would cover our own containers
    await h.put_peer("10.244.55.0/24", "198.18.0.11")  # our own IP: would loop to ourselves
    await until(lambda: N("10.244.51.0/24") in be.programmed, "peer 51 programmed")
    await until(lambda: d.health.malformed_leases_total == 2, "malformed counted")
    await settle()
    assert set(be.programmed) == {N("10.244.50.0/24"), N("10.244.51.0/24")}
    assert "not JSON" in caplog.text and "backend type 'ipsec'" in caplog.text
    assert "outside the network" in caplog.text and "overlaps our own" in caplog.text
    assert "names our own public IP" in caplog.text
    await h.store.delete(subnet_key(PREFIX, N("10.244.50.0/24")).encode())
    await until(lambda: N("10.244.50.0/24") not in be.programmed, "peer 50 removed")
    assert d.health.leases_known == 6  # own, 51, 53, 55, 8.8.8/24, /16: valid, 51 routed


async def test_restart_reuses_lease_by_public_ip(h: Harness) -> None:
    await h.store.put(CONFIG, GOOD)
    d1, _, t1 = await h.running(seed=1)
    first = d1.own
    await h.stop(t1)
    d2, _, _ = await h.running(seed=99)
    assert first is not None and d2.own is not None and d2.own.subnet == first.subnet


async def test_previous_subnet_from_subnet_file(h: Harness) -> None:
    await h.store.put(CONFIG, GOOD)
    path = h.tmp / "h" / "subnet.env"
    subnetfile.write(path, subnetfile.SubnetEnv(N("10.244.0.0/16"), N("10.244.77.0/24"),
                                                1450, False))
    d, _, _ = await h.running(ip="198.18.0.99")
    assert d.own is not None and d.own.subnet == N("10.244.77.0/24")


async def test_network_full_waits_then_acquires(h: Harness,
                                                caplog: pytest.LogCaptureFixture) -> None:
    await h.store.put(CONFIG, b'{"Network":"10.9.0.0/28"}')  # /30s: .4 .8 .12
    for i, sub in enumerate(("10.9.0.4/30", "10.9.0.8/30", "10.9.0.12/30")):
        await h.put_peer(sub, f"198.18.0.{20 + i}")
    d, _ = h.daemon()
    h.start(d)
    await until(lambda: "network full" in caplog.text, "network-full log")
    await h.clock.tick(10)
    assert not d.health.ready and caplog.text.count("network full") == 1
    await h.store.delete(subnet_key(PREFIX, N("10.9.0.8/30")).encode())
    await h.clock.tick(10)
    await ready(h, d)
    assert d.own is not None and d.own.subnet == N("10.9.0.8/30")


async def test_concurrent_daemons_with_same_seed_get_distinct_subnets(h: Harness) -> None:
    await h.store.put(CONFIG, b'{"Network":"10.9.0.0/24"}')  # 3 free /26s
    daemons = [h.daemon(ip=f"198.18.0.{11 + i}", seed=7, name=f"h{i}")[0] for i in range(3)]
    for d in daemons:
        h.start(d)
    for d in daemons:
        await ready(h, d)
    subnets = {d.own.subnet for d in daemons if d.own}
    assert len(subnets) == 3


async def test_metrics_exposed(h: Harness) -> None:
    await h.store.put(CONFIG, GOOD)
    await h.put_peer("10.244.50.0/24", "198.18.0.12")
    d, _, _ = await h.running()
    status, _, body = respond(d.health, "/metrics")
    assert status == 200
    for line in ("weft_leases_known 2", "weft_peers_programmed 1",
                 "weft_reconcile_errors_total 0", "weft_lease_renewals_total 0", "weft_ready 1"):
        assert line in body.splitlines()
    assert respond(d.health, "/healthz")[0] == 200


class FlakyWatchStore(MemoryStore):
    """The next lease-watch batch is replaced by an error (a dropped stream, a compaction)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.fail_with: Exception | None = None

    async def watch(self, prefix: bytes, start_revision: int
                    ) -> AsyncIterator[list[Any]]:  # type: ignore[override]
        async for batch in super().watch(prefix, start_revision):
            if self.fail_with is not None and prefix.endswith(b"/subnets/"):
                exc, self.fail_with = self.fail_with, None
                raise exc
            yield batch


class DownAtFirstStore(MemoryStore):
    """The first ``fails`` reads of the config key fail as an unreachable store would."""

    def __init__(self, clock: FakeClock, fails: int) -> None:
        super().__init__(clock)
        self.fails = fails

    async def get(self, key: bytes) -> Any:
        if key == CONFIG and self.fails > 0:
            from overlay.store.api import StoreUnavailableError

            self.fails -= 1
            raise StoreUnavailableError("connection refused")
        return await super().get(key)


async def test_a_store_outage_while_waiting_for_config_is_not_called_a_bad_config(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "overlay.daemon")
    h.store = DownAtFirstStore(h.clock, fails=1)
    await h.store.put(CONFIG, GOOD)
    d, _ = h.daemon()
    h.start(d)
    await until(lambda: "store unavailable" in caplog.text or h.clock.sleepers > 0,
                "the failed read")
    await h.clock.tick(5)
    await ready(h, d)
    assert "store reachable again, network config: 10.244.0.0/16" in caplog.text
    assert "is now valid" not in caplog.text


@pytest.mark.parametrize("error", ["unavailable", "compacted"])
async def test_watch_failure_relists_and_diffs(h: Harness, error: str) -> None:
    from overlay.store.api import CompactedError, StoreUnavailableError

    h.store = FlakyWatchStore(h.clock)
    await h.store.put(CONFIG, GOOD)
    await h.put_peer("10.244.60.0/24", "198.18.0.60")
    d, be, _ = await h.running()
    assert set(be.programmed) == {N("10.244.60.0/24")}
    h.store.fail_with = (StoreUnavailableError("stream reset") if error == "unavailable"
                         else CompactedError(3))
    await h.put_peer("10.244.61.0/24", "198.18.0.61")  # this batch is lost with the stream
    await h.store.delete(subnet_key(PREFIX, N("10.244.60.0/24")).encode())
    await until(lambda: d.health.watch_resyncs_total == 1 or h.clock.sleepers > 0,
                "the watch to fail")
    await h.clock.tick(1)
    await until(lambda: set(be.programmed) == {N("10.244.61.0/24")}, "re-list diff applied")
    assert d.health.watch_resyncs_total == 1
    await h.put_peer("10.244.62.0/24", "198.18.0.62")  # and the new watch works
    await until(lambda: N("10.244.62.0/24") in be.programmed, "watch resumed")


async def test_config_change_while_running_is_logged(h: Harness,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "overlay.daemon")
    await h.store.put(CONFIG, GOOD)
    d, _, _ = await h.running()
    await h.store.put(CONFIG, b'{"Network":"10.50.0.0/16"}')
    await until(lambda: "restart flanneld to apply" in caplog.text, "config-change warning")
    assert d.config is not None and d.config.network == N("10.244.0.0/16")


async def test_data_path_refusal_is_fatal_and_clear(h: Harness) -> None:
    from overlay.backend.base import BackendError
    from overlay.daemon import FatalError

    class NatBackend(FakeBackend):
        async def prepare(self) -> Mapping[str, Any]:
            raise BackendError("host-gw: public IP is not on eth0")

    await h.store.put(CONFIG, GOOD)
    d, _ = h.daemon(backend=NatBackend("host-gw"))
    with pytest.raises(FatalError, match="host-gw data path cannot start"):
        await asyncio.wait_for(d.run(), 5)
    assert not (await h.store.list(f"{PREFIX}/subnets/".encode())).items  # no lease taken


async def test_reconcile_failure_is_counted_and_retried(h: Harness) -> None:
    class Flaky(FakeBackend):
        fail = 1

        async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport:
            if self.fail:
                self.fail -= 1
                raise OSError("netlink: device busy")
            return await super().reconcile(peers)

    await h.store.put(CONFIG, GOOD)
    await h.put_peer("10.244.50.0/24", "198.18.0.12")
    be = Flaky()
    d, _, _ = await h.running(backend=be)
    assert d.health.reconcile_errors_total == 1 and not be.programmed
    await h.clock.tick(10)  # the periodic resync repairs it
    await until(lambda: N("10.244.50.0/24") in be.programmed, "resync after failure")


class FakeMasq:
    def __init__(self, log: list[str], subnet: N) -> None:
        self.log = log
        self.subnet = subnet
        self.present = False

    async def ensure(self) -> bool:
        self.log.append(f"ensure {self.subnet}")
        changed = not self.present
        self.present = True
        return changed

    async def remove(self) -> None:
        self.log.append(f"remove {self.subnet}")
        self.present = False


@pytest.mark.parametrize("ip_masq", [True, False], ids=["ip-masq", "no-ip-masq"])
async def test_masquerade_ensured_and_restored(h: Harness, ip_masq: bool) -> None:
    calls: list[str] = []
    masqs: list[FakeMasq] = []

    def factory(cfg: NetworkConfig, own: Lease) -> FakeMasq:
        masqs.append(FakeMasq(calls, own.subnet))
        return masqs[-1]

    await h.store.put(CONFIG, GOOD)
    be = FakeBackend()
    cfg = DaemonConfig(subnet_file=h.tmp / "s.env", lease_ttl=30, ip_masq=ip_masq)
    d = Flanneld(cfg, h.store, ext(), lambda c, e: be, factory, random.Random(1),
                 clock=h.clock)
    h.start(d)
    await ready(h, d)
    assert d.own is not None
    if not ip_masq:  # leftovers of an earlier -ip-masq run are cleaned, nothing installed
        assert calls == [f"remove {d.own.subnet}"]
        return
    assert calls == [f"ensure {d.own.subnet}"]
    masqs[0].present = False  # someone flushed the table
    await h.clock.tick(5)
    assert calls.count(f"ensure {d.own.subnet}") >= 2 and masqs[0].present
    assert subnetfile.read(h.tmp / "s.env").ip_masq


async def test_subnet_taken_over_moves_to_a_new_one(h: Harness,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "overlay.daemon")
    await h.store.put(CONFIG, GOOD)
    d, be, _ = await h.running()
    old = d.own
    assert old is not None
    await h.put_peer(str(old.subnet), "198.18.0.77")  # an admin gave our subnet away
    await until(lambda: d.own is not None and d.own.subnet != old.subnet, "moved")
    assert d.own is not None
    assert "now belongs to 198.18.0.77" in caplog.text and "lease moved" in caplog.text
    assert be.attached[-1].subnet == d.own.subnet
    assert subnetfile.read(h.tmp / "h" / "subnet.env").subnet == d.own.subnet
    await until(lambda: old.subnet in be.programmed, "the new owner programmed as a peer")


class MacCheckingBackend(FakeBackend):
    """Reports a peer with an unusable VtepMAC as the vxlan planner does, every pass."""

    async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport:
        from overlay.backend.plan import PeerProblem, normalize_mac

        good = [p for p in peers if normalize_mac(p.backend_data.get("VtepMAC"))]
        problems = tuple(str(PeerProblem(p.subnet, f"BackendData.VtepMAC "
                                         f"{p.backend_data.get('VtepMAC')!r} is not a unicast "
                                         "MAC address")) for p in peers if p not in good)
        report = await super().reconcile(good)
        return ReconcileReport(report.added, report.removed, 0, problems, report.peers)


async def test_bad_leases_are_logged_once_per_revision_not_per_pass(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "overlay.daemon")
    h.store = FlakyWatchStore(h.clock)
    await h.store.put(CONFIG, GOOD)
    d, be, _ = await h.running(backend=MacCheckingBackend())
    bad_mac = encode_lease(Lease(N("10.244.70.0/24"), A("198.18.0.70"), "vxlan",
                                 {"VNI": 1, "VtepMAC": "zz"}))
    await h.put_peer("10.244.70.0/24", "", raw=bad_mac)
    await h.put_peer("10.244.71.0/24", "", raw=b"not json")
    await h.put_peer("10.250.1.0/24", "198.18.0.72")  # outside the network
    await until(lambda: "VtepMAC 'zz'" in caplog.text and "not JSON" in caplog.text,
                "the first warnings")
    for _ in range(3):  # periodic passes and a re-list after a dropped watch
        await h.clock.tick(10)
        await settle()
    from overlay.store.api import CompactedError

    h.store.fail_with = CompactedError(1)
    await h.put_peer("10.244.73.0/24", "198.18.0.73")
    await until(lambda: d.health.watch_resyncs_total == 1 or h.clock.sleepers > 0, "relist")
    await h.clock.tick(1)
    await until(lambda: N("10.244.73.0/24") in be.programmed, "peer 73 after the re-list")
    await h.clock.tick(10)
    await settle()
    text = caplog.text
    assert text.count("VtepMAC 'zz'") == 1, text
    assert text.count("not JSON") == 1 and d.health.malformed_leases_total == 1, text
    assert text.count("outside the network") == 1, text
    assert "peer 10.250.1.0/24 via 198.18.0.72 (vxlan) added" not in text, text
    # a new revision of the same bad value is news: logged once more
    await h.put_peer("10.244.70.0/24", "", raw=bad_mac)
    await h.put_peer("10.244.71.0/24", "", raw=b"not json")
    await until(lambda: caplog.text.count("not JSON") == 2, "the new revision's warning")
    await h.clock.tick(10)
    await until(lambda: caplog.text.count("VtepMAC 'zz'") == 2, "the new revision's problem")


class LaggingWatchStore(MemoryStore):
    """A lease watch that falls behind: while ``hold`` is set, its batches are kept back and
    delivered, in order, before the next batch after ``hold`` is cleared (a slow store)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.hold = False
        self.held: list[list[Any]] = []

    async def watch(self, prefix: bytes, start_revision: int
                    ) -> AsyncIterator[list[Any]]:  # type: ignore[override]
        async for batch in super().watch(prefix, start_revision):
            if not prefix.endswith(b"/subnets/"):
                yield batch
            elif self.hold:
                self.held.append(batch)
            else:
                while self.held:
                    yield self.held.pop(0)
                yield batch


async def test_stale_delete_of_a_reacquired_key_is_not_a_new_loss(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    # Seen on slow VMs: the renew loop re-acquired an expired lease before the lagging watch
    # delivered that expiry; the stale delete then looked like a new loss, and each
    # re-acquire revoked the fresh lease, making the next stale delete: a loop.
    caplog.set_level(logging.INFO, "overlay.daemon")
    h.store = LaggingWatchStore(h.clock)
    await h.store.put(CONFIG, GOOD)
    d, _be, _ = await h.running()
    own = d.own
    assert own is not None
    h.store.hold = True
    await h.store.revoke(own.lease_id)  # the key's delete waits in the lagging watch
    await h.clock.tick(11)
    await until(lambda: d.own is not None and d.own.lease_id != own.lease_id, "re-acquired")
    assert d.health.lease_acquisitions_total == 2
    h.store.hold = False
    await h.put_peer("10.244.60.0/24", "198.18.0.60")  # the watch catches up
    for _ in range(5):
        await h.clock.tick(11)
    assert d.health.lease_acquisitions_total == 2, caplog.text
    assert caplog.text.count("re-acquiring") == 1
    stored = await h.key(own.subnet)
    assert stored is not None and d.own is not None and stored.lease_id == d.own.lease_id


async def test_a_cancel_landing_as_the_config_wait_ends_is_kept(h: Harness) -> None:
    async def scenario() -> tuple[asyncio.Task[None], Callable[[], None]]:
        d, _ = h.daemon()
        task = cancelrace.start(d._wait_config_change(CONFIG.decode(), 0, 10))
        await cancelrace.settle()
        return task, lambda: h.clock.advance(10)

    await cancelrace.assert_cancel_never_lost(scenario)


async def test_flanneld_stops_when_the_stop_lands_as_a_renewal_comes_due(h: Harness) -> None:
    # the renew loop used to swallow that cancel: the task group then waited for it forever
    await h.store.put(CONFIG, GOOD)

    async def scenario() -> tuple[asyncio.Task[None], Callable[[], None]]:
        d, _, task = await h.running()
        await cancelrace.settle()
        return task, lambda: h.clock.advance(d.cfg.renew_interval())

    await cancelrace.assert_cancel_never_lost(scenario, spread=10)
