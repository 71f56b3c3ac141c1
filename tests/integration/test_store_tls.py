"""TLS as etcd does it: with --cert-file/--key-file/--trusted-ca-file the embedded store serves
TLS and refuses clients without a certificate signed by the trusted CA."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlay.store.api import StoreConfig, StoreError
from overlay.store.client import connect
from overlay.store.embedded.launch import StoreProcess, start_embedded
from tests.storecheck import round_trip

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _ssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(d: Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _ssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
         "-subj", "/CN=weft-test-ca", cwd=d)
    _ssl("req", "-x509", *ec, "-keyout", "rogue.key", "-out", "rogue.crt", "-days", "2",
         "-subj", "/CN=rogue", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        _ssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN=weft-{name}", cwd=d)
        _ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
             "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StoreProcess, Path]]:
    d = tmp_path_factory.mktemp("tls")
    make_pki(d)
    proc = start_embedded(d / "data", log=d / "store.log",
                          tls=(d / "server.crt", d / "server.key", d / "ca.crt"))
    try:
        yield proc, d
    finally:
        proc.stop(kill=True)


async def test_client_with_certificate_works(tls_server: tuple[StoreProcess, Path]) -> None:
    proc, d = tls_server
    assert proc.endpoint.startswith("https://")
    cfg = StoreConfig((proc.endpoint,), str(d / "ca.crt"), str(d / "client.crt"),
                      str(d / "client.key"))
    await round_trip(cfg, b"/tls/k")


@pytest.mark.parametrize("client", ["no-certificate", "untrusted-certificate", "plaintext"])
async def test_client_without_trusted_certificate_is_refused(
        tls_server: tuple[StoreProcess, Path], client: str) -> None:
    proc, d = tls_server
    if client == "no-certificate":
        cfg = StoreConfig((proc.endpoint,), str(d / "ca.crt"), timeout=2)
    elif client == "untrusted-certificate":
        cfg = StoreConfig((proc.endpoint,), str(d / "ca.crt"), str(d / "rogue.crt"),
                          str(d / "rogue.key"), timeout=2)
    else:
        cfg = StoreConfig((proc.endpoint.replace("https://", "http://"),), timeout=2)
    with pytest.raises(StoreError) as e:
        store = await connect(cfg)
        await store.close()
    assert "no store endpoint answered" in str(e.value)
    # the store says whom it turned away and why, as etcd does
    want = {"no-certificate": "PEER_DID_NOT_RETURN_A_CERTIFICATE",
            "untrusted-certificate": "CERTIFICATE_VERIFY_FAILED",
            "plaintext": "TLS handshake failed"}[client]
    deadline = time.monotonic() + 3  # with TLS 1.3 the client can give up first
    while want not in (log := (d / "store.log").read_text()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert "WARNING" in log and "rejected connection from 127.0.0.1:" in log and want in log


def test_etcdctl_needs_a_client_certificate(tls_server: tuple[StoreProcess, Path]) -> None:
    if shutil.which("etcdctl") is None:
        pytest.skip("needs etcd-client")
    proc, d = tls_server
    env = dict(os.environ, ETCDCTL_API="3")
    base = ["etcdctl", "--endpoints", proc.endpoint, "--dial-timeout=2s",
            "--command-timeout=3s", "--cacert", str(d / "ca.crt")]
    ok = subprocess.run([*base, "--cert", str(d / "client.crt"), "--key", str(d / "client.key"),
                         "put", "/tls/ctl", "v"], capture_output=True, text=True, env=env,
                        timeout=20)
    assert (ok.returncode, ok.stdout) == (0, "OK\n"), ok.stderr
    refused = subprocess.run([*base, "get", "/tls/ctl"], capture_output=True, text=True,
                             env=env, timeout=20)
    assert refused.returncode != 0 and "/tls/ctl" not in refused.stdout


def test_https_json_gateway_on_the_same_port(tls_server: tuple[StoreProcess, Path]) -> None:
    """HTTP/1.1 over TLS (ALPN http/1.1) reaches the JSON gateway, client certificate and all."""
    import json
    import ssl
    import urllib.request

    proc, d = tls_server
    ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
    ctx.load_cert_chain(str(d / "client.crt"), str(d / "client.key"))
    with urllib.request.urlopen(proc.endpoint + "/health", context=ctx, timeout=10) as r:
        assert json.loads(r.read()) == {"health": "true"}
    req = urllib.request.Request(proc.endpoint + "/v3/kv/range", data=b'{"key":"Lw=="}')
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        assert "header" in json.loads(r.read())
