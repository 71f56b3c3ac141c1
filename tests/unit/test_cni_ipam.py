"""host-local-compatible IPAM: the pure round-robin allocator and the on-disk layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cni.errors import AttachmentExistsError, ConfigError, EnvError, TryAgainError
from cni.ip4 import IPv4, Net4
from cni.ip6 import IPv6, Net6
from cni.ipam import DiskStore, Range, check_requested, choose, parse_ranges

NET = Net4.parse("10.244.5.0/24")
GW = IPv4.parse("10.244.5.1")
A = IPv4.parse


@pytest.mark.parametrize(("last", "taken", "want"), [
    (None, set(), "10.244.5.2"),
    ("10.244.5.2", set(), "10.244.5.3"),
    ("10.244.5.254", set(), "10.244.5.2"),  # wraps, skips the gateway
    ("10.244.5.9", {A("10.244.5.10"), A("10.244.5.11")}, "10.244.5.12"),
    ("10.244.9.9", set(), "10.244.5.2"),  # last from another subnet is ignored
], ids=["first", "next", "wrap-skips-gateway", "skips-taken", "foreign-last"])
def test_choose_round_robin(last: str | None, taken: set[IPv4], want: str) -> None:
    assert choose(Range(NET, GW), A(last) if last else None, taken)[0] == A(want)


def test_choose_exhausted_is_try_again() -> None:
    rng = Range(Net4.parse("10.0.0.0/29"), A("10.0.0.1"))
    taken = {A(f"10.0.0.{i}") for i in range(2, 7)}
    with pytest.raises(TryAgainError, match="no IP addresses available"):
        choose(rng, None, taken)


@pytest.mark.parametrize(("text", "source", "err", "words"), [
    ("10.9.9.9", "CNI_ARGS IP", EnvError, "outside"),
    ("10.9.9.9", "runtimeConfig.ips", ConfigError, "outside"),
    ("10.244.5.1", "args.cni.ips", ConfigError, "gateway"),
    ("nonsense", "runtimeConfig.ips", ConfigError, "not an IPv4"),
    ("10.244.5.0", "runtimeConfig.ips", ConfigError, "outside"),
    ("10.244.5.7", "runtimeConfig.ips", TryAgainError, "already allocated"),
], ids=["outside-args", "outside-runtime", "gateway", "garbage", "network-address", "taken"])
def test_check_requested_errors(text: str, source: str, err: type[Exception],
                                words: str) -> None:
    with pytest.raises(err, match=words):
        check_requested(Range(NET, GW), text, source, {A("10.244.5.7")})


def test_check_requested_accepts_cidr_form() -> None:
    assert check_requested(Range(NET, GW), "10.244.5.9/24", "x", set()) == A("10.244.5.9")


@pytest.mark.parametrize("subnet", ["10.0.0.0/31", "10.0.0.0/32"])
def test_tiny_subnets_rejected(subnet: str) -> None:
    net = Net4.parse(subnet)
    with pytest.raises(ConfigError):
        Range(net, net.network_address)


def test_disk_layout_matches_host_local(tmp_path: Path) -> None:
    rng = Range(NET, GW)
    with DiskStore(str(tmp_path), "net1") as s:
        ip = s.allocate(rng, "cid1", "eth0", [])
    d = tmp_path / "net1"
    assert ip == A("10.244.5.2")
    assert (d / "10.244.5.2").read_bytes() == b"cid1\r\neth0"
    assert oct((d / "10.244.5.2").stat().st_mode & 0o777) == "0o600"
    assert (d / "last_reserved_ip.0").read_text() == "10.244.5.2"
    assert (d / "lock").exists()
    with DiskStore(str(tmp_path), "net1") as s:
        assert s.allocate(rng, "cid2", "eth0", []) == A("10.244.5.3")
        with pytest.raises(AttachmentExistsError, match="duplicate"):
            s.check_duplicate(rng, "cid1", "eth0")
        s.check_duplicate(rng, "cid1", "eth1")
        assert s.allocate(rng, "cid1", "eth1", []) == A("10.244.5.4")  # other ifname ok
        assert s.find("cid1", "eth0") == [A("10.244.5.2")]
        s.release(A("10.244.5.2"))
        s.release(A("10.244.5.2"))  # idempotent
        assert s.find("cid1", "eth0") == []
        # a requested IP does not move last_reserved (as host-local)
        assert s.allocate(rng, "cid3", "eth0", [("runtimeConfig.ips", "10.244.5.100")]) \
            == A("10.244.5.100")
        assert s.last_reserved() == A("10.244.5.4")
        assert s.allocate(rng, "cid4", "eth0", []) == A("10.244.5.5")


def test_reads_old_host_local_files_with_cid_only(tmp_path: Path) -> None:
    d = tmp_path / "net1"
    d.mkdir()
    (d / "10.244.5.9").write_text("oldcid")
    (d / "not-an-ip").write_text("x")
    with DiskStore(str(tmp_path), "net1") as s:
        assert s.allocations() == {A("10.244.5.9"): ("oldcid", "")}
        assert s.find("oldcid", "eth0") == [A("10.244.5.9")]  # falls back to the cid


def test_lock_is_held_while_open(tmp_path: Path) -> None:
    import fcntl

    with DiskStore(str(tmp_path), "n"):
        fd = os.open(tmp_path / "n" / "lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


def test_find_hinted_reads_prev_result_ips_first(tmp_path: Path) -> None:
    rng = Range(NET, GW)
    with DiskStore(str(tmp_path), "n") as s:
        ip = s.allocate(rng, "c1", "eth0", [])
        s.allocate(rng, "c2", "eth0", [])
        assert s.owner(ip) == ("c1", "eth0") and s.owner(A("10.244.5.200")) is None
        assert s.find_hinted("c1", "eth0", [ip]) == [ip]
        # a stale or wrong hint falls back to the full scan
        assert s.find_hinted("c1", "eth0", [A("10.244.5.3")]) == [ip]
        assert s.find_hinted("c9", "eth0", [ip]) == []


def test_threads_of_one_process_allocate_distinct_ips(tmp_path: Path) -> None:
    """The helper's request threads: the in-process lock serialises them, the flock stays."""
    import threading

    rng = Range(NET, GW)
    got: list[IPv4] = []
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            s = DiskStore(str(tmp_path), "net1").ensure_dir()
            s.check_duplicate(rng, f"cid{i}", "eth0")
            with s:
                got.append(s.allocate(rng, f"cid{i}", "eth0", []))
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert sorted(got) == [A(f"10.244.5.{i}") for i in range(2, 42)]
    with DiskStore(str(tmp_path), "net1") as s:
        assert {owner for owner in s.allocations().values()} == {
            (f"cid{i}", "eth0") for i in range(40)}


@pytest.mark.parametrize(("content", "cid", "ifname", "want"), [
    (b"cid1\r\neth0", "cid1", "eth0", ["10.244.5.9"]),
    (b"cid1\r\neth1", "cid1", "eth0", []),
    (b"cid12\r\neth0", "cid1", "eth0", []),
    (b" cid1 \r\n eth0 \n", "cid1", "eth0", ["10.244.5.9"]),
    (b"cid1", "cid1", "eth0", ["10.244.5.9"]),
    (b"\xff\r\neth0", "\ufffd", "eth0", ["10.244.5.9"]),
], ids=["exact", "other-ifname", "cid-prefix", "whitespace", "old-cid-only", "undecodable"])
def test_find_reads_owners_like_allocations(tmp_path: Path, content: bytes, cid: str,
                                             ifname: str, want: list[str]) -> None:
    d = tmp_path / "net1"
    d.mkdir()
    (d / "10.244.5.9").write_bytes(content)
    s = DiskStore(str(tmp_path), "net1")
    assert s.find(cid, ifname) == [A(w) for w in want]
    dup = bool(want) and s.allocations()[A("10.244.5.9")] == (cid, ifname)
    if dup:
        with pytest.raises(AttachmentExistsError):
            s.check_duplicate(Range(NET, GW), cid, ifname)
    else:
        s.check_duplicate(Range(NET, GW), cid, ifname)


# -- IPv6 and range sets (host-local's ``ranges``) ------------------------------------

N6 = Net6.parse("fd00:10:244:5::/64")
B = IPv6.parse


def test_ipv6_range_defaults_as_host_local() -> None:
    r = Range(N6)
    assert (str(r.gateway), str(r.start), str(r.end)) == (
        "fd00:10:244:5::1", "fd00:10:244:5::1", "fd00:10:244:5:ffff:ffff:ffff:ffff")
    assert choose(r, None, set())[0] == B("fd00:10:244:5::2")
    last = r.end
    assert choose(r, last, set())[0] == B("fd00:10:244:5::2")  # wraps, skips the gateway
    for tiny in ("fd00::/127", "fd00::/128"):
        with pytest.raises(ConfigError, match="too small"):
            Range(Net6.parse(tiny))


def test_choose_walks_a_set_of_ranges_round_robin() -> None:
    rset = [Range(Net6.parse("fd00:1::/126")), Range(Net6.parse("fd00:2::/126"))]
    taken: set[IPv6] = set()
    got = []
    last = None
    for _ in range(4):
        ip, _rng = choose(rset, last, taken)
        got.append(str(ip))
        taken.add(ip)  # type: ignore[arg-type]
        last = ip
    assert got == ["fd00:1::2", "fd00:1::3", "fd00:2::2", "fd00:2::3"]
    with pytest.raises(TryAgainError, match="fd00:1::1-fd00:1::3, fd00:2::1-fd00:2::3"):
        choose(rset, last, taken)
    taken.discard(B("fd00:1::2"))
    assert choose(rset, last, taken)[0] == B("fd00:1::2")  # wraps to the first range


def test_parse_ranges_both_families_and_the_flat_form() -> None:
    sets = parse_ranges({"ranges": [[{"subnet": "10.1.0.0/24"}],
                                    [{"subnet": "fd00::/64", "rangeStart": "fd00::10",
                                      "rangeEnd": "fd00::20", "gateway": "fd00::fe"}]]})
    assert sets is not None
    assert [[r.version for r in s] for s in sets] == [[4], [6]]
    r6 = sets[1][0]
    assert (str(r6.start), str(r6.end), str(r6.gateway)) == ("fd00::10", "fd00::20", "fd00::fe")
    flat = parse_ranges({"subnet": "10.9.0.0/16", "rangeStart": "10.9.1.0"})
    assert flat is not None and str(flat[0][0].start) == "10.9.1.0"
    assert parse_ranges({}) is None


@pytest.mark.parametrize(("ipam", "words"), [
    ({"ranges": {"subnet": "fd00::/64"}}, "ipam.ranges must be a list"),
    ({"ranges": [[]]}, "ipam.ranges[0] must be a non-empty list"),
    ({"ranges": [[{"rangeStart": "fd00::1"}]]}, "ipam.ranges[0][0].subnet is missing"),
    ({"ranges": [[{"subnet": "fd00::zz/64"}]]}, "ipam.ranges[0][0].subnet 'fd00::zz/64'"),
    ({"ranges": [[{"subnet": "fd00::/64", "rangeEnd": "fd00:1::1"}]]}, "rangeEnd fd00:1::1"),
    ({"ranges": [[{"subnet": "fd00::/64", "rangeStart": "nope"}]]}, "rangeStart 'nope'"),
    ({"ranges": [[{"subnet": "fd00::/64", "gateway": "10.0.0.1"}]]}, "family"),
    ({"ranges": [[{"subnet": "fd00::/64"}, {"subnet": "10.0.0.0/24"}]]}, "mixes IPv4 and IPv6"),
    ({"ranges": [[{"subnet": "fd00::/64"}], [{"subnet": "fd00::/96"}]]}, "overlaps"),
    ({"ranges": [[{"subnet": "fd00::/64", "rangeStart": "fd00::9", "rangeEnd": "fd00::5"}]]},
     "does not fit"),
], ids=["not-list", "empty-set", "no-subnet", "bad-subnet", "end-outside", "bad-start",
        "wrong-family-gw", "mixed-set", "overlap", "start-after-end"])
def test_parse_ranges_errors_name_the_field(ipam: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_ranges(ipam)  # type: ignore[arg-type]
    assert words in err.value.msg


def test_dual_stack_store_layout_and_rollback(tmp_path: Path) -> None:
    sets = [[Range(NET, GW)], [Range(N6)]]
    d = tmp_path / "net1"
    with DiskStore(str(tmp_path), "net1") as s:
        got = s.allocate_sets(sets, "c1", "eth0", [])
        assert [str(ip) for ip, _ in got] == ["10.244.5.2", "fd00:10:244:5::2"]
        assert (d / "fd00:10:244:5::2").read_bytes() == b"c1\r\neth0"
        assert (d / "last_reserved_ip.0").read_text() == "10.244.5.2"
        assert (d / "last_reserved_ip.1").read_text() == "fd00:10:244:5::2"
        got = s.allocate_sets(sets, "c2", "eth0", [("CNI_ARGS IP", "fd00:10:244:5::99")])
        assert [str(ip) for ip, _ in got] == ["10.244.5.3", "fd00:10:244:5::99"]
        assert s.last_reserved(1) == B("fd00:10:244:5::2")  # requested: not moved
        with pytest.raises(AttachmentExistsError):
            s.check_duplicate(sets, "c1", "eth0")
        assert sorted(map(str, s.find("c1", "eth0"))) == ["10.244.5.2", "fd00:10:244:5::2"]
        # a set that fails releases what the sets before it reserved
        with pytest.raises(TryAgainError, match="already allocated"):
            s.allocate_sets(sets, "c3", "eth0", [("runtimeConfig.ips", "fd00:10:244:5::99")])
        assert s.find("c3", "eth0") == []
        with pytest.raises(EnvError, match="no IPv6 range"):
            s.allocate_sets(sets[:1], "c4", "eth0", [("CNI_ARGS IP", "fd00::5")])
        with pytest.raises(ConfigError, match="more than one specific IP"):
            s.allocate_sets(sets, "c5", "eth0", [("args.cni.ips", "fd00:10:244:5::7"),
                                                 ("args.cni.ips", "fd00:10:244:5::8")])
        assert len(s.allocations()) == 4
        assert s.allocations()[B("fd00:10:244:5::99")] == ("c2", "eth0")
