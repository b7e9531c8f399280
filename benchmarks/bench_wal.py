"""WAL benchmark: append throughput per fsync policy, and bulk decode against np.save/np.load.

Prints one JSON line. Files go to a temporary directory under $WAYY_BENCH_DIR (default: the
system temp dir); the line names the directory's filesystem, since fsync cost is the disk's.
Both the decode and the peer read from a warm page cache: this measures the CPU cost of
turning a log back into columns, not the disk. `decode(path)` reads, checksums and decodes;
`decode_from_scan` is the second half of recovery (scan, then decode that scan), which maps the
checked prefix instead of reading it again. The peer loads the five columns with np.load and
checks nothing; the WAL also produces the seq column.

    PYTHONPATH=. python benchmarks/bench_wal.py [--rows 5000000] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from shm.layout import wal as L
from shm.wal import WalWriter, decode, scan

BATCH = 1000


def make_batches(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Trade batches shaped like a feed: rising timestamps, 500 symbols over 8 venues,
    cent prices on a random walk, round-lot sizes."""
    rng = np.random.default_rng(seed)
    ts0 = 1_700_000_000_000_000_000
    out = []
    for i in range(count):
        ts = ts0 + i * 1_000_000 + np.cumsum(rng.integers(0, 1000, BATCH))
        out.append({
            "ts": ts.astype(np.int64),
            "symbol_id": rng.integers(0, 500, BATCH).astype(np.int32),
            "venue_id": rng.integers(0, 8, BATCH).astype(np.int32),
            "price": np.round(100 + np.cumsum(rng.normal(0, 0.02, BATCH)), 2),
            "size": (rng.integers(1, 50, BATCH) * 100).astype(np.float64),
        })
    return out


def filesystem_of(path: str) -> str:
    path = os.path.realpath(path)
    best, fstype = "", "unknown"
    with open("/proc/mounts") as f:
        for line in f:
            _dev, mnt, typ = line.split()[:3]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, fstype = mnt, typ
    return fstype


def bench_append(directory: str, policy: str, batches: list, seconds: float,
                 max_batches: int) -> dict:
    path = os.path.join(directory, f"append-{policy}.wal")
    with WalWriter(path, 0, fsync=policy, interval_ms=10) as w:
        w.append_batch(L.REC_TRADES, 0, batches[0])  # first-call costs out of the timing
        seq = BATCH
        n = 0
        lat = np.empty(max_batches)
        clock = time.perf_counter
        start = clock()
        deadline = start + seconds
        t0 = start
        while n < max_batches and t0 < deadline:
            w.append_batch(L.REC_TRADES, seq, batches[n % len(batches)])
            t1 = clock()
            lat[n] = t1 - t0
            t0 = t1
            seq += BATCH
            n += 1
        elapsed = clock() - start
        syncs = w.sync_count
    os.unlink(path)
    # Per-append latency matters as much as throughput: an inline fsync stalls the writer,
    # and with it every subscriber waiting for the batch.
    p50, p99 = np.percentile(lat[:n], [50, 99]) * 1e6
    return {"rows_per_s": round(n * BATCH / elapsed), "batches": n,
            "us_per_batch": round(elapsed / n * 1e6, 1), "fsyncs": syncs,
            "append_us_p50": round(p50, 1), "append_us_p99": round(p99, 1),
            "append_us_max": round(lat[:n].max() * 1e6, 1)}


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()

    batches = make_batches(64)
    result: dict = {"bench": "wal", "python": platform.python_version(),
                    "cpus": os.cpu_count(), "batch_rows": BATCH}
    base = os.environ.get("WAYY_BENCH_DIR") or tempfile.gettempdir()
    with tempfile.TemporaryDirectory(dir=base, prefix="wayy-bench-wal-") as d:
        result["dir"] = d
        result["filesystem"] = filesystem_of(d)
        result["append"] = {
            policy: bench_append(d, policy, batches, args.seconds, 50_000)
            for policy in ("off", "interval", "batch")
        }

        n_batches = args.rows // BATCH
        decoded = {}
        for compress in (True, False):
            path = os.path.join(d, f"decode-{compress}.wal")
            with WalWriter(path, 0, fsync="off", compress=compress) as w:
                for i in range(n_batches):
                    w.append_batch(L.REC_TRADES, i * BATCH, batches[i % len(batches)])
            rows = n_batches * BATCH
            t_decode = best_of(lambda: decode(path))
            t_scan = best_of(lambda: scan(path))
            found = scan(path)
            t_from_scan = best_of(lambda: decode(found))
            out = decode(path)
            assert out["trades"]["seq"].size == rows and out["scan"].damage is None
            decoded[compress] = out
            key = "decode_lz4" if compress else "decode_raw"
            result[key] = {
                "rows": rows, "rows_per_s": round(rows / t_decode),
                "scan_rows_per_s": round(rows / t_scan),
                "decode_from_scan_rows_per_s": round(rows / t_from_scan),
                "bytes_per_row": round(os.path.getsize(path) / rows, 2),
            }

        cols = {k: v for k, v in decoded[True]["trades"].items() if k != "seq"}
        names = list(cols)
        for name in names:
            np.save(os.path.join(d, f"{name}.npy"), cols[name])

        def load() -> dict:
            return {name: np.load(os.path.join(d, f"{name}.npy")) for name in names}

        t_load = best_of(load)
        rows = n_batches * BATCH
        result["peer_np_load"] = {"rows_per_s": round(rows / t_load), "columns": names,
                                  "bytes_per_row": 32}
        result["ratio_decode_lz4_vs_np_load"] = round(
            result["decode_lz4"]["rows_per_s"] / result["peer_np_load"]["rows_per_s"], 3)
        result["ratio_decode_raw_vs_np_load"] = round(
            result["decode_raw"]["rows_per_s"] / result["peer_np_load"]["rows_per_s"], 3)
        result["ratio_append_batch_vs_off"] = round(
            result["append"]["batch"]["rows_per_s"] / result["append"]["off"]["rows_per_s"], 4)
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)  # other work on the box skews all
    print(json.dumps(result))


if __name__ == "__main__":
    main()
