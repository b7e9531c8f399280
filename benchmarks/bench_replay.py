"""A local subscriber replaying history from disk: rows/s, and how long run(timeout) overshoots.

    PYTHONPATH=. python benchmarks/bench_replay.py [--rows 1000000] [--rounds 3]

A database (one shard, `--no-redis`) takes ``--rows`` trades of two symbols, then `wayy roll`
moves them all to history. Then, per round, a fresh subscription from seq 0 replays them
while this process calls ``db.run(timeout=0.05)`` until every row is delivered:

- ``tick``: a per-tick callback that counts; ``batch``: a batch callback
  (``batch_size=10000, max_latency_ms=5``) that counts;
- ``worst_overshoot_ms``: how far the longest of those run() calls went past the 0.05 s
  asked, which is what a strategy replaying history while also serving a deadline sees;
- peer ``python_zip``: the floor for per-tick delivery in Python, the same columns turned
  into tuples with ``tolist`` and ``zip`` and passed to the same counting function.

Prints one JSON line with medians over the rounds and the ratio tick / python_zip.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import wayy  # noqa: E402
from benchmarks._db import REPO, load_average, running_db, wait_rows  # noqa: E402

TIMEOUT_S = 0.05


def replay(db, batch: bool) -> dict:
    """Replay every trade from seq 0 through one new subscription; time it."""
    total = len(db["trades"])
    n = [0]
    done = [0.0]  # when the last row was delivered (run() itself returns at its timeout)
    if batch:
        def cb(b) -> None:
            n[0] += len(b)
            if n[0] >= total:
                done[0] = time.perf_counter()
        sub = db.subscribe("trades", callback=cb, from_seq=0, batch_size=10_000,
                           max_latency_ms=5)
    else:
        def cb(_t) -> None:
            n[0] += 1
            if n[0] >= total:
                done[0] = time.perf_counter()
        sub = db.subscribe("trades", callback=cb, from_seq=0)
    worst = 0.0
    t0 = time.perf_counter()
    try:
        while n[0] < total:
            a = time.perf_counter()
            db.run(timeout=TIMEOUT_S)
            worst = max(worst, time.perf_counter() - a)
    finally:
        sub.stop()
    if n[0] != total:
        raise RuntimeError(f"delivered {n[0]} of {total} rows")
    return {"rows_per_s": total / (done[0] - t0),
            "worst_overshoot_ms": max(0.0, worst - TIMEOUT_S) * 1e3}


def python_zip(db) -> dict:
    """The same rows as tuples from tolist + zip, into the same kind of counting call."""
    res = db["trades"].between()
    cols = [np.asarray(res[c]) for c in ("ts", "symbol", "venue", "price", "size", "seq")]
    n = [0]

    def cb(_t) -> None:
        n[0] += 1
    t0 = time.perf_counter()
    for row in zip(*(c.tolist() for c in cols)):
        cb(row)
    return {"rows_per_s": n[0] / (time.perf_counter() - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    out = {"bench": "replay", "rows": args.rows, "load_before": load_average()}
    with running_db("--shards", "1", "--feed", "none", "--capacity",
                    str(max(1 << 20, (2 * args.rows + 1023) // 1024 * 1024))) as path:
        p = wayy.Producer(path)
        step = 50_000
        for lo in range(0, args.rows, step):
            m = min(step, args.rows - lo)
            p.publish_batch("trades", {"symbol": np.array(["AAPL", "MSFT"] * (m // 2 + 1))[:m],
                                       "price": np.ones(m), "size": np.ones(m)})
        p.close()
        db = wayy.attach(path)
        try:
            wait_rows(db, "trades", args.rows)
            r = subprocess.run([sys.executable, "-m", "wayy.cli", "roll", "--db", path],
                               capture_output=True, text=True, cwd=REPO)
            if r.returncode != 0:
                raise RuntimeError(f"wayy roll failed: {r.stderr.strip()}")
            runs: dict[str, list[dict]] = {"tick": [], "batch": [], "python_zip": []}
            for _ in range(args.rounds):
                runs["tick"].append(replay(db, batch=False))
                runs["batch"].append(replay(db, batch=True))
                runs["python_zip"].append(python_zip(db))
        finally:
            db.close()
    for name, rs in runs.items():
        out[name] = {k: round(float(np.median([r[k] for r in rs])), 3) for k in rs[0]}
    out["tick_vs_python_zip"] = round(out["tick"]["rows_per_s"]
                                      / out["python_zip"]["rows_per_s"], 3)
    out["load_after"] = load_average()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
