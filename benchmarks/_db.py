"""Shared benchmark helper: a real database started with the real CLI, always stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


@contextlib.contextmanager
def running_db(*args: str, env: dict | None = None, redis: bool | None = None):
    """Yield the path of a database started with ``wayy start --detach ARGS``; stop it after.

    Without ``redis=True`` or a Redis option in ARGS it runs with ``--no-redis``: a broker
    publishing to Redis would take a core from what the benchmark measures.
    """
    if redis is None:
        redis = any(a.split("=")[0].startswith(("--redis", "--brokers", "--wire",
                                                 "--stream-retention")) for a in args)
    if not redis:
        args = (*args, "--no-redis")
    path = tempfile.mkdtemp(prefix="wayy-bench-")
    db = os.path.join(path, "db")
    cmd = [sys.executable, "-m", "wayy.cli", "start", "--db", db, "--detach", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if r.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        raise RuntimeError(f"wayy start failed: {r.stderr.strip()}")
    try:
        yield db
    finally:
        subprocess.run([sys.executable, "-m", "wayy.cli", "stop", "--db", db],
                       capture_output=True, cwd=REPO, env=env)
        shutil.rmtree(path, ignore_errors=True)


def wait_rows(db, table: str, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(db[table]) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(db[table])} of {n} rows committed")
        time.sleep(0.01)
