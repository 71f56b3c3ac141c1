"""flanneld's flags: one or two dashes, -flag=value, FLANNELD_* env, defaults, bad values."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from overlay.cli.flanneld import build_parser, parse_args
from overlay.iface import Interface, InterfaceError, choose, parse_ip_addr_json


@pytest.mark.parametrize(("argv", "env", "attr", "want"), [
    ([], {}, "etcd_endpoints", "http://127.0.0.1:2379"),
    (["-etcd-endpoints", "http://198.18.0.1:2379"], {}, "etcd_endpoints",
     "http://198.18.0.1:2379"),
    (["--etcd-endpoints=http://a:1,http://b:2"], {}, "etcd_endpoints", "http://a:1,http://b:2"),
    (["-etcd-endpoints=http://x:1"], {"FLANNELD_ETCD_ENDPOINTS": "http://env:1"},
     "etcd_endpoints", "http://x:1"),
    ([], {"FLANNELD_ETCD_ENDPOINTS": "http://env:1"}, "etcd_endpoints", "http://env:1"),
    (["-iface", "eth0", "--iface", "198.18.0.11"], {}, "iface", ["eth0", "198.18.0.11"]),
    ([], {"FLANNELD_IFACE": "eth0,eth1"}, "iface", ["eth0", "eth1"]),
    (["-ip-masq"], {}, "ip_masq", True),
    (["-ip-masq=false"], {"FLANNELD_IP_MASQ": "true"}, "ip_masq", False),
    ([], {"FLANNELD_IP_MASQ": "1"}, "ip_masq", True),
    ([], {}, "subnet_lease_renew_margin", 60),
    ([], {}, "subnet_lease_ttl", 86400),
    (["-subnet-lease-ttl=3"], {}, "subnet_lease_ttl", 3),
    ([], {"FLANNELD_SUBNET_LEASE_TTL": "5"}, "subnet_lease_ttl", 5),
    ([], {}, "subnet_file", "/run/flannel/subnet.env"),
    ([], {}, "healthz_port", 0),
    (["--healthz-port", "9101"], {}, "healthz_port", 9101),
    ([], {"FLANNELD_PUBLIC_IP": "198.18.0.50"}, "public_ip", "198.18.0.50"),
], ids=["default-endpoints", "one-dash", "two-dash-equals", "flag-beats-env", "env",
        "iface-repeat", "iface-env-list", "bool-bare", "bool-false-beats-env", "bool-env-1",
        "margin-default", "ttl-default", "ttl-flag", "ttl-env", "subnet-file-default",
        "healthz-off", "healthz-port", "public-ip-env"])
def test_flags(argv: list[str], env: dict[str, str], attr: str, want: object) -> None:
    assert getattr(build_parser(env).parse(argv), attr) == want


def test_daemon_config_from_flags() -> None:
    _, cfg, store = parse_args(["-etcd-prefix=/x/net", "-subnet-file", "/tmp/s.env",
                                "-subnet-lease-ttl", "9", "-ip-masq", "-etcd-endpoints",
                                "http://198.18.0.1:2379,http://198.18.0.2:2379"],
                               {"NOTIFY_SOCKET": "@sd"})
    assert (cfg.prefix, cfg.subnet_file, cfg.lease_ttl, cfg.ip_masq, cfg.notify_socket) == (
        "/x/net", Path("/tmp/s.env"), 9, True, "@sd")
    assert store.endpoints == ("http://198.18.0.1:2379", "http://198.18.0.2:2379")
    assert (cfg.masq_interval, cfg.masq_fully_random) == (5.0, True)
    _, cfg2, _ = parse_args(["-iptables-resync=2", "-ip-masq-fully-random-disable"], {})
    assert (cfg2.masq_interval, cfg2.masq_fully_random) == (2.0, False)
    _, _, tls = parse_args(["-etcd-endpoints=https://198.18.0.1:2379", "-etcd-cafile=/ca.pem"],
                           {"FLANNELD_ETCD_CERTFILE": "/c.pem", "FLANNELD_ETCD_KEYFILE": "/k.pem"})
    assert (tls.cafile, tls.certfile, tls.keyfile) == ("/ca.pem", "/c.pem", "/k.pem")


@pytest.mark.parametrize("argv", [
    ["-subnet-lease-renew-margin", "0"], ["-subnet-lease-renew-margin", "1440"],
    ["-subnet-lease-ttl", "1"], ["-public-ip", "nope"], ["-healthz-port", "70000"],
    ["-subnet-lease-ttl", "abc"], ["-ip-masq=perhaps"], ["-iptables-resync=0"],
    ["-iface-can-reach", "host.example"],
], ids=["margin-0", "margin-1440", "ttl-1", "public-ip", "port", "ttl-not-int", "bool",
        "resync-0", "can-reach"])
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv, {})
    assert info.value.code == 2
    assert argv[0].lstrip("-").split("=")[0] in capsys.readouterr().err


def test_help_documents_every_flag_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser({}).parse(["--help"])
    text = capsys.readouterr().out
    for flag in ("etcd-endpoints", "etcd-prefix", "etcd-cafile", "etcd-certfile",
                 "etcd-keyfile", "iface", "iface-regex", "public-ip", "subnet-file", "ip-masq",
                 "subnet-lease-renew-margin", "subnet-lease-ttl", "healthz-ip", "iface-can-reach",
                 "healthz-port", "version"):
        assert f"-{flag}" in text
        assert "FLANNELD_" + flag.upper().replace("-", "_") in text.replace("\n", "").replace(
            " ", "")


A = ipaddress.IPv4Address
IFACES = [Interface("lo", 1, 65536, (A("127.0.0.1"),)),
          Interface("eth0", 2, 1500, (A("198.18.0.11"),)),
          Interface("eth1", 3, 9000, (A("10.9.0.5"), A("10.9.0.6"))),
          Interface("dummy0", 4, 1500, ())]


@pytest.mark.parametrize(("iface", "regex", "default", "public", "want"), [
    ([], [], "eth0", None, ("eth0", "198.18.0.11", "198.18.0.11", 1500)),
    (["eth1"], [], "eth0", None, ("eth1", "10.9.0.5", "10.9.0.5", 9000)),
    (["10.9.0.6"], [], None, None, ("eth1", "10.9.0.6", "10.9.0.6", 9000)),
    (["nope", "eth0"], [], None, None, ("eth0", "198.18.0.11", "198.18.0.11", 1500)),
    ([], ["^eth1$"], None, None, ("eth1", "10.9.0.5", "10.9.0.5", 9000)),
    ([], [r"10\.9\.0\.6"], None, None, ("eth1", "10.9.0.6", "10.9.0.6", 9000)),
    ([], [], "eth0", "203.0.113.9", ("eth0", "198.18.0.11", "203.0.113.9", 1500)),
    ([], ["^(eth0|10\\.9\\.0\\.5)$"], None, None, ("eth1", "10.9.0.5", "10.9.0.5", 9000)),
], ids=["default-route", "by-name", "by-ip", "first-match-wins", "regex-name", "regex-ip",
        "public-ip-override", "regex-addresses-before-names"])
def test_choose_interface(iface: list[str], regex: list[str], default: str | None,
                          public: str | None, want: tuple[str, str, str, int]) -> None:
    ext = choose(IFACES, default, iface, regex, A(public) if public else None)
    assert (ext.name, str(ext.ip), str(ext.public_ip), ext.mtu) == want


@pytest.mark.parametrize(("iface", "regex", "default", "words"), [
    (["nosuch0"], [], "eth0", "nosuch0"), (["dummy0"], [], None, "dummy0"),
    ([], ["^wg"], None, "no interface matches"), ([], [], None, "no default route"),
    ([], ["("], None, "iface-regex"),
], ids=["missing-iface", "no-address", "regex-no-match", "no-default-route", "bad-regex"])
def test_choose_interface_errors(iface: list[str], regex: list[str], default: str | None,
                                 words: str) -> None:
    with pytest.raises(InterfaceError, match=words.replace("(", r"\(")):
        choose(IFACES, default, iface, regex)


def test_parse_ip_addr_json() -> None:
    text = ('[{"ifindex":2,"ifname":"eth0","flags":["UP"],"mtu":1500,"addr_info":'
            '[{"family":"inet","local":"198.18.0.11","prefixlen":24},'
            '{"family":"inet6","local":"fe80::1","prefixlen":64}]}]')
    (eth0,) = parse_ip_addr_json(text)
    assert eth0 == Interface("eth0", 2, 1500, (A("198.18.0.11"),), True)
