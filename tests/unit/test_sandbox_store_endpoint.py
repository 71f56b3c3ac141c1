"""The sandbox's store-move hook: daemons built after `start --store-endpoint URL` use URL, the
state file keeps it, and the flag takes only an http(s)://HOST:PORT URL."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from overlay.sandbox.cli import _store_url
from overlay.sandbox.model import DAEMONS, Context, Options, Site, State

SITE = Site("h1", "wabc-h1", ipaddress.IPv4Address("198.18.0.11"), Path("/state/h1"))


def _ctx(store_endpoint: str = "") -> Context:
    return Context(Options(), Path("/venv/bin"), ipaddress.IPv4Address("198.18.0.1"),
                   ipaddress.IPv4Address("198.18.0.11"), store_endpoint)


def test_daemons_use_the_moved_endpoint() -> None:
    assert _ctx().endpoint == "http://198.18.0.1:2379"
    moved = _ctx("http://198.18.0.1:23790")
    for spec in DAEMONS:
        if spec.name != "store":
            assert "http://198.18.0.1:23790" in spec.argv(moved, SITE), spec.name


def test_state_keeps_the_endpoint_and_old_files_still_load() -> None:
    state = State("wabc", {"hosts": 1}, "wabc-ul", "198.18.0.1", "198.18.0.11",
                  store_endpoint="http://198.18.0.1:23790")
    assert State.from_json(state.to_json()) == state
    old = state.to_json().replace('"store_endpoint": "http://198.18.0.1:23790",', "")
    assert State.from_json(old).store_endpoint == ""


@pytest.mark.parametrize("text", ["198.18.0.1:2379", "http://198.18.0.1", "ftp://h:1",
                                  "http://:2379"])
def test_store_endpoint_flag_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _store_url(text)


def test_store_endpoint_flag_accepts() -> None:
    assert _store_url("http://198.18.0.1:23790/") == "http://198.18.0.1:23790"
