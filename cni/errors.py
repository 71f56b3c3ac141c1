"""The CNI plugin's error tree: every failure carries a spec error code.

Theory of operation: the core raises ``CniError`` subclasses; only the skel
(``cni.skel``) catches broadly and turns them into the spec's error JSON
``{cniVersion, code, msg, details}`` on stdout with a non-zero exit.

    CniError(code, msg, details)
      +-- VersionError          1   unsupported / missing cniVersion
      +-- EnvError              4   bad or missing CNI_* environment variable
      +-- IOFailure             5   reading/writing plugin state failed
      +-- DecodeError           6   stdin is not a JSON object
      +-- ConfigError           7   invalid network configuration
      +-- TryAgainError        11   transient: range exhausted, no subnet.env yet
      +-- NotAvailableError    50   STATUS: the host has no lease yet
      +-- KernelError         100   the kernel refused a netlink request (errno)
      +-- AttachmentExistsError 101 ADD for a (containerID, ifname) that exists
      +-- BridgeConflictError 102   cni0 carries another subnet's gateway
      +-- CheckFailedError    103   CHECK found state differing from prevResult
"""

from __future__ import annotations


class CniError(Exception):
    """Base: ``code`` is the CNI error code, ``msg`` short, ``details`` longer text."""

    code = 999

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details


class VersionError(CniError):
    code = 1


class EnvError(CniError):
    code = 4


class IOFailure(CniError):
    code = 5


class DecodeError(CniError):
    code = 6


class ConfigError(CniError):
    code = 7


class TryAgainError(CniError):
    code = 11


class NotAvailableError(CniError):
    code = 50


class KernelError(CniError):
    """A netlink request failed; ``errno`` is the kernel's (positive) error number."""

    code = 100

    def __init__(self, msg: str, errno: int, details: str = "") -> None:
        super().__init__(msg, details)
        self.errno = errno


class AttachmentExistsError(CniError):
    code = 101


class BridgeConflictError(CniError):
    code = 102


class CheckFailedError(CniError):
    code = 103
