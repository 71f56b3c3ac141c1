"""The embedded server's pure edges: --listen parsing and etcd's status mapping."""

from __future__ import annotations

import grpc
import pytest

from overlay.store.api import CompactedError, LeaseNotFoundError
from overlay.store.server import _status, parse_listen
from overlay.store.state import DuplicateKeyError, FutureRevisionError


@pytest.mark.parametrize(("listen", "want"), [
    ("127.0.0.1:2379", ("127.0.0.1", 2379)),
    ("http://127.0.0.1:2379", ("127.0.0.1", 2379)),
    ("https://0.0.0.0:4001/", ("0.0.0.0", 4001)),
    ("[::1]:2379", ("::1", 2379)),
    ("http://[::1]:0", ("::1", 0)),
], ids=["bare", "http", "https-slash", "ipv6", "ipv6-url"])
def test_parse_listen(listen: str, want: tuple[str, int]) -> None:
    assert parse_listen(listen) == want


@pytest.mark.parametrize("listen", ["2379", "host:", ":2379", "http://host:port"],
                         ids=["port-only", "no-port", "no-host", "named-port"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(listen)


@pytest.mark.parametrize(("err", "code", "msg"), [
    (CompactedError(5), grpc.StatusCode.OUT_OF_RANGE,
     "etcdserver: mvcc: required revision has been compacted"),
    (FutureRevisionError(9, 3), grpc.StatusCode.OUT_OF_RANGE,
     "etcdserver: mvcc: required revision is a future revision"),
    (LeaseNotFoundError(7), grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"),
    (DuplicateKeyError(b"k"), grpc.StatusCode.INVALID_ARGUMENT,
     "etcdserver: duplicate key given in txn request"),
], ids=["compacted", "future", "lease", "duplicate"])
def test_status_mapping(err: Exception, code: grpc.StatusCode, msg: str) -> None:
    assert _status(err) == (code, msg)
