"""``weftctl install-units``: renders weft's systemd units for this install and writes them.

The units in the checkout's ``systemd/`` directory name the daemons as
``/usr/local/bin/<daemon>``; ``render_unit`` rewrites that to ``<prefix>/bin/``,
where the prefix defaults to the installation running this command (so a venv
install gets its own absolute paths). Nothing is enabled or started: the
command prints the ``systemctl`` lines to run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_BIN = "/usr/local/bin/"
DEFAULT_DEST = Path("/etc/systemd/system")
UNITS = ("weft-store.service", "flanneld.service", "dnsd.service")


class UnitsError(Exception):
    """The unit sources or destination are unusable; ``path`` names which."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


def default_source() -> Path:
    """``systemd/`` of the checkout this module comes from."""
    return Path(__file__).resolve().parents[2] / "systemd"


def default_prefix() -> Path:
    """The installation running us: ``<prefix>/bin/python`` -> ``<prefix>``."""
    return Path(sys.executable).absolute().parent.parent


def render_unit(text: str, prefix: Path) -> str:
    """Point every ``/usr/local/bin/`` reference at ``<prefix>/bin/`` (pure)."""
    return text.replace(DEFAULT_BIN, f"{prefix.as_posix().rstrip('/')}/bin/")


def install_units(source: Path, dest: Path, prefix: Path,
                  names: Sequence[str] = UNITS) -> list[Path]:
    """Render each unit from ``source`` into ``dest`` (atomic per file); return the paths."""
    if not source.is_dir():
        raise UnitsError(source, "no unit directory here (pass --from DIR, the checkout's "
                         "systemd/)")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        src = source / name
        if not src.is_file():
            raise UnitsError(src, "unit file missing")
        target = dest / name
        tmp = dest / f".{name}.tmp"
        tmp.write_text(render_unit(src.read_text(), prefix))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        written.append(target)
    return written


def _install(args: argparse.Namespace) -> int:
    names = args.units or list(UNITS)
    unknown = [n for n in names if n not in UNITS]
    if unknown:
        sys.stderr.write(f"weftctl install-units: unknown unit(s) {', '.join(unknown)} "
                         f"(known: {', '.join(UNITS)})\n")
        return 2
    try:
        written = install_units(Path(args.source), Path(args.dest), Path(args.prefix), names)
    except (UnitsError, OSError) as exc:
        sys.stderr.write(f"weftctl install-units: {exc}\n")
        return 1
    for path in written:
        sys.stdout.write(f"wrote {path}\n")
    sys.stdout.write("next: systemctl daemon-reload && systemctl enable --now "
                     + " ".join(p.name for p in written) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "install-units", help="write weft's systemd units (store, flanneld, dnsd)",
        description="Render weft's systemd units with this installation's absolute paths "
                    "and write them. Settings go in /etc/weft/{store,flanneld,dnsd}.env.")
    p.add_argument("--dest", default=str(DEFAULT_DEST), metavar="DIR",
                   help=f"where to write the units (default {DEFAULT_DEST})")
    p.add_argument("--prefix", default=str(default_prefix()), metavar="PREFIX",
                   help="installation prefix whose bin/ holds flanneld, dnsd and weftctl "
                        "(default: the one running this command, %(default)s)")
    p.add_argument("--from", dest="source", default=str(default_source()), metavar="DIR",
                   help="directory holding the unit sources (default: the checkout's "
                        "systemd/, %(default)s)")
    p.add_argument("units", nargs="*", metavar="UNIT",
                   help=f"only these units (default all: {', '.join(UNITS)})")
    p.set_defaults(func=_install)
