"""Build a backend by name from ``overlay.backend.base.BACKENDS``.

``make_backend(type, config, ext)`` is what flanneld's control plane calls;
``parse_backend(type, config)`` only validates (for ``weftctl network set`` and
config checks). Both raise ``BackendConfigError`` naming the offending field.
Unknown keys are ignored, as flannel ignores them. Each backend's fields are
parsed by its own module's ``parse_config`` (flannel's names):

* ``vxlan``: ``VNI`` (1, 1..16777215), ``Port`` (0 = 8472), ``Learning`` (false),
  ``DirectRouting`` (false), ``MTU`` (underlay MTU override), ``GBP`` (only false).
* ``host-gw``: no fields.
* ``udp``: ``Port`` (8285), weft's ``Encryption`` (``{"KeyFile": PATH or [PATH, PATH]}``).

The line-driven test harness that drives one backend in a namespace is
``tests/backend_driver.py``.
"""

from __future__ import annotations

import importlib
import ipaddress
from collections.abc import Mapping
from typing import Any

from overlay.backend.base import (
    BACKENDS,
    DEFAULT_BACKEND,
    Backend,
    BackendConfigError,
    ExternalInterface,
    lease_backend_type,
)
from overlay.backend.hostgw import HostGwConfig
from overlay.backend.netlink import KernelThread
from overlay.backend.udpconfig import UdpConfig
from overlay.backend.vxlan import VxlanConfig

__all__ = ["BACKEND_TYPES", "DEFAULT_BACKEND", "BackendSettings", "lease_backend_type",
           "make_backend", "parse_backend"]

BACKEND_TYPES = tuple(BACKENDS)

BackendSettings = VxlanConfig | HostGwConfig | UdpConfig


def _kind(type_: str | None, cfg: Mapping[str, Any]) -> str:
    kind = type_ if type_ is not None else cfg.get("Type", DEFAULT_BACKEND)
    if kind in ("", None):
        kind = DEFAULT_BACKEND
    if kind not in BACKENDS:
        raise BackendConfigError(
            "Type", f"unknown backend type {kind!r} (weft supports {', '.join(BACKENDS)})")
    return str(kind)


def parse_backend(type_: str | None, config: Mapping[str, Any] | None) -> BackendSettings:
    """Validate a ``Backend`` object (``Type`` may be given separately or inside it)."""
    cfg: Mapping[str, Any] = config or {}
    if not isinstance(cfg, Mapping):
        raise BackendConfigError("", f"must be a JSON object, got {type(cfg).__name__}")
    spec = BACKENDS[_kind(type_, cfg)]
    module = importlib.import_module(spec.config_module or spec.module)
    settings: BackendSettings = module.parse_config(cfg)
    return settings


def make_backend(type_: str | None, config: Mapping[str, Any] | None, ext: ExternalInterface,
                 *, network: ipaddress.IPv4Network | None = None,
                 network6: ipaddress.IPv6Network | None = None,
                 kernel: KernelThread | None = None) -> Backend:
    """Build the backend named ``type_`` (None/"" = vxlan) for ``ext``.

    ``network`` is the cluster network (``Network``): backends only ever touch
    routes inside it (so daemons for different networks coexist), and the udp
    backend routes all of it into its TUN device (else one route per peer).
    ``network6`` is the same for the IPv6 half (``IPv6Network``).
    ``kernel`` defaults to netlink in the calling process's namespace.
    """
    cfg: Mapping[str, Any] = config or {}
    settings = parse_backend(type_, cfg)
    module = importlib.import_module(BACKENDS[_kind(type_, cfg)].module)
    backend: Backend = module.BACKEND_CLASS(settings, ext, kernel=kernel, network=network,
                                             network6=network6)
    return backend
