"""EtcdStore: the store contract over etcd's v3 gRPC API (real etcd or weft's embedded server).

This is the only module that imports aetcd. It uses aetcd's generated etcd
stubs (``aetcd.rpc``) on a ``grpc.aio`` channel of its own, because aetcd's
``Client`` offers no TLS and hides the watch stream's compaction response.

Theory of operation:

* Endpoints are tried in order. ``connect`` picks the first that answers a
  Maintenance Status; any call failing with UNAVAILABLE moves to the next
  endpoint and retries there, and ``StoreUnavailableError`` is raised once every
  endpoint has been tried. Each endpoint has one channel for the store's life
  (gRPC reconnects it), so one caller's failover never cancels another's call.
* gRPC statuses map onto the api exception tree the way etcd reports them:
  OUT_OF_RANGE "required revision has been compacted" -> ``CompactedError``
  (the first available revision is learned from a watch at revision 1, since a
  Range error does not carry it); NOT_FOUND "requested lease not found" ->
  ``LeaseNotFoundError``; INVALID_ARGUMENT "request is too large" or gRPC's own
  RESOURCE_EXHAUSTED -> ``ValueTooLargeError``.
* ``watch`` opens one Watch stream per call with ``prev_kv`` and yields one
  batch per revision, so batch boundaries match ``MemoryStore``'s. A lost
  stream is re-created from the next revision (next endpoint, or the same one
  once it is back) with backoff for up to ``timeout`` seconds, so a store
  restart costs no events; after that ``StoreUnavailableError`` is raised.
* Authentication (``StoreConfig.username``): before the first call the store
  calls Auth/Authenticate and then sends gRPC metadata ``token: <token>`` on
  every call, Watch and LeaseKeepAlive streams included. A token the server no
  longer accepts (expired after etcd's ``--auth-token-ttl``, or lost in a
  restart: UNAUTHENTICATED "invalid auth token", or a watch canceled with that
  reason or "permission denied") is replaced by authenticating again, once, and the call
  (or the stream, via its reopen path) is retried. Refused credentials, a store
  without Auth (UNIMPLEMENTED, weft's embedded server) and permission errors
  raise ``StoreAuthError`` naming user and endpoint, never the password. With
  no username nothing is sent, as before; an etcd with auth disabled answers
  Authenticate with "authentication is not enabled" and is used without token.
* Watch and LeaseKeepAlive calls are written to directly (never fed from a
  request generator, whose grpc.aio consumer task outlives a failed call) and
  are owned by the store: cancelled when left and by ``close()``, so a store
  restart leaves no pending task or generator behind.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aetcd.rpc import kv_pb2, rpc_pb2, rpc_pb2_grpc

from overlay.store.api import (
    CompactedError,
    Compare,
    EventType,
    KeyValue,
    LeaseInfo,
    LeaseNotFoundError,
    Listing,
    Store,
    StoreAuthError,
    StoreConfig,
    StoreError,
    StoreUnavailableError,
    TxnOp,
    ValueTooLargeError,
    WatchEvent,
)

log = logging.getLogger(__name__)

_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # a restarted store is found again within ~1 s rather than gRPC's default 1-120 s
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """Maintenance Status of the endpoint in use."""

    endpoint: str
    version: str
    db_size: int
    leader: int
    member_id: int
    cluster_id: int
    raft_index: int
    raft_term: int
    revision: int


def endpoint_target(url: str) -> tuple[str, bool]:
    """``http://h:p`` / ``https://h:p`` / ``h:p`` -> (gRPC target ``h:p``, tls?)."""
    tls = url.startswith("https://")
    rest = url.split("://", 1)[1] if "://" in url else url
    rest = rest.rstrip("/")
    if not rest or "/" in rest:
        raise ValueError(f"bad store endpoint {url!r}: want http(s)://host:port")
    if ":" not in rest.rsplit("]", 1)[-1]:
        rest += ":2379"
    return rest, tls


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix" (``\\0`` = to the end)."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


def _kv(m: Any) -> KeyValue:
    return KeyValue(
        key=bytes(m.key),
        value=bytes(m.value),
        create_revision=int(m.create_revision),
        mod_revision=int(m.mod_revision),
        version=int(m.version),
        lease=int(m.lease),
    )


def _event(m: Any) -> WatchEvent:
    prev = _kv(m.prev_kv) if m.HasField("prev_kv") else None
    if m.type == kv_pb2.Event.DELETE:
        tomb = KeyValue(bytes(m.kv.key), b"", 0, int(m.kv.mod_revision), 0)
        return WatchEvent(EventType.DELETE, tomb, prev)
    return WatchEvent(EventType.PUT, _kv(m.kv), prev)


@dataclass(frozen=True, slots=True)
class _Stream:
    """An open bidirectional call and the channel it runs on."""

    call: Any
    channel: grpc.aio.Channel | None


def _is_unavailable(e: grpc.aio.AioRpcError) -> bool:
    return bool(e.code() == grpc.StatusCode.UNAVAILABLE)


# etcd's answers to a token it no longer accepts (or to a call without one once auth
# got enabled): worth one fresh Authenticate and a retry
_TOKEN_ERRORS = ("invalid auth token", "revision of auth store is old", "user name is empty")


class _TokenRejected(Exception):
    """A watch was canceled at creation for auth ("invalid auth token", "permission
    denied"): maybe only the token is stale."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EtcdStore:
    """The store contract over etcd v3 gRPC (see the module docstring)."""

    def __init__(self, cfg: StoreConfig) -> None:
        if not cfg.endpoints:
            raise ValueError("StoreConfig: no endpoints")
        self._cfg = cfg
        self._targets = [endpoint_target(e) for e in cfg.endpoints]
        self._creds = self._credentials(cfg)
        self._idx = 0
        self._channel: grpc.aio.Channel | None = None
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._kv: Any = None
        self._lease: Any = None
        self._watch: Any = None
        self._maint: Any = None
        self._auth: Any = None
        self._streams: set[Any] = set()  # open Watch / LeaseKeepAlive calls
        self._closed = False
        self._token: str | None = None  # etcd auth token (only with cfg.username)
        self._auth_off = False  # the store answered "authentication is not enabled"
        self._auth_lock = asyncio.Lock()

    @staticmethod
    def _credentials(cfg: StoreConfig) -> grpc.ChannelCredentials | None:
        wants_tls = cfg.cafile or cfg.certfile or any(
            e.startswith("https://") for e in cfg.endpoints
        )
        if not wants_tls:
            return None
        if bool(cfg.certfile) != bool(cfg.keyfile):
            raise ValueError("-etcd-certfile and -etcd-keyfile must be given together")
        try:
            ca = Path(cfg.cafile).read_bytes() if cfg.cafile else None
            cert = Path(cfg.certfile).read_bytes() if cfg.certfile else None
            key = Path(cfg.keyfile).read_bytes() if cfg.keyfile else None
        except OSError as e:
            raise ValueError(f"store TLS file {e.filename}: {e.strerror}") from e
        return grpc.ssl_channel_credentials(ca, key, cert)

    @property
    def endpoint(self) -> str:
        """The endpoint currently in use."""
        return self._cfg.endpoints[self._idx]

    def _open(self) -> None:
        # one channel per endpoint, kept until close(): a channel reconnects by itself
        # once its endpoint is back, and closing one would cancel other callers' calls
        ch = self._channels.get(self._idx)
        if ch is None:
            target, _ = self._targets[self._idx]
            if self._creds is not None:
                ch = grpc.aio.secure_channel(target, self._creds, options=_CHANNEL_OPTIONS)
            else:
                ch = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
            self._channels[self._idx] = ch
        self._channel = ch
        self._kv = rpc_pb2_grpc.KVStub(ch)
        self._lease = rpc_pb2_grpc.LeaseStub(ch)
        self._watch = rpc_pb2_grpc.WatchStub(ch)
        self._maint = rpc_pb2_grpc.MaintenanceStub(ch)
        self._auth = rpc_pb2_grpc.AuthStub(ch)

    # -- authentication ---------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("token", self._token),) if self._token else None

    def _token_rejected(self, e: grpc.aio.AioRpcError) -> bool:
        """The error says our token (not our user) is the problem: re-authenticate."""
        if not self._cfg.username:
            return False
        details = e.details() or ""
        return e.code() == grpc.StatusCode.UNAUTHENTICATED or any(
            t in details for t in _TOKEN_ERRORS)

    async def _ensure_auth(self) -> None:
        """Authenticate once before the first call when a username is configured."""
        if not self._cfg.username or self._token is not None or self._auth_off:
            return
        async with self._auth_lock:
            if self._token is None and not self._auth_off:
                await self._authenticate()

    async def _reauth(self, stale: str | None) -> None:
        """Replace the token ``stale`` the server refused (unless another caller did)."""
        async with self._auth_lock:
            if self._token == stale:
                self._token, self._auth_off = None, False
                await self._authenticate()

    async def _authenticate(self) -> None:
        user = self._cfg.username or ""
        req = rpc_pb2.AuthenticateRequest(name=user, password=self._cfg.password or "")
        if self._channel is None:
            self._open()
        for attempt in range(len(self._targets)):
            used = self._channel
            try:
                r = await self._auth.Authenticate(req, timeout=self._cfg.timeout)
            except grpc.aio.AioRpcError as e:
                details = e.details() or ""
                if _is_unavailable(e):
                    if attempt + 1 < len(self._targets):
                        await self._failover(used)
                        continue
                    raise StoreUnavailableError(
                        f"no store endpoint answered ({', '.join(self._cfg.endpoints)}): "
                        f"{details}") from e
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise StoreAuthError(
                        f"store {self.endpoint} does not support authentication "
                        f"(-etcd-username {user!r} given; weft's embedded store has no "
                        "users: leave -etcd-username/-etcd-password unset)") from e
                if "authentication is not enabled" in details:
                    # etcd's own client carries on without a token here
                    log.debug("store: %s has authentication disabled; user %r unused",
                              self.endpoint, user)
                    self._auth_off = True
                    return
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise StoreUnavailableError(
                        f"store {self.endpoint} timed out authenticating: {details}") from e
                raise StoreAuthError(
                    f"store {self.endpoint}: authentication as user {user!r} failed: "
                    f"{details}") from e
            self._token = str(r.token)
            log.debug("store: authenticated as %r at %s", user, self.endpoint)
            return
        raise AssertionError("unreachable")

    async def _failover(self, failed: grpc.aio.Channel | None) -> None:
        """Move to the next endpoint, unless another caller already moved off ``failed``."""
        if failed is not self._channel:
            return
        if len(self._targets) > 1:
            self._idx = (self._idx + 1) % len(self._targets)
            log.info("store: switching to endpoint %s", self.endpoint)
        self._open()

    @contextlib.asynccontextmanager
    async def _stream(self, service: str, method: str, first: Any,
                      timeout: float | None = None) -> AsyncIterator[_Stream]:
        """A bidirectional call that has sent ``first`` and stays open (never
        half-closed, as etcd wants for Watch and LeaseKeepAlive).

        The call is written to directly rather than fed from a request generator:
        grpc.aio consumes such a generator in a task of its own that a call ending in
        an error (a store restart) never cancels, leaving it pending forever. The
        store owns every open stream: it is cancelled on leaving this block and by
        ``close()``.
        """
        await self._ensure_auth()
        if self._channel is None:
            self._open()
        channel = self._channel
        call = getattr(getattr(self, service), method)(timeout=timeout,
                                                       metadata=self._metadata())
        self._streams.add(call)
        try:
            # a call already over (store gone) refuses the write; the read says why
            with contextlib.suppress(asyncio.InvalidStateError):
                await call.write(first)
            yield _Stream(call, channel)
        finally:
            self._streams.discard(call)
            call.cancel()

    async def _next(self, stream: _Stream) -> Any:
        """The stream's next response, None once the server ended it."""
        try:
            resp = await stream.call.read()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and (task is None or not task.cancelling()):
                raise StoreUnavailableError("store closed") from None
            raise
        return None if resp is grpc.aio.EOF else resp

    def _retryable(self, e: grpc.aio.AioRpcError, used: grpc.aio.Channel | None) -> bool:
        # UNAVAILABLE: the endpoint is down (or its connection just broke)
        return _is_unavailable(e)

    async def _call(self, service: str, method: str, req: Any, **ctx: Any) -> Any:
        await self._ensure_auth()
        if self._channel is None:
            self._open()
        attempt, reauthed = 0, False
        while True:
            stub, used, token = getattr(self, service), self._channel, self._token
            try:
                return await getattr(stub, method)(req, timeout=self._cfg.timeout,
                                                   metadata=self._metadata())
            except grpc.aio.AioRpcError as e:
                if self._retryable(e, used):
                    log.debug("store: %s unavailable: %s", self.endpoint, e.details())
                    attempt += 1
                    if attempt < len(self._targets):
                        await self._failover(used)
                        continue
                    raise StoreUnavailableError(
                        f"no store endpoint answered ({', '.join(self._cfg.endpoints)}): "
                        f"{e.details()}"
                    ) from e
                if not reauthed and self._token_rejected(e):
                    log.info("store: %s refused the auth token (%s); authenticating again",
                             self.endpoint, e.details())
                    reauthed = True
                    await self._reauth(token)
                    continue
                raise await self._map_error(e, **ctx) from e

    async def _map_error(
        self, e: grpc.aio.AioRpcError, key: bytes = b"", lease: int = 0
    ) -> StoreError:
        code, details = e.code(), e.details() or ""
        if "required revision has been compacted" in details:
            return CompactedError(await self.compact_revision())
        if "requested lease not found" in details:
            return LeaseNotFoundError(lease)
        if "request is too large" in details or code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ValueTooLargeError(key)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return StoreUnavailableError(f"store {self.endpoint} timed out: {details}")
        if (code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
                or any(t in details for t in _TOKEN_ERRORS)):
            return self._auth_error(details)
        return StoreError(f"store {self.endpoint}: {code.name}: {details}")

    def _auth_error(self, details: str) -> StoreAuthError:
        if self._cfg.username:
            return StoreAuthError(f"store {self.endpoint}: permission denied for user "
                                  f"{self._cfg.username!r}: {details}")
        return StoreAuthError(f"store {self.endpoint}: permission denied ({details}); the "
                              "store requires authentication: give -etcd-username and "
                              "-etcd-password")

    async def check(self) -> StoreStatus:
        """Find an endpoint that answers (in order); its status."""
        return await self.status()

    # -- KV -------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        r = await self._call("_kv", "Range", rpc_pb2.RangeRequest(key=key), key=key)
        return _kv(r.kvs[0]) if r.kvs else None

    async def list(self, prefix: bytes, revision: int = 0) -> Listing:
        key = prefix or b"\0"
        req = rpc_pb2.RangeRequest(key=key, range_end=prefix_end(prefix), revision=revision)
        r = await self._call("_kv", "Range", req, key=prefix)
        return Listing(tuple(_kv(m) for m in r.kvs), int(r.header.revision))

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        req = rpc_pb2.PutRequest(key=key, value=value, lease=lease)
        r = await self._call("_kv", "Put", req, key=key, lease=lease)
        return int(r.header.revision)

    async def _put_if(
        self, key: bytes, value: bytes, lease: int, target: int, expect: int
    ) -> int | None:
        cmp = rpc_pb2.Compare(result=rpc_pb2.Compare.EQUAL, target=target, key=key)
        if target == rpc_pb2.Compare.CREATE:
            cmp.create_revision = expect
        else:
            cmp.mod_revision = expect
        put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, lease=lease))
        req = rpc_pb2.TxnRequest(compare=[cmp], success=[put])
        r = await self._call("_kv", "Txn", req, key=key, lease=lease)
        return int(r.header.revision) if r.succeeded else None

    async def create(self, key: bytes, value: bytes, lease: int = 0) -> int | None:
        return await self._put_if(key, value, lease, rpc_pb2.Compare.CREATE, 0)

    async def replace(
        self, key: bytes, value: bytes, mod_revision: int, lease: int = 0
    ) -> int | None:
        return await self._put_if(key, value, lease, rpc_pb2.Compare.MOD, mod_revision)

    async def txn(self, compares: Sequence[Compare], ops: Sequence[TxnOp]) -> int | None:
        targets = {"version": rpc_pb2.Compare.VERSION, "create": rpc_pb2.Compare.CREATE,
                   "mod": rpc_pb2.Compare.MOD, "value": rpc_pb2.Compare.VALUE}
        cmps = []
        for c in compares:
            cmp = rpc_pb2.Compare(result=rpc_pb2.Compare.EQUAL, target=targets[c.target],
                                  key=c.key)
            if c.target == "value":
                cmp.value = bytes(c.expect) if isinstance(c.expect, bytes) else b""
            else:
                setattr(cmp, {"version": "version", "create": "create_revision",
                              "mod": "mod_revision"}[c.target], int(c.expect))
            cmps.append(cmp)
        reqs = [rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=op.key))
                if op.delete else
                rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=op.key, value=op.value,
                                                                 lease=op.lease))
                for op in ops]
        lease = next((op.lease for op in ops if op.lease), 0)
        key = ops[0].key if ops else (compares[0].key if compares else b"")
        r = await self._call("_kv", "Txn", rpc_pb2.TxnRequest(compare=cmps, success=reqs),
                             key=key, lease=lease)
        return int(r.header.revision) if r.succeeded else None

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        if prefix:
            req = rpc_pb2.DeleteRangeRequest(key=key or b"\0", range_end=prefix_end(key))
        else:
            req = rpc_pb2.DeleteRangeRequest(key=key)
        r = await self._call("_kv", "DeleteRange", req, key=key)
        return int(r.deleted)

    async def compact(self, revision: int) -> None:
        """Compact history before ``revision`` (physically, so it is done on return)."""
        await self._call("_kv", "Compact", rpc_pb2.CompactionRequest(revision=revision,
                                                                       physical=True))

    async def compact_revision(self) -> int:
        """The store's compaction point (0 if never compacted), learned from a watch at 1."""
        create = rpc_pb2.WatchCreateRequest(key=b"\0", range_end=b"\0", start_revision=1)
        # etcd answers "created" first and then, if revision 1 is gone, a cancel
        # carrying compact_revision; otherwise events from revision 1 follow.
        try:
            async with (asyncio.timeout(self._cfg.timeout),
                        self._stream("_watch", "Watch",
                                     rpc_pb2.WatchRequest(create_request=create)) as stream):
                while (resp := await self._next(stream)) is not None:
                    if resp.compact_revision or resp.canceled:
                        return int(resp.compact_revision)
                    if resp.events or (resp.created and resp.header.revision <= 1):
                        return 0
        except TimeoutError:
            return 0
        return 0

    async def watch(
        self, prefix: bytes, start_revision: int
    ) -> AsyncIterator[builtins.list[WatchEvent]]:
        next_rev = start_revision
        lost_since: float | None = None  # when the stream was lost (None: healthy)
        delay = 0.05
        reauthed = False  # re-authenticated since the last watch the server accepted
        while True:
            create = rpc_pb2.WatchCreateRequest(
                key=prefix or b"\0", range_end=prefix_end(prefix),
                start_revision=next_rev, prev_kv=True,
            )
            used, token = self._channel, self._token
            try:
                async with self._stream("_watch", "Watch",
                                        rpc_pb2.WatchRequest(create_request=create)) as stream:
                    used, token = stream.channel, self._token
                    while (resp := await self._next(stream)) is not None:
                        if resp.compact_revision:
                            raise CompactedError(int(resp.compact_revision))
                        if resp.canceled:
                            reason = str(resp.cancel_reason)
                            if "permission denied" in reason or any(
                                    t in reason for t in _TOKEN_ERRORS):
                                # etcd refuses a watch with a stale token this way
                                raise _TokenRejected(reason)
                            raise StoreError(f"watch on {prefix!r} canceled: {reason}")
                        if resp.created:
                            reauthed = False
                            if not next_rev:
                                next_rev = int(resp.header.revision) + 1
                        lost_since, delay = None, 0.05
                        batch: builtins.list[WatchEvent] = []
                        for m in resp.events:
                            ev = _event(m)
                            if batch and batch[-1].kv.mod_revision != ev.kv.mod_revision:
                                yield batch
                                batch = []
                            batch.append(ev)
                            next_rev = ev.kv.mod_revision + 1
                        if batch:
                            yield batch
                raise StoreUnavailableError(f"watch stream from {self.endpoint} ended")
            except _TokenRejected as e:
                if reauthed or not self._cfg.username:
                    raise self._auth_error(f"watch on {prefix!r}: {e.reason}") from None
                log.info("store: watch on %r refused (%s); authenticating again", prefix,
                         e.reason)
                reauthed = True
                await self._reauth(token)
                continue
            except grpc.aio.AioRpcError as e:
                if not reauthed and self._token_rejected(e):
                    log.info("store: watch stream refused the auth token (%s); "
                             "authenticating again", e.details())
                    reauthed = True
                    await self._reauth(token)
                    continue
                if not self._retryable(e, used):
                    raise await self._map_error(e, key=prefix) from e
                # Resume from the next revision on the next endpoint (or the same one
                # once it is back), for up to ``timeout`` seconds, then give up.
                now = asyncio.get_running_loop().time()
                if lost_since is None:
                    lost_since = now
                    log.info("store: watch stream lost (%s); resuming at %s",
                             e.details(), next_rev)
                elif now - lost_since > self._cfg.timeout:
                    raise StoreUnavailableError(
                        f"watch: no store endpoint answered for {self._cfg.timeout:g}s: "
                        f"{e.details()}") from e
                await self._failover(used)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    # -- leases ---------------------------------------------------------------

    async def grant(self, ttl: int, lease: int = 0) -> int:
        """A new lease living ``ttl`` seconds; ``lease`` asks for that id (etcd refuses
        one that exists)."""
        r = await self._call("_lease", "LeaseGrant", rpc_pb2.LeaseGrantRequest(TTL=ttl, ID=lease))
        if r.error:
            raise StoreError(f"lease grant: {r.error}")
        return int(r.ID)

    async def keepalive(self, lease: int) -> int:
        attempt, reauthed = 0, False
        while True:
            used, token = self._channel, self._token
            try:
                async with self._stream("_lease", "LeaseKeepAlive",
                                        rpc_pb2.LeaseKeepAliveRequest(ID=lease),
                                        timeout=self._cfg.timeout) as stream:
                    used, token = stream.channel, self._token
                    r = await self._next(stream)
                if r is None or r.TTL <= 0:
                    raise LeaseNotFoundError(lease)
                return int(r.TTL)
            except grpc.aio.AioRpcError as e:
                if self._retryable(e, used) and attempt + 1 < len(self._targets):
                    attempt += 1
                    await self._failover(used)
                    continue
                if not reauthed and self._token_rejected(e):
                    reauthed = True
                    await self._reauth(token)
                    continue
                if _is_unavailable(e):
                    raise StoreUnavailableError(f"keepalive: {e.details()}") from e
                raise await self._map_error(e, lease=lease) from e

    async def revoke(self, lease: int) -> None:
        await self._call("_lease", "LeaseRevoke", rpc_pb2.LeaseRevokeRequest(ID=lease),
                         lease=lease)

    async def time_to_live(self, lease: int) -> LeaseInfo:
        req = rpc_pb2.LeaseTimeToLiveRequest(ID=lease, keys=True)
        r = await self._call("_lease", "LeaseTimeToLive", req, lease=lease)
        return LeaseInfo(int(r.ID), int(r.TTL), int(r.grantedTTL),
                         tuple(sorted(bytes(k) for k in r.keys)))

    async def leases(self) -> builtins.list[int]:
        """Every live lease id."""
        r = await self._call("_lease", "LeaseLeases", rpc_pb2.LeaseLeasesRequest())
        return [int(x.ID) for x in r.leases]

    # -- maintenance ----------------------------------------------------------

    async def status(self) -> StoreStatus:
        r = await self._call("_maint", "Status", rpc_pb2.StatusRequest())
        h = r.header
        return StoreStatus(self.endpoint, str(r.version), int(r.dbSize), int(r.leader),
                           int(h.member_id), int(h.cluster_id), int(r.raftIndex),
                           int(r.raftTerm), int(h.revision))

    async def snapshot(self, write: Callable[[bytes], object]) -> int:
        """Maintenance Snapshot of the endpoint in use: every chunk to ``write``, in order;
        the number of bytes. The file format is the server's (etcd: bbolt; weft's embedded
        store: see overlay/store/embedded/snapshot.py)."""
        await self._ensure_auth()
        if self._channel is None:
            self._open()
        call = self._maint.Snapshot(rpc_pb2.SnapshotRequest(), metadata=self._metadata())
        self._streams.add(call)
        total = 0
        try:
            async for r in call:
                write(bytes(r.blob))
                total += len(r.blob)
        except grpc.aio.AioRpcError as e:
            if _is_unavailable(e):
                raise StoreUnavailableError(f"snapshot from {self.endpoint}: {e.details()}") \
                    from e
            raise await self._map_error(e) from e
        finally:
            self._streams.discard(call)
        return total

    async def close(self) -> None:
        self._closed = True
        for call in list(self._streams):
            call.cancel()
        channels, self._channels, self._channel = list(self._channels.values()), {}, None
        for ch in channels:
            await ch.close()


async def connect(cfg: StoreConfig) -> EtcdStore:
    """An ``EtcdStore`` on the first endpoint (in order) that answers.

    Raises ``StoreUnavailableError`` when none does, ``ValueError`` for bad
    endpoints or unreadable TLS files.
    """
    store = EtcdStore(cfg)
    try:
        await store.check()
    except BaseException:
        await store.close()
        raise
    return store


_: Store = EtcdStore(StoreConfig())
