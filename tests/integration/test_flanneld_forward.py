"""-iptables-forward-rules on hosts whose iptables FORWARD policy is DROP (Docker's): with
the flag (flannel's default) a host forwards to its pods; with =false it does not, and
the chain an earlier run wrote is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.flanneld_cluster import running_cluster

pytestmark = [pytest.mark.root, pytest.mark.etcd, pytest.mark.timeout(120)]


def test_forward_rules_let_pods_through_a_drop_policy(tmp_path: Path) -> None:
    with running_cluster(2, "embedded", tmp_path) as c:
        c.network_set("host-gw")
        h1, h2 = c.tb.hosts["h1"].netns, c.tb.hosts["h2"].netns
        for ns in (h1, h2):
            c.tb.exec(ns, ["iptables", "-P", "FORWARD", "DROP"])
        # h2 ran once with the rules; its next run, with them off, must take them away
        c.tb.exec(h2, ["iptables", "-N", "FLANNEL-FWD"])
        c.tb.exec(h2, ["iptables", "-A", "FORWARD", "-m", "comment", "--comment",
                       "flanneld forward", "-j", "FLANNEL-FWD"])
        c.start("h1")
        c.start("h2", extra=["-iptables-forward-rules=false"])
        c.wait_ready("h1")
        c.wait_ready("h2")
        pod1, pod2 = c.container("h1"), c.container("h2")
        assert pod1.ip is not None and pod2.ip is not None
        # h2's host (no forwarding at its end) reaches h1's pod through h1's FORWARD
        assert c.tb.wait_ping(h2, str(pod1.ip.ip), within=10), \
            "h1 did not forward to its pod despite -iptables-forward-rules"
        assert "FLANNEL-FWD" in c.tb.exec(h1, ["iptables", "-S", "FORWARD"]).stdout
        # h2 runs with the flag off: its DROP policy stands, and the old chain is gone
        assert not c.tb.ping(h1, str(pod2.ip.ip), timeout=1)
        assert "FLANNEL-FWD" not in c.tb.exec(h2, ["iptables", "-S"]).stdout
