"""Following redirects without leaking secrets (reliability cases 6-8).

Blob GETs are redirected to CDNs and object stores on other hosts. httpx's own following strips
``Authorization`` across origins, but adds cookies from its jar (which ignores ports) and follows
https → http; so xfer follows redirects itself: credentials and cookies only ever go back to the
origin they came from, never downgraded to plain HTTP, never to a link-local (metadata) address.

The same rules hold for every other URL a registry hands out: an upload ``Location`` (the
client drops the secrets on another origin, and refuses what ``refusal`` names) and a tags
``Link`` (refused unless on the registry's own origin). ``refusal`` judges the URL as written;
the address actually connected to is the network layer's to judge (transfer/pool.py), except
through an environment proxy (``HTTP(S)_PROXY``), which resolves and connects by itself: there
only this check of the URL as written applies.
"""

from __future__ import annotations

import ipaddress
import re
import socket

import httpx

from .errors import RegistryError

MAX_REDIRECTS = 10
SENSITIVE_HEADERS = ("authorization", "cookie", "proxy-authorization")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# What inet_aton may read as an IPv4 address: decimal, octal or hex parts, one to four of them.
# IPv6 prefixes whose last 32 bits are an IPv4 address (RFC 4291 2.5.5.1, RFC 6052).
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NUMERIC = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]*|[0-9]+)){0,3}")


def origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme, 0)


def same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return origin(a) == origin(b)


def where(url: httpx.URL) -> str:
    """``host[:port]`` of a URL for a message: never its path or query (a presigned URL's query
    is a credential, case 9), never its user information."""
    host = f"[{url.host}]" if ":" in url.host else url.host or "?"
    return f"{host}:{url.port}" if url.port else host


def drop_secrets(headers: httpx.Headers) -> None:
    """Remove what must only ever reach the origin it belongs to."""
    for name in SENSITIVE_HEADERS:
        headers.pop(name, None)


def host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host name stands for without asking DNS: an IP literal, or a numeric IPv4
    alias as the system resolver reads one (``inet_aton``: ``2852039166``, ``0xa9fea9fe``,
    ``169.254.43518``, ``0251.0376.0251.0376`` are all 169.254.169.254), with or without the
    trailing dot of a fully qualified name (``169.254.169.254.``); None for a name."""
    name = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    if not _NUMERIC.fullmatch(name):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        return None


def is_link_local_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """169.254.0.0/16 and fe80::/10, also an IPv4 one inside an IPv6 address: IPv4-mapped
    (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), NAT64 (``64:ff9b::a.b.c.d``) and
    6to4 (``2002:AABB:CCDD::``), each of which a host may route to the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and (address in _IPV4_COMPATIBLE or address in _NAT64):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and embedded.is_link_local:
            return True
    return address.is_link_local


def is_link_local(host: str) -> bool:
    """A host that is a link-local address however it is spelled (the early check; the
    connection itself is refused by address, transfer/pool.py)."""
    address = host_address(host)
    return address is not None and is_link_local_address(address)


def refusal(source: httpx.URL, target: httpx.URL) -> str | None:
    """Why a request must not go from ``source`` to ``target`` (a redirect, a token realm, an
    upload Location, a next page)."""
    if target.scheme not in ("http", "https"):
        return f"{target.scheme or 'no'} scheme"
    if source.scheme == "https" and target.scheme == "http":
        return "a downgrade from https to http"
    if is_link_local(target.host):
        return "a link-local address"
    return None


def redirected(request: httpx.Request, status: int, target: httpx.URL) -> httpx.Request:
    """The next request of a redirect chain; secrets are dropped when the origin changes.

    Built as a bare ``httpx.Request`` so the client's cookie jar adds nothing on the way.
    """
    method = request.method
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method = "GET"
    headers = httpx.Headers(request.headers)
    for name in ("host", "content-length", "transfer-encoding"):
        headers.pop(name, None)
    if not same_origin(target, request.url):
        drop_secrets(headers)
    return httpx.Request(method, target, headers=headers, extensions=request.extensions)


def next_hop(
    resp: httpx.Response, request: httpx.Request, *, what: str, host: str
) -> httpx.Request:
    """The request that follows the redirect ``resp``; raises if it must not be followed."""
    try:
        target = resp.url.join(resp.headers["location"])
    except httpx.InvalidURL:
        raise RegistryError(f"{what}: redirected to an invalid URL", host=host) from None
    reason = refusal(resp.url, target)
    if reason:
        # The host only: a presigned URL's query string is a credential (case 9).
        raise RegistryError(
            f"{what}: refused a redirect to {target.host or '?'}: {reason}", host=host
        )
    return redirected(request, resp.status_code, target)


def _too_many(what: str, host: str) -> RegistryError:
    return RegistryError(f"{what}: more than {MAX_REDIRECTS} redirects", host=host)


async def send(
    http: httpx.AsyncClient, request: httpx.Request, *, follow: bool, what: str, host: str
) -> httpx.Response:
    """Send ``request`` (streamed), following at most MAX_REDIRECTS redirects when asked to.

    Only requests without a body are followed (blob and manifest reads); the response of the
    last hop is returned, its ``url`` telling where it came from.
    """
    for _ in range(MAX_REDIRECTS + 1):
        resp = await http.send(request, stream=True, follow_redirects=False)
        if not (follow and resp.has_redirect_location):
            return resp
        await resp.aclose()
        request = next_hop(resp, request, what=what, host=host)
    raise _too_many(what, host)


def send_blocking(
    http: httpx.Client, request: httpx.Request, *, follow: bool, what: str, host: str
) -> httpx.Response:
    """``send`` for a worker thread: the blocking client whose bodies are read there."""
    for _ in range(MAX_REDIRECTS + 1):
        resp = http.send(request, stream=True, follow_redirects=False)
        if not (follow and resp.has_redirect_location):
            return resp
        resp.close()
        request = next_hop(resp, request, what=what, host=host)
    raise _too_many(what, host)
