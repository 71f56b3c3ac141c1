"""systemd units: rendering, `weftctl install-units`, and `systemd-analyze verify` on the result."""

from __future__ import annotations

import configparser
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
        pytest.param("flanneld.service", "Wants", "network-online.target weft-store.service",
                     id="flanneld-wants"),
        pytest.param("flanneld.service", "After", "network-online.target weft-store.service",
                     id="flanneld-after"),
        pytest.param("dnsd.service", "EnvironmentFile", "-/etc/weft/dnsd.env", id="dnsd-envfile"),
        pytest.param("dnsd.service", "AmbientCapabilities", "CAP_NET_BIND_SERVICE",
                     id="dnsd-port-53"),
        pytest.param("weft-store.service", "StateDirectory", "weft", id="store-state-dir"),
    ],
)
def test_unit_settings(unit: str, key: str, value: str) -> None:
    cp = _sections((REPO / "systemd" / unit).read_text())
    found = {cp.get(section, key) for section in cp.sections() if cp.has_option(section, key)}
    assert value in found, f"{unit}: {key}={value} not set (have {found})"


def test_install_units_cli_writes_every_unit(tmp_path: Path) -> None:
    dest = tmp_path / "system"
    proc = subprocess.run([str(VENV / "bin" / "weftctl"), "install-units", "--dest", str(dest),
                           "--prefix", "/opt/weft"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(units_cmd.UNITS)
    for unit in units_cmd.UNITS:
        text = (dest / unit).read_text()
        assert "/usr/local/bin/" not in text
        assert "/opt/weft/bin/" in text
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
    written = units_cmd.install_units(REPO / "systemd", tmp_path, VENV)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, written)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    # verify exits 0 on mere warnings (a bad Type= is only "ignoring"): warnings fail too.
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if any(u in line for u in units_cmd.UNITS)]
    assert proc.returncode == 0 and not complaints, proc.stdout + proc.stderr
