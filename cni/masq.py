"""Container masquerade (``ipMasq``) with nftables, in the namespace the plugin runs in.

One table per network and family, ``ip weft-<network>`` and (dual-stack,
IPv6) ``ip6 weft-<network>``: a set ``masq`` of container IPs and a nat
postrouting chain masquerading traffic from those IPs to anything outside the
cluster network and not multicast (224.0.0.0/4, ff00::/8). ADD adds an element (creating
the table if needed, all in one ``nft -f`` transaction); DEL removes it, and
removes the tables with the network's last allocation, so nothing is left
behind. ``render_*`` are pure; ``apply`` is the only place that execs nft.
"""

from __future__ import annotations

import fcntl
import os
import zlib

from cni.errors import IOFailure
from cni.ip6 import IPv6, Net6

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from cni.ip4 import IPv4, Net4

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def table_name(network: str) -> str:
    if len(network) <= 24 and set(network) <= _SAFE:
        return f"weft-{network}"
    return f"weft-{zlib.crc32(network.encode()):08x}"


class MasqLock:
    """flock on ``<dataDir>/.weft-masq-<network>.lock``: shared to add or remove one
    element (ADDs run nft in parallel), exclusive to delete the table with the
    network's last allocation, so a concurrent ADD cannot lose its element."""

    def __init__(self, data_dir: str, network: str, exclusive: bool) -> None:
        self.path = os.path.join(data_dir, f".weft-masq-{network}.lock")
        self.mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        self.fd = -1

    def __enter__(self) -> MasqLock:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self.fd, self.mode)
        except OSError as e:
            raise IOFailure(f"ipMasq lock {self.path}: {e.strerror}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _family(ip: IPv4 | IPv6 | Net4 | Net6) -> tuple[str, str, str, str]:
    """(nft family, set type, address selector, multicast) of ``ip``'s family."""
    if isinstance(ip, IPv6 | Net6):
        return "ip6", "ipv6_addr", "ip6", "ff00::/8"
    return "ip", "ipv4_addr", "ip", "224.0.0.0/4"


def render_setup(network: str, clusters: Sequence[Net4 | Net6],
                 members: Iterable[tuple[IPv4 | IPv6, str]],
                 flush_members: bool = False) -> str:
    """Create or refresh the table of each family in ``clusters`` (IPv4: ``ip
    weft-<net>``, IPv6: ``ip6 weft-<net>``, as flannel's ``flannel-ipv6``), then add
    ``members`` (ip, containerID) to the set of their family."""
    t = table_name(network)
    lines = []
    for cluster in clusters:
        fam, set_type, sel, mcast = _family(cluster)
        lines += [
            f"add table {fam} {t}",
            f"add set {fam} {t} masq {{ type {set_type}; }}",
            f"add chain {fam} {t} postrouting {{ type nat hook postrouting priority srcnat; "
            "policy accept; }",
            f"flush chain {fam} {t} postrouting",
            f"add rule {fam} {t} postrouting {sel} saddr @masq {sel} daddr != {cluster} "
            f'{sel} daddr != {mcast} masquerade comment "weft network {t[5:]}"',
        ]
        if flush_members:
            lines.append(f"flush set {fam} {t} masq")
    for ip, cid in members:
        fam = _family(ip)[0]
        lines.append(f'add element {fam} {t} masq {{ {ip} comment "id: {cid[:100]}" }}')
    return "\n".join(lines) + "\n"


def render_remove(network: str, ip: IPv4 | IPv6 | None, last: bool) -> str:
    """Drop one element, or (``last``) both families' tables: each delete follows an
    ``add``, so a table that is not there (IPv4-only network, repeated DEL) is no error."""
    t = table_name(network)
    if last:
        return "".join(f"add table {fam} {t}\ndelete table {fam} {t}\n" for fam in ("ip", "ip6"))
    if ip is None:
        return ""
    fam = _family(ip)[0]
    return f"delete element {fam} {t} masq {{ {ip} }}\n"


def apply(script: str, tolerate_missing: bool = False) -> None:
    """Run ``nft -f -`` with ``script``; a missing table/element is fine on teardown."""
    if not script:
        return
    import subprocess

    try:
        proc = subprocess.run(["nft", "-f", "-"], input=script.encode(), capture_output=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise IOFailure(f"ipMasq: running nft failed: {e}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        if tolerate_missing and ("No such file" in err or "does not exist" in err):
            return
        raise IOFailure(f"ipMasq: nft rejected the rules: {err}", script)


def enable_forwarding(version: int = 4) -> None:
    """Forwarding in the current namespace (the host's), as the bridge plugin does:
    ``net.ipv4.ip_forward``, for IPv6 ``net.ipv6.conf.all.forwarding``."""
    path = ("/proc/sys/net/ipv6/conf/all/forwarding" if version == 6
            else "/proc/sys/net/ipv4/ip_forward")
    try:
        with open(path, "rb") as f:
            if f.read(1) == b"1":
                return
        with open(path, "wb") as f:
            f.write(b"1")
    except OSError as e:
        raise IOFailure(f"cannot enable IPv{version} forwarding: {e.strerror}") from None
