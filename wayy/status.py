"""What `wayy status` shows, read straight from shared memory (no process is asked)."""

from __future__ import annotations

import time

from shm.layout import control as C
from shm.layout import shard as S
from shm.layout import subscribers as RL
from shm.layout import tables as T
from shm.shard import Control, ShardData
from shm.subscribers import Registry
from wayy.errors import translate
from wayy.manifest import read_manifest


def read_status(path: str) -> dict:
    """Status of the database at ``path`` as a JSON-ready dict; NotRunning if it is not."""
    with translate(path):
        m = read_manifest(path)
        now = time.time_ns()
        shards = []
        heads: list[tuple[int, int]] = []  # per shard: committed next seq, newest ts
        totals = {"symbols": 0, "trades": 0, "quotes": 0, "rate": 0,
                  "rejects": {name: 0 for name in T.REJECT_NAMES[1:]}}
        for k in range(m.shards):
            ctl = Control.attach(m.prefix, k)
            data = ShardData.attach(m.prefix, k)
            try:
                c = ctl.counters.copy()
                rejects = {name: int(ctl.rejects[i]) for i, name in enumerate(T.REJECT_NAMES)
                           if i > 0}
                snap = data.snapshot()
                newest = max((int(data.cols[t]["ts"][int(snap[t]) - 1])
                              for t in (T.TRADES, T.QUOTES) if snap[t] > 0), default=0)
                heads.append((int(snap[S.COMMIT_NEXT_SEQ]), newest))
                state = int(c[C.C_STATE])
                s = {
                    "shard": k,
                    "state": C.STATE_NAMES[state] if 0 <= state < len(C.STATE_NAMES) else "?",
                    "writer_pid": int(c[C.C_WRITER_PID]),
                    "writer_uptime_s": (now - int(c[C.C_WRITER_START_NS])) / 1e9
                    if c[C.C_WRITER_START_NS] else 0.0,
                    "heartbeat_age_s": (now - int(c[C.C_HEARTBEAT_NS])) / 1e9
                    if c[C.C_HEARTBEAT_NS] else None,
                    "symbols": data.n_symbols(),
                    "trades": int(snap[T.TRADES]),
                    "quotes": int(snap[T.QUOTES]),
                    "next_seq": int(snap[S.COMMIT_NEXT_SEQ]),
                    "capacity": data.capacity,
                    "rate": int(c[C.C_RATE]),
                    "restarts": int(c[C.C_RESTARTS]),
                    "last_exit": int(c[C.C_LAST_EXIT]),
                    "rejects": rejects,
                }
            finally:
                ctl.close()
                data.close()
            shards.append(s)
            for key in ("symbols", "trades", "quotes", "rate"):
                totals[key] += s[key]
            for name, v in rejects.items():
                totals["rejects"][name] += v
        subscribers = read_subscribers(m.prefix, heads, now)
    return {
        "running": True,
        "path": m.path,
        "supervisor_pid": m.supervisor_pid,
        "uptime_s": (now - m.started_ns) / 1e9,
        "shards": shards,
        "totals": totals,
        "subscribers": subscribers,
    }


def read_subscribers(prefix: str, heads: list[tuple[int, int]], now: int) -> list[dict]:
    """Every live local subscriber of the database, from the subscriber registry.

    ``heads`` gives per shard the committed next seq and the newest row's ts: a subscriber's
    lag is how many committed rows of its shards it has not processed yet, and how far (in
    the rows' own timestamps) the newest of them is ahead of the last one it processed.
    """
    reg = Registry.attach_readonly(prefix)
    if reg is None:
        return []
    out = []
    try:
        for slot in reg.live():
            i64, i32 = slot.i64, slot.i32
            lag_rows = 0
            lag_ns = 0
            nshards = min(int(i32[RL.NSHARDS_I32]), len(heads), RL.MAX_SHARDS)
            for k in range(nshards):
                row = slot.shards[k]
                if not row[RL.SHARD_FOLLOWED]:
                    continue
                behind = max(0, heads[k][0] - int(row[RL.SHARD_NEXT_SEQ]))
                lag_rows += behind
                if behind and row[RL.SHARD_LAST_TS]:
                    lag_ns = max(lag_ns, heads[k][1] - int(row[RL.SHARD_LAST_TS]))
            idle = int(i32[RL.IDLE_I32])
            mode = int(i32[RL.MODE_I32])
            state = int(i32[RL.STATE_I32])
            out.append({
                "pid": slot.owner,
                "channels": slot.channels(),
                "mode": RL.MODE_NAMES[mode] if 0 <= mode < len(RL.MODE_NAMES) else "?",
                "idle": RL.IDLE_NAMES[idle] if 0 <= idle < len(RL.IDLE_NAMES) else "?",
                "state": RL.STATE_NAMES[state] if 0 <= state < len(RL.STATE_NAMES) else "?",
                "uptime_s": (now - int(i64[RL.CLAIMED_NS_I64])) / 1e9,
                "heartbeat_age_s": (now - int(i64[RL.HEARTBEAT_NS_I64])) / 1e9,
                "delivered": int(i64[RL.DELIVERED_I64]),
                "items": int(i64[RL.ITEMS_I64]),
                "lag_rows": lag_rows,
                "lag_s": max(0, lag_ns) / 1e9,
                "overruns": int(i64[RL.OVERRUNS_I64]),
                "backfilled": int(i64[RL.BACKFILLED_I64]),
                "errors": int(i64[RL.ERRORS_I64]),
                "lost": int(i64[RL.LOST_I64]),
                "gaps": int(i64[RL.GAPS_I64]),
            })
    finally:
        reg.close()
    return out
