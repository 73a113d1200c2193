"""Filling an Ingest from a source: one stream, or several Range requests at once.

One TCP stream is bounded by its window and the round-trip time; a big blob split into ranges
fetched in parallel goes as fast as the link and the disk allow. A piece from byte 0 is
requested without Range (a first request never sends one) and so without a bound, which also
lets a server that ignores Range serve everything through it; the others ask for
``bytes=start-end``. A server that answers those with the whole blob is remembered, the extra
pieces stop, and the first piece simply continues to the end.

Stopping an open-ended stream early costs what is in flight (socket buffers: several MiB), so
a piece is left open-ended only when it must be (it starts at 0) or when it runs to the end of
the blob anyway; a resumed gap between two held ranges is always asked for with its bounds.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass

import anyio
import anyio.abc
import anyio.from_thread

from .endpoints import Opener, Progress, PumpedBody
from .errors import NetworkError, RangeIgnored, TooLarge, first_error
from .ingest import Chunk, Ingest, Staging

WRITE_BATCH = 1 << 20  # bytes gathered before one write (+hash) in a worker thread
REPORT_EVERY = 0.1  # seconds between progress reports of a blocking body


@dataclass(frozen=True)
class RangePolicy:
    parts: int = 4  # Range requests at once for one big blob; 1 disables
    threshold: int = 64 << 20  # blobs at least this large may be split
    min_part: int = 16 << 20  # never split finer than this
    # Adaptive: start with one stream and split only if, after `probe` seconds, the whole run
    # receives less than `slow_rate` bytes/s. On a fast path the CPU (hashing, writing) is the
    # limit and more streams only cost memory; on a long or shaped path they multiply the rate.
    adaptive: bool = True
    probe: float = 0.5
    slow_rate: float = 150e6


@dataclass
class _Piece:
    start: int
    end: int  # an open-ended piece's end moves when its tail is split off
    bounded: bool  # sends bytes=start-(end-1); else an open-ended request that can run on
    pos: int = 0


class _Meter:
    """Bytes received by every stream of this process: the run's aggregate rate."""

    total = 0
    _lock = threading.Lock()  # streams count from worker threads too

    @classmethod
    def add(cls, amount: int) -> None:
        with cls._lock:
            cls.total += amount


class _Shared:
    """What the pieces of one blob share."""

    def __init__(self) -> None:
        self.ranges_ignored = False
        self.received = 0
        self._lock = threading.Lock()

    def count(self, amount: int) -> None:
        with self._lock:
            self.received += amount


def _splittable(size: int, missing: int, policy: RangePolicy) -> bool:
    return policy.parts > 1 and size >= policy.threshold and missing >= 2 * policy.min_part


def split(start: int, end: int, parts: int, min_part: int) -> list[tuple[int, int]]:
    """[start, end) in at most ``parts`` ranges of at least ``min_part`` bytes (bar the last)."""
    part = max(min_part, math.ceil((end - start) / parts))
    return [(s, min(s + part, end)) for s in range(start, end, part)]


def _open_ended(start: int, end: int, size: int) -> bool:
    """From 0 it must be (no Range on a first request); to the end it may as well be."""
    return start == 0 or end == size


def plan(gaps: list[tuple[int, int]], size: int, policy: RangePolicy) -> list[_Piece]:
    """The pieces to start with: one stream per gap, or (not adaptive) a split."""
    missing = sum(end - start for start, end in gaps)
    if policy.adaptive or not _splittable(size, missing, policy):
        return [
            _Piece(start, end, bounded=not _open_ended(start, end, size), pos=start)
            for start, end in gaps
        ]
    part = max(policy.min_part, math.ceil(missing / policy.parts))
    pieces = [
        _Piece(s, e, bounded=True, pos=s)
        for start, end in gaps
        for s, e in split(start, end, math.ceil((end - start) / part), policy.min_part)
    ]
    pieces[0].bounded = pieces[0].start != 0  # a resumed first piece knows where to stop
    return pieces


async def fill(ingest: Ingest, opener: Opener, progress: Progress, policy: RangePolicy) -> int:
    """Fetch every missing range of ``ingest``; returns the bytes received from the network."""
    shared = _Shared()
    gaps = ingest.missing()
    if not gaps:  # every byte is here already (a run killed between download and rename)
        return 0
    pieces = plan(gaps, ingest.desc.size, policy)
    if any(p.start != ingest.prefix() for p in pieces):
        ingest.will_write_out_of_order()
    limiter = anyio.CapacityLimiter(max(policy.parts, 1))
    adaptive = policy.adaptive and _splittable(
        ingest.desc.size, sum(e - s for s, e in gaps), policy
    )
    try:
        async with anyio.create_task_group() as group:
            monitor = anyio.CancelScope()

            async def first_piece() -> None:
                try:
                    await _run_piece(ingest, opener, progress, pieces[0], True, shared, limiter)
                finally:
                    monitor.cancel()  # nothing left to split

            async def watch() -> None:
                with monitor:
                    await _split_if_slow(
                        ingest, opener, progress, pieces[0], shared, policy, group, limiter
                    )

            group.start_soon(first_piece)
            if adaptive:
                group.start_soon(watch)
            for piece in pieces[1:]:
                group.start_soon(
                    _run_piece, ingest, opener, progress, piece, False, shared, limiter
                )
    except BaseExceptionGroup as group_error:
        raise first_error(group_error) from None
    finally:
        with anyio.CancelScope(shield=True):
            ingest.save()
    # Pieces dropped because the server ignores Range are fetched now, one stream each.
    for start, end in ingest.missing():
        await _run_piece(
            ingest, opener, progress, _Piece(start, end, False, start), True, shared, None
        )
    return shared.received


async def _split_if_slow(
    ingest: Ingest,
    opener: Opener,
    progress: Progress,
    first: _Piece,
    shared: _Shared,
    policy: RangePolicy,
    group: anyio.abc.TaskGroup,
    limiter: anyio.CapacityLimiter,
) -> None:
    before, started = _Meter.total, anyio.current_time()
    await anyio.sleep(policy.probe)
    rate = (_Meter.total - before) / max(anyio.current_time() - started, 1e-3)
    if rate >= policy.slow_rate or shared.ranges_ignored:
        return
    # Leave the running stream what is already in flight to it, split off the rest.
    tail = first.pos + policy.min_part // 2
    if first.end - tail < 2 * policy.min_part:
        return
    ranges = split(tail, first.end, policy.parts - 1, policy.min_part)
    ingest.will_write_out_of_order()
    first.end = tail
    for start, end in ranges:
        piece = _Piece(start, end, bounded=True, pos=start)
        group.start_soon(_run_piece, ingest, opener, progress, piece, False, shared, limiter)


async def _run_piece(
    ingest: Ingest,
    opener: Opener,
    progress: Progress,
    piece: _Piece,
    first: bool,
    shared: _Shared,
    limiter: anyio.CapacityLimiter | None,
) -> None:
    if limiter is not None:
        async with limiter:
            await _stream(ingest, opener, progress, piece, first, shared)
    else:
        await _stream(ingest, opener, progress, piece, first, shared)


class _Cursor:
    """Where one piece's stream stands, and where it has to stop."""

    def __init__(self, ingest: Ingest, piece: _Piece, first: bool, shared: _Shared) -> None:
        self.ingest, self.piece, self.first, self.shared = ingest, piece, first, shared
        self.pos = piece.start

    def stop(self) -> int:
        # An open-ended piece runs on through what the dropped pieces should have fetched.
        if self.first and not self.piece.bounded and self.shared.ranges_ignored:
            return self.ingest.gap_end(self.pos)
        return self.piece.end

    def take(self, chunk: Chunk) -> tuple[Chunk, bool]:
        """Count ``chunk`` as received; returns what of it belongs to the piece, and whether
        the piece is complete with it."""
        stop = self.stop()
        self.shared.count(len(chunk))
        if self.pos + len(chunk) > stop:
            if not self.piece.bounded and stop == self.ingest.desc.size:
                raise TooLarge(
                    f"blob {self.ingest.desc.digest} is longer than its declared "
                    f"{self.ingest.desc.size} bytes",
                    digest=str(self.ingest.desc.digest),
                )
            chunk = chunk[: stop - self.pos]  # an open-ended piece reached the next one
        self.pos += len(chunk)
        self.piece.pos = self.pos
        _Meter.add(len(chunk))
        return chunk, self.pos >= stop


async def _stream(
    ingest: Ingest, opener: Opener, progress: Progress, piece: _Piece, first: bool, shared: _Shared
) -> None:
    """Read one piece into the ingest."""
    if piece.bounded and shared.ranges_ignored:
        return
    cursor = _Cursor(ingest, piece, first, shared)
    try:
        async with opener(piece.start, piece.end if piece.bounded else None) as body:
            if isinstance(body, PumpedBody):  # the fast path, from any source that has it
                await _pump(body, cursor, progress)
            else:
                await _relay(body, cursor, progress)
    except RangeIgnored:
        shared.ranges_ignored = True
        return
    if cursor.pos < cursor.stop():
        # A short body (server closed early): keep what came and resume from there.
        raise NetworkError(
            f"blob {ingest.desc.digest} ended after {cursor.pos} of {ingest.desc.size} bytes",
            digest=str(ingest.desc.digest),
        )


async def _pump(body: PumpedBody, cursor: _Cursor, progress: Progress) -> None:
    """One worker thread reads, hashes and writes the whole piece (body.py), a block of
    ``BLOCK`` bytes at a time (direct I/O where it can); progress is reported to the event loop
    a few times a second. Whatever arrived is written before this returns or raises, so a
    retry resumes right after it."""
    unreported = 0
    last = time.monotonic()
    staging = Staging(cursor.ingest, cursor.pos)

    def sink(chunk: Chunk) -> bool:
        nonlocal unreported, last
        chunk, done = cursor.take(chunk)
        staging.add(chunk)
        unreported += len(chunk)
        if time.monotonic() - last >= REPORT_EVERY:
            done_now, unreported, last = unreported, 0, time.monotonic()
            anyio.from_thread.run_sync(progress, done_now)
        return not done

    try:
        await body.pump(sink)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            staging.flush()
        raise
    else:
        await anyio.to_thread.run_sync(staging.flush)
    finally:
        staging.close()
        if unreported:
            progress(unreported)


async def _relay(chunks: AsyncIterable[bytes], cursor: _Cursor, progress: Progress) -> None:
    """Read chunks on the event loop; a writer task hashes and writes the previous batch
    meanwhile (sources without a blocking body: the store, archives, a capped rate)."""
    pending: list[Chunk] = []
    pending_at = cursor.pos  # offset of the first pending byte
    send, receive = anyio.create_memory_object_stream[tuple[int, list[Chunk]]](1)

    async def writer() -> None:
        async with receive:
            async for at, batch in receive:
                await cursor.ingest.write(at, batch)
                progress(sum(len(c) for c in batch))

    async def hand_over() -> None:
        nonlocal pending, pending_at
        if pending:
            batch, pending = pending, []
            at, pending_at = pending_at, cursor.pos
            await send.send((at, batch))

    async def read() -> None:
        async for chunk in chunks:
            kept, done = cursor.take(chunk)
            pending.append(kept)
            if cursor.pos - pending_at >= WRITE_BATCH:
                await hand_over()
            if done:
                break

    error: Exception | None = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(writer)
            async with send:
                try:
                    await read()
                except Exception as exc:  # keep what arrived before the failure, then raise
                    error = exc
                await hand_over()
    except BaseExceptionGroup as group_error:
        raise first_error(group_error) from None
    if error is not None:
        raise error
