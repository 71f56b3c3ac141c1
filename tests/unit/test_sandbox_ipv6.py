"""``weftctl sandbox up --ipv6``: its options and DNS records (pure)."""

from __future__ import annotations

import ipaddress

import pytest

from overlay.sandbox.model import BadOptionError, ContainerRecord, Options, dns_records

N6 = ipaddress.IPv6Network


@pytest.mark.parametrize(("kw", "flag", "words"), [
    ({"backend": "udp"}, "--backend", "IPv4-only"),
    ({"network6": N6("2001:4860::/56")}, "--network6", "outside fd00::/8"),
    ({"network6": N6("fd00:198:18::/56")}, "--network6", "overlaps the sandbox underlay"),
    ({"network6": N6("fd00:10:244::/64")}, "--network6", "too small"),
], ids=["udp", "routed-space", "underlay", "too-small"])
def test_bad_ipv6_options_name_the_flag(kw: dict[str, object], flag: str, words: str) -> None:
    with pytest.raises(BadOptionError) as info:
        Options(ipv6=True, **kw).check()  # type: ignore[arg-type]
    assert info.value.what == flag and words in str(info.value)


def test_ipv6_defaults_pass_and_are_ignored_without_the_flag() -> None:
    Options(ipv6=True).check()
    Options(ipv6=True, network6=N6("2001:db8:42::/56"), backend="host-gw").check()
    Options(backend="udp", network6=N6("2001:4860::/56")).check()  # --ipv6 not given


def test_dual_stack_names_hold_a_and_aaaa_under_child_keys() -> None:
    c = ContainerRecord("c1", "h1", "ns", ip="10.244.3.2/24", dns="c1.h1.skydns.local",
                        ip6="fd00:10:244:3::2/64")
    assert dns_records(c) == [
        ("v4.c1.h1.skydns.local", "10.244.3.2"),
        ("2.3.244.10.in-addr.arpa", "c1.h1.skydns.local"),
        ("v6.c1.h1.skydns.local", "fd00:10:244:3::2"),
        ("2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.0.4.4.2.0.0.1.0.0.0.0.d.f.ip6.arpa",
         "c1.h1.skydns.local"),
    ]
    v4 = ContainerRecord("c1", "h1", "ns", ip="10.244.3.2/24", dns="c1.h1.skydns.local")
    assert dns_records(v4) == [("c1.h1.skydns.local", "10.244.3.2"),
                               ("2.3.244.10.in-addr.arpa", "c1.h1.skydns.local")]


def test_host_table_shows_the_ipv6_subnet_beside_the_ipv4_one() -> None:
    from overlay.sandbox.model import HostRow, host_table

    rows = [HostRow("h1", "198.18.0.11", "10.244.3.1/24", "0e:00:00:00:00:01", "c1",
                    subnet6="fd00:10:244:3::1/64")]
    _, row = host_table(rows).splitlines()
    assert row.split()[:4] == ["h1", "198.18.0.11", "10.244.3.1/24", "fd00:10:244:3::1/64"]
    v4 = host_table([HostRow("h1", "198.18.0.11", "10.244.3.1/24", "-", "c1")])
    assert "fd00" not in v4


def test_network6_implies_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from overlay.sandbox import cli, cluster

    seen: list[Options] = []

    def fake_up(options: Options, out: object) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(cluster, "up", fake_up)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    for argv, want in ((["up", "--network6", "2001:db8:7::/56"], N6("2001:db8:7::/56")),
                       (["up", "--ipv6"], N6("fd00:10:244::/56")), (["up"], None)):
        args = parser.parse_args(["sandbox", *argv, "--state-dir", "/nonexistent"])
        assert args.func(args) == 0
        got = seen.pop()
        assert got.ipv6 == (want is not None)
        if want is not None:
            assert got.network6 == want
