"""The command line: argparse commands, and the only module that prints or owns tqdm.

A command imports the library when it runs, not when this module loads: ``xfer --version``,
``--help`` and a usage error load neither the library nor httpx, anyio or tenacity, and each
command loads only the modules it uses.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from .errors import ArchiveError, StoreError, TransferError, UsageError, counted, printable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without loading typing for --version
if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence
    from typing import Any, NoReturn, TextIO

    from . import api
    from .auth import Credentials
    from .copy import CopyResult
    from .manifest import Descriptor, Platform
    from .mirror import MirrorReport
    from .progress import Event
    from .referrers import ReferrerNode

PROG = "xfer"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line and exit 2, as for a bad reference
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ---- rendering -----------------------------------------------------------------------------------


class Renderer:
    """Turns library events into JSON Lines, tqdm bars, or a line per blob."""

    def __init__(
        self,
        mode: str,
        err: TextIO = sys.stderr,
        out: TextIO = sys.stdout,
        verb: str = "fetched",
    ) -> None:
        self.mode = mode  # "json" | "quiet" | "bars" | "lines"
        self.verb = verb  # what a moved blob underwent: fetched, pushed, copied, ...
        self.err, self.out = err, out
        self.bar: Any = None
        self.totals = {"bytes_transferred": 0, "blobs_transferred": 0, "blobs_skipped": 0}
        self.started = time.monotonic()
        self.images = 0

    def __call__(self, event: Event) -> None:
        from .progress import (
            BlobDone,
            BlobProgress,
            BlobStart,
            ImageDone,
            ImageStart,
            Message,
            Retry,
        )

        if isinstance(event, ImageDone):
            for key in self.totals:
                self.totals[key] += getattr(event, key)
            self.images += 1
        if self.mode == "json":
            self.out.write(json.dumps(event.to_json()) + "\n")
            self.out.flush()
            return
        if self.mode == "quiet":
            return
        if isinstance(event, ImageStart) and self.mode == "bars":
            from tqdm import tqdm

            self.close()
            # A terminal that reports no size (some CI ptys) would get no bar at all.
            width, height = _terminal_size(self.err)
            self.bar = tqdm(
                total=event.bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=printable(event.reference)[-40:],
                file=self.err,
                leave=False,
                ncols=width or 100,
                nrows=height or 24,
            )
        elif isinstance(event, BlobProgress) and self.bar is not None:
            self.bar.update(event.advance)
        elif isinstance(event, BlobDone):
            if event.skipped and self.bar is not None:
                self.bar.update(event.size)
            if event.skipped:
                state = "already present"
            elif event.transferred:
                state = f"{self.verb} {_size(event.transferred)}"
            else:
                state = "done, no bytes moved (mounted, or finished by another xfer)"
            self._line(f"{event.digest[:19]}: {state}")
        elif isinstance(event, BlobStart) and event.offset:
            self._line(f"{event.digest[:19]}: resuming at {_size(event.offset)}")
        elif isinstance(event, Retry):
            self._line(f"retrying {event.what} in {event.wait:.1f}s: {event.error}")
        elif isinstance(event, Message):
            self._line(event.text)
        elif isinstance(event, ImageDone):
            self.close()

    def _line(self, text: str) -> None:
        # Messages carry what servers and archives said: escaped, one line each.
        text = printable(text)
        if self.bar is not None:
            self.bar.write(text, file=self.err)
        else:
            self.err.write(text + "\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def summary(self, digest: str | None = None) -> None:
        """The last JSON line of a multi-image command: one total."""
        if self.mode == "json" and self.images > 1:
            seconds = round(time.monotonic() - self.started, 3)
            total = {"event": "done", "digest": digest, **self.totals, "seconds": seconds}
            self.out.write(json.dumps(total) + "\n")


def _terminal_size(stream: TextIO) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):
        return 100, 24
    return size.columns or 100, size.lines or 24


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _renderer(args: argparse.Namespace, verb: str = "fetched") -> Renderer:
    if getattr(args, "json", False):
        return Renderer("json")
    if getattr(args, "quiet", False):
        return Renderer("quiet")
    return Renderer("bars" if sys.stderr.isatty() else "lines", verb=verb)


# ---- settings from options -------------------------------------------------------------------


def _credentials(args: argparse.Namespace) -> Credentials | None:
    """``--creds USER:PASS`` or ``--username`` with the password on stdin (never in argv)."""
    from .auth import Credentials

    if getattr(args, "creds", None):
        user, sep, password = args.creds.partition(":")
        if not sep:
            raise UsageError("--creds takes USER:PASSWORD")
        return Credentials(user, password)
    if getattr(args, "username", None):
        if not getattr(args, "password_stdin", False):
            raise UsageError("--username needs --password-stdin")
        return Credentials(args.username, sys.stdin.readline().rstrip("\r\n"))
    if getattr(args, "password_stdin", False):
        raise UsageError("--password-stdin needs --username")
    return None


def _settings(args: argparse.Namespace, credentials: Credentials | None = None) -> api.Settings:
    from dataclasses import replace

    from . import api
    from .copy import SMALL_JOBS
    from .fetch import RangePolicy
    from .retry import RetryPolicy
    from .throttle import Throttle
    from .transport import TransportOptions

    creds = credentials if credentials is not None else _credentials(args)
    transport = TransportOptions(
        plain_http=getattr(args, "plain_http", False),
        insecure=getattr(args, "insecure", False),
        ca_file=getattr(args, "ca_file", None),
    )
    if getattr(args, "timeout", None) is not None:
        if not args.timeout > 0:  # also refuses "nan"
            raise UsageError("--timeout must be positive")
        transport = replace(transport, read_timeout=args.timeout)
    if transport.insecure and not transport.plain_http:  # plain HTTP has no certificate
        _warning("--insecure: TLS certificates are not verified")
    jobs = getattr(args, "jobs", 8)
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    retry = RetryPolicy(attempts=max(getattr(args, "retries", 5), 0) + 1)
    ranges = RangePolicy()
    if getattr(args, "parallel_ranges", None) is not None:
        # Asked for explicitly: split every big blob, not only when the link proves slow.
        ranges = replace(ranges, parts=max(args.parallel_ranges, 1), adaptive=False)
    if getattr(args, "range_threshold", None):
        ranges = replace(ranges, threshold=_bytes_option("--range-threshold", args.range_threshold))
    throttle = None
    if getattr(args, "limit_rate", None):
        cap = _bytes_option("--limit-rate", args.limit_rate)
        throttle = Throttle(cap)
        # A rate held down by our own cap is not a slow link: more streams would not help.
        ranges = replace(ranges, slow_rate=min(ranges.slow_rate, 0.5 * cap))
    chunk_size = None
    if getattr(args, "chunk_size", None):
        chunk_size = _bytes_option("--chunk-size", args.chunk_size)
        if chunk_size < 1:
            raise UsageError("--chunk-size must be at least 1 byte")
    rate = getattr(args, "max_requests_per_second", None)
    if rate is not None and not (0 < rate < float("inf")):  # also refuses "nan"
        raise UsageError("--max-requests-per-second must be a positive number")
    store = Path(args.store) if getattr(args, "store", None) else api.default_store()
    referrer_types = tuple(dict.fromkeys(getattr(args, "referrers_type", None) or ()))
    return api.Settings(
        referrers=not getattr(args, "no_referrers", False),
        referrer_types=referrer_types,
        store=store,
        # Small blobs go SMALL_JOBS times jobs at once, each big one may add parallel ranges.
        transport=replace(transport, max_connections=max(jobs * (SMALL_JOBS + 1), 16)),
        credentials=creds,
        jobs=jobs,
        retry=retry,
        ranges=ranges,
        throttle=throttle,
        chunk_size=chunk_size,
        max_requests_per_second=rate,
    )


def _bytes_option(name: str, text: str) -> int:
    from .throttle import parse_rate

    try:
        return int(parse_rate(text))
    except ValueError as exc:
        raise UsageError(f"{name}: {exc}") from None


def _platform(args: argparse.Namespace) -> Platform | None:
    """One platform (unpack: a root filesystem is one image)."""
    from .manifest import Platform

    return Platform.parse(args.platform) if getattr(args, "platform", None) else None


def _platforms(args: argparse.Namespace) -> Platform | tuple[Platform, ...] | None:
    """``--platform linux/amd64,linux/arm64``: several make a new index of only their images
    (its digest differs from the source's); one is that image, as before."""
    text = getattr(args, "platform", None)
    if not text:
        return None
    from .manifest import Platform

    chosen = tuple(dict.fromkeys(Platform.parse(part) for part in text.split(",")))
    return chosen[0] if len(chosen) == 1 else chosen


# ---- commands ------------------------------------------------------------------------------


async def cmd_pull(args: argparse.Namespace) -> int:
    from . import api
    from .session import Session

    settings = _settings(args)
    render = _renderer(args)
    results: list[CopyResult] = []
    try:
        async with Session(settings) as session:  # one per command, shared by its images
            for reference in args.references:
                result = await api.pull(
                    reference,
                    settings,
                    platform=_platforms(args),
                    all_platforms=args.all_platforms,
                    emit=render,
                    session=session,
                )
                results.append(result)
                if render.mode in ("lines", "bars", "quiet"):
                    _say(str(result.digest))
    finally:
        render.close()
    render.summary(str(results[-1].digest) if results else None)
    return 0


async def cmd_copy(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from . import api

    # The whole index is the default for copy; --all-platforms is accepted for skopeo's users.
    platform = None if args.all_platforms else _platforms(args)
    settings = _settings(args)
    dest_settings = settings
    if args.src_creds:
        settings = replace(settings, credentials=_creds(args.src_creds, "--src-creds"))
    if args.dest_creds:
        dest_settings = replace(settings, credentials=_creds(args.dest_creds, "--dest-creds"))
    render = _renderer(args, "copied")
    try:
        result = await api.copy(
            args.source,
            args.destination,
            settings,
            platform=platform,
            dest_settings=dest_settings,
            emit=render,
        )
    finally:
        render.close()
    return _print_digest(render, result)


async def cmd_push(args: argparse.Namespace) -> int:
    from . import api

    render = _renderer(args, "pushed")
    try:
        result = await api.push(
            args.reference,
            args.destination,
            _settings(args),
            platform=None if args.all_platforms else _platforms(args),
            emit=render,
        )
    finally:
        render.close()
    return _print_digest(render, result)


def _print_digest(render: Renderer, result: CopyResult) -> int:
    """The result on stdout unless --json already said it in its last line."""
    if render.mode in ("lines", "bars", "quiet"):
        _say(str(result.digest))
    return 0


async def cmd_mirror(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from . import api
    from .mirror import Shard  # YAML and semver load only for a mirror

    shard = Shard.parse(args.shard) if args.shard else None
    if args.destination.startswith(("oci:", "oci-archive:")):
        # A bundle names each image by its full source reference and holds no credentials:
        # dropped without a word, these would leave the user believing they took effect.
        for given, flag in ((args.scoped, "--scoped"), (args.dest_creds, "--dest-creds")):
            if given:
                raise UsageError(f"{flag} is for a registry destination, not a bundle")
    settings = replace(_settings(args), volume_size=_volume_size(args))
    dest_settings = replace(settings, credentials=None)
    if args.dest_creds:
        dest_settings = replace(settings, credentials=_creds(args.dest_creds, "--dest-creds"))
    render = _renderer(args, "copied")
    try:
        report = await api.mirror(
            args.config,
            args.destination,
            settings,
            dest_settings=dest_settings,
            scoped=args.scoped,
            platform=None if args.all_platforms else _platforms(args),
            emit=render,
            images=args.images,
            shard=shard,
            dry_run=args.dry_run,
            since=args.since or (),
        )
    finally:
        render.close()
    if args.dry_run:
        return _mirror_plan(args, report)
    root = str(report.root) if report.root is not None else None
    moved = sum(r.bytes_transferred for r in report.copied)
    # The contract's last line: a "done" total, with what a mirror adds to it.
    summary: dict[str, Any] = {
        "event": "done",
        "digest": root,  # an export: the bundle's root digest (its index.json's)
        "bytes_transferred": moved,
        "blobs_transferred": sum(r.blobs_transferred for r in report.copied),
        "blobs_skipped": sum(r.blobs_skipped for r in report.copied),
        "seconds": round(time.monotonic() - render.started, 3),
        "copied": len(report.copied),
        "unchanged": len(report.unchanged),
        "failed": [{"source": str(item.source), "error": error} for item, error in report.failed],
        # Tags the source listed that no reference can name: skipped as skopeo sync does, not
        # a failure (no rerun could copy them; a cron job must not fail on a source's defect).
        "skipped": [
            {"repository": s.repository, "tag": s.tag, "reason": s.reason} for s in report.skipped
        ],
        "images": {
            "copied": [
                {
                    "source": str(item.source),
                    "target": str(item.target),
                    "digest": str(r.digest),
                    "source_digest": str(r.source_digest),
                    # --platform with several: a new index of theirs, not the source's digest
                    "filtered_index": r.manifest.is_index and r.digest != r.source_digest,
                }
                for item, r in report.copied_items
            ],
            "unchanged": [
                {"source": str(item.source), "target": str(item.target)}
                for item in report.unchanged
            ],
        },
    }
    if report.bundle is not None:
        summary.update(bundle=report.bundle, root_digest=root, relied_on=report.relied_on)
    if args.json:
        print(json.dumps(summary))
    elif args.quiet and root is not None:
        _say(root)
    elif not args.quiet:
        for item, result in report.copied_items:
            note = ""
            if result.manifest.is_index and result.digest != result.source_digest:
                note = f" (a filtered index: the source's is {result.source_digest})"
            _say(f"copied    {item.target} {result.digest}{note}")
        for item in report.unchanged:
            _say(f"unchanged {item.target}")
        for item, error in report.failed:
            _say(f"failed    {item.source}: {error}")
        print(
            f"mirrored {summary['copied']} images, {summary['unchanged']} unchanged, "
            f"{len(report.failed)} failed, {len(report.skipped)} invalid tags skipped "
            f"({_size(moved)} moved)"
        )
        if report.bundle is not None:
            relies = (
                f", relies on {report.relied_on} blobs it leaves out" if report.relied_on else ""
            )
            _say(f"bundle {report.bundle}{relies}: root digest {root}")
    if report.failed:
        _, error = report.failed[0]
        raise TransferError(f"{len(report.failed)} images failed to mirror; first: {error}")
    return 0


def _mirror_plan(args: argparse.Namespace, report: MirrorReport) -> int:
    """--dry-run: one line (or JSON object) per image: what the run would do, and the bytes a
    copy would move (the manifests' declared sizes of the blobs the target lacks)."""
    total = sum(e.bytes or 0 for e in report.plan)
    counts = {a: sum(e.action == a for e in report.plan) for a in ("copy", "unchanged", "skip")}
    failed = sum(e.action == "failed" for e in report.plan)
    if args.json:
        for entry in report.plan:
            print(json.dumps(entry.as_json()))
        done = {"event": "done", "dry_run": True, "bytes": total, **counts, "failed": failed}
        print(json.dumps(done))
    elif not args.quiet:
        for entry in report.plan:
            what = f"{entry.action:<9} {entry.source}"
            if entry.target:
                what += f" -> {entry.target}"
            if entry.bytes is not None:
                what += f" ({_size(entry.bytes)} to move)"
            if entry.reason:
                what += f": {entry.reason}"
            _say(what)
        print(
            f"plan: {counts['copy']} to copy ({_size(total)}, by the manifests' declared sizes "
            f"of blobs the target lacks), {counts['unchanged']} unchanged, {counts['skip']} "
            f"skipped, {failed} failed; nothing written (--dry-run)"
        )
    return 1 if failed else 0


async def cmd_save(args: argparse.Namespace) -> int:
    from . import api

    render = _renderer(args, "written")
    try:
        await api.save(
            args.references,
            args.output,
            _settings(args),
            format=args.format,
            platform=_platforms(args),
            all_platforms=args.all_platforms,
            max_size=_volume_size(args),
            emit=render,
        )
    finally:
        render.close()
    render.summary()
    return 0


def _volume_size(args: argparse.Namespace) -> int | None:
    """``--max-size 4G``: archive volumes of at most that many bytes."""
    if not getattr(args, "max_size", None):
        return None
    size = _bytes_option("--max-size", args.max_size)
    if size < 4096:
        raise UsageError("--max-size must be at least 4K (a volume holds tar headers too)")
    return size


async def cmd_load(args: argparse.Namespace) -> int:
    from . import api

    file = args.input or args.file
    if not file or (args.input and args.file):
        raise UsageError("xfer load takes one archive: FILE or -i FILE")
    render = _renderer(args, "loaded")
    try:
        # The archive's whole content by default (docker load's rule: it holds what its
        # maker chose); --all-platforms says so explicitly, --platform narrows an index.
        platform = None if args.all_platforms else _platforms(args)
        results = await api.load(
            file, _settings(args), platform=platform, name=args.name, emit=render
        )
    finally:
        render.close()
    if render.mode in ("lines", "bars", "quiet"):
        for result in results:
            _say(result.reference)
    render.summary()
    return 0


async def cmd_unpack(args: argparse.Namespace) -> int:
    from . import api
    from .unpack import DEFAULT_MAX_SIZE, UnpackOptions  # tar and zstd code only for unpack

    max_size = _bytes_option("--max-size", args.max_size) if args.max_size else DEFAULT_MAX_SIZE
    options = UnpackOptions(force=args.force, devices=args.devices, max_size=max_size)
    render = _renderer(args)
    try:
        result = await api.unpack(
            args.reference,
            args.directory,
            _settings(args),
            platform=_platform(args),
            options=options,
            emit=render,
        )
    finally:
        render.close()
    if render.mode == "json":
        done = {
            "event": "done",
            "digest": str(result.digest),
            "directory": str(result.directory),
            "layers": result.layers,
            "bytes": result.bytes,
            "entries": result.entries,
            "skipped": result.skipped,
            "seconds": result.seconds,
        }
        print(json.dumps(done), flush=True)
    else:
        _say(str(result.digest))
    return 0


def _creds(text: str, option: str) -> Credentials:
    from .auth import Credentials

    user, sep, password = text.partition(":")
    if not sep:
        raise UsageError(f"{option} takes USER:PASSWORD")
    return Credentials(user, password)


async def cmd_images(args: argparse.Namespace) -> int:
    from . import api

    entries = await api.images(_settings(args))
    if args.json:
        for entry in entries:
            print(
                json.dumps(
                    {
                        "reference": entry.reference,
                        "digest": str(entry.digest),
                        "media_type": entry.media_type,
                        "size": entry.size,
                    }
                )
            )
        return 0
    if args.quiet:
        for entry in entries:
            _say(entry.reference)
        return 0
    rows = [("REFERENCE", "DIGEST", "SIZE")]
    rows += [(printable(e.reference), e.digest.short, _size(e.size)) for e in entries]
    width = max(len(r[0]) for r in rows)
    for ref, digest, size in rows:
        _say(f"{ref:<{width}}  {digest:<19}  {size}")
    return 0


async def cmd_inspect(args: argparse.Namespace) -> int:
    from . import api
    from .endpoints.address import parse_address
    from .manifest import Index

    address = parse_address(args.reference)
    reference = address.written(args.reference)
    manifest, config = await api.inspect(address, _settings(args))
    if args.raw:
        sys.stdout.buffer.write(manifest.raw)
        sys.stdout.flush()
        return 0
    if args.config:
        if config is None:
            raise UsageError(f"{reference} is an index; choose an image with --platform or @digest")
        sys.stdout.buffer.write(config)
        sys.stdout.flush()
        return 0
    parsed = manifest.parse()
    summary: dict[str, Any] = {
        "reference": reference,
        "digest": str(manifest.digest),
        "media_type": manifest.media_type,
        "size": len(manifest.raw),
    }
    if isinstance(parsed, Index):
        summary["manifests"] = [
            {"digest": str(d.digest), "platform": str(d.platform) if d.platform else None}
            for d in parsed.manifests
        ]
    else:
        summary["config"] = str(parsed.config.digest)
        summary["layers"] = [
            {"digest": str(d.digest), "size": d.size, "media_type": d.media_type}
            for d in parsed.layers
        ]
        summary["total_size"] = sum(d.size for d in parsed.blobs())
        if config is not None:
            summary["platform"] = str(api.config_platform(config))
    print(json.dumps(summary, indent=2))
    return 0


async def cmd_referrers(args: argparse.Namespace) -> int:
    from . import api
    from .endpoints.address import parse_address

    address = parse_address(args.reference)
    settings = _settings(args)
    tree = await api.referrers(address, settings, artifact_types=settings.referrer_types)
    if args.json:
        print(json.dumps(tree.to_json(), indent=2))
        return 0
    lines = [f"{address.written(args.reference)} {_node(tree.subject)}"]
    lines += _tree_lines(tree.referrers, "")
    for child in tree.children:
        where = str(child.subject.platform) if child.subject.platform else "manifest"
        lines.append(f"{where} {_node(child.subject)}")
        lines += _tree_lines(child.referrers, "")
    for line in lines:
        _say(line)  # escaped: types, tags and annotations are what a registry said
    for note in tree.truncated:
        _warning(note)
    return 0


def _node(desc: Descriptor) -> str:
    kind = desc.artifact_type or desc.media_type
    return f"{kind} {desc.digest} {_size(desc.size)}"


def _tree_lines(nodes: Sequence[ReferrerNode], indent: str) -> list[str]:
    lines = []
    for at, node in enumerate(nodes):
        last = at == len(nodes) - 1
        tag = f" (tag {node.referrer.tag})" if node.referrer.tag else ""
        lines.append(f"{indent}{'└── ' if last else '├── '}{_node(node.referrer.descriptor)}{tag}")
        inner = indent + ("    " if last else "│   ")
        for key, value in sorted(node.referrer.descriptor.annotations.items()):
            lines.append(f"{inner}  {key}={value}")
        lines += _tree_lines(node.referrers, inner)
    return lines


async def cmd_rm(args: argparse.Namespace) -> int:
    from . import api

    for name in await api.remove(args.references, _settings(args)):
        if args.json:
            print(json.dumps({"event": "removed", "reference": name}))
        else:
            _say(f"untagged {name}")
    return 0


async def cmd_gc(args: argparse.Namespace) -> int:
    from . import api

    report = await api.gc(_settings(args), all_partials=args.partials)
    for name in report.left:
        _warning(f"gc left {name} alone: it is a directory, not a blob or a partial download")
    if args.json:
        print(json.dumps({"event": "gc", **report.__dict__}))
    elif not args.quiet:
        print(
            f"removed {report.blobs_removed} blobs ({_size(report.bytes_freed)}) and "
            f"{report.partials_removed} partial downloads ({_size(report.partial_bytes_freed)})"
        )
    return 0


async def cmd_verify(args: argparse.Namespace) -> int:
    from . import api

    if args.endpoint and not args.endpoint.startswith("store:"):
        return await _verify_bundle(args)
    if args.expect:
        raise UsageError("--expect checks a bundle: xfer verify oci-archive:FILE --expect DIGEST")
    report = await api.verify(_settings(args), repair=args.repair)
    if args.json:
        print(
            json.dumps(
                {
                    "event": "verify",
                    "checked": report.checked,
                    "bytes": report.bytes,
                    "problems": list(report.problems),
                    "removed": list(report.damaged) if report.repaired else [],
                    "pull": list(report.pull),
                }
            )
        )
    else:
        for problem in report.problems:
            _say(problem)
        if report.repaired:
            for name in report.damaged:
                _say(f"removed {name}")
        if not args.quiet:
            state = "ok" if not report.problems else f"{len(report.problems)} problems"
            print(
                f"checked {report.checked} blobs ({_size(report.bytes)}): {state}", file=sys.stderr
            )
    store = _settings(args).store
    pull = " ".join(report.pull)
    if report.repaired and report.damaged:
        if not report.pull:  # what was removed was garbage: the store is sound now
            return 0
        raise StoreError(
            f"removed {len(report.damaged)} damaged blobs from {store}; "
            f"images that lack blobs now: {', '.join(report.pull)}",
            hint=f"xfer pull {pull} fetches them again",
        )
    if report.damaged:
        hint = "xfer verify --repair removes the damaged blobs" + (
            f"; then xfer pull {pull} fetches them again" if pull else ""
        )
    elif report.pull:
        hint = f"xfer pull {pull} fetches what is missing"
    else:
        hint = "xfer gc removes unreferenced blobs; pull again to restore missing ones"
    if report.problems:
        raise StoreError(
            f"the store {store} has {counted(len(report.problems), 'problem')}: "
            + report.problems[0],
            hint=hint,
        )
    return 0


async def _verify_bundle(args: argparse.Namespace) -> int:
    """``xfer verify oci-archive:FILE`` / ``oci:DIR``: every problem on stdout, one line each
    (naming the blob, the volume), a short summary, exit 1 when there is any."""
    from . import api

    if args.repair:
        raise UsageError("--repair mends the store; a bundle is exported again instead")
    started = time.monotonic()
    report = await api.verify_bundle(args.endpoint, expect=args.expect)
    seconds = round(time.monotonic() - started, 3)
    if args.json:
        print(json.dumps({"event": "verify", **report.__dict__, "seconds": seconds}))
    else:
        for problem in report.problems:
            _say(problem)
        if not args.quiet:
            state = "ok" if not report.problems else counted(len(report.problems), "problem")
            volumes = f" in {report.volumes} volumes" if report.volumes > 1 else ""
            relied = f", {report.relied_on} relied on from outside" if report.relied_on else ""
            print(
                f"{report.endpoint}: {counted(report.images, 'image')}, "
                f"{counted(report.referrers, 'referrer')}, {counted(report.blobs, 'blob')} "
                f"({_size(report.bytes)}){volumes}{relied} in {seconds:.1f}s: {state}; "
                f"root {report.root}",
                file=sys.stderr,
            )
    if report.problems:
        raise ArchiveError(
            f"{report.endpoint} has {counted(len(report.problems), 'problem')}: "
            f"{report.problems[0]}",
            hint="export it again, or copy the damaged or missing files again",
        )
    return 0


async def cmd_tags(args: argparse.Namespace) -> int:
    from . import api

    # Each page is printed (and flushed) as it arrives: a long listing starts at once and never
    # holds more than one page. Tags are the registry's text: escaped, as every result line.
    async with contextlib.aclosing(api.tag_pages(args.repository, _settings(args))) as pages:
        async for page in pages:
            for start in range(0, len(page), 4096):  # a page's escaped copy is not held whole
                sys.stdout.write(
                    "".join(f"{printable(tag)}\n" for tag in page[start : start + 4096])
                )
            sys.stdout.flush()
            del page  # not held while the next one is read
    return 0


async def cmd_login(args: argparse.Namespace) -> int:
    from . import api

    given = _credentials(args) if args.creds or args.password_stdin else None
    creds = given or _ask_credentials(args.host, args.username)
    where = await api.login(args.host, creds, _settings(args, creds))
    if not args.quiet:
        print(f"credentials for {args.host} kept in {where}", file=sys.stderr)
    print("Login Succeeded")
    return 0


def _ask_credentials(host: str, user: str | None) -> Credentials:
    """docker login's prompts, on a terminal only: a script must use --password-stdin."""
    if not sys.stdin.isatty():
        raise UsageError(f"xfer login {host}: give -u USER and --password-stdin (no terminal)")
    import getpass

    from .auth import Credentials

    user = user or input("Username: ").strip()
    password = getpass.getpass("Password: ")
    if not user or not password:
        raise UsageError("xfer login needs a username and a password")
    return Credentials(user, password)


async def cmd_logout(args: argparse.Namespace) -> int:
    from . import api

    if await api.logout(args.host):
        print(f"Removed login credentials for {args.host}")
    else:
        print(f"Not logged in to {args.host}")
    return 0


# ---- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # Options come in groups, and a command takes the groups it uses, so that a flag it would
    # ignore is refused (exit 2) instead of silently doing nothing: load reads a file (no
    # network flags), the store commands move nothing, login and tags never touch the store.
    base = _Parser(add_help=False)
    base.add_argument("--debug", action="store_true", help="tracebacks on errors")

    store = _Parser(add_help=False)
    store.add_argument("--store", help="the local store (default $XFER_STORE or XDG data dir)")

    output = _Parser(add_help=False)
    printed = output.add_mutually_exclusive_group()
    printed.add_argument("--json", action="store_true", help="JSON Lines events on stdout")
    printed.add_argument("-q", "--quiet", action="store_true", help="only the final result")

    net = _Parser(add_help=False)  # reaching a registry
    net.add_argument("--plain-http", action="store_true", help="talk HTTP, not HTTPS")
    net.add_argument("--insecure", action="store_true", help="HTTPS without verification")
    net.add_argument("--ca-file", help="trust this CA bundle for HTTPS")
    net.add_argument("--creds", help="USER:PASSWORD for the registry")
    net.add_argument("--username", "-u", help="user name; the password comes from stdin")
    net.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    net.add_argument(
        "--max-requests-per-second",
        type=float,
        metavar="N",
        help="send each registry host at most N requests a second, evenly spaced (a 429's "
        "Retry-After and RateLimit-* headers are honoured for the whole run either way)",
    )

    jobs = _Parser(add_help=False)  # moving blobs, from a registry or not
    jobs.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=8,
        help="blob transfers at once (default 8; blobs up to 1 MiB: 4x as many unless -j 1)",
    )

    streams = _Parser(add_help=False)  # moving blobs over the network
    streams.add_argument("--retries", type=int, default=5, help="retries per request (default 5)")
    streams.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="a stalled connection, or one bringing under 1 KiB/s over this long, is dropped and "
        "resumed; an answer or a small body gets 3 times this long (default 60)",
    )
    streams.add_argument(
        "--limit-rate", metavar="RATE", help="cap the whole transfer, e.g. 50M (bytes/s)"
    )
    streams.add_argument(
        "--parallel-ranges",
        type=int,
        metavar="N",
        help="always fetch a big blob as N Range requests at once (default: up to 4, only "
        "when the link is slow; 1 disables)",
    )
    streams.add_argument(
        "--range-threshold", metavar="SIZE", help="split blobs at least this big (default 64Mi)"
    )

    uploads = _Parser(add_help=False)  # writing to a registry
    uploads.add_argument(
        "--chunk-size",
        metavar="SIZE",
        help="upload a blob larger than SIZE (e.g. 50M) in chunks of at most SIZE, for a proxy "
        "that caps request bodies (default: one request per blob)",
    )

    platforms = _Parser(add_help=False)
    plat = platforms.add_mutually_exclusive_group()
    plat.add_argument(
        "--platform",
        help="OS/ARCH[/VARIANT] of an index to use; a comma-separated list keeps those images "
        "in a new index (whose digest differs from the source's)",
    )
    plat.add_argument("--all-platforms", action="store_true", help="every image of an index")

    carry = _Parser(add_help=False)  # what travels with each image
    carried = carry.add_mutually_exclusive_group()
    carried.add_argument(
        "--no-referrers",
        action="store_true",
        help="leave signatures, SBOMs and attestations behind (by default they travel with "
        "each image: the referrers API, the sha256-<hex> fallback tag, cosign's .sig/.att/.sbom)",
    )
    carried.add_argument(
        "--referrers-type",
        action="append",
        metavar="TYPE",
        help="carry only referrers of this artifact type, at every level (repeatable), e.g. "
        "application/spdx+json or application/vnd.dev.cosign.simplesigning.v1+json",
    )

    moving = [base, store, output, net, jobs, streams, platforms, carry]

    parser = _Parser(prog=PROG, description="Move container images between registries and stores.")
    parser.add_argument("--version", action="version", version="xfer 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("pull", parents=moving, help="registry → store")
    p.add_argument("references", nargs="+", metavar="REF")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("push", parents=[*moving, uploads], help="store → registry")
    p.add_argument("reference", metavar="REF", help="an image in the store")
    p.add_argument("destination", nargs="?", metavar="DEST-REF", help="default: REF itself")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser(
        "copy",
        parents=[*moving, uploads],
        help="any endpoint → any endpoint (REF, docker://REF, store:REF, oci:DIR[:NAME], "
        "oci-archive:FILE[:NAME], docker-archive:FILE[:REF])",
    )
    p.add_argument("source", metavar="SRC")
    p.add_argument("destination", metavar="DST")
    p.add_argument("--src-creds", metavar="USER:PASS", help="credentials for the source only")
    p.add_argument("--dest-creds", metavar="USER:PASS", help="credentials for the target only")
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser(
        "mirror",
        # registry to registry
        parents=[base, output, net, jobs, streams, uploads, platforms, carry],
        help="many repositories into one registry",
    )
    p.add_argument(
        "config",
        metavar="SRC",
        help="skopeo sync's YAML source format, or a bundle: oci-archive:FILE, oci:DIR",
    )
    p.add_argument(
        "destination",
        metavar="DEST",
        help="host[:port][/prefix], or a bundle to export (or re-pack a bundle SRC) into: "
        "oci-archive:FILE, oci:DIR",
    )
    p.add_argument(
        "--since",
        action="append",
        metavar="OLD",
        help="export only the blobs OLD lacks (repeatable): an earlier bundle, an OCI layout "
        "or an index.json of what the far side holds; the bundle records what it relies on",
    )
    p.add_argument(
        "--max-size",
        metavar="SIZE",
        help="export the bundle as volumes NAME.001.tar, NAME.002.tar, ... of at most SIZE "
        "(e.g. 4G) each, whole blobs; a rerun keeps the volumes finished",
    )
    p.add_argument("--scoped", action="store_true", help="prefix each target with the source host")
    p.add_argument("--dest-creds", metavar="USER:PASS", help="credentials for the target")
    p.add_argument(
        "--images",
        type=int,
        default=16,  # api.MIRROR_IMAGES, which --help would otherwise load the library for
        metavar="N",
        help="images copied at once (default %(default)s)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only the plan: copy / unchanged / skip per image, with bytes; nothing written",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="worker I (0-based) of N: a share of the images by target repository; auto/N "
        "takes I from $JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)",
    )
    p.set_defaults(func=cmd_mirror)

    p = sub.add_parser(
        "save", parents=moving, help="images → one tarball (docker load, oci-archive:)"
    )
    p.add_argument(
        "references", nargs="+", metavar="REF", help="store images; docker://REF from a registry"
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the archive to write")
    p.add_argument(
        "--format",
        choices=("docker", "oci"),
        help="only docker's manifest.json or only an OCI layout (default: both, as Docker 25+)",
    )
    p.add_argument(
        "--max-size",
        metavar="SIZE",
        help="write volumes FILE.001.tar, FILE.002.tar, ... of whole blobs, each at most SIZE "
        "(e.g. 4G); a rerun after an interruption keeps the volumes finished",
    )
    p.set_defaults(func=cmd_save)

    p = sub.add_parser(
        "load",
        parents=[base, store, output, jobs, platforms, carry],  # a file on disk: no network
        help="docker or OCI tarball → store (every platform it holds, as docker load; "
        "--platform narrows an index to one image)",
    )
    p.add_argument("file", nargs="?", metavar="FILE")
    p.add_argument("-i", "--input", metavar="FILE", help="the archive (docker load's spelling)")
    p.add_argument(
        "--name",
        metavar="REF",
        help="store the archive's one image as REF (default: the names it carries; an image "
        "saved by ID, without any, is stored under its manifest digest)",
    )
    p.set_defaults(func=cmd_load)

    p = sub.add_parser(
        "unpack", parents=[base, store, output], help="image → root filesystem in DIR"
    )
    p.add_argument(
        "reference",
        metavar="REF",
        help="store:REF (the default), oci:DIR[:NAME], an archive or docker://REF",
    )
    p.add_argument("directory", metavar="DIR", help="appears only once complete")
    p.add_argument("--platform", help="OS/ARCH[/VARIANT] of an index (default: this machine's)")
    p.add_argument("--force", action="store_true", help="replace DIR even if it is not empty")
    p.add_argument("--devices", action="store_true", help="make device nodes (root only)")
    p.add_argument("--max-size", metavar="SIZE", help="most bytes all layers unpack to (32Gi)")
    p.set_defaults(func=cmd_unpack)

    p = sub.add_parser("images", parents=[base, store, output], help="the store's images")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("inspect", parents=[base, store, net], help="manifest summary")
    p.add_argument(
        "reference",
        metavar="REF",
        help="a registry reference, store:REF, oci:DIR[:NAME] or an archive",
    )
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--raw", action="store_true", help="the exact manifest bytes")
    shown.add_argument("--config", action="store_true", help="the image config")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "rm", parents=[base, store, output], help="drop references (blobs stay until gc)"
    )
    p.add_argument("references", nargs="+", metavar="REF")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser(
        "gc", parents=[base, store, output], help="delete unreferenced blobs and stale partials"
    )
    p.add_argument(
        "--partials", action="store_true", help="also every partial download, however recent"
    )
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser(
        "verify",
        parents=[base, store, output],
        help="re-hash the store, or a bundle (oci-archive:FILE, a volume set, oci:DIR), and "
        "check every image's graph is complete; report every damaged or missing blob",
    )
    p.add_argument(
        "endpoint",
        nargs="?",
        metavar="ENDPOINT",
        help="oci-archive:FILE (or a volume set: FILE or its first volume) or oci:DIR "
        "(default: the store)",
    )
    p.add_argument(
        "--expect",
        metavar="ROOT-DIGEST",
        help="the bundle's root digest (sha256 of its index.json), as its export printed",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="remove damaged blobs, so that the next pull fetches them again",
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "referrers",
        parents=[base, store, net],
        help="what refers to an image (signatures, SBOMs, attestations), as a tree",
    )
    p.add_argument(
        "reference",
        metavar="REF",
        help="a registry reference, store:REF, oci:DIR[:NAME] or an archive",
    )
    p.add_argument("--json", action="store_true", help="the tree as one JSON document")
    p.add_argument(
        "--referrers-type", action="append", metavar="TYPE", help="only this artifact type"
    )
    p.set_defaults(func=cmd_referrers)

    p = sub.add_parser("tags", parents=[base, net], help="a repository's tags")
    p.add_argument("repository", metavar="REPO")
    p.set_defaults(func=cmd_tags)

    p = sub.add_parser("login", parents=[base, net], help="check and keep registry credentials")
    p.add_argument("host", metavar="HOST", nargs="?", default="docker.io")
    p.add_argument("-q", "--quiet", action="store_true", help="only 'Login Succeeded'")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("logout", parents=[base], help="forget a registry's credentials")
    p.add_argument("host", metavar="HOST", nargs="?", default="docker.io")
    p.set_defaults(func=cmd_logout)
    return parser


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        args = build_parser().parse_args(argv)
        func: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.func
        import anyio  # after parsing: --version and --help need no event loop

        return anyio.run(func, args)
    except TransferError as exc:
        if debug:
            _traceback(exc)
            return exc.exit_code
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        moving = {"pull", "push", "copy", "mirror", "save", "load"}
        words = (argv if argv is not None else sys.argv[1:]) or [""]
        _error(
            "interrupted; partial downloads are kept and resume on the next run"
            if moving & set(words)
            else "interrupted"
        )
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a file of the store or an argument that cannot be read or written
        if debug:
            _traceback(exc)
            return 1
        _error(str(exc))
        return 1
    except Exception as exc:  # a foreign error nobody translated: still one line, exit 1
        if debug:
            _traceback(exc)
            return 1
        _error(f"{type(exc).__name__}: {exc} (a bug in xfer: --debug shows where)")
        return 1


def run() -> NoReturn:
    """The ``xfer`` command: ``main()``, then an exit that skips tearing the interpreter down.

    Freeing every object and joining the idle worker threads took ~30 ms after the result was
    printed, at the end of every command (13% of a small pull). By then the command has closed
    (and, where it matters, fsynced) everything it wrote; only stdio and logging are flushed.
    """
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away: as main() reports it
        code = code or 1
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    import logging  # loaded by the command's libraries already; --version never gets here

    logging.shutdown()
    os._exit(code)


def _say(line: str) -> None:
    """One line of a command's result on stdout; server and archive text in it escaped."""
    sys.stdout.write(printable(line) + "\n")
    sys.stdout.flush()


def _warning(message: str) -> None:
    sys.stderr.write(f"{PROG}: warning: {printable(message)}\n")


def _traceback(exc: BaseException) -> None:
    """``--debug``: the traceback, as Python prints it but with every piece passed through
    ``printable``: an exception's text (a registry's message, maybe) is one line, its escapes
    and line breaks escaped; only a frame (file and line, then our source) spans two lines."""
    import traceback

    for chunk in traceback.TracebackException.from_exception(exc).format():
        frame = chunk.lstrip(" |").startswith("File ")
        for line in chunk.rstrip("\n").split("\n") if frame else [chunk.strip("\n")]:
            sys.stderr.write(printable(line) + "\n")
    sys.stderr.flush()


def _error(message: str) -> None:
    # One line, always: a registry's message may hold newlines and terminal escapes, shown
    # escaped so that it can neither forge a line of its own nor drive the terminal.
    sys.stderr.write(f"{PROG}: error: {printable(message.strip())}\n")
    sys.stderr.flush()
