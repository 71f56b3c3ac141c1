"""The exec'd side of the helper protocol: wire format and the relay to the helper.

Kept apart from ``cni.helper`` so that an exec which the helper serves imports
nothing but builtins (``posix`` rather than ``os``: ~1 ms of CPU per exec);
see ``cni.helper`` for the theory of operation.
"""

import _socket
import posix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

MAGIC = b"WEFT1\n"
IDLE_SECONDS = 300.0
MAX_REQUEST = 16 << 20
# u32 fields are little-endian, packed with int.to_bytes (no struct import per exec)
ENV_PREFIXES = ("CNI_", "WEFT_CNI_")


def code_tag(package_dir: str) -> str:
    """Fingerprint of the plugin's code: newest mtime of its modules, in hex."""
    newest = 0
    with posix.scandir(package_dir) as it:
        for entry in it:
            if entry.name.endswith(".py"):
                newest = max(newest, entry.stat().st_mtime_ns)
    return f"{newest:x}"


def socket_name(package_dir: str) -> bytes:
    """Abstract name: code fingerprint plus install path (two installs never cross-talk)."""
    name = f"weft-cni-{code_tag(package_dir)}:{package_dir}".encode()
    return b"\0" + name[:100]


def encode_request(environ: "Mapping[str, str]", stdin: bytes) -> bytes:
    env = b"\0".join(f"{k}={v}".encode() for k, v in environ.items()
                     if k.startswith(ENV_PREFIXES))
    return MAGIC + len(env).to_bytes(4, "little") + env + stdin


def encode_request_raw(environ: "Mapping[bytes, bytes]", stdin: bytes) -> bytes:
    """``encode_request`` from ``posix.environ`` (bytes), without importing ``os``."""
    prefixes = tuple(p.encode() for p in ENV_PREFIXES)
    env = b"\0".join(k + b"=" + v for k, v in environ.items() if k.startswith(prefixes))
    return MAGIC + len(env).to_bytes(4, "little") + env + stdin


def decode_request(data: bytes) -> tuple[dict[str, str], bytes]:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise ValueError("not a weft helper request")
    n = int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "little")
    start = len(MAGIC) + 4
    env_blob, stdin = data[start:start + n], data[start + n:]
    environ: dict[str, str] = {}
    for item in env_blob.split(b"\0") if env_blob else []:
        key, _, value = item.decode().partition("=")
        if key.startswith(ENV_PREFIXES):
            environ[key] = value
    return environ, stdin


def encode_response(rc: int, stderr: bytes, stdout: bytes) -> bytes:
    return rc.to_bytes(4, "little") + len(stderr).to_bytes(4, "little") + stderr + stdout


def decode_response(data: bytes) -> tuple[int, bytes, bytes]:
    rc = int.from_bytes(data[:4], "little")
    n = int.from_bytes(data[4:8], "little")
    return rc, data[8:8 + n], data[8 + n:]


def recv_all(conn: _socket.socket, limit: int = MAX_REQUEST) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise ValueError("request too large")


