"""Shard control segment: the writer's counters, state and heartbeat, read by `wayy status`.

Written only by the shard writer (and the supervisor at creation/restart); every other process
maps it read-only. Counters are plain int64 stores by their single writer; readers may see a
value a few microseconds old, never a torn one (aligned 8-byte stores are atomic).

    header page (4096 bytes)
    0    common header (magic, version, header size, owner pid, start ns, segment size)
    64   counters: int64[N_COUNTERS] at COUNTERS_OFFSET, indices C_* below
    1024 reject counters: int64[tables.N_REJECT_REASONS] at REJECTS_OFFSET
"""

from __future__ import annotations

from shm.layout import common
from shm.layout import tables as T

MAGIC = 0x5741_5959_4354_4C31  # "WAYYCTL1"
VERSION_MAJOR = 1
VERSION_MINOR = 3  # 1.1: C_ROLL_FAILS, C_LAST_ROLL_FAIL_NS; 1.2: C_POLL_* (zero before);
# 1.3: reject counter venues_full (zero before: such rows were counted as symbols_full)

COUNTERS_OFFSET = common.CACHE_LINE
C_STATE = 0  # STATE_* below
C_WRITER_PID = 1
C_WRITER_START_NS = 2
C_HEARTBEAT_NS = 3  # wall time of the writer's last loop pass that did or found work
C_ROWS_TRADES = 4  # rows accepted into trades since the database started
C_ROWS_QUOTES = 5
C_BATCHES = 6
C_RATE = 7  # rows/s accepted, over the last second
C_RESTARTS = 8  # writer restarts by the supervisor
C_LAST_EXIT = 9  # exit status or -signal of the last writer death
C_IDLE_LOOPS = 10
C_ROLLS = 11  # rolls done (each one answers every roll request made before it)
C_LAST_ROLL_NS = 12  # wall time of the last roll
C_ROLL_REQUESTS_SEEN = 13  # the inbound ring's roll_requests value last acted on
# rolls attempted and not done (history or WAL not writable): `wayy roll` reports one at
# once instead of waiting out its timeout
C_ROLL_FAILS = 14
C_LAST_ROLL_FAIL_NS = 15  # wall time of the last failed roll
# the writer's idle polling (workers/writer.py): times it stopped polling because it had to
# wait for a CPU, and whether it polls now (1) or sleeps at once until a retry (0)
C_POLL_BACKOFFS = 16
C_POLLING = 17
N_COUNTERS = 18
COUNTERS_I64 = COUNTERS_OFFSET // 8

REJECTS_OFFSET = 1024
REJECTS_I64 = REJECTS_OFFSET // 8
HEADER_BYTES = common.PAGE
SEGMENT_BYTES = common.PAGE

assert C_POLLING < N_COUNTERS
assert COUNTERS_OFFSET + 8 * N_COUNTERS <= REJECTS_OFFSET
assert REJECTS_OFFSET + 8 * T.N_REJECT_REASONS <= SEGMENT_BYTES

STATE_CREATED = 0
STATE_RUNNING = 1
STATE_STOPPING = 2
STATE_STOPPED = 3
STATE_DEAD = 4  # the supervisor saw the writer die and is restarting it
STATE_DEGRADED = 5  # running, but refusing ticks: the WAL cannot be written (disk full, I/O)
STATE_NAMES = ("created", "running", "stopping", "stopped", "restarting", "wal-blocked")
