"""A repository in a registry as a copy source (and, later, destination); and a source that
reads from mirrors first and falls back to the origin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from ..client import RangeIgnored, RegistryClient
from ..digest import Digest
from ..errors import TransferError, UsageError
from ..manifest import Descriptor, Manifest
from ..progress import Emit, Message, ignore
from ..reference import Reference


class RegistrySource:
    def __init__(self, client: RegistryClient, reference: Reference) -> None:
        self.client = client
        self.reference = reference
        self.name = str(reference)

    async def get_manifest(self, identifier: str | Digest) -> Manifest:
        name = self.name if isinstance(identifier, str) else f"{self.reference.name}@{identifier}"
        return await self.client.get_manifest(
            self.reference.repository, str(identifier), reference=name
        )

    def open_blob(
        self, desc: Descriptor, offset: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.client.open_blob(self.reference.repository, desc, offset, end)

    async def aclose(self) -> None:
        await self.client.aclose()


class MirrorSource:
    """Mirrors in order, then the origin (pulls only; registries.conf / config.toml mirrors).

    A mirror that fails in any way (down, 5xx, 404, unauthorized, bad bytes) is skipped: the
    origin's answer is verified like any other, so falling back never lowers what is checked.
    The source that served the first manifest serves the blobs; a blob it lacks or fails to
    start comes from the origin.
    """

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
    ) -> AsyncIterator[AsyncIterator[bytes]]:
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

    async def aclose(self) -> None:
        for source in [*self.mirrors, self.origin]:
            await source.aclose()
