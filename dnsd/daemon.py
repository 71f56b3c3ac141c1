"""The running dnsd: index, feed, server and HTTP wired from a ``DnsdConfig``.

Before binding, ``cli.main`` reads SkyDNS's ``<path-prefix>/config`` key once
(``load_config_key``: one attempt, at most ``CONFIG_READ_TIMEOUT`` seconds, so an
unreachable store still leaves dnsd starting on its flags and the feed retrying
in the background) and merges it over the flags; see ``skyconfig`` for the rules.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

from overlay.statushttp import start_status_server
from overlay.store.api import Store, StoreConfig

from . import skyconfig, stub
from .config import DnsdConfig
from .engine import Engine
from .feed import Feed
from .index import Index
from .server import DnsServer, ServerConfig

log = logging.getLogger("dnsd")

CONFIG_READ_TIMEOUT = 2.0  # one bounded read of <prefix>/config; never wait for the store


async def read_config_key(store_cfg: StoreConfig, key: str) -> bytes | None:
    """The value of ``key`` (None when absent); store errors propagate."""
    from overlay.store.client import connect  # aetcd: imported only when needed

    store = await connect(store_cfg)
    try:
        kv = await store.get(key.encode())
        return None if kv is None else kv.value
    finally:
        await store.close()


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


def load_config_key(cfg: DnsdConfig, explicit: frozenset[str],
                    timeout: float = CONFIG_READ_TIMEOUT) -> DnsdConfig:
    """``cfg`` merged with ``<prefix>/config``; ``cfg`` itself if the store does not answer."""
    key = cfg.prefix.rstrip("/") + "/config"
    try:
        raw = asyncio.run(asyncio.wait_for(read_config_key(cfg.store, key), timeout))
    except Exception as exc:  # the startup read's boundary: never stops dnsd
        why = (f"no answer within {timeout:g}s" if isinstance(exc, TimeoutError)
               else str(exc) or type(exc).__name__)
        log.warning("%s not read (%s); starting with the flags, the key is read only at "
                    "startup", key, why)
        return cfg
    return apply_config_key(cfg, key, raw, explicit)


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
        st = self.feed.status
        if not st.synced:
            return False, f"index not loaded yet: {st.error}"
        if not st.connected:
            since = time.monotonic() - st.down_since
            return False, (f"store unreachable for {since:.0f}s ({st.error}); answering "
                           f"{self.index.size} records from the index at revision "
                           f"{self.index.revision}")
        return True, f"ok: {self.index.size} records at revision {self.index.revision}"

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
        if path in ("/healthz", "/health"):
            ok, text = self.health()
            return (200 if ok else 503), "text/plain", text + "\n"
        return 404, "text/plain", "try /metrics or /healthz\n"

    async def run(self, stop: asyncio.Event) -> None:
        http = None
        if self.cfg.metrics_port:
            try:
                http = await start_status_server(self.route, self.cfg.host,
                                                 self.cfg.metrics_port)
            except OSError:
                self.server.stop()
                raise
        self.server.start()
        feed = asyncio.create_task(self.feed.run())
        ready = asyncio.create_task(self._mark_ready())
        try:
            await stop.wait()
        finally:
            for task in (feed, ready):
                task.cancel()
            await asyncio.gather(feed, ready, return_exceptions=True)
            if http is not None:
                http.close()
            self.server.stop()

    async def _mark_ready(self) -> None:
        await self.feed.synced_event.wait()
        self.server.ready = True


