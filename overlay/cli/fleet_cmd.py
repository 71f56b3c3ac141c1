"""fleetctl's verbs on weftctl: submit, load, start, stop, unload, destroy, status, journal,
list-units, list-unit-files, list-machines.

Same meanings as fleetctl: a command sets a unit's *desired* state (inactive -> loaded ->
launched) and the scheduler's engine and agents make it so; ``start``/``load``/``stop``/
``unload`` wait for that unless ``--no-block`` (``--block-attempts N``: give up after
about N seconds; 0 waits forever, as fleetctl). Units are immutable: a different file
under a submitted name is refused until the unit is destroyed. Every argument is checked
(syntax, options, names, MachineOf cycles) before anything is written, and every write
is a compare-and-swap (``overlay.sched.registry``).

``status`` and ``journal`` fetch recent log lines from the agent running the unit over
its HTTP endpoint (``/journal/<unit>``), as fleetctl reaches the unit's machine over SSH.

Store flags as every weftctl command (``-etcd-endpoints``, TLS, auth); the endpoints
default from ``WEFT_ETCD_ENDPOINTS`` then etcdctl's ``ETCDCTL_ENDPOINTS`` (which
``weftctl sandbox exec`` sets), so commands run on a sandbox host need no flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TextIO

from overlay.clock import Clock, SystemClock
from overlay.flags import StoreFlagEnv, add_store_flags, store_config
from overlay.sched.errors import SchedError
from overlay.sched.keys import DEFAULT_ROOT, Layout
from overlay.sched.registry import (
    LocalUnit,
    Snapshot,
    Verb,
    Waiter,
    apply,
    check_units,
    current_state,
    dumps,
    machine_rows,
    read_snapshot,
    resolve,
    unit_file_rows,
    unit_rows,
)
from overlay.store.api import Store, StoreError

SCHED_STORE_ENV = StoreFlagEnv(
    endpoints=("WEFT_ETCD_ENDPOINTS", "ETCDCTL_ENDPOINTS"), cafile=("ETCDCTL_CACERT",),
    certfile=("ETCDCTL_CERT",), keyfile=("ETCDCTL_KEY",))
BLOCK_ATTEMPT_SECONDS = 1.0  # one --block-attempts attempt
JOURNAL_TIMEOUT = 5.0
FOLLOW_WAIT = 3.0  # the agent holds a follow request this long at most (it caps at 4 s)

_STATE_VERBS = (
    (Verb.SUBMIT, "submit unit files to the registry (desired state inactive)", False),
    (Verb.LOAD, "submit and schedule units onto machines, not started (desired loaded)", True),
    (Verb.START, "submit, schedule and start units (desired launched)", True),
    (Verb.STOP, "stop launched units, keeping them scheduled (desired loaded)", True),
    (Verb.UNLOAD, "stop and unschedule units (desired inactive)", True),
    (Verb.DESTROY, "stop, unschedule and remove units from the registry", False),
)


def _common(p: argparse.ArgumentParser) -> None:
    add_store_flags(p, SCHED_STORE_ENV)
    p.add_argument("-sched-prefix", "--sched-prefix", dest="sched_prefix",
                   default=os.environ.get("WEFT_SCHED_PREFIX", DEFAULT_ROOT),
                   help=f"scheduler key prefix, as the agents' -sched-prefix [default "
                        f"{DEFAULT_ROOT}] (env WEFT_SCHED_PREFIX)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb, text, blocks in _STATE_VERBS:
        p = subparsers.add_parser(verb.value, help=text, description=text + ".")
        p.add_argument("units", nargs="+", metavar="FILE-or-NAME",
                       help="a unit file, or the name of a unit in the registry (an "
                            "instance name such as foo@1.service uses the template "
                            "foo@.service from the registry or the same directory)")
        if blocks:
            p.add_argument("--no-block", action="store_true",
                           help="return once the desired state is written")
            p.add_argument("--block-attempts", type=int, default=0, metavar="N",
                           help="wait at most about N seconds (0: no limit, as fleetctl)")
        _common(p)
        p.set_defaults(func=_verb_handler(verb))

    p = subparsers.add_parser("status", help="where units run, since when, last exit, "
                              "recent log lines")
    p.add_argument("units", nargs="+", metavar="NAME")
    p.add_argument("-n", "--lines", type=int, default=10, help="log lines [default 10]")
    _common(p)
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("journal", help="a unit's log lines, from the agent running it")
    p.add_argument("unit", metavar="NAME")
    p.add_argument("-n", "--lines", type=int, default=10, help="lines [default 10]")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    _common(p)
    p.set_defaults(func=cmd_journal)

    for name, text, func in (
            ("list-units", "units on machines: UNIT MACHINE ACTIVE SUB ADDRESS", cmd_list_units),
            ("list-unit-files", "units in the registry: UNIT HASH DSTATE STATE TARGET REASON",
             cmd_list_unit_files),
            ("list-machines", "machines holding presence: MACHINE IP METADATA",
             cmd_list_machines)):
        p = subparsers.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", help="print one JSON array")
        p.add_argument("-l", "--full", action="store_true",
                       help="do not shorten machine ids and hashes")
        p.add_argument("--no-legend", action="store_true", help="omit the header line")
        _common(p)
        p.set_defaults(func=func)


# -- plumbing -----------------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        result: int = asyncio.run(coro)
        return result
    except SchedError as exc:
        sys.stderr.write(f"weftctl: {exc}\n")
        return 1
    except (StoreError, ValueError) as exc:
        sys.stderr.write(f"weftctl: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


async def _session(args: argparse.Namespace,
                   body: Callable[[Store, Layout], Coroutine[Any, Any, int]]) -> int:
    from overlay.store.client import connect

    prefix = args.sched_prefix
    layout = Layout(prefix if prefix.endswith("/") else prefix + "/")
    store = await connect(store_config(args, SCHED_STORE_ENV))
    try:
        return await body(store, layout)
    finally:
        await store.close()


def _read_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None


def _short(machine: str, full: bool) -> str:
    return machine if full or len(machine) <= 8 else machine[:8] + "..."


def _where(snap: Snapshot, machine: str, full: bool = False) -> str:
    rec = snap.machines.get(machine) or snap.members.get(machine)
    return f"{_short(machine, full)}/{rec.ip}" if rec else _short(machine, full)


def _warn_problems(snap: Snapshot, err: TextIO) -> None:
    for problem in snap.problems:
        err.write(f"weftctl: skipping malformed record {problem}\n")


# -- state verbs -------------------------------------------------------------------------------


def _verb_handler(verb: Verb) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return _run(_session(args, lambda store, layout: run_verb(
            store, layout, verb, args.units, block=not getattr(args, "no_block", True),
            attempts=getattr(args, "block_attempts", 0), out=sys.stdout)))
    return handler


async def run_verb(store: Store, layout: Layout, verb: Verb, args: Sequence[str], *,
                   block: bool, attempts: int, out: TextIO,
                   read_file: Callable[[str], str | None] = _read_file) -> int:
    """Check every argument, write the desired states (CAS), then wait if ``block``."""
    snap = await read_snapshot(store, layout)
    local: list[LocalUnit] = []
    for arg in args:
        if verb is Verb.DESTROY:  # by name, whatever a local file says
            name = os.path.basename(arg)
            stored = snap.units.get(name)
            if stored is None:
                out.write(f"Unit {name} does not exist\n")
                continue
            lu = LocalUnit(name, stored.record.contents, arg, stored)
        else:
            lu = resolve(arg, snap, read_file)
        if all(x.name != lu.name for x in local):
            local.append(lu)
    parsed = check_units(verb, local, snap)  # raises before anything is written
    is_global = {uf.name: uf.fleet.global_ for uf in parsed}
    for lu in local:
        outcome = await apply(store, layout, verb, lu)
        if verb is Verb.DESTROY:
            out.write(f"Destroyed {lu.name}\n")
        elif verb is Verb.SUBMIT and outcome.changed:  # already there: nothing to say
            out.write(f"Unit {lu.name} inactive\n")
    if verb in (Verb.SUBMIT, Verb.DESTROY):
        return 0
    waitable = [lu.name for lu in local if not is_global.get(lu.name)]
    for lu in local:
        if is_global.get(lu.name) or not block:
            out.write(f"Triggered {'global ' if is_global.get(lu.name) else ''}unit "
                      f"{lu.name} {verb.value}\n")
    if not block or not waitable:
        return 0
    pending = await wait_for(store, layout, verb, waitable, snap,
                             attempts * BLOCK_ATTEMPT_SECONDS, out)
    for name in pending:
        sys.stderr.write(f"weftctl: unit {name} did not reach {_GOAL[verb]} in time\n")
    return 1 if pending else 0


_GOAL = {Verb.LOAD: "loaded", Verb.START: "launched", Verb.STOP: "loaded",
         Verb.UNLOAD: "inactive"}


async def wait_for(store: Store, layout: Layout, verb: Verb, names: Sequence[str],
                   snap: Snapshot, timeout: float, out: TextIO) -> list[str]:
    """Watch the scheduler root from ``snap`` until each unit reached the verb's goal
    (printing fleetctl's line for it) or ``timeout`` seconds (0: none); the names left."""
    waiter = Waiter(verb, names, snap, layout)
    pending = list(names)
    snap_now = [snap]  # re-read when a unit is done, for its machine's IP

    def report() -> None:
        for name in list(pending):
            if waiter.done(name):
                pending.remove(name)
                where = ", ".join(_where(snap_now[0], m) for m in waiter.where(name))
                goal = _GOAL[verb]
                out.write(f"Unit {name} {goal}" + (f" on {where}\n" if where and
                                                   verb is not Verb.UNLOAD else "\n"))
                out.flush()

    report()
    if not pending:
        return []

    async def watch() -> None:
        async for batch in store.watch(layout.root.encode(), snap.revision + 1):
            waiter.feed(batch)
            if any(waiter.done(n) for n in pending):
                snap_now[0] = await read_snapshot(store, layout)  # for machine IPs
            report()
            if not pending:
                return

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout if timeout > 0 else None):
            await watch()
    return pending


# -- status and journal ----------------------------------------------------------------------


def _http_json(url: str, timeout: float) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body = json.loads(resp.read().decode())
    if not isinstance(body, dict):
        raise ValueError(f"{url}: answer is not a JSON object")
    return body


async def fetch_journal(snap: Snapshot, unit: str, machine: str, lines: int,
                        after: str | None = None, wait: float = 0.0) -> tuple[list[str], str]:
    """Log lines of ``unit`` from the agent on ``machine`` and the cursor after them."""
    rec = snap.machines.get(machine) or snap.members.get(machine)
    if rec is None or not rec.port:
        raise OSError(f"machine {machine} has no agent endpoint registered")
    query = {"n": str(lines)}
    if after is not None:
        query.update(after=after, wait=str(wait))
    host = f"[{rec.ip}]" if rec.ip.version == 6 else str(rec.ip)
    url = (f"http://{host}:{rec.port}/journal/{urllib.parse.quote(unit, safe='')}?"
           + urllib.parse.urlencode(query))
    body = await asyncio.to_thread(_http_json, url, JOURNAL_TIMEOUT + wait)
    got = body.get("lines", [])
    if not isinstance(got, list):
        raise ValueError(f"{url}: 'lines' is not a list")
    return [str(x) for x in got], str(body.get("next", ""))


def _fmt_time(ts: float) -> str:
    return time.strftime("%a %Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def status_text(snap: Snapshot, name: str, now: float) -> str:
    """The ``status`` block for one unit (without log lines)."""
    stored = snap.units.get(name)
    if stored is None:
        return f"Unit {name} does not exist.\n"
    lines = [f"● {name}", f"   Unit: desired {stored.record.desired.value}, state "
             f"{current_state(snap, name).value}, hash {stored.record.hash[:7]}"]
    machines = sorted(set(snap.assignments.get(name, ())) | set(snap.states.get(name, {})))
    if not machines:
        reason = snap.unscheduled.get(name)
        lines.append("   Machine: -" + (f" (no machine: {reason})" if reason else ""))
    for m in machines:
        lines.append(f"   Machine: {_where(snap, m, full=True)}")
        st = snap.states.get(name, {}).get(m)
        if st is None:
            lines.append("   Active: - (no report from the agent yet)")
            continue
        ago = f"; {max(0, int(now - st.since))}s ago" if st.since else ""
        pid = f"; pid {st.pid}" if st.pid else ""
        lines.append(f"   Active: {st.active} ({st.sub}) since {_fmt_time(st.since)}{ago}{pid}")
        if st.address is not None:
            lines.append(f"   Address: {st.address}")
        lines.append(f"   Last exit: {'-' if st.exit is None else st.exit}")
    return "\n".join(lines) + "\n"


def _log_machine(snap: Snapshot, name: str) -> str | None:
    """The machine whose journal to read: one that runs the unit, else one that holds it."""
    states = snap.states.get(name, {})
    running = sorted(m for m, s in states.items() if s.active == "active")
    held = sorted(set(snap.assignments.get(name, ())) | set(states))
    pick = running or held
    return pick[0] if pick else None


async def show_status(store: Store, layout: Layout, names: Sequence[str], lines: int,
                      out: TextIO, clock: Clock) -> int:
    snap = await read_snapshot(store, layout)
    _warn_problems(snap, sys.stderr)
    status = 0
    for i, name in enumerate(names):
        if i:
            out.write("\n")
        out.write(status_text(snap, name, clock.now()))
        if name not in snap.units:
            status = 1
            continue
        machine = _log_machine(snap, name)
        if machine is None or lines <= 0:
            continue
        try:
            got, _ = await fetch_journal(snap, name, machine, lines)
        except (OSError, ValueError) as exc:
            out.write(f"\n(no log lines: {exc})\n")
            continue
        out.write("\n" + "".join(line + "\n" for line in got))
    return status


async def show_journal(store: Store, layout: Layout, name: str, lines: int, follow: bool,
                       out: TextIO, clock: Clock) -> int:
    """Print the unit's last ``lines``; with ``follow`` keep printing, moving to the unit's
    new machine if it is rescheduled."""
    snap = await read_snapshot(store, layout)
    if name not in snap.units:
        sys.stderr.write(f"weftctl: unit {name} does not exist\n")
        return 1
    machine = _log_machine(snap, name)
    if machine is None:
        sys.stderr.write(f"weftctl: unit {name} is not on any machine\n")
        return 1
    got, cursor = await fetch_journal(snap, name, machine, lines)
    out.write("".join(line + "\n" for line in got))
    out.flush()
    while follow:
        try:
            got, cursor = await fetch_journal(snap, name, machine, lines, cursor, FOLLOW_WAIT)
        except (OSError, ValueError):
            await clock.sleep(1.0)
            snap = await read_snapshot(store, layout)
            moved = _log_machine(snap, name)
            if moved is not None and moved != machine:
                machine = moved
                out.write(f"-- unit {name} now on {_where(snap, machine)} --\n")
                got, cursor = await fetch_journal(snap, name, machine, lines)
            else:
                continue
        out.write("".join(line + "\n" for line in got))
        out.flush()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    return _run(_session(args, lambda store, layout: show_status(
        store, layout, args.units, args.lines, sys.stdout, SystemClock())))


def cmd_journal(args: argparse.Namespace) -> int:
    return _run(_session(args, lambda store, layout: show_journal(
        store, layout, args.unit, args.lines, args.follow, sys.stdout, SystemClock())))


# -- lists ----------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]], legend: bool = True) -> str:
    """Left-aligned columns, two spaces apart (fleetctl's tabwriter look)."""
    body = ([list(header)] if legend else []) + [list(r) for r in rows]
    if not body:
        return ""
    widths = [max(len(r[i]) for r in body) for i in range(len(body[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n"
                   for r in body)


def render_units(snap: Snapshot, as_json: bool, full: bool, legend: bool) -> str:
    rows = unit_rows(snap)
    return dumps(rows) + "\n" if as_json else table(
        ("UNIT", "MACHINE", "ACTIVE", "SUB", "ADDRESS"),
        [(str(r["unit"]), _where(snap, str(r["machine"]), full), r["active"] or "-",
          r["sub"] or "-", r["address"] or "-") for r in rows], legend)


def _target(snap: Snapshot, target: str | None, full: bool) -> str:
    return "-" if target is None else target if target == "global" else _where(
        snap, target, full)


def render_unit_files(snap: Snapshot, as_json: bool, full: bool, legend: bool) -> str:
    rows = unit_file_rows(snap)
    return dumps(rows) + "\n" if as_json else table(
        ("UNIT", "HASH", "DSTATE", "STATE", "TARGET", "REASON"),
        [(str(r["unit"]), str(r["hash"]) if full else str(r["hash"])[:7], str(r["desired"]),
          str(r["state"]), _target(snap, r["target"], full), r["reason"] or "-")
         for r in rows], legend)


def _metadata(meta: object) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(meta.items())) if isinstance(
        meta, dict) and meta else "-"


def render_machines(snap: Snapshot, as_json: bool, full: bool, legend: bool) -> str:
    rows = machine_rows(snap)
    return dumps(rows) + "\n" if as_json else table(
        ("MACHINE", "IP", "METADATA"),
        [(_short(str(r["machine"]), full), str(r["ip"]), _metadata(r["metadata"]))
         for r in rows], legend)


def _list(render: Callable[[Snapshot, bool, bool, bool], str]) -> Callable[
        [argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        async def body(store: Store, layout: Layout) -> int:
            snap = await read_snapshot(store, layout)
            _warn_problems(snap, sys.stderr)
            sys.stdout.write(render(snap, args.json, args.full, not args.no_legend))
            return 0
        return _run(_session(args, body))
    return handler


cmd_list_units = _list(render_units)
cmd_list_unit_files = _list(render_unit_files)
cmd_list_machines = _list(render_machines)
