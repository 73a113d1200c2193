"""The one retry policy: tenacity, sleeping with anyio, honouring Retry-After.

What is retryable is decided by the error itself (``TransferError.retryable``): network faults,
408/429/5xx, a transfer that arrived corrupt. Everything else fails at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
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


async def retrying(
    what: str,
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    emit: Emit = ignore,
) -> T:
    """Run ``operation`` until it succeeds, fails for good, or the policy gives up."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        emit(Retry(what=what, attempt=state.attempt_number, wait=round(wait, 3), error=str(exc)))

    retryer = AsyncRetrying(
        sleep=anyio.sleep,
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_seconds),
        wait=_Wait(policy),
        retry=retry_if_exception(_is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )

    async def call() -> T:  # tenacity awaits only what it can see is a coroutine function
        return await operation()

    return await retryer(call)
