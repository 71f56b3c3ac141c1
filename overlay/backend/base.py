"""The backend contract: what flanneld's control plane asks of a data path.

A backend is chosen by name from ``BACKENDS`` (``Backend.Type`` in the network
config). The daemon's life cycle with it is:

1. ``make_backend(type, config, ext)`` — parse the ``Backend`` JSON object and
   the external interface; raises ``BackendConfigError`` naming the field.
2. ``await backend.prepare()`` — create devices that do not depend on the lease
   (e.g. ``flannel.1`` without its address) and return the ``backend_data`` to
   publish in the lease (``{"VNI": 1, "VtepMAC": "…"}`` for vxlan; ``{}`` else).
   Must be idempotent: an existing device with the right settings is kept.
3. ``await backend.attach(own)`` — once the lease is held: address the device
   with ``<subnet>.0/32`` etc.
4. ``await backend.reconcile(peers)`` — called with the *complete* set of peer
   leases (own lease excluded) every time it changes, and periodically. Makes
   the kernel match exactly: adds what is missing, replaces what differs,
   removes entries of subnets not in ``peers``. Leases of another BackendType
   are ignored. Never flushes what is already right (no traffic blips).
   Returns a ``ReconcileReport`` for logs and metrics.

``mtu`` is the MTU containers should use (``FLANNEL_MTU``). Nothing is torn down
on exit: a restarted flanneld finds its state in place (flannel's no-downtime
restarts).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from overlay.errors import BackendError as BackendError  # the data path's root error
from overlay.errors import ConfigError
from overlay.lease.model import Lease


class BackendConfigError(ConfigError):
    """The network config's Backend object is invalid; names the field."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(field_name, reason, message=f"Backend.{field_name}: {reason}")


@dataclass(frozen=True, slots=True)
class ExternalInterface:
    """The underlay interface flanneld talks through (flannel's ``-iface``)."""

    name: str
    index: int
    ip: ipaddress.IPv4Address  # address on the interface
    public_ip: ipaddress.IPv4Address  # advertised (``-public-ip``, defaults to ``ip``)
    mtu: int


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    added: int = 0
    removed: int = 0
    changed: int = 0
    errors: tuple[str, ...] = ()
    peers: int = 0  # peers programmed after this pass


class Backend(Protocol):
    name: str

    @property
    def mtu(self) -> int: ...

    async def prepare(self) -> Mapping[str, Any]: ...

    async def attach(self, own: Lease) -> None: ...

    async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport: ...

    async def close(self) -> None:
        """Release sockets/handles; leaves kernel state in place."""
        ...


BackendFactory = Callable[[Mapping[str, Any], ExternalInterface], Backend]

# The name table (``"vxlan"``, ``"host-gw"``, ``"udp"`` -> factory) lives in
# ``overlay.backend.registry`` so importing this contract stays cheap.
