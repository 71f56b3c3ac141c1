"""The helper protocol's wire format: what a relayed exec sends and what it gets back."""

from __future__ import annotations

import pytest

from cni import relay


def test_request_carries_only_cni_env_and_stdin_verbatim() -> None:
    env = {"CNI_COMMAND": "ADD", "PATH": "/bin", "WEFT_CNI_TESTING": "1", "HOME": "/root"}
    data = relay.encode_request(env, b'{"a": 1}')
    assert data.startswith(relay.MAGIC)
    raw = relay.encode_request_raw({k.encode(): v.encode() for k, v in env.items()},
                                   b'{"a": 1}')
    assert raw == data
    assert relay.decode_request(data) == (
        {"CNI_COMMAND": "ADD", "WEFT_CNI_TESTING": "1"}, b'{"a": 1}')


def test_length_fields_are_little_endian_u32() -> None:
    data = relay.encode_request({"CNI_X": "y"}, b"")
    assert data[len(relay.MAGIC):len(relay.MAGIC) + 4] == (7).to_bytes(4, "little")
    reply = relay.encode_response(1, b"err", b"out")
    assert reply[:8] == b"\x01\0\0\0\x03\0\0\0"


@pytest.mark.parametrize(("rc", "err", "out"), [(0, b"", b"{}\n"), (1, b"log\n", b""),
                                                 (11, b"x" * 70000, b"y" * 70000)],
                         ids=["ok", "error-no-stdout", "large"])
def test_response_round_trip(rc: int, err: bytes, out: bytes) -> None:
    assert relay.decode_response(relay.encode_response(rc, err, out)) == (rc, err, out)


@pytest.mark.parametrize("bad", [b"", b"WEFT1\n", b"HTTP/1.1 200\r\n\r\n"],
                         ids=["empty", "truncated", "foreign"])
def test_decode_request_rejects_garbage(bad: bytes) -> None:
    with pytest.raises(ValueError):
        relay.decode_request(bad)
