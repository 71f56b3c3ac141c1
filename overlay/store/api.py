"""The store contract: the narrow async interface every weft component uses.

Two implementations sit behind it: ``EtcdStore`` (``overlay.store.client``, aetcd
over gRPC, speaking to a real etcd or to weft's embedded server) and
``MemoryStore`` (``overlay.store.memory``, an in-process fake for pure-core
tests). Both must pass the same contract suite (tests/contract/).

Keys and values are ``bytes``: etcd keys are byte strings, and nothing in the
store layer decodes them. Callers own their encodings (JSON for flannel and
SkyDNS values).

Revisions follow etcd: every write bumps the store-wide revision by one;
``create_revision``/``mod_revision`` record the revision of a key's creation
and last change; ``version`` counts changes since creation.

Exception tree (all carry the key or lease they concern)::

    StoreError                      base; boundaries catch this
    ├── StoreUnavailableError       no endpoint answered (retry later)
    ├── CompactedError              watch/range start revision compacted away
    │                               (.compact_revision: first available)
    ├── LeaseNotFoundError          unknown or expired lease id (.lease)
    ├── ValueTooLargeError          value over the server's request limit
    └── StoreAuthError              authentication refused or not supported, or
                                    the user lacks permission (never retried)
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from overlay.errors import StoreError as StoreError  # base of every store failure


class StoreUnavailableError(StoreError):
    """No endpoint could be reached; the operation may be retried."""


class CompactedError(StoreError):
    """The requested revision has been compacted away."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted; first available is {compact_revision}")
        self.compact_revision = compact_revision


class LeaseNotFoundError(StoreError):
    """The lease id is unknown (never granted, revoked or expired)."""

    def __init__(self, lease: int) -> None:
        super().__init__(f"lease {lease:x} not found")
        self.lease = lease


class StoreAuthError(StoreError):
    """The store refused our credentials (or their absence), or cannot authenticate.

    Messages name the user and the endpoint, never the password.
    """


class ValueTooLargeError(StoreError):
    """The request exceeded the server's size limit."""

    def __init__(self, key: bytes) -> None:
        super().__init__(f"value for {key!r} too large")
        self.key = key


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0  # 0 = no lease


@dataclass(frozen=True, slots=True)
class Listing:
    """A consistent snapshot of a prefix at ``revision``."""

    items: tuple[KeyValue, ...]
    revision: int


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    kv: KeyValue  # for DELETE: key and mod_revision (the deletion revision) only
    prev: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    lease: int
    ttl: int  # seconds remaining; -1 when expired/unknown
    granted_ttl: int
    keys: tuple[bytes, ...] = ()


class KV(Protocol):
    """Keys, values and watches."""

    async def get(self, key: bytes) -> KeyValue | None:
        """The current value of ``key``, or None."""
        ...

    async def list(self, prefix: bytes, revision: int = 0) -> Listing:
        """Every key starting with ``prefix`` (at ``revision``; 0 = latest)."""
        ...

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Unconditional write; returns the new revision."""
        ...

    async def create(self, key: bytes, value: bytes, lease: int = 0) -> int | None:
        """Write only if ``key`` does not exist; the new revision, or None if it exists."""
        ...

    async def replace(
        self, key: bytes, value: bytes, mod_revision: int, lease: int = 0
    ) -> int | None:
        """Compare-and-swap on ``mod_revision``; the new revision, or None on mismatch."""
        ...

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); returns how many were deleted."""
        ...

    def watch(self, prefix: bytes, start_revision: int) -> AsyncIterator[builtins.list[WatchEvent]]:
        """Batches of events under ``prefix`` from ``start_revision`` (inclusive).

        Raises ``CompactedError`` (from the iterator) when ``start_revision`` has been
        compacted; the caller re-lists and watches again. Runs until cancelled.
        """
        ...


class Leases(Protocol):
    """etcd leases: TTL'd ownership of keys."""

    async def grant(self, ttl: int) -> int:
        """A new lease id living ``ttl`` seconds unless kept alive."""
        ...

    async def keepalive(self, lease: int) -> int:
        """Refresh once; returns the new TTL. ``LeaseNotFoundError`` if gone."""
        ...

    async def revoke(self, lease: int) -> None:
        """Revoke the lease and delete its keys. ``LeaseNotFoundError`` if gone."""
        ...

    async def time_to_live(self, lease: int) -> LeaseInfo:
        """Remaining TTL (``ttl == -1`` when expired or unknown)."""
        ...


CompareTarget = Literal["version", "create", "mod", "value"]


@dataclass(frozen=True, slots=True)
class Compare:
    """One guard of a transaction: ``key``'s ``target`` must EQUAL ``expect``.

    ``create``/``mod`` compare the key's create/mod revision and ``version`` its
    version (0 for all three when the key is absent, as etcd does); ``value`` compares
    the bytes (an absent key never matches a value compare).
    """

    key: bytes
    target: CompareTarget
    expect: int | bytes


@dataclass(frozen=True, slots=True)
class TxnOp:
    """One write of a transaction: a put (``delete=False``) or a delete of one key."""

    key: bytes
    value: bytes = b""
    lease: int = 0
    delete: bool = False


class Txn(Protocol):
    """etcd's multi-key compare-and-swap."""

    async def txn(self, compares: Sequence[Compare], ops: Sequence[TxnOp]) -> int | None:
        """If every compare holds, apply ``ops`` at one revision and return the store
        revision afterwards; None (and nothing written) if any compare fails."""
        ...


class Store(KV, Leases, Txn, Protocol):
    """Everything a weft component needs from the cluster store."""

    async def close(self) -> None: ...


DEFAULT_ENDPOINTS = ("http://127.0.0.1:2379",)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """How to reach the store; identical for the embedded server and real etcd.

    ``endpoints`` are URLs (``http://host:port`` or ``https://host:port``) or bare
    ``host:port``; the client fails over across them in order. TLS is used when
    ``cafile`` is set or any endpoint is https; ``certfile``/``keyfile`` add a
    client certificate. ``username``/``password`` turn on etcd v3 authentication
    (Auth/Authenticate, then a ``token`` on every call); without a username
    nothing is sent. The password is kept out of ``repr``.
    """

    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    timeout: float = 5.0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_flag(
        cls,
        endpoints: str,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> StoreConfig:
        """Build from a comma list as given to ``-etcd-endpoints`` (and the auth flags).

        A password without a username is ignored, as etcd's own client does.
        """
        eps = tuple(e.strip() for e in endpoints.split(",") if e.strip())
        if not eps:
            raise ValueError("-etcd-endpoints: no endpoint given")
        return cls(eps, cafile or None, certfile or None, keyfile or None,
                   username=username or None, password=password if username else None)
