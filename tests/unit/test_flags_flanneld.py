"""flanneld's flags: one or two dashes, -flag=value, FLANNELD_* env, defaults, bad values."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import pytest

from overlay.cli.flanneld import FLANNEL_IGNORED, build_parser, parse_args
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
    squeezed = "".join(text.split())  # however argparse wraps it
    assert "refusedwhenset:flannel0.9'smulti-networkmodeisnotinweft" in squeezed
    assert "acceptedforcompatibilityandignored:-kube-api-url" in squeezed
    assert "-iptables-forward-rules" in text and "FLANNEL-FWD" in squeezed  # a real flag now
    assert "-public-ipv6" in text and "FLANNELD_PUBLIC_IPV6" in squeezed  # a real flag now


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


A6 = ipaddress.IPv6Address
DUAL_IFACES = [Interface("eth0", 2, 1500, (A("198.18.0.11"),), True,
                         (A6("2001:db8::11"), A6("2001:db8::12"))),
               Interface("eth1", 3, 9000, (A("10.9.0.5"),), True, (A6("fd00:9::5"),)),
               Interface("eth2", 4, 1500, (A("10.8.0.5"),), True, ())]


def test_parse_ip_addr_json_keeps_global_ipv6_only() -> None:
    text = ('[{"ifindex":2,"ifname":"eth0","flags":["UP"],"mtu":1500,"addr_info":'
            '[{"family":"inet","local":"198.18.0.11","prefixlen":24},'
            '{"family":"inet6","local":"2001:db8::11","prefixlen":64,"scope":"global"},'
            '{"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]')
    (eth0,) = parse_ip_addr_json(text)
    assert eth0.addresses6 == (A6("2001:db8::11"),)


@pytest.mark.parametrize(("iface", "public6", "name", "ip6", "pub6"), [
    (["eth0"], None, "eth0", "2001:db8::11", "2001:db8::11"),  # first global address
    (["2001:db8::12"], None, "eth0", "2001:db8::12", "2001:db8::12"),  # -iface by IPv6
    (["fd00:9::5"], "2001:db8::99", "eth1", "fd00:9::5", "2001:db8::99"),  # -public-ipv6 wins
    (["eth2"], None, "eth2", None, None),  # no IPv6 on it: IPv4-only host
    (["eth2"], "2001:db8::99", "eth2", None, "2001:db8::99"),  # NAT: advertised anyway
])
def test_choose_interface_ipv6(iface: list[str], public6: str | None, name: str,
                               ip6: str | None, pub6: str | None) -> None:
    ext = choose(DUAL_IFACES, None, iface,
                 public_ipv6=None if public6 is None else A6(public6))
    assert (ext.name, ext.iface_ipv6, ext.public_ipv6) == (
        name, None if ip6 is None else A6(ip6), None if pub6 is None else A6(pub6))


def test_public_ipv6_flag_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    args, _, _ = parse_args(["-public-ipv6", "2001:db8::11"], {})
    assert args.public_ipv6 == "2001:db8::11" and not args.ignored_flags
    args, _, _ = parse_args([], {"FLANNELD_PUBLIC_IPV6": "fd00::11"})
    assert args.public_ipv6 == "fd00::11"
    with pytest.raises(SystemExit):
        parse_args(["-public-ipv6", "198.18.0.11"], {})
    assert "-public-ipv6 '198.18.0.11': not an IPv6 address" in capsys.readouterr().err


# -- flannel's whole flag list: a flannel unit or DaemonSet starts weft unchanged ---------

# a flannel 0.2x systemd unit, as distributions and install guides write it
FLANNEL_EXECSTART = (
    "/usr/bin/flanneld --etcd-endpoints=https://198.18.0.1:2379,https://198.18.0.2:2379 "
    "--etcd-prefix=/coreos.com/network --etcd-cafile=/etc/flannel/ca.pem "
    "--etcd-certfile=/etc/flannel/flannel.pem --etcd-keyfile=/etc/flannel/flannel-key.pem "
    "--iface=eth1 --ip-masq --iptables-resync=10 --iptables-forward-rules=true "
    "--public-ip=198.18.0.11 --subnet-file=/run/flannel/subnet.env "
    "--subnet-lease-renew-margin=30 --healthz-ip=127.0.0.1 --healthz-port=8471 "
    "-v=2 --vmodule=vxlan=4 --logtostderr")

# the args of an etcd-mode flannel DaemonSet (env from the pod spec), and kube-flannel.yml's
DAEMONSET_ETCD_ARGS = ["--ip-masq", "--etcd-endpoints=http://198.18.0.1:2379",
                       "--etcd-prefix=/coreos.com/network", "--iface-can-reach=198.18.0.1",
                       "--kube-subnet-mgr=false", "--net-config-path=/etc/kube-flannel/"
                       "net-conf.json", "--iptables-forward-rules"]
DAEMONSET_KUBE_ARGS = ["--ip-masq", "--kube-subnet-mgr"]


def test_flannel_systemd_execstart_starts_weft() -> None:
    import shlex

    args, cfg, store = parse_args(shlex.split(FLANNEL_EXECSTART)[1:], {})
    assert store.endpoints == ("https://198.18.0.1:2379", "https://198.18.0.2:2379")
    assert (store.cafile, store.certfile, store.keyfile) == (
        "/etc/flannel/ca.pem", "/etc/flannel/flannel.pem", "/etc/flannel/flannel-key.pem")
    assert (cfg.prefix, cfg.ip_masq, cfg.masq_interval, cfg.renew_margin) == (
        "/coreos.com/network", True, 10.0, 30)
    assert (cfg.healthz_ip, cfg.healthz_port, args.v, args.iface, args.public_ip) == (
        "127.0.0.1", 8471, 2, ["eth1"], "198.18.0.11")
    assert cfg.forward_rules
    assert [name for name, _ in args.ignored_flags] == ["vmodule", "logtostderr"]


def test_flannel_daemonset_args() -> None:
    args, cfg, store = parse_args(DAEMONSET_ETCD_ARGS, {"POD_NAME": "kube-flannel-ds-x",
                                                        "POD_NAMESPACE": "kube-flannel"})
    assert (cfg.ip_masq, store.endpoints, args.iface_can_reach) == (
        True, ("http://198.18.0.1:2379",), "198.18.0.1")
    assert cfg.forward_rules
    assert [name for name, _ in args.ignored_flags] == ["net-config-path"]


@pytest.mark.parametrize(("argv", "env", "words"), [
    (DAEMONSET_KUBE_ARGS, {}, ["-kube-subnet-mgr", "etcd", "weftctl network set"]),
    (["-kube-subnet-mgr=true"], {}, ["-kube-subnet-mgr", "etcd", "weftctl network set"]),
    ([], {"FLANNELD_KUBE_SUBNET_MGR": "true"}, ["-kube-subnet-mgr", "weftctl network set"]),
    (["-networks=blue,green", "-subnet-dir=/run/flannel/networks"], {},
     ["-networks", "one flanneld per network"]),
    (["-remote=198.18.0.1:8888", "-remote-cafile=/ca.pem"], {}, ["-remote", "-etcd-endpoints"]),
    (["-listen=:8888"], {}, ["-listen", "-etcd-endpoints"]),
], ids=["kube-flannel.yml", "kube-flag", "kube-env", "networks", "remote", "listen"])
def test_modes_weft_lacks_are_refused_clearly(argv: list[str], env: dict[str, str],
                                              words: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A Kubernetes-only flag set to true, or flannel 0.9's multi-network and client/server
    modes: exit 2 saying what to do instead, never run something else silently."""
    with pytest.raises(SystemExit) as info:
        parse_args(argv, env)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


# every flag of flannel 0.2x's main.go, plus the klog flags it copies (-v, -vmodule,
# -log_backtrace_at) and the glog ones CoreOS-era units pass, with a typical value
FLANNEL_FLAGS = [
    "-etcd-endpoints=http://198.18.0.1:2379", "-etcd-prefix=/coreos.com/network",
    "-etcd-keyfile=/k.pem", "-etcd-certfile=/c.pem", "-etcd-cafile=/ca.pem",
    "-etcd-username=flannel", "-etcd-password=secret", "-iface=eth0", "-iface-regex=^eth",
    "-iface-can-reach=198.18.0.1", "-subnet-file=/run/flannel/subnet.env",
    "-public-ip=198.18.0.11", "-public-ipv6=2001:db8::11", "-subnet-lease-renew-margin=60",
    "-ip-masq", "-ip-masq-fully-random-disable", "-kube-subnet-mgr=false",
    "-kube-api-url=https://198.18.0.1:6443", "-kube-annotation-prefix=flannel.alpha.coreos.com",
    "-kubeconfig-file=/etc/kubernetes/flannel.conf", "-healthz-ip=0.0.0.0", "-healthz-port=0",
    "-iptables-resync=5", "-iptables-forward-rules=true", "-ip-blackhole-route",
    "-net-config-path=/etc/kube-flannel/net-conf.json", "-set-node-network-unavailable=true",
    "-use-multi-cluster-cidr=false", "-v=3", "-vmodule=kube=2", "-log_backtrace_at=main.go:1",
    "-logtostderr=true", "-alsologtostderr", "-log_dir=/var/log", "-stderrthreshold=2",
    # flannel 0.9's, meaningful only with -networks / -remote (refused when set)
    "-subnet-dir=/run/flannel/networks", "-remote-keyfile=/k.pem", "-remote-certfile=/c.pem",
    "-remote-cafile=/ca.pem", "-networks=", "-listen=", "-remote=",
]


def test_every_flannel_flag_is_accepted() -> None:
    args, _, _ = parse_args(FLANNEL_FLAGS, {})
    assert args.v == 3
    assert {name for name, _ in args.ignored_flags} == {
        name for name, _, _ in FLANNEL_IGNORED}


def test_ignored_flags_get_one_warning_naming_them(caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """main() logs one WARNING naming each ignored flag, from the command line or the
    environment, with why; flags weft honours are not in it."""
    import overlay.iface
    from overlay.cli import flanneld

    def no_interface(*_: object) -> None:
        raise InterfaceError("stop here")

    monkeypatch.setattr(overlay.iface, "discover", no_interface)
    monkeypatch.setenv("FLANNELD_KUBE_API_URL", "https://198.18.0.1:6443")
    caplog.set_level(logging.INFO)
    assert flanneld.main(["-vmodule=vxlan=4", "-ip-masq", "-iface=eth0"]) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "-vmodule" in warnings[0] and "-kube-api-url (used only with -kube-subnet-mgr" \
        in warnings[0] and "-ip-masq" not in warnings[0] and "-iface" not in warnings[0]
    caplog.clear()
    monkeypatch.delenv("FLANNELD_KUBE_API_URL")
    assert flanneld.main(["-ip-masq", "-kube-subnet-mgr=false"]) == 1
    assert [r for r in caplog.records if r.levelno == logging.WARNING] == []


def test_ignored_boolean_still_checks_its_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["-iptables-forward-rules=perhaps"], {})
    assert "iptables-forward-rules" in capsys.readouterr().err
