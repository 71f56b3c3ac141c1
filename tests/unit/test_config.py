"""Network config validation: defaults as flannel's, errors naming the field."""

from __future__ import annotations

import ipaddress
import json

import pytest

from overlay.config import (
    ConfigError,
    DaemonConfig,
    build_network_json,
    check_network_config,
    parse_network_config,
)
from overlay.lease.change import config_change_conflicts
from overlay.lease.model import Lease

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network


@pytest.mark.parametrize(
    ("obj", "subnet_len", "smin", "smax", "btype"),
    [
        ({"Network": "10.244.0.0/16"}, 24, "10.244.1.0", "10.244.255.0", "vxlan"),
        ({"Network": "10.0.0.0/8", "SubnetLen": 20}, 20, "10.0.16.0", "10.255.240.0", "vxlan"),
        ({"Network": "10.1.0.0/24"}, 26, "10.1.0.64", "10.1.0.192", "vxlan"),
        ({"Network": "10.1.0.0/28"}, 30, "10.1.0.4", "10.1.0.12", "vxlan"),
        ({"Network": "10.1.0.0/22"}, 24, "10.1.1.0", "10.1.3.0", "vxlan"),
        ({"Network": "10.5.0.0/16", "Backend": {"Type": "host-gw"}}, 24, "10.5.1.0",
         "10.5.255.0", "host-gw"),
        ({"Network": "10.5.0.0/16", "Backend": {"Type": "UDP", "Port": 8285}}, 24, "10.5.1.0",
         "10.5.255.0", "udp"),
        ({"Network": "10.5.0.0/16", "SubnetMin": "10.5.10.0", "SubnetMax": "10.5.20.0"}, 24,
         "10.5.10.0", "10.5.20.0", "vxlan"),
    ],
    ids=["defaults-16", "subnetlen-20", "small-24", "smallest-28", "prefix-22-keeps-24",
         "host-gw", "udp-case-insensitive", "min-max"],
)
def test_valid_configs(obj: dict[str, object], subnet_len: int, smin: str, smax: str,
                       btype: str) -> None:
    cfg = check_network_config(obj)
    assert (cfg.subnet_len, cfg.subnet_min, cfg.subnet_max, cfg.backend_type) == (
        subnet_len, A(smin), A(smax), btype)


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (b"{not json", "(document)", "JSON"),
        (b"[1,2]", "(document)", "object"),
        (b"{}", "Network", "missing"),
        (b'{"Network": "banana"}', "Network", "not an IPv4"),
        (b'{"Network": "10.0.0.0/29"}', "Network", "too small"),
        (b'{"Network": "10.0.0.0/16", "SubnetLen": 17}', "SubnetLen", "out of range"),
        (b'{"Network": "10.0.0.0/16", "SubnetLen": 31}', "SubnetLen", "out of range"),
        (b'{"Network": "10.0.0.0/16", "SubnetLen": "24"}', "SubnetLen", "integer"),
        (b'{"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}', "SubnetMin", "outside"),
        (b'{"Network": "10.0.0.0/16", "SubnetMax": "10.0.3.7"}', "SubnetMax", "aligned"),
        (b'{"Network": "10.0.0.0/16", "SubnetMin": "10.0.9.0", "SubnetMax": "10.0.3.0"}',
         "SubnetMin", "above"),
        (b'{"Network": "10.0.0.0/16", "Backend": {"Type": "wireguard"}}', "Backend.Type",
         "unknown backend"),
        (b'{"Network": "10.0.0.0/16", "Backend": "vxlan"}', "Backend", "object"),
        (b'{"Network": "10.0.0.0/16", "EnableIPv6": true}', "IPv6Network", "missing"),
    ],
    ids=["bad-json", "not-object", "no-network", "network-garbage", "network-too-small",
         "subnetlen-too-short", "subnetlen-31", "subnetlen-string", "min-outside",
         "max-misaligned", "min-above-max", "unknown-backend", "backend-not-object",
         "ipv6-no-network"],
)
def test_invalid_configs_name_the_field(raw: bytes, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_network_config(raw)
    assert info.value.field == field
    assert words in str(info.value)
    assert field in str(info.value)


def test_missing_backend_means_vxlan() -> None:
    assert parse_network_config(b'{"Network":"10.244.0.0/16"}').backend_type == "vxlan"


def test_fits() -> None:
    cfg = parse_network_config(b'{"Network":"10.244.0.0/16"}')
    assert cfg.fits(N("10.244.7.0/24"))
    assert not cfg.fits(N("10.244.0.0/24"))  # first subnet skipped
    assert not cfg.fits(N("10.244.7.0/25"))
    assert not cfg.fits(N("10.245.7.0/24"))


def test_build_network_json_round_trips() -> None:
    obj = build_network_json("10.244.0.0/16", 24, "vxlan", vni=2, port=4789,
                             direct_routing=True)
    assert obj == {"Network": "10.244.0.0/16", "SubnetLen": 24,
                   "Backend": {"Type": "vxlan", "VNI": 2, "Port": 4789, "DirectRouting": True}}
    cfg = parse_network_config(json.dumps(obj))
    assert cfg.backend["VNI"] == 2
    with pytest.raises(ConfigError):
        build_network_json("10.244.0.0/30")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        pytest.param({"network": "10.244.1.0/16"}, "host bits set (did you mean 10.244.0.0/16",
                     id="host-bits"),
        pytest.param({"network": "10.244.0.0/16", "backend": "host-gw", "vni": 5},
                     "--vni does not apply to the host-gw backend", id="host-gw-vni"),
        pytest.param({"network": "10.244.0.0/16", "backend": "host-gw", "port": 9000},
                     "--port does not apply to the host-gw backend", id="host-gw-port"),
        pytest.param({"network": "10.244.0.0/16", "backend": "udp", "direct_routing": True},
                     "--direct-routing does not apply to the udp backend", id="udp-direct"),
        pytest.param({"network": "10.244.0.0/16", "backend": "udp", "vni": 2},
                     "--vni does not apply to the udp backend", id="udp-vni"),
    ],
)
def test_build_network_json_refuses_what_cannot_apply(kwargs: dict[str, object],
                                                      words: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_network_json(**kwargs)  # type: ignore[arg-type]
    assert words in str(err.value)


def _lease(subnet: str, btype: str = "vxlan", vni: int = 1) -> Lease:
    data = {"VNI": vni, "VtepMAC": "0e:00:00:00:00:01"} if btype == "vxlan" else {}
    return Lease(N(subnet), A("198.18.0.11"), btype, data)


@pytest.mark.parametrize(
    ("new", "leases", "expected"),
    [
        pytest.param({"Network": "10.244.0.0/16"}, [_lease("10.244.4.0/24")], [], id="same"),
        pytest.param({"Network": "10.244.0.0/15"}, [_lease("10.244.4.0/24")], [], id="grown"),
        pytest.param({"Network": "10.250.0.0/16"},
                     [_lease("10.244.4.0/24"), _lease("10.244.9.0/24")],
                     ["10.244.4.0/24: outside the new Network 10.250.0.0/16",
                      "10.244.9.0/24: outside the new Network"], id="orphaned"),
        pytest.param({"Network": "10.244.0.0/16", "SubnetLen": 25}, [_lease("10.244.4.0/24")],
                     ["10.244.4.0/24: outside the new Network"], id="subnet-len"),
        pytest.param({"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}},
                     [_lease("10.244.4.0/24")],
                     ["runs the vxlan backend, the new config says host-gw"], id="backend"),
        pytest.param({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 4}},
                     [_lease("10.244.4.0/24")], ["uses VNI 1, the new config says 4"],
                     id="vni"),
        pytest.param({"Network": "10.244.0.0/16"}, [], [], id="no-leases"),
    ],
)
def test_config_change_conflicts(new: dict[str, object], leases: list[Lease],
                                 expected: list[str]) -> None:
    found = [str(c) for c in config_change_conflicts(check_network_config(new), leases)]
    assert len(found) == len(expected), found
    for text, words in zip(found, expected, strict=True):
        subnet, _, reason = words.rpartition(": ")
        assert reason in text and text.startswith(subnet or "10.244.4.0/24 (host 198.18.0.11)")


@pytest.mark.parametrize(("ttl", "margin", "interval"),
                         [(86400, 60, 82800.0), (3, 60, 1.0), (600, 5, 300.0)],
                         ids=["flannel-defaults", "short-test-ttl", "margin-half"])
def test_renew_interval(ttl: int, margin: int, interval: float) -> None:
    assert DaemonConfig(lease_ttl=ttl, renew_margin=margin).renew_interval() == interval
