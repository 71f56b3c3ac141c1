"""Sandbox model: options, the per-daemon table, the recorded state and the rendered tables (pure).

Theory of operation
-------------------
A sandbox is a ``Testbed`` (underlay namespace + host namespaces) plus a set of
*daemons*, each an entry of ``DAEMONS``: a name, where it runs (``underlay``,
``each-host`` or ``first-host``), a check saying why it is absent from this
build (its module or binary missing) or None, an argv builder and its health
probes. ``cluster`` walks the table in order; adding a per-host daemon (the
scheduler agent is next) means adding one entry here and nothing else.

Everything ``up`` creates is recorded in ``<state-dir>/state.json`` (namespace tag,
hosts, containers, daemons with pid + kernel start time so a recycled pid is
never mistaken for ours), which is how the later commands (``status``, ``kill``,
``down``...) find the sandbox after ``up`` has returned.

Nothing here runs a process or touches the network; probes are descriptions that
``cluster`` executes inside the right namespace.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from overlay.errors import WeftError

STORE_PORT = 2379
FLANNELD_HEALTHZ_PORT = 9101  # inside each host namespace, so a fixed port is safe
DNSD_METRICS_PORT = 9153
AGENT_PORT = 9180  # the scheduler agent's HTTP endpoint, on each host's underlay address
DNS_PORT = 53
DOMAIN = "skydns.local."
NETWORK = ipaddress.IPv4Network("10.244.0.0/16")
NETWORK6 = ipaddress.IPv6Network("fd00:10:244::/56")  # --ipv6: the overlay's IPv6Network
UNDERLAY_NET = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmark space
UNDERLAY_NET6 = ipaddress.IPv6Network("fd00:198:18::/64")  # --ipv6: overlay.testbed's
# --ipv6 networks must stay in space that is never routed: ULA or the documentation prefix
IPV6_SAFE = (ipaddress.IPv6Network("fd00::/8"), ipaddress.IPv6Network("2001:db8::/32"))
MAX_HOSTS = 16
BACKENDS = ("vxlan", "host-gw", "udp")
STORES = ("embedded", "etcd")
DEFAULT_LEASE_TTL = 20
DEFAULT_STATE_DIR = Path("/run/weft-sandbox")
CNI_NETWORK_NAME = "weft"

Placement = Literal["underlay", "each-host", "first-host"]


class SandboxError(WeftError):
    """A sandbox operation failed; ``what`` names the step or object concerned."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class BadOptionError(SandboxError):
    """An option given to ``weftctl sandbox`` is out of range."""


class AlreadyUpError(SandboxError):
    """``up`` found a sandbox already running in the state dir."""


class NotUpError(SandboxError):
    """A command needs a running sandbox and the state dir holds none."""


class UnknownTargetError(SandboxError):
    """``exec``/``logs``/``kill`` named a host, container or daemon that does not exist."""


@dataclass(frozen=True, slots=True)
class Options:
    """What ``weftctl sandbox up`` was asked for; checked by ``check``."""

    hosts: int = 3
    store: str = "embedded"
    backend: str = "vxlan"
    state_dir: Path = DEFAULT_STATE_DIR
    lease_ttl: int = DEFAULT_LEASE_TTL
    network: ipaddress.IPv4Network = NETWORK
    ipv6: bool = False  # dual-stack underlay and overlay (``up --ipv6``)
    network6: ipaddress.IPv6Network = NETWORK6
    encrypt: bool = False  # udp with Encryption (``up --encrypt``): a fresh cluster key

    def check(self) -> Options:
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise BadOptionError("--hosts", f"must be 1..{MAX_HOSTS}, got {self.hosts}")
        if self.store not in STORES:
            raise BadOptionError("--store", f"must be one of {', '.join(STORES)}, "
                                 f"got {self.store!r}")
        if self.backend not in BACKENDS:
            raise BadOptionError("--backend", f"must be one of {', '.join(BACKENDS)}, "
                                 f"got {self.backend!r}")
        if self.network.overlaps(UNDERLAY_NET):
            raise BadOptionError("--network", f"{self.network} overlaps the sandbox underlay "
                                 f"{UNDERLAY_NET}")
        if self.network.prefixlen > 28:
            raise BadOptionError("--network", f"{self.network} is too small (flannel needs /28 "
                                 "or larger)")
        if self.encrypt and self.backend != "udp":
            raise BadOptionError("--encrypt", f"only the udp backend encrypts; got --backend "
                                 f"{self.backend}")
        if self.lease_ttl < 2:
            raise BadOptionError("--lease-ttl", f"must be at least 2 s, got {self.lease_ttl}")
        if self.ipv6:
            if self.backend == "udp":
                raise BadOptionError("--backend", "udp is IPv4-only (as flannel's); --ipv6 "
                                     "needs vxlan or host-gw")
            if not any(self.network6.subnet_of(safe) for safe in IPV6_SAFE):
                raise BadOptionError("--network6", f"{self.network6} is outside fd00::/8 and "
                                     "2001:db8::/32 (a sandbox stays in unrouted space)")
            if self.network6.overlaps(UNDERLAY_NET6):
                raise BadOptionError("--network6", f"{self.network6} overlaps the sandbox "
                                     f"underlay {UNDERLAY_NET6}")
            if self.network6.prefixlen > 62:
                raise BadOptionError("--network6", f"{self.network6} is too small (a /62 or "
                                     "larger gives /64 subnets)")
        return self


# -- the daemon table ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Site:
    """Where one daemon instance runs: a namespace, its address and its private dir."""

    host: str  # "h1".. or "underlay"
    netns: str
    ip: ipaddress.IPv4Address
    dir: Path  # <state-dir>/<host>


@dataclass(frozen=True, slots=True)
class Context:
    """Cluster-wide facts an argv builder or probe needs."""

    options: Options
    bin_dir: Path  # where weft's console scripts live (next to the Python running us)
    store_ip: ipaddress.IPv4Address
    dns_ip: ipaddress.IPv4Address
    store_endpoint: str = ""  # set when the daemons were moved to another store

    @property
    def endpoint(self) -> str:
        """The store URL the daemons use: the sandbox's own, or the one they were moved to
        (``weftctl sandbox start TARGET --store-endpoint URL``)."""
        return self.store_endpoint or f"http://{self.store_ip}:{STORE_PORT}"


@dataclass(frozen=True, slots=True)
class Probe:
    """A health check to run inside ``Site.netns``.

    ``http``: GET ``http://ip:port/path`` must answer 200. ``tcp``: connect.
    ``dns``: an SOA query for ``name`` must get an answer. ``file``: ``path`` exists.
    """

    kind: Literal["http", "tcp", "dns", "file"]
    ip: str = ""
    port: int = 0
    path: str = "/"
    name: str = ""


@dataclass(frozen=True, slots=True)
class DaemonSpec:
    """One row of the daemon table."""

    name: str
    placement: Placement
    missing: Callable[[Options], str | None]  # why it is absent from this build, or None
    argv: Callable[[Context, Site], list[str]]
    probes: Callable[[Context, Site], Sequence[Probe]]
    ready_within: float = 20.0  # seconds ``up`` waits for its probes
    # files written before each start (path -> text), e.g. a config the argv names
    files: Callable[[Context, Site], Mapping[Path, str]] = lambda ctx, site: {}


def _module_missing(module: str) -> Callable[[Options], str | None]:
    def missing(options: Options) -> str | None:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        return None if found else f"{module} is not in this build yet"
    return missing


def _store_missing(options: Options) -> str | None:
    if options.store == "etcd":
        return None if shutil.which("etcd") else "etcd is not installed (apt install etcd-server)"
    return _module_missing("overlay.cli.store_cmd")(options)


def _store_argv(ctx: Context, site: Site) -> list[str]:
    listen = f"{site.ip}:{STORE_PORT}"
    data = site.dir / "store"
    if ctx.options.store == "etcd":
        client = f"http://{listen}"
        peer = f"http://{site.ip}:{STORE_PORT + 1}"
        return ["etcd", "--name", "sandbox", "--data-dir", str(data),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"sandbox={peer}", "--log-level", "warn"]
    return [str(ctx.bin_dir / "weftctl"), "store", "serve", "--listen", listen,
            "--data-dir", str(data)]


def _store_probes(ctx: Context, site: Site) -> Sequence[Probe]:
    return (Probe("tcp", str(site.ip), STORE_PORT),)


def subnet_file(site: Site) -> Path:
    return site.dir / "subnet.env"


def _flanneld_argv(ctx: Context, site: Site) -> list[str]:
    return [str(ctx.bin_dir / "flanneld"), "-etcd-endpoints", ctx.endpoint,
            "-iface", "eth0", "-subnet-file", str(subnet_file(site)),
            "-subnet-lease-ttl", str(ctx.options.lease_ttl),
            "-healthz-ip", "127.0.0.1", "-healthz-port", str(FLANNELD_HEALTHZ_PORT)]


def _flanneld_probes(ctx: Context, site: Site) -> Sequence[Probe]:
    return (Probe("file", path=str(subnet_file(site))),
            # /readyz: lease held, data path attached, subnet.env written by this run (a
            # restarted flanneld finds the old file; /healthz only says "alive")
            Probe("http", "127.0.0.1", FLANNELD_HEALTHZ_PORT, "/readyz"))


def _dnsd_argv(ctx: Context, site: Site) -> list[str]:
    # --ipv6: every address of h1, both families, on one socket (SkyDNS's ":53"); each
    # reply leaves from the address queried, so a container may ask either family
    addr = f"[::]:{DNS_PORT}" if ctx.options.ipv6 else f"{site.ip}:{DNS_PORT}"
    return [str(ctx.bin_dir / "dnsd"), "-addr", addr, "-domain", DOMAIN,
            "-etcd-endpoints", ctx.endpoint, "-metrics-port", str(DNSD_METRICS_PORT)]


def _dnsd_probes(ctx: Context, site: Site) -> Sequence[Probe]:
    # /readyz: the index is loaded and the store watch is up (/healthz only says "alive")
    return (Probe("dns", str(site.ip), DNS_PORT, name=DOMAIN),
            Probe("http", str(site.ip), DNSD_METRICS_PORT, "/readyz"))


def agent_machine_id(site: Site) -> str:
    """A stable machine id per sandbox host (every host shares /etc/machine-id)."""
    return hashlib.sha1(site.netns.encode()).hexdigest()[:32]


def agent_cni_conf(site: Site) -> Path:
    return site.dir / "agent-cni.conflist"


def _agent_files(ctx: Context, site: Site) -> Mapping[Path, str]:
    # the same network, subnet.env and IPAM dir as the sandbox's own containers
    conf = {"cniVersion": "1.0.0", "name": CNI_NETWORK_NAME, "plugins": [
        {"type": "weft", "subnetFile": str(subnet_file(site)), "dataDir": str(site.dir / "cni")}]}
    return {agent_cni_conf(site): json.dumps(conf, indent=2) + "\n"}


def _agent_argv(ctx: Context, site: Site) -> list[str]:
    return [str(ctx.bin_dir / "weftctl"), "agent", "-etcd-endpoints", ctx.endpoint,
            "-machine-id", agent_machine_id(site), "-public-ip", str(site.ip),
            "-port", str(AGENT_PORT), "-metadata", f"host={site.host}",
            "-state-dir", str(site.dir / "agent"), "-runner", "supervisor",
            "-cni-conf", str(agent_cni_conf(site)),
            "-cni-path", f"{ctx.bin_dir}:/usr/lib/cni", "-domain", DOMAIN,
            # unit namespaces named after the host's, so `down` removes any left behind
            "-netns-prefix", site.netns]


def _agent_probes(ctx: Context, site: Site) -> Sequence[Probe]:
    return (Probe("http", str(site.ip), AGENT_PORT, "/healthz"),)


# Order matters: ``up`` starts them top to bottom and waits for each to be healthy.
# The store is first (everyone needs it); the network config is written right after it.
DAEMONS: tuple[DaemonSpec, ...] = (
    DaemonSpec("store", "underlay", _store_missing, _store_argv, _store_probes),
    DaemonSpec("flanneld", "each-host", _module_missing("overlay.cli.flanneld"), _flanneld_argv,
               _flanneld_probes, ready_within=30.0),
    # dnsd sits on h1's underlay address: every container reaches it without NAT
    # (h1 routes replies back over the overlay), and the root namespace stays untouched.
    DaemonSpec("dnsd", "first-host", _module_missing("dnsd.cli"), _dnsd_argv, _dnsd_probes),
    # the scheduler agent: after flanneld (Network=true units need subnet.env) and dnsd
    DaemonSpec("agent", "each-host", _module_missing("overlay.cli.agent_cmd"), _agent_argv,
               _agent_probes, files=_agent_files),
)


def daemon_spec(name: str) -> DaemonSpec:
    for spec in DAEMONS:
        if spec.name == name:
            return spec
    raise UnknownTargetError(name, f"no such daemon (known: {', '.join(d.name for d in DAEMONS)})")


# -- recorded state -----------------------------------------------------------


@dataclass(slots=True)
class DaemonRecord:
    name: str
    host: str  # "underlay" or "h1"..
    netns: str
    pid: int
    start_time: int  # /proc/<pid>/stat field 22, guards against pid reuse
    argv: list[str]
    log: str
    killed: bool = False

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.host}"


@dataclass(slots=True)
class HostRecord:
    name: str
    netns: str
    ip: str
    dir: str
    ip6: str = ""  # IPv6 underlay address (--ipv6)


@dataclass(slots=True)
class ContainerRecord:
    name: str  # "c1"
    host: str  # "h1"
    netns: str
    ip: str = ""  # CIDR as the plugin returned it, e.g. "10.244.3.2/24"
    dns: str = ""  # "c1.h1.skydns.local"
    ip6: str = ""  # IPv6 CIDR (--ipv6), e.g. "fd00:10:244:3::2/64"

    @property
    def ident(self) -> str:
        return f"{self.name}.{self.host}"


@dataclass(slots=True)
class State:
    """Everything ``up`` made; saved as JSON in the state dir."""

    tag: str
    options: dict[str, object]
    underlay_ns: str
    store_ip: str
    dns_ip: str
    hosts: list[HostRecord] = field(default_factory=list)
    containers: list[ContainerRecord] = field(default_factory=list)
    daemons: list[DaemonRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # steps absent from this build
    complete: bool = False
    store_endpoint: str = ""  # the store the daemons were moved to ("" = the sandbox's own)
    dns_ip6: str = ""  # --ipv6: dnsd's IPv6 address (h1's), "" without

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "state.json") -> State:
        try:
            raw = json.loads(text)
            return cls(
                tag=raw["tag"], options=raw["options"], underlay_ns=raw["underlay_ns"],
                store_ip=raw["store_ip"], dns_ip=raw["dns_ip"],
                hosts=[HostRecord(**h) for h in raw["hosts"]],
                containers=[ContainerRecord(**c) for c in raw["containers"]],
                daemons=[DaemonRecord(**d) for d in raw["daemons"]],
                skipped=list(raw.get("skipped", [])), complete=bool(raw.get("complete")),
                store_endpoint=str(raw.get("store_endpoint", "")),
                dns_ip6=str(raw.get("dns_ip6", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SandboxError(where, f"unreadable sandbox state ({exc})") from exc

    def host(self, name: str) -> HostRecord:
        for h in self.hosts:
            if h.name == name:
                return h
        raise UnknownTargetError(name, "no such host (hosts: "
                                 + ", ".join(h.name for h in self.hosts) + ")")

    def namespace_of(self, target: str) -> str:
        """Resolve ``h2``, ``c1.h2``, ``h2/c1``, ``c1.h2.skydns.local`` or ``underlay``."""
        if target in ("underlay", "ul"):
            return self.underlay_ns
        for h in self.hosts:
            if h.name == target:
                return h.netns
        wanted = target.rstrip(".")
        for c in self.containers:
            if wanted in (c.ident, f"{c.host}/{c.name}", c.dns.rstrip(".")):
                return c.netns
        names = ["underlay", *(h.name for h in self.hosts),
                 *(c.ident for c in self.containers)]
        raise UnknownTargetError(target, "no such host or container (try: "
                                 + ", ".join(names) + ")")

    def daemon(self, ident: str) -> DaemonRecord:
        name, _, host = ident.partition("@")
        matches = [d for d in self.daemons if d.name == name and host in ("", d.host)]
        if len(matches) == 1:
            return matches[0]
        raise UnknownTargetError(ident, "no such daemon (running: "
                                 + ", ".join(d.ident for d in self.daemons) + ")")

    def daemons_on(self, host: str) -> list[DaemonRecord]:
        return [d for d in self.daemons if d.host == host]

    def daemons_for(self, target: str) -> list[DaemonRecord]:
        """What ``kill``/``start`` act on: a host's (or the underlay's) daemons, or one daemon.

        ``h2`` = every daemon on h2; ``underlay`` = the store; ``store``, ``dnsd``
        or ``flanneld@h2`` = that daemon (a name running on several hosts needs
        its ``@host``).
        """
        if target in ("underlay", "ul"):
            target = "underlay"
        if target == "underlay" or any(h.name == target for h in self.hosts):
            return self.daemons_on(target)
        return [self.daemon(target)]


def dns_name(container: str, host: str, domain: str = DOMAIN) -> str:
    return f"{container}.{host}.{domain.rstrip('.')}"


def reverse_name(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The in-addr.arpa (ip6.arpa) name a PTR record for ``ip`` lives at (SkyDNS:
    /skydns/arpa/in-addr/.., /skydns/arpa/ip6/..)."""
    return ip.reverse_pointer


def dns_records(c: ContainerRecord) -> list[tuple[str, str]]:
    """(name, host) records for a container: its A and PTR; with an IPv6 address also
    AAAA and the ip6.arpa PTR. A dual-stack name holds its records under two child
    keys (``v4.<name>``, ``v6.<name>``), SkyDNS's idiom for several records at one name
    (a SkyDNS key is a value or a directory, never both)."""
    out: list[tuple[str, str]] = []
    addrs = [ipaddress.ip_interface(a).ip for a in (c.ip, c.ip6) if a]
    for ip in addrs:
        name = c.dns if len(addrs) == 1 else f"v{ip.version}.{c.dns}"
        out += [(name, str(ip)), (reverse_name(ip), c.dns)]
    return out


def resolv_conf(dns_ip: str, domain: str = DOMAIN, dns_ip6: str = "") -> str:
    """A container's /etc/resolv.conf: the sandbox's dnsd, the cluster domain as search.

    ``dns_ip6`` (``--ipv6``) is the same dnsd over IPv6, listed after the IPv4 one.
    ``ndots:2`` sends ``c1.h2`` (one dot) through the search list first, so it
    resolves as ``c1.h2.skydns.local`` without a wasted out-of-zone query.
    """
    servers = "".join(f"nameserver {ip}\n" for ip in (dns_ip, dns_ip6) if ip)
    return (f"# written by weftctl sandbox: the sandbox's dnsd\n"
            f"{servers}search {domain.rstrip('.')}\noptions ndots:2\n")


LeaseState = Literal["none", "unknown", "expired", "live"]


def lease_state(subnet: str, leases: Mapping[str, int | None] | None
                ) -> tuple[LeaseState, int | None]:
    """Whether a host's subnet is leased in the store, and the TTL left (pure).

    ``subnet``: FLANNEL_SUBNET from the host's subnet.env (``10.244.4.1/24``) or
    "-"; ``leases``: the store's live leases, subnet -> TTL left (None: no TTL),
    or None when the store did not answer ("unknown"). A subnet.env outlives
    its lease (a killed host): only the store says whether the subnet is live.
    """
    if subnet in ("", "-"):
        return "none", None
    if leases is None:
        return "unknown", None
    try:
        net = str(ipaddress.IPv4Interface(subnet).network)
    except ValueError:
        return "unknown", None
    if net not in leases:
        return "expired", None
    return "live", leases[net]


def lease_column(subnet: str, leases: Mapping[str, int | None] | None) -> str:
    """``lease_state`` as ``status`` prints it."""
    state, ttl = lease_state(subnet, leases)
    if state == "none":
        return "-"
    if state == "unknown":
        return "? (store unreachable)"
    if state == "live" and ttl is not None:
        return f"live, {ttl}s left"
    return state


# -- rendering ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostRow:
    host: str
    ip: str
    subnet: str
    vtep_mac: str
    containers: str
    lease: str = ""  # lease_column(); "" when not asked (``up``)
    subnet6: str = ""  # FLANNEL_IPV6_SUBNET (``up --ipv6``), "" without


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain left-aligned text table."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def host_table(rows: Sequence[HostRow]) -> str:
    if any(r.subnet6 for r in rows):  # --ipv6: the IPv6 half beside the IPv4 one
        rows = [HostRow(r.host, r.ip, f"{r.subnet} {r.subnet6 or '-'}", r.vtep_mac,
                        r.containers, r.lease) for r in rows]
    if any(r.lease for r in rows):
        return render_table(("host", "underlay ip", "subnet", "lease", "vtep mac", "containers"),
                            [(r.host, r.ip, r.subnet, r.lease, r.vtep_mac, r.containers)
                             for r in rows])
    return render_table(("host", "underlay ip", "subnet", "vtep mac", "containers"),
                        [(r.host, r.ip, r.subnet, r.vtep_mac, r.containers) for r in rows])
