"""Sandbox shell: builds, inspects and tears down a weft cluster in network namespaces.

Theory of operation
-------------------
``up`` builds a ``Testbed`` (underlay namespace with the store, host namespaces
h1..hN), then walks ``model.DAEMONS``: each daemon is started *detached* (own
session, stdin closed, output to ``<state-dir>/logs/<daemon>@<host>.log``) with
``ip netns exec``, and ``up`` waits for its probes before moving on. Between the
daemons come the one-shot steps: the network config after the store, then one
container per host through the ``weft`` CNI plugin, its DNS name, and the proof
(a cross-host ping and a ``dig`` from a container). A daemon or step whose code is
not in this build yet is reported as skipped, never imitated.

Everything is recorded in ``state.json`` before and while it is created, so a
failure or Ctrl-C halfway is undone, and the later commands (``status``,
``exec``, ``logs``, ``kill``, ``down``) work after ``up`` has returned. A flock on
``<state-dir>/lock`` plus the recorded namespaces make a second ``up`` refuse.

Every command that touches the network runs with ``ip -n NS`` or inside
``ip netns exec NS``: the root namespace is never modified.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Protocol, TextIO

from overlay import subnetfile
from overlay.sandbox import demo
from overlay.sandbox.model import (
    CNI_NETWORK_NAME,
    DAEMONS,
    DEFAULT_STATE_DIR,
    DOMAIN,
    NETWORK6,
    AlreadyUpError,
    ContainerRecord,
    Context,
    DaemonRecord,
    DaemonSpec,
    HostRecord,
    HostRow,
    NotUpError,
    Options,
    Probe,
    SandboxError,
    Site,
    State,
    daemon_spec,
    dns_name,
    dns_records,
    host_table,
    lease_column,
    lease_state,
    render_table,
    resolv_conf,
    subnet_file,
)
from overlay.testbed import Testbed, delete_netns, list_netns, netns_exists, run

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
NETNS_ETC = Path("/etc/netns")  # `ip netns exec NS` bind-mounts /etc/netns/NS/* over /etc/*
PARALLEL = 4  # concurrent one-shot commands (CNI ADD, DNS writes) on a small machine
LOCK_FILE = "lock"
CLUSTER_KEY_FILE = "cluster.key"  # up --encrypt: the udp backend's key


def bin_dir() -> Path:
    """Where weft's console scripts are: next to the interpreter running weftctl."""
    return Path(sys.executable).parent


def _module_present(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


# -- state dir ------------------------------------------------------------------


def load_state(state_dir: Path) -> State | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    return State.from_json(path.read_text(), str(path))


def require_state(state_dir: Path) -> State:
    state = load_state(state_dir)
    if state is None:
        raise NotUpError(str(state_dir), "no sandbox here (start one with `weftctl sandbox up`)")
    return state


def save_state(state_dir: Path, state: State) -> None:
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, state_dir / STATE_FILE)


def is_up(state: State) -> bool:
    """A recorded sandbox counts as up while any of its namespaces exists."""
    return netns_exists(state.underlay_ns) or any(netns_exists(h.netns) for h in state.hosts)


def remove_state_dir(state_dir: Path) -> None:
    """Delete the state dir, but only if it is ours (holds our lock or state file)."""
    if not state_dir.exists():
        return
    if not ((state_dir / STATE_FILE).exists() or (state_dir / LOCK_FILE).exists()):
        raise SandboxError(str(state_dir), "not a sandbox state dir; refusing to delete it")
    shutil.rmtree(state_dir)


@contextlib.contextmanager
def _up_lock(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyUpError(str(state_dir), "another `weftctl sandbox up` is running "
                                 "on this state dir right now") from None
        yield
    finally:
        os.close(fd)


# -- processes --------------------------------------------------------------------


def proc_start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (clock ticks since boot), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def alive(d: DaemonRecord) -> bool:
    return proc_start_time(d.pid) == d.start_time


def spawn_detached(netns: str, argv: Sequence[str], logfile: Path) -> tuple[int, int]:
    """Start ``argv`` in ``netns`` in its own session, outliving us; return (pid, start)."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{bin_dir()}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True)
    # ``ip netns exec`` execs the daemon in place, so this pid is the daemon's.
    proc.returncode = 0  # we never wait for it: keep Popen.__del__ quiet
    start = proc_start_time(proc.pid)
    return proc.pid, start if start is not None else -1


def stop_daemons(daemons: Sequence[DaemonRecord], sig: int = signal.SIGTERM,
                 grace: float = 3.0) -> None:
    """Signal each live daemon's process group; SIGKILL whatever outlives ``grace``."""
    live = [d for d in daemons if alive(d)]
    for d in live:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(d.pid, sig)
    deadline = time.monotonic() + grace
    while any(alive(d) for d in live) and time.monotonic() < deadline:
        time.sleep(0.05)
    for d in live:
        if alive(d):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(d.pid, signal.SIGKILL)


def run_probes(netns: str, probes: Sequence[Probe]) -> list[tuple[bool, str]]:
    """Run probes inside ``netns`` (see ``overlay.sandbox.probe``)."""
    if not probes:
        return []
    payload = json.dumps([asdict(p) for p in probes])
    try:
        proc = run(["ip", "netns", "exec", netns, sys.executable, "-m",
                    "overlay.sandbox.probe"], check=False, input=payload, timeout=10)
    except subprocess.TimeoutExpired:
        return [(False, "probe timed out")] * len(probes)
    if proc.returncode != 0:
        return [(False, f"probe failed: {proc.stderr.strip()[-200:]}")] * len(probes)
    return [(bool(ok), str(detail)) for ok, detail in json.loads(proc.stdout)]


def log_tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


# -- the cluster ---------------------------------------------------------------------


class Writer(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


@dataclass
class Unbreakable:
    """Output that outlives its reader: ``up | head`` must not abort a half-built sandbox."""

    out: Writer
    closed: bool = False

    def write(self, text: str, /) -> int:
        if not self.closed:
            try:
                self.out.write(text)
            except OSError:  # BrokenPipeError and friends: stop writing, keep working
                self.closed = True
        return len(text)

    def flush(self) -> None:
        if not self.closed:
            try:
                self.out.flush()
            except OSError:
                self.closed = True


@dataclass
class Progress:
    """Prints one line per step with the time since ``up`` started."""

    out: Writer
    t0: float = field(default_factory=time.monotonic)

    def line(self, text: str) -> None:
        self.out.write(f"[{time.monotonic() - self.t0:5.1f}s] {text}\n")
        self.out.flush()


class Sandbox:
    """A recorded sandbox and the operations on it."""

    def __init__(self, state_dir: Path, state: State) -> None:
        self.state_dir = state_dir
        self.state = state

    # -- sites and context --

    @property
    def options(self) -> Options:
        o = self.state.options
        return Options(hosts=int(str(o["hosts"])), store=str(o["store"]),
                       backend=str(o["backend"]), state_dir=self.state_dir,
                       lease_ttl=int(str(o["lease_ttl"])),
                       network=ipaddress.IPv4Network(str(o["network"])),
                       ipv6=bool(o.get("ipv6", False)),
                       network6=ipaddress.IPv6Network(str(o.get("network6", NETWORK6))),
                       encrypt=bool(o.get("encrypt", False)))

    @property
    def context(self) -> Context:
        return Context(self.options, bin_dir(), ipaddress.IPv4Address(self.state.store_ip),
                       ipaddress.IPv4Address(self.state.dns_ip), self.state.store_endpoint)

    def underlay_site(self) -> Site:
        return Site("underlay", self.state.underlay_ns,
                    ipaddress.IPv4Address(self.state.store_ip), self.state_dir / "underlay")

    def host_site(self, h: HostRecord) -> Site:
        return Site(h.name, h.netns, ipaddress.IPv4Address(h.ip), Path(h.dir))

    def sites_for(self, spec: DaemonSpec) -> list[Site]:
        if spec.placement == "underlay":
            return [self.underlay_site()]
        hosts = self.state.hosts if spec.placement == "each-host" else self.state.hosts[:1]
        return [self.host_site(h) for h in hosts]

    def site_of(self, d: DaemonRecord) -> Site:
        if d.host == "underlay":
            return self.underlay_site()
        return self.host_site(self.state.host(d.host))

    def save(self) -> None:
        save_state(self.state_dir, self.state)

    # -- health --

    def health(self, d: DaemonRecord) -> tuple[bool, str]:
        if d.killed:
            return False, "killed (weftctl sandbox kill)"
        if not alive(d):
            return False, f"process {d.pid} is gone (see weftctl sandbox logs {d.ident})"
        spec = next((s for s in DAEMONS if s.name == d.name), None)
        if spec is None:
            return True, "running"
        site = self.site_of(d)
        probes = spec.probes(self.context, site)
        # file probes need no namespace: check them here first, and only spawn the
        # in-namespace prober once they pass (on 2 busy cores every process counts)
        missing = [p.path for p in probes if p.kind == "file" and not Path(p.path).exists()]
        if missing:
            return False, "waiting for " + ", ".join(missing)
        results = run_probes(site.netns, [p for p in probes if p.kind != "file"])
        bad = [detail for ok, detail in results if not ok]
        return (False, "; ".join(bad)) if bad else (True, "healthy")

    def wait_healthy(self, records: Sequence[DaemonRecord], within: float) -> None:
        deadline = time.monotonic() + within
        pending = list(records)
        last: dict[str, str] = {}
        while pending:
            for d in list(pending):
                if not alive(d):
                    raise SandboxError(d.ident, f"exited during start-up; log {d.log}:\n"
                                       + log_tail(d.log))
                ok, detail = self.health(d)
                if ok:
                    pending.remove(d)
                else:
                    last[d.ident] = detail
            if pending and time.monotonic() > deadline:
                d = pending[0]
                raise SandboxError(d.ident, f"not healthy after {within:.0f} s "
                                   f"({last.get(d.ident, '?')}); log {d.log}:\n"
                                   + log_tail(d.log))
            if pending:
                time.sleep(0.2)

    # -- daemons --

    def start_daemon(self, spec: DaemonSpec, site: Site,
                     replacing: DaemonRecord | None = None) -> DaemonRecord:
        """Start one daemon and record it (in ``replacing``'s place when restarting)."""
        site.dir.mkdir(parents=True, exist_ok=True)
        argv = spec.argv(self.context, site)
        for path, text in spec.files(self.context, site).items():
            path.write_text(text)
        logfile = self.state_dir / "logs" / f"{spec.name}@{site.host}.log"
        pid, start = spawn_detached(site.netns, argv, logfile)
        record = DaemonRecord(spec.name, site.host, site.netns, pid, start, argv, str(logfile))
        if replacing is not None and replacing in self.state.daemons:
            self.state.daemons[self.state.daemons.index(replacing)] = record
        else:
            self.state.daemons.append(record)
        self.save()
        return record

    # -- store-side one-shot steps (run inside the underlay namespace) --

    def in_underlay(self, argv: Sequence[str], timeout: float = 15) -> str:
        proc = run(["ip", "netns", "exec", self.state.underlay_ns, *argv], check=False,
                   timeout=timeout)
        if proc.returncode != 0:
            raise SandboxError(" ".join(argv[:3]), (proc.stderr or proc.stdout).strip())
        return proc.stdout

    def cluster_key(self) -> Path:
        """``up --encrypt``: the udp backend's cluster key, written once (0600, 32 random
        bytes in hex) in the state dir, which every host's flanneld reads (the hosts
        share this machine's filesystem); ``down`` removes it with the state dir."""
        path = self.state_dir / CLUSTER_KEY_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        return path.resolve()

    def write_network_config(self) -> str:
        o = self.options
        ctx = self.context
        key = [str(self.cluster_key())] if o.encrypt else []
        if _module_present("overlay.cli.network_cmd"):
            v6 = ["--ipv6-network", str(o.network6)] if o.ipv6 else []
            self.in_underlay([str(ctx.bin_dir / "weftctl"), "network", "set",
                              "--network", str(o.network), *v6, "--backend", o.backend,
                              *(f"--encryption-key-file={k}" for k in key),
                              "-etcd-endpoints", ctx.endpoint])
            return "weftctl network set"
        backend: dict[str, object] = {"Type": o.backend}
        if key:
            backend["Encryption"] = {"KeyFile": key[0]}
        config = json.dumps({"Network": str(o.network), "Backend": backend})
        self.in_underlay(["etcdctl", "--endpoints", ctx.endpoint, "put",
                          "/coreos.com/network/config", config])
        return "etcdctl put (weftctl network set is not in this build yet)"

    def register_dns(self, c: ContainerRecord) -> str:
        """The container's A record and its PTR (``<reversed ip>.in-addr.arpa`` -> name).

        The A record goes through ``weftctl dns set`` (what an operator would type);
        the PTR through one ``etcdctl put`` when etcdctl is there: a Go binary starts
        in milliseconds where a second Python process costs a second on a busy box.
        """
        ctx = self.context
        records = dns_records(c)  # A + PTR; with --ipv6 also AAAA + ip6.arpa PTR
        how = "etcdctl put (weftctl dns is not in this build yet)"
        if _module_present("dnsd.admin"):
            name, host = records.pop(0)
            self.in_underlay([str(ctx.bin_dir / "weftctl"), "dns", "set", name, "--host",
                              host, "-etcd-endpoints", ctx.endpoint])
            how = "weftctl dns set"
            if shutil.which("etcdctl") is None:
                for name, host in records:
                    self.in_underlay([str(ctx.bin_dir / "weftctl"), "dns", "set", name,
                                      "--host", host, "-etcd-endpoints", ctx.endpoint])
                return how
        for name, host in records:
            key = "/skydns/" + "/".join(reversed(name.rstrip(".").split(".")))
            self.in_underlay(["etcdctl", "--endpoints", ctx.endpoint, "put", key,
                              json.dumps({"host": host})])
        return how

    # -- containers (CNI) --

    def cni_conf(self, h: HostRecord) -> dict[str, object]:
        return {
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK_NAME,
            "type": "weft",
            "subnetFile": str(subnet_file(self.host_site(h))),
            "dataDir": str(Path(h.dir) / "cni"),
        }

    def cni(self, command: str, h: HostRecord, c: ContainerRecord) -> dict[str, object]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"{self.state.tag}-{c.ident}",
            "CNI_NETNS": f"/run/netns/{c.netns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": f"{bin_dir()}:/usr/lib/cni",
        }
        argv = ["ip", "netns", "exec", h.netns, str(bin_dir() / "weft")]
        proc = subprocess.run(argv, input=json.dumps(self.cni_conf(h)), capture_output=True,
                              text=True, env=env, timeout=30)
        if proc.returncode != 0:
            raise SandboxError(f"CNI {command} {c.ident}",
                               (proc.stdout + proc.stderr).strip()[-500:])
        if not proc.stdout.strip():
            return {}
        result: dict[str, object] = json.loads(proc.stdout)
        return result

    # -- views --

    def rows(self, leases: dict[str, int | None] | None = None,
             with_leases: bool = False) -> list[HostRow]:
        """The host table; ``with_leases`` adds each host's lease as the store sees it."""
        rows = []
        for h in self.state.hosts:
            env_path = subnet_file(self.host_site(h))
            subnet, subnet6 = "-", ""
            if env_path.exists():
                env_vars = subnetfile.parse_vars(env_path.read_text())
                subnet = env_vars.get("FLANNEL_SUBNET", "-")
                subnet6 = env_vars.get("FLANNEL_IPV6_SUBNET", "")
            containers = " ".join(
                f"{c.name} {c.ip.split('/')[0] or '-'}"
                + (f" {c.ip6.split('/')[0]}" if c.ip6 else "") + f" {c.dns}"
                for c in self.state.containers if c.host == h.name) or "-"
            lease = lease_column(subnet, leases) if with_leases else ""
            rows.append(HostRow(h.name, h.ip, subnet, vtep_mac(h.netns), containers, lease,
                                subnet6))
        return rows

    def live_leases(self) -> dict[str, int | None] | None:
        """The store's subnet leases (subnet -> TTL left), None when the store does not answer."""
        if not _module_present("overlay.cli.network_cmd") or not netns_exists(
                self.state.underlay_ns):
            return None
        try:
            proc = run(["ip", "netns", "exec", self.state.underlay_ns,
                        str(bin_dir() / "weftctl"), "leases", "--json",
                        "-etcd-endpoints", self.context.endpoint], check=False, timeout=8)
        except subprocess.TimeoutExpired:
            return None
        if proc.returncode != 0:
            return None
        leases: dict[str, int | None] = {}
        for line in proc.stdout.splitlines():
            row = json.loads(line)
            ttl = row.get("ttl_seconds")
            if row.get("backend") != "(malformed)" and (ttl is None or ttl >= 0):
                leases[str(row["subnet"])] = ttl
        return leases

    def daemon_rows(self) -> list[dict[str, object]]:
        """Each daemon's name, host, pid, state (running/killed/dead) and probed health."""
        rows: list[dict[str, object]] = []
        for d in self.state.daemons:
            ok, detail = self.health(d)
            state = "killed" if d.killed else ("running" if alive(d) else "dead")
            rows.append({"name": d.name, "host": d.host, "pid": d.pid, "state": state,
                         "healthy": ok, "health": detail})
        return rows


def vtep_mac(netns: str) -> str:
    """MAC of the host's flannel.<VNI> device, '-' when it has none (host-gw, not up)."""
    if not netns_exists(netns):
        return "-"
    proc = run(["ip", "-j", "-n", netns, "link", "show"], check=False)
    if proc.returncode != 0:
        return "-"
    for link in json.loads(proc.stdout or "[]"):
        if str(link.get("ifname", "")).startswith("flannel."):
            return str(link.get("address", "-"))
    return "-"


# -- commands ---------------------------------------------------------------------------


def up(options: Options, stdout: Writer) -> int:
    """``weftctl sandbox up``: build the cluster, print the table and the proof."""
    options.check()
    out = Unbreakable(stdout)
    state_dir = options.state_dir
    with _up_lock(state_dir):
        existing = load_state(state_dir)
        if existing is not None:
            if is_up(existing):
                raise AlreadyUpError(str(state_dir), f"a sandbox ({existing.tag}, "
                                     f"{len(existing.hosts)} hosts) is already up; "
                                     "see `weftctl sandbox status`, or `weftctl sandbox "
                                     "down` first")
            out.write(f"removing a stale sandbox record ({existing.tag}) from {state_dir}\n")
            _teardown(Sandbox(state_dir, existing))
            for child in state_dir.iterdir():
                if child.name != LOCK_FILE:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        elif any(p.name != LOCK_FILE for p in state_dir.iterdir()):
            raise SandboxError(str(state_dir), "exists and is not empty; choose another "
                               "--state-dir")
        return _build(options, out)


def _build(options: Options, out: Writer) -> int:
    progress = Progress(out)
    tb = Testbed(ipv6=options.ipv6)
    extra: dict[str, object] = (
        {"ipv6": True, "network6": str(options.network6)} if options.ipv6 else {})
    if options.encrypt:
        extra["encrypt"] = True
    state = State(
        tag=tb.tag,
        options={"hosts": options.hosts, "store": options.store, "backend": options.backend,
                 "lease_ttl": options.lease_ttl, "network": str(options.network), **extra},
        underlay_ns=tb.underlay_ns, store_ip=str(tb.underlay_ip), dns_ip="",
    )
    sb = Sandbox(options.state_dir, state)
    sb.save()  # recorded before anything exists, so a crash can always be cleaned up
    progress.line(f"weft sandbox {tb.tag}: {options.hosts} hosts, {options.store} store, "
                  f"{options.backend} backend{' (encrypted)' if options.encrypt else ''}, "
                  f"lease TTL {options.lease_ttl} s, "
                  f"state in {options.state_dir}")
    try:
        tb.build(options.hosts)
        atexit.unregister(tb.destroy)  # the sandbox outlives this command
        for name, host in tb.hosts.items():
            hdir = options.state_dir / name
            hdir.mkdir(parents=True, exist_ok=True)
            state.hosts.append(HostRecord(name, host.netns, str(host.ip), str(hdir),
                                          str(host.ip6) if host.ip6 else ""))
        state.dns_ip = state.hosts[0].ip
        state.dns_ip6 = state.hosts[0].ip6  # "" without --ipv6
        sb.save()
        progress.line(f"namespaces: underlay {tb.underlay_ns} (ul0 {tb.underlay_ip}/24"
                      + (f", {tb.underlay_ip6}/64" if options.ipv6 else "") + "), hosts "
                      + ", ".join(f"{h.name} {h.ip}" + (f" {h.ip6}" if h.ip6 else "")
                                  for h in state.hosts))
        started = _start_daemons(sb, progress)
        if "flanneld" in started:
            _containers(sb, progress)
        state.complete = True
        sb.save()
        out.write("\n" + host_table(sb.rows()) + "\n\n")
        proven = _proof(sb, out, progress)
        if {"agent", "flanneld", "dnsd"} <= started and sb.state.containers:
            proven = demo.start_web(sb.state, sb.state_dir, out) and proven
            progress.line("scheduler: web.service started, resolved and answering"
                          if proven else "scheduler demo FAILED (see above)")
        out.write("\nnext: weftctl sandbox status | exec c1.h1 -- ip addr | logs flanneld@h2 "
                  "| kill h2 | start h2 | down")
        if options.state_dir != DEFAULT_STATE_DIR:
            out.write(f"   (add --state-dir {options.state_dir})")
        out.write("\n")
        out.flush()
        return 0 if proven else 1
    except BaseException:
        _teardown(sb)
        progress.line("failed; the sandbox was torn down")
        tb.destroy()
        with contextlib.suppress(SandboxError, OSError):
            remove_state_dir(options.state_dir)
        raise


def _start_daemons(sb: Sandbox, progress: Progress) -> set[str]:
    started: set[str] = set()
    for spec in DAEMONS:
        missing = spec.missing(sb.options)
        if missing and spec.name == "store":
            raise SandboxError("store", f"cannot start ({missing}); try --store "
                               + ("etcd" if sb.options.store == "embedded" else "embedded"))
        if missing:
            sb.state.skipped.append(f"{spec.name}: {missing}")
            sb.save()
            progress.line(f"{spec.name}: skipped, {missing}")
            continue
        sites = sb.sites_for(spec)
        records = [sb.start_daemon(spec, site) for site in sites]
        sb.wait_healthy(records, spec.ready_within)
        where = ", ".join(f"{s.host} ({s.ip})" for s in sites)
        progress.line(f"{spec.name} on {where}: healthy")
        started.add(spec.name)
        if spec.name == "store":
            how = sb.write_network_config()
            v6 = f" + {sb.options.network6}" if sb.options.ipv6 else ""
            progress.line(f"network config {sb.options.network}{v6} backend "
                          f"{sb.options.backend} written ({how})")
    return started


def _containers(sb: Sandbox, progress: Progress) -> None:
    if not _module_present("cni.main"):
        reason = "containers: skipped, cni.main (the weft CNI plugin) is not in this build yet"
        sb.state.skipped.append(reason)
        sb.save()
        progress.line(reason)
        return
    pairs = []
    for h in sb.state.hosts:
        c = ContainerRecord("c1", h.name, f"{sb.state.tag}-{h.name}c1",
                            dns=dns_name("c1", h.name, DOMAIN))
        run(["ip", "netns", "add", c.netns])
        sb.state.containers.append(c)
        sb.save()
        if sb.state.dns_ip:  # names resolve inside the container without @server
            etc = NETNS_ETC / c.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(
                resolv_conf(sb.state.dns_ip, DOMAIN, sb.state.dns_ip6))
        run(["ip", "-n", c.netns, "link", "set", "lo", "up"])
        pairs.append((h, c))

    # hosts are independent: one CNI ADD (and one DNS write) per host, in parallel
    def add(pair: tuple[HostRecord, ContainerRecord]) -> None:
        h, c = pair
        ips = sb.cni("ADD", h, c).get("ips")
        for entry in ips if isinstance(ips, list) else ():
            address = str(entry.get("address", "")) if isinstance(entry, dict) else ""
            if ":" in address:
                c.ip6 = c.ip6 or address
            elif address:
                c.ip = c.ip or address
        if sb.options.ipv6 and not c.ip6:
            c.ip6 = wire_ipv6_by_hand(sb, h, c)

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        list(pool.map(add, pairs))
    sb.save()
    progress.line("containers via the weft CNI plugin: " + ", ".join(
        f"{c.ident} {c.ip}" + (f" {c.ip6}" if c.ip6 else "") for c in sb.state.containers))
    named = [c for c in sb.state.containers if c.ip]
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        hows = set(pool.map(sb.register_dns, named))
    progress.line("DNS names registered (" + ", ".join(sorted(hows)) + "): "
                  + ", ".join(c.dns for c in named))


def wire_ipv6_by_hand(sb: Sandbox, h: HostRecord, c: ContainerRecord) -> str:
    """Give a container an IPv6 address when the CNI plugin gave none (a plugin without
    IPv6): ``<FLANNEL_IPV6_SUBNET>::2`` on its eth0, the gateway ``::1`` on cni0, as the
    plugin's host-local layout would. Returns the CIDR, "" if subnet.env has no IPv6."""
    env = subnetfile.read(subnet_file(sb.host_site(h)))
    if env.ipv6_subnet is None:
        return ""
    net6 = env.ipv6_subnet
    gw, addr = net6.network_address + 1, net6.network_address + 2
    have = run(["ip", "-n", h.netns, "-6", "addr", "show", "dev", "cni0"]).stdout
    if f" {gw}/" not in have:
        run(["ip", "-n", h.netns, "addr", "add", f"{gw}/{net6.prefixlen}", "dev", "cni0",
             "nodad"])
    run(["ip", "-n", c.netns, "addr", "add", f"{addr}/{net6.prefixlen}", "dev", "eth0",
         "nodad"])
    run(["ip", "-n", c.netns, "-6", "route", "add", "default", "via", str(gw)])
    return f"{addr}/{net6.prefixlen}"


def _until(argv: Sequence[str], ok: Callable[[subprocess.CompletedProcess[str]], bool],
           within: float) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` until ``ok`` says yes or ``within`` s pass; return the last run."""
    deadline = time.monotonic() + within
    while True:
        proc = run(argv, check=False)
        if ok(proc) or time.monotonic() > deadline:
            return proc
        time.sleep(0.1)


def _says(text: str) -> Callable[[subprocess.CompletedProcess[str]], bool]:
    return lambda proc: text in proc.stdout


def _proof(sb: Sandbox, out: Writer, progress: Progress) -> bool:
    """Print a cross-host ping and a dig from containers; False if either failed."""
    good = True
    cs = [c for c in sb.state.containers if c.ip]
    if len(cs) >= 2:
        src, dst = cs[0], cs[1]
        # --ipv6: the same ping over IPv6, container to container across hosts
        for ip in [dst.ip.split("/")[0], *([dst.ip6.split("/")[0]] if dst.ip6 else [])]:
            # routes appear within one lease-watch round; give them a few seconds
            _until(["ip", "netns", "exec", src.netns, "ping", "-n", "-c", "1", "-W", "1", ip],
                   lambda p: p.returncode == 0, 10)
            proc = run(["ip", "netns", "exec", src.netns, "ping", "-n", "-c", "3", "-i",
                        "0.2", "-W", "1", ip], check=False)
            good = good and proc.returncode == 0
            out.write(f"$ weftctl sandbox exec {src.ident} -- ping -c 3 {ip}   # {dst.dns}\n")
            out.write(proc.stdout + proc.stderr + "\n")
    else:
        out.write("proof: cross-host ping skipped (needs flanneld and the CNI plugin on two "
                  "hosts; skipped: " + "; ".join(sb.state.skipped) + ")\n")
    if any(d.name == "dnsd" for d in sb.state.daemons) and cs:
        src, target = cs[-1], cs[0]
        asks = [(sb.state.dns_ip, "A", target.ip)]
        if target.ip6:  # --ipv6: the AAAA, asked over IPv4 and over IPv6
            asks += [(sb.state.dns_ip, "AAAA", target.ip6)]
            if sb.state.dns_ip6:
                asks += [(sb.state.dns_ip6, "AAAA", target.ip6)]
        for server, qtype, cidr in asks:
            want = cidr.split("/")[0]
            proc = _until(["ip", "netns", "exec", src.netns, "dig", f"@{server}",
                           target.dns, qtype, "+time=2", "+tries=2", "+noall", "+answer",
                           "+stats"], _says(want), 5)
            good = good and want in proc.stdout
            out.write(f"$ weftctl sandbox exec {src.ident} -- dig @{server} "
                      f"{target.dns}" + (f" {qtype}" if qtype != "A" else "") + "\n")
            out.write(proc.stdout + proc.stderr)
    else:
        out.write("proof: dig skipped (needs dnsd and a container)\n")
    progress.line("proof done" if good else "proof FAILED: the sandbox is left up for "
                  "inspection (status, logs, exec; then down)")
    return good


def status(state_dir: Path, out: TextIO, as_json: bool = False) -> int:
    """The host table (with each lease as the store sees it) and every daemon's health.

    Exit 1 when a daemon that was not killed on purpose is unhealthy, or the
    namespaces are gone.
    """
    sb = Sandbox(state_dir, require_state(state_dir))
    up_now = is_up(sb.state)
    leases = sb.live_leases() if up_now else None
    rows = sb.rows(leases, with_leases=True)
    daemons = sb.daemon_rows()
    all_ok = all(d["healthy"] or d["state"] == "killed" for d in daemons)
    if as_json:
        doc = {
            "tag": sb.state.tag, "up": up_now, "state_dir": str(state_dir),
            "healthy": all_ok and up_now, "store_reachable": leases is not None,
            "options": sb.state.options,
            "hosts": [_host_json(sb, r, leases) for r in rows],
            "daemons": daemons,
            "skipped": list(sb.state.skipped),
        }
        out.write(json.dumps(doc, indent=2) + "\n")
        return 0 if all_ok and up_now else 1
    out.write(f"sandbox {sb.state.tag} ({'up' if up_now else 'namespaces gone'}), "
              f"state in {state_dir}\n\n")
    out.write(host_table(rows) + "\n\n")
    out.write(render_table(("daemon", "host", "pid", "state", "health"),
                           [(str(d["name"]), str(d["host"]), str(d["pid"]), str(d["state"]),
                             str(d["health"])) for d in daemons]) + "\n")
    for s in sb.state.skipped:
        out.write(f"not in this build: {s}\n")
    return 0 if all_ok and up_now else 1


def _host_json(sb: Sandbox, row: HostRow, leases: dict[str, int | None] | None
               ) -> dict[str, object]:
    state, ttl = lease_state(row.subnet, leases)
    return {"host": row.host, "underlay_ip": row.ip,
            "subnet": None if row.subnet == "-" else row.subnet,
            "subnet6": row.subnet6 or None,
            "lease": state, "lease_ttl": ttl,
            "vtep_mac": None if row.vtep_mac == "-" else row.vtep_mac,
            "containers": [{"name": c.name, "ip": c.ip.split("/")[0] or None,
                            **({"ip6": c.ip6.split("/")[0]} if c.ip6 else {}),  # --ipv6
                            "dns": c.dns, "netns": c.netns}
                           for c in sb.state.containers if c.host == row.host]}


def exec_env(sb: Sandbox, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of ``exec``'d commands: the sandbox's store for etcdctl
    (``ETCDCTL_ENDPOINTS``, ``ETCDCTL_API=3``) and weftctl (``WEFT_ETCD_ENDPOINTS``), and
    weft's programs on the PATH, so ``exec h1 -- weftctl list-units`` needs no flags."""
    endpoint = sb.context.endpoint
    path = environ.get("PATH", os.defpath)
    return {**environ, "ETCDCTL_ENDPOINTS": endpoint, "ETCDCTL_API": "3",
            "WEFT_ETCD_ENDPOINTS": endpoint, "PATH": f"{bin_dir()}:{path}"}


def exec_in(state_dir: Path, target: str, argv: Sequence[str]) -> int:
    state = require_state(state_dir)
    netns = state.namespace_of(target)
    env = exec_env(Sandbox(state_dir, state), os.environ)
    if not argv:
        argv = [os.environ.get("SHELL", "/bin/sh")]
    # `ip netns exec` answers a failed exec with 255; say what a shell says instead
    missing = command_status(argv[0], env["PATH"])
    if missing is not None:
        code, why = missing
        sys.stderr.write(f"weftctl sandbox exec: {argv[0]}: {why}\n")
        return code
    return subprocess.run(["ip", "netns", "exec", netns, *argv], check=False,
                          env=env).returncode


def command_status(command: str, path: str) -> tuple[int, str] | None:
    """None if ``command`` can be exec'd, else (127 or 126, why) as a shell reports it."""
    if "/" in command:
        if not os.path.exists(command):
            return 127, "No such file or directory"
        if os.path.isdir(command) or not os.access(command, os.X_OK):
            return 126, "Permission denied"
        return None
    if shutil.which(command, path=path) is None:
        return 127, "command not found"
    return None


def logs(state_dir: Path, ident: str, out: IO[str], lines: int | None = None,
         follow: bool = False) -> int:
    """Print a daemon's log (the last ``lines``); with ``follow``, keep going until ^C."""
    state = require_state(state_dir)
    d = state.daemon(ident)
    path = Path(d.log)
    if not path.exists():
        raise SandboxError(d.ident, f"no log at {path}")
    with open(path, errors="replace") as f:
        body = f.read().splitlines()
        if lines is not None:
            body = body[-lines:] if lines > 0 else []
        out.write("\n".join(body) + ("\n" if body else ""))
        out.flush()
        with contextlib.suppress(KeyboardInterrupt):  # ^C is how one stops following
            while follow:
                chunk = f.read()
                if chunk:
                    out.write(chunk)
                    out.flush()
                else:
                    time.sleep(0.2)
    return 0


def kill(state_dir: Path, target: str, out: TextIO) -> int:
    """SIGKILL a host's daemons (``h2``), the store (``store``) or one daemon (``dnsd@h1``)."""
    sb = Sandbox(state_dir, require_state(state_dir))
    victims = sb.state.daemons_for(target)
    stop_daemons(victims, signal.SIGKILL, grace=2)
    for d in victims:
        d.killed = True
    sb.save()
    names = ", ".join(d.ident for d in victims) or "nothing"
    if any(d.name == "store" for d in victims):
        out.write(f"killed {names}: the store is down. Daemons keep their data path and "
                  "answers (dnsd from its index, /readyz 503); leases cannot be renewed "
                  f"until `weftctl sandbox start store`\n")
    elif any(h.name == target for h in sb.state.hosts):
        ttl = sb.options.lease_ttl
        out.write(f"killed {names}; {target}'s namespace and data path stay, its lease "
                  f"expires within {ttl} s and peers then drop its routes "
                  f"(`weftctl sandbox start {target}` brings it back)\n")
    else:
        out.write(f"killed {names}\n")
    return 0


def start(state_dir: Path, target: str, out: TextIO, store_endpoint: str | None = None) -> int:
    """Start the killed (or dead) daemons of a host, the store, or one daemon again.

    A restarted flanneld finds its subnet in its subnet.env and asks for it again,
    as after a reboot; peers add its routes back once the lease is in the store.
    With ``store_endpoint`` (after ``weftctl store migrate``), every daemon started from
    now on uses that store, and the target's running daemons are restarted on it.
    """
    sb = Sandbox(state_dir, require_state(state_dir))
    if not is_up(sb.state):
        raise NotUpError(str(state_dir), "the sandbox's namespaces are gone; `weftctl "
                         "sandbox down`, then `up`")
    records = sb.state.daemons_for(target)
    moving: list[DaemonRecord] = []
    if store_endpoint is not None:
        sb.state.store_endpoint = store_endpoint
        sb.save()
        moving = [d for d in records if d.name != "store" and not d.killed and alive(d)]
        stop_daemons(moving)  # SIGTERM: they leave the old store as on a shutdown
    todo = [d for d in records if d.killed or not alive(d) or d in moving]
    for d in records:
        if d not in todo:
            out.write(f"{d.ident} is already running (pid {d.pid})\n")
    started = []
    for old in todo:
        stop_daemons([old], signal.SIGKILL, grace=1)  # a half-dead one must not linger
        spec = daemon_spec(old.name)
        new = sb.start_daemon(spec, sb.site_of(old), replacing=old)
        started.append((spec, new))
    for spec, new in started:
        sb.wait_healthy([new], spec.ready_within)
        out.write(f"started {new.ident} (pid {new.pid}): healthy\n")
    return 0


def _teardown(sb: Sandbox) -> list[str]:
    """Kill every daemon and delete every namespace of the sandbox; return what is left."""
    stop_daemons(sb.state.daemons)
    for c in sb.state.containers:
        delete_netns(c.netns)
    for etc in NETNS_ETC.glob(f"{sb.state.tag}-*"):
        shutil.rmtree(etc, ignore_errors=True)
    for h in sb.state.hosts:
        delete_netns(h.netns)
    delete_netns(sb.state.underlay_ns)
    for ns in list_netns():
        if ns.startswith(sb.state.tag + "-"):
            delete_netns(ns)
    left = [ns for ns in list_netns() if ns.startswith(sb.state.tag + "-")]
    left += [d.ident for d in sb.state.daemons if alive(d)]
    return left


def down(state_dir: Path, out: TextIO) -> int:
    state = load_state(state_dir)
    if state is None:
        out.write(f"no sandbox in {state_dir}; nothing to do\n")
        if state_dir.exists() and (state_dir / LOCK_FILE).exists():
            remove_state_dir(state_dir)
        return 0
    sb = Sandbox(state_dir, state)
    left = _teardown(sb)
    if left:
        out.write("could not remove: " + ", ".join(left) + "\n")
        return 1
    remove_state_dir(state_dir)
    out.write(f"sandbox {state.tag} is down: {len(state.daemons)} daemons stopped, "
              f"{len(state.hosts) + len(state.containers) + 1} namespaces and {state_dir} "
              "removed\n")
    return 0


def set_partition(state_dir: Path, host: str, cut: bool, out: TextIO) -> int:
    """``partition``/``heal``: take the host's port on the underlay bridge down or up.

    The host keeps its own eth0, addresses and routes (its daemons see only silence, as
    with a pulled cable upstream); nothing in the root namespace is touched.
    """
    sb = Sandbox(state_dir, require_state(state_dir))
    h = sb.state.host(host)
    # the testbed names a host's underlay-side veth p<position> (h1 -> p1)
    port = f"p{sb.state.hosts.index(h) + 1}"
    run(["ip", "-n", sb.state.underlay_ns, "link", "set", port, "down" if cut else "up"])
    if cut:
        out.write(f"{h.name} partitioned: its underlay link ({port}) is down; its daemons run "
                  f"on without the store or peers (heal with `weftctl sandbox heal {h.name}`)\n")
    else:
        out.write(f"{h.name} healed: its underlay link ({port}) is up again\n")
    return 0


def failover(state_dir: Path, out: TextIO) -> int:
    """``failover``: kill the host of the demo web unit; show it move, resolve and answer."""
    sb = Sandbox(state_dir, require_state(state_dir))
    kill = [str(bin_dir() / "weftctl"), "sandbox", "kill", "--state-dir", str(state_dir)]
    return 0 if demo.failover(sb.state, out, kill) else 1
