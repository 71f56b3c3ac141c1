"""Container networking for ``[X-Weft] Network=true`` units: a netns per unit, attached
through CNI exactly as a container runtime attaches one.

Theory of operation
-------------------
The agent is the runtime here, behaving as libcni does with a network config list:

* **ADD** on start: create ``/run/netns/<netns>`` (loopback up), then exec each plugin of
  the conflist in order (``CNI_COMMAND=ADD``, the conflist's ``name``/``cniVersion``
  injected, ``prevResult`` from the second plugin on). The final result is cached in
  ``<cache>/results/<network>-<cid>-<ifname>`` *before* the unit starts, so a crash at
  any later point leaves a record to clean up.
* **DEL** on stop: the plugins in reverse, each with the cached result as
  ``prevResult``; then the netns is deleted and the cache entry removed. A DEL that
  finds nothing counts as success (the spec's rule), so DEL can be repeated.
* **GC** after a crash (agent start): every cached attachment that no running unit owns
  gets a DEL and its netns is deleted (see ``gc`` for why CNI's own GC is not sent).

The container id is ``weft-<machine-id prefix>-<unit>`` (``-netns-prefix`` replaces the
first part) and the netns name the same, so units of different agents sharing one
kernel (the sandbox) never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_CNI_CONF = "/etc/cni/net.d/10-weft.conflist"
DEFAULT_CNI_PATH = "/opt/cni/bin:/usr/lib/cni"
IFNAME = "eth0"
_TIMEOUT = 30.0


class AttachError(Exception):
    """A CNI step failed; ``what`` names the step (plugin and command, or the netns)."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


def _vkey(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return (0,)


@dataclass(frozen=True, slots=True)
class NetConf:
    """A network config list (a single-plugin ``.conf`` is turned into one)."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, object], ...]
    source: str

    @classmethod
    def parse(cls, text: str, source: str) -> NetConf:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise AttachError(source, f"not JSON ({exc})") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise AttachError(source, "want a CNI config with a \"name\"")
        version = str(raw.get("cniVersion", "0.4.0"))
        if "plugins" in raw:
            plugins = raw["plugins"]
            if not isinstance(plugins, list) or not plugins or not all(
                    isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
                raise AttachError(source, "\"plugins\" must be a non-empty list of objects "
                                  "with a \"type\"")
            return cls(raw["name"], version, tuple(plugins), source)
        if not isinstance(raw.get("type"), str):
            raise AttachError(source, "a single-plugin config needs a \"type\"")
        return cls(raw["name"], version, (raw,), source)

    @classmethod
    def load(cls, path: str) -> NetConf:
        try:
            return cls.parse(Path(path).read_text(), path)
        except OSError as exc:
            raise AttachError(path, f"cannot read the CNI config ({exc.strerror})") from exc


def default_netns_prefix(machine: str) -> str:
    return f"weft-{machine[:12]}"


def container_id(prefix: str, unit: str) -> str:
    """``<prefix>-<unit, made name-safe>``, also the netns name; the prefix defaults to
    ``weft-<12 hex of the machine id>`` (``default_netns_prefix``)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", unit)
    return f"{prefix}-{safe}"[:200]


def result_address(result: dict[str, object]) -> ipaddress.IPv4Interface | None:
    """The container's IPv4 address in a CNI result (the one on ``CNI_IFNAME``)."""
    ips = result.get("ips")
    if isinstance(ips, list):
        for entry in ips:
            if isinstance(entry, dict) and isinstance(entry.get("address"), str):
                with contextlib.suppress(ValueError):
                    addr = ipaddress.ip_interface(entry["address"])
                    if isinstance(addr, ipaddress.IPv4Interface):
                        return addr
    ip4 = result.get("ip4")  # 0.2.0
    if isinstance(ip4, dict) and isinstance(ip4.get("ip"), str):
        with contextlib.suppress(ValueError):
            return ipaddress.IPv4Interface(ip4["ip"])
    return None


async def _run(argv: list[str], stdin: bytes = b"", env: dict[str, str] | None = None,
               ) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    try:
        async with asyncio.timeout(_TIMEOUT):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return 124, "", f"timed out after {_TIMEOUT:.0f} s"
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


class Attacher:
    """Attaches unit network namespaces through the CNI plugins of ``conf``."""

    def __init__(self, conf_path: str, cni_path: str, cache_dir: Path) -> None:
        self._conf_path = conf_path
        self._cni_path = [p for p in cni_path.split(":") if p]
        self._cache = cache_dir / "results"

    def conf(self) -> NetConf:
        return NetConf.load(self._conf_path)  # read per use: edits apply to the next start

    def _find(self, plugin: str) -> str:
        for d in self._cni_path:
            candidate = Path(d, plugin)
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        raise AttachError(f"CNI plugin {plugin}", f"not found in {':'.join(self._cni_path)}")

    def _cache_path(self, conf: NetConf, cid: str) -> Path:
        return self._cache / f"{conf.name}-{cid}-{IFNAME}"

    async def _invoke(self, conf: NetConf, plugin: dict[str, object], command: str,
                      cid: str, netns: str, prev: dict[str, object] | None,
                      extra: dict[str, object] | None = None) -> dict[str, object]:
        body = dict(plugin)
        body["name"] = conf.name
        body["cniVersion"] = conf.cni_version
        if prev is not None:
            body["prevResult"] = prev
        body.update(extra or {})
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_PATH": ":".join(self._cni_path)}
        if command != "GC":
            env.update({"CNI_CONTAINERID": cid, "CNI_IFNAME": IFNAME})
            if netns:
                env["CNI_NETNS"] = f"/run/netns/{netns}"
        plugin_type = str(plugin["type"])
        rc, out, err = await _run([self._find(plugin_type)], json.dumps(body).encode(), env)
        if rc != 0:
            raise AttachError(f"CNI {plugin_type} {command} {cid}",
                              (out.strip() or err.strip() or f"exit {rc}")[-400:])
        if not out.strip():
            return {}
        try:
            result = json.loads(out)
        except ValueError as exc:
            raise AttachError(f"CNI {plugin_type} {command} {cid}",
                              f"result is not JSON: {out[:200]!r}") from exc
        return result if isinstance(result, dict) else {}

    async def add(self, cid: str) -> ipaddress.IPv4Interface:
        """Create netns ``cid`` and attach it; returns the container address."""
        conf = self.conf()
        rc, _, err = await _run(["ip", "netns", "add", cid])
        if rc != 0 and "exists" not in err:
            raise AttachError(f"netns {cid}", err.strip())
        await _run(["ip", "-n", cid, "link", "set", "lo", "up"])
        path = self._cache_path(conf, cid)
        path.parent.mkdir(parents=True, exist_ok=True)
        # recorded before the ADD: a crash halfway still leaves something for GC to undo
        path.write_text(json.dumps({"kind": "cniCacheV1", "containerId": cid,
                                    "ifName": IFNAME, "netns": cid, "result": None}))
        prev: dict[str, object] | None = None
        try:
            for plugin in conf.plugins:
                prev = await self._invoke(conf, plugin, "ADD", cid, cid, prev)
        except AttachError:
            with contextlib.suppress(AttachError):
                await self.delete(cid)
            raise
        result = prev or {}
        path.write_text(json.dumps({"kind": "cniCacheV1", "containerId": cid,
                                    "ifName": IFNAME, "netns": cid, "result": result}))
        addr = result_address(result)
        if addr is None:
            await self.delete(cid)
            raise AttachError(f"CNI ADD {cid}", f"no IPv4 address in the result {result}")
        return addr

    async def delete(self, cid: str) -> None:
        """DEL through every plugin (reverse order), delete the netns, forget the cache."""
        conf = self.conf()
        path = self._cache_path(conf, cid)
        prev = None
        with contextlib.suppress(OSError, ValueError):
            cached = json.loads(path.read_text())
            prev = cached.get("result") if isinstance(cached, dict) else None
        netns = cid if Path("/run/netns", cid).exists() else ""
        use_prev = prev if _vkey(conf.cni_version) >= (0, 4, 0) and prev else None
        for plugin in reversed(conf.plugins):
            await self._invoke(conf, plugin, "DEL", cid, netns, use_prev)
        if netns:
            await _run(["ip", "netns", "del", cid])
        path.unlink(missing_ok=True)

    def cached(self) -> list[str]:
        """Container ids of every cached attachment."""
        if not self._cache.is_dir():
            return []
        out = []
        for p in sorted(self._cache.iterdir()):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(p.read_text())
                if isinstance(data, dict) and isinstance(data.get("containerId"), str):
                    out.append(data["containerId"])
        return out

    async def gc(self, valid: set[str]) -> list[str]:
        """DEL every cached attachment not in ``valid``. Returns the container ids cleaned;
        failures are logged and left for the next GC. The plugins' own CNI ``GC`` is not
        sent: the agent is not the only runtime on the host (the spec wants GC run by
        the one runtime that knows every attachment), and it would free their IPs."""
        cleaned = []
        for cid in self.cached():
            if cid in valid:
                continue
            try:
                await self.delete(cid)
                cleaned.append(cid)
            except AttachError as exc:
                log.warning("CNI GC: %s", exc)
        return cleaned
