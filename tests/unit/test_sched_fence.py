"""Fencing (overlay/sched/fence.py): the agent half of the quorum rule as tables."""

from __future__ import annotations

import pytest

from overlay.sched.fence import (
    Fence,
    PeerReport,
    Timings,
    fence_decision,
)

T = Timings()
M3 = ("m1", "m2", "m3")


def cut(machine: str) -> PeerReport:
    return PeerReport(machine, True, renewed_ago=T.ttl + 1)


def fine(machine: str) -> PeerReport:
    return PeerReport(machine, True, renewed_ago=0.2)


def silent(machine: str) -> PeerReport:
    return PeerReport(machine, False)


@pytest.mark.parametrize("renewed_ago, reports, want", [
    (0.0, None, Fence.HOLD),
    (T.ttl - 0.01, None, Fence.HOLD),
    (T.ttl, None, Fence.PROBE),
    # partition of m1 alone: nobody answers -> stop
    (T.ttl, {"m2": silent("m2"), "m3": silent("m3")}, Fence.STOP),
    # store down for everyone: both peers answer and cannot renew either -> keep
    (T.ttl, {"m2": cut("m2"), "m3": cut("m3")}, Fence.KEEP),
    # one peer cut off too is a majority of three (m1 + m2)
    (T.ttl + 30, {"m2": cut("m2"), "m3": silent("m3")}, Fence.KEEP),
    # peers renewing fine: only this host lost the store -> stop
    (T.ttl, {"m2": fine("m2"), "m3": fine("m3")}, Fence.STOP),
    # a peer that renewed a moment ago (below 2 renew intervals) is not cut off
    (T.ttl, {"m2": PeerReport("m2", True, 1.5), "m3": silent("m3")}, Fence.STOP),
], ids=["fresh", "just-inside-ttl", "ttl-passed-probe", "partitioned", "store-outage",
        "two-of-three-cut", "only-me-cut", "peer-recent"])
def test_fence_decision(renewed_ago: float, reports: dict[str, PeerReport] | None,
                        want: Fence) -> None:
    assert fence_decision("m1", renewed_ago, M3, reports, T) is want


def test_even_split_is_no_majority_and_self_always_counts() -> None:
    four = ("m1", "m2", "m3", "m4")
    assert fence_decision("m1", 9, four, {"m2": cut("m2")}, T) is Fence.STOP
    assert fence_decision("m1", 9, ("m2",), {"m2": cut("m2")}, T) is Fence.KEEP  # me + m2 of 2
    assert fence_decision("m1", 9, (), {}, T) is Fence.KEEP  # a single machine: nothing to move to


@pytest.mark.parametrize("timings, word", [
    (Timings(ttl=1), "minimum lease"),
    (Timings(renew=3), "renew interval"),
    (Timings(grace=0.5), "grace"),
    (Timings(probe_timeout=2), "probe timeout"),
])
def test_bad_timings_are_refused(timings: Timings, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        timings.check()
    assert Timings().check() == Timings()
