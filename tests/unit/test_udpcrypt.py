"""udp encryption (overlay.backend.udpcrypt): sealing, tamper, replay, key roll, config."""

from __future__ import annotations

import base64
import ipaddress
import socket
import struct
import time
from pathlib import Path

import pytest

from overlay.backend import udpcrypt
from overlay.backend.base import BackendConfigError
from overlay.backend.udp import Forwarder, build_table, encryption_mismatch, parse_config
from overlay.backend.udpcrypt import (
    OVERHEAD,
    SUITE,
    Crypto,
    KeyFileError,
    ReplayWindow,
    load_keys,
    parse_key,
)
from overlay.backend.udpedge import Drop
from overlay.lease.model import Lease
from tests.udprig import Rig, loopback_rig

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network
K1, K2 = bytes(range(32)), bytes(range(1, 33))
H1, H2 = "198.18.0.11", "198.18.0.12"
PKT = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 48, 1, 0, 64, 17, 0, bytes(4), bytes(4)) + \
    b"secret inner payload bytes!!"


def pair(k_a: tuple[bytes, ...] = (K1,), k_b: tuple[bytes, ...] = (K1,)) -> tuple[Crypto, Crypto]:
    return Crypto(k_a, A(H1)), Crypto(k_b, A(H2))


def test_round_trip_hides_the_payload_and_adds_the_overhead() -> None:
    a, b = pair()
    sealed = a.seal(PKT, H2)
    assert len(sealed) == len(PKT) + OVERHEAD and sealed[0] == 0x81
    assert b"secret" not in sealed
    assert b.open(sealed, H1) == PKT
    # keys are per direction and per source: the same datagram from elsewhere fails
    assert b.open(sealed, "198.18.0.99") is Drop.AUTH_FAILED
    assert a.open(sealed, H1) is Drop.AUTH_FAILED


def test_tampered_replayed_and_plaintext_datagrams_are_dropped() -> None:
    a, b = pair()
    sealed = a.seal(PKT, H2)
    for i in (0 + 5, 12, len(sealed) - 1):  # session, counter, tag
        bad = bytearray(sealed)
        bad[i] ^= 1
        assert b.open(bytes(bad), H1) in (Drop.AUTH_FAILED,)
    assert b.open(sealed, H1) == PKT
    assert b.open(sealed, H1) is Drop.REPLAY
    assert b.open(PKT, H1) is Drop.PLAINTEXT
    assert b.open(b"\x81short", H1) is Drop.MALFORMED


def test_out_of_order_within_the_window_passes_once() -> None:
    a, b = pair()
    sealed = [a.seal(PKT, H2) for _ in range(1100)]
    assert b.open(sealed[1099], H1) == PKT
    assert b.open(sealed[500], H1) == PKT  # late but inside the window
    assert b.open(sealed[500], H1) is Drop.REPLAY
    assert b.open(sealed[10], H1) is Drop.REPLAY  # too old


def test_replay_window_bits() -> None:
    w = ReplayWindow()
    for c in (0, 2, 1, 5):
        assert w.check(c)
        w.accept(c)
    assert not w.check(2) and w.check(3) and w.check(4) and not w.check(5)


def test_a_restarted_sender_uses_a_new_session_and_is_accepted() -> None:
    a, b = pair()
    assert b.open(a.seal(PKT, H2), H1) == PKT
    a2 = Crypto((K1,), A(H1))  # restart: counter from 0 again, fresh session and key
    assert a2.session != a.session
    assert b.open(a2.seal(PKT, H2), H1) == PKT


def test_key_roll_accepts_both_keys_and_refuses_a_stranger() -> None:
    new, old = pair((K2, K1), (K1,))  # host a rolled first: seals with K2, opens both
    assert old.open(new.seal(PKT, H2), H1) is Drop.AUTH_FAILED  # b does not have K2 yet
    rolling = Crypto((K1, K2), A(H2))  # b with both keys, K1 still first
    assert rolling.open(new.seal(PKT, H2), H1) == PKT
    assert new.open(rolling.seal(PKT, H1), H2) == PKT
    stranger = Crypto((bytes(32),), A(H1))
    assert rolling.open(stranger.seal(PKT, H2), H1) is Drop.AUTH_FAILED


def test_key_files(tmp_path: Path) -> None:
    (tmp_path / "hex").write_text(K1.hex() + "\n")
    (tmp_path / "b64").write_text(base64.b64encode(K2).decode())
    assert load_keys([str(tmp_path / "hex"), str(tmp_path / "b64")]) == (K1, K2)
    with pytest.raises(KeyFileError, match="holds 16 bytes"):
        parse_key(base64.b64encode(bytes(16)), "/k")
    with pytest.raises(KeyFileError, match="not hex or base64"):
        parse_key(b"!!", "/k")
    with pytest.raises(KeyFileError, match="/nope"):
        load_keys(["/nope"])


def test_config_and_peer_agreement() -> None:
    assert parse_config({"Encryption": {"KeyFile": "/etc/weft/cluster.key"}}).key_files == (
        "/etc/weft/cluster.key",)
    assert parse_config({"Encryption": {"KeyFile": ["/a", "/b"]}}).key_files == ("/a", "/b")
    assert parse_config({}).key_files == ()
    for bad in ({"KeyFile": "rel"}, {"KeyFile": ["/a", "/b", "/c"]}, {}, "x"):
        with pytest.raises(BackendConfigError, match="Encryption"):
            parse_config({"Encryption": bad})
    plain = Lease(N("10.244.2.0/24"), A(H2), "", {})
    sealed = Lease(N("10.244.3.0/24"), A("198.18.0.13"), "", {"Encryption": SUITE})
    assert encryption_mismatch(plain, "") is None and encryption_mismatch(sealed, SUITE) is None
    assert "never falling back to plaintext" in (encryption_mismatch(plain, SUITE) or "")
    assert "refused" in (encryption_mismatch(sealed, "") or "")
    assert set(build_table([plain, sealed], None, 8285, SUITE)[24]) == {
        int(A("10.244.3.0"))}


def test_forwarder_seals_on_the_wire_and_opens_what_comes_back() -> None:
    with loopback_rig() as rig:
        run_sealed(rig)


def run_sealed(rig: Rig) -> None:
    tun_app, tun_fwd, sock, peer = rig.tun_app, rig.tun_fwd, rig.sock, rig.peer
    me, them = Crypto((K1,), A("127.0.0.1")), Crypto((K1,), A("127.0.0.1"))
    fwd = Forwarder(tun_fwd.fileno(), sock, offload=True, crypto=me)
    port = peer.getsockname()[1]
    fwd.table = build_table([Lease(N("10.244.2.0/24"), A("127.0.0.1"), "",
                                   {"Encryption": SUITE})], None, port, SUITE)
    pkt = bytearray(PKT)
    pkt[16:20] = socket.inet_aton("10.244.2.7")
    fwd.start()
    try:
        tun_app.send(bytes(pkt))
        wire = peer.recv(65536)
        assert b"secret" not in wire and wire[0] == 0x81
        inner = them.open(wire, "127.0.0.1")
        assert isinstance(inner, bytes) and inner[20:] == PKT[20:]
        reply = them.seal(PKT, "127.0.0.1")
        peer.sendto(reply, sock.getsockname())
        assert tun_app.recv(65536) == PKT
        peer.sendto(reply, sock.getsockname())  # replayed
        peer.sendto(PKT, sock.getsockname())  # plaintext
        deadline = time.monotonic() + 5
        while fwd.dropped < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (fwd.drops[Drop.REPLAY], fwd.drops[Drop.PLAINTEXT], fwd.rx_packets) == (1, 1, 1)
    finally:
        fwd.stop()


def test_rekey_seals_with_the_new_first_key_and_retires_old_keys_after_a_grace() -> None:
    now = [100.0]
    a = Crypto((K1,), A(H1), clock=lambda: now[0])
    b = Crypto((K1,), A(H2), clock=lambda: now[0])
    old_sealed = b.seal(PKT, H1)
    assert not b.rekey((K1, K2))  # opens both, still seals with K1
    assert b.rekey((K2, K1))  # seals with K2, in a new session
    assert a.open(b.seal(PKT, H1), H2) is Drop.AUTH_FAILED  # a does not know K2 yet
    a.rekey((K2,))  # a jumped straight to the new key: K1 kept for the grace only
    assert a.open(b.seal(PKT, H1), H2) == PKT
    assert a.open(old_sealed, H2) == PKT
    now[0] += udpcrypt.RETIRED_GRACE_S + 1
    assert a.open(b.seal(PKT, H1), H2) == PKT
    assert a.open(Crypto((K1,), A(H2)).seal(PKT, H1), H2) is Drop.AUTH_FAILED
