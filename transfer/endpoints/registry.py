"""A repository in a registry as a copy source (and, later, destination)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

from ..client import RegistryClient
from ..digest import Digest
from ..manifest import Descriptor, Manifest
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
