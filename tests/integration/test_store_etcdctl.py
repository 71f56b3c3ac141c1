"""Debian's etcdctl (API v3) drives the embedded store exactly as it drives real etcd."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

pytestmark = pytest.mark.skipif(shutil.which("etcdctl") is None,
                                reason="needs Debian's etcd-client (make deps installs it)")


def ctl(endpoint: str, *args: str, stdin: str | None = None) -> str:
    env = dict(os.environ, ETCDCTL_API="3")
    r = subprocess.run(["etcdctl", "--endpoints", endpoint.split("://", 1)[-1],
                        "--command-timeout=5s", *args],
                       input=stdin, capture_output=True, text=True, env=env, timeout=20)
    assert r.returncode == 0, f"etcdctl {' '.join(args)}: {r.stderr}"
    return r.stdout


@pytest.fixture
def p() -> str:
    return f"/ctl/{uuid.uuid4().hex[:8]}"


def test_put_get_del(store_endpoint: str, p: str) -> None:
    assert ctl(store_endpoint, "put", f"{p}/a", "hello") == "OK\n"
    assert ctl(store_endpoint, "put", f"{p}/b", "world") == "OK\n"
    assert ctl(store_endpoint, "get", f"{p}/a") == f"{p}/a\nhello\n"
    assert ctl(store_endpoint, "get", "--prefix", f"{p}/") == f"{p}/a\nhello\n{p}/b\nworld\n"
    assert ctl(store_endpoint, "get", "--prefix", "--keys-only", f"{p}/") == f"{p}/a\n\n{p}/b\n\n"
    assert '"Count" : 2' in ctl(store_endpoint, "get", "--prefix", "--limit=1", "-w", "fields",
                                f"{p}/")
    got = json.loads(ctl(store_endpoint, "get", f"{p}/a", "-w", "json"))
    assert got["count"] == 1 and got["kvs"][0]["version"] == 1
    assert ctl(store_endpoint, "del", f"{p}/a") == "1\n"
    assert ctl(store_endpoint, "del", "--prefix", f"{p}/") == "1\n"
    assert ctl(store_endpoint, "get", "--prefix", f"{p}/") == ""


def test_watch(store_endpoint: str, p: str) -> None:
    env = dict(os.environ, ETCDCTL_API="3")
    # watch from the next revision: no race with etcdctl's (silent) subscription
    now = json.loads(ctl(store_endpoint, "get", f"{p}/", "-w", "json"))["header"]["revision"]
    w = subprocess.Popen(["etcdctl", "--endpoints", store_endpoint.split("://", 1)[-1],
                          "watch", "--prefix", f"--rev={now + 1}", f"{p}/"],
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        ctl(store_endpoint, "put", f"{p}/x", "1")
        ctl(store_endpoint, "del", f"{p}/x")
        assert w.stdout is not None
        lines = [w.stdout.readline() for _ in range(5)]
        assert lines == ["PUT\n", f"{p}/x\n", "1\n", "DELETE\n", f"{p}/x\n"]
    finally:
        w.kill()
        w.wait()


def test_watch_from_revision(store_endpoint: str, p: str) -> None:
    rev = json.loads(ctl(store_endpoint, "put", f"{p}/r", "1", "-w", "json"))["header"]["revision"]
    ctl(store_endpoint, "put", f"{p}/r", "2")
    env = dict(os.environ, ETCDCTL_API="3")
    w = subprocess.Popen(["etcdctl", "--endpoints", store_endpoint.split("://", 1)[-1],
                          "watch", f"--rev={rev}", f"{p}/r"],
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert w.stdout is not None
        assert [w.stdout.readline() for _ in range(6)] == [
            "PUT\n", f"{p}/r\n", "1\n", "PUT\n", f"{p}/r\n", "2\n"]
    finally:
        w.kill()
        w.wait()


def test_lease(store_endpoint: str, p: str) -> None:
    out = ctl(store_endpoint, "lease", "grant", "60")
    assert out.startswith("lease ") and out.endswith(" granted with TTL(60s)\n")
    lease = out.split()[1]
    assert ctl(store_endpoint, "put", "--lease", lease, f"{p}/l", "v") == "OK\n"
    ttl = ctl(store_endpoint, "lease", "timetolive", "--keys", lease)
    assert "granted with TTL(60s)" in ttl and f"attached keys([{p}/l])" in ttl
    assert ctl(store_endpoint, "lease", "keep-alive", "--once", lease) == \
        f"lease {lease} keepalived with TTL(60)\n"
    assert lease in ctl(store_endpoint, "lease", "list")
    assert ctl(store_endpoint, "lease", "revoke", lease) == f"lease {lease} revoked\n"
    assert ctl(store_endpoint, "get", f"{p}/l") == ""


def test_txn(store_endpoint: str, p: str) -> None:
    ctl(store_endpoint, "put", f"{p}/t", "1")
    script = f'value("{p}/t") = "1"\nmod("{p}/t") > "0"\n\nput {p}/t ok\n\nput {p}/t no\n\n'
    assert ctl(store_endpoint, "txn", stdin=script) == "SUCCESS\n\nOK\n"
    assert ctl(store_endpoint, "get", "--print-value-only", f"{p}/t") == "ok\n"
    assert ctl(store_endpoint, "txn", stdin=script) == "FAILURE\n\nOK\n"
    assert ctl(store_endpoint, "get", "--print-value-only", f"{p}/t") == "no\n"
    script = f'version("{p}/none") = "0"\n\nget {p}/t\n\n\n'
    assert ctl(store_endpoint, "txn", stdin=script) == f"SUCCESS\n\n{p}/t\nno\n"


def test_endpoint_status_and_health(store_endpoint: str) -> None:
    st = json.loads(ctl(store_endpoint, "endpoint", "status", "-w", "json"))[0]["Status"]
    assert st["version"].startswith("3.4.")
    assert st["leader"] == st["header"]["member_id"] and st["dbSize"] > 0
    assert "is healthy" in subprocess.run(
        ["etcdctl", "--endpoints", store_endpoint.split("://", 1)[-1], "endpoint", "health"],
        capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3"),
        timeout=20).stderr


def test_alarm_list_and_defrag(store_endpoint: str, p: str) -> None:
    """The admin commands of an etcd runbook: no alarms; defrag after a compaction."""
    assert ctl(store_endpoint, "alarm", "list") == ""
    assert ctl(store_endpoint, "alarm", "disarm") == ""
    for i in range(50):
        ctl(store_endpoint, "put", f"{p}/k", "x" * 1000 + str(i))
    rev = json.loads(ctl(store_endpoint, "get", f"{p}/k", "-w", "json"))["header"]["revision"]
    ctl(store_endpoint, "compaction", "--physical", str(rev))
    assert "Finished defragmenting etcd member" in ctl(store_endpoint, "defrag")
    assert ctl(store_endpoint, "get", "--print-value-only", f"{p}/k") == "x" * 1000 + "49\n"
