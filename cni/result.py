"""CNI results in each spec version's shape, built from one version-neutral description."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def shape(version: str, interfaces: list[dict[str, Any]], ips: list[dict[str, Any]],
          routes: list[dict[str, Any]], dns: dict[str, Any] | None = None) -> dict[str, Any]:
    """The result for ``version`` (0.3.x/0.4.0 add ``ips[].version``, "4" or "6";
    1.1.0 keeps ``mtu``)."""
    legacy = version.startswith("0.")
    modern_fields = version == "1.1.0"
    out_ifs = []
    for itf in interfaces:
        d = dict(itf)
        if not modern_fields:
            d.pop("mtu", None)
        out_ifs.append(d)
    out_ips = []
    for ip in ips:
        d = dict(ip)
        if legacy:
            d["version"] = "6" if ":" in str(d.get("address", "")) else "4"
        out_ips.append(d)
    return {"cniVersion": version, "interfaces": out_ifs, "ips": out_ips,
            "routes": [dict(r) for r in routes], "dns": dict(dns or {})}


def error(version: str, code: int, msg: str, details: str = "") -> dict[str, Any]:
    return {"cniVersion": version, "code": code, "msg": msg, "details": details}
