"""``weftctl cni install``: put the ``weft`` plugin into a CNI bin dir and write its conflist.

The installed ``weft`` is a two-line Python launcher, not the console-script
wrapper: its shebang runs the interpreter with ``-I -S`` (isolated, no site
import: no .pth processing, no editable-install hooks), puts the project root on
``sys.path`` and calls ``cni.main``. The exec'd path needs only the standard
library, so the interpreter may be any CPython of the running minor version;
``preferred_python`` picks the distribution's build when there is one: Debian's
python3.11 is built with PGO/LTO and links _socket, fcntl, _struct, zlib into
the binary, which measured ~6 ms less CPU per ADD than a pyenv build that
dlopens each of them. By default the launcher lets ``cni.main`` hand each exec
to the host namespace's resident helper (``cni.helper``); ``--no-helper``
writes a launcher that always works in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
CONFLIST_NAME = "10-weft.conflist"
PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


def preferred_python() -> str:
    """The distribution's ``pythonX.Y`` of this minor version if present, else ours."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{name}", f"/usr/local/bin/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


def render_launcher(python: str, root: str = PROJECT_ROOT, helper: bool = True) -> str:
    """The plugin executable: one exec of ``python`` straight into ``cni.main``."""
    return (f"#!{python} -IS\n"
            "# weft CNI plugin, installed by `weftctl cni install`\n"
            f"import sys; sys.path.insert(0, {root!r})\n"
            f"from cni.main import run; run(use_helper={helper})\n")


def render_conflist(name: str = "weft", subnet_file: str = "/run/flannel/subnet.env",
                    data_dir: str = "/var/lib/cni/networks", portmap: bool = False,
                    cni_version: str = "1.1.0") -> str:
    """The default conflist: weft alone at 1.1.0 (so runtimes send GC and STATUS).

    ``portmap`` appends the reference portmap plugin; Debian's (plugins 1.1.1)
    only speaks up to 1.0.0, so pair it with ``cni_version="1.0.0"`` there.
    """
    plugins: list[dict[str, object]] = [{
        "type": "weft",
        "subnetFile": subnet_file,
        "dataDir": data_dir,
        "bridge": "cni0",
        "hairpinMode": True,
        "isDefaultGateway": True,
    }]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    conflist = {"cniVersion": cni_version, "name": name, "plugins": plugins}
    return json.dumps(conflist, indent=2) + "\n"


def _write_atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)


def install(bin_dir: str, conf_dir: str | None, *, python: str | None = None,
            force: bool = False, subnet_file: str = "/run/flannel/subnet.env",
            data_dir: str = "/var/lib/cni/networks", portmap: bool = False,
            cni_version: str = "1.1.0", helper: bool = True) -> list[Path]:
    """Write ``<bin_dir>/weft`` and (unless present, or with ``force``) the conflist."""
    written = []
    bdir = Path(bin_dir)
    bdir.mkdir(parents=True, exist_ok=True)
    plugin = bdir / "weft"
    _write_atomic(plugin, render_launcher(python or preferred_python(), helper=helper), 0o755)
    written.append(plugin)
    if conf_dir is not None:
        cdir = Path(conf_dir)
        cdir.mkdir(parents=True, exist_ok=True)
        conf = cdir / CONFLIST_NAME
        if force or not conf.exists():
            _write_atomic(conf, render_conflist(subnet_file=subnet_file, data_dir=data_dir,
                                                portmap=portmap, cni_version=cni_version),
                          0o644)
            written.append(conf)
    return written


def _cmd_install(args: argparse.Namespace) -> int:
    try:
        paths = install(args.bin_dir, None if args.no_conflist else args.conf_dir,
                        python=args.python, force=args.force, helper=not args.no_helper,
                        subnet_file=args.subnet_file,
                        data_dir=args.data_dir, portmap=args.portmap,
                        cni_version=args.cni_version)
    except OSError as e:
        sys.stderr.write(f"weftctl cni install: {e}\n")
        return 1
    for p in paths:
        sys.stdout.write(f"wrote {p}\n")
    if args.conf_dir and not args.no_conflist and len(paths) == 1:
        sys.stdout.write(f"kept existing {Path(args.conf_dir) / CONFLIST_NAME} "
                         "(--force overwrites it)\n")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cni = subparsers.add_parser("cni", help="the weft CNI plugin")
    sub = cni.add_subparsers(dest="cni_command", metavar="COMMAND", required=True)
    p = sub.add_parser("install", help="install the weft plugin and a default conflist")
    p.add_argument("--bin-dir", default=DEFAULT_BIN_DIR, help="CNI plugin directory")
    p.add_argument("--conf-dir", default=DEFAULT_CONF_DIR, help="CNI config directory")
    p.add_argument("--subnet-file", default="/run/flannel/subnet.env",
                   help="flanneld's subnet.env, written into the conflist")
    p.add_argument("--data-dir", default="/var/lib/cni/networks",
                   help="IPAM data dir, written into the conflist")
    p.add_argument("--force", action="store_true", help="overwrite an existing conflist")
    p.add_argument("--python", default=None,
                   help="interpreter for the plugin (default: the system python of this "
                        "version if present, else the current one)")
    p.add_argument("--no-conflist", action="store_true", help="install the binary only")
    p.add_argument("--no-helper", action="store_true",
                   help="always run in-process; never start the resident helper")
    p.add_argument("--portmap", action="store_true",
                   help="chain the reference portmap plugin after weft")
    p.add_argument("--cni-version", default="1.1.0",
                   choices=["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
                   help="conflist cniVersion (Debian's portmap needs 1.0.0)")
    p.set_defaults(func=_cmd_install)
