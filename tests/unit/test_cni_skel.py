"""The CNI skel in-process: environment, CNI_ARGS, config, subnet.env, results and errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cni import wire
from cni.errors import ConfigError, EnvError, TryAgainError
from cni.install import install, render_conflist, render_launcher
from cni.netconf import (
    parse_cni_args,
    parse_env,
    parse_subnet_env,
    read_subnet_env,
    valid_attachments,
)
from cni.result import shape
from cni.skel import dispatch
from tests.cnidriver import validate_error, validate_result

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def run(env: dict[str, str], stdin: bytes | dict[str, Any]) -> tuple[int, dict[str, Any]]:
    out = io.BytesIO()
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    rc = dispatch(env, data, out)
    text = out.getvalue().decode()
    return rc, (json.loads(text) if text.strip() else {})


BASE = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x",
        "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


@pytest.mark.parametrize(("drop", "words"), [
    ("CNI_COMMAND", "CNI_COMMAND"), ("CNI_CONTAINERID", "CNI_CONTAINERID"),
    ("CNI_NETNS", "CNI_NETNS"), ("CNI_IFNAME", "CNI_IFNAME"), ("CNI_PATH", "CNI_PATH"),
])
def test_missing_env_is_code_4(drop: str, words: str) -> None:
    env = {k: v for k, v in BASE.items() if k != drop}
    with pytest.raises(EnvError, match=words):
        parse_env(env)


@pytest.mark.parametrize(("command", "needs"), [
    ("DEL", {"CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"}),  # CNI_NETNS optional on DEL
    ("GC", {"CNI_PATH"}), ("STATUS", {"CNI_PATH"}), ("VERSION", set()),
])
def test_required_env_per_command(command: str, needs: set[str]) -> None:
    env = {"CNI_COMMAND": command, **{k: BASE[k] for k in needs}}
    assert parse_env(env).command == command


@pytest.mark.parametrize(("raw", "want"), [
    ("", {}),
    ("IgnoreUnknown=1;FOO=bar", {"IgnoreUnknown": "1", "FOO": "bar"}),
    ("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=u",
     {"K8S_POD_NAMESPACE": "ns", "K8S_POD_NAME": "p", "K8S_POD_INFRA_CONTAINER_ID": "x",
      "K8S_POD_UID": "u"}),
    ("IP=10.1.2.3;", {"IP": "10.1.2.3"}),
], ids=["empty", "ignore-unknown", "k8s", "ip-trailing-semicolon"])
def test_cni_args_accepted(raw: str, want: dict[str, str]) -> None:
    assert parse_cni_args(raw) == want


@pytest.mark.parametrize("raw", ["FOO=bar", "IgnoreUnknown=0;FOO=1", "novalue"])
def test_cni_args_rejected(raw: str) -> None:
    with pytest.raises(EnvError):
        parse_cni_args(raw)


def test_subnet_env_parsing() -> None:
    s = parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
                         "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", "f")
    assert (str(s.network), str(s.subnet), str(s.gateway), s.mtu, s.ipmasq) == \
        ("10.244.0.0/16", "10.244.7.0/24", "10.244.7.1", 1450, True)


def test_subnet_env_names_missing_keys() -> None:
    with pytest.raises(TryAgainError, match="FLANNEL_MTU, FLANNEL_IPMASQ"):
        parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n", "f")
    with pytest.raises(ConfigError, match="f:"):
        parse_subnet_env("FLANNEL_NETWORK=x\nFLANNEL_SUBNET=y\nFLANNEL_MTU=1\n"
                         "FLANNEL_IPMASQ=false\n", "f")


def test_missing_subnet_file_says_no_lease(tmp_path: Path) -> None:
    with pytest.raises(TryAgainError, match="no lease yet"):
        read_subnet_env(str(tmp_path / "subnet.env"))


@pytest.mark.parametrize("version", VERSIONS)
def test_result_shape_per_version(version: str) -> None:
    r = shape(version, [{"name": "cni0", "mac": "02:00:00:00:00:01"},
                        {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/x",
                         "mtu": 1450}],
              [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 1}],
              [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}])
    validate_result(version, r)
    assert ("mtu" in r["interfaces"][1]) == (version == "1.1.0")
    assert ("version" in r["ips"][0]) == version.startswith("0.")


@pytest.mark.parametrize(("stdin", "code"), [
    (b"", 6), (b"   \n", 6), (b"{oops", 6), (b"[]", 6),
    ({"cniVersion": "0.2.0", "name": "n"}, 1), ({"name": "n"}, 1),
    ({"cniVersion": "1.0.0"}, 7), ({"cniVersion": "1.0.0", "name": "n", "mtu": "big"}, 7),
    ({"cniVersion": "1.0.0", "name": "n", "hairpinMode": "yes"}, 7),
], ids=["empty", "blank", "bad-json", "array", "old-version", "no-version", "no-name",
        "bad-mtu", "bad-bool"])
def test_skel_errors_are_spec_json(stdin: bytes | dict[str, Any], code: int) -> None:
    rc, err = run({**BASE, "CNI_COMMAND": "STATUS"}, stdin)
    assert rc == 1
    validate_error(err, code)


def test_error_reply_uses_config_version() -> None:
    rc, err = run({**BASE, "CNI_COMMAND": "DEL", "CNI_CONTAINERID": "bad/id"},
                  {"cniVersion": "0.4.0", "name": "n"})
    assert rc == 1 and err["cniVersion"] == "0.4.0" and err["code"] == 4
    rc, err = run({**BASE, "CNI_COMMAND": "STATUS"},
                  {"cniVersion": "1.1.0", "name": "n", "subnetFile": "/nonexistent/x"})
    assert rc == 1 and err["code"] == 50
    assert "/nonexistent/x" in err["msg"]


def test_version_command() -> None:
    rc, info = run({"CNI_COMMAND": "VERSION"}, {"cniVersion": "0.4.0"})
    assert rc == 0 and info == {"cniVersion": "0.4.0", "supportedVersions": VERSIONS}
    rc, info = run({"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0 and info["cniVersion"] == "1.1.0"


def test_status_ok_with_subnet_env(tmp_path: Path) -> None:
    (tmp_path / "s.env").write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24"
                                    "\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    rc, out = run({"CNI_COMMAND": "STATUS", "CNI_PATH": "/x"},
                  {"cniVersion": "1.1.0", "name": "n", "subnetFile": str(tmp_path / "s.env"),
                   "dataDir": str(tmp_path / "d")})
    assert (rc, out) == (0, {})


@pytest.mark.parametrize(("conf", "valid"), [
    ({}, set()),  # libcni's GC without GCArgs (cnitool gc): nothing is valid any more
    ({"cni.dev/valid-attachments": None}, set()),
    ({"cni.dev/valid-attachments": []}, set()),
    ({"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"},
                                    {"containerID": "c1", "ifname": "net1"},
                                    {"containerID": "c2"}]},
     {("c1", "eth0"), ("c1", "net1"), ("c2", "")}),
    ({"cni.dev/attachments": [{"containerID": "c3", "ifname": "eth0"}]}, {("c3", "eth0")}),
], ids=["missing", "null", "empty", "pairs", "old-key"])
def test_gc_valid_attachments(conf: dict[str, Any], valid: set[tuple[str, str]]) -> None:
    assert valid_attachments(conf) == valid


@pytest.mark.parametrize("bad", [[{"ifname": "eth0"}], ["c1"], [{"containerID": 5}]])
def test_gc_valid_attachments_entry_without_container_id(bad: Any) -> None:
    with pytest.raises(ConfigError, match="lacks containerID"):
        valid_attachments({"cni.dev/valid-attachments": bad})


@pytest.mark.parametrize("obj", [
    {"a": [1, 2.5, None, True, False, "é\"\\"], "b": {}}, [], "x", 10**20, {"k": 1e-9},
])
def test_wire_matches_json(obj: Any) -> None:
    assert wire.dumps(obj) == json.dumps(obj)
    assert wire.loads(json.dumps(obj).encode()) == obj
    assert wire.loads(" \n" + json.dumps(obj) + "\n ") == obj


@pytest.mark.parametrize("bad", [b"", b"{x", b"[1] 2", b'{"a":}', b"\xff", b"nul"])
def test_wire_rejects_bad_json(bad: bytes) -> None:
    with pytest.raises(ValueError):
        wire.loads(bad)


def test_install_writes_launcher_and_conflist(tmp_path: Path) -> None:
    paths = install(str(tmp_path / "bin"), str(tmp_path / "conf"), python="/usr/bin/python3")
    plugin, conf = paths
    assert plugin.read_text() == render_launcher("/usr/bin/python3")
    assert plugin.read_text().startswith("#!/usr/bin/python3 -IS\n")
    assert plugin.stat().st_mode & 0o111
    data = json.loads(conf.read_text())
    assert conf.name == "10-weft.conflist"
    assert data["cniVersion"] == "1.1.0" and data["plugins"][0]["type"] == "weft"
    conf.write_text("{}")
    assert install(str(tmp_path / "bin"), str(tmp_path / "conf")) == [plugin]  # kept
    assert conf.read_text() == "{}"
    with_pm = json.loads(render_conflist(portmap=True, cni_version="1.0.0"))
    assert [p["type"] for p in with_pm["plugins"]] == ["weft", "portmap"]


DEBIAN_PORTMAP = Path("/usr/lib/cni/portmap")


@pytest.mark.parametrize(
    ("plugins", "asked", "expected"),
    [
        pytest.param({"weft": ["0.4.0", "1.0.0", "1.1.0"]}, None, "1.1.0", id="weft-alone"),
        pytest.param({"weft": ["0.4.0", "1.0.0", "1.1.0"],
                      "portmap": ["0.1.0", "0.4.0", "1.0.0"]}, None, "1.0.0",
                     id="debian-portmap"),
        pytest.param({"weft": ["0.3.1", "0.4.0"], "portmap": ["0.3.1", "0.4.0", "1.0.0"]},
                     "0.3.1", "0.3.1", id="asked-and-shared"),
        pytest.param({"weft": ["1.0.0", "1.1.0"], "portmap": ["1.0.0"]}, "1.1.0",
                     "portmap: does not support cniVersion 1.1.0", id="asked-unsupported"),
        pytest.param({"weft": ["1.1.0"], "portmap": ["0.4.0"]}, None,
                     "weft + portmap: the plugins share no CNI version", id="nothing-shared"),
    ],
)
def test_choose_cni_version(plugins: dict[str, list[str]], asked: str | None,
                            expected: str) -> None:
    from cni.install import InstallError, choose_cni_version

    if "." in expected and " " not in expected:
        assert choose_cni_version(plugins, asked) == expected
    else:
        with pytest.raises(InstallError) as err:
            choose_cni_version(plugins, asked)
        assert str(err.value).startswith(expected)


@pytest.mark.skipif(not DEBIAN_PORTMAP.exists(),
                    reason="needs Debian's containernetworking-plugins (make deps)")
def test_weftctl_cni_install_asks_each_plugin_its_versions(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from overlay.cli.weftctl import main

    bin_dir, conf = tmp_path / "b", tmp_path / "c" / "10-weft.conflist"
    base = ["cni", "install", "--bin-dir", str(bin_dir), "--conf-dir", str(conf.parent),
            "--force"]
    # no portmap in the bin dir: weft alone, at the newest version it speaks
    assert main(base) == 0
    data = json.loads(conf.read_text())
    assert data["cniVersion"] == "1.1.0" and [p["type"] for p in data["plugins"]] == ["weft"]
    assert main([*base, "--portmap"]) == 1
    assert "portmap is not an executable" in capsys.readouterr().err
    # Debian's portmap in the bin dir: chained by default, at the version both speak
    (bin_dir / "portmap").symlink_to(DEBIAN_PORTMAP)
    assert main(base) == 0
    data = json.loads(conf.read_text())
    assert data["cniVersion"] == "1.0.0"
    assert [p["type"] for p in data["plugins"]] == ["weft", "portmap"]
    assert "cniVersion 1.0.0, plugins weft -> portmap" in capsys.readouterr().out
    assert main([*base, "--cni-version", "1.1.0"]) == 1
    assert "portmap: does not support cniVersion 1.1.0" in capsys.readouterr().err
    assert main([*base, "--no-portmap"]) == 0
    data = json.loads(conf.read_text())
    assert data["cniVersion"] == "1.1.0" and len(data["plugins"]) == 1


def test_plugin_about_text_and_version() -> None:
    plugin = Path(sys.executable).parent / "weft"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    by_hand = subprocess.run([str(plugin)], env=env, capture_output=True, text=True,
                             timeout=30, stdin=subprocess.DEVNULL)
    assert by_hand.returncode == 0, by_hand.stderr
    assert by_hand.stderr.startswith("CNI weft plugin: weft ")
    assert "CNI protocol versions supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0" in by_hand.stderr
    asked = subprocess.run([str(plugin), "--version"], env=env, capture_output=True,
                           text=True, timeout=30)
    assert asked.returncode == 0 and asked.stdout.startswith("CNI weft plugin: weft 0.")


def test_helper_wire_round_trip_keeps_only_cni_env() -> None:
    from cni import relay

    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=b=c;X=1", "WEFT_CNI_TESTING": "1",
           "HOME": "/root", "PATH": "/bin"}
    data = relay.encode_request(env, b'{"x": 1}')
    got_env, stdin = relay.decode_request(data)
    assert got_env == {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=b=c;X=1", "WEFT_CNI_TESTING": "1"}
    assert stdin == b'{"x": 1}'
    assert relay.decode_response(relay.encode_response(7, b"err", b"out")) == \
        (7, b"err", b"out")
    with pytest.raises(ValueError):
        relay.decode_request(b"GET / HTTP/1.0\r\n\r\n")


def test_helper_socket_name_follows_code(tmp_path: Path) -> None:
    import os

    from cni import relay

    (tmp_path / "a.py").write_text("x = 1\n")
    before = relay.socket_name(str(tmp_path))
    assert before.startswith(b"\0weft-cni-")
    os.utime(tmp_path / "a.py", ns=(1, 10**18))
    assert relay.socket_name(str(tmp_path)) != before


MALFORMED_PREV = [
    {"ips": 5}, {"ips": {"address": "10.0.0.2/24"}}, {"ips": [5, "x", None]},
    {"ips": [{"address": 5}]}, {"ips": [{"address": None}]}, {"ips": [{"address": "nope"}]},
    {"interfaces": 3, "ips": [{"address": ["10.0.0.2/24"]}]},
    {"interfaces": [{"name": "eth0", "sandbox": "/x", "mac": 7}], "ips": []},
]
MALFORMED_IDS = ["ips-int", "ips-object", "entries-not-objects", "address-int",
                 "address-null", "address-garbage", "interfaces-int", "mac-int"]


@pytest.mark.parametrize("prev", MALFORMED_PREV, ids=MALFORMED_IDS)
def test_prev_result_garbage_yields_no_ips(prev: dict[str, Any]) -> None:
    from cni.commands import _prev_container_ips, _prev_ips

    assert _prev_ips(prev) == []
    assert _prev_container_ips(prev, "eth0") == ([], None)


@pytest.mark.parametrize("prev", MALFORMED_PREV, ids=MALFORMED_IDS)
def test_check_with_garbage_prev_result_is_code_103_not_internal(
        prev: dict[str, Any], tmp_path: Path) -> None:
    rc, err = run({**BASE, "CNI_COMMAND": "CHECK"},
                  {"cniVersion": "1.0.0", "name": "n", "dataDir": str(tmp_path),
                   "prevResult": prev})
    assert rc == 1
    validate_error(err, 103)


@pytest.mark.parametrize("attachments", [5, {"containerID": "c1"}, "c1", True],
                         ids=["number", "object", "string", "bool"])
def test_gc_valid_attachments_not_a_list_is_code_7(attachments: Any, tmp_path: Path) -> None:
    rc, err = run({"CNI_COMMAND": "GC", "CNI_PATH": "/x"},
                  {"cniVersion": "1.1.0", "name": "n", "dataDir": str(tmp_path),
                   "cni.dev/valid-attachments": attachments})
    assert rc == 1
    validate_error(err, 7)
    assert "valid-attachments" in err["msg"]


@pytest.mark.parametrize("command", ["ADD", "DEL", "STATUS"])
def test_deeply_nested_stdin_is_code_6(command: str) -> None:
    rc, err = run({**BASE, "CNI_COMMAND": command}, b"[" * 100_000)
    assert rc == 1
    validate_error(err, 6)


# -- dual-stack and IPv6-only (issue 17) ---------------------------------------------

V6_LINES = "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n"
TAIL = "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"


def test_subnet_env_dual_stack_and_ipv6_only() -> None:
    both = parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
                            + V6_LINES + TAIL, "f")
    assert (str(both.subnet), str(both.network6), str(both.subnet6), str(both.gateway6)) == (
        "10.244.7.0/24", "fd00:10:244::/56", "fd00:10:244:7::/64", "fd00:10:244:7::1")
    only = parse_subnet_env(V6_LINES + TAIL, "f")
    assert (only.network, only.subnet, only.gateway) == (None, None, None)
    assert str(only.cluster(6)) == "fd00:10:244::/56" and only.cluster(4) is None
    v4 = parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
                          + TAIL, "f")
    assert v4.network6 is None and v4.subnet6 is None


@pytest.mark.parametrize(("text", "err", "words"), [
    ("FLANNEL_IPV6_NETWORK=fd00::/56\n" + TAIL, TryAgainError, "lacks FLANNEL_IPV6_SUBNET"),
    ("FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00:x::1/64\n" + TAIL, ConfigError,
     "f: FLANNEL_IPV6_SUBNET 'fd00:x::1/64' is not an IPv6 network"),
    ("FLANNEL_IPV6_NETWORK=10.0.0.0/8\nFLANNEL_IPV6_SUBNET=fd00::1/64\n" + TAIL, ConfigError,
     "FLANNEL_IPV6_NETWORK '10.0.0.0/8'"),
    ("FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00::1/127\n" + TAIL, ConfigError,
     "too small"),
    ("FLANNEL_SUBNET=10.1.0.1/24\n" + V6_LINES + TAIL, TryAgainError, "lacks FLANNEL_NETWORK"),
], ids=["no-subnet6", "bad-subnet6", "v4-in-v6-network", "subnet6-tiny", "half-v4-pair"])
def test_subnet_env_ipv6_errors_name_the_variable(text: str, err: type[Exception],
                                                   words: str) -> None:
    with pytest.raises(err) as e:
        parse_subnet_env(text, "f")
    assert words in e.value.msg  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", VERSIONS)
def test_dual_stack_result_shape_per_version(version: str) -> None:
    r = shape(version, [{"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/x"}],
              [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0},
               {"address": "fd00::2/64", "gateway": "fd00::1", "interface": 0}],
              [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}, {"dst": "::/0", "gw": "fd00::1"}])
    validate_result(version, r)
    if version.startswith("0."):
        assert [ip["version"] for ip in r["ips"]] == ["4", "6"]


def test_masq_rules_for_both_families() -> None:
    from cni import masq
    from cni.ip4 import IPv4, Net4
    from cni.ip6 import IPv6, Net6

    script = masq.render_setup("n", [Net4.parse("10.244.0.0/16"), Net6.parse("fd00::/56")],
                               [(IPv4.parse("10.244.1.2"), "c1"), (IPv6.parse("fd00::2"), "c1")])
    assert "add set ip6 weft-n masq { type ipv6_addr; }" in script
    assert ("add rule ip6 weft-n postrouting ip6 saddr @masq ip6 daddr != fd00::/56 "
            "ip6 daddr != ff00::/8 masquerade") in script
    assert 'add element ip6 weft-n masq { fd00::2 comment "id: c1" }' in script
    assert 'add element ip weft-n masq { 10.244.1.2 comment "id: c1" }' in script
    assert masq.render_remove("n", IPv6.parse("fd00::2"), False) == \
        "delete element ip6 weft-n masq { fd00::2 }\n"
    last = masq.render_remove("n", None, True)
    assert "add table ip6 weft-n\ndelete table ip6 weft-n\n" in last
    assert "add table ip weft-n\ndelete table ip weft-n\n" in last
