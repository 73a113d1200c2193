"""Secrets stay with the registry they belong to, and hostile answers stay bounded:

- a tags ``Link`` to another origin is refused (no page, no password, no token goes there);
- an upload ``Location`` on another origin gets the blob without ``Authorization`` or cookies,
  and one on a link-local address or a non-http scheme is refused cleanly;
- ``xfer tags`` prints each page as it arrives and stops on a loop or a cap, in flat memory;
- every request asks for ``Accept-Encoding: identity``, so a server that compresses whenever
  it is allowed to cannot change the bytes a manifest is hashed over.

The registries are real (htpasswd and token auth); the fault proxy changes one header of their
answers, and the leak-bait server (fixtures/leakbait.py) plays the other host and records
every header it received.
"""

from __future__ import annotations

import base64
import select
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Unpack
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest

from fixtures.faultproxy import Fault, FaultOptions, FaultProxy, HeaderList
from fixtures.images import BuiltImages
from fixtures.leakbait import Answer, LeakBait, Seen, challenge, tag_page
from fixtures.registry import Registry
from fixtures.tokenserver import CertAuthority
from tests.helpers import Run, index_refs, peak_rss, stored_blobs, xfer, xfer_env
from transfer.client import RegistryClient
from transfer.errors import RegistryError
from transfer.transport import TransportOptions

SECRET = "secret"  # alice's password on every test registry
LOGIN = ("--creds", f"alice:{SECRET}")
BASIC = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()


def _error_line(run: Run) -> str:
    """A clean failure: exit 1, one line on stderr, no traceback, not "a bug in xfer"."""
    assert run.code == 1, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("xfer: error: ")
    assert "bug in xfer" not in run.err and "Traceback" not in run.err
    assert SECRET not in run.err and BASIC.split()[1] not in run.err
    return lines[0]


def _watched(command: list[str]) -> tuple[int, str, float, bool]:
    """Exit code, stderr, own peak RSS (MiB) of ``command``, and whether the watchdog killed it
    (past 600 MB or 120 s: the old code grew without bound)."""
    done, peak_mib, _, killed = peak_rss(
        command, env=xfer_env(), timeout=120, rss_limit=600 << 20, stdout=subprocess.DEVNULL
    )
    return done.returncode, done.stderr, peak_mib, killed


class AddHeaders(Fault):
    """Adds (or replaces) headers of the answers it matches (not of redirects or errors)."""

    def __init__(self, headers: dict[str, str], **options: Unpack[FaultOptions]) -> None:
        super().__init__(**options)
        self.extra = headers

    def transform_response(self, status: int, headers: HeaderList) -> HeaderList:
        if status >= 300:
            return headers
        names = {name.lower() for name in self.extra}
        return [(k, v) for k, v in headers if k not in names] + [
            (k.lower(), v) for k, v in self.extra.items()
        ]


# ---- 1. pagination stays on the registry's origin --------------------------------------------


@pytest.fixture
def challenger() -> Iterator[LeakBait]:
    """Another host that answers everything with a 401 Basic challenge, recording headers."""
    with LeakBait(handlers=[challenge("Basic")]) as bait:
        yield bait


def _foreign_link(to: LeakBait, repository: str) -> AddHeaders:
    link = f'<{to.url}/v2/{repository}/tags/list?n=1000&last=1>; rel="next"'
    return AddHeaders({"Link": link}, match="/tags/list", times=None)


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_a_tags_link_to_another_host_is_refused_and_no_credential_goes_there(
    auth: str,
    basic_registry: Registry,
    token_registry: Registry,
    challenger: LeakBait,
) -> None:
    registry, repository = (
        (basic_registry, "test/small") if auth == "basic" else (token_registry, "private/small")
    )
    with FaultProxy(registry.url) as front:
        front.add(_foreign_link(challenger, repository))
        run = xfer("tags", *LOGIN, f"{front.host}/{repository}")
        listed = front.requests("GET", "/tags/list")
    line = _error_line(run)
    assert challenger.host in line and "next" in line
    # The registry itself got the credentials (there was something to leak) ...
    scheme = "Basic " if auth == "basic" else "Bearer "
    assert any(r.request_headers.get("authorization", "").startswith(scheme) for r in listed)
    # ... and the other host got no request at all, so none carrying a secret.
    assert not challenger.carrying()
    assert challenger.seen() == []


def test_a_tags_link_from_https_to_http_is_refused_as_a_downgrade(
    challenger: LeakBait, tmp_path: Path
) -> None:
    ca = CertAuthority("leak-bait CA")
    cert = ca.write_leaf(tmp_path, "bait", hosts=["127.0.0.1"], server=True)
    link = f"http://{challenger.host}/v2/x/tags/list?n=1000&last=a"

    def registry(seen: Seen) -> Answer:
        if seen.headers.get("authorization") != BASIC:
            return Answer(401, {"WWW-Authenticate": 'Basic realm="registry"'})
        return tag_page(["a"], link=link)

    with LeakBait(handlers=[registry], tls=(cert.cert, cert.key)) as bait:
        ca_file = ca.write_ca(tmp_path / "ca.pem")
        run = xfer("tags", "--ca-file", ca_file, *LOGIN, f"{bait.host}/x")
        assert bait.carrying("authorization")  # the https registry was given the password
    line = _error_line(run)
    assert "downgrade" in line and challenger.host in line
    assert challenger.seen() == []


# ---- 2. upload Locations ---------------------------------------------------------------------


def _push_through(
    front: FaultProxy, images: BuiltImages, registry: Registry, repo: str, *options: str
) -> Run:
    info = images.images["small"]
    source = f"{registry.host}/{info.ref}"
    return xfer("copy", *LOGIN, *options, source, f"{front.host}/{repo}:1")


def test_an_upload_location_on_another_host_gets_no_credentials_or_cookies(
    basic_registry: Registry, registry: Registry, images: BuiltImages, challenger: LeakBait
) -> None:
    with FaultProxy(basic_registry.url) as front:
        # The upload's Location names another host; the answer also sets a cookie (port-blind
        # cookie jars would send it to every 127.0.0.1).
        front.add(
            AddHeaders(
                {
                    "Location": f"{challenger.url}/v2/leak/upload/1?_state=opaque",
                    "Set-Cookie": "session=sticky-123; Path=/",
                },
                match="/blobs/uploads/",
                method="POST",
                times=None,
            )
        )
        run = _push_through(front, images, registry, "leak/location", "--retries", "0")
        posts = front.requests("POST", "/blobs/uploads/")
    line = _error_line(run)
    assert challenger.host in line and "credentials" in line
    assert posts and all(r.request_headers.get("authorization") == BASIC for r in posts)
    reached = challenger.seen()
    assert reached, "the upload should have gone to the Location the registry gave"
    # That host challenged with 401 Basic: it was never answered with the password either.
    assert not challenger.carrying(), [s.headers for s in challenger.carrying()]
    assert all("/v2/leak/upload/1" in s.target for s in reached)


@pytest.mark.parametrize(
    ("location", "named"),
    [
        ("file:///etc/passwd", "file"),
        ("http://169.254.169.254/latest/meta-data/?X-Amz-Signature=abc", "169.254.169.254"),
        ("http://[fe80::1]/upload", "fe80::1"),
        ("gopher://127.0.0.1:70/x", "gopher"),
    ],
)
def test_a_hostile_upload_location_is_refused_cleanly(
    location: str, named: str, basic_registry: Registry, registry: Registry, images: BuiltImages
) -> None:
    with FaultProxy(basic_registry.url) as front:
        front.add(
            AddHeaders(
                {"Location": location},
                match="/blobs/uploads/",
                method="POST",
                times=None,
            )
        )
        run = _push_through(front, images, registry, "leak/hostile")
    line = _error_line(run)
    assert named in line and "upload" in line
    assert "X-Amz-Signature" not in line  # the query of a Location may be a credential


def test_an_upload_location_from_https_to_http_is_refused_as_a_downgrade(
    registry: Registry, images: BuiltImages, challenger: LeakBait, tmp_path: Path
) -> None:
    ca = CertAuthority("leak-bait CA")
    cert = ca.write_leaf(tmp_path, "bait", hosts=["127.0.0.1"], server=True)

    def uploads(seen: Seen) -> Answer | None:
        if seen.method == "POST" and "/blobs/uploads/" in seen.target:
            return Answer(202, {"Location": f"http://{challenger.host}/v2/leak/upload/1"})
        return None

    info = images.images["small"]
    # An https registry (the real one behind a TLS front) that hands out a plain-http Location.
    with LeakBait(registry.url, handlers=[uploads], tls=(cert.cert, cert.key)) as front:
        ca_file = ca.write_ca(tmp_path / "ca.pem")
        source = f"{registry.host}/{info.ref}"
        run = xfer("copy", "--ca-file", ca_file, *LOGIN, source, f"{front.host}/leak/tls:1")
    line = _error_line(run)
    assert "downgrade" in line and challenger.host in line
    assert challenger.seen() == []


# ---- 6. tags: streamed, bounded ---------------------------------------------------------------


def _pages(body_tags: list[str], seen_links: list[str]) -> LeakBait:
    """Endless tag pages, each with a next link never given before."""

    def handler(seen: Seen) -> Answer | None:
        if "/tags/list" not in seen.target:
            return None
        seen_links.append(seen.target)
        return tag_page(body_tags, link=f"/v2/x/tags/list?n=1000&last=p{len(seen_links)}")

    return LeakBait(handlers=[handler])


def test_endless_big_tag_pages_stop_at_the_tag_cap_in_flat_memory() -> None:
    # ~3.9 MiB pages of 280,000 tags each, each with a next link never given before: 2.6 GB
    # in 9 s when every page was kept; streamed, the run stops at the million-tag cap.
    tags = [f"t{i:09d}" for i in range(280_000)]
    links: list[str] = []
    with _pages(tags, links) as bait:
        command = [sys.executable, "-m", "transfer", "tags", f"{bait.host}/x"]
        started = time.monotonic()
        code, err, peak, killed = _watched(command)
        elapsed = time.monotonic() - started
    assert not killed, f"xfer tags grew past 600 MB or ran for {elapsed:.0f} s"
    line = _error_line(Run(code, "", err))
    assert "1000000 tags" in line.replace(",", "")
    assert len(links) <= 4  # 280,000 a page: the cap is crossed on the fourth
    assert elapsed < 60
    assert peak < 150, f"peak RSS {peak:.0f} MiB"


def test_a_repeated_next_link_stops_the_listing() -> None:
    requests: list[str] = []

    def loop(seen: Seen) -> Answer:
        requests.append(seen.target)
        return tag_page(["a", "b"], link="/v2/x/tags/list?n=2&last=b")

    with LeakBait(handlers=[loop]) as bait:
        run = xfer("tags", f"{bait.host}/x", timeout=60)
    line = _error_line(run)
    assert "repeat" in line and bait.host in line
    assert len(requests) == 2  # the first page, then the link; asked again = a loop


def test_a_listing_stops_at_the_page_cap() -> None:
    links: list[str] = []
    with _pages(["a"], links) as bait:

        async def listing() -> list[str]:
            async with RegistryClient(bait.host, options=TransportOptions(plain_http=True)) as c:
                return await c.list_tags("x", max_pages=25)

        with pytest.raises(RegistryError) as caught:
            anyio.run(listing)
    assert "25 pages" in str(caught.value)
    assert len(links) == 25


def test_tags_are_printed_as_each_page_arrives() -> None:
    printed = threading.Event()
    waited: list[bool] = []

    def pages(seen: Seen) -> Answer:
        last = parse_qs(urlsplit(seen.target).query).get("last")
        if not last:
            return tag_page(["first-1", "first-2"], link="/v2/x/tags/list?n=2&last=first-2")
        # The second page is served only once the first one's tags were printed.
        waited.append(printed.wait(15))
        return tag_page(["second-1"])

    with LeakBait(handlers=[pages]) as bait:
        command = [sys.executable, "-m", "transfer", "tags", f"{bait.host}/x"]
        child = subprocess.Popen(command, env=xfer_env(), stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 15)
        first = child.stdout.readline().strip() if ready else ""
        printed.set()
        rest = child.stdout.read().split()
        assert child.wait(30) == 0
    assert first == "first-1"
    assert rest == ["first-2", "second-1"]
    assert waited == [True]


# ---- 14. compression --------------------------------------------------------------------------


def test_a_server_that_compresses_when_allowed_still_gives_the_exact_manifest(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    with LeakBait(registry.url, gzip="accepted") as bait:
        run = xfer("pull", f"{bait.host}/{info.ref}", store=store)
        tags = xfer("tags", f"{bait.host}/test/small")
        seen = bait.seen()
    assert run.code == 0, run.err
    assert index_refs(store)[f"{bait.host}/{info.ref}"] == info.digest
    assert tags.code == 0 and tags.out.split() == ["1"]
    assert seen and all(s.headers.get("accept-encoding") == "identity" for s in seen), {
        s.headers.get("accept-encoding") for s in seen
    }


def test_a_server_that_compresses_regardless_fails_cleanly(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    with LeakBait(registry.url, gzip="always") as bait:
        run = xfer("pull", "--retries", "0", f"{bait.host}/{info.ref}", store=store)
    line = _error_line(run)
    assert "gzip" in line and bait.host in line
    assert stored_blobs(store) == {}


def test_a_token_answer_compressed_anyway_is_refused_without_inflating_it() -> None:
    # 300 MB of zeros in 300 KB of gzip: inflated whole before any cap could look at it.
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    bomb = b"".join(
        [packer.compress(b'{"token": "'), *(packer.compress(zeros) for _ in range(300))]
    )
    bomb += packer.compress(b'"}') + packer.flush()
    with LeakBait() as bait:

        def registry(seen: Seen) -> Answer:
            if seen.target.startswith("/token"):
                headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
                return Answer(200, headers, bomb)
            realm = f'Bearer realm="{bait.url}/token",service="bait"'
            return Answer(401, {"WWW-Authenticate": realm})

        bait.handlers.append(registry)
        command = [sys.executable, "-m", "transfer", "pull", "--retries", "0", f"{bait.host}/x:1"]
        code, err, peak, killed = _watched(command)
    assert not killed and peak < 150, f"peak RSS {peak:.0f} MiB"
    line = _error_line(Run(code, "", err))
    assert "gzip-encoded" in line and bait.host in line
