"""The library API: what the CLI does, callable from Python, with progress as events."""

from __future__ import annotations

import json
from pathlib import Path

import transfer
from fixtures.images import BuiltImages
from fixtures.registry import Registry
from transfer.progress import BlobDone, Event, ImageDone, ImageStart


def test_public_names_are_exported_and_documented() -> None:
    for name in transfer.__all__:
        value = getattr(transfer, name)
        assert value.__doc__ or not callable(value), f"{name} has no docstring"
    assert {"pull", "pull_sync", "Settings", "Reference", "TransferError"} <= set(transfer.__all__)


def test_pull_sync_returns_the_digest_and_streams_events(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["small"]
    events: list[Event] = []
    result = transfer.pull_sync(
        f"{registry.host}/{info.ref}", transfer.Settings(store=store), emit=events.append
    )
    assert str(result.digest) == info.digest
    assert isinstance(events[0], ImageStart)
    assert isinstance(events[-1], ImageDone)
    assert {e.digest for e in events if isinstance(e, BlobDone)} == {b.digest for b in info.blobs}
    assert [entry.reference for entry in transfer.images(transfer.Settings(store=store))] == [
        f"{registry.host}/{info.ref}"
    ]


def test_transfer_errors_carry_context_attributes(registry: Registry, store: Path) -> None:
    try:
        transfer.pull_sync(f"{registry.host}/test/absent:1", transfer.Settings(store=store))
    except transfer.TransferError as exc:
        assert exc.status == 404
        assert exc.host == registry.host
        assert exc.code == "MANIFEST_UNKNOWN"
        assert exc.exit_code == 1
    else:
        raise AssertionError("pulling an absent image must fail")


def test_tags_follow_link_headers_across_pages() -> None:
    """distribution 2.8 ignores ``n`` on tags/list, so a small fake serves the pages the way
    Docker Hub, GHCR and Harbor do: ``Link: </v2/…/tags/list?n=2&last=…>; rel="next"``."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlparse

    import anyio

    from transfer.client import RegistryClient
    from transfer.transport import TransportOptions

    everything = [f"v{i}" for i in range(7)]
    seen: list[str] = []

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            query = parse_qs(urlparse(self.path).query)
            size, last = int(query["n"][0]), query.get("last", [""])[0]
            start = everything.index(last) + 1 if last else 0
            page = everything[start : start + size]
            body = json.dumps({"name": "paged/app", "tags": page}).encode()
            self.send_response(200)
            if start + size < len(everything):
                link = f'</v2/paged/app/tags/list?n={size}&last={page[-1]}>; rel="next"'
                self.send_header("Link", link)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"

    async def list_all() -> list[str]:
        async with RegistryClient(host, options=TransportOptions(plain_http=True)) as client:
            return await client.list_tags("paged/app", page_size=2)

    try:
        assert anyio.run(list_all) == everything
    finally:
        server.shutdown()
    assert len(seen) == 4  # 7 tags, 2 per page
