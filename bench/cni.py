"""CNI benchmark: the weft plugin vs Debian's bridge + host-local, same run, same host netns.

Measures, exec'ing each plugin as a runtime does (env + stdin, result on stdout)
from a driver process that itself runs inside one scratch host namespace:

* ADD and DEL latency (DEL with the ADD result as prevResult, as libcni sends it),
  p50/p99 over 50 containers (weft and reference
  interleaved container by container, so machine load hits both alike);
* wall time of 100 ADDs started at once, then 100 DELs (median of 3 rounds,
  each round running every kind back to back in rotated order; the per-round
  ratios are printed too, since the machine's load hits both sides of one round alike);

for weft as installed (a resident helper serves every exec after the first)
and weft installed with ``--no-helper`` (each exec does all the work itself);

* dual-stack ADD and DEL latency p50/p99 (issue 17): weft on a dual-stack
  subnet.env (FLANNEL_SUBNET + FLANNEL_IPV6_SUBNET) vs the reference bridge +
  host-local with ``ranges`` for both families and both cluster routes, as
  flannel's CNI configures them, interleaved with the IPv4 rows.

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
PAR_ROUNDS = 3  # parallel figures are the median of this many rounds, order rotated
# ref: Debian bridge + host-local; weft: as installed (resident helper after the first
# exec); weft-inproc: installed with --no-helper (every exec does all the work itself)
KINDS = ("ref", "weft", "weft-inproc")
# dual-stack (IPv4 + IPv6), sequential latency only: reference and weft as installed
DS_KINDS = ("ref-ds", "weft-ds")
SEQ_KINDS = KINDS + DS_KINDS


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

    results: dict[tuple[str, str], bytes] = {}

    def conf_for(kind: str, cmd: str, cid: str) -> bytes:
        """As libcni: DEL carries the ADD's result as prevResult."""
        if cmd == "DEL" and (kind, cid) in results:
            conf = json.loads(spec[kind]["conf"])
            conf["prevResult"] = json.loads(results.pop((kind, cid)))
            return json.dumps(conf).encode()
        return str(spec[kind]["conf"]).encode()

    def run(kind: str, cmd: str, cid: str, ns: str) -> float:
        stdin = conf_for(kind, cmd, cid)
        t0 = time.perf_counter()
        p = subprocess.run([spec[kind]["bin"]], input=stdin,
                           env=env(kind, cmd, cid, ns), capture_output=True)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(f"{kind} {cmd} {cid} failed: {p.stdout!r} {p.stderr!r}")
        if cmd == "ADD":
            results[(kind, cid)] = p.stdout
        return dt

    def parallel(kind: str, cmd: str, nss: list[str]) -> float:
        stdins = [conf_for(kind, cmd, f"par{i}") for i in range(len(nss))]
        t0 = time.perf_counter()
        procs = []
        for i, ns in enumerate(nss):
            p = subprocess.Popen([spec[kind]["bin"]], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=env(kind, cmd, f"par{i}", ns))
            procs.append(p)
        for p, stdin in zip(procs, stdins, strict=True):
            assert p.stdin is not None
            p.stdin.write(stdin)
            p.stdin.close()
        outs = []
        for p in procs:
            out, err = p.stdout.read(), p.stderr.read()  # type: ignore[union-attr]
            if p.wait() != 0:
                raise SystemExit(f"{kind} parallel {cmd} failed: {out!r} {err!r}")
            outs.append(out)
        dt = time.perf_counter() - t0
        if cmd == "ADD":
            results.update(((kind, f"par{i}"), out) for i, out in enumerate(outs))
        return dt

    res: dict[str, dict[str, list[float] | float]] = {k: {} for k in SEQ_KINDS}
    seq = spec["seq"]
    for kind in SEQ_KINDS:  # warm page cache / pyc and start weft's helper; not measured
        run(kind, "ADD", "warm", seq[kind][0])
        run(kind, "DEL", "warm", seq[kind][0])
    time.sleep(0.5)
    for cmd in ("ADD", "DEL"):
        lat: dict[str, list[float]] = {k: [] for k in SEQ_KINDS}
        for i in range(len(seq["weft"])):
            shift = i % len(SEQ_KINDS)  # rotate the order so load hits every kind alike
            for kind in SEQ_KINDS[shift:] + SEQ_KINDS[:shift]:
                lat[kind].append(run(kind, cmd, f"seq{i}", seq[kind][i]))
        for kind in SEQ_KINDS:
            res[kind][cmd] = lat[kind]
    rounds: dict[str, dict[str, list[float]]] = {k: {"ADD": [], "DEL": []} for k in KINDS}
    for rnd in range(PAR_ROUNDS):  # the same namespaces each round: DEL leaves them clean
        for kind in KINDS[rnd % len(KINDS):] + KINDS[:rnd % len(KINDS)]:
            for cmd in ("ADD", "DEL"):
                rounds[kind][cmd].append(parallel(kind, cmd, spec["par"][kind]))
    for kind in KINDS:
        res[kind]["rounds"] = rounds[kind]  # type: ignore[assignment]
        res[kind]["par_add"] = sorted(rounds[kind]["ADD"])[PAR_ROUNDS // 2]
        res[kind]["par_del"] = sorted(rounds[kind]["DEL"])[PAR_ROUNDS // 2]
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
        inproc_bin = install(str(tmp / "bin-inproc"), None, helper=False)[0]
        (tmp / "subnet2.env").write_text(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.6.1/24\n"
            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
        inproc_conf = {"cniVersion": "1.0.0", "name": "weftnet2", "type": "weft",
                       "bridge": "cni2", "subnetFile": str(tmp / "subnet2.env"),
                       "dataDir": str(tmp / "weft2-ipam")}
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
        (tmp / "subnet3.env").write_text(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n"
            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
        ds_conf = {"cniVersion": "1.0.0", "name": "weftnet3", "type": "weft",
                   "bridge": "cni3", "subnetFile": str(tmp / "subnet3.env"),
                   "dataDir": str(tmp / "weft3-ipam")}
        ref_ds_conf = {"cniVersion": "1.0.0", "name": "refnet4", "type": "bridge",
                       "bridge": "cni4", "isGateway": True, "isDefaultGateway": True,
                       "hairpinMode": True, "mtu": 1450, "ipMasq": False,
                       "ipam": {"type": "host-local",
                                "ranges": [[{"subnet": "10.245.7.0/24"}],
                                           [{"subnet": "fd00:10:245:7::/64"}]],
                                "routes": [{"dst": "10.244.0.0/16"},
                                           {"dst": "fd00:10:244::/56"}],
                                "dataDir": str(tmp / "ref4-ipam")}}
        t0 = time.monotonic()
        seq = {k: [tb.add_container("h1", f"{j}s{i}").netns_path for i in range(N_SEQ)]
               for j, k in enumerate(SEQ_KINDS)}
        par = {k: [tb.add_container("h1", f"{j}p{i}").netns_path for i in range(N_PAR)]
               for j, k in enumerate(KINDS)}
        print(f"setup: {len(SEQ_KINDS) * N_SEQ + len(KINDS) * N_PAR} container namespaces in "
              f"{time.monotonic() - t0:.1f} s", flush=True)
        spec = {"weft": {"bin": str(weft_bin), "path": str(weft_bin.parent),
                         "conf": json.dumps(weft_conf)},
                "weft-inproc": {"bin": str(inproc_bin), "path": str(inproc_bin.parent),
                                "conf": json.dumps(inproc_conf)},
                "ref": {"bin": f"{REF_DIR}/bridge", "path": REF_DIR,
                        "conf": json.dumps(ref_conf)},
                "weft-ds": {"bin": str(weft_bin), "path": str(weft_bin.parent),
                            "conf": json.dumps(ds_conf)},
                "ref-ds": {"bin": f"{REF_DIR}/bridge", "path": REF_DIR,
                           "conf": json.dumps(ref_ds_conf)},
                "seq": seq, "par": par}
        (tmp / "spec.json").write_text(json.dumps(spec))
        proc = tb.exec(tb.hosts["h1"].netns, [sys.executable, str(Path(__file__).resolve()),
                                               "--inner", str(tmp / "spec.json")], timeout=300)
        res = json.loads(proc.stdout)
    ms = 1000.0
    r = res["ref"]
    print(f"{'figure':36} {'reference':>10} {'weft':>16} {'weft --no-helper':>18}")
    for cmd in ("ADD", "DEL"):
        for p in (50, 99):
            rv = pct(r[cmd], p) * ms
            vals = [pct(res[k][cmd], p) * ms for k in KINDS[1:]]
            cells = "".join(f"{v:9.1f} ({v / rv:4.2f}x)" for v in vals)
            print(f"{cmd + f' latency p{p} (ms, n={N_SEQ})':36} {rv:10.1f} {cells}")
    for key, label in (("par_add", f"{N_PAR} parallel ADDs wall (s, median)"),
                       ("par_del", f"{N_PAR} parallel DELs wall (s, median)")):
        cells = "".join(f"{res[k][key]:9.2f} ({res[k][key] / r[key]:4.2f}x)" for k in KINDS[1:])
        print(f"{label:36} {r[key]:10.2f} {cells}")
    for cmd in ("ADD", "DEL"):  # rounds are same-time comparisons: load hits both alike
        cells = ""
        for k in KINDS[1:]:
            ratios = [w / f for w, f in zip(res[k]["rounds"][cmd], r["rounds"][cmd],
                                            strict=True)]
            cells += f"{'/'.join(f'{x:.2f}' for x in ratios):>18}"
        print(f"{f'  per-round {cmd} ratio (x)':36} {'':>10}{cells}")
    rd = res["ref-ds"]
    print(f"{'dual-stack (IPv4 + IPv6)':36} {'reference':>10} {'weft':>16}")
    for cmd in ("ADD", "DEL"):
        for p in (50, 99):
            rv = pct(rd[cmd], p) * ms
            v = pct(res["weft-ds"][cmd], p) * ms
            print(f"{cmd + f' latency p{p} (ms, n={N_SEQ})':36} {rv:10.1f} "
                  f"{v:9.1f} ({v / rv:4.2f}x)")
    print("reference = Debian containernetworking-plugins bridge + host-local "
          "(/usr/lib/cni), same host namespace, same run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
