"""Shared store-test step: a fresh connection from weft's own client writes and reads back."""

from __future__ import annotations

from overlay.store.api import StoreConfig
from overlay.store.client import connect


async def round_trip(cfg: StoreConfig | str, key: bytes = b"/check/after") -> None:
    """Put ``key`` through a new client (``cfg`` or a bare URL) and read the same revision
    back: the store is serving."""
    if isinstance(cfg, str):
        cfg = StoreConfig((cfg,), timeout=5)
    store = await connect(cfg)
    try:
        rev = await store.put(key, b"ok")
        kv = await store.get(key)
        assert kv is not None and kv.value == b"ok" and kv.mod_revision == rev
    finally:
        await store.close()
