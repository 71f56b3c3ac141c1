"""The backend contract: what flanneld's control plane asks of a data path.

A backend is chosen by name from ``BACKENDS`` (``Backend.Type`` in the network
config), the one name table: each row names the module that implements the
backend (its ``parse_config(obj) -> settings`` and its ``BACKEND_CLASS``), the
``BackendType`` its leases publish (flannel's udp publishes an empty one) and the
``weftctl network set`` options it takes. Modules are named, not imported, so this
contract stays cheap to import and the backends can import it.
The daemon's life cycle with a backend is:

1. ``make_backend(type, config, ext)`` (``overlay.backend.registry``) — parse the
   ``Backend`` JSON object; raises ``BackendConfigError`` naming the field.
2. ``await backend.prepare()`` — create devices that do not depend on the lease
   (e.g. ``flannel.1`` without its address) and return the ``backend_data`` to
   publish in the lease (``{"VNI": 1, "VtepMAC": "…"}`` for vxlan; ``{}`` else).
   Must be idempotent: an existing device with the right settings is kept.
   With ``EnableIPv6``, ``await backend.prepare_v6()`` does the same for the
   IPv6 half (``flannel-v6.<VNI>``) and returns the lease's ``BackendV6Data``.
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
from typing import Any, Protocol, runtime_checkable

from overlay.errors import BackendError as BackendError  # the data path's root error
from overlay.errors import ConfigError
from overlay.lease.model import Lease
from overlay.lease.network import DEFAULT_BACKEND as DEFAULT_BACKEND
from overlay.metrics import Family


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
    iface_ipv6: ipaddress.IPv6Address | None = None  # the interface's first global IPv6 address
    public_ipv6: ipaddress.IPv6Address | None = None  # ``-public-ipv6``, defaults to ``iface_ipv6``


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

    async def prepare_v6(self) -> Mapping[str, Any]:
        """The IPv6 half of ``prepare`` (``BackendV6Data``); called only when the network
        config has ``EnableIPv6``. Raises ``BackendError`` for an IPv4-only backend."""
        ...

    async def attach(self, own: Lease) -> None: ...

    async def reconcile(self, peers: Sequence[Lease]) -> ReconcileReport: ...

    async def close(self) -> None:
        """Release sockets/handles; leaves kernel state in place."""
        ...


@runtime_checkable
class Measured(Protocol):
    """A backend that exports data-path counters (flanneld's ``/metrics`` renders them)."""

    def metric_families(self) -> Sequence[Family]: ...


BackendFactory = Callable[[Mapping[str, Any], ExternalInterface], Backend]



@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One row of ``BACKENDS``."""

    module: str  # defines parse_config(Mapping) -> settings and BACKEND_CLASS
    lease_type: str  # the BackendType written into this backend's leases
    options: tuple[str, ...] = ()  # `weftctl network set` options that apply to it
    config_module: str = ""  # where parse_config lives when not in ``module`` (lighter)


BACKENDS: Mapping[str, BackendSpec] = {
    "vxlan": BackendSpec("overlay.backend.vxlan", "vxlan", ("vni", "port", "direct-routing")),
    "host-gw": BackendSpec("overlay.backend.hostgw", "host-gw"),
    # flannel's udp backend leaves BackendType empty in its leases, so weft does too
    "udp": BackendSpec("overlay.backend.udp", "", ("port",), "overlay.backend.udpconfig"),
}

# option -> the backends it applies to (flannel: VNI and DirectRouting are vxlan's,
# Port is vxlan's and udp's)
BACKEND_OPTIONS: Mapping[str, tuple[str, ...]] = {
    option: tuple(name for name, spec in BACKENDS.items() if option in spec.options)
    for option in ("vni", "port", "direct-routing")}


def lease_backend_type(name: str) -> str:
    """The ``BackendType`` a lease of backend ``name`` carries."""
    spec = BACKENDS.get(name)
    return spec.lease_type if spec is not None else name


def int_field(cfg: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    """An integer field of the Backend object (absent or null = ``default``)."""
    value = cfg.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BackendConfigError(key, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise BackendConfigError(key, f"{value} is out of range {lo}..{hi}")
    return value


def bool_field(cfg: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """A boolean field of the Backend object (absent or null = ``default``)."""
    value = cfg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BackendConfigError(key, f"must be true or false, got {value!r}")
    return value
