"""The push side of copy and mirror against the real registry behind the fault proxy
(reliability cases 46-50, and 15 for uploads).

The proxy stands in front of the TARGET registry; what the client sent is judged by the proxy's
records (with request headers), what the registry did by its access log and its storage, and
the result by ``skopeo inspect --raw`` (the manifest bytes the registry serves).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Unpack
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest

from fixtures.faultproxy import (
    Fault,
    FaultOptions,
    FaultProxy,
    HeaderList,
    Record,
    Reply,
    RequestInfo,
    Status,
)
from fixtures.images import BuiltImages, ImageInfo, inspect_raw
from fixtures.registry import Registry
from tests.helpers import Run, xfer

_UPLOAD = re.compile(r"/blobs/uploads/([^/?]+)")


@pytest.fixture
def small(images: BuiltImages) -> ImageInfo:
    return images.images["small"]


def _copy(registry: Registry, info: ImageInfo, dest: str, *options: str) -> Run:
    return xfer("copy", *options, f"{registry.host}/{info.ref}", dest)


def _error_line(run: Run) -> str:
    """A clean failure: exit 1 and stderr is one line, ``xfer: error: ...``."""
    assert run.code == 1, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("xfer: error: ")
    return lines[0]


def _session(path: str) -> str:
    """The upload session a URL is about (its UUID in ``/blobs/uploads/<uuid>``)."""
    match = _UPLOAD.search(path)
    assert match, f"not an upload session: {path}"
    return match[1]


def _upload_id(record: Record) -> str:
    return _session(record.path)


def _query(record: Record) -> dict[str, list[str]]:
    return parse_qs(urlsplit(record.path).query)


def _uploads(proxy: FaultProxy, method: str) -> list[Record]:
    return proxy.requests(method, "/blobs/uploads/")


def _finished_digests(proxy: FaultProxy) -> list[str]:
    """The blobs whose upload was completed (PUT ...?digest= answered 201), in order."""
    return [_query(r)["digest"][0] for r in _uploads(proxy, "PUT") if r.status == 201]


def _lingering_uploads(registry: Registry) -> list[Path]:
    """Upload data the registry still keeps on disk (distribution's filesystem layout; a
    cancelled upload leaves only an empty hash-state stub behind)."""
    repositories = registry.storage / "docker" / "registry" / "v2" / "repositories"
    return list(repositories.glob("**/_uploads/*/data"))


# ---- custom faults -------------------------------------------------------------------------------


class MountOpensUpload(Fault):
    """A registry that cannot mount: a cross-repository mount POST is answered 202 with the
    Location of a fresh upload session, opened upstream with a plain POST (as distribution does
    when the ``from`` repository lacks the blob). The Locations handed out are in ``given``."""

    def __init__(self, upstream: str, proxy_url: str, **options: Unpack[FaultOptions]) -> None:
        options.setdefault("match", "mount=")
        options.setdefault("method", "POST")
        super().__init__(**options)
        self.upstream = upstream.rstrip("/")
        self.proxy_url = proxy_url
        self.given: list[str] = []

    def on_request(self, req: RequestInfo) -> Reply | None:
        path = urlsplit(req.target).path  # the same repository, no mount parameters
        # A blocking call on the proxy's loop: a few milliseconds on loopback, once per blob.
        answer = httpx.post(f"{self.upstream}{path}", timeout=10)
        assert answer.status_code == 202, answer.text
        location = answer.headers["location"].replace(self.upstream, self.proxy_url, 1)
        self.given.append(location)
        return Reply(202, [("location", location)])


class RewriteUploadLocation(Fault):
    """Every upload answer's ``Location`` made relative (``/v2/...``) or kept absolute, with an
    extra query parameter the client must carry as given, bytes unchanged."""

    PROBE = "xfer-probe=kept/as:given~1"

    def __init__(self, relative: bool, **options: Unpack[FaultOptions]) -> None:
        options.setdefault("match", "/blobs/uploads/")
        options.setdefault("times", None)
        super().__init__(**options)
        self.relative = relative

    def transform_response(self, status: int, headers: HeaderList) -> HeaderList:
        out: HeaderList = []
        for key, value in headers:
            if key == "location":
                parts = urlsplit(value)
                query = f"{parts.query}&{self.PROBE}" if parts.query else self.PROBE
                scheme, netloc = ("", "") if self.relative else (parts.scheme, parts.netloc)
                value = urlunsplit((scheme, netloc, parts.path, query, ""))
            out.append((key, value))
        return out


# ---- case 46: cross-repository mount -------------------------------------------------------------


def _seed(empty_registry: Registry, registry: Registry, info: ImageInfo, repo: str) -> None:
    assert _copy(registry, info, f"{empty_registry.host}/{repo}").code == 0


def test_a_mount_answered_202_uploads_the_blob_at_the_location_given(
    registry: Registry, empty_registry: Registry, target: FaultProxy, small: ImageInfo
) -> None:
    _seed(empty_registry, registry, small, "team-a/small:1")
    fault = target.add(MountOpensUpload(empty_registry.url, target.url, times=None))
    dest = f"{target.host}/team-b/small:1"
    run = xfer("copy", "--json", f"{target.host}/team-a/small:1", dest)
    assert run.code == 0, run.err

    mounts = [r for r in _uploads(target, "POST") if "mount=" in r.path]
    assert len(mounts) == len(small.blobs) and all(r.status == 202 for r in mounts)
    assert len(_uploads(target, "POST")) == len(mounts)  # no upload opened besides
    given = {_session(location) for location in fault.given}
    assert {_upload_id(r) for r in _uploads(target, "PATCH")} == given
    finished = [r for r in _uploads(target, "PUT") if r.status == 201]
    assert {_upload_id(r) for r in finished} == given
    assert sorted(_finished_digests(target)) == sorted(b.digest for b in small.blobs)
    assert run.json_lines()[-1]["bytes_transferred"] == sum(b.size for b in small.blobs)
    assert inspect_raw(dest) == small.raw


@pytest.mark.parametrize("code", [500, 401, 403])
def test_a_refused_mount_falls_back_to_a_plain_upload(
    registry: Registry,
    empty_registry: Registry,
    target: FaultProxy,
    small: ImageInfo,
    code: int,
) -> None:
    _seed(empty_registry, registry, small, "team-a/small:1")
    target.add(Status(code, match="mount=", method="POST", times=None))
    dest = f"{target.host}/team-b/small:1"
    run = xfer("copy", "--json", f"{target.host}/team-a/small:1", dest)
    assert run.code == 0, run.err

    posts = _uploads(target, "POST")
    mounts = [r for r in posts if "mount=" in r.path]
    # One mount attempt per blob (a refused shortcut is not retried), then one plain upload.
    assert [r.status for r in mounts] == [code] * len(small.blobs)
    assert [r.status for r in posts if "mount=" not in r.path] == [202] * len(small.blobs)
    assert sorted(_finished_digests(target)) == sorted(b.digest for b in small.blobs)
    assert [e for e in run.json_lines() if e["event"] == "retry"] == []
    assert inspect_raw(dest) == small.raw


# ---- case 47: the upload Location, used as given -------------------------------------------------


@pytest.mark.parametrize("form", ["relative", "absolute"])
def test_the_upload_location_is_used_as_given_with_digest_appended(
    registry: Registry, target: FaultProxy, small: ImageInfo, form: str
) -> None:
    fault = target.add(RewriteUploadLocation(relative=form == "relative"))
    dest = f"{target.host}/located/small:1"
    run = _copy(registry, small, dest)
    assert run.code == 0, run.err

    posts = _uploads(target, "POST")
    assert posts and all(r.fault == fault.name for r in posts)
    following = _uploads(target, "PATCH") + _uploads(target, "PUT")
    assert len(following) == 2 * len(small.blobs)
    for record in following:
        query = urlsplit(record.path).query
        assert query.startswith("_state=") and f"&{RewriteUploadLocation.PROBE}" in query
    for put in _uploads(target, "PUT"):
        assert put.status == 201
        query = urlsplit(put.path).query
        assert re.search(rf"{re.escape(RewriteUploadLocation.PROBE)}&digest=sha256[:%]", query)
    assert sorted(_finished_digests(target)) == sorted(b.digest for b in small.blobs)
    assert inspect_raw(dest) == small.raw


# ---- case 48: chunked uploads: resume from the registry's Range, cancel a failed upload ----------


def test_a_patch_answered_416_resumes_from_the_registry_range_on_the_same_upload(
    registry: Registry, target: FaultProxy, small: ImageInfo
) -> None:
    target.add(Status(416, match="/blobs/uploads/", method="PATCH", times=1))
    dest = f"{target.host}/resumed/small:1"
    run = _copy(registry, small, dest, "--json")
    assert run.code == 0, run.err

    refused = [r for r in _uploads(target, "PATCH") if r.status == 416]
    assert len(refused) == 1
    session = _upload_id(refused[0])
    same = [r for r in target.snapshot() if "/blobs/uploads/" in r.path and session in r.path]
    # Refused PATCH, GET of the upload's status (its Range), the PATCH again, the final PUT.
    assert [(r.method, r.status) for r in same] == [
        ("PATCH", 416),
        ("GET", 204),
        ("PATCH", 202),
        ("PUT", 201),
    ]
    assert same[1].started > refused[0].started
    assert len(_uploads(target, "POST")) == len(small.blobs)  # no upload started again
    assert _uploads(target, "DELETE") == []
    assert sorted(_finished_digests(target)) == sorted(b.digest for b in small.blobs)
    assert inspect_raw(dest) == small.raw


def test_an_upload_the_registry_lost_is_started_again(
    registry: Registry, target: FaultProxy, small: ImageInfo
) -> None:
    target.add(Status(416, match="/blobs/uploads/", method="PATCH", times=1))
    target.add(Status(404, match="/blobs/uploads/", method="GET", times=1))
    dest = f"{target.host}/lost/small:1"
    run = _copy(registry, small, dest)
    assert run.code == 0, run.err
    assert [r.status for r in _uploads(target, "GET")] == [404]
    assert len(_uploads(target, "POST")) == len(small.blobs) + 1
    assert sorted(_finished_digests(target)) == sorted(b.digest for b in small.blobs)
    assert inspect_raw(dest) == small.raw


@pytest.mark.parametrize("step", ["PATCH", "PUT"])
def test_a_failed_upload_is_cancelled_with_delete_and_fails_in_one_line(
    registry: Registry, empty_registry: Registry, target: FaultProxy, small: ImageInfo, step: str
) -> None:
    target.add(Status(400, match="/blobs/uploads/", method=step, times=None))
    dest = f"{target.host}/refused/small:1"
    run = _copy(registry, small, dest, "-q", "--retries", "0", "-j", "1")
    line = _error_line(run)
    assert "HTTP 400" in line and target.host in line
    assert any(b.digest in line for b in small.blobs)

    failed = _uploads(target, step)
    assert [r.status for r in failed] == [400]
    deletes = _uploads(target, "DELETE")
    assert [_upload_id(r) for r in deletes] == [_upload_id(failed[0])]
    # Accepted, so sent with the upload's latest Location (after a PATCH, distribution refuses
    # the first one's `_state`), and the registry no longer knows the upload.
    assert deletes[0].status == 204
    gone = httpx.get(empty_registry.url + deletes[0].path, timeout=10)
    assert gone.status_code == 404 and "BLOB_UPLOAD_UNKNOWN" in gone.text
    assert _lingering_uploads(empty_registry) == []
    assert target.requests("PUT", "/manifests/") == []


def test_every_upload_in_flight_is_cancelled_when_one_fails(
    registry: Registry, target: FaultProxy, images: BuiltImages
) -> None:
    info = images.images["multi"]
    target.add(Status(400, match="/blobs/uploads/", method="PATCH", times=1))
    run = _copy(registry, info, f"{target.host}/many/multi:1", "-q", "--retries", "0")
    _error_line(run)
    patched = {_upload_id(r) for r in _uploads(target, "PATCH")}
    finished = {_upload_id(r) for r in _uploads(target, "PUT") if r.status == 201}
    deleted = {_upload_id(r) for r in _uploads(target, "DELETE")}
    # Every upload that had begun and did not complete was cancelled, the failed one first.
    assert deleted and patched - finished <= deleted


def test_a_blob_the_registry_received_corrupt_is_uploaded_again(
    registry: Registry, target: FaultProxy, small: ImageInfo
) -> None:
    body = b'{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match"}]}'
    target.add(Status(400, body=body, match="/blobs/uploads/", method="PUT", times=1))
    dest = f"{target.host}/corrupted/small:1"
    run = _copy(registry, small, dest, "--json")
    assert run.code == 0, run.err

    refused = [r for r in _uploads(target, "PUT") if r.status == 400]
    assert len(refused) == 1
    deletes = _uploads(target, "DELETE")
    assert [(_upload_id(r), r.status) for r in deletes] == [(_upload_id(refused[0]), 204)]
    assert len(_uploads(target, "POST")) == len(small.blobs) + 1
    retries = [e for e in run.json_lines() if e["event"] == "retry"]
    assert len(retries) == 1 and "DIGEST_INVALID" in retries[0]["error"]
    assert sorted(_finished_digests(target)) == sorted(b.digest for b in small.blobs)
    assert inspect_raw(dest) == small.raw


# ---- case 49: manifests keep their bytes and media type; 413 -------------------------------------


@pytest.mark.parametrize("name", ["multi", "docker"])
def test_manifests_are_pushed_with_their_exact_bytes_and_content_type(
    registry: Registry, target: FaultProxy, images: BuiltImages, name: str
) -> None:
    info = images.images[name]
    dest = f"{target.host}/typed/{name}"
    run = _copy(registry, info, f"{dest}:1")
    assert run.code == 0, run.err
    assert run.out.strip() == info.digest

    puts = target.requests("PUT", "/manifests/")
    expected = {f"/manifests/{c.digest}": c.media_type for c in info.children}
    expected["/manifests/1"] = info.media_type
    assert {r.path.split("/typed/" + name)[1]: r.request_headers["content-type"] for r in puts} == (
        expected
    )
    assert all(r.status == 201 for r in puts)
    assert inspect_raw(f"{dest}:1") == info.raw
    for child in info.children:
        assert inspect_raw(f"{dest}@{child.digest}") == child.raw


def test_a_manifest_refused_as_too_large_fails_with_a_clear_line(
    registry: Registry, target: FaultProxy, small: ImageInfo
) -> None:
    target.add(Status(413, match="/manifests/", method="PUT", times=None))
    run = _copy(registry, small, f"{target.host}/big/small:1", "-q")
    line = _error_line(run)
    assert "413" in line and "too large" in line
    assert f"{target.host}/big/small:1" in line
    assert len(target.requests("PUT", "/manifests/")) == 1  # not retried


# ---- case 15 on the push side: retries -----------------------------------------------------------


def test_503_twice_on_the_upload_post_then_success_retries_with_events(
    registry: Registry, target: FaultProxy, small: ImageInfo
) -> None:
    target.add(Status(503, match="/blobs/uploads/", method="POST", times=2))
    dest = f"{target.host}/retried/small:1"
    run = _copy(registry, small, dest, "--json")
    assert run.code == 0, run.err

    posts = _uploads(target, "POST")
    assert sorted(r.status for r in posts) == [202] * len(small.blobs) + [503, 503]
    retries = [e for e in run.json_lines() if e["event"] == "retry"]
    assert len(retries) == 2
    blobs = {f"blob {b.digest}" for b in small.blobs}
    assert all(e["what"] in blobs and "503" in e["error"] for e in retries)
    assert sorted(_finished_digests(target)) == sorted(b.digest for b in small.blobs)
    assert inspect_raw(dest) == small.raw


def test_a_503_on_a_manifest_put_and_on_a_blob_head_is_retried(
    registry: Registry, target: FaultProxy, small: ImageInfo
) -> None:
    target.add(Status(503, match="/manifests/", method="PUT", times=1))
    target.add(Status(503, match="/blobs/sha256:", method="HEAD", times=1))
    dest = f"{target.host}/retried-manifest/small:1"
    run = _copy(registry, small, dest, "--json")
    assert run.code == 0, run.err
    retried = [e["what"] for e in run.json_lines() if e["event"] == "retry"]
    assert any(what.startswith("manifest ") for what in retried)
    assert any(what.startswith("blob ") for what in retried)
    assert inspect_raw(dest) == small.raw


# ---- case 50: an interrupted mirror, rerun -------------------------------------------------------


def _mirror(config: Path, proxy: FaultProxy) -> tuple[int, dict[str, Any]]:
    """``xfer mirror --json CONFIG PROXY``: the exit code and the final summary event."""
    run = xfer("mirror", "--json", config, proxy.host)
    summaries = [e for e in run.json_lines() if e.get("event") == "done" and "copied" in e]
    assert summaries, run.err
    return run.code, summaries[-1]


@pytest.mark.parametrize("where", ["manifest", "blob"])
def test_an_interrupted_mirror_rerun_copies_only_what_is_missing_and_nothing_twice(
    registry: Registry,
    empty_registry: Registry,
    target: FaultProxy,
    images: BuiltImages,
    tmp_path: Path,
    where: str,
) -> None:
    first, second = images.images["small"], images.images["docker"]
    config = tmp_path / "sync.yaml"
    config.write_text(
        f"{registry.host}:\n  images:\n    {first.repo}: ['1']\n    {second.repo}: ['1']\n"
    )
    if where == "manifest":  # the 2nd image's blobs are all in, its manifest PUT is refused
        target.add(Status(400, match=f"/v2/{second.repo}/manifests/", method="PUT"))
    else:  # one blob upload of the 2nd image is refused; the run stops that image there
        target.add(Status(400, match=f"/v2/{second.repo}/blobs/uploads/", method="PATCH"))

    code, interrupted = _mirror(config, target)
    assert code == 1
    assert interrupted["copied"] == 1
    assert [f["source"] for f in interrupted["failed"]] == [f"{registry.host}/{second.ref}"]
    before = _finished_digests(target)
    assert set(before) >= {b.digest for b in first.blobs}

    target.clear()
    target.records.reset()
    mark = empty_registry.mark()
    code, rerun = _mirror(config, target)
    assert code == 0
    assert (rerun["copied"], rerun["unchanged"], rerun["failed"]) == (1, 1, [])
    after = _finished_digests(target)
    # Every blob crossed once over both runs; the rerun sent only what the first one lacked.
    assert sorted(before + after) == sorted(b.digest for b in {*first.blobs, *second.blobs})
    if where == "manifest":
        assert after == []
    served = empty_registry.requests(mark)
    assert not [r for r in served if r.repo == first.repo and r.method != "HEAD"]
    assert [r.repo for r in served if r.kind == "manifest" and r.method == "PUT"] == [second.repo]
    assert inspect_raw(f"{target.host}/{second.ref}") == second.raw

    mark = empty_registry.mark()
    code, noop = _mirror(config, target)
    assert code == 0 and (noop["copied"], noop["unchanged"]) == (0, 2)
    # A no-op rerun: one manifest HEAD per tag at the target, nothing else.
    served = [r for r in empty_registry.requests(mark) if r.kind != "base"]
    assert [(r.method, r.kind) for r in served] == [("HEAD", "manifest")] * 2
