"""Fault injection: writers SIGKILLed at random moments under heavy ingest (slow suite)."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import numpy as np
import pytest

import wayy
from tests.conftest import wait_for

T0 = 1_700_000_000_000_000_000


def _ingest(path: str, seconds: float, out_q) -> None:
    p = wayy.Producer(path, timeout=60)
    rng = np.random.default_rng(os.getpid())
    sent = 0
    stop = time.monotonic() + seconds
    # paced (~0.5M rows/s) so the run stays inside the table's capacity: a full table would
    # reject rows and this test is about kills, not capacity
    while time.monotonic() < stop and sent < 6_000_000:
        time.sleep(0.002)
        n = int(rng.integers(1, 2000))
        ids = np.arange(sent, sent + n, dtype=float) + 1
        p.publish_batch("trades", {"ts": np.full(n, T0), "symbol": "FAULT", "price": ids,
                                   "size": np.full(n, float(n))})
        sent += n
        if rng.random() < 0.2:  # some single ticks too
            p.publish("trades", symbol="FAULT", price=float(sent + 1), size=1.0, ts=T0)
            sent += 1
    p.close()
    out_q.put(sent)


@pytest.mark.slow
def test_writer_sigkill_under_load_loses_and_duplicates_nothing(db_factory):
    db_run = db_factory("--shards", "1", "--feed", "none", "--capacity", str(2**23),
                        "--ring-bytes", str(2**20))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    prod = ctx.Process(target=_ingest, args=(db_run.path, 12.0, q))
    prod.start()
    kills = 0
    rnd = random.Random(5)
    try:
        deadline = time.monotonic() + 11.0
        while time.monotonic() < deadline and kills < 6:
            time.sleep(rnd.uniform(0.3, 1.2))
            s = db_run.status()["shards"][0]
            if s["state"] == "running":
                os.kill(s["writer_pid"], signal.SIGKILL)
                kills += 1
        sent = q.get(timeout=120)
        prod.join(60)
        assert prod.exitcode == 0
    finally:
        if prod.is_alive():
            prod.kill()
    assert kills >= 3
    db = wayy.attach(db_run.path)
    wait_for(lambda: len(db["trades"]) >= sent, timeout=60, what="all rows after kills")
    time.sleep(0.5)
    r = db["trades"].between()
    assert len(r) == sent  # nothing lost, nothing duplicated
    np.testing.assert_array_equal(np.sort(r["price"]), np.arange(1, sent + 1, dtype=float))
    seq = np.sort(r["seq"])
    np.testing.assert_array_equal(seq, np.arange(seq[0], seq[0] + sent))  # no gap, no reuse
    st = db_run.status()["shards"][0]
    assert st["restarts"] == kills
    assert st["rejects"]["full"] == 0
    prices = r["price"][np.argsort(r["seq"])]
    assert np.all(np.diff(prices) == 1)  # arrival order kept across restarts
    db.close()
