"""Bounded work whatever the server sends: an index graph's fan-out, and bodies that trickle.

An index that lists another index N times, which lists one image N times, is three distinct
manifests: each is fetched once and kept once, and the graph's total size is bounded. A server
that sends a byte now and then never keeps a request alive past a bound derived from
``--timeout``: manifests, tokens and blobs alike (a trickled blob is resumed, as a cut one is).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from fixtures.faultproxy import FaultProxy, Trickle
from fixtures.images import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    BuiltImages,
    canonical_json,
)
from fixtures.pushimage import RegistryPusher
from fixtures.registry import Registry
from fixtures.tokenserver import ALICE
from tests.helpers import Run, peak_rss, stored_blobs, xfer, xfer_env
from transfer.digest import Digest
from transfer.errors import ManifestError
from transfer.graph import GraphBounds, GraphBudget
from transfer.manifest import Descriptor

FAN_OUT = 200
# One byte every half second: every single read succeeds well inside --timeout.
TRICKLE = 0.5
HANG_BOUND = 15.0  # seconds: a bound on the hang, not a performance figure
FAST = ("--timeout", "2", "--retries", "0")


def _desc(digest: str, size: int, media_type: str) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def _push_image(pusher: RegistryPusher, repo: str, note: str = "") -> tuple[str, int]:
    """A one-layer image in ``repo``; ``note`` (an annotation) makes distinct manifests."""
    layer = pusher.push_bytes(repo, b"fan-out layer", OCI_LAYER_GZIP)
    config = pusher.push_bytes(repo, b'{"os":"linux","architecture":"amd64"}', OCI_CONFIG)
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _desc(config.digest, config.size, OCI_CONFIG),
        "layers": [_desc(layer.digest, layer.size, OCI_LAYER_GZIP)],
    }
    if note:
        doc["annotations"] = {"note": note}
    raw = canonical_json(doc)
    digest = str(Digest.of(raw))
    pusher.put_manifest(repo, digest, raw, OCI_MANIFEST)
    return digest, len(raw)


def _push_index(
    pusher: RegistryPusher, repo: str, tag: str, children: list[tuple[str, int, str]]
) -> tuple[str, int]:
    raw = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    **_desc(digest, size, media_type),
                    "platform": {"os": "linux", "architecture": "amd64"},
                }
                for digest, size, media_type in children
            ],
        }
    )
    digest = str(Digest.of(raw))
    pusher.put_manifest(repo, tag, raw, OCI_INDEX)
    return digest, len(raw)


def _run_measured(*args: str | Path, timeout: float) -> tuple[Run, float]:
    """Run the CLI; returns its result and its own peak RSS in MiB."""
    done, peak_mib, _, killed = peak_rss(
        [sys.executable, "-m", "transfer", *map(str, args)], env=xfer_env(), timeout=timeout
    )
    if killed:
        raise AssertionError(f"xfer {' '.join(map(str, args))} ran over {timeout} s")
    return Run(done.returncode, done.stdout, done.stderr), peak_mib


# --- item 4: index fan-out ---------------------------------------------------------------------


def test_an_index_fanning_out_n_squared_fetches_each_distinct_manifest_once(
    empty_registry: Registry, tmp_path: Path
) -> None:
    repo = "fan/out"
    with RegistryPusher(empty_registry.url) as pusher:
        image, image_size = _push_image(pusher, repo)
        inner, inner_size = _push_index(
            pusher, repo, "inner", [(image, image_size, OCI_MANIFEST)] * FAN_OUT
        )
        outer, _ = _push_index(pusher, repo, "1", [(inner, inner_size, OCI_INDEX)] * FAN_OUT)
    mark = empty_registry.mark()
    layout = tmp_path / "layout"
    # N x N = 40,000 paths to one image: fetching each path took minutes before.
    run, peak_mib = _run_measured(
        "copy", f"{empty_registry.host}/{repo}:1", f"oci:{layout}:out", timeout=60
    )
    assert run.code == 0, run.err
    assert run.out.strip() == outer
    gets = [
        r.path for r in empty_registry.requests(mark) if r.method == "GET" and r.kind == "manifest"
    ]
    assert sorted(gets) == sorted(f"/v2/{repo}/manifests/{ref}" for ref in ("1", inner, image)), (
        gets
    )
    # Three manifests kept, not 40,000: the run stays near a plain copy's size (~45 MiB).
    assert peak_mib < 120, f"peak RSS {peak_mib:.0f} MiB"


def test_an_index_graph_over_the_size_bound_fails_cleanly_before_fetching_it(
    empty_registry: Registry, tmp_path: Path
) -> None:
    repo = "fan/big"
    pad = "x" * (3 << 20)  # each child declares ~3 MiB: 30 of them pass the 64 MiB bound
    children = []
    with RegistryPusher(empty_registry.url) as pusher:
        for i in range(30):
            digest, size = _push_image(pusher, repo, f"{i}{pad}")
            children.append((digest, size, OCI_MANIFEST))
        _push_index(pusher, repo, "1", children)
    mark = empty_registry.mark()
    run = xfer("copy", f"{empty_registry.host}/{repo}:1", f"oci:{tmp_path / 'layout'}:out")
    assert run.code == 1, run.err
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    assert f"{empty_registry.host}/{repo}:1" in lines[0]
    assert "bytes" in lines[0] and "limit" in lines[0], lines[0]
    fetched = [r for r in empty_registry.requests(mark) if r.kind == "manifest"]
    assert len(fetched) < len(children), "the bound is checked before the fetches it forbids"


def _fake(i: int, size: int = 500) -> Descriptor:
    return Descriptor(OCI_MANIFEST, Digest.of(str(i).encode()), size)


def test_a_graph_budget_admits_each_digest_once_and_refuses_past_its_bounds() -> None:
    budget = GraphBudget(GraphBounds(manifests=3, bytes=10_000, depth=2), "reg/app:1")
    assert budget.admit(_fake(1)) is True
    assert budget.admit(_fake(1)) is False  # a duplicate: collapsed, not counted again
    assert budget.admit(_fake(2)) is True
    assert budget.admit(_fake(3)) is True
    with pytest.raises(ManifestError, match=r"reg/app:1: .*more than 3 distinct manifests"):
        budget.admit(_fake(4))
    sized = GraphBudget(GraphBounds(manifests=100, bytes=1000, depth=2), "reg/app:1")
    assert sized.admit(_fake(1, 600)) is True
    with pytest.raises(ManifestError, match=r"reg/app:1: .*1000 byte limit"):
        sized.admit(_fake(2, 600))
    budget.enter(2)
    with pytest.raises(ManifestError, match="nested deeper than 2"):
        budget.enter(3)


# --- item 5: trickle ---------------------------------------------------------------------------


def _timed(*args: str | Path, store: Path) -> tuple[Run, float]:
    started = time.monotonic()
    run = xfer(*args, store=store, timeout=90)
    return run, time.monotonic() - started


def _one_slow_line(run: Run, host: str) -> str:
    assert run.code == 1, (run.code, run.err)
    # Other blobs' progress lines may come first; the failure is one line, the last.
    errors = [line for line in run.err.strip().splitlines() if line.startswith("xfer: error")]
    assert len(errors) == 1, run.err
    assert run.err.strip().splitlines()[-1] == errors[0]
    assert host in errors[0], errors[0]
    assert "too slow" in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("head", [False, True], ids=["body", "head"])
def test_a_trickled_manifest_fails_within_a_bound(
    registry: Registry, images: BuiltImages, store: Path, head: bool
) -> None:
    info = images.images["small"]
    with FaultProxy(registry.url) as proxy:
        proxy.add(Trickle(TRICKLE, head=head, match="/manifests/", method="GET", times=None))
        run, seconds = _timed("pull", *FAST, f"{proxy.host}/{info.ref}", store=store)
    _one_slow_line(run, proxy.host)
    assert seconds < HANG_BOUND, f"{seconds:.1f} s"


def test_a_trickled_error_body_fails_within_a_bound(registry: Registry, store: Path) -> None:
    with FaultProxy(registry.url) as proxy:
        proxy.add(Trickle(TRICKLE, match="/manifests/", method="GET", times=None))
        run, seconds = _timed("pull", *FAST, f"{proxy.host}/test/absent:1", store=store)
    _one_slow_line(run, proxy.host)
    assert seconds < HANG_BOUND, f"{seconds:.1f} s"


@pytest.mark.parametrize("which", ["big", "small"])
def test_a_trickled_blob_fails_within_a_bound(
    registry: Registry, images: BuiltImages, store: Path, which: str
) -> None:
    """The big layer is read by a worker thread from the socket, the small one on the loop."""
    info = images.images["large"]
    layer = max(info.layers, key=lambda b: b.size) if which == "big" else info.config
    with FaultProxy(registry.url) as proxy:
        proxy.add(Trickle(TRICKLE, match=f"/blobs/{layer.digest}", method="GET", times=None))
        run, seconds = _timed("pull", *FAST, f"{proxy.host}/{info.ref}", store=store)
    line = _one_slow_line(run, proxy.host)
    assert layer.digest in line
    assert seconds < HANG_BOUND, f"{seconds:.1f} s"


def test_a_blob_trickled_then_served_normally_is_resumed(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    info = images.images["large"]
    layer = max(info.layers, key=lambda b: b.size)
    with FaultProxy(registry.url) as proxy:
        proxy.add(Trickle(TRICKLE, match=f"/blobs/{layer.digest}", method="GET", times=1))
        run, seconds = _timed("pull", "--timeout", "2", f"{proxy.host}/{info.ref}", store=store)
        gets = proxy.requests("GET", f"/blobs/{layer.digest}")
    assert run.code == 0, run.err
    assert stored_blobs(store)[layer.digest] == layer.size
    assert [g.fault for g in gets] == ["Trickle", None]
    trickled = gets[0].body_bytes_sent
    assert trickled > 0
    # What trickled in was kept: the second request asks for the rest only.
    asked = gets[1].request_headers.get("range", "")
    assert asked.startswith("bytes=") and asked.endswith("-"), gets[1].request_headers
    assert 0 < int(asked[len("bytes=") : -1]) <= trickled, (asked, trickled)
    assert seconds < HANG_BOUND, f"{seconds:.1f} s"


def test_a_trickled_token_fails_within_a_bound(
    proxied_realm: tuple[Registry, FaultProxy], store: Path
) -> None:
    reg, realm = proxied_realm
    realm.add(Trickle(TRICKLE, match="/token", times=None))
    creds = f"{ALICE[0]}:{ALICE[1]}"
    run, seconds = _timed(
        "pull", *FAST, "--creds", creds, f"{reg.host}/private/small:1", store=store
    )
    line = _one_slow_line(run, realm.host)
    assert ALICE[1] not in line
    assert seconds < HANG_BOUND, f"{seconds:.1f} s"
