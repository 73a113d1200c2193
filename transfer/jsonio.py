"""Reading JSON that others wrote: one loader for every document xfer parses.

Registry answers (error bodies, tag pages, tokens), files (``config.json``, ``index.json``, a
download's sidecar) and a credential helper's output are all written by someone else, and
``json.loads`` raises more than ``ValueError``: nesting deeper than the interpreter's recursion
limit (``b"[" * 50000``) raises ``RecursionError``, which no caller expected and which surfaced
as "a bug in xfer". ``loads`` turns every way a document can fail to parse into ``JSONError``
(a ``ValueError``), for the caller to name in its own typed error.
"""

from __future__ import annotations

import json
from typing import Any


class JSONError(ValueError):
    """A document is not JSON xfer reads; its message says why (no document text)."""


def reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which duplicate wins, so one digest could mean two different images.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {show(key)}")
        out[key] = value
    return out


def show(value: object) -> str:
    """repr() cut short, so hostile keys and values cannot make an error message huge."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(raw: bytes | str, *, strict: bool = False) -> Any:
    """Parse ``raw`` (bytes must be UTF-8). ``strict`` (manifests, archive documents): a key
    given twice or NaN/Infinity is an error too. JSONError for anything that does not parse."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if not strict:
            return json.loads(text)
        return json.loads(
            text, object_pairs_hook=reject_duplicates, parse_constant=_reject_constant
        )
    except UnicodeDecodeError as exc:
        raise JSONError(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise JSONError("nested too deeply") from None
    except ValueError as exc:
        raise JSONError(str(exc)) from None
