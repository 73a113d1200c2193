"""PAX headers read by us, bounded, for every tar xfer reads (layers and image archives).

``tarfile`` merges a global header's records into ``TarFile.pax_headers`` and copies that dict
into every later member, so a global header of 87,000 records in front of 1,000 members costs
87 million dict entries (gigabytes in ``load``, minutes of CPU in ``unpack``), and it parses an
extended header's records one regular-expression match at a time, however many there are.

Here, through tarfile's documented extension point (a TarInfo subclass's ``_proc_member``):

- a global header (``g``) is read and skipped: its records apply to no member, as docker and
  containerd do (Go's archive/tar hands it over as an entry of its own, and both ignore it);
- an extended header (``x``, Solaris ``X``) is at most ``MAX_HEADER`` bytes and ``MAX_RECORDS``
  records, parsed strictly as POSIX says (``LENGTH KEY=VALUE\\n``, the records filling it
  exactly, as Go's reader requires), then applied to the next member as tarfile would.

So a member costs at most one header's records, whatever came before it. Headers that stand
before a member (PAX, GNU long names) are read recursively by tarfile: at most ``MAX_CHAIN`` in a
row (thousands overflowed Python's stack, reported as a bug of ours). What is refused raises
``HeaderError`` (a ValueError: tarfile would take its own header errors past the first member for
the end of the archive, and silently drop the rest).
"""

from __future__ import annotations

import tarfile
import threading
from typing import Any, Self

MAX_HEADER = 1 << 20  # bytes of one PAX header (Go's archive/tar: the same)
# Records of one extended header: real ones hold a path, a link, ids, times and a few xattrs.
MAX_RECORDS = 256
# Headers before one member: a global one, a PAX one and GNU long name and link at most.
MAX_CHAIN = 8
_BLOCK = 512
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
# Values decoded with the archive's own encoding when not UTF-8 (tarfile's rule).
_NAME_FIELDS = frozenset({"path", "linkpath", "uname", "gname"})


class HeaderError(ValueError):
    """A tar header that no honest writer makes, or one over our bounds."""


def pax_records(data: bytes, limit: int = MAX_RECORDS) -> list[tuple[bytes, bytes]]:
    """The ``(key, value)`` records of a PAX header's data, in order (a key may repeat: the
    last wins). ``LENGTH KEY=VALUE\\n``, LENGTH counting the whole record in bytes."""
    records: list[tuple[bytes, bytes]] = []
    position = 0
    while position < len(data):
        space = data.find(b" ", position, position + 21)
        digits = data[position:space]
        if space < 0 or not digits.isdigit():
            raise HeaderError("a PAX record without a length")
        end = position + int(digits)
        if end > len(data) or end <= space + 1 or data[end - 1] != 0x0A:
            raise HeaderError("a PAX record whose length does not match it")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals or not key or b"\x00" in key:
            raise HeaderError("a malformed PAX record")
        if len(records) == limit:
            raise HeaderError(f"a PAX header of more than {limit} records")
        records.append((key, value))
        position = end
    return records


def _block(size: int) -> int:
    return -(-size // _BLOCK) * _BLOCK


_chain = threading.local()  # headers read so far before the member being read, per thread


class BoundedPaxInfo(tarfile.TarInfo):
    """A TarInfo whose PAX headers are read as this module says."""

    @classmethod
    def fromtarfile(cls, tarfile: Any) -> Self:
        depth: int = getattr(_chain, "depth", 0)
        if depth > MAX_CHAIN:
            raise HeaderError(f"more than {MAX_CHAIN} extension headers before one member")
        _chain.depth = depth + 1
        try:
            return super().fromtarfile(tarfile)
        finally:
            _chain.depth = depth

    def _proc_member(self, archive: Any) -> Any:
        if self.type in _PAX_TYPES:
            return self._proc_bounded_pax(archive)
        return super()._proc_member(archive)  # type: ignore[misc]

    def _proc_bounded_pax(self, archive: Any) -> Self:
        if not 0 <= self.size <= MAX_HEADER:
            raise HeaderError(f"a {self.size}-byte PAX header (limit {MAX_HEADER})")
        data = archive.fileobj.read(_block(self.size))
        if len(data) < self.size:
            raise HeaderError("the archive ends inside a PAX header")
        archive.offset = archive.fileobj.tell()  # past it, should the archive end here
        if self.type == tarfile.XGLTYPE:
            return self.fromtarfile(archive)  # the next member, as if the header were not there
        records = pax_records(data[: self.size])
        try:
            member = self.fromtarfile(archive)  # the member the header is for
        except tarfile.HeaderError as exc:
            raise HeaderError(f"a PAX header not followed by a member ({exc})") from None
        headers = _decoded(records, archive.encoding, archive.errors)
        _apply(member, headers)
        member.offset = self.offset
        if "size" in headers:  # the member's data, and so the next header, moved
            offset = member.offset_data
            if member.isreg() or member.type not in tarfile.SUPPORTED_TYPES:
                offset += _block(member.size)
            archive.offset = offset
        return member


def _decoded(records: list[tuple[bytes, bytes]], encoding: str, errors: str) -> dict[str, str]:
    """Keys and values as tarfile decodes them: UTF-8, else (names, or ``hdrcharset=BINARY``)
    the archive's own encoding."""
    binary = any(k == b"hdrcharset" and v == b"BINARY" for k, v in records)
    headers: dict[str, str] = {}
    for raw_key, raw_value in records:
        key = _text(raw_key, "utf-8", errors)
        if key in _NAME_FIELDS and binary:
            value = raw_value.decode(encoding, errors)
        else:
            value = _text(raw_value, encoding if key in _NAME_FIELDS else "utf-8", errors)
        headers[key] = value
    return headers


def _text(raw: bytes, fallback: str, errors: str) -> str:
    try:
        return raw.decode("utf-8", "strict")
    except UnicodeDecodeError:
        return raw.decode(fallback, errors)


def _apply(member: tarfile.TarInfo, headers: dict[str, str]) -> None:
    """The fields tarfile takes from PAX records (its PAX_FIELDS); the rest stay in
    ``pax_headers``. A number that is not one is 0, as tarfile has it."""
    for key, value in headers.items():
        if key == "path":
            member.name = value.rstrip("/")
        elif key == "linkpath":
            member.linkname = value
        elif key == "uname":
            member.uname = value
        elif key == "gname":
            member.gname = value
        elif key in ("uid", "gid", "size"):
            try:
                number = int(value)
            except ValueError:
                number = 0
            setattr(member, key, number)
        elif key == "mtime":
            try:
                member.mtime = float(value)
            except ValueError:
                member.mtime = 0
        elif key.startswith("GNU.sparse."):
            raise HeaderError("sparse files are not supported")
    member.pax_headers = headers
