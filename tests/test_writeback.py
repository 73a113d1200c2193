"""Early writeback (transfer/writeback.py): each window a write completes is handed to the
disk at once, so the fsync that makes a finished blob durable has little left to do."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from transfer import writeback

MiB = 1 << 20
W = writeback.WINDOW


def test_each_window_is_written_back_once_by_the_write_that_completes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int, int, int]] = []
    monkeypatch.setattr(writeback, "_sync_file_range", lambda: lambda *a: calls.append(a) or 0)

    writeback.written(7, 0, W - 1)  # no window complete yet
    writeback.written(7, W - 1, W + 3 * MiB)  # completes window 0
    writeback.written(7, W + 3 * MiB, 3 * W)  # completes windows 1 and 2 (ends exactly)
    writeback.written(7, 5 * W + 1, 5 * W + 2)  # another range's piece, inside window 5

    assert [(fd, offset, length) for fd, offset, length, _ in calls] == [
        (7, 0, W),
        (7, W, W),
        (7, 2 * W, W),
    ]
    assert {flags for *_, flags in calls} == {2}  # SYNC_FILE_RANGE_WRITE: never waits


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_the_system_call_is_found_and_accepts_a_real_file(tmp_path: Path) -> None:
    call = writeback._sync_file_range()
    assert call is not None
    fd = os.open(tmp_path / "blob", os.O_RDWR | os.O_CREAT)
    try:
        os.pwrite(fd, b"x" * W, 0)
        assert call(fd, 0, W, 2) == 0
        writeback.written(fd, 0, W)
    finally:
        os.close(fd)


@pytest.mark.parametrize("parallel", [False, True], ids=["save's tar", "bundle's tar"])
def test_an_archive_being_written_hands_each_complete_window_to_the_disk_before_its_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    # The archive's final fsync is on a save's or a bundle export's critical path: 0.4 s of
    # a 1.9 s export of the bench set when every page was still dirty at the end.
    from transfer.endpoints.archive_write import TarWriter
    from transfer.endpoints.bundle_write import ParallelTar

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(
        writeback, "_sync_file_range", lambda: lambda fd, o, n, f: calls.append((o, n)) or 0
    )
    tar = (ParallelTar if parallel else TarWriter)(tmp_path / "b.tar")
    piece = b"x" * MiB
    if parallel:  # two regions filled at once, piece by piece, as two blobs arrive
        first, second = tar.claim(2 * W), tar.claim(2 * W)
        for n in range(2 * W // MiB):
            tar.pwrite(piece, first + n * MiB)
            tar.pwrite(piece, second + n * MiB)
    else:
        for _ in range(4 * W // MiB):
            tar.data(piece)
    before_fsync = sorted(calls)
    tar.finish()
    tar.close()

    assert before_fsync == [(w * W, W) for w in range(4)]
