"""The sandbox's pure part: option checks, the daemon table, state round trip, target names.

No root needed; kept beside the sandbox's e2e tests because it is their model.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from overlay import subnetfile
from overlay.sandbox import model
from overlay.sandbox.model import (
    DAEMONS,
    BadOptionError,
    ContainerRecord,
    Context,
    DaemonRecord,
    HostRecord,
    Options,
    Site,
    State,
    UnknownTargetError,
)


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        pytest.param(Options(hosts=0), "--hosts", id="no-hosts"),
        pytest.param(Options(hosts=17), "--hosts", id="too-many-hosts"),
        pytest.param(Options(store="consul"), "--store", id="unknown-store"),
        pytest.param(Options(backend="ipsec"), "--backend", id="unknown-backend"),
        pytest.param(Options(lease_ttl=1), "--lease-ttl", id="ttl-too-short"),
        pytest.param(Options(network=ipaddress.IPv4Network("198.18.0.0/16")), "--network",
                     id="network-on-underlay"),
        pytest.param(Options(network=ipaddress.IPv4Network("10.0.0.0/29")), "--network",
                     id="network-too-small"),
    ],
)
def test_bad_options_name_the_flag(options: Options, flag: str) -> None:
    with pytest.raises(BadOptionError) as err:
        options.check()
    assert err.value.what == flag


@pytest.mark.parametrize("hosts", [1, 3, 16], ids=["one", "default", "max"])
def test_good_options(hosts: int) -> None:
    assert Options(hosts=hosts).check().hosts == hosts


def _ctx(**kw: object) -> Context:
    return Context(Options(**kw), Path("/venv/bin"),  # type: ignore[arg-type]
                   ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.18.0.11"))


SITE = Site("h2", "wabc-h2", ipaddress.IPv4Address("198.18.0.12"), Path("/state/h2"))


@pytest.mark.parametrize(
    ("daemon", "kw", "expected"),
    [
        pytest.param("store", {"store": "embedded"},
                     ["/venv/bin/weftctl", "store", "serve", "--listen", "198.18.0.12:2379"],
                     id="embedded-store"),
        pytest.param("store", {"store": "etcd"}, ["etcd", "--name", "sandbox"], id="etcd-store"),
        pytest.param("flanneld", {"lease_ttl": 5},
                     ["/venv/bin/flanneld", "-etcd-endpoints", "http://198.18.0.1:2379",
                      "-iface", "eth0", "-subnet-file", "/state/h2/subnet.env",
                      "-subnet-lease-ttl", "5"], id="flanneld-short-ttl"),
        pytest.param("dnsd", {}, ["/venv/bin/dnsd", "-addr", "198.18.0.12:53"], id="dnsd"),
        # --ipv6: every address of both families; replies leave from the one queried
        pytest.param("dnsd", {"ipv6": True}, ["/venv/bin/dnsd", "-addr", "[::]:53"],
                     id="dnsd-ipv6"),
    ],
)
def test_argv_builders(daemon: str, kw: dict[str, object], expected: list[str]) -> None:
    argv = model.daemon_spec(daemon).argv(_ctx(**kw), SITE)
    assert argv[:len(expected)] == expected


def test_table_order_and_placement() -> None:
    # the store must come first: everyone else needs it; one entry per daemon
    assert DAEMONS[0].name == "store"
    assert len({d.name for d in DAEMONS}) == len(DAEMONS)
    assert {d.name: d.placement for d in DAEMONS}["flanneld"] == "each-host"


def _state() -> State:
    return State(
        tag="wabc", options={"hosts": 2}, underlay_ns="wabc-ul", store_ip="198.18.0.1",
        dns_ip="198.18.0.11",
        hosts=[HostRecord("h1", "wabc-h1", "198.18.0.11", "/s/h1"),
               HostRecord("h2", "wabc-h2", "198.18.0.12", "/s/h2")],
        containers=[ContainerRecord("c1", "h2", "wabc-h2c1", "10.244.7.2/24",
                                    "c1.h2.skydns.local")],
        daemons=[DaemonRecord("flanneld", "h1", "wabc-h1", 10, 99, ["flanneld"], "/l1"),
                 DaemonRecord("flanneld", "h2", "wabc-h2", 11, 99, ["flanneld"], "/l2"),
                 DaemonRecord("dnsd", "h1", "wabc-h1", 12, 99, ["dnsd"], "/l3")],
    )


def test_state_round_trip() -> None:
    state = _state()
    assert State.from_json(state.to_json()) == state
    state.dns_ip6 = "fd00:198:18::11"  # --ipv6
    assert State.from_json(state.to_json()) == state


@pytest.mark.parametrize("text", ["", "{}", "[1]", '{"tag": 1}'],
                         ids=["empty", "no-keys", "list", "partial"])
def test_unreadable_state_is_a_clear_error(text: str) -> None:
    with pytest.raises(model.SandboxError, match="unreadable sandbox state"):
        State.from_json(text, "/s/state.json")


@pytest.mark.parametrize(
    ("target", "netns"),
    [
        pytest.param("h1", "wabc-h1", id="host"),
        pytest.param("underlay", "wabc-ul", id="underlay"),
        pytest.param("c1.h2", "wabc-h2c1", id="container-dotted"),
        pytest.param("h2/c1", "wabc-h2c1", id="container-slash"),
        pytest.param("c1.h2.skydns.local.", "wabc-h2c1", id="container-dns-name"),
    ],
)
def test_namespace_of(target: str, netns: str) -> None:
    assert _state().namespace_of(target) == netns


@pytest.mark.parametrize(
    ("ident", "pid"),
    [pytest.param("flanneld@h2", 11, id="per-host"), pytest.param("dnsd", 12, id="single"),
     pytest.param("dnsd@h1", 12, id="single-with-host")],
)
def test_daemon_lookup(ident: str, pid: int) -> None:
    assert _state().daemon(ident).pid == pid


@pytest.mark.parametrize("ident", ["flanneld", "flanneld@h9", "etcd@underlay"],
                         ids=["ambiguous", "no-such-host", "no-such-daemon"])
def test_daemon_lookup_errors(ident: str) -> None:
    with pytest.raises(UnknownTargetError):
        _state().daemon(ident)


def test_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(UnknownTargetError, match=r"c1\.h2"):
        _state().namespace_of("c9.h9")


def test_host_table_and_subnet_env() -> None:
    env = subnetfile.parse_vars("# x\nFLANNEL_NETWORK=10.244.0.0/16\n"
                                "FLANNEL_SUBNET=10.244.7.1/24\n\nFLANNEL_MTU=1450\n")
    assert env == {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.7.1/24",
                   "FLANNEL_MTU": "1450"}
    table = model.host_table([model.HostRow("h1", "198.18.0.11", env["FLANNEL_SUBNET"],
                                            "aa:bb:cc:dd:ee:ff", "c1 10.244.7.2 c1.h1")])
    lines = table.splitlines()
    assert lines[0].split() == ["HOST", "UNDERLAY", "IP", "SUBNET", "VTEP", "MAC", "CONTAINERS"]
    assert lines[1].split()[:4] == ["h1", "198.18.0.11", "10.244.7.1/24", "aa:bb:cc:dd:ee:ff"]


def _state_with(daemons: list[tuple[str, str]]) -> State:
    st = State(tag="wabc", options={}, underlay_ns="wabc-ul", store_ip="198.18.0.1",
               dns_ip="198.18.0.11",
               hosts=[HostRecord(h, f"wabc-{h}", f"198.18.0.1{i}", f"/s/{h}")
                      for i, h in enumerate(("h1", "h2"), 1)])
    st.daemons = [DaemonRecord(n, h, f"wabc-{h}", 100 + i, 1, [], "")
                  for i, (n, h) in enumerate(daemons)]
    return st


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param("h2", ["flanneld@h2"], id="host"),
        pytest.param("h1", ["flanneld@h1", "dnsd@h1"], id="host-with-dnsd"),
        pytest.param("store", ["store@underlay"], id="store"),
        pytest.param("underlay", ["store@underlay"], id="underlay"),
        pytest.param("dnsd", ["dnsd@h1"], id="daemon"),
        pytest.param("flanneld@h2", ["flanneld@h2"], id="daemon-at-host"),
    ],
)
def test_kill_and_start_targets(target: str, expected: list[str]) -> None:
    st = _state_with([("store", "underlay"), ("flanneld", "h1"), ("flanneld", "h2"),
                      ("dnsd", "h1")])
    assert [d.ident for d in st.daemons_for(target)] == expected


@pytest.mark.parametrize("target", ["flanneld", "h9", "nosuch"], ids=["ambiguous", "no-host",
                                                                      "no-daemon"])
def test_bad_kill_targets(target: str) -> None:
    st = _state_with([("store", "underlay"), ("flanneld", "h1"), ("flanneld", "h2")])
    with pytest.raises(UnknownTargetError):
        st.daemons_for(target)


@pytest.mark.parametrize(
    ("subnet", "leases", "state", "column"),
    [
        pytest.param("10.244.4.1/24", {"10.244.4.0/24": 17}, "live", "live, 17s left",
                     id="live"),
        pytest.param("10.244.4.1/24", {"10.244.5.0/24": 17}, "expired", "expired",
                     id="expired-but-subnet-env-remains"),
        pytest.param("10.244.4.1/24", None, "unknown", "? (store unreachable)",
                     id="store-down"),
        pytest.param("-", {}, "none", "-", id="no-subnet-yet"),
        pytest.param("10.244.4.1/24", {"10.244.4.0/24": None}, "live", "live", id="no-ttl"),
    ],
)
def test_lease_state(subnet: str, leases: dict[str, int | None] | None, state: str,
                     column: str) -> None:
    assert model.lease_state(subnet, leases)[0] == state
    assert model.lease_column(subnet, leases) == column


def test_host_table_shows_the_lease_only_when_asked() -> None:
    row = model.HostRow("h2", "198.18.0.12", "10.244.4.1/24", "-", "-", "expired")
    assert "LEASE" in model.host_table([row]) and "expired" in model.host_table([row])
    plain = model.HostRow("h2", "198.18.0.12", "10.244.4.1/24", "-", "-")
    assert "LEASE" not in model.host_table([plain])


def test_container_resolv_conf_and_ptr_name() -> None:
    text = model.resolv_conf("198.18.0.11", "skydns.local.")
    assert text.splitlines()[1:] == ["nameserver 198.18.0.11", "search skydns.local",
                                     "options ndots:2"]
    dual = model.resolv_conf("198.18.0.11", "skydns.local.", "fd00:198:18::11")
    assert dual.splitlines()[1:3] == ["nameserver 198.18.0.11", "nameserver fd00:198:18::11"]
    assert model.reverse_name(ipaddress.IPv4Address("10.244.27.2")) == "2.27.244.10.in-addr.arpa"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        pytest.param("sh", None, id="on-path"),
        pytest.param("nosuchcmd-weft", (127, "command not found"), id="not-found"),
        pytest.param("/nonexistent/x", (127, "No such file or directory"), id="no-file"),
        pytest.param("/etc/passwd", (126, "Permission denied"), id="not-executable"),
        pytest.param("/bin/sh", None, id="absolute"),
    ],
)
def test_exec_command_status_as_a_shell_reports_it(command: str,
                                                   expected: tuple[int, str] | None) -> None:
    from overlay.sandbox.cluster import command_status

    assert command_status(command, "/usr/sbin:/usr/bin:/sbin:/bin") == expected
