"""The embedded etcd-v3-compatible store (``weftctl store serve``): a product of its own.

``state`` (the revisioned, durable key-value state on SQLite), ``server`` (the etcd
gRPC services over it), ``grpcwire`` (the HTTP/2 + gRPC transport) and ``launch``
(start it, or Debian's etcd, as a subprocess for tests and benchmarks). The client
floor in ``overlay.store`` (api, client, memory, mvcc) never imports this package.
"""
