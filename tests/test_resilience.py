"""Issue 3: resumable, fault-tolerant transfers (reliability cases 10-17, 39-42).

Every case runs the real CLI (or, where a knob is not on the command line, the library API)
against the real registry through the fault proxy, and judges by what crossed the wire (the
proxy's records) and what ended up in the store (every blob re-hashed).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from fixtures.faultproxy import (
    Answer416,
    Cut,
    Fault,
    FaultProxy,
    FlipByte,
    IgnoreRange,
    Stall,
    Status,
    Truncate,
    WrongContentRange,
)
from fixtures.images import Blob, BuiltImages, ImageInfo, sha256
from fixtures.pushimage import push_lying_image, push_random_image
from fixtures.registry import Registry
from tests.helpers import Run, index_refs, stored_blobs, xfer
from tests.resilience_helpers import (
    RetryAfterDate,
    blob_gets,
    block_checksums,
    bytes_in_place,
    bytes_sent,
    file_size,
    partial_path,
    requested_range,
    sidecar_ranges,
    spawn_xfer,
    stop,
    verify_store,
    wait_for,
)
from transfer import api
from transfer.digest import Digest
from transfer.fetch import WRITE_BATCH
from transfer.ingest import Ingest
from transfer.manifest import Descriptor, Manifest
from transfer.ociview import image_view, needs_view
from transfer.progress import Event, Retry
from transfer.retry import RetryPolicy
from transfer.transport import TransportOptions

MiB = 1 << 20
HUGE_SIZE = 256 * MiB  # one layer of this many random bytes: parallel Range requests
RATE_LAYER_SIZE = 64 * MiB  # the --limit-rate case of the issue


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as p:
        yield p


@pytest.fixture
def large(images: BuiltImages) -> ImageInfo:
    return images.images["large"]


def _big_layer(info: ImageInfo) -> Blob:
    return max(info.layers, key=lambda b: b.size)


def _ref(proxy: FaultProxy, info: ImageInfo) -> str:
    return f"{proxy.host}/{info.ref}"


def _expected_blobs(info: ImageInfo) -> set[str]:
    """The image's blobs and manifest, and for a Docker image the OCI view the store names
    it through (tests/test_ociview.py)."""
    manifest = Manifest.from_bytes(info.raw)
    view = {str(image_view(manifest).digest)} if needs_view(manifest) else set()
    return {b.digest for b in info.blobs} | {info.digest} | view


def _error_line(run: Run) -> str:
    """A clean failure: stderr is one line, ``xfer: error: ...``."""
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("xfer: error: ")
    return lines[0]


def _assert_pulled(store: Path, ref: str, info: ImageInfo) -> None:
    """The image is in the store, complete and verified; nothing is left in progress."""
    assert index_refs(store) == {ref: info.digest}
    assert set(verify_store(store)) == _expected_blobs(info)
    assert not any((store / ".xfer" / "partials").iterdir())


# ---- case 10, 13, 14, 16: cuts, short bodies, first requests ------------------------------------


def test_blob_requests_ask_for_identity_and_a_first_request_sends_no_range(
    proxy: FaultProxy, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    run = xfer("pull", _ref(proxy, info), store=store)
    assert run.code == 0, run.err
    for blob in info.blobs:
        gets = blob_gets(proxy, blob.digest)
        assert len(gets) == 1
        assert gets[0].request_headers.get("accept-encoding") == "identity"
        assert "range" not in gets[0].request_headers


def test_a_connection_cut_at_40_percent_resumes_from_the_cut_with_range(
    proxy: FaultProxy, large: ImageInfo, store: Path
) -> None:
    layer = _big_layer(large)
    at = layer.size * 4 // 10
    proxy.add(Cut(at=at, match=layer.digest, method="GET"))
    ref = _ref(proxy, large)
    run = xfer("pull", ref, store=store)
    assert run.code == 0, run.err

    gets = blob_gets(proxy, layer.digest)
    assert [g.fault for g in gets] == ["Cut", None]
    assert "range" not in gets[0].request_headers
    assert gets[1].request_headers["range"] == f"bytes={at}-"
    assert gets[1].status == 206
    assert bytes_sent(gets) <= layer.size * 1.01
    _assert_pulled(store, ref, large)


def test_a_short_body_is_detected_and_resumed(
    proxy: FaultProxy, large: ImageInfo, store: Path
) -> None:
    layer = _big_layer(large)
    at = layer.size // 2
    proxy.add(Truncate(at=at, match=layer.digest, method="GET"))
    ref = _ref(proxy, large)
    run = xfer("pull", ref, store=store)
    assert run.code == 0, run.err
    gets = blob_gets(proxy, layer.digest)
    assert [g.fault for g in gets] == ["Truncate", None]
    assert gets[1].request_headers["range"] == f"bytes={at}-"
    assert bytes_sent(gets) == layer.size
    _assert_pulled(store, ref, large)


@pytest.fixture(scope="module")
def liar(registry: Registry, images: BuiltImages) -> ImageInfo:
    """The large image's big layer under a manifest that declares it 1 MiB."""
    large = images.images["large"]
    return push_lying_image(registry.url, "resilience-liar", large, declared_size=MiB)


def test_a_body_longer_than_its_descriptor_is_cut_off_and_fails(
    proxy: FaultProxy, liar: ImageInfo, large: ImageInfo, store: Path
) -> None:
    layer = liar.layers[0]
    run = xfer("pull", "-q", "--retries", "1", _ref(proxy, liar), store=store)
    assert run.code == 1
    line = _error_line(run)
    assert layer.digest in line and "longer" in line
    assert layer.digest not in stored_blobs(store)
    gets = blob_gets(proxy, layer.digest)
    assert len(gets) == 1  # not retried (--retries 1): the source answers the same every time
    real_size = _big_layer(large).size  # 24 MiB, declared 1 MiB
    for get in gets:  # the reader stopped after size + 1 bytes: the rest was never pulled
        assert get.body_bytes_sent < real_size // 2


def test_a_stalled_socket_hits_the_read_timeout_and_resumes(
    proxy: FaultProxy, large: ImageInfo, tmp_path: Path
) -> None:
    # The CLI has no read-timeout option (60 s fixed), so this runs through the API.
    layer = _big_layer(large)
    at = layer.size // 3
    proxy.add(Stall(after=at, seconds=30, match=layer.digest, method="GET"))
    events: list[Event] = []
    settings = api.Settings(
        store=tmp_path / "store",
        transport=TransportOptions(read_timeout=1.0),
        retry=RetryPolicy(initial_wait=0.05),
    )
    ref = _ref(proxy, large)
    result = anyio.run(lambda: api.pull(ref, settings, emit=events.append))
    assert str(result.digest) == large.digest

    gets = blob_gets(proxy, layer.digest)
    assert [g.fault for g in gets] == ["Stall", None]
    assert gets[1].request_headers["range"] == f"bytes={at}-"
    retries = [e for e in events if isinstance(e, Retry)]
    assert len(retries) == 1 and layer.digest in retries[0].what
    _assert_pulled(tmp_path / "store", ref, large)


# ---- case 11, 12: a server that gets Range wrong ------------------------------------------------


def test_a_server_ignoring_range_on_resume_is_skipped_never_appended(
    proxy: FaultProxy, large: ImageInfo, store: Path
) -> None:
    layer = _big_layer(large)
    at = layer.size * 4 // 10
    proxy.add(Cut(at=at, match=layer.digest, method="GET"))
    proxy.add(IgnoreRange(match=layer.digest))
    ref = _ref(proxy, large)
    run = xfer("pull", ref, store=store)
    assert run.code == 0, run.err
    gets = blob_gets(proxy, layer.digest)
    assert [g.fault for g in gets] == ["Cut", "IgnoreRange"]
    assert gets[1].request_headers["range"] == f"bytes={at}-"
    assert gets[1].status == 200  # the whole blob again: its first `at` bytes are skipped
    _assert_pulled(store, ref, large)


@pytest.mark.parametrize(
    "bad_answer",
    [
        pytest.param(lambda d: WrongContentRange(shift=4096, match=d), id="wrong-start"),
        pytest.param(lambda d: Answer416(match=d), id="416"),
    ],
)
def test_a_bad_answer_to_range_discards_the_partial_and_restarts_from_zero(
    proxy: FaultProxy, large: ImageInfo, store: Path, bad_answer: Callable[[str], Fault]
) -> None:
    layer = _big_layer(large)
    at = layer.size * 4 // 10
    proxy.add(Cut(at=at, match=layer.digest, method="GET"))
    fault = proxy.add(bad_answer(layer.digest))
    ref = _ref(proxy, large)
    run = xfer("pull", ref, store=store)
    assert run.code == 0, run.err
    gets = blob_gets(proxy, layer.digest)
    assert [g.fault for g in gets] == ["Cut", fault.name, None]
    assert gets[1].request_headers["range"] == f"bytes={at}-"
    assert "range" not in gets[2].request_headers  # one restart from 0
    _assert_pulled(store, ref, large)


def test_a_partial_longer_than_the_blob_is_discarded(
    proxy: FaultProxy, large: ImageInfo, store: Path
) -> None:
    layer = _big_layer(large)
    partial = partial_path(store, layer.digest)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(os.urandom(layer.size + 10))
    ref = _ref(proxy, large)
    run = xfer("pull", ref, store=store)
    assert run.code == 0, run.err
    gets = blob_gets(proxy, layer.digest)
    assert len(gets) == 1 and "range" not in gets[0].request_headers
    _assert_pulled(store, ref, large)


def test_a_corrupt_partial_costs_one_restart_never_a_corrupt_blob(
    proxy: FaultProxy, large: ImageInfo, store: Path
) -> None:
    layer = _big_layer(large)
    partial = partial_path(store, layer.digest)
    partial.parent.mkdir(parents=True)
    junk = layer.size * 4 // 10
    partial.write_bytes(os.urandom(junk))  # what a disk error or a foreign file leaves
    ref = _ref(proxy, large)
    run = xfer("pull", ref, store=store)
    assert run.code == 0, run.err
    gets = blob_gets(proxy, layer.digest)
    assert [requested_range(g) for g in gets] == [(junk, None), None]
    _assert_pulled(store, ref, large)


def test_a_flipped_byte_fails_after_the_bounded_retries_and_stores_nothing(
    proxy: FaultProxy, large: ImageInfo, store: Path
) -> None:
    layer = _big_layer(large)
    at = layer.size * 4 // 10
    proxy.add(Cut(at=at, match=layer.digest, method="GET"))
    proxy.add(FlipByte(at + 12345, match=layer.digest, times=None))
    run = xfer("pull", "-q", "--retries", "2", _ref(proxy, large), store=store)
    assert run.code == 1
    line = _error_line(run)
    assert layer.digest in line and "expected" in line
    gets = blob_gets(proxy, layer.digest)
    # The cut, the resumed request that arrives corrupt, then one restart from 0 that does too:
    # corrupt bytes are never resumed from.
    assert [g.fault for g in gets] == ["Cut", "FlipByte", "FlipByte"]
    assert [requested_range(g) for g in gets] == [None, (at, None), None]
    assert layer.digest not in stored_blobs(store)
    assert file_size(partial_path(store, layer.digest)) == 0


# ---- case 15: retries ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["seconds", "date"])
def test_429_with_retry_after_waits_as_long_as_asked(
    proxy: FaultProxy, images: BuiltImages, store: Path, form: str
) -> None:
    info = images.images["small"]
    layer = info.layers[0]
    if form == "seconds":
        proxy.add(Status(429, retry_after="2", match=layer.digest, method="GET"))
    else:  # an HTTP date 3 s after the request, in whole seconds: a wait of 2 to 3 s
        proxy.add(RetryAfterDate(3, match=layer.digest, method="GET"))
    ref = _ref(proxy, info)
    run = xfer("pull", "--json", ref, store=store)
    assert run.code == 0, run.err

    gets = blob_gets(proxy, layer.digest)
    assert [g.status for g in gets] == [429, 200]
    assert gets[0].finished is not None
    gap = gets[1].started - gets[0].finished
    assert 1.9 <= gap < 30
    retries = [e for e in run.json_lines() if e["event"] == "retry"]
    assert len(retries) == 1 and layer.digest in retries[0]["what"]
    assert retries[0]["wait"] >= 1.9
    assert "429" in retries[0]["error"]
    _assert_pulled(store, ref, info)


def test_503_three_times_then_success_retries_with_events(
    proxy: FaultProxy, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    layer = info.layers[1]
    proxy.add(Status(503, match=layer.digest, method="GET", times=3))
    ref = _ref(proxy, info)
    run = xfer("pull", "--json", ref, store=store)
    assert run.code == 0, run.err
    assert [g.status for g in blob_gets(proxy, layer.digest)] == [503, 503, 503, 200]
    retries = [e for e in run.json_lines() if e["event"] == "retry"]
    assert [e["attempt"] for e in retries] == [1, 2, 3]
    assert all(layer.digest in e["what"] and "503" in e["error"] for e in retries)
    _assert_pulled(store, ref, info)


@pytest.mark.parametrize("code", [404, 400])
def test_a_client_error_on_a_blob_is_not_retried(
    proxy: FaultProxy, images: BuiltImages, store: Path, code: int
) -> None:
    info = images.images["small"]
    layer = info.layers[0]
    proxy.add(Status(code, match=layer.digest, method="GET", times=None))
    run = xfer("pull", "-q", _ref(proxy, info), store=store)
    assert run.code == 1
    assert len(blob_gets(proxy, layer.digest)) == 1
    line = _error_line(run)
    assert layer.digest in line and f"HTTP {code}" in line
    assert layer.digest not in stored_blobs(store)


# ---- case 17: interrupted runs resume -----------------------------------------------------------


@dataclass
class Stopped:
    arrived: int  # bytes of the blob in the partial file after the signal
    at: float  # monotonic time of the signal


def _interrupt_mid_blob(
    proxy: FaultProxy, ref: str, layer: Blob, store: Path, sig: signal.Signals, *args: str
) -> tuple[Stopped, tuple[int, str, str]]:
    """Pull through the (rate-limited) proxy; send ``sig`` once 40% of the layer arrived."""
    partial = partial_path(store, layer.digest)
    process = spawn_xfer("pull", *args, ref, store=store)
    try:
        wait_for(
            lambda: file_size(partial) >= layer.size * 0.4,
            what="40% of the layer",
            process=process,
        )
        stopped_at = time.monotonic()
        outcome = stop(process, sig)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return Stopped(file_size(partial), stopped_at), outcome


@pytest.fixture
def slow_proxy(registry: Registry) -> Iterator[FaultProxy]:
    """The registry at 12 MB/s per connection: the large layer takes about 2 s."""
    with FaultProxy(registry.url, rate=12e6) as p:
        yield p


def test_kill_9_mid_blob_then_rerun_fetches_only_what_is_missing(
    slow_proxy: FaultProxy, large: ImageInfo, store: Path
) -> None:
    layer = _big_layer(large)
    ref = _ref(slow_proxy, large)
    killed, (code, _, _) = _interrupt_mid_blob(slow_proxy, ref, layer, store, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert 0.3 * layer.size <= killed.arrived <= 0.6 * layer.size
    assert layer.digest not in stored_blobs(store)

    slow_proxy.rate = None
    run = xfer("pull", "--json", ref, store=store)
    assert run.code == 0, run.err
    gets = blob_gets(slow_proxy, layer.digest, since=killed.at)
    assert [requested_range(g) for g in gets] == [(killed.arrived, None)]
    refetched = bytes_sent(gets) - (layer.size - killed.arrived)
    print(f"\nkill -9 at {killed.arrived} of {layer.size} B: {refetched} B fetched again")
    assert refetched <= 0.01 * killed.arrived
    starts = [e for e in run.json_lines() if e["event"] == "blob_start"]
    assert {e["offset"] for e in starts if e["digest"] == layer.digest} == {killed.arrived}
    _assert_pulled(store, ref, large)


def test_ctrl_c_mid_blob_exits_130_keeps_the_partial_and_the_rerun_resumes(
    slow_proxy: FaultProxy, large: ImageInfo, store: Path
) -> None:
    layer = _big_layer(large)
    ref = _ref(slow_proxy, large)
    stopped, (code, out, err) = _interrupt_mid_blob(
        slow_proxy, ref, layer, store, signal.SIGINT, "-q"
    )
    assert code == 130, (out, err)
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "interrupted" in err
    assert stopped.arrived >= 0.3 * layer.size
    assert layer.digest not in stored_blobs(store)

    slow_proxy.rate = None
    run = xfer("pull", ref, store=store)
    assert run.code == 0, run.err
    gets = blob_gets(slow_proxy, layer.digest, since=stopped.at)
    assert [requested_range(g) for g in gets] == [(stopped.arrived, None)]
    assert bytes_sent(gets) - (layer.size - stopped.arrived) <= 0.01 * stopped.arrived
    _assert_pulled(store, ref, large)


def test_a_sidecar_torn_by_a_crash_keeps_every_complete_claim(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(3 * MiB)
    desc = Descriptor("application/octet-stream", Digest.parse(sha256(data)), len(data))
    partial = tmp_path / "partial"
    partial.write_bytes(data[:MiB] + bytes(MiB) + data[2 * MiB :])  # the middle never came
    sidecar = tmp_path / "partial.ranges"
    header = json.dumps({"digest": str(desc.digest), "filled": [[0, MiB]]})
    sidecar.write_text(f"{header}\n{2 * MiB} {3 * MiB}\n{MiB} {2 * MiB - 7}")  # last line torn

    async def resume() -> None:
        ingest = Ingest(partial, desc)
        ingest.open()
        try:
            assert ingest.missing() == [(MiB, 2 * MiB)]
            assert sidecar_ranges(partial) == [(0, MiB), (2 * MiB, 3 * MiB)]  # compacted
            await ingest.write(MiB, [data[MiB : 2 * MiB]])
            assert sidecar_ranges(partial) == [(0, 3 * MiB)]  # the write was claimed at once
            await ingest.finish(tmp_path / "blob")
        finally:
            ingest.close()

    anyio.run(resume)
    assert (tmp_path / "blob").read_bytes() == data
    assert not sidecar.exists()


# ---- case 40: two processes, one store ----------------------------------------------------------


def test_two_pulls_of_one_image_into_one_store_download_each_blob_once(
    registry: Registry, large: ImageInfo, store: Path
) -> None:
    with FaultProxy(registry.url, rate=8e6) as proxy:  # the big layer takes 3 s
        ref = _ref(proxy, large)
        processes = [spawn_xfer("pull", ref, store=store) for _ in range(2)]
        outcomes = [(p.wait(60), *p.communicate()) for p in processes]
        for code, out, err in outcomes:
            assert code == 0, err
            assert out.strip() == large.digest

        for blob in large.blobs:
            gets = blob_gets(proxy, blob.digest)
            assert [g.status for g in gets] == [200], blob.digest
        # Both really ran at once: each asked for the manifest before the big layer was done.
        manifests = proxy.requests("GET", "/manifests/")
        layer_get = blob_gets(proxy, _big_layer(large).digest)[0]
        assert len(manifests) == 2
        assert layer_get.finished is not None
        assert all(m.started < layer_get.finished for m in manifests)
    _assert_pulled(store, ref, large)


# ---- parallel Range requests on a 256 MiB blob --------------------------------------------------


@pytest.fixture(scope="module")
def huge_registry() -> Iterator[tuple[Registry, ImageInfo, ImageInfo]]:
    """A registry of its own: ``test/huge:1`` (one 256 MiB layer), ``test/rate-limited:1``
    (one 64 MiB layer)."""
    with Registry() as reg:
        huge = push_random_image(reg.url, "huge", HUGE_SIZE, seed=256)
        rated = push_random_image(reg.url, "rate-limited", RATE_LAYER_SIZE, seed=64)
        yield reg, huge, rated


def test_parallel_ranges_fetch_a_256_mib_blob_with_concurrent_range_requests(
    huge_registry: tuple[Registry, ImageInfo, ImageInfo], store: Path
) -> None:
    registry, huge, _ = huge_registry
    layer = huge.layers[0]
    with FaultProxy(registry.url) as proxy:
        ref = _ref(proxy, huge)
        started = time.monotonic()
        run = xfer("pull", "--parallel-ranges", "4", ref, store=store)
        elapsed = time.monotonic() - started
        assert run.code == 0, run.err
        gets = blob_gets(proxy, layer.digest)

    print(f"\nparallel ranges: {len(gets)} requests, {elapsed:.2f}s for {layer.size} B")
    for g in gets:
        print(
            f"  {g.request_headers.get('range', '(none)'):>24} {g.started - started:5.2f}s"
            f" → {(g.finished or 0) - started:5.2f}s  {g.body_bytes_sent} B"
        )
    # The first piece goes from 0 without Range; the others tile the rest with bytes=a-b.
    [first] = [g for g in gets if "range" not in g.request_headers]
    spans = sorted((a, b) for g in gets if (span := requested_range(g)) for a, b in [span])
    assert len({span for span in spans}) >= 3
    assert all(b is not None for _, b in spans)
    assert [a for a, _ in spans[1:]] == [(b or 0) + 1 for _, b in spans[:-1]]
    assert spans[-1][1] == layer.size - 1
    for get in gets:  # each bounded piece crossed the wire exactly once
        if get is not first:
            a, b = requested_range(get) or (0, 0)
            assert get.body_bytes_sent == (b or 0) - a + 1
    # The open-ended first piece is cut where the second begins; what was in flight then (the
    # socket buffers) is the only waste.
    assert spans[0][0] <= first.body_bytes_sent <= spans[0][0] + 16 * MiB
    # All at once: every request began before any ended.
    assert max(g.started for g in gets) < min(g.finished or 0 for g in gets)
    assert layer.digest in verify_store(store)


def test_parallel_ranges_against_a_server_ignoring_range_use_one_stream(
    huge_registry: tuple[Registry, ImageInfo, ImageInfo], store: Path
) -> None:
    registry, huge, _ = huge_registry
    layer = huge.layers[0]
    with FaultProxy(registry.url) as proxy:
        proxy.add(IgnoreRange(match=layer.digest, times=None))
        run = xfer("pull", "--parallel-ranges", "4", _ref(proxy, huge), store=store)
        assert run.code == 0, run.err
        gets = blob_gets(proxy, layer.digest)
    streams = [g for g in gets if g.body_bytes_sent > 16 * MiB]
    assert len(streams) == 1 and "range" not in streams[0].request_headers
    print(f"\nignored ranges: {bytes_sent(gets) - layer.size} bytes beyond the blob")
    # The refused Range requests are closed at once: only their socket buffers are wasted.
    assert layer.size <= bytes_sent(gets) <= layer.size + 16 * MiB
    assert layer.digest in verify_store(store)


def test_kill_9_during_parallel_ranges_resumes_from_the_ranges_sidecar(
    huge_registry: tuple[Registry, ImageInfo, ImageInfo], store: Path
) -> None:
    registry, huge, _ = huge_registry
    layer = huge.layers[0]
    partial = partial_path(store, layer.digest)
    with FaultProxy(registry.url, rate=24e6) as proxy:  # 4 x 24 MB/s: about 3 s in all
        ref = _ref(proxy, huge)
        process = spawn_xfer("pull", "--parallel-ranges", "4", ref, store=store)
        try:
            wait_for(
                lambda: bytes_sent(blob_gets(proxy, layer.digest)) >= 0.4 * layer.size,
                what="40% of the blob sent",
                process=process,
            )
            killed_at = time.monotonic()
            code, _, _ = stop(process, signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert code == -signal.SIGKILL
        claimed = sidecar_ranges(partial)
        assert len(claimed) > 1  # out of order: only the sidecar knows what the file holds
        held_sums = block_checksums(partial)

        proxy.rate = None
        run = xfer("pull", "--parallel-ranges", "4", ref, store=store)
        assert run.code == 0, run.err
        gets = blob_gets(proxy, layer.digest, since=killed_at)

    for get in gets:  # nothing the sidecar vouched for is asked for again
        span = requested_range(get)
        assert span is not None
        start, end = span
        assert not any(a <= start < b for a, b in claimed)
        assert not any(start < b and a <= (end or layer.size) for a, b in claimed)
    blobs = verify_store(store)
    assert layer.digest in blobs
    arrived = bytes_in_place(held_sums, store / "blobs" / "sha256" / layer.digest[7:])
    held = sum(b - a for a, b in claimed)
    fetched = bytes_sent(gets)
    print(
        f"\nkill -9 in parallel ranges: {arrived} B on disk, {held} B claimed by the sidecar, "
        f"rerun fetched {fetched} B ({fetched - (layer.size - arrived)} B again)"
    )
    assert fetched == layer.size - held  # exactly the gaps: no overshoot past a held range
    # Claims trail the file only by the writes in flight at the kill (a batch per stream).
    in_flight = 4 * 2 * WRITE_BATCH
    assert fetched - (layer.size - arrived) <= max(0.01 * arrived, in_flight)


# ---- --limit-rate ----------------------------------------------------------------------------


def test_limit_rate_holds_the_transfer_within_10_percent_of_the_cap(
    huge_registry: tuple[Registry, ImageInfo, ImageInfo], store: Path
) -> None:
    registry, _, rated = huge_registry
    cap = 8e6
    with FaultProxy(registry.url) as proxy:
        started = time.monotonic()
        run = xfer("pull", "--json", "--limit-rate", "8M", _ref(proxy, rated), store=store)
        elapsed = time.monotonic() - started
        assert run.code == 0, run.err
    moved = sum(b.size for b in rated.blobs)
    in_process = run.json_lines()[-1]["seconds"]  # the pull itself, without interpreter start
    print(
        f"\nlimit-rate 8M, {moved} B: {elapsed:.2f}s wall = {moved / elapsed / cap:.3f} x cap; "
        f"{in_process:.2f}s in process = {moved / in_process / cap:.3f} x cap"
    )
    assert 0.9 * cap <= moved / elapsed <= 1.1 * cap


def test_limit_rate_does_not_split_a_blob_the_cap_holds_back(
    huge_registry: tuple[Registry, ImageInfo, ImageInfo], store: Path
) -> None:
    registry, huge, _ = huge_registry
    layer = huge.layers[0]
    with FaultProxy(registry.url) as proxy:
        run = xfer("pull", "--limit-rate", "100M", _ref(proxy, huge), store=store)
        assert run.code == 0, run.err
        gets = blob_gets(proxy, layer.digest)
    # More streams cannot beat the cap; a split only costs the cut stream's socket buffers.
    assert bytes_sent(gets) == layer.size


# ---- the soak -----------------------------------------------------------------------------------


def test_soak_50_pulls_with_random_cuts_all_complete_and_verify(
    proxy: FaultProxy, images: BuiltImages, tmp_path: Path
) -> None:
    rng = random.Random(20240603)
    names = ("small", "shared-a", "shared-b", "docker")
    plan: list[tuple[ImageInfo, list[tuple[str, int]]]] = []
    for _ in range(50):  # an image, and about one blob GET in ten cut at a random byte
        info = images.images[rng.choice(names)]
        cut = [(b.digest, rng.randrange(b.size)) for b in info.blobs if rng.random() < 0.1]
        plan.append((info, cut))
    cuts: list[Cut] = []
    pulls: list[tuple[Path, str, ImageInfo]] = []

    async def pull(i: int, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            info, cut = plan[i]
            cuts.extend(proxy.add(Cut(at=at, match=digest, method="GET")) for digest, at in cut)
            store = tmp_path / f"store{i}"
            settings = api.Settings(store=store, retry=RetryPolicy(initial_wait=0.05))
            ref = _ref(proxy, info)
            result = await api.pull(ref, settings)
            assert str(result.digest) == info.digest
            pulls.append((store, ref, info))

    async def soak() -> None:
        limiter = anyio.CapacityLimiter(5)  # five pulls at a time, each into its own store
        async with anyio.create_task_group() as group:
            for i in range(50):
                group.start_soon(pull, i, limiter)

    started = time.monotonic()
    anyio.run(soak)
    gets = len(proxy.requests("GET", "/blobs/"))
    print(
        f"\nsoak: 50 pulls in {time.monotonic() - started:.2f}s, {len(cuts)} of {gets} blob "
        "GETs cut"
    )
    assert len(pulls) == 50 and len(cuts) >= 10
    assert all(c.fired == 1 for c in cuts)
    for store, ref, info in pulls:
        assert index_refs(store) == {ref: info.digest}
        assert set(stored_blobs(store)) == _expected_blobs(info)
        assert api.verify_sync(api.Settings(store=store)).problems == ()
    verify_store(pulls[-1][0])  # and the CLI agrees, on one of them
