"""Time for `wayy start --shards 8` to have every writer accepting, warm and cold numba cache.

    python benchmarks/bench_start.py [--shards 8] [--runs 5]

Measured from launching the command until it returns (`--detach` returns once every writer
accepts ticks), so Python start-up and imports are included. Cold: NUMBA_CACHE_DIR points at
an empty directory, so every kernel compiles. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._db import REPO, load_average  # noqa: E402


def start_once(shards: int, env: dict) -> float:
    path = tempfile.mkdtemp(prefix="wayy-bench-start-")
    db = os.path.join(path, "db")
    try:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "wayy.cli", "start", "--db", db, "--detach",
                            "--shards", str(shards), "--feed", "none"],
                           capture_output=True, text=True, cwd=REPO, env=env)
        dt = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        return dt
    finally:
        subprocess.run([sys.executable, "-m", "wayy.cli", "stop", "--db", db],
                       capture_output=True, cwd=REPO, env=env)
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    env = dict(os.environ)
    start_once(args.shards, env)  # fill the on-disk cache
    warm = [start_once(args.shards, env) for _ in range(args.runs)]
    cold = []
    for _ in range(2):
        cache = tempfile.mkdtemp(prefix="wayy-numba-cold-")
        try:
            cold.append(start_once(args.shards, {**env, "NUMBA_CACHE_DIR": cache}))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import numpy, numba"], check=True)
    import_s = time.perf_counter() - t
    print(json.dumps({
        "bench": "start", "shards": args.shards, "load_1min": load_average(),
        "warm_ready_s_median": round(float(np.median(warm)), 3),
        "warm_ready_s_max": round(max(warm), 3),
        "cold_ready_s_median": round(float(np.median(cold)), 3),
        "peer_python_import_numpy_numba_s": round(import_s, 3),
    }))


if __name__ == "__main__":
    main()
