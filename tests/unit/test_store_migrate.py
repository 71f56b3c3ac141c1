"""weftctl store migrate's pure parts: which prefixes are copied, which leases re-created."""

from __future__ import annotations

import pytest

from overlay.store.api import KeyValue
from overlay.store.migrate import DEFAULT_PREFIXES, lease_ids, normalize_prefixes


@pytest.mark.parametrize(("given", "want"), [
    (DEFAULT_PREFIXES, ("/coreos.com/network", "/skydns", "/weft")),
    (("/skydns", "/skydns"), ("/skydns",)),
    (("/skydns/local", "/skydns"), ("/skydns",)),  # inside another: copied once, by the outer
    (("/a/", "/a/b"), ("/a/",)),
], ids=["defaults", "duplicate", "nested", "nested-slash"])
def test_normalize_prefixes(given: tuple[str, ...], want: tuple[str, ...]) -> None:
    assert normalize_prefixes(given) == want


@pytest.mark.parametrize("bad", ["", "skydns"])
def test_prefix_must_be_absolute(bad: str) -> None:
    with pytest.raises(ValueError, match="--prefix"):
        normalize_prefixes([bad])


def test_lease_ids_once_in_order() -> None:
    kvs = [KeyValue(b"/a", b"", 1, 1, 1, 7), KeyValue(b"/b", b"", 2, 2, 1, 0),
           KeyValue(b"/c", b"", 3, 3, 1, 5), KeyValue(b"/d", b"", 4, 4, 1, 7)]
    assert lease_ids(kvs) == [7, 5]
