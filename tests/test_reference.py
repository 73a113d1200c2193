"""Image references: docker's grammar and normalisation (cases from distribution/reference's
``reference_test.go`` and ``normalize_test.go``, plus xfer's own edges)."""

from __future__ import annotations

import time

import pytest

from transfer.digest import Digest
from transfer.errors import InvalidReference, UsageError
from transfer.reference import Reference, parse, parse_repository

HEX = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"  # 64
D256 = f"sha256:{HEX}"
D512 = f"sha512:{HEX}{HEX}"
IMAGE_ID = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"
TAG128 = "t" * 128

# text, registry, repository, tag, digest
GOOD = [
    pytest.param("ubuntu", "docker.io", "library/ubuntu", "latest", None,
                 id="bare-name-gets-docker-hub-library-and-latest"),
    pytest.param("docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None,
                 id="explicit-docker-hub-one-component-gets-library"),
    pytest.param("docker.io/library/ubuntu", "docker.io", "library/ubuntu", "latest", None,
                 id="fully-qualified-hub-name-unchanged"),
    pytest.param("index.docker.io/library/x", "docker.io", "library/x", "latest", None,
                 id="legacy-index-host-folds-to-docker-io"),
    pytest.param("index.docker.io/debian", "docker.io", "library/debian", "latest", None,
                 id="legacy-index-host-one-component-gets-library"),
    pytest.param("registry-1.docker.io/user/app", "docker.io", "user/app", "latest", None,
                 id="hub-api-host-folds-to-docker-io"),
    pytest.param("user/app:1", "docker.io", "user/app", "1", None,
                 id="two-components-without-host-are-hub-namespace"),
    pytest.param("library/debian", "docker.io", "library/debian", "latest", None,
                 id="explicit-library-namespace-kept"),
    pytest.param("localhost/app", "localhost", "app", "latest", None,
                 id="localhost-is-a-host-without-dot-or-port"),
    pytest.param("localhost:5000/a/b:tag", "localhost:5000", "a/b", "tag", None,
                 id="localhost-with-port-and-tag"),
    pytest.param("Registry.Example.com/app", "Registry.Example.com", "app", "latest", None,
                 id="upper-case-host-accepted-and-kept-as-written"),
    pytest.param("Uppercase/lowercase:tag", "Uppercase", "lowercase", "tag", None,
                 id="upper-case-first-component-is-a-host"),
    pytest.param(f"example.com:8080/ns/app@{D256}", "example.com:8080", "ns/app", None, D256,
                 id="digest-without-tag-leaves-tag-none"),
    pytest.param(f"example.com/app:1.0@{D256}", "example.com", "app", "1.0", D256,
                 id="tag-and-digest-together"),
    pytest.param("[::1]:5000/app:1", "[::1]:5000", "app", "1", None,
                 id="ipv6-loopback-host-with-port"),
    pytest.param("[2001:db8::1]/repo", "[2001:db8::1]", "repo", "latest", None,
                 id="ipv6-host-without-port"),
    pytest.param("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", "tag",
                 None, id="full-ipv6-host-with-tag"),
    pytest.param("[fc00::1]:5000/docker/docker", "[fc00::1]:5000", "docker/docker", "latest",
                 None, id="ipv6-host-with-port-and-namespace"),
    pytest.param("127.0.0.1:5000/app", "127.0.0.1:5000", "app", "latest", None,
                 id="ipv4-host-with-port"),
    pytest.param("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", "5050", None,
                 id="numeric-tag-after-slash-is-a-tag"),
    pytest.param("192.168.0.1", "docker.io", "library/192.168.0.1", "latest", None,
                 id="dotted-name-without-slash-is-a-hub-repository"),
    pytest.param("localhost:5000", "docker.io", "library/localhost", "5000", None,
                 id="host-port-without-slash-is-hub-name-and-tag"),
    pytest.param("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None,
                 id="underscore-dotted-name-with-tag-is-hub-repository"),
    pytest.param("foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com", "8080", None,
                 id="dots-in-later-component-do-not-make-a-host"),
    pytest.param("test_com/foo", "docker.io", "test_com/foo", "latest", None,
                 id="underscore-does-not-make-a-host"),
    pytest.param("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com",
                 "bar/baz/quux", "some-long-tag", None, id="deep-path-under-subdomain"),
    pytest.param("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io",
                 "test.example.com/my-app", "test.example.com", None,
                 id="host-like-path-component-and-dotted-tag"),
    pytest.param(f"xn--n3h.com/myimage:xn--n3h.com@{D512}", "xn--n3h.com", "myimage",
                 "xn--n3h.com", D512, id="punycode-host-with-sha512-digest"),
    pytest.param("a__b", "docker.io", "library/a__b", "latest", None,
                 id="double-underscore-separator"),
    pytest.param("a.b", "docker.io", "library/a.b", "latest", None, id="dot-separator"),
    pytest.param("a-b", "docker.io", "library/a-b", "latest", None, id="dash-separator"),
    pytest.param("a---b", "docker.io", "library/a---b", "latest", None,
                 id="repeated-dash-separator"),
    pytest.param("lowercase:Uppercase", "docker.io", "library/lowercase", "Uppercase", None,
                 id="upper-case-tag-allowed"),
    pytest.param(f"x:{TAG128}", "docker.io", "library/x", TAG128, None,
                 id="tag-of-128-characters-allowed"),
    pytest.param(f"docker.io/{IMAGE_ID}", "docker.io", f"library/{IMAGE_ID}", "latest", None,
                 id="hex-name-allowed-when-not-alone"),
    pytest.param(f"sha256:{HEX}", "docker.io", "library/sha256", HEX, None,
                 id="digest-looking-text-alone-is-hub-name-sha256-with-tag"),
    pytest.param("example.com/" + "a" * 243, "example.com", "a" * 243, "latest", None,
                 id="name-of-exactly-255-characters-allowed"),
    pytest.param("a" * 237, "docker.io", "library/" + "a" * 237, "latest", None,
                 id="hub-name-255-after-normalisation-allowed"),
    pytest.param("LOCALHOST/app", "LOCALHOST", "app", "latest", None,
                 id="upper-case-localhost-is-a-host"),
    pytest.param("127.0.0.1:5000/library/debian", "127.0.0.1:5000", "library/debian",
                 "latest", None, id="library-namespace-kept-on-private-registry"),
]  # fmt: skip

# text, a fragment the message must contain
BAD = [
    pytest.param("", "empty", id="empty-string"),
    pytest.param("bench/Case:1", "lower-case", id="upper-case-in-second-component"),
    pytest.param("docker.io/docker/Docker", "lower-case", id="upper-case-after-hub-host"),
    pytest.param("Uppercase:tag", "lower-case", id="upper-case-single-component"),
    pytest.param("a:b:c", "bad path component", id="two-colons-without-slash"),
    pytest.param(f"x:{TAG128}t", "longer than 128", id="tag-of-129-characters"),
    pytest.param("x:-tag", "bad tag", id="tag-starting-with-dash"),
    pytest.param("x:.tag", "bad tag", id="tag-starting-with-dot"),
    pytest.param("x:tag\n", "bad tag", id="trailing-newline-not-swallowed-by-anchor"),
    pytest.param("x:tagé", "bad tag", id="non-ascii-tag-word-character"),
    pytest.param("x:", "empty tag", id="trailing-colon"),
    pytest.param(":tag", "no repository name", id="tag-without-name"),
    pytest.param("x@sha256:../x", "invalid digest", id="path-traversal-digest"),
    pytest.param(f"x@sha256:{HEX.upper()}", "lower-case hex", id="upper-case-digest-hex"),
    pytest.param(f"x@md5:{HEX[:32]}", "unsupported algorithm", id="md5-digest"),
    pytest.param(f"x@sha256:{HEX[:63]}", "64", id="short-sha256-digest"),
    pytest.param("x@", "without a digest", id="at-sign-without-digest"),
    pytest.param(f"@{D256}", "no repository name", id="digest-without-name"),
    pytest.param(f"x@{D256}@{D256}", "invalid digest", id="two-at-signs"),
    pytest.param("-x", "bad path component", id="leading-dash"),
    pytest.param("x-", "bad path component", id="trailing-dash"),
    pytest.param("-docker/docker", "bad path component", id="leading-dash-namespace"),
    pytest.param("x__", "bad path component", id="trailing-separator"),
    pytest.param("a___b", "bad path component", id="triple-underscore"),
    pytest.param("x//y", "empty path component", id="double-slash"),
    pytest.param("docker///docker", "empty path component", id="triple-slash"),
    pytest.param("x/", "empty path component", id="trailing-slash"),
    pytest.param("//x", "empty path component", id="leading-double-slash"),
    pytest.param("aa/asdf$$^/aa", "bad path component", id="punctuation-in-path"),
    pytest.param("ubuntu ", "bad path component", id="trailing-space"),
    pytest.param(IMAGE_ID, "64-hex", id="bare-image-id-refused"),
    pytest.param("example.com/" + "a" * 244, "longer than 255", id="name-of-256-characters"),
    pytest.param("a" * 238, "longer than 255", id="hub-name-over-255-after-library-prefix"),
    pytest.param("https://github.com/docker/docker", "bad registry host", id="url-scheme"),
    pytest.param("-docker.io/docker/docker", "bad registry host", id="host-leading-dash"),
    pytest.param("exa_mple.com/app", "bad registry host", id="underscore-in-host"),
    pytest.param("example.com:port/app", "bad registry host", id="non-numeric-port"),
    pytest.param("fc00::1:5000/debian", "bad registry host", id="ipv6-host-without-brackets"),
    pytest.param("[fe80::1%eth0]:5000/debian", "bad registry host", id="ipv6-zone-in-host"),
    pytest.param("[2001:db8:3:4::192.0.2.33]:5000/debian", "bad registry host",
                 id="ipv6-with-embedded-ipv4-refused-as-docker-does"),
    pytest.param("[fc00::1]:5000", "bad path component", id="ipv6-host-without-repository"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), GOOD)
def test_parse_normalises_valid_reference(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert ref.digest == (Digest.parse(digest) if digest else None)


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), GOOD)
def test_str_and_familiar_parse_back_to_the_same_reference(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = parse(text)
    assert parse(str(ref)) == ref
    assert parse(ref.familiar) == ref


@pytest.mark.parametrize(("text", "fragment"), BAD)
def test_parse_rejects_invalid_reference_with_one_line_usage_error(
    text: str, fragment: str
) -> None:
    with pytest.raises(InvalidReference) as info:
        parse(text)
    err = info.value
    assert isinstance(err, UsageError) and err.exit_code == 2
    assert fragment in err.message
    assert repr(text) in err.message  # names the input
    assert "\n" not in str(err)


def test_bare_image_id_error_hints_at_digest_form() -> None:
    with pytest.raises(InvalidReference) as info:
        parse(IMAGE_ID)
    assert info.value.hint is not None and "@sha256:" in info.value.hint


def test_long_invalid_name_fails_fast_without_regex_backtracking() -> None:
    # With docker's old separator [-]* this input takes longer than the age of the universe.
    start = time.perf_counter()
    with pytest.raises(InvalidReference):
        parse("a" * 200 + "!")
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("ubuntu", "docker.io/library/ubuntu:latest", id="hub-official-in-full"),
        pytest.param("nginx:1.25", "docker.io/library/nginx:1.25", id="tag-kept"),
        pytest.param(f"nginx@{D256}", f"docker.io/library/nginx@{D256}", id="digest-only"),
        pytest.param(
            f"example.com:8080/ns/app:1@{D256}",
            f"example.com:8080/ns/app:1@{D256}",
            id="private-registry-tag-and-digest",
        ),
        pytest.param("index.docker.io/user/app", "docker.io/user/app:latest", id="hub-folded"),
    ],
)
def test_str_is_full_normalised_form(text: str, expected: str) -> None:
    assert str(parse(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("ubuntu", "ubuntu:latest", id="official-image-drops-host-and-library"),
        pytest.param("index.docker.io/library/nginx:1.25", "nginx:1.25", id="legacy-host-too"),
        pytest.param("user/app:1", "user/app:1", id="hub-namespace-drops-host"),
        pytest.param(
            "docker.io/library/foo/bar", "library/foo/bar:latest", id="nested-library-keeps-it"
        ),
        pytest.param(
            "docker.io/my.org/app",
            "docker.io/my.org/app:latest",
            id="host-like-namespace-keeps-hub",
        ),
        pytest.param("localhost:5000/a:1", "localhost:5000/a:1", id="private-registry-unchanged"),
        pytest.param(f"nginx@{D256}", f"nginx@{D256}", id="digest-only-has-no-tag"),
    ],
)
def test_familiar_is_dockers_short_form(text: str, expected: str) -> None:
    assert parse(text).familiar == expected


@pytest.mark.parametrize(
    ("text", "registry", "api_host"),
    [
        pytest.param("ubuntu", "docker.io", "registry-1.docker.io", id="hub-api-host"),
        pytest.param(
            "registry-1.docker.io/a/b", "docker.io", "registry-1.docker.io", id="hub-api-as-input"
        ),
        pytest.param("localhost:5000/a", "localhost:5000", "localhost:5000", id="private-as-is"),
        pytest.param("[::1]:5000/a", "[::1]:5000", "[::1]:5000", id="ipv6-as-is"),
    ],
)
def test_api_host_maps_docker_hub_to_its_registry_host(
    text: str, registry: str, api_host: str
) -> None:
    ref = parse(text)
    assert (ref.registry, ref.api_host) == (registry, api_host)
    assert ref.name == f"{registry}/{ref.repository}"


@pytest.mark.parametrize(
    ("text", "identifier"),
    [
        pytest.param("ubuntu", "latest", id="default-tag"),
        pytest.param("ubuntu:22.04", "22.04", id="tag"),
        pytest.param(f"ubuntu@{D256}", D256, id="digest"),
        pytest.param(f"ubuntu:22.04@{D256}", D256, id="digest-wins-over-tag"),
    ],
)
def test_identifier_is_digest_else_tag(text: str, identifier: str) -> None:
    assert parse(text).identifier == identifier


def test_identifier_of_bare_repository_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        _ = parse_repository("ubuntu").identifier


@pytest.mark.parametrize(
    ("text", "loopback"),
    [
        pytest.param("localhost/a", True, id="localhost"),
        pytest.param("localhost:5000/a", True, id="localhost-port"),
        pytest.param("LOCALHOST/a", True, id="localhost-any-case"),
        pytest.param("127.0.0.1:5000/a", True, id="ipv4-loopback"),
        pytest.param("127.1.2.3/a", True, id="whole-127-slash-8"),
        pytest.param("[::1]:5000/a", True, id="ipv6-loopback-port"),
        pytest.param("[::1]/a", True, id="ipv6-loopback"),
        pytest.param("ubuntu", False, id="docker-hub"),
        pytest.param("example.com/a", False, id="public-name"),
        pytest.param("localhost.example.com/a", False, id="localhost-prefixed-name"),
        pytest.param("10.0.0.1:5000/a", False, id="private-ipv4"),
        pytest.param("128.0.0.1/a", False, id="just-outside-127-slash-8"),
        pytest.param("[2001:db8::1]:5000/a", False, id="other-ipv6"),
    ],
)
def test_is_loopback(text: str, loopback: bool) -> None:
    assert parse(text).is_loopback() is loopback


def test_with_tag_replaces_tag_and_drops_digest() -> None:
    ref = parse(f"example.com/app:1@{D256}").with_tag("2")
    assert (ref.tag, ref.digest, str(ref)) == ("2", None, "example.com/app:2")
    assert parse("x").with_tag(TAG128).tag == TAG128


@pytest.mark.parametrize(
    "tag",
    [
        pytest.param("", id="empty"),
        pytest.param("-x", id="leading-dash"),
        pytest.param("a b", id="space"),
        pytest.param("a:b", id="colon"),
        pytest.param(TAG128 + "t", id="129-characters"),
    ],
)
def test_with_tag_validates_the_tag(tag: str) -> None:
    with pytest.raises(InvalidReference, match="invalid tag"):
        parse("x").with_tag(tag)


def test_with_digest_keeps_tag() -> None:
    ref = parse("example.com/app:1").with_digest(Digest.parse(D256))
    assert str(ref) == f"example.com/app:1@{D256}"
    assert ref.identifier == D256


def test_reference_is_frozen_and_hashable() -> None:
    assert len({parse("ubuntu"), parse("docker.io/library/ubuntu:latest")}) == 1
    with pytest.raises(AttributeError):
        parse("ubuntu").tag = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("ubuntu", Reference("docker.io", "library/ubuntu", None, None), id="hub"),
        pytest.param(
            "localhost:5000/a/b", Reference("localhost:5000", "a/b", None, None), id="private"
        ),
    ],
)
def test_parse_repository_normalises_without_default_tag(text: str, expected: Reference) -> None:
    ref = parse_repository(text)
    assert ref == expected
    assert str(ref) == ref.name


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("ubuntu:22.04", "without :tag or @digest", id="tag-refused"),
        pytest.param(f"ubuntu@{D256}", "without :tag or @digest", id="digest-refused"),
        pytest.param("localhost:5000", "without :tag or @digest", id="bare-host-port-reads-as-tag"),
        pytest.param("bench/Case", "lower-case", id="grammar-still-enforced"),
        pytest.param("", "empty", id="empty"),
    ],
)
def test_parse_repository_rejects_tag_digest_and_bad_names(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference, match=fragment):
        parse_repository(text)
