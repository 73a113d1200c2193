"""Container image references: docker's grammar and normalisation, as a pure parser.

    reference := [host[:port]/]path[:tag][@digest]

The grammar is distribution/reference (``regexp.go``); the normalisation is its ``normalize.go``:
the first path component is a registry host only if it contains ``.`` or ``:``, is
``localhost``, or has an upper-case letter; otherwise the registry is Docker Hub, where a
one-component name gets the ``library/`` namespace. Without tag or digest the tag is ``latest``.
Everything wrong raises ``InvalidReference`` with a one-line message naming the input.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from .digest import Digest
from .errors import InvalidDigest, InvalidReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# Host spellings that all mean Docker Hub; docker itself only folds index.docker.io.
_HUB_ALIASES = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_API})
_OFFICIAL = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255  # docker's NameTotalLengthMax, counted on the normalised "host/path"

# regexp.go. The separator is [-]+ where old docker had [-]*: the language is the same, but the
# empty alternative makes a failing match backtrack exponentially ("a" * 30 + "!").
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(
    rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[a-fA-F0-9:]+\])"  # name or [IPv6]
    r"(?::[0-9]+)?"
)
# re.ASCII: Go's \w is [0-9A-Za-z_]; Python's would also accept "é".
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
# A bare image ID. Docker refuses it as a name so that it cannot shadow a local image ID.
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")
_TAG_HINT = "a tag is 1-128 of A-Z a-z 0-9 _ . - and does not start with '.' or '-'"


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port] as written, Docker Hub folded to "docker.io"
    repository: str  # path below the registry, e.g. "library/nginx"
    tag: str | None  # None only when a digest was given without a tag (or parse_repository)
    digest: Digest | None

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        return self.name + self._suffix()

    @property
    def familiar(self) -> str:
        """Docker's short form: Docker Hub and ``library/`` left out where that is unambiguous."""
        if self.registry != DOCKER_HUB:
            return str(self)
        path = self.repository
        if path.startswith(_OFFICIAL) and "/" not in path[len(_OFFICIAL) :]:
            path = path[len(_OFFICIAL) :]
        # Docker would print "docker.io/my.org/x" as "my.org/x", which reads back as a host.
        first = path.split("/", 1)[0]
        if "/" in path and _looks_like_host(first):
            path = f"{DOCKER_HUB}/{path}"
        return path + self._suffix()

    @property
    def identifier(self) -> str:
        """What goes in ``/v2/<repository>/manifests/<identifier>``: the digest wins over a tag."""
        if self.digest is not None:
            return str(self.digest)
        if self.tag is None:
            raise ValueError(f"{self.name} has neither a tag nor a digest")
        return self.tag

    def with_tag(self, tag: str) -> Reference:
        """The same repository at ``tag``; a digest is dropped since it would win over the tag."""
        problem = _tag_problem(tag)
        if problem:
            raise InvalidReference(
                f"invalid tag {tag!r} for {self.name}: {problem}", hint=_TAG_HINT
            )
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: Digest) -> Reference:
        return replace(self, digest=digest)

    def is_loopback(self) -> bool:
        host = _strip_port(self.registry)
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            return False

    def _suffix(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return tag + digest


def parse(text: str) -> Reference:
    """Parse and normalise ``text``; the tag defaults to ``latest`` when no digest is given."""
    ref = _parse(text)
    if ref.tag is None and ref.digest is None:
        ref = replace(ref, tag=DEFAULT_TAG)
    return ref


def parse_repository(text: str) -> Reference:
    """Parse a bare repository name (``xfer tags REPO``): a tag or digest is an error."""
    ref = _parse(text)
    if ref.tag is not None or ref.digest is not None:
        raise InvalidReference(
            f"invalid repository {text!r}: expected a name without :tag or @digest",
            reference=text if text.isprintable() else None,
        )
    return ref


def _parse(text: str) -> Reference:
    # The message quotes the input with repr; a raw control character in ``reference`` would
    # be echoed by TransferError.__str__ and break the one-line rendering.
    shown = text if text.isprintable() else None

    def fail(what: str, hint: str | None = None) -> InvalidReference:
        return InvalidReference(f"invalid reference {text!r}: {what}", reference=shown, hint=hint)

    if not text:
        raise fail("empty")
    if _IDENTIFIER.fullmatch(text):
        raise fail("a bare 64-hex image ID is not a name", hint="write NAME@sha256:HEX")

    # Neither host, path nor tag may contain "@", so the first one starts the digest.
    rest, at, digest_text = text.partition("@")
    digest = None
    if at:
        if not digest_text:
            raise fail("'@' without a digest")
        try:
            digest = Digest.parse(digest_text)
        except InvalidDigest as err:
            raise fail(err.message) from err

    # A ":" after the last "/" starts the tag; one before it belongs to host:port.
    tag = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        problem = _tag_problem(tag)
        if problem:
            raise fail(problem, hint=_TAG_HINT)
    if not rest:
        raise fail("no repository name")

    # splitDockerDomain: only a first component that looks like a host is one.
    first, slash, path = rest.partition("/")
    if slash and _looks_like_host(first):
        registry = first
        if not _HOST.fullmatch(registry):
            raise fail(f"bad registry host {registry!r}")
        if registry.lower() in _HUB_ALIASES:
            registry = DOCKER_HUB
    else:
        registry, path = DOCKER_HUB, rest
    if registry == DOCKER_HUB and "/" not in path:
        path = _OFFICIAL + path

    if path != path.lower():
        raise fail("repository name must be lower-case")
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            if not component:
                raise fail("empty path component")
            raise fail(
                f"bad path component {component!r}: use a-z 0-9 joined by '.', '_', '__' or '-'"
            )
    if len(registry) + 1 + len(path) > NAME_MAX:
        raise fail(f"name longer than {NAME_MAX} characters")
    return Reference(registry, path, tag, digest)


def _tag_problem(tag: str) -> str | None:
    if _TAG.fullmatch(tag):
        return None
    if not tag:
        return "empty tag"
    if len(tag) > 128:
        return f"tag longer than 128 characters ({len(tag)})"
    return f"bad tag {tag!r}"


def _looks_like_host(component: str) -> bool:
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or component != component.lower()
    )


def _strip_port(registry: str) -> str:
    if registry.startswith("["):
        return registry[: registry.index("]") + 1]
    return registry.partition(":")[0]
