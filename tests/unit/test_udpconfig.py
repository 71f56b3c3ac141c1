"""numpy stays out of every process but the udp forwarder's, and a CPU numpy 2 cannot run
on is refused by name instead of dying with SIGILL."""

from __future__ import annotations

import subprocess
import sys

from overlay.backend.udpconfig import X86_64_V2, missing_cpu_features

NEHALEM = "processor\t: 0\nflags\t\t: fpu sse sse2 ssse3 cx16 sse4_1 sse4_2 popcnt lahf_lm\n"
QEMU64 = "processor\t: 0\nflags\t\t: fpu sse sse2 pni cx16 hypervisor lahf_lm\n"


def test_x86_64_v2_is_required_on_x86_64_only() -> None:
    assert missing_cpu_features(NEHALEM, "x86_64") == []
    assert missing_cpu_features(QEMU64, "x86_64") == list(X86_64_V2)
    assert missing_cpu_features(QEMU64, "aarch64") == []
    assert missing_cpu_features("processor\t: 0\n", "x86_64") == []  # nothing known


def test_weftctl_flanneld_and_udp_config_never_import_numpy() -> None:
    code = ("import sys\n"
            "import overlay.cli.weftctl, overlay.cli.flanneld, overlay.daemon, dnsd.cli\n"
            "from overlay.backend.registry import parse_backend\n"
            "parse_backend('udp', {'Port': 8285})\n"
            "print('numpy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False", out.stderr
