"""between() over one day of history on disk, against the same rows in RAM and in a running db.

    python benchmarks/bench_history.py [--rows 10000000] [--shards 4] [--no-db]

One UTC day of trades (500 Zipf-distributed symbols, near-sorted timestamps) is written with
``wayy.history.write_partition`` as one partition per shard. Then the same queries run on:

- ``disk``: a HistoryStore memory-mapping the partitions (page cache warm);
- ``cold``: the first query after the partitions' pages were dropped from the page cache
  (``posix_fadvise(DONTNEED)``), so its data is read from the disk;
- ``ram``: the same HistoryStore code with every file read into private RAM first
  (``Partition.load``): the same algorithm without the file system;
- ``db``: a running database holding the same rows in shared memory (``--no-db`` skips it).

Prints one JSON line: milliseconds per query (median) and the ratios disk/ram, cold/ram,
disk/db. Everything it creates is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import wayy  # noqa: E402
from benchmarks._db import load_average, running_db, wait_rows  # noqa: E402
from wayy import history as H  # noqa: E402

DAY0 = 1_700_006_400_000_000_000  # 2023-11-15T00:00:00Z
DATE = "2023-11-15"
HOUR = 3_600 * 10**9


def drop_cache(root: str) -> None:
    """Evict the partitions' (clean, fsynced) pages from the page cache."""
    for dirpath, _, files in os.walk(os.path.join(root, "hist")):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def make_day(n: int, nshards: int) -> tuple[list[str], list[str], dict, np.ndarray]:
    rng = np.random.default_rng(1)
    symbols = [f"S{i:03d}" for i in range(500)]
    venues = ["", "NYSE", "NASDAQ", "ARCA", "IEX", "BATS", "EDGX", "CBOE"]
    sym = (rng.zipf(1.3, n) % len(symbols)).astype(np.int32)
    step = 86_400 * 10**9 // n
    ts = DAY0 + np.arange(n, dtype=np.int64) * step + rng.integers(-3_000, 3_000, n)
    cols = {"ts": ts, "symbol": sym, "venue": rng.integers(1, len(venues), n).astype(np.int32),
            "price": rng.uniform(10, 500, n).round(2), "size": rng.integers(1, 1000, n) * 1.0}
    shard_of_sym = np.array([wayy.shard_of(s, nshards) for s in symbols])
    return symbols, venues, cols, shard_of_sym[sym]


def start_db_peer(stack: contextlib.ExitStack, n: int, nshards: int, symbols: list[str],
                  venues: list[str], cols: dict, shard: np.ndarray):
    """A running database holding the same rows in shared memory; its between()."""
    cap = max(1 << 20, 1 << (int(np.bincount(shard).max()) - 1).bit_length())
    path = stack.enter_context(running_db(
        "--shards", str(nshards), "--feed", "none", "--capacity", str(cap),
        "--ring-bytes", str(64 * 2**20)))
    p = wayy.Producer(path, timeout=60)
    stack.callback(p.close)
    names, vens = np.array(symbols), np.array(venues)
    for lo in range(0, n, 100_000):
        sl = slice(lo, lo + 100_000)
        p.publish_batch("trades", {"ts": cols["ts"][sl], "symbol": names[cols["symbol"][sl]],
                                   "venue": vens[cols["venue"][sl]],
                                   "price": cols["price"][sl], "size": cols["size"][sl]})
    db = wayy.attach(path)
    stack.callback(db.close)
    wait_rows(db, "trades", n)
    time.sleep(2.0)  # let the writer finish its write-ahead log work before measuring
    t = db["trades"]
    return lambda a, b, s: t.between(a, b, symbol=s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--no-db", action="store_true", help="skip the running-database peer")
    args = ap.parse_args()
    n, nshards = args.rows, args.shards
    t_start = time.perf_counter()
    symbols, venues, cols, shard = make_day(n, nshards)
    root = tempfile.mkdtemp(prefix="wayy-bench-hist-")
    out: dict = {"bench": "history", "rows": n, "shards": nshards, "load_1min": load_average()}
    try:
        t = time.perf_counter()
        nbytes = 0
        for k in range(nshards):
            mine = shard == k
            part = {c: v[mine] for c, v in cols.items()}
            part["seq"] = np.arange(int(mine.sum()), dtype=np.int64)
            path = H.write_partition(root, DATE, "trades", k, part, symbols, venues)
            nbytes += sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        write_s = time.perf_counter() - t
        out.update(write_s=round(write_s, 3), bytes_on_disk=nbytes,
                   write_mb_per_s=round(nbytes / write_s / 2**20, 1))
        verify_t = time.perf_counter()
        assert all(not v for v in H.verify_history(root).values())
        out["verify_s"] = round(time.perf_counter() - verify_t, 3)

        hot, rare = "S001", "S400"
        noon = DAY0 + 12 * HOUR
        queries = {
            "hour": (noon, noon + HOUR, None),
            "hour_hot_symbol": (noon, noon + HOUR, hot),
            "hour_rare_symbol": (noon, noon + HOUR, rare),
            "day": (None, None, None),
            "day_hot_symbol": (None, None, hot),
            "day_rare_symbol": (None, None, rare),
        }
        repeat = {"hour": 7, "hour_hot_symbol": 7, "hour_rare_symbol": 9, "day": 2,
                  "day_hot_symbol": 3, "day_rare_symbol": 5}
        expect = {}
        for q, (a, b, s) in queries.items():
            sel = np.ones(n, bool) if a is None else (cols["ts"] >= a) & (cols["ts"] < b)
            if s is not None:
                sel &= cols["symbol"] == symbols.index(s)
            expect[q] = int(sel.sum())

        # cold: the first query after the pages left the page cache
        cold = {}
        for q in ("hour", "day"):
            drop_cache(root)
            store = H.HistoryStore(root)
            a, b, s = queries[q]
            t = time.perf_counter()
            got = len(store.between("trades", a, b, symbol=s))
            cold[q] = time.perf_counter() - t
            assert got == expect[q], (q, got, expect[q])
            store.close()

        disk = H.HistoryStore(root)
        ram = H.HistoryStore(root)
        for p in ram.partitions("trades"):
            p.load()
        peers = {"disk": lambda a, b, s: disk.between("trades", a, b, symbol=s),
                 "ram": lambda a, b, s: ram.between("trades", a, b, symbol=s)}
        with contextlib.ExitStack() as stack:
            if not args.no_db:
                peers["db"] = start_db_peer(stack, n, nshards, symbols, venues, cols, shard)
            res = {}
            for q, (a, b, s) in queries.items():
                times: dict[str, list[float]] = {name: [] for name in peers}
                for name, fn in peers.items():  # warm up, and check every peer's answer
                    got = len(fn(a, b, s))
                    assert got == expect[q], (name, q, got, expect[q])
                for _ in range(repeat[q]):  # round robin: noise hits every peer alike
                    for name, fn in peers.items():
                        t = time.perf_counter()
                        fn(a, b, s)
                        times[name].append(time.perf_counter() - t)
                res[q] = {f"{name}_ms": round(float(np.median(v)) * 1e3, 2)
                          for name, v in times.items()}
                res[q]["rows_returned"] = expect[q]
        for q in cold:
            res[q]["cold_ms"] = round(cold[q] * 1e3, 2)
        disk.close()
        ram.close()
        del ram, peers
        for q, r in res.items():
            r["ratio_disk_vs_ram"] = round(r["disk_ms"] / r["ram_ms"], 2)
            if "cold_ms" in r:
                r["ratio_cold_vs_ram"] = round(r["cold_ms"] / r["ram_ms"], 2)
            if "db_ms" in r:
                r["ratio_disk_vs_db"] = round(r["disk_ms"] / r["db_ms"], 2)
        out.update(res)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["total_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
