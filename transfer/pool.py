"""xfer's own HTTP transports: httpcore's public pools over xfer's network backends.

Everything tuned here applies only to connections xfer itself opens; importing or using xfer
changes no class or private attribute of httpx, httpcore or asyncio.

- **Who may be connected to.** A server's say-so (a redirect, a token realm, a Location) can name
  any host, and a host name can stand for any address: ``2852039166``, ``0xa9fea9fe`` and
  ``169.254.43518`` all reach 169.254.169.254, the cloud metadata service. So the backend
  resolves the host itself and never connects to a link-local address, unless the host is the
  registry the user named (a registry the user configured at such an address is their
  choice), and checks the peer of the connected socket too (reliability case 8). Not through
  an environment proxy (``HTTP(S)_PROXY``): httpx then connects through its own proxy
  transports, to the proxy, which resolves and connects to the host itself; only the early
  check of the URL as written (``redirects.refusal``) still applies there.
- **Read sizes.** httpcore reads 64 KiB at a time; the per-read cost (h11 parsing, event-loop
  wake-ups) dominated profiles of a pull. Our streams read at least ``READ_SIZE`` whatever
  httpcore asks for, so h11 parses fewer, larger pieces.
- **The idle check.** An idle HTTP/1.1 connection asks its stream ``is_readable`` at every pass
  of the pool; anyio answers by building its whole table of socket attributes, calling
  ``getpeername(2)`` each time (a thousand system calls, ~15% of the event loop's time, on a
  pull of 60 small blobs). Our streams answer with one ``poll`` on the socket they keep.
- **The pool's pass.** httpcore 1.0.6-1.0.9's pool counts all its connections again for each
  idle one at every request (quadratic: with small blobs 32 at once, 60 small blobs cost twice
  the CPU of 8 at once). :class:`LinearPool` makes the pass linear, on exactly those versions;
  any other httpcore gets its stock pool.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import ssl
import time
import typing
from collections.abc import AsyncIterator, Iterable, Iterator

import anyio
import httpcore
import httpx

from .errors import RegistryError
from .redirects import is_link_local_address

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

READ_SIZE = 1 << 20  # what the asynchronous client's streams read at least
BLOCKING_READ_SIZE = 256 << 10  # the blocking client's: headers and the first piece of a body
# The httpcore releases whose pool pass LinearPool repeats step for step.
LINEAR_POOL_VERSIONS = ("1.0.6", "1.0.7", "1.0.8", "1.0.9")


def forbidden(address: Address) -> bool:
    """Whether an address is never connected to on a server's say-so (tests replace this)."""
    return is_link_local_address(address)


# ---- transports ---------------------------------------------------------------------------


def transport(
    verify: ssl.SSLContext, limits: httpx.Limits, *, registry: str | None = None
) -> AsyncTransport:
    """The asynchronous client's transport. ``registry``: the host the user named, which may be
    at any address."""
    cls = (
        LinearPool if httpcore.__version__ in LINEAR_POOL_VERSIONS else httpcore.AsyncConnectionPool
    )
    return AsyncTransport(
        cls(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=Backend(registry),
        )
    )


def blocking_transport(
    verify: ssl.SSLContext, limits: httpx.Limits, *, registry: str | None = None
) -> BlockingTransport:
    """The blocking client's transport (big bodies read in worker threads, body.py)."""
    return BlockingTransport(
        httpcore.ConnectionPool(
            ssl_context=verify,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=BlockingBackend(registry),
        )
    )


def _httpcore_request(request: httpx.Request) -> httpcore.Request:
    # As httpx's own transports map it.
    return httpcore.Request(
        method=request.method,
        url=httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        ),
        headers=request.headers.raw,
        content=request.stream,
        extensions=request.extensions,
    )


# httpcore's exceptions as httpx's, most specific first (as httpx's own transports map them).
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in _EXCEPTIONS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            await aclose()


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: typing.Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _mapped():
            yield from self._stream

    def close(self) -> None:
        if hasattr(self._stream, "close"):
            self._stream.close()


class AsyncTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool of our choosing (httpx's own builds its pool
    itself and takes no network backend)."""

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self.pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with _mapped():
            resp = await self.pool.handle_async_request(_httpcore_request(request))
        assert isinstance(resp.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_AsyncBody(resp.stream),
            extensions=resp.extensions,
        )

    async def aclose(self) -> None:
        with _mapped():
            await self.pool.aclose()


class BlockingTransport(httpx.BaseTransport):
    """:class:`AsyncTransport` for the blocking client."""

    def __init__(self, pool: httpcore.ConnectionPool) -> None:
        self.pool = pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with _mapped():
            resp = self.pool.handle_request(_httpcore_request(request))
        assert isinstance(resp.stream, typing.Iterable)
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_Body(resp.stream),
            extensions=resp.extensions,
        )

    def close(self) -> None:
        with _mapped():
            self.pool.close()


class LinearPool(httpcore.AsyncConnectionPool):
    """httpcore's pool with its assignment pass made linear in its connections; used only on
    the LINEAR_POOL_VERSIONS it was checked against."""

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


# ---- who may be connected to --------------------------------------------------------------


def _host_name(host: str | None) -> str | None:
    """A registry host (``name``, ``name:port``, ``[v6]:port``) as httpcore names it to the
    backend: no port, no brackets, lower case, IDNA-encoded."""
    if not host:
        return None
    try:
        return httpx.URL(f"http://{host}/").raw_host.decode("ascii").lower()
    except httpx.InvalidURL:
        return host.lower()


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Guard:
    """Decides, for one client, which addresses a connection may go to."""

    def __init__(self, registry: str | None) -> None:
        self.registry = _host_name(registry)

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to try for ``host``: resolved as the system resolver does (numeric
        aliases included), forbidden ones left out. Raises when none is left."""
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        else:
            found = [str(literal)]
        allowed = [a for a in found if not self._refuses(host, a)]
        if not found:
            raise OSError(f"{host}: the resolver found no address")
        if not allowed:
            raise self._refusal(host, found[0])
        return allowed

    def check_peer(self, host: str, sock: socket.socket | None) -> None:
        """The socket's peer is an allowed address (what was resolved is what was reached)."""
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        peer = str(sock.getpeername()[0])
        if self._refuses(host, peer):
            raise self._refusal(host, peer)

    def _refuses(self, host: str, address: str) -> bool:
        if self.registry is not None and host.lower() == self.registry:
            return False
        return forbidden(ipaddress.ip_address(address.split("%")[0]))

    @staticmethod
    def _refusal(host: str, address: str) -> RegistryError:
        at = "" if host == address else f" ({address})"
        return RegistryError(f"refused to connect to {host}{at}: a link-local address")


# ---- network backends ---------------------------------------------------------------------


class Backend(httpcore.AsyncNetworkBackend):
    """httpcore's anyio backend, reaching only the addresses the guard allows, its streams
    wrapped in :class:`Stream`."""

    def __init__(self, registry: str | None = None) -> None:
        self._inner = httpcore.AnyIOBackend()
        self.guard = Guard(registry)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            if _is_literal(host):
                addresses = self.guard.addresses(host, port)
            else:
                with anyio.fail_after(timeout):
                    addresses = await anyio.to_thread.run_sync(
                        self.guard.addresses, host, port, abandon_on_cancel=True
                    )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        error: Exception | None = None
        for address in addresses:  # in the resolver's order, as a plain connect tries them
            try:
                inner = await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
                continue
            stream = Stream(inner)
            try:
                self.guard.check_peer(host, stream.get_extra_info("socket"))
            except BaseException:
                await stream.aclose()
                raise
            return stream
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class BlockingBackend(httpcore.NetworkBackend):
    """:class:`Backend` for the blocking client."""

    def __init__(self, registry: str | None = None) -> None:
        self._inner = httpcore.SyncBackend()
        self.guard = Guard(registry)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = self.guard.addresses(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        deadline = None if timeout is None else time.monotonic() + timeout
        error: Exception | None = None
        for address in addresses:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                inner = self._inner.connect_tcp(address, port, left, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            stream = BlockingStream(inner)
            try:
                self.guard.check_peer(host, stream.get_extra_info("socket"))
            except BaseException:
                stream.close()
                raise
            return stream
        assert error is not None
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        return BlockingStream(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


# ---- streams ------------------------------------------------------------------------------


def is_socket_readable(sock: socket.socket | None) -> bool:
    """Whether a read would not block: data waiting, or the peer hung up. No socket (it was
    closed) reads as readable, so the connection is not reused. (httpcore's own test lives in
    a private module.)"""
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class Stream(httpcore.AsyncNetworkStream):
    """A stream that reads at least READ_SIZE and knows its socket (the TCP one, under TLS too)
    from the start."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, sock: socket.socket | None = None):
        self._inner = inner
        self._socket: socket.socket | None = sock or inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max(max_bytes, READ_SIZE), timeout)

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
            # An idle connection whose socket is readable was closed by the server (or sent
            # what nobody asked for).
            return is_socket_readable(self._socket)
        if info == "socket":
            return self._socket
        return self._inner.get_extra_info(info)


class BlockingStream(httpcore.NetworkStream):
    """A blocking stream that reads at least BLOCKING_READ_SIZE. Its socket stays the inner
    stream's own: under TLS the ``ssl.SSLSocket`` that body.py reads plain bytes from."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max(max_bytes, BLOCKING_READ_SIZE), timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return BlockingStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)
