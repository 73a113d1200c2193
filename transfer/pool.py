"""The asynchronous client's connection pool: httpcore's, with an idle-connection check that
costs one ``poll`` instead of a ``getpeername`` and a dictionary.

httpcore 1.0's pool asks every connection whether it has expired each time a request starts or a
response is closed (quadratic in the connections of a pull), and an idle HTTP/1.1 connection
answers by asking its stream ``is_readable``. anyio builds its whole table of socket attributes
for that, calling ``getpeername(2)`` each time: with 8 connections and 60 small blobs that was
a thousand system calls, ~15% of the event loop's time on a pull of many small layers.
"""

from __future__ import annotations

import select
import socket
import ssl
import typing
from collections.abc import Iterable

import httpcore
import httpx

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


def transport(verify: ssl.SSLContext, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport over a pool whose streams answer ``is_readable`` cheaply."""
    transport = httpx.AsyncHTTPTransport(verify=verify, limits=limits)
    # httpx passes no network backend through; the pool it built is replaced by the same pool
    # (the arguments httpx gives it) with ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=verify,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=Backend(),
    )
    return transport


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
            return readable(self._socket)
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)


def readable(sock: socket.socket | None) -> bool:
    """httpcore's test: an idle connection whose socket is readable was closed by the server
    (or sent what nobody asked for); either way it must not carry the next request."""
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
