"""Progress as a stream of events: the library emits them, the CLI renders them.

The library never prints (house rule 7); every command takes an ``Emit`` callback, and the CLI
turns the events into tqdm bars, one line per blob, or JSON Lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    def to_json(self) -> dict[str, Any]:
        return {"event": EVENT_NAMES[type(self)], **asdict(self)}


@dataclass(frozen=True)
class ImageStart(Event):
    reference: str
    blobs: int
    bytes: int


@dataclass(frozen=True)
class BlobStart(Event):
    digest: str
    size: int
    offset: int = 0  # > 0 when a partial from an earlier attempt or run is resumed


@dataclass(frozen=True)
class BlobProgress(Event):
    digest: str
    advance: int


@dataclass(frozen=True)
class BlobDone(Event):
    digest: str
    size: int
    transferred: int  # bytes that crossed the network in this run for this blob
    skipped: bool = False  # the destination already had it


@dataclass(frozen=True)
class Retry(Event):
    what: str
    attempt: int
    wait: float
    error: str


@dataclass(frozen=True)
class Message(Event):
    text: str


@dataclass(frozen=True)
class ImageDone(Event):
    reference: str
    digest: str
    bytes_transferred: int
    blobs_transferred: int
    blobs_skipped: int
    seconds: float
    media_type: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data.update(data.pop("extra"))
        data["event"] = "done"
        return data


EVENT_NAMES: dict[type[Event], str] = {
    ImageStart: "image_start",
    BlobStart: "blob_start",
    BlobProgress: "blob_progress",
    BlobDone: "blob_done",
    Retry: "retry",
    Message: "message",
    ImageDone: "done",
}

Emit = Callable[[Event], None]


def ignore(_: Event) -> None:
    """The default sink for library users who do not want progress."""
