"""What to do with a 401: the decision, pure, apart from the request loop that acts on it.

The loop (client.py) sends, and on a 401 from the registry itself asks ``next_step`` with what it
knows: the challenges offered, the scopes it asked for, what the refused request carried and what
was already retried. The answer is one action: fetch a token for some scopes, send Basic, drop the
refused token and fetch another, or give the 401 back (the caller fails on it). Each reason to
retry is used once, so a registry that keeps refusing ends in a clean failure, never a loop.

Not an ``httpx.Auth`` flow: big blob bodies are sent by a blocking client in a worker thread,
which cannot await a token fetch, and redirects are followed by our own loop (redirects.py) with
rules per hop; one decision serves both paths instead of two flows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .auth import Challenge

Sent = Literal["none", "bearer", "basic"]


@dataclass(frozen=True)
class Retried:
    """The retries already spent on one request: each reason is spent at most once."""

    fresh: bool = False  # the token now held was fetched for this request: refusing it is final
    grown: bool = False  # the scopes were widened once for an ``insufficient_scope``


@dataclass(frozen=True)
class FetchToken:
    """Answer the challenge with a bearer token for ``scopes`` (the cache's, or a new one)."""

    challenge: Challenge
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class Refetch:
    """The token sent was refused (expired, revoked): drop it and fetch another for ``scopes``."""

    challenge: Challenge
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class SendBasic:
    """Answer the challenge with the username and password (``scopes``: what is now asked for,
    which the next 401 is judged against)."""

    challenge: Challenge
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class GiveUp:
    """Return the 401 to the caller, which turns it into Unauthorized."""

    why: str


@dataclass(frozen=True)
class Refuse:
    """Fail at once: the challenge cannot be answered at all (what to tell the user)."""

    message: str
    hint: str | None = None


Action = FetchToken | Refetch | SendBasic | GiveUp | Refuse


@dataclass(frozen=True)
class Step:
    action: Action
    retried: Retried  # what the next 401 of the same request is judged with


def choose(challenges: list[Challenge], host: str, has_username: bool) -> Challenge | Refuse:
    """Bearer before Basic; Basic only with a username to send."""
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                if scheme == "basic" and not has_username:
                    return Refuse(
                        f"registry {host} requires a username and password",
                        "use xfer login or --creds",
                    )
                return challenge
    names = ", ".join(c.scheme for c in challenges) or "none"
    return Refuse(f"registry {host} asks for an unsupported authentication scheme ({names})")


def next_step(
    challenges: list[Challenge],
    scopes: tuple[str, ...],
    sent: Sent,
    retried: Retried,
    *,
    host: str,
    has_username: bool,
) -> Step:
    """The answer to a 401 that carried ``sent`` for ``scopes``, after ``retried``."""
    if not challenges:
        return Step(GiveUp("no challenge to answer"), retried)
    challenge = choose(challenges, host, has_username)
    if isinstance(challenge, Refuse):
        return Step(challenge, retried)
    wanted = scopes
    extra = challenge.params.get("scope")
    if challenge.params.get("error") == "insufficient_scope" and extra:
        wanted = tuple(dict.fromkeys((*scopes, *extra.split(" "))))
    answer: Action = (
        FetchToken(challenge, wanted)
        if challenge.scheme == "bearer"
        else SendBasic(challenge, wanted)
    )
    if sent == "none":
        # The first challenge: whatever is fetched for it now is fresh, never refreshed again.
        return Step(answer, replace(retried, fresh=True))
    if wanted != scopes:
        if retried.grown:
            return Step(GiveUp("a wider scope was already asked for once"), retried)
        return Step(answer, replace(retried, grown=True))
    if sent == "bearer" and not retried.fresh:
        # The cached token was refused: drop it (and switch to Basic if that is all offered now).
        again = Refetch(challenge, wanted) if challenge.scheme == "bearer" else answer
        return Step(again, replace(retried, fresh=True))
    if sent == "bearer":
        return Step(GiveUp("a fresh token was refused"), retried)
    return Step(GiveUp("the username and password were refused"), retried)
