"""What a change of the network config would do to the live leases (pure).

``weftctl network set`` refuses a config that orphans a live lease or changes the
data path under a live host (unless ``--force``); this names each such lease.
It sits in the lease package because it judges leases against a ``NetworkConfig``
(the config is the lower layer: it knows nothing of leases).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overlay.lease.model import Lease
from overlay.lease.network import NetworkConfig


@dataclass(frozen=True, slots=True)
class ChangeConflict:
    """A live lease a new network config would break, and why."""

    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    reason: str

    def __str__(self) -> str:
        return f"{self.subnet} (host {self.public_ip}): {self.reason}"


def config_change_conflicts(new: NetworkConfig, leases: Sequence[Lease]
                            ) -> tuple[ChangeConflict, ...]:
    """The live leases ``new`` would orphan or whose data path it would change (pure).

    A lease is orphaned when ``new`` could not have handed its subnet out
    (outside Network or SubnetMin..SubnetMax, or another SubnetLen): its host
    keeps routing a subnet the cluster no longer owns. A backend change (type, or
    VNI for vxlan) under a live host leaves peers speaking different data paths
    until every flanneld restarts.
    """
    out: list[ChangeConflict] = []
    new_vni = _backend_vni(new.backend)
    for lease in sorted(leases, key=lambda le: int(le.subnet.network_address)):
        reasons = []
        if not new.fits(lease.subnet):
            reasons.append(f"outside the new Network {new.network} "
                           f"(SubnetLen {new.subnet_len}, {new.subnet_min}-{new.subnet_max})")
        ltype = (lease.backend_type or "").lower()
        if ltype and ltype != new.backend_type:
            reasons.append(f"its host runs the {ltype} backend, the new config says "
                           f"{new.backend_type}")
        elif ltype == "vxlan" == new.backend_type:
            lease_vni = _backend_vni(lease.backend_data)
            if lease_vni != new_vni:
                reasons.append(f"its host uses VNI {lease_vni}, the new config says {new_vni}")
        if reasons:
            out.append(ChangeConflict(lease.subnet, lease.public_ip, "; ".join(reasons)))
    return tuple(out)


def _backend_vni(backend: Mapping[str, Any]) -> int:
    raw = backend.get("VNI")
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw else 1
