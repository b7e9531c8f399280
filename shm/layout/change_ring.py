"""Outbound change ring: one shard writer -> any number of read-only readers. Descriptor.

The shard writer publishes one fixed-size change record per committed batch; readers (local
subscribers, the broker) follow it. It is a seqlock broadcast ring (Aeron's broadcast buffer):
the writer never waits for anyone, and a reader that falls a whole ring behind is told it was
lapped and backfills from the columns.

Two segments per ring, because a reader maps the ring ``PROT_READ`` and so cannot write in it:

``name`` — the ring, written only by the writer, mapped read-only by every reader::

    header page (4096 bytes)
    0     common header (magic, version, header size, owner pid, start ns, segment size)
    40    capacity       i64   records, power of two >= 2
    48    writer_closed  i64   0 while the writer publishes; 1 once it has closed the ring
                               (release-stored after the last tail store)
    64    tail           i64   next position to be written = number of records ever
                               published; the newest is tail - 1 (release) [own cache line]
    4096  slots: capacity x 64-byte records; position pos lives in slot pos & (capacity - 1)

    record (one slot, 64 bytes = 8 x i64, on its own cache line)
    0     slot_seq   seqlock word: 2*pos + 1 while pos is being written, 2*pos + 2 once it
                     is complete, 0 = never written
    8     first_seq  seq of the batch's first row
    16    count      rows in the batch
    24    table_id   tables.TRADES (0) or tables.QUOTES (1)
    32    first_row  row index of the batch's first row in that table's columns
    40    ts_first   ts of the first row (ns since the epoch)
    48    ts_last    ts of the last row
    56    sym_mask   64-bit bloom of the batch's symbol ids: bit (sym_id & 63); a reader that
                     wants symbol s skips the batch when the bit is clear, without touching
                     the columns

``name + WAIT_SUFFIX`` — the wait control, mapped read-write by the writer and every reader,
used only by readers that block instead of polling::

    header page (4096 bytes)
    0     common header
    64    waiters     i32   readers inside a blocking wait (they add 1 / subtract 1)
                            [own cache line]
    128   futex_word  i32   bumped by the writer to wake sleepers; readers futex-wait on it
                            [own cache line]

The creator initialises the wait control first and the ring last, each with its version
written last with a release store, so a ring that reads "ready" has its wait control ready too.
"""

from __future__ import annotations

from shm.errors import CapacityError, LayoutMismatch
from shm.layout import common
from shm.layout import tables as T

MAGIC = 0x5741_5959_4348_5231  # "WAYYCHR1"
WAIT_MAGIC = 0x5741_5959_4348_5731  # "WAYYCHW1"
VERSION_MAJOR = 1
VERSION_MINOR = 0

WAIT_SUFFIX = ".w"

# --- ring header (byte offsets) -------------------------------------------------------------
CAPACITY_OFFSET = common.COMMON_END
WRITER_CLOSED_OFFSET = CAPACITY_OFFSET + 8
# tail is the one header word written on every publish: keep it off the read-mostly line.
TAIL_OFFSET = common.align(WRITER_CLOSED_OFFSET + 8, common.CACHE_LINE)
HEADER_BYTES = common.align(TAIL_OFFSET + 8, common.PAGE)
SLOTS_OFFSET = HEADER_BYTES

# --- record (byte offsets inside a slot) -----------------------------------------------------
REC_SLOT_SEQ_OFFSET = 0
REC_FIRST_SEQ_OFFSET = REC_SLOT_SEQ_OFFSET + 8
REC_COUNT_OFFSET = REC_FIRST_SEQ_OFFSET + 8
REC_TABLE_ID_OFFSET = REC_COUNT_OFFSET + 8
REC_FIRST_ROW_OFFSET = REC_TABLE_ID_OFFSET + 8
REC_TS_FIRST_OFFSET = REC_FIRST_ROW_OFFSET + 8
REC_TS_LAST_OFFSET = REC_TS_FIRST_OFFSET + 8
REC_SYM_MASK_OFFSET = REC_TS_LAST_OFFSET + 8
SLOT_BYTES = REC_SYM_MASK_OFFSET + 8
RECORD_WORDS = SLOT_BYTES // 8

TABLE_TRADES = T.TRADES
TABLE_QUOTES = T.QUOTES

# --- wait control (byte offsets) -------------------------------------------------------------
# waiters is written by readers entering/leaving a wait and read by the writer on every
# publish; futex_word is written by the writer only while someone waits. Separate lines keep
# a sleeping reader's line quiet and the writer's check a plain cached read.
WAITERS_OFFSET = common.align(common.COMMON_END, common.CACHE_LINE)
FUTEX_WORD_OFFSET = common.align(WAITERS_OFFSET + 4, common.CACHE_LINE)
WAIT_SEGMENT_BYTES = common.align(FUTEX_WORD_OFFSET + 4, common.PAGE)

# --- element indices for the int64 / int32 views kernels use ---------------------------------
CAPACITY_I64 = CAPACITY_OFFSET // 8
WRITER_CLOSED_I64 = WRITER_CLOSED_OFFSET // 8
TAIL_I64 = TAIL_OFFSET // 8
HEADER_I64 = HEADER_BYTES // 8

REC_SLOT_SEQ_I64 = REC_SLOT_SEQ_OFFSET // 8
REC_FIRST_SEQ_I64 = REC_FIRST_SEQ_OFFSET // 8
REC_COUNT_I64 = REC_COUNT_OFFSET // 8
REC_TABLE_ID_I64 = REC_TABLE_ID_OFFSET // 8
REC_FIRST_ROW_I64 = REC_FIRST_ROW_OFFSET // 8
REC_TS_FIRST_I64 = REC_TS_FIRST_OFFSET // 8
REC_TS_LAST_I64 = REC_TS_LAST_OFFSET // 8
REC_SYM_MASK_I64 = REC_SYM_MASK_OFFSET // 8

WAITERS_I32 = WAITERS_OFFSET // 4
FUTEX_WORD_I32 = FUTEX_WORD_OFFSET // 4
WAIT_I32 = WAIT_SEGMENT_BYTES // 4

MIN_CAPACITY = 2
# 2**32 slots = 256 GiB of ring: far past any /dev/shm, and keeps 2*pos + 2 far from overflow.
MAX_CAPACITY = 1 << 32

assert SLOT_BYTES == common.CACHE_LINE and RECORD_WORDS == 8
assert TAIL_OFFSET % common.CACHE_LINE == 0 and TAIL_OFFSET >= common.CACHE_LINE
assert SLOTS_OFFSET % common.CACHE_LINE == 0


def check_capacity(n: int) -> None:
    """Raise CapacityError unless ``n`` records is a power of two in [MIN, MAX_CAPACITY]."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise CapacityError(f"change ring capacity must be an int, got {n!r}")
    if n < MIN_CAPACITY or n > MAX_CAPACITY or n & (n - 1):
        raise CapacityError(
            f"change ring capacity {n} records must be a power of two in "
            f"[{MIN_CAPACITY}, {MAX_CAPACITY}]"
        )


def segment_size(capacity_records: int) -> int:
    """Total bytes of a ring segment holding ``capacity_records`` records."""
    check_capacity(capacity_records)
    return SLOTS_OFFSET + capacity_records * SLOT_BYTES


def check_segment_size(capacity_records: int, size: int) -> None:
    """Raise LayoutMismatch unless an existing segment of ``size`` bytes matches the capacity
    its header claims (a bad header would otherwise send kernels outside the mapping)."""
    n = capacity_records
    if n < MIN_CAPACITY or n > MAX_CAPACITY or n & (n - 1):
        raise LayoutMismatch(
            f"change ring header claims capacity {n}, not a power of two in "
            f"[{MIN_CAPACITY}, {MAX_CAPACITY}]"
        )
    need = SLOTS_OFFSET + n * SLOT_BYTES
    if size < need:
        raise LayoutMismatch(
            f"change ring segment is {size} bytes but its capacity {n} needs {need}"
        )
