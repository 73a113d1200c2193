"""Content digests: a validated ``Digest`` value and a streaming ``Verifier``.

A digest is validated before it is ever used to build a URL or a path (reliability case 19):
only ``sha256`` (64 hex) and ``sha512`` (128 hex), lower-case hex, nothing else.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from .errors import DigestMismatch, InvalidDigest, SizeMismatch, TooLarge

# The algorithms the OCI image spec registers, with their encoded lengths.
_ALGORITHMS = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True, order=True)
class Digest:
    algorithm: str
    encoded: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, sep, encoded = text.partition(":")
        if not sep:
            raise InvalidDigest(f"invalid digest {text!r}: expected ALGORITHM:HEX")
        length = _ALGORITHMS.get(algorithm)
        if length is None:
            raise InvalidDigest(f"invalid digest {text!r}: unsupported algorithm {algorithm!r}")
        if len(encoded) != length or not _HEX.fullmatch(encoded):
            raise InvalidDigest(
                f"invalid digest {text!r}: {algorithm} needs {length} lower-case hex characters"
            )
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> Any:
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    @property
    def short(self) -> str:
        return f"{self.algorithm}:{self.encoded[:12]}"


class Verifier:
    """Counts and hashes bytes as they stream; ``verify()`` checks size first, then digest.

    The size check comes first so that a short or long body is reported as what it is, and
    ``update`` refuses to go past the expected size at all (a hostile server cannot make us hash
    or store unbounded data).
    """

    def __init__(self, expected: Digest, size: int, *, what: str = "blob") -> None:
        if size < 0:
            raise SizeMismatch(
                f"{what} {expected} has a negative size {size}", digest=str(expected)
            )
        self.expected = expected
        self.size = size
        self.what = what
        self.count = 0
        self._hash = expected.hasher()

    def update(self, chunk: bytes | memoryview) -> None:
        self.count += len(chunk)
        if self.count > self.size:
            raise TooLarge(
                f"{self.what} {self.expected} is longer than its declared {self.size} bytes",
                digest=str(self.expected),
            )
        self._hash.update(chunk)

    def snapshot(self) -> Verifier:
        """An independent copy, to go on from this point again (a chunk that must be resent)."""
        twin = Verifier(self.expected, self.size, what=self.what)
        twin.count, twin._hash = self.count, self._hash.copy()
        return twin

    def verify(self) -> None:
        if self.count != self.size:
            raise SizeMismatch(
                f"{self.what} {self.expected}: got {self.count} bytes, expected {self.size}",
                digest=str(self.expected),
            )
        got = Digest(self.expected.algorithm, self._hash.hexdigest())
        if got != self.expected:
            raise DigestMismatch(
                f"{self.what} digest mismatch: expected {self.expected}, got {got}",
                digest=str(self.expected),
            )
