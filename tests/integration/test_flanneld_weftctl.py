"""weftctl network set|get and leases against both stores (loopback, no root needed)."""

from __future__ import annotations

import asyncio
import json

import pytest

from overlay.cli.weftctl import main as weftctl
from overlay.store.api import StoreConfig
from overlay.store.client import connect

pytestmark = pytest.mark.etcd


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = weftctl(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


async def put_lease(endpoint: str, key: str, value: str, ttl: int) -> None:
    store = await connect(StoreConfig((endpoint,)))
    try:
        lease = await store.grant(ttl) if ttl else 0
        await store.put(key.encode(), value.encode(), lease)
    finally:
        await store.close()


def test_network_set_get_and_leases(store_endpoint: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    prefix = f"/test-{id(capsys)}/network"
    flags = ["-etcd-endpoints", store_endpoint, "-etcd-prefix", prefix]
    rc, _, err = run(capsys, "network", "set", "--network", "10.30.0.0/16", "--backend",
                     "vxlan", "--vni", "7", "--direct-routing", *flags)
    assert rc == 0, err
    rc, out, _ = run(capsys, "network", "get", *flags)
    assert rc == 0
    assert json.loads(out) == {"Network": "10.30.0.0/16",
                               "Backend": {"Type": "vxlan", "VNI": 7, "DirectRouting": True}}
    rc, _, err = run(capsys, "network", "set", "--network", "10.30.0.0/16", "--subnet-len",
                     "12", *flags)
    assert rc == 2 and "SubnetLen" in err
    asyncio.run(put_lease(store_endpoint, f"{prefix}/subnets/10.30.5.0-24",
                          '{"PublicIP":"198.18.0.11","PublicIPv6":null,"BackendType":"vxlan",'
                          '"BackendData":{"VNI":7,"VtepMAC":"0e:11:22:33:44:55"}}', 600))
    asyncio.run(put_lease(store_endpoint, f"{prefix}/subnets/10.30.6.0-24", "junk", 0))
    rc, out, _ = run(capsys, "leases", *flags)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["SUBNET", "PUBLIC"]
    row = lines[1].split()
    assert row[:4] == ["10.30.5.0/24", "198.18.0.11", "vxlan", "0e:11:22:33:44:55"]
    assert row[4].startswith(("9m", "10m"))
    assert "(malformed)" in lines[2]
    rc, out, _ = run(capsys, "leases", "--json", *flags)
    first = json.loads(out.splitlines()[0])
    assert 590 <= first["ttl_seconds"] <= 600


def test_network_set_refuses_to_orphan_live_leases(store_endpoint: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    prefix = f"/test-orphan-{id(capsys)}/network"
    flags = ["-etcd-endpoints", store_endpoint, "-etcd-prefix", prefix]
    rc, _, err = run(capsys, "network", "set", "--network", "10.31.0.0/16", *flags)
    assert rc == 0, err
    asyncio.run(put_lease(store_endpoint, f"{prefix}/subnets/10.31.5.0-24",
                          '{"PublicIP":"198.18.0.11","BackendType":"vxlan",'
                          '"BackendData":{"VNI":1,"VtepMAC":"0e:11:22:33:44:55"}}', 600))
    asyncio.run(put_lease(store_endpoint, f"{prefix}/subnets/10.31.6.0-24", "junk", 0))
    for change in (["--network", "10.250.0.0/16"],
                   ["--network", "10.31.0.0/16", "--backend", "host-gw"]):
        rc, _, err = run(capsys, "network", "set", *change, *flags)
        assert rc == 1 and "10.31.5.0/24 (host 198.18.0.11)" in err and "--force" in err, err
        rc, out, _ = run(capsys, "network", "get", *flags)
        assert json.loads(out)["Network"] == "10.31.0.0/16"  # unchanged
    rc, _, err = run(capsys, "network", "set", "--network", "10.30.0.0/15", *flags)
    assert rc == 0, err  # a larger network keeps every lease
    rc, _, err = run(capsys, "network", "set", "--network", "10.250.0.0/16", "--force", *flags)
    assert rc == 0, err
    rc, _, err = run(capsys, "network", "set", "--network", "10.31.1.0/16", *flags)
    assert rc == 2 and "host bits set" in err
    rc, _, err = run(capsys, "network", "set", "--network", "10.31.0.0/16", "--backend",
                     "host-gw", "--vni", "5", *flags)
    assert rc == 2 and "--vni does not apply to the host-gw backend" in err


def test_network_set_ipv6_and_flannel_json_round_trip(store_endpoint: str,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """Issue 17: --ipv6-network/--ipv6-subnet-len/--no-ipv4 write flannel's keys; a
    config written by hand in flannel's documented form reads back byte for byte."""
    prefix = f"/test6-{id(capsys)}/network"
    flags = ["-etcd-endpoints", store_endpoint, "-etcd-prefix", prefix]
    rc, _, err = run(capsys, "network", "set", "--network", "10.32.0.0/16", "--ipv6-network",
                     "fd00:32::/56", "--ipv6-subnet-len", "64", *flags)
    assert rc == 0, err
    rc, out, _ = run(capsys, "network", "get", *flags)
    assert rc == 0
    assert out == ('{"Network":"10.32.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:32::/56",'
                   '"IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}\n')
    rc, _, err = run(capsys, "network", "set", "--no-ipv4", "--ipv6-network", "fd00:32::/56",
                     "--force", *flags)
    assert rc == 0, err
    rc, out, _ = run(capsys, "network", "get", *flags)
    assert json.loads(out) == {"EnableIPv4": False, "EnableIPv6": True,
                               "IPv6Network": "fd00:32::/56", "Backend": {"Type": "vxlan"}}
    for bad, field in ((["--network", "10.32.0.0/16", "--ipv6-network", "fd00:32::/56",
                         "--ipv6-subnet-len", "57"], "IPv6SubnetLen"),
                       (["--no-ipv4"], "EnableIPv4"),
                       (["--ipv6-network", "fd00:32::/56"], "Network")):
        rc, _, err = run(capsys, "network", "set", *bad, *flags)
        assert rc == 2 and field in err, (bad, err)
    flannel_doc = ('{"EnableIPv6": true, "Network": "10.244.0.0/16", '
                   '"IPv6Network": "2001:cafe:42::/56", "Backend": {"Type": "vxlan"}}')
    asyncio.run(put_lease(store_endpoint, f"{prefix}/config", flannel_doc, 0))
    rc, out, err = run(capsys, "network", "get", *flags)
    assert (rc, out, err) == (0, flannel_doc + "\n", "")
