"""The library API: what the CLI does, as async functions (and thin sync wrappers for scripts).

Every transfer is ``copy.copy_image`` between two endpoints; these functions only choose them.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio

from .auth import Credentials
from .client import RegistryClient, TransportOptions
from .copy import CopyOptions, CopyResult, copy_image
from .digest import Digest
from .endpoints.layout import REF_NAME, Layout, LayoutDestination, LayoutSource
from .endpoints.registry import RegistrySource
from .errors import StoreError
from .fetch import RangePolicy
from .manifest import MAX_CONFIG_BYTES, Descriptor, ImageConfig, Index, Manifest, Platform
from .progress import Emit, ignore
from .reference import Reference, parse, parse_repository
from .retry import RetryPolicy
from .throttle import Throttle

P = ParamSpec("P")
T = TypeVar("T")


def default_store() -> Path:
    """``$XFER_STORE``, else ``$XDG_DATA_HOME/xfer/store`` (``~/.local/share/xfer/store``)."""
    if os.environ.get("XFER_STORE"):
        return Path(os.environ["XFER_STORE"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "xfer" / "store"


@dataclass(frozen=True)
class Settings:
    """What every command shares: where the store is and how to reach registries."""

    store: Path = field(default_factory=default_store)
    transport: TransportOptions = field(default_factory=TransportOptions)
    credentials: Credentials | None = None  # explicit --creds; else config files per host
    jobs: int = 8
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    ranges: RangePolicy = field(default_factory=RangePolicy)  # parallel Range requests
    throttle: Throttle | None = None  # one byte-rate cap shared by every stream of the run

    def client(self, reference: Reference) -> RegistryClient:
        return RegistryClient(
            reference.api_host,
            options=self.transport,
            credentials=self.credentials,
            throttle=self.throttle,
        )

    def layout(self) -> Layout:
        return Layout(self.store, self.ranges)


@dataclass(frozen=True)
class ImageEntry:
    reference: str
    digest: Digest
    media_type: str
    size: int  # manifest + config + layers, each blob counted once


async def pull(
    reference: str | Reference,
    settings: Settings | None = None,
    *,
    platform: Platform | None = None,
    all_platforms: bool = False,
    emit: Emit = ignore,
) -> CopyResult:
    """Registry → store; fetches only the blobs the store lacks."""
    settings = settings or Settings()
    ref = reference if isinstance(reference, Reference) else parse(reference)
    chosen = None if all_platforms else (platform or Platform.current())
    options = CopyOptions(platform=chosen, jobs=settings.jobs, retry=settings.retry)
    layout = settings.layout()
    async with settings.client(ref) as client:
        source = RegistrySource(client, ref)
        destination = LayoutDestination(layout, str(ref))
        return await copy_image(source, destination, ref.identifier, str(ref), options, emit)


async def inspect(
    reference: str, settings: Settings | None = None, *, from_store: bool = False
) -> tuple[Manifest, bytes | None]:
    """The manifest an image reference resolves to, and its config when it is an image."""
    settings = settings or Settings()
    ref = parse(reference)
    if from_store:
        source = LayoutSource(settings.layout(), str(ref))
        manifest = await source.get_manifest(str(ref))
        config = None
        if not manifest.is_index:
            config = settings.layout().read_blob(manifest.image().config, cap=MAX_CONFIG_BYTES)
        return manifest, config
    async with settings.client(ref) as client:
        manifest = await client.get_manifest(ref.repository, ref.identifier, reference=str(ref))
        config = None
        if not manifest.is_index:
            config = await _read_blob(client, ref, manifest.image().config)
        return manifest, config


async def _read_blob(client: RegistryClient, ref: Reference, desc: Descriptor) -> bytes:
    from .digest import Verifier

    if desc.size > MAX_CONFIG_BYTES:
        raise StoreError(f"config {desc.digest} is larger than {MAX_CONFIG_BYTES} bytes")
    verifier = Verifier(desc.digest, desc.size, what="config")
    body = bytearray()
    async with client.open_blob(ref.repository, desc) as chunks:
        async for chunk in chunks:
            verifier.update(chunk)
            body += chunk
    verifier.verify()
    return bytes(body)


async def tags(repository: str, settings: Settings | None = None) -> list[str]:
    settings = settings or Settings()
    ref = parse_repository(repository)
    async with settings.client(ref) as client:
        return await client.list_tags(ref.repository)


def images(settings: Settings | None = None) -> list[ImageEntry]:
    """The store's images with their sizes (each blob counted once per image)."""
    settings = settings or Settings()
    layout = settings.layout()
    entries = []
    for desc in layout.read_index():
        name = desc.annotations.get(REF_NAME)
        if not name:
            continue
        entries.append(ImageEntry(name, desc.digest, desc.media_type, _image_size(layout, desc)))
    return entries


def _image_size(layout: Layout, desc: Descriptor) -> int:
    seen: dict[Digest, int] = {}
    stack = [desc]
    while stack:
        current = stack.pop()
        if current.digest in seen:
            continue
        seen[current.digest] = current.size
        try:
            manifest = layout.get_manifest(current)
        except StoreError:
            continue
        parsed = manifest.parse()
        if isinstance(parsed, Index):
            stack.extend(parsed.manifests)
        else:
            for blob in parsed.blobs():
                seen.setdefault(blob.digest, blob.size)
    return sum(seen.values())


def config_platform(config: bytes) -> Platform:
    return ImageConfig.from_bytes(config).platform


def run(func: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run one async API call from synchronous code."""

    async def main() -> T:
        return await func(*args, **kwargs)

    return anyio.run(main)


def pull_sync(reference: str, settings: Settings | None = None, **kwargs: Any) -> CopyResult:
    return run(pull, reference, settings, **kwargs)


def tags_sync(repository: str, settings: Settings | None = None) -> list[str]:
    return run(tags, repository, settings)
