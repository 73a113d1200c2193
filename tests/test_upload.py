"""Uploads in chunks (``--chunk-size``) for a proxy that caps request bodies, and the registry's
``OCI-Chunk-Min-Length``, against the real registry behind the fault proxy.

The proxy refuses any upload body over its cap with 413, as nginx's ``client_max_body_size``
does; what the client sent is judged by the proxy's records, the result by the manifest bytes
and blob digests the registry serves.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Unpack
from urllib.parse import parse_qs, urlsplit

import pytest

from fixtures.faultproxy import (
    AddHeaders,
    BodyLimit,
    FaultOptions,
    FaultProxy,
    Record,
    RequestInfo,
    Status,
    get_header,
)
from fixtures.images import BuiltImages, ImageInfo, inspect_raw
from fixtures.registry import Registry
from tests.helpers import Run, xfer

CAP = 4 << 20  # the proxy's body cap; the large image's big layer is 24 MiB
_UPLOAD = re.compile(r"/blobs/uploads/([^/?]+)")


@pytest.fixture
def large(images: BuiltImages) -> ImageInfo:
    info = images.images["large"]
    assert max(b.size for b in info.blobs) > 4 * CAP  # several chunks, not one
    return info


def _error_line(run: Run) -> str:
    assert run.code == 1, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("xfer: error: ")
    return lines[0]


def _session(record: Record) -> str:
    match = _UPLOAD.search(record.path)
    assert match, record.path
    return match[1]


def _patches(proxy: FaultProxy) -> list[Record]:
    return proxy.requests("PATCH", "/blobs/uploads/")


def _length(record: Record) -> int:
    return int(record.request_headers["content-length"])


def _range(record: Record) -> tuple[int, int]:
    start, _, end = record.request_headers["content-range"].partition("-")
    return int(start), int(end)


def _finished(proxy: FaultProxy) -> dict[str, str]:
    """Upload session → the digest its PUT completed (answered 201)."""
    return {
        _session(r): parse_qs(urlsplit(r.path).query)["digest"][0]
        for r in proxy.requests("PUT", "/blobs/uploads/")
        if r.status == 201
    }


def _send(
    how: str, registry: Registry, info: ImageInfo, dest: str, store: Path, *options: str
) -> Run:
    """``copy`` registry → target, or ``push`` from a store the image was pulled into."""
    source = f"{registry.host}/{info.ref}"
    if how == "copy":
        return xfer("copy", *options, source, dest)
    if not (store / "index.json").exists():
        assert xfer("pull", "-q", source, store=store).code == 0
    return xfer("push", *options, source, dest, store=store)


class RefuseChunkAt(Status):
    """416 for the PATCH whose Content-Range starts at ``offset`` (once, by default)."""

    def __init__(self, offset: int, **options: Unpack[FaultOptions]) -> None:
        options.setdefault("match", "/blobs/uploads/")
        options.setdefault("method", "PATCH")
        super().__init__(416, **options)
        self.offset = offset

    def applies(self, req: RequestInfo) -> bool:
        value = get_header(req.headers, "content-range") or ""
        return value.startswith(f"{self.offset}-")


@pytest.mark.parametrize("how", ["copy", "push"])
def test_chunked_pushes_through_a_proxy_that_refuses_bodies_over_the_chunk_size_succeed(
    registry: Registry,
    target: FaultProxy,
    large: ImageInfo,
    tmp_path: Path,
    how: str,
) -> None:
    target.add(BodyLimit(CAP))
    dest = f"{target.host}/capped/large:1"
    store = tmp_path / "store"

    refused = _send(how, registry, large, dest, store, "-q", "--retries", "0")
    line = _error_line(refused)
    assert "413" in line and target.host in line and "--chunk-size" in line
    assert {r.status for r in _patches(target) if _length(r) > CAP} == {413}

    target.records.reset()
    run = _send(how, registry, large, dest, store, "-q", "--chunk-size", "4Mi")
    assert run.code == 0, run.err
    patches = _patches(target)
    assert patches and all(r.status == 202 and _length(r) <= CAP for r in patches)
    # Each blob's chunks follow one another from 0 to its end, on one upload session each.
    by_session: dict[str, list[Record]] = {}
    for record in patches:
        by_session.setdefault(_session(record), []).append(record)
    sizes = {b.digest: b.size for b in large.blobs}
    finished = _finished(target)
    for session, records in by_session.items():
        ranges = [_range(r) for r in records]
        assert ranges[0][0] == 0
        assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(ranges))
        assert ranges[-1][1] == sizes[finished[session]] - 1
    big = max(large.blobs, key=lambda b: b.size)
    assert -(-big.size // CAP) in {len(records) for records in by_session.values()}
    # The small blobs went in during the refused run already; the big one only now.
    assert big.digest in finished.values() and set(finished.values()) <= set(sizes)
    assert inspect_raw(dest) == large.raw


def test_oci_chunk_min_length_is_honoured(
    registry: Registry, target: FaultProxy, large: ImageInfo
) -> None:
    minimum = 3 << 20
    target.add(BodyLimit(CAP))
    target.add(AddHeaders([("OCI-Chunk-Min-Length", str(minimum))], method="POST", times=None))
    dest = f"{target.host}/minimum/large:1"
    run = xfer("copy", "-q", "--chunk-size", "4Mi", f"{registry.host}/{large.ref}", dest)
    assert run.code == 0, run.err

    posts = target.requests("POST", "/blobs/uploads/")
    assert posts and all(r.fault == "AddHeaders" for r in posts)
    sizes = {b.digest: b.size for b in large.blobs}
    finished = _finished(target)
    chunks = 0
    for record in _patches(target):
        _, end = _range(record)
        if end + 1 < sizes[finished[_session(record)]]:  # not a blob's last chunk
            chunks += 1
            assert minimum <= _length(record) <= CAP
    assert chunks >= 5
    assert inspect_raw(dest) == large.raw


def test_a_registry_minimum_above_the_chunk_size_fails_naming_both(
    registry: Registry, target: FaultProxy, large: ImageInfo
) -> None:
    target.add(AddHeaders([("OCI-Chunk-Min-Length", str(8 << 20))], method="POST", times=None))
    dest = f"{target.host}/conflict/large:1"
    run = xfer("copy", "-q", "-j", "1", "--chunk-size", "4Mi", f"{registry.host}/{large.ref}", dest)
    line = _error_line(run)
    assert str(8 << 20) in line and "OCI-Chunk-Min-Length" in line
    assert str(CAP) in line and "--chunk-size" in line
    # Nothing sent of the blob, and the upload the registry opened is cancelled.
    big = max(large.blobs, key=lambda b: b.size)
    assert all(_length(r) < big.size for r in _patches(target))
    assert target.requests("DELETE", "/blobs/uploads/")
    assert target.requests("PUT", "/manifests/") == []


def test_a_chunk_answered_416_resumes_from_the_registry_range_without_starting_over(
    registry: Registry, target: FaultProxy, large: ImageInfo
) -> None:
    target.add(RefuseChunkAt(2 * CAP))
    dest = f"{target.host}/resumed/large:1"
    run = xfer("copy", "-q", "--chunk-size", "4Mi", f"{registry.host}/{large.ref}", dest)
    assert run.code == 0, run.err

    refused = [r for r in _patches(target) if r.status == 416]
    assert len(refused) == 1
    session = _session(refused[0])
    same = [r for r in target.snapshot() if "/blobs/uploads/" in r.path and session in r.path]
    steps = [(r.method, r.status, r.request_headers.get("content-range")) for r in same]
    at = steps.index(("PATCH", 416, f"{2 * CAP}-{3 * CAP - 1}"))
    # Two chunks taken, the third refused, the upload's Range asked for, the third sent again.
    assert steps[:at] == [
        ("PATCH", 202, f"0-{CAP - 1}"),
        ("PATCH", 202, f"{CAP}-{2 * CAP - 1}"),
    ]
    assert steps[at + 1 : at + 3] == [
        ("GET", 204, None),
        ("PATCH", 202, f"{2 * CAP}-{3 * CAP - 1}"),
    ]
    assert steps[-1][:2] == ("PUT", 201)
    assert len(target.requests("POST", "/blobs/uploads/")) == len(large.blobs)
    assert target.requests("DELETE", "/blobs/uploads/") == []
    assert inspect_raw(dest) == large.raw


@pytest.mark.parametrize("how", ["copy", "push"])
def test_a_big_blob_sent_on_by_a_worker_thread_reports_its_progress_and_arrives_whole(
    registry: Registry, target: FaultProxy, large: ImageInfo, tmp_path: Path, how: str
) -> None:
    """A blob of 4 MiB or more, from a registry or the store, is read, hashed and sent by one
    worker thread; its progress still reaches the event stream, every byte once."""
    dest = f"{target.host}/relayed/large:1"
    run = _send(how, registry, large, dest, tmp_path / "store", "--json")
    assert run.code == 0, run.err
    events = run.json_lines()
    big = max(large.blobs, key=lambda b: b.size)
    advances = [
        e["advance"] for e in events if e["event"] == "blob_progress" and e["digest"] == big.digest
    ]
    assert sum(advances) == big.size
    (put,) = [r for r in target.requests("PUT", "/blobs/uploads/") if big.digest in r.path]
    assert put.status == 201
    (patch,) = [r for r in _patches(target) if _session(r) == _session(put)]
    assert _length(patch) == big.size and patch.status == 202
    assert events[-1]["bytes_transferred"] == sum(b.size for b in large.blobs)
    assert inspect_raw(dest) == large.raw
