"""A big blob body read in a worker thread, straight from the connection's socket.

Profiles of a 1 GB pull put two thirds of the time in the event-loop thread: asyncio socket
reads, h11 copying every byte twice, and hand-offs to the threads that hash and write. So a big
body is fetched with httpx's blocking client instead, and once h11 has handed over what it had
buffered with the headers, the rest of a body of known length is read with ``recv_into`` into
one reused buffer by a single worker thread, which hashes and writes each piece while it is
still in the CPU cache. Socket, hash and disk calls all release the GIL, so several blobs run on
several cores. The connection is closed afterwards (h11 never saw the end of the body), which a
body of megabytes does not notice.

A body whose length is not known, or that travels TLS inside TLS (an HTTPS proxy), is read
through httpx as usual, still in the worker thread.

Every body, here and on the event loop, keeps a ``Pace``: a read timeout alone lets a server
that sends a byte now and then hold a request for ever.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.lowlevel
import httpx

from .endpoints import Sink
from .errors import NetworkError, reason
from .ingest import Chunk
from .threads import run_stoppable

READ_BUFFER = 128 << 10  # small enough to stay in the CPU cache from recv to hash to write
ITER_CHUNK = 1 << 20  # what one thread hop reads for a caller that iterates

# A body slower than this over a whole window (the read timeout) is a trickle, not a link:
# curl's --speed-limit/--speed-time, with the window taken from --timeout.
MIN_RATE = 1024  # bytes per second
# A response's head, and a small body (manifest, token, error, tags page), get this many read
# timeouts in all, plus a second for every MIN_RATE bytes of it that arrived.
ANSWER_FACTOR = 3

_LIMITER: anyio.lowlevel.RunVar[anyio.CapacityLimiter] = anyio.lowlevel.RunVar("body threads")


def _limiter() -> anyio.CapacityLimiter:
    """Body threads run for a whole blob: their own pool, so they never starve the short
    file operations that share anyio's default one."""
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(64)
        _LIMITER.set(limiter)
        return limiter


class Pace:
    """Bounds a whole body, not only each read: ``add`` after every read raises NetworkError
    ("too slow") when a window of ``timeout`` seconds brought less than ``MIN_RATE`` bytes a
    second (a stream: a blob), or, ``small``, when the body is not complete within
    ``ANSWER_FACTOR`` timeouts and a second per ``MIN_RATE`` bytes received.

    O(1) per read, one clock reading: a 1 GB body is ~10,000 reads of its socket.
    """

    __slots__ = ("_check_at", "_count", "_need", "_since", "_small", "host", "timeout", "what")

    def __init__(self, timeout: float, what: str, host: str, *, small: bool = False) -> None:
        self.timeout, self.what, self.host = timeout, what, host
        self._small = small
        self._since = time.monotonic()  # the window's start; a small body's start
        self._count = 0  # bytes since then
        self._need = MIN_RATE * timeout
        self._check_at = self._since + (ANSWER_FACTOR * timeout if small else timeout)

    @classmethod
    def of(cls, resp: httpx.Response, what: str, host: str, *, small: bool = False) -> Pace:
        """The pace for ``resp``'s body, its window the read timeout its request was sent with."""
        timeouts = resp.request.extensions.get("timeout") or {}
        return cls(float(timeouts.get("read") or 60.0), what, host, small=small)

    def add(self, amount: int) -> None:
        self._count += amount
        now = time.monotonic()
        if now >= self._check_at:
            self._check(now)

    def pause(self, seconds: float) -> None:
        """The reader stopped reading for ``seconds`` of its own accord (a rate cap of ours)."""
        self._since += seconds
        self._check_at += seconds

    def _check(self, now: float) -> None:
        elapsed = now - self._since
        if self._small:
            allowed = self._since + ANSWER_FACTOR * self.timeout + self._count / MIN_RATE
            if now < allowed:
                self._check_at = allowed
                return
        elif self._count >= self._need:
            self._since, self._count, self._check_at = now, 0, now + self.timeout
            return
        if self._small:
            rule = f"not complete within {ANSWER_FACTOR * self.timeout:g} s"
        else:
            rule = f"at least {MIN_RATE} bytes/s needed"
        raise NetworkError(
            f"{self.what}: too slow: {self._count} bytes in {elapsed:.1f} s ({rule})",
            host=self.host,
        )


class Window:
    """Which bytes of a response body the caller gets: none of the first ``skip`` (a whole body
    sent to a Range request), then up to ``limit`` and one byte more when the server sends it,
    so the caller sees a body that is longer than promised."""

    def __init__(self, skip: int, limit: int) -> None:
        self.skip = skip
        self.limit = limit
        self.sent = 0

    @property
    def full(self) -> bool:
        return self.sent > self.limit

    def take(self, chunk: Chunk) -> Chunk:
        """What of ``chunk`` is the caller's (empty while skipping)."""
        if self.skip:
            if len(chunk) <= self.skip:
                self.skip -= len(chunk)
                return b""
            chunk, self.skip = chunk[self.skip :], 0
        self.sent += len(chunk)
        return chunk

    def end(self, what: str, host: str) -> None:
        """The body ended: fine, unless it ended inside the bytes to skip."""
        if self.skip:
            raise NetworkError(f"{what}: body ended before the resume offset", host=host)


class BlobBody:
    """The body of a blocking-client response, as its ``Window`` of ``skip`` and ``limit``;
    a ``PumpedBody`` (endpoints/__init__.py): iterated, or pumped by one worker thread."""

    def __init__(
        self,
        resp: httpx.Response,
        *,
        skip: int,
        limit: int,
        what: str,
        host: str,
        read_timeout: float,
    ) -> None:
        self._window = Window(skip, limit)
        self._what, self._host = what, host
        self._chunks: Iterator[bytes] = resp.iter_raw()
        stream = resp.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        self._sock: socket.socket | None = sock if isinstance(sock, socket.socket) else None
        self._left: int | None = None  # bytes still on the socket, once it is read directly
        self._direct = self._sock is not None and _direct_ok(resp, stream, skip + limit)
        if self._sock is not None and self._direct:
            self._sock.settimeout(read_timeout)  # a stalled socket fails, and the blob resumes
        self._pace = Pace(read_timeout, what, host)  # a trickle fails too, and the blob resumes
        # Raised once the bytes before it are handed over.
        self._error: OSError | NetworkError | None = None
        self._finished = False

    # ---- reading (worker thread) --------------------------------------------------------------

    def _next(self, buf: memoryview) -> Chunk:
        """The next piece of the body within its window; empty at the end."""
        while not self._window.full:
            try:
                chunk = self._raw(buf)
            except (httpx.TransportError, ssl.SSLError, OSError) as exc:
                raise NetworkError(f"{self._what}: {reason(exc)}", host=self._host) from None
            if not chunk:
                self._finished = True
                self._window.end(self._what, self._host)
                return b""
            if mine := self._window.take(chunk):
                return mine
        return b""

    def _raw(self, buf: memoryview) -> Chunk:
        if self._left is None:
            # h11's first piece: what arrived with the headers, or one read; h11 holds no
            # more of the body after it, so the socket carries on exactly where it ends.
            chunk = next(self._chunks, b"")
            if self._direct:
                self._left = self._window.skip + self._window.limit - len(chunk)
            self._pace.add(len(chunk))
            return chunk
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if not self._left or self._sock is None:
            return b""
        want = min(len(buf), self._left)
        got = 0
        while got < want:  # fill the buffer: fewer, larger writes and hash updates
            try:
                n = self._sock.recv_into(buf[got:want])
            except OSError as exc:
                if not got:
                    raise
                self._error = exc  # hand over what did arrive first: a resume starts after it
                n = 0
            if n == 0:
                self._left = 0  # cut short: the caller sees fewer bytes than it asked for
                break
            got += n
            try:
                self._pace.add(n)
            except NetworkError as exc:
                self._error = exc  # too slow: hand over what did arrive first
                self._left -= got
                return buf[:got]
        else:
            self._left -= got
        return buf[:got]

    def _read_copy(self) -> bytes:
        buf = memoryview(bytearray(ITER_CHUNK))
        chunk = self._next(buf)
        return bytes(chunk)

    def blocking_chunks(self) -> Iterator[Chunk]:
        """For a worker thread that relays the body itself (an upload sending it on with the
        blocking client): every piece in turn, read into one reused buffer, so a piece is valid
        only until the next is asked for (a request body is copied as it is sent). Cancelled,
        the reader is woken by ``abort`` when the body's context closes, as for ``pump``."""
        buf = memoryview(bytearray(READ_BUFFER))
        while chunk := self._next(buf):
            yield chunk

    def _pump(self, sink: Sink) -> None:
        buf = memoryview(bytearray(READ_BUFFER))
        while (chunk := self._next(buf)) and sink(chunk):
            pass

    # ---- the event loop's side ----------------------------------------------------------------

    async def pump(self, sink: Sink) -> None:
        """Read the whole body in one worker thread, handing every piece to ``sink`` there.

        Cancelled, it wakes the thread by shutting the socket and waits for it to stop, so
        no write from it can land after the caller has moved on (threads.py).
        """
        await run_stoppable(functools.partial(self._pump, sink), self.abort, limiter=_limiter())

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """For callers that iterate (a push, an archive): a thread hop per MiB."""
        while chunk := await anyio.to_thread.run_sync(
            self._read_copy, abandon_on_cancel=True, limiter=_limiter()
        ):
            yield chunk

    def abort(self) -> None:
        """Wake a thread blocked on the socket (it reads an end of file)."""
        if self._sock is not None and not self._finished:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)


def _direct_ok(resp: httpx.Response, stream: object, length: int) -> bool:
    """The socket carries exactly ``length`` plain body bytes: a Content-Length that says so,
    no transfer or content coding, and not TLS inside TLS (whose outer socket is ciphertext)."""
    headers = resp.headers
    if headers.get("content-length", "").strip() != str(length):
        return False
    if "transfer-encoding" in headers:
        return False
    if headers.get("content-encoding", "identity").strip().lower() != "identity":
        return False
    get_extra_info = getattr(stream, "get_extra_info", None)
    tls = get_extra_info("ssl_object") if get_extra_info is not None else None
    return not isinstance(tls, ssl.SSLObject)
