"""The cluster store as every weft program sees it: the client floor.

``api`` (the ``Store`` protocol, ``StoreConfig``, the store errors), ``client``
(aetcd against etcd or the embedded server; imported late, it pulls in gRPC),
``memory`` (an in-process ``Store`` for pure-core tests) and ``mvcc`` (etcd's
revision rules, shared with the embedded server). The embedded server itself is
``overlay.store.embedded``; nothing here imports it (tests/unit/test_layers.py).
"""
