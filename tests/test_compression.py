"""The one compression sniffer, as a table."""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from transfer.compression import SNIFF_BYTES, sniff
from transfer.digest import Digest
from transfer.errors import ManifestError

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


@pytest.mark.parametrize(("compress", "kind"), [(bz2.compress, "bzip2"), (lzma.compress, "xz")])
def test_a_layer_typed_as_plain_tar_whose_bytes_are_compressed_is_named_as_such(
    tmp_path: Path, compress: Callable[[bytes], bytes], kind: str
) -> None:
    from transfer.manifest import Descriptor
    from transfer.tarstream import Budget, LayerStream

    data = compress(bytes(10240))  # an empty tar, compressed in a way layers never are
    path = tmp_path / "layer"
    path.write_bytes(data)
    desc = Descriptor("application/vnd.oci.image.layer.v1.tar", Digest.of(data), len(data))
    with pytest.raises(ManifestError, match=f"says tar but the data is {kind}"):
        LayerStream(str(path), desc, Digest.of(bytes(10240)), Budget(1 << 20), _no_check, "layer 1")


def _no_check() -> None:
    return None
