"""What a command loads before its first request: only the modules it uses.

Every xfer run pays for its imports before it does anything (start-up, ``make bench``'s
``xfer --version``): ``--version``, ``--help`` and a usage error load none of the library, and a
pull, or a mirror between registries, loads none of the code of the other commands. Each test
runs the real command in a fresh interpreter and reads what it imported; no timing.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fixtures.images import BuiltImages
from fixtures.registry import Registry
from tests.helpers import xfer_env

# What a network command needs and nothing before it does: HTTP, the event loop, retries.
NETWORK = {"httpx", "httpcore", "h11", "ssl", "anyio", "asyncio", "tenacity"}
# What only some commands use: YAML and semver (a mirror), tqdm (a terminal's bars).
OPTIONAL = {"yaml", "semver", "tqdm"}
# The modules of commands other than pull, copy and push.
OTHER_COMMANDS = {
    "transfer.mirror",
    "transfer.bundle",
    "transfer.bundle_import",
    "transfer.bundle_record",
    "transfer.bundlecheck",
    "transfer.maintenance",
    "transfer.unpack",
    "transfer.tarstream",
    "transfer.tarheader",
    "transfer.compression",
    "transfer.safepath",
    "transfer.endpoints.archive_read",
    "transfer.endpoints.archive_write",
    "transfer.endpoints.bundle_write",
    "transfer.endpoints.tarindex",
    "transfer.endpoints.volumes",
}


# The command as ``python -m transfer ARGS`` runs it (cli.main), then the modules it loaded.
COMMAND = """
import sys
from transfer.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:  # --version and --help exit from the parser
    code = exc.code
with open(sys.argv[1], "w") as out:
    out.write("\\n".join(sys.modules))
sys.exit(code)
"""


def loaded(*args: str | Path, code: str = COMMAND) -> set[str]:
    """The modules in ``sys.modules`` after running ``code`` (the command ``xfer ARGS``) in a
    fresh interpreter."""
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "modules"
        done = subprocess.run(
            [sys.executable, "-c", code, listing, *map(str, args)],
            capture_output=True,
            text=True,
            env=xfer_env(),
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return set(listing.read_text().split("\n"))


def packages(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["pull", "--help"]])
def test_version_and_help_load_only_the_parser(args: list[str]) -> None:
    modules = loaded(*args)
    heavy = NETWORK | OPTIONAL | {"zstandard", "platformdirs", "typing", "dataclasses"}
    assert not packages(modules) & heavy
    assert {m for m in modules if m.startswith("transfer")} == {
        "transfer",
        "transfer.cli",
        "transfer.errors",
    }


LIBRARY = """
import sys
import transfer
{}
with open(sys.argv[1], "w") as out:
    out.write("\\n".join(sys.modules))
"""


def test_importing_the_package_loads_the_library_on_first_use() -> None:
    modules = loaded(code=LIBRARY.format(""))
    assert not packages(modules) & (NETWORK | OPTIONAL)
    assert {m for m in modules if m.startswith("transfer")} == {"transfer"}
    using = loaded(code=LIBRARY.format("transfer.pull_sync, transfer.Session"))
    assert {"transfer.api", "transfer.session", "httpx"} <= using
    # The API module itself, as scripts reached it when the package imported it eagerly.
    assert "transfer.api" in loaded(code=LIBRARY.format("transfer.api.copy_sync"))


def test_pull_loads_no_code_of_the_other_commands(
    registry: Registry, images: BuiltImages, store: Path
) -> None:
    ref = f"{registry.host}/{images.images['small'].ref}"
    modules = loaded("pull", ref, "--store", store)
    assert {"transfer.copy", "transfer.endpoints.layout", "httpx"} <= modules  # it did pull
    assert not modules & OTHER_COMMANDS
    assert not packages(modules) & OPTIONAL


def test_a_mirror_between_registries_loads_no_bundle_or_archive_code(
    registry: Registry, empty_registry: Registry, images: BuiltImages, tmp_path: Path
) -> None:
    config = tmp_path / "sync.yaml"
    repository, tag = images.images["small"].ref.rsplit(":", 1)
    config.write_text(f"{registry.host}:\n  images:\n    {repository}: ['{tag}']\n")
    modules = loaded("mirror", config, f"{empty_registry.host}/mirrored")
    assert {"transfer.mirror", "yaml", "semver"} <= modules  # it did mirror
    assert not modules & (OTHER_COMMANDS - {"transfer.mirror"})
    assert "tarfile" not in modules


def test_the_parser_states_the_apis_mirror_default_without_loading_it() -> None:
    from transfer import api
    from transfer.cli import build_parser

    args = build_parser().parse_args(["mirror", "sync.yaml", "example.com"])
    assert args.images == api.MIRROR_IMAGES
