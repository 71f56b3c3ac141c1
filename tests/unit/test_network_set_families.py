"""``weftctl network set`` refuses family combinations no flanneld would run (issue 17),
naming the field, before it contacts the store (the endpoint here is never dialled)."""

from __future__ import annotations

import pytest

from overlay.cli.weftctl import main

NOWHERE = ["-etcd-endpoints", "http://127.0.0.1:1", "-etcd-prefix", "/qa/network"]


@pytest.mark.parametrize(("args", "field"), [
    (["--network", "10.244.0.0/16", "--ipv6-subnet-len", "64"], "IPv6SubnetLen"),
    (["--network", "10.244.0.0/16", "--ipv6-network", "fd00:10:244::/56",
      "--backend", "udp"], "EnableIPv6"),
    (["--no-ipv4", "--ipv6-network", "fd00:10:244::/56", "--backend", "udp"], "EnableIPv6"),
], ids=["v6-len-without-v6-network", "udp-dual-stack", "udp-ipv6-only"])
def test_refused_naming_the_field(args: list[str], field: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["network", "set", *args, *NOWHERE]) == 2
    err = capsys.readouterr().err
    assert err.startswith("weftctl network set: ") and field in err, err
