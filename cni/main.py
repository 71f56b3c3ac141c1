"""Process entry point of the ``weft`` CNI plugin: hand the exec to the helper, else run it here.

The exec'd path imports only ``os``, ``sys``, ``_socket`` and ``struct`` before
it knows whether a resident helper (``cni.helper``) will do the work; the
full plugin is imported only when it runs in-process.
"""

from __future__ import annotations

import os
import sys

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
HELPER_TIMEOUT = 300.0  # a helper that has not answered by then is stuck


def _via_helper(stdin: bytes) -> int | None:
    """Relay the invocation to this namespace's helper; None if there is none."""
    import _socket

    from cni import helper

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(helper.socket_name(PACKAGE_DIR))
        except OSError:
            return None
        sock.settimeout(HELPER_TIMEOUT)
        try:
            sock.sendall(helper.encode_request(os.environ, stdin))
            sock.shutdown(_socket.SHUT_WR)
            reply = helper.recv_all(sock)
        except TimeoutError:
            # it may still be working on this request: running it here as well could
            # race with it, so ask the runtime to retry instead
            sys.stdout.write('{"cniVersion": "1.1.0", "code": 11, "msg": "the weft helper '
                             f'did not answer within {HELPER_TIMEOUT:.0f} s"}}\n')
            sys.stdout.flush()
            return 1
        except OSError:
            reply = b""
        if len(reply) < 8:
            return None  # the helper went away before answering (idle exit, killed)
        rc, err, out = helper.decode_response(reply)
    finally:
        sock.close()
    if err:
        sys.stderr.buffer.write(err)
        sys.stderr.flush()
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return rc


def main(use_helper: bool = False) -> int:
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    if use_helper:
        rc = _via_helper(stdin)
        if rc is not None:
            return rc
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


if __name__ == "__main__":
    sys.exit(main())
