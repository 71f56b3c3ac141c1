"""subnet.env: flannel's exact format, atomic replacement, strict parse; docker-opts output."""

from __future__ import annotations

import argparse
import io
import ipaddress
import os
from pathlib import Path

import pytest

from overlay import subnetfile
from overlay.cli.network_cmd import cmd_docker_opts, docker_opts, format_leases

ENV = subnetfile.SubnetEnv(ipaddress.IPv4Network("10.244.0.0/16"),
                           ipaddress.IPv4Network("10.244.3.0/24"), 1450, False)


def test_render_is_flannels_format() -> None:
    assert ENV.render() == ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
                            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")


def test_write_atomic_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run" / "flannel" / "subnet.env"
    subnetfile.write(path, ENV)
    assert subnetfile.read(path) == ENV
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    subnetfile.write(path, subnetfile.SubnetEnv(ENV.network, ENV.subnet, 1500, True))
    assert subnetfile.read(path).ip_masq is True
    assert os.listdir(path.parent) == ["subnet.env"]  # no temp files left
    assert subnetfile.read_previous_subnet(path) == ENV.subnet
    assert subnetfile.read_previous_subnet(tmp_path / "missing") is None


@pytest.mark.parametrize(("text", "words"), [
    ("FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n", "FLANNEL_SUBNET"),
    ("FLANNEL_NETWORK=x\nFLANNEL_SUBNET=10.0.3.1/24\nFLANNEL_MTU=1\nFLANNEL_IPMASQ=false\n",
     "FLANNEL_NETWORK"),
    ("FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.3.1/24\nFLANNEL_MTU=big\n"
     "FLANNEL_IPMASQ=false\n", "FLANNEL_MTU"),
    ("FLANNEL_NETWORK=10.0.0.0/16\nFLANNEL_SUBNET=10.0.3.1/24\nFLANNEL_MTU=1\n"
     "FLANNEL_IPMASQ=maybe\n", "FLANNEL_IPMASQ"),
], ids=["missing-subnet", "bad-network", "bad-mtu", "bad-masq"])
def test_parse_errors_name_the_variable(text: str, words: str) -> None:
    with pytest.raises(subnetfile.SubnetFileError, match=words):
        subnetfile.parse(text)


ENV_VARS = {"FLANNEL_SUBNET": "10.1.15.1/24", "FLANNEL_MTU": "1472", "FLANNEL_IPMASQ": "true"}


@pytest.mark.parametrize(("individual", "combined", "key", "no_masq", "want"), [
    (False, False, "DOCKER_OPTS", False,
     'DOCKER_OPT_BIP="--bip=10.1.15.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=false"\n'
     'DOCKER_OPT_MTU="--mtu=1472"\n'
     'DOCKER_OPTS=" --bip=10.1.15.1/24 --ip-masq=false --mtu=1472"\n'),
    (True, False, "DOCKER_OPTS", True,
     'DOCKER_OPT_BIP="--bip=10.1.15.1/24"\nDOCKER_OPT_MTU="--mtu=1472"\n'),
    (False, True, "OPTS", False, 'OPTS=" --bip=10.1.15.1/24 --ip-masq=false --mtu=1472"\n'),
], ids=["default-both", "individual-no-masq", "combined-custom-key"])
def test_docker_opts(individual: bool, combined: bool, key: str, no_masq: bool,
                     want: str) -> None:
    assert docker_opts(ENV_VARS, individual, combined, key, no_masq) == want


def test_docker_opts_masq_inverted_when_flannel_does_not_masquerade() -> None:
    out = docker_opts({**ENV_VARS, "FLANNEL_IPMASQ": "false"}, True, False, "K", False)
    assert 'DOCKER_OPT_IPMASQ="--ip-masq=true"' in out


def test_docker_opts_command_reads_file_and_writes_output(tmp_path: Path) -> None:
    src = tmp_path / "subnet.env"
    subnetfile.write(src, ENV)
    out = tmp_path / "docker_opts.env"
    args = argparse.Namespace(subnet_file=str(src), output=str(out), individual=False,
                              combined=True, key="DOCKER_OPTS", no_masq=False)
    assert cmd_docker_opts(args) == 0
    assert out.read_text() == 'DOCKER_OPTS=" --bip=10.244.3.1/24 --ip-masq=true --mtu=1450"\n'
    buf = io.StringIO()
    args.output = "-"
    assert cmd_docker_opts(args, stdout=buf) == 0 and buf.getvalue() == out.read_text()
    args.subnet_file = str(tmp_path / "nope")
    assert cmd_docker_opts(args) == 1


def test_format_leases_table() -> None:
    text = format_leases([{"subnet": "10.244.3.0/24", "public_ip": "198.18.0.11",
                           "backend": "vxlan", "vtep_mac": "0e:aa:bb:cc:dd:ee", "ttl": "23h59m"}])
    head, row = text.splitlines()
    assert head.split() == ["SUBNET", "PUBLIC", "IP", "BACKEND", "VTEP", "MAC", "TTL"]
    assert row.split() == ["10.244.3.0/24", "198.18.0.11", "vxlan", "0e:aa:bb:cc:dd:ee",
                           "23h59m"]
