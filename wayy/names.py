"""Symbol and venue names: the allowed character set, and the symbol -> shard hash.

Names are 1-16 ASCII characters from ``[A-Za-z0-9._-]`` (venues may also be empty). No glob
characters (``* ? [ ]``), no separators (``:`` ``/`` ``\\``), no whitespace: a name can never
cross from one channel namespace into another or widen a Redis ACL pattern.

Routing: a symbol lives on shard ``fnv1a_64(symbol_ascii_bytes) % nshards`` — FNV-1a, 64-bit,
offset basis 0xcbf29ce484222325, prime 0x100000001b3, over the name's bytes without padding.
Every process and any language computes the same shard.
"""

from __future__ import annotations

import re

import numba
import numpy as np

from shm.ingest import valid_name
from shm.layout.tables import NAME_BYTES
from wayy.errors import InvalidName

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,16}\Z")
FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def check_symbol(name: object, what: str = "symbol") -> str:
    """Return ``name`` if it is a valid symbol, else raise InvalidName saying why."""
    if not isinstance(name, str):
        raise InvalidName(f"{what} must be a str, got {type(name).__name__}")
    if not NAME_RE.match(name):
        if not name:
            raise InvalidName(f"{what} is empty")
        if len(name) > NAME_BYTES:
            raise InvalidName(f"{what} {name[:40]!r}... is longer than {NAME_BYTES} characters")
        raise InvalidName(
            f"{what} {name!r} has characters outside [A-Za-z0-9._-] (no glob characters, "
            f"separators, whitespace or non-ASCII)"
        )
    return name


def check_venue(name: object) -> str:
    """Return ``name`` if it is a valid venue (the empty string included)."""
    if name == "":
        return ""
    return check_symbol(name, "venue")


def fnv1a(name: str) -> int:
    """FNV-1a 64-bit hash of the name's ASCII bytes."""
    h = FNV_OFFSET
    for b in name.encode("ascii"):
        h = ((h ^ b) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def shard_of(symbol: str, nshards: int) -> int:
    """The shard that owns ``symbol``."""
    return fnv1a(symbol) % nshards


@numba.njit(cache=True, nogil=True)
def shard_of_names(names8, n, nshards, out):
    """Shard of each of ``n`` NUL-padded 16-byte names in ``names8`` (vectorised shard_of)."""
    for i in range(n):
        h = np.uint64(FNV_OFFSET)
        for k in range(NAME_BYTES):
            c = names8[i * NAME_BYTES + k]
            if c == 0:
                break
            h = (h ^ np.uint64(c)) * np.uint64(FNV_PRIME)
        out[i] = np.int64(h % np.uint64(nshards))


@numba.njit(cache=True, nogil=True)
def first_bad_name(names8, n, allow_empty):
    """Index of the first of ``n`` 16-byte names outside the allowed set, or -1."""
    for i in range(n):
        if not valid_name(names8, i * NAME_BYTES, allow_empty):
            return i
    return -1


@numba.njit(cache=True, nogil=True)
def _encode_ucs4(src, n, width, out8, allow_empty):
    """UCS-4 names (numpy 'U') -> NUL-padded ASCII 16-byte names; index of first bad, or -1.

    Over-long, non-ASCII and disallowed names are all "bad"; the caller re-checks the one
    found to say why. numpy's own U->S conversion is ~100x slower than this.
    """
    for i in range(n):
        o = i * NAME_BYTES
        for k in range(NAME_BYTES):
            out8[o + k] = 0
        for k in range(width):
            c = src[i * width + k]
            if c == 0:
                break
            if k >= NAME_BYTES or c > 127:
                return i
            out8[o + k] = c
        if not valid_name(out8, o, allow_empty):
            return i
    return -1


def to_name_array(values: object, what: str, n: int) -> np.ndarray:
    """Convert names to a contiguous NUL-padded ``S16`` array, every name checked.

    Accepts a str (broadcast to ``n`` rows), a numpy 'U' or 'S' array, or a sequence of str.
    Raises InvalidName naming the first bad row: over-long (numpy would silently truncate),
    non-ASCII, or outside the allowed character set.
    """
    allow_empty = what == "venue"
    check = check_venue if allow_empty else (lambda v: check_symbol(v, what))
    if isinstance(values, str):
        check(values)
        out = np.empty(n, dtype=f"S{NAME_BYTES}")
        out[:] = values.encode("ascii")
        return out
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InvalidName(f"{what} column must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "latin-1") if arr.dtype.itemsize > NAME_BYTES else arr
    if arr.dtype.kind == "S":
        out = np.ascontiguousarray(arr, dtype=f"S{NAME_BYTES}")
        out8 = out.view(np.uint8)
        bad = first_bad_name(out8, len(out), allow_empty)
    elif arr.dtype.kind == "U" or arr.dtype == object:
        if arr.dtype == object:
            for i, v in enumerate(arr):
                if not isinstance(v, str):
                    raise InvalidName(f"{what} at row {i} is not a str but {type(v).__name__}")
            arr = arr.astype(str) if len(arr) else np.empty(0, "U1")
        width = max(arr.dtype.itemsize // 4, 1)
        src = np.ascontiguousarray(arr).view(np.uint32) if len(arr) else np.zeros(0, np.uint32)
        out = np.empty(len(arr), dtype=f"S{NAME_BYTES}")
        bad = _encode_ucs4(src, len(arr), width, out.view(np.uint8), allow_empty)
    else:
        raise InvalidName(f"{what} column must hold strings, got dtype {arr.dtype}")
    if bad >= 0:
        v = arr[bad]
        v = v.decode("latin-1") if isinstance(v, bytes) else str(v)
        try:
            check(v)
        except InvalidName as exc:
            raise InvalidName(f"{what} at row {bad}: {exc}") from None
        raise InvalidName(f"{what} at row {bad} ({v!r}) is not allowed")
    return out


def name_words(name: str) -> tuple[int, int]:
    """The NUL-padded 16-byte name as two little-endian signed 64-bit words."""
    b = name.encode("ascii").ljust(NAME_BYTES, b"\0")
    w = np.frombuffer(b, dtype="<i8")
    return int(w[0]), int(w[1])
