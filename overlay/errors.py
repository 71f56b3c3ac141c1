"""weft's error tree: every error a weft daemon or tool raises on purpose derives from
``WeftError`` and carries its facts as attributes (``field``, ``key``, ``path``,
``code`` ...), not only in its message.

The roots of each area are defined here; the leaves live next to the code that
raises them (and stay importable there under their old names). A handler catches
the narrowest class it can act on; ``except WeftError`` at a program's edge turns
anything else weft-made into a message and an exit status, while a bare
``Exception`` there means a bug. Builtin bases are kept where callers relied on
them (``ValueError`` for bad input, ``RuntimeError`` for a failed action,
``OSError`` for a busy data dir).

    WeftError
    ├── ConfigError (ValueError)          a setting is invalid: field, reason
    │   │                                 overlay.config raises it for the network config
    │   └── BackendConfigError            overlay.backend.base: the Backend object
    ├── SubnetFileError (ValueError)      overlay.subnetfile: path, reason
    ├── InterfaceError (RuntimeError)     overlay.iface: no usable external interface
    ├── LeaseError                        the subnet lease
    │   ├── LeaseFormatError (ValueError) overlay.lease.model: key, reason
    │   ├── LeaseLostError                overlay.lease.manager: subnet, reason
    │   ├── AcquireError (RuntimeError)   overlay.lease.manager: every attempt lost a race
    │   └── NetworkFullError (RuntimeError) overlay.lease.allocator
    ├── BackendError (RuntimeError)       the data path could not be programmed
    │   ├── KernelError                   overlay.backend.netlink: what, code (errno)
    │   └── MasqError                     overlay.masq: the nftables rules
    ├── FatalError (RuntimeError)         overlay.daemon: flanneld cannot run this way
    ├── StoreError                        the cluster store (overlay.store.api)
    │   ├── StoreUnavailableError, StoreAuthError, CompactedError (revision),
    │   │   LeaseNotFoundError (lease), ValueTooLargeError    overlay.store.api
    │   ├── FutureRevisionError (revision)                     overlay.store.mvcc
    │   └── LeaseExistsError, LeaseTTLTooLargeError, DuplicateKeyError, KeyNotFoundError,
    │       DataDirLockedError (OSError: data_dir, pid)       overlay.store.embedded
    ├── DnsError                          dnsd
    │   ├── RecordError (ValueError)      dnsd.records: a SkyDNS record value
    │   ├── BadNameError (ValueError)     dnsd.keys: a name that cannot be a key
    │   └── WireError → DropError, FormError, EncodeError     dnsd.wire
    ├── SandboxError → BadOptionError, AlreadyUpError, NotUpError, UnknownTargetError
    │                                     overlay.sandbox.model
    ├── TestbedError                      overlay.testbed
    ├── UnitsError                        overlay.cli.units_cmd
    └── SchedError                        overlay.sched.errors (the scheduler)
        ├── UnitFileError                 a unit file or name refused: source, line, key, message
        ├── RecordError                   a malformed key or value under /weft/sched/: key, reason
        └── UnitStateError                refused by fleet's state machine or immutability: unit

Not in this tree, on purpose: the CNI plugin's ``cni.errors.CniError`` (its codes
are the CNI spec's and the plugin imports nothing from ``overlay``, for its exec
budget), and private control-flow exceptions
(``_Bad``, ``Abort``, ``_TokenRejected``) that never leave their module.
"""

from __future__ import annotations


class WeftError(Exception):
    """The root of every error weft raises on purpose."""


class ConfigError(WeftError, ValueError):
    """The network config is invalid; ``field`` names the JSON field at fault."""

    def __init__(self, field_name: str, reason: str, *, message: str | None = None) -> None:
        super().__init__(message or f"network config: {field_name}: {reason}")
        self.field = field_name
        self.reason = reason


class LeaseError(WeftError):
    """Something about our subnet lease (its format, losing it, acquiring it)."""


class BackendError(WeftError, RuntimeError):
    """The data path could not be programmed (netlink failure, missing device)."""


class StoreError(WeftError):
    """The cluster store failed or refused an operation."""


class DnsError(WeftError):
    """dnsd: a record, name or packet it cannot use."""
