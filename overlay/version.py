"""weft's version, one place for every executable's ``--version`` and the CNI "about" text.

The version is the installed distribution's (``importlib.metadata``); a checkout
run without an install (the CNI launcher's ``-I -S`` interpreter sees no
site-packages) reads it from the checkout's ``pyproject.toml``. Imported only
on the ``--version`` paths: nothing here is on a daemon's or the plugin's hot path.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DIST = "weft"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def weft_version() -> str:
    """``0.1.0``, or ``unknown`` when neither the metadata nor pyproject.toml is there."""
    from importlib import metadata

    try:
        return metadata.version(DIST)
    except metadata.PackageNotFoundError:
        pass
    try:
        text = (PROJECT_ROOT / "pyproject.toml").read_text()
    except OSError:
        return "unknown"
    match = re.search(r'(?m)^version\s*=\s*"([^"]+)"', text)
    return match.group(1) if match else "unknown"


def version_text(prog: str) -> str:
    """The one line every weft executable prints for ``--version``."""
    py = ".".join(map(str, sys.version_info[:3]))
    return f"{prog} {weft_version()} (weft; Python {py})"
