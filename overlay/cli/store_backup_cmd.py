"""weftctl store snapshot save|restore|status and weftctl store migrate: the embedded store's
backups, and moving a cluster's keys between stores.

* ``snapshot save FILE``: Maintenance Snapshot of the first answering endpoint, written to
  ``FILE.part``, fsync'd and renamed, as ``etcdctl snapshot save`` does (works against any
  etcd too; only the embedded store's files are understood by ``status``/``restore``).
* ``snapshot status FILE [-w simple|table|json|fields]``: hash, revision, keys, size, in
  etcdctl's formats.
* ``snapshot restore FILE --data-dir DIR``: a new data dir for ``weftctl store serve``.
* ``migrate --from URL --to URL [--prefix P]… [--force]``: overlay/store/migrate.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from overlay.flags import WEFT_STORE_ENV, add_store_flags, store_config
from overlay.store.api import StoreConfig, StoreError

_WRITE_OUT = ("simple", "table", "json", "fields")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``snapshot`` and ``migrate`` to ``weftctl store``'s subcommands."""
    snap = sub.add_parser("snapshot", help="back up and restore the embedded store")
    ssub = snap.add_subparsers(dest="snapshot_command", metavar="ACTION")

    def snap_help(_args: argparse.Namespace) -> int:
        snap.print_help()
        return 2

    snap.set_defaults(func=snap_help)
    save = ssub.add_parser("save", help="write a point-in-time snapshot of the store to FILE "
                           "(taken without stopping writes)")
    save.add_argument("file", type=Path, metavar="FILE")
    add_store_flags(save, WEFT_STORE_ENV)  # those of `weftctl store status`
    save.set_defaults(func=cmd_save)
    status = ssub.add_parser("status", help="hash, revision, keys and size of a snapshot file")
    status.add_argument("file", type=Path, metavar="FILE")
    status.add_argument("-w", "--write-out", choices=_WRITE_OUT, default="simple",
                        help="output format, as etcdctl's [simple]")
    status.set_defaults(func=cmd_status)
    restore = ssub.add_parser("restore", help="make a NEW data dir holding a snapshot, for "
                              "`weftctl store serve --data-dir`")
    restore.add_argument("file", type=Path, metavar="FILE")
    restore.add_argument("--data-dir", "-data-dir", required=True, type=Path,
                         help="directory to create (refused if it exists and is not empty)")
    restore.add_argument("--skip-hash-check", action="store_true",
                         help="restore even if the file's SHA-256 does not match "
                              "(a damaged or truncated file)")
    restore.set_defaults(func=cmd_restore)

    mig = sub.add_parser(
        "migrate", help="copy every key (and lease) under the prefixes from one store to "
        "another: embedded -> etcd or etcd -> embedded",
        description="Copies every key under the prefixes at one source revision, re-creates "
        "their leases (same ids, the TTL they have left) and verifies the destination "
        "holds exactly those keys and values. Stop the daemons writing to the source (or "
        "restart them on the destination right after: their leases keep only the TTL left).")
    mig.add_argument("--from", dest="source", required=True, metavar="URLS",
                     help="source store endpoints (comma list)")
    mig.add_argument("--to", dest="dest", required=True, metavar="URLS",
                     help="destination store endpoints (comma list)")
    from overlay.store.migrate import DEFAULT_PREFIXES

    mig.add_argument("--prefix", action="append", dest="prefixes", metavar="P",
                     help="key prefix to copy; repeatable [default: "
                          f"{', '.join(DEFAULT_PREFIXES)}]")
    mig.add_argument("--force", action="store_true",
                     help="replace keys the destination already holds under the prefixes "
                          "(they are deleted first) instead of refusing")
    for side, which in (("from", "source"), ("to", "destination")):
        for name in ("cafile", "certfile", "keyfile"):
            mig.add_argument(f"--{side}-{name}", dest=f"{side}_{name}", metavar="FILE",
                             help=f"TLS {name} for the {which}")
    mig.set_defaults(func=cmd_migrate)


def _run(what: str, coro: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(coro)
    except (StoreError, ValueError, OSError) as e:
        print(f"weftctl store {what}: {e}", file=sys.stderr)
        return 1


# -- snapshot --------------------------------------------------------------------------


def cmd_save(args: argparse.Namespace) -> int:
    return _run("snapshot save", _save(store_config(args, WEFT_STORE_ENV), args.file))


async def _save(cfg: StoreConfig, path: Path) -> int:
    from overlay.store.client import connect
    from overlay.store.embedded import snapshot

    part = path.with_name(path.name + ".part")
    store = await connect(cfg)
    try:
        with part.open("wb") as f:
            try:
                size = await store.snapshot(f.write)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    part.unlink()
                raise
        part.rename(path)
        endpoint = store.endpoint
    finally:
        await store.close()
    st = snapshot.verify(path)
    kind = "" if st is not None else " (not an embedded store snapshot: an etcd one?)"
    print(f"Snapshot saved at {path}: {snapshot.human_bytes(size)} from {endpoint}{kind}")
    if st is not None:
        print(f"revision {st.revision}, {st.total_keys} keys, hash {st.hash:x}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from overlay.store.embedded import snapshot

    try:
        st = snapshot.status(args.file)
    except StoreError as e:
        print(f"weftctl store snapshot status: {e}", file=sys.stderr)
        return 1
    print(snapshot.format_status(st, args.write_out))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from overlay.store.embedded import snapshot

    try:
        st = snapshot.restore(args.file, args.data_dir, args.skip_hash_check)
    except (StoreError, OSError) as e:
        print(f"weftctl store snapshot restore: {e}", file=sys.stderr)
        return 1
    print(f"restored {args.file} into {args.data_dir}: revision {st.revision}, "
          f"{st.total_keys} keys; serve it with `weftctl store serve --data-dir "
          f"{args.data_dir}`")
    return 0


# -- migrate ---------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    from overlay.store.migrate import DEFAULT_PREFIXES

    try:
        src = StoreConfig.from_flag(args.source, args.from_cafile, args.from_certfile,
                                    args.from_keyfile)
        dst = StoreConfig.from_flag(args.dest, args.to_cafile, args.to_certfile,
                                    args.to_keyfile)
    except ValueError as e:
        print(f"weftctl store migrate: {e}", file=sys.stderr)
        return 2
    if set(src.endpoints) & set(dst.endpoints):
        print("weftctl store migrate: --from and --to name the same store", file=sys.stderr)
        return 2
    return _run("migrate", _migrate(src, dst, args.prefixes or list(DEFAULT_PREFIXES),
                                    args.force))


async def _migrate(src_cfg: StoreConfig, dst_cfg: StoreConfig, prefixes: list[str],
                   force: bool) -> int:
    from overlay.store.client import connect
    from overlay.store.migrate import migrate

    src = await connect(src_cfg)
    try:
        dst = await connect(dst_cfg)
        try:
            res = await migrate(src, dst, prefixes, force, say=print)
        finally:
            await dst.close()
    finally:
        await src.close()
    for c in res.counts:
        print(f"{c.prefix}: {c.keys} keys copied and verified")
    print(f"{res.keys} keys, {res.leases} leases from revision {res.revision} of "
          f"{src_cfg.endpoints[0]} to {dst_cfg.endpoints[0]}")
    if res.expired:
        print(f"{len(res.expired)} lease(s) ran out before the copy; their {res.skipped_keys} "
              "keys were left out (the source deletes them too)")
    if res.source_moved:
        print("warning: the source changed under these prefixes during the copy; stop the "
              "writers and run again with --force to pick the changes up", file=sys.stderr)
        return 3
    return 0
