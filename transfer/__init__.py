"""xfer: moves container images between registries, the local store and archives.

Every command of the CLI is an async function here (``pull``, ``push``, ``copy``, ``mirror``,
``save``, ``load``, ``unpack``, ``inspect``, ``referrers``, ``tags``, ``images``, ``remove``,
``gc``, ``verify``, ``login``, ``logout``), and each has a synchronous twin for scripts
(``pull_sync``, …), made by ``synchronous``.
"""

import importlib
import sys
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING without loading typing (xfer --version)
if TYPE_CHECKING:  # for type checkers: __getattr__ below loads these on first use
    from .api import (
        ImageEntry,
        Settings,
        copy,
        copy_sync,
        default_store,
        gc,
        gc_sync,
        images,
        images_sync,
        inspect,
        inspect_sync,
        load,
        load_sync,
        login,
        login_sync,
        logout,
        logout_sync,
        mirror,
        mirror_sync,
        pull,
        pull_sync,
        push,
        push_sync,
        referrers,
        referrers_sync,
        remove,
        remove_sync,
        save,
        save_sync,
        synchronous,
        tag_pages,
        tags,
        tags_sync,
        unpack,
        unpack_sync,
        verify,
        verify_sync,
    )
    from .auth import Credentials
    from .config import RegistryConfig
    from .copy import CopyOptions, CopyResult, copy_image
    from .digest import Digest
    from .errors import TransferError
    from .manifest import Descriptor, Manifest, Platform
    from .reference import Reference, parse
    from .retry import RetryPolicy
    from .session import Session
    from .transport import TransportOptions

__all__ = [
    "CopyOptions",
    "CopyResult",
    "Credentials",
    "Descriptor",
    "Digest",
    "ImageEntry",
    "Manifest",
    "Platform",
    "Reference",
    "RegistryConfig",
    "RetryPolicy",
    "Session",
    "Settings",
    "TransferError",
    "TransportOptions",
    "copy",
    "copy_image",
    "copy_sync",
    "default_store",
    "gc",
    "gc_sync",
    "images",
    "images_sync",
    "inspect",
    "inspect_sync",
    "load",
    "load_sync",
    "login",
    "login_sync",
    "logout",
    "logout_sync",
    "mirror",
    "mirror_sync",
    "parse",
    "pull",
    "pull_sync",
    "push",
    "push_sync",
    "referrers",
    "referrers_sync",
    "remove",
    "remove_sync",
    "save",
    "save_sync",
    "synchronous",
    "tag_pages",
    "tags",
    "tags_sync",
    "unpack",
    "unpack_sync",
    "verify",
    "verify_sync",
]


# The names that do not come from api.py, and their modules.
_HOMES = {
    "Credentials": ".auth",
    "RegistryConfig": ".config",
    "CopyOptions": ".copy",
    "CopyResult": ".copy",
    "copy_image": ".copy",
    "Digest": ".digest",
    "TransferError": ".errors",
    "Descriptor": ".manifest",
    "Manifest": ".manifest",
    "Platform": ".manifest",
    "Reference": ".reference",
    "parse": ".reference",
    "RetryPolicy": ".retry",
    "Session": ".session",
    "TransportOptions": ".transport",
}

# Hidden from type checkers, which read the imports above instead: for them a misspelt
# ``transfer.name`` stays an error rather than an ``object`` from ``__getattr__``.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        """The public names load on first use (PEP 562): ``import transfer.cli`` (``xfer
        --version``, ``--help``, a usage error) then loads neither the library nor httpx, and
        a command loads only the modules it runs."""
        if name == "api":  # ``import transfer; transfer.api.…`` worked when it loaded eagerly
            return importlib.import_module(".api", __name__)
        if name not in __all__:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(_HOMES.get(name, ".api"), __name__), name)
        globals()[name] = value  # once: later lookups find it without this function
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})


del TYPE_CHECKING  # not a name of the API


class _Package(types.ModuleType):
    """The package keeps its API functions when a module of the same name is imported.

    ``transfer.copy``, ``transfer.mirror`` and ``transfer.unpack`` are modules as well as
    functions here; the import system sets a module on its package once it is first imported
    (``mirror`` and ``unpack`` import theirs when first called), which made the second
    ``await transfer.unpack(...)`` call a module. ``sys.modules`` still holds the modules.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and name in __all__:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
