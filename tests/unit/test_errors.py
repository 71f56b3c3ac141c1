"""The error tree drawn in overlay/errors.py is the one the code has: each class under its
documented parent, old names still importable, builtin bases kept for old handlers."""

from __future__ import annotations

import importlib

import pytest

from overlay import errors

TREE = [  # (module, class, parent, builtin base kept or None)
    ("overlay.errors", "ConfigError", errors.WeftError, ValueError),
    ("overlay.config", "ConfigError", errors.WeftError, ValueError),
    ("overlay.backend.base", "BackendConfigError", errors.ConfigError, ValueError),
    ("overlay.subnetfile", "SubnetFileError", errors.WeftError, ValueError),
    ("overlay.iface", "InterfaceError", errors.WeftError, RuntimeError),
    ("overlay.lease.model", "LeaseFormatError", errors.LeaseError, ValueError),
    ("overlay.lease.manager", "LeaseLostError", errors.LeaseError, None),
    ("overlay.lease.manager", "AcquireError", errors.LeaseError, RuntimeError),
    ("overlay.lease.allocator", "NetworkFullError", errors.LeaseError, RuntimeError),
    ("overlay.backend.base", "BackendError", errors.WeftError, RuntimeError),
    ("overlay.backend.netlink", "KernelError", errors.BackendError, RuntimeError),
    ("overlay.masq", "MasqError", errors.BackendError, RuntimeError),
    ("overlay.daemon", "FatalError", errors.WeftError, RuntimeError),
    ("overlay.store.api", "StoreError", errors.WeftError, None),
    ("overlay.store.api", "StoreUnavailableError", errors.StoreError, None),
    ("overlay.store.api", "CompactedError", errors.StoreError, None),
    ("overlay.store.api", "LeaseNotFoundError", errors.StoreError, None),
    ("overlay.store.api", "StoreAuthError", errors.StoreError, None),
    ("overlay.store.api", "ValueTooLargeError", errors.StoreError, None),
    ("overlay.store.mvcc", "FutureRevisionError", errors.StoreError, None),
    ("overlay.store.embedded.state", "LeaseExistsError", errors.StoreError, None),
    ("overlay.store.embedded.state", "DuplicateKeyError", errors.StoreError, None),
    ("overlay.store.embedded.lock", "DataDirLockedError", errors.StoreError, OSError),
    ("dnsd.records", "RecordError", errors.DnsError, ValueError),
    ("dnsd.keys", "BadNameError", errors.DnsError, ValueError),
    ("dnsd.wire", "FormError", errors.DnsError, None),
    ("overlay.sandbox.model", "NotUpError", errors.WeftError, None),
    ("overlay.testbed", "TestbedError", errors.WeftError, None),
    ("overlay.cli.units_cmd", "UnitsError", errors.WeftError, None),
]


@pytest.mark.parametrize(("module", "name", "parent", "builtin"), TREE,
                         ids=[f"{m}.{n}" for m, n, _, _ in TREE])
def test_class_sits_where_the_tree_says(module: str, name: str, parent: type,
                                        builtin: type | None) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, parent)
    assert builtin is None or issubclass(cls, builtin)
    assert name in (errors.__doc__ or "")


def test_errors_carry_their_data() -> None:
    from overlay.backend.base import BackendConfigError
    from overlay.config import ConfigError

    e = BackendConfigError("VNI", "out of range")
    assert (e.field, e.reason, str(e)) == ("VNI", "out of range", "Backend.VNI: out of range")
    c = ConfigError("Network", "missing")
    assert (c.field, str(c)) == ("Network", "network config: Network: missing")
