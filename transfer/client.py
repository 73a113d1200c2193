"""The distribution HTTP API of one registry host: manifests, blobs, uploads, tags.

One client per host keeps connections alive across every manifest and blob of a run (skopeo opens
a new TCP connection for each request). The connections, trust and scheme probe are transport.py's;
what answers a 401 is decided by authflow.py (a token or basic credentials, a refused token
replaced once, a wider scope fetched once), and the challenge is remembered so later scopes skip
the 401 round trip. Every answer's status is checked in one place (``_expect``).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import ssl
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import anyio
import httpx

from . import authflow, jsonio, redirects
from .auth import (
    Challenge,
    Credentials,
    TokenCache,
    TokenKey,
    find_credentials,
    parse_challenges,
)
from .body import BlobBody, Pace, Window
from .digest import Digest
from .errors import (
    AuthError,
    Denied,
    DigestMismatch,
    InvalidDigest,
    ManifestError,
    NetworkError,
    NotFound,
    RangeError,
    RangeIgnored,
    RegistryError,
    TooManyRequests,
    TransferError,
    Unauthorized,
    reason,
)
from .ingest import Chunk
from .manifest import ACCEPT, MAX_MANIFEST_BYTES, OCI_INDEX, Descriptor, Manifest
from .ratelimit import HostGate, parse_retry_after
from .referrers import is_referrer_tag
from .throttle import Throttle
from .transport import HostTransport, TransportOptions, read_capped, release, release_blocking

MAX_ERROR_BODY = 64 << 10  # registry error bodies beyond this are not read (reliability case 4)
# tags/list: a page is asked for 1000 tags (~130 KB at the longest names); 4 MiB leaves room for
# registries that ignore ``n`` and add a manifest map (GCR) without letting one page of tiny
# names cost more than ~60 MB once parsed. Endless pages stop at the page or the tag count.
MAX_TAGS_PAGE = 4 << 20
MAX_TAG_PAGES = 10_000
MAX_TAGS = 1_000_000
# The referrers API: pages of at most MAX_MANIFEST_BYTES each; a real subject has a handful of
# referrers, these bound what a hostile registry can make one listing fetch.
MAX_REFERRER_PAGES = 100
MAX_REFERRERS = 10_000
READ_CHUNK = 1 << 20
BLOCKING_MIN = 4 << 20  # bodies at least this large are read in a worker thread (body.py)


@dataclass(frozen=True)
class Started:
    """An upload the registry opened: where to send its bytes, and the smallest chunk it takes
    (``OCI-Chunk-Min-Length``; 0 when it asks for none). The last chunk may be shorter."""

    location: str
    min_chunk: int = 0


def _min_chunk(resp: httpx.Response) -> int:
    """The registry's ``OCI-Chunk-Min-Length``; anything but a decimal number is no minimum."""
    value = resp.headers.get("oci-chunk-min-length", "").strip()
    return int(value) if value.isdigit() and len(value) <= 20 else 0


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def parse_content_range(value: str) -> tuple[int, int, int | None]:
    """``bytes START-END/TOTAL`` → (start, end, total); anything else raises RangeError."""
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if not match:
        raise RangeError(f"malformed Content-Range {value!r}")
    start, end = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if end < start or (total is not None and end >= total):
        raise RangeError(f"inconsistent Content-Range {value!r}")
    return start, end, total


def registry_error(
    resp: httpx.Response, body: bytes, *, what: str, host: str, reference: str | None = None
) -> RegistryError:
    """Turn an error answer into a typed error carrying host, status and the registry's code."""
    code = message = None
    try:
        errors = jsonio.loads(body).get("errors") or []
        if errors and isinstance(errors[0], dict):
            code = str(errors[0].get("code") or "") or None
            message = str(errors[0].get("message") or "") or None
    except (ValueError, AttributeError):
        pass
    status = resp.status_code
    detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    kwargs: dict[str, Any] = {"host": host, "status": status, "code": code, "reference": reference}
    retry_after = parse_retry_after(resp.headers.get("retry-after"))
    cls: type[RegistryError] = RegistryError
    hint = None
    if status == 401:
        cls, hint = Unauthorized, "check the credentials (xfer login, --creds)"
    elif status == 403:
        cls = Denied
    elif status == 404:
        cls = NotFound
    elif status == 429:
        cls = TooManyRequests
    return cls(f"{what}: {detail}", retry_after=retry_after, hint=hint, **kwargs)


class RegistryClient:
    """The distribution API of one registry host (``api_host`` as in Reference.api_host)."""

    def __init__(
        self,
        host: str,
        *,
        options: TransportOptions | None = None,
        credentials: Credentials | None = None,
        http: httpx.AsyncClient | None = None,
        throttle: Throttle | None = None,
        gate: HostGate | None = None,
    ) -> None:
        self.host = host
        self.throttle = throttle
        self.options = options or TransportOptions()
        self.credentials = credentials if credentials is not None else find_credentials(host)
        self.transport = HostTransport(host, self.options, http, gate)
        self._http = self.transport.http
        self._challenge: Challenge | None = None
        self.tokens = TokenCache(self._http, self.credentials)
        # The first contact: until the host has answered once (its scheme and its challenge
        # known), one request goes and the others wait for its answer, instead of each meeting
        # the same 401 (or the same failed TLS probe) on a connection of its own.
        self._contacted = False  # the host answered once (or its first request failed)
        self._contact: anyio.Event | None = None  # set then; made by the first request
        # Referrers (referrers.py), remembered for the run: whether this host has the
        # referrers API (None: not asked yet), each repository's referrer-shaped tags from one
        # listing, and one lock per (repository, subject) whose fallback index is being merged.
        self.referrers_api: bool | None = None
        self._probing = anyio.Lock()  # one request finds out, the run's others wait for it
        self._referrer_tags: dict[str, frozenset[str] | None] = {}
        self._listing: dict[str, anyio.Lock] = {}
        self.fallback_locks: dict[tuple[str, Digest], anyio.Lock] = {}

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.transport.aclose()

    @property
    def base_url(self) -> str:
        return self.transport.base_url

    # ---- the request core -------------------------------------------------------------------

    async def _authorize(
        self, request: httpx.Request, scopes: tuple[str, ...]
    ) -> tuple[TokenKey, str] | None:
        """Set the Authorization the remembered challenge asks for; returns the token used."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "bearer":
            key = TokenKey.of(
                self.host, challenge.realm, challenge.params.get("service", ""), scopes
            )
            token = await self.tokens.get(key)
            request.headers["Authorization"] = f"Bearer {token}"
            return key, token
        if challenge.scheme == "basic" and self.credentials and self.credentials.username:
            request.headers["Authorization"] = self.credentials.basic()
        return None

    async def send(
        self,
        method: str,
        path: str,
        *,
        scopes: tuple[str, ...],
        headers: Mapping[str, str] | None = None,
        content: Any = None,
        follow_redirects: bool = False,
        what: str = "request",
        blocking: bool = False,
    ) -> httpx.Response:
        """Send a request with auth; the response is streamed and must be closed by the caller.

        ``blocking``: sent by the blocking client in a worker thread, for an answer's body that
        is read there (body.py), or a request body that is an iterator read there (an upload
        relaying a blob from another registry).

        A 401 from this registry is answered with a token for the challenged scopes (or Basic),
        a refused token (expired or revoked mid-pull) is replaced once, and a wider scope asked
        for is fetched once; any other 401 is returned for the caller to fail on. A 401 from a
        host reached by redirect is never answered with this registry's credentials.
        """
        url = path if path.startswith(("http://", "https://")) else None
        # An absolute URL (an upload Location) on another origin gets nothing of ours: no
        # Authorization, no cookie from the jar (which ignores ports), no answer to its 401.
        foreign = url is not None and not redirects.same_origin(
            httpx.URL(url), httpx.URL(self.base_url)
        )
        retried = authflow.Retried()
        first = False if foreign else await self._first_contact()
        try:
            while True:
                request = self._http.build_request(
                    method,
                    url or f"{self.base_url}{path}",
                    headers=dict(headers or {}),
                    content=content,
                )
                if foreign:
                    redirects.drop_secrets(request.headers)
                    used = None
                else:
                    used = await self._authorize(request, scopes)
                resp = await self.transport.exchange(
                    request,
                    follow=follow_redirects,
                    what=what,
                    blocking=blocking,
                    relative=url is None,
                    # An upload streaming a body of its own takes its time; any other answer's head
                    # is bounded as a whole.
                    bounded=content is None or isinstance(content, bytes | str),
                )
                if resp is None:
                    continue  # the scheme was found out: build the request again on it
                if resp.status_code != 401:
                    return resp
                if foreign:
                    await _close(resp)
                    raise Unauthorized(
                        f"{what}: {redirects.where(request.url)}, where the registry sent it, asks "
                        f"for credentials; those of {self.host} go to {self.host} only",
                        host=self.host,
                        status=401,
                    )
                if not redirects.same_origin(resp.url, request.url):
                    return resp  # another host challenges: it gets nothing of ours (case 7)
                step = authflow.next_step(
                    parse_challenges(resp.headers.get_list("www-authenticate")),
                    scopes,
                    _sent(request, used),
                    retried,
                    host=self.host,
                    has_username=bool(self.credentials and self.credentials.username),
                )
                action = step.action
                if isinstance(action, authflow.GiveUp):
                    return resp
                try:
                    if isinstance(action, authflow.Refuse):
                        raise Unauthorized(
                            action.message, host=self.host, status=401, hint=action.hint
                        )
                    if action.challenge.scheme == "bearer":
                        self._check_realm(action.challenge.realm)
                except TransferError:
                    await _close(resp)
                    raise
                if isinstance(action, authflow.Refetch) and used is not None:
                    self.tokens.invalidate(*used)
                await _close(resp)
                self._challenge, scopes, retried = action.challenge, action.scopes, step.retried
                if first:
                    self._made_contact()  # the challenge is known: the others go with a token
        finally:
            if first:
                self._made_contact()  # failed or not, the others go (and meet what it met)

    def expect_pulls(self, repositories: Sequence[str]) -> None:
        """The run is about to read these repositories, each at once with the others: their
        pull scopes go to the token service together (TokenCache.expect)."""
        self.tokens.expect([f"repository:{repository}:pull" for repository in repositories])

    async def _first_contact(self) -> bool:
        """True for the request that makes the host's first contact; the others wait for it."""
        if self._contacted:
            return False
        if self._contact is None:
            self._contact = anyio.Event()
            return True
        await self._contact.wait()
        return False

    def _made_contact(self) -> None:
        self._contacted = True
        if self._contact is not None:
            self._contact.set()

    async def greet(self) -> None:
        """``GET /v2/`` as the host's first contact, when nothing was sent to it yet: its scheme
        and challenge are learned and its connection kept, and no token is fetched (a token
        needs a scope). A run about to send many requests at once to the host (a mirror's plan)
        greets it first, so none of them meets a 401: one request per repository, not two."""
        if self._contacted or self._contact is not None:
            return
        self._contact = anyio.Event()
        try:
            while True:
                request = self._http.build_request("GET", f"{self.base_url}/v2/")
                resp = await self.transport.exchange(request, follow=False, what="ping")
                if resp is not None:
                    break
            challenges = parse_challenges(resp.headers.get_list("www-authenticate"))
            await _close(resp)
            if resp.status_code == 401 and redirects.same_origin(resp.url, request.url):
                challenge = authflow.choose(
                    challenges, self.host, bool(self.credentials and self.credentials.username)
                )
                if not isinstance(challenge, authflow.Refuse) and (
                    challenge.scheme != "bearer" or self._realm_ok(challenge.realm)
                ):
                    self._challenge = challenge
        except TransferError:
            pass  # the requests that follow meet the same problem and report it
        finally:
            self._made_contact()

    def _realm_ok(self, realm: str) -> bool:
        try:
            self._check_realm(realm)
        except TransferError:
            return False
        return True

    def _check_realm(self, realm: str) -> None:
        """A token realm gets our password: not over a downgrade, not to link-local (case 8)."""
        try:
            target = httpx.URL(realm)
        except httpx.InvalidURL:
            target = None
        if target is None or not target.host:
            raise AuthError(f"registry {self.host} sent a token realm that is not a URL")
        refused = redirects.refusal(httpx.URL(self.base_url), target)
        if refused:
            raise AuthError(
                f"registry {self.host} sent a token realm on {target.host} that is refused: "
                f"{refused}",
                host=self.host,
            )

    async def check_login(self) -> None:
        """``GET /v2/`` through the auth flow: the credentials are good, or this raises."""
        what = f"login to {self.host}"
        resp = await self.send("GET", "/v2/", scopes=(), what=what)
        await self._expect(resp, (200,), what)

    async def _expect(
        self,
        resp: httpx.Response,
        ok: Container[int],
        what: str,
        *,
        reference: str | None = None,
        keep_body: bool = False,
        too_large: int | None = None,
    ) -> None:
        """The one check of an answer's status: any other than ``ok`` raises its typed error
        (the error body read, bounded); the answer is closed either way, unless its body is
        still to be read (``keep_body``: then the caller closes it). ``too_large``: the length
        of the body sent, named when the answer is 413 (a proxy capping request bodies)."""
        if resp.status_code == 413 and too_large is not None:
            await _close(resp)  # an HTML page of the proxy's, at best: nothing to read
            raise RegistryError(
                f"{what}: a request body of {too_large} bytes refused (HTTP 413 Payload Too Large)",
                host=self.host,
                status=413,
                hint="a proxy may cap request bodies: upload in chunks with --chunk-size",
            )
        if resp.status_code not in ok:
            raise await self._fail(resp, what, reference)
        if not keep_body:
            await _close(resp)

    async def _fail(
        self, resp: httpx.Response, what: str, reference: str | None = None
    ) -> RegistryError:
        body = bytearray()
        pace = Pace.of(resp, what, self.host, small=True)
        try:
            if isinstance(resp.stream, httpx.SyncByteStream):
                body += await anyio.to_thread.run_sync(
                    _error_body, resp, pace, abandon_on_cancel=True
                )
            else:
                async for chunk in resp.aiter_raw():
                    body += chunk
                    pace.add(len(chunk))
                    if len(body) > MAX_ERROR_BODY:
                        break
        except (httpx.HTTPError, httpx.StreamError):  # unreadable or already closed: no body
            pass
        finally:
            await _close(resp)
        return registry_error(resp, bytes(body), what=what, host=self.host, reference=reference)

    # ---- manifests ----------------------------------------------------------------------------

    async def get_manifest(
        self, repository: str, identifier: str, *, reference: str | None = None
    ) -> Manifest:
        expected = _digest_or_none(identifier)
        what = f"manifest {reference or f'{self.host}/{repository}:{identifier}'}"
        resp = await self.send(
            "GET",
            f"/v2/{repository}/manifests/{identifier}",
            scopes=(f"repository:{repository}:pull",),
            headers={"Accept": ACCEPT},
            what=what,
        )
        await self._expect(resp, (200,), what, reference=reference, keep_body=True)
        try:
            raw = await read_capped(resp, MAX_MANIFEST_BYTES, what, self.host)
        finally:
            await resp.aclose()
        header = resp.headers.get("docker-content-digest")
        if expected and header and header != str(expected):
            raise DigestMismatch(
                f"{what}: registry says {header}, expected {expected}",
                host=self.host,
                digest=str(expected),
            )
        return Manifest.from_bytes(
            raw, resp.headers.get("content-type"), expected=expected, what=what
        )

    async def head_manifest(self, repository: str, identifier: str) -> Descriptor | None:
        """The manifest's descriptor without its body, or None when it does not exist."""
        resp = await self.send(
            "HEAD",
            f"/v2/{repository}/manifests/{identifier}",
            scopes=(f"repository:{repository}:pull",),
            headers={"Accept": ACCEPT},
        )
        await _close(resp)
        if resp.status_code == 404:
            return None
        await self._expect(resp, (200,), f"manifest {self.host}/{repository}:{identifier}")
        header = resp.headers.get("docker-content-digest")
        if not header:
            return None
        try:
            return Descriptor(
                media_type=resp.headers.get("content-type", "").split(";")[0].strip(),
                digest=Digest.parse(header),
                size=int(resp.headers.get("content-length", "0")),
            )
        except (InvalidDigest, ValueError):  # the registry's fault, not a usage error
            raise RegistryError(
                f"manifest {self.host}/{repository}:{identifier}: malformed digest or length",
                host=self.host,
            ) from None

    # ---- blobs --------------------------------------------------------------------------------

    async def has_blob(self, repository: str, digest: Digest, *, push: bool = False) -> bool:
        scopes = self._push_scopes(repository) if push else (f"repository:{repository}:pull",)
        resp = await self.send(
            "HEAD", f"/v2/{repository}/blobs/{digest}", scopes=scopes, follow_redirects=True
        )
        await _close(resp)
        if resp.status_code == 404:
            return False
        await self._expect(resp, (200,), f"blob {digest}")
        return True

    @asynccontextmanager
    async def open_blob(
        self, repository: str, desc: Descriptor, offset: int = 0, end: int | None = None
    ) -> AsyncIterator[AsyncIterable[bytes]]:
        """Stream a blob from ``offset`` (to ``end``, exclusive, when given).

        The bytes yielded always start exactly at ``offset``. With ``end``, a server that ignores
        Range raises ``RangeIgnored`` instead of streaming the whole blob.
        """
        what = f"blob {desc.digest}"
        # No Range header on a first request: some registries answer `bytes=0-` with 400.
        headers = {"Accept-Encoding": "identity"}
        if end is not None:
            headers["Range"] = f"bytes={offset}-{end - 1}"
        elif offset:
            headers["Range"] = f"bytes={offset}-"
        limit = (end if end is not None else desc.size) - offset
        resp = await self.send(
            "GET",
            f"/v2/{repository}/blobs/{desc.digest}",
            scopes=(f"repository:{repository}:pull",),
            headers=headers,
            follow_redirects=True,
            what=what,
            # A capped rate is paced on the event loop; small bodies keep their connection.
            blocking=self.transport.owns_http and self.throttle is None and limit >= BLOCKING_MIN,
        )
        try:
            skip = 0
            if resp.status_code == 206 and "Range" in headers:
                start, _, total = parse_content_range(resp.headers.get("content-range", ""))
                if start != offset or (total is not None and total != desc.size):
                    raise RangeError(
                        f"{what}: asked for bytes from {offset}, server sent from {start}",
                        digest=str(desc.digest),
                        host=self.host,
                    )
            elif resp.status_code == 200:
                if end is not None:
                    raise RangeIgnored(f"{what}: the server ignores Range", host=self.host)
                skip = offset  # the server ignored Range: discard what we already have
            elif resp.status_code == 416:
                raise RangeError(f"{what}: range not satisfiable", digest=str(desc.digest))
            else:
                raise await self._fail(resp, what)
            if isinstance(resp.stream, httpx.SyncByteStream):
                body = BlobBody(
                    resp,
                    skip=skip,
                    limit=limit,
                    what=what,
                    host=self.host,
                    read_timeout=self.options.read_timeout,
                )
                try:
                    yield body
                finally:
                    body.abort()  # wakes a reader thread still waiting on the socket
            else:
                yield _body(resp, skip, limit, what, self.host, self.throttle)
        finally:
            await _close(resp)

    # ---- uploads (push) -------------------------------------------------------------------

    def blocking_ok(self, length: int) -> bool:
        """A body of ``length`` bytes goes through the blocking client in a worker thread:
        only on a client of our own, without a rate cap (paced on the event loop)."""
        return self.transport.owns_http and self.throttle is None and length >= BLOCKING_MIN

    def _push_scopes(self, repository: str, *also: str) -> tuple[str, ...]:
        return (f"repository:{repository}:pull,push", *also)

    def _upload_url(self, location: str | None, what: str) -> str:
        """The next request's URL; on another origin ``send`` gives it no credentials, and a
        downgrade, a link-local address or another scheme is refused (the redirect rules)."""
        if not location:
            raise RegistryError(f"{what}: the registry gave no upload Location", host=self.host)
        # Relative or absolute, with or without query parameters: used as given (case 47).
        try:
            url = str(urljoin(self.base_url + "/", location))
            target = httpx.URL(url)  # refuse what httpx cannot send, here, with the registry named
        except (ValueError, httpx.InvalidURL):
            raise RegistryError(
                f"{what}: the registry gave an unusable upload Location", host=self.host
            ) from None
        registry = httpx.URL(self.base_url)
        # The registry's own origin is where it already is: only another one is judged.
        refused = (
            None if redirects.same_origin(target, registry) else redirects.refusal(registry, target)
        )
        if refused:
            raise RegistryError(
                f"{what}: refused an upload Location on {redirects.where(target)}: {refused}",
                host=self.host,
            )
        return url

    async def mount_blob(self, repository: str, digest: Digest, source: str) -> Started | None:
        """Cross-repository mount: None when mounted (201), else the upload opened (202)."""
        what = f"mount of blob {digest} from {source}"
        resp = await self.send(
            "POST",
            f"/v2/{repository}/blobs/uploads/?mount={digest}&from={source}",
            scopes=self._push_scopes(repository, f"repository:{source}:pull"),
            what=what,
        )
        await self._expect(resp, (201, 202), what)
        if resp.status_code == 201:
            return None
        return Started(self._upload_url(resp.headers.get("location"), what), _min_chunk(resp))

    async def start_upload(self, repository: str) -> Started:
        what = f"upload to {self.host}/{repository}"
        resp = await self.send(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scopes=self._push_scopes(repository),
            what=what,
        )
        await self._expect(resp, (202,), what)
        return Started(self._upload_url(resp.headers.get("location"), what), _min_chunk(resp))

    async def upload_offset(self, repository: str, location: str) -> tuple[str, int]:
        """How much of an upload the registry holds (its ``Range: 0-N``), and where to go on."""
        what = f"upload status at {self.host}/{repository}"
        resp = await self.send("GET", location, scopes=self._push_scopes(repository), what=what)
        await self._expect(resp, (200, 204), what)
        held = resp.headers.get("range", "")
        match = re.fullmatch(r"(?:bytes=)?0-(\d+)", held.strip())
        # `0-N` holds N+1 bytes, but distribution also answers `0-0` for an empty upload (and
        # does not check Content-Range, so a wrong offset surfaces only as DIGEST_INVALID at the
        # PUT): read `0-0` as 0. A registry really holding one byte then refuses the PATCH
        # (416) or the PUT (DIGEST_INVALID), and either restarts the blob.
        last = int(match.group(1)) if match else 0
        offset = last + 1 if last else 0
        return self._upload_url(resp.headers.get("location") or location, what), offset

    async def patch_upload(
        self,
        repository: str,
        location: str,
        body: AsyncIterator[Chunk] | Iterator[Chunk],
        offset: int,
        length: int,
    ) -> str:
        """Send ``length`` bytes at ``offset`` of an upload; returns the next Location. A
        blocking iterator is sent by the blocking client in a worker thread that reads it."""
        what = f"upload to {self.host}/{repository}"
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
            "Content-Range": f"{offset}-{offset + length - 1}",
        }
        resp = await self.send(
            "PATCH",
            location,
            scopes=self._push_scopes(repository),
            headers=headers,
            content=body,
            what=what,
            blocking=not isinstance(body, AsyncIterator),
        )
        if resp.status_code == 416:
            await _close(resp)
            raise RangeError(f"{what}: the registry holds a different offset", host=self.host)
        await self._expect(resp, (202,), what, too_large=length)
        return self._upload_url(resp.headers.get("location") or location, what)

    async def finish_upload(self, repository: str, location: str, digest: Digest) -> None:
        what = f"upload of blob {digest} to {self.host}/{repository}"
        # The Location as given with ``digest=`` appended (case 47): parsing and re-encoding its
        # query (httpx turns "/" into %2F, %7E into "~") would alter a signed or opaque state.
        base = location.partition("#")[0]
        joint = "" if base.endswith(("?", "&")) else "&" if "?" in base else "?"
        resp = await self.send(
            "PUT",
            f"{base}{joint}digest={digest}",
            scopes=self._push_scopes(repository),
            headers={"Content-Length": "0"},
            what=what,
        )
        try:
            await self._expect(resp, (201, 204), what)
        except RegistryError as error:
            if error.code == "DIGEST_INVALID":  # we hashed what we sent: it arrived corrupt
                raise DigestMismatch(str(error), host=self.host, digest=str(digest)) from None
            raise

    async def cancel_upload(self, repository: str, location: str) -> None:
        """Best effort: a failed upload should not linger at the registry (case 48)."""
        try:
            resp = await self.send("DELETE", location, scopes=self._push_scopes(repository))
            await _close(resp)
        except TransferError:
            pass

    async def put_manifest(
        self, repository: str, identifier: str, manifest: Manifest
    ) -> str | None:
        """PUT the exact bytes with their media type, so the digest is the same there. Returns
        the answer's ``OCI-Subject`` (a registry with the referrers API indexed the manifest's
        subject itself), None without one."""
        what = f"manifest {self.host}/{repository}:{identifier}"
        resp = await self.send(
            "PUT",
            f"/v2/{repository}/manifests/{identifier}",
            scopes=self._push_scopes(repository),
            headers={"Content-Type": manifest.media_type},
            content=manifest.raw,
            what=what,
        )
        if resp.status_code == 413:
            await resp.aclose()
            raise RegistryError(
                f"{what}: too large for the registry ({len(manifest.raw)} bytes refused, "
                "HTTP 413 Payload Too Large)",
                host=self.host,
                status=413,
                digest=str(manifest.digest),
            )
        await self._expect(resp, (200, 201, 202), what)
        echoed = resp.headers.get("docker-content-digest")
        if echoed and echoed != str(manifest.digest):
            raise DigestMismatch(
                f"{what}: the registry stored {echoed}, expected {manifest.digest}",
                host=self.host,
                digest=str(manifest.digest),
            )
        subject: str | None = resp.headers.get("oci-subject")
        if subject:
            self.referrers_api = True
        return subject

    # ---- tags ---------------------------------------------------------------------------------

    async def tag_pages(
        self,
        repository: str,
        page_size: int = 1000,
        *,
        max_pages: int = MAX_TAG_PAGES,
        max_tags: int = MAX_TAGS,
    ) -> AsyncGenerator[list[str], None]:
        """Each page of a repository's tags as it arrives, following the registry's ``Link``.

        Only one page is held at a time. A next link on another origin is refused (the spec
        makes it relative to the registry; elsewhere it would carry our credentials); a link
        already followed (a loop), more than ``max_pages`` pages or ``max_tags`` tags end the
        listing with an error instead of running forever.
        """
        what = f"tags of {self.host}/{repository}"
        path: str | None = f"/v2/{repository}/tags/list?n={page_size}"
        followed: set[bytes] = set()  # digests of the links: a hostile link may be long
        total = 0
        while path:
            seen = hashlib.sha256(path.encode()).digest()
            if seen in followed:
                raise RegistryError(
                    f"{what}: the next-page link repeats a page already listed (a loop)",
                    host=self.host,
                )
            if len(followed) == max_pages:
                raise RegistryError(f"{what}: more than {max_pages:,} pages", host=self.host)
            followed.add(seen)
            resp = await self.send(
                "GET", path, scopes=(f"repository:{repository}:pull",), what=what
            )
            await self._expect(resp, (200,), what, keep_body=True)
            try:
                body = await read_capped(resp, MAX_TAGS_PAGE, what, self.host)
            finally:
                await resp.aclose()
            page = _tags_of(body, what, self.host)
            total += len(page)
            if total > max_tags:
                raise RegistryError(f"{what}: more than {max_tags:,} tags", host=self.host)
            yield page
            del page, body  # the next page is fetched and parsed without this one held
            path = self._next_page(resp, what)

    def _next_page(self, resp: httpx.Response, what: str) -> str | None:
        """The path of the next page, which must be on the registry's own origin."""
        link = _next_link(resp.headers.get("link"), str(resp.url))
        if link is None:
            return None
        try:
            target = httpx.URL(link)
        except httpx.InvalidURL:
            raise RegistryError(
                f"{what}: the next-page link is not a URL", host=self.host
            ) from None
        if not redirects.same_origin(target, httpx.URL(self.base_url)):
            refused = redirects.refusal(resp.url, target) or "another origin than the registry"
            raise RegistryError(
                f"{what}: refused a next-page link to {redirects.where(target)}: {refused}",
                host=self.host,
            )
        return target.raw_path.decode("ascii")

    async def list_tags(
        self, repository: str, page_size: int = 1000, *, max_pages: int = MAX_TAG_PAGES
    ) -> list[str]:
        """Every tag of a repository (at most MAX_TAGS), for callers that need them all."""
        tags: list[str] = []
        async with contextlib.aclosing(
            self.tag_pages(repository, page_size, max_pages=max_pages)
        ) as pages:
            async for page in pages:
                tags += page
        return tags

    # ---- referrers ------------------------------------------------------------------------------

    async def get_referrers(
        self,
        repository: str,
        digest: Digest,
        artifact_type: str | None = None,
        *,
        max_pages: int = MAX_REFERRER_PAGES,
        max_referrers: int = MAX_REFERRERS,
    ) -> list[Descriptor] | None:
        """What the referrers API (``GET /v2/<name>/referrers/<digest>``, OCI 1.1) lists for
        ``digest``, every page; None when the host has no such API (it answers 404, as
        distribution 2.8 does; the spec forbids a 404 from one that has it), which is
        remembered for the run so the next subject costs no request. ``artifact_type`` is
        passed on as the API's filter; a registry may ignore it (the caller filters again).
        Pages follow ``Link`` on the registry's own origin only; a page over the manifest
        cap, a repeated link, more than ``max_pages`` pages or ``max_referrers`` entries end
        the listing with an error instead of fetching without end."""
        if self.referrers_api is None:
            async with self._probing:
                if self.referrers_api is None:
                    return await self._get_referrers(
                        repository, digest, artifact_type, max_pages, max_referrers
                    )
        return await self._get_referrers(
            repository, digest, artifact_type, max_pages, max_referrers
        )

    async def _get_referrers(
        self,
        repository: str,
        digest: Digest,
        artifact_type: str | None,
        max_pages: int,
        max_referrers: int,
    ) -> list[Descriptor] | None:
        if self.referrers_api is False:
            return None
        what = f"referrers of {self.host}/{repository}@{digest}"
        path: str | None = f"/v2/{repository}/referrers/{digest}"
        if artifact_type:
            path = f"{path}?{httpx.QueryParams({'artifactType': artifact_type})}"
        followed: set[bytes] = set()
        found: list[Descriptor] = []
        while path:
            seen = hashlib.sha256(path.encode()).digest()
            if seen in followed:
                raise ManifestError(f"{what}: the next-page link repeats a page (a loop)")
            if len(followed) == max_pages:
                raise ManifestError(f"{what}: more than {max_pages} pages")
            followed.add(seen)
            resp = await self.send(
                "GET",
                path,
                scopes=(f"repository:{repository}:pull",),
                headers={"Accept": OCI_INDEX},
                what=what,
            )
            # No such route: 404 (distribution 2.8), or 400/405/501 from servers that route
            # unknown paths so; the spec forbids a 404 from a registry that has the API.
            if resp.status_code in (400, 404, 405, 501) and not found:
                await _close(resp)
                self.referrers_api = False
                return None
            await self._expect(resp, (200,), what, keep_body=True)
            self.referrers_api = True
            try:
                body = await read_capped(resp, MAX_MANIFEST_BYTES, what, self.host)
            finally:
                await resp.aclose()
            page = Manifest.from_bytes(body, resp.headers.get("content-type"), what=what)
            if not page.is_index:
                raise ManifestError(f"{what}: the answer is not an index ({page.media_type})")
            found += page.index().manifests
            if len(found) > max_referrers:
                raise ManifestError(f"{what}: more than {max_referrers} referrers")
            try:
                path = self._next_page(resp, what)
            except RegistryError as exc:
                # A link off the registry's origin (refused, nothing sent there) is a hostile
                # listing like a looping one: its referrers are left, the image is not failed.
                raise ManifestError(exc.message, host=self.host) from None
        return found

    async def referrer_tags(self, repository: str) -> frozenset[str] | None:
        """The repository's tags that name a digest (``sha256-<hex>``, with cosign's
        ``.sig``/``.att``/``.sbom``), from one tag listing per repository for the run; None
        when the registry does not list them (then each tag is asked for by name)."""
        if repository in self._referrer_tags:
            return self._referrer_tags[repository]
        lock = self._listing.setdefault(repository, anyio.Lock())
        async with lock:
            if repository not in self._referrer_tags:
                try:
                    kept: set[str] = set()
                    async with contextlib.aclosing(self.tag_pages(repository)) as pages:
                        async for page in pages:
                            kept.update(tag for tag in page if is_referrer_tag(tag))
                    self._referrer_tags[repository] = frozenset(kept)
                except (NotFound, Denied, Unauthorized):
                    self._referrer_tags[repository] = None
            return self._referrer_tags[repository]

    def remember_tags(self, repository: str, tags: Iterable[str]) -> None:
        """A listing made anyway (a mirror's plan) spares ``referrer_tags`` its own."""
        if repository not in self._referrer_tags:
            self._referrer_tags[repository] = frozenset(tag for tag in tags if is_referrer_tag(tag))


def _tags_of(body: bytes, what: str, host: str) -> list[str]:
    try:
        tags = jsonio.loads(body).get("tags") or []
    except (ValueError, AttributeError):
        raise RegistryError(f"{what}: the answer is not JSON", host=host) from None
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise RegistryError(f"{what}: the answer's tags are not a list of names", host=host)
    return tags


async def _body(
    resp: httpx.Response, skip: int, limit: int, what: str, host: str, throttle: Throttle | None
) -> AsyncIterator[bytes]:
    """The body's ``Window`` of ``skip`` and ``limit``, paced by ``throttle``."""
    window = Window(skip, limit)
    pace = Pace.of(resp, what, host)
    try:
        async for chunk in resp.aiter_raw():
            pace.add(len(chunk))
            if not (mine := window.take(chunk)):
                continue
            if throttle is not None:
                held = time.monotonic()
                await throttle.take(len(mine))
                pace.pause(time.monotonic() - held)  # our own cap's wait: not the server's
            yield bytes(mine)
            if window.full:
                return  # longer than promised: stop reading; the caller rejects it
    except (httpx.TransportError, ssl.SSLError) as exc:  # httpcore leaves mid-body TLS alerts raw
        raise NetworkError(f"{what}: {reason(exc)}", host=host) from None
    window.end(what, host)


async def _close(resp: httpx.Response) -> None:
    """Close an answer; a short one gives its connection back to the pool (transport.release)."""
    if isinstance(resp.stream, httpx.SyncByteStream):
        release_blocking(resp)  # a closed socket or a connection back to the pool: no waiting
    else:
        await release(resp)


def _error_body(resp: httpx.Response, pace: Pace) -> bytes:
    body = bytearray()
    for chunk in resp.iter_raw():
        body += chunk
        pace.add(len(chunk))
        if len(body) > MAX_ERROR_BODY:
            break
    return bytes(body)


def _next_link(header: str | None, base: str) -> str | None:
    """The RFC 5988 ``Link: <url>; rel="next"`` that distribution uses for tag pagination."""
    if not header:
        return None
    for part in header.split(","):
        match = re.match(r'\s*<([^>]*)>\s*;\s*rel="?next"?', part)
        if match:
            return str(urljoin(base, match.group(1)))
    return None


def _digest_or_none(identifier: str) -> Digest | None:
    if ":" not in identifier:
        return None
    try:
        return Digest.parse(identifier)
    except InvalidDigest:
        raise ManifestError(f"invalid manifest digest {identifier!r}") from None


def _sent(request: httpx.Request, used: tuple[TokenKey, str] | None) -> authflow.Sent:
    """What a refused request carried: a token of ours, Basic, or nothing."""
    if "authorization" not in request.headers:
        return "none"
    return "bearer" if used is not None else "basic"
