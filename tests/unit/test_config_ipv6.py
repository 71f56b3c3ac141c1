"""IPv6 and dual-stack network config: flannel's keys, defaults and checks (issue 17).

flannel's facts (pkg/subnet/config.go, ParseConfig + CheckNetworkConfig):
``EnableIPv4`` defaults to true; with ``EnableIPv6`` an ``IPv6Network`` of /124 or
larger is required; ``IPv6SubnetLen`` defaults to 64 when the prefix is ≤ 62, else
prefix + 2, and must be within prefix + 2 .. 126; ``IPv6SubnetMin`` defaults to the
second subnet, ``IPv6SubnetMax`` to the last one; both inside and aligned.
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from overlay.config import (
    ConfigError,
    build_network_json,
    check_daemon_support,
    check_network_config,
    parse_network_config,
)

A6 = ipaddress.IPv6Address
N6 = ipaddress.IPv6Network

# flannel's documented dual-stack config (Documentation/configuration.md), byte for byte
FLANNEL_DUAL_STACK = (b'{"EnableIPv6": true, "Network": "10.244.0.0/16", '
                      b'"IPv6Network": "2001:cafe:42::/56", "Backend": {"Type": "vxlan"}}')


@pytest.mark.parametrize(
    ("v6net", "v6len", "want_len", "smin", "smax"),
    [
        ("fd00:10:244::/56", None, 64, "fd00:10:244:1::", "fd00:10:244:ff::"),
        ("fd00:10:244::/62", None, 64, "fd00:10:244:1::", "fd00:10:244:3::"),
        ("fd00:10:244::/63", None, 65, "fd00:10:244:0:8000::", "fd00:10:244:1:8000::"),
        ("fd00::/120", None, 122, "fd00::40", "fd00::c0"),
        ("fd00::/124", None, 126, "fd00::4", "fd00::c"),
        ("2001:db8::/48", 56, 56, "2001:db8:0:100::", "2001:db8:0:ff00::"),
    ],
    ids=["56-defaults-64", "62-still-64", "63-prefix+2", "120", "smallest-124", "len-56"],
)
def test_ipv6_defaults_as_flannel(v6net: str, v6len: int | None, want_len: int, smin: str,
                                  smax: str) -> None:
    obj: dict[str, object] = {"Network": "10.244.0.0/16", "EnableIPv6": True,
                              "IPv6Network": v6net}
    if v6len:
        obj["IPv6SubnetLen"] = v6len
    cfg = check_network_config(obj)
    assert (cfg.enable_ipv4, cfg.enable_ipv6) == (True, True)
    assert cfg.ipv6_network == N6(v6net)
    assert (cfg.ipv6_subnet_len, cfg.ipv6_subnet_min, cfg.ipv6_subnet_max) == (
        want_len, A6(smin), A6(smax))
    assert (cfg.network, cfg.subnet_len) == (ipaddress.IPv4Network("10.244.0.0/16"), 24)


def test_flannel_documented_dual_stack_config_parses() -> None:
    cfg = parse_network_config(FLANNEL_DUAL_STACK)
    assert cfg.ipv6_network == N6("2001:cafe:42::/56")
    assert cfg.ipv6_subnet_len == 64
    assert cfg.ipv6_subnet_min == A6("2001:cafe:42:1::")


def test_ipv4_only_by_default() -> None:
    cfg = parse_network_config(b'{"Network": "10.244.0.0/16"}')
    assert (cfg.enable_ipv4, cfg.enable_ipv6, cfg.ipv6_network) == (True, False, None)
    # an IPv6Network without EnableIPv6 is ignored, as flannel ignores it
    cfg = parse_network_config(b'{"Network": "10.244.0.0/16", "IPv6Network": "zzz"}')
    assert cfg.ipv6_network is None


def test_ipv6_only_keeps_flannel_zero_ipv4_fields() -> None:
    cfg = parse_network_config(b'{"EnableIPv4": false, "EnableIPv6": true, '
                               b'"IPv6Network": "fd00:10:244::/56"}')
    assert (cfg.enable_ipv4, cfg.enable_ipv6) == (False, True)
    assert str(cfg.network) == "0.0.0.0/0" and cfg.subnet_len == 0
    assert cfg.ipv6_subnet_len == 64


def test_fits6() -> None:
    cfg = parse_network_config(FLANNEL_DUAL_STACK)
    assert cfg.fits6(N6("2001:cafe:42:7::/64"))
    assert not cfg.fits6(N6("2001:cafe:42::/64"))  # first subnet skipped
    assert not cfg.fits6(N6("2001:cafe:42:7::/65"))
    assert not cfg.fits6(N6("2001:cafe:43:7::/64"))
    assert not cfg.fits6(None)
    v4only = parse_network_config(b'{"Network": "10.244.0.0/16"}')
    assert v4only.fits6(None) and not v4only.fits6(N6("2001:cafe:42:7::/64"))


BASE = '"Network": "10.0.0.0/16", "EnableIPv6": true'


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ('{"Network": "10.0.0.0/16", "EnableIPv6": true}', "IPv6Network", "missing"),
        ('{"EnableIPv4": false}', "EnableIPv4", "no address family"),
        ('{"EnableIPv4": "no", "Network": "10.0.0.0/16"}', "EnableIPv4", "true or false"),
        ('{"Network": "10.0.0.0/16", "EnableIPv6": 1}', "EnableIPv6", "true or false"),
        (f'{{{BASE}, "IPv6Network": "10.1.0.0/16"}}', "IPv6Network", "not an IPv6"),
        (f'{{{BASE}, "IPv6Network": 5}}', "IPv6Network", "not a string"),
        (f'{{{BASE}, "IPv6Network": "fd00::/125"}}', "IPv6Network", "too small"),
        (f'{{{BASE}, "IPv6Network": "fd00::/56", "IPv6SubnetLen": 57}}', "IPv6SubnetLen",
         "at least four subnets"),
        (f'{{{BASE}, "IPv6Network": "fd00::/56", "IPv6SubnetLen": 127}}', "IPv6SubnetLen",
         "out of range 58..126"),
        (f'{{{BASE}, "IPv6Network": "fd00::/56", "IPv6SubnetLen": "64"}}', "IPv6SubnetLen",
         "integer"),
        (f'{{{BASE}, "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd01::"}}',
         "IPv6SubnetMin", "outside"),
        (f'{{{BASE}, "IPv6Network": "fd00::/56", "IPv6SubnetMax": "fd00:0:0:5::1"}}',
         "IPv6SubnetMax", "aligned"),
        (f'{{{BASE}, "IPv6Network": "fd00::/56", "IPv6SubnetMin": "10.0.0.0"}}',
         "IPv6SubnetMin", "not an IPv6 address"),
        (f'{{{BASE}, "IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd00:0:0:9::", '
         f'"IPv6SubnetMax": "fd00:0:0:3::"}}', "IPv6SubnetMin", "above IPv6SubnetMax"),
        ('{"EnableIPv4": false, "EnableIPv6": true}', "IPv6Network", "missing"),
    ],
    ids=["no-v6-network", "no-family", "v4-flag-string", "v6-flag-int", "v4-as-v6",
         "v6-not-string", "v6-too-small", "v6-len-too-short", "v6-len-127", "v6-len-string",
         "v6-min-outside", "v6-max-misaligned", "v6-min-v4", "v6-min-above-max",
         "v6only-no-network"],
)
def test_invalid_ipv6_configs_name_the_field(raw: str, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_network_config(raw)
    assert info.value.field == field
    assert words in str(info.value)
    assert field in str(info.value)


def test_build_dual_stack_json_in_flannel_keys() -> None:
    obj = build_network_json("10.244.0.0/16", ipv6_network="fd00:10:244::/56",
                             ipv6_subnet_len=64)
    assert json.dumps(obj, separators=(",", ":")) == (
        '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56",'
        '"IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}')
    cfg = parse_network_config(json.dumps(obj))
    assert cfg.enable_ipv6 and cfg.ipv6_subnet_len == 64


def test_build_ipv6_only_json() -> None:
    obj = build_network_json("", ipv6_network="fd00:10:244::/56", ipv4=False)
    assert obj == {"EnableIPv4": False, "EnableIPv6": True,
                   "IPv6Network": "fd00:10:244::/56", "Backend": {"Type": "vxlan"}}
    with pytest.raises(ConfigError) as info:
        build_network_json("", ipv4=False)
    assert info.value.field == "EnableIPv4"
    with pytest.raises(ConfigError) as info:
        build_network_json("", ipv6_network="fd00:10:244::/56")
    assert info.value.field == "Network"


def test_build_refuses_ipv6_host_bits() -> None:
    with pytest.raises(ConfigError) as info:
        build_network_json("10.244.0.0/16", ipv6_network="fd00:10:244::1/56")
    assert info.value.field == "IPv6Network"
    assert "did you mean fd00:10:244::/56" in str(info.value)


def test_daemon_runs_ipv6_but_not_over_udp() -> None:
    check_daemon_support(parse_network_config(b'{"Network": "10.244.0.0/16"}'))
    check_daemon_support(parse_network_config(FLANNEL_DUAL_STACK))
    udp = json.loads(FLANNEL_DUAL_STACK)
    udp["Backend"] = {"Type": "udp"}
    with pytest.raises(ConfigError) as info:
        check_daemon_support(parse_network_config(json.dumps(udp).encode()))
    assert info.value.field == "EnableIPv6"
    assert "udp backend is IPv4-only" in str(info.value)
