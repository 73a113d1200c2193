"""The one compression sniffer, as a table."""

from __future__ import annotations

import bz2
import gzip
import lzma

import pytest
import zstandard

from transfer.compression import SNIFF_BYTES, sniff

TAR_HEAD = b"etc/passwd" + bytes(90)  # a tar header starts with a member name


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (gzip.compress(TAR_HEAD), "gzip"),
        (zstandard.ZstdCompressor().compress(TAR_HEAD), "zstd"),
        (bz2.compress(TAR_HEAD), "bzip2"),
        (lzma.compress(TAR_HEAD), "xz"),
        (TAR_HEAD, "tar"),
        (b"", "tar"),
        (b"\x1f", "tar"),  # half a magic number is none
    ],
)
def test_sniff_names_the_compression_from_the_first_bytes(data: bytes, kind: str) -> None:
    assert sniff(data[:SNIFF_BYTES]) == kind
