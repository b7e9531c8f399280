"""The roll: a shard writer moves its rows to history on disk and starts a fresh generation.

When (``RollConfig``): at the end of each UTC day, when a table of the shard reaches a
configured fill of its capacity, or when asked (``wayy roll`` sends SIGUSR1 to the writers).
Between two passes, with nothing in flight, the writer:

    1. writes each table's committed rows to history (``wayy.history.write_partition``:
       atomic, one partition per table, labelled with the day being closed); a partition
       already there from an interrupted earlier attempt is kept, not written twice;
    2. replaces its WAL with a new one that starts at the next seq (``REC_ROLL``) and names
       every symbol and venue it knows (``shm.wal.start_after_roll``: atomic rename);
    3. resets the segment: bumps its generation (readers that were mid-read notice and read
       again, now from history), commits zero rows, clears the per-symbol index.

``seq`` goes on across the roll; symbol and venue ids stay the same. A crash between any two
steps leaves a state recovery completes (``ShardLog.recover``): before step 2 the old WAL is
whole and is loaded again (readers skip memory rows that history already holds, and the next
roll finds its partitions written); after step 2 a segment still holding rolled rows is reset.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

import numpy as np

from shm import ingest
from shm.layout import shard as S
from shm.layout import tables as T
from shm.shard import ShardData

log = logging.getLogger("wayy.roll")


@dataclass(frozen=True)
class RollConfig:
    """When a writer rolls: `wayy start --roll-daily/--no-roll-daily --roll-fill F
    --history-days N`."""

    daily: bool = True  # at the end of each UTC day
    fill: float | None = 0.9  # when a table reaches this fraction of --capacity (None: never)
    keep_days: int | None = None  # history retention in days (None: keep everything)


def utc_date(ts_ns: int) -> str:
    """YYYY-MM-DD of a nanosecond UTC timestamp."""
    return dt.datetime.fromtimestamp(ts_ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d")


def names_of(data: ShardData, state: np.ndarray) -> tuple[list[str], list[str]]:
    """The shard's symbol names (by id) and venue names (by id, venue 0 is "")."""
    syms = [b.decode("ascii") for b in data.sym_names[: int(state[ingest.S_NSYM])].tolist()]
    vens = [b.decode("ascii") for b in data.ven_names[: int(state[ingest.S_NVEN])].tolist()]
    vens[0] = ""
    return syms, vens


def reset_segment(data: ShardData, state: np.ndarray) -> None:
    """Start a new generation: zero rows committed, seq and names kept (step 3 above)."""
    ingest.bump_generation(data.hdr64)
    state[ingest.S_TRADES] = 0
    state[ingest.S_QUOTES] = 0
    ingest.commit(data.hdr64, state, time.time_ns())
    data.last[0][:] = -1
    data.last[1][:] = -1


def write_history(db_path: str, data: ShardData, state: np.ndarray, date: str) -> dict:
    """Step 1: each table's committed rows to a history partition. Returns rows per table."""
    from wayy import history

    syms, vens = names_of(data, state)
    store = history.HistoryStore(db_path)
    done = {}
    try:
        for t in (T.TRADES, T.QUOTES):
            n = int(state[t])
            seq = data.cols[t]["seq"][:n]
            # rows an interrupted earlier roll already stored are not stored twice
            lo = int(np.searchsorted(seq, store.last_seq(T.TABLE_NAMES[t], data.shard),
                                     side="right"))
            if lo < n:
                cols = {name: arr[lo:n] for name, arr in data.cols[t].items()}
                history.write_partition(db_path, date, T.TABLE_NAMES[t], data.shard, cols,
                                        syms, vens)
            if lo:
                log.info("shard %d: %d %s rows were already in history", data.shard, lo,
                         T.TABLE_NAMES[t])
            done[T.TABLE_NAMES[t]] = n - lo
    finally:
        store.close()
    return done


def roll(db_path: str, data: ShardData, state: np.ndarray, shard_log, date: str,
         keep_days: int | None) -> dict:
    """Steps 1-3 for one shard. ``shard_log``: the writer's ShardLog, or None without a WAL."""
    t0 = time.perf_counter()
    rows = write_history(db_path, data, state, date)
    if shard_log is not None:
        shard_log.start_after_roll(data, state)
    reset_segment(data, state)
    removed = []
    if keep_days is not None:  # every writer to its own partitions
        from wayy import history

        try:
            removed = history.apply_retention(db_path, keep_days, shard=data.shard)
        except Exception as exc:  # noqa: BLE001
            # the rows are in history and the memory is reset: the roll is done, whatever
            # retention does (it is tried again at the next roll)
            log.warning("shard %d: rolled, but history retention failed (tried again at the "
                        "next roll): %s", data.shard, exc)
    stats = {"date": date, "rows": rows, "next_seq": int(state[ingest.S_NEXT_SEQ]),
             "generation": int(data.hdr64[S.GENERATION_I64]),
             "seconds": round(time.perf_counter() - t0, 3), "removed": removed}
    log.info("shard %d: rolled %s to history for %s in %.3fs (generation %d)%s", data.shard,
             ", ".join(f"{n} {t}" for t, n in rows.items()) or "no rows", date,
             stats["seconds"], stats["generation"],
             f"; retention removed {len(removed)} partitions" if removed else "")
    return stats


def due(cfg: RollConfig, data: ShardData, state: np.ndarray, day: str) -> str | None:
    """Why a roll is due now ("day" / "fill"), or None. ``day``: the UTC day the segment's
    rows belong to (the day the writer started or last rolled)."""
    if cfg.daily and utc_date(time.time_ns()) != day and (state[0] or state[1]):
        return "day"
    if cfg.fill is not None and max(state[0], state[1]) >= cfg.fill * data.capacity:
        return "fill"
    return None
