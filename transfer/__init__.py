"""xfer: moves container images between registries, the local store and archives.

The async API mirrors the CLI; ``*_sync`` wrappers serve scripts.
"""

from .api import (
    ImageEntry,
    Settings,
    copy,
    copy_sync,
    default_store,
    gc,
    images,
    inspect,
    load,
    load_sync,
    login,
    logout,
    pull,
    pull_sync,
    push,
    remove,
    save,
    save_sync,
    tag_pages,
    tags,
    tags_sync,
    unpack,
    unpack_sync,
    verify,
)
from .auth import Credentials
from .config import RegistryConfig
from .copy import CopyOptions, CopyResult, copy_image
from .digest import Digest
from .errors import TransferError
from .manifest import Descriptor, Manifest, Platform
from .reference import Reference, parse
from .retry import RetryPolicy
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
    "Settings",
    "TransferError",
    "TransportOptions",
    "copy",
    "copy_image",
    "copy_sync",
    "default_store",
    "gc",
    "images",
    "inspect",
    "load",
    "load_sync",
    "login",
    "logout",
    "parse",
    "pull",
    "pull_sync",
    "push",
    "remove",
    "save",
    "save_sync",
    "tag_pages",
    "tags",
    "tags_sync",
    "unpack",
    "unpack_sync",
    "verify",
]
