"""The library API: what the CLI does, callable from Python, with progress as events."""

from __future__ import annotations

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
