"""Many ADDs at once, and kill -9 in the middle of ADD followed by GC."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from overlay.testbed import Testbed, open_testbed
from tests.cnidriver import (
    CniDriver,
    host_links,
    install_weft,
    ipam_files,
    nft_ruleset,
    weft_conflist,
    write_subnet_env,
)

pytestmark = pytest.mark.root


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[tuple[Testbed, CniDriver, Path]]:
    with open_testbed(1) as tb:
        bin_dir = tmp_path / "bin"
        install_weft(bin_dir)
        write_subnet_env(tmp_path / "subnet.env", subnet="10.244.5.1/24")
        conf = weft_conflist(tmp_path, ipMasq=True)
        d = CniDriver(conf, [str(bin_dir)], tb.hosts["h1"].netns, tmp_path / "cache",
                      timeout=120)
        yield tb, d, tmp_path


def _env(cmd: str, cid: str, netns: str) -> dict[str, str]:
    return {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0"}


def helper_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    pids = []
    for pid in out.split():
        try:
            if b"cni.helper" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except OSError:
            continue
    return pids


def kill_helpers(netns: str) -> None:
    """kill -9 the resident helper too: a crash of the plugin is a crash of both."""
    import os
    import signal

    for pid in helper_pids(netns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    _wait(lambda: not helper_pids(netns), "the helper to die")


def _veths(netns: str) -> list[str]:
    return sorted(n for n in host_links(netns) if n.startswith("veth"))


def _parallel(d: CniDriver, cmd: str, prefix: str, nss: list[str]) -> list[dict[str, Any]]:
    """``cmd`` for container ``<prefix><i>`` in ``nss[i]``, all started at once; the
    parsed results (ADD) after asserting every exec succeeded."""
    conf = d.plugin_conf(d.conflist["plugins"][0], None, None)
    procs = [d.popen("weft", _env(cmd, f"{prefix}{i}", ns), conf) for i, ns in enumerate(nss)]
    results = []
    for i, p in enumerate(procs):
        res = d.collect(p)
        assert res.rc == 0, (i, res)
        results.append(json.loads(res.stdout) if res.stdout.strip() else {})
    return results


def test_100_parallel_adds_then_dels_leave_nothing(bed: tuple[Testbed, CniDriver, Path]
                                                   ) -> None:
    tb, d, tmp = bed
    host = tb.hosts["h1"].netns
    n = 100
    nss = [tb.add_container("h1", f"p{i}").netns_path for i in range(n)]
    results = _parallel(d, "ADD", "par", nss)
    addrs = [r["ips"][0]["address"] for r in results]
    assert len(set(addrs)) == n, "duplicate addresses handed out"
    _wait(lambda: len(helper_pids(host)) >= 1, "the resident helper")
    assert len(helper_pids(host)) == 1, "a burst must elect exactly one resident helper"
    assert "10.244.5.1/24" not in addrs
    assert len(ipam_files(tmp)) == n
    assert len(_veths(host)) == n
    masq = nft_ruleset(host)
    assert all(a.split("/")[0] in masq for a in addrs)
    # every container really has its address
    for ns, a in zip(nss[:5], addrs[:5], strict=True):
        out = subprocess.run(["ip", "-n", ns.rsplit("/", 1)[1], "-4", "addr", "show", "eth0"],
                             capture_output=True, text=True).stdout
        assert a in out
    _parallel(d, "DEL", "par", nss)
    assert ipam_files(tmp) == []
    assert _veths(host) == []
    assert "weft-" not in nft_ruleset(host), "masquerade rules left behind"


def test_50_parallel_dual_stack_adds_no_duplicate_in_either_family(
        bed: tuple[Testbed, CniDriver, Path]) -> None:
    """Both families' allocations under one lock per ADD: 50 at once give 50 distinct
    addresses in each family, every container holding exactly its pair."""
    tb, d, tmp = bed
    write_subnet_env(tmp / "subnet.env", subnet="10.244.5.1/24",
                     subnet6="fd00:10:244:5::1/64")
    host = tb.hosts["h1"].netns
    n = 50
    nss = [tb.add_container("h1", f"d{i}").netns_path for i in range(n)]
    results = _parallel(d, "ADD", "ds", nss)
    v4 = [r["ips"][0]["address"] for r in results]
    v6 = [r["ips"][1]["address"] for r in results]
    assert len(set(v4)) == n and len(set(v6)) == n, "duplicate addresses handed out"
    assert all(":" in a for a in v6) and "fd00:10:244:5::1/64" not in v6
    files = ipam_files(tmp)
    assert len(files) == 2 * n
    for a4, a6, i in zip(v4, v6, range(n), strict=True):
        for a in (a4, a6):
            assert (tmp / "ipam/weftnet" / a.split("/")[0]).read_bytes() == \
                f"ds{i}\r\neth0".encode()
    masq = nft_ruleset(host)
    assert all(a.split("/")[0] in masq for a in v4 + v6)
    for ns, a in zip(nss[:3], v6[:3], strict=True):
        out = subprocess.run(["ip", "-n", ns.rsplit("/", 1)[1], "-6", "addr", "show", "eth0"],
                             capture_output=True, text=True).stdout
        assert a in out and "tentative" not in out
    _parallel(d, "DEL", "ds", nss)
    assert ipam_files(tmp) == [] and _veths(host) == []
    assert "weft-" not in nft_ruleset(host), "masquerade rules left behind"


STEPS = [
    # step, what must be visible before the kill
    ("allocated", "file"),
    ("veth", "veth"),
    ("addressed", "addr"),
]


def _wait(cond: object, what: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {within}s waiting for {what}")


def test_kill_9_mid_add_then_gc_keeps_exactly_survivors(
        bed: tuple[Testbed, CniDriver, Path]) -> None:
    tb, d, tmp = bed
    host = tb.hosts["h1"].netns
    survivors = []
    for i in range(3):
        ns = tb.add_container("h1", f"s{i}").netns_path
        res = d.add(f"keep{i}", ns)
        survivors.append((f"keep{i}", ns, res))
    _wait(lambda: bool(helper_pids(host)), "the resident helper")  # first crash goes via it
    conf = d.plugin_conf(d.conflist["plugins"][0], None, None)
    tb.exec(host, ["ip", "link", "add", "vother", "type", "veth", "peer", "name", "vother1"])
    tb.exec(host, ["ip", "link", "set", "vother", "master", "cni0"])
    crashed_ns = []
    for step, _ in STEPS:
        ns = tb.add_container("h1", f"k{step}").netns_path
        crashed_ns.append(ns)
        before_files = len(ipam_files(tmp))
        before_veths = len(_veths(host))
        env = {**_env("ADD", f"crash-{step}", ns), "WEFT_CNI_TESTING": "1",
               "WEFT_CNI_TEST_PAUSE_AT": f"{step}:60"}
        p = d.popen("weft", env, conf)
        if step == "allocated":
            _wait(lambda b=before_files: len(ipam_files(tmp)) > b, "the allocation")
            time.sleep(0.05)
        elif step == "veth":
            _wait(lambda b=before_veths: len(_veths(host)) > b, "the host veth")
            time.sleep(0.05)
        else:
            nsname = ns.rsplit("/", 1)[1]
            _wait(lambda n=nsname: "10.244.5." in subprocess.run(
                ["ip", "-n", n, "-4", "addr"], capture_output=True, text=True).stdout,
                "the container address")
            # routes are added right after the address; give them a moment
            time.sleep(0.2)
        p.kill()
        assert d.collect(p, timeout=10).rc == -9
        kill_helpers(host)
    assert len(ipam_files(tmp)) == 6  # 3 survivors + 3 leaked by the crashes
    # a crash after the IPAM file went but before the veth did: swept by its alias
    tb.exec(host, ["ip", "link", "add", "veth0bad0bad", "type", "veth", "peer", "name", "vb1"])
    tb.exec(host, ["ip", "link", "set", "veth0bad0bad", "master", "cni0", "alias",
                   "weft:weftnet:ghost:eth0"])
    errors = d.gc([(cid, "eth0") for cid, _, _ in survivors])
    assert errors == []
    # a veth of another network on the same bridge is not weft's business
    assert "vother" in host_links(host)
    keep_ips = sorted(r["ips"][0]["address"].split("/")[0] for _, _, r in survivors)
    assert ipam_files(tmp) == keep_ips
    assert _veths(host) == sorted(r["interfaces"][1]["name"] for _, _, r in survivors)
    for ns in crashed_ns:
        links = host_links(ns.rsplit("/", 1)[1])
        assert "eth0" not in links, ns
    masq = nft_ruleset(host)
    assert all(ip in masq for ip in keep_ips)
    # the survivors still work
    for cid, ns, _ in survivors:
        d.check(cid, ns)
    # a GC with no valid attachments frees everything, rules included
    assert d.gc([]) == []
    assert ipam_files(tmp) == [] and _veths(host) == []
    assert "weft-" not in nft_ruleset(host)


def test_kill_9_at_random_points_then_gc_leaves_nothing(
        bed: tuple[Testbed, CniDriver, Path]) -> None:
    import random

    tb, d, tmp = bed
    host = tb.hosts["h1"].netns
    rnd = random.Random(4)  # fixed seed: reproducible kill points
    conf = d.plugin_conf(d.conflist["plugins"][0], None, None)
    nss = [tb.add_container("h1", f"r{i}").netns_path for i in range(12)]
    procs = []
    for i, ns in enumerate(nss):
        procs.append(d.popen("weft", _env("ADD", f"rand{i}", ns), conf))
        time.sleep(rnd.uniform(0, 0.03))
    time.sleep(rnd.uniform(0, 0.03))
    for p in procs:
        p.kill()
    kill_helpers(host)
    for p in procs:
        d.collect(p, timeout=10)  # some finished, some died mid-way
    assert d.gc([]) == []
    assert ipam_files(tmp) == []
    assert _veths(host) == []
    assert "weft-" not in nft_ruleset(host)
    for ns in nss:
        assert "eth0" not in host_links(ns.rsplit("/", 1)[1])
