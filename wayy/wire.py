"""Wire formats for the Redis broker: a JSON tick, and a binary columnar batch.

    encode(batch, "json")        -> [b'{"timestamp":...,"seq":42}', ...]   one message per tick
    encode(batch, "binary")      -> [b'WAYB...']                           one message per batch
    encode(batch, "binary+lz4")  -> [b'WAYB...']                           body LZ4'd if smaller
    decode(msg)                  -> WireBatch    (format told by content; JSON -> 1 row)

A batch carries rows of one table and one symbol of one shard (one Redis channel such as
``ticks:AAPL`` or ``quotes:MSFT:NASDAQ``), so the symbol and the venue names travel once per
batch. docs/wire-format.md is the language-neutral specification, with byte tables; the
vectors in tests/vectors/wire/ pin it down.

Speed: the binary columns are encoded and decoded by two numba kernels (one call per batch,
no per-row Python); plain numpy needed ~40 small-array calls per batch at ~3 us each, too slow
for 1 M ticks/s in batches of 100. Call :func:`warm_up` before going live: the first call of
a kernel in a process loads it from numba's on-disk cache (or compiles it, once).

Encoding is deterministic: a decoded message re-encodes to the same bytes.

Hostile input: :func:`decode` checks every length against the bytes it actually has before it
reads, bounds the row count by ``max_rows`` and by the body length (the encoder guarantees at
least one body byte per row, so output is linear in input), bounds the LZ4 output by what LZ4
can expand the input to, and raises :class:`WireError` with the reason for anything malformed.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import lz4.block
import numba
import numpy as np

from wayy.errors import InvalidInput, InvalidName
from wayy.names import check_symbol, check_venue

FORMATS = ("json", "binary", "binary+lz4")

MAGIC = b"WAYB"
VERSION = 1
FLAG_LZ4 = 0x01
KNOWN_FLAGS = FLAG_LZ4

# schema id -> table; each table's value columns (float64, in wire order)
SCHEMAS = {1: "trades", 2: "quotes"}
SCHEMA_IDS = {v: k for k, v in SCHEMAS.items()}
VALUE_COLUMNS = {"trades": ("price", "size"), "quotes": ("bid", "ask", "bid_size", "ask_size")}
_KEYSETS = {t: frozenset(c) for t, c in VALUE_COLUMNS.items()}

#   offset size field
#   0      4    magic "WAYB"
#   4      1    version (1)
#   5      1    flags (bit 0: body is an LZ4 block; other bits 0)
#   6      1    schema id (1 trades, 2 quotes)
#   7      1    reserved (0)
#   8      4    count: rows, >= 1                 (uint32)
#   12     4    shard                             (uint32)
#   16     8    first seq                         (int64)
#   24     8    last seq                          (int64)
#   32     8    first ts, ns since the epoch      (int64)
#   40     8    last ts                           (int64)
#   48     4    body length before compression    (uint32)
#   52     ...  body (or its LZ4 block)
HEADER = struct.Struct("<4sBBBBIIqqqqI")
HEADER_SIZE = HEADER.size  # 52

COL_FLOAT64 = 0  # n raw little-endian float64
COL_DECIMAL = 1  # x = q / 10**e, q an int64 column (first value, then deltas)
MAX_DECIMAL_EXP = 22  # 10**22 is the largest power of ten a float64 holds exactly
ENC_DECIMAL_EXP = 12  # the encoder looks for decimals with at most this many places
DEC_LIMIT = float(1 << 48)  # |x| * 10**e below this: rint(x * 10**e) is exact (err < 1/16)
Q_LIMIT = 1 << 53  # decoded decimal integers must convert to float64 exactly
MAX_VENUES = 255
MAX_NAME = 16
MAX_BODY = 1 << 30  # a body longer than 1 GiB is refused outright
LZ4_MAX_RATIO = 256  # LZ4 cannot expand a block by more than ~255x
MAX_JSON_BYTES = 4096  # a JSON tick is ~150 bytes; anything this long is not one

_U64 = (1 << 64) - 1
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1
_NAME_B = re.compile(rb"[A-Za-z0-9._-]{0,16}\Z")
_P10 = np.array([10.0 ** e for e in range(MAX_DECIMAL_EXP + 1)])  # all exact in float64


class WireError(InvalidInput):
    """A message is not a valid wayy wire message (or a batch cannot be encoded); the
    message says which field and why. A ValueError, and a wayy InvalidInput."""


@dataclass(eq=False)
class WireBatch:
    """Rows of one table, one symbol and one shard, as columns.

    ``venue`` (int32) indexes ``venues`` (the distinct venue names, "" allowed); ``ts`` is
    int64 nanoseconds since the epoch (UTC); ``seq`` (int64) strictly increases; ``values``
    holds the table's float64 columns: ``price``, ``size`` (trades) or ``bid``, ``ask``,
    ``bid_size``, ``ask_size`` (quotes).
    """

    table: str
    shard: int
    symbol: str
    venues: list[str]
    venue: np.ndarray
    ts: np.ndarray
    seq: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts)

    def rows(self) -> list[dict]:
        """One dict per tick, with the fields (and Python types) of the JSON tick."""
        names = VALUE_COLUMNS.get(self.table, tuple(self.values))
        cols = [np.asarray(self.values[c], dtype=np.float64).tolist() for c in names]
        venues = self.venues
        out = []
        for i, (t, v, q) in enumerate(zip(np.asarray(self.ts).tolist(),
                                          np.asarray(self.venue).tolist(),
                                          np.asarray(self.seq).tolist())):
            row = {"timestamp": t, "symbol": self.symbol, "venue": venues[v]}
            for c, col in zip(names, cols):
                row[c] = col[i]
            row["table"] = self.table
            row["shard"] = self.shard
            row["seq"] = q
            out.append(row)
        return out


# -- checking a batch before encoding it ----------------------------------------------------

_GOOD_NAMES: set[str] = set()  # non-empty names that passed the check (a broker has few)


def _check_name(name: object, what: str, allow_empty: bool) -> None:
    if type(name) is str and name in _GOOD_NAMES:
        return
    try:
        if allow_empty:
            check_venue(name)
        else:
            check_symbol(name, what)
    except InvalidName as exc:
        raise WireError(f"cannot encode: {exc}") from None
    if name:  # never "": it is a valid venue but not a valid symbol
        if len(_GOOD_NAMES) > 65536:
            _GOOD_NAMES.clear()
        _GOOD_NAMES.add(name)  # type: ignore[arg-type]


_NAMES_CACHE: dict[tuple, bytes] = {}  # (symbol, *venues), all checked -> the names block


def _names_block(symbol: object, venues: object) -> bytes:
    """The body's first part (symbol, venue count, venue names, each length-prefixed), after
    checking the names; cached, as a broker sends the same few combinations again and again."""
    key = None
    if type(venues) is list or type(venues) is tuple:
        key = (symbol, *venues)
        try:
            blk = _NAMES_CACHE.get(key)
        except TypeError:  # an unhashable name: the checks below say what is wrong
            blk = key = None
        if blk is not None:
            return blk
    _check_name(symbol, "symbol", False)
    if not isinstance(venues, (list, tuple)) or not venues:
        raise WireError("cannot encode: venues must be a non-empty list of venue names")
    if len(venues) > MAX_VENUES:
        raise WireError(f"cannot encode: {len(venues)} venues in one batch, at most "
                        f"{MAX_VENUES}")
    for v in venues:
        _check_name(v, "venue", True)
    if len(set(venues)) != len(venues):
        raise WireError(f"cannot encode: venues {list(venues)!r} are not distinct")
    parts = [bytes((len(symbol),)), symbol.encode("ascii"), bytes((len(venues),))]  # type: ignore
    for v in venues:
        parts.append(bytes((len(v),)))
        parts.append(v.encode("ascii"))
    blk = b"".join(parts)
    if key is not None:
        if len(_NAMES_CACHE) > 4096:
            _NAMES_CACHE.clear()
        _NAMES_CACHE[key] = blk
    return blk


def _column(arr: object, dtype: type, what: str, n: int | None = None) -> np.ndarray:
    """``arr`` as a contiguous, writeable 1-D array of ``dtype`` (one kernel signature)."""
    a = arr if type(arr) is np.ndarray else np.asarray(arr)
    flags = a.flags
    if a.dtype != dtype or a.ndim != 1 or not flags.c_contiguous or not flags.writeable:
        if a.ndim != 1:
            raise WireError(f"cannot encode: column {what!r} must be one-dimensional, "
                            f"got shape {a.shape}")
        kind = a.dtype.kind
        if dtype is not np.float64 and kind not in "iu":
            raise WireError(f"cannot encode: column {what!r} must hold integers, "
                            f"got dtype {a.dtype}")
        if dtype is np.float64 and kind not in "iuf":
            raise WireError(f"cannot encode: column {what!r} must hold numbers, "
                            f"got dtype {a.dtype}")
        if dtype is np.int32 and len(a) and (a.min() < -(1 << 31) or a.max() >= 1 << 31):
            raise WireError(f"cannot encode: column {what!r} holds values outside int32")
        a = np.array(a, dtype=dtype)  # a contiguous, writeable copy
    if n is not None and len(a) != n:
        raise WireError(f"cannot encode: column {what!r} has {len(a)} rows, ts has {n}")
    return a


class _Cols:
    """A batch's columns, checked for shape and converted for the kernels."""

    __slots__ = ("n", "table", "names", "names_block", "ts", "seq", "venue", "values")


def _checked(batch: WireBatch) -> _Cols:
    """Check a batch's names, shapes and types; return its columns. (Row-level checks --
    seq order, venue indices -- are done by the encoders as they go.)"""
    if not isinstance(batch, WireBatch):
        raise WireError(f"cannot encode a {type(batch).__name__}; expected a WireBatch")
    table = batch.table
    names = VALUE_COLUMNS.get(table)  # type: ignore[call-overload]
    if names is None:
        raise WireError(f"cannot encode: unknown table {table!r}; expected 'trades' or 'quotes'")
    shard = batch.shard
    if type(shard) is not int and (isinstance(shard, bool) or
                                   not isinstance(shard, (int, np.integer))) or \
            not 0 <= shard <= 0xFFFFFFFF:
        raise WireError(f"cannot encode: shard must be an int in [0, 2**32), got {shard!r}")
    names_block = _names_block(batch.symbol, batch.venues)
    values = batch.values
    if type(values) is not dict or values.keys() != _KEYSETS[table]:
        got = list(values) if isinstance(values, dict) else values
        raise WireError(f"cannot encode: {table} values must be exactly {list(names)}, "
                        f"got {got!r}")
    c = _Cols()
    c.table, c.names, c.names_block = table, names, names_block
    c.ts = _column(batch.ts, np.int64, "ts")
    n = c.n = len(c.ts)
    c.seq = _column(batch.seq, np.int64, "seq", n)
    c.venue = _column(batch.venue, np.int32, "venue", n)
    c.values = [_column(values[k], np.float64, k, n) for k in names]
    return c


# -- kernels: shared pieces -----------------------------------------------------------------
# Integer arithmetic is done on uint64 (wraps mod 2**64, as the spec says); int64 views are
# used only where the spec compares signed values. Mixing int64 and uint64 in numba promotes
# to float64, so every constant is cast.

_0 = np.uint64(0)
_1 = np.uint64(1)
_7F = np.uint64(0x7F)
_80 = np.uint64(0x80)
_FF = np.uint64(0xFF)


@numba.njit(cache=True, nogil=True, inline="always")
def _put_uvarint(out, pos, v):
    v = np.uint64(v)
    while v >= _80:
        out[pos] = np.uint8((v & _7F) | _80)
        v >>= np.uint64(7)
        pos += 1
    out[pos] = np.uint8(v)
    return pos + 1


@numba.njit(cache=True, nogil=True, inline="always")
def _put_zvarint(out, pos, v):
    v = np.int64(v)
    z = (np.uint64(v) << _1) ^ np.uint64(v >> np.int64(63))
    return _put_uvarint(out, pos, z)


@numba.njit(cache=True, nogil=True, inline="always")
def _gcd(a, b):
    while b != _0:
        a, b = b, a % b
    return a


@numba.njit(cache=True, nogil=True)
def _put_deltas(x, out, pos, minw):
    """IntArray(n - 1) of the deltas of ``x`` (uint64 bit patterns of int64 values):
    varint step g, zigzag varint base b, width byte w, then (d - b) / g in w bytes each."""
    n = x.shape[0]
    if n <= 1:
        out[pos] = 1
        out[pos + 1] = 0
        out[pos + 2] = 0
        return pos + 3
    base = np.int64(x[1] - x[0])
    for i in range(1, n - 1):
        d = np.int64(x[i + 1] - x[i])
        if d < base:
            base = d
    ub = np.uint64(base)
    g = _0
    for i in range(n - 1):
        g = _gcd(g, x[i + 1] - x[i] - ub)
        if g == _1:
            break
    if g == _0:
        g = _1
    mx = _0
    for i in range(n - 1):
        u = (x[i + 1] - x[i] - ub) // g
        if u > mx:
            mx = u
    if mx == _0:
        w = 0
    elif mx <= np.uint64(0xFF):
        w = 1
    elif mx <= np.uint64(0xFFFF):
        w = 2
    elif mx <= np.uint64(0xFFFFFFFF):
        w = 4
    else:
        w = 8
    if w < minw:
        w = minw
    pos = _put_uvarint(out, pos, g)
    pos = _put_zvarint(out, pos, base)
    out[pos] = w
    pos += 1
    if w == 1:
        for i in range(n - 1):
            out[pos] = np.uint8((x[i + 1] - x[i] - ub) // g)
            pos += 1
    elif w > 1:
        for i in range(n - 1):
            u = (x[i + 1] - x[i] - ub) // g
            for k in range(w):
                out[pos + k] = np.uint8(u & _FF)
                u >>= np.uint64(8)
            pos += w
    return pos


@numba.njit(cache=True, nogil=True)
def _put_values(x, q, out, pos):
    """One float64 value column: DECIMAL (e, first q, IntArray of q deltas) when every value
    is bit-exactly q / 10**e for some e <= ENC_DECIMAL_EXP, else FLOAT64 (raw LE bytes)."""
    n = x.shape[0]
    amax = 0.0
    finite = True
    for i in range(n):
        a = abs(x[i])
        if not a <= 1.7976931348623157e308:  # NaN or infinity
            finite = False
            break
        if a > amax:
            amax = a
    e = -1
    if finite:
        if amax == 0.0:
            e = 0
        else:
            e = ENC_DECIMAL_EXP
            while e >= 0 and amax * _P10[e] >= DEC_LIMIT:
                e -= 1
    ok = False
    if e >= 0:
        # one try at the largest safe exponent; lower it by the trailing decimal zeros of
        # gcd(q): a value that is k / 10**e' is also k * 10**(e - e') / 10**e
        p = _P10[e]
        g = _0
        for i in range(n):
            qi = np.int64(np.rint(x[i] * p))
            q[i] = qi
            if g != _1:
                g = _gcd(g, np.uint64(abs(qi)))
        div = np.int64(1)
        if g == _0:
            e = 0
        else:
            while e > 0 and g % np.uint64(10) == _0:
                g //= np.uint64(10)
                div *= 10
                e -= 1
        if div != 1:
            for i in range(n):
                q[i] //= div
        p = _P10[e]
        ok = True
        for i in range(n):
            back = np.float64(q[i]) / p
            # bit-identical: equal, and the same sign (only +0.0 and -0.0 differ otherwise)
            if back != x[i] or math.copysign(1.0, back) != math.copysign(1.0, x[i]):
                ok = False
                break
    if ok:
        out[pos] = 1
        out[pos + 1] = e
        pos = _put_zvarint(out, pos + 2, q[0])
        return _put_deltas(q.view(np.uint64), out, pos, np.int64(0))
    out[pos] = 0
    pos += 1
    bits = x.view(np.uint64)
    for i in range(n):
        u = bits[i]
        for k in range(8):
            out[pos + k] = np.uint8(u & _FF)
            u >>= np.uint64(8)
        pos += 8
    return pos


ENC_SEQ_ORDER = -1  # info: row, previous seq, seq
ENC_VENUE = -2  # info: row, index


@numba.njit(cache=True, nogil=True)
def _encode_columns(ts, seq, venue, nv, v0, v1, v2, v3, k, out, info):
    """Write the column part of a body (ts, seq, venue, k value columns) into ``out``;
    return its length with info = first seq, last seq, first ts, last ts; or ENC_* with
    ``info`` saying where."""
    n = ts.shape[0]
    for i in range(1, n):
        if seq[i] <= seq[i - 1]:
            info[0] = i
            info[1] = seq[i - 1]
            info[2] = seq[i]
            return ENC_SEQ_ORDER
    for i in range(n):
        if venue[i] < 0 or venue[i] >= nv:
            info[0] = i
            info[1] = venue[i]
            return ENC_VENUE
    # ts deltas take >= 1 byte each, whatever they are: the decoder's count <= body bound
    pos = _put_deltas(ts.view(np.uint64), out, np.int64(0), np.int64(1))
    pos = _put_deltas(seq.view(np.uint64), out, pos, np.int64(0))
    tmp = np.empty(n, dtype=np.int64)
    if nv > 1:
        for i in range(n):
            tmp[i] = venue[i]
        pos = _put_zvarint(out, pos, tmp[0])
        pos = _put_deltas(tmp.view(np.uint64), out, pos, np.int64(0))
    pos = _put_values(v0, tmp, out, pos)
    if k > 1:
        pos = _put_values(v1, tmp, out, pos)
    if k > 2:
        pos = _put_values(v2, tmp, out, pos)
    if k > 3:
        pos = _put_values(v3, tmp, out, pos)
    info[0] = seq[0]
    info[1] = seq[n - 1]
    info[2] = ts[0]
    info[3] = ts[n - 1]
    return pos



# -- kernels: a shard's rows as per-symbol messages (the broker's fast path) -------------------
# One call encodes every symbol group of a batch of one table and one shard: rows split by
# symbol (seq order kept), each group as one uncompressed binary message, and -- for a group
# whose rows have several venues -- one message per named venue of it. The caller LZ4s bodies
# (the header's flags byte and the body are replaced) and packs the Redis commands. The
# bytes are those encode_binary(..., compress=False) gives for the same WireBatch.

G_SYM = 0  # symbol id of the message's rows
G_VENUE = 1  # venue id when the message's rows have one venue, else -1
G_MAIN = 2  # 1: the symbol's message (channel and stream); 0: one venue's (venue channel)
G_START = 3  # offset of the message in ``out``
G_BODY = 4  # offset of its body
G_END = 5  # offset just past it
G_ROWS = 6
G_LAST_SEQ = 7
G_TS_MAX = 8
G_WORDS = 9
NAME_BYTES = 16
GROUPS_OUT_OF_ROOM = -100  # ``out`` or ``groups`` is too small: info[0] = bytes wanted


@numba.njit(cache=True, nogil=True, inline="always")
def _put_le(out, pos, v, nbytes):
    u = np.uint64(v)
    for i in range(nbytes):
        out[pos + i] = np.uint8(u & _FF)
        u >>= np.uint64(8)


@numba.njit(cache=True, nogil=True, inline="always")
def _name_len(names8, i):
    o = i * NAME_BYTES
    n = 0
    while n < NAME_BYTES and names8[o + n] != 0:
        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _group_message(ts, seq, vloc, vids, nv, v0, v1, v2, v3, k, schema, shard, sym, sym8,
                   ven8, out, pos, info):
    """One message (header, names, columns) at ``out[pos:]``; returns (end, body start) or
    (ENC code, 0); GROUPS_OUT_OF_ROOM when it may not fit."""
    n = ts.shape[0]
    sym_len = _name_len(sym8, sym)
    names = 2 + sym_len
    for j in range(nv):
        names += 1 + _name_len(ven8, vids[j])
    need = HEADER_SIZE + names + (3 + k) * (33 + 8 * n)
    if pos + need > out.shape[0]:
        info[0] = pos + need
        return GROUPS_OUT_OF_ROOM, 0
    body = pos + HEADER_SIZE
    q = body
    out[q] = sym_len
    for c in range(sym_len):
        out[q + 1 + c] = sym8[sym * NAME_BYTES + c]
    q += 1 + sym_len
    out[q] = nv
    q += 1
    for j in range(nv):
        ln = _name_len(ven8, vids[j])
        out[q] = ln
        for c in range(ln):
            out[q + 1 + c] = ven8[vids[j] * NAME_BYTES + c]
        q += 1 + ln
    cinfo = np.zeros(4, np.int64)
    length = _encode_columns(ts, seq, vloc, nv, v0, v1, v2, v3, k, out[q:], cinfo)
    if length < 0:
        info[0] = cinfo[0]
        info[1] = cinfo[1]
        info[2] = cinfo[2]
        return length, 0
    end = q + length
    out[pos] = 0x57  # W A Y B
    out[pos + 1] = 0x41
    out[pos + 2] = 0x59
    out[pos + 3] = 0x42
    out[pos + 4] = VERSION
    out[pos + 5] = 0
    out[pos + 6] = schema
    out[pos + 7] = 0
    _put_le(out, pos + 8, n, 4)
    _put_le(out, pos + 12, shard, 4)
    for f in range(4):
        _put_le(out, pos + 16 + 8 * f, cinfo[f], 8)
    _put_le(out, pos + 48, end - body, 4)
    return end, body


@numba.njit(cache=True, nogil=True)
def _stable_order(keys, n):
    """Indices 0..n-1 ordered by ``keys``, ties in index order (a bottom-up merge sort:
    numba's own argsort/unique cost many seconds of compilation on a fresh machine)."""
    a = np.arange(n)
    b = np.empty(n, np.int64)
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid = min(lo + width, n)
            hi = min(lo + 2 * width, n)
            i, j, o = lo, mid, lo
            while i < mid and j < hi:
                if keys[a[j]] < keys[a[i]]:
                    b[o] = a[j]
                    j += 1
                else:
                    b[o] = a[i]
                    i += 1
                o += 1
            while i < mid:
                b[o] = a[i]
                i += 1
                o += 1
            while j < hi:
                b[o] = a[j]
                j += 1
                o += 1
        a, b = b, a
        width *= 2
    return a


@numba.njit(cache=True, nogil=True)
def _symbol_order(sid, n):
    """Row indices grouped by symbol id, ascending, seq order kept within a symbol: a
    counting sort when the ids span a range not much larger than the batch (a shard's
    busy symbols), else the merge sort."""
    if n == 0:
        return np.arange(0)
    lo = sid[0]
    hi = sid[0]
    for i in range(1, n):
        if sid[i] < lo:
            lo = sid[i]
        elif sid[i] > hi:
            hi = sid[i]
    span = np.int64(hi) - np.int64(lo) + 1
    if span > 4 * n + 1024:
        return _stable_order(sid, n)
    start = np.zeros(span + 1, np.int64)
    for i in range(n):
        start[sid[i] - lo + 1] += 1
    for j in range(span):
        start[j + 1] += start[j]
    order = np.empty(n, np.int64)
    for i in range(n):
        j = sid[i] - lo
        order[start[j]] = i
        start[j] += 1
    return order


@numba.njit(cache=True, nogil=True, inline="always")
def _put_group(g, sym, venue, main, start, body, end, rows, last_seq, ts_max):
    g[G_SYM] = sym
    g[G_VENUE] = venue
    g[G_MAIN] = main
    g[G_START] = start
    g[G_BODY] = body
    g[G_END] = end
    g[G_ROWS] = rows
    g[G_LAST_SEQ] = last_seq
    g[G_TS_MAX] = ts_max


@numba.njit(cache=True, nogil=True)
def _encode_groups(ts, sid, vid, seq, v0, v1, v2, v3, k, schema, shard, sym8, ven8, out,
                   groups, info):
    """Every symbol group of one table's rows of one shard, encoded (see above). Returns the
    number of messages (rows of ``groups``), or an ENC_* / GROUPS_OUT_OF_ROOM code."""
    n = ts.shape[0]
    order = _symbol_order(sid, n)  # stable: seq order within a symbol
    gts = np.empty(n, np.int64)
    gseq = np.empty(n, np.int64)
    gven = np.empty(n, np.int64)
    gloc = np.empty(n, np.int32)
    gv = np.empty((4, n), np.float64)
    nmsg = 0
    pos = 0
    # a message names at most MAX_VENUES venues: a symbol with more rows than that may name
    # more, and is cut into messages of consecutive rows (mark[v] == stamp: v is in the
    # current one; allocated only when a symbol has that many rows)
    mark = np.empty(0, np.int64)
    stamp = 0
    a = 0
    while a < n:
        s = sid[order[a]]
        b = a + 1
        while b < n and sid[order[b]] == s:
            b += 1
        if b - a > MAX_VENUES:
            if mark.shape[0] == 0:
                mark = np.zeros(ven8.shape[0] // NAME_BYTES + 1, np.int64)
            stamp += 1
            nvc = 0
            for j in range(a, b):
                v = vid[order[j]]
                if mark[v] != stamp:
                    if nvc == MAX_VENUES:
                        b = j
                        break
                    mark[v] = stamp
                    nvc += 1
        m = b - a
        tsmax = ts[order[a]]
        for i in range(m):
            r = order[a + i]
            gts[i] = ts[r]
            gseq[i] = seq[r]
            gven[i] = vid[r]
            gv[0, i] = v0[r]
            gv[1, i] = v1[r]
            if k > 2:  # trades have two value columns: the other two are never read
                gv[2, i] = v2[r]
                gv[3, i] = v3[r]
            if ts[r] > tsmax:
                tsmax = ts[r]
        # the group's venues, ascending (as np.unique gives them), and each row's index
        one = True
        for i in range(1, m):
            if gven[i] != gven[0]:
                one = False
                break
        uv = np.empty(m, np.int64)
        if one:  # the common case: no sort
            uv[0] = gven[0]
            nv = 1
            gloc[:m] = 0
        else:
            vo = _stable_order(gven, m)
            nv = 0
            for i in range(m):
                v = gven[vo[i]]
                if nv == 0 or uv[nv - 1] != v:
                    uv[nv] = v
                    nv += 1
                gloc[vo[i]] = nv - 1
        if nv > MAX_VENUES:
            info[0] = nv
            return ENC_VENUE
        uv = uv[:nv]
        subs = nv if nv > 1 else 0
        if nmsg + 1 + subs > groups.shape[0]:
            info[0] = -1
            return GROUPS_OUT_OF_ROOM
        end, body = _group_message(gts[:m], gseq[:m], gloc[:m], uv, nv, gv[0, :m],
                                   gv[1, :m], gv[2, :m], gv[3, :m], k, schema, shard, s,
                                   sym8, ven8, out, pos, info)
        if body == 0:
            return end
        _put_group(groups[nmsg], s, uv[0] if nv == 1 else -1, 1, pos, body, end, m,
                   gseq[m - 1], tsmax)
        nmsg += 1
        pos = end
        for j in range(subs):
            v = uv[j]
            if _name_len(ven8, v) == 0:
                continue  # venue "": no channel of its own
            c = 0
            sts = np.empty(m, np.int64)
            sseq = np.empty(m, np.int64)
            sv = np.empty((4, m), np.float64)
            for i in range(m):
                if gven[i] == v:
                    sts[c] = gts[i]
                    sseq[c] = gseq[i]
                    for f in range(k):
                        sv[f, c] = gv[f, i]
                    c += 1
            vmax = sts[0]
            for i in range(c):
                if sts[i] > vmax:
                    vmax = sts[i]
            zeros = np.zeros(c, np.int32)
            one = uv[j:j + 1]
            end, body = _group_message(sts[:c], sseq[:c], zeros, one, 1, sv[0, :c],
                                       sv[1, :c], sv[2, :c], sv[3, :c], k, schema, shard, s,
                                       sym8, ven8, out, pos, info)
            if body == 0:
                return end
            _put_group(groups[nmsg], s, v, 0, pos, body, end, c, sseq[c - 1], vmax)
            nmsg += 1
            pos = end
        a = b
    return nmsg


def _readonly(a: np.ndarray) -> np.ndarray:
    """``a`` contiguous and read-only (a view when it is writeable): one kernel signature
    whether columns come from shared memory (read-only) or from copies, so a fresh machine
    compiles the kernel once."""
    a = np.ascontiguousarray(a)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


class GroupEncoder:
    """The broker's fast path: a batch of one table and one shard (columns as numpy arrays,
    symbol and venue ids into 16-byte NUL-padded name tables) encoded as per-symbol binary
    messages in one kernel call, with reusable buffers.

    ``encode(...)`` returns (out, groups, count): message i is ``out[groups[i, G_START]:
    groups[i, G_END]]``, uncompressed; ``message(out, g, compress)`` gives its bytes (LZ4'd
    when that is smaller, as encode_binary does). Raises WireError for rows that cannot be
    encoded (the caller can encode the batch the slow way to learn which).
    """

    def __init__(self) -> None:
        self._out = np.empty(1 << 16, np.uint8)
        self._groups = np.empty((64, G_WORDS), np.int64)
        self._info = np.zeros(4, np.int64)

    def encode(self, table: str, shard: int, ts: np.ndarray, sid: np.ndarray,
               vid: np.ndarray, seq: np.ndarray, values: list, sym8: np.ndarray,
               ven8: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        k = len(values)
        ts, sid, vid, seq, sym8, ven8 = (_readonly(a) for a in (ts, sid, vid, seq, sym8, ven8))
        vs = [_readonly(a) for a in values] + [_readonly(values[0])] * (4 - k)
        while True:
            got = _encode_groups(ts, sid, vid, seq, vs[0], vs[1], vs[2], vs[3], k,
                                 SCHEMA_IDS[table], shard, sym8, ven8, self._out,
                                 self._groups, self._info)
            if got >= 0:
                return self._out, self._groups, int(got)
            if got != GROUPS_OUT_OF_ROOM:
                raise WireError(f"cannot encode {len(ts)} rows of shard {shard} (code {got}, "
                                f"{self._info.tolist()})")
            want = int(self._info[0])
            if want < 0:
                self._groups = np.empty((2 * len(self._groups), G_WORDS), np.int64)
            else:
                self._out = np.empty(max(want, 2 * len(self._out)), np.uint8)

    @staticmethod
    def message(out: np.ndarray, g: np.ndarray, compress: bool) -> bytes:
        """Message ``g`` (a row of the groups table) as bytes, its body LZ4'd if smaller."""
        start, body, end = int(g[G_START]), int(g[G_BODY]), int(g[G_END])
        if compress:
            packed = lz4.block.compress(out[body:end], store_size=False)
            if len(packed) < end - body:
                head = out[start:body].tobytes()
                return head[:5] + b"\x01" + head[6:] + packed
        return out[start:end].tobytes()


# -- kernels: decoding ----------------------------------------------------------------------

DEC_TRUNCATED = -1  # info: column, bytes needed, bytes left
DEC_VARINT = -2  # info: column
DEC_STEP_ZERO = -3  # info: column
DEC_WIDTH = -4  # info: column, width
DEC_MODE = -5  # info: column, mode
DEC_EXP = -6  # info: column, exponent
DEC_Q_RANGE = -7  # info: column, row
DEC_TRAILING = -8  # info: bytes left over
DEC_LAST_TS = -9  # info: decoded last ts
DEC_LAST_SEQ = -10  # info: decoded last seq
DEC_SEQ_ORDER = -11  # info: row, previous seq, seq
DEC_VENUE = -12  # info: row, index
COL_TS, COL_SEQ, COL_VENUE, COL_VALUE0 = 0, 1, 2, 3  # "column" numbers in info[0]


@numba.njit(cache=True, nogil=True, inline="always")
def _get_uvarint(buf, pos, end, info, col):
    """(value, new pos), or (0, DEC_*) with info filled."""
    v = _0
    shift = 0
    while True:
        if pos >= end:
            info[0] = col
            info[1] = 1
            info[2] = 0
            return _0, DEC_TRUNCATED
        b = np.uint64(buf[pos])
        pos += 1
        if shift == 63 and b > _1:
            info[0] = col
            return _0, DEC_VARINT
        v |= (b & _7F) << np.uint64(shift)
        if b < _80:
            return v, pos
        shift += 7


@numba.njit(cache=True, nogil=True)
def _get_deltas(buf, pos, end, first, dst, info, col):
    """Read IntArray(len(dst) - 1) and rebuild dst: dst[0] = first, dst[i] = dst[i-1] + b +
    g*u[i-1] (mod 2**64). Returns the new position or DEC_*."""
    g, pos = _get_uvarint(buf, pos, end, info, col)
    if pos < 0:
        return pos
    if g == _0:
        info[0] = col
        return DEC_STEP_ZERO
    z, pos = _get_uvarint(buf, pos, end, info, col)
    if pos < 0:
        return pos
    b = (z >> _1) ^ (_0 - (z & _1))
    if pos >= end:
        info[0] = col
        info[1] = 1
        info[2] = 0
        return DEC_TRUNCATED
    w = np.int64(buf[pos])
    pos += 1
    if w != 0 and w != 1 and w != 2 and w != 4 and w != 8:
        info[0] = col
        info[1] = w
        return DEC_WIDTH
    m = dst.shape[0] - 1
    if pos + m * w > end:
        info[0] = col
        info[1] = m * w
        info[2] = end - pos
        return DEC_TRUNCATED
    acc = first
    dst[0] = acc
    if w == 0:
        for i in range(m):
            acc += b
            dst[i + 1] = acc
    elif w == 1:
        for i in range(m):
            acc += b + g * np.uint64(buf[pos + i])
            dst[i + 1] = acc
    else:
        for i in range(m):
            u = _0
            for k in range(w):
                u |= np.uint64(buf[pos + i * w + k]) << np.uint64(8 * k)
            acc += b + g * u
            dst[i + 1] = acc
    return pos + m * w


@numba.njit(cache=True, nogil=True)
def _decode_columns(buf, pos, end, nv, ts0, seq0, ts1, seq1, ints, venue, vals_u, vals_f,
                    info):
    """Decode the column part of a body into ``ints`` (rows: ts, seq; uint64), ``venue`` and
    ``vals_u``/``vals_f`` (one array as uint64 and float64). Returns 0 or DEC_*."""
    n = ints.shape[1]
    pos = _get_deltas(buf, pos, end, np.uint64(ts0), ints[0], info, np.int64(COL_TS))
    if pos < 0:
        return pos
    pos = _get_deltas(buf, pos, end, np.uint64(seq0), ints[1], info, np.int64(COL_SEQ))
    if pos < 0:
        return pos
    tmp = np.empty(n, dtype=np.uint64)
    if nv > 1:
        z, pos = _get_uvarint(buf, pos, end, info, COL_VENUE)
        if pos < 0:
            return pos
        first = (z >> _1) ^ (_0 - (z & _1))
        pos = _get_deltas(buf, pos, end, first, tmp, info, np.int64(COL_VENUE))
        if pos < 0:
            return pos
        for i in range(n):
            v = np.int64(tmp[i])
            if v < 0 or v >= nv:
                info[0] = i
                info[1] = v
                return DEC_VENUE
            venue[i] = v
    else:
        venue[:] = 0
    for j in range(vals_u.shape[0]):
        col = np.int64(COL_VALUE0 + j)
        if pos >= end:
            info[0] = col
            info[1] = 1
            info[2] = 0
            return DEC_TRUNCATED
        mode = buf[pos]
        pos += 1
        if mode == 0:
            if pos + 8 * n > end:
                info[0] = col
                info[1] = 8 * n
                info[2] = end - pos
                return DEC_TRUNCATED
            for i in range(n):
                u = _0
                for k in range(8):
                    u |= np.uint64(buf[pos + 8 * i + k]) << np.uint64(8 * k)
                vals_u[j, i] = u
            pos += 8 * n
        elif mode == 1:
            if pos >= end:
                info[0] = col
                info[1] = 1
                info[2] = 0
                return DEC_TRUNCATED
            e = np.int64(buf[pos])
            pos += 1
            if e > MAX_DECIMAL_EXP:
                info[0] = col
                info[1] = e
                return DEC_EXP
            z, pos = _get_uvarint(buf, pos, end, info, col)
            if pos < 0:
                return pos
            first = (z >> _1) ^ (_0 - (z & _1))
            pos = _get_deltas(buf, pos, end, first, tmp, info, col)
            if pos < 0:
                return pos
            p = _P10[e]
            for i in range(n):
                q = np.int64(tmp[i])
                if q > Q_LIMIT or q < -Q_LIMIT:
                    info[0] = col
                    info[1] = i
                    return DEC_Q_RANGE
                vals_f[j, i] = np.float64(q) / p
        else:
            info[0] = col
            info[1] = mode
            return DEC_MODE
    if pos != end:
        info[0] = end - pos
        return DEC_TRAILING
    ts = ints[0]
    seq = ints[1]
    if np.int64(ts[n - 1]) != ts1:
        info[0] = np.int64(ts[n - 1])
        return DEC_LAST_TS
    if np.int64(seq[n - 1]) != seq1:
        info[0] = np.int64(seq[n - 1])
        return DEC_LAST_SEQ
    for i in range(1, n):
        if np.int64(seq[i]) <= np.int64(seq[i - 1]):
            info[0] = i
            info[1] = np.int64(seq[i - 1])
            info[2] = np.int64(seq[i])
            return DEC_SEQ_ORDER
    return 0


# -- binary: Python side ------------------------------------------------------------------

def encode_binary(batch: WireBatch, compress: bool = True) -> bytes:
    """Encode a batch (>= 1 row) as one binary columnar message (docs/wire-format.md).

    With ``compress`` the body is replaced by its LZ4 block when that is strictly smaller
    (flag bit 0 says so). Deterministic: the same batch always gives the same bytes.
    """
    c = _checked(batch)
    n = c.n
    if n == 0:
        raise WireError("cannot encode an empty batch as binary (count must be >= 1)")
    if n > 0xFFFFFFFF:
        raise WireError(f"cannot encode {n} rows in one batch (at most 2**32 - 1)")
    vs = c.values
    k = len(vs)
    # the kernel does not check bounds, so this is a proven upper bound: every column (ts,
    # seq, venue, k values) takes at most a mode and an exponent byte (2), a first value
    # (zvarint <= 10), an IntArray head (g, b <= 10 each, w 1) and 8 bytes a row
    out = np.empty((3 + k) * (33 + 8 * n), dtype=np.uint8)
    info = np.zeros(4, dtype=np.int64)
    nv = len(batch.venues)
    # the kernel takes four value columns; trades repeat theirs and say k=2
    length = _encode_columns(c.ts, c.seq, c.venue, nv, vs[0], vs[1], vs[2 % k], vs[3 % k],
                             k, out, info)
    if length < 0:
        if length == ENC_SEQ_ORDER:
            raise WireError(f"cannot encode: seq is not strictly increasing at row "
                            f"{info[0]} ({info[1]} then {info[2]})")
        raise WireError(f"cannot encode: venue index {info[1]} at row {info[0]} is outside "
                        f"venues (0..{nv - 1})")
    body = c.names_block + out[:length].tobytes()
    flags = 0
    if compress:
        packed = lz4.block.compress(body, store_size=False)
        if len(packed) < len(body):
            flags = FLAG_LZ4
            body_len = len(body)
            body = packed
    if not flags:
        body_len = len(body)
    seq0, seq1, ts0, ts1 = info.tolist()  # the kernel's last act: the header's first/last
    header = HEADER.pack(MAGIC, VERSION, flags, SCHEMA_IDS[c.table], 0, n, int(batch.shard),
                         seq0, seq1, ts0, ts1, body_len)
    return header + body


_NAMES_READ: dict[bytes, tuple[str, list[str]]] = {}  # names block -> (symbol, venues)


def _read_names(buf: bytes, pos: int, end: int) -> tuple[str, list[str], int]:
    """Parse the names part of a body: symbol, venue count, venues. Returns the new position."""
    start = pos
    if pos >= end:
        raise WireError("truncated batch: body ends before the symbol")
    ln = buf[pos]
    if ln == 0 or ln > MAX_NAME:
        raise WireError(f"malformed batch: symbol length {ln} (must be 1..{MAX_NAME})")
    pos += 1 + ln
    if pos >= end:
        raise WireError("truncated batch: body ends inside the symbol or before the venues")
    nv = buf[pos]
    if nv == 0:
        raise WireError("malformed batch: venue count is 0")
    pos += 1
    for i in range(nv):
        if pos >= end:
            raise WireError(f"truncated batch: body ends before venue {i}")
        vl = buf[pos]
        if vl > MAX_NAME:
            raise WireError(f"malformed batch: venue {i} length {vl} (must be "
                            f"0..{MAX_NAME})")
        pos += 1 + vl
    if pos > end:
        raise WireError("truncated batch: body ends inside the venue names")
    block = buf[start:pos]
    hit = _NAMES_READ.get(block)
    if hit is not None:
        return hit[0], list(hit[1]), pos
    p = start
    names = []
    for i in range(nv + 1):
        ln = buf[p]
        raw = buf[p + 1:p + 1 + ln]
        if not _NAME_B.match(raw):
            what = "symbol" if i == 0 else f"venue {i - 1}"
            raise WireError(f"malformed batch: {what} {raw!r} has characters outside "
                            f"[A-Za-z0-9._-]")
        names.append(raw.decode("ascii"))
        p += 1 + ln + (1 if i == 0 else 0)  # the venue count follows the symbol
    symbol, venues = names[0], names[1:]
    if len(set(venues)) != nv:
        raise WireError(f"malformed batch: venue names {venues!r} are not distinct")
    if len(_NAMES_READ) > 4096:
        _NAMES_READ.clear()
    _NAMES_READ[block] = (symbol, venues)
    return symbol, list(venues), pos


_COL_NAMES = ("ts", "seq", "venue")


def _decode_error(code: int, info: np.ndarray, names: tuple) -> WireError:
    def col(i: int) -> str:
        return _COL_NAMES[i] if i < 3 else names[i - 3]
    i0, i1, i2 = (int(x) for x in info[:3])
    if code == DEC_TRUNCATED:
        return WireError(f"truncated batch: column {col(i0)!r} needs {i1} more bytes, "
                         f"{i2} left")
    if code == DEC_VARINT:
        return WireError(f"malformed batch: a varint in column {col(i0)!r} overflows 64 bits")
    if code == DEC_STEP_ZERO:
        return WireError(f"malformed batch: column {col(i0)!r} has step 0")
    if code == DEC_WIDTH:
        return WireError(f"malformed batch: column {col(i0)!r} has width {i1} "
                         f"(must be 0, 1, 2, 4 or 8)")
    if code == DEC_MODE:
        return WireError(f"malformed batch: column {col(i0)!r} has unknown encoding {i1}")
    if code == DEC_EXP:
        return WireError(f"malformed batch: column {col(i0)!r} has decimal exponent {i1} "
                         f"(at most {MAX_DECIMAL_EXP})")
    if code == DEC_Q_RANGE:
        return WireError(f"malformed batch: column {col(i0)!r} row {i1}: decimal integer "
                         f"beyond 2**53")
    if code == DEC_TRAILING:
        return WireError(f"malformed batch: {i0} bytes left over after the last column")
    if code == DEC_LAST_TS:
        return WireError(f"malformed batch: last ts {i0} does not match the header")
    if code == DEC_LAST_SEQ:
        return WireError(f"malformed batch: last seq {i0} does not match the header")
    if code == DEC_SEQ_ORDER:
        return WireError(f"malformed batch: seq not strictly increasing at row {i0} "
                         f"({i1} then {i2})")
    if code == DEC_VENUE:
        return WireError(f"malformed batch: venue index {i1} at row {i0} is outside the "
                         f"venue names")
    return WireError(f"malformed batch (decoder code {code})")


def _decode_binary(msg: bytes, max_rows: int) -> WireBatch:
    size = len(msg)
    if size < HEADER_SIZE:
        raise WireError(f"truncated batch: {size} bytes, the header alone is {HEADER_SIZE}")
    (magic, version, flags, schema, reserved, n, shard, seq0, seq1, ts0, ts1,
     body_len) = HEADER.unpack_from(msg, 0)
    if magic != MAGIC:
        raise WireError(f"not a wayy batch: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WireError(f"unsupported wire version {version} (this decoder reads "
                        f"version {VERSION})")
    if flags & ~KNOWN_FLAGS:
        raise WireError(f"unknown flags 0x{flags:02x} (known: 0x{KNOWN_FLAGS:02x} = LZ4)")
    table = SCHEMAS.get(schema)
    if table is None:
        raise WireError(f"unknown schema id {schema} (known: 1 trades, 2 quotes)")
    if reserved:
        raise WireError(f"malformed header: reserved byte is {reserved}, must be 0")
    if n == 0:
        raise WireError("malformed header: count is 0")
    if n > max_rows:
        raise WireError(f"batch declares {n} rows, more than max_rows={max_rows}")
    if n > body_len:
        raise WireError(f"malformed header: count {n} exceeds body length {body_len} "
                        f"(every row takes at least one body byte)")
    stored = size - HEADER_SIZE
    if flags & FLAG_LZ4:
        if body_len > MAX_BODY or body_len > LZ4_MAX_RATIO * stored:
            raise WireError(f"malformed header: body length {body_len} is more than "
                            f"{stored} LZ4 bytes can expand to")
        try:
            body = lz4.block.decompress(memoryview(msg)[HEADER_SIZE:],
                                        uncompressed_size=body_len)
        except Exception as exc:  # lz4's LZ4BlockError, or ValueError on odd arguments
            raise WireError(f"bad LZ4 body: {exc}") from None
        if len(body) != body_len:
            raise WireError(f"bad LZ4 body: decompressed to {len(body)} bytes, the header "
                            f"says {body_len}")
        pos, end = 0, body_len
    else:
        if stored != body_len:
            raise WireError(f"length mismatch: the header says the body is {body_len} bytes, "
                            f"the message has {stored}" +
                            (" (truncated)" if stored < body_len else ""))
        body, pos, end = msg, HEADER_SIZE, size
    try:
        return _decode_body(body, pos, end, table, n, shard, seq0, seq1, ts0, ts1)
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001  every length is checked: a safety net only
        raise WireError(f"malformed batch (internal decoder error: "
                        f"{type(exc).__name__}: {exc})") from None


def _decode_body(body: bytes, pos: int, end: int, table: str, n: int, shard: int,
                 seq0: int, seq1: int, ts0: int, ts1: int) -> WireBatch:
    symbol, venues, pos = _read_names(body, pos, end)
    names = VALUE_COLUMNS[table]
    k = len(names)
    # every allocation below is bounded: n <= max_rows and n <= body_len (<= 256 * size)
    ints = np.empty((2, n), dtype=np.uint64)
    venue = np.empty(n, dtype=np.int32)
    vals_u = np.empty((k, n), dtype=np.uint64)
    vals_f = vals_u.view(np.float64)
    info = np.zeros(4, dtype=np.int64)
    code = _decode_columns(np.frombuffer(body, dtype=np.uint8), pos, end, len(venues),
                           ts0, seq0, ts1, seq1, ints, venue, vals_u, vals_f, info)
    if code:
        raise _decode_error(code, info, names)
    i64 = ints.view(np.int64)
    return WireBatch(table=table, shard=shard, symbol=symbol, venues=venues, venue=venue,
                     ts=i64[0], seq=i64[1], values=dict(zip(names, vals_f)))


# -- JSON -----------------------------------------------------------------------------------

_JSON_TEMPLATES: dict[tuple, str] = {}


def _json_template(table: str, symbol: str, shard: int) -> str:
    key = (table, symbol, shard)
    t = _JSON_TEMPLATES.get(key)
    if t is None:
        # names are [A-Za-z0-9._-]: nothing in them needs JSON or %-escaping
        vals = ",".join(f'"{c}":%r' for c in VALUE_COLUMNS[table])
        t = (f'{{"timestamp":%d,"symbol":"{symbol}","venue":"%s",{vals},'
             f'"table":"{table}","shard":{shard},"seq":%d}}')
        if len(_JSON_TEMPLATES) > 4096:
            _JSON_TEMPLATES.clear()
        _JSON_TEMPLATES[key] = t
    return t


def encode_json(batch: WireBatch) -> list[bytes]:
    """One JSON message per tick: the original design's tick fields plus table, shard, seq.

    ``{"timestamp":1674100800123456789,"symbol":"AAPL","venue":"NYSE","price":150.25,
    "size":100.0,"table":"trades","shard":3,"seq":42}`` -- timestamp is int64 nanoseconds,
    floats are written in their shortest round-trip form (lossless).
    """
    c = _checked(batch)
    n = c.n
    if n == 0:
        return []
    for name, col in zip(c.names, c.values):
        if not bool(np.isfinite(col).all()):
            raise WireError(f"cannot encode as JSON: column {name!r} holds NaN or infinity")
    seq = c.seq.tolist()
    for i in range(1, n):
        if seq[i] <= seq[i - 1]:
            raise WireError(f"cannot encode: seq is not strictly increasing at row {i} "
                            f"({seq[i - 1]} then {seq[i]})")
    venues = batch.venues
    vidx = c.venue.tolist()
    if min(vidx) < 0 or max(vidx) >= len(venues):
        raise WireError(f"cannot encode: venue index {min(vidx) if min(vidx) < 0 else max(vidx)}"
                        f" is outside venues (0..{len(venues) - 1})")
    vnames = [venues[0]] * n if len(venues) == 1 else [venues[i] for i in vidx]
    tmpl = _json_template(c.table, batch.symbol, int(batch.shard))
    cols = [col.tolist() for col in c.values]
    return [(tmpl % row).encode("ascii") for row in zip(c.ts.tolist(), vnames, *cols, seq)]


def _reject_constant(name: str) -> None:
    raise WireError(f"malformed JSON tick: {name} is not a number JSON allows")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def _json_int(obj: dict, key: str, lo: int, hi: int) -> int:
    v = obj.get(key)
    if type(v) is not int:
        if v is None:
            raise WireError(f"JSON tick lacks {key!r}")
        raise WireError(f"JSON tick field {key!r} must be an integer, got {str(v)[:40]!r}")
    if not lo <= v <= hi:
        raise WireError(f"JSON tick field {key!r} = {v} is out of range [{lo}, {hi}]")
    return v


def _json_name(obj: dict, key: str, allow_empty: bool) -> str:
    v = obj.get(key)
    if type(v) is str and v in _GOOD_NAMES:  # never holds ""
        return v
    if v is None:
        raise WireError(f"JSON tick lacks {key!r}")
    try:
        _check_name(v, key, allow_empty)
    except WireError as exc:
        raise WireError(f"JSON tick: {str(exc).removeprefix('cannot encode: ')}") from None
    return v  # type: ignore[return-value]


def _decode_json(msg: bytes) -> WireBatch:
    if len(msg) > MAX_JSON_BYTES:
        raise WireError(f"JSON tick of {len(msg)} bytes is longer than {MAX_JSON_BYTES}")
    try:
        obj = _JSON.decode(msg.decode("utf-8"))
    except WireError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise WireError(f"malformed JSON tick: {exc}") from None
    if type(obj) is not dict:
        raise WireError(f"JSON tick must be an object, got {type(obj).__name__}")
    table = obj.get("table")
    if table is None:
        raise WireError("JSON tick lacks 'table'")
    names = VALUE_COLUMNS.get(table) if type(table) is str else None
    if names is None:
        raise WireError(f"JSON tick field 'table' must be 'trades' or 'quotes', "
                        f"got {str(table)[:40]!r}")
    ts = _json_int(obj, "timestamp", _I64_MIN, _I64_MAX)
    seq = _json_int(obj, "seq", _I64_MIN, _I64_MAX)
    shard = _json_int(obj, "shard", 0, 0xFFFFFFFF)
    symbol = _json_name(obj, "symbol", False)
    venue = _json_name(obj, "venue", True)
    vals = []
    for k in names:
        v = obj.get(k)
        t = type(v)
        if t is float:
            if not math.isfinite(v):  # e.g. 1e999 parses to inf
                raise WireError(f"JSON tick field {k!r} is not finite")
        elif t is int:
            try:
                v = float(v)
            except OverflowError:
                raise WireError(f"JSON tick field {k!r} is too large for a float64") from None
        elif v is None:
            raise WireError(f"JSON {table} tick lacks {k!r}")
        else:
            raise WireError(f"JSON tick field {k!r} must be a number, got {str(v)[:40]!r}")
        vals.append(v)
    # one array per dtype, sliced into 1-row columns: allocations cost more than views
    arr = np.array(vals, dtype=np.float64)
    ints = np.array((ts, seq), dtype=np.int64)
    return WireBatch(table, shard, symbol, [venue], _ZERO_VENUE.copy(), ints[:1], ints[1:],
                     dict(zip(names, (arr[i:i + 1] for i in range(len(names))))))


_ZERO_VENUE = np.zeros(1, dtype=np.int32)


# -- the public entry points ----------------------------------------------------------------

def decode(msg: bytes, max_rows: int = 1_000_000) -> WireBatch:
    """Decode one message of any wire format: a binary batch (told by its magic) or a JSON
    tick (text starting with ``{``, decoded to a 1-row batch).

    Raises WireError saying what is wrong with a malformed, truncated or hostile message;
    a batch declaring more than ``max_rows`` rows is refused before anything is allocated.
    """
    if type(msg) is not bytes:
        if isinstance(msg, str):
            msg = msg.encode("utf-8", "surrogatepass")
        elif isinstance(msg, (bytes, bytearray, memoryview)):
            msg = bytes(msg)
        else:
            raise WireError(f"cannot decode a {type(msg).__name__}; expected bytes")
    if msg[:4] == MAGIC:
        return _decode_binary(msg, max_rows)
    if msg[:1] == b"{" or msg.lstrip()[:1] == b"{":
        return _decode_json(msg)
    if not msg:
        raise WireError("empty message")
    raise WireError(f"not a wayy message: starts with {msg[:8]!r}, expected the binary magic "
                    f"{MAGIC!r} or a JSON object")


def _encode_lz4(batch: WireBatch) -> list[bytes]:
    return [encode_binary(batch, compress=True)]


def _encode_plain(batch: WireBatch) -> list[bytes]:
    return [encode_binary(batch, compress=False)]


_ENCODERS: dict[str, Callable[[WireBatch], list[bytes]]] = {
    "json": encode_json,
    "binary": _encode_plain,
    "binary+lz4": _encode_lz4,
}


def encoder(fmt: str) -> Callable[[WireBatch], list[bytes]]:
    """The encode function for ``fmt`` (one of FORMATS), to pick once at start-up."""
    try:
        return _ENCODERS[fmt]
    except (KeyError, TypeError):
        raise WireError(f"unknown wire format {fmt!r}; expected one of "
                        f"{', '.join(FORMATS)}") from None


def encode(batch: WireBatch, fmt: str) -> list[bytes]:
    """Encode a batch in ``fmt`` ("json", "binary" or "binary+lz4") as Redis messages: one
    per tick for JSON, one per batch for binary."""
    return encoder(fmt)(batch)


def warm_up() -> None:
    """Load (or compile, the first time on a machine) the encode and decode kernels."""
    for table, names in VALUE_COLUMNS.items():
        b = WireBatch(table=table, shard=0, symbol="WARM", venues=["A", "B"],
                      venue=np.array([0, 1], dtype=np.int32),
                      ts=np.array([1, 2], dtype=np.int64), seq=np.array([1, 2], dtype=np.int64),
                      values={k: np.array([1.5, float("nan")]) for k in names})
        decode(encode_binary(b))


def warm_up_group_encoder() -> None:
    """Load (or compile, once per machine: several seconds) GroupEncoder's kernel."""
    for table, names in VALUE_COLUMNS.items():
        b = WireBatch(table=table, shard=0, symbol="WARM", venues=["A"],
                      venue=np.zeros(2, dtype=np.int32), ts=np.array([1, 2], dtype=np.int64),
                      seq=np.array([1, 2], dtype=np.int64),
                      values={k: np.array([1.5, float("nan")]) for k in names})
        names8 = np.zeros(2 * NAME_BYTES, np.uint8)
        names8[:4] = np.frombuffer(b"WARM", np.uint8)
        names8[NAME_BYTES] = ord("A")
        GroupEncoder().encode(table, 0, b.ts, np.zeros(2, np.int32), b.venue, b.seq,
                              [b.values[k] for k in names], names8, names8)


__all__ = [
    "FORMATS",
    "WireBatch",
    "WireError",
    "decode",
    "encode",
    "encode_binary",
    "encode_json",
    "encoder",
    "warm_up",
]
