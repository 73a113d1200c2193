"""Table tests for the HTTP layer's pure parsers: challenges, Content-Range, Retry-After, tokens."""

from __future__ import annotations

import email.utils

import pytest

from transfer.auth import Challenge, parse_challenges, parse_token_response
from transfer.client import parse_content_range
from transfer.endpoints.address import parse_address
from transfer.errors import AuthError, RangeError, UsageError
from transfer.ratelimit import parse_retry_after
from transfer.transport import is_loopback


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param(
            [
                'Bearer realm="https://auth.example.com/token",service="reg",scope="repository:a:pull"'
            ],
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.example.com/token",
                        "service": "reg",
                        "scope": "repository:a:pull",
                    },
                )
            ],
            id="bearer-with-realm-service-scope",
        ),
        pytest.param(
            ['Basic realm="Registry Realm"'],
            [Challenge("basic", {"realm": "Registry Realm"})],
            id="basic",
        ),
        pytest.param(
            [
                'Bearer realm="r",error="insufficient_scope",'
                'scope="repository:a:pull repository:b:pull"'
            ],
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "r",
                        "error": "insufficient_scope",
                        "scope": "repository:a:pull repository:b:pull",
                    },
                )
            ],
            id="insufficient-scope-with-several-scopes",
        ),
        pytest.param(
            ['Negotiate, Basic realm="x", Bearer realm="y",service=s'],
            [
                Challenge("negotiate", {}),
                Challenge("basic", {"realm": "x"}),
                Challenge("bearer", {"realm": "y", "service": "s"}),
            ],
            id="several-schemes-in-one-header",
        ),
        pytest.param(
            ['Basic realm="x"', 'Bearer realm="y"'],
            [Challenge("basic", {"realm": "x"}), Challenge("bearer", {"realm": "y"})],
            id="several-headers",
        ),
        pytest.param(
            ['BEARER Realm="q\\"uoted"'],
            [Challenge("bearer", {"realm": 'q"uoted'})],
            id="case-insensitive-scheme-and-escaped-quote",
        ),
        pytest.param([""], [], id="empty-header"),
    ],
)
def test_parse_challenges(headers: list[str], expected: list[Challenge]) -> None:
    assert parse_challenges(headers) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-99/100", (0, 99, 100)),
        ("bytes 100-199/*", (100, 199, None)),
        (" bytes 5-5/6 ", (5, 5, 6)),
    ],
)
def test_content_range_parses(value: str, expected: tuple[int, int, int | None]) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "bytes 10-5/100", "bytes 0-100/100", "items 0-1/2", "bytes -1-5/10", "bytes 0-1", "0-1/2"],
)
def test_content_range_rejects_malformed_or_inconsistent(value: str) -> None:
    with pytest.raises(RangeError):
        parse_content_range(value)


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    when = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(when, now=1_000_000) == pytest.approx(30.0)
    past = email.utils.formatdate(999_000, usegmt=True)
    assert parse_retry_after(past, now=1_000_000) == 0.0


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("example.com", False),
        ("10.0.0.1:5000", False),
        ("registry-1.docker.io", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'{"token": "t1"}', "t1"),
        (b'{"access_token": "t2"}', "t2"),
        (b'{"token": "t3", "access_token": "ignored", "expires_in": 300}', "t3"),
        (b'{"token": "t4", "expires_in": "soon", "issued_at": "garbage"}', "t4"),
    ],
    ids=["token-only", "access-token-only", "both", "odd-expiry-and-issued-at"],
)
def test_token_response_variants(body: bytes, value: str) -> None:
    token = parse_token_response(body, "h", now=0.0)
    assert token.value == value
    assert token.expires > 0


def test_token_without_expiry_lives_about_sixty_seconds() -> None:
    token = parse_token_response(b'{"token": "t"}', "h", now=1000.0)
    assert 1050.0 <= token.expires <= 1060.0


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"token": ""}', b'{"expires_in": 10}', b'{"token": 5}']
)
def test_token_response_without_token_is_an_auth_error(body: bytes) -> None:
    with pytest.raises(AuthError):
        parse_token_response(body, "h")


@pytest.mark.parametrize(
    ("text", "kind", "rendered"),
    [
        ("nginx", "registry", "docker://docker.io/library/nginx:latest"),
        ("docker://localhost:5000/a:1", "registry", "docker://localhost:5000/a:1"),
        ("store:busybox", "store", "store:docker.io/library/busybox:latest"),
        ("oci:/tmp/lay", "oci", "oci:/tmp/lay"),
        ("oci:/tmp/lay:v1", "oci", "oci:/tmp/lay:v1"),
        ("oci:relative/dir:name", "oci", "oci:relative/dir:name"),
        ("oci-archive:/tmp/a.tar", "oci-archive", "oci-archive:/tmp/a.tar"),
        (
            "oci-archive:a.tar:localhost:5000/x:1",
            "oci-archive",
            "oci-archive:a.tar:localhost:5000/x:1",
        ),
        (
            "docker-archive:/tmp/d.tar:nginx:1",
            "docker-archive",
            "docker-archive:/tmp/d.tar:nginx:1",
        ),
        ("docker-archive:/tmp/d.tar:@1", "docker-archive", "docker-archive:/tmp/d.tar:@1"),
    ],
)
def test_endpoint_addresses(text: str, kind: str, rendered: str) -> None:
    address = parse_address(text)
    assert address.kind == kind
    assert str(address) == rendered


@pytest.mark.parametrize(
    "text",
    [
        "oci:",
        "oci:/x:",
        "oci-archive:",
        "docker-archive:/x.tar:",
        "docker-archive:x:Bad/X",
        "store:Bad/X",
    ],
)
def test_bad_endpoint_addresses_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_address(text)
