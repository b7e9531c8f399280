"""Local subscribers: latency, throughput, and what subscribers cost the writer. One JSON line.

Every phase runs real processes against a database started with `wayy start --detach`
(1 shard, no feed), and its peer in the same run.

  latency      producer -> subscriber callback, one trade per publish, paced at RATE ticks/s
               (10k and 100k), with 1 and 3 subscriber processes, for each idle strategy.
               The producer stamps ``ts = time.time_ns()`` just before ``publish``; each
               callback records ``time.time_ns() - tick.ts``. Percentiles pool all
               subscribers' samples (the first 10% of each run are warm-up and dropped).
               The path is: producer -> inbound ring -> shard writer (drain, commit) -> change
               ring -> subscriber (follow kernel, tick, callback).
  zmq          the same ticks over pyzmq PUB/SUB on ipc://, same pacing, same subscriber
               counts: the peer. (zmq's subscriber blocks in recv; there is no writer hop.)
  hop          the subscriber's own share: a process that plays the shard writer (writes a
               row, commits, publishes the change record; ts stamped just before the commit)
               -> subscriber callback, at 10k ticks/s, one subscriber, each idle strategy.
  throughput   one subscriber, in this process, over 2M committed trades (500 symbols):
               batch mode (batch_size 65536, zero-copy views) from the change ring and from
               the columns (backfill); per-tick callbacks (trivial callback) for every row,
               and for one symbol of the 500 (the bloom and the filter skip the rest).
  writer       ingest rows/s (a producer process publishing 1000-row batches as fast as it
               can, until all committed) with no subscriber, and with 4 slow subscribers
               attached (per-tick callbacks that wait 1 ms per tick: they fall further behind
               with every batch), alternating, median of the runs.

    PYTHONPATH=. python benchmarks/bench_subscribe.py [--seconds 2] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import platform
import statistics
import struct
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import wayy  # noqa: E402
from benchmarks._db import load_average, running_db, wait_rows  # noqa: E402
from shm import subscribers as K  # noqa: E402

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


# --- latency: wayy ---------------------------------------------------------------------------

def _wayy_sub(path: str, idle: str, n_max: int, ready, out) -> None:
    _timer_slack_1us()
    db = wayy.attach(path)
    lat = np.zeros(n_max, np.int64)
    n = [0]
    now = time.time_ns

    def cb(t):
        if t.price == STOP_PRICE:
            sub.stop()
            return
        i = n[0]
        if i < n_max:
            lat[i] = now() - t.timestamp
            n[0] = i + 1

    sub = db.subscribe("ticks:" + T_SYMBOL, callback=cb, idle=idle)
    ready.set()
    db.run(timeout=120)
    out.send_bytes(lat[:n[0]].tobytes())
    db.close()


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
        if wait > 30_000:
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
        p = FORK.Process(target=_wayy_sub, args=(path, idle, n_max, ready, w), daemon=True)
        p.start()
        if not ready.wait(30):
            raise RuntimeError("subscriber did not start")
        procs.append(p)
        pipes.append(r)
    prod = wayy.Producer(path)
    pub = prod.publish

    def send(i):
        pub("trades", symbol=T_SYMBOL, price=100.0 + (i & 1023), size=1.0, ts=time.time_ns())

    time.sleep(0.05)
    sent = _pace(rate, seconds, send)
    pub("trades", symbol=T_SYMBOL, price=STOP_PRICE, size=1.0)
    samples = []
    for p, r in zip(procs, pipes):
        if r.poll(60):
            a = np.frombuffer(r.recv_bytes(), np.int64)
            samples.append(a[len(a) // 10:])
        p.join(30)
        if p.is_alive():
            p.kill()
    prod.close()
    res = _pct(np.concatenate(samples) if samples else np.zeros(0, np.int64))
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
    a = np.frombuffer(r.recv_bytes(), np.int64) if r.poll(seconds + 60) else np.zeros(0)
    s.join(30)
    done.set()
    w.join(30)
    for p in (s, w):
        if p.is_alive():
            p.kill()
    return _pct(a[len(a) // 10:].astype(np.int64))


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
    with running_db("--shards", "1", "--feed", "none", "--capacity", str(1 << 22),
                    "--ring-bytes", str(64 << 20)) as path:
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


def writer_rate(path: str, rows: int) -> float:
    db = wayy.attach(path)
    base = len(db["trades"])
    q = FORK.Queue()
    pr = FORK.Process(target=_ingest, args=(path, rows, q), daemon=True)
    pr.start()
    t0 = q.get(timeout=60)
    while len(db["trades"]) < base + rows:
        time.sleep(0.0005)
    el = time.perf_counter() - t0
    pr.join(30)
    db.close()
    return rows / el


def writer_with_slow_subscribers(rows: int, runs: int, slow_ms: float = 1.0) -> dict:
    res = {"none": [], "slow4": []}
    capacity = ((2 * runs + 1) * rows + (1 << 20) + 1023) // 1024 * 1024
    with running_db("--shards", "1", "--feed", "none", "--capacity", str(capacity),
                    "--ring-bytes", str(64 << 20)) as path:
        writer_rate(path, rows)  # warm-up: page faults of the first rows, caches
        for _ in range(runs):
            res["none"].append(writer_rate(path, rows))
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
            res["slow4"].append(writer_rate(path, rows))
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
            "slow4_all": [round(x) for x in res["slow4"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="per latency configuration")
    ap.add_argument("--rows", type=int, default=2_000_000, help="throughput phase rows")
    ap.add_argument("--writer-rows", type=int, default=4_000_000)
    ap.add_argument("--writer-runs", type=int, default=7)
    ap.add_argument("--slow-ms", type=float, default=1.0,
                    help="what each of the 4 slow subscribers waits per tick")
    ap.add_argument("--quick", action="store_true", help="10k/s only, fewer configurations")
    ap.add_argument("--phases", default="latency,zmq,hop,throughput,writer",
                    help="comma-separated subset of the phases to run")
    args = ap.parse_args()
    phases = set(args.phases.split(","))
    _timer_slack_1us()
    K.warm_up()
    out = {"bench": "subscribe", "machine": platform.machine(), "cpus": os.cpu_count(),
           "load_1min_start": load_average()}
    rates = (10_000,) if args.quick else (10_000, 100_000)
    lat = {}
    if "latency" in phases:
        with running_db("--shards", "1", "--feed", "none", "--capacity", str(1 << 23)) as path:
            for rate in rates:
                for nsubs in (1, 3):
                    for idle in IDLES:
                        key = f"wayy_{idle}_{rate // 1000}k_{nsubs}sub"
                        lat[key] = latency_wayy(path, rate, nsubs, idle, args.seconds)
                        print(key, lat[key], file=sys.stderr, flush=True)
    if "zmq" in phases:
        for rate in rates:
            for nsubs in (1, 3):
                key = f"zmq_ipc_{rate // 1000}k_{nsubs}sub"
                lat[key] = latency_zmq(rate, nsubs, args.seconds)
                print(key, lat[key], file=sys.stderr, flush=True)
    if "hop" in phases:
        for idle in IDLES:
            key = f"hop_{idle}_10k_1sub"
            lat[key] = latency_hop(10_000, idle, args.seconds)
            print(key, lat[key], file=sys.stderr, flush=True)
    out["latency"] = lat
    if "throughput" in phases:
        out["throughput"] = throughput(args.rows)
        print("throughput", out["throughput"], file=sys.stderr, flush=True)
    if "writer" in phases:
        out["writer"] = writer_with_slow_subscribers(args.writer_rows, args.writer_runs,
                                                     args.slow_ms)
        print("writer", out["writer"], file=sys.stderr, flush=True)
    out["load_1min_end"] = load_average()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
