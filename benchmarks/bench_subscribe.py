"""Local subscribers: latency, throughput, and what subscribers cost the writer. One JSON line.

Every phase runs real processes against a database started with `wayy start --detach`
(1 shard, no feed, --no-redis: the broker is another reader of the ring and would share the
two cores; --with-broker adds it), and its peer in the same run.

  latency      producer -> subscriber callback, one trade per publish, paced at RATE ticks/s
               (10k and 100k; --pace: sleep to ~20 us before each tick then spin, the
               default, or only sleep), with 1 and 3 subscriber processes, for each idle
               strategy.
               The producer stamps ``ts = time.time_ns()`` just before ``publish``; each
               callback records ``time.time_ns() - tick.ts``. Percentiles pool all
               subscribers' samples (the first 10% of each run are warm-up and dropped).
               The path is: producer -> inbound ring -> shard writer (drain, WAL append,
               commit) -> change ring -> subscriber (follow kernel, tick, callback).
               Each callback also reads the writer's commit stamp (taken just before its
               drain), which splits the figure: ``to_writer`` = producer stamp -> writer
               drain start (the producer's publish call and, when the writer sleeps, its futex
               wake-up); ``writer_to_cb`` = the rest (drain, WAL, commit, publish, the
               subscriber's wake-up and its Python up to the callback).
               Run for each WAL setting (--wal on,off: the default fsync=interval, and
               --no-wal) and each writer poll window (--writer-poll-us, passed to `wayy
               start --writer-poll-us`: 250 is the default, 0 sleeps at once).
               All databases run at once and every configuration runs once per round,
               --rounds times, in alternating order; the figures are medians over rounds
               (a shared machine's background load then falls on every configuration).
  zmq          the same ticks over pyzmq PUB/SUB on ipc://, same pacing, same subscriber
               counts, in the same rounds: the peer. (zmq's subscriber blocks in recv;
               there is no writer hop.)
  hop          the subscriber's own share: a process that plays the shard writer (writes a
               row, commits, publishes the change record; ts stamped just before the commit)
               -> subscriber callback, at 10k ticks/s, one subscriber, each idle strategy.
  ring         the mechanism's floor: a numba kernel publishes change records (stamped inside
               the kernel) and a numba kernel in another process reads them, spinning or
               sleeping on the futex (no Python on either side), 10k records/s.
  throughput   one subscriber, in this process, over 2M committed trades (500 symbols):
               batch mode (batch_size 65536, zero-copy views) from the change ring and from
               the columns (backfill); per-tick callbacks (trivial callback) for every row,
               and for one symbol of the 500 (the bloom and the filter skip the rest).
  writer       ingest rows/s (a producer process publishing 1000-row batches as fast as it
               can, until all committed) with no subscriber, and with 4 slow subscribers
               attached (per-tick callbacks that wait 1 ms per tick: they fall further behind
               with every batch), alternating, median of the runs; and the writer
               process's own CPU time per row in each case (/proc schedstat, all its
               threads), which machine noise and the subscribers' CPU do not move.

    PYTHONPATH=. python benchmarks/bench_subscribe.py [--seconds 2] [--rounds 3] [--quick]
        [--wal on,off] [--writer-poll-us 250,0] [--phases latency,zmq,hop,ring,...]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import struct
import sys
import tempfile
import time

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import wayy  # noqa: E402
from benchmarks._db import load_average, running_db, wait_rows  # noqa: E402
from shm import change_ring as CR  # noqa: E402
from shm import ingest  # noqa: E402
from shm import subscribers as K  # noqa: E402
from shm.atomics import clock_monotonic_ns, cpu_relax  # noqa: E402
from shm.layout import shard as S  # noqa: E402

FORK = mp.get_context("fork")
IDLES = ("spin", "yield", "backoff", "block")
STOP_PRICE = 999_999.0
T_SYMBOL = "LAT"


def _timer_slack_1us() -> None:
    """Let short sleeps be short (the default 50 us slack makes sleep(1us) last 60 us)."""
    try:
        ctypes.CDLL(None).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def _pct(a: np.ndarray) -> dict:
    if len(a) == 0:
        return {"n": 0}
    us = a / 1000.0
    return {"n": int(len(a)), "p50_us": round(float(np.percentile(us, 50)), 1),
            "p99_us": round(float(np.percentile(us, 99)), 1),
            "p999_us": round(float(np.percentile(us, 99.9)), 1),
            "max_us": round(float(us.max()), 1)}


# --- the database, with a writer idle policy -----------------------------------------------------

@contextlib.contextmanager
def database(*args: str, poll_us: str = "250", broker: bool = False):
    """benchmarks._db.running_db (--shards 1 --feed none, --no-redis unless ``broker``) with
    the writers' poll window ``poll_us`` (`wayy start --writer-poll-us`)."""
    if not broker:
        args = ("--no-redis", *args)
    with running_db("--shards", "1", "--feed", "none", "--writer-poll-us", poll_us,
                    *args) as path:
        yield path


# --- latency: wayy ---------------------------------------------------------------------------

def _wayy_sub(path: str, idle: str, n_max: int, ready, out, split: bool = False) -> None:
    """A subscriber process: (callback time - tick ts) per tick, and with ``split`` also the
    writer's commit stamp (its drain start) - tick ts, or -1 when that commit is not the
    tick's own (the subscriber was behind)."""
    _timer_slack_1us()
    db = wayy.attach(path)
    lat = np.zeros((n_max, 2), np.int64)
    n = [0]
    now = time.time_ns
    hdr = db.shards[0].hdr64
    snap = np.zeros(S.COMMIT_SLOT_WORDS, np.int64)
    snapshot = ingest.snapshot
    snapshot(hdr, snap)

    def cb(t):
        x = now()
        if t.price == STOP_PRICE:
            sub.stop()
            return
        i = n[0]
        if i < n_max:
            ts = t.timestamp
            lat[i, 0] = x - ts
            if split:  # after the stamp: costs the next tick, not this one
                snapshot(hdr, snap)
                lat[i, 1] = snap[S.COMMIT_NS] - ts \
                    if snap[S.COMMIT_NEXT_SEQ] == t.seq + 1 else -1
            n[0] = i + 1

    sub = db.subscribe("ticks:" + T_SYMBOL, callback=cb, idle=idle)
    ready.set()
    db.run(timeout=120)
    out.send_bytes(lat[:n[0]].tobytes())
    db.close()


# --pace: "spin" sleeps until ~20 us before each tick, then spins to it (an even rate, but
# the producer takes a core for a fifth to a third of the time at 10k ticks/s); "sleep" only
# sleeps (a feed handler woken by its socket): the stamp is taken at the send either way, so
# a late wake-up moves the send, not the figure
PACE_SPIN = True


def _pace(rate: float, seconds: float, send) -> int:
    """Call send() ``rate`` times a second for ``seconds``, each call on its own schedule."""
    period = 1e9 / rate
    n_total = int(rate * seconds)
    start = time.monotonic_ns()
    sent = 0
    while sent < n_total:
        due = min(n_total, int((time.monotonic_ns() - start) / period) + 1)
        if sent < due:
            send(sent)
            sent += 1
            continue
        wait = start + sent * period - time.monotonic_ns()
        if not PACE_SPIN:
            if wait > 0:
                time.sleep(wait / 1e9)
        elif wait > 30_000:
            # one sleep per tick, ending ~20 us early (1 us timer slack; sleeps overshoot
            # by ~10 us), then spin: few wake-ups, so the pacing itself does not load the
            # two cores the measured processes share
            time.sleep((wait - 20_000) / 1e9)
    return sent


def latency_wayy(path: str, rate: float, nsubs: int, idle: str, seconds: float) -> dict:
    n_max = int(rate * seconds) + 10
    procs, pipes = [], []
    for _ in range(nsubs):
        ready = FORK.Event()
        r, w = FORK.Pipe(duplex=False)
        p = FORK.Process(target=_wayy_sub, args=(path, idle, n_max, ready, w, True),
                         daemon=True)
        p.start()
        if not ready.wait(30):
            raise RuntimeError("subscriber did not start")
        procs.append(p)
        pipes.append(r)
    prod = wayy.Producer(path)
    pub = prod.publish

    def send(i):
        pub("trades", symbol=T_SYMBOL, price=100.0 + (i & 1023), size=1.0, ts=time.time_ns())

    # the publish kernels load (on a fresh machine: compile, seconds) before the pacing
    # starts; the subscribers follow only T_SYMBOL
    pub("trades", symbol="WARM", price=1.0, size=1.0)
    time.sleep(0.05)
    sent = _pace(rate, seconds, send)
    pub("trades", symbol=T_SYMBOL, price=STOP_PRICE, size=1.0)
    samples = []
    for p, r in zip(procs, pipes):
        if r.poll(60):
            a = np.frombuffer(r.recv_bytes(), np.int64).reshape(-1, 2)
            samples.append(a[len(a) // 10:])
        p.join(30)
        if p.is_alive():
            p.kill()
    prod.close()
    a = np.concatenate(samples) if samples else np.zeros((0, 2), np.int64)
    res = _pct(a[:, 0])
    own = a[:, 1] >= 0  # the tick's own commit: the split is meaningful
    if own.any():
        res["to_writer"] = _pct(a[own, 1])
        res["writer_to_cb"] = _pct(a[own, 0] - a[own, 1])
        res["own_commit_share"] = round(float(own.mean()), 3)
    res["sent"] = sent
    res["received_per_sub"] = [int(len(s) / 0.9) for s in samples]
    return res


# --- latency: pyzmq peer -------------------------------------------------------------------------

_MSG = struct.Struct("<qddq")


def _zmq_sub(addr: str, n_max: int, ready, out) -> None:
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.RCVHWM, 0)
    s.connect(addr)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    ready.set()
    lat = np.zeros(n_max, np.int64)
    n = 0
    now = time.time_ns
    while True:
        msg = s.recv()
        ts, price, _size, _i = _MSG.unpack(msg)
        if price == STOP_PRICE:
            break
        if ts == 0:  # warm-up
            continue
        if n < n_max:
            lat[n] = now() - ts
            n += 1
    out.send_bytes(lat[:n].tobytes())
    s.close(0)
    ctx.term()


def latency_zmq(rate: float, nsubs: int, seconds: float) -> dict:
    import zmq

    addr = f"ipc://{tempfile.gettempdir()}/wayy-bench-{os.getpid()}.ipc"
    ctx = zmq.Context()
    pubsock = ctx.socket(zmq.PUB)
    pubsock.setsockopt(zmq.SNDHWM, 0)
    pubsock.bind(addr)
    n_max = int(rate * seconds) + 10
    procs, pipes = [], []
    for _ in range(nsubs):
        ready = FORK.Event()
        r, w = FORK.Pipe(duplex=False)
        p = FORK.Process(target=_zmq_sub, args=(addr, n_max, ready, w), daemon=True)
        p.start()
        ready.wait(30)
        procs.append(p)
        pipes.append(r)
    deadline = time.monotonic() + 1.0  # slow joiners: warm up until they are connected
    while time.monotonic() < deadline:
        pubsock.send(_MSG.pack(0, 1.0, 1.0, 0))
        time.sleep(0.001)
    send_raw = pubsock.send

    def send(i):
        send_raw(_MSG.pack(time.time_ns(), 100.0, 1.0, i))

    sent = _pace(rate, seconds, send)
    for _ in range(3):
        pubsock.send(_MSG.pack(1, STOP_PRICE, 1.0, -1))
    samples = []
    for p, r in zip(procs, pipes):
        if r.poll(60):
            a = np.frombuffer(r.recv_bytes(), np.int64)
            samples.append(a[len(a) // 10:])
        p.join(30)
        if p.is_alive():
            p.kill()
    pubsock.close(0)
    ctx.term()
    try:
        os.unlink(addr[len("ipc://"):])
    except FileNotFoundError:
        pass
    res = _pct(np.concatenate(samples) if samples else np.zeros(0, np.int64))
    res["sent"] = sent
    return res


# --- hop: a stand-in writer -> subscriber ------------------------------------------------------

def _hop_writer(path: str, rate: float, seconds: float, ready, go, done) -> None:
    """Plays the shard writer of a 1-shard database at ``path``: write, commit, publish."""
    from shm import ingest
    from shm.change_ring import ChangeRingWriter
    from shm.layout import shard as S
    from shm.segment import db_prefix
    from shm.shard import ShardData, segment_name
    from wayy.manifest import Manifest, acquire_lock

    _timer_slack_1us()
    os.makedirs(path, exist_ok=True)
    lock = acquire_lock(path)
    prefix = db_prefix(path)
    d = ShardData.create(prefix, 0, 1, 1 << 22, 16, 4)
    ring = ChangeRingWriter.create(segment_name(prefix, 0, "changes"), 1 << 16)
    Manifest(path=os.path.realpath(path), prefix=prefix, shards=1, capacity=1 << 22,
             ring_capacity=1 << 16, max_symbols=16, max_venues=4, supervisor_pid=os.getpid(),
             started_ns=time.time_ns()).write()
    d.sym_names[0] = T_SYMBOL.encode()
    d.hdr32[S.N_SYMBOLS_I32] = 1
    d.hdr32[S.N_VENUES_I32] = 1
    st = np.zeros(ingest.N_STATE, np.int64)
    cols = d.cols[0]
    ready.set()
    go.wait(30)

    def send(i, price=None):
        r = int(st[0])
        cols["symbol"][r] = 0
        cols["venue"][r] = 0
        cols["price"][r] = 100.0 if price is None else price
        cols["size"][r] = 1.0
        cols["seq"][r] = st[ingest.S_NEXT_SEQ]
        ts = time.time_ns()
        cols["ts"][r] = ts
        st[0] += 1
        st[ingest.S_NEXT_SEQ] += 1
        ingest.commit(d.hdr64, st, ts)
        ring.publish(int(st[ingest.S_NEXT_SEQ]) - 1, 1, 0, r, ts, ts, 1)

    _pace(rate, seconds, send)
    send(0, STOP_PRICE)
    done.wait(60)
    ring.close()
    ring.unlink()
    d.close()
    d.seg.unlink()
    os.unlink(os.path.join(path, "wayy.json"))
    os.close(lock)


def latency_hop(rate: float, idle: str, seconds: float) -> dict:
    path = tempfile.mkdtemp(prefix="wayy-hop-")
    ready, go, done = FORK.Event(), FORK.Event(), FORK.Event()
    w = FORK.Process(target=_hop_writer, args=(path, rate, seconds, ready, go, done),
                     daemon=True)
    w.start()
    ready.wait(30)
    sready = FORK.Event()
    r, wp = FORK.Pipe(duplex=False)
    s = FORK.Process(target=_wayy_sub, args=(path, idle, int(rate * seconds) + 10, sready, wp),
                     daemon=True)
    s.start()
    sready.wait(30)
    go.set()
    a = np.frombuffer(r.recv_bytes(), np.int64).reshape(-1, 2)[:, 0] \
        if r.poll(seconds + 60) else np.zeros(0, np.int64)
    s.join(30)
    done.set()
    w.join(30)
    for p in (s, w):
        if p.is_alive():
            p.kill()
    # the subscriber registry (and anything a killed process left) goes with the directory
    from shm.segment import db_prefix, list_segments, unlink_quiet

    for name in list_segments(db_prefix(os.path.realpath(path))):
        unlink_quiet(name)
    shutil.rmtree(path, ignore_errors=True)
    return _pct(a[len(a) // 10:].astype(np.int64))


# --- ring: the mechanism's floor, no Python on the path -------------------------------------------

@numba.njit(nogil=True)
def _ring_stamp_publish(hdr, slots, wctl, i):
    """Publish record ``i`` stamped (ts_first) with the monotonic clock, inside the kernel."""
    now = clock_monotonic_ns()
    CR.publish(hdr, slots, wctl, i, 1, 0, i, now, now, 1)


@numba.njit(nogil=True)
def _ring_follow(hdr, slots, wctl, lat, block):
    """Read records 0 .. len(lat)-1 as they come; lat[i] = read time - publish stamp.
    Spins (PAUSE) between polls, or with ``block`` sleeps on the futex. Returns records read."""
    rec = np.zeros(8, np.int64)
    pos = 0
    n = lat.shape[0]
    while pos < n:
        st = CR.read(hdr, slots, pos, rec)
        if st == CR.OK:
            lat[pos] = clock_monotonic_ns() - rec[5]
            pos += 1
        elif st == CR.LAPPED:
            return pos
        elif block:
            if CR.wait_once(hdr, wctl, pos, 100_000_000) == CR.CLOSED:
                return pos
        else:
            cpu_relax()
    return pos


def _ring_reader(name: str, n: int, block: bool, ready, out) -> None:
    with CR.ChangeRingReader.attach(name) as r:
        lat = np.zeros(n, np.int64)
        _ring_follow(r.hdr, r.slots, r.wctl, lat[:0], block)  # compile before going live
        ready.set()
        got = _ring_follow(r.hdr, r.slots, r.wctl, lat, block)
        out.send_bytes(lat[:got].tobytes())


def latency_ring(rate: float, seconds: float, block: bool) -> dict:
    """One writer (this process, paced from Python, stamped inside the kernel) -> one reader
    process following in a kernel: the change ring's own latency."""
    name = f"/wayy.bench.ring.{os.getpid()}"
    n = int(rate * seconds)
    w = CR.ChangeRingWriter.create(name, 1 << 16)
    try:
        scratch = CR.ChangeRingWriter.create(name + "x", 2)  # compile on a throw-away ring
        _ring_stamp_publish(scratch.hdr, scratch.slots, scratch.wctl, 0)
        scratch.close()
        scratch.unlink()
        ready = FORK.Event()
        r, wp = FORK.Pipe(duplex=False)
        p = FORK.Process(target=_ring_reader, args=(name, n, block, ready, wp), daemon=True)
        p.start()
        ready.wait(60)
        time.sleep(0.05)
        hdr, slots, wctl = w.hdr, w.slots, w.wctl
        _pace(rate, seconds, lambda i: _ring_stamp_publish(hdr, slots, wctl, i))
        a = np.frombuffer(r.recv_bytes(), np.int64) if r.poll(60) else np.zeros(0, np.int64)
        p.join(10)
        if p.is_alive():
            p.kill()
    finally:
        w.close()
        w.unlink()
    return _pct(a[len(a) // 10:])


# --- throughput ----------------------------------------------------------------------------------

def _preload(path: str, rows: int, batch: int = 2000) -> None:
    p = wayy.Producer(path, timeout=60)
    rng = np.random.default_rng(1)
    syms = np.array([f"S{i:03d}" for i in range(500)])
    t0 = time.time_ns() - 3_600_000_000_000
    for lo in range(0, rows, batch):
        n = min(batch, rows - lo)
        p.publish_batch("trades", {"ts": t0 + lo + np.arange(n), "symbol":
                                   syms[rng.integers(0, 500, n)], "price":
                                   rng.uniform(10, 500, n), "size": np.ones(n)})
    p.close()


def throughput(rows: int) -> dict:
    out = {}
    with database("--capacity", str(1 << 22), "--ring-bytes", str(64 << 20)) as path:
        db = wayy.attach(path)
        got = [0]

        def on_batch(b):
            got[0] += len(b)

        def on_tick(t):
            got[0] += 1

        live_b = db.subscribe("trades", callback=on_batch, batch_size=65536, max_latency_ms=1)
        live_t = db.subscribe("trades", callback=on_tick)
        live_t1 = db.subscribe("ticks:S007", callback=on_tick)
        _preload(path, rows)
        wait_rows(db, "trades", rows)
        want_s007 = len(db["trades"].tail(rows, symbol="S007"))

        def timed(sub, want):
            got[0] = 0
            t = time.perf_counter()
            while got[0] < want:
                sub.run(timeout=0.0005)
            return want / (time.perf_counter() - t)

        out["batch_ring_rows_per_s"] = round(timed(live_b, rows))
        live_b.stop()
        out["tick_ring_per_s"] = round(timed(live_t, rows))
        live_t.stop()
        out["tick_one_symbol_of_500_ring_per_s"] = round(timed(live_t1, want_s007))
        out["tick_one_symbol_scanned_rows_per_s"] = round(
            out["tick_one_symbol_of_500_ring_per_s"] * rows / max(1, want_s007))
        live_t1.stop()
        bf = db.subscribe("trades", callback=on_batch, batch_size=65536, max_latency_ms=1,
                          from_seq=0)
        out["batch_backfill_rows_per_s"] = round(timed(bf, rows))
        bf.stop()
        bt = db.subscribe("trades", callback=on_tick, from_seq=0)
        out["tick_backfill_per_s"] = round(timed(bt, rows))
        bt.stop()
        out["rows"] = rows
        db.close()
    return out


# --- writer throughput with slow subscribers ----------------------------------------------------

def _slow_sub(path: str, ready, stop, slow_s: float) -> None:
    db = wayy.attach(path)

    def cb(t):
        time.sleep(slow_s)  # a strategy that waits on every tick (an order gateway, ...)
        if stop.is_set():
            sub.stop()

    sub = db.subscribe("trades", callback=cb)
    ready.set()
    db.run(timeout=300)
    db.close()


def _ingest(path: str, rows: int, q) -> None:
    p = wayy.Producer(path, timeout=60)
    rng = np.random.default_rng(2)
    syms = np.array([f"S{i:03d}" for i in range(500)])
    batches = []
    for _ in range(64):
        n = 1000
        batches.append({"ts": np.full(n, time.time_ns()), "symbol": syms[rng.integers(0, 500, n)],
                        "price": rng.uniform(10, 500, n), "size": np.ones(n)})
    q.put(time.perf_counter())
    for i in range(rows // 1000):
        p.publish_batch("trades", batches[i & 63])
    p.close()


def _cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (/proc/PID/task/*/schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def writer_rate(path: str, rows: int) -> tuple[float, float]:
    """(rows/s from the first publish to the last commit, the writer's CPU ns per row)."""
    db = wayy.attach(path)
    from wayy.status import read_status

    wpid = read_status(path, redis=False)["shards"][0]["writer_pid"]
    base = len(db["trades"])
    q = FORK.Queue()
    pr = FORK.Process(target=_ingest, args=(path, rows, q), daemon=True)
    pr.start()
    t0 = q.get(timeout=60)
    c0 = _cpu_ns(wpid)
    while len(db["trades"]) < base + rows:
        time.sleep(0.0005)
    el = time.perf_counter() - t0
    cpu = _cpu_ns(wpid) - c0
    pr.join(30)
    db.close()
    return rows / el, cpu / rows


def writer_with_slow_subscribers(rows: int, runs: int, slow_ms: float = 1.0,
                                 db_args: tuple = ()) -> dict:
    res = {"none": [], "slow4": []}
    cpu = {"none": [], "slow4": []}
    capacity = ((2 * runs + 1) * rows + (1 << 20) + 1023) // 1024 * 1024
    # --roll-fill 0: a roll to history when the table passes 90% would stall one run
    with database("--capacity", str(capacity), "--ring-bytes", str(64 << 20),
                  "--roll-fill", "0", *db_args) as path:
        writer_rate(path, rows)  # warm-up: page faults of the first rows, caches
        for _ in range(runs):
            rate, per_row = writer_rate(path, rows)
            res["none"].append(rate)
            cpu["none"].append(per_row)
            stop = FORK.Event()
            subs = []
            for _ in range(4):
                ready = FORK.Event()
                p = FORK.Process(target=_slow_sub, args=(path, ready, stop, slow_ms / 1e3),
                                 daemon=True)
                p.start()
                ready.wait(30)
                subs.append(p)
            time.sleep(0.5)  # let the forks settle
            rate, per_row = writer_rate(path, rows)
            res["slow4"].append(rate)
            cpu["slow4"].append(per_row)
            stop.set()
            wayy.Producer(path).publish("trades", symbol="S000", price=1.0, size=1.0)
            for p in subs:
                p.join(10)
                if p.is_alive():
                    p.kill()
            time.sleep(0.2)
    none = statistics.median(res["none"])
    slow = statistics.median(res["slow4"])
    # each "slow4" run follows its "none" run within a second: the pair shares the machine's
    # background load, so the median of the pair ratios is the steadier figure here
    pairs = [s / n for n, s in zip(res["none"], res["slow4"])]
    return {"rows": rows, "runs": runs, "slow_ms_per_tick": slow_ms,
            "none_rows_per_s": round(none),
            "slow4_rows_per_s": round(slow), "ratio_of_medians": round(slow / none, 3),
            "ratio_median_of_pairs": round(statistics.median(pairs), 3),
            "none_best": round(max(res["none"])), "slow4_best": round(max(res["slow4"])),
            "none_all": [round(x) for x in res["none"]],
            "slow4_all": [round(x) for x in res["slow4"]],
            # the writer's own CPU per row: what readers cost it, whatever else the two
            # cores are doing (the subscribers' own CPU shares the machine, not the writer)
            "writer_cpu_ns_per_row_none": round(statistics.median(cpu["none"]), 1),
            "writer_cpu_ns_per_row_slow4": round(statistics.median(cpu["slow4"]), 1),
            "writer_cpu_ratio": round(statistics.median(cpu["none"])
                                      / statistics.median(cpu["slow4"]), 3)}


WAL_ARGS = {"on": (), "off": ("--no-wal",)}  # on: the default, fsync interval


def _median_of_runs(runs: list[dict]) -> dict:
    """Per figure, the median over the rounds (and the rounds' p50s, to show the spread)."""
    out = {"rounds": len(runs), "p50_runs": [r.get("p50_us") for r in runs]}
    for k in ("p50_us", "p99_us", "p999_us", "max_us"):
        vals = [r[k] for r in runs if k in r]
        if vals:
            out[k] = round(statistics.median(vals), 1)
    for part in ("to_writer", "writer_to_cb"):
        vals = [r[part]["p50_us"] for r in runs if part in r]
        if vals:
            out[part + "_p50_us"] = round(statistics.median(vals), 1)
    out["load_1min"] = [r.get("load_1min") for r in runs]
    return out


def latency_rounds(args, phases: set, wals: list, idles: list, subs: list,
                   rates: tuple) -> dict:
    """Every latency configuration (each WAL setting x writer policy x rate x subscribers x
    idle strategy, and the pyzmq peer), ``args.rounds`` times, interleaved: all databases run
    at once and every round visits every configuration for ``args.seconds``, so background
    load that comes and goes on a shared machine falls on all of them alike."""
    keys = []
    if "latency" in phases:
        keys += [(f"wal_{w}/poll_{p}us", f"wayy_{i}_{r // 1000}k_{n}sub", r, n, i)
                 for w in wals for p in args.writer_poll_us.split(",")
                 for r in rates for n in subs for i in idles]
    if "zmq" in phases:
        keys += [("zmq", f"zmq_ipc_{r // 1000}k_{n}sub", r, n, None) for r in rates
                 for n in subs]
    runs: dict = {k[:2]: [] for k in keys}
    # rows each database takes: every round, every rate x subscribers x idle (+ margin); no
    # roll to history in the middle of a run (--roll-fill 0)
    per_db = args.rounds * len(subs) * len(idles) * sum(int(r * args.seconds) + 10
                                                        for r in rates)
    capacity = max(1 << 23, (per_db + (1 << 20) + 1023) // 1024 * 1024)
    with contextlib.ExitStack() as stack:
        paths = {}
        for cfg in sorted({k[0] for k in keys if k[0] != "zmq"}):
            wal, poll = cfg[len("wal_"):-len("us")].split("/poll_")
            paths[cfg] = stack.enter_context(database(
                "--capacity", str(capacity), "--roll-fill", "0", *WAL_ARGS[wal],
                poll_us=poll, broker=args.with_broker))
        for rnd in range(args.rounds):
            for cfg, key, rate, nsubs, idle in (keys if rnd % 2 == 0 else keys[::-1]):
                if cfg == "zmq":
                    r = latency_zmq(rate, nsubs, args.seconds)
                else:
                    r = latency_wayy(paths[cfg], rate, nsubs, idle, args.seconds)
                r["load_1min"] = load_average()
                runs[(cfg, key)].append(r)
                print(f"round {rnd}", cfg, key, {k: r.get(k) for k in (
                    "p50_us", "p99_us", "load_1min")}, file=sys.stderr, flush=True)
    lat: dict = {}
    for (cfg, key), rs in runs.items():
        if cfg == "zmq":
            lat[key] = _median_of_runs(rs)
        else:
            lat.setdefault(cfg, {})[key] = _median_of_runs(rs)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per latency configuration")
    ap.add_argument("--rows", type=int, default=2_000_000, help="throughput phase rows")
    ap.add_argument("--writer-rows", type=int, default=4_000_000)
    ap.add_argument("--writer-runs", type=int, default=7)
    ap.add_argument("--slow-ms", type=float, default=1.0,
                    help="what each of the 4 slow subscribers waits per tick")
    ap.add_argument("--quick", action="store_true", help="10k/s only, fewer configurations")
    ap.add_argument("--phases", default="latency,zmq,hop,ring,throughput,writer",
                    help="comma-separated subset of the phases to run")
    ap.add_argument("--wal", default="on,off",
                    help="WAL settings to run the latency and writer phases with: on (the "
                         "default start, fsync interval), off (--no-wal)")
    ap.add_argument("--writer-poll-us", default="250,0",
                    help="writer poll windows for the latency phase (`wayy start "
                         "--writer-poll-us`; 250 is the default)")
    ap.add_argument("--idles", default=",".join(IDLES), help="subscriber idle strategies")
    ap.add_argument("--subs", default="1,3", help="subscriber counts for the latency phase")
    ap.add_argument("--with-broker", action="store_true",
                    help="start Redis and the broker too (the default `wayy start`)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="latency: every configuration runs once per round, rounds in "
                         "alternating order; figures are medians over the rounds")
    ap.add_argument("--pace", choices=("spin", "sleep"), default="spin",
                    help="how the paced producers (wayy and pyzmq alike) wait for each "
                         "tick: sleep to ~20 us before it, then spin (spin), or only sleep")
    args = ap.parse_args()
    global PACE_SPIN
    PACE_SPIN = args.pace == "spin"
    phases = set(args.phases.split(","))
    wals = args.wal.split(",")
    idles = args.idles.split(",")
    subs = [int(x) for x in args.subs.split(",")]
    _timer_slack_1us()
    K.warm_up()
    out = {"bench": "subscribe", "machine": platform.machine(), "cpus": os.cpu_count(),
           "load_1min_start": load_average(), "broker": args.with_broker, "pace": args.pace}
    rates = (10_000,) if args.quick else (10_000, 100_000)
    lat = {}
    if "latency" in phases or "zmq" in phases:
        lat.update(latency_rounds(args, phases, wals, idles, subs, rates))
    if "hop" in phases:
        for idle in idles:
            key = f"hop_{idle}_10k_1sub"
            lat[key] = latency_hop(10_000, idle, args.seconds)
            print(key, lat[key], file=sys.stderr, flush=True)
    if "ring" in phases:
        for block in (False, True):
            key = f"ring_{'futex' if block else 'spin'}_10k"
            lat[key] = latency_ring(10_000, args.seconds, block)
            print(key, lat[key], file=sys.stderr, flush=True)
    out["latency"] = lat
    if "throughput" in phases:
        out["throughput"] = throughput(args.rows)
        print("throughput", out["throughput"], file=sys.stderr, flush=True)
    if "writer" in phases:
        out["writer"] = {}
        for wal in wals:
            out["writer"][f"wal_{wal}"] = w = writer_with_slow_subscribers(
                args.writer_rows, args.writer_runs, args.slow_ms, WAL_ARGS[wal])
            print("writer", wal, w, file=sys.stderr, flush=True)
    out["load_1min_end"] = load_average()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
