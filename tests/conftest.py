"""Shared test configuration: tier markers and the skip rules for root/netns tests."""

from __future__ import annotations

import os
import shutil

import pytest


def _root_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces); run as root, as CI does"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (make deps installs it)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root_reason = _root_skip_reason()
    etcd_missing = shutil.which("etcd") is None
    for item in items:
        if root_reason and "root" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=root_reason))
        if etcd_missing and "etcd" in item.keywords:
            item.add_marker(
                pytest.mark.skip(reason="needs Debian's etcd-server (make deps installs it)")
            )


@pytest.fixture(scope="session")
def etcd_endpoint(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real etcd (Debian etcd-server) on a random loopback port, for the session."""
    if shutil.which("etcd") is None:
        pytest.skip("needs Debian's etcd-server (make deps installs it)")
    from overlay.store.embedded.launch import start_etcd

    proc = start_etcd(tmp_path_factory.mktemp("etcd") / "data")
    try:
        yield proc.endpoint
    finally:
        proc.stop(kill=True)


@pytest.fixture(scope="session")
def embedded_endpoint(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """weft's embedded store (`weftctl store serve`) as a process on a random loopback port."""
    from overlay.store.embedded.launch import start_embedded

    tmp = tmp_path_factory.mktemp("embedded")
    proc = start_embedded(tmp / "data", log=tmp / "store.log")
    try:
        yield proc.endpoint
    finally:
        proc.stop(kill=True)


@pytest.fixture(params=["embedded", "etcd"])
def store_endpoint(request: pytest.FixtureRequest) -> str:
    """URL of a store, once per kind: the embedded server, then a real etcd (session-wide)."""
    url: str = request.getfixturevalue(f"{request.param}_endpoint")
    return url
