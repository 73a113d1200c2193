"""xfer's network layer as a host process sees it: importing and using ``transfer`` changes no
other library's classes, and no connection goes to a link-local address on a server's say-so,
however the address is spelled (transfer/pool.py, transfer/redirects.py)."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpcore
import httpx
import pytest

import transfer
from fixtures.faultproxy import FaultProxy, Redirect
from fixtures.images import BuiltImages, read_blob
from fixtures.registry import Registry
from tests.helpers import ROOT, stored_blobs
from transfer import pool, redirects

# ---- A: no process-wide side effects ------------------------------------------------------

_PROBE = r"""
import asyncio.selector_events, json, sys
import httpcore, httpx

WATCHED = {
    "asyncio _SelectorTransport": getattr(asyncio.selector_events, "_SelectorTransport", None),
    "asyncio _SelectorSocketTransport": getattr(
        asyncio.selector_events, "_SelectorSocketTransport", None
    ),
    "httpcore AsyncHTTP11Connection": httpcore.AsyncHTTP11Connection,
    "httpcore HTTP11Connection": httpcore.HTTP11Connection,
    "httpcore AsyncConnectionPool": httpcore.AsyncConnectionPool,
    "httpcore ConnectionPool": httpcore.ConnectionPool,
    "httpcore AnyIOBackend": httpcore.AnyIOBackend,
    "httpcore SyncBackend": httpcore.SyncBackend,
    "httpx AsyncHTTPTransport": httpx.AsyncHTTPTransport,
    "httpx HTTPTransport": httpx.HTTPTransport,
}


def named() -> dict[str, object]:
    transport = WATCHED["asyncio _SelectorTransport"]
    return {
        "_SelectorTransport.max_size": getattr(transport, "max_size", None),
        "AsyncHTTP11Connection.READ_NUM_BYTES": httpcore.AsyncHTTP11Connection.READ_NUM_BYTES,
        "HTTP11Connection.READ_NUM_BYTES": httpcore.HTTP11Connection.READ_NUM_BYTES,
        "AsyncConnectionPool._assign_requests_to_connections":
            httpcore.AsyncConnectionPool._assign_requests_to_connections,
        "ConnectionPool._assign_requests_to_connections":
            httpcore.ConnectionPool._assign_requests_to_connections,
    }


def snapshot() -> dict[str, object]:
    attributes = {f"{name}.{key}": value for name, cls in WATCHED.items() if cls is not None
                  for key, value in vars(cls).items()}
    return {**attributes, **named()}


def changes(before: dict[str, object]) -> list[str]:
    now = snapshot()
    return sorted(key for key in before.keys() | now.keys()
                  if key not in before or key not in now or before[key] is not now[key])


before = snapshot()
import transfer
from transfer.client import BLOCKING_MIN

report = {"after import": changes(before)}
store, reference = sys.argv[1], sys.argv[2]
result = transfer.pull_sync(reference, transfer.Settings(store=__import__("pathlib").Path(store)))
report["after pull"] = changes(before)
report["digest"] = str(result.digest)
report["named"] = {key: repr(value) for key, value in named().items()}
report["blocking min"] = BLOCKING_MIN
print(json.dumps(report))
"""


def test_importing_and_pulling_changes_no_class_of_httpx_httpcore_or_asyncio(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    """A fresh interpreter records the read sizes, the pool's pass and every attribute of the
    classes xfer used to patch, imports transfer, pulls an image with a big layer (the blocking
    client) and small ones (the asynchronous client), and finds all of them as they were."""
    info = images.images["large"]
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "store"), f"{registry.host}/{info.ref}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["digest"] == info.digest
    assert set(stored_blobs(tmp_path / "store")) >= {b.digest for b in info.blobs}
    assert max(b.size for b in info.blobs) >= report["blocking min"]  # both clients were used
    assert min(b.size for b in info.blobs) < report["blocking min"]
    assert report["after import"] == []
    assert report["after pull"] == []


def test_the_pool_pass_is_replaced_only_on_the_httpcore_releases_it_was_checked_against() -> None:
    made = pool.transport(ssl.create_default_context(), httpx.Limits(max_connections=4))
    checked = httpcore.__version__ in pool.LINEAR_POOL_VERSIONS
    assert type(made.pool) is (pool.LinearPool if checked else httpcore.AsyncConnectionPool)


# ---- B: link-local decided on the address ------------------------------------------------

LINK_LOCAL_SPELLINGS = [
    "169.254.169.254",
    "2852039166",  # decimal
    "0xa9fea9fe",  # hex
    "0XA9FEA9FE",
    "169.254.43518",  # a.b.c, the last part 16 bits
    "169.16690942",  # a.b, the last part 24 bits
    "0251.0376.0251.0376",  # octal parts
    "0251.0xfe.43518",  # mixed
    "[fe80::1]",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
]
NOT_LINK_LOCAL = ["2130706433", "127.0.0.1", "0x7f000001", "10.0.0.1", "example.com", "0x", "1e5"]


@pytest.mark.parametrize("host", LINK_LOCAL_SPELLINGS)
def test_every_spelling_of_a_link_local_address_is_refused_before_connecting(host: str) -> None:
    name = host.strip("[]")
    resolved = ipaddress.ip_address(socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)[0][4][0])
    assert redirects.host_address(host) == resolved  # read as the system resolver reads it
    assert redirects.is_link_local(host)
    source = httpx.URL("http://registry.example/v2/x/blobs/sha256:0")
    try:
        target = httpx.URL(f"http://{host}/latest")
    except httpx.InvalidURL:
        return  # httpx rejects four dotted parts that are not decimal: never followed either
    assert redirects.refusal(source, target) == "a link-local address"


@pytest.mark.parametrize("host", NOT_LINK_LOCAL)
def test_other_hosts_and_numbers_are_not_link_local(host: str) -> None:
    assert not redirects.is_link_local(host)


def test_the_guard_refuses_a_forbidden_address_except_at_the_registry_the_user_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pool, "forbidden", lambda a: a == ipaddress.ip_address("127.0.0.2"))
    for registry in (None, "127.0.0.1:5000", "other.example"):
        for host in ("127.0.0.2", "2130706434", "0x7f000002"):
            with pytest.raises(transfer.TransferError, match="refused to connect"):
                pool.Guard(registry).addresses(host, 80)
    assert pool.Guard(None).addresses("2130706433", 80) == ["127.0.0.1"]
    assert pool.Guard("127.0.0.2:5000").addresses("127.0.0.2", 5000) == ["127.0.0.2"]
    assert pool.Guard("2130706434:5000").addresses("2130706434", 5000) == ["127.0.0.2"]


class _BlobServer(ThreadingHTTPServer):
    """Serves the test images' blobs on 127.0.0.2, as a CDN a registry redirects to; counts
    the connections it accepted."""

    daemon_threads = True

    def __init__(self, layout: Path) -> None:
        self.layout = layout
        self.connections = 0
        super().__init__(("127.0.0.2", 0), _BlobHandler)

    def get_request(self) -> tuple[socket.socket, object]:
        self.connections += 1
        return super().get_request()


class _BlobHandler(BaseHTTPRequestHandler):
    server: _BlobServer

    def do_GET(self) -> None:
        digest = self.path.rsplit("/", 1)[-1].split("?")[0]
        data = read_blob(self.server.layout, digest)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cdn(images: BuiltImages) -> Iterator[_BlobServer]:
    server = _BlobServer(images.layout)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("client", ["asynchronous", "blocking"])
def test_a_redirect_to_a_numeric_alias_of_a_forbidden_address_is_refused_by_address(
    client: str,
    registry: Registry,
    images: BuiltImages,
    cdn: _BlobServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """127.0.0.2 stands in for 169.254.169.254 (no link-local address is reachable here): the
    redirect names it ``2130706434``, which no string check recognises, and the connection is
    refused once the name is resolved, with one line naming both. The same redirect, with
    127.0.0.2 allowed, is followed to the server there."""
    info = images.images["large"]
    big = max(info.blobs, key=lambda b: b.size)
    small = min(info.blobs, key=lambda b: b.size)
    blob = big if client == "blocking" else small
    location = f"http://2130706434:{cdn.server_address[1]}"
    assert not redirects.is_link_local("2130706434")
    real_forbidden = pool.forbidden
    asked: list[str] = []

    def forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        asked.append(str(address))
        return real_forbidden(address) or str(address) == "127.0.0.2"

    with FaultProxy(registry.url) as proxy:
        proxy.add(Redirect(to=location, method="GET", match=f"/blobs/{blob.digest}", times=None))
        ref = f"{proxy.host}/{info.ref}"
        monkeypatch.setattr(pool, "forbidden", forbidden)
        with pytest.raises(transfer.TransferError) as refused:
            transfer.pull_sync(ref, transfer.Settings(store=tmp_path / "refused"))
        assert cdn.connections == 0
        message = str(refused.value)
        assert "\n" not in message
        assert "2130706434 (127.0.0.2)" in message and "link-local" in message
        assert asked.count("127.0.0.2") == 1  # refused once, not retried
        assert blob.digest not in stored_blobs(tmp_path / "refused")

        monkeypatch.setattr(pool, "forbidden", real_forbidden)
        result = transfer.pull_sync(ref, transfer.Settings(store=tmp_path / "allowed"))
    assert str(result.digest) == info.digest
    assert cdn.connections >= 1
    assert blob.digest in stored_blobs(tmp_path / "allowed")
