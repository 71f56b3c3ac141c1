"""The scheduler agent: presence, the units assigned to this machine, their state and
DNS names, fencing, and the HTTP endpoint peers and ``weftctl journal`` use.

Theory of operation
-------------------
One ``Agent`` per machine runs five loops in a TaskGroup:

* **presence**: grants a lease of the presence TTL, registers ``machines/<id>`` on it
  (and ``members/<id>`` without it) and keeps it alive every renew interval.
  Everything the agent publishes — the machine, ``state/<unit>/<id>`` and the units'
  SkyDNS records — hangs on this lease, so a dead agent's traces vanish with it. A
  lease the store forgot (expired during an outage) is replaced and everything
  re-published. When renewals fail for a whole TTL
  the fence decides (``overlay.sched.fence``, rule 1): ask the peers' ``/presence``
  over the underlay, keep the units if a majority is cut off too (a store outage),
  stop them otherwise (this host is cut off; the engine is about to move them).
* **members**: watches ``members/`` (written by each agent at registration, no lease;
  the leader deletes a member once it has moved its units away) so the fence knows the
  machines last listed; it changes only when a machine joins or leaves.
* **assignments**: watches only ``assign/<id>/`` and reconciles the runner with it:
  launched units run, others do not; a changed hash means stop + start. Network=true
  units get their own netns through CNI first (``overlay.sched.netattach``).
* **reporter**: the runner calls back on every state change; the reporter writes
  ``state/<unit>/<id>`` (and puts or deletes the Service= DNS record) under the lease. Deletes
  are compare-and-swap on what this agent wrote, so a late agent never removes the
  record of the machine a unit moved to.
* **engine**: one per agent, leader through a lease (``overlay.sched.engine``).

The HTTP endpoint (``-public-ip``:``-port``): ``/healthz``, ``/presence`` (JSON: machine,
renewed_ago, holding, fence), ``/units`` (the runner's view) and
``/journal/<unit>?n=N`` or ``?after=CURSOR&wait=S`` (long poll for ``journal -f``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from overlay.clock import Clock, SystemClock
from overlay.sched.errors import SchedError
from overlay.sched.fence import Fence, PeerReport, Timings, fence_decision
from overlay.sched.keys import KeyKind, Layout, service_key
from overlay.sched.model import Assignment, DesiredState, MachineRecord, UnitState
from overlay.sched.netattach import (
    Attacher,
    AttachError,
    container_id,
    default_netns_prefix,
)
from overlay.sched.runner import (
    Runner,
    RunnerError,
    RunSpec,
    RunStatus,
    run_spec,
    with_netns,
)
from overlay.sched.unitfile import ServiceName, parse_unit
from overlay.statushttp import start_http_server
from overlay.store.api import (
    Compare,
    EventType,
    LeaseNotFoundError,
    Store,
    StoreError,
    TxnOp,
    WatchEvent,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 9180
T = TypeVar("T")



def _decoded(items: Mapping[bytes, bytes], parse: Callable[[str, bytes], T]) -> list[T]:
    """Each stored record ``parse`` accepts; a bad one is logged and skipped, never fatal."""
    out = []
    for key, value in items.items():
        try:
            out.append(parse(key.decode(errors="replace"), value))
        except SchedError as exc:
            log.warning("ignoring %s", exc)
    return out

@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything ``weftctl agent`` parsed; checked at the edge."""

    machine_id: str
    public_ip: ipaddress.IPv4Address
    port: int = DEFAULT_PORT
    metadata: Mapping[str, str] = field(default_factory=dict)
    prefix: str = "/weft/sched/"
    domain: str = "skydns.local."
    timings: Timings = field(default_factory=Timings)
    state_dir: Path = Path("/var/lib/weft/agent")
    engine: bool = True
    version: str = "weft"
    netns_prefix: str = ""  # "" = weft-<machine id prefix>


@dataclass(slots=True)
class _Running:
    """What the agent started for one unit."""

    assignment: Assignment
    spec: RunSpec
    service: ServiceName | None
    cid: str | None  # container id / netns when Network=true
    address: ipaddress.IPv4Address | None = None


class Agent:
    """See the module docstring."""

    def __init__(self, cfg: AgentConfig, store: Store,
                 runner_factory: Callable[[Callable[[str], None]], Runner],
                 attacher: Attacher | None,
                 engine_factory: Callable[[Agent], Coroutine[object, object, None]] | None
                 = None, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock: Clock = clock or SystemClock()
        self.store = store
        self.keys = Layout(cfg.prefix)
        self.runner = runner_factory(self._changed)
        self.attacher = attacher
        self._engine_factory = engine_factory
        self.lease = 0
        self.renewed_at = self.clock.monotonic()  # when the last successful renewal was *sent*
        self.fence = Fence.HOLD
        self.members: dict[str, MachineRecord] = {}
        self._running: dict[str, _Running] = {}
        self._assigned: dict[str, Assignment] = {}
        self._wake = asyncio.Event()
        self._dirty: set[str] = set()
        self._report = asyncio.Event()
        self._published: dict[bytes, bytes] = {}  # key -> value we put (state and DNS)
        self._dns_units: dict[bytes, str] = {}  # DNS key -> the unit it names
        self._reconcile_lock = asyncio.Lock()
        self.http_port = cfg.port
        self.ready = asyncio.Event()

    # -- small helpers ------------------------------------------------------------

    async def _call(self, op: Awaitable[T], timeout: float | None = None) -> T:
        async with asyncio.timeout(timeout or max(self.cfg.timings.renew, 1.0) * 2):
            return await op

    def renewed_ago(self) -> float:
        return self.clock.monotonic() - self.renewed_at

    @property
    def machine(self) -> MachineRecord:
        return MachineRecord(self.cfg.machine_id, self.cfg.public_ip, self.http_port,
                             dict(self.cfg.metadata), self.cfg.version)

    @property
    def stop_timeout(self) -> float:
        """SIGTERM to SIGKILL: short enough that a fenced unit is gone before ``grace``
        has run out on the engine's side (TTL is counted from the same renewal)."""
        t = self.cfg.timings
        return max(0.5, min(5.0, t.grace - t.probe_timeout - 0.5))

    # -- run ------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled; on the way out stop every unit and revoke the lease."""
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        if self.attacher is not None:
            cleaned = await self.attacher.gc(set())
            if cleaned:
                log.info("CNI: cleaned %d attachment(s) left by a previous run: %s",
                         len(cleaned), ", ".join(cleaned))
        server = await start_http_server(self._route, str(self.cfg.public_ip), self.cfg.port)
        self.http_port = server.sockets[0].getsockname()[1]
        log.info("agent %s: endpoint http://%s:%d (presence TTL %g s, renew %g s, grace %g s)",
                 self.cfg.machine_id, self.cfg.public_ip, self.http_port,
                 self.cfg.timings.ttl, self.cfg.timings.renew, self.cfg.timings.grace)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._presence_loop(), name="presence")
                tg.create_task(self._members_loop(), name="members")
                tg.create_task(self._assign_loop(), name="assignments")
                tg.create_task(self._reconcile_loop(), name="reconcile")
                tg.create_task(self._report_loop(), name="report")
                if self._engine_factory is not None and self.cfg.engine:
                    tg.create_task(self._engine_factory(self), name="engine")
        finally:
            server.close()
            await self._shutdown()

    async def _shutdown(self) -> None:
        await asyncio.gather(*(self._stop_unit(name, publish=False)
                               for name in list(self._running)), return_exceptions=True)
        await self.runner.close()
        if self.lease:
            with contextlib.suppress(StoreError, TimeoutError):
                await self._call(self.store.revoke(self.lease), 2.0)

    # -- presence and fencing --------------------------------------------------------------

    async def _register(self) -> None:
        ttl = max(2, round(self.cfg.timings.ttl))
        sent = self.clock.monotonic()
        lease = await self._call(self.store.grant(ttl))
        record = self.machine.to_json()
        await self._call(self.store.put(self.keys.machine(self.cfg.machine_id).encode(),
                                        record, lease))
        # members/<id> has no lease: the "last listed" machines of the majority rule
        await self._call(self.store.put(self.keys.member(self.cfg.machine_id).encode(),
                                        record))
        self.lease = lease
        self.renewed_at = sent
        log.info("agent %s: presence registered (lease %x, TTL %d s)", self.cfg.machine_id,
                 lease, ttl)
        # a new lease: everything published on the old one is gone or about to go
        self._published.clear()
        self._dirty.update(self._running)
        self._report.set()

    async def _presence_loop(self) -> None:
        t = self.cfg.timings
        while True:
            sent = self.clock.monotonic()
            try:
                if not self.lease:
                    await self._register()
                else:
                    await self._call(self.store.keepalive(self.lease), t.renew)
                    self.renewed_at = sent
                if self.fence is Fence.STOP:
                    # registered again first, then read what is still ours: the engine
                    # moves units off a machine only while it is absent, so whatever
                    # this listing shows cannot be running elsewhere
                    listing = await self._call(self.store.list(
                        self.keys.assign_prefix(self.cfg.machine_id).encode()))
                    self._assign_listed({kv.key: kv.value for kv in listing.items})
                if self.fence is not Fence.HOLD:
                    log.warning("agent %s: store reachable again after %s", self.cfg.machine_id,
                                self.fence.value)
                    self.fence = Fence.HOLD
                    self._wake.set()  # start again whatever is still assigned here
                self.ready.set()
            except LeaseNotFoundError:
                log.warning("agent %s: presence lease %x expired; registering again",
                            self.cfg.machine_id, self.lease)
                self.lease = 0
                continue
            except (StoreError, TimeoutError, OSError) as exc:
                log.debug("presence renewal failed: %s", exc)
            await self._fence_check()
            await self.clock.sleep(max(0.0, t.renew - (self.clock.monotonic() - sent)))

    async def _fence_check(self) -> None:
        t = self.cfg.timings
        if self.fence is Fence.STOP:
            return  # fenced stays fenced until the store answers (the presence loop)
        decision = fence_decision(self.cfg.machine_id, self.renewed_ago(), self.members, None, t)
        if decision is Fence.PROBE:
            reports = await self._probe_peers()
            decision = fence_decision(self.cfg.machine_id, self.renewed_ago(), self.members,
                                      reports, t)
        if decision is self.fence or decision is Fence.HOLD:
            return
        listed = len(set(self.members) | {self.cfg.machine_id})
        if decision is Fence.KEEP:
            log.warning("agent %s: presence not renewed for %.1f s, but a majority of the %d "
                        "listed machines cannot reach the store either (a store outage): "
                        "keeping %d unit(s)", self.cfg.machine_id, self.renewed_ago(), listed,
                        len(self._running))
        else:
            log.warning("agent %s: presence not renewed for %.1f s and no majority of the %d "
                        "listed machines shares the outage: this host is cut off; stopping "
                        "%d unit(s) (fencing)", self.cfg.machine_id, self.renewed_ago(),
                        listed, len(self._running))
        self.fence = decision
        if decision is Fence.STOP:
            await self._fence_stop()

    async def _fence_stop(self) -> None:
        async with self._reconcile_lock:
            await asyncio.gather(*(self._stop_unit(name, publish=False)
                                   for name in list(self._running)))

    async def _probe_peers(self) -> dict[str, PeerReport]:
        peers = [m for m in self.members.values() if m.id != self.cfg.machine_id]
        answers = await asyncio.gather(*(self._probe(m) for m in peers))
        return {r.machine: r for r in answers}

    async def _probe(self, m: MachineRecord) -> PeerReport:
        try:
            body = await http_get(str(m.ip), m.port, "/presence", self.cfg.timings.probe_timeout)
            data = json.loads(body)
            return PeerReport(m.id, True, float(data["renewed_ago"]))
        except (OSError, TimeoutError, ValueError, KeyError, TypeError):
            return PeerReport(m.id, False)

    # -- machines -----------------------------------------------------------------------

    async def _members_loop(self) -> None:
        prefix = self.keys.prefix(KeyKind.MEMBER).encode()
        await self._watch_loop(prefix, self._members_listed, self._members_events)

    def _members_listed(self, items: Mapping[bytes, bytes]) -> None:
        self.members = {m.id: m for m in _decoded(items, MachineRecord.from_json)}

    def _members_events(self, events: list[WatchEvent]) -> None:
        for ev in events:
            key = ev.kv.key.decode(errors="replace")
            try:
                mid = self.keys.parse(key).machine
                if ev.type is EventType.DELETE:
                    self.members.pop(mid, None)
                else:
                    self.members[mid] = MachineRecord.from_json(key, ev.kv.value)
            except SchedError as exc:
                log.warning("ignoring %s", exc)

    async def _watch_loop(self, prefix: bytes, listed: Callable[[Mapping[bytes, bytes]], None],
                          changed: Callable[[list[WatchEvent]], None]) -> None:
        """List ``prefix``, then watch it from the next revision; on any store failure
        start over after a pause (a store outage must never end the agent)."""
        pause = self.cfg.timings.renew
        while True:
            try:
                listing = await self._call(self.store.list(prefix))
                listed({kv.key: kv.value for kv in listing.items})
                async for batch in self.store.watch(prefix, listing.revision + 1):
                    changed(batch)
            except (StoreError, TimeoutError, OSError) as exc:
                log.debug("watch %s: %s; listing again", prefix.decode(), exc)
            await self.clock.sleep(pause)

    # -- assignments and the runner ------------------------------------------------------------

    async def _assign_loop(self) -> None:
        prefix = self.keys.assign_prefix(self.cfg.machine_id).encode()
        await self._watch_loop(prefix, self._assign_listed, self._assign_events)

    def _assign_listed(self, items: Mapping[bytes, bytes]) -> None:
        assigned = {a.name: a for a in _decoded(items, Assignment.from_json)}
        self._dirty.update(set(self._assigned) - set(assigned))
        self._assigned = assigned
        self._wake.set()

    def _assign_events(self, events: list[WatchEvent]) -> None:
        for ev in events:
            key = ev.kv.key.decode(errors="replace")
            try:
                name = self.keys.parse(key).unit
                if ev.type is EventType.DELETE:
                    self._assigned.pop(name, None)
                    self._dirty.add(name)  # its state key goes too, even if it never ran
                else:
                    self._assigned[name] = Assignment.from_json(key, ev.kv.value)
            except SchedError as exc:
                log.warning("ignoring %s", exc)
        self._wake.set()

    async def _reconcile_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.fence is Fence.STOP:
                continue  # fenced: nothing runs until the store is back
            async with self._reconcile_lock:
                await self._reconcile()

    async def _reconcile(self) -> None:
        want = {n: a for n, a in self._assigned.items() if a.desired is DesiredState.LAUNCHED}
        for name in list(self._running):
            a = want.get(name)
            if a is None or a.hash != self._running[name].assignment.hash:
                await self._stop_unit(name, publish=True)
        for name, a in sorted(want.items()):
            if name in self._running:
                continue
            try:
                await self._start_unit(a)
            except (SchedError, RunnerError, AttachError) as exc:
                log.error("unit %s: cannot start: %s", name, exc)
                self._dirty.add(name)
                self._report.set()
        # units loaded here but not launched: report them as loaded/inactive
        for name, a in self._assigned.items():
            if a.desired is not DesiredState.LAUNCHED and name not in self._running:
                self._dirty.add(name)
        self._report.set()

    async def _start_unit(self, a: Assignment) -> None:
        unit = parse_unit(a.name, a.contents, self.keys.assign(self.cfg.machine_id, a.name))
        spec = run_spec(unit, stop_timeout=self.stop_timeout,
                        extra_env=(("WEFT_MACHINE_ID", self.cfg.machine_id),))
        service = unit.weft.service
        cid = None
        address = None
        if unit.weft.network:
            if self.attacher is None:
                raise AttachError(a.name, "Network=true but this agent has no CNI config")
            cid = container_id(self.cfg.netns_prefix
                               or default_netns_prefix(self.cfg.machine_id), a.name)
            iface = await self.attacher.add(cid)
            address = iface.ip
            spec = with_netns(spec, cid, (("WEFT_ADDRESS", str(address)),))
        self._running[a.name] = _Running(a, spec, service, cid, address)
        log.info("unit %s: starting (hash %s%s)", a.name, a.hash[:8],
                 f", netns {cid} {address}" if cid else "")
        await self.runner.start(spec)

    async def _stop_unit(self, name: str, *, publish: bool) -> None:
        r = self._running.pop(name, None)
        await self.runner.stop(name)
        if r is not None and r.cid and self.attacher is not None:
            try:
                await self.attacher.delete(r.cid)
            except AttachError as exc:
                log.warning("unit %s: CNI DEL failed (retried at the next start): %s", name, exc)
        if publish:
            self._dirty.add(name)
            self._report.set()
        elif r is not None and r.service is not None:
            self._published.pop(self._dns_key(r.service, name), None)

    # -- state and DNS ------------------------------------------------------------------------

    def _changed(self, name: str) -> None:
        self._dirty.add(name)
        self._report.set()

    def unit_state(self, name: str) -> UnitState | None:
        st: RunStatus | None = self.runner.status(name)
        r = self._running.get(name)
        a = self._assigned.get(name)
        if st is None and a is None:
            return None
        if st is None:
            st = RunStatus("inactive", "dead", self.clock.now())
        if r is None and a is not None and a.desired is not DesiredState.LAUNCHED and st.running:
            st = RunStatus("inactive", "dead", self.clock.now())
        address = r.address if r and r.address and st.running else None
        return UnitState(self.cfg.machine_id, st.active, st.sub, st.since, st.exit, address,
                         st.pid)

    async def _report_loop(self) -> None:
        while True:
            await self._report.wait()
            self._report.clear()
            if not self.lease or self.fence is not Fence.HOLD:
                continue  # nothing can be written now; _register marks everything dirty
            dirty, self._dirty = self._dirty, set()
            try:
                for name in sorted(dirty):
                    await self._publish(name)
            except (StoreError, TimeoutError, OSError) as exc:
                log.debug("state report failed (%s); retrying", exc)
                self._dirty |= dirty
                await self.clock.sleep(self.cfg.timings.renew)
                self._report.set()

    async def _publish(self, name: str) -> None:
        state = self.unit_state(name)
        key = self.keys.state(name, self.cfg.machine_id).encode()
        if state is None or (name not in self._assigned
                             and state.active not in ("activating", "active")):
            await self._unpublish(key)
        else:
            await self._put(key, state.to_json())
        r = self._running.get(name)
        if r is not None and r.service is not None:
            dkey = self._dns_key(r.service, name)
            if state is not None and state.active == "active" and r.address is not None:
                record = {"host": str(r.address)}
                if r.service.port:
                    record["port"] = r.service.port  # type: ignore[assignment]
                await self._put(dkey, json.dumps(record, sort_keys=True).encode())
            else:
                await self._unpublish(dkey)
        current = self._dns_key(r.service, name) if r and r.service else None
        for dkey in [k for k, unit in self._dns_units.items() if unit == name]:
            if dkey != current:
                await self._unpublish(dkey)

    def _dns_key(self, service: ServiceName, unit: str) -> bytes:
        key = service_key(self.cfg.domain, service.name, unit).encode()
        self._dns_units[key] = unit
        return key

    async def _put(self, key: bytes, value: bytes) -> None:
        if self._published.get(key) == value:
            return
        await self._call(self.store.put(key, value, self.lease))
        self._published[key] = value

    async def _unpublish(self, key: bytes) -> None:
        """Delete ``key`` only if it still holds what this agent wrote (CAS)."""
        self._dns_units.pop(key, None)
        mine = self._published.pop(key, None)
        if mine is None:
            return
        kv = await self._call(self.store.get(key))
        if kv is None or kv.value != mine or kv.lease != self.lease:
            return
        await self._call(self.store.txn([Compare(key, "mod", kv.mod_revision)],
                                        [TxnOp(key, delete=True)]))

    # -- HTTP -----------------------------------------------------------------------------------

    async def _route(self, target: str) -> tuple[int, str, str]:
        url = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(url.query)
        path = url.path
        if path in ("/healthz", "/health"):
            return 200, "text/plain", "ok\n"
        if path == "/presence":
            body = {"machine": self.cfg.machine_id, "renewed_ago": round(self.renewed_ago(), 3),
                    "holding": self.renewed_ago() < self.cfg.timings.ttl,
                    "fence": self.fence.value, "lease": f"{self.lease:x}"}
            return 200, "application/json", json.dumps(body) + "\n"
        if path == "/units":
            units = {}
            for name in self.runner.names():
                st = self.unit_state(name)
                if st is not None:
                    units[name] = json.loads(st.to_json())
            return 200, "application/json", json.dumps(units, sort_keys=True) + "\n"
        if path.startswith("/journal/"):
            name = urllib.parse.unquote(path[len("/journal/"):])
            if self.runner.status(name) is None:
                return 404, "application/json", json.dumps(
                    {"error": f"unit {name} never ran on {self.cfg.machine_id}"}) + "\n"
            try:
                n = int(query.get("n", ["10"])[0])
                wait = min(float(query.get("wait", ["0"])[0]), 4.0)
            except ValueError:
                return 400, "text/plain", "n and wait must be numbers\n"
            cursor = query.get("after", [None])[0]
            if cursor is not None and wait > 0:
                await self.runner.wait_lines(name, cursor, wait)
            page = await self.runner.journal(name, n if cursor is None else max(n, 1000),
                                             cursor)
            return 200, "application/json", json.dumps(
                {"unit": name, "machine": self.cfg.machine_id, "lines": list(page.lines),
                 "next": page.cursor}) + "\n"
        return 404, "text/plain", "not found\n"


async def http_get(host: str, port: int, path: str, timeout: float) -> str:
    """GET ``http://host:port/path``; the body of a 200, OSError otherwise."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                         .encode())
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise OSError(f"GET {path} from {host}:{port}: {head[:80]!r}")
    return body.decode(errors="replace")
