"""What `wayy status` shows, read straight from shared memory (no process is asked)."""

from __future__ import annotations

import time

from shm.layout import control as C
from shm.layout import shard as S
from shm.layout import tables as T
from shm.shard import Control, ShardData
from wayy.errors import translate
from wayy.manifest import read_manifest


def read_status(path: str) -> dict:
    """Status of the database at ``path`` as a JSON-ready dict; NotRunning if it is not."""
    with translate(path):
        m = read_manifest(path)
        now = time.time_ns()
        shards = []
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
    return {
        "running": True,
        "path": m.path,
        "supervisor_pid": m.supervisor_pid,
        "uptime_s": (now - m.started_ns) / 1e9,
        "shards": shards,
        "totals": totals,
    }
