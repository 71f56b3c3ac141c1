"""Authenticated encryption for the udp backend (ChaCha20-Poly1305 from ``cryptography``).

Configured with ``Backend: {"Type": "udp", "Encryption": {"KeyFile": PATH}}``
(``KeyFile`` may be a list of two paths during a key roll: the first seals, both
open). A key file holds 32 random bytes as 64 hex digits or base64 (e.g.
``head -c 32 /dev/urandom | base64``); the key never goes through the store.

Keys: for each direction ``src -> dst`` and each sender session, the AEAD key is
``HKDF-SHA256(cluster key, salt=session, info="weft-udp-v1" | src | dst)`` (the
PublicIPs, 4 bytes each). A session is 8 random bytes chosen when the sender's
forwarder starts, so the 64-bit counter can start at 0 after every restart
without ever reusing a (key, nonce) pair.

Wire format (one inner IP packet per datagram, as flannel's, sealed):

    0      1        2           10          18                 n-16    n
    | 0x81 | key id | session(8) | counter(8) | ciphertext ...   | tag(16) |

byte 0 tells it from a plaintext IPv4 packet (0x45..0x4f); the key id is the first
byte of SHA-256("weft-udp-key-id" | key), so a receiver picks the right key of
two during a roll; the nonce is 4 zero bytes then the counter (big-endian); the
18-byte header is the associated data. 34 bytes of overhead: the TUN MTU is the
underlay MTU - 28 - 34.

Replay: the receiver keeps, per (source, session), the highest counter seen and a
1024-packet window below it; older or repeated counters are dropped and counted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from overlay.backend.udpedge import Drop
from overlay.errors import ConfigError

MAGIC = 0x81
HEADER = 18
TAG = 16
OVERHEAD = HEADER + TAG
WINDOW = 1024
SUITE = "chacha20poly1305-v1"  # what an encrypting host publishes in its lease
_INFO = b"weft-udp-v1"
RETIRED_GRACE_S = 10.0  # a key dropped from the key files still opens this long
_MAX_SESSIONS = 4096  # cached (source, session) ciphers and windows


class KeyFileError(ConfigError):
    """A key file is unreadable or does not hold a 32-byte key; names the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason, message=f"Encryption.KeyFile {path}: {reason}")


def parse_key(text: bytes, path: str = "<key>") -> bytes:
    """32 bytes from a key file's contents (64 hex digits, or base64)."""
    s = text.strip()
    try:
        key = bytes.fromhex(s.decode()) if len(s) == 64 else base64.b64decode(s, validate=True)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise KeyFileError(path, "not hex or base64") from None
    if len(key) != 32:
        raise KeyFileError(path, f"holds {len(key)} bytes, want 32")
    return key


def load_keys(paths: Sequence[str]) -> tuple[bytes, ...]:
    keys = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                keys.append(parse_key(f.read(), path))
        except OSError as exc:
            raise KeyFileError(path, exc.strerror or str(exc)) from None
    return tuple(keys)


def key_id(key: bytes) -> int:
    return hashlib.sha256(b"weft-udp-key-id" + key).digest()[0]


def derive(key: bytes, session: bytes, src: ipaddress.IPv4Address,
           dst: ipaddress.IPv4Address) -> ChaCha20Poly1305:
    okm = HKDF(algorithm=hashes.SHA256(), length=32, salt=session,
               info=_INFO + src.packed + dst.packed).derive(key)
    return ChaCha20Poly1305(okm)


class ReplayWindow:
    """Counters seen: the highest plus a ``WINDOW``-bit map below it (RFC 6479's idea)."""

    __slots__ = ("bits", "top")

    def __init__(self) -> None:
        self.top = -1
        self.bits = 0

    def check(self, counter: int) -> bool:
        """Whether ``counter`` is new (does not record it: call ``accept`` once authentic)."""
        if counter > self.top:
            return True
        behind = self.top - counter
        return behind < WINDOW and not (self.bits >> behind) & 1

    def accept(self, counter: int) -> None:
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << WINDOW) - 1)
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)


@dataclass
class _Tx:
    aead: ChaCha20Poly1305
    counter: int = 0


class Crypto:
    """Seal for and open from peers, for this host's PublicIP ``me`` and ``keys``
    (the first seals). Thread-safe enough for the forwarder: the tx thread only
    seals, the rx thread only opens."""

    def __init__(self, keys: Sequence[bytes], me: ipaddress.IPv4Address,
                 session: bytes | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not keys:
            raise ValueError("no key")
        self.keys = {key_id(k): k for k in keys}
        self._retired: dict[int, tuple[bytes, float]] = {}  # key id -> (key, opens until)
        self._clock = clock
        self.seal_key = keys[0]
        self.seal_id = key_id(keys[0])
        self.me = me
        self.session = session if session is not None else os.urandom(8)
        self._tx: dict[str, _Tx] = {}
        self._rx: OrderedDict[tuple[str, int, bytes],
                              tuple[ChaCha20Poly1305, ReplayWindow]] = OrderedDict()

    def rekey(self, keys: Sequence[bytes]) -> bool:
        """Take new key-file contents (a roll without restart); called by the sealing
        thread. A new sealing key starts a new session (fresh per-peer keys, counters
        from 0); datagrams sealed with any of ``keys`` open from now on. True if the
        sealing key changed. A key no longer in the files still opens for
        ``RETIRED_GRACE_S`` (hosts re-read their files at different moments)."""
        if not keys:
            raise ValueError("no key")
        now = self._clock()
        fresh = {key_id(k): k for k in keys}
        retired = {kid: kept for kid, kept in self._retired.items()
                   if kid not in fresh and kept[1] > now}
        retired.update((kid, (k, now + RETIRED_GRACE_S)) for kid, k in self.keys.items()
                       if kid not in fresh)
        self._retired, self.keys = retired, fresh
        if keys[0] == self.seal_key:
            return False
        self.seal_key, self.seal_id = keys[0], key_id(keys[0])
        self._tx = {}
        self.session = os.urandom(8)
        return True

    def seal(self, plain: bytes | memoryview, dst: str) -> bytes:
        """``plain`` sealed for the peer at PublicIP ``dst``."""
        tx = self._tx.get(dst)
        if tx is None:
            tx = self._tx[dst] = _Tx(derive(self.seal_key, self.session, self.me,
                                            ipaddress.IPv4Address(dst)))
        header = struct.pack("!BB8sQ", MAGIC, self.seal_id, self.session, tx.counter)
        nonce = b"\0\0\0\0" + header[10:]
        tx.counter += 1
        return header + tx.aead.encrypt(nonce, plain, header)

    def open(self, data: bytes | memoryview, src: str) -> bytes | Drop:
        """The inner packet of a datagram from ``src``, or why it is dropped."""
        if len(data) < OVERHEAD + 20 or data[0] != MAGIC:
            return Drop.PLAINTEXT if len(data) and data[0] >> 4 == 4 else Drop.MALFORMED
        kid, session, counter = struct.unpack("!B8sQ", data[1:HEADER])
        key = self.keys.get(kid)
        if key is None:
            kept = self._retired.get(kid)
            if kept is None or kept[1] <= self._clock():
                return Drop.AUTH_FAILED
            key = kept[0]
        slot = (src, kid, session)
        state = self._rx.get(slot)
        if state is None:
            try:
                peer = ipaddress.IPv4Address(src)
            except ValueError:
                return Drop.MALFORMED
            state = (derive(key, session, peer, self.me), ReplayWindow())
        aead, window = state
        if not window.check(counter):
            return Drop.REPLAY
        header = bytes(data[:HEADER])
        try:
            plain = aead.decrypt(b"\0\0\0\0" + header[10:], data[HEADER:], header)
        except InvalidTag:
            return Drop.AUTH_FAILED
        window.accept(counter)
        if slot not in self._rx:  # only authentic sessions take a cache slot
            self._rx[slot] = state
            if len(self._rx) > _MAX_SESSIONS:
                self._rx.popitem(last=False)
        return plain
