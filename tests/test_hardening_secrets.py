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
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Unpack

import pytest

from fixtures.faultproxy import Fault, FaultOptions, FaultProxy, HeaderList
from fixtures.images import BuiltImages
from fixtures.leakbait import Answer, LeakBait, Seen, challenge
from fixtures.registry import Registry
from tests.helpers import Run, index_refs, stored_blobs, xfer, xfer_env

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


# Runs a command and prints its exit code, its peak RSS and whether the watchdog killed it.
# A small process of its own, because a child's ru_maxrss starts from its parent's RSS at the
# fork (kept across exec), and the test process is far bigger than the limit asserted.
_WATCH = """
import os, subprocess, sys, time
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
started, killed = time.monotonic(), False
while True:
    pid, status, usage = os.wait4(child.pid, os.WNOHANG)
    if pid:
        break
    try:
        rss = int(open(f"/proc/{child.pid}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = 0
    if not killed and (rss > 600 << 20 or time.monotonic() - started > 120):
        child.kill()  # a watchdog: the old code grew without bound
        killed = True
    time.sleep(0.02)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss << 10, int(killed))
"""


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


@pytest.fixture
def challenger() -> Iterator[LeakBait]:
    """Another host that answers everything with a 401 Basic challenge, recording headers."""
    with LeakBait(handlers=[challenge("Basic")]) as bait:
        yield bait


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
        done = subprocess.run(
            [sys.executable, "-c", _WATCH, *command],
            env=xfer_env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
    code, peak, killed = map(int, done.stdout.split())
    assert not killed and peak < 150 << 20, f"peak RSS {peak >> 20} MiB"
    line = _error_line(Run(code, "", done.stderr))
    assert "gzip-encoded" in line and bait.host in line
