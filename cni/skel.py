"""The dispatcher: (environ, stdin, stdout) -> command -> result JSON or error JSON + exit code.

Like libcni's skel it takes its I/O as arguments, so tests can run it
in-process; ``cni.main`` wires it to the real process. Errors of the
``cni.errors`` tree become ``{cniVersion, code, msg, details}`` on stdout with
exit 1; anything unexpected becomes code 999 with the exception text, never a
traceback on stdout.
"""

from __future__ import annotations

import time

from cni import wire
from cni.errors import CniError, DecodeError, VersionError
from cni.log import Log
from cni.netconf import SUPPORTED_VERSIONS, NetConf, decode_stdin, parse_env, version_key
from cni.result import error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, BinaryIO, TextIO

# Tests only: ``WEFT_CNI_TEST_PAUSE_AT=<step>[:seconds]`` makes ADD sleep after
# <step> (allocated, veth, addressed) so a test can kill -9 it mid-way. Ignored
# unless WEFT_CNI_TESTING=1 is also set, so a stray variable cannot slow a host.
PAUSE_VAR = "WEFT_CNI_TEST_PAUSE_AT"


def _pauser(environ: Mapping[str, str]) -> Callable[[str], None]:
    spec = environ.get(PAUSE_VAR, "")
    if not spec or environ.get("WEFT_CNI_TESTING") != "1":
        return lambda step: None
    step_name, _, secs = spec.partition(":")
    delay = float(secs or "30")

    def pause(step: str) -> None:
        if step == step_name:
            time.sleep(delay)

    return pause


def _write(stdout: BinaryIO, obj: dict[str, Any]) -> None:
    stdout.write(wire.dumps(obj).encode() + b"\n")
    stdout.flush()


def dispatch(environ: Mapping[str, str], stdin: bytes, stdout: BinaryIO,
             stderr: TextIO | None = None) -> int:
    """Run one CNI invocation; returns the process exit code. Logs go to ``stderr``."""
    version = SUPPORTED_VERSIONS[-1]
    log = Log(stream=stderr)
    try:
        # decoded first so that every error, env errors too, answers in the config's version
        raw: dict[str, Any] | None = decode_stdin(stdin)
        decode_error = None
    except DecodeError as e:
        raw, decode_error = None, e
    if raw is not None:
        if isinstance(raw.get("cniVersion"), str) and raw["cniVersion"] in SUPPORTED_VERSIONS:
            version = raw["cniVersion"]
        if isinstance(raw.get("logLevel"), str):
            log = Log(raw["logLevel"], stderr)
    try:
        env = parse_env(environ)
        if env.command == "VERSION":
            asked = (raw or {}).get("cniVersion")
            _write(stdout, {"cniVersion": asked if asked in SUPPORTED_VERSIONS else
                            SUPPORTED_VERSIONS[-1],
                            "supportedVersions": list(SUPPORTED_VERSIONS)})
            return 0
        if raw is None:
            raise decode_error or DecodeError("stdin is not a JSON object")
        conf = NetConf(raw)
        if env.command in ("GC", "STATUS") and version_key(conf.cni_version) < (1, 1, 0):
            raise VersionError(f"{env.command} is not defined for cniVersion "
                               f"{conf.cni_version}", f"{env.command} needs cniVersion 1.1.0")
        from cni import commands

        if env.command == "ADD":
            _write(stdout, commands.add(env, conf, log, _pauser(environ)))
        elif env.command == "DEL":
            commands.delete(env, conf, log)
        elif env.command == "CHECK":
            commands.check(env, conf, log)
        elif env.command == "GC":
            commands.gc(conf, log)
        else:
            commands.status(conf)
        return 0
    except CniError as e:
        log.warning("%s failed: %s%s", environ.get("CNI_COMMAND", "?"), e.msg,
                    f" ({e.details})" if e.details else "")
        _write(stdout, error(version, e.code, e.msg, e.details))
        return 1
    except Exception as e:  # the boundary: never a traceback instead of error JSON
        log.warning("internal error: %r", e)
        _write(stdout, error(version, 999, f"internal error: {type(e).__name__}: {e}"))
        return 1
