"""The testbed itself: hosts reach each other on the underlay; nothing is left behind."""

from __future__ import annotations

import ipaddress

import pytest

from overlay.testbed import list_netns, open_testbed

pytestmark = pytest.mark.root


def test_hosts_reach_each_other_and_cleanup_is_total() -> None:
    with open_testbed(2) as tb:
        names = tb.namespaces()
        h1, h2 = tb.hosts["h1"], tb.hosts["h2"]
        assert tb.ping(h1.netns, str(h2.ip))
        assert tb.ping(h2.netns, str(tb.underlay_ip))
        c = tb.add_container("h1", "c1", ipaddress.IPv4Interface("10.99.1.2/24"))
        assert tb.ping(c.netns, "10.99.1.1")
        proc = tb.spawn(h2.netns, ["sleep", "600"])
    assert proc.poll() is not None
    left = set(list_netns())
    assert not left.intersection(names)


def test_cleanup_after_failure() -> None:
    names: list[str] = []
    with pytest.raises(RuntimeError), open_testbed(1) as tb:
        names = tb.namespaces()
        raise RuntimeError("boom")
    assert not set(list_netns()).intersection(names)
