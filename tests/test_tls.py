"""TLS against real distribution serving HTTPS with a CA made here: trust from the system, from
--ca-file, from certs.d and config.toml; client certificates (mTLS); --insecure; and a certificate
failure that is never a reason to fall back to plain HTTP.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.images import BuiltImages, seed
from fixtures.registry import Registry
from fixtures.tokenserver import CertAuthority, CertFiles
from tests.helpers import stored_blobs, xfer
from transfer import tls
from transfer.tls import ssl_context


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    server: CertFiles
    client: CertFiles
    other_ca_file: Path  # a CA that signed nothing of ours


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = CertAuthority("xfer test registry CA")
    return Pki(
        ca_file=ca.write_ca(root / "ca.pem"),
        server=ca.write_leaf(root, "server", hosts=["127.0.0.1", "localhost"], server=True),
        client=ca.write_leaf(root, "client", client=True),
        other_ca_file=CertAuthority("unrelated CA").write_ca(root / "other-ca.pem"),
    )


@pytest.fixture(scope="module")
def tls_registry(pki: Pki, images: BuiltImages) -> Iterator[Registry]:
    """HTTPS registry (certificate from the test CA) holding ``test/small:1``."""
    with Registry(tls=(pki.server.cert, pki.server.key)) as reg:
        seed(images.layout, reg.host, {"small": images.images["small"]})
        yield reg


@pytest.fixture(scope="module")
def mtls_registry(pki: Pki, tls_registry: Registry) -> Iterator[Registry]:
    """The same storage served over HTTPS that demands a client certificate from the test CA."""
    with Registry(
        tls=(pki.server.cert, pki.server.key, pki.ca_file),
        probe_cert=(pki.client.cert, pki.client.key),
        storage=tls_registry.storage,
    ) as reg:
        yield reg


def _certs_d(root: Path, host: str, pki: Pki, *, ca: bool = True, client: bool = False) -> Path:
    """docker's layout: certs.d/HOST/*.crt (CAs), client.cert + client.key."""
    directory = root / "certs.d" / host
    directory.mkdir(parents=True)
    if ca:
        shutil.copy(pki.ca_file, directory / "ca.crt")
    if client:
        shutil.copy(pki.client.cert, directory / "client.cert")
        shutil.copy(pki.client.key, directory / "client.key")
    return root / "certs.d"


def _ref(reg: Registry) -> str:
    return f"{reg.host}/test/small:1"


def test_unknown_ca_fails_naming_the_certificate_and_never_falls_back_to_http(
    tls_registry: Registry, store: Path
) -> None:
    run = xfer("pull", "--retries", "3", _ref(tls_registry), store=store)
    assert run.code == 1
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err  # one line, and no "retrying": a certificate is not flaky
    assert "certificate verify failed" in lines[0] and tls_registry.host in lines[0]
    # Had it fallen back to HTTP, the registry's answer would be a 400 to a plain request.
    assert "400" not in run.err and "HTTP request" not in run.err


def test_ca_file_makes_the_registry_trusted(
    tls_registry: Registry, pki: Pki, images: BuiltImages, store: Path
) -> None:
    run = xfer("pull", "--ca-file", pki.ca_file, _ref(tls_registry), store=store)
    assert run.code == 0, run.err
    assert run.out.strip() == images.images["small"].digest


def test_a_big_blob_streams_over_tls_from_the_socket_intact(
    tls_registry: Registry, pki: Pki, images: BuiltImages, store: Path
) -> None:
    # Layers of 4 MiB and more are read by a worker thread from the TLS socket itself.
    large = images.images["large"]
    seed(images.layout, tls_registry.host, {"large": large})
    ref = f"{tls_registry.host}/test/large:1"
    run = xfer("pull", "--ca-file", pki.ca_file, ref, store=store)
    assert run.code == 0, run.err
    assert run.out.strip() == large.digest
    assert stored_blobs(store).keys() >= {b.digest for b in large.blobs}
    check = xfer("verify", store=store)
    assert check.code == 0, check.err


def test_certs_d_directory_supplies_the_ca(
    tls_registry: Registry, pki: Pki, store: Path, tmp_path: Path
) -> None:
    certs_d = _certs_d(tmp_path, tls_registry.host, pki)
    run = xfer("pull", _ref(tls_registry), store=store, env={"XFER_CERTS_D": str(certs_d)})
    assert run.code == 0, run.err


def test_system_trust_is_used_by_default(tls_registry: Registry, pki: Pki, store: Path) -> None:
    """The machine's trust store (here via OpenSSL's $SSL_CERT_FILE), not a bundled one."""
    run = xfer("pull", _ref(tls_registry), store=store, env={"SSL_CERT_FILE": str(pki.ca_file)})
    assert run.code == 0, run.err


def test_system_trust_kept_as_a_hashed_directory_is_used(
    tls_registry: Registry, pki: Pki, store: Path, tmp_path: Path
) -> None:
    """Where the system keeps its CAs as OpenSSL's hash links ($SSL_CERT_DIR here, as Debian's
    /etc/ssl/certs), xfer trusts them: the directory is what it reads them from (lazily)."""
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(pki.ca_file, certs / "registry-ca.pem")
    subprocess.run(["openssl", "rehash", str(certs)], check=True, capture_output=True)
    assert any(p.name.endswith(".0") for p in certs.iterdir())
    env = {"SSL_CERT_DIR": str(certs), "SSL_CERT_FILE": ""}
    run = xfer("pull", _ref(tls_registry), store=store, env=env)
    assert run.code == 0, run.err


def test_a_hashed_system_directory_is_read_only_when_a_handshake_needs_a_ca(
    tls_registry: Registry, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the system store is a hashed directory, no CA is parsed up front (a plain-HTTP
    registry's TLS probe no longer pays ~20 ms for the bundle); a handshake finds its CA."""
    certs = tmp_path / "system-certs"
    certs.mkdir()
    shutil.copy(pki.ca_file, certs / "registry-ca.pem")
    subprocess.run(["openssl", "rehash", str(certs)], check=True, capture_output=True)
    system = ssl.DefaultVerifyPaths(
        None, str(certs), "XFER_TEST_UNSET_FILE", str(tmp_path / "none.pem"),
        "XFER_TEST_UNSET_DIR", str(certs),
    )  # fmt: skip
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: system)
    tls._ssl_context.cache_clear()  # contexts are made once per process: this one afresh
    try:
        context = ssl_context()
        assert context.cert_store_stats()["x509_ca"] == 0

        host, port = tls_registry.host.rsplit(":", 1)
        with (
            socket.create_connection((host, int(port)), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            pass
        assert context.cert_store_stats()["x509_ca"] == 1
    finally:
        tls._ssl_context.cache_clear()


def test_ca_file_adds_to_the_system_trust_instead_of_replacing_it(
    tls_registry: Registry, pki: Pki, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"SSL_CERT_FILE": str(pki.ca_file)}  # the registry's CA is "system" trust here
    run = xfer("pull", "--ca-file", pki.other_ca_file, _ref(tls_registry), store=store, env=env)
    assert run.code == 0, run.err

    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    names = {
        dict(pair[0] for pair in cert["subject"])["commonName"]
        for cert in ssl_context([str(pki.other_ca_file)]).get_ca_certs()
    }
    assert {"xfer test registry CA", "unrelated CA"} <= names


def test_mtls_with_a_client_certificate_from_certs_d(
    mtls_registry: Registry, pki: Pki, store: Path, tmp_path: Path
) -> None:
    certs_d = _certs_d(tmp_path, mtls_registry.host, pki, client=True)
    run = xfer("pull", _ref(mtls_registry), store=store, env={"XFER_CERTS_D": str(certs_d)})
    assert run.code == 0, run.err


def test_mtls_without_a_client_certificate_fails_cleanly(
    mtls_registry: Registry, pki: Pki, store: Path, tmp_path: Path
) -> None:
    certs_d = _certs_d(tmp_path, mtls_registry.host, pki)
    env = {"XFER_CERTS_D": str(certs_d)}
    run = xfer("pull", "--retries", "3", _ref(mtls_registry), store=store, env=env)
    assert run.code == 1
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert "client certificate" in lines[0] and mtls_registry.host in lines[0]
    assert "Traceback" not in run.err


def test_client_certificate_and_ca_from_config_toml(
    mtls_registry: Registry, pki: Pki, store: Path, tmp_path: Path
) -> None:
    config_dir = tmp_path / "xfer"
    config_dir.mkdir()
    for source, name in ((pki.ca_file, "ca.pem"), (pki.client.cert, "me.crt")):
        shutil.copy(source, config_dir / name)
    shutil.copy(pki.client.key, config_dir / "me.key")
    (config_dir / "config.toml").write_text(
        f'[registry."{mtls_registry.host}"]\n'
        'ca-file = "ca.pem"\nclient-cert = "me.crt"\nclient-key = "me.key"\n'
    )
    env = {"XFER_CONFIG": str(config_dir / "config.toml")}
    run = xfer("pull", _ref(mtls_registry), store=store, env=env)
    assert run.code == 0, run.err


def test_insecure_verifies_nothing_and_says_so_once(tls_registry: Registry, store: Path) -> None:
    run = xfer("pull", "--insecure", _ref(tls_registry), store=store)
    assert run.code == 0, run.err
    warnings = [line for line in run.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "not verified" in warnings[0]


def test_insecure_still_presents_the_client_certificate(
    mtls_registry: Registry, pki: Pki, store: Path, tmp_path: Path
) -> None:
    certs_d = _certs_d(tmp_path, mtls_registry.host, pki, ca=False, client=True)
    env = {"XFER_CERTS_D": str(certs_d)}
    run = xfer("pull", "--insecure", _ref(mtls_registry), store=store, env=env)
    assert run.code == 0, run.err


def test_insecure_host_in_config_toml_is_announced(
    tls_registry: Registry, store: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[registry."{tls_registry.host}"]\ninsecure = true\n')
    run = xfer("pull", _ref(tls_registry), store=store, env={"XFER_CONFIG": str(config)})
    assert run.code == 0, run.err
    warnings = [line for line in run.err.splitlines() if "not verified" in line]
    assert len(warnings) == 1 and tls_registry.host in warnings[0]


def test_a_missing_ca_file_is_a_usage_error(tls_registry: Registry, tmp_path: Path) -> None:
    run = xfer("pull", "--ca-file", tmp_path / "nope.pem", _ref(tls_registry), store=tmp_path)
    assert run.code == 2
    assert "nope.pem" in run.err


def test_ssl_context_loads_a_client_certificate(pki: Pki) -> None:
    context = ssl_context([str(pki.ca_file)], (str(pki.client.cert), str(pki.client.key)))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    unverified = ssl_context([], (str(pki.client.cert), str(pki.client.key)), verify=False)
    assert unverified.verify_mode == ssl.CERT_NONE
