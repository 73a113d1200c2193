"""The one retry policy: tenacity, sleeping with anyio, honouring Retry-After.

What is retryable is decided by the error itself (``TransferError.retryable``): network faults,
408/429/5xx, a transfer that arrived corrupt. Everything else fails at once. A 429's pause
holds for every request to its host (ratelimit.py's gate); here it is only the retried
request's own wait.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_random_exponential,
)

from .errors import RegistryError, TransferError
from .progress import Emit, Retry, ignore

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    max_seconds: float = 300.0  # total time spent on one operation, waits included
    initial_wait: float = 0.5
    max_wait: float = 20.0
    max_retry_after: float = 60.0  # a server asking for longer is capped, not obeyed blindly


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransferError) and exc.retryable


class _Wait:
    """Exponential backoff with full jitter, unless the server said how long (Retry-After)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.backoff = wait_random_exponential(multiplier=policy.initial_wait, max=policy.max_wait)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RegistryError) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), self.policy.max_retry_after)
        return float(self.backoff(state))


class _Stop:
    """Give up after ``attempts`` tries, or when the next wait would end more than
    ``max_seconds`` after the start: the start of the run, or the end of the last attempt that
    made progress (a download cut after minutes of progress resumes, as one cut after seconds
    does; ``attempts`` still bounds how often)."""

    def __init__(self, policy: RetryPolicy, progress: Callable[[], int] | None) -> None:
        self.policy = policy
        self.progress = progress
        self.mark = progress() if progress is not None else 0
        self.since: float | None = None

    def __call__(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self.policy.attempts:
            return True
        now = time.monotonic()
        since = state.start_time if self.since is None else self.since
        if self.progress is not None and (mark := self.progress()) > self.mark:
            self.mark, since = mark, now
        self.since = since
        return now - since + (state.upcoming_sleep or 0.0) > self.policy.max_seconds


async def retrying(
    what: str,
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    emit: Emit = ignore,
    *,
    progress: Callable[[], int] | None = None,
) -> T:
    """Run ``operation`` until it succeeds, fails for good, or the policy gives up.

    ``progress``, when given, counts the work done so far (bytes received): an attempt that
    advanced it restarts the ``max_seconds`` clock.
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        emit(Retry(what=what, attempt=state.attempt_number, wait=round(wait, 3), error=str(exc)))

    retryer = AsyncRetrying(
        sleep=anyio.sleep,
        stop=_Stop(policy, progress),
        wait=_Wait(policy),
        retry=retry_if_exception(_is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )

    async def call() -> T:  # tenacity awaits only what it can see is a coroutine function
        return await operation()

    return await retryer(call)
