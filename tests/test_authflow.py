"""The 401 decision, table-tested: challenge(s), scopes asked, what was sent and what was already
retried → the one next action. End-to-end behaviour against real token and htpasswd registries
is in test_auth.py; here every branch is named and checked without a server."""

from __future__ import annotations

import pytest

from transfer.auth import Challenge
from transfer.authflow import (
    Action,
    FetchToken,
    GiveUp,
    Refetch,
    Refuse,
    Retried,
    SendBasic,
    Sent,
    next_step,
)

PULL = ("repository:a:pull",)
BEARER = Challenge("bearer", {"realm": "https://auth.example/token", "service": "reg"})
WIDER = Challenge(
    "bearer",
    {
        "realm": "https://auth.example/token",
        "service": "reg",
        "error": "insufficient_scope",
        "scope": "repository:b:pull repository:a:pull",
    },
)
BASIC = Challenge("basic", {"realm": "reg"})
NEGOTIATE = Challenge("negotiate", {})
GROWN = ("repository:a:pull", "repository:b:pull")
NONE = Retried()
FRESH = Retried(fresh=True)
BOTH = Retried(fresh=True, grown=True)

CASES: list[tuple[str, list[Challenge], Sent, Retried, Action, Retried]] = [
    ("first bearer challenge", [BEARER], "none", NONE, FetchToken(BEARER, PULL), FRESH),
    ("bearer is chosen over basic", [BASIC, BEARER], "none", NONE, FetchToken(BEARER, PULL), FRESH),
    ("first basic challenge", [BASIC], "none", NONE, SendBasic(BASIC, PULL), FRESH),
    ("a cached token refused", [BEARER], "bearer", NONE, Refetch(BEARER, PULL), FRESH),
    (
        "a fresh token refused",
        [BEARER],
        "bearer",
        FRESH,
        GiveUp("a fresh token was refused"),
        FRESH,
    ),
    (
        "basic refused",
        [BASIC],
        "basic",
        FRESH,
        GiveUp("the username and password were refused"),
        FRESH,
    ),
    ("a wider scope asked for", [WIDER], "bearer", FRESH, FetchToken(WIDER, GROWN), BOTH),
    (
        "a wider scope asked for twice",
        [WIDER],
        "bearer",
        BOTH,
        GiveUp("a wider scope was already asked for once"),
        BOTH,
    ),
    (
        "a wider scope on the first challenge",
        [WIDER],
        "none",
        NONE,
        FetchToken(WIDER, GROWN),
        FRESH,
    ),
    (
        "a cached token refused, only basic now",
        [BASIC],
        "bearer",
        NONE,
        SendBasic(BASIC, PULL),
        FRESH,
    ),
    ("no challenge", [], "none", NONE, GiveUp("no challenge to answer"), NONE),
    (
        "an unsupported scheme",
        [NEGOTIATE],
        "none",
        NONE,
        Refuse("registry reg.example asks for an unsupported authentication scheme (negotiate)"),
        NONE,
    ),
]


@pytest.mark.parametrize(
    ("challenges", "sent", "retried", "action", "after"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_next_step(
    challenges: list[Challenge], sent: Sent, retried: Retried, action: Action, after: Retried
) -> None:
    step = next_step(challenges, PULL, sent, retried, host="reg.example", has_username=True)
    assert step.action == action
    assert step.retried == after


def test_basic_without_a_username_is_refused_with_a_hint() -> None:
    step = next_step([BASIC], PULL, "none", NONE, host="reg.example", has_username=False)
    assert step.action == Refuse(
        "registry reg.example requires a username and password", "use xfer login or --creds"
    )


def test_bearer_needs_no_username() -> None:
    step = next_step([BEARER], PULL, "none", NONE, host="reg.example", has_username=False)
    assert step.action == FetchToken(BEARER, PULL)


def test_every_retry_reason_is_spent_once_so_a_refusing_registry_ends() -> None:
    """A cached token sent for a narrow scope, then every answer refused again: one wider
    scope, one refetch, then the 401 is given back."""
    scopes: tuple[str, ...] = PULL
    sent: Sent = "bearer"
    retried = NONE
    actions = []
    for _ in range(5):
        step = next_step([WIDER], scopes, sent, retried, host="reg.example", has_username=True)
        actions.append(type(step.action))
        if isinstance(step.action, GiveUp):
            break
        assert isinstance(step.action, FetchToken | Refetch)
        scopes, sent, retried = step.action.scopes, "bearer", step.retried
    assert actions == [FetchToken, Refetch, GiveUp]
