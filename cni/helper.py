"""The resident helper: one warm weft process per host network namespace serving plugin execs.

Theory of operation
-------------------
Every CNI exec pays for a fresh interpreter (~5 ms of CPU) plus weft's imports
and set-up (~5 ms). The exec'd ``weft`` (``cni.main``) therefore first tries
to hand its invocation to a helper over an *abstract* unix socket: abstract
names live in the network namespace, so each host namespace gets its own
helper without any file to clean up. The helper runs the very same
``cni.skel.dispatch`` in a thread per request and sends back exit code, stderr
and stdout; the client just relays them. The threads share host-local's
directory under one in-process lock per directory (``cni.ipam``), taken before
the flock that still guards it against other processes. With no helper listening, the client
runs the invocation in-process (the result is the same) and starts one in the
background for the next exec.

Safety: only peers with the helper's uid (root) are served (SO_PEERCRED); the
socket name carries a fingerprint of the code (``code_tag``) so an upgraded
plugin never talks to an old helper; the helper exits after ``IDLE_SECONDS``
without requests. A killed helper is the same as a plugin killed mid-ADD:
the next exec runs in-process, and GC clears what the interrupted ADD left.

Wire format (both ways over one stream connection, client half-closes):
request  ``b"WEFT1\\n" + u32 len + b"\\0".join(b"K=V") + stdin``
response ``u32 exit code + u32 len + stderr + stdout``
"""

from __future__ import annotations

import _socket
import os
import struct

from cni.relay import IDLE_SECONDS, decode_request, encode_response, recv_all, socket_name


def _handle(conn: _socket.socket) -> None:
    import io

    from cni.skel import dispatch

    try:
        creds = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
        _, uid, _ = struct.unpack("=iII", creds)
        if uid not in (0, os.geteuid()):
            return
        environ, stdin = decode_request(recv_all(conn))
        out = io.BytesIO()
        err = io.StringIO()
        rc = dispatch(environ, stdin, out, err)
        conn.sendall(encode_response(rc, err.getvalue().encode(), out.getvalue()))
    except (OSError, ValueError):
        pass  # the client went away or spoke nonsense; it falls back or reports
    finally:
        conn.close()


def serve(package_dir: str, idle: float = IDLE_SECONDS, listen_fd: int = -1) -> None:
    """Serve until idle on ``listen_fd`` (bound by ``claim``), else bind the socket here."""
    import socket  # the full module (accept()); import cost does not matter here
    import threading

    if listen_fd >= 0:
        sock = socket.socket(fileno=listen_fd)
        os.set_inheritable(listen_fd, False)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(socket_name(package_dir))
        except OSError:
            return  # another helper of this code already serves this namespace
        sock.listen(512)
    sock.settimeout(idle)
    workers: list[threading.Thread] = []
    while True:
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            workers = [t for t in workers if t.is_alive()]
            if not workers:
                sock.close()
                return
            continue
        conn.settimeout(None)
        t = threading.Thread(target=_handle, args=(conn,), daemon=True)
        t.start()
        workers.append(t)
        if len(workers) > 64:
            workers = [w for w in workers if w.is_alive()]


def claim(package_dir: str) -> _socket.socket | None:
    """Bind and listen on the helper socket, or None if a helper has it already.

    Binding is the election: of a burst of in-process execs only the one that
    binds starts a helper, and execs arriving meanwhile queue in the backlog.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.bind(socket_name(package_dir))
        sock.listen(512)
    except OSError:
        sock.close()
        return None
    return sock


def spawn(python: str, root: str, listener: _socket.socket) -> None:
    """Start a helper serving ``listener``, fully detached (double fork, stdio on /dev/null).

    A runtime reads the plugin's stdout until EOF, so the helper must not keep
    any of the plugin's other descriptors open.
    """
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        os.chdir("/")  # never pin a caller's (possibly temporary) directory
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        fd = listener.fileno()
        if fd != 3:
            os.dup2(fd, 3)  # an inheritable copy where the helper expects it
        os.set_inheritable(3, True)
        os.closerange(4, 1024)
        code = (f"import sys; sys.path.insert(0, {root!r}); from cni.helper import serve; "
                f"serve({os.path.join(root, 'cni')!r}, listen_fd=3)")
        os.execv(python, [python, "-IS", "-c", code])
    finally:
        os._exit(0)
