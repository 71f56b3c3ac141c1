"""SkyDNS's /skydns/config key: parse every field, reject bad ones alone, merge over flags."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from dnsd import skyconfig
from dnsd.config import parse_config
from dnsd.daemon import apply_config_key
from dnsd.skyconfig import Override, Problem, SkyConfig, explicit_flags, merge, parse

GOOD = [
    ("dns_addr", {"dns_addr": "127.0.0.2:5353"}, ("127.0.0.2", 5353)),
    ("dns_addr-v6", {"dns_addr": "[::1]:53"}, ("::1", 53)),
    ("dns_addr-all", {"dns_addr": ":53"}, ("0.0.0.0", 53)),
    ("domain", {"domain": "Example.ORG"}, "example.org."),
    ("nameservers", {"nameservers": ["8.8.8.8:53", "9.9.9.9"]},
     (("8.8.8.8", 53), ("9.9.9.9", 53))),
    ("nameservers-empty-is-unset", {"nameservers": []}, None),
    ("no_rec", {"no_rec": True}, True),
    ("read_timeout-go-nanoseconds", {"read_timeout": 3_000_000_000}, 3.0),
    ("read_timeout-string", {"read_timeout": "500ms"}, 0.5),
    ("round_robin", {"round_robin": False}, False),
    ("ttl", {"ttl": 42}, 42),
    ("ttl-zero-is-unset", {"ttl": 0}, None),
    ("min_ttl", {"min_ttl": 5}, 5),
    ("priority", {"priority": 20}, 20),
]


@pytest.mark.parametrize(("doc", "want"), [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_each_field_parses(doc: dict[str, Any], want: object) -> None:
    sky = parse(json.dumps(doc).encode())
    (name,) = doc
    assert getattr(sky, name) == want
    assert sky.problems == () and sky.unknown == ()


BAD = [
    ("dns_addr-not-addr", {"dns_addr": "x"}, "dns_addr", "want ip:port with a port"),
    ("dns_addr-hostname", {"dns_addr": "localhost:53"}, "dns_addr", "not an IP address"),
    ("dns_addr-port-range", {"dns_addr": "127.0.0.1:70000"}, "dns_addr", "out of range"),
    ("dns_addr-number", {"dns_addr": 53}, "dns_addr", "want a string"),
    ("domain-empty", {"domain": ""}, "domain", "empty"),
    ("domain-empty-label", {"domain": "a..b"}, "domain", "empty label"),
    ("domain-list", {"domain": ["a."]}, "domain", "want a string"),
    ("nameservers-string", {"nameservers": "8.8.8.8:53"}, "nameservers", "want a list"),
    ("nameservers-hostname", {"nameservers": ["dns.google:53"]}, "nameservers",
     "not an IP address"),
    ("nameservers-number", {"nameservers": [53]}, "nameservers", "want a string"),
    ("no_rec-string", {"no_rec": "true"}, "no_rec", "want true or false"),
    ("round_robin-int", {"round_robin": 1}, "round_robin", "want true or false"),
    ("read_timeout-garbage", {"read_timeout": "soon"}, "read_timeout", "duration"),
    ("read_timeout-negative", {"read_timeout": -5}, "read_timeout", "want 1ms..60s"),
    ("read_timeout-bool", {"read_timeout": True}, "read_timeout", "want nanoseconds"),
    ("ttl-negative", {"ttl": -1}, "ttl", "out of range"),
    ("ttl-string", {"ttl": "42"}, "ttl", "want an integer"),
    ("ttl-bool", {"ttl": True}, "ttl", "want an integer"),
    ("ttl-fraction", {"ttl": 1.5}, "ttl", "want an integer"),
    ("ttl-huge", {"ttl": 2**31}, "ttl", "out of range"),
    ("min_ttl-null", {"min_ttl": None}, "min_ttl", "want an integer"),
    ("priority-range", {"priority": 70000}, "priority", "out of range"),
]


@pytest.mark.parametrize(("doc", "field", "why"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_field_is_dropped_alone(doc: dict[str, Any], field: str, why: str) -> None:
    sky = parse(json.dumps({**doc, "ttl" if field != "ttl" else "min_ttl": 7}).encode())
    assert len(sky.problems) == 1
    p = sky.problems[0]
    assert p.field == field and why in p.reason, p
    assert getattr(sky, field) is None
    assert sky.present() == (("ttl",) if field != "ttl" else ("min_ttl",))  # the good one stays


@pytest.mark.parametrize(("raw", "why"), [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"", "not JSON"),
    (b"[1, 2]", "not a JSON object but list"),
    (b'"domain"', "not a JSON object but str"),
    (b"null", "not a JSON object but NoneType"),
], ids=["broken", "binary", "empty", "list", "string", "null"])
def test_unparsable_key_is_dropped_whole(raw: bytes, why: str) -> None:
    sky = parse(raw)
    assert sky == SkyConfig(problems=(Problem(None, sky.problems[0].reason),))
    assert why in sky.problems[0].reason


def test_ignored_and_unknown_fields_are_listed() -> None:
    doc = {f: True for f in skyconfig.IGNORED} | {"tll": 5, "zzz": 1, "ttl": 9}
    sky = parse(json.dumps(doc).encode())
    assert sky.ignored == skyconfig.IGNORED
    assert sky.unknown == ("tll", "zzz")
    assert sky.present() == ("ttl",) and sky.problems == ()


def test_merge_applies_every_honoured_field() -> None:
    cfg = parse_config(["-forward-allow", "10.0.0.0/8"], environ={})
    sky = parse(json.dumps({
        "dns_addr": "127.0.0.3:5300", "domain": "example.org.", "ttl": 42, "min_ttl": 7,
        "priority": 20, "round_robin": False, "nameservers": ["192.0.2.53:5353"],
        "read_timeout": "1s"}).encode())
    out, overrides = merge(cfg, sky, explicit=())
    assert (out.host, out.port) == ("127.0.0.3", 5300)
    assert out.engine.zones == (("example", "org"),)
    assert (out.engine.ttl, out.engine.min_ttl, out.engine.priority) == (42, 7, 20)
    assert out.round_robin is False
    assert out.forwarder is not None
    assert out.forwarder.upstreams == (("192.0.2.53", 5353),) and out.forwarder.timeout == 1.0
    assert out.forwarder.allowed("10.1.2.3") and not out.forwarder.allowed("127.0.0.1")
    assert overrides == ()
    # everything else is untouched
    assert (out.prefix, out.store, out.metrics_port) == (cfg.prefix, cfg.store, cfg.metrics_port)


def test_merge_keeps_flags_for_absent_fields() -> None:
    cfg = parse_config(["-ttl", "100", "-domain", "a.example.,b.example.",
                        "-nameservers", "9.9.9.9"], environ={})
    out, _ = merge(cfg, parse(b'{"priority": 5}'), explicit=("ttl", "domain"))
    assert out.engine.zones == cfg.engine.zones and out.engine.ttl == 100
    assert out.engine.priority == 5 and out.forwarder == cfg.forwarder


def test_no_rec_turns_forwarding_off() -> None:
    cfg = parse_config(["-nameservers", "9.9.9.9"], environ={})
    out, overrides = merge(cfg, parse(b'{"no_rec": true, "read_timeout": 1000000}'),
                           explicit=("nameservers",))
    assert out.forwarding is None
    assert overrides == (Override("no_rec", "nameservers", True),)
    out, overrides = merge(cfg, parse(b'{"no_rec": false}'), explicit=("nameservers",))
    assert out.forwarding == cfg.forwarder and overrides == ()


def test_no_rec_false_in_the_key_beats_the_flag_as_in_skydns() -> None:
    argv = ["-nameservers", "9.9.9.9", "-no-rec", "-rtimeout=3s"]
    cfg = parse_config(argv, environ={})
    assert cfg.forwarding is None and cfg.forwarder is not None
    out, overrides = merge(cfg, parse(b'{"no_rec": false, "read_timeout": "1s"}'),
                           explicit_flags(argv, {}))
    assert out.forwarding is not None and out.forwarding.timeout == 1.0
    assert out.read_timeout == 1.0
    assert overrides == (Override("no_rec", "no-rec", False),
                         Override("read_timeout", "rtimeout", 1.0))


def test_key_beats_explicit_flag_and_says_so() -> None:
    argv = ["-domain", "flag.example.", "-ttl", "100"]
    cfg = parse_config(argv, environ={})
    explicit = explicit_flags(argv, {"SKYDNS_MIN_TTL": "3"})
    assert explicit == {"domain", "ttl", "min-ttl"}
    sky = parse(b'{"domain": "key.example.", "ttl": 42, "min_ttl": 9, "round_robin": false}')
    out, overrides = merge(cfg, sky, explicit)
    assert out.engine.zones == (("key", "example"),) and out.engine.ttl == 42
    assert overrides == (Override("domain", "domain", "key.example."),
                         Override("ttl", "ttl", 42), Override("min_ttl", "min-ttl", 9))


@pytest.mark.parametrize(("argv", "env", "want"), [
    (["-ttl", "5"], {}, {"ttl"}),
    (["--min-ttl=5"], {}, {"min-ttl"}),
    (["-round-robin=false", "-addr=127.0.0.1:53"], {}, {"round-robin", "addr"}),
    (["-verbose", "-metrics-port", "9"], {}, set()),
    (["-no-rec", "-rtimeout=1s"], {}, {"no-rec", "rtimeout"}),
    ([], {"SKYDNS_ADDR": "127.0.0.1:53", "SKYDNS_NAMESERVERS": "1.1.1.1"},
     {"addr", "nameservers"}),
    ([], {"SKYDNS_PATH_PREFIX": "/x"}, set()),
], ids=["one-dash", "two-dash-equals", "bool-and-equals", "not-overridable", "skydns-only",
        "env", "env-other"])
def test_explicit_flags(argv: list[str], env: dict[str, str], want: set[str]) -> None:
    assert explicit_flags(argv, env) == want


def test_apply_logs_problems_ignored_and_overrides(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config(["-ttl", "100"], environ={})
    raw = b'{"ttl": 42, "dns_addr": "x", "dnssec": "k", "rcache": 5, "tll": 1}'
    with caplog.at_level(logging.DEBUG, logger="dnsd"):
        out = apply_config_key(cfg, "/skydns/config", raw, frozenset({"ttl"}))
    assert out.engine.ttl == 42 and (out.host, out.port) == (cfg.host, cfg.port)
    by_level = {(r.levelname, r.getMessage()) for r in caplog.records}
    assert ("WARNING", "/skydns/config: field dns_addr ignored: "
            "'x': want ip:port with a port 1..65535") in by_level
    assert ("INFO", "/skydns/config: accepted but not supported by dnsd, ignored: "
            "dnssec, rcache") in by_level
    assert ("WARNING", "/skydns/config: unknown fields ignored: tll") in by_level
    assert ("INFO", "/skydns/config: ttl=42 overrides the explicit -ttl") in by_level


def test_apply_absent_and_unparsable(caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config([], environ={})
    with caplog.at_level(logging.DEBUG, logger="dnsd"):
        assert apply_config_key(cfg, "/skydns/config", None, frozenset()) == cfg
        assert apply_config_key(cfg, "/skydns/config", b"{nope", frozenset()) == cfg
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels[0] == ("DEBUG", "/skydns/config: no such key; using the flags")
    assert levels[1][0] == "WARNING" and "not JSON" in levels[1][1]
    assert len(levels) == 2


def test_describe_changes_names_what_a_late_key_changes() -> None:
    import dataclasses

    from dnsd.engine import EngineConfig
    from dnsd.forward import Forwarder
    from dnsd.skyconfig import describe_changes

    old = parse_config(["-domain", "skydns.local."], {})
    new = dataclasses.replace(
        old, host="10.0.0.1", port=5300,
        engine=dataclasses.replace(EngineConfig.from_domains(["example.org."]), ttl=42),
        forwarder=Forwarder((("192.0.2.53", 53),), old.forward_allow, 1.5), round_robin=False)
    assert describe_changes(old, new) == [
        f"dns_addr {old.host}:{old.port} -> 10.0.0.1:5300",
        "domain skydns.local. -> example.org.",
        "ttl 3600 -> 42",
        "forwarding off -> 192.0.2.53:53 (timeout 1.5s)",
        "round_robin true -> false",
    ]
    assert describe_changes(old, old) == []


async def test_config_read_retries_until_the_store_answers() -> None:
    from dnsd.daemon import read_config_until_answered
    from overlay.store.api import StoreConfig, StoreUnavailableError

    attempts: list[str] = []
    sleeps: list[float] = []

    async def read(cfg: StoreConfig, key: str) -> bytes | None:
        attempts.append(key)
        if len(attempts) < 4:
            raise StoreUnavailableError("down")
        return b"{}"

    async def sleep(s: float) -> None:
        sleeps.append(s)

    got = await read_config_until_answered(StoreConfig(), "/skydns/config", read=read,
                                           sleep=sleep, first_delay=0.5, max_delay=1.5)
    assert got == b"{}" and len(attempts) == 4
    assert sleeps == [0.5, 1.0, 1.5]  # backoff, capped


async def test_config_read_does_not_retry_bad_settings() -> None:
    from dnsd.daemon import read_config_until_answered
    from overlay.store.api import StoreConfig

    async def read(cfg: StoreConfig, key: str) -> bytes | None:
        raise ValueError("unreadable CA file")

    with pytest.raises(ValueError):
        await read_config_until_answered(StoreConfig(), "/skydns/config", read=read)
