"""Rate limits as users meet them: what a registry says about its limits holds for the whole run.

A 429's ``Retry-After`` or a ``RateLimit-Remaining: 0`` with its reset, met by one image, pauses
every request of the run to that host (instead of each image meeting its own 429 and burning its
retries), and ``--max-requests-per-second`` spaces the requests to each host. Observed at a real
registry behind the fault proxy, by when the requests arrived there.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import transfer
from fixtures.faultproxy import Delay, Fault, FaultProxy, HeaderList, Record, Status
from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import xfer
from transfer.progress import Event, Retry
from transfer.ratelimit import MAX_CLOSED, PAUSE_WITHOUT_RETRY_AFTER, HostGate, pause_of
from transfer.reference import parse

NOW = 1_700_000_000.0  # the Unix time the header table is read at


def _headers(**fields: str) -> dict[str, str]:
    return {name.replace("_", "-"): value for name, value in fields.items()}


@pytest.mark.parametrize(
    ("status", "headers", "pause"),
    [
        # a plain answer, or a limit not yet reached: no pause
        (200, {}, None),
        (200, _headers(ratelimit_remaining="5", ratelimit_reset="30"), None),
        (200, _headers(ratelimit_remaining="0;w=21600", ratelimit_limit="100;w=21600"), None),
        # the draft's separate fields, and Docker Hub's spelling with a window parameter
        (200, _headers(ratelimit_remaining="0", ratelimit_reset="30"), 30.0),
        (200, _headers(ratelimit_remaining="0;w=21600", ratelimit_reset="30;w=21600"), 30.0),
        (200, _headers(ratelimit_remaining="0", ratelimit_reset=f"{NOW + 12:.0f}"), 12.0),
        (200, _headers(ratelimit_remaining="0", ratelimit_reset="soon"), None),
        # the combined field: drafts 05-06 (a dictionary) and 07+ (a list of policies)
        (200, {"ratelimit": "limit=100, remaining=0, reset=7"}, 7.0),
        (200, {"ratelimit": "limit=100, remaining=3, reset=7"}, None),
        (200, {"ratelimit": '"day";r=50;t=3600, "minute";r=0;t=20'}, 20.0),
        (200, {"ratelimit": '"day";r=0;t=3600, "minute";r=0;t=20'}, 3600.0),
        (200, {"ratelimit": '"minute";r=4;t=20'}, None),
        # a 429: its Retry-After first, in seconds or as a date, then the reset, then briefly
        (429, {"retry-after": "2"}, 2.0),
        (429, {"retry-after": email.utils.formatdate(NOW + 9, usegmt=True)}, 9.0),
        (429, {"retry-after": "2", "ratelimit-remaining": "0", "ratelimit-reset": "40"}, 2.0),
        (429, _headers(ratelimit_remaining="0", ratelimit_reset="40"), 40.0),
        (429, {"retry-after": "later"}, PAUSE_WITHOUT_RETRY_AFTER),
        (429, {}, PAUSE_WITHOUT_RETRY_AFTER),
        (503, {"retry-after": "30"}, None),  # retried by the policy; not a host-wide limit
    ],
)
def test_what_an_answer_says_about_its_hosts_limits(
    status: int, headers: dict[str, str], pause: float | None
) -> None:
    assert pause_of(status, headers.get, now=NOW) == pause


def test_a_gate_caps_a_pause_and_keeps_the_later_end() -> None:
    gate = HostGate()
    assert not gate.active  # no limit and nothing seen: requests do not even ask
    gate.close_for(10 * MAX_CLOSED)
    assert gate.active and MAX_CLOSED - 5 < gate.closed_for <= MAX_CLOSED
    gate.close_for(1)
    assert gate.closed_for > MAX_CLOSED - 5


def test_a_sessions_clients_of_one_host_share_its_gate(tmp_path: Path) -> None:
    settings = transfer.Settings(store=tmp_path, registries=transfer.RegistryConfig())
    other = transfer.Settings(
        store=tmp_path,
        registries=transfer.RegistryConfig(),
        credentials=transfer.Credentials("u", "p"),
    )

    async def main() -> None:
        async with transfer.Session(settings) as session:
            one = session.client(parse("registry.example/a:1"))
            two = session.client(parse("registry.example/b:1"), settings=other)
            elsewhere = session.client(parse("elsewhere.example/a:1"))
            assert one is not two  # another credential source: another client, the same host
            assert one.transport.gate is two.transport.gate
            assert elsewhere.transport.gate is not one.transport.gate

    anyio.run(main)


def test_worker_threads_and_tasks_share_one_schedule() -> None:
    """The rate's turns are handed out in order whoever asks: no caller starts early."""
    rate = 20.0
    gate = HostGate(rate)
    starts: list[float] = []

    async def main() -> float:
        began = time.monotonic()
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(anyio.to_thread.run_sync, lambda: starts.append(_blocking(gate)))
            for _ in range(3):
                group.start_soon(lambda: _waited(gate, starts))
        return began

    began = anyio.run(main)
    assert len(starts) == 6
    for turn, start in enumerate(sorted(starts)):
        assert start >= began + turn / rate - 0.001, (turn, start - began)


def _blocking(gate: HostGate) -> float:
    gate.wait_blocking()
    return time.monotonic()


async def _waited(gate: HostGate, starts: list[float]) -> None:
    await gate.wait()
    starts.append(time.monotonic())


# ---- through the fault proxy ------------------------------------------------------------------

NAMES = ("small", "shared-a", "shared-b", "docker")
LIMITED = "shared-a"
PAUSE = 2.0


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as p:
        yield p


class LimitReached(Fault):
    """Forward the answer, saying the host's quota is spent until ``reset`` seconds from now."""

    def __init__(self, reset: float, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.reset = reset

    def transform_response(self, status: int, headers: HeaderList) -> HeaderList:
        return [
            *headers,
            ("ratelimit-limit", "100;w=21600"),
            ("ratelimit-remaining", "0;w=21600"),
            ("ratelimit-reset", f"{self.reset:g}"),
        ]


@pytest.mark.parametrize("signal", ["429 Retry-After", "RateLimit-Remaining 0"])
def test_a_limit_met_by_one_image_pauses_the_runs_other_requests_to_that_host(
    proxy: FaultProxy, images: BuiltImages, tmp_path: Path, signal: str
) -> None:
    manifest = f"/v2/test/{LIMITED}/manifests/"
    if signal.startswith("429"):
        proxy.add(Status(429, retry_after=f"{PAUSE:g}", match=manifest, method="GET"))
    else:
        proxy.add(LimitReached(PAUSE, match=manifest, method="GET"))
    # The other images' manifests answer half a second late, so their blobs are asked for well
    # after the limit was met: without a shared pause they would arrive within it.
    proxy.add(Delay(0.5, match="/manifests/", method="GET", times=None))
    events: list[Event] = []
    refs = [f"{proxy.host}/{images.images[name].ref}" for name in NAMES]

    async def main() -> list[transfer.CopyResult]:
        settings = transfer.Settings(store=tmp_path / "store", registries=transfer.RegistryConfig())
        results: list[transfer.CopyResult] = []
        async with transfer.Session(settings) as session:
            # The host's first contact made before the pulls (as a mirror's plan does): else the
            # image whose manifest made it would send its blobs as the limit's answer arrives.
            await session.client(transfer.parse(refs[0])).greet()

            async def one(index: int, ref: str) -> None:
                own = transfer.Settings(
                    store=tmp_path / f"store{index}", registries=transfer.RegistryConfig()
                )
                results.append(await transfer.pull(ref, own, emit=events.append, session=session))

            async with anyio.create_task_group() as group:
                for index, ref in enumerate(refs):
                    group.start_soon(one, index, ref)
        return results

    results = anyio.run(main)
    assert len(results) == len(NAMES)  # every image pulled: the limit delayed, it failed nothing

    log = proxy.snapshot()
    limited = [r for r in log if r.method == "GET" and manifest in r.path]
    met = limited[0]
    assert met.finished is not None
    # Each image's first request (its manifest) went out with the limited one, before anything
    # was known; every later one follows an answer that came half a second after it.
    firsts = {_repository(r): r for r in reversed(log)}.values()
    after = [r for r in log if r.started > met.finished and r is not met and r not in firsts]
    others = [r for r in after if _repository(r) != f"test/{LIMITED}"]
    assert others, "no other image asked anything after the limit was met: nothing was shown"
    # The client read the answer after the proxy took the request: nothing more may reach the
    # host before that moment plus the pause.
    early = [(r.method, r.path, round(r.started - met.started, 3)) for r in after]
    early = [e for e in early if e[2] < PAUSE]
    assert not early, f"sent during the {PAUSE:g} s pause: {early}"
    # Retries stay bounded: only the limited request is retried, once, and no other met a 429.
    retries = [e for e in events if isinstance(e, Retry)]
    assert [r.status for r in log if r.status == 429] == ([429] if signal.startswith("429") else [])
    if signal.startswith("429"):
        assert [r.status for r in limited] == [429, 200]
        assert len(retries) == 1 and LIMITED in retries[0].what
    else:
        assert [r.status for r in limited] == [200]
        assert not retries


def _repository(record: Record) -> str:
    return record.path.removeprefix("/v2/").partition("/manifests/")[0].partition("/blobs/")[0]


def _busiest_second(records: list[Record]) -> int:
    starts = sorted(r.started for r in records)
    return max(sum(1 for s in starts[i:] if s < start + 1.0) for i, start in enumerate(starts))


def test_max_requests_per_second_spaces_the_requests_to_a_host(
    proxy: FaultProxy, images: BuiltImages, tmp_path: Path
) -> None:
    refs = [f"{proxy.host}/{images.images[name].ref}" for name in (*NAMES, "whiteouts")]
    run = xfer("pull", "--max-requests-per-second", "5", *refs, store=tmp_path / "store")
    assert run.code == 0, run.err
    log = proxy.snapshot()
    assert len(log) >= 20, [r.path for r in log]
    assert _busiest_second(log) <= 5 + 1, sorted(round(r.started - log[0].started, 3) for r in log)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "fast"])
def test_max_requests_per_second_must_be_a_positive_number(tmp_path: Path, value: str) -> None:
    run = xfer("pull", "--max-requests-per-second", value, "localhost:1/a:1", store=tmp_path)
    assert run.code == 2, run.err
    assert "--max-requests-per-second" in run.err
