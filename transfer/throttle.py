"""A bytes-per-second cap shared by every stream of a run (``--limit-rate``)."""

from __future__ import annotations

import math
import time

import anyio


class Throttle:
    """A token bucket: ``take(n)`` waits until n bytes fit under the rate.

    The bucket holds at most a quarter second of traffic, so a burst after an idle moment
    cannot overshoot the cap by much, while chunks of up to 1 MiB still pass at low rates.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(rate / 4, 64 * 1024)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._lock = anyio.Lock()

    async def take(self, amount: int) -> None:
        async with self._lock:  # first come, first served across streams
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= amount
            if self._tokens < 0:
                # Sleep off the debt while holding the lock, so others queue behind us.
                await anyio.sleep(-self._tokens / self.rate)


def parse_rate(text: str) -> float:
    """``50M`` → 50 MB/s, ``800k``, ``1.5G``, ``1048576`` (bytes per second; K/M/G are 1000s,
    Ki/Mi/Gi 1024s; a trailing ``B`` or ``/s`` is allowed)."""
    value = text.strip().removesuffix("/s").removesuffix("B").removesuffix("b")
    factors = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "ki": 1024, "mi": 1024**2, "gi": 1024**3}
    number = value.rstrip("kKmMgGiI")
    unit = value[len(number) :].lower()
    if unit not in factors:
        raise ValueError(f"unknown unit in rate {text!r}")
    rate = float(number) * factors[unit]
    if not math.isfinite(rate) or rate <= 0:  # "inf", "nan", "1e400" would pass float()
        raise ValueError(f"{text!r} is not a positive, finite number of bytes")
    return rate
