"""A stored layer as a stream of tar headers: verified, decompressed, hashed and bounded.

blob file (size and digest checked as it is read) → gzip | zstd | nothing → tar bytes (hashed
for the diff_id, counted against the unpack's byte budget) → ``tarfile`` in stream mode, whose
headers are bounded before tarfile reads them. Memory stays flat whatever a layer claims
(reliability case 36): reads are chunked, one PAX or GNU long-name header is capped, PAX
headers are read by ``tarheader`` (global ones skipped, extended ones of bounded records),
zstd's window is capped, and tarfile's list of every member seen is emptied as we go.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, BinaryIO, Protocol, Self, cast

import zstandard

from .compression import SNIFF_BYTES, sniff
from .digest import Digest, Verifier
from .errors import ManifestError, SizeMismatch, StoreError
from .localfile import open_regular
from .manifest import Descriptor
from .tarheader import MAX_HEADER, BoundedPaxInfo

CHUNK = 1 << 20
# zstd's own default decoder limit (128 MiB): a frame asking for a bigger window is refused
# rather than allocated.
ZSTD_MAX_WINDOW = 1 << 27
_HEADER_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
# Headers that mark the end of the archive (not in typeshed's tarfile stubs).
_END_OF_ARCHIVE: tuple[type[Exception], ...] = (
    tarfile.EOFHeaderError,  # type: ignore[attr-defined]
    tarfile.EmptyHeaderError,  # type: ignore[attr-defined]
)
# What a failing decompressor raises (BadGzipFile is an OSError; a cut stream an EOFError).
_DECODE_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class Budget:
    """Uncompressed bytes the whole unpack may read (``--max-size``): a bomb stops here."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, count: int, what: str) -> None:
        self.used += count
        if self.used > self.limit:
            raise SizeMismatch(
                f"{what}: the image unpacks to more than {self.limit} bytes (--max-size)"
            )


def compression(media_type: str, what: str) -> str:
    """gzip, zstd or tar, from the layer's media type (OCI ``+gzip``, Docker ``.gzip``)."""
    kind = media_type.split(";", 1)[0].strip().lower()
    if kind.endswith(("+gzip", ".gzip")):
        return "gzip"
    if kind.endswith(("+zstd", ".zstd")):
        return "zstd"
    if kind.endswith((".tar", "+tar")) or kind == "application/x-tar":
        return "tar"
    raise ManifestError(f"{what}: unsupported layer media type {media_type!r}")


class _Blob(io.RawIOBase):
    """The layer blob as stored: its size and digest are checked while it is read."""

    def __init__(self, handle: BinaryIO, desc: Descriptor, what: str) -> None:
        super().__init__()
        self.handle = handle
        self.verifier = Verifier(desc.digest, desc.size, what=what)
        self.what = what

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self.handle.read(size if size > 0 else CHUNK)
        except OSError as exc:
            raise StoreError(f"cannot read {self.what}: {exc.strerror}") from None
        self.verifier.update(data)
        return data

    def readable(self) -> bool:
        return True


class LayerStream(io.RawIOBase):
    """The uncompressed tar bytes of one layer: hashed (diff_id), counted against the budget.

    ``finish()`` reads what tar left (padding after the end-of-archive blocks counts in the
    diff_id), then checks the stored blob's size and digest; it returns the diff_id.
    """

    def __init__(
        self,
        blob: str | io.BufferedReader,  # the stored file's path, or the blob's bytes as read
        desc: Descriptor,
        diff_id: Digest,
        budget: Budget,
        check: Callable[[], None],
        what: str,
    ) -> None:
        super().__init__()
        self.what = what
        self.budget = budget
        self.check = check
        self.diff_id = diff_id
        self._hash = diff_id.hasher()
        self.kind = compression(desc.media_type, what)
        self._handle: BinaryIO = _open_blob(blob, what) if isinstance(blob, str) else blob
        self._blob = _Blob(self._handle, desc, what)
        try:
            if isinstance(blob, str):
                found = sniff(os.pread(self._handle.fileno(), SNIFF_BYTES, 0))
            else:  # a stream: looked at without consuming it
                found = sniff(blob.peek(SNIFF_BYTES)[:SNIFF_BYTES])
            if found != self.kind:
                raise ManifestError(
                    f"{what}: media type {desc.media_type} says {self.kind} but the data is {found}"
                )
            self._source: _Readable = self._decoder()
        except BaseException:
            self._handle.close()
            raise

    def _decoder(self) -> _Readable:
        if self.kind == "gzip":
            return gzip.GzipFile(fileobj=self._blob, mode="rb")
        if self.kind == "zstd":
            decoder = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
            return decoder.stream_reader(
                cast(IO[bytes], self._blob), read_across_frames=True, closefd=False
            )
        return self._blob

    def read(self, size: int = -1, /) -> bytes:
        self.check()
        try:
            data = self._source.read(size if size > 0 else CHUNK)
        except _DECODE_ERRORS as exc:
            raise ManifestError(f"{self.what} is not valid {self.kind}: {exc}") from None
        self.budget.take(len(data), self.what)
        self._hash.update(data)
        return data

    def finish(self) -> Digest:
        while self.read(CHUNK):
            pass
        while self._blob.read(CHUNK):  # bytes after the compressed stream still count
            pass
        self._blob.verifier.verify()
        return Digest(self.diff_id.algorithm, self._hash.hexdigest())

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._handle.close()
        super().close()


def _open_blob(path: str, what: str) -> BinaryIO:
    # The store's opener: a symlink (case 41), a FIFO (it would wait for a writer for ever)
    # or a directory planted as a blob is refused, naming it.
    try:
        fd = open_regular(Path(path), what)
    except FileNotFoundError:
        raise StoreError(f"{what} is missing from the store") from None
    return os.fdopen(fd, "rb")


def _bounded_info(what: str, max_header: int) -> type[tarfile.TarInfo]:
    """A TarInfo whose raw headers are checked before tarfile acts on them: tarfile reads a
    PAX or long-name header whole, whatever size it claims, and takes a bad header past the
    first for the end of the archive (silently dropping the rest of the layer)."""

    def refuse(reason: str) -> ManifestError:
        return ManifestError(f"{what}: {reason}")

    class BoundedInfo(BoundedPaxInfo):
        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
            try:
                info = super().frombuf(buf, encoding, errors)
            except _END_OF_ARCHIVE:
                raise  # the end of the archive, as tar writers mark it
            except tarfile.HeaderError as exc:
                raise refuse(f"corrupt tar header ({exc})") from None
            if info.size < 0:
                raise refuse(f"negative size {info.size} in the header of {info.name[:80]!r}")
            if info.type in _HEADER_TYPES and info.size > max_header:
                raise refuse(f"a {info.size}-byte extended tar header (limit {max_header})")
            if info.type == tarfile.GNUTYPE_SPARSE:
                raise refuse(f"sparse file {info.name[:80]!r} is not supported")
            return info

    return BoundedInfo


def members(
    stream: LayerStream, max_header: int = MAX_HEADER
) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """Each member of the layer's tar, with the TarFile to read a regular file's data from."""
    try:
        tar = tarfile.open(  # noqa: SIM115 - closed by the with block below
            fileobj=stream,
            mode="r|",
            tarinfo=_bounded_info(stream.what, max_header),
            bufsize=64 * 1024,
            errors="surrogateescape",
        )
    except (tarfile.TarError, ValueError, OverflowError) as exc:
        raise ManifestError(f"{stream.what} is not a tar archive: {exc}") from None
    with tar:
        while True:
            try:
                info = tar.next()
            except (tarfile.TarError, ValueError, OverflowError, UnicodeError) as exc:
                raise ManifestError(f"{stream.what}: unreadable tar: {exc}") from None
            if info is None:
                return
            # Stream mode keeps every header seen (memory would grow); not in the stubs.
            tar.members.clear()  # type: ignore[attr-defined]
            if info.size < 0:  # a PAX "size" record can say so too
                raise ManifestError(f"{stream.what}: negative size for {info.name[:80]!r}")
            yield tar, info


def file_data(tar: tarfile.TarFile, info: tarfile.TarInfo, what: str) -> Iterator[bytes]:
    """A regular member's bytes in chunks; a short archive is an error, not a short file."""
    reader = tar.extractfile(info)
    if reader is None:
        return
    left = info.size
    while left > 0:
        try:
            chunk = reader.read(min(CHUNK, left))
        except (tarfile.TarError, ValueError) as exc:
            raise ManifestError(f"{what}: {info.name[:80]!r}: {exc}") from None
        if not chunk:
            raise ManifestError(f"{what}: {info.name[:80]!r} is cut short")
        left -= len(chunk)
        yield chunk
