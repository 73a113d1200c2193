"""The whole exception tree of xfer.

    TransferError                    exit 1 unless noted; context in attributes
    ├── UsageError                   exit 2: bad arguments
    │   ├── InvalidReference         a reference that does not parse
    │   └── InvalidDigest            a digest that does not parse (checked before any URL or path)
    ├── RegistryError                an HTTP answer from a registry (status, registry error code)
    │   ├── Unauthorized             401 after credentials / token were tried
    │   ├── Denied                   403
    │   ├── NotFound                 404 / MANIFEST_UNKNOWN / BLOB_UNKNOWN / NAME_UNKNOWN
    │   └── TooManyRequests          429 (retryable, may carry Retry-After)
    ├── NetworkError                 connection refused/reset/timeout (retryable)
    ├── RangeError                   a Range answer that cannot be appended (retryable, from 0)
    ├── RangeIgnored                 a bounded Range answered whole: no parallel ranges there
    ├── IntegrityError               bytes that do not match what was promised
    │   ├── DigestMismatch           expected digest ≠ computed digest
    │   └── SizeMismatch             byte count ≠ descriptor size, or over a cap
    │       └── TooLarge             more than a cap or a descriptor allows (not retryable)
    ├── ManifestError                unsupported or malformed manifest / index / config
    │   └── PlatformNotFound         no image in an index for the requested platform
    ├── AuthError                    token service failure, malformed challenge
    ├── StoreError                   the local store: missing image, corrupt blob, disk
    ├── ArchiveError                 a tarball that is unsafe, truncated or not an image archive
    └── Interrupted                  exit 130 (Ctrl-C), partials kept

Every error renders as one line (``str(err)``) naming what failed; secrets never appear in it.
``retryable`` decides whether the retry policy tries again.
"""

from __future__ import annotations

import re


class TransferError(Exception):
    """Root of every error xfer raises on purpose."""

    exit_code: int = 1
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        reference: str | None = None,
        digest: str | None = None,
        host: str | None = None,
        status: int | None = None,
        code: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reference = reference
        self.digest = digest
        self.host = host
        self.status = status
        self.code = code
        self.hint = hint

    def __str__(self) -> str:
        parts = [self.message]
        context = []
        if self.reference and self.reference not in self.message:
            context.append(self.reference)
        if self.digest and self.digest not in self.message:
            context.append(self.digest)
        if self.host and self.host not in self.message:
            context.append(f"host {self.host}")
        if self.status is not None and str(self.status) not in self.message:
            context.append(f"HTTP {self.status}")
        if self.code and self.code not in self.message:
            context.append(self.code)
        if context:
            parts.append(f"({', '.join(context)})")
        if self.hint:
            parts.append(f"- {self.hint}")
        return " ".join(parts)


class UsageError(TransferError):
    exit_code = 2


class InvalidReference(UsageError):
    pass


class InvalidDigest(UsageError):
    pass


class RegistryError(TransferError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after
        if self.status is not None and (self.status >= 500 or self.status in (408, 429)):
            self.retryable = True


class Unauthorized(RegistryError):
    pass


class Denied(RegistryError):
    pass


class NotFound(RegistryError):
    pass


class TooManyRequests(RegistryError):
    retryable = True


class NetworkError(TransferError):
    retryable = True


class RangeError(TransferError):
    """The server's answer to a Range request cannot be appended: restart the blob from 0."""

    retryable = True


class RangeIgnored(TransferError):
    """A bounded Range request was answered with the whole blob: no parallel ranges here.

    Not retryable: it is about the source, not the attempt; the caller falls back to one stream.
    """


class IntegrityError(TransferError):
    # A corrupt transfer is worth one more try from scratch: proxies and CDNs flip bytes.
    retryable = True


class DigestMismatch(IntegrityError):
    pass


class SizeMismatch(IntegrityError):
    pass


class TooLarge(SizeMismatch):
    """More bytes than a cap or a descriptor allows: the source says so every time (a short
    body may be a cut connection; a long one is not), so it is not tried again."""

    retryable = False


class ManifestError(TransferError):
    pass


class PlatformNotFound(ManifestError):
    pass


class AuthError(TransferError):
    pass


class StoreError(TransferError):
    pass


class ArchiveError(TransferError):
    """A docker or OCI archive that cannot be trusted or read: never worth a retry."""


class Interrupted(TransferError):
    exit_code = 130


def reason(exc: BaseException) -> str:
    """An exception's first line, bounded: for one-line messages."""
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def first_error(error: BaseException) -> BaseException:
    """The most telling error in a (nested) exception group: a TransferError if there is one.

    Task groups wrap failures in groups; users want the one line that says what failed.
    """
    if isinstance(error, BaseExceptionGroup):
        leaves = [first_error(e) for e in error.exceptions]
        for leaf in leaves:
            if isinstance(leaf, TransferError):
                return leaf
        return leaves[0]
    return error


# C0 controls, DEL and C1 controls (ESC starts terminal sequences; CSI is 0x9b on its own),
# the Unicode line and paragraph separators, and the bidirectional overrides and isolates
# that make a terminal show text in another order than it is.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def counted(n: int, noun: str) -> str:
    """``1 image``, ``2 images``: a count as a person writes it in a message."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def printable(text: str) -> str:
    """``text`` safe to show on a terminal on one line: every control character escaped as
    Python writes it (``\\x1b``, ``\\n``), printable Unicode kept. Whatever a server or an
    archive says (tags, error messages, header values) passes through here before it is shown.
    """
    return _UNPRINTABLE.sub(_escape, text)
