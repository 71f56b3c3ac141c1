"""systemd units: rendering, `weftctl install-units`, and `systemd-analyze verify` on the result."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from overlay.cli import units_cmd

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).absolute().parent.parent


def _sections(text: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    return cp


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        pytest.param("/usr/local", "ExecStart=/usr/local/bin/flanneld", id="default-prefix"),
        pytest.param("/opt/weft/.venv", "ExecStart=/opt/weft/.venv/bin/flanneld", id="venv"),
        pytest.param("/opt/weft/", "ExecStart=/opt/weft/bin/flanneld", id="trailing-slash"),
    ],
)
def test_render_points_execstart_at_prefix(prefix: str, expected: str) -> None:
    text = (REPO / "systemd" / "flanneld.service").read_text()
    assert expected in units_cmd.render_unit(text, Path(prefix)).splitlines()


@pytest.mark.parametrize(
    ("unit", "key", "value"),
    [
        pytest.param("flanneld.service", "Type", "notify", id="flanneld-notify"),
        pytest.param("flanneld.service", "EnvironmentFile", "-/etc/weft/flanneld.env",
                     id="flanneld-envfile"),
        pytest.param("flanneld.service", "Wants", "network-online.target", id="flanneld-wants"),
        pytest.param("flanneld.service", "After",
                     "network-online.target etcd.service weft-store.service",
                     id="flanneld-after"),
        pytest.param("flanneld.service", "CapabilityBoundingSet", "CAP_NET_ADMIN CAP_NET_RAW",
                     id="flanneld-caps"),
        pytest.param("flanneld.service", "DeviceAllow", "/dev/net/tun rw",
                     id="flanneld-udp-tun"),
        pytest.param("flanneld.service", "RuntimeDirectory", "flannel",
                     id="flanneld-subnet-env-dir"),
        pytest.param("dnsd.service", "EnvironmentFile", "-/etc/weft/dnsd.env", id="dnsd-envfile"),
        pytest.param("dnsd.service", "Wants", "network-online.target", id="dnsd-wants"),
        pytest.param("dnsd.service", "After",
                     "network-online.target etcd.service weft-store.service", id="dnsd-after"),
        pytest.param("dnsd.service", "AmbientCapabilities", "CAP_NET_BIND_SERVICE",
                     id="dnsd-port-53"),
        pytest.param("dnsd.service", "DynamicUser", "yes", id="dnsd-unprivileged"),
        pytest.param("dnsd.service", "Type", "notify", id="dnsd-notify"),
        pytest.param("weft-store.service", "StateDirectory", "weft weft/store",
                     id="store-state-dir"),
    ],
)
def test_unit_settings(unit: str, key: str, value: str) -> None:
    cp = _sections((REPO / "systemd" / unit).read_text())
    found = {cp.get(section, key) for section in cp.sections() if cp.has_option(section, key)}
    assert value in found, f"{unit}: {key}={value} not set (have {found})"


@pytest.mark.parametrize("unit", units_cmd.DAEMON_UNITS)
def test_daemons_never_pull_in_a_store(unit: str) -> None:
    # enabling flanneld and dnsd on every host must not start a private store on each
    cp = _sections((REPO / "systemd" / unit).read_text())
    for key in ("Wants", "Requires", "BindsTo", "Requisite", "PartOf", "Upholds"):
        value = cp.get("Unit", key, fallback="")
        assert "weft-store" not in value and "etcd" not in value, f"{unit}: {key}={value}"


@pytest.mark.parametrize("unit", units_cmd.UNITS)
def test_documentation_is_the_readme_not_a_placeholder(unit: str, tmp_path: Path) -> None:
    units_cmd.install_units(REPO / "systemd", tmp_path, VENV, [unit])
    doc = _sections((tmp_path / unit).read_text()).get("Unit", "Documentation")
    assert doc.startswith("file:///") and doc.endswith("/README.md"), doc
    assert Path(doc.removeprefix("file://")).is_file(), doc


def test_install_units_cli_writes_the_daemons_and_the_store_only_when_asked(
        tmp_path: Path) -> None:
    weftctl = str(VENV / "bin" / "weftctl")
    dest = tmp_path / "system"
    proc = subprocess.run([weftctl, "install-units", "--dest", str(dest), "--prefix",
                           "/opt/weft"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(units_cmd.DAEMON_UNITS)
    proc = subprocess.run([weftctl, "install-units", "--dest", str(dest), "--prefix",
                           "/opt/weft", "--with-store"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(units_cmd.UNITS)
    for unit in units_cmd.UNITS:
        text = (dest / unit).read_text()
        assert "/usr/local/" not in text
        assert "ExecStart=/opt/weft/bin/" in text
        # /opt/weft holds no install here: the checkout's README stands in
        assert f"Documentation=file://{REPO}/README.md" in text
        assert oct((dest / unit).stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["bogus.service"], "unknown unit", id="unknown-unit"),
        pytest.param(["--from", "/nonexistent-weft-units"], "no unit directory", id="no-source"),
    ],
)
def test_install_units_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run([str(VENV / "bin" / "weftctl"), "install-units", "--dest",
                           str(tmp_path), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="needs systemd-analyze (Debian package systemd; make deps installs it)")
def test_rendered_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # Render with this venv's prefix so every ExecStart names a real executable.
    # A unit whose daemon has not landed yet still has its console script in the venv.
    written = units_cmd.install_units(REPO / "systemd", tmp_path, VENV, units_cmd.UNITS)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, written)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    # verify exits 0 on mere warnings (a bad Type= is only "ignoring"): warnings fail too.
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if any(u in line for u in units_cmd.UNITS)]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr


# Options that give a service a mount namespace of its own (systemd.exec(5)). The agent
# must have none: the netns bind mounts it makes under /run/netns must be visible to
# systemd (NetworkNamespacePath= of the units it runs) and to `ip netns` on the host.
MOUNT_NAMESPACE_OPTIONS = ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                           "PrivateMounts", "ProtectKernelTunables", "ProtectKernelModules",
                           "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
                           "ProcSubset", "ProtectHostname", "ReadOnlyPaths", "ReadWritePaths",
                           "InaccessiblePaths", "TemporaryFileSystem", "BindPaths",
                           "BindReadOnlyPaths", "MountFlags", "DynamicUser", "RootDirectory",
                           "RootImage", "ProtectClock")


def test_agent_unit_shares_the_hosts_mount_namespace() -> None:
    service = _sections((REPO / "systemd" / "weft-agent.service").read_text())["Service"]
    assert [k for k in MOUNT_NAMESPACE_OPTIONS if k in service] == []


# Highest `systemd-analyze security` exposure each unit may score (0 = locked down,
# 10 = unsafe). dnsd's goal is <= 4.0; flanneld runs as root with CAP_NET_ADMIN (the
# data path), the store as root without capabilities. The agent runs arbitrary units
# (as child processes when systemd is not PID 1), creates network namespaces and execs
# CNI plugins: root with every capability is its job, and no mount namespace of its own
# (see test_agent_unit_shares_the_hosts_mount_namespace): seccomp filters are its hardening.
EXPOSURE_LIMITS = {"dnsd.service": 4.0, "flanneld.service": 4.0, "weft-store.service": 4.0,
                   "weft-agent.service": 8.0}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="needs systemd-analyze (Debian package systemd; make deps installs it)")
@pytest.mark.parametrize("unit", units_cmd.UNITS)
def test_rendered_units_pass_systemd_analyze_security(tmp_path: Path, unit: str) -> None:
    (written,) = units_cmd.install_units(REPO / "systemd", tmp_path, VENV, [unit])
    # --offline=yes (systemd >= 250) scores the unit file itself, no running manager
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                           str(written)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= EXPOSURE_LIMITS[unit], proc.stdout
