"""`xfer mirror` of a fleet: a plan first, images copied at once over one session, --dry-run,
the summary, and --shard workers (a Kubernetes Indexed Job) sharing the images of one config."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from fixtures.faultproxy import FaultProxy
from fixtures.images import BuiltImages, inspect_raw
from fixtures.registry import Registry, Request
from fixtures.tokenserver import TokenServer
from tests.helpers import ROOT, xfer, xfer_env
from transfer.cli import build_parser
from transfer.errors import UsageError
from transfer.mirror import Shard

# Six repositories of the session's source registry (the 24 MiB "large" one left out).
NAMES = ("small", "shared-a", "shared-b", "multi", "docker", "whiteouts")
WRITES = {"PUT", "POST", "PATCH", "DELETE"}


def _config(tmp_path: Path, registry: Registry, extra: str = "") -> Path:
    lines = [f"{registry.host}:", "  images:"]
    lines += [f"    test/{name}: ['1']" for name in NAMES]
    path = tmp_path / "sync.yaml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def _tag_puts(requests: list[Request]) -> dict[str | None, int]:
    """Manifest PUTs that set the tag ``1``, by repository."""
    counts: dict[str | None, int] = {}
    for r in requests:
        if r.method == "PUT" and r.kind == "manifest" and r.path.endswith("/manifests/1"):
            counts[r.repo] = counts.get(r.repo, 0) + 1
    return counts


def _overlapping(requests: list[Request]) -> set[frozenset[str]]:
    """Pairs of repositories whose copy requests (everything but manifest HEADs, which the
    plan makes) interleave in the access log: one's first comes before the other's last."""
    spans: dict[str, list[int]] = {}
    for at, r in enumerate(requests):
        if r.repo is None or (r.kind == "manifest" and r.method == "HEAD"):
            continue
        spans.setdefault(r.repo, [at, at])[1] = at
    pairs = set()
    for a, (a_first, a_last) in spans.items():
        for b, (b_first, b_last) in spans.items():
            if a < b and a_first < b_last and b_first < a_last:
                pairs.add(frozenset((a, b)))
    return pairs


def test_images_are_copied_at_once_observed_at_the_target(
    registry: Registry, empty_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    config = _config(tmp_path, registry)
    # One image at a time: each repository's requests form one block of the log.
    with Registry() as serial_target:
        run = xfer("mirror", "--images", "1", config, serial_target.host)
        assert run.code == 0, run.err
        assert _overlapping(serial_target.requests()) == set()
    run = xfer("mirror", "--images", "4", config, empty_registry.host)
    assert run.code == 0, run.err
    assert _overlapping(empty_registry.requests()), "no two images were copied at once"
    for name in NAMES:
        assert inspect_raw(f"{empty_registry.host}/test/{name}:1") == images.images[name].raw


def test_shared_blobs_are_uploaded_once_while_images_copy_at_once(
    registry: Registry, empty_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    config = _config(tmp_path, registry)
    run = xfer("mirror", "--images", "6", config, empty_registry.host)
    assert run.code == 0, run.err
    a, b = images.images["shared-a"], images.images["shared-b"]
    shared = {x.digest for x in a.blobs} & {x.digest for x in b.blobs}
    uploads = [
        r.query
        for r in empty_registry.requests()
        if r.method == "PUT" and r.kind == "upload" and "digest=" in r.query
    ]
    for digest in shared:  # the second image waited for the first's upload and mounted it
        assert sum(digest.replace(":", "%3A") in q or digest in q for q in uploads) == 1


def test_a_rerun_is_one_manifest_head_per_image_on_each_side(
    registry: Registry, empty_registry: Registry, tmp_path: Path
) -> None:
    config = _config(tmp_path, registry)
    assert xfer("mirror", config, empty_registry.host).code == 0
    source_mark, target_mark = registry.mark(), empty_registry.mark()
    again = xfer("mirror", "--json", config, empty_registry.host)
    assert again.code == 0, again.err
    summary = again.json_lines()[-1]
    assert summary["copied"] == 0 and summary["unchanged"] == len(NAMES)
    asked = [r for r in empty_registry.requests(target_mark) if r.kind != "base"]
    assert len(asked) == len(NAMES)
    assert all(r.method == "HEAD" and r.kind == "manifest" for r in asked)
    # The source also says what refers to each image: one referrers API probe for the host
    # (distribution has none) and one tag list per repository (no tag names a digest).
    asked = Counter((r.method, r.kind) for r in registry.requests(source_mark) if r.kind != "base")
    assert asked == {
        ("HEAD", "manifest"): len(NAMES),
        ("GET", "tags"): len(NAMES),
        ("GET", "referrers"): 1,
    }


def test_an_unchanged_images_referrer_lookups_are_not_held_to_images_at_once(
    registry: Registry, empty_registry: Registry, tmp_path: Path
) -> None:
    """A no-op rerun still asks the source what refers to each image (a tag list per
    repository), small requests over the connections the plan's HEADs opened: they go out
    together, not one image's turn at a time as the blobs of `--images` copies do (with 30
    repositories over 25 ms that was 8 waves of 4: a rerun of 0.6 s instead of 0.4 s)."""
    with FaultProxy(registry.url, latency=0.05) as source:
        lines = [f"{source.host}:", "  images:"]
        lines += [f"    test/{name}: ['1']" for name in NAMES]
        config = tmp_path / "sync.yaml"
        config.write_text("\n".join(lines) + "\n")
        assert xfer("mirror", config, empty_registry.host).code == 0
        source.records.reset()
        again = xfer("mirror", "--images", "1", config, empty_registry.host)
        assert again.code == 0, again.err
        lists = [r for r in source.records.snapshot() if "/tags/list" in r.path]
    assert len(lists) == len(NAMES)
    # The most tag lists in flight at one moment (each held 50 ms by the proxy).
    overlapping = max(
        sum(1 for o in lists if o.started <= r.started < (o.finished or o.started)) for r in lists
    )
    assert overlapping > 1, "the tag lists went one image at a time"


def test_small_images_are_copied_all_at_once_by_default(
    registry: Registry, empty_registry: Registry, tmp_path: Path
) -> None:
    """Each small image costs round trips one after the other (manifest, blobs, referrers): a
    fleet of them over a slow path is as fast as its waves, so by default more than four go at
    once (their large blobs share one bound for the run instead)."""
    with FaultProxy(registry.url, latency=0.05) as source:
        lines = [f"{source.host}:", "  images:"]
        lines += [f"    test/{name}: ['1']" for name in NAMES]
        config = tmp_path / "sync.yaml"
        config.write_text("\n".join(lines) + "\n")
        run = xfer("mirror", config, empty_registry.host)
        assert run.code == 0, run.err
        gets = [
            r
            for r in source.records.snapshot()
            if r.method == "GET" and r.path.endswith("/manifests/1")
        ]
    assert len(gets) == len(NAMES)
    overlapping = max(
        sum(1 for o in gets if o.started <= r.started < (o.finished or o.started)) for r in gets
    )
    assert overlapping == len(NAMES), f"at most {overlapping} images were copied at once"


def test_the_large_blob_transfers_of_a_run_share_one_bound() -> None:
    from transfer.api import Settings
    from transfer.session import TRANSFERS_PER_JOB, Session

    session = Session(Settings(jobs=3))
    bound = session.transfers(3)
    assert bound is session.transfers(3)  # every image of the run takes from the same one
    assert bound.total_tokens == 3 * TRANSFERS_PER_JOB


def test_dry_run_plans_with_bytes_and_writes_nothing(
    registry: Registry, empty_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    config = _config(tmp_path, registry)
    # The target already holds one of them: unchanged, and its blobs are not to be moved.
    assert (
        xfer("copy", f"{registry.host}/test/small:1", f"{empty_registry.host}/test/small:1").code
        == 0
    )
    mark = empty_registry.mark()
    run = xfer("mirror", "--dry-run", "--json", config, empty_registry.host)
    assert run.code == 0, run.err
    done = run.json_lines()[-1]
    plan = [e for e in run.json_lines() if e["event"] == "plan"]
    actions = {e["target"].split("/", 1)[1]: e for e in plan}
    assert actions["test/small:1"]["action"] == "unchanged"
    assert actions["test/small:1"]["bytes"] is None
    to_copy = [n for n in NAMES if n != "small"]
    assert all(actions[f"test/{n}:1"]["action"] == "copy" for n in to_copy)
    # Each blob the target lacks counted once over the run (shared-a and shared-b share some).
    held = {b.digest for b in images.images["small"].blobs}
    lacking = {b.digest: b.size for n in to_copy for b in images.images[n].blobs}
    expected = sum(size for digest, size in lacking.items() if digest not in held)
    assert sum(actions[f"test/{n}:1"]["bytes"] for n in to_copy) == expected == done["bytes"]
    assert done["copy"] == len(to_copy) and done["unchanged"] == 1
    assert not [r for r in empty_registry.requests(mark) if r.method in WRITES]

    text = xfer("mirror", "--dry-run", config, empty_registry.host)
    assert text.code == 0, text.err
    assert "unchanged " in text.out and "to move" in text.out and "nothing written" in text.out
    assert not [r for r in empty_registry.requests(mark) if r.method in WRITES]


def test_one_broken_repository_fails_after_the_others_are_copied(
    registry: Registry, empty_registry: Registry, tmp_path: Path
) -> None:
    config = _config(tmp_path, registry, "    test/no-such-repository: ['1']\n")
    run = xfer("mirror", "--json", config, empty_registry.host)
    assert run.code == 1
    summary = run.json_lines()[-1]
    assert summary["copied"] == len(NAMES)
    assert [f["source"].split("/", 1)[1] for f in summary["failed"]] == [
        "test/no-such-repository:1"
    ]
    copied = {c["target"].split("/", 1)[1] for c in summary["images"]["copied"]}
    assert copied == {f"test/{n}:1" for n in NAMES}
    assert set(_tag_puts(empty_registry.requests())) == {f"test/{n}" for n in NAMES}
    text = xfer("mirror", config, empty_registry.host)
    assert text.code == 1
    assert text.out.count("unchanged ") == len(NAMES) and "failed    " in text.out


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("1/3", {}, Shard(1, 3)),
        ("0/1", {}, Shard(0, 1)),
        ("auto/4", {"JOB_COMPLETION_INDEX": "3"}, Shard(3, 4)),
    ],
)
def test_shard_parses(text: str, env: dict[str, str], expected: Shard) -> None:
    assert Shard.parse(text, env) == expected


@pytest.mark.parametrize(
    ("text", "env"),
    [
        ("3/3", {}),
        ("-1/3", {}),
        ("1/0", {}),
        ("1", {}),
        ("auto/3", {}),
        ("auto/3", {"JOB_COMPLETION_INDEX": "3"}),
        ("auto/3", {"JOB_COMPLETION_INDEX": "x"}),
    ],
)
def test_bad_shards_are_usage_errors(text: str, env: dict[str, str]) -> None:
    with pytest.raises(UsageError):
        Shard.parse(text, env)


def test_shard_auto_without_its_index_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "sync.yaml"
    config.write_text("example.com:\n  images:\n    a: ['1']\n")
    run = xfer("mirror", "--shard", "auto/3", config, "localhost:1")
    assert run.code == 2 and "JOB_COMPLETION_INDEX" in run.err
    run = xfer(
        "mirror", "--shard", "auto/3", config, "localhost:1", env={"JOB_COMPLETION_INDEX": "5"}
    )
    assert run.code == 2 and "0 to 2" in run.err


def test_images_below_one_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "sync.yaml"
    config.write_text("example.com:\n  images:\n    a: ['1']\n")
    run = xfer("mirror", "--images", "0", config, "localhost:1")
    assert run.code == 2 and "--images must be at least 1" in run.err


def test_three_shards_at_once_copy_every_image_once_and_a_rerun_changes_nothing(
    registry: Registry, empty_registry: Registry, tmp_path: Path
) -> None:
    config = _config(tmp_path, registry)
    command = [
        sys.executable,
        "-m",
        "transfer",
        "mirror",
        "--json",
        str(config),
        empty_registry.host,
    ]
    workers = [
        subprocess.Popen(
            [*command, "--shard", f"{i}/3"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=xfer_env(),
            cwd=ROOT,
        )
        for i in range(3)
    ]
    outputs = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [err for _, err in outputs]
    puts = _tag_puts(empty_registry.requests())
    assert puts == {f"test/{n}": 1 for n in NAMES}
    mark = empty_registry.mark()
    again = xfer("mirror", "--json", config, empty_registry.host)
    assert again.code == 0, again.err
    assert again.json_lines()[-1]["unchanged"] == len(NAMES)
    assert not [r for r in empty_registry.requests(mark) if r.method in WRITES]


def test_kubernetes_indexed_job_example_parses() -> None:
    documents = list(yaml.safe_load_all((ROOT / "examples" / "mirror-job.yaml").read_text()))
    job = next(d for d in documents if d and d.get("kind") == "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    command = [*container.get("command", []), *container.get("args", [])]
    assert command[0] == "xfer"
    args = build_parser().parse_args(command[1:])
    assert args.command == "mirror" and args.shard == f"auto/{spec['completions']}"
    assert Shard.parse(args.shard, {"JOB_COMPLETION_INDEX": "0"}).count == spec["completions"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert Path(args.config).parent.as_posix() in mounts
    assert "configMap" in volumes[mounts[str(Path(args.config).parent)]]
    docker_config = next(e["value"] for e in container["env"] if e["name"] == "DOCKER_CONFIG")
    assert "secret" in volumes[mounts[docker_config]]
    configmaps = [d for d in documents if d and d.get("kind") == "ConfigMap"]
    assert configmaps and Path(args.config).name in configmaps[0]["data"]


def _index_platforms(raw: bytes) -> list[str]:
    doc = json.loads(raw)
    return [f"{m['platform']['os']}/{m['platform']['architecture']}" for m in doc["manifests"]]


def test_a_platform_list_mirrors_a_filtered_index_and_says_so(
    registry: Registry, empty_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    multi = images.images["multi"]
    config = tmp_path / "sync.yaml"
    config.write_text(f"{registry.host}:\n  images:\n    test/multi: ['1']\n")
    run = xfer(
        "mirror", "--json", "--platform", "linux/amd64,linux/s390x", config, empty_registry.host
    )
    assert run.code == 0, run.err
    (copied,) = run.json_lines()[-1]["images"]["copied"]
    assert copied["filtered_index"] is True and copied["source_digest"] == multi.digest
    raw = inspect_raw(f"{empty_registry.host}/test/multi:1")
    assert _index_platforms(raw) == ["linux/amd64"]
    assert copied["digest"] == "sha256:" + hashlib.sha256(raw).hexdigest() != multi.digest
    text = xfer(
        "mirror", "--platform", "linux/amd64,linux/s390x", config, f"{empty_registry.host}/t"
    )
    assert text.code == 0 and "a filtered index" in text.out
    # A rerun compares against the filtered index: unchanged, nothing written.
    mark = empty_registry.mark()
    again = xfer(
        "mirror", "--json", "--platform", "linux/amd64,linux/s390x", config, empty_registry.host
    )
    assert again.code == 0 and again.json_lines()[-1]["unchanged"] == 1
    assert not [r for r in empty_registry.requests(mark) if r.method in WRITES]
    # Every platform of the index named: the index itself, its digest kept.
    both = xfer(
        "mirror",
        "--json",
        "--platform",
        "linux/arm64,linux/amd64",
        config,
        f"{empty_registry.host}/all",
    )
    assert both.code == 0, both.err
    assert both.json_lines()[-1]["images"]["copied"][0]["digest"] == multi.digest


def test_copy_with_a_platform_list_writes_a_new_index(
    registry: Registry, empty_registry: Registry, images: BuiltImages
) -> None:
    multi = images.images["multi"]
    target = f"{empty_registry.host}/only/arm64:1"
    run = xfer(
        "copy", "--platform", "linux/arm64,windows/amd64", f"{registry.host}/{multi.ref}", target
    )
    assert run.code == 0, run.err
    raw = inspect_raw(target)
    assert _index_platforms(raw) == ["linux/arm64"]
    assert run.out.strip() == "sha256:" + hashlib.sha256(raw).hexdigest() != multi.digest
    assert "differs from the source's" in run.err
    none = xfer(
        "copy", "--platform", "linux/s390x,linux/ppc64le", f"{registry.host}/{multi.ref}", target
    )
    assert none.code == 1 and "s390x" in none.err


def test_a_rerun_from_a_token_registry_is_heads_and_one_token_per_scope(
    token_registry: Registry, token_server: TokenServer, empty_registry: Registry, tmp_path: Path
) -> None:
    names = ("small", "shared-a", "shared-b", "multi")
    config = tmp_path / "sync.yaml"
    images = "".join(f"    public/{name}: ['1']\n" for name in names)
    config.write_text(f"{token_registry.host}:\n  images:\n{images}")
    assert xfer("mirror", config, empty_registry.host).code == 0
    source_mark, target_mark, tokens = (
        token_registry.mark(),
        empty_registry.mark(),
        token_server.mark(),
    )
    again = xfer("mirror", "--json", config, empty_registry.host)
    assert again.code == 0, again.err
    assert again.json_lines()[-1]["unchanged"] == len(names)
    answered = Counter(
        (r.method, r.kind)
        for r in token_registry.requests(source_mark)
        if r.kind != "base" and r.status != 401
    )
    # With the HEADs, what refers to each image: one referrers API probe for the host and one
    # tag list per repository, under the same pull token.
    assert answered == {
        ("HEAD", "manifest"): len(names),
        ("GET", "tags"): len(names),
        ("GET", "referrers"): 1,
    }
    target = [r for r in empty_registry.requests(target_mark) if r.kind != "base"]
    assert len(target) == len(names) and all(r.method == "HEAD" for r in target)
    # Each (host, scope) asked once; the plan's scopes may share one token request.
    scopes = Counter(scope for r in token_server.requests(tokens) for scope in r.scopes)
    assert scopes == {f"repository:public/{name}:pull": 1 for name in names}, scopes
