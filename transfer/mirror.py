"""`xfer mirror`: many repositories and tags from a skopeo-sync YAML file into one registry.

The configuration is skopeo sync's source format, so users bring the file they have:

    registry.example.com:
      images:            {busybox: [], redis: ["7.2", "sha256:…"]}   # [] = every tag
      images-by-tag-regex: {nginx: '^1\\.25\\.\\d+$'}
      images-by-semver:  {alpine: ">= 3.18.0, < 4"}
      credentials:       {username: u, password: p}
      tls-verify:        false

Each image lands at ``DEST/<repository>:<tag>`` (``--scoped``: ``DEST/<host>/<repository>``, a
port written ``host_5000`` since a colon cannot stand in a repository path).
A rerun asks each side for the manifest digest (one HEAD each) and copies only what changed;
blobs already pushed to another repository of the target during the run are mounted, so a
layer shared by many images crosses the network once. ``--platform`` mirrors that image of each
index (and compares against it on a rerun). A tag the source lists that is not a valid tag
(``../x``, control characters) is skipped with a warning and listed in the report, as skopeo
sync does: no rerun could copy it, so it does not fail the mirror.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import semver
import yaml

from .api import Settings, copy, session_for
from .auth import Credentials
from .copy import CopyResult
from .digest import Digest
from .endpoints.address import Address
from .errors import InvalidReference, TransferError, UsageError
from .manifest import IMAGE_TYPES, Platform
from .progress import Emit, Message, ignore
from .reference import Reference, parse
from .session import Session
from .transport import TransportOptions

MAX_CONFIG_BYTES = 4 << 20


@dataclass(frozen=True)
class SyncSource:
    registry: str
    images: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # () = every tag
    tag_regex: Mapping[str, str] = field(default_factory=dict)
    semver: Mapping[str, str] = field(default_factory=dict)
    tls_verify: bool = True
    credentials: Credentials | None = None


def parse_config(text: str) -> list[SyncSource]:
    """skopeo sync's YAML source format; unknown keys are errors, not silently ignored."""
    if len(text) > MAX_CONFIG_BYTES:
        raise UsageError("mirror configuration is larger than 4 MiB")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"mirror configuration is not valid YAML: {_first_line(exc)}") from None
    if not isinstance(data, dict) or not data:
        raise UsageError("mirror configuration must map registry hosts to their images")
    return [_source(str(host), body) for host, body in data.items()]


def _source(host: str, body: Any) -> SyncSource:
    if not isinstance(body, dict):
        raise UsageError(f"mirror configuration: {host} must be a mapping")
    known = {"images", "images-by-tag-regex", "images-by-semver", "credentials", "tls-verify"}
    unknown = set(body) - known - {"cert-dir"}
    if unknown:
        raise UsageError(f"mirror configuration: {host}: unknown keys {sorted(unknown)}")
    images: dict[str, tuple[str, ...]] = {}
    for repo, tags in (body.get("images") or {}).items():
        if tags is not None and not isinstance(tags, list):
            raise UsageError(f"mirror configuration: {host}/{repo}: tags must be a list")
        images[str(repo)] = tuple(str(t) for t in tags or ())
    regexes = {str(k): str(v) for k, v in (body.get("images-by-tag-regex") or {}).items()}
    for repo, pattern in regexes.items():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"mirror configuration: {host}/{repo}: bad regex: {exc}") from None
    ranges = {str(k): str(v) for k, v in (body.get("images-by-semver") or {}).items()}
    for repo, constraint in ranges.items():
        _constraint(constraint, f"{host}/{repo}")
    creds = body.get("credentials")
    credentials = None
    if creds:
        if not isinstance(creds, dict) or "username" not in creds:
            raise UsageError(f"mirror configuration: {host}: credentials need a username")
        credentials = Credentials(str(creds["username"]), str(creds.get("password", "")))
    return SyncSource(
        registry=host,
        images=images,
        tag_regex=regexes,
        semver=ranges,
        tls_verify=bool(body.get("tls-verify", True)),
        credentials=credentials,
    )


_COMPARISON = re.compile(r"^\s*(>=|<=|==|!=|>|<|=)?\s*v?([0-9][0-9A-Za-z.+-]*)\s*$")


def _constraint(text: str, where: str) -> list[tuple[str, semver.Version]]:
    """ ">= 1.2, < 2" → [(">=", 1.2.0), ("<", 2.0.0)] (comma or space separated, all must hold)."""
    parts = [p for p in re.split(r"\s*,\s*|\s+(?=[<>=!])", text.strip()) if p]
    terms = []
    for part in parts:
        match = _COMPARISON.match(part)
        version = _version(match.group(2)) if match else None
        if match is None or version is None:
            raise UsageError(f"mirror configuration: {where}: bad semver constraint {text!r}")
        terms.append((match.group(1) or "==", version))
    return terms


def _version(tag: str) -> semver.Version | None:
    try:
        return semver.Version.parse(tag.removeprefix("v"), optional_minor_and_patch=True)
    except (ValueError, TypeError):
        return None


def matches_semver(tag: str, constraint: str) -> bool:
    version = _version(tag)
    if version is None or version.prerelease:  # like Masterminds: no pre-releases by default
        return False
    compare = {
        ">=": version.__ge__,
        "<=": version.__le__,
        ">": version.__gt__,
        "<": version.__lt__,
        "==": version.__eq__,
        "=": version.__eq__,
        "!=": version.__ne__,
    }
    return all(compare[op](bound) for op, bound in _constraint(constraint, constraint))


@dataclass(frozen=True)
class MirrorItem:
    source: Reference
    target: Reference


@dataclass(frozen=True)
class SkippedTag:
    """A tag the source registry listed that is not a valid tag: never copied."""

    repository: str  # host/repository
    tag: str  # as the registry sent it (escape it before showing it)
    reason: str


@dataclass
class MirrorReport:
    copied: list[CopyResult] = field(default_factory=list)
    unchanged: list[MirrorItem] = field(default_factory=list)
    failed: list[tuple[MirrorItem, str]] = field(default_factory=list)
    skipped: list[SkippedTag] = field(default_factory=list)


def _target(source: Reference, destination: str, scoped: bool) -> Reference:
    # A port cannot stand in a repository path: "host:5000" scopes as "host_5000".
    scope = source.registry.lower().replace(":", "_").strip("[]")
    repository = f"{scope}/{source.repository}" if scoped else source.repository
    text = f"{destination.rstrip('/')}/{repository}"
    return parse(f"{text}@{source.digest}" if source.tag is None else f"{text}:{source.tag}")


async def plan(
    sources: list[SyncSource],
    settings: Settings,
    emit: Emit = ignore,
    *,
    skipped: list[SkippedTag] | None = None,
    session: Session | None = None,
) -> list[tuple[Reference, SyncSource]]:
    """Every source reference to mirror (tags listed from the registry where needed). A tag
    the registry lists that no reference can name (``../x``, control characters) is left out
    and added to ``skipped``: the source's defect must not stop the rest of the mirror."""
    from .api import tags

    skipped = skipped if skipped is not None else []
    wanted: list[tuple[Reference, SyncSource]] = []

    def add(base: Reference, tag: str, source: SyncSource) -> None:
        ref = _tagged(base, tag, skipped, emit)
        if ref is not None:
            wanted.append((ref, source))

    for source in sources:
        source_settings = _settings_for(source, settings)
        for repo, listed in source.images.items():
            base = parse(f"{source.registry}/{repo}")
            for entry in listed:  # the configuration's own entries: a bad one is a usage error
                if ":" in entry:  # skopeo sync lists digests among the tags
                    digest = Digest.parse(entry)
                    wanted.append((Reference(base.registry, base.repository, None, digest), source))
                else:
                    wanted.append((base.with_tag(entry), source))
            if not listed:
                for tag in await tags(base.name, source_settings, session=session):
                    add(base, tag, source)
        for repo, pattern in source.tag_regex.items():
            base = parse(f"{source.registry}/{repo}")
            regex = re.compile(pattern)
            for tag in await tags(base.name, source_settings, session=session):
                if regex.search(tag):
                    add(base, tag, source)
        for repo, constraint in source.semver.items():
            base = parse(f"{source.registry}/{repo}")
            for tag in await tags(base.name, source_settings, session=session):
                if matches_semver(tag, constraint):
                    add(base, tag, source)
    emit(Message(f"mirror: {len(wanted)} images to check"))
    return wanted


def _tagged(base: Reference, tag: str, skipped: list[SkippedTag], emit: Emit) -> Reference | None:
    """``base:tag`` for a tag the registry listed, or None (reported) when it is not a tag."""
    try:
        return base.with_tag(tag)
    except InvalidReference as exc:
        skipped.append(SkippedTag(base.name, tag, exc.message))
        emit(Message(f"warning: {base.name} lists {tag!r}, which is not a valid tag: skipped"))
        return None


def _settings_for(source: SyncSource, settings: Settings) -> Settings:
    transport: TransportOptions = settings.transport
    if not source.tls_verify:
        transport = replace(transport, insecure=True)
    return replace(
        settings, transport=transport, credentials=source.credentials or settings.credentials
    )


async def mirror(
    config_text: str,
    destination: str,
    settings: Settings | None = None,
    *,
    dest_settings: Settings | None = None,
    scoped: bool = False,
    platform: Platform | None = None,
    emit: Emit = ignore,
    session: Session | None = None,
) -> MirrorReport:
    """Mirror what the configuration names into ``destination`` (``host[:port][/prefix]``):
    each whole index, or with ``platform`` only that image of it (the target tag then names
    the image's manifest). One session serves the whole run: each registry's connections and
    tokens are reused from image to image."""
    _check_destination(destination)
    sources = parse_config(config_text)
    async with session_for(settings, session) as (settings, session):
        dest_settings = dest_settings or replace(settings, credentials=None)
        return await _mirror(
            sources, destination, settings, dest_settings, session, scoped, platform, emit
        )


async def _mirror(
    sources: list[SyncSource],
    destination: str,
    settings: Settings,
    dest_settings: Settings,
    session: Session,
    scoped: bool,
    platform: Platform | None,
    emit: Emit,
) -> MirrorReport:
    report = MirrorReport()
    mounts: dict[Digest, str] = {}  # blob → a target repository that has it: mount, not upload
    wanted = await plan(sources, settings, emit, skipped=report.skipped, session=session)
    for ref, source in wanted:
        item = MirrorItem(ref, _target(ref, destination, scoped))
        source_settings = _settings_for(source, settings)
        try:
            if await _unchanged(item, session, source_settings, dest_settings, platform):
                report.unchanged.append(item)
                emit(Message(f"unchanged {item.target}"))
                continue
            result = await copy(
                Address("registry", reference=item.source),
                Address("registry", reference=item.target),
                source_settings,
                platform=platform,
                dest_settings=dest_settings,
                mounts=mounts,
                emit=emit,
                session=session,
            )
            report.copied.append(result)
        except UsageError:
            raise
        except TransferError as exc:  # one bad image does not stop the others
            report.failed.append((item, str(exc)))
            emit(Message(f"failed {item.source}: {exc}"))
    return report


async def _unchanged(
    item: MirrorItem,
    session: Session,
    source: Settings,
    target: Settings,
    platform: Platform | None = None,
) -> bool:
    """The target tag already names what the copy would put there: one HEAD on each side
    (the source's index is read to find the platform's image when one is chosen)."""
    client = session.client(item.target, settings=target)
    there = await client.head_manifest(item.target.repository, item.target.identifier)
    if there is None:
        return False
    if item.source.digest is not None and platform is None:
        return there.digest == item.source.digest
    client = session.client(item.source, settings=source)
    here = await client.head_manifest(item.source.repository, item.source.identifier)
    if here is not None and platform is not None and here.media_type not in IMAGE_TYPES:
        # An index (or a registry that did not say): the platform's image is what is copied.
        manifest = await client.get_manifest(item.source.repository, str(here.digest))
        if manifest.is_index:
            here = manifest.index().select(platform)
    return here is not None and here.digest == there.digest


def _check_destination(destination: str) -> None:
    """``host[:port][/prefix]``: the first part must read as a registry host, as docker reads it."""
    try:
        probe = parse(f"{destination.rstrip('/')}/x")
    except UsageError:
        probe = None
    if probe is None or probe.registry != destination.split("/")[0]:
        raise UsageError(f"invalid mirror destination {destination!r}: use host[:port][/prefix]")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
