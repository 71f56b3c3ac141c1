"""JSON in and out of the exec'd plugin, straight on CPython's ``_json`` accelerator.

``import json`` pulls in ``re`` (and ``enum``), ~6 ms per exec: a quarter of
the ADD budget. The C scanner and encoder that ``json`` itself uses are built
here directly with the same settings as ``json.loads``/``json.dumps`` (strict,
ASCII, ``, ``/``: `` separators), so the bytes are identical. Only the error
path imports ``json``, to raise its exact ``JSONDecodeError``.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WS = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    """The attributes ``_json.make_scanner`` reads from a ``JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__
    memo: dict[str, str] = {}


def _default(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_scan = _json.make_scanner(_Context())  # type: ignore[arg-type]  # duck-typed decoder
_encode = _json.make_encoder(
    {}, _default, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)


def loads(data: bytes | str) -> Any:
    """Like ``json.loads``; raises ``ValueError`` (with the position) on bad input."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if text.startswith("\ufeff"):
        raise ValueError("unexpected UTF-8 BOM")
    n = len(text)
    i = 0
    while i < n and text[i] in _WS:
        i += 1
    try:
        obj, end = _scan(text, i)
    except (StopIteration, SystemError, ValueError):
        # the error path only: _json cannot build its JSONDecodeError unless json.decoder
        # is loaded, so let the json package produce the real message
        import json

        return json.loads(text)
    while end < n and text[end] in _WS:
        end += 1
    if end != n:
        import json

        return json.loads(text)
    return obj


def dumps(obj: Any) -> str:
    """Like ``json.dumps(obj)`` with default settings."""
    return "".join(_encode(obj, 0))
