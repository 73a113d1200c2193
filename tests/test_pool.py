"""The asynchronous client's pool (transfer/pool.py): httpcore's, with a cheaper idle check that
must still keep a connection the server closed from carrying the next request."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import anyio
import httpcore
import httpx
import pytest

from transfer import pool
from transfer.tls import ssl_context

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _request(sock: socket.socket, data: bytes) -> bytes | None:
    """Read up to the end of a request's head; what came after it, or None at end of file."""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return None
        data += more
    return data.partition(b"\r\n\r\n")[2]


class _OneResponsePerConnection(socketserver.BaseRequestHandler):
    """Answers one request as if keeping the connection alive, then hangs up: what a server
    whose idle timeout ran out does between two requests of a client."""

    def handle(self) -> None:
        if _request(self.request, b"") is None:
            return
        self.request.sendall(OK)
        self.server.connections += 1  # type: ignore[attr-defined]


class _KeepAlive(socketserver.BaseRequestHandler):
    """Answers every request on a connection, after a short pause, and keeps it open."""

    def handle(self) -> None:
        self.server.connections += 1  # type: ignore[attr-defined]
        data: bytes | None = b""
        while (data := _request(self.request, data)) is not None:
            threading.Event().wait(0.005)
            self.request.sendall(OK)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    connections = 0


def _serving(handler: type[socketserver.BaseRequestHandler]) -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    yield from _serving(_OneResponsePerConnection)


@pytest.fixture
def keep_alive() -> Iterator[_Server]:
    yield from _serving(_KeepAlive)


def test_a_connection_the_server_closed_while_idle_is_not_reused(server: _Server) -> None:
    url = f"http://127.0.0.1:{server.server_address[1]}/"

    async def main() -> list[bytes]:
        limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
        transport = pool.transport(ssl_context(), limits)
        bodies = []
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(3):
                response = await client.get(url)
                assert isinstance(response.extensions["network_stream"], pool.Stream)
                bodies.append(response.content)
                await anyio.sleep(0.05)  # the server's FIN arrives while the connection idles
        return bodies

    assert anyio.run(main) == [b"ok"] * 3
    assert server.connections == 3


class _Inner:
    """What a stream under ours answers about its socket."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def get_extra_info(self, info: str) -> object:
        return self.sock if info == "socket" else None


def test_readable_is_false_for_a_quiet_socket_and_true_once_the_peer_hangs_up() -> None:
    a, b = socket.socketpair()
    with a, b:
        stream = pool.Stream(_Inner(a))  # type: ignore[arg-type]
        assert not stream.get_extra_info("is_readable")
        b.close()
        assert stream.get_extra_info("is_readable")
    assert pool.Stream(_Inner(None)).get_extra_info("is_readable")  # type: ignore[arg-type]


def test_the_pool_keeps_its_limit_reuses_connections_and_asks_each_a_few_times_per_request(
    keep_alive: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 requests, 32 at once (as xfer's small blobs), on 32 connections kept alive and
    reused; one pass of the pool asks every connection whether it is idle a few times (httpcore
    1.0's own pass asked all n of them again for each idle one)."""
    if httpcore.__version__ not in pool.LINEAR_POOL_VERSIONS:
        pytest.skip(f"httpcore {httpcore.__version__}: its own pool pass is used")
    asked = 0
    real_is_idle = httpcore.AsyncHTTPConnection.is_idle

    def is_idle(self: httpcore.AsyncHTTPConnection) -> bool:
        nonlocal asked
        asked += 1
        return real_is_idle(self)

    monkeypatch.setattr(httpcore.AsyncHTTPConnection, "is_idle", is_idle)
    url = f"http://127.0.0.1:{keep_alive.server_address[1]}/"

    async def main() -> int:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(transport=pool.transport(ssl_context(), limits)) as client:
            gate = anyio.Semaphore(32)
            done = 0

            async def one() -> None:
                nonlocal done
                async with gate:
                    assert (await client.get(url)).content == b"ok"
                    done += 1

            async with anyio.create_task_group() as group:
                for _ in range(200):
                    group.start_soon(one)
            return done

    assert anyio.run(main) == 200
    assert keep_alive.connections == 32
    assert asked < 200 * 2 * 8 * 32  # two passes a request, a few times per connection each


def test_at_its_limit_the_pool_closes_an_idle_connection_for_another_origin(
    keep_alive: _Server, server: _Server
) -> None:
    urls = [f"http://127.0.0.1:{s.server_address[1]}/" for s in (keep_alive, server)]

    async def main() -> list[bytes]:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(transport=pool.transport(ssl_context(), limits)) as client:
            return [(await client.get(url)).content for url in urls]

    assert anyio.run(main) == [b"ok", b"ok"]
