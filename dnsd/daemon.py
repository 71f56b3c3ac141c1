"""The running dnsd: index, feed, server and HTTP wired from a ``DnsdConfig``.

Theory of operation
-------------------
One event loop runs dnsd from start to stop (``serve``): the store client's gRPC
machinery binds to the loop it first runs on, so reading SkyDNS's
``<path-prefix>/config`` key in a loop of its own and then serving in another
left callbacks for a closed loop (the old ``RuntimeError: Event loop is closed``).

At start ``initial_config`` reads the key (``read_config_until_answered``: one
attempt at a time, retried with backoff while the store does not answer) and
waits at most ``CONFIG_READ_TIMEOUT`` for it. Answered in time: merged over the
flags before binding (``skyconfig``'s rules). Not answered: dnsd serves on its
flags and the same read goes on in the background; when the store answers,
``Daemon.reconfigure`` applies the key to the running server and logs what
changed: domain, ttl, min_ttl, priority, nameservers/no_rec/read_timeout and
round_robin take effect at once (cached answers are dropped); ``dns_addr``
cannot, since the sockets are bound (and under systemd port 53 was bound with a
capability meant for start-up only): it is logged as needing a restart. The key
is read once, as SkyDNS does; a later change needs a restart.

Health, split as CoreDNS's health and ready plugins split it: ``/health`` and
``/healthz`` are 200 while the process serves (a liveness probe must never turn
a store outage into a DNS outage: dnsd keeps answering from its index);
``/ready`` and ``/readyz`` are 503 until the first full index load and while the
store watch is down, else 200. ``READY=1`` goes to systemd after the first load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from overlay.service import sd_notify
from overlay.statushttp import start_status_server
from overlay.store.api import Store, StoreConfig

from . import skyconfig, stub
from .config import DnsdConfig
from .engine import Engine
from .feed import Feed
from .index import Index
from .server import DnsServer, ServerConfig

log = logging.getLogger("dnsd")

CONFIG_READ_TIMEOUT = 2.0  # start-up waits this long for <prefix>/config, then serves
CONFIG_ATTEMPT_TIMEOUT = 5.0  # one read attempt against a store that does not answer
CONFIG_RETRY_MAX = 30.0  # backoff cap between attempts


def config_key(cfg: DnsdConfig) -> str:
    return cfg.prefix.rstrip("/") + "/config"


async def read_config_key(store_cfg: StoreConfig, key: str) -> bytes | None:
    """The value of ``key`` (None when absent); store errors propagate."""
    from overlay.store.client import connect  # aetcd: imported only when needed

    store = await connect(store_cfg)
    try:
        kv = await store.get(key.encode())
        return None if kv is None else kv.value
    finally:
        await store.close()


async def read_config_until_answered(
        store_cfg: StoreConfig, key: str,
        read: Callable[[StoreConfig, str], Awaitable[bytes | None]] = read_config_key,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        attempt_timeout: float = CONFIG_ATTEMPT_TIMEOUT, first_delay: float = 0.5,
        max_delay: float = CONFIG_RETRY_MAX) -> bytes | None:
    """Read ``key`` until the store answers (the value, or None for no key).

    ``ValueError`` (unusable TLS files or endpoints) is not retried: it cannot
    get better by waiting.
    """
    delay = first_delay
    while True:
        try:
            async with asyncio.timeout(attempt_timeout):
                return await read(store_cfg, key)
        except ValueError:
            raise
        except Exception as exc:  # one attempt's boundary: any store trouble means retry
            why = (f"no answer within {attempt_timeout:g}s" if isinstance(exc, TimeoutError)
                   else str(exc) or type(exc).__name__)
            log.debug("%s not read (%s); retrying in %gs", key, why, delay)
        await sleep(delay)
        delay = min(delay * 2, max_delay)


def apply_config_key(cfg: DnsdConfig, key: str, raw: bytes | None,
                     explicit: frozenset[str]) -> DnsdConfig:
    """Merge the key's value over ``cfg``, logging what was skipped and overridden."""
    if raw is None:
        log.debug("%s: no such key; using the flags", key)
        return cfg
    sky = skyconfig.parse(raw)
    for p in sky.problems:
        if p.field is None:
            log.warning("%s: ignored: %s; using the flags", key, p.reason)
        else:
            log.warning("%s: field %s ignored: %s", key, p.field, p.reason)
    if sky.ignored:
        log.info("%s: accepted but not supported by dnsd, ignored: %s", key,
                 ", ".join(sky.ignored))
    if sky.unknown:
        log.warning("%s: unknown fields ignored: %s", key, ", ".join(sky.unknown))
    merged, overrides = skyconfig.merge(cfg, sky, explicit)
    for o in overrides:
        log.info("%s: %s=%s overrides the explicit -%s", key, o.field,
                 json.dumps(o.value), o.flag)
    if sky.present():
        log.info("%s: applied %s", key, ", ".join(sky.present()))
    return merged


async def initial_config(cfg: DnsdConfig, explicit: frozenset[str],
                         timeout: float = CONFIG_READ_TIMEOUT
                         ) -> tuple[DnsdConfig, asyncio.Task[bytes | None] | None]:
    """``cfg`` merged with the key if the store answers within ``timeout``.

    Otherwise ``cfg`` itself and the read still going on, for ``Daemon.run`` to
    apply when it ends.
    """
    key = config_key(cfg)
    task = asyncio.create_task(read_config_until_answered(cfg.store, key))
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if task not in done:
        log.warning("%s not read within %gs (the store does not answer); serving on the "
                    "flags and reading it in the background: its fields apply when it "
                    "arrives, except dns_addr (restart dnsd to listen elsewhere)", key, timeout)
        return cfg, task
    try:
        raw = task.result()
    except ValueError as exc:
        log.warning("%s not read (%s); serving on the flags", key, exc)
        return cfg, None
    return apply_config_key(cfg, key, raw, explicit), None


class Daemon:
    """The running pieces, for main() and for tests that run dnsd in-process."""

    def __init__(self, cfg: DnsdConfig) -> None:
        self.cfg = cfg
        self.index = Index(cfg.prefix)
        self.lock = threading.Lock()
        self.server = DnsServer(Engine(cfg.engine), self.index, self.lock,
                                ServerConfig(cfg.host, cfg.port, cfg.round_robin,
                                             cfg.udp_batch, cfg.stubzones, cfg.read_timeout),
                                cfg.forwarding)
        self._stub_problems: frozenset[stub.StubProblem] = frozenset()
        self.feed = Feed(self._connect, self.index, self.lock, self._changed)
        self.started = time.monotonic()

    def _changed(self) -> None:
        """After an index change (lock held): rebuild the stub table, drop cached answers."""
        if self.cfg.stubzones:
            table, problems = stub.build(self.index, self.cfg.engine.zones)
            for p in problems:
                if p not in self._stub_problems:  # once while the record stays bad
                    log.warning("stub zone record %s skipped: %s", p.key, p.reason)
            self._stub_problems = frozenset(problems)
            if table != self.server.stubs:
                log.info("stub zones: %s", "; ".join(
                    f"{'.'.join(z)}. -> {', '.join(f'{h}:{p}' for h, p in ns)}"
                    for z, ns in table.zones.items()) or "none")
            self.server.stubs = table
        self.server.invalidate()

    async def _connect(self) -> Store:
        from overlay.store.client import connect  # aetcd: imported only when needed

        return await connect(self.cfg.store)

    def health(self) -> tuple[bool, str]:
        """Readiness: (ready, why). Ready once the index is loaded and while the watch is up."""
        st = self.feed.status
        if not st.synced:
            return False, f"index not loaded yet: {st.error}"
        if not st.connected:
            since = time.monotonic() - st.down_since
            return False, (f"store unreachable for {since:.0f}s ({st.error}); answering "
                           f"{self.index.size} records from the index at revision "
                           f"{self.index.revision}")
        return True, f"ok: {self.index.size} records at revision {self.index.revision}"

    def reconfigure(self, new: DnsdConfig) -> list[str]:
        """Apply a config that arrived after start (the key): see the module doc; the changes."""
        key = config_key(self.cfg)
        if (new.host, new.port) != (self.cfg.host, self.cfg.port):
            log.warning("%s: dns_addr %s:%s arrived after start-up; dnsd keeps listening on "
                        "%s:%s (the sockets are bound): restart dnsd to move", key, new.host,
                        new.port, self.cfg.host, self.cfg.port)
            new = dataclasses.replace(new, host=self.cfg.host, port=self.cfg.port)
        changes = skyconfig.describe_changes(self.cfg, new)
        with self.lock:
            self.server.reconfigure(Engine(new.engine), new.forwarding, new.round_robin,
                                    new.read_timeout)
            self.cfg = new
            self._changed()
        log.info("%s arrived after start-up and is now applied: %s", key,
                 "; ".join(changes) or "nothing changed")
        return changes

    def metrics_text(self) -> str:
        with self.lock:
            self.server.sync_metrics()
        st = self.feed.status
        gauges = {
            "dnsd_index_records": float(self.index.size),
            "dnsd_index_bad_values": float(self.index.bad_values),
            "dnsd_index_revision": float(self.index.revision),
            "dnsd_store_up": 1.0 if st.connected else 0.0,
            "dnsd_watch_lag_seconds": st.watch_lag,
            "dnsd_watch_events_total": float(st.events),
            "dnsd_watch_relists_total": float(st.relists),
            "dnsd_answer_cache_entries": float(self.server.cache_size),
        }
        return self.server.metrics.render(gauges)

    def route(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body) for a GET of ``path`` on the metrics port."""
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4", self.metrics_text()
        if path in ("/healthz", "/health"):  # liveness: we answer, so we serve
            ready, text = self.health()
            return 200, "text/plain", (text if ready else f"ok, serving; not ready: {text}") + "\n"
        if path in ("/readyz", "/ready"):
            ready, text = self.health()
            return (200 if ready else 503), "text/plain", text + "\n"
        return 404, "text/plain", "try /metrics, /healthz or /readyz\n"

    async def run(self, stop: asyncio.Event,
                  late_config: asyncio.Task[bytes | None] | None = None,
                  explicit: frozenset[str] = frozenset()) -> None:
        http = None
        if self.cfg.metrics_port:
            try:
                http = await start_status_server(self.route, self.cfg.host,
                                                 self.cfg.metrics_port)
            except OSError:
                self.server.stop()
                raise
        self.server.start()
        try:
            # one group: a task that fails takes the others down with it (and reaches
            # the caller) instead of leaving dnsd answering without a feed
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self.feed.run()), tg.create_task(self._mark_ready())]
                if late_config is not None:
                    tasks.append(tg.create_task(self._apply_late(late_config, explicit)))
                await stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            if late_config is not None:
                late_config.cancel()
                await asyncio.gather(late_config, return_exceptions=True)
            if http is not None:
                http.close()
            self.server.stop()

    async def _mark_ready(self) -> None:
        await self.feed.synced_event.wait()
        self.server.ready = True
        if sd_notify("READY=1", self.cfg.notify_socket):
            log.info("notified systemd: READY=1 (index loaded: %s records)", self.index.size)

    async def _apply_late(self, read: asyncio.Task[bytes | None],
                          explicit: frozenset[str]) -> None:
        key = config_key(self.cfg)
        try:
            raw = await read
        except ValueError as exc:
            log.warning("%s not read (%s); staying on the flags", key, exc)
            return
        if raw is None:
            log.info("%s: the store answered, no such key; staying on the flags", key)
            return
        self.reconfigure(apply_config_key(self.cfg, key, raw, explicit))


async def serve(cfg: DnsdConfig, explicit: frozenset[str], stop: asyncio.Event,
                config_timeout: float = CONFIG_READ_TIMEOUT) -> int:
    """dnsd from start to stop in the running loop: the key, the bind, then serving.

    Returns 1 when it cannot listen, 0 once ``stop`` is set.
    """
    cfg, late = await initial_config(cfg, explicit, config_timeout)
    try:
        daemon = Daemon(cfg)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", f"[{cfg.host}]" if ":" in cfg.host else cfg.host,
                  cfg.port, exc)
        if late is not None:
            late.cancel()
            await asyncio.gather(late, return_exceptions=True)
        return 1
    await daemon.run(stop, late, explicit)
    return 0


