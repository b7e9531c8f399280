"""Inbound ring: many producers -> one shard writer. Descriptor of the segment.

    header page (4096 bytes)
    0    common header (magic, version, header size, owner pid, start ns, segment size)
    40   capacity      i64   data bytes, power of two
    48   max_record    i64   largest record a producer may claim (capacity / 4)
    128  tail          i64   next free byte position; producers CAS it  [own cache line]
    192  head          i64   first unconsumed byte; writer release-stores [own cache line]
    256  accepting     i32   1 = writer consuming; 0 = not (see refuse_reason)
    260  refuse_reason i32   why not accepting (REFUSE_*)
    264  writer_pid    i32
    320  wake_word     i32   futex word the writer sleeps on             [own cache line]
    324  writer_sleeping i32 1 while the writer is (about to be) asleep on wake_word
    384  roll_requests i64   bumped by `wayy roll`; the writer rolls when it moves
                                                                           [own cache line]
    4096 data: `capacity` bytes of records

    record (64-byte aligned, never split by the end of the ring)
    0    length   i32   total bytes incl. this header; -length while being written;
                        0 = claimed but nothing written yet. Release-stored last.
    4    type     i32   TYPE_TRADES / TYPE_QUOTES / TYPE_PADDING
    8    pid      i32   producer pid (lets the writer pad over a dead producer's claim)
    12   count    i32   rows
    16   reserved 16 bytes
    32   payload: ts i64[count], symbol S16[count], venue S16[count], then the table's
         float64 value columns (tables.VALUE_COLUMNS), each column back to back.

Positions are monotonically increasing byte counters; the index in the data area is
``pos & (capacity - 1)``. A claim that would cross the end first claims a padding record up
to the end (Aeron's scheme), so a record is always contiguous.
"""

from __future__ import annotations

from shm.errors import CapacityError
from shm.layout import common

MAGIC = 0x5741_5959_494E_4231  # "WAYYINB1"
VERSION_MAJOR = 1
VERSION_MINOR = 0

CAPACITY_OFFSET = common.COMMON_END
MAX_RECORD_OFFSET = CAPACITY_OFFSET + 8
TAIL_OFFSET = 2 * common.CACHE_LINE
HEAD_OFFSET = TAIL_OFFSET + common.CACHE_LINE
ACCEPTING_OFFSET = HEAD_OFFSET + common.CACHE_LINE
REFUSE_REASON_OFFSET = ACCEPTING_OFFSET + 4
WRITER_PID_OFFSET = REFUSE_REASON_OFFSET + 4
WAKE_WORD_OFFSET = ACCEPTING_OFFSET + common.CACHE_LINE
WRITER_SLEEPING_OFFSET = WAKE_WORD_OFFSET + 4
ROLL_REQUESTS_OFFSET = WAKE_WORD_OFFSET + common.CACHE_LINE
HEADER_BYTES = common.PAGE
DATA_OFFSET = HEADER_BYTES

# element indices for the int64 / int32 header views used by kernels
CAPACITY_I64 = CAPACITY_OFFSET // 8
MAX_RECORD_I64 = MAX_RECORD_OFFSET // 8
TAIL_I64 = TAIL_OFFSET // 8
HEAD_I64 = HEAD_OFFSET // 8
ACCEPTING_I32 = ACCEPTING_OFFSET // 4
REFUSE_REASON_I32 = REFUSE_REASON_OFFSET // 4
WRITER_PID_I32 = WRITER_PID_OFFSET // 4
WAKE_WORD_I32 = WAKE_WORD_OFFSET // 4
WRITER_SLEEPING_I32 = WRITER_SLEEPING_OFFSET // 4
ROLL_REQUESTS_I64 = ROLL_REQUESTS_OFFSET // 8

# record header
REC_LENGTH_OFFSET = 0
REC_TYPE_OFFSET = 4
REC_PID_OFFSET = 8
REC_COUNT_OFFSET = 12
REC_HEADER_BYTES = 32
REC_ALIGN = common.CACHE_LINE

TYPE_TRADES = 1
TYPE_QUOTES = 2
TYPE_PADDING = -1

REFUSE_NONE = 0
REFUSE_STARTING = 1  # writer not up yet
REFUSE_STOPPED = 2  # writer stopped (database shutting down)
REFUSE_DISK = 3  # the WAL cannot be written (disk full, I/O error)
REFUSE_NAMES = ("", "writer starting", "writer stopped", "write-ahead log cannot be written")

DEFAULT_CAPACITY = 16 * 2**20
MIN_CAPACITY = 64 * 1024


def check_capacity(capacity: int) -> None:
    """Raise CapacityError unless ``capacity`` is a power of two of at least MIN_CAPACITY."""
    if capacity < MIN_CAPACITY or capacity & (capacity - 1):
        raise CapacityError(
            f"inbound ring capacity {capacity} must be a power of two >= {MIN_CAPACITY}"
        )


def segment_size(capacity: int) -> int:
    """Total bytes of an inbound ring segment with ``capacity`` data bytes."""
    check_capacity(capacity)
    return HEADER_BYTES + capacity


def record_bytes(row_bytes: int, count: int) -> int:
    """Aligned size of a record carrying ``count`` rows of ``row_bytes`` each."""
    return common.align(REC_HEADER_BYTES + row_bytes * count, REC_ALIGN)
