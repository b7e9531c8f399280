"""CPU of each hop of the local path, in one process, no wake-ups. One JSON line.

One shard without the supervisor (benchmarks/bench_ingest.py's ``_single_shard_db``); this
process plays all three parts in turn, one tick at a time: ``Producer.publish`` (one trade),
the shard writer's pass (``ShardWriter.do_work``: drain, WAL append when on, commit, change
record, release), and a per-tick subscriber's pass to its callback (``Subscription._do_work``).
Each is timed with ``perf_counter_ns``; p50 / p90 in µs after the first 10%. The end-to-end
latency of bench_subscribe.py minus the sum of these is what processes waking and cache lines
moving between cores cost on the machine.

    PYTHONPATH=. python benchmarks/bench_hops.py [--ticks 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import wayy  # noqa: E402
from benchmarks._db import load_average  # noqa: E402
from benchmarks.bench_ingest import _single_shard_db  # noqa: E402
from shm import inbound  # noqa: E402
from shm.layout import inbound as L  # noqa: E402
from shm.shard import InboundRing  # noqa: E402
from workers.shard_log import WalConfig  # noqa: E402
from workers.writer import ShardWriter, warm_up  # noqa: E402


def hops(wal: bool, ticks: int) -> dict:
    """Time the three hops for ``ticks`` ticks, with or without the WAL."""
    with tempfile.TemporaryDirectory(prefix="wayy-bench-hops-") as d, \
            _single_shard_db(d, 1 << 20, writer=False) as prefix:
        ring = InboundRing.attach(prefix, 0)
        inbound.set_accepting(ring.hdr32, 1, L.REFUSE_NONE)
        p = wayy.Producer(d)
        w = ShardWriter(prefix, 0, d if wal else None, WalConfig(enabled=wal) if wal else None)
        w.on_start()
        db = wayy.attach(d)
        got = [0]

        def cb(_t) -> None:
            got[0] += 1

        sub = db.subscribe("trades", symbol="HOP", callback=cb)
        t = np.zeros((ticks, 3), np.int64)
        now = time.perf_counter_ns
        try:
            for i in range(ticks):
                t0 = now()
                p.publish("trades", symbol="HOP", venue="X", price=1.0 + (i & 1023), size=1.0)
                t1 = now()
                w.idle(w.do_work())
                t2 = now()
                sub._do_work()
                t3 = now()
                t[i] = (t1 - t0, t2 - t1, t3 - t2)
        finally:
            sub.stop()
            db.close()
            w.on_close()
            p.close()
            ring.close()
        if got[0] != ticks:
            raise RuntimeError(f"the subscriber got {got[0]} of {ticks} ticks")
        a = t[ticks // 10:] / 1e3
        out = {}
        for j, name in enumerate(("publish", "writer_pass", "subscriber_pass")):
            out[name] = {"p50_us": round(float(np.percentile(a[:, j], 50)), 2),
                         "p90_us": round(float(np.percentile(a[:, j], 90)), 2)}
        out["sum_p50_us"] = round(sum(v["p50_us"] for v in out.values()), 2)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=20_000)
    args = ap.parse_args()
    warm_up()
    out = {"bench": "hops", "python": platform.python_version(), "cpus": os.cpu_count(),
           "load_before": load_average(), "ticks": args.ticks}
    out["wal_off"] = hops(False, args.ticks)
    out["wal_on"] = hops(True, args.ticks)
    out["load_after"] = load_average()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
