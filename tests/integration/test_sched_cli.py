"""weftctl's fleetctl verbs against both stores (loopback, no root): the state machine,
bad input refused with file/line/key and nothing written, immutability, templates,
blocking start (the agent's state key is written by hand), the list commands' JSON."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from overlay.cli.weftctl import main as weftctl
from overlay.sched.keys import Layout
from overlay.sched.model import MachineRecord, UnitState
from overlay.store.api import StoreConfig
from overlay.store.client import connect

pytestmark = pytest.mark.etcd

HELLO = "[Unit]\nDescription=hello\n[Service]\nExecStart=/bin/sleep 1000\n"
BAD = {
    "syntax.service": ("[Service]\nExecStart=/bin/true\nthis line is wrong\n", ":3", ""),
    "unknown.service": ("[X-Fleet]\nMachineIDs=abc\n", ":2", "MachineIDs"),
    "svc.service": ("[Service]\nExecStart=/bin/true\n[X-Weft]\nService=web:http\n", ":4",
                    "Service"),
    "cyc1.service": ("[X-Fleet]\nMachineOf=cyc2.service\n", ":2", "MachineOf"),
    "bad_name": ("[Service]\nExecStart=/bin/true\n", "", ""),
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = weftctl(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


async def _revision(endpoint: str) -> int:
    store = await connect(StoreConfig((endpoint,)))
    try:
        return (await store.list(b"/never-used-prefix/")).revision
    finally:
        await store.close()


async def _put(endpoint: str, key: str, value: bytes) -> None:
    store = await connect(StoreConfig((endpoint,)))
    try:
        await store.put(key.encode(), value)
    finally:
        await store.close()


def test_fleetctl_verbs(store_endpoint: str, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = f"/test-{uuid.uuid4().hex[:8]}/sched/"
    layout = Layout(root)
    flags = ["-etcd-endpoints", store_endpoint, "-sched-prefix", root]
    (tmp_path / "hello.service").write_text(HELLO)
    (tmp_path / "web@.service").write_text(HELLO + "[X-Fleet]\nConflicts=web@*.service\n")
    monkeypatch.chdir(tmp_path)

    def files() -> dict[str, dict[str, object]]:
        rc, out, err = run(capsys, "list-unit-files", "--json", *flags)
        assert rc == 0, err
        return {r["unit"]: r for r in json.loads(out)}

    # bad input: refused naming file, line and key; nothing written
    # (the cycle needs its partner in the registry first)
    (tmp_path / "cyc2.service").write_text("[X-Fleet]\nMachineOf=cyc1.service\n")
    assert run(capsys, "submit", "cyc2.service", *flags)[0] == 0
    before = asyncio.run(_revision(store_endpoint))
    for name, (text, line, key) in BAD.items():
        (tmp_path / name).write_text(text)
        rc, _, err = run(capsys, "submit", "hello.service", name, *flags)
        assert rc == 1, name
        assert f"{name}{line}" in err and key in err, err
    assert asyncio.run(_revision(store_endpoint)) == before
    assert set(files()) == {"cyc2.service"}

    # submit -> inactive; same file again is a no-op; a different file is refused
    rc, out, _ = run(capsys, "submit", "hello.service", *flags)
    assert rc == 0 and "Unit hello.service inactive" in out
    assert files()["hello.service"]["desired"] == "inactive"
    assert run(capsys, "submit", "hello.service", *flags)[0] == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "hello.service").write_text(HELLO + "# edited\n")
    rc, _, err = run(capsys, "submit", "other/hello.service", *flags)
    assert rc == 1 and "destroy it first" in err

    # load/start/stop/unload by name, not blocking
    for verb, desired in (("load", "loaded"), ("start", "launched"), ("stop", "loaded"),
                          ("unload", "inactive"), ("start", "launched")):
        rc, out, err = run(capsys, verb, "--no-block", "hello.service", *flags)
        assert rc == 0, err
        assert files()["hello.service"]["desired"] == desired, verb

    # templates: an instance comes from the registry's template
    assert run(capsys, "submit", "web@.service", *flags)[0] == 0
    rc, _, err = run(capsys, "start", "--no-block", "web@.service", *flags)
    assert rc == 1 and "instance" in err
    assert run(capsys, "start", "--no-block", "web@1.service", "web@2.service", *flags)[0] == 0
    got = files()
    assert got["web@1.service"]["desired"] == "launched"
    assert got["web@1.service"]["hash"] == got["web@.service"]["hash"]
    assert got["web@.service"]["desired"] == "inactive"

    # blocking start returns once an agent reports the unit active
    ip = ipaddress.ip_address("198.18.0.7")
    asyncio.run(_put(store_endpoint, layout.machine("m7"),
                     MachineRecord("m7", ip, 0, {"host": "h7"}).to_json()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "overlay.cli.weftctl", "start", "--block-attempts", "60",
         "web@3.service", *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            if "web@3.service" in files():
                break
            asyncio.run(asyncio.sleep(0.1))
        assert proc.poll() is None
        asyncio.run(_put(store_endpoint, layout.state("web@3.service", "m7"),
                         UnitState("m7", "active", "running", 1.7e9).to_json()))
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Unit web@3.service launched on m7/198.18.0.7" in out

    # list-units / list-machines JSON carry exactly the fields
    rc, out, _ = run(capsys, "list-units", "--json", *flags)
    assert json.loads(out) == [{"unit": "web@3.service", "machine": "m7", "ip": "198.18.0.7",
                                "address": None, "active": "active", "sub": "running"}]
    rc, out, _ = run(capsys, "list-machines", "--json", *flags)
    assert json.loads(out) == [{"machine": "m7", "ip": "198.18.0.7",
                                "metadata": {"host": "h7"}}]
    rc, out, _ = run(capsys, "list-machines", *flags)
    assert out.splitlines()[1].split() == ["m7", "198.18.0.7", "host=h7"]

    # destroy removes; the store endpoint may also come from etcdctl's variable
    env = {**os.environ, "ETCDCTL_ENDPOINTS": store_endpoint}
    done = subprocess.run([sys.executable, "-m", "overlay.cli.weftctl", "destroy",
                           "hello.service", "-sched-prefix", root], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Destroyed hello.service" in done.stdout
    assert "hello.service" not in files()
