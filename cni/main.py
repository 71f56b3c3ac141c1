"""Process entry point of the ``weft`` CNI plugin: real env/stdin/stdout into the skel."""

from __future__ import annotations

import os
import sys


def main() -> int:
    from cni.skel import dispatch

    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    return dispatch(os.environ, stdin, sys.stdout.buffer)


if __name__ == "__main__":
    sys.exit(main())
