"""A naive single-threaded TUN <-> UDP loop (bench reference only, not weft's forwarder).

What the simplest userspace tunnel does: ``select`` on the TUN and one UDP socket,
one packet per system call each way, flannel's wire format (the IP packet is the
datagram). Run inside a host namespace by ``bench/overlay_datapath.py``:

    python bench/naive_tunudp.py --local 198.18.0.11 --address 10.244.1.0 \\
        --network 10.244.0.0/16 --mtu 1472 --peer 10.244.2.0/24=198.18.0.12

It creates TUN ``naive0`` (address, MTU, route to the network), prints ``ready``
and forwards until killed.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import select
import socket
import struct
import subprocess
import sys

PORT = 8285


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--local", required=True)
    ap.add_argument("--address", required=True)
    ap.add_argument("--network", required=True)
    ap.add_argument("--mtu", type=int, default=1472)
    ap.add_argument("--peer", action="append", default=[], help="SUBNET=PUBLICIP")
    args = ap.parse_args(argv)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"naive0", 0x0001 | 0x1000))
    for cmd in (["ip", "addr", "add", f"{args.address}/32", "dev", "naive0"],
                ["ip", "link", "set", "naive0", "mtu", str(args.mtu), "up"],
                ["ip", "route", "add", args.network, "dev", "naive0"]):
        subprocess.run(cmd, check=True)
    peers: dict[tuple[int, int], tuple[str, int]] = {}
    for spec in args.peer:
        net, ip = spec.split("=")
        n = ipaddress.IPv4Network(net)
        peers[(int(n.network_address), n.prefixlen)] = (ip, PORT)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.local, PORT))
    print("ready", flush=True)
    sfd = sock.fileno()
    while True:
        ready, _, _ = select.select([fd, sfd], [], [])
        if fd in ready:
            pkt = os.read(fd, 65535)
            dst = int.from_bytes(pkt[16:20], "big")
            for (net, plen), addr in peers.items():
                if dst >> (32 - plen) == net >> (32 - plen):
                    sock.sendto(pkt, addr)
                    break
        if sfd in ready:
            os.write(fd, sock.recv(65535))


if __name__ == "__main__":
    sys.exit(main())
