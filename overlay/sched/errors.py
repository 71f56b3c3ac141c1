"""The scheduler's error tree; every error carries the data that locates it.

::

    SchedError                 base (a WeftError); CLI and daemon boundaries catch this
    ├── UnitFileError          a unit file or unit name is refused
    │                          (.source file, .line 1-based or 0, .key option or "", .message)
    ├── RecordError            a malformed value or key under /weft/sched/ (.key, .reason)
    └── UnitStateError         a command that fleet's state machine or immutability refuses
                               (.unit, .reason)
"""

from __future__ import annotations

from overlay.errors import WeftError


class SchedError(WeftError):
    """Base of every scheduler failure."""


class UnitFileError(SchedError):
    """A unit file (or a unit name) refused: names the file, the line and the key.

    ``line`` is 0 when the problem is not tied to one line (a bad file name, a
    cycle across units); ``key`` is ``""`` when no option is involved (a syntax
    error in a section header).
    """

    def __init__(self, source: str, line: int, key: str, message: str) -> None:
        where = source
        if line:
            where += f":{line}"
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line
        self.key = key
        self.message = message


class RecordError(SchedError):
    """A store key or value that is not the scheduler's format; names the key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class UnitStateError(SchedError):
    """A command refused by the state machine or by unit immutability."""

    def __init__(self, unit: str, reason: str) -> None:
        super().__init__(f"{unit}: {reason}")
        self.unit = unit
        self.reason = reason
