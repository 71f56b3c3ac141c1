"""``weftctl install-units``: renders weft's systemd units for this install and writes them.

The units in the checkout's ``systemd/`` directory name the daemons as
``/usr/local/bin/<daemon>`` and their documentation as
``/usr/local/share/doc/weft/README.md``; ``render_unit`` rewrites both to this
install's prefix, which defaults to the installation running this command (so a
venv install gets its own absolute paths; the wheel ships the README there).
Nothing is enabled or started: the command prints the ``systemctl`` lines to run.

By default only the daemons' units are written (flanneld, dnsd, weft-agent): the embedded
store's unit is written when asked for (``--with-store`` or by name), because
hosts of a cluster share one store (a real etcd or one embedded store) and a
store unit enabled on every host would give each its own private one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from overlay.errors import WeftError

DEFAULT_BIN = "/usr/local/bin/"
DEFAULT_DOC = "/usr/local/share/doc/weft/"
DEFAULT_DEST = Path("/etc/systemd/system")
STORE_UNIT = "weft-store.service"
DAEMON_UNITS = ("flanneld.service", "dnsd.service", "weft-agent.service")
UNITS = (STORE_UNIT, *DAEMON_UNITS)


class UnitsError(WeftError):
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


def render_unit(text: str, prefix: Path, doc_dir: Path | None = None) -> str:
    """Point ``/usr/local/bin/`` at ``<prefix>/bin/`` and the docs at ``doc_dir`` (pure).

    ``doc_dir`` defaults to ``<prefix>/share/doc/weft``, where the wheel installs
    the README.
    """
    root = prefix.as_posix().rstrip("/")
    docs = (doc_dir.as_posix() if doc_dir else f"{root}/share/doc/weft").rstrip("/")
    return text.replace(DEFAULT_BIN, f"{root}/bin/").replace(DEFAULT_DOC, f"{docs}/")


def doc_dir_for(prefix: Path, source: Path) -> Path:
    """Where this install's README is: the prefix's share/doc, else the checkout's."""
    installed = prefix / "share" / "doc" / "weft"
    if (installed / "README.md").is_file() or not (source.parent / "README.md").is_file():
        return installed
    return source.parent.resolve()


def install_units(source: Path, dest: Path, prefix: Path,
                  names: Sequence[str] = DAEMON_UNITS) -> list[Path]:
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
        tmp.write_text(render_unit(src.read_text(), prefix, doc_dir_for(prefix, source)))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        written.append(target)
    return written


def _install(args: argparse.Namespace) -> int:
    names = list(args.units or DAEMON_UNITS)
    if args.with_store and STORE_UNIT not in names:
        names.insert(0, STORE_UNIT)
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
        "install-units", help="write weft's systemd units (flanneld, dnsd, weft-agent; the "
                              "store's when asked)",
        description="Render weft's systemd units with this installation's absolute paths "
                    "and write them. Settings go in /etc/weft/{store,flanneld,dnsd,agent}.env. "
                    "The daemons are ordered after etcd.service and weft-store.service "
                    "but never start a store: write the embedded store's unit "
                    f"({STORE_UNIT}) only on the one host that runs it.")
    p.add_argument("--with-store", action="store_true",
                   help=f"also write {STORE_UNIT} (the embedded store; one per cluster)")
    p.add_argument("--dest", default=str(DEFAULT_DEST), metavar="DIR",
                   help=f"where to write the units (default {DEFAULT_DEST})")
    p.add_argument("--prefix", default=str(default_prefix()), metavar="PREFIX",
                   help="installation prefix whose bin/ holds flanneld, dnsd and weftctl "
                        "(default: the one running this command, %(default)s)")
    p.add_argument("--from", dest="source", default=str(default_source()), metavar="DIR",
                   help="directory holding the unit sources (default: the checkout's "
                        "systemd/, %(default)s)")
    p.add_argument("units", nargs="*", metavar="UNIT",
                   help=f"only these units (default: {', '.join(DAEMON_UNITS)}; known: "
                        f"{', '.join(UNITS)})")
    p.set_defaults(func=_install)
