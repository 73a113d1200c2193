"""One run's live connections: a ``Session`` owns every registry client the run opens.

``Settings`` is what the user asked for (a frozen value, cheap to copy and vary); a ``Session``
is what a run holds while it works: one ``RegistryClient`` (HTTP pool, TLS context, token cache,
blocking body client) per registry host and credential source, one gate per host that every
request to it passes (ratelimit.py: a 429's pause and ``--max-requests-per-second`` hold for the
whole run, whichever client or image meets them), the registry configuration read once, and the
store. Every command and API call runs inside one; a mirror or a multi-image save
reuses it across images, so the second image costs no new connection, scheme probe or token.
Endpoints borrow its clients and never close them; closing the session closes them all.

    async with Session(settings) as session:
        source = session.source(reference)
        ...
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

import anyio

from .client import RegistryClient
from .config import RegistryConfig
from .config import load as load_registry_config
from .endpoints.layout import Layout
from .endpoints.registry import MirrorSource, RegistrySource
from .progress import Emit, Message, ignore
from .ratelimit import HostGate
from .reference import Reference
from .transport import TransportOptions

if TYPE_CHECKING:
    from .api import Settings


# Large blobs moving at once in a whole run, per --jobs: what four images at once moved before
# a mirror took more images at once for the round trips of small ones. It bounds the threads,
# connections and buffers of a run of many big images; a single image never reaches it.
TRANSFERS_PER_JOB = 4


class Session:
    """The run's clients, one per (API host, transport options, credential source)."""

    def __init__(self, settings: Settings, emit: Emit = ignore) -> None:
        self.settings = settings
        self.emit = emit
        self._config: RegistryConfig | None = settings.registries
        self._clients: dict[Hashable, RegistryClient] = {}
        self._gates: dict[str, HostGate] = {}
        self._warned: set[str] = set()
        self._transfers: anyio.CapacityLimiter | None = None
        self._closed = False

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every client the session made (also those a failed step left behind)."""
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    @property
    def clients(self) -> list[RegistryClient]:
        """The clients open now (one HTTP pool each)."""
        return list(self._clients.values())

    def registry_config(self) -> RegistryConfig:
        """config.toml, registries.conf and certs.d, read once per session."""
        if self._config is None:
            self._config = load_registry_config()
        return self._config

    def transfers(self, jobs: int) -> anyio.CapacityLimiter:
        """The bound on large blob transfers at once shared by every image the run copies."""
        if self._transfers is None:
            self._transfers = anyio.CapacityLimiter(max(jobs, 1) * TRANSFERS_PER_JOB)
        return self._transfers

    def gate(self, host: str) -> HostGate:
        """The host's gate, shared by every client of the run that reaches it."""
        gate = self._gates.get(host)
        if gate is None:
            gate = self._gates[host] = HostGate(self.settings.max_requests_per_second)
        return gate

    def transport_for(self, host: str, settings: Settings | None = None) -> TransportOptions:
        """The command line's transport options with this host's configuration added."""
        return self.registry_config().transport(host, (settings or self.settings).transport)

    def client(
        self,
        reference: Reference,
        emit: Emit | None = None,
        *,
        settings: Settings | None = None,
        explicit_credentials: bool = True,
    ) -> RegistryClient:
        """The client for the reference's registry, made on first use. ``--creds`` are for the
        registry named on the command line; a mirror (another host) gets only its own, from the
        credential files. ``settings`` varies the session's (a mirror source's own TLS and
        credentials): a different transport or credential source is a different client."""
        if self._closed:
            raise RuntimeError("the session is closed")
        settings = settings or self.settings
        host = reference.api_host
        options = self.transport_for(host, settings)
        credentials = settings.credentials if explicit_credentials else None
        key = (host, options, credentials, id(settings.throttle))
        client = self._clients.get(key)
        if client is not None:
            return client
        warn = options.insecure and not options.plain_http  # plain HTTP has no certificate
        if warn and not settings.transport.insecure and host not in self._warned:
            # --insecure is announced by whoever set it; a config file's insecure host here, once.
            self._warned.add(host)
            (emit or self.emit)(
                Message(f"warning: TLS certificates of {host} are not verified (insecure)")
            )
        client = RegistryClient(
            host,
            options=options,
            credentials=credentials,
            throttle=settings.throttle,
            gate=self.gate(host),
        )
        self._clients[key] = client
        return client

    def source(
        self, reference: Reference, emit: Emit | None = None, *, settings: Settings | None = None
    ) -> RegistrySource | MirrorSource:
        """Where a pull reads ``reference``: its configured mirrors first, then the registry."""
        emit = emit or self.emit
        origin = RegistrySource(self.client(reference, emit, settings=settings), reference)
        mirrors = self.registry_config().mirrors(reference)
        if not mirrors:
            return origin
        readers = [
            RegistrySource(self.client(m, emit, settings=settings, explicit_credentials=False), m)
            for m in mirrors
        ]
        return MirrorSource(readers, origin, emit)

    def layout(self) -> Layout:
        """The store (an OCI layout); opening it takes no resource."""
        return self.settings.layout()
