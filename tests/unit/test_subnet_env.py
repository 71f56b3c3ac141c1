"""One subnet.env parser: overlay.subnetfile (flanneld, weftctl docker-opts, the sandbox)
and the CNI plugin's import-light copy read the same table of inputs the same way,
quotes and ``export`` included."""

from __future__ import annotations

import ipaddress

import pytest

from cni import netconf
from overlay import subnetfile

BASE = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")

VARS = [  # (text, the variables both parsers must see)
    (BASE, {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.7.1/24",
            "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}),
    ('# comment\n\n  A = "1"  \nB=\'two words\'\n', {"A": "1", "B": "two words"}),
    ("export A=1\nexport   B=\"x\"\n", {"A": "1", "B": "x"}),
    ('A="unmatched\nB=\'mixed"\nC=""\n', {"A": '"unmatched', "B": "'mixed\"", "C": ""}),
    ("no equals sign\n=empty key\nD=a=b\n", {"": "empty key", "D": "a=b"}),
    ("A=1\nA=2\n", {"A": "2"}),
    ("DOCKER_OPT_BIP=\"--bip=10.244.7.1/24\"\r\n", {"DOCKER_OPT_BIP": "--bip=10.244.7.1/24"}),
    (BASE + "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n",
     {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.7.1/24",
      "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true",
      "FLANNEL_IPV6_NETWORK": "fd00:10:244::/56", "FLANNEL_IPV6_SUBNET": "fd00:10:244:7::1/64"}),
]


@pytest.mark.parametrize(("text", "want"), VARS, ids=[str(i) for i in range(len(VARS))])
def test_both_parsers_read_the_same_variables(text: str, want: dict[str, str]) -> None:
    assert subnetfile.parse_vars(text) == want
    assert netconf.subnet_vars(text) == want


FILES = [
    BASE,
    'export FLANNEL_NETWORK="10.244.0.0/16"\nexport FLANNEL_SUBNET="10.244.7.1/24"\n'
    "export FLANNEL_MTU='1450'\nexport FLANNEL_IPMASQ=false\n",
    "# written by flanneld\n" + BASE.replace("10.244.7.1/24", "10.244.200.1/26"),
]


@pytest.mark.parametrize("text", FILES, ids=["plain", "quoted-export", "comment-26"])
def test_both_parsers_agree_on_a_whole_file(text: str) -> None:
    ours = subnetfile.parse(text)
    cni = netconf.parse_subnet_env(text, "subnet.env")
    assert str(cni.network) == str(ours.network)
    assert str(cni.subnet) == str(ours.subnet)
    assert str(cni.gateway) == str(ipaddress.IPv4Interface(
        netconf.subnet_vars(text)["FLANNEL_SUBNET"]).ip)
    assert (cni.mtu, cni.ipmasq) == (ours.mtu, ours.ip_masq)
