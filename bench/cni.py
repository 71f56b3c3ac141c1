"""CNI benchmark: the weft plugin vs Debian's bridge + host-local, same run, same host netns.

Measures, exec'ing each plugin as a runtime does (env + stdin, result on stdout)
from a driver process that itself runs inside one scratch host namespace:

* ADD and DEL latency, p50/p99 over 50 containers (weft and reference
  interleaved container by container, so machine load hits both alike);
* wall time of 100 ADDs started at once (then 100 DELs, also timed).

Goals (issue 4): weft ADD p50 <= 2x the reference; 100 parallel ADDs <= 1x.
Run: ``.venv/bin/python bench/cni.py`` (root; about a minute). Everything lives
in testbed namespaces and a tmp dir that are removed on exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REF_DIR = "/usr/lib/cni"
N_SEQ = 50
N_PAR = 100


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def _inner(spec_path: str) -> int:
    """Runs inside the host namespace: exec plugins, print timings as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    base_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "CNI_IFNAME": "eth0"}

    def env(kind: str, cmd: str, cid: str, ns: str) -> dict[str, str]:
        return {**base_env, "CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": ns,
                "CNI_PATH": spec[kind]["path"]}

    def run(kind: str, cmd: str, cid: str, ns: str) -> float:
        t0 = time.perf_counter()
        p = subprocess.run([spec[kind]["bin"]], input=spec[kind]["conf"].encode(),
                           env=env(kind, cmd, cid, ns), capture_output=True)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"{kind} {cmd} {cid} failed: {p.stdout!r} {p.stderr!r}")
        return dt

    def parallel(kind: str, cmd: str, nss: list[str]) -> float:
        t0 = time.perf_counter()
        procs = []
        for i, ns in enumerate(nss):
            p = subprocess.Popen([spec[kind]["bin"]], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=env(kind, cmd, f"par{i}", ns))
            procs.append(p)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(spec[kind]["conf"].encode())
            p.stdin.close()
        for p in procs:
            out, err = p.stdout.read(), p.stderr.read()  # type: ignore[union-attr]
            if p.wait() != 0:
                raise SystemExit(f"{kind} parallel {cmd} failed: {out!r} {err!r}")
        return time.perf_counter() - t0

    res: dict[str, dict[str, list[float] | float]] = {"weft": {}, "ref": {}}
    seq = spec["seq"]
    for kind in ("weft", "ref"):  # warm page cache / pyc, not measured
        run(kind, "ADD", "warm", seq[kind][0])
        run(kind, "DEL", "warm", seq[kind][0])
    for cmd in ("ADD", "DEL"):
        lat: dict[str, list[float]] = {"weft": [], "ref": []}
        for i in range(len(seq["weft"])):
            order = ("weft", "ref") if i % 2 == 0 else ("ref", "weft")
            for kind in order:
                lat[kind].append(run(kind, cmd, f"seq{i}", seq[kind][i]))
        for kind in ("weft", "ref"):
            res[kind][cmd] = lat[kind]
    for kind in ("ref", "weft"):
        res[kind]["par_add"] = parallel(kind, "ADD", spec["par"][kind])
        res[kind]["par_del"] = parallel(kind, "DEL", spec["par"][kind])
    print(json.dumps(res))
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--inner":
        return _inner(sys.argv[2])
    if os.geteuid() != 0:
        print("bench/cni.py needs root (network namespaces)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from cni.install import install
    from overlay.testbed import open_testbed

    with tempfile.TemporaryDirectory(prefix="weft-bench-cni-") as tmpd, \
            open_testbed(1) as tb:
        tmp = Path(tmpd)
        weft_bin = install(str(tmp / "bin"), None)[0]  # as `weftctl cni install` does
        (tmp / "subnet.env").write_text(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.5.1/24\n"
            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
        weft_conf = {"cniVersion": "1.0.0", "name": "weftnet", "type": "weft",
                     "subnetFile": str(tmp / "subnet.env"), "dataDir": str(tmp / "weft-ipam")}
        ref_conf = {"cniVersion": "1.0.0", "name": "refnet", "type": "bridge",
                    "bridge": "cni1", "isGateway": True, "isDefaultGateway": True,
                    "hairpinMode": True, "mtu": 1450, "ipMasq": False,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.245.5.0/24"}]],
                             "routes": [{"dst": "10.244.0.0/16"}],
                             "dataDir": str(tmp / "ref-ipam")}}
        t0 = time.monotonic()
        seq = {k: [tb.add_container("h1", f"{k[0]}s{i}").netns_path for i in range(N_SEQ)]
               for k in ("weft", "ref")}
        par = {k: [tb.add_container("h1", f"{k[0]}p{i}").netns_path for i in range(N_PAR)]
               for k in ("weft", "ref")}
        print(f"setup: {2 * (N_SEQ + N_PAR)} container namespaces in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        spec = {"weft": {"bin": str(weft_bin), "path": str(weft_bin.parent),
                         "conf": json.dumps(weft_conf)},
                "ref": {"bin": f"{REF_DIR}/bridge", "path": REF_DIR,
                        "conf": json.dumps(ref_conf)},
                "seq": seq, "par": par}
        (tmp / "spec.json").write_text(json.dumps(spec))
        proc = tb.exec(tb.hosts["h1"].netns, [sys.executable, str(Path(__file__).resolve()),
                                               "--inner", str(tmp / "spec.json")], timeout=170)
        res = json.loads(proc.stdout)
    ms = 1000.0
    w, r = res["weft"], res["ref"]
    print(f"{'figure':32} {'weft':>10} {'reference':>10} {'ratio':>7}")
    for cmd in ("ADD", "DEL"):
        for p in (50, 99):
            wv, rv = pct(w[cmd], p) * ms, pct(r[cmd], p) * ms
            print(f"{cmd + f' latency p{p} (ms, n={N_SEQ})':32} {wv:10.1f} {rv:10.1f} "
                  f"{wv / rv:6.2f}x")
    for key, label in (("par_add", f"{N_PAR} parallel ADDs wall (s)"),
                       ("par_del", f"{N_PAR} parallel DELs wall (s)")):
        print(f"{label:32} {w[key]:10.2f} {r[key]:10.2f} {w[key] / r[key]:6.2f}x")
    print("reference = Debian containernetworking-plugins bridge + host-local "
          "(/usr/lib/cni), same host namespace, same run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
