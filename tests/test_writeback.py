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
