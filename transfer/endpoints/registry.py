"""A repository in a registry as a copy source and destination; and a source that reads from
mirrors first and falls back to the origin.

They borrow their ``RegistryClient`` from the run's ``Session`` and never close it: the next
image of the run reuses its connections and tokens.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterable, AsyncIterator, Collection, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    nullcontext,
)
from dataclasses import dataclass

import anyio

from ..client import RegistryClient, Started
from ..digest import Digest, Verifier
from ..errors import (
    ManifestError,
    NetworkError,
    NotFound,
    RangeError,
    RangeIgnored,
    RegistryError,
    SizeMismatch,
    TooLarge,
    TransferError,
    UsageError,
)
from ..ingest import Chunk
from ..manifest import Descriptor, Manifest
from ..progress import Emit, Message, ignore
from ..reference import Reference
from ..referrers import (
    Referrer,
    cosign_tags,
    fallback_tag,
    index_entry,
    merge_index,
    tagged_entry,
)
from . import BlockingChunks, Opener, Progress


class RegistrySource:
    local: str | None = None

    def __init__(self, client: RegistryClient, reference: Reference) -> None:
        self.client = client
        self.reference = reference
        self.name = str(reference)
        # Manifests read while finding referrers (a cosign tag's), handed to the copy that
        # asks for them next instead of being fetched twice.
        self._found: dict[Digest, Manifest] = {}
        # The referrers API's unfiltered answers by subject (None: the host has no API).
        self._listed: dict[Digest, list[Descriptor] | None] = {}

    async def get_manifest(self, identifier: str | Digest) -> Manifest:
        if isinstance(identifier, Digest) and identifier in self._found:
            return self._found.pop(identifier)
        name = self.name if isinstance(identifier, str) else f"{self.reference.name}@{identifier}"
        return await self.client.get_manifest(
            self.reference.repository, str(identifier), reference=name
        )

    async def get_referrers(self, subject: Descriptor) -> list[Referrer]:
        return await self.get_referrers_filtered(subject, ())

    async def get_referrers_filtered(
        self, subject: Descriptor, artifact_types: Collection[str]
    ) -> list[Referrer]:
        """What refers to ``subject``: the referrers API where the registry has it (one GET;
        its ``artifactType`` filter when one type is asked for), else the fallback tag's
        index; and cosign's ``.sig``/``.att``/``.sbom`` tags. Which of those tags exist comes
        from one tag listing of the repository per run (the client's), not a request per
        digest and kind."""
        client, repository = self.client, self.reference.repository
        only = next(iter(artifact_types)) if len(artifact_types) == 1 else None
        if only is None or subject.digest in self._listed:
            listed = await self._api(subject.digest)
        else:
            listed = await client.get_referrers(repository, subject.digest, only)
        tags = await client.referrer_tags(repository)
        found: dict[Digest, Referrer] = {}
        fallback = fallback_tag(subject.digest)
        if listed is None and (tags is None or fallback in tags):
            index = await self._by_tag(fallback)
            if index is not None and index.is_index:
                listed = list(index.index().manifests)
        for desc in listed or ():
            found.setdefault(desc.digest, Referrer(desc, subject.digest))
        for tag in cosign_tags(subject.digest):
            if tags is not None and tag not in tags:
                continue
            manifest = await self._by_tag(tag)
            if manifest is None:
                continue
            self._found[manifest.digest] = manifest
            # Found under its tag: it must keep that tag wherever it goes.
            found[manifest.digest] = Referrer(tagged_entry(manifest), subject.digest, tag)
        return list(found.values())

    async def _api(self, digest: Digest) -> list[Descriptor] | None:
        if digest not in self._listed:
            self._listed[digest] = await self.client.get_referrers(
                self.reference.repository, digest
            )
        return self._listed[digest]

    async def may_have_referrers(self, subject: Digest) -> bool:
        """Could anything in this repository refer to ``subject`` or to a manifest it lists?
        False only when the registry has no referrers API and the repository has no tag that
        names a digest: then none of the image's manifests needs to be asked about (nor read)."""
        if await self._api(subject) is not None:
            return True
        tags = await self.client.referrer_tags(self.reference.repository)
        return tags is None or bool(tags)  # None: not listed, so each tag is asked for

    async def _by_tag(self, tag: str) -> Manifest | None:
        try:
            return await self.get_manifest(tag)
        except NotFound:
            return None  # listed a moment ago and gone, or asked for by name

    def open_blob(
        self, desc: Descriptor, offset: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterable[bytes]]:
        return self.client.open_blob(self.reference.repository, desc, offset, end)

    async def aclose(self) -> None:
        return None  # the client is the session's: it closes it


FALLBACK_ATTEMPTS = 5  # merges of one fallback index before concurrent writers are an error
MAX_UPLOAD_RESUMES = 3  # resumes of one chunk (of the whole blob when it is sent at once)


class RunMounts(dict[Digest, str]):
    """Blobs known to be in a repository of the target registry, shared by every image of a run
    that copies at once: while one image uploads a blob, another that needs it waits for that
    upload and mounts the result, so the blob crosses the network once per run."""

    def __init__(self) -> None:
        super().__init__()
        self.uploading: dict[Digest, anyio.Event] = {}


class RegistryDestination:
    """Pushes blobs (mounting them from a repository of the same registry when it can) and
    manifests, their exact bytes, so the digests are the same at the destination.

    ``chunk_size``: a blob larger than this goes as PATCH requests of at most this many bytes
    (for a proxy that caps request bodies); a registry's ``OCI-Chunk-Min-Length`` above it
    cannot be met together with it, and fails the blob naming both."""

    concurrent = True

    def __init__(
        self,
        client: RegistryClient,
        reference: Reference,
        mount_from: Reference | None = None,
        mounts: dict[Digest, str] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        self.client = client
        self.reference = reference
        self.name = str(reference)
        same_registry = mount_from is not None and mount_from.registry == reference.registry
        self.mount_from = mount_from.repository if mount_from and same_registry else None
        # Blobs known to be in other repositories of this registry (shared by a mirror run).
        self.mounts = mounts if mounts is not None else {}
        if chunk_size is not None and chunk_size < 1:
            raise UsageError("the upload chunk size must be at least 1 byte")
        self.chunk_size = chunk_size
        # Referrers: manifests the registry indexed by their subject itself (OCI-Subject), and
        # what each subject's referrers list holds here, as read or written during the run.
        self._indexed: set[Digest] = set()
        self._subjects: dict[Digest, set[Digest]] = {}

    async def has_blob(self, desc: Descriptor) -> bool:
        repository = self.reference.repository
        found = await self.client.has_blob(repository, desc.digest, push=True)
        if found:
            self.mounts.setdefault(desc.digest, repository)
        return found

    async def put_blob(self, desc: Descriptor, opener: Opener, progress: Progress) -> int:
        uploading = self.mounts.uploading if isinstance(self.mounts, RunMounts) else None
        if uploading is None:
            return await self._put_blob(desc, opener, progress)
        while (pending := uploading.get(desc.digest)) is not None:
            await pending.wait()  # its end either mounts it here or leaves the upload to us
        if desc.digest in self.mounts:
            return await self._put_blob(desc, opener, progress)  # a mount
        uploading[desc.digest] = done = anyio.Event()
        try:
            return await self._put_blob(desc, opener, progress)
        finally:
            del uploading[desc.digest]
            done.set()

    async def _put_blob(self, desc: Descriptor, opener: Opener, progress: Progress) -> int:
        repository = self.reference.repository
        started = None
        for origin in dict.fromkeys([self.mounts.get(desc.digest), self.mount_from]):
            if not origin or origin == repository:
                continue
            try:
                started = await self.client.mount_blob(repository, desc.digest, origin)
            except TransferError:
                started = None  # a refused mount is only a missed shortcut (case 46)
                continue
            if started is None:
                progress(desc.size)
                self.mounts[desc.digest] = repository
                return 0  # mounted: no byte moved
            break  # 202: the registry opened an upload for us instead (case 46)
        if started is None:
            started = await self.client.start_upload(repository)
        upload = _Upload(started.location)
        try:
            step = self._step(desc, started)
            sent = await self._upload(upload, desc, opener, progress, step)
        except BaseException:
            # Shielded so Ctrl-C still cleans up, but bounded: a dead registry must not hold
            # the exit for the connect and read timeouts.
            with anyio.move_on_after(5, shield=True):
                # The latest Location: distribution refuses (404) a DELETE whose `_state`
                # still names an offset the upload has moved past, and keeps the upload.
                await self.client.cancel_upload(repository, upload.location)
            raise
        self.mounts[desc.digest] = repository
        return sent

    def _step(self, desc: Descriptor, started: Started) -> int:
        """The most bytes one request carries: the whole blob unless ``chunk_size`` is less."""
        cap = self.chunk_size
        if cap is None or desc.size <= cap:
            return max(desc.size, 1)  # one request (a last chunk may be under the minimum)
        if started.min_chunk > cap:
            raise RegistryError(
                f"upload of blob {desc.digest} to {self.client.host}/"
                f"{self.reference.repository}: the registry takes chunks of at least "
                f"{started.min_chunk} bytes (OCI-Chunk-Min-Length), more than the chunk size "
                f"of {cap} bytes asked for (--chunk-size); no chunk can meet both",
                host=self.client.host,
                digest=str(desc.digest),
            )
        return cap

    async def _upload(
        self, upload: _Upload, desc: Descriptor, opener: Opener, progress: Progress, step: int
    ) -> int:
        """Stream the blob into the upload, ``step`` bytes per PATCH; a dropped PATCH resumes
        where the registry says it holds data (its ``Range``), without starting the blob
        again. ``upload.location`` follows every Location the registry answers with.

        The source is opened once and read across the chunks; the hash state at the end of
        the last chunk the registry took is kept, so a resume there hashes nothing twice."""
        repository = self.reference.repository
        verifier = Verifier(desc.digest, desc.size)
        done = verifier.snapshot()  # the hash of every byte the registry acknowledged
        offset = sent = 0
        failures = 0  # in a row, without a chunk taken in between
        while True:
            try:
                async with opener(offset, None) as chunks:
                    meter = _Meter(progress)
                    blocking = False
                    if isinstance(chunks, BlockingChunks) and self.client.blocking_ok(
                        desc.size - offset
                    ):
                        blocking = True
                        # A blob from another registry read by a worker thread (body.py):
                        # the same thread hashes it and sends it on, off the event loop.
                        pieces = _Pieces(_verified_blocking(chunks, verifier, meter))
                    else:
                        pieces = _Pieces(_verified(chunks, verifier, progress))
                    while True:
                        length = min(step, desc.size - offset)
                        async with meter.reporting() if blocking else nullcontext():
                            upload.location = await self.client.patch_upload(
                                repository, upload.location, pieces.take(length), offset, length
                            )
                        pieces.check(length)
                        offset += length
                        sent += length
                        failures = 0
                        done = verifier.snapshot()
                        if offset >= desc.size:
                            break
                break
            except (NetworkError, RangeError) as error:
                failures += 1
                if failures > MAX_UPLOAD_RESUMES:
                    raise
                try:
                    upload.location, offset = await self.client.upload_offset(
                        repository, upload.location
                    )
                except TransferError:
                    # The registry lost or refuses the upload (distribution answers 404 once a
                    # cut PATCH left the offset in its `_state` behind): the retry around us
                    # starts the blob again on a new upload.
                    raise error from None
                if offset > desc.size:
                    raise error
                if offset == done.count:
                    verifier = done.snapshot()  # the end of the last chunk taken
                else:
                    # Bytes before `offset` were verified when they were sent; hash them again
                    # from the source so the digest still covers the whole blob.
                    verifier = Verifier(desc.digest, desc.size)
                    if offset:
                        await _hash_prefix(opener, offset, verifier)
                    done = verifier.snapshot()
        verifier.verify()
        await self.client.finish_upload(repository, upload.location, desc.digest)
        return sent

    async def put_manifest(self, manifest: Manifest, tag: str | None) -> None:
        identifier = tag if tag is not None else str(manifest.digest)
        subject = await self.client.put_manifest(self.reference.repository, identifier, manifest)
        if subject:
            self._indexed.add(manifest.digest)  # the registry lists it under its subject

    async def has_referrer(self, referrer: Referrer) -> bool:
        """Is ``referrer`` here and recorded where readers look? A tagged one: its tag names
        it (one HEAD). One found by subject: the referrers API lists it, or the fallback tag's
        index does (one request per subject for the run, remembered and kept up to date)."""
        client, repository = self.client, self.reference.repository
        if referrer.tag is not None:
            there = await client.head_manifest(repository, referrer.tag)
            if there is None or there.digest == referrer.descriptor.digest:
                return there is not None
            # cosign keeps every signature (attestation, SBOM) of an image in the one
            # manifest under this tag; the target's names another, its own signatures maybe.
            # `cosign copy` refuses to replace it (without -f); so does a copy here: it is
            # left as it is, and the source's is not carried (a merge would be a new manifest
            # no tool signed off: the copy would change what the tag's owner wrote).
            raise ManifestError(
                f"the tag {self.client.host}/{repository}:{referrer.tag} names another "
                f"manifest, {there.digest}: left as it is (cosign keeps all of an image's "
                "signatures in that one manifest; the source's are not merged into it)",
                digest=str(referrer.descriptor.digest),
            )
        listed = await self._listed(referrer.subject)
        return referrer.descriptor.digest in listed

    async def _listed(self, subject: Digest) -> set[Digest]:
        known = self._subjects.get(subject)
        if known is not None:
            return known
        client, repository = self.client, self.reference.repository
        api = await client.get_referrers(repository, subject)
        if api is not None:
            listed = {d.digest for d in api}
        else:
            try:
                index = await self._fallback_index(subject)
            except (ManifestError, TooLarge):
                index = None  # unreadable (over the cap): lists nothing we can tell
            # Not an index (another tool's tag, or a hostile one): it lists nothing; recording
            # there says why it is left as it is (merge_index).
            listed = (
                {d.digest for d in index.index().manifests} if index and index.is_index else set()
            )
        self._subjects[subject] = listed
        return listed

    async def _fallback_index(self, subject: Digest) -> Manifest | None:
        try:
            return await self.client.get_manifest(self.reference.repository, fallback_tag(subject))
        except NotFound:
            return None

    async def put_referrer(self, referrer: Referrer, manifest: Manifest) -> None:
        """Record ``manifest`` (already here by digest) as ``referrer``. A cosign referrer gets
        its tag. One with a subject: a registry that answered its PUT with ``OCI-Subject``
        indexed it itself; at any other the subject's fallback tag index gets its entry,
        merged with what the index lists (another tool's referrers are kept)."""
        repository = self.reference.repository
        if referrer.tag is not None:
            await self.client.put_manifest(repository, referrer.tag, manifest)
            return
        subject = _subject_of(manifest)
        if subject is None or manifest.digest in self._indexed:
            return  # the registry lists it by its subject (OCI 1.1)
        # No OCI-Subject in the answer: the spec has the client keep the fallback tag, even
        # at a registry that answers the referrers API.
        await self._merge_fallback(subject, index_entry(manifest))

    async def _merge_fallback(self, subject: Digest, entry: Descriptor) -> None:
        """Read, add, write the fallback index; then read it again: another writer (a copy
        running at the same time elsewhere) may have put its own version over ours in
        between, so until ours lists the entry, merge again (bounded). Within a run the
        writers of one (repository, subject) take turns."""
        client, repository = self.client, self.reference.repository
        lock = client.fallback_locks.setdefault((repository, subject), anyio.Lock())
        tag = fallback_tag(subject)
        try:
            async with lock:
                await self._merge_turns(subject, entry, tag)
        except (ManifestError, TooLarge) as exc:
            # Not an index, over the cap, or one more entry would put it over: another
            # tool's tag (or a hostile one) is left as it is; the caller says so.
            raise ManifestError(
                f"referrers fallback tag {self.client.host}/{repository}:{tag}: {exc.message}",
                digest=str(entry.digest),
            ) from None
        self._subjects.setdefault(subject, set()).add(entry.digest)

    async def _merge_turns(self, subject: Digest, entry: Descriptor, tag: str) -> None:
        """``_merge_fallback``'s read, add, write, read again (the caller holds the lock)."""
        client, repository = self.client, self.reference.repository
        for attempt in range(FALLBACK_ATTEMPTS):
            merged = merge_index(await self._fallback_index(subject), entry)
            if merged is None:
                break  # listed already (by us, a moment ago, or by another copy)
            await client.put_manifest(repository, tag, merged)
            # Let a concurrent writer's PUT land before ours is read back (and give
            # writers that keep colliding different turns).
            await anyio.sleep(random.uniform(0.05, 0.1) * (attempt + 1))
        else:
            current = await self._fallback_index(subject)
            if current is None or entry.digest not in {d.digest for d in current.index().manifests}:
                raise RegistryError(
                    f"referrers fallback tag {self.client.host}/{repository}:{tag}: other "
                    f"writers replaced it {FALLBACK_ATTEMPTS} times without our entry "
                    f"{entry.digest}",
                    host=self.client.host,
                    digest=str(entry.digest),
                )

    async def commit(self) -> None:
        return None

    async def aclose(self) -> None:
        return None  # the client is the session's: it closes it


def _subject_of(manifest: Manifest) -> Digest | None:
    if manifest.is_index:
        return None  # an index with a subject is not read here: not carried by its subject
    subject = manifest.image().subject
    return subject.digest if subject is not None else None


@dataclass
class _Upload:
    """An upload session: its Location changes with every answer (distribution's `_state`)."""

    location: str


async def _hash_prefix(opener: Opener, offset: int, verifier: Verifier) -> None:
    """Hash the first ``offset`` bytes again; a source that ignores a bounded Range is read
    from the start and stopped at ``offset``."""
    try:
        context = opener(0, offset)
        async with context as chunks:
            async for chunk in chunks:
                verifier.update(chunk[: offset - verifier.count])
        return
    except RangeIgnored:
        pass
    async with opener(0, None) as chunks:
        async for chunk in chunks:
            verifier.update(chunk[: offset - verifier.count])
            if verifier.count >= offset:
                break


class _Pieces:
    """One stream cut into consecutive request bodies: ``take(n)`` gives its next ``n`` bytes
    (a piece that straddles two bodies is split, its rest kept for the next). A blocking
    stream gives blocking bodies, read by the worker thread that sends them."""

    def __init__(self, chunks: AsyncIterator[Chunk] | Iterator[Chunk]) -> None:
        self._chunks = chunks
        self._rest: Chunk = b""
        self._given = 0  # bytes the current body has had

    def take(self, n: int) -> AsyncIterator[Chunk] | Iterator[Chunk]:
        self._given = 0
        if isinstance(self._chunks, AsyncIterator):
            return self._take_async(self._chunks, n)
        return self._take_blocking(self._chunks, n)

    def _cut(self, chunk: Chunk, n: int) -> Chunk:
        room = n - self._given
        if len(chunk) > room:
            chunk, self._rest = chunk[:room], chunk[room:]
        self._given += len(chunk)
        return chunk

    async def _take_async(self, chunks: AsyncIterator[Chunk], n: int) -> AsyncIterator[Chunk]:
        while self._given < n:
            chunk, self._rest = self._rest or await anext(chunks, b""), b""
            if not chunk:
                return  # the source ended early: the request is short; check() says so
            yield self._cut(chunk, n)

    def _take_blocking(self, chunks: Iterator[Chunk], n: int) -> Iterator[Chunk]:
        while self._given < n:
            chunk, self._rest = self._rest or next(chunks, b""), b""
            if not chunk:
                return
            yield self._cut(chunk, n)

    def check(self, n: int) -> None:
        """The body just sent had all its ``n`` bytes (a registry may take a short one)."""
        if self._given != n:
            raise SizeMismatch(f"the source ended after {self._given} of a chunk's {n} bytes")


class _Meter:
    """Bytes counted by a worker thread, reported as progress from the event loop."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.count = 0  # written by the one thread sending, read here
        self._reported = 0

    def flush(self) -> None:
        count = self.count
        if count > self._reported:
            self.progress(count - self._reported)
            self._reported = count

    async def _report(self) -> None:
        while True:
            await anyio.sleep(0.1)
            self.flush()

    @asynccontextmanager
    async def reporting(self) -> AsyncIterator[None]:
        """Report every 0.1 s while the block runs; its error comes out as it was raised
        (not in a task group's ExceptionGroup), so the caller's ``except`` still sees it."""
        error: Exception | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(self._report)
            try:
                yield
            except Exception as exc:
                error = exc
            finally:
                group.cancel_scope.cancel()
                self.flush()
        if error is not None:
            raise error


def _verified_blocking(body: BlockingChunks, verifier: Verifier, meter: _Meter) -> Iterator[Chunk]:
    """``_verified`` for the worker thread: hashed and counted where it is read."""
    for chunk in body.blocking_chunks():
        verifier.update(chunk)  # raises past the declared size
        meter.count += len(chunk)
        yield chunk


async def _verified(
    chunks: AsyncIterable[bytes], verifier: Verifier, progress: Progress
) -> AsyncIterator[bytes]:
    """The bytes as they are sent, hashed on the way, so a corrupt source is never pushed."""
    async for chunk in chunks:
        verifier.update(chunk)  # raises past the declared size
        progress(len(chunk))
        yield chunk


class MirrorSource:
    """Mirrors in order, then the origin (pulls only; registries.conf / config.toml mirrors).

    A mirror that fails in any way (down, 5xx, 404, unauthorized, bad bytes) is skipped: the
    origin's answer is verified like any other, so falling back never lowers what is checked.
    The source that served the first manifest serves the blobs; a blob it lacks or fails to
    start comes from the origin.
    """

    local: str | None = None

    def __init__(
        self, mirrors: Sequence[RegistrySource], origin: RegistrySource, emit: Emit = ignore
    ) -> None:
        self.mirrors = list(mirrors)
        self.origin = origin
        self.name = origin.name
        self.emit = emit
        self._dead: set[int] = set()  # mirrors that could not be reached: not asked again
        self._serving: RegistrySource | None = None

    def _candidates(self) -> list[RegistrySource]:
        first = [self._serving] if self._serving is not None else []
        alive = [m for i, m in enumerate(self.mirrors) if i not in self._dead]
        return list(dict.fromkeys([*first, *alive, self.origin]))

    def _skip(self, source: RegistrySource, error: TransferError, what: str) -> None:
        if error.retryable and error.status is None:  # a network failure, not an answer
            self._dead.add(self.mirrors.index(source))
        if source is self._serving:
            self._serving = None
        self.emit(Message(f"skipping mirror {source.reference.registry} for {what}: {error}"))

    async def get_manifest(self, identifier: str | Digest) -> Manifest:
        for source in self._candidates():
            if source is self.origin:
                break
            try:
                manifest = await source.get_manifest(identifier)
            except UsageError:
                raise
            except TransferError as exc:
                self._skip(source, exc, "manifest")
                continue
            self._serving = self._serving or source
            return manifest
        manifest = await self.origin.get_manifest(identifier)
        self._serving = self._serving or self.origin
        return manifest

    @asynccontextmanager
    async def open_blob(
        self, desc: Descriptor, offset: int = 0, end: int | None = None
    ) -> AsyncIterator[AsyncIterable[bytes]]:
        async with AsyncExitStack() as stack:
            chunks = None
            serving = self._serving or self.origin
            if serving is not self.origin:
                try:
                    chunks = await stack.enter_async_context(serving.open_blob(desc, offset, end))
                except (UsageError, RangeIgnored):
                    raise  # RangeIgnored is about Range, not the mirror: the caller adapts
                except TransferError as exc:
                    self._skip(serving, exc, f"blob {desc.digest}")
            if chunks is None:
                chunks = await stack.enter_async_context(self.origin.open_blob(desc, offset, end))
            yield chunks

    async def get_referrers(self, subject: Descriptor) -> list[Referrer]:
        return await self.get_referrers_filtered(subject, ())

    async def get_referrers_filtered(
        self, subject: Descriptor, artifact_types: Collection[str]
    ) -> list[Referrer]:
        """Asked of the source that served the manifest, as its blobs are (the origin may be
        out of reach: that is why a mirror is configured); a mirror that fails is skipped
        for the next, the origin last. A pull-through cache lists only the tags it cached, so
        there cosign's tags of an image are found once pulled through it by name."""
        for source in self._candidates():
            if source is self.origin:
                break
            try:
                return await source.get_referrers_filtered(subject, artifact_types)
            except UsageError:
                raise
            except TransferError as exc:
                self._skip(source, exc, f"referrers of {subject.digest}")
        return await self.origin.get_referrers_filtered(subject, artifact_types)

    async def aclose(self) -> None:
        return None  # the clients are the session's: it closes them
