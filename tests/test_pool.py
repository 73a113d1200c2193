"""The asynchronous client's pool (transfer/pool.py): httpcore's, with a cheaper idle check that
must still keep a connection the server closed from carrying the next request."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import anyio
import httpx
import pytest

from transfer import pool
from transfer.tls import ssl_context


class _OneResponsePerConnection(socketserver.BaseRequestHandler):
    """Answers one request as if keeping the connection alive, then hangs up: what a server
    whose idle timeout ran out does between two requests of a client."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                return
            data += more
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.server.connections += 1  # type: ignore[attr-defined]


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    connections = 0


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _OneResponsePerConnection)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


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


def test_readable_is_false_for_a_quiet_socket_and_true_once_the_peer_hangs_up() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert not pool.readable(a)
        b.close()
        assert pool.readable(a)
    assert pool.readable(None)
