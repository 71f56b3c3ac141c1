"""The resident helper: serves execs in its host namespace, is replaceable, and only serves root."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni.relay import socket_name
from overlay.testbed import Testbed, open_testbed
from tests.cnidriver import WEFT_ROOT, CniDriver, weft_conflist, write_subnet_env
from tests.integration.test_cni_concurrency import helper_pids, kill_helpers

pytestmark = pytest.mark.root


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[tuple[Testbed, Path]]:
    with open_testbed(1) as tb:
        write_subnet_env(tmp_path / "subnet.env")
        yield tb, tmp_path


def _driver(tb: Testbed, tmp: Path, helper: bool) -> CniDriver:
    from cni.install import install

    bin_dir = tmp / ("bin" if helper else "bin-nohelper")
    install(str(bin_dir), None, helper=helper)
    conf = weft_conflist(tmp, logLevel="info")
    return CniDriver(conf, [str(bin_dir)], tb.hosts["h1"].netns, tmp / "cache")


def _served_by(d: CniDriver, cid: str, ns: str) -> int:
    """ADD, returning the pid that logged the work (helper or the exec'd plugin)."""
    weft = d.conflist["plugins"][0]
    res = d.exec_raw("weft", {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": ns,
                              "CNI_IFNAME": "eth0"},
                     json.dumps(d.plugin_conf(weft, None, None)).encode())
    assert res.rc == 0, res
    line = next(x for x in res.stderr.splitlines() if f"ADD {cid}/eth0" in x)
    return int(line.split("[", 1)[1].split("]", 1)[0])


def _wait_helper(netns: str) -> list[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = helper_pids(netns)
        if pids and "@weft-cni-" in Path(f"/proc/{pids[0]}/net/unix").read_text():
            return pids  # started and listening
        time.sleep(0.02)
    raise AssertionError("no helper listening within 10 s")


def test_helper_serves_later_execs_and_is_replaceable(bed: tuple[Testbed, Path]) -> None:
    tb, tmp = bed
    host = tb.hosts["h1"].netns
    d = _driver(tb, tmp, helper=True)
    nss = [tb.add_container("h1", f"c{i}").netns_path for i in range(3)]
    assert helper_pids(host) == []
    first = _served_by(d, "a0", nss[0])  # in-process; starts the helper afterwards
    (pid,) = _wait_helper(host)
    assert first != pid
    assert _served_by(d, "a1", nss[1]) == pid
    kill_helpers(host)
    third = _served_by(d, "a2", nss[2])  # helper gone: in-process again, no error
    assert third != pid
    (new_pid,) = _wait_helper(host)
    assert new_pid != pid
    for i, ns in enumerate(nss):
        d.delete(f"a{i}", ns)


def test_no_helper_install_never_starts_one(bed: tuple[Testbed, Path]) -> None:
    tb, tmp = bed
    d = _driver(tb, tmp, helper=False)
    ns = tb.add_container("h1", "c").netns_path
    d.add("n1", ns)
    d.delete("n1", ns)
    time.sleep(0.3)
    assert helper_pids(tb.hosts["h1"].netns) == []


def test_helper_refuses_other_users(bed: tuple[Testbed, Path]) -> None:
    tb, tmp = bed
    host = tb.hosts["h1"].netns
    d = _driver(tb, tmp, helper=True)
    ns = tb.add_container("h1", "c").netns_path
    d.add("u1", ns)
    _wait_helper(host)
    name = socket_name(str(WEFT_ROOT / "cni"))
    probe = "\n".join([
        "import socket",
        "s = socket.socket(socket.AF_UNIX)",
        f"s.connect({name!r})",
        "try:",
        "    s.sendall(b'WEFT1\\n\\0\\0\\0\\0{}')",
        "    s.shutdown(socket.SHUT_WR)",
        "    print(len(s.recv(100)))",
        "except ConnectionResetError:",
        "    print(0)",
    ])
    out = subprocess.run(["ip", "netns", "exec", host, "setpriv", "--reuid=65534",
                          "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", probe],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"  # connection closed without an answer
    d.delete("u1", ns)
