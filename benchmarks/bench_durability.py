"""Durability benchmark: ingest with and without the write-ahead log, and WAL recovery.

Prints one JSON line. In one run, on a one-shard database (segments in /dev/shm, the WAL in
a temporary directory on the same disk as the repository unless --dir says otherwise):

  ingest   ``Producer.publish_batch`` of 1,000-row trade batches and single ticks, producer
           to committed rows (benchmarks/bench_ingest.py's end-to-end phase), for: no WAL,
           then ``--fsync off``, ``interval`` (10 ms, the default), ``batch``, and
           ``interval`` with ``--wal-compress`` (LZ4). Ratios are against no WAL, measured
           in the same run.
  rounds   every policy runs --rounds times (3) in rotating order; figures are medians.
  recovery the ``interval`` run's WAL (every row of that run) loaded into a fresh segment
           by the writer's recovery path (scan, checksum, LZ4, bulk column load, index
           links), timed in this process: rows/s.

    PYTHONPATH=. python benchmarks/bench_durability.py [--batch-rows 2000000] [--single 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _db import load_average  # noqa: E402
from bench_ingest import BATCH, _cleanup, bench_end_to_end, make_batches  # noqa: E402
from shm import ingest  # noqa: E402
from shm.segment import db_prefix  # noqa: E402
from shm.shard import ShardData  # noqa: E402
from workers.shard_log import ShardLog, WalConfig, wal_path  # noqa: E402


def bench_recovery(path: str, capacity: int) -> dict:
    """Load ``path``'s shard-0 WAL into a fresh segment, as a restarted database does."""
    prefix = db_prefix(path) + "r"
    _cleanup(prefix)
    data = ShardData.create(prefix, 0, 1, capacity)
    try:
        state = np.zeros(ingest.N_STATE, np.int64)
        state[ingest.S_NVEN] = 1
        slog = ShardLog(path, 0, fsync="off")
        t0 = time.perf_counter()
        stats = slog.recover(data, state)
        dt = time.perf_counter() - t0
        slog.close()
        rows = int(stats["loaded_rows"])
        return {"recovery_rows": rows, "recovery_rows_per_s": round(rows / dt),
                "recovery_seconds": round(dt, 3),
                "wal_bytes": os.path.getsize(wal_path(path, 0)),
                "wal_bytes_per_row": round(os.path.getsize(wal_path(path, 0)) / max(rows, 1), 1)}
    finally:
        data.seg.unlink()
        data.close()
        _cleanup(prefix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-rows", type=int, default=2_000_000)
    ap.add_argument("--single", type=int, default=200_000)
    ap.add_argument("--capacity", type=int, default=2**23)
    ap.add_argument("--rounds", type=int, default=3, help="runs of every policy; medians")
    ap.add_argument("--dir", default=None, help="where the WAL goes (default: a temporary "
                    "directory beside the repository, on its disk)")
    args = ap.parse_args()
    base = args.dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    batches = make_batches(64)
    result: dict = {"bench": "durability", "python": platform.python_version(),
                    "load_before": load_average()}
    policies = [("none", None), ("off", WalConfig(fsync="off")),
                ("interval", WalConfig(fsync="interval")), ("batch", WalConfig(fsync="batch")),
                ("interval_lz4", WalConfig(fsync="interval", compress=True))]
    tmp = tempfile.mkdtemp(prefix="wayy-bench-wal-", dir=base)
    runs: dict = {}
    try:
        # rounds in rotating order, medians reported: the machine is shared and noisy
        for rnd in range(args.rounds):
            order = policies[rnd % len(policies):] + policies[:rnd % len(policies)]
            for name, cfg in order:
                path = os.path.join(tmp, f"{name}-{rnd}")
                r = bench_end_to_end(path, batches, args.batch_rows, args.single,
                                     args.capacity, 1 << 24, wal_cfg=cfg)
                for kind in ("batch_rows", "single_ticks"):
                    runs.setdefault(f"{name}_{kind}_per_s", []).append(r[f"{kind}_per_s"])
                if name == "interval":
                    for key, v in bench_recovery(path, args.capacity).items():
                        runs.setdefault(key, []).append(v)
                shutil.rmtree(path, ignore_errors=True)
        for key, vals in runs.items():
            result[key] = type(vals[0])(np.median(vals))
        result["recovery_rows_per_s_all"] = runs["recovery_rows_per_s"]
        for name, _ in policies[1:]:
            for kind in ("batch_rows", "single_ticks"):
                result[f"ratio_{name}_vs_none_{kind}"] = round(
                    result[f"{name}_{kind}_per_s"] / result[f"none_{kind}_per_s"], 3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_after"] = load_average()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
