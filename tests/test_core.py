"""The core path end to end: producers -> inbound rings -> writers -> columns -> queries."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

import wayy
from shm.segment import db_prefix, list_segments
from tests.conftest import wait_for

T0 = 1_700_000_000_000_000_000  # 2023-11-14, a valid timestamp


def _committed_total(db, table: str) -> int:
    return len(db[table])


def test_publish_and_query_roundtrip(shared_db):
    p = wayy.Producer(shared_db.path)
    db = wayy.attach(shared_db.path)
    base = len(db["trades"])
    for i in range(50):
        p.publish("trades", symbol="RT.A", venue="NYSE", price=100.0 + i, size=10 + i,
                  ts=T0 + i)
    wait_for(lambda: len(db["trades"]) >= base + 50, what="50 trades committed")
    r = db["trades"].tail(5, symbol="RT.A")
    assert list(r["price"]) == [145.0, 146.0, 147.0, 148.0, 149.0]
    assert list(r["symbol"]) == ["RT.A"] * 5
    assert list(r["venue"]) == ["NYSE"] * 5
    assert list(r["ts"]) == [T0 + i for i in range(45, 50)]
    assert np.all(np.diff(r["seq"]) > 0)
    assert r.row(0)["size"] == 55.0
    df = r.to_pandas()
    assert list(df.columns) == ["ts", "symbol", "venue", "price", "size", "seq"]
    p.close()
    db.close()


def test_quotes_batch_and_unknown_symbol(shared_db):
    p = wayy.Producer(shared_db.path)
    db = wayy.attach(shared_db.path)
    n = 300
    syms = np.array(["QB.A", "QB.B", "QB.C"] * 100)
    bid = np.linspace(10, 20, n)
    p.publish_batch("quotes", {"ts": T0 + np.arange(n), "symbol": syms, "venue": "ARCA",
                               "bid": bid, "ask": bid + 0.01, "bid_size": np.full(n, 100),
                               "ask_size": np.full(n, 200)})
    # a batch is atomic per shard: the three symbols' shards commit independently
    wait_for(lambda: all(len(db["quotes"].tail(1000, symbol=s)) == 100
                         for s in ("QB.A", "QB.B", "QB.C")), what="quotes")
    r = db["quotes"].tail(1000, symbol="QB.B")
    np.testing.assert_allclose(r["bid"], bid[1::3])
    assert list(r.columns) == ["ts", "symbol", "venue", "bid", "ask", "bid_size", "ask_size",
                               "seq"]
    assert len(db["quotes"].tail(5, symbol="NEVER.SEEN")) == 0
    assert len(db["quotes"].between(symbol="NEVER.SEEN")) == 0
    p.close()
    db.close()



def test_batch_of_one_shards_symbols_goes_to_that_shard(shared_db):
    """publish_batch on a multi-shard database: a batch whose symbols all belong to one
    shard (one record, the fast path), for each of the 4 shards, and one symbol repeated
    with another of the same shard, all land where per-symbol queries look for them."""
    from wayy.names import shard_of

    p = wayy.Producer(shared_db.path)
    db = wayy.attach(shared_db.path)
    by_shard: dict[int, list[str]] = {}
    i = 0
    while min((len(v) for v in by_shard.values()), default=0) < 2 or len(by_shard) < 4:
        name = f"OS.{i}"
        by_shard.setdefault(shard_of(name, 4), []).append(name)
        i += 1
    n = 40
    for k in range(4):
        a, b = by_shard[k][:2]
        syms = np.array([a] * (n // 2) + [b] * (n // 2))
        p.publish_batch("trades", {"ts": T0 + np.arange(n), "symbol": syms,
                                   "price": np.arange(n, dtype=float) + 100 * k + 1,
                                   "size": np.ones(n)})
    p.flush(10.0)
    for k in range(4):
        a, b = by_shard[k][:2]
        ra = db["trades"].tail(100, symbol=a)
        rb = db["trades"].tail(100, symbol=b)
        np.testing.assert_array_equal(ra["price"], np.arange(n // 2) + 100.0 * k + 1)
        np.testing.assert_array_equal(rb["price"], np.arange(n // 2, n) + 100.0 * k + 1)
    p.close()
    db.close()

def test_tail_and_between_match_numpy_reference(shared_db):
    """Random ticks over 4 shards; every query equals a pure-numpy computation."""
    rng = np.random.default_rng(7)
    n = 20_000
    symbols = np.array([f"REF{i:02d}" for i in range(23)])
    sym = symbols[rng.integers(0, len(symbols), n)]
    ven = np.array(["NYSE", "NASDAQ", "IEX"])[rng.integers(0, 3, n)]
    # near-sorted timestamps with local disorder, like several feeds interleaving
    ts = T0 + 10**9 + np.arange(n) * 1000 + rng.integers(-5000, 5000, n)
    price = rng.uniform(10, 500, n).round(2)
    size = rng.integers(1, 1000, n).astype(float)
    p = wayy.Producer(shared_db.path)
    db = wayy.attach(shared_db.path)
    before = len(db["trades"])
    for lo in range(0, n, 1000):
        sl = slice(lo, lo + 1000)
        p.publish_batch("trades", {"ts": ts[sl], "symbol": sym[sl], "venue": ven[sl],
                                   "price": price[sl], "size": size[sl]})
    wait_for(lambda: len(db["trades"]) == before + n, what="all rows committed")

    for s in ["REF00", "REF07", "REF22"]:
        mask = sym == s
        for k in (1, 20, 500, 10_000):
            r = db["trades"].tail(k, symbol=s)
            np.testing.assert_array_equal(r["price"], price[mask][-k:])
            np.testing.assert_array_equal(r["ts"], ts[mask][-k:])
            np.testing.assert_array_equal(r["venue"], ven[mask][-k:])
    r = db["trades"].tail(20, symbol="REF03", venue="IEX")
    assert set(r["venue"]) <= {"IEX"}

    lo_ts, hi_ts = T0 + 10**9 + 3_000_000, T0 + 10**9 + 9_000_000
    r = db["trades"].between(start_ts=lo_ts, end_ts=hi_ts)
    sel = (ts >= lo_ts) & (ts < hi_ts)
    order = np.argsort(ts[sel], kind="stable")
    np.testing.assert_array_equal(r["ts"], ts[sel][order])
    assert sorted(r["price"].tolist()) == sorted(price[sel].tolist())
    assert np.all(np.diff(r["ts"]) >= 0)

    r = db["trades"].between(start_ts=lo_ts, end_ts=hi_ts, symbol="REF05")
    sel5 = sel & (sym == "REF05")
    np.testing.assert_array_equal(np.sort(r["ts"]), np.sort(ts[sel5]))
    assert set(r["symbol"]) == {"REF05"}
    # tail across shards without a symbol: the newest rows by timestamp
    r = db["trades"].tail(7)
    assert len(r) == 7 and np.all(np.diff(r["ts"]) >= 0)
    p.close()
    db.close()


def _producer_proc(path: str, pid_idx: int, batches: int, rows: int) -> None:
    p = wayy.Producer(path, timeout=30)
    for b in range(batches):
        ids = pid_idx * 1_000_000 + b * rows + np.arange(rows) + 1
        p.publish_batch("trades", {"ts": np.full(rows, T0), "symbol": "MP.X", "price": ids,
                                   "size": np.full(rows, float(rows))})
    for i in range(200):
        p.publish("trades", symbol="MP.X", price=pid_idx * 1_000_000 + 900_000 + i + 1,
                  size=1.0, ts=T0)
    p.close()


def test_many_producers_one_shard_lose_and_duplicate_nothing(db_factory):
    db_run = db_factory("--shards", "1", "--feed", "none", "--capacity", "262144",
                        "--ring-bytes", str(256 * 1024))
    nproc, batches, rows = 4, 40, 250
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_producer_proc, args=(db_run.path, i, batches, rows))
             for i in range(nproc)]
    for pr in procs:
        pr.start()
    for pr in procs:
        pr.join(120)
        assert pr.exitcode == 0
    db = wayy.attach(db_run.path)
    expected = nproc * (batches * rows + 200)
    wait_for(lambda: len(db["trades"]) == expected, timeout=30, what="all rows")
    r = db["trades"].between()
    ids = r["price"].astype(np.int64)
    want = np.concatenate([
        np.concatenate([i * 1_000_000 + np.arange(batches * rows) + 1,
                        i * 1_000_000 + 900_000 + np.arange(200) + 1]) for i in range(nproc)])
    np.testing.assert_array_equal(np.sort(ids), np.sort(want))
    assert len(np.unique(r["seq"])) == expected
    # per-producer arrival order is preserved within the shard
    seq_order = np.argsort(r["seq"])
    for i in range(nproc):
        mine = ids[seq_order][(ids[seq_order] // 1_000_000) == i]
        assert np.all(np.diff(mine) > 0)
    assert db_run.status()["totals"]["rejects"]["malformed"] == 0
    db.close()


def _batch_writer(path: str, seed: int, seconds: float) -> None:
    p = wayy.Producer(path, timeout=30)
    rng = np.random.default_rng(seed)
    stop_at = time.monotonic() + seconds
    b = 0
    while time.monotonic() < stop_at:
        n = int(rng.integers(1, 400))
        bid = seed * 10_000_000 + b + 1  # unique batch id, carried in every row
        p.publish_batch("trades", {"ts": np.full(n, T0), "symbol": "ATOM", "price":
                                   np.full(n, float(bid)), "size": np.full(n, float(n))})
        b += 1
    p.close()


def test_reader_never_sees_half_a_batch(db_factory):
    """Every batch's rows carry its id and its length: a snapshot holds all or none of them."""
    db_run = db_factory("--shards", "1", "--feed", "none", "--capacity", "1048576",
                        "--ring-bytes", str(512 * 1024))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_batch_writer, args=(db_run.path, s, 3.0)) for s in (1, 2)]
    for pr in procs:
        pr.start()
    db = wayy.attach(db_run.path)
    checks = 0
    try:
        while any(pr.is_alive() for pr in procs) or checks < 20:
            r = db["trades"].tail(3000, symbol="ATOM")
            if len(r) == 0:
                continue
            ids, counts = np.unique(r["price"], return_counts=True)
            sizes = {float(p): float(s) for p, s in zip(r["price"], r["size"])}
            # the oldest batch may be cut by the tail window; every other must be whole
            oldest = r["price"][0]
            for bid, c in zip(ids, counts):
                if bid != oldest:
                    assert c == sizes[bid], f"batch {bid}: saw {c} of {sizes[bid]} rows"
            checks += 1
    finally:
        for pr in procs:
            pr.join(60)
    assert checks >= 20
    db.close()


def test_sigkill_writer_is_restarted_and_data_kept(db_factory):
    db_run = db_factory("--shards", "2", "--feed", "none", "--capacity", "65536")
    p = wayy.Producer(db_run.path, timeout=15)
    db = wayy.attach(db_run.path)
    sym = "KILL.ME"
    k = wayy.shard_of(sym, 2)
    for i in range(100):
        p.publish("trades", symbol=sym, price=1.0 + i, size=1.0)
    wait_for(lambda: len(db["trades"].tail(1000, symbol=sym)) == 100, what="first rows")
    old_pid = db_run.status()["shards"][k]["writer_pid"]
    os.kill(old_pid, signal.SIGKILL)

    def restarted():
        s = db_run.status()["shards"][k]
        return s["state"] == "running" and s["writer_pid"] != old_pid and s

    s = wait_for(restarted, timeout=20, what="writer restarted")
    assert s["restarts"] == 1 and s["last_exit"] == -signal.SIGKILL
    for i in range(100, 150):
        p.publish("trades", symbol=sym, price=1.0 + i, size=1.0)
    wait_for(lambda: len(db["trades"].tail(1000, symbol=sym)) == 150, what="rows after restart")
    r = db["trades"].tail(1000, symbol=sym)
    np.testing.assert_array_equal(r["price"], 1.0 + np.arange(150))
    assert np.all(np.diff(r["seq"]) == 1)  # no gap and no reuse across the restart
    assert "restarting" in db_run.log() or "exited" in db_run.log()
    p.close()
    db.close()


def test_stop_removes_every_segment(db_factory):
    db_run = db_factory("--shards", "3", "--feed", "none", "--capacity", "65536")
    prefix = db_prefix(db_run.path)
    assert len(list_segments(prefix)) == 3 * 5  # data, in, ctl, changes, changes.w
    assert db_run.stop() == 0
    assert list_segments(prefix) == []
    assert not os.path.exists(os.path.join(db_run.path, "wayy.json"))


def test_supervisor_sigkill_then_restart_reclaims_stale_segments(tmp_path):
    """A SIGKILLed supervisor takes its writers with it (parent-death signal); the segments it
    leaves are reclaimed by the next start, and `wayy stop` removes everything."""
    from tests.conftest import cleanup_db, run_cli, start_db

    path = str(tmp_path / "db")
    started = []
    try:
        first = start_db(path, "--shards", "2", "--feed", "none", "--capacity", "4096")
        started.append(first)
        writers = [s["writer_pid"] for s in first.status()["shards"]]
        os.killpg(first.proc.pid, signal.SIGKILL)  # the supervisor's own process group
        first.proc.wait(10)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(lambda: all(gone(p) for p in writers), timeout=10, what="writers to exit")
        assert len(list_segments(db_prefix(path))) == 2 * 5  # left behind by the kill
        with pytest.raises(wayy.NotRunning):
            wayy.attach(path)

        second = start_db(path, "--shards", "2", "--feed", "none", "--capacity", "4096")
        started.append(second)
        assert "reclaimed 10 stale segments" in second.log()
        p = wayy.Producer(path)
        p.publish("trades", symbol="AFTER", price=1.0, size=1.0)
        db = wayy.attach(path)
        wait_for(lambda: len(db["trades"]) == 1, what="row after restart")
        p.close()
        db.close()
        r = run_cli("stop", "--db", path)
        assert r.returncode == 0, r.stderr
        second.proc.wait(20)
        assert list_segments(db_prefix(path)) == []
    finally:
        for db_run in started:
            cleanup_db(db_run)


def test_writer_poll_kernel_sees_a_commit_and_times_out():
    """shm.inbound.writer_poll: 1 as soon as the tail passes pos (written by another thread
    while the kernel polls without the GIL), 0 once its time is up."""
    import threading

    from shm import inbound
    from shm.layout import inbound as L

    hdr = np.zeros(L.DATA_OFFSET // 8, np.int64)
    hdr[L.TAIL_I64] = 100
    assert inbound.writer_poll(hdr, 99, 0) == 1  # already there
    t0 = time.monotonic()
    assert inbound.writer_poll(hdr, 100, 20_000_000) == 0  # 20 ms, nothing comes
    assert time.monotonic() - t0 >= 0.019

    def commit_later():
        time.sleep(0.05)
        hdr[L.TAIL_I64] = 164

    t = threading.Thread(target=commit_later)
    t.start()
    t0 = time.monotonic()
    got = inbound.writer_poll(hdr, 100, 5_000_000_000)  # would poll 5 s if nothing came
    t.join()
    assert got == 1 and time.monotonic() - t0 < 4.0


@pytest.mark.parametrize("poll_us", ["0", "250"])
def test_writer_poll_window_keeps_every_tick(db_factory, poll_us):
    """Whether the writer sleeps at once (0) or polls after each batch (250, the default),
    ticks that come one at a time, at any pace, are all committed in order; the window is
    recorded in the manifest, and with 0 the writer sleeps between spaced-out ticks."""
    from shm.layout import control as C
    from shm.shard import Control
    from wayy.manifest import read_manifest

    db_run = db_factory("--shards", "1", "--feed", "none", "--writer-poll-us", poll_us)
    assert read_manifest(db_run.path).writer_poll_us == float(poll_us)
    m = read_manifest(db_run.path)
    ctl = Control.attach(m.prefix, 0)
    p = wayy.Producer(db_run.path)
    db = wayy.attach(db_run.path)
    try:
        sleeps0 = int(ctl.counters[C.C_IDLE_LOOPS])
        for i in range(300):  # bursts (gaps of microseconds) and pauses (of milliseconds)
            p.publish("trades", symbol="POLL", price=float(i + 1), size=1.0, ts=T0 + i)
            if i % 50 == 49:
                time.sleep(0.02)
        p.flush(10.0)
        wait_for(lambda: len(db["trades"]) == 300, what="300 trades committed")
        r = db["trades"].tail(300, symbol="POLL")
        np.testing.assert_array_equal(r["price"], np.arange(1, 301, dtype=float))
        assert np.all(np.diff(r["seq"]) > 0)
        # 5 pauses of 20 ms: far longer than any poll window, so the writer slept
        assert int(ctl.counters[C.C_IDLE_LOOPS]) - sleeps0 >= 5
        shard = db_run.status()["shards"][0]
        assert shard["polling"] is (poll_us != "0") and shard["poll_pauses"] >= 0
    finally:
        p.close()
        db.close()
        ctl.close()


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_writer_polling_pauses_while_it_waits_for_a_cpu():
    """The writer's poll governor, on this thread with real CPU contention: two processes
    spinning on this thread's CPU make it wait on the run queue, so with batches coming
    fast polling pauses (counted, C_POLLING 0) until a retry, whose trial under the same
    contention pauses again for twice as long; with batches seldom, polling goes on."""
    from shm.layout import control as C
    from workers import writer as W

    if not os.path.exists("/proc/thread-self/schedstat"):
        pytest.skip("no per-thread scheduler statistics (/proc/thread-self/schedstat)")
    counters = np.zeros(C.N_COUNTERS, np.int64)
    old_affinity = os.sched_getaffinity(0)
    cpu = min(old_affinity)
    os.sched_setaffinity(0, {cpu})  # this thread only
    hogs: list[mp.Process] = []
    gov = W._PollGovernor(counters)
    try:
        # (whether this CPU is free of other work before the hogs start depends on the
        # machine: nothing is asserted about that interval)
        ctx = mp.get_context("fork")
        for _ in range(2):
            h = ctx.Process(target=_hog, args=(cpu, 30.0), daemon=True)
            h.start()
            hogs.append(h)
        _spin(0.3)  # the hogs are running on this CPU now
        assert gov.allows(time.monotonic(), False)  # a fresh interval, under contention
        _spin(W.POLL_CHECK_S * 2)
        # batches seldom: polling goes on although the thread waited
        assert gov.allows(time.monotonic(), False)
        _spin(W.POLL_CHECK_S * 2)
        t = time.monotonic()
        assert not gov.allows(t, True)  # busy and waiting: pause
        assert counters[C.C_POLL_BACKOFFS] == 1 and counters[C.C_POLLING] == 0
        assert not gov.allows(t + W.POLL_CHECK_S * 1.5, True)  # still within the pause
        t2 = t + W.POLL_RETRY_MIN_S + W.POLL_CHECK_S
        assert gov.allows(t2, True)  # the retry: a trial
        assert counters[C.C_POLLING] == 1
        _spin(W.POLL_CHECK_S * 2)
        t3 = max(time.monotonic(), t2 + W.POLL_CHECK_S)
        assert not gov.allows(t3, True)  # the trial failed under the same contention
        assert counters[C.C_POLL_BACKOFFS] == 2
        # the next pause is twice as long
        assert not gov.allows(t3 + W.POLL_RETRY_MIN_S + W.POLL_CHECK_S, True)
        assert gov.allows(t3 + 2 * W.POLL_RETRY_MIN_S + 2 * W.POLL_CHECK_S, True)
    finally:
        for h in hogs:
            h.kill()
            h.join(5)
        os.sched_setaffinity(0, old_affinity)
        gov.close()


def _hog(cpu: int, seconds: float) -> None:
    os.sched_setaffinity(0, {cpu})
    _spin(seconds)


def test_producer_inherited_by_a_forked_child_claims_under_its_own_pid(db_factory):
    """A Producer used in a forked child writes records under the child's pid, so when
    children are SIGKILLed mid-publish the writer pads over their records (their pid is
    dead) instead of waiting for the still-living parent: the shard keeps committing."""
    import random

    db_run = db_factory("--shards", "1", "--feed", "none")
    p = wayy.Producer(db_run.path)
    p.publish("trades", symbol="FORK", price=1.0, size=1.0)
    p.flush(10.0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the pid its records carry, publish, leave
        try:
            os.write(w, f"{p._pid} {os.getpid()}".encode())
            p.publish("trades", symbol="FORK", price=2.0, size=1.0)
            p.flush(10.0)
        finally:
            os._exit(0)
    os.close(w)
    claimed, child = os.read(r, 100).decode().split()
    os.close(r)
    os.waitpid(pid, 0)
    assert claimed == child
    n = 50_000
    batch = {"symbol": np.array(["FORK"] * n), "price": np.ones(n), "size": np.ones(n)}
    rng = random.Random(3)
    for _ in range(12):
        pid = os.fork()
        if pid == 0:
            try:
                while True:
                    p.publish_batch("trades", batch)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.02, 0.08))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    q = wayy.Producer(db_run.path, timeout=10)
    q.publish("trades", symbol="FORK", price=3.0, size=1.0)
    q.flush(10.0)  # a claim left by a dead child is padded over within ~0.2 s
    db = wayy.attach(db_run.path)
    try:
        assert db["trades"].tail(1, symbol="FORK")["price"][0] == 3.0
        assert list(db["trades"].between(symbol="FORK")["price"][:2]) == [1.0, 2.0]
    finally:
        db.close()
        q.close()
        p.close()


def test_pass_memory_takes_only_arrays_the_writer_kernels_can_use():
    """The writer's per-pass kernels see its arrays as raw addresses: a read-only, strided
    or wrongly typed array is refused up front, never reinterpreted."""
    from shm import ingest

    arrays = {k: np.zeros(8, ingest._M_DTYPES.get(k, np.int64))
              for k in range(ingest.M_WORDS // 2)}
    mem = ingest.pass_memory(arrays)
    st = arrays[ingest.M_STATE]
    assert mem[2 * ingest.M_STATE] == st.ctypes.data and mem[2 * ingest.M_STATE + 1] == 8
    ro = np.zeros(8, np.int64)
    ro.flags.writeable = False
    for bad in (ro, np.zeros(16, np.int64)[::2], np.zeros(8, np.int32)):
        with pytest.raises(ValueError, match="writeable, C-contiguous"):
            ingest.pass_memory({**arrays, ingest.M_STATE: bad})


def test_follow_table_takes_only_arrays_the_follow_kernel_can_use():
    """A subscriber's follow kernel sees its five arrays as raw addresses: a strided or
    wrongly typed array, a read-only one it writes to, or a filter of the wrong shape is
    refused up front; the ring and the segment may be read-only (mapped PROT_READ)."""
    from shm import subscribers as K

    ring = np.zeros(64, np.int64)
    seg8 = np.zeros(256, np.uint8)
    ring.flags.writeable = seg8.flags.writeable = False
    ctl, filt, out = np.zeros(K.C_WORDS, np.int64), np.zeros((2, 8), np.uint8), np.zeros(
        16, np.int64)
    mem = K.follow_table(ring, seg8, ctl, filt, out)
    assert mem[2 * K.T_CTL] == ctl.ctypes.data and mem[2 * K.T_CTL + 1] == K.C_WORDS
    assert mem[2 * K.T_SEG8 + 1] == 256 and mem[K.T_FILT_COLS] == 8
    ro = np.zeros(16, np.int64)
    ro.flags.writeable = False
    for args in ((ring, seg8, ctl, filt, ro), (ring, seg8, ctl[::2], filt, out),
                 (ring.astype(np.int32), seg8, ctl, filt, out),
                 (ring, seg8, ctl, filt.astype(np.int64), out)):
        with pytest.raises(ValueError, match="C-contiguous array of"):
            K.follow_table(*args)
    with pytest.raises(ValueError, match="shape"):
        K.follow_table(ring, seg8, ctl, np.zeros(16, np.uint8), out)


def test_kernels_cached_tells_a_cold_cache_from_a_warm_one(tmp_path):
    """`wayy start` says it is compiling (the first start takes a minute) only when numba's
    cache lacks the writer's kernels: a process pointed at an empty cache directory sees it
    cold, this one (warm: the suite's databases loaded them) sees it warm."""
    import subprocess
    import sys

    from workers.writer import kernels_cached, warm_up

    warm_up()
    assert kernels_cached()
    code = ("from workers.writer import kernels_cached; from shm import subscribers; "
            "from shm.jit import in_disk_cache; "
            "print(kernels_cached(), in_disk_cache(subscribers.follow_mem))")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "empty-cache"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False False"


def test_a_stop_sent_right_after_a_child_is_forked_is_not_lost():
    """The supervisor stops a child it has just forked (a stop during the start): the
    SIGTERM must end the child, not meet the supervisor's inherited handler in the child's
    first moments and be lost (the writer then ran on until killed after 5 s)."""
    import types

    from workers.supervisor import Child, Supervisor

    stopped = []
    old = signal.signal(signal.SIGTERM, lambda *_a: stopped.append(1))  # as the supervisor's
    sup = types.SimpleNamespace(lock_fd=None, pid=os.getpid(),
                                _write_exit_reason=lambda *_a: None)
    pids = []
    try:
        for _ in range(20):
            child = Child(name="sleeper", target=lambda: time.sleep(30))
            Supervisor.spawn(sup, child)
            pids.append(child.pid)
            os.kill(child.pid, signal.SIGTERM)  # at once, as shutdown() does
        for pid in pids:
            deadline = time.monotonic() + 10
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                assert time.monotonic() < deadline, "a child ran on after its SIGTERM"
                time.sleep(0.01)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
    finally:
        signal.signal(signal.SIGTERM, old)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    assert not stopped  # the test's own process got none of them
