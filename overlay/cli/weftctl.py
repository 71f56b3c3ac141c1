"""weftctl: the admin CLI. This module only dispatches; each area owns its subcommands.

A subcommand module exposes ``register(subparsers) -> None``, adding its parsers with
``set_defaults(func=handler)`` where ``handler(args) -> int`` is the exit status.
Add a module to ``SUBCOMMAND_MODULES`` to plug it in; modules are imported lazily
only when building the parser, so a missing optional dependency of one area does
not break the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from overlay.service import LOG_FORMATS, setup_logging

SUBCOMMAND_MODULES = (
    "overlay.cli.store_cmd",      # weftctl store serve|status
    "overlay.cli.network_cmd",    # weftctl network set|get, leases, docker-opts
    "cni.install",                # weftctl cni install
    "dnsd.admin",                 # weftctl dns set|rm|ls
    "overlay.sandbox.cli",        # weftctl sandbox up|status|exec|logs|kill|down
    "overlay.cli.units_cmd",      # weftctl install-units
    "overlay.cli.fleet_cmd",      # fleetctl verbs: submit..destroy, status, journal, list-*
    "overlay.cli.agent_cmd",      # weftctl agent
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weftctl",
        description="Administer a weft cluster: store, network, DNS, scheduled units, sandbox.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from overlay.version import version_text

    parser.add_argument("--version", action="version", version=version_text("weftctl"),
                        help="print the version and exit")
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        default=os.environ.get("WEFT_LOG_FORMAT", "text"),
                        help="text (journald priority prefixes under systemd) or json, for "
                             "`store serve` as a service [env WEFT_LOG_FORMAT]")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that area has not landed yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_format not in LOG_FORMATS:  # a default from WEFT_LOG_FORMAT skips choices=
        parser.error(f"WEFT_LOG_FORMAT={args.log_format!r}: must be one of "
                     f"{', '.join(LOG_FORMATS)}")
    setup_logging(logging.DEBUG if args.verbose else logging.INFO, args.log_format)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    status: int = func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
