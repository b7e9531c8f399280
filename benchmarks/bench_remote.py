"""Remote subscribers through Redis: end-to-end throughput, latency, replay. One JSON line.

Every phase runs real processes: a database (`wayy start --detach --no-redis`, 2 shards), a
redis-server on a free loopback port, the broker (`python -m workers.broker`, retention none),
producer processes, and one remote subscriber (wayy.remote.Subscriber) in this process.
Before the first phase, ``warm_up`` runs the latency and e2e paths once, unmeasured, so a
first run on a fresh machine does not measure numba compiling its kernels.

  latency    one producer paced at RATE ticks/s (sleeping, never spinning: a spinning
             producer takes a core from the path measured); each publish sends the ticks due
             by then (one when on time, a few when a sleep overshot), each stamped
             ``ts = time.time_ns()`` just before; a per-tick remote callback records
             ``time.time_ns() - tick.ts``. Path: producer -> inbound ring -> writer -> change
             ring -> broker -> MULTI/EXEC -> Redis -> pub/sub socket -> decode -> callback.
             p50/p99 after dropping the first 10%; at RATE/10 and at RATE.
  breakdown  the latency phase again, on a database of its own with a probing broker
             (benchmarks/_broker_probe.py stamps each transaction's send), split into tick ts
             -> broker sent the transaction -> subscriber read the message from its socket
             -> callback ran: p50 / p90 of each part.
  e2e        two producers publish N trades (batches of 1,000; 8 symbols; random-walk prices,
             random sizes, ~1 us apart) as fast as they can; ticks/s = N / (first publish ->
             last row in the remote callbacks). The subscriber follows every symbol's channel
             with batch callbacks. Wire binary+lz4.
  replay     a fresh subscriber replays those N rows from the streams (from_seq=0, batch
             callbacks): ticks/s from run() to the last row.
  peer       the same JSON tick per message that `--wire json` carries, published by redis-py
             (pipelined, 1,000 PUBLISH a round trip) and read by a subscriber process that
             parses each tick: with redis-py's PubSub.get_message, and with a plain socket +
             hiredis reader (the faster client, so the ratio is not flattered). Ticks/s from
             first publish to last receipt; the ratio is e2e over peer.
  receive    binary+lz4 messages of 100 ticks, published from a pipelined process, received by
             redis-py's PubSub (get_message, hiredis parser) and by wayy.remote's RedisLink
             (plain socket + hiredis reader): messages/s each (redis-py 8.1.0 issue 4230).

    PYTHONPATH=. python benchmarks/bench_remote.py [--ticks 4000000] [--rate 100000] [--quick]
    PYTHONPATH=. python benchmarks/bench_remote.py --poll-governor-ab 3   # writers: pause vs always poll
    PYTHONPATH=. python benchmarks/bench_remote.py --latency-rounds 2     # latency phase only
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import signal
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

import wayy  # noqa: E402
from benchmarks._db import REPO, load_average, running_db  # noqa: E402
from redisutil import redis_server  # noqa: E402
from wayy import wire  # noqa: E402
from wayy.remote import RedisLink, Subscriber  # noqa: E402

FORK = mp.get_context("fork")
SYMBOLS = [f"S{i}" for i in range(8)]
WARM_SYMBOLS = [f"W{i}" for i in range(8)]  # warm_up's: no measured phase follows them
DB_ARGS = ("--shards", "2", "--feed", "none", "--capacity", str(1 << 23),
           "--ring-bytes", str(64 << 20))


# --- processes -----------------------------------------------------------------------------------

def start_broker(db: str, url: str, *args: str, probe: str | None = None) -> subprocess.Popen:
    """The broker as a process; with ``probe`` (a file), benchmarks/_broker_probe.py, which
    writes when each transaction was sent to that file when it exits."""
    log = open(os.path.join(db, "bench-broker.log"), "a")
    cmd = ([sys.executable, os.path.join(REPO, "benchmarks", "_broker_probe.py")] if probe
           else [sys.executable, "-m", "workers.broker"])
    env = dict(os.environ, WAYY_PROBE_OUT=probe) if probe else None
    p = subprocess.Popen([*cmd, "--db", db, "--redis", url, *args], stdout=log, stderr=log,
                         cwd=REPO, start_new_session=True, env=env)
    path = os.path.join(db, "broker-0.status.json")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                st = json.load(f)
            if st.get("pid") == p.pid and st.get("redis") == "ok" and st.get("per_shard"):
                return p
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    p.kill()
    raise RuntimeError("broker not ready")


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _producer(db: str, n: int, batch: int, k: int, go, symbols: list[str]) -> None:
    """``n`` trades in batches of ``batch``: ``symbols`` in turn, random-walk prices in
    cents, sizes 1..500, timestamps ~1 us apart (realistic deltas, not constant columns)."""
    p = wayy.Producer(db, timeout=60)
    rng = np.random.default_rng(k)
    syms = np.array([symbols[(i + k) % len(symbols)] for i in range(batch)])
    variants = []
    for _ in range(16):
        price = np.round(100 + np.cumsum(rng.integers(-2, 3, batch)) * 0.01, 2)
        size = rng.integers(1, 500, batch).astype(float)
        gaps = np.cumsum(rng.integers(200, 2000, batch))
        variants.append((price, size, gaps))
    go.wait()
    for i in range(n // batch):
        price, size, gaps = variants[i % 16]
        p.publish_batch("trades", {"symbol": syms, "price": price, "size": size,
                                   "ts": time.time_ns() + gaps})
    p.close()


def _timer_slack_1us() -> None:
    """Let short sleeps be short (the default 50 us slack makes sleep(1us) last 60 us)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def _paced_producer(db: str, rate: float, seconds: float, go, out) -> None:
    """``rate`` ticks/s for ``seconds``: each publish sends every tick due by then (one
    when on time, a few when the sleep overshot), stamped just before the publish. Sleeps
    between publishes, never spins: a spinning producer would take a core from the path
    being measured."""
    _timer_slack_1us()
    p = wayy.Producer(db, timeout=60)
    cap = 1000
    syms = np.array(["LAT"] * cap)
    price = np.full(cap, 100.0)
    size = np.full(cap, 1.0)
    go.wait()
    n_total = int(rate * seconds)
    sent = publishes = 0
    start = time.perf_counter()
    while sent < n_total:
        due = min(n_total, int((time.perf_counter() - start) * rate) + 1, sent + cap)
        m = due - sent
        if m <= 0:
            time.sleep(max(0.0, start + sent / rate - time.perf_counter()))
            continue
        if m == 1:
            p.publish("trades", symbol="LAT", price=100.0, size=1.0, ts=time.time_ns())
        else:
            p.publish_batch("trades", {"symbol": syms[:m], "price": price[:m],
                                       "size": size[:m], "ts": np.full(m, time.time_ns())})
        sent = due
        publishes += 1
    p.publish("trades", symbol="LAT", price=999_999.0, size=1.0, ts=time.time_ns())
    p.close()
    out.put(publishes)


# --- phases --------------------------------------------------------------------------------------

def phase_e2e(db: str, url: str, n: int, producers: int = 2,
              symbols: list[str] = SYMBOLS) -> dict:
    got = [0]
    done = [0.0]
    sub = Subscriber(url)

    def on_batch(b):
        got[0] += len(b)
        if got[0] >= n:
            done[0] = time.perf_counter()
            sub.stop()

    for s in symbols:
        sub.subscribe(f"ticks:{s}", on_batch, batch_size=65536, max_latency_ms=1)
    sub.run(timeout=0.5)  # connected, live
    go = FORK.Event()
    procs = [FORK.Process(target=_producer, args=(db, n // producers, 1000, k, go, symbols))
             for k in range(producers)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    go.set()
    sub.run(timeout=300)
    for p in procs:
        p.join()
    sub.close()
    if got[0] < n:
        raise RuntimeError(f"e2e: {got[0]} of {n} rows arrived")
    return {"ticks": n, "seconds": round(done[0] - t0, 3),
            "ticks_per_s": int(n / (done[0] - t0))}


def _redispy_publisher(url: str, n: int, go) -> None:
    import redis

    r = redis.Redis.from_url(url)
    body = [json.dumps({"timestamp": time.time_ns(), "symbol": "P", "venue": "",
                        "price": 100.25, "size": 100.0, "table": "trades", "shard": 0,
                        "seq": i}).encode() for i in range(1000)]
    go.wait()
    for j in range(n // 1000):
        pipe = r.pipeline(transaction=False)
        for m in body:
            pipe.publish("peer:P", m)
        pipe.execute()


def _redispy_counter(url: str, n: int, ready, out) -> None:
    import redis

    r = redis.Redis.from_url(url)
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe("peer:P")
    while ps.get_message(timeout=0.2) is None and not ps.subscribed:
        pass  # the subscribe confirmation (ignored: returns None)
    ready.set()
    got = 0
    while got < n:
        m = ps.get_message(timeout=5)
        if m is None:
            break
        json.loads(m["data"])  # a consumer reads its tick
        got += 1
    out.put((got, time.perf_counter()))


def _socket_counter(url: str, n: int, ready, out) -> None:
    link = RedisLink(url).connect()
    link.send(b"*2\r\n$9\r\nSUBSCRIBE\r\n$6\r\npeer:P\r\n")
    link.read_reply()
    ready.set()
    got = 0
    loads = json.loads
    while got < n:
        msgs = link.read_pending(5)
        if not msgs:
            break
        for m in msgs:
            loads(m[2])
        got += len(msgs)
    out.put((got, time.perf_counter()))


def phase_peer(url: str, n: int, counter) -> dict:
    ready, go, out = FORK.Event(), FORK.Event(), FORK.Queue()
    c = FORK.Process(target=counter, args=(url, n, ready, out))
    c.start()
    ready.wait(30)
    p = FORK.Process(target=_redispy_publisher, args=(url, n, go))
    p.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    go.set()
    got, t1 = out.get(timeout=600)
    p.join()
    c.join()
    return {"ticks": got, "seconds": round(t1 - t0, 3), "ticks_per_s": int(got / (t1 - t0))}


def _binary_publisher(url: str, msgs: int, ready) -> None:
    link = RedisLink(url).connect()
    n = 100
    wb = wire.WireBatch("trades", 0, "RX", [""], np.zeros(n, np.int32),
                        time.time_ns() + np.arange(n) * 1000, np.arange(n),
                        {"price": np.round(100 + np.random.default_rng(1).random(n), 2),
                         "size": np.full(n, 100.0)})
    m = wire.encode_binary(wb)
    import hiredis

    cmd = hiredis.pack_command(("PUBLISH", "rx:RX", m)) * 1000
    ready.wait()
    for _ in range(msgs // 1000):
        link.send(cmd)
        for _ in range(1000):
            link.read_reply()


def _recv_redispy(url: str, msgs: int, ready, out) -> None:
    import redis

    ps = redis.Redis.from_url(url).pubsub(ignore_subscribe_messages=True)
    ps.subscribe("rx:RX")
    ps.get_message(timeout=1)
    ready.set()
    got = 0
    t0 = None
    while got < msgs:
        m = ps.get_message(timeout=5)
        if m is None:
            break
        if t0 is None:
            t0 = time.perf_counter()
        got += 1
    out.put((got, time.perf_counter() - t0))


def _recv_wayy(url: str, msgs: int, ready, out) -> None:
    link = RedisLink(url).connect()
    link.send(b"*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nrx:RX\r\n")
    link.read_reply()
    ready.set()
    got = 0
    t0 = None
    while got < msgs:
        batch = link.read_pending(5)
        if not batch:
            break
        if t0 is None:
            t0 = time.perf_counter()
        got += len(batch)
    out.put((got, time.perf_counter() - t0))


def phase_receive(url: str, msgs: int) -> dict:
    res = {}
    for name, fn in (("redis_py_pubsub", _recv_redispy), ("wayy_socket_hiredis", _recv_wayy)):
        ready, out = FORK.Event(), FORK.Queue()
        c = FORK.Process(target=fn, args=(url, msgs, ready, out))
        c.start()
        p = FORK.Process(target=_binary_publisher, args=(url, msgs, ready))
        p.start()
        got, secs = out.get(timeout=600)
        p.join()
        c.join()
        res[name] = {"messages": got, "msgs_per_s": int(got / secs)}
    res["ratio"] = round(res["wayy_socket_hiredis"]["msgs_per_s"] /
                         res["redis_py_pubsub"]["msgs_per_s"], 2)
    return res


def phase_latency(db: str, url: str, rate: float, seconds: float,
                  stamps: list | None = None) -> dict:
    """Producer -> remote callback latency; with ``stamps`` (a list), also every tick's
    (seq, ts, when its message was read from the socket, callback time)."""
    lat: list[int] = []
    sub = Subscriber(url)
    read_ns = [0]
    if stamps is not None:  # the subscriber's socket reads, stamped (this Subscriber only)
        link = sub._ps  # noqa: SLF001  (a probe of the benchmark's own subscriber)
        real = link.read_pending

        def read_pending(timeout):
            got = real(timeout)
            if got:
                read_ns[0] = time.time_ns()
            return got
        link.read_pending = read_pending

    def on_tick(t):
        now = time.time_ns()
        lat.append(now - t.ts)
        if stamps is not None:
            stamps.append((t.seq, t.ts, read_ns[0], now))
        if t.price == 999_999.0:
            sub.stop()

    sub.subscribe("ticks:LAT", on_tick)
    sub.run(timeout=0.5)
    go, out = FORK.Event(), FORK.Queue()
    p = FORK.Process(target=_paced_producer, args=(db, rate, seconds, go, out))
    p.start()
    time.sleep(0.5)
    go.set()
    sub.run(timeout=seconds + 60)
    publishes = out.get(timeout=60)
    p.join()
    sub.close()
    a = np.array(lat[len(lat) // 10:-1], dtype=np.float64) / 1e3
    return {"rate": rate, "ticks": len(lat) - 1,
            "rows_per_publish": round((len(lat) - 1) / max(publishes, 1), 2),
            "p50_us": round(float(np.percentile(a, 50)), 1),
            "p99_us": round(float(np.percentile(a, 99)), 1),
            "max_us": round(float(a.max()), 1)}


def phase_breakdown(url: str, rates: list[float], seconds: float) -> list[dict]:
    """The latency path split at the broker's send and the subscriber's socket read, with a
    probing broker on a database of its own: p50 / p90 of tick ts -> broker sent the
    transaction, -> the subscriber read the message, -> the callback ran; per rate."""
    import bisect
    import tempfile

    runs: list[tuple[float, list]] = []
    with tempfile.TemporaryDirectory(prefix="wayy-bench-probe-") as tmp, \
            running_db(*DB_ARGS) as db:
        probe = os.path.join(tmp, "sent.json")
        b = start_broker(db, url, "--retention", "none", probe=probe)
        try:
            for rate in rates:
                stamps: list = []
                phase_latency(db, url, rate, seconds, stamps)
                runs.append((rate, stamps))
        finally:
            stop(b)
        with open(probe) as f:
            sent = {int(k): v for k, v in json.load(f).items()}
    keys = sorted(sent)
    out = []
    for rate, stamps in runs:
        parts: dict[str, list[int]] = {"to_broker_send": [], "send_to_socket_read": [],
                                       "read_to_callback": [], "total": []}
        for seq, ts, rd, cb in stamps[len(stamps) // 10:-1]:
            i = bisect.bisect_left(keys, seq)  # the entry holding the tick: first last >= it
            if i == len(keys):
                continue
            s = sent[keys[i]]
            for name, v in (("to_broker_send", s - ts), ("send_to_socket_read", rd - s),
                            ("read_to_callback", cb - rd), ("total", cb - ts)):
                parts[name].append(v)
        row: dict = {"rate": rate, "ticks": len(parts["total"])}
        for name, v in parts.items():
            arr = np.array(v, dtype=np.float64) / 1e3
            row[name] = {"p50_us": round(float(np.percentile(arr, 50)), 1),
                         "p90_us": round(float(np.percentile(arr, 90)), 1)}
        out.append(row)
    return out


def phase_replay(url: str, n: int) -> dict:
    got = [0]
    sub = Subscriber(url)

    def on_batch(b):
        got[0] += len(b)
        if got[0] >= n:
            sub.stop()

    for s in SYMBOLS:
        sub.subscribe(f"ticks:{s}", on_batch, batch_size=65536, max_latency_ms=1,
                      from_seq=0)
    t0 = time.perf_counter()
    sub.run(timeout=300)
    t1 = time.perf_counter()
    sub.close()
    if got[0] < n:
        raise RuntimeError(f"replay: {got[0]} of {n} rows")
    return {"ticks": got[0], "seconds": round(t1 - t0, 3), "ticks_per_s": int(got[0] / (t1 - t0))}


def warm_up(db: str, url: str) -> None:
    """Every measured path once, unmeasured. On a fresh machine numba compiles each kernel
    the first time any process calls it (seconds each: a cold first run measured 0.2 M
    ticks/s end to end and 20 ms latency at 10k ticks/s, against 3 M and ~0.5 ms warm).
    The producer kernels are also loaded here, in this process, so the producers forked
    later start with them in memory instead of loading them from the cache after ``go``."""
    p = wayy.Producer(db, timeout=60)
    p.publish("trades", symbol="WARM", price=100.0, size=1.0, ts=time.time_ns())
    for syms in (np.array(["WARM"] * 4), np.array(WARM_SYMBOLS)):  # one shard, then several
        m = len(syms)
        p.publish_batch("trades", {"symbol": syms, "price": np.full(m, 100.0),
                                   "size": np.full(m, 1.0), "ts": np.full(m, time.time_ns())})
    p.flush()
    p.close()
    phase_latency(db, url, 10_000, 0.3)
    phase_e2e(db, url, 100_000, symbols=WARM_SYMBOLS)


def phase_governor_ab(rounds: int, rate: float, seconds: float) -> dict:
    """The latency phase with the writers' poll governor on (the default) and off
    (``WAYY_POLL_GOVERNOR=0``: writers always poll), alternating, each on a fresh database
    and broker: p50 / p99 per round and rate, and the median of each."""
    import tempfile

    runs: dict[str, list] = {"governor": [], "always_poll": []}
    with tempfile.TemporaryDirectory(prefix="wayy-bench-redis-") as tmp, \
            redis_server(tmp) as srv:
        for _ in range(rounds):
            for name, flag in (("governor", "1"), ("always_poll", "0")):
                env = dict(os.environ, WAYY_POLL_GOVERNOR=flag)
                with running_db(*DB_ARGS, env=env) as db:
                    b = start_broker(db, srv.url, "--retention", "none")
                    try:
                        warm_up(db, srv.url)
                        runs[name].append([phase_latency(db, srv.url, r, seconds)
                                           for r in (rate / 10, rate)])
                    finally:
                        stop(b)
                srv.client().flushall()  # the next database claims the Redis afresh
                _note(runs)
    out: dict = {}
    for name, rs in runs.items():
        out[name] = {}
        for i, r in enumerate((rate / 10, rate)):
            p50 = [x[i]["p50_us"] for x in rs]
            p99 = [x[i]["p99_us"] for x in rs]
            out[name][f"{int(r) // 1000}k"] = {"p50_runs": p50, "p99_runs": p99,
                                               "p50_median": float(np.median(p50)),
                                               "p99_median": float(np.median(p99))}
    return out


def _note(out: dict) -> None:
    print(json.dumps(out), file=sys.stderr, flush=True)  # progress, in case a phase fails


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=4_000_000)
    ap.add_argument("--rate", type=float, default=100_000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--peer-ticks", type=int, default=300_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--latency-rounds", type=int, metavar="ROUNDS", default=0,
                    help="only the latency phase (10k and 100k ticks/s by default), ROUNDS "
                         "times on one database and broker: to compare two checkouts, run "
                         "it in each, alternating")
    ap.add_argument("--poll-governor-ab", type=int, metavar="ROUNDS", default=0,
                    help="only the latency phase, ROUNDS times on databases whose writers "
                         "pause polling under CPU contention (the default) and on ones "
                         "that always poll (WAYY_POLL_GOVERNOR=0), alternating")
    a = ap.parse_args()
    if a.quick:
        a.ticks, a.seconds, a.peer_ticks = 1_000_000, 1.5, 100_000
    out = {"bench": "remote", "python": platform.python_version(), "cpus": os.cpu_count(),
           "load_before": load_average()}
    import tempfile

    if a.latency_rounds:
        with tempfile.TemporaryDirectory(prefix="wayy-bench-redis-") as tmp, \
                redis_server(tmp) as srv, running_db(*DB_ARGS) as db:
            b = start_broker(db, srv.url, "--retention", "none")
            try:
                warm_up(db, srv.url)
                out["latency_rounds"] = [[phase_latency(db, srv.url, r, a.seconds)
                                          for r in (a.rate / 10, a.rate)]
                                         for _ in range(a.latency_rounds)]
            finally:
                stop(b)
        out["load_after"] = load_average()
        print(json.dumps(out))
        return
    if a.poll_governor_ab:
        out["poll_governor_ab"] = phase_governor_ab(a.poll_governor_ab, a.rate, a.seconds)
        out["load_after"] = load_average()
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory(prefix="wayy-bench-redis-") as tmp, \
            redis_server(tmp) as srv:
        with running_db(*DB_ARGS) as db:
            b = start_broker(db, srv.url, "--retention", "none")
            try:
                warm_up(db, srv.url)
                out["latency"] = [phase_latency(db, srv.url, r, a.seconds)
                                  for r in (a.rate / 10, a.rate)]
                _note(out)
                out["e2e_binary_lz4"] = phase_e2e(db, srv.url, a.ticks)
                _note(out)
                out["replay"] = phase_replay(srv.url, a.ticks)
                _note(out)
                time.sleep(0.7)  # the broker rewrites its status file every 0.5 s
                with open(os.path.join(db, "broker-0.status.json")) as f:
                    st = json.load(f)
                out["broker"] = {k: st[k] for k in ("transactions", "published_rows",
                                                    "messages", "bytes", "stream_entries")}
                out["broker"]["bytes_per_tick"] = round(st["bytes"] / st["published_rows"], 2)
            finally:
                stop(b)
        srv.client().flushall()  # the probing broker's database claims the Redis afresh
        out["latency_breakdown"] = phase_breakdown(srv.url, [a.rate / 10, a.rate], a.seconds)
        _note(out)
        srv.client().flushall()
        # the peer's subscriber is slower than its publisher: without this Redis drops it
        # (client-output-buffer-limit pubsub) and the peer never finishes
        srv.client().config_set("client-output-buffer-limit", "pubsub 0 0 0")
        out["peer_json_per_tick_redis_py"] = phase_peer(srv.url, a.peer_ticks,
                                                        _redispy_counter)
        _note(out)
        out["peer_json_per_tick_socket"] = phase_peer(srv.url, a.peer_ticks, _socket_counter)
        e2e = out["e2e_binary_lz4"]["ticks_per_s"]
        out["e2e_ratio_vs_peer_redis_py"] = round(
            e2e / out["peer_json_per_tick_redis_py"]["ticks_per_s"], 1)
        out["e2e_ratio_vs_peer_socket"] = round(
            e2e / out["peer_json_per_tick_socket"]["ticks_per_s"], 1)
        out["receive_binary_100_tick_batches"] = phase_receive(srv.url, 100_000)
    out["load_after"] = load_average()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
