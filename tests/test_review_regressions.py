"""Regressions found in review: each test names the behaviour it proves, broken before its fix."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

import anyio
import pytest

from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import xfer, xfer_env
from transfer import api, cli, maintenance
from transfer.copy import CopyOptions, copy_image
from transfer.digest import Digest
from transfer.durable import atomic_write
from transfer.endpoints.layout import Layout, LayoutDestination
from transfer.errors import NetworkError, RangeIgnored, StoreError, TooManyRequests
from transfer.fetch import RangePolicy
from transfer.ingest import Ingest
from transfer.manifest import OCI_CONFIG, OCI_MANIFEST, Descriptor, Manifest
from transfer.progress import Event, ImageStart
from transfer.retry import RetryPolicy, retrying

P = ParamSpec("P")
T = TypeVar("T")

MiB = 1 << 20
LAYER = "application/vnd.oci.image.layer.v1.tar"


def _blob(size: int) -> tuple[bytes, Descriptor]:
    data = os.urandom(size)
    return data, Descriptor(LAYER, Digest.of(data), size)


# ---- Ingest: bytes on disk are the bytes that were hashed -------------------------------------


def test_a_write_over_bytes_already_hashed_cannot_change_what_is_stored(tmp_path: Path) -> None:
    """Two pieces writing one range (a server that honours one Range and ignores another) must
    not let the bytes that land last differ from the bytes the digest was computed over."""
    good, desc = _blob(64 << 10)
    bad = bytes(b ^ 0xFF for b in good[1000:2000])

    async def main() -> None:
        ingest = Ingest(tmp_path / "partial", desc)
        ingest.open()
        try:
            await ingest.write(0, [good])  # in order: hashed from memory
            await ingest.write(1000, [bad])  # a late, overlapping piece with other bytes
            await ingest.finish(tmp_path / "final")
        finally:
            ingest.close()

    anyio.run(main)
    assert (tmp_path / "final").read_bytes() == good


def test_a_source_mixing_honoured_and_ignored_ranges_never_stores_unverified_bytes(
    tmp_path: Path,
) -> None:
    """Piece 3's Range is ignored, so the open-ended first piece runs on to the end of the
    blob, over piece 2's range while piece 2 (honoured, hostile bytes) is still in flight."""
    size = 3 * MiB
    good, desc = _blob(size)

    @asynccontextmanager
    async def body(offset: int, end: int | None) -> AsyncIterator[AsyncIterator[bytes]]:
        if offset == 2 * MiB:
            raise RangeIgnored("the server ignores Range")

        async def chunks() -> AsyncIterator[bytes]:
            if offset == 0:
                await anyio.sleep(0.05)  # after piece 3 found Range ignored
                for at in range(0, size, 256 << 10):
                    yield good[at : at + (256 << 10)]
            else:  # piece 2: honoured, but its bytes arrive late and are not the blob's
                await anyio.sleep(0.5)  # the first piece has written and hashed them by now
                yield bytes(b ^ 0xFF for b in good[offset:end])

        yield chunks()

    def opener(
        offset: int, end: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return body(offset, end)

    policy = RangePolicy(parts=3, threshold=0, min_part=MiB, adaptive=False)
    layout = Layout(tmp_path / "store", policy)

    async def main() -> None:
        with contextlib.suppress(Exception):  # refusing is fine too; storing wrong bytes is not
            await layout.put_blob(desc, opener, lambda _: None)

    anyio.run(main)
    path = layout.blob_path(desc.digest)
    assert not path.exists() or path.read_bytes() == good


# ---- retry: max_seconds bounds the waits, and never abandons a download that progresses ------


def test_max_seconds_is_not_overrun_by_a_long_wait() -> None:
    """A Retry-After (or a backoff) that would end past ``max_seconds`` is not waited for."""
    policy = RetryPolicy(attempts=5, max_seconds=1.0, max_retry_after=60.0)
    calls = 0

    async def busy() -> None:
        nonlocal calls
        calls += 1
        raise TooManyRequests("manifest x: HTTP 429", status=429, retry_after=30.0)

    async def main() -> None:
        with anyio.fail_after(5):  # not 30 s: the budget is one second
            await retrying("manifest x", busy, policy)

    started = time.monotonic()
    with pytest.raises(TooManyRequests):
        anyio.run(main)
    assert calls == 1 and time.monotonic() - started < 5


def test_a_download_cut_after_max_seconds_of_progress_is_still_resumed() -> None:
    """``max_seconds`` bounds time spent failing, not a long transfer that keeps moving: a
    connection cut after minutes of progress is resumed, as a cut after seconds is."""
    policy = RetryPolicy(attempts=3, max_seconds=0.2, initial_wait=0.01, max_wait=0.01)
    moved = 0
    calls = 0

    async def download() -> str:
        nonlocal moved, calls
        calls += 1
        if calls == 1:
            for _ in range(5):  # a transfer longer than max_seconds, making progress
                await anyio.sleep(0.1)
                moved += 1000
            raise NetworkError("blob x: connection reset")
        return "done"

    async def main() -> str:
        return await retrying("blob x", download, policy, progress=lambda: moved)

    assert anyio.run(main) == "done"
    assert calls == 2


def test_a_source_that_never_progresses_still_stops_after_max_seconds() -> None:
    policy = RetryPolicy(attempts=100, max_seconds=0.3, initial_wait=0.01, max_wait=0.05)
    calls = 0

    async def stuck() -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.05)
        raise NetworkError("blob x: connection reset")

    async def main() -> None:
        await retrying("blob x", stuck, policy, progress=lambda: 0)

    started = time.monotonic()
    with pytest.raises(NetworkError):
        anyio.run(main)
    assert time.monotonic() - started < 1.0 and calls < 100


class _SlowThenCutSource:
    """An image of one 2 MiB layer whose first stream sends half, dawdles past the retry
    budget, and is cut; a resumed stream sends the rest."""

    local = None

    def __init__(self) -> None:
        self.layer, self.layer_desc = _blob(2 * MiB)
        self.config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}'
        config_desc = Descriptor(OCI_CONFIG, Digest.of(self.config), len(self.config))
        raw = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config_desc.to_json(),
                "layers": [self.layer_desc.to_json()],
            }
        ).encode()
        self.manifest = Manifest.from_bytes(raw, OCI_MANIFEST)
        self.name = "example.com/slow:1"
        self.opened: list[int] = []

    async def get_manifest(self, identifier: str | Digest) -> Manifest:
        return self.manifest

    @asynccontextmanager
    async def open_blob(
        self, desc: Descriptor, offset: int = 0, end: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        data = self.config if desc.media_type == OCI_CONFIG else self.layer
        if desc.media_type != OCI_CONFIG:
            self.opened.append(offset)
        first = desc.media_type != OCI_CONFIG and len(self.opened) == 1

        async def chunks() -> AsyncIterator[bytes]:
            if first:
                yield data[: MiB // 2]
                await anyio.sleep(0.4)  # twice the whole retry budget
                yield data[MiB // 2 : MiB]
                raise NetworkError("blob: connection reset")
            yield data[offset : end if end is not None else len(data)]

        yield chunks()

    async def aclose(self) -> None:
        return None


def test_copy_resumes_a_blob_cut_after_the_retry_budget_of_progress(tmp_path: Path) -> None:
    source = _SlowThenCutSource()
    layout = Layout(tmp_path / "store")
    destination = LayoutDestination(layout, source.name)
    policy = RetryPolicy(attempts=3, max_seconds=0.2, initial_wait=0.01, max_wait=0.01)
    options = CopyOptions(retry=policy)

    result = anyio.run(lambda: copy_image(source, destination, source.name, source.name, options))
    assert result.digest == source.manifest.digest
    assert source.opened == [0, MiB]  # resumed where the cut left it
    assert layout.blob_path(source.layer_desc.digest).read_bytes() == source.layer


# ---- CLI: every failure is one line and a documented exit code -----------------------------


def test_an_unreadable_store_file_is_one_line_and_exit_1_not_a_traceback(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "index.json").mkdir(parents=True)  # not a file: reading it is an OSError
    (store / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    run = xfer("images", store=store)
    assert run.code == 1
    assert "Traceback" not in run.err
    assert len(run.err.splitlines()) == 1 and "index.json" in run.err


@pytest.mark.parametrize("option", ["--limit-rate", "--range-threshold"])
@pytest.mark.parametrize("value", ["inf", "nan", "1e400"])
def test_a_non_finite_size_or_rate_is_a_usage_error(
    option: str, value: str, tmp_path: Path
) -> None:
    run = xfer("pull", option, value, "localhost:1/none:1", store=tmp_path / "store")
    assert run.code == 2, run.err
    assert "Traceback" not in run.err and len(run.err.splitlines()) == 1
    assert option in run.err


# ---- the store's shared lock: held by every command that reads or writes its blobs ---------


def _store_with_one_image(store: Path, name: str) -> Manifest:
    layout = Layout(store)
    layer, layer_desc = _blob(64 << 10)
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}'
    config_desc = Descriptor(OCI_CONFIG, Digest.of(config), len(config))
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [layer_desc.to_json()],
        }
    ).encode()
    manifest = Manifest.from_bytes(raw, OCI_MANIFEST)
    layout.put_bytes(layer_desc, layer)
    layout.put_bytes(config_desc, config)
    layout.put_bytes(manifest.descriptor(), raw)
    layout.set_reference(name, manifest)
    return manifest


def _elsewhere(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A synchronous API call from inside a running event loop: in a thread of its own."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(func, *args, **kwargs).result()


@pytest.mark.parametrize("target", ["oci:{tmp}/out", "oci-archive:{tmp}/out.tar"])
def test_gc_cannot_delete_blobs_under_a_copy_reading_the_store(tmp_path: Path, target: str) -> None:
    """push / copy from store: read the store's blobs; an rm + gc meanwhile must wait."""
    name = "example.com/app:1"
    manifest = _store_with_one_image(tmp_path / "store", name)
    settings = api.Settings(store=tmp_path / "store")
    gc_outcome: list[str] = []

    def meanwhile(event: Event) -> None:
        if isinstance(event, ImageStart):  # the copy has read the manifest, not the blobs
            # As another process would: rm and gc with an event loop of their own.
            _elsewhere(api.remove_sync, [name], settings)
            try:
                report = _elsewhere(api.gc_sync, settings)
                gc_outcome.append(f"removed {report.blobs_removed}")
            except StoreError:
                gc_outcome.append("refused")

    result = anyio.run(
        lambda: api.copy(f"store:{name}", target.format(tmp=tmp_path), settings, emit=meanwhile)
    )
    assert result.digest == manifest.digest
    assert gc_outcome == ["refused"]


def test_creating_a_missing_index_json_never_replaces_one_another_process_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ensure() looked, found no index.json, and meanwhile another xfer created the store
    and tagged an image: the empty index.json it then writes must not replace that one."""
    store = tmp_path / "store"
    _store_with_one_image(store, "example.com/app:1")
    index = store / "index.json"
    before = index.read_bytes()
    real_exists = Path.exists

    def stale_exists(self: Path, *args: bool) -> bool:
        return False if self == index else real_exists(self, *args)

    monkeypatch.setattr(Path, "exists", stale_exists)
    Layout(store).ensure()
    monkeypatch.undo()
    assert index.read_bytes() == before


def test_atomic_write_reports_every_os_failure_as_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StoreError, match="cannot write"):
        atomic_write(tmp_path / "x", b"data", tmp_dir=tmp_path / "file" / "sub")


def test_a_timeout_that_is_not_a_number_is_a_usage_error(tmp_path: Path) -> None:
    run = xfer("pull", "--timeout", "nan", "localhost:1/none:1", store=tmp_path / "store")
    assert run.code == 2 and "--timeout" in run.err


# ---- resources: a cancelled open closes what it opened ---------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_opening_a_store_blob_in_a_cancelled_task_leaks_no_descriptor(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "store")
    data, desc = _blob(4096)
    layout.put_bytes(desc, data)

    async def main() -> None:
        with anyio.CancelScope() as scope:
            scope.cancel()
            async with layout.open_blob(desc) as chunks:
                async for _ in chunks:
                    pass

    anyio.run(main)  # warm up anyio's worker threads and their descriptors
    before = _open_fds()
    for _ in range(20):
        anyio.run(main)
    assert _open_fds() == before


def test_an_unexpected_error_is_still_one_line_and_exit_1_unless_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A foreign exception nobody translated (an upload Location httpx cannot parse: a
    ValueError or httpx.InvalidURL) must not print a traceback: the contract allows only one
    line on stderr, and a traceback only with --debug."""

    def broken(settings: api.Settings | None = None) -> list[api.ImageEntry]:
        raise ValueError("Invalid IPv6 URL")

    monkeypatch.setattr(api, "images", broken)
    assert cli.main(["images", "--store", str(tmp_path / "store")]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Invalid IPv6 URL" in err
    assert cli.main(["images", "--store", str(tmp_path / "store"), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last):" in err
    assert err.splitlines()[-1] == "ValueError: Invalid IPv6 URL"


def test_a_closed_stdout_during_a_pull_is_not_blamed_on_the_store(
    registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    """``xfer pull --json REF | head``: the reader went away mid-blob. That is a broken pipe,
    not "cannot write blob ... to the store"; it ends quietly with exit 1, as ``images | head``."""
    info = images.images["large"]
    ref = f"{registry.host}/{info.ref}"
    big = max(info.layers, key=lambda b: b.size).digest
    process = subprocess.Popen(
        [sys.executable, "-m", "transfer", "pull", "--json", "--limit-rate", "20M", ref],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**xfer_env(), "XFER_STORE": str(tmp_path / "store")},
    )
    assert process.stdout is not None and process.stderr is not None
    for line in process.stdout:  # read until the big layer is under way, then hang up
        if '"blob_progress"' in line and big in line:
            break
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=120) == 1
    assert "cannot write blob" not in err and "Traceback" not in err


def test_verify_does_not_report_a_foreign_layer_that_a_pull_never_fetches(tmp_path: Path) -> None:
    """Windows base layers (nondistributable, with urls) are skipped by every copy, as docker
    does; ``xfer verify`` must not then call the store broken for lacking them."""
    layout = Layout(tmp_path / "store")
    config = b'{"architecture":"amd64","os":"windows","rootfs":{"type":"layers"}}'
    config_desc = Descriptor(OCI_CONFIG, Digest.of(config), len(config))
    foreign = {
        "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "digest": str(Digest.of(b"windows base layer")),
        "size": 18,
        "urls": ["https://mcr.microsoft.com/v2/windows/blobs/x"],
    }
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [foreign],
        }
    ).encode()
    manifest = Manifest.from_bytes(raw, OCI_MANIFEST)
    layout.put_bytes(config_desc, config)
    layout.put_bytes(manifest.descriptor(), raw)
    layout.set_reference("example.com/win:1", manifest)
    assert maintenance.verify(layout).problems == ()
