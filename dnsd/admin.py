"""``weftctl dns set|rm|ls``: manage SkyDNS records without hand-writing keys or JSON.

``set NAME --host H ...`` writes the SkyDNS JSON for NAME at its key (a name
with several services uses one leaf label per service: ``x1.web.skydns.local``);
``--lease-ttl S`` attaches a fresh store lease so the record disappears S
seconds later unless rewritten. ``rm NAME`` deletes the key (``-r``: and
everything below it). ``ls [NAME]`` prints every record at or below NAME.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import Any

from overlay.flags import SKYDNS_STORE_ENV, add_store_flags, store_config
from overlay.store.api import StoreError

from .keys import BadNameError, key_to_path, name_to_key, path_to_name
from .records import RecordError, Service, decode, parse_ip


def _store_flags(p: argparse.ArgumentParser) -> None:
    """The store flags (overlay.flags) with SkyDNS's variables, plus ``-path-prefix``."""
    add_store_flags(p, SKYDNS_STORE_ENV)
    p.add_argument("-path-prefix", "--path-prefix", dest="path_prefix",
                   default=os.environ.get("SKYDNS_PATH_PREFIX", "/skydns"),
                   help="key prefix of the records [/skydns]")


def register(subparsers: Any) -> None:
    dns = subparsers.add_parser("dns", help="manage SkyDNS records served by dnsd")
    sub = dns.add_subparsers(dest="dns_command", metavar="ACTION", required=True)

    s = sub.add_parser("set", help="write a record: NAME --host H [--port P] ...")
    s.add_argument("name", help="the record's name, e.g. x1.web.skydns.local")
    s.add_argument("--host", default="", help="IP (A/AAAA) or name (CNAME/SRV target)")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--priority", type=int, default=0)
    s.add_argument("--weight", type=int, default=0)
    s.add_argument("--ttl", type=int, default=0, help="record TTL in seconds (0 = default)")
    s.add_argument("--text", default="", help="TXT data")
    s.add_argument("--mail", action="store_true", help="also an MX target")
    s.add_argument("--group", default="")
    s.add_argument("--targetstrip", type=int, default=0)
    s.add_argument("--lease-ttl", type=int, default=0,
                   help="attach a lease: the record expires after this many seconds")
    _store_flags(s)
    s.set_defaults(func=cmd_set)

    r = sub.add_parser("rm", help="delete a record")
    r.add_argument("name")
    r.add_argument("-r", "--recursive", action="store_true", help="also every record below")
    _store_flags(r)
    r.set_defaults(func=cmd_rm)

    ls = sub.add_parser("ls", help="list records at or below NAME (default: all)")
    ls.add_argument("name", nargs="?", default="")
    _store_flags(ls)
    ls.set_defaults(func=cmd_ls)


def _prefix(args: argparse.Namespace) -> str:
    return "/" + str(args.path_prefix).strip("/")


def _fail(msg: str) -> int:
    print(f"weftctl dns: {msg}", file=sys.stderr)
    return 1


def cmd_set(args: argparse.Namespace) -> int:
    try:
        key = name_to_key(args.name, _prefix(args))
        if not args.host and not args.text:
            return _fail("give --host and/or --text")
        if args.lease_ttl < 0:
            return _fail("--lease-ttl must be positive")
        svc = Service(key=key, host=args.host, port=args.port, priority=args.priority,
                      weight=args.weight, text=args.text, ttl=args.ttl, mail=args.mail,
                      group=args.group, targetstrip=args.targetstrip, ip=parse_ip(args.host))
        raw = svc.to_json()
        decode(key, raw)  # the same checks dnsd applies
    except (BadNameError, RecordError, ValueError) as exc:
        return _fail(str(exc))

    async def run() -> int:
        from overlay.store.client import connect

        store = await connect(store_config(args, SKYDNS_STORE_ENV))
        try:
            lease = await store.grant(args.lease_ttl) if args.lease_ttl else 0
            await store.put(key.encode(), raw, lease)
        finally:
            await store.close()
        print(f"{key} {raw.decode()}" + (f" (lease {lease:x}, {args.lease_ttl}s)"
                                         if lease else ""))
        return 0

    return _run(run())


def cmd_rm(args: argparse.Namespace) -> int:
    try:
        key = name_to_key(args.name, _prefix(args))
    except BadNameError as exc:
        return _fail(str(exc))

    async def run() -> int:
        from overlay.store.client import connect

        store = await connect(store_config(args, SKYDNS_STORE_ENV))
        try:
            n = await store.delete(key.encode())
            if args.recursive:
                n += await store.delete((key + "/").encode(), prefix=True)
        finally:
            await store.close()
        if not n:
            return _fail(f"no record at {key}")
        print(f"deleted {n} record(s) at {key}")
        return 0

    return _run(run())


def cmd_ls(args: argparse.Namespace) -> int:
    prefix = _prefix(args)
    try:
        key = name_to_key(args.name, prefix) if args.name else prefix
    except BadNameError as exc:
        return _fail(str(exc))

    async def run() -> int:
        from overlay.store.client import connect

        store = await connect(store_config(args, SKYDNS_STORE_ENV))
        try:
            exact = await store.get(key.encode())
            listing = await store.list((key.rstrip("/") + "/").encode())
        finally:
            await store.close()
        items = ([exact] if exact else []) + list(listing.items)
        for kv in items:
            text = kv.key.decode(errors="replace")
            path = key_to_path(text, prefix)
            name = path_to_name(path) if path is not None else text
            lease = f" lease={kv.lease:x}" if kv.lease else ""
            print(f"{name}\t{text}\t{kv.value.decode(errors='replace')}{lease}")
        return 0

    return _run(run())


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        return asyncio.run(coro)
    except StoreError as exc:
        return _fail(f"store: {exc}")
    except ValueError as exc:
        return _fail(str(exc))
