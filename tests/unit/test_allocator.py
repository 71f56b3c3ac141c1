"""The pure allocator: flannel's acquisition order, range bounds, exhaustion."""

from __future__ import annotations

import ipaddress
import random

import pytest

from overlay.config import check_network_config
from overlay.lease.allocator import CANDIDATES, NetworkFullError, Reason, choose_subnet
from overlay.lease.model import Lease

N = ipaddress.IPv4Network
A = ipaddress.IPv4Address
ME = A("198.18.0.11")
OTHER = A("198.18.0.12")
CFG16 = check_network_config({"Network": "10.244.0.0/16"})
CFG_SMALL = check_network_config({"Network": "10.1.0.0/28"})  # /30s: .4 .8 .12 usable


def lease(subnet: str, ip: ipaddress.IPv4Address = OTHER, rev: int = 5) -> Lease:
    return Lease(N(subnet), ip, "vxlan", {}, lease_id=7, mod_revision=rev)


@pytest.mark.parametrize(
    ("leases", "previous", "want", "reason", "stale"),
    [
        ([lease("10.244.9.0/24", ME), lease("10.244.3.0/24")], N("10.244.5.0/24"),
         "10.244.9.0/24", Reason.REUSED, []),
        ([lease("10.244.9.0/25", ME), lease("10.244.3.0/24")], N("10.244.5.0/24"),
         "10.244.5.0/24", Reason.PREVIOUS, ["10.244.9.0/25"]),
        ([lease("10.245.9.0/24", ME)], None, None, Reason.RANDOM, ["10.245.9.0/24"]),
        ([lease("10.244.5.0/24")], N("10.244.5.0/24"), None, Reason.RANDOM, []),
        ([], N("10.244.0.0/24"), None, Reason.RANDOM, []),
        ([], N("10.99.0.0/24"), None, Reason.RANDOM, []),
        ([lease("10.244.9.0/24", ME), lease("10.244.4.0/24", ME)], None, "10.244.4.0/24",
         Reason.REUSED, ["10.244.9.0/24"]),
    ],
    ids=["reuse-own-ip-first", "own-lease-misfit-deleted-previous-used", "own-lease-outside",
         "previous-taken", "previous-is-skipped-first-subnet", "previous-outside-network",
         "two-own-leases-keep-lowest"],
)
def test_acquisition_order(leases: list[Lease], previous: N | None, want: str | None,
                           reason: Reason, stale: list[str]) -> None:
    got = choose_subnet(CFG16, leases, ME, random.Random(1), previous)
    assert got.reason is reason
    if want is not None:
        assert got.subnet == N(want)
    assert [str(s.subnet) for s in got.stale] == stale
    assert CFG16.fits(got.subnet)
    assert got.subnet not in {le.subnet for le in leases if le.public_ip != ME}
    if reason is Reason.REUSED:
        assert got.existing is not None and got.existing.subnet == got.subnet


def test_first_subnet_skipped_and_bounds_respected() -> None:
    seen = {choose_subnet(CFG_SMALL, [], ME, random.Random(seed)).subnet for seed in range(60)}
    assert seen == {N("10.1.0.4/30"), N("10.1.0.8/30"), N("10.1.0.12/30")}
    cfg = check_network_config({"Network": "10.5.0.0/16", "SubnetMin": "10.5.10.0",
                                "SubnetMax": "10.5.12.0"})
    seen = {choose_subnet(cfg, [], ME, random.Random(s)).subnet for s in range(60)}
    assert seen == {N("10.5.10.0/24"), N("10.5.11.0/24"), N("10.5.12.0/24")}


def test_random_among_first_hundred_free() -> None:
    taken = [lease(f"10.244.{i}.0/24") for i in range(1, 50)]
    picks = {choose_subnet(CFG16, taken, ME, random.Random(s)).subnet for s in range(300)}
    lows = {int(p.network_address.packed[2]) for p in picks}
    assert min(lows) >= 50 and max(lows) < 50 + CANDIDATES
    assert len(picks) > 50  # really random, not always the first


def test_seeded_choice_is_deterministic() -> None:
    a = choose_subnet(CFG16, [], ME, random.Random(42)).subnet
    b = choose_subnet(CFG16, [], ME, random.Random(42)).subnet
    assert a == b


def test_avoid_and_exhaustion() -> None:
    leases = [lease("10.1.0.4/30"), lease("10.1.0.8/30")]
    got = choose_subnet(CFG_SMALL, leases, ME, random.Random(0))
    assert got.subnet == N("10.1.0.12/30")
    with pytest.raises(NetworkFullError, match="network full"):
        choose_subnet(CFG_SMALL, leases, ME, random.Random(0), avoid=[N("10.1.0.12/30")])
    with pytest.raises(NetworkFullError) as info:
        choose_subnet(CFG_SMALL, [*leases, lease("10.1.0.12/30")], ME, random.Random(0))
    assert info.value.taken == 3


def test_odd_length_leases_block_overlapping_subnets() -> None:
    # a /16-config leftover /23 lease covers two /24 candidates
    cfg = check_network_config({"Network": "10.7.0.0/16", "SubnetMin": "10.7.2.0",
                                "SubnetMax": "10.7.4.0"})
    got = choose_subnet(cfg, [lease("10.7.2.0/23")], ME, random.Random(0))
    assert got.subnet == N("10.7.4.0/24")
