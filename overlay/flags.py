"""Flannel/SkyDNS-style command-line flags: ``-flag`` or ``--flag``, with env fallbacks.

flannel (Go's ``flag`` package) accepts one or two leading dashes and reads any
flag from ``FLANNELD_<UPPER_SNAKE>``; SkyDNS does the same with ``SKYDNS_*``.
``FlagParser`` wraps argparse so each daemon declares a flag once and gets both
spellings, the environment fallback, and ``--help`` text that names the variable.
Precedence: command line > environment > default.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overlay.store.api import DEFAULT_ENDPOINTS, StoreConfig

_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6,
             "ns": 1e-9}
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")


def go_duration(text: str) -> float:
    """A Go duration as etcd's and SkyDNS's settings write it (``10m``, ``1m30s``,
    ``250ms``), in seconds. ValueError if it is not one."""
    text = text.strip()
    parts = _GO_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration like 10m, 30s or 500ms")
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


def _truthy(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "t", "yes", "y", "on"):
        return True
    if value in ("0", "false", "f", "no", "n", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


class FlagParser:
    """Declare flags once; parse argv with env fallbacks.

    ``env_prefixes`` maps a flag to candidate variables: for prefix ``FLANNELD_``
    the flag ``etcd-endpoints`` reads ``FLANNELD_ETCD_ENDPOINTS``. Extra explicit
    names (SkyDNS's ``ETCD_MACHINES``) are passed per flag with ``env=``.
    """

    def __init__(
        self,
        prog: str,
        description: str,
        env_prefixes: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._parser = argparse.ArgumentParser(
            prog=prog,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        self._prefixes = tuple(env_prefixes)
        self._environ = os.environ if environ is None else environ
        self._env_names: dict[str, tuple[str, ...]] = {}
        self._kinds: dict[str, str] = {}
        self._ignored: dict[str, tuple[str, str]] = {}  # dest -> (flag name, why)
        self._groups: dict[str, Any] = {}

    def _names(self, name: str, env: Sequence[str]) -> tuple[str, ...]:
        snake = name.upper().replace("-", "_")
        return tuple(p + snake for p in self._prefixes) + tuple(env)

    def add(
        self,
        name: str,
        help: str,
        default: Any = None,
        type: Any = str,
        env: Sequence[str] = (),
        repeat: bool = False,
        metavar: str | None = None,
        group: str | None = None,
    ) -> None:
        """A valued flag. ``repeat`` collects every occurrence into a list; ``group``
        lists it under that heading in ``--help``."""
        dest = name.replace("-", "_")
        names = self._names(name, env)
        self._env_names[dest] = names
        self._kinds[dest] = "list" if repeat else "value"
        shown = f" (env {', '.join(names)})" if names else ""
        dflt = "" if default in (None, [], "") else f" [default {default}]"
        self._target(group).add_argument(
            f"-{name}",
            f"--{name}",
            dest=dest,
            type=type,
            default=None,
            action="append" if repeat else "store",
            metavar=metavar or name.split("-")[-1].upper(),
            help=f"{help}{dflt}{shown}",
        )
        self._parser.set_defaults(**{f"_default_{dest}": default})
        self._types = getattr(self, "_types", {})
        self._types[dest] = type

    def add_bool(self, name: str, help: str, default: bool | None = False,
                 env: Sequence[str] = (), group: str | None = None) -> None:
        """A boolean flag: ``-x``, ``-x=true``, ``-x=false`` (Go's flag syntax); with
        ``default`` None it is None when not given."""
        dest = name.replace("-", "_")
        names = self._names(name, env)
        self._env_names[dest] = names
        self._kinds[dest] = "bool"
        shown = f" (env {', '.join(names)})" if names else ""
        dflt = "" if default is None else f" [default {str(default).lower()}]"
        self._target(group).add_argument(
            f"-{name}",
            f"--{name}",
            dest=dest,
            nargs="?",
            const="true",
            default=None,
            metavar="BOOL",
            help=f"{help}{dflt}{shown}",
        )
        self._parser.set_defaults(**{f"_default_{dest}": default})

    def _target(self, group: str | None) -> Any:
        """The parser, or its argument group ``group`` (made on first use)."""
        if group is None:
            return self._parser
        if group not in self._groups:
            self._groups[group] = self._parser.add_argument_group(group)
        return self._groups[group]

    def add_ignored(self, name: str, why: str, boolean: bool = False) -> None:
        """A flag of the program weft replaces that means nothing here: accepted, so its
        unit files and argument lists start weft unchanged (a boolean's value is still
        checked), and when given (flag or environment) listed with ``why`` in the parse
        result's ``ignored_flags``, for the one warning ``ignored_warning`` words."""
        group = "accepted for compatibility and ignored"
        if boolean:
            self.add_bool(name, why, default=None, group=group)
        else:
            self.add(name, why, metavar="VALUE", group=group)
        self._ignored[name.replace("-", "_")] = (name, why)

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse ``argv``; exits with status 2 and a message on bad input."""
        ns = self._parser.parse_args(_split_equals(argv))
        out = argparse.Namespace()
        ignored: list[tuple[str, str]] = []
        types = getattr(self, "_types", {})
        for dest, kind in self._kinds.items():
            value = getattr(ns, dest)
            default = getattr(ns, f"_default_{dest}")
            if value is None:
                for var in self._env_names[dest]:
                    raw = self._environ.get(var)
                    if raw is None:
                        continue
                    try:
                        if kind == "bool":
                            value = _truthy(raw)
                        elif kind == "list":
                            value = [types[dest](v) for v in raw.split(",") if v]
                        else:
                            value = types[dest](raw)
                    except ValueError as exc:
                        self._parser.error(f"environment variable {var}: {exc}")
                    break
            elif kind == "bool":
                try:
                    value = _truthy(value)
                except ValueError as exc:
                    self._parser.error(f"-{dest.replace('_', '-')}: {exc}")
            if value is None:
                value = default
            elif dest in self._ignored:
                ignored.append(self._ignored[dest])
            setattr(out, dest, value)
        out.ignored_flags = tuple(ignored)
        return out

    def error(self, message: str) -> None:
        self._parser.error(message)


def ignored_warning(args: argparse.Namespace) -> str | None:
    """The one warning naming every ``add_ignored`` flag that was given (None: none)."""
    given: tuple[tuple[str, str], ...] = getattr(args, "ignored_flags", ())
    if not given:
        return None
    return ("ignoring flags that have no meaning in weft: "
            + "; ".join(f"-{name} ({why})" for name, why in given))


def _split_equals(argv: Sequence[str] | None) -> list[str] | None:
    """Go accepts ``-flag=value`` with one dash; argparse only with two."""
    if argv is None:
        return None
    out: list[str] = []
    for arg in argv:
        if arg.startswith("-") and not arg.startswith("--") and "=" in arg:
            out.append("-" + arg)
        else:
            out.append(arg)
    return out


@dataclass(frozen=True, slots=True)
class StoreFlagEnv:
    """The environment variables each store flag falls back to, per program; the first
    one that is set wins. For a ``FlagParser`` these come after the parser's own
    prefixed names (``FLANNELD_ETCD_ENDPOINTS`` for prefix ``FLANNELD_``)."""

    endpoints: tuple[str, ...] = ()
    cafile: tuple[str, ...] = ()
    certfile: tuple[str, ...] = ()
    keyfile: tuple[str, ...] = ()
    username: tuple[str, ...] = ("WEFT_ETCD_USERNAME",)
    password: tuple[str, ...] = ("WEFT_ETCD_PASSWORD",)


# weftctl's network and leases commands: the values a host's flanneld uses work unchanged
FLANNELD_STORE_ENV = StoreFlagEnv(
    endpoints=("FLANNELD_ETCD_ENDPOINTS", "WEFT_ETCD_ENDPOINTS", "ETCDCTL_ENDPOINTS"),
    cafile=("FLANNELD_ETCD_CAFILE", "ETCDCTL_CACERT"),
    certfile=("FLANNELD_ETCD_CERTFILE", "ETCDCTL_CERT"),
    keyfile=("FLANNELD_ETCD_KEYFILE", "ETCDCTL_KEY"),
    username=("WEFT_ETCD_USERNAME", "FLANNELD_ETCD_USERNAME"),
    password=("WEFT_ETCD_PASSWORD", "FLANNELD_ETCD_PASSWORD"))
# weftctl dns: SkyDNS's variables for the endpoints
SKYDNS_STORE_ENV = StoreFlagEnv(endpoints=("ETCD_ENDPOINTS", "ETCD_MACHINES"))
# weftctl store status / snapshot save: the same (the host's flanneld's, weft's, etcdctl's)
WEFT_STORE_ENV = FLANNELD_STORE_ENV

# flag -> (help, metavar); the connection flags every program shares
_STORE_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("endpoints", "comma-separated store endpoints (etcd or `weftctl store serve`)", "URLS"),
    ("cafile", "TLS CA bundle to verify the store", "FILE"),
    ("certfile", "TLS client certificate", "FILE"),
    ("keyfile", "TLS client key", "FILE"),
    ("username", "username for etcd authentication (etcd v3 auth; unset = none)", "USER"),
    ("password", "password for etcd authentication; a value on the command line shows in "
     "`ps`, so prefer the environment", "PASSWORD"),
)


def add_store_flags(parser: FlagParser | argparse.ArgumentParser, env: StoreFlagEnv,
                    notes: Mapping[str, str] | None = None,
                    environ: Mapping[str, str] | None = None) -> None:
    """Declare the store connection flags (``-etcd-endpoints``, ``-etcd-cafile``,
    ``-etcd-certfile``, ``-etcd-keyfile``, ``-etcd-username``, ``-etcd-password``) on a
    daemon's ``FlagParser`` or a weftctl subcommand's argparse parser, with ``env`` as
    the environment fallbacks; ``notes`` adds a remark to a flag's help (by its short
    name, e.g. ``{"cafile": "alias -ca-cert"}``). ``store_config`` reads them back.

    On an argparse parser the environment is read now (it becomes the default), except
    for the password, which ``store_config`` reads so it never shows in ``--help``."""

    notes = notes or {}
    for short, text, metavar in _STORE_FLAGS:
        name = f"etcd-{short}"
        names: tuple[str, ...] = getattr(env, short)
        default = ",".join(DEFAULT_ENDPOINTS) if short == "endpoints" else None
        help = f"{text} ({notes[short]})" if short in notes else text
        if isinstance(parser, FlagParser):
            parser.add(name, help, default=default, env=names, metavar=metavar)
            continue
        src = os.environ if environ is None else environ
        if short != "password":
            default = next((src[n] for n in names if src.get(n)), default)
        dflt = f" [default {','.join(DEFAULT_ENDPOINTS)}]" if short == "endpoints" else ""
        shown = f" (env {', '.join(names)})" if names else ""
        parser.add_argument(f"-{name}", f"--{name}", dest=f"etcd_{short}", default=default,
                            metavar=metavar, help=f"{help}{dflt}{shown}")


def store_config(args: argparse.Namespace, env: StoreFlagEnv = WEFT_STORE_ENV,
                 environ: Mapping[str, str] | None = None) -> StoreConfig:
    """The store a program talks to, from the flags ``add_store_flags`` declared (ValueError
    on a bad endpoint list). Without ``-etcd-password`` the password comes from the first
    of ``env.password`` that is set (a password on the command line shows in ``ps``)."""
    password = args.etcd_password
    if password is None:
        src = os.environ if environ is None else environ
        password = next((src[n] for n in env.password if n in src), None)
    return StoreConfig.from_flag(args.etcd_endpoints, args.etcd_cafile, args.etcd_certfile,
                                 args.etcd_keyfile, username=args.etcd_username,
                                 password=password)
