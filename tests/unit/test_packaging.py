"""What ships with weft: the license text pyproject names, and --version on every executable."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from overlay.version import version_text

REPO = Path(__file__).resolve().parents[2]


def test_license_file_is_the_apache_2_text_pyproject_names() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert meta["license"] == {"text": "Apache-2.0"}
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


@pytest.mark.parametrize(
    ("argv", "prefix"),
    [
        pytest.param(["weftctl", "--version"], "weftctl 0.", id="weftctl"),
        pytest.param(["weft", "--version"], "CNI weft plugin: weft 0.", id="cni-plugin"),
        pytest.param(["dnsd", "--version"], "dnsd 0.", id="dnsd"),
        pytest.param(["dnsd", "-version"], "dnsd 0.", id="dnsd-skydns-spelling"),
        pytest.param(["flanneld", "--version"], "0.", id="flanneld-bare-as-flannel"),
        pytest.param(["flanneld", "-version"], "0.", id="flanneld-one-dash"),
    ],
)
def test_every_executable_answers_version(argv: list[str], prefix: str) -> None:
    exe = Path(sys.executable).absolute().parent / argv[0]
    proc = subprocess.run([str(exe), *argv[1:]], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(prefix), proc.stdout + proc.stderr
    assert version_text("x").split()[1] in proc.stdout


@pytest.mark.parametrize("exe", ["weftctl", "dnsd", "flanneld"])
def test_a_bad_log_format_is_refused_clearly(exe: str) -> None:
    path = Path(sys.executable).absolute().parent / exe
    argv = [str(path), "network", "get"] if exe == "weftctl" else [str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "WEFT_LOG_FORMAT": "xml"})
    assert proc.returncode == 2, proc.stderr
    assert "'xml': must be one of text, json" in proc.stderr
