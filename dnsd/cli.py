"""dnsd's entry point: flags (``config``) and SkyDNS's config key (``daemon``), then run.

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

from .config import parse_config
from .daemon import Daemon, load_config_key
from .skyconfig import explicit_flags

log = logging.getLogger("dnsd")


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_config(args)
    logging.basicConfig(level=logging.DEBUG if cfg.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    if cfg.systemd:
        log.info("-systemd: readiness goes to systemd through $NOTIFY_SOCKET when it is set; "
                 "dnsd binds -addr itself (no socket activation)")
    cfg = load_config_key(cfg, explicit_flags(args, os.environ))
    try:
        daemon = Daemon(cfg)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", cfg.host, cfg.port, exc)
        return 1

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await daemon.run(stop)

    try:
        asyncio.run(amain())
    except OSError as exc:  # e.g. the metrics port is taken
        log.error("dnsd failed: %s", exc)
        return 1
    log.info("dnsd stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
