"""dnsd's flags: one or two dashes, SKYDNS_*/ETCD_*/PROMETHEUS_* fallbacks, aliases, errors."""

from __future__ import annotations

import ipaddress

import pytest

from dnsd.config import parse_config


def test_defaults() -> None:
    cfg = parse_config([], environ={})
    assert (cfg.host, cfg.port) == ("127.0.0.1", 53)
    assert cfg.engine.zones == (("skydns", "local"),)
    assert (cfg.engine.ttl, cfg.engine.min_ttl) == (3600, 60)
    assert cfg.prefix == "/skydns"
    assert cfg.store.endpoints == ("http://127.0.0.1:2379",)
    assert cfg.forwarder is None  # forwarding is off unless nameservers are given
    assert cfg.round_robin and cfg.metrics_port == 0


CASES = [
    ("two-dashes-equals", ["--addr=127.0.0.1:5353"], {}, lambda c: c.port == 5353),
    ("one-dash-equals", ["-addr=[::1]:5300"], {}, lambda c: (c.host, c.port) == ("::1", 5300)),
    ("several-zones", ["-domain", "a.example.,B.example"], {},
     lambda c: c.engine.zones == (("a", "example"), ("b", "example"))),
    ("env-domain", [], {"SKYDNS_DOMAIN": "corp."}, lambda c: c.engine.zones == (("corp",),)),
    ("flag-beats-env", ["-domain", "x."], {"SKYDNS_DOMAIN": "corp."},
     lambda c: c.engine.zones == (("x",),)),
    ("etcd-machines-env", [], {"ETCD_MACHINES": "http://10.0.0.1:2379,http://10.0.0.2:2379"},
     lambda c: c.store.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")),
    ("machines-alias", ["-machines", "http://h:1"], {}, lambda c: c.store.endpoints == ("http://h:1",)),
    ("tls-aliases", ["-ca-cert", "/ca", "-tls-pem", "/c", "-tls-key", "/k"], {},
     lambda c: (c.store.cafile, c.store.certfile, c.store.keyfile) == ("/ca", "/c", "/k")),
    ("nameservers-turn-forwarding-on", ["-nameservers", "9.9.9.9,[2620:fe::fe]:5353"], {},
     lambda c: c.forwarder is not None and c.forwarder.upstreams
     == (("9.9.9.9", 53), ("2620:fe::fe", 5353))
     and c.forwarder.allowed("127.0.0.1") and not c.forwarder.allowed("10.0.0.1")),
    ("forward-allow", ["-nameservers", "1.1.1.1", "-forward-allow", "10.0.0.0/8"], {},
     lambda c: c.forwarder is not None and c.forwarder.allow
     == (ipaddress.ip_network("10.0.0.0/8"),) and not c.forwarder.allowed("127.0.0.1")),
    ("env-nameservers", [], {"SKYDNS_NAMESERVERS": "8.8.8.8:53"},
     lambda c: c.forwarder is not None),
    ("round-robin-off", ["-round-robin=false"], {}, lambda c: not c.round_robin),
    ("ttls", ["-ttl", "300", "--min-ttl=30"], {},
     lambda c: (c.engine.ttl, c.engine.min_ttl) == (300, 30)),
    ("prometheus-port-env", [], {"PROMETHEUS_PORT": "9153"}, lambda c: c.metrics_port == 9153),
    ("path-prefix", ["-path-prefix", "skydns2/"], {}, lambda c: c.prefix == "/skydns2"),
    ("etcd-prefix-alias", ["-etcd-prefix", "/dns"], {}, lambda c: c.prefix == "/dns"),
    ("no-rec-beats-nameservers", ["-nameservers", "9.9.9.9", "-no-rec"], {},
     lambda c: c.no_rec and c.forwarding is None and c.forwarder is not None),
    ("rtimeout-sets-forward-timeout", ["-nameservers", "9.9.9.9", "-rtimeout=500ms"], {},
     lambda c: c.read_timeout == 0.5 and c.forwarding.timeout == 0.5),
    ("username-password-aliases", ["-username", "dns", "-password", "pw"], {},
     lambda c: (c.store.username, c.store.password) == ("dns", "pw")),
    ("skydns-auth-env", [], {"ETCD_USERNAME": "dns", "ETCD_PASSWORD": "pw"},
     lambda c: (c.store.username, c.store.password) == ("dns", "pw")),
    ("systemd", ["-systemd"], {}, lambda c: c.systemd and not c.warnings),
    ("etcd3-is-what-dnsd-does", ["-etcd3"], {}, lambda c: not c.warnings),
    ("etcd3-false-warns", ["-etcd3=false"], {}, lambda c: "-etcd3=false" in c.warnings[0]),
]


@pytest.mark.parametrize(("argv", "env", "check"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_flags(argv: list[str], env: dict[str, str], check) -> None:  # type: ignore[no-untyped-def]
    assert check(parse_config(argv, environ=env))


BAD = [
    ("ttl-zero", ["-ttl", "0"]),
    ("bad-port", ["-addr", "127.0.0.1:99999"]),
    ("port-not-number", ["-addr", "127.0.0.1:dns"]),
    ("bad-allow", ["-nameservers", "1.1.1.1", "-forward-allow", "nonsense"]),
    ("no-zone", ["-domain", ","]),
    ("bad-bool", ["-round-robin=maybe"]),
    ("bad-rtimeout", ["-rtimeout", "2"]),
    ("rtimeout-too-long", ["-rtimeout", "5m"]),
    ("bad-no-rec", ["-no-rec=perhaps"]),
]


@pytest.mark.parametrize("argv", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(argv, environ={})
    assert info.value.code == 2
    assert capsys.readouterr().err.strip()


def test_a_skydns_unit_line_starts_with_one_warning() -> None:
    """Every SkyDNS flag an existing unit may pass is accepted; those dnsd has no use for
    are named in one warning (as the same /skydns/config fields are)."""
    argv = ["-etcd3", "-no-rec", "-systemd", "-rtimeout=2s", "-username", "u",
            "-password", "p", "-local", "dns1.skydns.local.", "-ndots", "2", "-rcache", "100",
            "-rcache-ttl", "60", "-scache", "1000", "-ns-rotate=false", "-dnssec",
            "Kskydns.local.+005+38250", "-hostmaster", "ops@skydns.local.", "-discover",
            "-nameservers", "8.8.8.8:53"]
    cfg = parse_config(argv, environ={})
    assert cfg.forwarding is None and cfg.read_timeout == 2.0 and cfg.systemd
    assert (cfg.store.username, cfg.store.password) == ("u", "p")
    (warning,) = cfg.warnings
    for name in ("local", "ndots", "rcache", "rcache-ttl", "scache", "ns-rotate", "dnssec",
                 "hostmaster", "discover"):
        assert f"-{name} (" in warning
    for honoured in ("etcd3", "no-rec", "systemd", "rtimeout", "username", "password"):
        assert f"-{honoured} (" not in warning
    assert parse_config([], environ={}).warnings == ()
