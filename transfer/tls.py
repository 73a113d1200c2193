"""TLS as docker does it: the system's trust plus extra CAs, client certificates, and telling a
certificate problem (never a reason to fall back to plain HTTP) from a server without TLS.
"""

from __future__ import annotations

import functools
import os
import re
import ssl
import threading
from collections.abc import Sequence
from typing import Any

from .errors import UsageError, reason

# OpenSSL reasons that mean "the server does not like our certificate (or lack of one)".
_CLIENT_CERT_REFUSED = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)


def ssl_context(
    ca_files: Sequence[str] = (),
    client_cert: tuple[str, str] | None = None,
    *,
    verify: bool = True,
) -> ssl.SSLContext:
    """System trust (honouring $SSL_CERT_FILE / $SSL_CERT_DIR) plus ``ca_files``; see below."""
    return _ssl_context(tuple(ca_files), client_cert, verify)


@functools.lru_cache(maxsize=32)  # loading the system store costs ~25 ms: once per process
def _ssl_context(
    ca_files: tuple[str, ...], client_cert: tuple[str, str] | None, verify: bool
) -> ssl.SSLContext:
    """System trust (honouring $SSL_CERT_FILE / $SSL_CERT_DIR) plus ``ca_files``.

    Extra CAs are added, not substituted: ``create_default_context(cafile=...)`` would drop the
    system store, and a registry whose CDN has a public certificate would then fail.
    ``verify=False`` (--insecure) checks nothing but still presents a client certificate.
    """
    if not verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        ca_files = ()
    else:
        context = _SystemTrust(ssl.PROTOCOL_TLS_CLIENT)
        if keylog := os.environ.get("SSLKEYLOGFILE"):  # as create_default_context does
            context.keylog_filename = keylog
    for path in ca_files:
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot use CA file {path}: {reason(exc)}") from None
    if client_cert:
        cert, key = client_cert
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(
                f"cannot use client certificate {cert} with key {key}: {reason(exc)}"
            ) from None
    return context


class _SystemTrust(ssl.SSLContext):
    """A verifying context that loads the system store (~25 ms) at its first TLS connection,
    not at start-up: a run that speaks only plain HTTP never pays for it."""

    _lock = threading.Lock()
    _loaded = False

    def _load(self) -> None:
        with self._lock:
            if not self._loaded:
                paths = ssl.get_default_verify_paths()
                if _system_store(paths) and _hashed(paths.openssl_capath):
                    # OpenSSL reads a CA from a hashed directory only when a chain needs it;
                    # the bundle file (the same CAs where the directory is hashed) is parsed
                    # whole, ~20 ms, before the first handshake even learns the server speaks TLS.
                    self.load_verify_locations(capath=paths.openssl_capath)
                else:
                    self.load_default_certs(ssl.Purpose.SERVER_AUTH)
                self._loaded = True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load()
        return super().wrap_bio(*args, **kwargs)

    def get_ca_certs(self, binary_form: bool = False) -> Any:
        self._load()  # a hashed directory's CAs are listed once a handshake has used them
        return super().get_ca_certs(binary_form)

    def cert_store_stats(self) -> dict[str, int]:
        self._load()
        return super().cert_store_stats()


def _system_store(paths: ssl.DefaultVerifyPaths) -> bool:
    """Whether OpenSSL would read only the system's own bundle and directory: neither
    $SSL_CERT_FILE nor $SSL_CERT_DIR is set, or they name those (as some images set them)."""
    for env, default in (
        (paths.openssl_cafile_env, paths.openssl_cafile),
        (paths.openssl_capath_env, paths.openssl_capath),
    ):
        chosen = os.environ.get(env)
        if chosen and os.path.realpath(chosen) != os.path.realpath(default):
            return False
    return True


def _hashed(directory: str | None) -> bool:
    """Whether ``directory`` holds OpenSSL's subject-hash links (``c_rehash``, as Debian, Ubuntu
    and Alpine keep it): without them a lookup by hash finds nothing, so the bundle is loaded."""
    if not directory:
        return False
    try:
        with os.scandir(directory) as entries:
            return any(_HASH_NAME.fullmatch(entry.name) for entry in entries)
    except OSError:
        return False


_HASH_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")


def certificate_problem(exc: BaseException) -> tuple[str, str] | None:
    """What is wrong with a certificate in a TLS failure (walking the cause chain) and what to
    do about it, or None when the failure is not about certificates."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            detail = seen.verify_message or reason(seen)
            return f"TLS certificate verify failed: {detail}", TRUST_HINT
        if isinstance(seen, ssl.SSLError) and (seen.reason or "") in _CLIENT_CERT_REFUSED:
            return f"the server refused the client certificate ({seen.reason})", CLIENT_HINT
        seen = seen.__cause__ or seen.__context__
    return None


TRUST_HINT = "trust its CA: --ca-file, certs.d/HOST/*.crt, or ca-file in the xfer config"
CLIENT_HINT = (
    "give a client certificate: certs.d/HOST/client.cert + client.key, "
    "or client-cert/client-key in the xfer config"
)
