"""The sandbox's scheduler pieces (pure): the agent's table entry, the environment
``sandbox exec`` gives commands, and the demo unit file."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from overlay.sandbox.cluster import Sandbox, exec_env
from overlay.sandbox.demo import web_unit_text
from overlay.sandbox.model import Context, Options, Site, State, daemon_spec
from overlay.sched.unitfile import parse_unit


def site(host: str = "h2") -> Site:
    return Site(host, f"abcd-{host}", ipaddress.IPv4Address("198.18.0.12"), Path("/x") / host)


def ctx() -> Context:
    return Context(Options(), Path("/venv/bin"), ipaddress.IPv4Address("198.18.0.1"),
                   ipaddress.IPv4Address("198.18.0.11"))


def test_agent_entry_names_its_host_store_and_cni_config() -> None:
    spec = daemon_spec("agent")
    assert spec.placement == "each-host"
    argv = spec.argv(ctx(), site())
    flags = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert argv[:2] == ["/venv/bin/weftctl", "agent"]
    assert flags["-etcd-endpoints"] == "http://198.18.0.1:2379"
    assert flags["-metadata"] == "host=h2" and flags["-public-ip"] == "198.18.0.12"
    assert flags["-runner"] == "supervisor" and flags["-netns-prefix"] == "abcd-h2"
    other = spec.argv(ctx(), site("h3"))
    assert flags["-machine-id"] == spec.argv(ctx(), site())[argv.index("-machine-id") + 1]
    assert flags["-machine-id"] != other[other.index("-machine-id") + 1]
    (conf_path, text), = spec.files(ctx(), site()).items()
    assert str(conf_path) == flags["-cni-conf"]
    conf = json.loads(text)
    assert conf["plugins"][0]["subnetFile"] == "/x/h2/subnet.env"


def test_exec_env_points_every_client_at_the_sandbox_store() -> None:
    state = State("abcd", {"hosts": 3, "store": "embedded", "backend": "vxlan",
                           "lease_ttl": 20, "network": "10.244.0.0/16"}, "abcd-ul",
                  "198.18.0.1", "198.18.0.11")
    env = exec_env(Sandbox(Path("/tmp/none"), state), {"PATH": "/usr/bin", "HOME": "/root",
                                                       "ETCDCTL_ENDPOINTS": "http://prod:2379"})
    assert env["ETCDCTL_ENDPOINTS"] == env["WEFT_ETCD_ENDPOINTS"] == "http://198.18.0.1:2379"
    assert env["ETCDCTL_API"] == "3" and env["HOME"] == "/root"
    assert env["PATH"].endswith(":/usr/bin")


def test_demo_unit_is_a_valid_network_service() -> None:
    unit = parse_unit("web.service", web_unit_text(Path("/srv/www"), ["h2", "h3"]),
                      "web.service")
    assert unit.fleet.metadata == {"host": frozenset({"h2", "h3"})}
    assert unit.weft.network and unit.weft.service is not None
    assert (unit.weft.service.name, unit.weft.service.port) == ("web", 8000)
    assert unit.exec_start[0].argv[-2:] == ("--directory", "/srv/www")
