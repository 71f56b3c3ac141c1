"""weftctl store: run the embedded etcd-compatible store (``serve``) and query a store (``status``).

``weftctl store serve --listen 127.0.0.1:2379 --data-dir DIR`` serves etcd's v3
gRPC API subset weft uses; with ``--cert-file/--key-file`` it serves TLS and
with ``--trusted-ca-file`` it also requires client certificates (etcd's flag
names and rules). ``weftctl store status`` prints Maintenance Status of the
first answering endpoint, for the embedded server and real etcd alike.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from overlay.flags import WEFT_STORE_ENV, add_store_flags, go_duration, store_config
from overlay.store.api import StoreConfig

if TYPE_CHECKING:
    from overlay.store.client import StoreStatus
    from overlay.store.embedded.server import EmbeddedServer

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    store = subparsers.add_parser("store", help="the cluster store (embedded etcd v3 server)")
    sub = store.add_subparsers(dest="store_command", metavar="SUBCOMMAND")

    def store_help(_args: argparse.Namespace) -> int:
        store.print_help()
        return 2

    store.set_defaults(func=store_help)

    serve = sub.add_parser("serve", help="run the embedded etcd-v3-compatible store")
    serve.add_argument("--listen", "-listen", "--listen-client-urls", default="127.0.0.1:2379",
                       help="HOST:PORT or http(s)://HOST:PORT to serve on "
                            "[default 127.0.0.1:2379; loopback unless told otherwise]")
    serve.add_argument("--data-dir", "-data-dir", required=True, type=Path,
                       help="directory for the store's SQLite database (created if missing)")
    serve.add_argument("--cert-file", "-cert-file", type=Path, help="TLS server certificate")
    serve.add_argument("--key-file", "-key-file", type=Path, help="TLS server key")
    serve.add_argument("--trusted-ca-file", "-trusted-ca-file", type=Path,
                       help="CA for client certificates; when given, clients must present one")
    serve.add_argument("--retain-revisions", "-retain-revisions", type=int, default=10_000,
                       help="history kept for watches; older revisions are compacted "
                            "[default 10000]")
    serve.add_argument("--experimental-watch-progress-notify-interval",
                       "-experimental-watch-progress-notify-interval", dest="progress_interval",
                       type=positive_duration, default="10m", metavar="DURATION",
                       help="how often watches created with progress_notify hear the current "
                            "revision (etcd's flag; e.g. 10m, 30s, 500ms) [default 10m]")
    serve.set_defaults(func=serve_main)

    status = sub.add_parser("status", help="Maintenance Status of a store (embedded or etcd)")
    add_store_flags(status, WEFT_STORE_ENV)
    status.set_defaults(func=status_main)

    from overlay.cli import store_backup_cmd

    store_backup_cmd.register(sub)


def positive_duration(text: str) -> float:
    """``--experimental-watch-progress-notify-interval``: a positive Go duration, seconds."""
    try:
        seconds = go_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the duration must be positive")
    return seconds


def serve_main(args: argparse.Namespace) -> int:
    from overlay.store.embedded.server import EmbeddedServer, TLSFiles, parse_listen

    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        print(f"weftctl store serve: {e}", file=sys.stderr)
        return 2
    tls = None
    if args.cert_file or args.key_file:
        if not (args.cert_file and args.key_file):
            print("weftctl store serve: --cert-file and --key-file go together", file=sys.stderr)
            return 2
        tls = TLSFiles(args.cert_file, args.key_file, args.trusted_ca_file)
    elif args.trusted_ca_file:
        print("weftctl store serve: --trusted-ca-file needs --cert-file/--key-file",
              file=sys.stderr)
        return 2
    if args.retain_revisions < 1:
        print("weftctl store serve: --retain-revisions must be >= 1", file=sys.stderr)
        return 2
    server = EmbeddedServer(args.data_dir, host, port, tls, retain=args.retain_revisions,
                            progress_interval=args.progress_interval)
    try:
        asyncio.run(_serve(server))
    except OSError as e:
        print(f"weftctl store serve: {e}", file=sys.stderr)
        return 1
    return 0


async def _serve(server: EmbeddedServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    state = server.state
    assert state is not None  # start() opened it
    # the store keeps many small long-lived objects (history); fewer, cheaper collections
    # keep watch latency tails short
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    try:
        await stop.wait()
        log.info("store: stopping (revision %d)", state.revision)
    finally:
        await server.stop()


def status_main(args: argparse.Namespace) -> int:
    from overlay.store.api import StoreError
    from overlay.store.embedded.snapshot import human_bytes

    try:
        st = asyncio.run(_status(store_config(args, WEFT_STORE_ENV)))
    except (StoreError, ValueError) as e:
        print(f"weftctl store status: {e}", file=sys.stderr)
        return 1
    print(f"endpoint:   {st.endpoint}")
    print(f"version:    {st.version}")
    print(f"revision:   {st.revision}")
    print(f"db size:    {human_bytes(st.db_size)}")
    print(f"member id:  {st.member_id:x}")
    print(f"leader:     {st.leader:x}")
    print(f"raft index: {st.raft_index}  term: {st.raft_term}")
    return 0


async def _status(cfg: StoreConfig) -> StoreStatus:
    from overlay.store.client import connect

    store = await connect(cfg)
    try:
        return await store.status()
    finally:
        await store.close()

