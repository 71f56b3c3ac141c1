"""dnsd's entry point: SkyDNS-style flags -> config, then wire index, feed, server and HTTP.

Flags take one or two dashes and fall back to ``SKYDNS_*`` (and SkyDNS's
``ETCD_*`` / ``PROMETHEUS_PORT``) environment variables. Nothing below this
module reads the environment. Before binding, ``main`` reads SkyDNS's
``<path-prefix>/config`` key once (one attempt, at most ``CONFIG_READ_TIMEOUT``
seconds, so an unreachable store still leaves dnsd starting on its flags and the
feed retrying in the background, as before) and merges it over the flags; see
``skyconfig`` for the rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from overlay.flags import FlagParser, StoreFlagEnv, add_store_flags, store_config
from overlay.statushttp import start_status_server
from overlay.store.api import Store, StoreConfig

from . import skyconfig, stub
from .engine import Engine, EngineConfig
from .feed import Feed
from .forward import (
    DEFAULT_ALLOW,
    Forwarder,
    Network,
    make_forwarder,
    parse_hostport,
    parse_networks,
)
from .index import Index
from .server import DnsServer, ServerConfig

log = logging.getLogger("dnsd")

CONFIG_READ_TIMEOUT = 2.0  # one bounded read of <prefix>/config; never wait for the store
DEFAULT_NETWORKS = parse_networks(DEFAULT_ALLOW)
# flags a /skydns/config field can override (skyconfig.FLAG_OF's values)
_OVERRIDABLE = frozenset(skyconfig.FLAG_OF.values())
# after the parser's SKYDNS_ETCD_* names: SkyDNS's ETCD_* variables and weft's auth ones
DNSD_STORE_ENV = StoreFlagEnv(endpoints=("ETCD_MACHINES", "ETCD_ENDPOINTS"),
                              cafile=("ETCD_CACERT",), certfile=("ETCD_TLSPEM",),
                              keyfile=("ETCD_TLSKEY",))


@dataclass(frozen=True, slots=True)
class DnsdConfig:
    host: str
    port: int
    engine: EngineConfig
    prefix: str
    store: StoreConfig
    forwarder: Forwarder | None
    round_robin: bool
    udp_batch: bool
    metrics_port: int
    verbose: bool
    forward_allow: tuple[Network, ...] = DEFAULT_NETWORKS  # kept for a key's nameservers
    stubzones: bool = False


def flag_parser(environ: Mapping[str, str] | None = None) -> FlagParser:
    p = FlagParser("dnsd", "SkyDNS-compatible DNS answering from the cluster store.\n\n"
                   "At startup dnsd reads SkyDNS's JSON config key <path-prefix>/config "
                   "(default /skydns/config)\nonce; it is not watched, so a change needs a "
                   "restart. Its fields dns_addr, domain,\nnameservers, no_rec, "
                   "read_timeout, round_robin, ttl, min_ttl and priority override these\n"
                   "flags (even explicit ones, as in SkyDNS); other SkyDNS fields are "
                   "ignored. A bad key\nor field is logged and skipped; an unreachable "
                   "store means the flags alone apply.",
                   env_prefixes=("SKYDNS_",), environ=environ)
    p.add("addr", "address to serve DNS on (UDP and TCP)", "127.0.0.1:53")
    p.add("domain", "zone(s) to be authoritative for, comma separated", "skydns.local.")
    p.add("path-prefix", "store key prefix of the records", "/skydns")
    p.add("etcd-prefix", "alias of -path-prefix (weft's common flag name)", None)
    add_store_flags(p, DNSD_STORE_ENV, notes={
        "endpoints": "alias -machines", "cafile": "alias -ca-cert",
        "certfile": "alias -tls-pem", "keyfile": "alias -tls-key"})
    p.add("machines", "alias of -etcd-endpoints (SkyDNS)", None)
    p.add("ca-cert", "alias of -etcd-cafile (SkyDNS)", None)
    p.add("tls-pem", "alias of -etcd-certfile (SkyDNS)", None)
    p.add("tls-key", "alias of -etcd-keyfile (SkyDNS)", None)
    p.add("nameservers", "upstreams for out-of-zone queries, comma separated host[:port]; "
          "forwarding is OFF unless given", "")
    p.add("forward-allow", "client networks allowed to use forwarding, comma separated",
          DEFAULT_ALLOW)
    p.add_bool("stubzones", "relay names in the stub zones stored under "
               "<domain>/dns/stub/<zone reversed>/<name> to their nameservers, for any "
               "client", False)
    p.add("ttl", "default TTL of records without ttl or lease", 3600, type=int)
    p.add("min-ttl", "TTL of negative answers (and the SOA minimum)", 60, type=int)
    p.add_bool("round-robin", "rotate A/AAAA answers", True)
    p.add_bool("udp-batch", "receive and send UDP in batches (recvmmsg/sendmmsg, Linux)", True)
    p.add("metrics-port", "port for /metrics and /healthz on the -addr host (0 = off)", 0,
          type=int, env=("PROMETHEUS_PORT",))
    p.add_bool("verbose", "debug logging", False)
    return p


def parse_config(argv: Sequence[str] | None,
                 environ: Mapping[str, str] | None = None) -> DnsdConfig:
    parser = flag_parser(environ)
    a = parser.parse(argv)
    try:
        host, port = parse_hostport(a.addr, 53)
        host = host or "0.0.0.0"
        domains = [d for d in a.domain.split(",") if d.strip()]
        engine = EngineConfig.from_domains(domains, ttl=a.ttl, min_ttl=a.min_ttl)
        if a.ttl < 1 or a.min_ttl < 0:
            raise ValueError("-ttl must be >= 1 and -min-ttl >= 0")
        a.etcd_endpoints = a.machines or a.etcd_endpoints  # SkyDNS's aliases win
        a.etcd_cafile = a.etcd_cafile or a.ca_cert
        a.etcd_certfile = a.etcd_certfile or a.tls_pem
        a.etcd_keyfile = a.etcd_keyfile or a.tls_key
        store = store_config(a, DNSD_STORE_ENV, environ)
        forwarder = make_forwarder(a.nameservers.split(","), a.forward_allow)
        allow = parse_networks(a.forward_allow)
        if not 0 <= a.metrics_port <= 65535:
            raise ValueError(f"-metrics-port {a.metrics_port} out of range")
    except ValueError as exc:
        parser.error(str(exc))
        raise  # parser.error exits; this keeps the type checker informed
    prefix = "/" + (a.etcd_prefix or a.path_prefix).strip("/")
    return DnsdConfig(host, port, engine, prefix, store, forwarder, a.round_robin,
                      a.udp_batch, a.metrics_port, a.verbose,
                      allow, a.stubzones)


def explicit_flags(argv: Sequence[str], environ: Mapping[str, str]) -> frozenset[str]:
    """The overridable flags set on the command line or via ``SKYDNS_*``, not defaulted.

    FlagParser folds defaults in, so this looks at the raw spellings it accepts:
    ``-f``, ``--f``, ``-f=v``, ``--f=v``.
    """
    given = {arg.lstrip("-").split("=", 1)[0] for arg in argv if arg.startswith("-")}
    env = {f for f in _OVERRIDABLE if "SKYDNS_" + f.upper().replace("-", "_") in environ}
    return frozenset((given & _OVERRIDABLE) | env)


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
                                             cfg.udp_batch, cfg.stubzones),
                                cfg.forwarder)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_config(args)
    logging.basicConfig(level=logging.DEBUG if cfg.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    cfg = load_config_key(cfg, explicit_flags(args, os.environ))
    try:
        daemon = Daemon(cfg)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", cfg.host, cfg.port, exc)
        return 1

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await daemon.run(stop)

    try:
        asyncio.run(amain())
    except OSError as exc:  # e.g. the metrics port is taken
        log.error("dnsd failed: %s", exc)
        return 1
    log.info("dnsd stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
