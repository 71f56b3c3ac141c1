"""The plugin's stderr log: ``logging`` costs ~5 ms to import per exec, so a tiny stand-in.

libcni only logs a plugin's stderr; stdout is reserved for the result/error
JSON. Lines are ``weft: LEVEL: message`` with lazy ``%`` formatting; the level
comes from ``logLevel`` in the network config (default ``warning``).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class Log:
    def __init__(self, level: str = "warning", stream: TextIO | None = None) -> None:
        self.threshold = LEVELS.get(level.lower(), 30)
        self.stream = stream

    def _emit(self, level: int, name: str, fmt: str, args: tuple[object, ...]) -> None:
        if level < self.threshold:
            return
        msg = fmt % args if args else fmt
        stream = self.stream or sys.stderr
        try:
            stream.write(f"weft[{os.getpid()}]: {name}: {msg}\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def debug(self, fmt: str, *args: object) -> None:
        self._emit(10, "DEBUG", fmt, args)

    def info(self, fmt: str, *args: object) -> None:
        self._emit(20, "INFO", fmt, args)

    def warning(self, fmt: str, *args: object) -> None:
        self._emit(30, "WARNING", fmt, args)
