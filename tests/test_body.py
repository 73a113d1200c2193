"""Big blob bodies read by a worker thread straight from the socket (transfer/body.py)."""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from fixtures.faultproxy import FaultProxy, IgnoreRange
from fixtures.images import BuiltImages, ImageInfo
from fixtures.registry import Registry
from tests.helpers import run_bounded
from transfer import body as body_module
from transfer.body import BlobBody, _direct_ok
from transfer.client import BLOCKING_MIN, RegistryClient
from transfer.digest import Digest
from transfer.endpoints import PumpedBody
from transfer.errors import SizeMismatch
from transfer.fetch import RangePolicy, fill
from transfer.ingest import Ingest
from transfer.manifest import Descriptor
from transfer.throttle import Throttle
from transfer.transport import TransportOptions


@pytest.fixture
def large(images: BuiltImages) -> ImageInfo:
    return images.images["large"]


def _layer(info: ImageInfo) -> Descriptor:
    blob = max(info.layers, key=lambda b: b.size)
    assert blob.size >= BLOCKING_MIN
    return Descriptor(
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        digest=Digest.parse(blob.digest),
        size=blob.size,
    )


def _client(host: str, **kwargs: Any) -> RegistryClient:
    return RegistryClient(host, options=TransportOptions(plain_http=True), **kwargs)


async def _pumped(client: RegistryClient, desc: Descriptor, offset: int = 0) -> tuple[str, int]:
    digest, count = hashlib.sha256(), 0

    def sink(chunk: bytes | memoryview) -> bool:
        nonlocal count
        digest.update(chunk)
        count += len(chunk)
        return True

    async with client.open_blob("test/large", desc, offset) as body:
        assert isinstance(body, BlobBody)
        await body.pump(sink)
    return "sha256:" + digest.hexdigest(), count


def test_a_big_blob_is_pumped_whole_and_exact(registry: Registry, large: ImageInfo) -> None:
    desc = _layer(large)

    async def main() -> tuple[str, int]:
        async with _client(registry.host) as client:
            return await _pumped(client, desc)

    digest, count = anyio.run(main)
    assert (digest, count) == (str(desc.digest), desc.size)


def test_a_resumed_big_blob_starts_exactly_at_its_offset(
    registry: Registry, large: ImageInfo
) -> None:
    desc = _layer(large)
    offset = desc.size // 3 + 7

    async def main() -> bytes:
        async with (
            _client(registry.host) as client,
            client.open_blob("test/large", desc, offset) as body,
        ):
            return b"".join([chunk async for chunk in body])

    tail = anyio.run(main)
    whole = httpx.get(f"{registry.url}/v2/test/large/blobs/{desc.digest}").content
    assert tail == whole[offset:]


def test_a_server_ignoring_range_has_the_head_skipped(large: ImageInfo, registry: Registry) -> None:
    desc = _layer(large)
    offset = desc.size // 2
    with FaultProxy(registry.url) as proxy:
        proxy.add(IgnoreRange(times=None))

        async def main() -> tuple[str, int]:
            async with _client(proxy.host) as client:
                hasher, count = hashlib.sha256(), 0
                async with client.open_blob("test/large", desc, offset) as body:
                    async for chunk in body:
                        hasher.update(chunk)
                        count += len(chunk)
                return hasher.hexdigest(), count

        got, count = anyio.run(main)
    whole = httpx.get(f"{registry.url}/v2/test/large/blobs/{desc.digest}").content
    assert count == desc.size - offset
    assert got == hashlib.sha256(whole[offset:]).hexdigest()


def test_small_blobs_and_a_capped_rate_stay_on_the_event_loop(
    registry: Registry, large: ImageInfo
) -> None:
    small = min(large.layers, key=lambda b: b.size)
    small_desc = Descriptor(
        media_type="application/octet-stream", digest=Digest.parse(small.digest), size=small.size
    )

    async def main() -> tuple[bool, bool]:
        async with (
            _client(registry.host) as client,
            client.open_blob("test/large", small_desc) as body,
        ):
            small_blocking = isinstance(body, BlobBody)
        async with (
            _client(registry.host, throttle=Throttle(1e9)) as client,
            client.open_blob("test/large", _layer(large)) as body,
        ):
            capped_blocking = isinstance(body, BlobBody)
        return small_blocking, capped_blocking

    assert anyio.run(main) == (False, False)


@pytest.fixture
def slow(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url, rate=4e6) as proxy:
        yield proxy


def test_a_cancelled_pump_stops_its_thread_before_returning(
    slow: FaultProxy, large: ImageInfo
) -> None:
    desc = _layer(large)
    calls_after: list[int] = []
    returned = threading.Event()

    def sink(chunk: bytes | memoryview) -> bool:
        if returned.is_set():
            calls_after.append(len(chunk))
        return True

    async def main() -> bool:
        async with _client(slow.host) as client:
            with anyio.move_on_after(0.5) as scope:
                async with client.open_blob("test/large", desc) as body:
                    assert isinstance(body, BlobBody)
                    await body.pump(sink)
        returned.set()
        return scope.cancelled_caught

    assert anyio.run(main)  # cut short at 0.5 s: 16 MiB at 4 MB/s takes 4 s
    time.sleep(0.3)  # a thread that was still running would call the sink meanwhile
    assert calls_after == []


def _response(headers: dict[str, str]) -> httpx.Response:
    return httpx.Response(200, headers=headers)


class _Stream:
    def __init__(self, tls: object = None) -> None:
        self.tls = tls

    def get_extra_info(self, name: str) -> object:
        return self.tls if name == "ssl_object" else None


@pytest.mark.parametrize(
    ("headers", "stream", "direct"),
    [
        ({"content-length": "100"}, _Stream(), True),
        ({"content-length": "99"}, _Stream(), False),  # not what was asked for: h11 decides
        ({"transfer-encoding": "chunked"}, _Stream(), False),
        ({"content-length": "100", "content-encoding": "gzip"}, _Stream(), False),
        ({"content-length": "100", "content-encoding": "identity"}, _Stream(), True),
        # TLS inside TLS (an HTTPS proxy): the socket carries the outer layer's ciphertext
        (
            {"content-length": "100"},
            _Stream(ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())),
            False,
        ),
    ],
)
def test_the_socket_is_read_directly_only_when_it_carries_exactly_the_plain_body(
    headers: dict[str, str], stream: _Stream, direct: bool
) -> None:
    assert _direct_ok(_response(headers), stream, 100) is direct


def test_a_body_longer_than_promised_is_refused_by_the_pipeline(
    registry: Registry, large: ImageInfo, tmp_path: Path
) -> None:
    # The descriptor says fewer bytes than the registry sends: the blob is refused.
    real = _layer(large)
    short = Descriptor(media_type=real.media_type, digest=real.digest, size=real.size - 10)
    ingest = Ingest(tmp_path / "partial", short)

    async def main() -> None:
        async with _client(registry.host) as client:
            await fill(
                ingest,
                lambda offset, end: client.open_blob("test/large", short, offset, end),
                lambda advance: None,
                RangePolicy(adaptive=False, parts=1),
            )

    ingest.open()
    try:
        with pytest.raises(SizeMismatch, match="longer than its declared"):
            anyio.run(main)
    finally:
        ingest.close()


class _PumpOnly:
    """A body that is not the client's: it can only be pumped (iterating it fails the test)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.threads: set[int] = set()

    def __aiter__(self) -> AsyncIterator[bytes]:
        raise AssertionError("the fast path was not taken")

    async def pump(self, sink: Callable[[bytes | memoryview], bool]) -> None:
        def run() -> None:
            self.threads.add(threading.get_ident())
            view = memoryview(self.data)
            for at in range(0, len(view), 64 << 10):
                if not sink(view[at : at + (64 << 10)]):
                    return

        await anyio.to_thread.run_sync(run)


def test_any_body_that_can_pump_takes_the_fast_path(tmp_path: Path) -> None:
    """fetch takes a body's ``pump`` whatever its class: the fast path is the protocol's
    (PumpedBody), not the registry client's."""
    data = bytes(range(256)) * (3 * 4096 + 7)
    desc = Descriptor(
        media_type="application/vnd.oci.image.layer.v1.tar", digest=Digest.of(data), size=len(data)
    )
    body = _PumpOnly(data)
    assert isinstance(body, PumpedBody)

    @asynccontextmanager
    async def opener(offset: int, end: int | None) -> AsyncIterator[_PumpOnly]:
        assert (offset, end) == (0, None)
        yield body

    ingest = Ingest(tmp_path / "partial", desc)
    final = tmp_path / "blob"

    async def main() -> int:
        received = await fill(ingest, opener, lambda advance: None, RangePolicy(parts=1))
        await ingest.finish(final)
        return received

    ingest.open()
    try:
        assert anyio.run(main) == len(data)
    finally:
        ingest.close()
    assert final.read_bytes() == data
    assert body.threads and threading.get_ident() not in body.threads


@pytest.mark.parametrize("when", ["at its first checkpoint", "waiting for a thread slot"])
def test_a_pump_cancelled_before_its_thread_took_it_returns_and_never_reads(
    registry: Registry, large: ImageInfo, when: str
) -> None:
    """anyio never runs a call cancelled before a worker thread took it (at the call's first
    checkpoint, waiting for a thread slot, or queued to a thread a loaded machine had not yet
    scheduled): the pump must not wait for that thread to stop (it waited for ever: a pull
    whose other blob failed at that moment hung with an idle event loop), and the body is never
    read after the pump returned."""
    desc = _layer(large)
    sunk: list[int] = []
    returned = threading.Event()

    def sink(chunk: bytes | memoryview) -> bool:
        sunk.append(len(chunk))
        return True

    async def main() -> bool:
        async with (
            _client(registry.host) as client,
            client.open_blob("test/large", desc) as body,
        ):
            assert isinstance(body, BlobBody)
            with anyio.CancelScope() as scope:
                if when == "at its first checkpoint":
                    scope.cancel()
                    await body.pump(sink)
                else:
                    slots = body_module._limiter()
                    async with anyio.create_task_group() as group:
                        await slots.acquire()  # one of the slots ...
                        slots.total_tokens = 1  # ... and the only one
                        group.start_soon(body.pump, sink)
                        while not slots.statistics().tasks_waiting:
                            await anyio.sleep(0.01)
                        scope.cancel()
                    slots.release()
        returned.set()
        return scope.cancelled_caught

    assert run_bounded(main, 15, "the cancelled pump") is True
    time.sleep(0.3)  # a thread that ran the pump after all would call the sink meanwhile
    assert sunk == []


def test_a_body_relayed_by_a_worker_thread_reads_to_its_end_whole(
    registry: Registry, large: ImageInfo
) -> None:
    """blocking_chunks (an upload relaying the body from its own thread) yields every byte and
    ends cleanly when the body does (it raised AttributeError at its end)."""
    desc = _layer(large)

    async def main() -> tuple[str, int]:
        async with (
            _client(registry.host) as client,
            client.open_blob("test/large", desc) as body,
        ):
            assert isinstance(body, BlobBody)

            def relay() -> tuple[str, int]:
                digest, count = hashlib.sha256(), 0
                for chunk in body.blocking_chunks():
                    digest.update(chunk)
                    count += len(chunk)
                return "sha256:" + digest.hexdigest(), count

            return await anyio.to_thread.run_sync(relay)

    assert anyio.run(main) == (str(desc.digest), desc.size)
