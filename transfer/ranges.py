"""What of a partial blob is held, and the journal that keeps it across a crash.

Two of an ingest's three jobs (ingest.py keeps the file and the hash):

- ``HeldRanges``: the sorted, merged ``[start, end)`` ranges the partial file holds, and what
  follows from them (the contiguous prefix, the gaps). Pure.
- ``RangeJournal``: the sidecar ``<partial>.ranges``, written only once a range beyond the
  prefix exists (before its first byte): a JSON header line (the digest and the ranges held
  then), followed by one ``START END`` line appended after each write has reached the file.
  An append is one small ``write(2)``: kill -9 loses at most the writes in flight, where
  refreshing a whole document every few MiB lost everything since the last refresh (tens of
  MiB). A torn last line is ignored; the header is only ever replaced atomically. Without a
  journal the partial file is a plain prefix. Every claim is checked at the end by the digest.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from . import jsonio
from .errors import StoreError
from .localfile import read_capped

# A journal gains one short line per write (~25 bytes per MiB received): 16 MiB covers blobs of
# hundreds of GiB; a larger one is damaged, and trusted for nothing.
MAX_SIDECAR_BYTES = 16 << 20

Span = tuple[int, int]


class HeldRanges:
    """The ranges held of a blob of ``size`` bytes."""

    __slots__ = ("size", "spans")

    def __init__(self, size: int, spans: Iterable[Span] = ()) -> None:
        self.size = size
        self.spans: list[Span] = merge(spans)

    def add(self, start: int, end: int) -> None:
        self.spans = merge([*self.spans, (start, end)])

    def clear(self) -> None:
        self.spans = []

    @property
    def received(self) -> int:
        return sum(b - a for a, b in self.spans)

    def prefix(self) -> int:
        """End of the contiguous range that starts at 0."""
        spans = self.spans
        return spans[0][1] if spans and spans[0][0] == 0 else 0

    def gap_end(self, pos: int) -> int:
        """Where the missing range that contains ``pos`` ends (the next held byte, or size)."""
        for start, _ in self.spans:
            if start > pos:
                return start
        return self.size

    def missing(self) -> list[Span]:
        gaps, pos = [], 0
        for start, end in self.spans:
            if start > pos:
                gaps.append((pos, start))
            pos = max(pos, end)
        if pos < self.size:
            gaps.append((pos, self.size))
        return gaps


class RangeJournal:
    """The sidecar of a partial file; not thread-safe (the ingest holds a lock around it)."""

    def __init__(self, partial: Path, digest: str) -> None:
        self.path = partial.with_name(partial.name + ".ranges")
        self.digest = digest
        self.needed = False  # once a range beyond the prefix exists
        self._fd = -1  # open for appending, while needed

    def load(self, size: int) -> list[Span] | None:
        """The ranges claimed for a partial file of ``size`` bytes; None: no journal for this
        blob (a plain prefix), []: a damaged one (trust nothing)."""
        try:
            text = read_capped(self.path, MAX_SIDECAR_BYTES, str(self.path)).decode()
            header, *appended = text.split("\n")
            data = jsonio.loads(header)
            if data.get("digest") != self.digest:
                return None
            ranges = [(int(a), int(b)) for a, b in data["filled"]]
            # Complete lines only: the last element is "" or a line torn by a crash.
            ranges += [_parse_range(line) for line in appended[:-1]]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError, StoreError):
            return []  # a damaged journal: trust nothing but what we can re-download
        # Only what the file really holds; a range past its end was never written.
        return [(a, min(b, size)) for a, b in ranges if 0 <= a < min(b, size)]

    def rewrite(self, spans: Iterable[Span]) -> None:
        """Replace the journal with one compact header (atomically); appends follow it."""
        doc = {"digest": self.digest, "filled": [list(r) for r in spans]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(doc) + "\n")
        self.close()
        os.replace(tmp, self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def append(self, start: int, end: int) -> None:
        """Claim ``[start, end)``, whose bytes are in the file now (nothing when not needed)."""
        if self._fd >= 0:
            os.write(self._fd, f"{start} {end}\n".encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        self.close()
        self.needed = False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _parse_range(line: str) -> Span:
    start, end = line.split(" ")
    return int(start), int(end)


def merge(ranges: Iterable[Span]) -> list[Span]:
    merged: list[Span] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
