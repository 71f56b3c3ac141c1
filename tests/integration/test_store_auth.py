"""etcd v3 username/password auth against Debian's etcd with auth enabled.

Each etcd here runs on a free loopback port with a temp data dir and a short
``--auth-token-ttl``, so token expiry (and the client's re-authentication) is
exercised within seconds; every process and directory is removed even when a
test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overlay.store.api import EventType, StoreAuthError, StoreConfig, StoreError, WatchEvent
from overlay.store.client import EtcdStore, connect
from overlay.store.embedded.launch import free_port, wait_tcp

pytestmark = [pytest.mark.etcd]

USER, PASSWORD = "root", "s3cret-Pa55word"
TOKEN_TTL = 2  # seconds (etcd's --auth-token-ttl, default 300)


@dataclass
class AuthEtcd:
    data_dir: Path
    port: int
    peer: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        peer_url = f"http://127.0.0.1:{self.peer}"
        argv = [shutil.which("etcd") or "/usr/bin/etcd", "--name", "n0",
                "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.endpoint,
                "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"n0={peer_url}", "--log-level", "warn",
                f"--auth-token-ttl={TOKEN_TTL}"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not wait_tcp("127.0.0.1", self.port, 15):
            raise RuntimeError(f"etcd did not start on {self.endpoint}")
        # the port opens before the member has elected itself leader: an etcdctl put right
        # after a restart failed with exit 2 (bad connection) under load. Wait for an answer
        # (as the user: with auth on, an anonymous health check reads "user name is empty";
        # with auth off, etcd ignores the credentials).
        deadline = time.monotonic() + 30
        while subprocess.run(["etcdctl", f"--endpoints={self.endpoint}", "--command-timeout=2s",
                              f"--user={USER}:{PASSWORD}", "endpoint", "health"],
                             capture_output=True, timeout=30,
                             env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd on {self.endpoint} did not become healthy")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def etcdctl(self, *args: str, user: bool = False) -> None:
        argv = ["etcdctl", f"--endpoints={self.endpoint}"]
        if user:
            argv.append(f"--user={USER}:{PASSWORD}")
        subprocess.run([*argv, *args], check=True, capture_output=True, timeout=30,
                       env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})


@contextlib.contextmanager
def auth_etcd() -> Iterator[AuthEtcd]:
    """An etcd with auth enabled (user root) and a short token TTL; always removed."""
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.skip("needs Debian's etcd-server and etcd-client")
    tmp = tempfile.mkdtemp(prefix="weft-auth-etcd-")
    e = AuthEtcd(Path(tmp) / "data", free_port(), free_port())
    try:
        e.start()
        e.etcdctl("user", "add", USER, f"--new-user-password={PASSWORD}",
                  "--interactive=false")
        e.etcdctl("auth", "enable")
        yield e
    finally:
        e.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def etcd_auth() -> Iterator[AuthEtcd]:
    with auth_etcd() as e:
        yield e


def _cfg(e: AuthEtcd, username: str | None = USER, password: str | None = PASSWORD,
         ) -> StoreConfig:
    return StoreConfig.from_flag(e.endpoint, username=username, password=password)


@contextlib.asynccontextmanager
async def _client(cfg: StoreConfig) -> AsyncIterator[EtcdStore]:
    store = await connect(cfg)
    try:
        yield store
    finally:
        await store.close()


async def _next_batch(it: AsyncIterator[list[WatchEvent]], timeout: float = 10
                      ) -> list[WatchEvent]:
    return await asyncio.wait_for(anext(it), timeout)


async def test_right_credentials_put_get_list_watch_keepalive(etcd_auth: AuthEtcd) -> None:
    async with _client(_cfg(etcd_auth)) as store:
        rev = await store.put(b"/auth/a", b"1")
        kv = await store.get(b"/auth/a")
        assert kv is not None and kv.value == b"1" and kv.mod_revision == rev
        assert await store.create(b"/auth/b", b"2") is not None
        listing = await store.list(b"/auth/")
        assert [k.key for k in listing.items] == [b"/auth/a", b"/auth/b"]
        it = store.watch(b"/auth/", listing.revision + 1).__aiter__()
        try:
            task = asyncio.ensure_future(_next_batch(it))
            await asyncio.sleep(0.2)
            await store.put(b"/auth/c", b"3")
            batch = await task
            assert [(ev.type, ev.kv.key) for ev in batch] == [(EventType.PUT, b"/auth/c")]
        finally:
            await it.aclose()  # type: ignore[attr-defined]
        lease = await store.grant(30)
        assert await store.put(b"/auth/leased", b"x", lease=lease)
        assert 0 < await store.keepalive(lease) <= 30
        assert (await store.time_to_live(lease)).keys == (b"/auth/leased",)
        await store.revoke(lease)
        assert await store.delete(b"/auth/", prefix=True) == 3


async def test_without_credentials_put_is_refused_clearly(etcd_auth: AuthEtcd) -> None:
    async with _client(_cfg(etcd_auth, None, None)) as store:  # Status needs no auth
        with pytest.raises(StoreAuthError) as info:
            await store.put(b"/auth/anon", b"x")
    msg = str(info.value)
    assert etcd_auth.endpoint in msg
    assert "permission denied" in msg and "-etcd-username" in msg


async def test_wrong_password_is_a_clear_error_without_the_password(
        etcd_auth: AuthEtcd) -> None:
    wrong = "not-the-Pa55word-xyz"
    with pytest.raises(StoreAuthError) as info:
        await connect(_cfg(etcd_auth, USER, wrong))
    msg = str(info.value)
    assert "authentication failed" in msg and repr(USER) in msg and etcd_auth.endpoint in msg
    assert wrong not in msg and wrong not in repr(info.value)
    assert wrong not in repr(_cfg(etcd_auth, USER, wrong))
    with pytest.raises(StoreAuthError) as unknown:
        await connect(_cfg(etcd_auth, "nobody", wrong))
    assert "'nobody'" in str(unknown.value) and wrong not in str(unknown.value)


async def test_expired_token_is_renewed_for_calls_keepalive_and_watch(
        etcd_auth: AuthEtcd) -> None:
    async with _client(_cfg(etcd_auth)) as store:
        await store.put(b"/exp/k", b"0")
        lease = await store.grant(60)
        listing = await store.list(b"/exp/")
        it = store.watch(b"/exp/", listing.revision + 1).__aiter__()
        try:
            first = asyncio.ensure_future(_next_batch(it))
            await asyncio.sleep(0.2)
            await store.put(b"/exp/k", b"1")
            assert (await first)[0].kv.value == b"1"
            token = store._token
            await asyncio.sleep(TOKEN_TTL + 2.5)  # the simple token expires unused
            # a unary call after expiry: refused once, re-authenticated, retried
            rev = await store.put(b"/exp/k", b"2")
            assert store._token is not None and store._token != token
            # the watch opened before expiry still delivers
            batch = await _next_batch(it)
            assert [(ev.kv.value, ev.kv.mod_revision) for ev in batch] == [(b"2", rev)]
            await asyncio.sleep(TOKEN_TTL + 2.5)
            assert await store.keepalive(lease) > 0
            await asyncio.sleep(TOKEN_TTL + 2.5)
            kv = await store.get(b"/exp/k")
            assert kv is not None and kv.value == b"2"
        finally:
            await it.aclose()  # type: ignore[attr-defined]
        await store.revoke(lease)


async def test_watch_reopened_after_restart_authenticates_again() -> None:
    """A restart invalidates every token: the watch's reopen path re-authenticates
    (etcd refuses the stale token's watch as "permission denied") and loses no event."""
    with auth_etcd() as e:
        async with _client(StoreConfig.from_flag(e.endpoint, username=USER,
                                                 password=PASSWORD)) as store:
            rev = await store.put(b"/rs/k", b"0")
            it = store.watch(b"/rs/", rev + 1).__aiter__()
            try:
                first = asyncio.ensure_future(_next_batch(it, 30))
                await asyncio.sleep(0.2)
                await store.put(b"/rs/k", b"1")
                assert (await first)[0].kv.value == b"1"
                token = store._token
                e.stop()
                e.start()
                # written by a separate client while ours is reconnecting
                e.etcdctl("put", "/rs/k", "2", user=True)
                batch = await _next_batch(it, 30)
                assert [ev.kv.value for ev in batch] == [b"2"]
                assert store._token != token
            finally:
                await it.aclose()  # type: ignore[attr-defined]


async def test_auth_disabled_etcd_accepts_a_username(etcd_endpoint: str) -> None:
    """etcd without auth answers Authenticate "not enabled": used without a token."""
    async with _client(StoreConfig.from_flag(etcd_endpoint, username=USER,
                                             password=PASSWORD)) as store:
        await store.put(b"/noauth/k", b"v")
        assert store._token is None
        assert await store.delete(b"/noauth/k") == 1


async def test_embedded_store_refuses_a_username_clearly(embedded_endpoint: str) -> None:
    with pytest.raises(StoreAuthError) as info:
        await connect(StoreConfig.from_flag(embedded_endpoint, username=USER,
                                            password=PASSWORD))
    msg = str(info.value)
    assert "does not support authentication" in msg and embedded_endpoint in msg
    assert PASSWORD not in msg
    # and without a username nothing changes
    async with _client(StoreConfig.from_flag(embedded_endpoint)) as store:
        await store.put(b"/emb/k", b"v")
        assert store._token is None


async def test_store_error_is_the_base(etcd_auth: AuthEtcd) -> None:
    assert issubclass(StoreAuthError, StoreError)


def _weftctl(*args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    full = {k: v for k, v in os.environ.items() if not k.startswith(("WEFT_", "FLANNELD_"))}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "overlay.cli.weftctl", *args],
                          capture_output=True, text=True, timeout=60, env=full,
                          cwd=Path(__file__).resolve().parents[2])


def test_weftctl_commands_log_in(etcd_auth: AuthEtcd) -> None:
    ep = ["-etcd-endpoints", etcd_auth.endpoint]
    r = _weftctl("network", "set", "--network", "10.244.0.0/16", *ep, "-etcd-username", USER,
                 env={"WEFT_ETCD_PASSWORD": PASSWORD})
    assert r.returncode == 0, r.stderr
    r = _weftctl("network", "get", *ep, "--etcd-username", USER, "--etcd-password", PASSWORD)
    assert r.returncode == 0 and "10.244.0.0/16" in r.stdout, r.stderr
    r = _weftctl("dns", "set", "web.skydns.local", "--host", "10.0.0.1", *ep,
                 "-etcd-username", USER, env={"WEFT_ETCD_PASSWORD": PASSWORD})
    assert r.returncode == 0, r.stderr
    r = _weftctl("dns", "ls", *ep, "-etcd-username", USER, env={"WEFT_ETCD_PASSWORD": PASSWORD})
    assert r.returncode == 0 and "10.0.0.1" in r.stdout, r.stderr
    r = _weftctl("store", "status", *ep, "-etcd-username", USER,
                 env={"WEFT_ETCD_PASSWORD": PASSWORD})
    assert r.returncode == 0 and "revision:" in r.stdout, r.stderr
    wrong = "Wr0ng-pa55-zz"
    r = _weftctl("store", "status", *ep, "-etcd-username", USER, "-etcd-password", wrong)
    assert r.returncode == 1
    assert "authentication failed" in r.stderr and repr(USER) in r.stderr
    assert wrong not in r.stderr + r.stdout
    r = _weftctl("network", "get", *ep)  # no credentials
    assert r.returncode == 1 and "permission denied" in r.stderr, r.stderr
