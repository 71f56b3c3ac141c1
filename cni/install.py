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
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cni.netconf import SUPPORTED_VERSIONS, version_key

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
    """The conflist: weft, then portmap if asked, at ``cni_version`` (pure).

    weft alone speaks 1.1.0 (so runtimes send GC and STATUS); Debian's portmap
    (plugins 1.1.1) only speaks up to 1.0.0 (``install`` asks each plugin).
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


class InstallError(Exception):
    """The conflist cannot be written as asked; ``plugin`` names the plugin at fault."""

    def __init__(self, plugin: str, reason: str) -> None:
        super().__init__(f"{plugin}: {reason}")
        self.plugin = plugin


def plugin_versions(binary: Path, timeout: float = 10.0) -> tuple[str, ...]:
    """Ask a CNI plugin which versions it speaks (``CNI_COMMAND=VERSION``), as a runtime does."""
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    try:
        proc = subprocess.run([str(binary)], input=b'{"cniVersion":"0.3.0"}', env=env,
                              capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(binary.name, f"{binary} does not answer VERSION: {exc}") from None
    try:
        obj = json.loads(proc.stdout)
        versions = obj["supportedVersions"]
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise TypeError(versions)
    except (ValueError, KeyError, TypeError):
        raise InstallError(binary.name, f"{binary} answered VERSION with "
                           f"{proc.stdout[:200]!r} (exit {proc.returncode}), not "
                           "supportedVersions") from None
    return tuple(versions)


def highest_common_version(supported: Sequence[Sequence[str]]) -> str | None:
    """The highest version every plugin of a list supports, or None (pure)."""
    common = set(supported[0]) if supported else set()
    for versions in supported[1:]:
        common &= set(versions)
    return max(common, key=version_key) if common else None


def choose_cni_version(plugins: Mapping[str, Sequence[str]], asked: str | None) -> str:
    """``asked`` if every plugin speaks it, else the highest they share (pure).

    ``plugins`` maps each plugin of the list to its supportedVersions.
    ``InstallError`` names a plugin that does not speak ``asked``, or the list
    when the plugins have no version in common.
    """
    if asked is not None:
        for name, versions in plugins.items():
            if asked not in versions:
                raise InstallError(name, f"does not support cniVersion {asked} (it speaks "
                                   f"{', '.join(versions)})")
        return asked
    best = highest_common_version(list(plugins.values()))
    if best is None:
        raise InstallError(" + ".join(plugins), "the plugins share no CNI version")
    return best


def _write_atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)


def install(bin_dir: str, conf_dir: str | None, *, python: str | None = None,
            force: bool = False, subnet_file: str = "/run/flannel/subnet.env",
            data_dir: str = "/var/lib/cni/networks", portmap: bool | None = None,
            cni_version: str | None = None, helper: bool = True) -> list[Path]:
    """Write ``<bin_dir>/weft`` and (unless present, or with ``force``) the conflist.

    ``portmap``: True chains ``<bin_dir>/portmap`` (it must be there), False never,
    None when it is there. ``cni_version`` None writes the highest version every
    plugin of the list answers to VERSION (Debian's portmap stops at 1.0.0).
    """
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
            pm = bdir / "portmap"
            if portmap is None:
                portmap = os.access(pm, os.X_OK)
            elif portmap and not os.access(pm, os.X_OK):
                raise InstallError("portmap", f"{pm} is not an executable (install the CNI "
                                   "reference plugins there, e.g. Debian's "
                                   "containernetworking-plugins, or pass --no-portmap)")
            versions = {"weft": plugin_versions(plugin)}  # also proves the launcher runs
            if portmap:
                versions["portmap"] = plugin_versions(pm)
            version = choose_cni_version(versions, cni_version)
            _write_atomic(conf, render_conflist(subnet_file=subnet_file, data_dir=data_dir,
                                                portmap=portmap, cni_version=version),
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
    except (OSError, InstallError) as e:
        sys.stderr.write(f"weftctl cni install: {e}\n")
        return 1
    for p in paths:
        sys.stdout.write(f"wrote {p}\n")
        if p.name == CONFLIST_NAME:
            conf = json.loads(p.read_text())
            sys.stdout.write(f"  cniVersion {conf['cniVersion']}, plugins "
                             f"{' -> '.join(pl['type'] for pl in conf['plugins'])}\n")
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
    pm = p.add_mutually_exclusive_group()
    pm.add_argument("--portmap", dest="portmap", action="store_true", default=None,
                    help="chain the reference portmap plugin after weft (it must be in "
                         "--bin-dir) [default: chained when <bin-dir>/portmap exists]")
    pm.add_argument("--no-portmap", dest="portmap", action="store_false",
                    help="never chain portmap (no hostPort mappings)")
    p.add_argument("--cni-version", default=None, choices=list(SUPPORTED_VERSIONS),
                   help="conflist cniVersion [default: the highest every plugin of the list "
                        "answers to CNI_COMMAND=VERSION, e.g. 1.0.0 with Debian's portmap]")
    p.set_defaults(func=_cmd_install)
