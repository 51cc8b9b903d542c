"""Object storage: the fsspec storage options of a store at a URL (``s3://``, ``gs://``, ...)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from loralens.store.schema import UserError

STORAGE_OPTIONS_ENV = "LORALENS_STORAGE_OPTIONS"
"""Environment variable holding a store's fsspec storage options as JSON (``loralens app`` passes them this way)."""


def storage_options(endpoint_url: str | None = None, anonymous: bool = False, profile: str | None = None,
                    pairs: Iterable[str] = ()) -> dict | None:
    """The fsspec storage options of a store URL, from the commands' flags; None where none are given.

    Args:
        endpoint_url: an S3-compatible server (MinIO, Ceph, moto, a cloud's S3 endpoint).
        anonymous: read a public bucket without credentials.
        profile: a named profile of the AWS credentials file.
        pairs: ``KEY=VALUE`` passed to fsspec as they are; a VALUE that parses as JSON (``true``, ``3``,
            ``{"region_name": "eu-west-1"}``) is passed parsed, any other as a string.

    Raises:
        ValueError: a pair without ``=``.
    """
    options: dict[str, Any] = {}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    if anonymous:
        options["anon"] = True
    if profile:
        options["profile"] = profile
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--storage-option {pair!r}: expected KEY=VALUE, e.g. client_kwargs='{{\"region_name\": "
                             "\"eu-west-1\"}'")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options or None
