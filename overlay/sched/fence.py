"""Fencing and the reschedule guard: both halves of the quorum rule, as pure decisions.

Theory of operation
-------------------
Seen from one agent, "my host is cut off from the store" and "the store is down for
everyone" look the same: presence renewals fail. The first must stop its units (the
engine is about to start them elsewhere, and a unit must never run twice: fleet #1361,
#1690); the second must stop nothing (fleet's mass restarts when etcd was slow: #1289).
Both are decided by one rule, quorum intersection over the machines last listed in the
store (``members``, N of them):

1. **Agent (``fence_decision``).** While the agent renewed its presence less than the
   presence TTL ago it holds its units (HOLD). Once a whole TTL has passed since the
   *sending* of its last successful renewal (so the store's own lease deadline, which
   counts from when the keep-alive arrived, cannot be earlier), it asks its peers over
   the underlay (``GET /presence``). It keeps its units (KEEP) only if it and the peers
   that answered *and* cannot reach the store either form a majority (> N/2);
   otherwise it stops them (STOP). It asks again every renew interval and stops as
   soon as the majority is gone.
2. **Engine (``overlay.sched.placement.lost_machine_moves``).** The leader moves the
   units of a machine whose presence expired only after ``grace`` seconds and only while
   a majority of the listed machines (``members/``: registered and not yet moved away
   from) hold presence. A majority lost at once is a store or network event: it waits, logs it and
   moves nothing.

Two disjoint groups cannot both hold a majority of the same N machines, so the engine
can only move a unit when its old host's group is a minority — and a minority stops its
units at TTL, ``grace`` seconds before the move. A whole-store outage leaves every agent
in one majority that cannot reach the store (all KEEP) and no engine that can write
(nothing moves); when the store returns every agent re-registers within a renew
interval, well inside ``grace``.

Limits (documented in the README): the majority is of the machines an agent last saw; a
machine that joins during a partition is unknown to the cut-off side, and with two
machines left a single loss cannot be told from a partition, so nothing moves (a unit
whose host died then waits for that host or for a third machine).

Default timings (``Timings``), chosen so crash failover stays under 15 s at p99:
presence TTL 5 s, renewal every 1 s (four renewals may fail before the TTL runs out),
grace 3 s, peer probe timeout 0.5 s. A crash is seen after at most TTL (5 s), moved
after grace (3 s) and started by the new agent in about 1 s: ~9 s worst case. fleet
used a 30 s TTL beaten every 15 s, and no grace: 30-50 s.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

DEFAULT_TTL = 5.0
DEFAULT_RENEW = 1.0
DEFAULT_GRACE = 3.0
DEFAULT_PROBE_TIMEOUT = 0.5


@dataclass(frozen=True, slots=True)
class Timings:
    """Presence TTL, renew interval, reschedule grace and peer probe timeout (seconds)."""

    ttl: float = DEFAULT_TTL
    renew: float = DEFAULT_RENEW
    grace: float = DEFAULT_GRACE
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT

    def check(self) -> Timings:
        """ValueError naming the setting when the timings cannot fence safely."""
        if self.ttl < 2:
            raise ValueError(f"presence TTL {self.ttl:g} s: the store's minimum lease is 2 s")
        if not 0 < self.renew <= self.ttl / 2:
            raise ValueError(f"renew interval {self.renew:g} s: must be > 0 and at most half "
                             f"the presence TTL ({self.ttl:g} s)")
        if self.grace < self.renew:
            raise ValueError(f"grace {self.grace:g} s: must be at least the renew interval "
                             f"({self.renew:g} s), or a re-registering agent loses its units")
        if not 0 < self.probe_timeout < self.renew:
            raise ValueError(f"probe timeout {self.probe_timeout:g} s: must be > 0 and below "
                             f"the renew interval ({self.renew:g} s)")
        return self

    @property
    def peer_stale(self) -> float:
        """A peer that has not renewed for this long counts as cut off from the store."""
        return 2 * self.renew


class Fence(enum.Enum):
    HOLD = "hold"  # presence renewed within the TTL
    PROBE = "probe"  # TTL passed: ask the peers before deciding
    KEEP = "keep"  # TTL passed, but a majority is cut off too: a store outage
    STOP = "stop"  # TTL passed and no majority: this host is cut off; stop its units


@dataclass(frozen=True, slots=True)
class PeerReport:
    """What one peer's ``/presence`` said (None fields: it did not answer)."""

    machine: str
    answered: bool
    renewed_ago: float | None = None  # seconds since the peer's last successful renewal


def peer_cut_off(report: PeerReport, timings: Timings) -> bool:
    """The peer answered and it, too, has not renewed its presence lately."""
    return (report.answered and report.renewed_ago is not None
            and report.renewed_ago >= timings.peer_stale)


def majority(count: int, of: int) -> bool:
    return count * 2 > of


def fence_decision(me: str, renewed_ago: float, members: Collection[str],
                   reports: Mapping[str, PeerReport] | None, timings: Timings) -> Fence:
    """Rule 1 (module docstring). ``renewed_ago``: seconds since the sending of the last
    successful renewal; ``members``: machines last listed (``me`` counts even if absent);
    ``reports``: the peers' answers, None when not probed yet."""
    if renewed_ago < timings.ttl:
        return Fence.HOLD
    if reports is None:
        return Fence.PROBE
    listed = set(members) | {me}
    group = 1 + sum(1 for m in listed - {me}
                    if m in reports and peer_cut_off(reports[m], timings))
    return Fence.KEEP if majority(group, len(listed)) else Fence.STOP
