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
from transfer.errors import IntegrityError
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

    def record(offset: int, chunks: list[bytes], **options: bool) -> None:
        written.append((offset, sum(len(c) for c in chunks)))
        real(offset, chunks, **options)

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


def test_bytes_hashed_ahead_are_the_ones_that_land_whoever_else_writes_there(
    tmp_path: Path,
) -> None:
    """A block is hashed before its writer thread writes it: another stream's write into those
    bytes (pieces overlap when a server ignores one Range) after the hashing is dropped, and one
    before it is overwritten, so the file always holds what the digest covers."""
    data = os.urandom(2 * BLOCK)
    block = memoryview(data)[:BLOCK]
    other = os.urandom(BLOCK)
    ingest = _ingest(tmp_path, data)
    try:
        assert ingest.hash_ahead(0, block)
        ingest.write_blocking(0, [other])  # after the hashing: dropped
        ingest.write_blocking(0, [block], aligned=True, hashed=True)
        assert not ingest.hash_ahead(BLOCK + 1, b"x")  # not next in order: not hashed
        ingest.write_blocking(BLOCK, [other])  # in order, before any hashing: hashed as written
        assert not ingest.hash_ahead(BLOCK, memoryview(data)[BLOCK:])
        ingest.write_blocking(BLOCK, [memoryview(data)[BLOCK:]], aligned=True)  # dropped
        assert (tmp_path / "partial").read_bytes() == data[:BLOCK] + other
        assert ingest.verifier.count == 2 * BLOCK
        with pytest.raises(IntegrityError):  # the second half is the other stream's bytes
            ingest.verifier.verify()
    finally:
        ingest.close()


def test_a_failed_write_in_the_writer_thread_reaches_the_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(4 * BLOCK)
    ingest = _ingest(tmp_path, data)

    def full(*_: object) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ingest, "_put", full)
    staging = Staging(ingest, 0)
    try:
        with pytest.raises(OSError, match="No space"):
            for at in range(0, len(data), 256 << 10):
                staging.add(data[at : at + (256 << 10)])
            staging.flush()
    finally:
        staging.close()
        ingest.close()
    assert ingest.filled == []  # nothing claimed that is not in the file
