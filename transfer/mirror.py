"""`xfer mirror`: many repositories and tags from a skopeo-sync YAML file into one registry.

(Into a bundle, ``oci-archive:FILE`` or ``oci:DIR``, and from one into a registry:
``transfer.bundle``, which uses the plan below.)

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
Signatures, SBOMs and attestations travel with their image (copy.py), also for an image a rerun
finds unchanged (they may not be); so the tags that name a digest (``sha256-<hex>``, with
``.sig``/``.att``/``.sbom``) are not mirrored as images of their own, and the plan's tag listing
is what finds them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import semver
import yaml

from .api import MIRROR_IMAGES, Settings, copy, session_for
from .auth import Credentials
from .client import RegistryClient
from .copy import (
    CopyOptions,
    CopyResult,
    PlatformChoice,
    carry_referrers,
    choosing,
    filter_index,
    resolve,
)
from .digest import Digest
from .endpoints.address import Address
from .endpoints.registry import RegistryDestination, RegistrySource, RunMounts
from .errors import InvalidReference, TransferError, UsageError, first_error
from .manifest import IMAGE_TYPES, Descriptor
from .progress import Emit, Message, ignore
from .reference import Reference, parse
from .referrers import is_referrer_tag
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
    plan: list[PlanEntry] = field(default_factory=list)  # every image and what the run did
    copied_items: list[tuple[MirrorItem, CopyResult]] = field(default_factory=list)
    # An export into a bundle (transfer.bundle): where, its root digest (index.json's), and
    # how many blobs it relies on from outside (an incremental bundle).
    bundle: str | None = None
    root: Digest | None = None
    relied_on: int = 0


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

    # (repository, source, which tags) in the configuration's order; the tag lists are
    # fetched all at once (bounded), the order of the result stays the configuration's.
    listings: list[tuple[Reference, SyncSource, Callable[[str], bool]]] = []
    for source in sources:
        for repo, listed in source.images.items():
            base = parse(f"{source.registry}/{repo}")
            for entry in listed:  # the configuration's own entries: a bad one is a usage error
                if ":" in entry:  # skopeo sync lists digests among the tags
                    digest = Digest.parse(entry)
                    wanted.append((Reference(base.registry, base.repository, None, digest), source))
                else:
                    wanted.append((base.with_tag(entry), source))
            if not listed:
                listings.append((base, source, lambda tag: True))
        for repo, pattern in source.tag_regex.items():
            listings.append((parse(f"{source.registry}/{repo}"), source, _by_regex(pattern)))
        for repo, constraint in source.semver.items():
            listings.append((parse(f"{source.registry}/{repo}"), source, _by_semver(constraint)))
    found: list[list[str]] = [[] for _ in listings]
    limiter = anyio.CapacityLimiter(HEADS_AT_ONCE)

    async def list_tags(at: int, base: Reference, source: SyncSource) -> None:
        async with limiter:
            own = _settings_for(source, settings)
            found[at] = await tags(base.name, own, session=session)
        if session is not None and settings.referrers:
            # The referrers' discovery reads this listing instead of listing again.
            session.client(base, settings=own).remember_tags(base.repository, found[at])

    async with anyio.create_task_group() as group:
        for at, (base, source, _) in enumerate(listings):
            group.start_soon(list_tags, at, base, source)
    for (base, source, chosen), listed_tags in zip(listings, found, strict=True):
        for tag in listed_tags:
            # sha256-<hex>[.sig|.att|.sbom] travel with their subject, not as images.
            if chosen(tag) and not (settings.referrers and is_referrer_tag(tag)):
                add(base, tag, source)
    emit(Message(f"mirror: {len(wanted)} images to check"))
    return wanted


def _by_regex(pattern: str) -> Callable[[str], bool]:
    regex = re.compile(pattern)
    return lambda tag: regex.search(tag) is not None


def _by_semver(constraint: str) -> Callable[[str], bool]:
    return lambda tag: matches_semver(tag, constraint)


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


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count``: the target repositories whose stable hash mod ``count``
    is ``index``, so a repository's tags stay with one worker and every worker of a fleet
    agrees on the split without talking to the others."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str, environ: Mapping[str, str] | None = None) -> Shard:
        """``I/N`` (0-based) or ``auto/N``, I from ``$JOB_COMPLETION_INDEX`` (what a Kubernetes
        Indexed Job sets in each of its pods)."""
        environ = os.environ if environ is None else environ
        index_text, slash, count_text = text.partition("/")
        if not slash or not count_text.isdigit() or int(count_text) < 1:
            raise UsageError(f"--shard {text!r}: expected I/N or auto/N, N at least 1")
        count = int(count_text)
        if index_text == "auto":
            value = environ.get("JOB_COMPLETION_INDEX")
            if value is None:
                raise UsageError(
                    f"--shard auto/{count}: JOB_COMPLETION_INDEX is not set "
                    "(run as a Kubernetes Indexed Job, or give I/N)"
                )
            index_text, where = value.strip(), f"JOB_COMPLETION_INDEX={value!r}"
        else:
            where = f"--shard {text!r}"
        if not index_text.isdigit() or int(index_text) >= count:
            raise UsageError(f"{where}: the index must be 0 to {count - 1}")
        return cls(int(index_text), count)

    def owns(self, target: Reference) -> bool:
        digest = hashlib.sha256(f"{target.registry}/{target.repository}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


HEADS_AT_ONCE = 32  # tag lists and manifest HEADs of the plan in flight at once (small requests)

COPY, UNCHANGED, SKIP, FAILED = "copy", "unchanged", "skip", "failed"


@dataclass
class PlanEntry:
    """What the run does with one image: copy, unchanged (the target tag already names what a
    copy would put there), skip (a tag no reference can name) or failed (its HEAD failed)."""

    source: str
    target: str
    action: str
    digest: Digest | None = None  # the source's, as the HEAD answered
    # --dry-run only: the declared sizes (from the manifests) of the blobs the target
    # repository lacks, each blob counted once per run.
    bytes: int | None = None
    reason: str | None = None
    item: MirrorItem | None = field(default=None, repr=False)
    settings: Settings | None = field(default=None, repr=False)
    subject: Descriptor | None = field(default=None, repr=False)  # the source's HEAD

    def as_json(self) -> dict[str, Any]:
        return {
            "event": "plan",
            "action": self.action,
            "source": self.source,
            "target": self.target,
            "digest": str(self.digest) if self.digest else None,
            "bytes": self.bytes,
            **({"reason": self.reason} if self.reason else {}),
        }


@dataclass(frozen=True)
class MirrorRun:
    """How a mirror run goes, whichever its source and destination (registries, a bundle): the
    platforms kept, images at once, this worker's shard, a plan only, where progress goes and
    the session it runs in (None: one of its own). One value for the YAML mirror, the export,
    the re-pack and the import, so none of them repeats the others' options."""

    platform: PlatformChoice = None
    images: int = MIRROR_IMAGES
    shard: Shard | None = None
    dry_run: bool = False
    emit: Emit = ignore
    session: Session | None = None

    def __post_init__(self) -> None:
        if self.images < 1:
            raise UsageError("--images must be at least 1")


async def mirror(
    config_text: str,
    destination: str,
    settings: Settings | None,
    how: MirrorRun,
    *,
    dest_settings: Settings | None = None,
    scoped: bool = False,
) -> MirrorReport:
    """Mirror what the configuration names into ``destination`` (``host[:port][/prefix]``):
    each whole index, or with ``platform`` only that image of it (the target tag then names
    the image's manifest). First a plan: the tag lists, then one manifest HEAD per image on
    each side, all at once; then up to ``images`` copies at once, over one session (each
    registry's connections and tokens shared by every image). ``shard`` keeps this worker's
    share; ``dry_run`` stops after the plan, with the bytes each copy would move."""
    _check_destination(destination)
    platform, emit, images, shard = how.platform, how.emit, how.images, how.shard
    sources = parse_config(config_text)
    async with session_for(settings, how.session) as (settings, session):
        dest_settings = dest_settings or replace(settings, credentials=None)
        run = _Run(settings, dest_settings, session, platform, emit, images)
        report = MirrorReport()
        wanted = await plan(sources, settings, emit, skipped=report.skipped, session=session)
        entries = [
            PlanEntry(str(s.repository) + ":" + s.tag, "", SKIP, reason=s.reason)
            for s in report.skipped
        ]
        items = [
            (MirrorItem(ref, _target(ref, destination, scoped)), _settings_for(source, settings))
            for ref, source in wanted
        ]
        if shard is not None:
            items = [(item, s) for item, s in items if shard.owns(item.target)]
            emit(Message(f"mirror: shard {shard.index}/{shard.count}: {len(items)} images"))
        entries = await run.states(items) + entries
        refuse_clashes(entries)
        report.plan = entries
        if how.dry_run:
            await run.sizes([e for e in entries if e.action == COPY])
            return report
        await run.copies(entries, report)
        return report


@dataclass
class _Run:
    settings: Settings
    dest_settings: Settings
    session: Session
    platform: PlatformChoice
    emit: Emit
    images: int

    async def states(self, items: list[tuple[MirrorItem, Settings]]) -> list[PlanEntry]:
        """Each image's action, from one manifest HEAD per side, all HEADs at once (bounded)."""
        entries = [
            PlanEntry(str(item.source), str(item.target), COPY, item=item, settings=s)
            for item, s in items
        ]
        limiter = anyio.CapacityLimiter(HEADS_AT_ONCE)
        # Each host first answers one GET /v2/ (its scheme and challenge learned, a connection
        # kept), so the HEADs that follow, all at once, go with a token: one HEAD per tag.
        # Their tokens: one request for the pull scopes of a host's repositories, not one each.
        clients: dict[int, RegistryClient] = {}
        for item, s in items:
            sides = (item.source, item.target)  # no clients when making them failed: none
            for client, reference in zip(self._clients(item, s), sides, strict=False):
                clients[id(client)] = client
                client.expect_pulls([reference.repository])
        async with anyio.create_task_group() as group:
            for client in clients.values():
                group.start_soon(client.greet)

        async def decide(entry: PlanEntry) -> None:
            assert entry.item is not None and entry.settings is not None
            try:
                async with limiter:
                    unchanged, digest, entry.subject = await _unchanged(
                        entry.item, self.session, entry.settings, self.dest_settings, self.platform
                    )
            except UsageError:
                raise
            except TransferError as exc:
                entry.action, entry.reason = FAILED, str(exc)
                return
            entry.digest = digest
            entry.action = UNCHANGED if unchanged else COPY

        async with anyio.create_task_group() as group:
            for entry in entries:
                group.start_soon(decide, entry)
        return entries

    def _clients(self, item: MirrorItem, settings: Settings) -> list[RegistryClient]:
        """The clients the image's HEADs will use (none if making them fails: its HEADs then
        fail with the reason, for this image only)."""
        try:
            return [
                self.session.client(item.source, settings=settings),
                self.session.client(item.target, settings=self.dest_settings),
            ]
        except TransferError:
            return []

    async def sizes(self, entries: list[PlanEntry]) -> None:
        """--dry-run: the manifests' declared sizes of the blobs each target repository lacks
        (a HEAD per blob), a blob shared by several images counted for the first only."""
        counted: set[Digest] = set()
        options = CopyOptions(*choosing(self.platform), jobs=self.settings.jobs)
        limiter = anyio.CapacityLimiter(self.images)

        async def size(entry: PlanEntry) -> None:
            assert entry.item is not None and entry.settings is not None
            item = entry.item
            try:
                async with limiter:
                    source = RegistrySource(
                        self.session.client(item.source, settings=entry.settings), item.source
                    )
                    _, plan = await resolve(source, item.source.identifier, options)
                    target = self.session.client(item.target, settings=self.dest_settings)
                    total = 0
                    for blob in plan.blobs():
                        if blob.digest in counted:
                            continue
                        counted.add(blob.digest)
                        if not await target.has_blob(item.target.repository, blob.digest):
                            total += blob.size
                    entry.bytes = total
            except TransferError as exc:
                entry.action, entry.reason = FAILED, str(exc)

        async with anyio.create_task_group() as group:
            for entry in entries:
                group.start_soon(size, entry)

    async def copies(self, entries: list[PlanEntry], report: MirrorReport) -> None:
        """The plan's copies, ``images`` at once, sharing what the target holds (mounts)."""
        mounts = RunMounts()
        limiter = anyio.CapacityLimiter(self.images)
        for entry in entries:
            if entry.item is None:
                continue
            if entry.action == UNCHANGED:
                report.unchanged.append(entry.item)
                self.emit(Message(f"unchanged {entry.item.target}"))
            elif entry.action == FAILED:
                report.failed.append((entry.item, entry.reason or "failed"))
                self.emit(Message(f"failed {entry.item.source}: {entry.reason}"))

        async def copy_one(entry: PlanEntry) -> None:
            assert entry.item is not None
            item = entry.item
            try:
                async with limiter:
                    result = await copy(
                        Address("registry", reference=item.source),
                        Address("registry", reference=item.target),
                        entry.settings,
                        platform=self.platform,
                        dest_settings=self.dest_settings,
                        mounts=mounts,
                        emit=self.emit,
                        session=self.session,
                    )
            except TransferError as exc:  # one bad image does not stop the others
                entry.action, entry.reason = FAILED, str(exc)
                report.failed.append((item, str(exc)))
                self.emit(Message(f"failed {item.source}: {exc}"))
                return
            report.copied.append(result)
            report.copied_items.append((item, result))

        # An unchanged image's referrers are looked up with small requests (a tag list, a
        # fallback index), over the connections the plan's HEADs left open: as many at once
        # as those HEADs, not the few images whose blobs move at once.
        lookups = anyio.CapacityLimiter(HEADS_AT_ONCE)

        async def carry_one(entry: PlanEntry) -> None:
            assert entry.item is not None
            try:
                async with lookups:
                    await self.carry(entry)
            except TransferError as exc:
                report.failed.append((entry.item, f"referrers: {exc}"))
                self.emit(Message(f"failed {entry.item.source}: referrers: {exc}"))

        async with anyio.create_task_group() as group:
            for entry in entries:
                if entry.action == COPY:
                    group.start_soon(copy_one, entry)
                elif entry.action == UNCHANGED and self.settings.referrers:
                    group.start_soon(carry_one, entry)

    async def carry(self, entry: PlanEntry) -> None:
        """An unchanged image's referrers may have changed (a new signature, an SBOM added):
        carried as a copy carries them. What refers to a plain image is found from its HEAD
        alone; an index is read (from the target, which holds the same) for its manifests."""
        assert entry.item is not None and entry.settings is not None
        item, settings = entry.item, entry.settings
        source = RegistrySource(self.session.client(item.source, settings=settings), item.source)
        target = self.session.client(item.target, settings=self.dest_settings)
        subject = entry.subject
        if subject is not None and not await source.may_have_referrers(subject.digest):
            return  # nothing in the repository refers to anything: no manifest read
        if subject is None or subject.media_type not in IMAGE_TYPES:
            manifest = await target.get_manifest(item.target.repository, item.target.identifier)
            subjects = [manifest.descriptor()]
            if manifest.is_index:
                subjects += manifest.index().manifests
        else:
            subjects = [subject]
        destination = RegistryDestination(target, item.target)
        options = settings.copy_options(self.platform)
        await carry_referrers(source, destination, subjects, options, self.emit)


async def _unchanged(
    item: MirrorItem,
    session: Session,
    source: Settings,
    target: Settings,
    platform: PlatformChoice = None,
) -> tuple[bool, Digest | None, Descriptor | None]:
    """Does the target tag already name what the copy would put there? One HEAD on each side,
    both at once (the source's index is read to find the platform's image, or to filter it,
    when platforms are chosen). Also the source's digest (None when its registry did not say),
    and what its HEAD said (the referrers of an unchanged image are looked up from there)."""
    one, several = choosing(platform)
    whole = one is None and not several
    there: Descriptor | None = None
    here: Descriptor | None = None

    async def head_target() -> None:
        nonlocal there
        client = session.client(item.target, settings=target)
        there = await client.head_manifest(item.target.repository, item.target.identifier)

    async def head_source() -> None:
        nonlocal here
        if item.source.digest is not None and whole:
            return  # a digest names itself
        client = session.client(item.source, settings=source)
        here = await client.head_manifest(item.source.repository, item.source.identifier)
        if here is not None and not whole and here.media_type not in IMAGE_TYPES:
            # An index (or a registry that did not say): the platform's image is what is
            # copied, or for several platforms the new index of theirs (filter_index).
            manifest = await client.get_manifest(item.source.repository, str(here.digest))
            if manifest.is_index and one is not None:
                here = manifest.index().select(one)
            elif manifest.is_index:
                here = filter_index(manifest, several).descriptor()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(head_target)
            group.start_soon(head_source)
    except BaseExceptionGroup as group_error:
        # Bare, so the plan marks this image failed (a 401, a 500) and the others go on.
        raise first_error(group_error) from None
    if item.source.digest is not None and whole:
        return there is not None and there.digest == item.source.digest, item.source.digest, None
    digest = here.digest if here is not None else None
    same = there is not None and here is not None and here.digest == there.digest
    return same, digest, here


def refuse_clashes(entries: list[PlanEntry]) -> None:
    """Images of different sources that would land on one target (``a.example/app:1`` and
    ``b.example/app:1`` without --scoped): unless every one is known to be the same image,
    each is marked failed naming the others, so a tag's content is never a matter of which
    copy finished last; the rest of the plan runs."""
    by_target: dict[str, list[PlanEntry]] = {}
    for entry in entries:
        if entry.item is not None and entry.action in (COPY, UNCHANGED):
            by_target.setdefault(entry.target, []).append(entry)
    for target, group in by_target.items():
        digests = {entry.digest for entry in group}
        same = len(digests) == 1 and None not in digests
        if same or len({entry.source for entry in group}) < 2:
            continue
        for entry in group:
            others = ", ".join(sorted({e.source for e in group} - {entry.source}))
            entry.action = FAILED
            entry.reason = (
                f"{target} is also the target of {others}, not known to be the same image: "
                "none of them is copied (--scoped keeps each source's host in the target)"
            )


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
