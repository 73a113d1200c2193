"""The library API: what the CLI does, callable from Python, with progress as events."""

from __future__ import annotations

import importlib
import inspect
import json
import threading
import types
from pathlib import Path

import anyio
import pytest

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
    assert [entry.reference for entry in transfer.images_sync(transfer.Settings(store=store))] == [
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


# The commands of the CLI, as the library offers them (``rm`` is ``remove``).
COMMANDS = (
    "pull push copy mirror save load unpack inspect referrers tags images remove gc verify login "
    "logout"
)


def test_all_names_what_the_package_exports() -> None:
    # dir(), not vars(): the names load on first use (the package's __getattr__).
    exported = {
        name
        for name in dir(transfer)
        if not name.startswith("_") and not isinstance(getattr(transfer, name), types.ModuleType)
    }
    assert len(transfer.__all__) == len(set(transfer.__all__))
    assert set(transfer.__all__) == exported


def test_every_command_is_async_with_a_sync_twin_of_the_same_signature() -> None:
    coroutines = {
        name
        for name in transfer.__all__
        if inspect.iscoroutinefunction(getattr(transfer, name))
        and name != "copy_image"  # the engine: its endpoints are opened in one event loop
    }
    assert set(COMMANDS.split()) <= coroutines
    for name in coroutines:
        func, twin = getattr(transfer, name), getattr(transfer, f"{name}_sync")
        assert f"{name}_sync" in transfer.__all__
        assert not inspect.iscoroutinefunction(twin)
        assert twin.__wrapped__ is func  # made by the one helper, not written by hand
        assert inspect.signature(twin) == inspect.signature(func)
        assert twin.__name__ == f"{name}_sync" and twin.__doc__


def test_api_functions_stay_when_the_modules_of_their_names_load() -> None:
    """``transfer.copy``, ``.mirror`` and ``.unpack`` are modules too: importing one (as the
    first ``mirror`` or ``unpack`` call does) must not replace the function on the package,
    or the second ``await transfer.unpack(...)`` calls a module."""
    for name in ("copy", "mirror", "unpack"):
        importlib.import_module(f"transfer.{name}")
        assert getattr(transfer, name) is getattr(transfer.api, name)
        assert inspect.iscoroutinefunction(getattr(transfer, name))


def test_store_commands_run_off_the_event_loop(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    """images, remove, gc and verify read the store in a worker thread: the caller's event
    loop keeps running meanwhile."""
    info = images.images["small"]
    ref = f"{registry.host}/{info.ref}"
    settings = transfer.Settings(store=store)
    transfer.pull_sync(ref, settings)
    loop_threads: set[int] = set()
    work_threads: set[int] = set()
    from transfer import maintenance

    real_collect = maintenance.collect

    def collect(*args: object, **kwargs: object) -> object:
        work_threads.add(threading.get_ident())
        return real_collect(*args, **kwargs)  # type: ignore[arg-type]

    async def main() -> None:
        loop_threads.add(threading.get_ident())
        assert [e.reference for e in await transfer.images(settings)] == [ref]
        assert (await transfer.verify(settings)).problems == ()
        assert await transfer.remove([ref], settings) == [ref]
        maintenance.collect = collect  # type: ignore[assignment]
        try:
            report = await transfer.gc(settings)
        finally:
            maintenance.collect = real_collect
        assert report.blobs_removed == len(info.blobs) + 1  # the layers, config and manifest
        assert await transfer.images(settings) == []

    anyio.run(main)
    assert work_threads and not work_threads & loop_threads


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "{home}/.local/share/xfer/store"),
        ({"XDG_DATA_HOME": "{tmp}/data"}, "{tmp}/data/xfer/store"),
        ({"XDG_DATA_HOME": ""}, "{home}/.local/share/xfer/store"),
        # The XDG spec: a relative path is invalid and ignored (it put the store under the cwd).
        ({"XDG_DATA_HOME": "rel/data"}, "{home}/.local/share/xfer/store"),
        ({"XFER_STORE": "{tmp}/s", "XDG_DATA_HOME": "{tmp}/data"}, "{tmp}/s"),
        ({"XFER_STORE": "", "XDG_DATA_HOME": "{tmp}/data"}, "{tmp}/data/xfer/store"),
    ],
    ids=["default", "xdg", "xdg-empty", "xdg-relative", "xfer-store", "xfer-store-empty"],
)
def test_default_store_location(
    env: dict[str, str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for name in ("XFER_STORE", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))
    assert transfer.default_store() == Path(expected.format(home=home, tmp=tmp_path))
    assert transfer.Settings().store == transfer.default_store()
    assert not home.exists()  # finding the path creates nothing
