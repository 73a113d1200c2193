"""A registry host's rate limits, honoured by the whole run: one ``HostGate`` per host.

Every request to a host passes its gate before it is sent (``HostTransport.exchange``), so
what one answer says about the host applies to every image and stream of the run:

- **Closed until T.** A 429's ``Retry-After`` (or, without one, a short pause), or a
  ``RateLimit-Remaining: 0`` with its reset time (the IETF draft headers, and the
  ``ratelimit-*`` that Docker Hub sends: ``ratelimit-remaining: 0;w=21600``), closes the host
  until then, at most ``MAX_CLOSED``. The request that got the 429 is retried by the retry
  policy; the others wait at the gate instead of meeting a 429 of their own and burning
  their retries.
- **``--max-requests-per-second``.** Requests start evenly spaced, 1/rate apart (a virtual
  schedule, no burst): at most rate + 1 start in any second, first come first served.

A gate nobody limited and no answer closed costs one attribute test per request (``active``);
every answer costs a status test and two header look-ups. The arithmetic is under a thread
lock, so a blocking caller (``wait_blocking``) shares the schedule with the asynchronous ones.
Token requests (to the token realm, usually another host) do not pass the registry's gate.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable

import anyio
import httpx

MAX_CLOSED = 300.0  # a host asking for a longer pause is capped, not obeyed blindly
PAUSE_WITHOUT_RETRY_AFTER = 1.0  # a 429 saying nothing: slow the others down a little
# RateLimit-Reset is delta-seconds in the draft; some servers send a Unix time instead, which
# no sensible delta reaches (31 years).
EPOCH_THRESHOLD = 1e9


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in seconds or as an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _number(text: str) -> float | None:
    text = text.strip().strip('"')
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 and value == value and value != float("inf") else None


def _reset_seconds(value: float, now: float | None) -> float:
    if value >= EPOCH_THRESHOLD:  # a Unix time, not a delta
        return max(value - (time.time() if now is None else now), 0.0)
    return value


def _params(item: str) -> dict[str, str]:
    """``"name";r=0;t=5`` or ``remaining=0`` → its key=value pairs (keys lower-cased)."""
    pairs: dict[str, str] = {}
    for part in item.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            pairs[key.strip().lower()] = value.strip()
    return pairs


def _combined(value: str, now: float | None) -> float | None:
    """The ``RateLimit`` field: draft 07+ lists policies (``"day";r=0;t=30, "min";r=5;t=2``),
    drafts 05-06 a dictionary (``limit=100, remaining=0, reset=30``). The pause is the longest
    reset of a policy with nothing remaining."""
    items = [_params(item) for item in value.split(",")]
    if any("r" in item for item in items):
        resets = [_number(item.get("t", "")) for item in items if _number(item.get("r", "1")) == 0]
        pauses = [_reset_seconds(reset, now) for reset in resets if reset is not None]
        return max(pauses) if pauses else None
    merged = {key: val for item in items for key, val in item.items()}
    if _number(merged.get("remaining", "1")) != 0:
        return None
    reset = _number(merged.get("reset", ""))
    return None if reset is None else _reset_seconds(reset, now)


def _first(value: str) -> float | None:
    """The first item of a list field, its parameters dropped (``0;w=21600`` → 0)."""
    return _number(value.split(",")[0].split(";")[0])


def pause_of(
    status: int, get: Callable[[str], str | None], now: float | None = None
) -> float | None:
    """How long an answer asks that its host not be sent anything, uncapped; None: no pause.

    ``get`` looks a header up by its lower-case name (``httpx.Headers.get``). A 429 pauses for
    its Retry-After, else for the RateLimit reset, else briefly; any answer with nothing
    remaining pauses until the reset it gives (none given: no pause, the next request will
    learn more)."""
    if status == 429:
        retry_after = parse_retry_after(get("retry-after"), now)
        if retry_after is not None:
            return retry_after
    remaining = get("ratelimit-remaining")
    pause = None
    if remaining is not None:
        if _first(remaining) == 0 and (reset := get("ratelimit-reset")) is not None:
            seconds = _first(reset)
            pause = None if seconds is None else _reset_seconds(seconds, now)
    elif (combined := get("ratelimit")) is not None:
        pause = _combined(combined, now)
    if status == 429 and pause is None:
        return PAUSE_WITHOUT_RETRY_AFTER
    return pause


class HostGate:
    """Where every request to one host waits its turn: closed until T, and the request rate."""

    def __init__(self, rate: float | None = None) -> None:
        if rate is not None and not rate > 0:
            raise ValueError("the request rate must be positive")
        self.interval = 1.0 / rate if rate else 0.0
        self.active = rate is not None  # false: nothing to wait for, ``wait`` is not called
        self._until = 0.0  # time.monotonic() before which nothing is sent
        self._next = 0.0  # the next free start of the rate's schedule
        self._lock = threading.Lock()

    @property
    def closed_for(self) -> float:
        """Seconds until the host may be sent requests again (0: open)."""
        return max(self._until - time.monotonic(), 0.0)

    def close_for(self, seconds: float) -> None:
        """Send nothing to the host for ``seconds`` (at most MAX_CLOSED); a later end wins."""
        until = time.monotonic() + min(max(seconds, 0.0), MAX_CLOSED)
        with self._lock:
            self._until = max(self._until, until)
        self.active = True

    def observe(self, response: httpx.Response) -> None:
        """Learn what an answer from the host says about its limits."""
        status = response.status_code
        headers = response.headers
        if status != 429 and "ratelimit-remaining" not in headers and "ratelimit" not in headers:
            return
        pause = pause_of(status, headers.get)
        if pause is not None:
            self.close_for(pause)

    def _turn(self) -> tuple[float, bool]:
        """(seconds to wait, whether a start was reserved): closed, come back then; else the
        next start of the schedule, reserved."""
        now = time.monotonic()
        with self._lock:
            if self._until > now:
                return self._until - now, False
            if not self.interval:
                return 0.0, True
            start = max(now, self._next)
            self._next = start + self.interval
            return start - now, True

    async def wait(self) -> None:
        """Until this request may be sent (closed meanwhile: until it opens, then a new turn)."""
        while True:
            delay, reserved = self._turn()
            if delay > 0:
                await anyio.sleep(delay)
            if reserved and self._until <= time.monotonic():
                return

    def wait_blocking(self) -> None:
        """``wait`` for a worker thread."""
        while True:
            delay, reserved = self._turn()
            if delay > 0:
                time.sleep(delay)
            if reserved and self._until <= time.monotonic():
                return
