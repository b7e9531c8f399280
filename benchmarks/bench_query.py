"""tail(20, symbol) latency and between() over 10M rows, against pandas on the same data.

    python benchmarks/bench_query.py [--rows 10000000]

Prints one JSON line. pandas is measured two ways: a boolean mask over the columns (what a
time filter on an unsorted frame costs) and searchsorted on the sorted ts column (the best
case for pandas, which needs sorted data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import wayy  # noqa: E402
from benchmarks._db import load_average, running_db, wait_rows  # noqa: E402

T0 = 1_700_000_000_000_000_000


def best(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    args = ap.parse_args()
    n = args.rows
    import pandas as pd

    rng = np.random.default_rng(1)
    symbols = np.array([f"S{i:03d}" for i in range(500)])
    sym = symbols[rng.zipf(1.3, n) % len(symbols)]
    ts = T0 + np.arange(n, dtype=np.int64) * 1_000 + rng.integers(-3_000, 3_000, n)
    price = rng.uniform(10, 500, n)
    size = rng.integers(1, 1000, n).astype(float)
    cap = 1 << (n - 1).bit_length()
    cap = max(cap, 1 << 20)
    with running_db("--shards", "1", "--feed", "none", "--capacity", str(cap),
                    "--ring-bytes", str(64 * 2**20)) as path:
        p = wayy.Producer(path, timeout=60)
        step = 100_000
        for lo in range(0, n, step):
            p.publish_batch("trades", {"ts": ts[lo:lo + step], "symbol": sym[lo:lo + step],
                                       "venue": "NYSE", "price": price[lo:lo + step],
                                       "size": size[lo:lo + step]})
        db = wayy.attach(path)
        wait_rows(db, "trades", n)
        t = db["trades"]

        hot = "S001"
        tail_s = best(lambda: t.tail(20, symbol=hot), 2000)
        cold = "S400"
        tail_cold_s = best(lambda: t.tail(20, symbol=cold), 2000)

        df = pd.DataFrame({"ts": ts, "symbol": sym, "venue": "NYSE", "price": price,
                           "size": size})
        sorted_ts = np.sort(ts)
        df_sorted = df.sort_values("ts", kind="stable").reset_index(drop=True)
        out = {}
        for frac in (0.001, 0.01, 0.1):
            a = T0 + int(n * 0.4) * 1_000
            b = a + int(n * frac) * 1_000
            w = best(lambda: t.between(start_ts=a, end_ts=b), 5)
            got = len(t.between(start_ts=a, end_ts=b))
            mask = best(lambda: df[(df["ts"] >= a) & (df["ts"] < b)], 5)
            want = int(((ts >= a) & (ts < b)).sum())
            assert got == want, (got, want)

            def ss():
                i, j = np.searchsorted(df_sorted["ts"].to_numpy(), [a, b])
                return df_sorted.iloc[i:j].copy()

            srt = best(ss, 5)
            out[f"between_{frac}"] = {
                "rows_returned": got, "wayy_ms": round(w * 1e3, 3),
                "pandas_mask_ms": round(mask * 1e3, 3), "pandas_sorted_ms": round(srt * 1e3, 3),
                "ratio_vs_pandas_mask": round(mask / w, 2),
                "ratio_vs_pandas_sorted": round(srt / w, 2)}
        del sorted_ts
        p.close()
        db.close()
    print(json.dumps({
        "bench": "query", "rows": n, "load_1min": load_average(),
        "tail20_hot_symbol_us": round(tail_s * 1e6, 2),
        "tail20_rare_symbol_us": round(tail_cold_s * 1e6, 2),
        **out,
    }))


if __name__ == "__main__":
    main()
