"""Subscriber registry: one writable segment per database where live subscribers show themselves.

A local subscriber maps the shard segments and change rings read-only, so it cannot leave
anything there for `wayy status` to read. Instead each one claims a slot in this segment
(``<db prefix>.subs``), mapped read-write by every subscriber and read-only by `wayy status`,
and keeps its counters and per-shard cursors there, like Aeron's counters file.

The first subscriber of a running database creates the segment (the supervisor unlinks it
with every other segment of the database on stop, and reclaims a stale one on start).

    header page (4096 bytes)
    0     common header (magic, version, header size, owner pid, start ns, segment size)
    40    max_slots    i32   slots in the segment
    44    max_shards   i32   per-shard entries in every slot
    48    slot_bytes   i64   bytes per slot
    64    claims       i64   slots claimed since the segment was created (atomic add)
    4096  slots: max_slots x slot_bytes

    slot (SLOT_BYTES = 8192; words written only by the owner, plain aligned 8-byte stores)
    0     owner         i64  pid holding the slot, 0 = free. Claimed by compare-exchange
                             0 -> pid (or dead pid -> pid); released by storing 0
    8     claimed_ns    i64  wall time of the claim
    16    heartbeat_ns  i64  wall time the owner last ran its loop
    24    nshards       i32  shards the subscriber follows entries for
    28    idle          i32  idle strategy (IDLE_* below)
    32    mode          i32  MODE_TICK or MODE_BATCH
    36    state         i32  STATE_* below
    40    delivered     i64  rows handed to the callback / poll / iteration
    48    items         i64  callbacks made (ticks, or batches in batch mode)
    56    overruns      i64  times a change ring lapped the subscriber
    64    backfilled    i64  rows read from the columns instead of the ring
    72    errors        i64  callback exceptions
    80    lost          i64  rows older than retention that could not be delivered
    88    gaps          i64  seq gaps in the ring filled from the columns
    96    channels_len  i32  bytes of channel text
    128   channels      u8[CHANNELS_BYTES]  channel names, ", "-separated, UTF-8
    1024  shards: max_shards x SHARD_WORDS i64, per shard:
            +0  next_seq   every row of the shard with a lower seq has been processed
            +8  last_ts    ts of the last row processed (ns)
            +16 followed   1 if the subscriber follows this shard
"""

from __future__ import annotations

from shm.errors import CapacityError, LayoutMismatch
from shm.layout import common

MAGIC = 0x5741_5959_5355_4231  # "WAYYSUB1"
VERSION_MAJOR = 1
VERSION_MINOR = 0
SUFFIX = ".subs"

# --- header ------------------------------------------------------------------------------
MAX_SLOTS_OFFSET = common.COMMON_END
MAX_SHARDS_OFFSET = MAX_SLOTS_OFFSET + 4
SLOT_BYTES_OFFSET = MAX_SHARDS_OFFSET + 4
CLAIMS_OFFSET = common.align(SLOT_BYTES_OFFSET + 8, common.CACHE_LINE)
HEADER_BYTES = common.PAGE
SLOTS_OFFSET = HEADER_BYTES

# --- slot ----------------------------------------------------------------------------------
OWNER_OFFSET = 0
CLAIMED_NS_OFFSET = OWNER_OFFSET + 8
HEARTBEAT_NS_OFFSET = CLAIMED_NS_OFFSET + 8
NSHARDS_OFFSET = HEARTBEAT_NS_OFFSET + 8
IDLE_OFFSET = NSHARDS_OFFSET + 4
MODE_OFFSET = IDLE_OFFSET + 4
STATE_OFFSET = MODE_OFFSET + 4
DELIVERED_OFFSET = STATE_OFFSET + 4
ITEMS_OFFSET = DELIVERED_OFFSET + 8
OVERRUNS_OFFSET = ITEMS_OFFSET + 8
BACKFILLED_OFFSET = OVERRUNS_OFFSET + 8
ERRORS_OFFSET = BACKFILLED_OFFSET + 8
LOST_OFFSET = ERRORS_OFFSET + 8
GAPS_OFFSET = LOST_OFFSET + 8
CHANNELS_LEN_OFFSET = GAPS_OFFSET + 8
CHANNELS_OFFSET = common.align(CHANNELS_LEN_OFFSET + 4, 2 * common.CACHE_LINE)
SHARDS_OFFSET = 1024
CHANNELS_BYTES = SHARDS_OFFSET - CHANNELS_OFFSET
SHARD_NEXT_SEQ = 0
SHARD_LAST_TS = 1
SHARD_FOLLOWED = 2
SHARD_WORDS = 3
MAX_SHARDS = 256
SLOT_BYTES = 8192
DEFAULT_SLOTS = 128

# int64 / int32 indices inside a slot's views
OWNER_I64 = OWNER_OFFSET // 8
CLAIMED_NS_I64 = CLAIMED_NS_OFFSET // 8
HEARTBEAT_NS_I64 = HEARTBEAT_NS_OFFSET // 8
NSHARDS_I32 = NSHARDS_OFFSET // 4
IDLE_I32 = IDLE_OFFSET // 4
MODE_I32 = MODE_OFFSET // 4
STATE_I32 = STATE_OFFSET // 4
DELIVERED_I64 = DELIVERED_OFFSET // 8
ITEMS_I64 = ITEMS_OFFSET // 8
OVERRUNS_I64 = OVERRUNS_OFFSET // 8
BACKFILLED_I64 = BACKFILLED_OFFSET // 8
ERRORS_I64 = ERRORS_OFFSET // 8
LOST_I64 = LOST_OFFSET // 8
GAPS_I64 = GAPS_OFFSET // 8
CHANNELS_LEN_I32 = CHANNELS_LEN_OFFSET // 4
SHARDS_I64 = SHARDS_OFFSET // 8
MAX_SLOTS_I32 = MAX_SLOTS_OFFSET // 4
MAX_SHARDS_I32 = MAX_SHARDS_OFFSET // 4
SLOT_BYTES_I64 = SLOT_BYTES_OFFSET // 8
CLAIMS_I64 = CLAIMS_OFFSET // 8

IDLE_SPIN = 0
IDLE_YIELD = 1
IDLE_BACKOFF = 2
IDLE_BLOCK = 3
IDLE_NAMES = ("spin", "yield", "backoff", "block")

MODE_TICK = 0
MODE_BATCH = 1
MODE_NAMES = ("tick", "batch")

STATE_STARTING = 0
STATE_RUNNING = 1  # catching up or live
STATE_STOPPED = 2
STATE_NAMES = ("starting", "running", "stopped")

assert CHANNELS_OFFSET >= CHANNELS_LEN_OFFSET + 4 and CHANNELS_BYTES >= 512
assert SHARDS_OFFSET + 8 * SHARD_WORDS * MAX_SHARDS <= SLOT_BYTES
assert SLOT_BYTES % common.PAGE == 0


def segment_size(max_slots: int = DEFAULT_SLOTS) -> int:
    """Bytes of a registry with ``max_slots`` slots."""
    if not 1 <= max_slots <= 4096:
        raise CapacityError(f"subscriber registry slots {max_slots} must be in [1, 4096]")
    return SLOTS_OFFSET + max_slots * SLOT_BYTES


def check_segment(max_slots: int, slot_bytes: int, size: int) -> None:
    """Raise LayoutMismatch unless a registry of ``size`` bytes matches its header."""
    if slot_bytes != SLOT_BYTES or not 1 <= max_slots <= 4096:
        raise LayoutMismatch(f"subscriber registry header says {max_slots} slots of "
                             f"{slot_bytes} bytes; this wayy uses {SLOT_BYTES}-byte slots")
    need = SLOTS_OFFSET + max_slots * SLOT_BYTES
    if size < need:
        raise LayoutMismatch(f"subscriber registry is {size} bytes but its header needs {need}")
