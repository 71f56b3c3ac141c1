"""dnsd's configuration: ``DnsdConfig`` and the SkyDNS-style flags that build it.

Flags take one or two dashes and fall back to ``SKYDNS_*`` (and SkyDNS's
``ETCD_*`` / ``PROMETHEUS_PORT``) environment variables; the store connection
flags are weft's shared ones (``overlay.flags.add_store_flags``) with SkyDNS's
variables and aliases. Every flag SkyDNS has is accepted, so a SkyDNS unit starts
dnsd unchanged: ``-no-rec``, ``-rtimeout``, ``-username``/``-password``,
``-systemd`` and ``-etcd3`` mean what they mean there (``DnsdConfig``), the rest
(``SKYDNS_IGNORED``) are named in one warning that ``main`` logs
(``DnsdConfig.warnings``). Nothing below this module reads the environment.
``skyconfig`` merges the ``<path-prefix>/config`` key over a ``DnsdConfig``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from overlay.flags import (
    FlagParser,
    StoreFlagEnv,
    add_store_flags,
    go_duration,
    ignored_warning,
    store_config,
)
from overlay.service import LOG_FORMATS
from overlay.store.api import StoreConfig

from .engine import EngineConfig
from .forward import (
    DEFAULT_ALLOW,
    Forwarder,
    Network,
    make_forwarder,
    parse_hostport,
    parse_networks,
)

DEFAULT_NETWORKS = parse_networks(DEFAULT_ALLOW)
DEFAULT_READ_TIMEOUT = 2.0  # SkyDNS's -rtimeout default
# after the parser's SKYDNS_ETCD_* names: SkyDNS's ETCD_* variables and weft's auth ones
DNSD_STORE_ENV = StoreFlagEnv(endpoints=("ETCD_MACHINES", "ETCD_ENDPOINTS"),
                              cafile=("ETCD_CACERT",), certfile=("ETCD_TLSPEM",),
                              keyfile=("ETCD_TLSKEY",),
                              username=("WEFT_ETCD_USERNAME", "ETCD_USERNAME"),
                              password=("WEFT_ETCD_PASSWORD", "ETCD_PASSWORD"))
_NO_CACHE = "dnsd's answer cache is always on and emptied on every store change"
# SkyDNS's flags with no meaning in dnsd, as the same fields of /skydns/config
# (skyconfig.IGNORED): (name, why, boolean). Accepted so a SkyDNS unit's ExecStart
# starts dnsd unchanged; named in one WARNING at start-up.
SKYDNS_IGNORED: tuple[tuple[str, str, bool], ...] = (
    ("local", "no local.dns.<domain> alias is served", False),
    ("hostmaster", "the SOA mailbox is hostmaster.<zone>", False),
    ("dnssec", "dnsd does not sign answers", False),
    ("ns-rotate", "dnsd picks the first upstream by query ID, the next on failure", True),
    ("ndots", "out-of-zone names are forwarded whatever their label count", False),
    ("rcache", _NO_CACHE, False),
    ("rcache-ttl", _NO_CACHE, False),
    ("scache", "no signatures, so no signature cache", False),
    ("discover", "etcd v2 machine discovery; dnsd uses -etcd-endpoints as given", True),
)


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
    log_format: str = "text"  # overlay.service.LOG_FORMATS
    notify_socket: str | None = None  # systemd's $NOTIFY_SOCKET: READY=1 once the index is loaded
    version: bool = False  # -version: print it and exit
    no_rec: bool = False  # SkyDNS -no-rec / no_rec: never forward, whatever the nameservers
    read_timeout: float = DEFAULT_READ_TIMEOUT  # per upstream try (forwarding, stub zones)
    systemd: bool = False  # SkyDNS -systemd: accepted (readiness goes to NOTIFY_SOCKET anyway)
    warnings: tuple[str, ...] = field(default=(), compare=False)  # for main to log

    @property
    def forwarding(self) -> Forwarder | None:
        """The forwarder out-of-zone queries go to; None when forwarding is off
        (no nameservers, or no_rec)."""
        return None if self.no_rec else self.forwarder


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
    p.add("username", "alias of -etcd-username (SkyDNS)", None)
    p.add("password", "alias of -etcd-password (SkyDNS); prefer the ETCD_PASSWORD or "
          "WEFT_ETCD_PASSWORD environment variable, a command-line value shows in `ps`", None)
    p.add("nameservers", "upstreams for out-of-zone queries, comma separated host[:port]; "
          "forwarding is OFF unless given", "")
    p.add_bool("no-rec", "never forward out-of-zone queries, even with -nameservers "
               "(SkyDNS: no recursive service)", False)
    p.add("rtimeout", "read timeout of each try at an upstream (forwarding, stub zones), "
          "a Go duration", "2s", metavar="DURATION")
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
    p.add("log-format", "text (journald priority prefixes instead of timestamps when "
          "systemd's JOURNAL_STREAM is our stderr) or json (one object per line)", "text",
          env=("WEFT_LOG_FORMAT",))
    p.add_bool("version", "print the version and exit", False)
    p.add_bool("systemd", "run as a systemd service: readiness is reported to systemd "
               "(sd_notify READY=1) whenever $NOTIFY_SOCKET is set, with or without this "
               "flag; unlike SkyDNS, dnsd binds -addr itself (no socket activation)", False)
    p.add_bool("etcd3", "SkyDNS: talk etcd's v3 API. dnsd always does, so this changes "
               "nothing (false is ignored with a warning)", None)
    for name, why, boolean in SKYDNS_IGNORED:
        p.add_ignored(name, why, boolean)
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
        a.etcd_username = a.etcd_username or a.username
        a.etcd_password = a.etcd_password or a.password
        store = store_config(a, DNSD_STORE_ENV, environ)
        read_timeout = go_duration(a.rtimeout)
        if not 0.001 <= read_timeout <= 60:
            raise ValueError(f"-rtimeout {a.rtimeout}: want 1ms..60s")
        forwarder = make_forwarder(a.nameservers.split(","), a.forward_allow, read_timeout)
        allow = parse_networks(a.forward_allow)
        if not 0 <= a.metrics_port <= 65535:
            raise ValueError(f"-metrics-port {a.metrics_port} out of range")
        if a.log_format not in LOG_FORMATS:
            raise ValueError(f"-log-format {a.log_format!r}: must be one of "
                             f"{', '.join(LOG_FORMATS)}")
    except ValueError as exc:
        parser.error(str(exc))
        raise  # parser.error exits; this keeps the type checker informed
    prefix = "/" + (a.etcd_prefix or a.path_prefix).strip("/")
    env = os.environ if environ is None else environ
    warnings = [w for w in (ignored_warning(a),) if w is not None]
    if a.etcd3 is False:
        warnings.append("-etcd3=false ignored: dnsd only talks etcd's v3 API")
    return DnsdConfig(host, port, engine, prefix, store, forwarder, a.round_robin,
                      a.udp_batch, a.metrics_port, a.verbose,
                      allow, a.stubzones, a.log_format, env.get("NOTIFY_SOCKET") or None,
                      a.version, no_rec=a.no_rec, read_timeout=read_timeout,
                      systemd=a.systemd, warnings=tuple(warnings))
