"""Start a store process for tests, benchmarks and the sandbox: Debian's etcd.

``start_etcd`` runs a single-member etcd on loopback with its own data dir and
waits until it answers. The embedded server's launcher lives beside it
(``start_embedded``, added with the server). Both return a ``StoreProcess`` whose
``stop()`` kills it and whose ``endpoint`` is the client URL.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free at the moment of asking (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_tcp(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return True
        time.sleep(0.02)
    return False


@dataclass
class StoreProcess:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    data_dir: Path

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_etcd(data_dir: Path, host: str = "127.0.0.1", port: int = 0,
               log: Path | None = None, netns: str | None = None) -> StoreProcess:
    """Run Debian's etcd (single member) and wait until its client port answers."""
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    port = port or free_port(host)
    peer = free_port(host) if netns is None else port + 1
    client_url = f"http://{host}:{port}"
    peer_url = f"http://{host}:{peer}"
    argv = [
        binary, "--name", "n0", "--data-dir", str(data_dir),
        "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"n0={peer_url}", "--log-level", "warn",
    ]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if not isinstance(out, int):
            out.close()
    sp = StoreProcess(proc, host, port, data_dir)
    if netns is None and not wait_tcp(host, port, 15):
        sp.stop(kill=True)
        raise RuntimeError(f"etcd did not start on {client_url} (log: {log})")
    return sp
