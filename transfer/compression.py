"""What compression a blob or an archive is in, from its first bytes (one table for all).

Layers are read as their media type says, and the bytes must agree (``tarstream``); archives
and the layers inside them are looked at before they are indexed (``endpoints``). The formats
not decoded (bzip2, xz) are named, so that the error says what the file is.
"""

from __future__ import annotations

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAGIC = {GZIP_MAGIC: "gzip", ZSTD_MAGIC: "zstd", b"BZh": "bzip2", b"\xfd7zXZ": "xz"}
SNIFF_BYTES = max(len(m) for m in MAGIC)  # enough of the head to tell them all apart


def sniff(head: bytes) -> str:
    """gzip, zstd, bzip2, xz, or tar (anything else: tar is uncompressed)."""
    for magic, kind in MAGIC.items():
        if head.startswith(magic):
            return kind
    return "tar"
