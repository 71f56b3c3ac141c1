"""subnet.env with IPv6 exactly as flannel writes it, and docker-opts' IPv6 options (issue 17).

flannel's WriteSubnetFile (pkg/subnet/subnet.go): with EnableIPv4
``FLANNEL_NETWORK=%s\\nFLANNEL_SUBNET=%s\\n`` (the lease's first IP), then with
EnableIPv6 ``FLANNEL_IPV6_NETWORK=%s\\nFLANNEL_IPV6_SUBNET=%s\\n`` (IPv6Network, the
IPv6 lease's first IP / its length, Go's RFC 5952 text), then
``FLANNEL_MTU=%d\\nFLANNEL_IPMASQ=%t\\n``.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
from pathlib import Path

import pytest

from cni import netconf
from overlay import subnetfile
from overlay.cli.network_cmd import cmd_docker_opts, docker_opts

N = ipaddress.IPv4Network
N6 = ipaddress.IPv6Network

FLANNEL_DUAL = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
                "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n"
                "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
FLANNEL_V6ONLY = ("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n"
                  "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")

DUAL = subnetfile.SubnetEnv(N("10.244.0.0/16"), N("10.244.3.0/24"), 1450, True,
                            N6("fd00:10:244::/56"), N6("fd00:10:244:3::/64"))
V6ONLY = subnetfile.SubnetEnv(subnetfile.NO_IPV4, subnetfile.NO_IPV4, 1450, False,
                              N6("fd00:10:244::/56"), N6("fd00:10:244:3::/64"), ipv4=False)


@pytest.mark.parametrize(("env", "text"), [(DUAL, FLANNEL_DUAL), (V6ONLY, FLANNEL_V6ONLY)],
                         ids=["dual-stack", "ipv6-only"])
def test_render_and_parse_flannel_ipv6_file(env: subnetfile.SubnetEnv, text: str,
                                            tmp_path: Path) -> None:
    assert env.render() == text
    assert subnetfile.parse(text) == env
    path = tmp_path / "subnet.env"
    subnetfile.write(path, env)
    assert path.read_text() == text
    assert subnetfile.read_previous_subnet6(path) == N6("fd00:10:244:3::/64")
    assert subnetfile.read_previous_subnet(path) == (N("10.244.3.0/24") if env.ipv4 else None)


def test_cni_copy_reads_the_ipv6_variables_too() -> None:
    want = subnetfile.parse_vars(FLANNEL_DUAL)
    assert netconf.subnet_vars(FLANNEL_DUAL) == want
    assert want["FLANNEL_IPV6_SUBNET"] == "fd00:10:244:3::1/64"


@pytest.mark.parametrize(("text", "words"), [
    (FLANNEL_V6ONLY.replace("FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n", ""),
     "FLANNEL_IPV6_SUBNET is missing"),
    (FLANNEL_DUAL.replace("fd00:10:244::/56", "10.9.0.0/16"), "FLANNEL_IPV6_NETWORK"),
    (FLANNEL_DUAL.replace("fd00:10:244:3::1/64", "fd00::zz/64"), "FLANNEL_IPV6_SUBNET"),
], ids=["v6-subnet-missing", "v6-network-not-v6", "v6-subnet-garbage"])
def test_ipv6_parse_errors_name_the_variable(text: str, words: str) -> None:
    with pytest.raises(subnetfile.SubnetFileError, match=words):
        subnetfile.parse(text)


def test_docker_opts_ipv6() -> None:
    env = subnetfile.parse_vars(FLANNEL_DUAL)
    assert docker_opts(env, False, False, "DOCKER_OPTS", False) == (
        'DOCKER_OPT_BIP="--bip=10.244.3.1/24"\nDOCKER_OPT_IPMASQ="--ip-masq=false"\n'
        'DOCKER_OPT_IPV6="--ipv6 --fixed-cidr-v6=fd00:10:244:3::/64"\n'
        'DOCKER_OPT_MTU="--mtu=1450"\n'
        'DOCKER_OPTS=" --bip=10.244.3.1/24 --ip-masq=false --ipv6 '
        '--fixed-cidr-v6=fd00:10:244:3::/64 --mtu=1450"\n')


def test_docker_opts_ipv6_only_file(tmp_path: Path) -> None:
    path = tmp_path / "subnet.env"
    path.write_text(FLANNEL_V6ONLY)
    out = io.StringIO()
    args = argparse.Namespace(subnet_file=str(path), output="-", individual=True,
                              combined=False, key="DOCKER_OPTS", no_masq=False)
    assert cmd_docker_opts(args, out) == 0
    assert out.getvalue() == ('DOCKER_OPT_IPMASQ="--ip-masq=true"\n'
                              'DOCKER_OPT_IPV6="--ipv6 --fixed-cidr-v6=fd00:10:244:3::/64"\n'
                              'DOCKER_OPT_MTU="--mtu=1450"\n')
