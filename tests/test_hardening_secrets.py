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
from collections.abc import Iterator
from typing import Unpack

import pytest

from fixtures.faultproxy import Fault, FaultOptions, FaultProxy, HeaderList
from fixtures.images import BuiltImages
from fixtures.leakbait import LeakBait, challenge
from fixtures.registry import Registry
from tests.helpers import Run, xfer

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
