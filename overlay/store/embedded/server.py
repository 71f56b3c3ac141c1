"""The embedded store server: etcd v3 gRPC (KV, Lease, Watch, Maintenance subset) over ``State``.

Theory of operation:

* One asyncio event loop owns the ``State``. Every handler runs to its write
  synchronously (no await between check and apply), so requests are
  serialised exactly as etcd's single apply loop would.
* Group commit and watch fan-out: ``committer`` (a write is acknowledged, and
  watched, only once it is on disk).
* Watches: each Watch stream keeps its watchers; creating one with a start
  revision replays the committed events from that revision (synchronously, so
  it cannot miss or duplicate an event committed concurrently) and then
  follows live commits. A compacted start gets what etcd 3.4 sends: a
  ``created`` response, then ``canceled`` with ``compact_revision``.
* Errors are etcd's: the same gRPC status codes and ``etcdserver: ...``
  messages, so etcdctl and clients written for etcd read them unchanged.
* Transport: ``grpcwire`` (gRPC over HTTP/2 on this same loop), not grpcio's
  server, whose per-call thread crossings capped 50-client put/s near half of
  etcd's; RPCs are found by path from the protobuf descriptors of etcd's services.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from aetcd.rpc import rpc_pb2

from overlay.store.api import (
    CompactedError,
    LeaseNotFoundError,
    StoreError,
)
from overlay.store.embedded import snapshot
from overlay.store.embedded.committer import Committer, Watcher, WatchStream, pb_kv
from overlay.store.embedded.gateway import Gateway, StoreProbe
from overlay.store.embedded.grpcwire import Abort, Code, Context, Method, Server, server_tls
from overlay.store.embedded.lock import DataDirLock, lock_data_dir
from overlay.store.embedded.state import (
    Compare,
    DeleteOp,
    DeleteResult,
    DuplicateKeyError,
    KeyNotFoundError,
    LeaseExistsError,
    LeaseTTLTooLargeError,
    Op,
    OpResult,
    PutOp,
    PutResult,
    RangeOp,
    RangeResult,
    Result,
    State,
    Target,
    TxnOp,
    TxnResult,
)
from overlay.store.mvcc import MAX_REQUEST_BYTES, MAX_TXN_OPS, FutureRevisionError

log = logging.getLogger(__name__)

_R = TypeVar("_R")

VERSION = "3.4.23-weft"
GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd allows this much gRPC framing on top
RAFT_TERM = 2
_LEASE_TICK_S = 0.5  # etcd checks lease expiry every 500 ms
PROGRESS_INTERVAL_S = 600.0  # etcd's --experimental-watch-progress-notify-interval (10m)
_REPLAY_BATCH_REVS = 1000  # etcd's watchBatchMaxRevs: revisions per catch-up response

_ERR_COMPACTED = "etcdserver: mvcc: required revision has been compacted"
_ERR_FUTURE = "etcdserver: mvcc: required revision is a future revision"


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cert_file: Path
    key_file: Path
    trusted_ca_file: Path | None = None


def _abort(err: Exception) -> NoReturn:
    raise Abort(*_status(err)) from err


def _status(err: Exception) -> tuple[Code, str]:
    if isinstance(err, CompactedError):
        return Code.OUT_OF_RANGE, _ERR_COMPACTED
    if isinstance(err, FutureRevisionError):
        return Code.OUT_OF_RANGE, _ERR_FUTURE
    if isinstance(err, LeaseNotFoundError):
        return Code.NOT_FOUND, "etcdserver: requested lease not found"
    if isinstance(err, LeaseExistsError):
        return Code.FAILED_PRECONDITION, "etcdserver: lease already exists"
    if isinstance(err, LeaseTTLTooLargeError):
        return Code.OUT_OF_RANGE, "etcdserver: too large lease TTL"
    if isinstance(err, DuplicateKeyError):
        return Code.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"
    if isinstance(err, KeyNotFoundError):
        return Code.INVALID_ARGUMENT, "etcdserver: key not found"
    if isinstance(err, _BadRequest):
        return Code.INVALID_ARGUMENT, str(err)
    return Code.INTERNAL, f"etcdserver: {err}"


class _BadRequest(StoreError):
    """A request etcd rejects with INVALID_ARGUMENT (message is etcd's)."""


def _sized(request: Any) -> Any:
    """``request``, unless it is over etcd's request size limit."""
    if request.ByteSize() > MAX_REQUEST_BYTES:
        raise _BadRequest("etcdserver: request is too large")
    return request


# -- wire <-> state -------------------------------------------------------------


def _range_op(r: Any) -> RangeOp:
    if not r.key:
        raise _BadRequest("etcdserver: key is not provided")
    if not 0 <= r.sort_target <= rpc_pb2.RangeRequest.VALUE:
        # etcd 3.4 crashes on this; refuse it instead
        raise _BadRequest(f"etcdserver: unknown sort target {r.sort_target}")
    return RangeOp(bytes(r.key), bytes(r.range_end), r.revision, r.limit, r.keys_only,
                   r.count_only, r.sort_order, r.sort_target, r.min_mod_revision,
                   r.max_mod_revision, r.min_create_revision, r.max_create_revision)


def _put_op(r: Any) -> PutOp:
    if not r.key:
        raise _BadRequest("etcdserver: key is not provided")
    if r.ignore_value and r.value:
        raise _BadRequest("etcdserver: value is provided")
    if r.ignore_lease and r.lease:
        raise _BadRequest("etcdserver: lease is provided")
    return PutOp(bytes(r.key), bytes(r.value), r.lease, r.prev_kv, r.ignore_value,
                 r.ignore_lease)


def _delete_op(r: Any) -> DeleteOp:
    if not r.key:
        raise _BadRequest("etcdserver: key is not provided")
    return DeleteOp(bytes(r.key), bytes(r.range_end), r.prev_kv)


def _compare(c: Any) -> Compare:
    if not c.key:
        raise _BadRequest("etcdserver: key is not provided")
    target = Target(c.target)
    operand: int | bytes
    if target == Target.VALUE:
        operand = bytes(c.value)
    elif target == Target.VERSION:
        operand = c.version
    elif target == Target.CREATE:
        operand = c.create_revision
    elif target == Target.MOD:
        operand = c.mod_revision
    else:
        operand = c.lease
    return Compare(bytes(c.key), target, Result(c.result), operand, bytes(c.range_end))


def _txn_op(r: Any, budget: int = MAX_TXN_OPS) -> TxnOp:
    """A Txn request as etcd's gRPC layer checks it, both branches and nested Txns: at
    most ``budget`` compares or ops per branch (a nested Txn gets what its parent left),
    keys given, no empty op."""
    used = max(len(r.compare), len(r.success), len(r.failure))
    if used > budget:
        raise _BadRequest("etcdserver: too many operations in txn request")

    def ops(reqs: Any) -> tuple[Op, ...]:
        out: list[Op] = []
        for o in reqs:
            which = o.WhichOneof("request")
            if which == "request_range":
                out.append(_range_op(o.request_range))
            elif which == "request_put":
                out.append(_put_op(o.request_put))
            elif which == "request_delete_range":
                out.append(_delete_op(o.request_delete_range))
            elif which == "request_txn":
                out.append(_txn_op(o.request_txn, budget - used))
            else:
                raise KeyNotFoundError(b"")  # etcd's answer to an empty op
        return tuple(out)

    return TxnOp(tuple(_compare(c) for c in r.compare), ops(r.success), ops(r.failure))


# -- servicers ------------------------------------------------------------------


class StoreService:
    """etcd's KV, Lease, Watch, Maintenance and (read-only) Cluster services: each method
    is named as its RPC; RPCs without a method here answer UNIMPLEMENTED."""

    def __init__(self, state: State, client_urls: list[str]) -> None:
        self.state = state
        self.committer = Committer(state, self.header)
        self.client_urls = client_urls

    def header(self, revision: int = 0) -> Any:
        s = self.state
        return rpc_pb2.ResponseHeader(cluster_id=s.cluster_id, member_id=s.member_id,
                                      revision=revision or s.revision, raft_term=RAFT_TERM)

    async def _settled(self, context: Context) -> None:
        """Before answering a read: what it saw may include writes not yet on disk, so
        wait for them; no reader observes a revision a crash could still undo."""
        if self.committer.busy:
            await self._durable(context)

    async def _durable(self, context: Context) -> None:
        try:
            await self.committer.durable()
        except StoreError as e:
            raise Abort(Code.UNAVAILABLE, f"etcdserver: {e}") from e

    # KV

    async def Range(self, request: Any, context: Context) -> Any:
        try:
            res = self.state.range(_range_op(request))
            header = self.header()
        except StoreError as e:
            _abort(e)
        await self._settled(context)
        return _range_response(header, res)

    async def _write(self, context: Context,
                     apply: Callable[[], tuple[int, _R]],
                     respond: Callable[[Any, _R], Any]) -> Any:
        """A KV write: apply it (etcd's error if it is refused), wait until it is
        durable, answer with the header of the revision it made."""
        try:
            rev, res = apply()
        except StoreError as e:
            _abort(e)
        await self._durable(context)
        return respond(self.header(rev), res)

    async def Put(self, request: Any, context: Context) -> Any:
        return await self._write(context, lambda: self.state.put(_put_op(_sized(request))),
                                 _put_response)

    async def DeleteRange(self, request: Any, context: Context) -> Any:
        return await self._write(context, lambda: self.state.delete(_delete_op(request)),
                                 _delete_response)

    async def Txn(self, request: Any, context: Context) -> Any:
        return await self._write(context, lambda: self.state.txn(_txn_op(_sized(request))),
                                 _txn_response)

    async def Compact(self, request: Any, context: Context) -> Any:
        try:
            self.state.compact(request.revision)
        except StoreError as e:
            _abort(e)
        log.info("store: compacted history before revision %d", request.revision)
        await self._durable(context)
        return rpc_pb2.CompactionResponse(header=self.header())

    # Lease

    async def LeaseGrant(self, request: Any, context: Context) -> Any:
        try:
            lease, ttl = self.state.grant(request.TTL, request.ID)
        except StoreError as e:
            _abort(e)
        await self._durable(context)
        return rpc_pb2.LeaseGrantResponse(header=self.header(), ID=lease, TTL=ttl)

    async def LeaseRevoke(self, request: Any, context: Context) -> Any:
        try:
            rev = self.state.revoke(request.ID)
        except StoreError as e:
            _abort(e)
        await self._durable(context)
        return rpc_pb2.LeaseRevokeResponse(header=self.header(rev))

    async def LeaseKeepAlive(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        async for req in request_iterator:
            try:
                ttl = self.state.keepalive(req.ID)
            except LeaseNotFoundError:
                ttl = 0
            else:
                await self._durable(context)
            yield rpc_pb2.LeaseKeepAliveResponse(header=self.header(), ID=req.ID, TTL=ttl)

    async def LeaseTimeToLive(self, request: Any, context: Context) -> Any:
        ttl, granted, keys = self.state.time_to_live(request.ID)
        header = self.header()
        await self._settled(context)
        return rpc_pb2.LeaseTimeToLiveResponse(
            header=header, ID=request.ID, TTL=ttl, grantedTTL=granted,
            keys=list(keys) if request.keys else [])

    async def LeaseLeases(self, request: Any, context: Context) -> Any:
        resp = rpc_pb2.LeaseLeasesResponse(
            header=self.header(),
            leases=[rpc_pb2.LeaseStatus(ID=i) for i in sorted(self.state.leases)])
        await self._settled(context)
        return resp

    # Watch

    async def Watch(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        # watch ids are per stream and start at 0, as in etcd
        out: asyncio.Queue[Any] = asyncio.Queue()
        mine = WatchStream()

        async def read() -> None:
            try:
                async for req in request_iterator:
                    self._watch_request(req, out, mine)
            finally:
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                resp = await out.get()
                if resp is None:
                    break
                yield resp
        finally:
            reader.cancel()
            for w in mine.watchers.values():
                self.committer.watchers.discard(w)

    def _watch_request(self, req: Any, out: asyncio.Queue[Any],
                       mine: WatchStream) -> None:
        which = req.WhichOneof("request_union")
        if which == "create_request":
            self._watch_create(req.create_request, out, mine)
        elif which == "cancel_request":
            wid = req.cancel_request.watch_id
            w = mine.watchers.pop(wid, None)
            if w is not None:
                self.committer.watchers.discard(w)
                out.put_nowait(rpc_pb2.WatchResponse(
                    header=self.header(self.committer.committed_revision), watch_id=wid,
                    canceled=True))
        elif which == "progress_request":
            # every event up to the committed revision has been sent to this stream
            out.put_nowait(rpc_pb2.WatchResponse(
                header=self.header(self.committer.committed_revision), watch_id=-1))

    def _watch_create(self, c: Any, out: asyncio.Queue[Any], mine: WatchStream) -> None:
        # the revision this stream has been sent everything up to: a write still being
        # committed reaches the new watcher as an event, so it is not in this header
        header = self.header(self.committer.committed_revision)
        key = bytes(c.key) or b"\0"  # etcd: an empty key is the smallest one
        end = bytes(c.range_end)
        refused = None
        if end and end != b"\0" and key >= end:
            refused = "mvcc: watcher range is empty"
        elif c.watch_id and c.watch_id in mine.watchers:  # 0 asks for a new id
            refused = "mvcc: duplicate watch ID provided on the WatchStream"
        if refused is not None:
            out.put_nowait(rpc_pb2.WatchResponse(header=header, watch_id=-1, created=True,
                                                 canceled=True, cancel_reason=refused))
            return
        wid = c.watch_id or mine.next_id()
        out.put_nowait(rpc_pb2.WatchResponse(header=header, watch_id=wid, created=True))
        start = c.start_revision
        first = self.state.first_revision
        if start and start < first:
            # etcd 3.4: no revision in this header and no cancel_reason; the first kept
            # revision is -1 before any compaction, so a start below that is "compacted"
            gone = rpc_pb2.ResponseHeader()
            gone.CopyFrom(header)
            gone.ClearField("revision")
            out.put_nowait(rpc_pb2.WatchResponse(header=gone, watch_id=wid, canceled=True,
                                                 compact_revision=first))
            return
        filters = set(c.filters)
        w = Watcher(wid, key, end, c.prev_kv,
                     rpc_pb2.WatchCreateRequest.NOPUT in filters,
                     rpc_pb2.WatchCreateRequest.NODELETE in filters, out, c.progress_notify,
                     start)
        if start:
            # etcd's catch-up of an unsynced watcher: the events of up to
            # _REPLAY_BATCH_REVS revisions per response, under the current revision
            now = self.header(self.committer.committed_revision)
            batch: list[Any] = []
            revs = 0
            for _, events in self.state.events_since(start):
                selected = w.select(events)
                if not selected:
                    continue
                if revs == _REPLAY_BATCH_REVS:
                    out.put_nowait(rpc_pb2.WatchResponse(header=now, watch_id=wid,
                                                         events=batch))
                    batch, revs = [], 0
                batch.extend(selected)
                revs += 1
            if batch:
                out.put_nowait(rpc_pb2.WatchResponse(header=now, watch_id=wid, events=batch))
        self.committer.watchers.add(w)
        mine.watchers[wid] = w

    # Maintenance and Cluster

    async def Status(self, request: Any, context: Context) -> Any:
        s = self.state
        size = s.db_size()
        header, revision = self.header(), s.revision
        await self._settled(context)
        return rpc_pb2.StatusResponse(
            header=header, version=VERSION, dbSize=size, dbSizeInUse=size,
            leader=s.member_id, raftIndex=revision, raftTerm=RAFT_TERM,
            raftAppliedIndex=revision)

    async def Snapshot(self, requests: AsyncIterator[Any], context: Context
                       ) -> AsyncIterator[Any]:
        """etcd's snapshot: a consistent copy of the database taken while writes go on,
        streamed in chunks (format: overlay/store/embedded/snapshot.py)."""
        async for _ in requests:
            break
        path, remove = snapshot.snapshot_file(self.state.path.parent)
        try:
            header = self.header(self.committer.committed_revision)
            try:
                await asyncio.to_thread(snapshot.take, self.state.path, path)
            except sqlite3.Error as e:
                raise Abort(Code.INTERNAL, f"etcdserver: snapshot failed: {e}") from e
            log.info("store: sending a snapshot of %s (%d bytes)", self.state.path,
                     path.stat().st_size)
            for blob, remaining in snapshot.chunks(path):
                yield rpc_pb2.SnapshotResponse(header=header, remaining_bytes=remaining,
                                               blob=blob)
        finally:
            remove()

    async def Alarm(self, request: Any, context: Context) -> Any:
        """This store raises no alarms (no space quota, no corruption check): the list is
        empty and disarming is a no-op, as on an etcd member without alarms."""
        if request.action == rpc_pb2.AlarmRequest.ACTIVATE:
            raise Abort(Code.UNIMPLEMENTED, "etcdserver: this store raises no alarms")
        return rpc_pb2.AlarmResponse()  # etcd 3.4 sends no header here

    async def Defragment(self, request: Any, context: Context) -> Any:
        """etcd's defrag: give the space compaction freed back to the file system. Like
        etcd's it holds up the store while it runs (SQLite VACUUM)."""
        await self.committer.idle()
        before = self.state.db_size()
        try:
            self.state.defragment()
        except sqlite3.Error as e:
            raise Abort(Code.INTERNAL, f"etcdserver: defragment failed: {e}") from e
        log.info("store: defragmented %s: %d -> %d bytes", self.state.path, before,
                 self.state.db_size())
        return rpc_pb2.DefragmentResponse()  # etcd 3.4 sends no header here

    async def MemberList(self, request: Any, context: Context) -> Any:
        member = rpc_pb2.Member(ID=self.state.member_id, name="weft",
                                clientURLs=self.client_urls, peerURLs=self.client_urls)
        return rpc_pb2.MemberListResponse(header=self.header(), members=[member])


def _range_response(header: Any, res: RangeResult) -> Any:
    return rpc_pb2.RangeResponse(header=header, kvs=[pb_kv(kv) for kv in res.kvs],
                                 more=res.more, count=res.count)


def _put_response(header: Any, res: PutResult) -> Any:
    r = rpc_pb2.PutResponse(header=header)
    if res.prev is not None:
        r.prev_kv.CopyFrom(pb_kv(res.prev))
    return r


def _delete_response(header: Any, res: DeleteResult) -> Any:
    return rpc_pb2.DeleteRangeResponse(header=header, deleted=res.deleted,
                                       prev_kvs=[pb_kv(kv) for kv in res.prevs])


def _txn_response(header: Any, res: TxnResult) -> Any:
    """As etcd 3.4 answers: the Txn's own header is the full one; a sub-response's header
    carries only the revision at that point of the Txn, a nested Txn's an empty one."""
    def op(r: OpResult, rev: int) -> Any:
        sub = rpc_pb2.ResponseHeader(revision=rev)
        if isinstance(r, RangeResult):
            return rpc_pb2.ResponseOp(response_range=_range_response(sub, r))
        if isinstance(r, PutResult):
            return rpc_pb2.ResponseOp(response_put=_put_response(sub, r))
        if isinstance(r, DeleteResult):
            return rpc_pb2.ResponseOp(response_delete_range=_delete_response(sub, r))
        return rpc_pb2.ResponseOp(response_txn=_txn_response(rpc_pb2.ResponseHeader(), r))

    return rpc_pb2.TxnResponse(header=header, succeeded=res.succeeded,
                               responses=[op(r, rev) for r, rev
                                          in zip(res.results, res.revisions, strict=True)])


# -- registration ------------------------------------------------------------------

_SERVICES = ("KV", "Lease", "Watch", "Maintenance", "Cluster")


def _not_implemented(name: str) -> Callable[[Any, Context], Awaitable[Any]]:
    async def call(request: Any, context: Context) -> Any:
        raise Abort(Code.UNIMPLEMENTED, f"method {name} not implemented")

    return call


def _counted(handler: Callable[[Any, Context], Awaitable[Any]],
             load: Committer) -> Callable[[Any, Context], Awaitable[Any]]:
    """Keep ``load.active_calls`` (how many unary calls are in flight: the committer's
    measure of a crowd)."""

    async def call(request: Any, context: Context) -> Any:
        load.active_calls += 1
        try:
            return await handler(request, context)
        finally:
            load.active_calls -= 1

    return call


def methods(service: StoreService) -> dict[bytes, Method]:
    """Every RPC of etcd's services, by path, from the protobuf descriptors; those the
    service has no method for answer UNIMPLEMENTED, as etcd does for what it lacks."""
    table: dict[bytes, Method] = {}
    for svc_name in _SERVICES:
        svc = rpc_pb2.DESCRIPTOR.services_by_name[svc_name]
        for m in svc.methods:
            parse = getattr(rpc_pb2, m.input_type.name).FromString
            impl = getattr(service, m.name, None)
            path = f"/{svc.full_name}/{m.name}".encode()
            if m.client_streaming or m.server_streaming:
                if impl is None:
                    unimplemented = _not_implemented(m.name)

                    async def refuse(requests: AsyncIterator[Any], context: Context,
                                     call: Any = unimplemented) -> AsyncIterator[Any]:
                        yield await call(None, context)

                    impl = refuse
                table[path] = Method(parse, stream=impl)
            else:
                table[path] = Method(parse, unary=_counted(
                    impl or _not_implemented(m.name), service.committer))
    return table


# -- the server -------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT``, ``http://HOST:PORT`` or ``https://HOST:PORT`` -> (host, port)."""
    rest = listen.split("://", 1)[1] if "://" in listen else listen
    rest = rest.rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--listen {listen!r}: want HOST:PORT or http://HOST:PORT")
    return host.strip("[]"), int(port)


def _log_failure(task: asyncio.Task[None]) -> None:
    """A background group that ended by an error (not by ``stop``): say so loudly."""
    if not task.cancelled() and task.exception() is not None:
        log.error("store: lease expiry/progress stopped: %r", task.exception(),
                  exc_info=task.exception())


class EmbeddedServer:
    """The store server: open the data dir, serve gRPC, expire leases, stop cleanly."""

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int = 2379,
                 tls: TLSFiles | None = None, retain: int = 10_000,
                 progress_interval: float = PROGRESS_INTERVAL_S) -> None:
        self.data_dir = Path(data_dir)
        self.progress_interval = progress_interval
        self.host = host
        self.port = port
        self.tls = tls
        self.retain = retain
        self.state: State | None = None
        self.service: StoreService | None = None
        self._server: Server | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._lock: DataDirLock | None = None
        self._gateway: Gateway | None = None

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        self._lock = lock_data_dir(self.data_dir)  # before the database is even opened
        try:
            self.state = State(self.data_dir / "store.db", retain=self.retain)
        except sqlite3.Error as e:
            self._unlock()
            raise OSError(f"store: cannot open {self.data_dir / 'store.db'}: {e}") from e
        self.service = StoreService(self.state, [])
        table = methods(self.service)
        server = Server(table, MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES)
        committer = self.service.committer
        self._gateway = Gateway(table, StoreProbe(self.state, lambda: committer.broken is not None,
                                                  lambda: len(committer.watchers)))
        server.http1 = self._gateway.accept  # HTTP/1.1 on the same port: etcd's JSON API
        addr = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        tls: ssl.SSLContext | None = None
        try:
            if self.tls:
                t = self.tls
                try:
                    tls = server_tls(str(t.cert_file), str(t.key_file),
                                     str(t.trusted_ca_file) if t.trusted_ca_file else None)
                except (OSError, ssl.SSLError) as e:
                    raise OSError(f"store: cannot load TLS files (--cert-file {t.cert_file}, "
                                  f"--key-file {t.key_file}, --trusted-ca-file "
                                  f"{t.trusted_ca_file}): {e}") from e
            try:
                self.port = await server.start(self.host, self.port, tls)
            except OSError as e:
                raise OSError(f"store: cannot listen on {addr}: {e}") from e
        except OSError:
            self.state.close()
            self.state = None
            self._unlock()
            raise
        self.service.client_urls = [self.endpoint]
        self._server = server
        self._maintenance = asyncio.create_task(self._maintain())
        self._maintenance.add_done_callback(_log_failure)
        log.info("store: serving %s, data dir %s, revision %d", self.endpoint,
                 self.data_dir, self.state.revision)

    async def _maintain(self) -> None:
        """Lease expiry and progress notifications, as one group until ``stop``."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._expire_loop())
            tg.create_task(self._progress_loop())

    async def _expire_loop(self) -> None:
        assert self.state is not None and self.service is not None
        while True:
            due = self.state.next_expiry_in()
            delay = _LEASE_TICK_S if due is None else min(_LEASE_TICK_S, max(0.0, due) + 0.01)
            await asyncio.sleep(delay)
            if self.state.expire_leases():
                self.service.committer.kick()

    async def _progress_loop(self) -> None:
        assert self.service is not None
        while True:
            await asyncio.sleep(self.progress_interval)
            self.service.committer.notify_progress()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()

    async def stop(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)  # logged if failed
        if self._server is not None:
            await self._server.stop()
        if self._gateway is not None:
            self._gateway.close()
        if self.service is not None:
            await self.service.committer.drain()
        if self.state is not None:
            self.state.commit()
            self.state.close()
            self.state = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
