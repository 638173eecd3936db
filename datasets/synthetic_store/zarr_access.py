"""Zarr access for synthetic stores: local paths and fsspec URLs, the root attributes, listing the objects.

Local paths (and ``file://`` URLs) use zarr's ``LocalStore``, which writes
every object to a temporary file and renames it into place, so an object is
either its old or its new version; any other URL (``memory://``, ``s3://``,
...) uses ``FsspecStore``, whose object stores replace objects whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr
from zarr.abc.store import Store
from zarr.core.sync import sync
from zarr.errors import BaseZarrError
from zarr.storage import FsspecStore, LocalStore

from plumbing.storage import missing_file_system

from .format import SPLITS


class DamagedRoot(Exception):
    """The root ``zarr.json`` exists but does not parse."""


def _is_url(url: str | Path) -> bool:
    return isinstance(url, str) and "://" in url and not url.startswith("file://")


def make_store(url: str | Path, *, read_only: bool) -> Store:
    """A zarr store for a local path (or ``file://`` URL) or any fsspec URL (``memory://``, ``s3://``, ...).

    Local paths use ``LocalStore`` (atomic object writes); other URLs ``FsspecStore``.
    """
    if _is_url(url):
        try:
            return FsspecStore.from_url(str(url), read_only=read_only)
        except ImportError as exc:  # fsspec knows the protocol, its package (s3fs, gcsfs, ...) is not installed
            raise missing_file_system(str(url), exc) from None
    path = str(url)[len("file://") :] if str(url).startswith("file://") else url
    return LocalStore(Path(path).expanduser(), read_only=read_only)


def root_attrs(store: Store) -> dict[str, Any] | None:
    """The root group's attributes, ``None`` when the store holds no zarr group, ``{}`` for a zarr array.

    Raises:
        DamagedRoot: the root metadata does not parse (truncated or overwritten ``zarr.json``).
    """
    try:
        return dict(zarr.open_group(store=store, mode="r").attrs)
    except FileNotFoundError:
        return None
    except BaseZarrError:
        return {}
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError and friends
        raise DamagedRoot(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def store_is_empty(store: Store) -> bool:
    """Whether ``store`` holds no object (a local folder that does not exist is empty)."""
    if isinstance(store, LocalStore):
        return not store.root.exists() or not any(store.root.iterdir())
    return sync(store.is_empty(""))


async def _listed_keys(store: Store) -> list[str]:
    return [key async for key in store.list()]


def object_sizes(store: Store) -> dict[str, int | None]:
    """Every object of ``store`` and its size in bytes, from one listing (``None`` where a store gives no sizes)."""
    if isinstance(store, LocalStore):
        if not store.root.exists():
            return {}
        return {p.relative_to(store.root).as_posix(): p.stat().st_size for p in store.root.rglob("*") if p.is_file()}
    if isinstance(store, FsspecStore):
        found = sync(store.fs._find(store.path, detail=True, withdirs=False))
        return {path.removeprefix(store.path + "/"): info.get("size") for path, info in found.items()}
    return dict.fromkeys(sync(_listed_keys(store)))


def holds_only_store_objects(store: Store) -> bool:
    """Whether every object lies where a synthetic store keeps its own: ``zarr.json``, ``train/``, ``val/``."""
    return all(key == "zarr.json" or key.split("/")[0] in SPLITS for key in object_sizes(store))
