"""Where a store lives: a local path or any URL fsspec understands (s3://, gs://, memory://, file://).

Every file-system operation of the store (existence, removal, sizes) goes through fsspec, and
zarr opens URLs through its FsspecStore. Credentials and endpoints come from `storage_options`
(a dict passed to the fsspec file system) or from fsspec's configuration, which also reads the
environment: FSSPEC_S3_ENDPOINT_URL=http://127.0.0.1:9000, FSSPEC_S3='{"anon": true}', and
the usual AWS_* variables of s3fs.
"""

from __future__ import annotations

import json
import os
from typing import Any

import fsspec
import fsspec.config
import zarr

from .errors import ConfigError


def is_url(path: str | os.PathLike) -> bool:
    """True for 'proto://...' except file:// (which zarr and we treat as a local path)."""
    s = str(path)
    return "://" in s and not s.startswith("file://")


def local_path(path: str | os.PathLike) -> str:
    s = str(path)
    return s.removeprefix("file://")


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """--storage-options: a JSON object (or empty)."""
    if not text:
        return {}
    try:
        opts = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--storage-options: not valid JSON ({e}): {text!r}") from None
    if not isinstance(opts, dict):
        raise ConfigError(f"--storage-options: expected a JSON object, got {text!r}")
    return opts


def _need_extra(path) -> None:
    """An s3:// store without s3fs installed: MissingExtra naming labelstore[s3] (not fsspec's ImportError)."""
    if str(path).split("://", 1)[0] in ("s3", "s3a"):
        from .extras import require

        require("s3fs", "s3:// stores")


def configure(url: str, storage_options: dict[str, Any]) -> None:
    """Make `storage_options` the defaults of every fsspec file system of url's protocol in this
    process (how the command line hands them to every component that opens the store)."""
    if storage_options and is_url(url):
        protocol = str(url).split("://", 1)[0]
        fsspec.config.conf.setdefault(protocol, {}).update(storage_options)


def filesystem(path: str | os.PathLike, storage_options: dict[str, Any] | None = None):
    """(fsspec file system, root path inside it) of a store location."""
    if not is_url(path):
        return fsspec.filesystem("file"), os.path.abspath(local_path(path))
    _need_extra(path)
    return fsspec.core.url_to_fs(str(path), **(storage_options or {}))


def open_group(path: str | os.PathLike, mode: str, storage_options: dict[str, Any] | None = None,
               attributes: dict[str, Any] | None = None) -> zarr.Group:
    """zarr.open_group for a local path or a URL (storage_options only apply to URLs). Each array's
    own zarr.json is read, never the consolidated copy (which is for other readers, e.g. xarray).
    attributes (mode "w"): the group's attributes, written with its zarr.json."""
    kw = {"attributes": attributes or {}} if mode == "w" else {"use_consolidated": False}
    if not isinstance(path, (str, os.PathLike)):  # a zarr Store object
        return zarr.open_group(path, mode=mode, zarr_format=3, **kw)
    if is_url(path):
        _need_extra(path)
        return zarr.open_group(str(path), mode=mode, zarr_format=3, storage_options=storage_options or None, **kw)
    return zarr.open_group(local_path(path), mode=mode, zarr_format=3, **kw)


def group_exists(path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a Zarr group's metadata (zarr.json) is at `path`."""
    fs, root = filesystem(path, storage_options)
    return fs.exists(f"{root.rstrip('/')}/zarr.json")


def remove(path: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> None:
    fs, root = filesystem(path, storage_options)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()

