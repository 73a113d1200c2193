"""Writing a big blob (transfer/ingest.py): a stream's bytes are gathered into aligned blocks
and written with direct I/O where the filesystem takes it, plainly where it does not, and the
file and the digest come out the same either way."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from transfer import ingest as ingest_module
from transfer.digest import Digest
from transfer.ingest import ALIGN, BLOCK, Ingest, Staging
from transfer.manifest import Descriptor

LAYER = "application/vnd.oci.image.layer.v1.tar"


def _ingest(tmp_path: Path, data: bytes) -> Ingest:
    desc = Descriptor(LAYER, Digest.of(data), len(data))
    ingest = Ingest(tmp_path / "partial", desc)
    ingest.open()
    return ingest


def _stream(ingest: Ingest, data: bytes, start: int, piece: int) -> None:
    staging = Staging(ingest, start)
    try:
        for at in range(start, len(data), piece):
            staging.add(data[at : at + piece])
        staging.flush()
    finally:
        staging.close()


def _o_direct(fd: int) -> bool:
    flags = next(
        line.split()[1] for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
        if line.startswith("flags:")
    )  # fmt: skip
    return bool(int(flags, 8) & os.O_DIRECT)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no direct I/O here")
def test_whole_blocks_go_to_the_disk_directly_and_the_blob_verifies(tmp_path: Path) -> None:
    data = os.urandom(3 * BLOCK + 12345)  # three whole blocks and a tail
    ingest = _ingest(tmp_path, data)
    try:
        _stream(ingest, data, 0, 128 << 10)
        assert ingest._direct >= 0 and _o_direct(ingest._direct)
        assert ingest.filled == [(0, len(data))]
        ingest.verifier.verify()
    finally:
        ingest.close()
    assert (tmp_path / "partial").read_bytes() == data


def test_a_resumed_stream_at_an_odd_offset_realigns_and_keeps_every_byte(
    tmp_path: Path,
) -> None:
    data = os.urandom(2 * BLOCK + 999)
    start = 3 * ALIGN + 17  # where an earlier run stopped
    (tmp_path / "partial").write_bytes(data[:start])
    ingest = _ingest(tmp_path, data)
    written: list[tuple[int, int]] = []
    real = ingest.write_blocking

    def record(offset: int, chunks: list[bytes], *, aligned: bool = False) -> None:
        written.append((offset, sum(len(c) for c in chunks)))
        real(offset, chunks, aligned=aligned)

    ingest.write_blocking = record  # type: ignore[method-assign]
    try:
        _stream(ingest, data, start, 100_000)
        ingest.verifier.verify()
        assert ingest.filled == [(0, len(data))]
    finally:
        ingest.close()
    assert (tmp_path / "partial").read_bytes() == data
    # The first block ends on an aligned offset; every later one starts on one.
    assert written[0][0] == start and (start + written[0][1]) % ALIGN == 0
    assert all(offset % ALIGN == 0 for offset, _ in written[1:])
    assert hashlib.sha256((tmp_path / "partial").read_bytes()).hexdigest() == (
        Digest.of(data).encoded
    )


def test_a_filesystem_refusing_direct_io_gets_plain_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_direct(path: str, flags: int, *args: int) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(ingest_module.os, "open", no_direct)
    data = os.urandom(2 * BLOCK + 5)
    ingest = _ingest(tmp_path, data)
    try:
        _stream(ingest, data, 0, 64 << 10)
        assert ingest._direct < 0 and not ingest._direct_ok
        ingest.verifier.verify()
    finally:
        ingest.close()
    assert (tmp_path / "partial").read_bytes() == data
