"""Process entry point of the ``weft`` CNI plugin: hand the exec to the helper, else run it here.

Until it knows whether the host namespace's resident helper (``cni.helper``)
will do the work, the exec'd path touches only builtins (``posix``, ``_socket``):
every import here is paid on every container ADD and DEL. The full plugin is
imported only when the invocation runs in-process. The launcher calls ``run``,
which ends the process with ``posix._exit`` once the output is flushed: a
relayed exec is then little more than the interpreter's start-up.
"""

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn, TextIO

PACKAGE_DIR = __file__.rpartition("/")[0]  # absolute: the launcher puts an absolute root
HELPER_TIMEOUT = 300.0  # a helper that has not answered by then is stuck


def _via_helper(stdin: bytes) -> "int | None":
    """Relay the invocation to this namespace's helper; None if there is none."""
    import _socket
    import posix

    from cni import relay

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(relay.socket_name(PACKAGE_DIR))
        except OSError:
            return None
        sock.settimeout(HELPER_TIMEOUT)
        try:
            sock.sendall(relay.encode_request_raw(posix.environ, stdin))
            sock.shutdown(_socket.SHUT_WR)
            reply = relay.recv_all(sock)
        except TimeoutError:
            # it may still be working on this request: running it here as well could
            # race with it, so ask the runtime to retry instead
            sys.stdout.write('{"cniVersion": "1.1.0", "code": 11, "msg": "the weft helper '
                             f'did not answer within {HELPER_TIMEOUT:.0f} s", "details": ""}}\n')
            sys.stdout.flush()
            return 1
        except OSError:
            reply = b""
        if len(reply) < 8:
            return None  # the helper went away before answering (idle exit, killed)
        rc, err, out = relay.decode_response(reply)
    finally:
        sock.close()
    if err:
        sys.stderr.buffer.write(err)
        sys.stderr.flush()
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return rc


def about(stream: "TextIO") -> int:
    """What the reference plugins print when run by hand (no CNI_COMMAND), plus the version."""
    from cni.netconf import SUPPORTED_VERSIONS
    from overlay.version import version_text

    stream.write(f"CNI weft plugin: {version_text('weft')}\n"
                 f"CNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)}\n")
    return 0


def main(use_helper: bool = False) -> int:
    if "--version" in sys.argv[1:] or "-version" in sys.argv[1:]:
        return about(sys.stdout)
    import posix

    if not posix.environ.get(b"CNI_COMMAND"):  # run by hand, as the reference skel does
        return about(sys.stderr)
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    if use_helper:
        rc = _via_helper(stdin)
        if rc is not None:
            return rc
    import os

    from cni.skel import dispatch

    rc = dispatch(os.environ, stdin, sys.stdout.buffer)
    if use_helper and os.environ.get("CNI_COMMAND") in ("ADD", "DEL", "CHECK"):
        sys.stdout.flush()
        from cni import helper

        listener = helper.claim(PACKAGE_DIR)
        if listener is not None:
            try:
                helper.spawn(sys.executable, os.path.dirname(PACKAGE_DIR), listener)
            except OSError:
                pass  # no helper: the next exec runs in-process (and tries again)
            finally:
                listener.close()
    return rc


def run(use_helper: bool = False) -> "NoReturn":
    """``main`` as the process: flush our output, then exit without finalizing.

    Tearing down the interpreter (module dicts, GC, allocator arenas) costs
    ~1 ms of CPU, a sixth of a relayed exec; nothing weft runs needs it (no
    atexit hooks, files closed, outputs flushed here), so skip it.
    """
    import posix

    try:
        rc = main(use_helper)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        rc = rc or 1
    posix._exit(rc)


if __name__ == "__main__":
    run()
