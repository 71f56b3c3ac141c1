"""CNI spec conformance of the installed ``weft`` plugin, driven as libcni drives it.

Every test runs the plugin inside a fresh host namespace (never the root one)
with its subnet.env and IPAM dataDir in a tmp dir, and checks that what it
claims (result JSON) matches the kernel and the disk, and that errors change
nothing.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlay.testbed import open_testbed
from tests.cnidriver import (
    CniFailure,
    CniHost,
    host_links,
    ipam_files,
    nft_ruleset,
    validate_error,
    validate_result,
    write_subnet_env,
)

pytestmark = pytest.mark.root

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


class Env(CniHost):
    """The plugin's host namespace (IPv4 subnet.env), plus the container address check."""

    def addr(self, netns_path: str, ifname: str = "eth0") -> str:
        return subprocess.run(["ip", "-n", self.ns_of(netns_path), "-o", "-4", "addr", "show",
                               "dev", ifname], capture_output=True, text=True).stdout


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with open_testbed(1) as tb:
        yield Env(tb, tmp_path)


@pytest.mark.parametrize("version", VERSIONS)
def test_version_command(env: Env, version: str) -> None:
    info = env.driver(version).version_info("weft", version)
    assert info["cniVersion"] == version
    assert info["supportedVersions"] == VERSIONS


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_each_version(env: Env, version: str) -> None:
    d = env.driver(version)
    ns = env.container()
    result = d.add("ctr1", ns)
    validate_result(version, result)
    names = [i["name"] for i in result["interfaces"]]
    assert names[0] == "cni0" and names[1].startswith("veth") and names[2] == "eth0"
    assert result["interfaces"][2]["sandbox"] == ns
    assert result["ips"][0]["interface"] == 2
    address = result["ips"][0]["address"]
    assert address.startswith("10.244.5.") and address.endswith("/24")
    assert result["ips"][0]["gateway"] == "10.244.5.1"
    assert {"dst": "0.0.0.0/0", "gw": "10.244.5.1"} in result["routes"]
    assert {"dst": "10.244.0.0/16", "gw": "10.244.5.1"} in result["routes"]
    assert address in env.addr(ns)
    assert ipam_files(env.tmp) == [address.split("/")[0]]
    stored = (env.tmp / "ipam/weftnet" / address.split("/")[0]).read_bytes()
    assert stored == b"ctr1\r\neth0"
    assert env.tb.ping(env.ns_of(ns), "10.244.5.1")
    if version >= "0.4.0":
        d.check("ctr1", ns)
    else:
        conf = d.plugin_conf(d.conflist["plugins"][0], None, result)
        with pytest.raises(CniFailure) as err:
            d.invoke(d.conflist["plugins"][0], "CHECK", conf, "ctr1", ns, "eth0")
        validate_error(err.value.error, 1)
    weft = d.conflist["plugins"][0]
    if version == "1.1.0":
        d.status()
        assert d.gc([("ctr1", "eth0")]) == []
        assert ipam_files(env.tmp) == [address.split("/")[0]]
    else:  # GC and STATUS exist from 1.1.0 on
        for command, extra in (("GC", {"cni.dev/valid-attachments": []}), ("STATUS", {})):
            with pytest.raises(CniFailure) as err:
                d.invoke(weft, command, d.plugin_conf(weft, None, None, extra))
            validate_error(err.value.error, 1)
        assert ipam_files(env.tmp) == [address.split("/")[0]]
    d.delete("ctr1", ns)
    assert ipam_files(env.tmp) == []
    assert [n for n in host_links(env.host.netns) if n.startswith("veth")] == []
    d.delete("ctr1", ns)  # idempotent


def test_check_detects_missing_interface(env: Env) -> None:
    d = env.driver()
    ns = env.container()
    d.add("c1", ns)
    subprocess.run(["ip", "-n", env.ns_of(ns), "link", "del", "eth0"], check=True)
    with pytest.raises(CniFailure) as err:
        d.check("c1", ns)
    assert "missing" in err.value.error["msg"]
    d.delete("c1", ns)
    assert ipam_files(env.tmp) == []


def test_status_without_subnet_env_is_code_50(env: Env) -> None:
    d = env.driver(subnetFile=str(env.tmp / "nope.env"))
    with pytest.raises(CniFailure) as err:
        d.status()
    validate_error(err.value.error, 50)
    assert "nope.env" in err.value.error["msg"] and "no lease" in err.value.error["msg"]


def _base_env(ns: str) -> dict[str, str]:
    return {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad1", "CNI_NETNS": ns,
            "CNI_IFNAME": "eth0"}


BAD_INPUT = [
    # id, env changes (None = unset), stdin change, code, words in msg
    ("empty-stdin", {}, b"", 6, "empty"),
    ("invalid-json", {}, b"{not json", 6, "not valid JSON"),
    ("json-array", {}, b"[1]", 6, "not an object"),
    ("bad-command", {"CNI_COMMAND": "FROB"}, None, 4, "FROB"),
    ("no-netns", {"CNI_NETNS": None}, None, 4, "CNI_NETNS"),
    ("no-ifname", {"CNI_IFNAME": None}, None, 4, "CNI_IFNAME"),
    ("no-containerid", {"CNI_CONTAINERID": None}, None, 4, "CNI_CONTAINERID"),
    ("netns-does-not-exist", {"CNI_NETNS": "/run/netns/weft-no-such-ns"}, None, 4,
     "/run/netns/weft-no-such-ns"),
    ("netns-not-a-netns", {"CNI_NETNS": "/proc/self/status"}, None, 4,
     "not a network namespace"),
    ("ifname-too-long", {"CNI_IFNAME": "eth0123456789abc"}, None, 4, "longer than 15"),
    ("ifname-slash", {"CNI_IFNAME": "eth/0"}, None, 4, "not a valid interface name"),
    ("unknown-cni-arg", {"CNI_ARGS": "FOO=bar"}, None, 4, "FOO"),
    ("ip-outside-subnet-args", {"CNI_ARGS": "IP=10.9.9.9"}, None, 4, "10.9.9.9"),
    ("ip-is-gateway", {"CNI_ARGS": "IP=10.244.5.1"}, None, 4, "gateway"),
    ("unsupported-version", {}, {"cniVersion": "0.2.0"}, 1, "0.2.0"),
    ("missing-version", {}, {"cniVersion": None}, 1, "cniVersion"),
    ("ip-outside-subnet-runtime", {}, {"runtimeConfig": {"ips": ["10.244.6.7/24"]}}, 7,
     "10.244.6.7"),
    ("bad-mac", {}, {"runtimeConfig": {"mac": "zz:00"}}, 7, "zz:00"),
    ("no-name", {}, {"name": None}, 7, "name"),
]


@pytest.mark.parametrize(("env_change", "stdin_change", "code", "words"),
                         [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_code_and_changes_nothing(
        env: Env, env_change: dict[str, str | None], stdin_change: bytes | dict[str, Any] | None,
        code: int, words: str) -> None:
    d = env.driver()
    ns = env.container()
    conf = d.plugin_conf(d.conflist["plugins"][0], None, None)
    if isinstance(stdin_change, dict):
        conf.update(stdin_change)
        conf = {k: v for k, v in conf.items() if v is not None}
    stdin = stdin_change if isinstance(stdin_change, bytes) else json.dumps(conf).encode()
    e: dict[str, str] = {**_base_env(ns)}
    for k, v in env_change.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    before = env.state()
    res = d.exec_raw("weft", e, stdin)
    assert res.rc != 0
    validate_error(res.json(), code)
    assert words in res.json()["msg"], res.json()
    assert env.state() == before
    assert "eth0" not in host_links(env.ns_of(ns))
    # logs go to stderr only; stdout is exactly one JSON document
    assert res.stdout.count("\n") == 1


def test_no_command_prints_the_about_text_and_changes_nothing(env: Env) -> None:
    # as libcni's skel does for the reference plugins: CNI_COMMAND unset means a human
    # ran the binary; it says what it is on stderr, exits 0 and touches nothing
    d = env.driver()
    ns = env.container()
    conf = d.plugin_conf(d.conflist["plugins"][0], None, None)
    e: dict[str, str] = {**_base_env(ns)}
    e.pop("CNI_COMMAND", None)
    before = env.state()
    res = d.exec_raw("weft", e, json.dumps(conf).encode())
    assert res.rc == 0 and res.stdout == "", res.stdout
    assert res.stderr.startswith("CNI weft plugin: weft ")
    assert "CNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in res.stderr
    assert env.state() == before
    assert "eth0" not in host_links(env.ns_of(ns))


def test_cni_args_ignore_unknown_and_k8s(env: Env) -> None:
    d = env.driver()
    ns = env.container()
    args = ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
            "K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234;SOMETHING=else;IP=10.244.5.77")
    result = d.add("k8s", ns, args=args)
    assert result["ips"][0]["address"] == "10.244.5.77/24"
    d.delete("k8s", ns, args=args)


@pytest.mark.parametrize("source", ["args.cni.ips", "runtimeConfig.ips"])
def test_specific_ip_and_mac(env: Env, source: str) -> None:
    if source == "args.cni.ips":
        d = env.driver(args={"cni": {"ips": ["10.244.5.66"]}}, capabilities={"mac": True})
    else:
        d = env.driver(capabilities={"ips": True, "mac": True})
    ns = env.container()
    cap = {"ips": ["10.244.5.66/24"], "mac": "0a:58:0a:f4:05:42"}
    result = d.add("ipc", ns, cap_args=cap)
    assert result["ips"][0]["address"] == "10.244.5.66/24"
    assert result["interfaces"][2]["mac"] == "0a:58:0a:f4:05:42"
    assert "0a:58:0a:f4:05:42" in subprocess.run(
        ["ip", "-n", env.ns_of(ns), "link", "show", "eth0"], capture_output=True,
        text=True).stdout
    d.check("ipc", ns)
    # the same IP again is taken: try again later, nothing left behind
    ns2 = env.container()
    with pytest.raises(CniFailure) as err:
        d.add("ipc2", ns2, cap_args=cap)
    assert err.value.code == 11
    assert ipam_files(env.tmp) == ["10.244.5.66"]
    d.delete("ipc", ns)


def test_add_twice_fails_cleanly(env: Env) -> None:
    d = env.driver()
    ns = env.container()
    first = d.add("dup", ns)
    before = env.state()
    with pytest.raises(CniFailure) as err:
        d.add("dup", ns)
    assert err.value.code == 101 and "dup" in err.value.error["msg"]
    assert env.state() == before
    assert first["ips"][0]["address"] in env.addr(ns)
    d.delete("dup", ns)


def test_existing_ifname_in_container_fails_and_leaves_nothing(env: Env) -> None:
    d = env.driver()
    ns = env.container()
    subprocess.run(["ip", "-n", env.ns_of(ns), "link", "add", "eth0", "type", "veth",
                    "peer", "name", "other0"],
                   check=True)
    d.add("warm", env.container())  # make the bridge exist so "before" includes it
    before = env.state()
    with pytest.raises(CniFailure) as err:
        d.add("exists", ns)
    assert "eth0 already exists" in err.value.error["msg"]
    assert env.state() == before


def test_del_after_netns_gone_frees_ip(env: Env) -> None:
    d = env.driver()
    ns = env.container()
    d.add("gone", ns)
    subprocess.run(["ip", "netns", "del", env.ns_of(ns)], check=True)
    d.delete("gone", ns)
    assert ipam_files(env.tmp) == []
    # DEL with no netns at all (runtime lost it) also succeeds
    conf = d.plugin_conf(d.conflist["plugins"][0], None, None)
    d.invoke(d.conflist["plugins"][0], "DEL", conf, "never-added", "", "eth0")


def test_exhausted_range_is_try_again(env: Env) -> None:
    write_subnet_env(env.tmp / "subnet.env", subnet="10.244.5.1/29")
    d = env.driver()
    got = [d.add(f"x{i}", env.container())["ips"][0]["address"] for i in range(5)]
    assert got == [f"10.244.5.{i}/29" for i in range(2, 7)]  # round robin, never .1
    with pytest.raises(CniFailure) as err:
        d.add("x5", env.container())
    assert err.value.code == 11 and "no IP addresses available" in err.value.error["msg"]
    assert len(ipam_files(env.tmp)) == 5


def test_stale_bridge_fixed_when_empty_else_clear_error(env: Env) -> None:
    d = env.driver()
    ns = env.container()
    d.add("s1", ns)
    d.delete("s1", ns)
    write_subnet_env(env.tmp / "subnet.env", subnet="10.244.9.1/24")
    res = d.add("s2", ns)  # nothing attached: cni0 is re-addressed
    assert res["ips"][0]["address"].startswith("10.244.9.")
    br = subprocess.run(["ip", "-n", env.host.netns, "-o", "-4", "addr", "show", "cni0"],
                        capture_output=True, text=True).stdout
    assert "10.244.9.1/24" in br and "10.244.5.1" not in br
    write_subnet_env(env.tmp / "subnet.env", subnet="10.244.10.1/24")
    before = env.state()
    with pytest.raises(CniFailure) as err:
        d.add("s3", env.container())
    e = err.value.error
    assert err.value.code == 102
    assert "already has IP address 10.244.9.1/24" in e["msg"]
    assert "CNI DEL" in e["details"] and "ip link delete cni0" in e["details"]
    assert env.state() == before


def test_ipmasq_rules_follow_containers(env: Env) -> None:
    d = env.driver(ipMasq=True)
    a, b = env.container(), env.container()
    ra = d.add("m1", a)
    d.add("m2", b)
    rules = nft_ruleset(env.host.netns)
    assert "weft-weftnet" in rules and ra["ips"][0]["address"].split("/")[0] in rules
    assert "masquerade" in rules
    d.delete("m1", a)
    assert ra["ips"][0]["address"].split("/")[0] not in nft_ruleset(env.host.netns)
    d.delete("m2", b)
    assert "weft-weftnet" not in nft_ruleset(env.host.netns)


def test_hairpin_mtu_forwarding(env: Env) -> None:
    d = env.driver()
    ns = env.container()
    res = d.add("hp", ns)
    veth = res["interfaces"][1]["name"]
    detail = subprocess.run(["ip", "-n", env.host.netns, "-d", "link", "show", veth],
                            capture_output=True, text=True).stdout
    assert "hairpin on" in detail and "mtu 1450" in detail and "master cni0" in detail
    assert "mtu 1450" in subprocess.run(["ip", "-n", env.ns_of(ns), "link", "show", "eth0"],
                                        capture_output=True, text=True).stdout
    fwd = env.tb.exec(env.host.netns, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout
    assert fwd.strip() == "1"
    d.delete("hp", ns)


def test_chained_with_portmap_and_bandwidth(env: Env) -> None:
    chain = [{"type": "portmap", "capabilities": {"portMappings": True}},
             {"type": "bandwidth", "capabilities": {"bandwidth": True}}]
    d = env.driver("1.0.0", extra_plugins=chain)  # Debian's plugins 1.1.1 stop at 1.0.0
    ns = env.container()
    cap = {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
           "bandwidth": {"ingressRate": 1000000, "ingressBurst": 100000,
                         "egressRate": 1000000, "egressBurst": 100000}}
    result = d.add("chain1", ns, cap_args=cap)
    validate_result("1.0.0", result)
    names = [i["name"] for i in result["interfaces"]]
    assert names[:3][2] == "eth0"
    assert any(n.startswith("bwp") for n in names), names  # bandwidth's ifb device
    # CHECK weft against the final (chained) result; Debian's portmap 1.1.1 CHECK fails
    # on hosts without IPv6 container addresses (an upstream bug), so it is not asked
    weft = d.conflist["plugins"][0]
    d.invoke(weft, "CHECK", d.plugin_conf(weft, cap, result), "chain1", ns, "eth0")
    assert "18080" in subprocess.run(["ip", "netns", "exec", env.host.netns, "iptables-save",
                                      "-t", "nat"], capture_output=True, text=True).stdout
    d.delete("chain1", ns)
    assert ipam_files(env.tmp) == []
    assert [n for n in host_links(env.host.netns) if n.startswith(("veth", "bwp"))] == []


def _weft_links(env: Env) -> list[str]:
    return [n for n in host_links(env.host.netns) if n.startswith("veth")]


def test_gc_without_valid_attachments_frees_everything(env: Env) -> None:
    """libcni's GC with no GCArgs (``cnitool gc``): every cached attachment is DELeted,
    then the plugin's GC has no ``cni.dev/valid-attachments`` at all and must free what
    is left, here an ADD the runtime never cached (it crashed before writing its cache)."""
    d = env.driver(ipMasq=True)
    d.add("g1", env.container())
    weft = d.conflist["plugins"][0]
    ns = env.container()
    d.invoke(weft, "ADD", d.plugin_conf(weft, None, None), "uncached", ns, "eth0")
    assert len(ipam_files(env.tmp)) == 2
    assert d.gc(None) == []
    assert ipam_files(env.tmp) == [] and _weft_links(env) == []
    assert "weft-weftnet" not in nft_ruleset(env.host.netns)


def test_gc_with_malformed_valid_attachments_is_refused(env: Env) -> None:
    d = env.driver()
    ns = env.container()
    d.add("keep", ns)
    before = env.state()
    weft = d.conflist["plugins"][0]
    with pytest.raises(CniFailure) as err:
        d.invoke(weft, "GC", d.plugin_conf(weft, None, None,
                                           {"cni.dev/valid-attachments": [{"ifname": "eth0"}]}))
    validate_error(err.value.error, 7)
    assert "cni.dev/valid-attachments" in err.value.error["msg"]
    assert env.state() == before
    d.delete("keep", ns)


def _routes(env: Env, ns: str) -> str:
    return subprocess.run(["ip", "-n", env.ns_of(ns), "-4", "route"], capture_output=True,
                          text=True, check=True).stdout


def test_two_interfaces_of_one_container_on_one_network(env: Env) -> None:
    """As bridge + host-local: CNI_IFNAME=eth0 then net1 in one container each get their
    own address, veth and routes; DEL, CHECK and GC treat each (container, ifname) alone."""
    d = env.driver()
    ns = env.container()
    r0 = d.add("two", ns, "eth0")
    r1 = d.add("two", ns, "net1")
    ip0, ip1 = (r["ips"][0]["address"].split("/")[0] for r in (r0, r1))
    assert ip0 != ip1 and ip0 in env.addr(ns, "eth0") and ip1 in env.addr(ns, "net1")
    assert [(env.tmp / "ipam/weftnet" / ip).read_bytes() for ip in (ip0, ip1)] == [
        b"two\r\neth0", b"two\r\nnet1"]
    routes = _routes(env, ns)
    for dev in ("eth0", "net1"):
        assert f"default via 10.244.5.1 dev {dev}" in routes, routes
        assert f"10.244.0.0/16 via 10.244.5.1 dev {dev}" in routes, routes
    d.check("two", ns, "eth0")
    d.check("two", ns, "net1")
    assert len(_weft_links(env)) == 2
    # DEL net1: only net1's address and veth go; eth0 keeps working
    d.delete("two", ns, "net1")
    assert ipam_files(env.tmp) == [ip0] and len(_weft_links(env)) == 1
    assert "default via 10.244.5.1 dev eth0" in _routes(env, ns)
    d.check("two", ns, "eth0")
    assert env.tb.ping(env.ns_of(ns), "10.244.5.1")
    # GC that names only eth0 frees net1's second life, and keeps eth0
    d.add("two", ns, "net1")
    assert d.gc([("two", "eth0")]) == []
    assert ipam_files(env.tmp) == [ip0] and len(_weft_links(env)) == 1
    d.check("two", ns, "eth0")
    d.delete("two", ns, "eth0")
    assert ipam_files(env.tmp) == [] and _weft_links(env) == []
