"""flanneld: one host's control loop (config, lease, data path, subnet.env, health) in a TaskGroup.

Theory of operation
-------------------
``Flanneld.run`` follows flannel's start-up order, then runs its loops in one
``asyncio.TaskGroup`` until cancelled (SIGTERM/SIGINT in the CLI):

1. **config**: read ``<prefix>/config``; while it is absent or invalid (bad JSON,
   a field out of range, a backend the data path refuses) log once per distinct
   value and wait for a change (a watch on the key, with a periodic re-read).
2. **data path**: ``backend_factory(config, ext)`` and ``prepare()`` give the
   backend data to publish (e.g. the VTEP MAC), only with ``EnableIPv4``; with
   ``EnableIPv6`` ``prepare_v6()`` (flannel's BackendV6Data; udp refuses, being
   IPv4-only).
3. **lease**: acquire (reuse by PublicIP, else previous subnet, else random),
   then ``attach`` the backend to it and, with ``-ip-masq``, ensure the rules.
   Dual-stack leases hold both halves (the previous pair comes from subnet.env's
   FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET); IPv6-only leases keep flannel's zero
   IPv4 half (0.0.0.0/0, PublicIP 0.0.0.0) and a host is known by its PublicIPv6.
4. **peers**: snapshot the leases and ``reconcile`` the backend with all of
   them at once — this is the start-up reconciliation that also removes
   entries of peers that vanished while we were down.
5. **subnet.env** written atomically; ready (``/readyz`` 200, ``READY=1``).
6. loops: **renew** (keepalive at TTL - margin, retried; a lost lease is
   re-acquired, the same subnet if still free), **watch** (lease events from
   the snapshot revision; a compaction or a broken watch re-lists and diffs),
   **resync** (periodic full reconcile, self-healing deleted kernel entries),
   **masq** (periodic re-check of the masquerade rules).

The lease table is keyed by the pair of subnets a lease key names (IPv6-only
leases all share the IPv4 half). ``peer_view`` decides, purely, which peer
leases the backend gets and with which halves: a family the network does not
enable is stripped, IPv4-only peers in a dual-stack network keep their IPv4
half only (mixed clusters), and a half outside the network or over our own is
refused with a logged reason.

Nothing is torn down on exit: the lease stays (it expires unless we come back
and reuse it) and so does the kernel state, so a restart does not blip traffic.

Time and randomness are injected (``clock``, ``rng``); unit tests drive this
class with ``MemoryStore``, a fake clock and a fake backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from overlay import ipnet, subnetfile
from overlay.backend.base import (
    Backend,
    BackendConfigError,
    BackendError,
    ExternalInterface,
    Measured,
    lease_backend_type,
)
from overlay.backend.plan import desired_blackholes
from overlay.clock import Clock, SystemClock
from overlay.config import (
    ConfigError,
    DaemonConfig,
    NetworkConfig,
    check_daemon_support,
    parse_network_config,
)
from overlay.errors import WeftError
from overlay.health import HealthState
from overlay.lease.allocator import NetworkFullError
from overlay.lease.manager import AcquireError, LeaseLostError, LeaseManager
from overlay.lease.model import (
    EventKind,
    Lease,
    SubnetPair,
    config_key,
    describe,
    has_ipv4,
    owner,
    subnets_of,
    subnets_prefix,
)
from overlay.lease.watcher import Update, apply_watch_events, resync, table_from_listing
from overlay.metrics import Family
from overlay.service import sd_notify
from overlay.store.api import CompactedError, Store, StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
BackendFactory = Callable[[NetworkConfig, ExternalInterface], Backend]


NO_IPV4 = ipaddress.IPv4Network("0.0.0.0/0")  # an IPv6-only lease's IPv4 half
NO_IP = ipaddress.IPv4Address("0.0.0.0")  # an IPv6-only lease's PublicIP (flannel's)


class Masquerade(Protocol):
    """The -ip-masq rules for one network and subnet (overlay.masq provides them)."""

    async def ensure(self) -> bool:
        """Install or restore the rules; True when something had to be (re)written."""
        ...

    async def remove(self) -> object:
        """Delete the rules (network change, -ip-masq turned off)."""
        ...


MasqFactory = Callable[[NetworkConfig, Lease], Masquerade]
# network config -> -iptables-forward-rules' rule sets, one per enabled family
# (overlay.fwdrules provides them; ensure/remove as Masquerade's)
ForwardFactory = Callable[[NetworkConfig], Sequence[Masquerade]]


class IngressGuard(Protocol):
    """Members-only ingress on the backend's UDP port (overlay.ingress provides it)."""

    async def update(self, members: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]
                     ) -> bool:
        """Allow exactly ``members`` (installing the guard if needed); True if changed."""
        ...

    async def refresh(self) -> None:
        """Restore the guard if it vanished; read its counters."""
        ...

    async def remove(self) -> bool:
        """Take the guard away (exit, flag off)."""
        ...

    def families(self) -> Sequence[Family]:
        """Its counters for /metrics."""
        ...


# network config -> the guard for its backend's port, or None (no tunnel: host-gw)
IngressFactory = Callable[[NetworkConfig], IngressGuard | None]
# (wanted blackhole routes, cluster network) -> error messages; overlay.backend.netlink
BlackholeSync = Callable[[frozenset[ipaddress.IPv4Network], ipaddress.IPv4Network],
                         Awaitable[Sequence[str]]]

class FatalError(WeftError, RuntimeError):
    """flanneld cannot run with this host/config combination (e.g. host-gw behind NAT)."""


STORE_BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # reconnect/retry delays (flannel: 100ms..5s)
CONFIG_REREAD = 60.0  # seconds between config re-reads once running (the watch is primary)
RENEW_RETRY = 60.0  # seconds between failed renewal attempts (flannel: 1 min)
RESYNC_BUDGET = 20  # wait >= 20x a periodic pass's duration: <= ~5% of a core


@dataclass
class _State:
    config: NetworkConfig
    backend: Backend
    own: Lease
    backend_data: Mapping[str, Any]
    backend_v6_data: Mapping[str, Any] = field(default_factory=dict)
    table: dict[SubnetPair, Lease] = field(default_factory=dict)
    masq: Masquerade | None = None


class Flanneld:
    """One flanneld (see the module docstring). ``run()`` until cancelled."""

    def __init__(
        self,
        cfg: DaemonConfig,
        store: Store,
        ext: ExternalInterface,
        backend_factory: BackendFactory,
        masq_factory: MasqFactory | None = None,
        rng: random.Random | None = None,
        clock: Clock | None = None,
        health: HealthState | None = None,
        blackhole: BlackholeSync | None = None,
        ingress: IngressFactory | None = None,
        forward: ForwardFactory | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.ext = ext
        self.backend_factory = backend_factory
        self.masq_factory = masq_factory
        self.blackhole = blackhole
        self.ingress_factory = ingress
        self._ingress: IngressGuard | None = None
        self.forward_factory = forward
        self._forward: Sequence[Masquerade] = ()
        self._blackholes_clean = False  # flag off and no blackhole of ours left
        self.clock: Clock = clock or SystemClock()
        self.health = health or HealthState()
        self.leases = LeaseManager(store, cfg.prefix, cfg.lease_ttl, rng or random.Random())
        self._state: _State | None = None
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._reconcile_lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._warned: set[tuple[str, int, str]] = set()  # (subnet, revision, why) logged
        self._malformed: dict[str, tuple[int, str]] = {}  # key -> (revision, reason) logged
        self._problems: set[tuple[str, int]] = set()  # backend problems of the last pass
        self._renew_delay = min(cfg.renew_interval(), RENEW_RETRY)

    # -- public view -------------------------------------------------------

    @property
    def own(self) -> Lease | None:
        return self._state.own if self._state else None

    @property
    def config(self) -> NetworkConfig | None:
        return self._state.config if self._state else None

    # -- start-up ----------------------------------------------------------

    async def run(self) -> None:
        config, backend = await self._wait_for_config()
        data: Mapping[str, Any] = {}
        if config.enable_ipv4:  # an IPv6-only host has no IPv4 device (no flannel.<VNI>)
            try:
                data = await backend.prepare()
            except (BackendError, BackendConfigError) as exc:
                raise FatalError(f"the {backend.name} data path cannot start: {exc}") from exc
        data6 = await self._prepare_v6(config, backend)
        self._ingress = await self._make_ingress(config)
        self.health.datapath_families = self._datapath_families
        own = await self._acquire(config, backend, data, data6)
        self._state = _State(config, backend, own, data, data6)
        try:
            await self._attach(own)
        except (BackendError, BackendConfigError) as exc:
            raise FatalError(f"the {backend.name} data path cannot use lease {describe(own)}: "
                             f"{exc}") from exc
        await self._start_forward_rules(config)
        listing = await self._retry(self.leases.list, "listing leases")
        self._set_table(table_from_listing(listing.items))
        await self.reconcile("start-up")
        try:
            self._write_subnet_file()
        except OSError as exc:
            raise FatalError(f"cannot write {self.cfg.subnet_file}: {exc}") from exc
        self.health.datapath_ready = True
        if sd_notify("READY=1", self.cfg.notify_socket):
            log.info("notified systemd: READY=1")
        log.info("ready: subnet %s, %d peers", describe(own), len(self.peers()))
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._renew_loop(), name="renew")
                tg.create_task(self._watch_loop(listing.revision + 1), name="watch")
                tg.create_task(self._reconcile_loop(), name="reconcile")
                tg.create_task(self._resync_loop(), name="resync")
                tg.create_task(self._config_watch(), name="config-watch")
                if (self.masq_factory is not None and self.cfg.ip_masq) or self._forward:
                    tg.create_task(self._masq_loop(), name="masq")
                if self._ingress is not None:
                    tg.create_task(self._ingress_loop(), name="ingress")
        finally:
            if self._ingress is not None:
                try:
                    await self._ingress.remove()
                except Exception as exc:  # boundary: exiting anyway; say why it stayed
                    log.error("removing the ingress guard failed: %s", exc)
            # handles only: the lease, devices, routes and rules all stay for the next start
            try:
                await backend.close()
            except Exception as exc:  # boundary: closing must not mask why we stop
                log.debug("closing the data path: %s", exc)

    async def _prepare_v6(self, config: NetworkConfig, backend: Backend) -> Mapping[str, Any]:
        """The backend's IPv6 half (``EnableIPv6``): BackendV6Data; FatalError if refused."""
        if not config.enable_ipv6:
            return {}
        try:
            return await backend.prepare_v6()
        except (BackendError, BackendConfigError) as exc:
            raise FatalError(f"EnableIPv6: the {backend.name} data path cannot run IPv6: "
                             f"{exc}") from exc

    def _datapath_families(self) -> list[Family]:
        state = self._state
        families: list[Family] = []
        if state is not None and isinstance(state.backend, Measured):
            families.extend(state.backend.metric_families())
        if self._ingress is not None:
            families.extend(self._ingress.families())
        return families

    async def _make_ingress(self, config: NetworkConfig) -> IngressGuard | None:
        """The members-only guard, or None (no factory, no tunnel, flag off: then a
        guard an earlier run left is removed)."""
        if self.ingress_factory is None:
            return None
        guard = self.ingress_factory(config)
        if guard is None:
            return None
        if not self.cfg.ingress_members_only:
            try:
                if await guard.remove():
                    log.info("-vxlan-ingress-members-only=false: ingress guard removed")
            except Exception as exc:  # boundary: e.g. no nft binary; nothing to clean then
                log.debug("no ingress guard to clean up: %s", exc)
            return None
        return guard

    async def _ingress_loop(self) -> None:
        assert self._ingress is not None
        while True:
            await self.clock.sleep(self.cfg.masq_interval)
            try:
                await self._ingress.refresh()
            except Exception as exc:  # boundary: a failed nft run must not kill the daemon
                log.error("checking the ingress guard failed: %s", exc)

    async def _retry(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``op`` until the store answers (backoff up to 5 s)."""
        attempt = 0
        while True:
            try:
                return await op()
            except StoreError as exc:
                delay = backoff(attempt)
                if attempt == 0 or delay == STORE_BACKOFF[-1]:
                    log.warning("%s failed (%s); retrying", what, exc)
                attempt += 1
                await self.clock.sleep(delay)

    async def _wait_for_config(self) -> tuple[NetworkConfig, Backend]:
        """Block until the config is valid and the backend accepts it."""
        key = config_key(self.cfg.prefix)
        last_problem: str | None = None
        while True:
            problem: str
            try:
                raw, rev = await self.leases.read_config()
            except StoreError as exc:
                raw, rev, problem = None, 0, f"store unavailable: {exc}"
            else:
                problem = f"no network config at {key}; waiting for `weftctl network set`"
            if raw is not None:
                try:
                    config = parse_network_config(raw)
                    check_daemon_support(config)
                    check_interface(config, self.ext)
                    backend = self.backend_factory(config, self.ext)
                    if last_problem is not None:  # say what was wrong is over
                        log.info("%s: %s", "store reachable again, network config"
                                 if last_problem.startswith("store unavailable")
                                 else "network config is now valid", config.network)
                    return config, backend
                except (ConfigError, BackendConfigError) as exc:
                    problem = f"invalid network config at {key}: {exc}; waiting for a fix"
                except BackendError as exc:
                    problem = f"data path refused the config at {key}: {exc}; waiting"
            if problem != last_problem:
                log.error("%s", problem)
                last_problem = problem
            await self._wait_config_change(key, rev)

    async def _wait_config_change(self, key: str, rev: int, timeout: float | None = None
                                  ) -> None:
        """Return on a change of the config key, or after ``timeout`` (``config_retry``) s."""

        async def changed() -> None:
            stream = self.store.watch(key.encode(), rev + 1 if rev else 0)
            try:
                async for _batch in stream:
                    return
            finally:
                await close_stream(stream)

        watch = asyncio.ensure_future(changed())
        timer = asyncio.ensure_future(self.clock.sleep(timeout or self.cfg.config_retry))
        try:
            await asyncio.wait({watch, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_and_wait(watch, timer)
        for t in (watch, timer):  # a store error only ends the wait; anything else is a bug
            if not t.cancelled() and not isinstance(t.exception(), StoreError | None):
                t.result()

    async def _acquire(self, config: NetworkConfig, backend: Backend,
                       data: Mapping[str, Any], data6: Mapping[str, Any],
                       previous: SubnetPair | None = None) -> Lease:
        """Hold a lease (retried until it works). ``previous`` (re-acquire) else the
        subnet file's pair is preferred; reuse by PublicIP(v6) comes first anyway."""
        if previous is None:
            previous = (subnetfile.read_previous_subnet(self.cfg.subnet_file) or NO_IPV4,
                        subnetfile.read_previous_subnet6(self.cfg.subnet_file))
        prev4 = previous[0] if config.enable_ipv4 and previous[0].prefixlen else None
        prev6 = previous[1] if config.enable_ipv6 else None
        public_ip = self.ext.public_ip if config.enable_ipv4 else NO_IP
        public_ip6 = self.ext.public_ipv6 if config.enable_ipv6 else None
        last_error = ""
        attempt = 0
        while True:
            try:
                got = await self.leases.acquire(config, public_ip,
                                                lease_backend_type(backend.name), data,
                                                prev4, public_ipv6=public_ip6,
                                                backend_v6_data=data6, previous6=prev6)
            except (NetworkFullError, AcquireError, StoreError) as exc:
                if str(exc) != last_error:
                    log.error("cannot acquire a lease: %s; retrying", exc)
                    last_error = str(exc)
                await self.clock.sleep(backoff(attempt))
                attempt += 1
                continue
            self.health.lease_held = True
            self.health.lease_acquisitions_total += 1
            log.info("acquired lease %s for %s (%s)", describe(got.lease), owner(got.lease),
                     got.reason.value)
            return got.lease

    async def _attach(self, own: Lease) -> None:
        state = self._require()
        await state.backend.attach(own)
        if self.masq_factory is None:
            return
        if state.masq is not None:  # the subnet changed: rules for the old one go
            try:
                await state.masq.remove()
            except Exception as exc:  # boundary: nft failing must not stop the overlay
                log.error("removing the old masquerade rules failed: %s", exc)
        state.masq = self.masq_factory(state.config, own)
        if self.cfg.ip_masq:
            try:
                await state.masq.ensure()
            except Exception as exc:  # boundary: nft failing must not stop the overlay
                log.error("installing masquerade rules failed (%s); retrying every %.0f s",
                          exc, self.cfg.masq_interval)
            return
        # -ip-masq is off: remove rules a previous run with -ip-masq may have left
        try:
            await state.masq.remove()
        except Exception as exc:  # boundary: e.g. no nft binary; nothing to clean then
            log.debug("no masquerade rules to clean up: %s", exc)
        state.masq = None

    def _write_subnet_file(self) -> None:
        state = self._require()
        config, own = state.config, state.own
        env = subnetfile.SubnetEnv(config.network, own.subnet, state.backend.mtu,
                                   self.cfg.ip_masq, config.ipv6_network, own.ipv6_subnet,
                                   ipv4=config.enable_ipv4)
        subnetfile.write(self.cfg.subnet_file, env)
        self.health.subnet_file_written = True
        shown = [f"FLANNEL_SUBNET={ipnet.gateway(env.subnet)}"] if env.ipv4 else []
        if env.ipv6_subnet is not None:
            shown.append(f"FLANNEL_IPV6_SUBNET={ipnet.gateway6(env.ipv6_subnet)}")
        log.info("wrote %s (%s)", self.cfg.subnet_file, ", ".join(shown))

    def _require(self) -> _State:
        if self._state is None:
            raise RuntimeError("flanneld has no lease yet")
        return self._state

    # -- peers ---------------------------------------------------------------

    def peers(self) -> list[Lease]:
        """Peer leases the backend should program: own lease and foreign types left out."""
        state = self._require()
        mine = subnets_of(state.own)
        out: list[Lease] = []
        for lease in state.table.values():
            if subnets_of(lease) == mine:
                continue
            view = self._view(lease)
            if isinstance(view, str):
                self._warn_once(lease, view)
                continue
            out.append(view)
        return out

    def _view(self, lease: Lease) -> Lease | str:
        state = self._require()
        return peer_view(lease, state.own, state.config, state.backend.name,
                         self.ext.public_ip, self.ext.public_ipv6)

    def _warn_once(self, lease: Lease, why: str) -> None:
        """One WARNING per lease revision and reason, however often the peers are listed."""
        marker = (describe(lease), lease.mod_revision, why)
        if marker not in self._warned:
            self._warned.add(marker)
            log.warning("ignoring lease %s from %s: %s", describe(lease), owner(lease), why)

    def _set_table(self, update: Update) -> None:
        state = self._require()
        for err in update.errors:
            seen = (err.revision, err.reason)
            if self._malformed.get(err.key) != seen:  # once per revision of the key
                self._malformed[err.key] = seen
                self.health.malformed_leases_total += 1
                log.warning("ignoring malformed lease: %s", err)
        own = subnets_of(state.own)
        for ev in update.events:
            if subnets_of(ev.lease) == own:
                continue
            view = self._view(ev.lease)
            if isinstance(view, str):  # never "added" (or "removed"): not a peer of ours
                if ev.kind is EventKind.ADDED:
                    self._warn_once(ev.lease, view)
                continue
            if ev.kind is EventKind.ADDED:
                log.info("peer %s via %s (%s) added", describe(view), owner(view),
                         ev.lease.backend_type or "-")
            else:
                log.info("peer %s via %s removed", describe(view), owner(view))
        state.table = update.table
        self.health.leases_known = len(state.table)

    def _report_problems(self, why: str, errors: Sequence[str], peers: Sequence[Lease]) -> None:
        """Log each peer the backend could not program once per lease revision (not per pass)."""
        current: set[tuple[str, int]] = set()
        for err in errors:
            rev = next((p.mod_revision for p in peers
                        if err.startswith((f"peer {p.subnet}:", f"peer {p.ipv6_subnet}:"))), 0)
            marker = (err, rev)
            current.add(marker)
            if marker not in self._problems:
                log.warning("reconcile (%s): %s", why, err)
        self._problems = current  # a problem that goes and comes back is logged again

    async def reconcile(self, why: str) -> None:
        """Program the backend with the complete peer set."""
        state = self._require()
        async with self._reconcile_lock:
            await self._sync_blackhole(why)
            peers = self.peers()
            if self._ingress is not None:  # before the routes: no blackout on join
                try:
                    await self._ingress.update(ingress_members(peers))
                except Exception as exc:  # boundary: nft failing must not stop the overlay
                    log.error("updating the ingress members failed (retried on the next "
                              "reconcile): %s", exc)
            try:
                report = await state.backend.reconcile(peers)
            except BackendError as exc:
                self.health.reconcile_errors_total += 1
                log.error("reconcile (%s) failed: %s", why, exc)
                return
            except Exception as exc:  # boundary with the data path: keep the daemon up
                self.health.reconcile_errors_total += 1
                log.error("reconcile (%s) failed unexpectedly: %s", why, exc, exc_info=exc)
                return
            self.health.reconciles_total += 1
            self.health.peers_programmed = report.peers
            self.health.reconcile_errors_total += len(report.errors)
            self._report_problems(why, report.errors, peers)
            if report.added or report.removed or report.changed:
                log.info("reconciled (%s): %d peers, +%d -%d ~%d", why, report.peers,
                         report.added, report.removed, report.changed)
            else:
                log.debug("reconciled (%s): %d peers, no change", why, report.peers)

    async def _sync_blackhole(self, why: str) -> None:
        """-ip-blackhole-route: the own subnet's blackhole, on every pass (self-healing).

        It follows the lease (a moved lease's old one goes); with the flag off a
        leftover one goes. A plain restart keeps it: same lease, same route.
        """
        if self.blackhole is None or (self._blackholes_clean and not self.cfg.blackhole_route):
            return  # flag off: a leftover can only predate this run, and it is gone
        state = self._require()
        if not state.config.enable_ipv4:
            return  # IPv4-only flag; 0.0.0.0/0 is no subnet to blackhole
        want = desired_blackholes(state.own.subnet, self.cfg.blackhole_route)
        try:
            errors = await self.blackhole(want, state.config.network)
        except Exception as exc:  # boundary with the kernel: keep the daemon up
            errors = [f"{exc}"]
        self._blackholes_clean = not errors
        for err in errors:
            self.health.reconcile_errors_total += 1
            log.warning("blackhole route (%s): %s", why, err)

    # -- loops ----------------------------------------------------------------

    async def _renew_loop(self) -> None:
        interval = self.cfg.renew_interval()
        while True:
            lost = asyncio.ensure_future(self._lost.wait())
            timer = asyncio.ensure_future(self.clock.sleep(interval))
            try:
                await asyncio.wait({lost, timer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await _cancel_and_wait(lost, timer)
            state = self._require()
            if self._lost.is_set():
                self._lost.clear()
                await self._reacquire(self._lost_reason)
                continue
            try:
                ttl = await self.leases.renew(state.own)
            except LeaseLostError as exc:
                await self._reacquire(exc.reason)
                continue
            except StoreError as exc:
                log.warning("renewing lease %s failed (%s); retrying in %.0f s",
                            describe(state.own), exc, self._renew_delay)
                await self.clock.sleep(self._renew_delay)
                continue
            self.health.lease_renewals_total += 1
            log.debug("renewed lease %s (ttl %d s)", describe(state.own), ttl)

    async def _reacquire(self, reason: str) -> None:
        state = self._require()
        old = state.own
        log.warning("lease %s lost (%s); re-acquiring, same subnet if still free",
                    describe(old), reason)
        self.health.lease_held = False
        await self.leases.release_quietly(old)
        own = await self._acquire(state.config, state.backend, state.backend_data,
                                  state.backend_v6_data, previous=subnets_of(old))
        state.own = own
        if subnets_of(own) != subnets_of(old):
            log.warning("lease moved from %s to %s: containers on the old subnet lose "
                        "connectivity", describe(old), describe(own))
            try:
                await self._attach(own)
                self._write_subnet_file()
            except (BackendError, OSError) as exc:
                log.error("moving the data path to %s failed: %s", describe(own), exc)
        state.table[subnets_of(own)] = own
        await self.reconcile("re-acquired")

    def _note_own(self, update: Update, seen: int) -> None:
        """Flag the lease as lost when a watch batch deleted or took over our key.

        ``seen`` is the store revision the update reflects: one older than our key's
        (a lagging watch delivering the expiry of a lease we already re-acquired) says
        nothing about the current key, and acting on it would revoke the fresh lease."""
        state = self._require()
        if seen < state.own.mod_revision:
            return
        current = update.table.get(subnets_of(state.own))
        if current is None:
            self._lost_reason = "its key was deleted or expired"
            self._lost.set()
        elif (current.public_ip, current.public_ipv6) != (state.own.public_ip,
                                                          state.own.public_ipv6):
            self._lost_reason = f"it now belongs to {owner(current)}"
            self._lost.set()

    async def _watch_loop(self, start: int) -> None:
        prefix = subnets_prefix(self.cfg.prefix).encode()
        rev = start
        attempt = 0
        while True:
            stream = self.store.watch(prefix, rev)
            try:
                async for batch in stream:
                    attempt = 0
                    if not batch:
                        continue
                    rev = max(ev.kv.mod_revision for ev in batch) + 1
                    state = self._require()
                    update = apply_watch_events(state.table, batch)
                    self._apply(update, rev - 1)
                await self.clock.sleep(STORE_BACKOFF[0])  # the stream ended: watch again from rev
                continue
            except CompactedError as exc:
                log.warning("lease watch fell behind a compaction (%s); re-listing", exc)
            except StoreError as exc:
                delay = backoff(attempt)
                attempt += 1
                log.warning("lease watch failed (%s); re-listing in %.1f s", exc, delay)
                await self.clock.sleep(delay)
            finally:
                await close_stream(stream)
            listing = await self._retry(self.leases.list, "re-listing leases")
            self.health.watch_resyncs_total += 1
            state = self._require()
            self._apply(resync(state.table, listing.items), listing.revision)
            rev = listing.revision + 1

    def _apply(self, update: Update, seen: int) -> None:
        state = self._require()
        own_before = subnets_of(state.own)
        self._set_table(update)
        self._note_own(update, seen)
        if any(subnets_of(ev.lease) != own_before for ev in update.events):
            self._dirty.set()  # the reconciler coalesces bursts into one pass

    async def _reconcile_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.reconcile("lease events")

    async def _config_watch(self) -> None:
        """Warn when the network config changes under a running flanneld (as flannel,
        it is applied on the next start: a new Network means new subnets for everyone)."""
        key = config_key(self.cfg.prefix)
        last: bytes | None = None
        while True:
            try:
                raw, rev = await self.leases.read_config()
                if raw != last and last is not None and raw is not None:
                    try:
                        new = parse_network_config(raw)
                    except ConfigError as exc:
                        log.warning("network config at %s changed and is invalid (%s); "
                                    "keeping the running one", key, exc)
                    else:
                        if new != self._require().config:
                            log.warning("network config at %s changed (Network %s, backend "
                                        "%s); restart flanneld to apply it", key, new.network,
                                        new.backend_type)
                last = raw if raw is not None else last
                await self._wait_config_change(key, rev, CONFIG_REREAD)
            except StoreError as exc:
                log.debug("config watch: %s", exc)
                await self.clock.sleep(STORE_BACKOFF[-1])

    async def _resync_loop(self) -> None:
        """Full reconcile every ``resync_interval`` s, stretched to keep it under ~5% CPU.

        A pass over 1,000 peers costs a noticeable fraction of a second (three
        kernel dumps and a diff); waiting RESYNC_BUDGET times the last pass's
        duration bounds the self-healing overhead on big clusters.
        """
        interval = self.cfg.resync_interval
        while True:
            await self.clock.sleep(interval)
            started = self.clock.monotonic()
            await self.reconcile("periodic")
            took = self.clock.monotonic() - started
            interval = max(self.cfg.resync_interval, took * RESYNC_BUDGET)

    async def _start_forward_rules(self, config: NetworkConfig) -> None:
        """-iptables-forward-rules: write them (they stay across restarts, as the masquerade
        table does), or with the flag off remove what an earlier run left."""
        if self.forward_factory is None:
            return
        rule_sets = self.forward_factory(config)
        for rules in rule_sets:
            try:
                if self.cfg.forward_rules:
                    await rules.ensure()
                else:
                    await rules.remove()
            except Exception as exc:  # boundary: iptables failing must not stop the overlay
                log.error("iptables FORWARD rules: %s; retrying every %.0f s", exc,
                          self.cfg.masq_interval)
        self._forward = rule_sets if self.cfg.forward_rules else ()

    async def _masq_loop(self) -> None:
        """Every -iptables-resync seconds: masquerade and FORWARD rules still in place?"""
        while True:
            await self.clock.sleep(self.cfg.masq_interval)
            state = self._require()
            for what, rules in ([("masquerade", state.masq)] if state.masq else []) + [
                    ("iptables FORWARD", r) for r in self._forward]:
                try:
                    if await rules.ensure():
                        log.warning("%s rules were missing or altered; restored", what)
                except Exception as exc:  # boundary: a failed run must not kill the daemon
                    log.error("checking %s rules failed: %s", what, exc)


def check_interface(config: NetworkConfig, ext: ExternalInterface) -> None:
    """``ConfigError`` naming the family when the chosen interface cannot serve it
    (an IPv6 network on a host without a global IPv6 address, or the reverse)."""
    if config.enable_ipv4 and ext.public_ip == NO_IP:
        raise ConfigError("EnableIPv4", f"interface {ext.name} has no IPv4 address (pick "
                          "another with -iface, or set \"EnableIPv4\": false)")
    if config.enable_ipv6 and ext.public_ipv6 is None:
        raise ConfigError("EnableIPv6", f"interface {ext.name} has no global IPv6 address "
                          "(pick one with -iface, or give -public-ipv6)")


def peer_view(lease: Lease, own: Lease, config: NetworkConfig, backend: str,
              public_ip: ipaddress.IPv4Address, public_ip6: ipaddress.IPv6Address | None,
              ) -> Lease | str:
    """The peer lease as the backend should program it, or why it must not be. Pure.

    A half the network does not enable is stripped (an IPv4-only network ignores
    IPv6 halves; an IPv6-only one, IPv4 halves); a peer without any enabled half
    (an IPv4-only host in an IPv6-only network) is refused. A half outside the
    network, over our own subnet, or naming our own public address refuses the
    whole lease: it cannot be trusted.
    """
    btype = lease.backend_type or ""
    if btype != backend and not (btype == "" and backend == "udp"):
        return f"backend type {btype!r}, we run {backend!r}"
    view = lease
    if not config.enable_ipv4 and has_ipv4(view):
        view = replace(view, subnet=NO_IPV4, public_ip=NO_IP)
    if not config.enable_ipv6 and view.ipv6_subnet is not None:
        view = replace(view, ipv6_subnet=None, public_ipv6=None, backend_v6_data={})
    if not has_ipv4(view) and view.ipv6_subnet is None:
        return "it has no subnet in a family the network enables (" + (
            "IPv6-only network" if not config.enable_ipv4 else "IPv4-only network") + ")"
    # never route outside the cluster network or over our own containers
    if has_ipv4(view):
        if not view.subnet.subnet_of(config.network):
            return f"subnet outside the network {config.network}"
        if has_ipv4(own) and view.subnet.overlaps(own.subnet):
            return f"subnet overlaps our own {own.subnet}"
        if view.public_ip == public_ip:
            return "it names our own public IP (a stale lease of ours?)"
    if view.ipv6_subnet is not None:
        net6 = config.ipv6_network
        if net6 is None or not view.ipv6_subnet.subnet_of(net6):
            return f"IPv6 subnet outside the IPv6Network {net6}"
        if own.ipv6_subnet is not None and view.ipv6_subnet.overlaps(own.ipv6_subnet):
            return f"IPv6 subnet overlaps our own {own.ipv6_subnet}"
        if view.public_ipv6 is None:
            return "it has an IPv6 subnet but no PublicIPv6"
        if view.public_ipv6 == public_ip6:
            return "it names our own public IPv6 (a stale lease of ours?)"
    return view


def ingress_members(peers: Iterable[Lease]
                    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The outer source addresses the peers' tunnels come from: each half's PublicIP."""
    members: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for p in peers:
        if has_ipv4(p):
            members.append(p.public_ip)
        if p.ipv6_subnet is not None and p.public_ipv6 is not None:
            members.append(p.public_ipv6)
    return members


def backoff(attempt: int) -> float:
    """The delay before retry number ``attempt`` (0-based): STORE_BACKOFF, then its last."""
    return STORE_BACKOFF[min(attempt, len(STORE_BACKOFF) - 1)]


async def _cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and return once they have ended. Not ``t.cancel()`` and ``await t``
    under suppress(CancelledError): that also swallows a cancel of the caller landing
    while ``t`` winds down, and flanneld then never stops (the stopped loop carries on)."""
    for t in tasks:
        t.cancel()
    await asyncio.wait(tasks)
    for t in tasks:  # seen (no "never retrieved" log); the caller may still look at it
        if not t.cancelled():
            t.exception()


async def close_stream(stream: AsyncIterator[Any]) -> None:
    """Close a watch stream now (its gRPC call with it) rather than at garbage collection."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
