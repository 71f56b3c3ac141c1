"""The installed ``weft`` plugin on dual-stack and IPv6-only hosts, exec'd as libcni does.

Every test runs in a fresh host namespace (IPv6 addresses exist only inside the
test's namespaces), with flanneld's dual-stack or IPv6-only subnet.env in a tmp
dir, and checks the result JSON against the kernel and host-local's files.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlay.testbed import Testbed, open_testbed
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
SUB6 = "fd00:10:244:5::1/64"
GW6 = "fd00:10:244:5::1"


class Env(CniHost):
    """The plugin's host namespace on a dual-stack subnet.env."""

    def __init__(self, tb: Testbed, tmp: Path) -> None:
        super().__init__(tb, tmp, subnet6=SUB6)

    def ip(self, netns: str, *args: str) -> str:
        return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True,
                              check=True).stdout

    def sysctl(self, netns: str, key: str) -> str:
        return self.tb.exec(netns, ["cat", f"/proc/sys/{key}"]).stdout.strip()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with open_testbed(1) as tb:
        yield Env(tb, tmp_path)


def _addr(result: dict[str, Any], i: int) -> str:
    return str(result["ips"][i]["address"].split("/")[0])


@pytest.mark.parametrize("version", VERSIONS)
def test_dual_stack_add_check_del_each_version(env: Env, version: str) -> None:
    d = env.driver(version)
    ns = env.container()
    result = d.add("ds1", ns)
    # usable the moment ADD returns: no settling, no retry (DAD is off on both ends)
    assert env.tb.ping(env.ns_of(ns), GW6, timeout=2)
    assert env.tb.ping(env.ns_of(ns), "10.244.5.1", timeout=2)
    validate_result(version, result)
    v4, v6 = result["ips"]
    assert v4["address"].startswith("10.244.5.") and v4["address"].endswith("/24")
    assert v6["address"] == "fd00:10:244:5::2/64"
    assert (v4["gateway"], v6["gateway"]) == ("10.244.5.1", GW6)
    assert v4["interface"] == v6["interface"] == 2
    assert result["interfaces"][2] == {**result["interfaces"][2], "name": "eth0",
                                       "sandbox": ns}
    if version < "1.0.0":
        assert (v4["version"], v6["version"]) == ("4", "6")
    assert result["routes"] == [
        {"dst": "0.0.0.0/0", "gw": "10.244.5.1"}, {"dst": "10.244.0.0/16", "gw": "10.244.5.1"},
        {"dst": "::/0", "gw": GW6}, {"dst": "fd00:10:244::/56", "gw": GW6}]
    cns = env.ns_of(ns)
    addr6 = env.ip(cns, "-6", "addr", "show", "dev", "eth0")
    assert "fd00:10:244:5::2/64" in addr6 and "tentative" not in addr6
    routes6 = env.ip(cns, "-6", "route")
    assert f"default via {GW6} dev eth0" in routes6
    assert f"fd00:10:244::/56 via {GW6} dev eth0" in routes6
    assert env.sysctl(cns, "net/ipv6/conf/eth0/accept_dad") == "0"
    host = env.host.netns
    bridge6 = env.ip(host, "-6", "addr", "show", "dev", "cni0")
    # neither the gateway nor the link-local address (the source of the bridge's
    # neighbour solicitations for forwarded packets) is tentative
    assert f"{GW6}/64" in bridge6 and "fe80::" in bridge6 and "tentative" not in bridge6
    assert env.sysctl(host, "net/ipv6/conf/cni0/accept_dad") == "0"
    assert env.sysctl(host, "net/ipv6/conf/cni0/accept_ra") == "0"
    assert env.sysctl(host, "net/ipv6/conf/all/forwarding") == "1"
    files = ipam_files(env.tmp)
    assert files == sorted([_addr(result, 0), "fd00:10:244:5::2"])
    assert (env.tmp / "ipam/weftnet/fd00:10:244:5::2").read_bytes() == b"ds1\r\neth0"
    assert (env.tmp / "ipam/weftnet/last_reserved_ip.1").read_text() == "fd00:10:244:5::2"
    if version >= "0.4.0":
        d.check("ds1", ns)
    if version == "1.1.0":
        d.status()
        assert d.gc([("ds1", "eth0")]) == [] and ipam_files(env.tmp) == files
    d.delete("ds1", ns)
    assert ipam_files(env.tmp) == []
    assert [n for n in host_links(host) if n.startswith("veth")] == []
    d.delete("ds1", ns)  # idempotent


@pytest.mark.parametrize("version", VERSIONS)
def test_ipv6_only_host(env: Env, version: str) -> None:
    write_subnet_env(env.tmp / "subnet.env", subnet=None, subnet6=SUB6)
    d = env.driver(version)
    a, b = env.container(), env.container()
    ra, rb = d.add("v6a", a), d.add("v6b", b)
    validate_result(version, ra)
    assert [ip["address"] for ip in ra["ips"]] == ["fd00:10:244:5::2/64"]
    assert [ip["address"] for ip in rb["ips"]] == ["fd00:10:244:5::3/64"]
    assert ra["routes"] == [{"dst": "::/0", "gw": GW6}, {"dst": "fd00:10:244::/56", "gw": GW6}]
    assert env.tb.ping(env.ns_of(a), "fd00:10:244:5::3", timeout=2)  # across the bridge
    assert "inet " not in env.ip(env.ns_of(a), "addr", "show", "dev", "eth0")
    assert "inet " not in env.ip(env.host.netns, "addr", "show", "dev", "cni0")
    if version >= "0.4.0":
        d.check("v6a", a)
    if version == "1.1.0":
        assert d.gc([("v6a", "eth0")]) == [] and ipam_files(env.tmp) == ["fd00:10:244:5::2"]
        assert "eth0" not in host_links(env.ns_of(b))
        d.status()
    else:
        assert ipam_files(env.tmp) == ["fd00:10:244:5::2", "fd00:10:244:5::3"]
    assert (env.tmp / "ipam/weftnet/last_reserved_ip.0").read_text() == "fd00:10:244:5::3"
    d.delete("v6a", a)
    d.delete("v6b", b)
    assert ipam_files(env.tmp) == []


def test_ranges_for_both_families_in_the_netconf(env: Env) -> None:
    """host-local's ``ranges``: one address from each set, within rangeStart..rangeEnd,
    a set's second range used when its first is full, the set's gateway on the bridge."""
    ipam = {"ranges": [
        [{"subnet": "10.250.0.0/24", "rangeStart": "10.250.0.10", "rangeEnd": "10.250.0.11"}],
        [{"subnet": "fd00:77::/120", "rangeStart": "fd00:77::10", "rangeEnd": "fd00:77::10"},
         {"subnet": "fd00:78::/64", "gateway": "fd00:78::fe"}]]}
    d = env.driver(ipam=ipam)
    got = [d.add(f"r{i}", env.container()) for i in range(2)]
    assert [[ip["address"] for ip in r["ips"]] for r in got] == [
        ["10.250.0.10/24", "fd00:77::10/120"], ["10.250.0.11/24", "fd00:78::1/64"]]
    assert [[ip["gateway"] for ip in r["ips"]] for r in got] == [
        ["10.250.0.1", "fd00:77::1"], ["10.250.0.1", "fd00:78::fe"]]
    br = env.ip(env.host.netns, "addr", "show", "dev", "cni0")
    assert all(a in br for a in ("10.250.0.1/24", "fd00:77::1/120", "fd00:78::fe/64"))
    with pytest.raises(CniFailure) as err:  # the IPv4 set is full: nothing is kept
        d.add("r2", env.container())
    assert err.value.code == 11 and "no IP addresses available" in err.value.error["msg"]
    assert len(ipam_files(env.tmp)) == 4
    d.delete("r0", "")
    assert d.gc([]) == [] and ipam_files(env.tmp) == []


def test_several_ipv6_gateways_of_the_config_live_side_by_side(env: Env) -> None:
    """Two IPv6 ranges of one set inside the cluster network: the second range's gateway
    joins the first's on the bridge (a gateway of the config is never "stale"), while a
    gateway of an earlier lease still is (test_stale_ipv6_gateway_...)."""
    ipam = {"ranges": [[{"subnet": "fd00:10:244:8::/126"}, {"subnet": "fd00:10:244:9::/64"}]]}
    d = env.driver(ipam=ipam)
    got = [d.add(f"g{i}", env.container())["ips"][0]["address"] for i in range(3)]
    assert got == ["fd00:10:244:8::2/126", "fd00:10:244:8::3/126", "fd00:10:244:9::2/64"]
    br = env.ip(env.host.netns, "-6", "addr", "show", "dev", "cni0")
    assert "fd00:10:244:8::1/126" in br and "fd00:10:244:9::1/64" in br


def test_stale_ipv6_gateway_replaced_when_empty_else_clear_error(env: Env) -> None:
    d = env.driver()
    ns = env.container()
    d.add("s1", ns)
    d.delete("s1", ns)
    write_subnet_env(env.tmp / "subnet.env", subnet6="fd00:10:244:9::1/64")
    assert d.add("s2", ns)["ips"][1]["address"] == "fd00:10:244:9::2/64"
    br = env.ip(env.host.netns, "-6", "addr", "show", "dev", "cni0")
    assert "fd00:10:244:9::1/64" in br and "fd00:10:244:5::1" not in br
    assert "fe80::" in br  # the bridge's link-local address is not weft's to remove
    write_subnet_env(env.tmp / "subnet.env", subnet6="fd00:10:244:a::1/64")
    before = env.state()
    with pytest.raises(CniFailure) as err:
        d.add("s3", env.container())
    assert err.value.code == 102
    assert "already has IP address fd00:10:244:9::1/64" in err.value.error["msg"]
    assert env.state() == before


def test_requested_addresses_of_both_families(env: Env) -> None:
    d = env.driver()
    ns = env.container()
    r = d.add("req", ns, args="IP=fd00:10:244:5::77,10.244.5.77")
    assert [ip["address"] for ip in r["ips"]] == ["10.244.5.77/24", "fd00:10:244:5::77/64"]
    with pytest.raises(CniFailure) as err:
        d.add("req2", env.container(), args="IP=fd00:10:244:9::1")
    assert err.value.code == 4 and "fd00:10:244:9::1" in err.value.error["msg"]
    assert ipam_files(env.tmp) == ["10.244.5.77", "fd00:10:244:5::77"]
    d.delete("req", ns)


def test_check_detects_a_missing_ipv6_address(env: Env) -> None:
    d = env.driver()
    ns = env.container()
    d.add("chk", ns)
    subprocess.run(["ip", "-n", env.ns_of(ns), "-6", "addr", "del", "fd00:10:244:5::2/64",
                    "dev", "eth0"], check=True)
    with pytest.raises(CniFailure) as err:
        d.check("chk", ns)
    assert err.value.code == 103 and "fd00:10:244:5::2" in err.value.error["msg"]
    d.delete("chk", ns)
    d.add("chk", ns)
    subprocess.run(["ip", "-n", env.ns_of(ns), "-6", "route", "del", "fd00:10:244::/56"],
                   check=True)
    with pytest.raises(CniFailure) as err:
        d.check("chk", ns)
    assert err.value.code == 103 and "route to fd00:10:244::/56" in err.value.error["msg"]
    d.delete("chk", ns)


def test_ipmasq_for_both_families_follows_containers(env: Env) -> None:
    d = env.driver(ipMasq=True)
    a, b = env.container(), env.container()
    ra, _ = d.add("m1", a), d.add("m2", b)
    rules = nft_ruleset(env.host.netns)
    assert "table ip6 weft-weftnet" in rules and "table ip weft-weftnet" in rules
    assert "ip6 daddr != fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade" in rules
    assert _addr(ra, 1) in rules and _addr(ra, 0) in rules
    d.delete("m1", a)
    rules = nft_ruleset(env.host.netns)
    assert _addr(ra, 1) not in rules and _addr(ra, 0) not in rules
    d.delete("m2", b)
    assert "weft-weftnet" not in nft_ruleset(env.host.netns)


def test_gc_frees_both_families(env: Env) -> None:
    d = env.driver(ipMasq=True)
    keep, drop = env.container(), env.container()
    rk = d.add("keep", keep)
    weft = d.conflist["plugins"][0]
    d.invoke(weft, "ADD", d.plugin_conf(weft, None, None), "uncached", drop, "eth0")
    assert len(ipam_files(env.tmp)) == 4
    assert d.gc([("keep", "eth0")]) == []
    assert ipam_files(env.tmp) == sorted([_addr(rk, 0), _addr(rk, 1)])
    assert "eth0" not in host_links(env.ns_of(drop))
    rules = nft_ruleset(env.host.netns)
    assert _addr(rk, 1) in rules and "fd00:10:244:5::3" not in rules
    d.check("keep", keep)
    assert d.gc([]) == [] and ipam_files(env.tmp) == []
    assert "weft-weftnet" not in nft_ruleset(env.host.netns)


BAD = [
    # id, subnet.env text (None: the dual-stack default), extra netconf, code, words
    ("bad-ipv6-subnet-env", "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\n"
     "FLANNEL_IPV6_SUBNET=fd00:10:244:zz::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
     {}, 7, "FLANNEL_IPV6_SUBNET 'fd00:10:244:zz::1/64'"),
    ("bad-ipv6-network-env", "FLANNEL_IPV6_NETWORK=fd00::/999\n"
     f"FLANNEL_IPV6_SUBNET={SUB6}\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
     {}, 7, "FLANNEL_IPV6_NETWORK"),
    ("ipv6-subnet-without-network", f"FLANNEL_IPV6_SUBNET={SUB6}\nFLANNEL_MTU=1450\n"
     "FLANNEL_IPMASQ=true\n", {}, 11, "FLANNEL_IPV6_NETWORK"),
    ("ipv6-subnet-too-small", "FLANNEL_IPV6_NETWORK=fd00::/56\n"
     "FLANNEL_IPV6_SUBNET=fd00::1/127\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
     {}, 7, "too small"),
    ("malformed-v6-range", None, {"ipam": {"ranges": [[{"subnet": "10.250.0.0/24"}],
                                                      [{"subnet": "fd00::1::/64"}]]}},
     7, "ipam.ranges[1][0].subnet 'fd00::1::/64'"),
    ("v6-range-start-outside", None, {"ipam": {"ranges": [[{
        "subnet": "fd00::/64", "rangeStart": "fd01::5"}]]}}, 7, "rangeStart fd01::5"),
    ("v4-gateway-in-v6-range", None, {"ipam": {"ranges": [[{
        "subnet": "fd00::/64", "gateway": "10.0.0.1"}]]}}, 7, "ipam.ranges[0][0].gateway"),
    ("mtu-below-ipv6-minimum", None, {"mtu": 1200}, 7, "mtu 1200"),
    ("overlapping-sets", None, {"ipam": {"ranges": [[{"subnet": "fd00::/64"}],
                                                   [{"subnet": "fd00::/48"}]]}},
     7, "overlaps"),
]


@pytest.mark.parametrize(("senv", "extra", "code", "words"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
def test_bad_ipv6_input_is_named_and_changes_nothing(
        env: Env, senv: str | None, extra: dict[str, Any], code: int, words: str) -> None:
    if senv is not None:
        (env.tmp / "subnet.env").write_text(senv)
    d = env.driver(**extra)
    ns = env.container()
    before = env.state()
    weft = d.conflist["plugins"][0]
    res = d.exec_raw("weft", {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad",
                              "CNI_NETNS": ns, "CNI_IFNAME": "eth0"},
                     json.dumps(d.plugin_conf(weft, None, None)).encode())
    assert res.rc != 0
    validate_error(res.json(), code)
    assert words in res.json()["msg"], res.json()
    assert env.state() == before
    assert "eth0" not in host_links(env.ns_of(ns))
