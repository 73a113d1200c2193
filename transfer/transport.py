"""The connections to one registry host: the HTTP clients, trust and the scheme it speaks.

- **Two clients per host.** An asynchronous client for every request, and a blocking twin,
  made on first use, whose big blob bodies are read in worker threads (body.py). Both share
  trust, timeouts, pool limits and proxies (``client_options``) over xfer's own transports
  (pool.py).
- **The scheme probe.** HTTPS first; plain HTTP only if the user said so (``--plain-http``) or,
  for a loopback registry or one marked insecure, when the server is found not to speak TLS at
  all (docker's rule). A certificate problem is never taken for "no TLS" (no downgrade on
  attack).
- **One exchange.** ``HostTransport.exchange`` sends one request (redirects followed by the
  redirect rules), bounds the answer's head in time and turns connection failures into
  NetworkError with the host named; authentication and status codes are the client's.
- **The host's gate.** Every request waits at the host's ``HostGate`` (ratelimit.py: a pause
  a 429 or ``RateLimit-*`` asked for, ``--max-requests-per-second``) before it is sent, and
  every answer from the host tells the gate what it says about its limits. A session gives
  every client of a host the same gate, so a 429 met by one image slows the run's others.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from . import pool, redirects
from .body import ANSWER_FACTOR, Pace
from .errors import NetworkError, RegistryError, TooLarge, reason
from .ratelimit import HostGate
from .tls import certificate_problem, ssl_context

MAX_REDIRECTS = redirects.MAX_REDIRECTS
# An answer's body at most this long is read to its end before the answer is closed, so its
# connection goes back to the pool (see ``release``); a longer one costs its connection.
RELEASE_MAX = 64 << 10
RELEASE_WAIT = 2.0  # seconds a short body may take to arrive before its connection is dropped


@dataclass(frozen=True)
class TransportOptions:
    plain_http: bool = False
    insecure: bool = False
    ca_file: str | None = None
    ca_files: tuple[str, ...] = ()  # more CAs (certs.d, config); all add to the system trust
    client_cert: tuple[str, str] | None = None  # (certificate, key)
    connect_timeout: float = 30.0
    read_timeout: float = 60.0  # a stalled socket fails after this and the blob resumes
    max_connections: int = 32


def is_loopback(host: str) -> bool:
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def speaks_no_tls(exc: httpx.ConnectError) -> bool:
    """The TLS handshake failed because the server answered in plain HTTP or hung up.

    A certificate that fails verification, or a server refusing our client certificate, is
    never taken for "no TLS" (no downgrade on attack).
    """
    if certificate_problem(exc):
        return False
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return False
        if isinstance(seen, ssl.SSLError):
            text = str(seen).lower()
            return any(
                marker in text
                for marker in ("wrong version number", "record layer failure", "unexpected eof")
            )
        if isinstance(seen, anyio.EndOfStream | ConnectionResetError):
            return True  # the server closed the connection on our ClientHello
        seen = seen.__cause__ or seen.__context__
    return False


def connect_error(exc: BaseException, host: str, what: str | None = None) -> NetworkError:
    problem = certificate_problem(exc)
    if problem:
        error = NetworkError(f"cannot connect to {host}: {problem[0]}", host=host, hint=problem[1])
        error.retryable = False  # no retry fixes a certificate
        return error
    if what is None:
        return NetworkError(f"cannot connect to {host}: {reason(exc)}", host=host)
    return NetworkError(f"{what}: {reason(exc)}", host=host)


def client_options(options: TransportOptions) -> dict[str, Any]:
    """What the asynchronous and the blocking client share: trust, timeouts, pool, proxies."""
    ca_files = ((options.ca_file,) if options.ca_file else ()) + options.ca_files
    verify = ssl_context(ca_files, options.client_cert, verify=not options.insecure)
    return {
        "verify": verify,
        "timeout": httpx.Timeout(options.read_timeout, connect=options.connect_timeout, pool=None),
        "limits": httpx.Limits(
            max_connections=options.max_connections,
            max_keepalive_connections=options.max_connections,
        ),
        "max_redirects": MAX_REDIRECTS,
        "trust_env": True,
        # Bodies are read raw (a manifest is hashed over its exact bytes, a blob over what it
        # is), so no request may invite a compressed answer: httpx would ask for gzip, deflate
        # and zstd. One default for every request, so no new request can forget it.
        "headers": {"User-Agent": "xfer/0.1", "Accept-Encoding": "identity"},
    }


def make_http(options: TransportOptions, host: str | None = None) -> httpx.AsyncClient:
    """The asynchronous client over xfer's own transport (pool.py); ``host``, the registry the
    user named, may be at a link-local address (no host reached on a server's say-so may)."""
    settings = client_options(options)
    # Proxies named by the environment get httpx's own transports (mounts) from these settings.
    return httpx.AsyncClient(
        **settings,
        transport=pool.transport(settings["verify"], settings["limits"], registry=host),
    )


def make_blocking(options: TransportOptions, host: str | None = None) -> httpx.Client:
    """The blocking client whose big bodies are read in worker threads (body.py)."""
    settings = client_options(options)
    return httpx.Client(
        **settings,
        transport=pool.blocking_transport(settings["verify"], settings["limits"], registry=host),
    )


class HostTransport:
    """The clients of one registry host and the scheme it speaks; closes what it made."""

    def __init__(
        self,
        host: str,
        options: TransportOptions,
        http: httpx.AsyncClient | None = None,
        gate: HostGate | None = None,
    ) -> None:
        self.host = host
        self.options = options
        self.gate = gate or HostGate()  # a client of its own still honours its host's 429s
        self.http = http or make_http(options, host)
        # Big bodies go through the blocking twin only when the asynchronous client is ours:
        # there is no blocking twin of a client the caller supplied.
        self.owns_http = http is None
        self._blocking: httpx.Client | None = None
        self.scheme = "http" if options.plain_http else "https"
        fallback = is_loopback(host) or options.insecure
        self.scheme_known = options.plain_http or not fallback

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def blocking(self) -> httpx.Client:
        if self._blocking is None:
            self._blocking = make_blocking(self.options, self.host)
        return self._blocking

    async def aclose(self) -> None:
        if self._blocking is not None:
            self._blocking.close()
        if self.owns_http:
            await self.http.aclose()

    async def exchange(
        self,
        request: httpx.Request,
        *,
        follow: bool,
        what: str,
        blocking: bool = False,
        relative: bool = True,
        bounded: bool = True,
    ) -> httpx.Response | None:
        """Send ``request``; the response is streamed and must be closed by the caller.

        None: the scheme was found out (or changed) meanwhile, so the request is to be built
        again on ``base_url``. ``blocking``: sent by the blocking client in a worker thread, for
        a body read there; ``relative``: the request is on ``base_url`` (not an absolute URL a
        registry gave), so a scheme found out meanwhile applies to it; ``bounded``: the answer's
        head must be complete within ``ANSWER_FACTOR`` x the read timeout (a trickled head never
        times a read out), false for a request streaming a body of its own (an upload): that
        one takes its time.
        """
        answer = self.options.read_timeout * ANSWER_FACTOR
        gate = self.gate
        if gate.active:  # outside the answer's bound: waiting our turn is not the server's time
            await gate.wait()
        try:
            with anyio.fail_after(answer if bounded else None):
                if blocking:
                    resp = await anyio.to_thread.run_sync(
                        functools.partial(
                            redirects.send_blocking,
                            self.blocking(),
                            request,
                            follow=follow,
                            what=what,
                            host=self.host,
                        ),
                        abandon_on_cancel=True,  # nothing of ours is touched by it
                    )
                else:
                    resp = await redirects.send(
                        self.http, request, follow=follow, what=what, host=self.host
                    )
        except TimeoutError:
            raise NetworkError(
                f"{what}: too slow: no complete answer within {answer:g} s", host=self.host
            ) from None
        except httpx.ConnectError as exc:
            if relative and request.url.scheme != self.scheme:
                return None  # a concurrent request found out the scheme meanwhile: use it
            if not self.scheme_known and speaks_no_tls(exc):
                # docker's rule for loopback: HTTPS first, plain HTTP only if TLS is not spoken.
                self.scheme, self.scheme_known = "http", True
                return None
            raise connect_error(exc, self.host) from None
        except (httpx.TransportError, ssl.SSLError) as exc:
            raise connect_error(exc, self.host, what) from None
        self.scheme_known = True
        if resp.url.host == request.url.host:  # a CDN redirected to has limits of its own
            gate.observe(resp)
        return resp


def _method(resp: httpx.Response) -> str | None:
    try:
        return resp.request.method
    except RuntimeError:  # an answer made without a request (a test's)
        return None


def _short(resp: httpx.Response) -> bool:
    """Whether what is left of an answer's body is known to be short (or none at all)."""
    if resp.status_code in (204, 304) or _method(resp) == "HEAD":
        return True
    length = resp.headers.get("content-length", "")
    return length.isdigit() and int(length) <= RELEASE_MAX


async def release(resp: httpx.Response) -> None:
    """Close an answer and keep its connection for the next request.

    httpcore returns a connection to its pool only when the answer was read to its end; an
    answer closed before that closes its connection, even a HEAD's or a 401's, whose end is
    in hand already (h11 still has to be asked for it). Closed unread, every manifest HEAD,
    401 and upload step cost a new connection: over TLS a handshake, behind a 25 ms path two
    round trips more (a no-op mirror rerun paid that for each of its HEADs and 401s). So a
    body known to be short is read first (bounded in bytes and time); any other answer, a
    blob's, is closed as before: its bytes are worth less than a new connection.
    """
    if resp.is_closed:
        return
    if _short(resp):
        with anyio.move_on_after(RELEASE_WAIT):
            try:
                async for _ in resp.aiter_raw():
                    pass  # at most RELEASE_MAX, as the Content-Length said
            except (httpx.HTTPError, httpx.StreamError, ssl.SSLError, OSError):
                pass  # the connection is closed below; nothing of the answer is lost
    await resp.aclose()


def release_blocking(resp: httpx.Response) -> None:
    """``release`` for the blocking client's answers, which are closed on the event loop: only
    an answer whose end needs no read from the socket (a HEAD's, an empty body) is finished,
    so nothing here can wait."""
    if resp.is_closed:
        return
    no_body = _method(resp) == "HEAD" or resp.headers.get("content-length") == "0"
    if no_body or resp.status_code in (204, 304):
        try:
            for _ in resp.iter_raw():
                pass
        except (httpx.HTTPError, httpx.StreamError, ssl.SSLError, OSError):
            pass
    resp.close()


async def read_capped(resp: httpx.Response, cap: int, what: str, host: str) -> bytes:
    """The raw body of a small answer (a manifest, a tags page, a token), at most ``cap`` bytes
    and bounded in time; a body the server encoded anyway is refused: its raw bytes are not the
    document, and inflating it would trust a server that ignored us (a gzip bomb as a token)."""
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise RegistryError(
            f"{what}: the answer is {encoding[:40]}-encoded although only identity was accepted",
            host=host,
        )
    length = resp.headers.get("content-length")
    if length and length.isdigit() and int(length) > cap:
        raise TooLarge(f"{what} is {length} bytes, more than the {cap} allowed", host=host)
    body = bytearray()
    pace = Pace.of(resp, what, host, small=True)  # a trickle must not hold it for ever
    try:
        async for chunk in resp.aiter_raw():
            body += chunk
            pace.add(len(chunk))
            if len(body) > cap:
                raise TooLarge(f"{what} is more than the {cap} bytes allowed", host=host)
    except (httpx.TransportError, ssl.SSLError) as exc:
        raise NetworkError(f"{what}: {reason(exc)}", host=host) from None
    return bytes(body)
