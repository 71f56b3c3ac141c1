"""``weftctl network set --encryption-key-file``: the udp backend's Encryption object
(one file, or two during a roll), refused for other backends and for a third file
before the store is contacted (the endpoint here is never dialled)."""

from __future__ import annotations

import pytest

from overlay.cli.network_cmd import _add_encryption
from overlay.cli.weftctl import main
from overlay.config import build_network_json
from overlay.errors import ConfigError

NOWHERE = ["-etcd-endpoints", "http://127.0.0.1:1", "-etcd-prefix", "/qa/network"]


def test_one_file_or_a_roll_of_two() -> None:
    obj = build_network_json("10.244.0.0/16", backend="udp")
    _add_encryption(obj, "udp", ["/etc/weft/cluster.key"])
    assert obj["Backend"] == {"Type": "udp", "Encryption": {"KeyFile": "/etc/weft/cluster.key"}}
    _add_encryption(obj, "udp", ["/etc/weft/new.key", "/etc/weft/old.key"])
    assert obj["Backend"]["Encryption"] == {"KeyFile": ["/etc/weft/new.key",
                                                        "/etc/weft/old.key"]}
    plain = build_network_json("10.244.0.0/16", backend="udp")
    _add_encryption(plain, "udp", [])
    assert "Encryption" not in plain["Backend"]


@pytest.mark.parametrize(("args", "words"), [
    (["--backend", "vxlan", "--encryption-key-file", "/k"], "only the udp backend"),
    (["--backend", "udp", *(a for k in "abc" for a in ("--encryption-key-file", f"/{k}"))],
     "at most two"),
    (["--backend", "udp", "--encryption-key-file", "relative.key"], "absolute path"),
], ids=["vxlan", "three-files", "relative"])
def test_refused_before_the_store(args: list[str], words: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["network", "set", "--network", "10.244.0.0/16", *args, *NOWHERE]) == 2
    err = capsys.readouterr().err
    assert err.startswith("weftctl network set: ") and words in err and "Encryption" in err, err


def test_a_bad_combination_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--encryption-key-file"):
        _add_encryption(build_network_json("10.244.0.0/16", backend="host-gw"), "host-gw",
                        ["/k"])
