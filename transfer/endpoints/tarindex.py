"""The index of an uncompressed tar file: members found by name, read in place by offset.

Archives are hostile input (reliability cases 43-44) and nothing in one is ever extracted:
the headers are read once into a name → (offset, size) table, and a member's bytes are read
with ``pread`` at its offset, in worker threads, a chunk at a time. The index refuses what
no honest image archive holds, before any byte is used: absolute or ``..`` member names,
links whose targets leave the archive, one name twice, members that run past the end of the
file, and a file that stops without tar's end-of-archive block (truncated). Header reads are
capped, so a huge PAX header cannot make us allocate, and PAX headers are read by ``tarheader``
(a global one skipped, an extended one of bounded records), so no header's records are copied
into every member. Symlinks and hardlinks to other members are followed (docker save and
skopeo write them for shared layers), a bounded number of hops.

A volume set (``NAME.001.tar``, ``NAME.002.tar``, …: an archive written with a maximum size,
see ``volumes.py``) is read as one archive: ``TarIndex.read`` takes ``NAME.tar`` when that is
absent and the first volume exists, or the first volume itself, and indexes each volume in turn
up to the one holding the index documents; every volume is checked as a whole tar on its own,
so a missing, cut or garbled one is named. A member name appearing in two volumes is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from ..compression import SNIFF_BYTES, sniff
from ..errors import ArchiveError, StoreError
from ..localfile import open_regular
from ..tarheader import BoundedPaxInfo

MAX_MEMBERS = 1 << 20
MAX_HEADER_READ = 1 << 20  # one header read by tarfile (PAX records, GNU long names)
MAX_LINK_HOPS = 8
READ_CHUNK = 1 << 20
HASH_CHUNK = 4 << 20
MAX_VOLUMES = 10_000
# index.json's annotation, on the last volume of a set: how many volumes the set has.
VOLUMES = "dev.xfer.volumes"
# What marks the last volume of a set: the index documents, which are written last.
DOCUMENTS = ("index.json", "manifest.json")
_BLOCK = 512
_VOLUME = re.compile(r"(?P<stem>.+)\.(?P<number>\d{3,})(?P<suffix>\.tar)?")


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # where the data starts in the file
    size: int
    volume: int = 0  # which file of a volume set (0: the first, or the only one)


@dataclass(frozen=True)
class _Link:
    target: str  # an archive path, already normalised and checked to stay inside


class _CappedReader:
    """tarfile's view of the file: any single read over the cap is a hostile header."""

    def __init__(self, raw: Any, where: Path) -> None:
        self.raw = raw
        self.where = where

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > MAX_HEADER_READ:
            raise ArchiveError(
                f"archive {self.where}: a tar header is over {MAX_HEADER_READ} bytes"
            )
        data: bytes = self.raw.read(size)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        result: int = self.raw.seek(offset, whence)
        return result

    def tell(self) -> int:
        result: int = self.raw.tell()
        return result


def clean_name(name: str, where: Path) -> str:
    """An archive path made canonical (``./a//b`` → ``a/b``); escaping names are refused."""
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise ArchiveError(f"archive {where}: member {name[:80]!r} has an absolute or odd path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"archive {where}: member {name[:80]!r} escapes the archive (..)")
    return "/".join(parts)


def volume_path(path: Path, number: int) -> Path:
    """Volume ``number`` (1-based) of the set written for ``path``: ``NAME.tar`` →
    ``NAME.001.tar``; a name without ``.tar`` gets the number at its end (``NAME.001``)."""
    if path.suffix == ".tar":
        return path.with_name(f"{path.stem}.{number:03d}.tar")
    return path.with_name(f"{path.name}.{number:03d}")


def set_name(first: Path) -> Path | None:
    """``NAME.tar`` for a path named like the first volume of a set (``NAME.001.tar``)."""
    match = _VOLUME.fullmatch(first.name)
    if match is None or int(match["number"]) != 1:
        return None
    return first.with_name(match["stem"] + (match["suffix"] or ""))


def _open(path: Path) -> int:
    try:
        return open_regular(path, f"archive {path}", follow=True)  # a FIFO would hang
    except FileNotFoundError:
        raise ArchiveError(f"cannot open archive {path}: No such file or directory") from None
    except StoreError as exc:
        raise ArchiveError(str(exc)) from None


class TarIndex:
    """A tar file (or a volume set of them) opened for reading by member name; ``close()``
    releases the descriptors."""

    def __init__(
        self,
        path: Path,
        fd: int,
        members: dict[str, Member | _Link | None],
        volumes: list[tuple[Path, int]] | None = None,
    ) -> None:
        self.path = path
        self.fd = fd
        # Every file read, in order, with its descriptor: one, or the volumes of a set.
        self.volumes = volumes if volumes is not None else [(path, fd)]
        self._members = members  # None: a directory or a special file, never data
        # (volume, data offset, algorithm) → (hex digest, head): a docker-archive may list one
        # layer thousands of times, and each member is hashed once (members are immutable).
        self._hashed: dict[tuple[int, int, str], tuple[str, bytes]] = {}

    @property
    def is_set(self) -> bool:
        return len(self.volumes) > 1 or self.volumes[0][0] != self.path

    @classmethod
    def read(cls, path: Path) -> TarIndex:
        """Read every header once (blocking: call it in a worker thread). ``path`` absent but
        its first volume there, or ``path`` the first volume of a set: the whole set."""
        if not os.path.lexists(path) and os.path.lexists(volume_path(path, 1)):
            return cls.read_set(path)
        tar = cls.read_file(path)
        base = set_name(path)
        if base is not None and not any(name in tar for name in DOCUMENTS):
            # The first volume of a set: it holds blobs alone, the last one the documents.
            tar.close()
            return cls.read_set(base)
        return tar

    @classmethod
    def read_file(cls, path: Path) -> TarIndex:
        """One tar file, whatever its name (blocking)."""
        fd = _open(path)
        try:
            return cls(path, fd, _scan(path, fd))
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def read_set(cls, path: Path, problems: list[str] | None = None) -> TarIndex:
        """The volumes ``NAME.001.tar``, ``NAME.002.tar``, … of ``path`` = ``NAME.tar``, read
        in turn up to the first that holds the index documents (the last one written).

        ``problems`` (``xfer verify``): instead of stopping at the first, every missing, cut or
        garbled volume is recorded there and the rest read (a damaged volume's sound members
        kept), up to the highest-numbered volume present."""
        volumes: list[tuple[Path, int]] = []
        members: dict[str, Member | _Link | None] = {}
        where: dict[str, Path] = {}
        last = MAX_VOLUMES if problems is None else _highest_volume(path)

        def fail(message: str, hint: str | None = None) -> None:
            if problems is None:
                raise ArchiveError(message, hint=hint)
            problems.append(message)

        try:
            for number in range(1, last + 1):
                current = volume_path(path, number)
                if not os.path.lexists(current):
                    fail(
                        f"volume {current} of {path} is missing"
                        + (
                            " (the last one read has no index.json)"
                            if number > 1 and problems is None
                            else ""
                        ),
                        hint="copy every volume of the set into one directory",
                    )
                    volumes.append((current, -1))
                    continue
                found: dict[str, Member | _Link | None] = {}
                try:
                    fd = _open(current)
                    volumes.append((current, fd))
                    _scan(current, fd, number - 1, found)
                except ArchiveError as exc:
                    fail(str(exc))
                    if len(volumes) < number:
                        volumes.append((current, -1))
                for name, entry in found.items():
                    if name in members and not (entry is None and members[name] is None):
                        fail(
                            f"volume set {path}: member {name} is in both {where[name]} "
                            f"and {current}"
                        )
                        continue
                    members[name] = entry
                    where[name] = current
                if any(name in found for name in DOCUMENTS):
                    tar = cls(path, volumes[0][1], members, volumes)
                    try:
                        _check_count(tar, current, number)
                    except ArchiveError as exc:
                        fail(str(exc))
                    return tar
            fail(
                f"volume {volume_path(path, last + 1)} of {path} is missing (no volume read "
                "holds index.json: the set's last one is missing)"
            )
            return cls(path, volumes[0][1] if volumes else -1, members, volumes)
        except BaseException:
            for _, fd in volumes:
                if fd >= 0:
                    os.close(fd)
            raise

    @classmethod
    def read_sound(cls, path: Path) -> tuple[TarIndex, list[str]]:
        """The archive or volume set ``path`` names, as much of it as is sound, and what is
        wrong with the rest (``xfer verify``: every problem named, not the first)."""
        problems: list[str] = []
        if not os.path.lexists(path) and os.path.lexists(volume_path(path, 1)):
            return cls.read_set(path, problems), problems
        fd = _open(path)
        members: dict[str, Member | _Link | None] = {}
        try:
            _scan(path, fd, 0, members)
        except ArchiveError as exc:
            problems.append(str(exc))
        base = set_name(path)
        if base is not None and not any(n in members for n in DOCUMENTS):
            os.close(fd)
            problems = []  # the set's reading meets this volume's problem again
            return cls.read_set(base, problems), problems
        return cls(path, fd, members), problems

    def where(self, member: Member) -> Path:
        """The file holding ``member`` (its volume, in a set)."""
        return self.volumes[member.volume][0]

    def close(self) -> None:
        for _, fd in self.volumes:
            if fd >= 0:
                os.close(fd)
        self.volumes = [(p, -1) for p, _ in self.volumes]
        self.fd = -1

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def named(self) -> list[tuple[str, Member]]:
        """Every name that stands for a regular member (links followed), with that member;
        names that are directories, special files or broken links left out."""
        out = []
        for name in self._members:
            try:
                out.append((name, self.member(name)))
            except ArchiveError:
                continue
        return out

    def names(self) -> list[str]:
        return list(self._members)

    def member(self, name: str) -> Member:
        """The regular file ``name`` stands for, links followed inside the archive."""
        current = name
        for _ in range(MAX_LINK_HOPS + 1):
            if current not in self._members:
                shown = name if current == name else f"{name} (via {current})"
                raise ArchiveError(f"archive {self.path} has no member {shown}")
            entry = self._members[current]
            if isinstance(entry, Member):
                return entry
            if entry is None:
                raise ArchiveError(f"archive {self.path}: member {current} is not a regular file")
            current = entry.target
        raise ArchiveError(f"archive {self.path}: member {name} is a chain of too many links")

    def read_small(self, name: str, cap: int) -> bytes:
        """A whole small member (a JSON document), refused before reading when over ``cap``."""
        member = self.member(name)
        if member.size > cap:
            raise ArchiveError(
                f"archive {self.path}: {name} is {member.size} bytes, over the {cap} byte limit"
            )
        return self._pread(member, member.size, 0)

    def hash(self, member: Member, algorithm: str = "sha256") -> tuple[str, bytes]:
        """(hex digest, first bytes) of a member, read in chunks (blocking), once."""
        known = self._hashed.get((member.volume, member.offset, algorithm))
        if known is not None:
            return known
        hasher = hashlib.new(algorithm)
        head = b""
        position = 0
        while position < member.size:
            chunk = self._pread(member, min(HASH_CHUNK, member.size - position), position)
            if not head:
                head = chunk[:8]
            hasher.update(chunk)
            position += len(chunk)
        self._hashed[member.volume, member.offset, algorithm] = found = (hasher.hexdigest(), head)
        return found

    async def chunks(
        self, member: Member, offset: int, end: int, hasher: Any = None
    ) -> AsyncIterator[bytes]:
        """The member's bytes [offset, end), each chunk read (and hashed into ``hasher``, if
        given) in a worker thread."""
        position = offset
        while position < end:
            size = min(READ_CHUNK, end - position)
            chunk = await anyio.to_thread.run_sync(
                self._read_hashed, member, size, position, hasher
            )
            position += len(chunk)
            yield chunk

    def _read_hashed(self, member: Member, size: int, position: int, hasher: Any) -> bytes:
        chunk = self._pread(member, size, position)
        if hasher is not None:
            hasher.update(chunk)
        return chunk

    def read_at(self, member: Member, size: int, position: int) -> bytes:
        """``size`` bytes of ``member`` from ``position`` (blocking)."""
        return self._pread(member, size, position)

    def _pread(self, member: Member, size: int, position: int) -> bytes:
        where, fd = self.volumes[member.volume]
        data = os.pread(fd, size, member.offset + position)
        if len(data) != size:  # the file shrank since it was indexed
            raise ArchiveError(f"archive {where} is truncated in {member.name}")
        return data


def _highest_volume(path: Path) -> int:
    """The highest volume number of ``path``'s set in its directory (1 when there is none)."""
    if path.suffix == ".tar":  # as volume_path names them
        pattern = re.compile(re.escape(path.stem) + r"\.(\d{3,})\.tar")
    else:
        pattern = re.compile(re.escape(path.name) + r"\.(\d{3,})")
    numbers = [1]
    with os.scandir(path.parent) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match is not None:
                numbers.append(int(match.group(1)))
    return min(max(numbers), MAX_VOLUMES)


def _check_count(tar: TarIndex, last: Path, count: int) -> None:
    """The set's index.json says how many volumes it has: a set read short of that (its last
    volume replaced by an older one) or past it is named."""
    if "index.json" not in tar:
        return  # docker's manifest.json alone (--format docker) has no place for the count
    try:
        doc = json.loads(tar.read_small("index.json", MAX_HEADER_READ * 16))
    except ValueError:
        return  # not JSON: the archive reader names that
    annotations = doc.get("annotations") if isinstance(doc, dict) else None
    text = annotations.get(VOLUMES) if isinstance(annotations, dict) else None
    if isinstance(text, str) and text != str(count):
        raise ArchiveError(
            f"volume set {tar.path}: {last} is volume {count}, but its index.json says the "
            f"set has {text[:20]} volumes"
        )


def _scan(
    path: Path,
    fd: int,
    volume: int = 0,
    members: dict[str, Member | _Link | None] | None = None,
) -> dict[str, Member | _Link | None]:
    """Every header of the file (into ``members``, as far as it gets before an error)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise ArchiveError(f"archive {path} is not a regular file")
    kind = sniff(os.pread(fd, SNIFF_BYTES, 0))
    if kind != "tar":
        raise ArchiveError(
            f"archive {path} is {kind}-compressed",
            hint="decompress it first (members are read in place, not extracted)",
        )
    members = {} if members is None else members
    with os.fdopen(os.dup(fd), "rb") as raw:
        try:
            tar = tarfile.TarFile(
                fileobj=_CappedReader(raw, path),  # type: ignore[arg-type]
                mode="r",
                tarinfo=BoundedPaxInfo,
            )
            end = _walk(tar, path, st.st_size, members, volume)
        except (tarfile.TarError, EOFError, ValueError) as exc:  # UnicodeError is a ValueError
            raise ArchiveError(f"archive {path} is not a readable tar file: {exc}") from None
    # tarfile stops quietly at a cut or garbled header; an honest tar ends with a zero block.
    if os.pread(fd, _BLOCK, end) != bytes(_BLOCK):
        raise ArchiveError(f"archive {path} is truncated or corrupt at byte {end}")
    return members


def _walk(
    tar: tarfile.TarFile,
    path: Path,
    file_size: int,
    members: dict[str, Member | _Link | None],
    volume: int = 0,
) -> int:
    """Fill ``members`` from the headers; returns where the end-of-archive block must be."""
    count = 0
    while (info := tar.next()) is not None:
        tar.members.clear()  # type: ignore[attr-defined]  # kept by tarfile, not needed here
        count += 1
        if count > MAX_MEMBERS:
            raise ArchiveError(f"archive {path} has more than {MAX_MEMBERS} members")
        name = clean_name(info.name, path)
        if not name:
            continue  # "./" itself
        entry: Member | _Link | None = None
        if info.isreg() and not info.sparse:
            if info.offset_data + info.size > file_size:
                raise ArchiveError(f"archive {path} is truncated in {name}")
            entry = Member(name, info.offset_data, info.size, volume)
        elif info.issym():
            entry = _Link(_link_target(posixpath.dirname(name), info.linkname, name, path))
        elif info.islnk():
            entry = _Link(_link_target("", info.linkname, name, path))
        if name in members and not (entry is None and members[name] is None):
            raise ArchiveError(f"archive {path}: member {name} appears twice")
        members[name] = entry
    return tar.offset


def _link_target(base: str, target: str, name: str, path: Path) -> str:
    if target.startswith("/"):
        raise ArchiveError(f"archive {path}: link {name} points outside the archive ({target})")
    joined = posixpath.normpath(posixpath.join(base, target)) if base else target
    if joined == ".." or joined.startswith("../"):
        raise ArchiveError(f"archive {path}: link {name} points outside the archive ({target})")
    return clean_name(joined, path)
