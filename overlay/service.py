"""How a weft daemon meets its service manager: ``sd_notify`` and log output (journald, JSON).

Every daemon (flanneld, dnsd, ``weftctl store serve``) logs to stderr through
``setup_logging``, which picks one of three formats:

* ``json``: one JSON object per line (``time`` RFC 3339 UTC, ``level``,
  ``logger``, ``msg``, and ``exc`` with the traceback when there is one), for
  log shippers; chosen with ``--log-format json`` (or the daemon's variable).
* under systemd (``$JOURNAL_STREAM`` names the device and inode of our stderr,
  as systemd sets it for a service whose output goes to the journal), ``text``
  becomes ``<N>logger: message`` with N the syslog priority (3 error .. 7 debug;
  2 for critical): journald files each line at that priority and stamps it
  itself, so no second timestamp is printed.
* otherwise ``text``: ``2026-12-06 21:00:00,000 INFO logger: message``.

``sd_notify`` sends a state (``READY=1``) to ``$NOTIFY_SOCKET`` (a path or an
``@abstract`` name), a no-op without one: a ``Type=notify`` unit starts once the
daemon says it is ready (flanneld: lease, data path and subnet.env in place;
dnsd: first full index load). Nothing here reads the environment unless handed it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import TextIO

log = logging.getLogger(__name__)

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# syslog priorities journald understands as a "<N>" line prefix (sd-daemon.h)
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
             (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The sd-daemon priority for a logging level: 2 critical .. 7 debug."""
    for level, prio in _PRIORITY:
        if levelno >= level:
            return prio
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``; every continuation line (tracebacks) keeps the priority."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = f"{record.name}: {super().format(record)}"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def under_journal(environ: Mapping[str, str], stream: TextIO) -> bool:
    """True when ``stream`` is the journal stream systemd names in ``$JOURNAL_STREAM``."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def make_formatter(log_format: str, journal: bool) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if journal:
        return JournalFormatter()
    return logging.Formatter(TEXT_FORMAT)


def setup_logging(level: int, log_format: str = "text",
                  environ: Mapping[str, str] | None = None,
                  stream: TextIO | None = None) -> None:
    """Send the root logger to ``stream`` (stderr) in ``log_format`` (see the module doc)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    out = stream if stream is not None else sys.stderr
    env = os.environ if environ is None else environ
    handler = _WeftHandler(out)
    handler.setFormatter(make_formatter(log_format, under_journal(env, out)))
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call; others (pytest's) stay
        if isinstance(old, _WeftHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


class _WeftHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler ``setup_logging`` installs (so a second call replaces it)."""


def sd_notify(message: str, notify_socket: str | None) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd; False when there is no socket."""
    if not notify_socket:
        return False
    address = "\0" + notify_socket[1:] if notify_socket.startswith("@") else notify_socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", notify_socket, exc)
        return False
    return True
