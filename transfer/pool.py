"""The asynchronous client's connection pool: httpcore's, with an idle-connection check that
costs one ``poll`` instead of a ``getpeername`` and a dictionary, and a pass over the
connections that is linear instead of quadratic.

httpcore 1.0's pool asks every connection whether it has expired each time a request starts or a
response is closed (quadratic in the connections of a pull), and an idle HTTP/1.1 connection
answers by asking its stream ``is_readable``. anyio builds its whole table of socket attributes
for that, calling ``getpeername(2)`` each time: with 8 connections and 60 small blobs that was
a thousand system calls, ~15% of the event loop's time on a pull of many small layers.

That pass also counted the pool's connections once per idle connection, by building a list of
them (``len([c.is_idle() for c in connections])``): with small blobs 32 at once, 60 small blobs
cost twice the CPU of 8 at once. :class:`Pool` makes the pass linear.
"""

from __future__ import annotations

import socket
import ssl
import typing
from collections.abc import Iterable

import httpcore
import httpx
from httpcore._utils import is_socket_readable  # the 1.0.x pinned in pyproject

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


def transport(verify: ssl.SSLContext, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport over a pool whose streams answer ``is_readable`` cheaply."""
    transport = httpx.AsyncHTTPTransport(verify=verify, limits=limits)
    # httpx passes no network backend through; the pool it built is replaced by the same pool
    # (the arguments httpx gives it) with ours.
    transport._pool = Pool(
        ssl_context=verify,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=Backend(),
    )
    return transport


class Pool(httpcore.AsyncConnectionPool):
    """httpcore 1.0's pool with its assignment pass made linear in its connections."""

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        # httpcore 1.0.9's method, step for step, except where marked.
        closing: list[httpcore.AsyncConnectionInterface] = []
        for connection in list(self._connections):
            if connection.is_closed():
                self._connections.remove(connection)
            elif connection.has_expired() or (
                connection.is_idle()
                # httpcore: len([c.is_idle() for c in self._connections]), the same number
                and len(self._connections) > self._max_keepalive_connections
            ):
                self._connections.remove(connection)
                closing.append(connection)
        for pool_request in [request for request in self._requests if request.is_queued()]:
            origin = pool_request.request.url.origin
            available = [
                connection
                for connection in self._connections
                if connection.can_handle_request(origin) and connection.is_available()
            ]
            if available:
                pool_request.assign_to_connection(available[0])
            elif len(self._connections) < self._max_connections:
                connection = self.create_connection(origin)
                self._connections.append(connection)
                pool_request.assign_to_connection(connection)
            elif idle := [c for c in self._connections if c.is_idle()]:
                # httpcore lists the idle connections before the branch; only this one reads it
                self._connections.remove(idle[0])
                closing.append(idle[0])
                connection = self.create_connection(origin)
                self._connections.append(connection)
                pool_request.assign_to_connection(connection)
        return closing


class Backend(httpcore.AsyncNetworkBackend):
    """httpcore's anyio backend, its streams wrapped in :class:`Stream`."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return Stream(inner)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class Stream(httpcore.AsyncNetworkStream):
    """A stream that knows its socket (the TCP one, under TLS too) from the start."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, sock: socket.socket | None = None):
        self._inner = inner
        self._socket: socket.socket | None = sock or inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return Stream(inner, self._socket)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":
            # httpcore's own test, on the socket kept here: an idle connection whose socket is
            # readable was closed by the server (or sent what nobody asked for).
            return is_socket_readable(self._socket)
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)
