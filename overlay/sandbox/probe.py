"""Sandbox health probes, run inside a namespace by ``cluster`` (``python -m`` this module).

The root namespace cannot reach addresses inside the sandbox (and must not be
given routes to them), so ``cluster`` execs this module in the daemon's
namespace. stdin: a JSON list of probes (``model.Probe`` fields); stdout: a JSON
list of ``[ok, detail]`` in the same order. Standard library only, so it starts
in tens of milliseconds.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import struct
import sys

TIMEOUT = 1.0


def _http(ip: str, port: int, path: str) -> tuple[bool, str]:
    conn = http.client.HTTPConnection(ip, port, timeout=TIMEOUT)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        status = resp.status
        body = resp.read(200).decode("utf-8", "replace").strip().replace("\n", " ")
    finally:
        conn.close()
    return status == 200, f"GET {path} -> {status}" + (f" ({body})" if status != 200 else "")


def _tcp(ip: str, port: int) -> tuple[bool, str]:
    with socket.create_connection((ip, port), TIMEOUT):
        return True, f"tcp {ip}:{port} open"


def dns_query(name: str, qtype: int = 6) -> tuple[int, bytes]:
    """A minimal DNS query (default SOA) as wire bytes, with its random id."""
    qid = secrets.randbelow(65536)
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".") if p)
    return qid, header + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def _dns(ip: str, port: int, name: str) -> tuple[bool, str]:
    qid, query = dns_query(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(query, (ip, port))
        reply = s.recv(4096)
    if len(reply) < 12:
        return False, "short DNS reply"
    rid, flags = struct.unpack("!HH", reply[:4])
    rcode = flags & 0xF
    return rid == qid and rcode in (0, 3), f"dns {name} rcode {rcode}"


def run_probe(p: dict[str, object]) -> tuple[bool, str]:
    kind = str(p["kind"])
    ip, port = str(p.get("ip", "")), int(str(p.get("port", 0)))
    try:
        if kind == "http":
            return _http(ip, port, str(p.get("path", "/")))
        if kind == "tcp":
            return _tcp(ip, port)
        if kind == "dns":
            return _dns(ip, port, str(p.get("name", ".")))
        if kind == "file":
            path = str(p.get("path", ""))
            return os.path.exists(path), (f"{path} present" if os.path.exists(path)
                                          else f"{path} missing")
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{kind} {ip}:{port}: {exc}"
    return False, f"unknown probe kind {kind!r}"


def main() -> int:
    probes = json.load(sys.stdin)
    json.dump([run_probe(p) for p in probes], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
