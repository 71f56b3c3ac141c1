"""The weft plugin on real flanneld hosts: containers on different hosts ping each other."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cnidriver import CniDriver, host_links, install_weft, ipam_files
from tests.integration.flanneld_cluster import Cluster, running_cluster

pytestmark = [pytest.mark.root, pytest.mark.etcd]


@pytest.fixture
def cluster2(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(2, "embedded", tmp_path) as c:
        yield c


def test_containers_on_two_flanneld_hosts_ping_each_other(cluster2: Cluster,
                                                          tmp_path: Path) -> None:
    c = cluster2
    c.network_set("vxlan")
    hosts = ["h1", "h2"]
    for h in hosts:
        c.start(h)
    for h in hosts:
        c.wait_ready(h)
    bin_dir = tmp_path / "bin"
    install_weft(bin_dir)
    drivers = {}
    for h in hosts:
        conf = {"cniVersion": "1.1.0", "name": "weftnet", "plugins": [{
            "type": "weft", "subnetFile": str(c.subnet_file(h)),
            "dataDir": str(tmp_path / h / "ipam")}]}
        drivers[h] = CniDriver(conf, [str(bin_dir)], c.tb.hosts[h].netns,
                               tmp_path / h / "cache")
    pods: dict[str, tuple[str, str, str]] = {}  # name -> (host, netns path, ip)
    for h in hosts:
        drivers[h].status()
        subnet = c.subnet(h)
        for i in range(2):
            ns = c.tb.add_container(h, f"pod{i}").netns_path
            res = drivers[h].add(f"{h}-pod{i}", ns)
            ip = res["ips"][0]["address"].split("/")[0]
            assert res["ips"][0]["address"].endswith(f"/{subnet.prefixlen}")
            assert ip.startswith(str(subnet.network_address).rsplit(".", 1)[0])
            mtu = res["interfaces"][2]["mtu"]
            assert mtu == c.env(h).mtu == 1450
            pods[f"{h}-pod{i}"] = (h, ns, ip)
    for a, b in itertools.permutations(pods, 2):
        src_ns = pods[a][1].rsplit("/", 1)[1]
        assert c.tb.wait_ping(src_ns, pods[b][2], within=10), \
            f"{a} ({pods[a][2]}) cannot reach {b} ({pods[b][2]})"
    for name, (h, ns, _) in pods.items():
        drivers[h].check(name, ns)
        drivers[h].delete(name, ns)
    for h in hosts:
        assert ipam_files(tmp_path / h) == []
        assert not [n for n in host_links(c.tb.hosts[h].netns) if n.startswith("veth")]
