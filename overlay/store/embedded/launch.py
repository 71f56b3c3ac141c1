"""Start a store process for tests, benchmarks and the sandbox: Debian's etcd.

``start_etcd`` runs a single-member etcd on loopback with its own data dir and
waits until it answers; ``start_embedded`` does the same for weft's embedded
server (``weftctl store serve``). Both return a ``StoreProcess`` whose
``stop()`` kills it and whose ``endpoint`` is the client URL.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
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
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    tls: bool = False

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
               log: Path | None = None, netns: str | None = None,
               extra: tuple[str, ...] = ()) -> StoreProcess:
    """Run Debian's etcd (single member) and wait until its client port answers;
    ``extra`` adds etcd flags."""
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    port = port or free_port(host)
    peer = free_port(host) if netns is None else port + 1
    client_url = f"http://{host}:{port}"
    peer_url = f"http://{host}:{peer}"
    argv = [
        binary, "--name", "n0", "--data-dir", str(data_dir),
        "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"n0={peer_url}", "--log-level", "warn", *extra,
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


def start_embedded(data_dir: Path, host: str = "127.0.0.1", port: int = 0,
                   log: Path | None = None, netns: str | None = None,
                   tls: tuple[Path, Path, Path | None] | None = None,
                   extra: tuple[str, ...] = ()) -> StoreProcess:
    """Run ``weftctl store serve`` (this interpreter) and wait until its port answers.

    ``tls`` is (cert, key, trusted CA or None); ``extra`` adds serve flags.
    In a netns the caller waits for readiness (loopback here cannot see it).
    """
    port = port or free_port(host)
    argv = [sys.executable, "-m", "overlay.cli.weftctl", "store", "serve",
            "--listen", f"{host}:{port}", "--data-dir", str(data_dir), *extra]
    if tls:
        argv += ["--cert-file", str(tls[0]), "--key-file", str(tls[1])]
        if tls[2]:
            argv += ["--trusted-ca-file", str(tls[2])]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                cwd=Path(__file__).resolve().parents[2])
    finally:
        if not isinstance(out, int):
            out.close()
    sp = StoreProcess(proc, host, port, data_dir, tls=tls is not None)
    if netns is None and not wait_tcp(host, port, 15):
        sp.stop(kill=True)
        raise RuntimeError(f"embedded store did not start on {host}:{port} (log: {log})")
    return sp
