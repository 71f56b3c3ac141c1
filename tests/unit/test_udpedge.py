"""The udp forwarder's edge decisions (overlay.backend.udpedge), checked against scapy's parser."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import ICMP, IP, UDP, IPerror

from overlay.backend.udpedge import Drop, checksum, decrement_ttl, egress, may_answer

SOURCE = int(ipaddress.IPv4Address("10.244.1.0"))


def packet(ttl: int = 64, size: int = 100, df: bool = False, dst: str = "10.244.2.2",
           src: str = "10.244.1.2") -> bytearray:
    p = IP(src=src, dst=dst, ttl=ttl, flags="DF" if df else 0) / UDP(sport=1, dport=2) / (
        b"x" * (size - 28))
    return bytearray(bytes(p))


def test_forwarded_packet_has_ttl_decremented_and_a_valid_checksum() -> None:
    for ttl in (2, 64, 255):
        buf = packet(ttl)
        assert egress(buf, len(buf), True, 1472, SOURCE) == (None, None)
        ip = IP(bytes(buf))
        assert ip.ttl == ttl - 1
        assert checksum(bytes(buf[:20])) == 0  # the header still sums right


def test_decrement_ttl_matches_a_full_recompute() -> None:
    buf = packet(200)
    decrement_ttl(buf)
    again = bytearray(buf[:20])
    again[10:12] = b"\0\0"
    assert int.from_bytes(buf[10:12], "big") == checksum(again)


def test_expired_ttl_gets_time_exceeded_from_the_tun_address() -> None:
    buf = packet(ttl=1)
    reason, icmp = egress(buf, len(buf), True, 1472, SOURCE)
    assert reason is Drop.TTL_EXPIRED and icmp is not None
    ip = IP(icmp)
    assert (ip.src, ip.dst, ip[ICMP].type, ip[ICMP].code) == ("10.244.1.0", "10.244.1.2", 11, 0)
    assert ip[IPerror].dst == "10.244.2.2"  # the offending header is quoted
    assert checksum(icmp[:20]) == 0 and checksum(icmp[20:]) == 0


def test_no_peer_gets_net_unreachable() -> None:
    buf = packet(dst="10.244.9.9")
    reason, icmp = egress(buf, len(buf), False, 1472, SOURCE)
    assert reason is Drop.NO_ROUTE and icmp is not None
    assert (IP(icmp)[ICMP].type, IP(icmp)[ICMP].code) == (3, 0)
    assert bytes(buf) == bytes(packet(dst="10.244.9.9"))  # dropped packets are not altered


def test_over_path_mtu_with_df_gets_fragmentation_needed_with_the_mtu() -> None:
    buf = packet(size=1500, df=True)
    reason, icmp = egress(buf, len(buf), True, 1472, SOURCE)
    assert reason is Drop.TOO_BIG and icmp is not None
    assert (IP(icmp)[ICMP].type, IP(icmp)[ICMP].code, IP(icmp)[ICMP].nexthopmtu) == (3, 4, 1472)
    # without DF the datagram goes out (the underlay fragments it)
    buf = packet(size=1500)
    assert egress(buf, len(buf), True, 1472, SOURCE) == (None, None)


def test_no_icmp_about_icmp_errors_fragments_or_broadcasts() -> None:
    err = bytearray(bytes(IP(src="10.244.1.2", dst="10.244.9.9") / ICMP(type=3, code=1)
                          / (b"z" * 28)))
    assert not may_answer(err)
    assert egress(err, len(err), False, 1472, SOURCE) == (Drop.NO_ROUTE, None)
    echo = bytearray(bytes(IP(src="10.244.1.2", dst="10.244.9.9") / ICMP(type=8)))
    assert may_answer(echo)
    frag = bytearray(bytes(IP(src="10.244.1.2", dst="10.244.9.9", frag=100) / (b"y" * 30)))
    assert not may_answer(frag)
    assert not may_answer(packet(dst="255.255.255.255"))
    assert not may_answer(packet(src="0.0.0.0"))
    # no TUN address yet: drop without an answer
    buf = packet(ttl=1)
    assert egress(buf, len(buf), True, 1472, 0) == (Drop.TTL_EXPIRED, None)


def test_malformed_packets_are_dropped_quietly() -> None:
    assert egress(bytearray(b"\x60" + b"\0" * 39), 40, True, 1472, SOURCE) == (Drop.MALFORMED, None)
    assert egress(bytearray(b"\x45" + b"\0" * 10), 11, True, 1472, SOURCE) == (Drop.MALFORMED, None)
    bad_ihl = packet()
    bad_ihl[0] = 0x4F  # header longer than the packet read
    assert egress(bad_ihl, 40, True, 1472, SOURCE) == (Drop.MALFORMED, None)


def test_forwarder_counters_render_in_flanneld_metrics() -> None:
    import socket

    from overlay.backend.udp import Forwarder
    from overlay.health import HealthState, render_metrics

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fwd = Forwarder(-1, sock, 1472)  # never started: counters only
        fwd.tx_packets, fwd.tx_bytes, fwd.rx_packets, fwd.rx_bytes = 3, 300, 2, 200
        fwd.drops[Drop.NO_ROUTE] = 5
        text = render_metrics(HealthState(datapath_families=fwd.families))
    assert 'weft_udp_packets_total{direction="tx"} 3' in text
    assert 'weft_udp_bytes_total{direction="rx"} 200' in text
    assert 'weft_udp_dropped_total{reason="no_route"} 5' in text
    assert 'weft_udp_dropped_total{reason="ttl_expired"} 0' in text
    assert "weft_ready 0" in text
