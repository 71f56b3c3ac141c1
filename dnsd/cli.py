"""dnsd's entry point: flags (``config``), logging, then ``daemon.serve`` in one event loop.

Exit status: 0 after SIGTERM/SIGINT, 1 when it cannot listen, 2 on bad flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from overlay.service import setup_logging

from .config import parse_config
from .daemon import serve
from .skyconfig import explicit_flags

log = logging.getLogger("dnsd")


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_config(args)
    if cfg.version:
        from overlay.version import version_text

        sys.stdout.write(version_text("dnsd") + "\n")
        return 0
    setup_logging(logging.DEBUG if cfg.verbose else logging.INFO, cfg.log_format)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    if cfg.systemd:
        log.info("-systemd: readiness goes to systemd through $NOTIFY_SOCKET when it is set; "
                 "dnsd binds -addr itself (no socket activation)")
    explicit = explicit_flags(args, os.environ)

    async def amain() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        return await serve(cfg, explicit, stop)

    try:
        rc = asyncio.run(amain())
    except OSError as exc:  # e.g. the metrics port is taken
        log.error("dnsd failed: %s", exc)
        return 1
    if rc == 0:
        log.info("dnsd stopped")
    return rc


if __name__ == "__main__":
    sys.exit(main())
