"""Object storage for the commands that read or write synthetic stores: ``--storage-option KEY=VALUE``.

A store may be any fsspec URL (``s3://bucket/v3-Xs.zarr``, ``memory://...``).
Credentials and the endpoint come from the usual environment of the file
system's library (for S3, botocore's: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ...), and
``--storage-option KEY=VALUE`` adds keyword arguments of the file system
(for ``s3fs.S3FileSystem``: ``endpoint_url``, ``anon``, ``key``, ``secret``,
``client_kwargs``, ...). ``VALUE`` is read as JSON where it parses (``true``,
``3``, ``{"region_name": "eu-west-1"}``) and as a string otherwise.

The options go into fsspec's own configuration (``fsspec.config.conf``, the
defaults of every file system fsspec makes for a protocol) for the protocol
of every object-store URL the command was given, and into its environment
form (``FSSPEC_<PROTOCOL>``, JSON) for the processes the command starts
(``torchrun`` workers, data-loader workers), so every store the command opens
gets them.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import fsspec.config
from fsspec.utils import get_protocol

from .errors import UserError

LOCAL_PROTOCOLS = ("file", "local")
EXTRAS = {"s3": "s3", "s3a": "s3"}
"""The project's optional extra that installs a protocol's file system (``pip install '.[s3]'``)."""


def add_storage_option_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="keyword argument of the object store's file system, e.g. endpoint_url=http://host:9000 "
                             "(repeatable; default: none; credentials come from the usual environment variables)")


def parse_storage_options(options: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict, each value JSON where it parses and a string otherwise."""
    parsed: dict[str, Any] = {}
    for option in options:
        key, sep, text = option.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--storage-option {option!r}: expected KEY=VALUE")
        try:
            parsed[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            parsed[key.strip()] = text
    return parsed


def remote_protocols(urls: Iterable[str | Path | None]) -> list[str]:
    """The protocols of the object-store URLs among ``urls`` (local paths and ``file://`` are none), in order."""
    found: list[str] = []
    for url in urls:
        if isinstance(url, str) and "://" in url:
            protocol = get_protocol(url)
            if protocol not in LOCAL_PROTOCOLS and protocol not in found:
                found.append(protocol)
    return found


def apply_storage_options(options: Sequence[str], urls: Iterable[str | Path | None]) -> None:
    """Give ``options`` (``KEY=VALUE``) to the file systems of every object-store URL among ``urls``."""
    parsed = parse_storage_options(options)
    if not parsed:
        return
    protocols = remote_protocols(urls)
    if not protocols:
        raise UserError("--storage-option applies to object-store URLs (s3://...), and the command was given none")
    for protocol in protocols:
        fsspec.config.conf.setdefault(protocol, {}).update(parsed)
        variable = f"FSSPEC_{protocol.upper()}"
        inherited = json.loads(os.environ.get(variable, "{}") or "{}")
        os.environ[variable] = json.dumps(inherited | parsed)


def missing_file_system(url: str, error: ImportError) -> UserError:
    """The one-line error for a URL whose file system's package is not installed."""
    protocol = get_protocol(url)
    extra = EXTRAS.get(protocol)
    if extra:
        return UserError(f"{url}: {protocol}:// needs s3fs, which is not installed (pip install '.[{extra}]')")
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return UserError(f"{url}: {protocol}:// needs a package that is not installed: {reason}")
