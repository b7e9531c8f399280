"""Shard segment: symbol and venue tables, both tables' columns, per-symbol index, commits.

One per shard, written only by that shard's writer, mapped read-only by every reader.

    header page (4096 bytes)
    0     common header (magic, version, header size, owner pid, start ns, segment size)
    40    shard        i32 | 44 nshards i32
    48    capacity     i64   rows per table
    56    max_symbols  i32 | 60 max_venues i32
    64    generation   i64   bumped when the segment is reset (history rolls)
    72    block_rows   i64   rows per ts block of the between() index
    128   commit_idx   i64   release-stored after commit slot (commit_idx & 1) is complete
    192   commit slot 0: 8 x i64 (see COMMIT_* below)                 [own cache line]
    256   commit slot 1
    320   n_symbols    i32 (release) | 324 n_venues i32 (release)
    4096  regions, each 64-byte aligned, in this order (sizes depend on the parameters):
          symbol names    S16[max_symbols]     id -> name; id 0.. in interning order
          venue names     S16[max_venues]      id 0 is the empty venue ""
          per-symbol      i64[max_symbols] x 2 last trade row, last quote row
                                               (-1 = none; may point past the commit)
          trades columns  ts i64, symbol i32, venue i32, price f64, size f64, seq i64,
                          prev i64 (previous row of the same symbol, -1 = none),
                          blk_min i64[nblocks], blk_max i64[nblocks]
          quotes columns  ts, symbol, venue, bid, ask, bid_size, ask_size, seq, prev,
                          blk_min, blk_max

A commit slot holds one consistent snapshot: row counts of both tables, the next seq and the
inbound position consumed, so a restarted writer and every reader agree on what is committed.
A reader takes commit_idx (acquire), reads slot commit_idx & 1, and retries if commit_idx moved:
the writer only reuses a slot after publishing the other one.

Kernels receive the whole segment as one uint8 array plus the int64 offsets array built by
``region_offsets`` (indices OFF_*): no byte offset is computed anywhere else.
"""

from __future__ import annotations

import numpy as np

from shm.errors import CapacityError
from shm.layout import common
from shm.layout import tables as T

MAGIC = 0x5741_5959_5348_4431  # "WAYYSHD1"
VERSION_MAJOR = 1
VERSION_MINOR = 0

SHARD_OFFSET = common.COMMON_END
NSHARDS_OFFSET = SHARD_OFFSET + 4
CAPACITY_OFFSET = NSHARDS_OFFSET + 4
MAX_SYMBOLS_OFFSET = CAPACITY_OFFSET + 8
MAX_VENUES_OFFSET = MAX_SYMBOLS_OFFSET + 4
GENERATION_OFFSET = MAX_VENUES_OFFSET + 4
BLOCK_ROWS_OFFSET = GENERATION_OFFSET + 8
COMMIT_IDX_OFFSET = 2 * common.CACHE_LINE
COMMIT_SLOT0_OFFSET = COMMIT_IDX_OFFSET + common.CACHE_LINE
COMMIT_SLOT_BYTES = common.CACHE_LINE
COMMIT_SLOT1_OFFSET = COMMIT_SLOT0_OFFSET + COMMIT_SLOT_BYTES
N_SYMBOLS_OFFSET = COMMIT_SLOT1_OFFSET + COMMIT_SLOT_BYTES
N_VENUES_OFFSET = N_SYMBOLS_OFFSET + 4
HEADER_BYTES = common.PAGE

# int64 / int32 element indices into the header page
SHARD_I32 = SHARD_OFFSET // 4
NSHARDS_I32 = NSHARDS_OFFSET // 4
CAPACITY_I64 = CAPACITY_OFFSET // 8
MAX_SYMBOLS_I32 = MAX_SYMBOLS_OFFSET // 4
MAX_VENUES_I32 = MAX_VENUES_OFFSET // 4
GENERATION_I64 = GENERATION_OFFSET // 8
BLOCK_ROWS_I64 = BLOCK_ROWS_OFFSET // 8
COMMIT_IDX_I64 = COMMIT_IDX_OFFSET // 8
COMMIT_SLOT0_I64 = COMMIT_SLOT0_OFFSET // 8
COMMIT_SLOT_WORDS = COMMIT_SLOT_BYTES // 8
N_SYMBOLS_I32 = N_SYMBOLS_OFFSET // 4
N_VENUES_I32 = N_VENUES_OFFSET // 4

# words of a commit slot
COMMIT_TRADES = 0  # committed rows of trades
COMMIT_QUOTES = 1  # committed rows of quotes
COMMIT_NEXT_SEQ = 2  # seq the next row will get
COMMIT_IN_POS = 3  # inbound ring position consumed up to
COMMIT_NS = 4  # wall time of the commit
COMMIT_BATCHES = 5  # batches committed since the segment was created

DEFAULT_CAPACITY = 2**21  # rows per table per shard
DEFAULT_MAX_SYMBOLS = 65_536
DEFAULT_MAX_VENUES = 1_024
BLOCK_ROWS = 1_024

# indices into the offsets array (see region_offsets)
OFF_SYM_NAMES = 0
OFF_VEN_NAMES = 1
OFF_LAST_TRADE = 2
OFF_LAST_QUOTE = 3
# per table t (0 trades, 1 quotes), base = OFF_TABLES + t * OFF_TABLE_STRIDE
OFF_TABLES = 8
OFF_TABLE_STRIDE = 12
COL_TS = 0
COL_SYMBOL = 1
COL_VENUE = 2
COL_VALUES = 3  # value column c at COL_VALUES + c (c < MAX_VALUE_COLUMNS)
COL_SEQ = COL_VALUES + T.MAX_VALUE_COLUMNS  # 7
COL_PREV = COL_SEQ + 1
COL_BLK_MIN = COL_PREV + 1
COL_BLK_MAX = COL_BLK_MIN + 1
OFF_END = OFF_TABLES + 2 * OFF_TABLE_STRIDE  # total bytes, the last entry
N_OFFSETS = OFF_END + 1


def check_params(capacity: int, max_symbols: int, max_venues: int) -> None:
    """Raise CapacityError for parameters the layout cannot hold."""
    if capacity < BLOCK_ROWS or capacity % BLOCK_ROWS:
        raise CapacityError(f"capacity {capacity} must be a positive multiple of {BLOCK_ROWS}")
    if capacity >= 2**31:
        raise CapacityError(f"capacity {capacity} must be below 2**31 rows per table")
    if not 1 <= max_symbols < 2**31:
        raise CapacityError(f"max_symbols {max_symbols} out of range: 1 .. 2**31 - 1")
    if not 2 <= max_venues < 2**31:
        raise CapacityError(f"max_venues {max_venues} out of range: 2 .. 2**31 - 1")


def region_offsets(capacity: int, max_symbols: int, max_venues: int) -> np.ndarray:
    """Byte offsets of every region for these parameters (int64[N_OFFSETS]); last = size."""
    check_params(capacity, max_symbols, max_venues)
    off = np.zeros(N_OFFSETS, np.int64)
    pos = HEADER_BYTES

    def take(nbytes: int) -> int:
        nonlocal pos
        at = pos
        pos = common.align(pos + nbytes)
        return at

    off[OFF_SYM_NAMES] = take(T.NAME_BYTES * max_symbols)
    off[OFF_VEN_NAMES] = take(T.NAME_BYTES * max_venues)
    off[OFF_LAST_TRADE] = take(8 * max_symbols)
    off[OFF_LAST_QUOTE] = take(8 * max_symbols)
    nblocks = capacity // BLOCK_ROWS
    for t in (T.TRADES, T.QUOTES):
        base = OFF_TABLES + t * OFF_TABLE_STRIDE
        off[base + COL_TS] = take(8 * capacity)
        off[base + COL_SYMBOL] = take(4 * capacity)
        off[base + COL_VENUE] = take(4 * capacity)
        for c in range(T.MAX_VALUE_COLUMNS):
            off[base + COL_VALUES + c] = take(8 * capacity) if c < len(T.VALUE_COLUMNS[t]) else 0
        off[base + COL_SEQ] = take(8 * capacity)
        off[base + COL_PREV] = take(8 * capacity)
        off[base + COL_BLK_MIN] = take(8 * nblocks)
        off[base + COL_BLK_MAX] = take(8 * nblocks)
    off[OFF_END] = common.align(pos, common.PAGE)
    return off


def segment_size(capacity: int, max_symbols: int, max_venues: int) -> int:
    """Total bytes of a shard segment with these parameters."""
    return int(region_offsets(capacity, max_symbols, max_venues)[OFF_END])
