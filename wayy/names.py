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

from shm.ingest import NAME_CHARS, valid_words
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


# "ticks:AAPL:stream" names the Redis stream of ticks:AAPL, so no venue may be called that:
# its venue channel could never be followed
RESERVED_VENUE = "stream"
_RESERVED_VENUE_S16 = np.array([RESERVED_VENUE.encode()], dtype="S16")


def _reserved_venue() -> InvalidName:
    return InvalidName(f"venue {RESERVED_VENUE!r} is reserved: ticks:SYMBOL:{RESERVED_VENUE} "
                       f"names the Redis stream of ticks:SYMBOL")


def check_venue(name: object) -> str:
    """Return ``name`` if it is a valid venue (the empty string included)."""
    if name == "":
        return ""
    return check_symbol(name, "venue")


def check_new_venues(venues: object) -> None:
    """Raise InvalidName if a venue being published is the reserved one (a str, or the S16
    array to_name_array made). Only for new ticks: names already stored stay readable."""
    if isinstance(venues, str):
        if venues == RESERVED_VENUE:
            raise _reserved_venue()
        return
    if len(venues):
        hit = np.flatnonzero(venues == _RESERVED_VENUE_S16[0])
        if len(hit):
            raise InvalidName(f"venue at row {int(hit[0])}: {_reserved_venue()}")


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
    names64 = names8[: n * NAME_BYTES].view(np.uint64)
    for i in range(n):
        if not valid_words(names64[2 * i], names64[2 * i + 1], allow_empty):
            return i
    return -1


@numba.njit(cache=True, nogil=True, inline="always")
def _encode_ucs4_w(src, n, width, out64, allow_empty):
    for i in range(n):
        base = i * width
        w0 = np.uint64(0)
        w1 = np.uint64(0)
        ended = False
        for k in range(width):
            c = src[base + k]
            if c == 0:
                ended = True
            elif ended or k >= NAME_BYTES or c > 127 or NAME_CHARS[c] == 0:
                return i
            elif k < 8:
                w0 |= np.uint64(c) << np.uint64(8 * k)
            else:
                w1 |= np.uint64(c) << np.uint64(8 * (k - 8))
        if w0 == 0 and not allow_empty:
            return i
        out64[2 * i] = w0
        out64[2 * i + 1] = w1
    return -1


@numba.njit(cache=True, nogil=True)
def _encode_ucs4(src, n, width, out64, allow_empty):
    """UCS-4 names (numpy 'U') -> NUL-padded ASCII 16-byte names; index of first bad, or -1.

    Each name is assembled in two registers and stored as two words; every character is
    checked against the allowed set with one table load. Over-long, non-ASCII and disallowed
    names (a NUL followed by a character included) are all "bad"; the caller re-checks the
    one found to say why. The common widths get a loop of constant length (unrolled by the
    compiler: 2-3x faster than the general one). numpy's own U->S conversion is ~100x slower.
    """
    if width == 4:
        return _encode_ucs4_w(src, n, 4, out64, allow_empty)
    if width == 3:
        return _encode_ucs4_w(src, n, 3, out64, allow_empty)
    if width == 5:
        return _encode_ucs4_w(src, n, 5, out64, allow_empty)
    if width == 2:
        return _encode_ucs4_w(src, n, 2, out64, allow_empty)
    if width == 1:
        return _encode_ucs4_w(src, n, 1, out64, allow_empty)
    if width == 6:
        return _encode_ucs4_w(src, n, 6, out64, allow_empty)
    if width == 7:
        return _encode_ucs4_w(src, n, 7, out64, allow_empty)
    if width == 8:
        return _encode_ucs4_w(src, n, 8, out64, allow_empty)
    return _encode_ucs4_w(src, n, width, out64, allow_empty)


_S16 = np.dtype(f"S{NAME_BYTES}")
_CONST_NAMES: dict = {}  # (name, rows, empty allowed) -> read-only S16 array (a str broadcast)


_CONST_MAX_ROWS = 1 << 14  # broadcasts of at most this many rows are kept (256 KB each)


def _const_names(name: str, n: int, allow_empty: bool) -> np.ndarray:
    """``name`` (already checked) repeated ``n`` times, read-only; small ones are cached,
    keyed with the check they passed (a feed's constant venue column)."""
    arr = np.empty(n, dtype=_S16)
    arr[:] = name.encode("ascii")
    arr.flags.writeable = False
    if n <= _CONST_MAX_ROWS:
        if len(_CONST_NAMES) >= 64:
            _CONST_NAMES.clear()
        _CONST_NAMES[(name, n, allow_empty)] = arr
    return arr


def _check_name_list(values: list | tuple, what: str) -> None:
    """InvalidName naming the first name of ``values`` that numpy's conversion would change:
    one holding a NUL (numpy drops a trailing one: "AB\\0" would be stored as "AB"), or one
    that is not a str when the others are (5 would become "5"; publish refuses it)."""
    for empty, nul in (("", "\x00"), (b"", b"\x00")):
        try:
            if nul not in empty.join(values):
                return
        except TypeError:  # not all of this type
            continue
        row = next(i for i, v in enumerate(values) if nul in v)
        raise InvalidName(f"{what} of row {row} ({values[row]!r}) holds a NUL character")
    kind = type(values[0])
    row = next(i for i, v in enumerate(values) if not isinstance(v, (str, bytes))
               or isinstance(v, str) != issubclass(kind, str))
    raise InvalidName(f"{what} of row {row} is {type(values[row]).__name__} "
                      f"{values[row]!r:.40}: names are all str (or all bytes)")


def to_name_array(values: object, what: str, n: int) -> np.ndarray:
    """Convert names to a contiguous NUL-padded ``S16`` array, every name checked.

    Accepts a str (broadcast to ``n`` rows), a numpy 'U' or 'S' array, or a sequence of str.
    Raises InvalidName naming the first bad row: over-long (numpy would silently truncate),
    non-ASCII, or outside the allowed character set. The array may be read-only (a str
    broadcast is cached and shared).
    """
    allow_empty = what == "venue"
    if type(values) is str:
        arr = _CONST_NAMES.get((values, n, allow_empty))
        if arr is not None:  # checked the same way when it was cached
            return arr
        if allow_empty:
            check_venue(values)
        else:
            check_symbol(values, what)
        return _const_names(values, n, allow_empty)
    if isinstance(values, str):  # a str subclass: broadcast a plain copy
        return to_name_array(str(values), what, n)
    if type(values) in (list, tuple):
        _check_name_list(values, what)
    arr = values if type(values) is np.ndarray else np.asarray(values)
    if arr.ndim != 1:
        raise InvalidName(f"{what} column must be one-dimensional, got shape {arr.shape}")
    kind = arr.dtype.kind
    if kind == "U":
        width = arr.dtype.itemsize // 4
        m = len(arr)
        out = np.empty(m, dtype=_S16)
        if m and width:
            src = arr.view(np.uint32) if arr.flags.c_contiguous else \
                np.ascontiguousarray(arr).view(np.uint32)
            bad = _encode_ucs4(src, m, width, out.view(np.uint64), allow_empty)
        else:
            out[:] = b""
            bad = 0 if m and not allow_empty else -1
    elif kind == "S" and arr.dtype.itemsize <= NAME_BYTES:
        out = np.ascontiguousarray(arr, dtype=f"S{NAME_BYTES}")
        bad = first_bad_name(out.view(np.uint8), len(out), allow_empty)
    elif kind == "S":
        arr = np.char.decode(arr, "latin-1")
        return to_name_array(arr, what, n)
    elif arr.dtype == object:
        for i, v in enumerate(arr):
            if not isinstance(v, str):
                raise InvalidName(f"{what} at row {i} is not a str but {type(v).__name__}")
        return to_name_array(arr.astype(str) if len(arr) else np.empty(0, "U1"), what, n)
    elif len(arr) == 0:  # an empty list becomes a float64 array: no names, nothing to check
        return np.empty(0, dtype=f"S{NAME_BYTES}")
    else:
        raise InvalidName(f"{what} column must hold strings, got dtype {arr.dtype}")
    if bad >= 0:
        v = arr[bad]
        v = v.decode("latin-1") if isinstance(v, bytes) else str(v)
        try:
            if allow_empty:
                check_venue(v)
            else:
                check_symbol(v, what)
        except InvalidName as exc:
            raise InvalidName(f"{what} at row {bad}: {exc}") from None
        raise InvalidName(f"{what} at row {bad} ({v!r}) is not allowed")
    return out


def name_words(name: str) -> tuple[int, int]:
    """The NUL-padded 16-byte name as two little-endian signed 64-bit words."""
    b = name.encode("ascii").ljust(NAME_BYTES, b"\0")
    w = np.frombuffer(b, dtype="<i8")
    return int(w[0]), int(w[1])
