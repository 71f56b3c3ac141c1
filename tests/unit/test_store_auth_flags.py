"""The etcd auth flags reach StoreConfig: flanneld (-etcd-username/-etcd-password and
FLANNELD_ETCD_*), dnsd, and weftctl's network, store status and dns commands
(WEFT_ETCD_PASSWORD when the flag is absent). No network."""

from __future__ import annotations

import argparse

import pytest

from overlay.cli import flanneld, network_cmd, store_cmd
from overlay.flags import FLANNELD_STORE_ENV, SKYDNS_STORE_ENV, WEFT_STORE_ENV, store_config
from overlay.store.api import StoreConfig

EP = "http://127.0.0.1:2379"


def test_from_flag_keeps_positional_parameters_and_adds_keyword_auth() -> None:
    cfg = StoreConfig.from_flag(EP, "ca.pem", "c.pem", "k.pem")
    assert (cfg.cafile, cfg.certfile, cfg.keyfile) == ("ca.pem", "c.pem", "k.pem")
    assert cfg.username is None and cfg.password is None
    cfg = StoreConfig.from_flag(EP, username="root", password="pw")
    assert (cfg.username, cfg.password) == ("root", "pw")
    assert "pw" not in repr(cfg)
    # empty username = no auth; a password alone is ignored, as etcd's client does
    assert StoreConfig.from_flag(EP, username="", password="pw").password is None
    with pytest.raises(TypeError):
        StoreConfig.from_flag(EP, None, None, None, "root")  # type: ignore[misc]


@pytest.mark.parametrize(("argv", "env", "want"), [
    ([], {}, (None, None)),
    (["-etcd-username", "root", "-etcd-password=pw"], {}, ("root", "pw")),
    (["--etcd-username=root", "--etcd-password", "pw"], {}, ("root", "pw")),
    ([], {"FLANNELD_ETCD_USERNAME": "u", "FLANNELD_ETCD_PASSWORD": "envpw"}, ("u", "envpw")),
    (["-etcd-password=flag"], {"FLANNELD_ETCD_USERNAME": "u",
                               "FLANNELD_ETCD_PASSWORD": "envpw"}, ("u", "flag")),
], ids=["none", "one-dash", "two-dash", "env", "flag-beats-env"])
def test_flanneld_auth_reaches_store_config(argv: list[str], env: dict[str, str],
                                            want: tuple[str | None, str | None]) -> None:
    _, _, store_cfg = flanneld.parse_args(argv, env)
    assert (store_cfg.username, store_cfg.password) == want


def test_flanneld_help_names_the_env_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        flanneld.build_parser({}).parse(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "-etcd-username" in out and "-etcd-password" in out
    assert "FLANNELD_ETCD_PASSWORD" in out and "ps" in out


def test_dnsd_auth_flags_and_env() -> None:
    from dnsd.config import parse_config

    assert parse_config([], {}).store.username is None
    cfg = parse_config(["-etcd-username=dns", "-etcd-password=pw"], {}).store
    assert (cfg.username, cfg.password) == ("dns", "pw")
    cfg = parse_config(["-etcd-username=dns"], {"WEFT_ETCD_PASSWORD": "envpw"}).store
    assert (cfg.username, cfg.password) == ("dns", "envpw")


def _weftctl_parser() -> argparse.ArgumentParser:
    from dnsd import admin

    p = argparse.ArgumentParser(prog="weftctl")
    sub = p.add_subparsers(dest="command")
    network_cmd.register(sub)
    store_cmd.register(sub)
    admin.register(sub)
    return p


def _cfg_of(args: argparse.Namespace) -> StoreConfig:
    if args.command == "dns":
        return store_config(args, SKYDNS_STORE_ENV)
    if args.command == "store":
        return store_config(args, WEFT_STORE_ENV)
    return store_config(args, FLANNELD_STORE_ENV)


@pytest.mark.parametrize("cmd", [["network", "get"], ["leases"], ["store", "status"],
                                  ["dns", "ls"]])
def test_weftctl_auth_flags(cmd: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WEFT_ETCD_PASSWORD", "WEFT_ETCD_USERNAME", "FLANNELD_ETCD_PASSWORD",
                "FLANNELD_ETCD_USERNAME"):
        monkeypatch.delenv(var, raising=False)
    p = _weftctl_parser()
    cfg = _cfg_of(p.parse_args([*cmd, "-etcd-endpoints", EP]))
    assert (cfg.username, cfg.password) == (None, None)
    cfg = _cfg_of(p.parse_args([*cmd, "-etcd-username", "root", "--etcd-password", "pw"]))
    assert (cfg.username, cfg.password) == ("root", "pw")
    monkeypatch.setenv("WEFT_ETCD_PASSWORD", "envpw")
    cfg = _cfg_of(p.parse_args([*cmd, "--etcd-username", "root"]))
    assert (cfg.username, cfg.password) == ("root", "envpw")
    cfg = _cfg_of(p.parse_args([*cmd, "--etcd-username", "root", "-etcd-password", "flag"]))
    assert cfg.password == "flag"


def test_weftctl_help_mentions_the_password_variable(
        capsys: pytest.CaptureFixture[str]) -> None:
    p = _weftctl_parser()
    for cmd in (["network", "set"], ["store", "status"], ["dns", "set"]):
        with pytest.raises(SystemExit):
            p.parse_args([*cmd, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "-etcd-username" in out and "WEFT_ETCD_PASSWORD" in out, cmd


@pytest.mark.parametrize(("cmd", "var"), [
    (["network", "get"], "FLANNELD_ETCD_ENDPOINTS"), (["leases"], "FLANNELD_ETCD_ENDPOINTS"),
    (["dns", "ls"], "ETCD_ENDPOINTS"), (["dns", "ls"], "ETCD_MACHINES")])
def test_weftctl_endpoints_env_fallback(cmd: list[str], var: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    for v in ("FLANNELD_ETCD_ENDPOINTS", "ETCD_ENDPOINTS", "ETCD_MACHINES"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, "http://198.18.0.9:2379")
    assert _cfg_of(_weftctl_parser().parse_args(cmd)).endpoints == ("http://198.18.0.9:2379",)


def test_every_program_declares_the_same_store_flags(
        capsys: pytest.CaptureFixture[str]) -> None:
    """One declaration (overlay.flags.add_store_flags): the same six flags everywhere."""
    from dnsd.config import flag_parser

    flags = ("-etcd-endpoints", "-etcd-cafile", "-etcd-certfile", "-etcd-keyfile",
             "-etcd-username", "-etcd-password")
    p = _weftctl_parser()
    for cmd in (["network", "set"], ["leases"], ["store", "status"], ["dns", "set"]):
        with pytest.raises(SystemExit):
            p.parse_args([*cmd, "--help"])
        out = capsys.readouterr().out
        assert all(f in out for f in flags), cmd
    for parser in (flanneld.build_parser({}), flag_parser({})):
        with pytest.raises(SystemExit):
            parser.parse(["--help"])
        out = capsys.readouterr().out
        assert all(f in out for f in flags)
