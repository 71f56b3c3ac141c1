"""``weftctl agent``: the scheduler agent of one machine (wiring only; see overlay.sched.agent).

Every flag also reads ``WEFT_AGENT_<FLAG>`` (``-public-ip`` <- ``WEFT_AGENT_PUBLIC_IP``);
the command line wins. Durations take Go's form (``5s``, ``500ms``) or plain seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from overlay.flags import StoreFlagEnv, add_store_flags, go_duration, store_config
from overlay.sched.agent import DEFAULT_PORT, Agent, AgentConfig
from overlay.sched.engine import run_engine
from overlay.sched.fence import DEFAULT_GRACE, DEFAULT_RENEW, DEFAULT_TTL, Timings
from overlay.sched.keys import DEFAULT_ROOT, Layout
from overlay.sched.netattach import DEFAULT_CNI_CONF, DEFAULT_CNI_PATH, Attacher
from overlay.sched.runner import Runner
from overlay.sched.supervisor import Supervisor
from overlay.sched.systemd import SystemdRunner, systemd_is_init
from overlay.store.api import StoreConfig, StoreError
from overlay.store.client import EtcdStore, endpoint_target

log = logging.getLogger(__name__)

ENV_PREFIX = "WEFT_AGENT_"
DEFAULT_STATE_DIR = "/var/lib/weft/agent"
RUNNERS = ("auto", "supervisor", "systemd")


# the agent's own variables first, then etcdctl's (what `weftctl sandbox exec` sets)
AGENT_STORE_ENV = StoreFlagEnv(
    endpoints=(f"{ENV_PREFIX}ETCD_ENDPOINTS", "ETCDCTL_ENDPOINTS"),
    cafile=(f"{ENV_PREFIX}ETCD_CAFILE", "ETCDCTL_CACERT"),
    certfile=(f"{ENV_PREFIX}ETCD_CERTFILE", "ETCDCTL_CERT"),
    keyfile=(f"{ENV_PREFIX}ETCD_KEYFILE", "ETCDCTL_KEY"),
    username=(f"{ENV_PREFIX}ETCD_USERNAME", "WEFT_ETCD_USERNAME"),
    password=(f"{ENV_PREFIX}ETCD_PASSWORD", "WEFT_ETCD_PASSWORD"))


class AgentFlagError(ValueError):
    """A flag value is unusable; the message names the flag."""


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def duration(text: str) -> float:
    """``5s``/``500ms``/``1m`` or plain seconds."""
    try:
        return float(text)
    except ValueError:
        return go_duration(text)


def parse_metadata(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (fleet's -metadata); AgentFlagError naming the bad term."""
    out: dict[str, str] = {}
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        k, eq, v = term.partition("=")
        if not eq or not k.strip():
            raise AgentFlagError(f"-metadata: {term!r} is not key=value")
        out[k.strip()] = v.strip()
    return out


def machine_id(flag: str | None, state_dir: Path, etc: Path = Path("/etc/machine-id")) -> str:
    """The flag, else /etc/machine-id, else one generated once and kept in the state dir."""
    if flag:
        if "/" in flag or not flag.strip() or flag.strip() != flag:
            raise AgentFlagError(f"-machine-id: {flag!r} must be non-empty, without '/' or blanks")
        return flag
    for path in (etc, state_dir / "machine-id"):
        with contextlib.suppress(OSError):
            text = path.read_text().strip()
            if text:
                return text
    state_dir.mkdir(parents=True, exist_ok=True)
    new = uuid.uuid4().hex
    (state_dir / "machine-id").write_text(new + "\n")
    return new


def public_ip(flag: str | None, store: StoreConfig) -> ipaddress.IPv4Address:
    """The flag, else the local address this host uses to reach the first store endpoint
    (a UDP connect: a route lookup, no packet is sent)."""
    if flag:
        try:
            return ipaddress.IPv4Address(flag)
        except ValueError:
            raise AgentFlagError(f"-public-ip: {flag!r} is not an IPv4 address") from None
    host = endpoint_target(store.endpoints[0])[0].rsplit(":", 1)[0].strip("[]")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(host), 9))
            addr = ipaddress.IPv4Address(s.getsockname()[0])
    except OSError as exc:
        raise AgentFlagError(f"-public-ip not given and no route to the store {host} to "
                             f"guess it ({exc})") from None
    if addr.is_loopback and not ipaddress.IPv4Address(socket.gethostbyname(host)).is_loopback:
        raise AgentFlagError("-public-ip not given and the guess is a loopback address")
    return addr


def build_config(args: argparse.Namespace) -> tuple[AgentConfig, StoreConfig]:
    try:
        store = store_config(args, AGENT_STORE_ENV)
    except ValueError as exc:
        raise AgentFlagError(str(exc)) from None
    try:
        timings = Timings(duration(args.ttl), duration(args.renew), duration(args.grace),
                          duration(args.probe_timeout)).check()
    except ValueError as exc:
        raise AgentFlagError(f"timings: {exc}") from None
    state_dir = Path(args.state_dir)
    try:
        Layout(args.sched_prefix)
    except ValueError as exc:
        raise AgentFlagError(f"-sched-prefix: {exc}") from None
    if not 0 <= args.port <= 65535:
        raise AgentFlagError(f"-port: {args.port} is not 0-65535")
    cfg = AgentConfig(
        machine_id=machine_id(args.machine_id, state_dir), public_ip=public_ip(args.public_ip,
                                                                             store),
        port=args.port, metadata=parse_metadata(args.metadata or ""), prefix=args.sched_prefix,
        domain=args.domain if args.domain.endswith(".") else args.domain + ".",
        timings=timings, state_dir=state_dir, engine=not args.no_engine,
        netns_prefix=args.netns_prefix or "")
    return cfg, store


def choose_runner(name: str) -> str:
    if name == "auto":
        return "systemd" if systemd_is_init() else "supervisor"
    return name


async def _serve(cfg: AgentConfig, store_cfg: StoreConfig, runner: str, cni_conf: str,
                 cni_path: str) -> int:
    # not connect(): that fails when no endpoint answers, and an agent must start during a
    # store outage too (its loops retry)
    try:
        store = EtcdStore(store_cfg)
    except ValueError as exc:
        sys.stderr.write(f"weftctl agent: {exc}\n")
        return 2

    def make_runner(on_change: Callable[[str], None]) -> Runner:
        if runner == "systemd":
            return SystemdRunner(on_change)
        return Supervisor(on_change)

    attacher = None
    if cni_conf and Path(cni_conf).exists():
        attacher = Attacher(cni_conf, cni_path, cfg.state_dir / "cni")
    else:
        log.warning("no CNI config at %s: units with [X-Weft] Network=true cannot start here",
                    cni_conf)

    async def engine(agent: Agent) -> None:
        await run_engine(agent.store, cfg.machine_id, cfg.timings, agent.keys)

    agent = Agent(cfg, store, make_runner, attacher, engine)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    log.info("weft agent %s on %s (%s runner, metadata %s, store %s)", cfg.machine_id,
             cfg.public_ip, runner, dict(cfg.metadata) or "none", ",".join(store_cfg.endpoints))
    try:
        await agent.run()
    except asyncio.CancelledError:
        log.info("weft agent %s: stopped", cfg.machine_id)
    finally:
        with contextlib.suppress(StoreError, OSError):
            await store.close()
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        cfg, store_cfg = build_config(args)
    except AgentFlagError as exc:
        sys.stderr.write(f"weftctl agent: {exc}\n")
        return 2
    runner = choose_runner(args.runner)
    return asyncio.run(_serve(cfg, store_cfg, runner, args.cni_conf, args.cni_path))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "agent", help="run this machine's scheduler agent (units, presence, fencing, engine)",
        description="Register this machine with a TTL'd presence, run the units the leader "
                    "assigns to it (through systemd when it is PID 1, else as supervised "
                    "child processes), publish their state and DNS names, stop them when "
                    "cut off from the store (fencing), and take part in the engine's "
                    f"leader election. Every flag also reads {ENV_PREFIX}<FLAG>.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store_flags(p, AGENT_STORE_ENV)

    def flag(name: str, default: str | None, help: str, **kw: object) -> None:
        p.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"),
                       default=_env(name, default),
                       help=f"{help} (env {ENV_PREFIX}{name.upper().replace('-', '_')})",
                       **kw)  # type: ignore[arg-type]

    flag("machine-id", None, "this machine's id [default /etc/machine-id, else one kept in "
         "the state dir]")
    flag("public-ip", None, "underlay address peers and weftctl reach this agent on "
         "[default: the address used to reach the store]")
    p.add_argument("-port", "--port", type=int, default=int(_env("port", str(DEFAULT_PORT))
                                                           or DEFAULT_PORT),
                   help=f"HTTP port of the agent's endpoint (journal, /presence) [default "
                        f"{DEFAULT_PORT}; 0 = any] (env {ENV_PREFIX}PORT)")
    flag("metadata", "", "machine metadata for MachineMetadata=, k=v,k2=v2")
    flag("ttl", f"{DEFAULT_TTL:g}s", "presence TTL: a silent machine is lost after it")
    flag("renew", f"{DEFAULT_RENEW:g}s", "presence renew interval")
    flag("grace", f"{DEFAULT_GRACE:g}s", "how long a lost machine's units wait before moving")
    flag("probe-timeout", "0.5s", "timeout of the fencing peer probe")
    flag("domain", "skydns.local.", "SkyDNS domain of Service= names")
    flag("sched-prefix", DEFAULT_ROOT, "scheduler key root in the store")
    flag("state-dir", DEFAULT_STATE_DIR, "where the agent keeps its machine id and CNI cache")
    flag("runner", "auto", f"how units run: {', '.join(RUNNERS)} (auto: systemd when it is "
         "PID 1 in this network namespace)", choices=RUNNERS)
    flag("cni-conf", DEFAULT_CNI_CONF, "CNI network config (list) for Network=true units")
    flag("cni-path", DEFAULT_CNI_PATH, "where CNI plugins are")
    flag("netns-prefix", None, "name prefix of Network=true units' network namespaces "
         "[default weft-<machine id prefix>]")
    p.add_argument("-no-engine", "--no-engine", action="store_true",
                   default=(_env("no-engine", "") or "").lower() in ("1", "true", "yes"),
                   help="never lead the engine (fleet's disable_engine) (env "
                        f"{ENV_PREFIX}NO_ENGINE)")
    p.set_defaults(func=_run)
