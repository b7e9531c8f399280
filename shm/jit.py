"""Numba plumbing that is not a kernel: whether a kernel is already in the on-disk cache."""

from __future__ import annotations

import os


def in_disk_cache(kernel) -> bool:
    """Whether numba's on-disk cache holds ``kernel`` (a ``cache=True`` dispatcher): False
    before its first compile on this machine (or after an upgrade), when warming it up
    compiles for seconds instead of loading in milliseconds. True when it cannot tell."""
    try:
        return os.path.exists(kernel._cache._cache_file._index_path)
    except Exception:  # noqa: BLE001  (numba internals: only a hint)
        return True
