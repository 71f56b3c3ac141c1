"""The DNS front end: UDP and TCP sockets on one address, the fast path and the slow path.

Theory of operation. One thread runs a blocking ``recvfrom``/``sendto`` loop on
the UDP socket (measured faster than asyncio's datagram protocol: no event-loop
hop per packet). For each datagram it first tries the *fast path*: a hand parse
of the common query shape (``wire.fast_key``) and a dict lookup in the answer
cache; a hit is answered by concatenating the query's ID and question with the
precomputed bytes. Anything else takes the *slow path*: the strict parser, the
engine under the index lock, encoding, truncation, and (when cacheable) a new
cache entry. Any change to the index swaps in an empty cache (``invalidate``),
so a hit is never older than the last applied watch event. Answers whose TTL
comes from a lease are cached for one second only, since their TTL ages.

TCP: an accept thread and one thread per connection (bounded), each reading
length-prefixed messages through the same handler. On a wildcard address each UDP
reply leaves from the address its query was sent to (IP_PKTINFO/IPV6_PKTINFO, see
``batchio``): in both loops, on the slow path, and for forwarded answers too.
Out-of-zone queries from allowed clients go to the forwarder on a small worker
pool. With ``stubzones`` on, names inside a stub zone (``stubs``, swapped in by
the shell after each index change) are relayed to that zone's nameservers for any
client, before the cache and the engine are consulted, carrying SkyDNS's loop
option; a stub query that already carries it is dropped unanswered, as SkyDNS does. Failures become
FORMERR (bad packet), SERVFAIL (handler error) or silence (unparseable header)
at this boundary; nothing a client sends can stop the loops.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import errno
import functools
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from overlay.metrics import Histogram

from . import batchio
from .batchio import CONTROL_SIZE, BatchSocket, Control, enable_pktinfo, reply_control, send_from
from .engine import Engine
from .forward import Forwarder
from .index import Index
from .message import Answer, Rcode
from .metrics import COREDNS_BUCKETS, DROPPED, OUTSIDE, Metrics, server_label
from .stub import STUB_DATA, STUB_OPTION, Server, StubTable
from .wire import (
    TCP_LIMIT,
    CachedAnswer,
    DropError,
    EncodeError,
    ExactAnswer,
    FormError,
    Query,
    error_response,
    fast_key,
    parse_query,
    plain_response,
    prepare,
    rotations,
    udp_limit,
)

log = logging.getLogger(__name__)

LEASED_CACHE_SECONDS = 1.0
CACHE_LIMIT = 50_000
EXACT_LIMIT = 20_000
RECV_BUFFER = 4096
BATCH = 64
INF = float("inf")
MAX_TCP_CONNECTIONS = 128
TCP_IDLE_SECONDS = 10.0
ROTATIONS = 8
CONTROLS_LIMIT = 256  # remembered reply cmsgs in the plain loop (one per local address)
STUB_TIMEOUT = 2.0  # per upstream try (SkyDNS's -rtimeout default)

Reply = Callable[[bytes], None]


WILDCARDS = ("", "0.0.0.0", "::")


def _listen(host: str, port: int) -> tuple[socket.socket, socket.socket, int]:
    """The UDP and TCP listeners on ``host:port`` (port 0: a free one, the same for both).

    A wildcard host (``:53``, ``0.0.0.0:53``, ``[::]:53``) listens on every address of
    both families, as SkyDNS does (Go's ``net.ListenUDP("udp", ":53")`` opens one IPv6
    socket that also takes IPv4); without IPv6 in the kernel it stays IPv4.
    """
    if host in WILDCARDS:
        try:
            return _bind(socket.AF_INET6, "::", port, dual=True)
        except OSError as exc:
            if host == "::" or exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
        host = "0.0.0.0"
    return _bind(socket.AF_INET6 if ":" in host else socket.AF_INET, host, port, dual=False)


def _bind(family: int, host: str, port: int, *, dual: bool
          ) -> tuple[socket.socket, socket.socket, int]:
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp = socket.socket(family, socket.SOCK_STREAM)
    try:
        if dual:
            for s in (udp, tcp):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        udp.bind((host, port))
        bound: int = udp.getsockname()[1]
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((host, bound))
        tcp.listen(128)
    except OSError:
        udp.close()
        tcp.close()
        raise
    return udp, tcp, bound


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 53
    round_robin: bool = True
    batch: bool = True  # recvmmsg/sendmmsg when the platform has them
    stubzones: bool = False  # relay names in stub zones (SkyDNS -stubzones)
    stub_timeout: float = STUB_TIMEOUT  # read timeout per stub nameserver try (-rtimeout)


class DnsServer:
    """Answers DNS over UDP and TCP from ``index`` through ``engine``."""

    def __init__(self, engine: Engine, index: Index, lock: threading.Lock,
                 config: ServerConfig, forwarder: Forwarder | None = None,
                 metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.index = index
        self.lock = lock
        self.config = config
        self.forwarder = forwarder
        self.metrics = metrics or Metrics()
        self.ready = False  # set once the index holds a first listing
        self.stubs = StubTable()  # replaced whole by the shell; read without the lock
        self._stub_timeout = config.stub_timeout
        self._cache: dict[bytes, CachedAnswer] = {}
        self._exact: dict[bytes, ExactAnswer] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self._tcp_conns: set[socket.socket] = set()
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self.udp, self.tcp, port = _listen(config.host, config.port)
        self.port: int = port
        # a wildcard socket answers for every address: reply from the one queried
        self.pktinfo = False
        if config.host in WILDCARDS:
            try:
                enable_pktinfo(self.udp)
                self.pktinfo = True
            except OSError as exc:
                log.warning("cannot learn which address a UDP query was sent to (%s): "
                            "replies leave from the address the route picks", exc)
        m = self.metrics
        m.server = server_label(config.host, port)
        m.family = "2" if family == socket.AF_INET6 else "1"
        m.zones = _zones_label(engine)
        self._timed: list[Histogram] = []  # UDP thread: duration histograms of fast hits

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        forwarder_on = self.forwarder is not None
        if forwarder_on or self.config.stubzones:
            self._pool = ThreadPoolExecutor(8, thread_name_prefix="dnsd-forward")
        host = str(self.udp.getsockname()[0])
        where = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        if host == "::" and not self.udp.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
            where += " (IPv4 and IPv6)"
        log.info("dnsd listening on %s (udp+tcp), forwarding %s, stub zones %s", where,
                 "on" if forwarder_on else "off", "on" if self.config.stubzones else "off")
        udp_loop: Callable[[], None] = self._udp_loop
        if self.config.batch and batchio.available():
            try:
                batch = BatchSocket(self.udp, slots=BATCH, bufsize=RECV_BUFFER,
                                    pktinfo=self.pktinfo)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("UDP batching unavailable (%s); using recvfrom/sendto", exc)
            else:
                udp_loop = functools.partial(self._udp_batch_loop, batch)
        log.debug("UDP loop: %s", getattr(udp_loop, "func", udp_loop).__name__)
        for name, target in (("dnsd-udp", udp_loop), ("dnsd-tcp", self._tcp_accept)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stopping.set()
        for s in (self.udp, self.tcp):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for conn in list(self._tcp_conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)
        self.udp.close()
        self.tcp.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def reconfigure(self, engine: Engine, forwarder: Forwarder | None,
                    round_robin: bool, stub_timeout: float = STUB_TIMEOUT) -> None:
        """Swap the answer rules and forwarding of a running server (call with ``lock`` held).

        For SkyDNS's config key arriving after start-up; the listen address stays.
        The caller invalidates the cached answers.
        """
        self.engine = engine
        self.metrics.zones = _zones_label(engine)
        self.forwarder = forwarder
        self.config = dataclasses.replace(self.config, round_robin=round_robin,
                                          stub_timeout=stub_timeout)
        self._stub_timeout = stub_timeout
        if forwarder is not None and self._pool is None and self._threads:
            # started without forwarding
            self._pool = ThreadPoolExecutor(8, thread_name_prefix="dnsd-forward")

    def invalidate(self) -> None:
        """Forget every precomputed answer (call with ``lock`` held, after an index change)."""
        old_cache, old_exact = self._cache, self._exact
        self._cache = {}
        self._exact = {}
        # list() copies in one C call, safe against the UDP thread still adding to old_exact
        self._fold(list(old_cache.values()), list(old_exact.values()))

    def _fold(self, cached: Iterable[CachedAnswer], exact: Iterable[ExactAnswer]) -> None:
        """Move the per-entry hit counters of dropped entries into the metrics."""
        m = self.metrics
        entries: list[CachedAnswer | ExactAnswer] = [*cached, *exact]
        for entry in entries:
            hits = entry.hits
            if hits:
                entry.hits = 0
                m.count(entry.rtype, entry.rcode, hits, entry.zone, "udp")
                m.hit(hits, entry.denial)

    def sync_metrics(self) -> None:
        """Fold live entries' hit counters into the metrics (before rendering them)."""
        self._fold(list(self._cache.values()), list(self._exact.values()))

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    # -- UDP ---------------------------------------------------------------------

    def _fast(self, data: bytes) -> bytes | None:
        """The reply from the answer caches, or None when the slow path must answer."""
        # Read the exact map before the question cache: invalidate() swaps the cache
        # first, so an entry taken from an old cache is only ever copied into an exact
        # map that is old too (and already discarded).
        exact_map = self._exact
        cache = self._cache
        # 1. the exact packet was answered before: patch the ID in
        exact = exact_map.get(data[2:])
        if exact is not None:
            exact.hits += 1
            self._timed.append(exact.latency)
            return data[:2] + next(exact.responses)
        # 2. same question (any case/ID/RD): echo it before the cached records
        key = fast_key(data)
        if key is None:
            return None
        entry = cache.get(key[0])
        if entry is None or entry.limit_needed > key[2] or entry.expires <= time.monotonic():
            return None
        head = entry.hdr[data[2] & 1]
        question = data[12:key[1]]
        entry.hits += 1
        self._timed.append(entry.latency)
        if entry.expires == INF:
            if len(exact_map) >= EXACT_LIMIT:
                self._fold((), list(exact_map.values()))
                exact_map.clear()
            exact_map[data[2:]] = ExactAnswer(
                [head + question + tail for tail in entry.tail_list], entry)
        return data[:2] + head + question + next(entry.tails)

    def _udp_loop(self) -> None:
        """recvfrom/sendto, one datagram per system call (the portable loop)."""
        sock = self.udp
        recv = sock.recvfrom
        recvmsg = sock.recvmsg
        send = sock.sendto
        pktinfo = self.pktinfo
        control: Control = []
        # the reply cmsg per received pktinfo: a few (one per local address), built once
        controls: dict[bytes, Control] = {}
        fast = self._fast
        metrics = self.metrics
        perf = time.perf_counter
        timed = self._timed
        tick = 0
        stopping = self._stopping.is_set
        while True:
            try:
                # Queries bigger than this are cut and then fail to parse (FORMERR); a
                # smaller buffer than 64K makes every recvfrom cheaper.
                if pktinfo:
                    data, ancdata, _, addr = recvmsg(RECV_BUFFER, CONTROL_SIZE)
                    key = ancdata[0][2] if ancdata else b""
                    got = controls.get(key)
                    if got is None:
                        if len(controls) >= CONTROLS_LIMIT:
                            controls.clear()
                        got = controls[key] = reply_control(ancdata)
                    control = got
                else:
                    data, addr = recv(RECV_BUFFER)
            except OSError:
                if stopping():
                    return
                continue
            if not data and stopping():
                return
            try:
                tick += 1
                t0 = perf()
                reply = fast(data)
                if reply is not None:
                    if control:
                        send_from(sock, reply, addr, control)
                    else:
                        send(reply, addr)
                    took = perf() - t0
                    for h in timed:
                        h.observe(took)
                    timed.clear()
                    if not tick & 15:
                        metrics.observe(took)
                    continue
                self._slow(data, addr, False, _udp_reply(sock, addr, control))
            except Exception:  # the boundary: never let one packet stop the loop
                metrics.errors += 1
                log.exception("udp: failed to answer a packet from %s", addr)

    def _udp_batch_loop(self, batch: BatchSocket) -> None:
        """recvmmsg/sendmmsg: up to BATCH datagrams per system call (Linux)."""
        sock = self.udp
        fast = self._fast
        metrics = self.metrics
        perf = time.perf_counter
        stopping = self._stopping.is_set
        timed = self._timed
        bounds = COREDNS_BUCKETS
        while True:
            t0 = 0.0
            got = 0
            try:
                for slot, data in batch.receive():
                    if not data:  # empty datagram, or the socket was shut down
                        if stopping():
                            return
                        metrics.dropped += 1
                        continue
                    if not got:
                        t0 = perf()  # the batch has arrived; time the work on it
                    got += 1
                    try:
                        reply = fast(data)
                        if reply is not None and batch.queue(slot, reply):
                            continue
                        addr = batch.sender(slot)
                        udp_reply = _udp_reply(sock, addr, batch.control(slot))
                        if reply is not None:
                            udp_reply(reply)
                        else:
                            self._slow(data, addr, False, udp_reply)
                    except Exception:  # the boundary: never let one packet stop the loop
                        metrics.errors += 1
                        log.exception("udp: failed to answer a packet")
                flushed = batch.flush()
                if got:
                    # the mean time per datagram in the batch: one sample of weft's own
                    # histogram; and for each fast answer in it, CoreDNS's, whose bucket
                    # is found once (the slow answers were observed in _slow)
                    mean = (perf() - t0) / got
                    if flushed:
                        metrics.observe(mean)
                    if timed:
                        b = bisect.bisect_left(bounds, mean)
                        for h in timed:
                            h.counts[b] += 1
                            h.count += 1
                            h.sum += mean
                        timed.clear()
            except OSError:
                if stopping():
                    return
                continue
            if not got and stopping():
                return

    # -- TCP ---------------------------------------------------------------------

    def _tcp_accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, addr = self.tcp.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.01)
                continue
            if len(self._tcp_conns) >= MAX_TCP_CONNECTIONS:
                conn.close()
                self.metrics.dropped += 1
                continue
            self._tcp_conns.add(conn)
            threading.Thread(target=self._tcp_conn, args=(conn, addr),
                             name="dnsd-tcp-conn", daemon=True).start()

    def _tcp_conn(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        conn.settimeout(TCP_IDLE_SECONDS)
        write_lock = threading.Lock()

        def reply(data: bytes) -> None:
            with write_lock, contextlib.suppress(OSError):
                conn.sendall(struct.pack("!H", len(data)) + data)

        try:
            while not self._stopping.is_set():
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                (length,) = struct.unpack("!H", head)
                data = _recv_exact(conn, length) if length else b""
                if data is None:
                    return
                try:
                    self._slow(data, addr, True, reply)
                except Exception:
                    self.metrics.errors += 1
                    log.exception("tcp: failed to answer a message from %s", addr)
        except OSError:
            return
        finally:
            self._tcp_conns.discard(conn)
            conn.close()

    # -- the slow path -----------------------------------------------------------

    def _slow(self, data: bytes, addr: tuple[str, int], tcp: bool, reply: Reply) -> None:
        t0 = time.perf_counter()
        metrics = self.metrics
        ra = self.forwarder is not None
        proto = "tcp" if tcp else "udp"
        try:
            query = parse_query(data)
        except DropError:
            metrics.dropped += 1
            return
        except FormError as err:
            metrics.count(0, int(err.rcode), zone=DROPPED, proto=proto)
            reply(error_response(err, ra))
            return
        metrics.cache_misses += 1
        zone = self.engine.zone_of(query.question.labels)
        req = _Request(query, OUTSIDE if zone is None else ".".join(zone) + ".", proto, t0)
        try:
            out = self._answer(req, addr, reply)
        except Exception:
            metrics.errors += 1
            log.exception("answering %s %s failed", query.question.name, query.question.qtype)
            out = plain_response(query, Rcode.SERVFAIL, ra)
            self._answered(req, Rcode.SERVFAIL)
        if out is not None:
            reply(out)
            metrics.observe(time.perf_counter() - t0)

    def _answered(self, req: _Request, rcode: int) -> None:
        """Count an answer to ``req`` (and its time, in CoreDNS's histogram)."""
        qtype = req.query.question.qtype
        self.metrics.count(qtype, int(rcode), 1, req.zone, req.proto)
        self.metrics.duration(req.zone, qtype).observe(time.perf_counter() - req.t0)

    def _answer(self, req: _Request, addr: tuple[str, int], reply: Reply) -> bytes | None:
        metrics = self.metrics
        query = req.query
        tcp = req.proto == "tcp"
        ra = self.forwarder is not None
        qtype = query.question.qtype
        limit = TCP_LIMIT if tcp else udp_limit(query)
        rd = query.flags & 0x0100
        ident = query.ident.to_bytes(2, "big")
        stub = self.stubs.lookup(query.question.labels) if self.config.stubzones else None
        if stub is not None:
            return self._stub(req, reply, stub[1])
        key = query.cache_key
        entry = self._cache.get(key)
        if entry is not None and entry.expires > time.monotonic():
            metrics.cache_misses -= 1  # it was a hit after all, just not on the fast path
            metrics.hit(1, entry.denial)
            if entry.limit_needed > limit:
                metrics.truncated += 1
            out = entry.render(ident, rd, query.question_wire, limit)
            self._answered(req, entry.rcode)
            return out
        with self.lock:
            if self.config.stubzones:
                # again under the lock: a stub record may have arrived while this thread
                # waited, and an answer cached now would shadow the stub zone
                stub = self.stubs.lookup(query.question.labels)
                if stub is not None:
                    return self._stub(req, reply, stub[1])
            now = time.monotonic()
            answer = self.engine.resolve(self.index, query.question, now,
                                         serial=self.index.revision)
            if answer.forward:
                return self._forward(req, addr, reply, answer)
            if not self.ready:  # in-zone, but the index has not been loaded yet
                self._answered(req, Rcode.SERVFAIL)
                return plain_response(query, Rcode.SERVFAIL, ra)
            try:
                prepared = prepare(answer, query, ra)
            except EncodeError as exc:
                log.warning("cannot encode the answer to %s: %s", query.question.name, exc)
                self._answered(req, Rcode.SERVFAIL)
                return plain_response(query, Rcode.SERVFAIL, ra)
            variants = rotations(prepared, ROTATIONS) if self.config.round_robin \
                else [prepared]
            cached = CachedAnswer(variants, now + LEASED_CACHE_SECONDS if answer.leased
                                  else INF, qtype, int(answer.rcode),
                                  len(query.question_wire), req.zone,
                                  metrics.duration(req.zone, qtype))
            if len(self._cache) >= CACHE_LIMIT:
                self.invalidate()
            self._cache[key] = cached
        if cached.limit_needed > limit:
            metrics.truncated += 1
        out = cached.render(ident, rd, query.question_wire, limit)
        self._answered(req, answer.rcode)
        return out

    def _stub(self, req: _Request, reply: Reply,
              servers: tuple[Server, ...]) -> bytes | None:
        """Relay to a stub zone's nameservers (any client: the operator set them)."""
        query = req.query
        if query.edns is not None and query.edns.stub:
            # another stub server relayed this to us: relaying on could loop (SkyDNS drops)
            self.metrics.dropped += 1
            log.debug("not relaying stub query %s that carries the stub option",
                      query.question.name)
            return None
        if self._pool is None:  # not started (in-process tests): nothing can relay
            self._answered(req, Rcode.SERVFAIL)
            return plain_response(query, Rcode.SERVFAIL, self.forwarder is not None)
        fwd = Forwarder(servers, (), self._stub_timeout)
        self._relay(req, reply, fwd, _requery(query, stub=True))
        return None

    def _forward(self, req: _Request, addr: tuple[str, int], reply: Reply,
                 answer: Answer) -> bytes | None:
        ra = self.forwarder is not None
        fwd = self.forwarder
        if fwd is None or self._pool is None or not fwd.allowed(addr[0]):
            self._answered(req, answer.rcode)
            return plain_response(req.query, answer.rcode, ra)
        self._relay(req, reply, fwd, _requery(req.query))
        return None

    def _relay(self, req: _Request, reply: Reply, fwd: Forwarder, raw: bytes) -> None:
        """Send ``raw`` upstream on the worker pool; the reply (or SERVFAIL) goes back."""
        assert self._pool is not None
        ra = self.forwarder is not None
        query = req.query
        tcp = req.proto == "tcp"
        self.metrics.forwarded += 1

        def work() -> None:
            try:
                got = fwd.relay(raw, tcp, self.metrics.tried)
                if got is None:
                    self._answered(req, Rcode.SERVFAIL)
                    reply(plain_response(query, Rcode.SERVFAIL, ra))
                else:
                    self._answered(req, got[3] & 0xF)
                    reply(got)
            except Exception:
                self.metrics.errors += 1
                log.exception("forwarding %s failed", query.question.name)

        self._pool.submit(work)


@dataclass(frozen=True, slots=True)
class _Request:
    """A parsed query on its way through the slow path, with what its metrics need."""

    query: Query
    zone: str  # the zone label (metrics.OUTSIDE for names in none of dnsd's zones)
    proto: str  # "udp" or "tcp"
    t0: float  # perf_counter() when it arrived


def _zones_label(engine: Engine) -> str:
    """CoreDNS's cache ``zones`` label: the zones answered, comma separated."""
    return ",".join(".".join(z) + "." for z in engine.config.zones)


def _udp_reply(sock: socket.socket, addr: tuple[str, int], control: Control) -> Reply:
    """Send to ``addr`` from the address ``control`` names (see ``batchio.send_from``)."""
    def reply(data: bytes) -> None:
        send_from(sock, data, addr, control)
    return reply


def _requery(query: Query, stub: bool = False) -> bytes:
    """The query as dnsd relays it: same ID, RD, question and EDNS shape.

    ``stub`` adds SkyDNS's loop option (and an OPT record of 512 bytes when the
    client sent none, as SkyDNS does) so another stub server will not relay it on.
    """
    flags = query.flags & 0x0110  # RD and CD
    opt = b""
    option = struct.pack("!HH", STUB_OPTION, len(STUB_DATA)) + STUB_DATA if stub else b""
    if query.edns is not None or stub:
        # ask for no more than the client can take, so the reply can be relayed as is
        size = min(query.edns.udp_size, 1232) if query.edns is not None else 512
        do = query.edns is not None and query.edns.do
        opt = b"\x00" + struct.pack("!HHBBHH", 41, size, 0, 0, 0x8000 if do else 0,
                                    len(option)) + option
    return struct.pack("!HHHHHH", query.ident, flags, 1, 0, 0, 1 if opt else 0) + \
        query.question_wire + opt


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
