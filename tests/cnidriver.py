"""A small CNI runtime for tests: libcni's conflist behaviour, exec'ing plugins for real.

What it copies from libcni (``libcni/api.go``):

* ADD runs the plugins in order; each gets the conflist's ``name`` and
  ``cniVersion`` injected, ``runtimeConfig`` built from the capabilities it
  declares, and (from the second plugin on) the previous plugin's result as
  ``prevResult``. The final result is cached in
  ``<cache_dir>/results/<net>-<cid>-<ifname>``.
* DEL runs the plugins in reverse, each with the cached result as
  ``prevResult`` (0.4.0+), and removes the cache entry; a failure stops it.
* CHECK (0.4.0+, unless ``disableCheck``) runs in order with the cached result.
* GC (1.1.0+): first DELs every cached attachment not in the valid list, then
  sends GC with ``cni.dev/valid-attachments`` to every plugin, continuing past
  errors. STATUS (1.1.0+) asks every plugin.

Plugins are exec'd as a runtime does (env vars + stdin, result on stdout),
inside the host network namespace ``host_netns`` via ``ip netns exec``.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from overlay.testbed import Testbed


def vkey(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


class CniFailure(Exception):
    """A plugin exited non-zero; carries its parsed error JSON."""

    def __init__(self, plugin: str, command: str, rc: int, error: dict[str, Any],
                 stderr: str) -> None:
        super().__init__(f"{plugin} {command} failed (rc={rc}): {error} {stderr.strip()}")
        self.plugin = plugin
        self.command = command
        self.rc = rc
        self.error = error
        self.stderr = stderr

    @property
    def code(self) -> int:
        return int(self.error.get("code", -1))


@dataclass
class Exec:
    rc: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout) if self.stdout.strip() else {}


@dataclass
class CniDriver:
    conflist: dict[str, Any]
    cni_path: list[str]
    host_netns: str
    cache_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    timeout: float = 30

    @property
    def name(self) -> str:
        return str(self.conflist["name"])

    @property
    def version(self) -> str:
        return str(self.conflist["cniVersion"])

    def find(self, plugin_type: str) -> str:
        for d in self.cni_path:
            p = Path(d, plugin_type)
            if p.exists():
                return str(p)
        raise FileNotFoundError(f"plugin {plugin_type} not in {self.cni_path}")

    # -- raw exec -----------------------------------------------------------

    def exec_raw(self, plugin_type: str, env: dict[str, str], stdin: bytes) -> Exec:
        full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "CNI_PATH": ":".join(self.cni_path), **self.extra_env, **env}
        full = {k: v for k, v in full.items() if v is not None}
        proc = subprocess.run(["ip", "netns", "exec", self.host_netns, self.find(plugin_type)],
                              input=stdin, capture_output=True, env=full, timeout=self.timeout)
        return Exec(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def popen(self, plugin_type: str, env: dict[str, str], conf: dict[str, Any],
              ) -> subprocess.Popen[bytes]:
        full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "CNI_PATH": ":".join(self.cni_path), **self.extra_env, **env}
        proc = subprocess.Popen(["ip", "netns", "exec", self.host_netns,
                                 self.find(plugin_type)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(conf).encode())
        proc.stdin.close()
        return proc

    @staticmethod
    def collect(proc: subprocess.Popen[bytes], timeout: float = 120) -> Exec:
        """Wait for a ``popen``'d plugin; its stdin is already closed."""
        assert proc.stdout is not None and proc.stderr is not None
        out = proc.stdout.read()
        err = proc.stderr.read()
        proc.wait(timeout)
        proc.stdout.close()
        proc.stderr.close()
        return Exec(proc.returncode, out.decode(), err.decode())

    def plugin_conf(self, plugin: dict[str, Any], cap_args: dict[str, Any] | None,
                    prev: dict[str, Any] | None, extra: dict[str, Any] | None = None,
                    ) -> dict[str, Any]:
        conf = dict(plugin)
        conf["name"] = self.name
        conf["cniVersion"] = self.version
        runtime = {cap: (cap_args or {})[cap] for cap, on in plugin.get("capabilities", {}).items()
                   if on and cap in (cap_args or {})}
        if runtime:
            conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        conf.update(extra or {})
        return conf

    def invoke(self, plugin: dict[str, Any], command: str, conf: dict[str, Any],
               cid: str = "", netns: str = "", ifname: str = "", args: str = "",
               ) -> dict[str, Any]:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
               "CNI_IFNAME": ifname, "CNI_ARGS": args}
        res = self.exec_raw(plugin["type"], {k: v for k, v in env.items() if v}, json.dumps(
            conf).encode())
        if res.rc != 0:
            try:
                err = res.json()
            except ValueError:
                err = {"raw": res.stdout}
            raise CniFailure(plugin["type"], command, res.rc, err, res.stderr)
        return res.json()

    # -- cache --------------------------------------------------------------

    def cache_path(self, cid: str, ifname: str) -> Path:
        return self.cache_dir / "results" / f"{self.name}-{cid}-{ifname}"

    def cached(self, cid: str, ifname: str) -> dict[str, Any] | None:
        p = self.cache_path(cid, ifname)
        if not p.exists():
            return None
        data: dict[str, Any] = json.loads(p.read_text())
        return data

    def cached_attachments(self) -> list[tuple[str, str, str]]:
        out = []
        d = self.cache_dir / "results"
        if d.exists():
            for p in d.iterdir():
                data = json.loads(p.read_text())
                out.append((data["containerId"], data["ifName"], data["netns"]))
        return out

    # -- libcni operations -------------------------------------------------

    def add(self, cid: str, netns: str, ifname: str = "eth0", args: str = "",
            cap_args: dict[str, Any] | None = None) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin in self.conflist["plugins"]:
            conf = self.plugin_conf(plugin, cap_args, prev)
            prev = self.invoke(plugin, "ADD", conf, cid, netns, ifname, args)
        assert prev is not None
        p = self.cache_path(cid, ifname)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"kind": "cniCacheV1", "containerId": cid, "ifName": ifname,
                                 "netns": netns, "result": prev, "capArgs": cap_args or {},
                                 "args": args}))
        return prev

    def delete(self, cid: str, netns: str, ifname: str = "eth0", args: str = "") -> None:
        cached = self.cached(cid, ifname)
        prev = cached["result"] if cached else None
        cap_args = cached["capArgs"] if cached else None
        for plugin in reversed(self.conflist["plugins"]):
            use_prev = prev if vkey(self.version) >= (0, 4, 0) else None
            conf = self.plugin_conf(plugin, cap_args, use_prev)
            self.invoke(plugin, "DEL", conf, cid, netns, ifname, args)
        self.cache_path(cid, ifname).unlink(missing_ok=True)

    def check(self, cid: str, netns: str, ifname: str = "eth0", args: str = "") -> None:
        if vkey(self.version) < (0, 4, 0) or self.conflist.get("disableCheck"):
            return
        cached = self.cached(cid, ifname)
        if cached is None:
            raise LookupError(f"no cached result for {cid}/{ifname}")
        for plugin in self.conflist["plugins"]:
            conf = self.plugin_conf(plugin, cached["capArgs"], cached["result"])
            self.invoke(plugin, "CHECK", conf, cid, netns, ifname, args)

    def gc(self, valid: list[tuple[str, str]] | None) -> list[CniFailure]:
        """libcni's GCNetworkList; ``valid`` None is a GC without GCArgs (``cnitool gc``):
        every cached attachment is DELeted and the plugins get no valid-attachments key."""
        if vkey(self.version) < (1, 1, 0):
            return []
        errors: list[CniFailure] = []
        for cid, ifname, netns in self.cached_attachments():
            if (cid, ifname) not in (valid or []):
                try:
                    self.delete(cid, netns, ifname)
                except CniFailure as e:
                    errors.append(e)
        extra = {} if valid is None else {"cni.dev/valid-attachments": [
            {"containerID": c, "ifname": i} for c, i in valid]}
        for plugin in self.conflist["plugins"]:
            conf = self.plugin_conf(plugin, None, None, extra)
            try:
                self.invoke(plugin, "GC", conf)
            except CniFailure as e:
                errors.append(e)
        return errors

    def status(self) -> None:
        if vkey(self.version) < (1, 1, 0):
            return
        for plugin in self.conflist["plugins"]:
            self.invoke(plugin, "STATUS", self.plugin_conf(plugin, None, None))

    def version_info(self, plugin_type: str, version: str) -> dict[str, Any]:
        res = self.exec_raw(plugin_type, {"CNI_COMMAND": "VERSION"},
                            json.dumps({"cniVersion": version}).encode())
        assert res.rc == 0, res
        return res.json()


# -- result shape validators (per spec version) -------------------------------

def _is_mac(s: object) -> bool:
    return isinstance(s, str) and len(s) == 17 and all(
        len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in s.split(":"))


def validate_result(version: str, result: dict[str, Any]) -> None:
    """Assert ``result`` has exactly the shape SPEC.md gives for ``version``."""
    import ipaddress

    assert result.get("cniVersion") == version, result
    allowed_top = {"cniVersion", "interfaces", "ips", "routes", "dns"}
    assert set(result) <= allowed_top, set(result) - allowed_top
    if_keys = {"name", "mac", "sandbox"}
    if vkey(version) >= (1, 1, 0):
        if_keys |= {"mtu", "socketPath", "pciID"}
    ifs = result.get("interfaces", [])
    assert isinstance(ifs, list)
    for itf in ifs:
        assert set(itf) <= if_keys, (version, itf)
        assert isinstance(itf["name"], str) and itf["name"]
        assert _is_mac(itf.get("mac", "00:00:00:00:00:00")), itf
        if "mtu" in itf:
            assert isinstance(itf["mtu"], int)
    for ip in result.get("ips", []):
        keys = {"address", "gateway", "interface"}
        if vkey(version) < (1, 0, 0):
            assert ip.get("version") in ("4", "6"), ip
            keys.add("version")
        else:
            assert "version" not in ip, ip
        assert set(ip) <= keys, ip
        ipaddress.ip_interface(ip["address"])
        if "gateway" in ip:
            ipaddress.ip_address(ip["gateway"])
        if "interface" in ip:
            assert 0 <= ip["interface"] < len(ifs)
    route_keys = {"dst", "gw"}
    if vkey(version) >= (1, 1, 0):
        route_keys |= {"mtu", "advmss", "priority", "table", "scope"}
    for r in result.get("routes", []):
        assert set(r) <= route_keys, r
        ipaddress.ip_network(r["dst"])
        if "gw" in r:
            ipaddress.ip_address(r["gw"])
    dns = result.get("dns", {})
    assert set(dns) <= {"nameservers", "domain", "search", "options"}, dns


def validate_error(error: dict[str, Any], code: int) -> None:
    assert set(error) == {"cniVersion", "code", "msg", "details"}, error
    assert error.get("code") == code, error
    assert isinstance(error.get("msg"), str) and error["msg"], error


# -- a host namespace with weft installed ---------------------------------------

WEFT_ROOT = Path(__file__).resolve().parent.parent


def write_subnet_env(path: Path, subnet: str | None = "10.244.5.1/24",
                     network: str = "10.244.0.0/16", mtu: int = 1450,
                     ipmasq: bool = True, subnet6: str | None = None,
                     network6: str = "fd00:10:244::/56") -> None:
    """subnet.env as flanneld writes it: ``subnet`` None is IPv6-only, ``subnet6``
    (e.g. ``fd00:10:244:5::1/64``) adds the IPv6 pair."""
    text = f"FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={subnet}\n" if subnet else ""
    if subnet6:
        text += f"FLANNEL_IPV6_NETWORK={network6}\nFLANNEL_IPV6_SUBNET={subnet6}\n"
    path.write_text(text + f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={str(ipmasq).lower()}\n")


def install_weft(bin_dir: Path) -> Path:
    """Install the plugin exactly as ``weftctl cni install`` does; returns its path."""
    import sys

    sys.path.insert(0, str(WEFT_ROOT))
    from cni.install import install

    return install(str(bin_dir), None)[0]


def weft_conflist(tmp: Path, version: str = "1.1.0", name: str = "weftnet",
                  extra_plugins: list[dict[str, Any]] | None = None,
                  **weft_conf: Any) -> dict[str, Any]:
    plugin = {"type": "weft", "subnetFile": str(tmp / "subnet.env"),
              "dataDir": str(tmp / "ipam"), **weft_conf}
    return {"cniVersion": version, "name": name, "plugins": [plugin, *(extra_plugins or [])]}


class CniHost:
    """Host namespace ``h1`` of a testbed with weft installed in ``tmp/bin`` and a
    subnet.env (``write_subnet_env``'s keywords), plus helpers to make containers."""

    def __init__(self, tb: Testbed, tmp: Path, **subnet_env: Any) -> None:
        self.tb = tb
        self.tmp = tmp
        self.host = tb.hosts["h1"]
        self.bin = tmp / "bin"
        install_weft(self.bin)
        write_subnet_env(tmp / "subnet.env", **subnet_env)
        self.n = 0

    def driver(self, version: str = "1.1.0", **kw: Any) -> CniDriver:
        """A runtime for weft's conflist (``extra_plugins`` chained after it, from Debian's
        /usr/lib/cni); other keywords go into weft's netconf."""
        extra = kw.pop("extra_plugins", None)
        conf = weft_conflist(self.tmp, version, extra_plugins=extra, **kw)
        return CniDriver(conf, [str(self.bin), "/usr/lib/cni"], self.host.netns,
                         self.tmp / "cache")

    def container(self) -> str:
        """A fresh container namespace on h1 (path), for the plugin to wire."""
        self.n += 1
        return self.tb.add_container("h1", f"c{self.n}").netns_path

    @staticmethod
    def ns_of(path: str) -> str:
        return path.rsplit("/", 1)[1]

    def state(self) -> tuple[list[str], list[str], str]:
        """What a failed command must leave unchanged: IPAM files, host links, nft rules."""
        return (ipam_files(self.tmp), host_links(self.host.netns),
                nft_ruleset(self.host.netns))


def host_links(netns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", netns, "-o", "link", "show"], capture_output=True,
                         text=True, check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def ipam_files(tmp: Path, name: str = "weftnet") -> list[str]:
    d = tmp / "ipam" / name
    return sorted(p.name for p in d.iterdir()
                  if p.name[0] in "0123456789abcdef:") if d.exists() else []


def nft_ruleset(netns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "ruleset"],
                          capture_output=True, text=True, check=True).stdout
