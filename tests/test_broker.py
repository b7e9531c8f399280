"""The broker (workers/broker.py): a real database, a real redis-server, the broker as a real
process — publishes every committed batch once, in seq order, with its cursor in the same
transaction, and survives SIGKILL, Redis restarts and an unreachable Redis.

Helpers here (BrokerProc, produce, expected_rows, collect) are shared with test_remote.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import wayy
from conftest import REPO, wait_for, wayy_cmd
from redisutil import RedisProc, free_port, redis_server
from shm.layout import shard as S
from wayy import wire
from wayy.remote import BROKER_CURSORS_KEY, OWNER_FIELD, Subscriber, parse_id

PASSWORD = "test-pw-1"
DB_ARGS = ("--shards", "2", "--feed", "none", "--capacity", "1048576",
           "--ring-bytes", str(4 * 2**20))


# --- helpers -------------------------------------------------------------------------------------

class BrokerProc:
    """``python -m workers.broker`` as a child process; killed or stopped by the fixture."""

    def __init__(self, db_path: str, url: str, *args: str, index: int = 0) -> None:
        self.db_path = db_path
        self.url = url
        self.args = args
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(db_path, f"test-broker-{index}.log")
        self.starts = 0

    @property
    def status_path(self) -> str:
        return os.path.join(self.db_path, f"broker-{self.index}.status.json")

    def start(self) -> "BrokerProc":
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.broker", "--db", self.db_path, "--redis", self.url,
             "--index", str(self.index), *self.args],
            stdout=log, stderr=log, cwd=REPO, start_new_session=True)
        log.close()
        self.starts += 1
        return self

    def status(self) -> dict | None:
        try:
            with open(self.status_path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return None
        return doc if self.proc is not None and doc.get("pid") == self.proc.pid else None

    def wait_ready(self, timeout: float = 120.0) -> dict:
        """Until this process reports Redis ok and its shards attached."""
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited with {self.proc.returncode}:\n{self.log()}")
            st = self.status()
            return st if st and st.get("redis") == "ok" and st.get("per_shard") else None
        return wait_for(ready, timeout, 0.02, "broker ready")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()


@pytest.fixture
def brokers():
    """Start brokers on demand; every one is stopped at the end, even on failure."""
    made: list[BrokerProc] = []

    def make(db_path: str, url: str, *args: str, index: int = 0, wait: bool = True):
        b = BrokerProc(db_path, url, *args, index=index).start()
        made.append(b)
        if wait:
            b.wait_ready()
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def redis_srv(tmp_path):
    with redis_server(tmp_path / "redis", password=PASSWORD, appendonly=True) as srv:
        yield srv


PRODUCER = r"""
import sys, time, numpy as np, wayy
path = sys.argv[1]
n, batch, pause, seed = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
syms = sys.argv[6].split(",")
venues = ["X1", "X2", ""]
rng = np.random.default_rng(seed)
p = wayy.Producer(path, timeout=30)
sent = 0
while sent < n:
    m = min(batch, n - sent)
    sym = np.array([syms[i % len(syms)] for i in range(sent, sent + m)])
    ven = np.array([venues[(i // len(syms)) % 3] for i in range(sent, sent + m)])
    ts = time.time_ns() + np.arange(m)
    if (sent // batch) % 3 == 2:
        bid = np.round(100 + rng.random(m), 2)
        p.publish_batch("quotes", {"ts": ts, "symbol": sym, "venue": ven, "bid": bid,
                                   "ask": bid + 0.01, "bid_size": np.full(m, 5.0),
                                   "ask_size": np.full(m, 7.0)})
    else:
        p.publish_batch("trades", {"ts": ts, "symbol": sym, "venue": ven,
                                   "price": np.round(100 + rng.random(m), 2),
                                   "size": rng.integers(1, 100, m).astype(float)})
    sent += m
    if pause:
        time.sleep(pause)
print("done", sent, flush=True)
"""


def start_producer(db_path: str, n: int, batch: int, pause: float, symbols: list[str],
                   seed: int = 1) -> subprocess.Popen:
    """A producer process: ``n`` rows in batches (trades, trades, quotes, ...), venues X1,
    X2 and "" in turn, symbols in turn."""
    return subprocess.Popen([sys.executable, "-c", PRODUCER, db_path, str(n), str(batch),
                             str(pause), str(seed), ",".join(symbols)], cwd=REPO)


def produce(db_path: str, n: int, batch: int, symbols: list[str], seed: int = 1) -> None:
    p = start_producer(db_path, n, batch, 0.0, symbols, seed)
    assert p.wait(120) == 0


def expected_rows(db_path: str, channel: str) -> list[tuple[int, int]]:
    """(shard, seq) of every committed row of ``channel``, in seq order, from the database."""
    ch = wayy.parse_channel(channel)
    with wayy.attach(db_path) as db:
        res = db[ch.table].between(symbol=ch.symbol)
        seq = res["seq"]
        if ch.venue is not None:
            seq = seq[res["venue"] == ch.venue]
        k = wayy.shard_of(ch.symbol, db.nshards)
    return [(k, int(s)) for s in np.sort(seq)]


class Collector:
    """Callback that records (shard, seq) of every tick (or batch row) delivered."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int]] = []
        self.ticks: list = []

    def tick(self, t) -> None:
        self.rows.append((t.shard, t.seq))
        self.ticks.append(t)

    def batch(self, b) -> None:
        self.rows.extend((b.shard, int(s)) for s in b["seq"])


def run_until(sub: Subscriber, cond, timeout: float = 60.0, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; stats {sub.stats()}")
        sub.run(timeout=step)


def stream_entries(client, key: str) -> list[tuple[tuple[int, int], dict, wire.WireBatch]]:
    out = []
    for eid, fields in client.xrange(key):
        out.append((parse_id(eid), fields, wire.decode(fields[b"d"])))
    return out


def check_stream(client, key: str, rows: list[tuple[int, int]]) -> None:
    """Ids strictly increase, encode (running max ts ms, last seq), chain by ``p``, and the
    entries hold exactly ``rows``."""
    got = []
    prev_id = (-1, -1)
    prev_last = -1
    run_max = 0
    for (ms, n), fields, wb in stream_entries(client, key):
        assert (ms, n) > prev_id
        run_max = max(run_max, int(wb.ts.max()) // 1_000_000)
        assert ms == run_max
        assert n == int(wb.seq[-1])
        assert int(fields[b"p"]) == prev_last
        assert int(fields[b"k"]) == wb.shard
        prev_id, prev_last = (ms, n), n
        got.extend((wb.shard, int(s)) for s in wb.seq)
    assert got == rows


# --- tests ---------------------------------------------------------------------------------------

def test_every_batch_once_in_seq_order_with_cursor(db_factory, redis_srv, brokers):
    db = db_factory(*DB_ARGS)
    produce(db.path, 3000, 250, ["AAA", "BBB", "CCC"])  # history, before any subscriber
    brokers(db.path, redis_srv.url)
    chans = ["ticks:AAA", "quotes:BBB", "ticks:AAA:X1", "ticks:CCC:X2"]
    cols = {c: Collector() for c in chans}
    sub = Subscriber(redis_srv.url)
    for c in chans:
        sub.subscribe(c, cols[c].tick, from_seq=0)
    run_until(sub, lambda: all(cols[c].rows for c in chans))
    prod = start_producer(db.path, 6000, 100, 0.002, ["AAA", "BBB", "CCC"], seed=2)  # live
    try:
        def complete():
            return prod.poll() is not None and all(
                len(cols[c].rows) == len(expected_rows(db.path, c)) for c in chans)
        run_until(sub, complete)
    finally:
        prod.wait(60)
        sub.stop()
    for c in chans:
        want = expected_rows(db.path, c)
        assert cols[c].rows == want, c  # every row once, in seq order
        assert len(want) > 100
    t = cols["ticks:AAA"].ticks[0]
    assert t.table == "trades" and t.symbol == "AAA" and t.price > 0 and t.bid is None
    assert sub.stats()["channels"]["ticks:AAA"]["bad_messages"] == 0

    c = redis_srv.client()
    for ch in ("ticks:AAA", "quotes:BBB", "ticks:CCC"):
        key = ch + ":stream"
        check_stream(c, key, expected_rows(db.path, ch))
    with wayy.attach(db.path) as w:
        nxt = {k: int(w.shards[k].snapshot()[S.COMMIT_NEXT_SEQ]) for k in range(w.nshards)}
        last = {}
        for table in ("trades", "quotes"):
            r = w[table].between()
            shard = np.array([wayy.shard_of(x, w.nshards) for x in r["symbol"]])
            for k in range(w.nshards):
                last[(k, table)] = int(np.max(r["seq"][shard == k], initial=-1))
    cur = {k.decode(): int(v) for k, v in c.hgetall(BROKER_CURSORS_KEY).items()
           if b":" in k}
    # the status file is rewritten every 0.5 s: wait for one written after the last commit
    st = wait_for(lambda: (lambda s: s if all(
        s["per_shard"][str(k)]["lag_rows"] == 0 and s["per_shard"][str(k)]["next_seq"] == nxt[k]
        for k in (0, 1)) else None)(
        json.load(open(os.path.join(db.path, "broker-0.status.json")))), 10,
        what="broker status lag 0")
    for k in (0, 1):
        head = st["per_shard"][str(k)]["next_seq"]
        # each table's cursor is past its last published row; a table whose last rows came
        # before the other's may keep a lower cursor (nothing of it lies between)
        assert max(cur[f"{k}:trades"], cur[f"{k}:quotes"]) == head == nxt[k]
        for table in ("trades", "quotes"):
            assert cur[f"{k}:{table}"] > last[(k, table)]  # every row of the table is behind
    assert st["redis"] == "ok" and st["published_rows"] == 9000 and st["errors"] == 0


def test_json_channel_read_by_redis_cli(db_factory, redis_srv, brokers):
    db = db_factory(*DB_ARGS)
    brokers(db.path, redis_srv.url, "--wire", "json")
    cli = subprocess.Popen(["redis-cli", "-p", str(redis_srv.port), "-a", PASSWORD,
                            "--no-auth-warning", "--raw", "SUBSCRIBE", "ticks:JSN"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(x.strip() for x in cli.stdout),
                              daemon=True)
    reader.start()
    try:
        wait_for(lambda: "subscribe" in lines, 10, what="redis-cli subscribed")
        p = wayy.Producer(db.path)
        for i in range(20):
            p.publish("trades", symbol="JSN", venue="NYSE", price=10.5 + i, size=100 + i)
        p.close()
        wait_for(lambda: sum(x.startswith("{") for x in lines) >= 20, 30,
                 what="20 JSON ticks from redis-cli")
    finally:
        cli.kill()
        cli.wait()
        reader.join(5)
    ticks = [json.loads(x) for x in lines if x.startswith("{")]
    assert len(ticks) == 20
    want = expected_rows(db.path, "ticks:JSN")
    for i, t in enumerate(ticks):
        assert set(t) == {"timestamp", "symbol", "venue", "price", "size", "table", "shard",
                          "seq"}
        assert (t["symbol"], t["venue"], t["table"]) == ("JSN", "NYSE", "trades")
        assert (t["price"], t["size"]) == (10.5 + i, 100 + i)
        assert (t["shard"], t["seq"]) == want[i]
        assert isinstance(t["timestamp"], int) and t["timestamp"] > 1_600_000_000 * 10**9
    # the stream holds binary batches even when the channels carry JSON
    wb = wire.decode(redis_srv.client().xrange("ticks:JSN:stream")[0][1][b"d"])
    assert wb.symbol == "JSN" and [int(s) for s in wb.seq] == [s for _, s in want[:len(wb)]]


@pytest.mark.slow
def test_redis_unreachable_at_start_then_up(db_factory, tmp_path, brokers):
    db = db_factory(*DB_ARGS)
    port = free_port()
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    b = brokers(db.path, url, wait=False)

    def down():
        st = b.status()
        return st if st and st["redis"] == "down" else None
    st = wait_for(down, 60, what="broker reports Redis down")
    assert "connect" in st["redis_error"]
    produce(db.path, 500, 100, ["UNR"])  # the shards do not notice
    with wayy.attach(db.path) as w:
        assert len(w["trades"]) + len(w["quotes"]) == 500
    assert all(s["state"] == "running" for s in db.status()["shards"])
    assert b.proc.poll() is None
    srv = RedisProc(str(tmp_path / "late-redis"), port=port, password=PASSWORD)
    try:
        srv.start()
        b.wait_ready()
        col = Collector()
        sub = Subscriber(url)
        sub.subscribe("ticks:UNR", col.tick, from_seq=0)
        want = expected_rows(db.path, "ticks:UNR")
        run_until(sub, lambda: len(col.rows) >= len(want))
        sub.stop()
        assert col.rows == want
        assert b.status()["reconnects"] >= 1
    finally:
        srv.stop()


@pytest.mark.slow
def test_brokers_split_shards(db_factory, redis_srv, brokers):
    db = db_factory(*DB_ARGS)
    b0 = brokers(db.path, redis_srv.url, "--shards", "0", index=0)
    b1 = brokers(db.path, redis_srv.url, "--shards", "1", index=1)
    syms = ["S1", "S2", "S3", "S4", "S5", "S6"]
    produce(db.path, 1200, 200, syms)
    wait_for(lambda: b0.status()["per_shard"]["0"]["lag_rows"] == 0
             and b1.status()["per_shard"]["1"]["lag_rows"] == 0, 30, what="both published")
    assert set(b0.status()["per_shard"]) == {"0"} and set(b1.status()["per_shard"]) == {"1"}
    c = redis_srv.client()
    for s in syms:
        check_stream(c, f"ticks:{s}:stream", expected_rows(db.path, f"ticks:{s}"))
    # the status files are rewritten every 0.5 s, counters and cursors not in one snapshot
    wait_for(lambda: b0.status()["published_rows"] + b1.status()["published_rows"] == 1200,
             10, what="both brokers' counters")


def test_a_second_broker_of_the_same_shard_is_refused(db_factory, redis_srv, brokers):
    """One broker per shard: a second one (started by hand beside the first) would publish
    every batch twice. It exits at once naming the shard and the broker that holds it; one
    for another shard runs; once the first is killed, the shard is free again."""
    db = db_factory(*DB_ARGS)
    b0 = brokers(db.path, redis_srv.url, "--shards", "0", index=0)
    r = subprocess.run([sys.executable, "-m", "workers.broker", "--db", db.path, "--redis",
                        redis_srv.url, "--index", "1"], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 1, r.stderr
    assert f"shard 0 of {db.path} is already published by another broker (pid {b0.proc.pid})" \
        in r.stderr and "Traceback" not in r.stderr
    # the refused broker leaves no status file behind (status would list a dead broker)
    assert not os.path.exists(os.path.join(db.path, "broker-1.status.json"))
    # nor does one of the same index overwrite the running broker's
    r = subprocess.run([sys.executable, "-m", "workers.broker", "--db", db.path, "--redis",
                        redis_srv.url, "--index", "0"], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 1 and "already published" in r.stderr, r.stderr
    assert b0.status() is not None and b0.status()["redis"] == "ok"
    brokers(db.path, redis_srv.url, "--shards", "1", index=1)  # its own shard: runs
    b0.kill()
    brokers(db.path, redis_srv.url, "--shards", "0", index=2)  # the lock died with it


@pytest.mark.slow
def test_retention_trims_streams(db_factory, redis_srv, brokers):
    db = db_factory(*DB_ARGS)
    brokers(db.path, redis_srv.url, "--retention", "maxlen=50")
    c = redis_srv.client()

    def added() -> int:
        try:
            return int(c.xinfo_stream("ticks:RET:stream")["entries-added"])
        except Exception:  # noqa: BLE001  (no stream yet)
            return 0

    p = wayy.Producer(db.path)
    i = 0
    deadline = time.monotonic() + 120
    while added() < 400:  # one row per publish, paced: many transactions, many entries
        assert time.monotonic() < deadline, "the broker made too few stream entries"
        for _ in range(20):
            p.publish("trades", symbol="RET", price=1.0 + i, size=1.0)
            i += 1
            time.sleep(0.001)
    p.close()
    want = expected_rows(db.path, "ticks:RET")[-1][1]
    wait_for(lambda: parse_id(c.xrevrange("ticks:RET:stream", count=1)[0][0])[1] == want, 30,
             what="last row in the stream")
    n = c.xlen("ticks:RET:stream")
    # MAXLEN ~ 50 trims whole nodes (100 entries each), never below 50
    assert 50 <= n <= 250 < added()


def test_retention_specs():
    from workers.broker import Retention

    assert Retention.parse("maxlen=1000").trim_args(5) == (b"MAXLEN", b"~", 1000)
    assert Retention.parse("age=2m").trim_args(200_000) == (b"MINID", b"~", 80_000)
    assert Retention.parse("6h") == Retention(age_ms=6 * 3600 * 1000)
    assert Retention.parse("age=30").trim_args(10) == (b"MINID", b"~", 0)
    # an M raised by a tick stamped a day ahead trims from the clock, not from that tick
    now_ms = time.time_ns() // 1_000_000
    _, _, minid = Retention.parse("age=30").trim_args(now_ms + 86_400_000)
    assert now_ms - 30_000 <= minid <= time.time_ns() // 1_000_000 - 30_000
    assert Retention.parse("none").trim_args(10) == ()
    for bad in ("maxlen=0", "maxlen=5m", "size=3", "age=-1", "1w"):
        with pytest.raises(wayy.InvalidInput):
            Retention.parse(bad)


@pytest.mark.slow
def test_broker_sigkill_repeatedly_under_load(db_factory, redis_srv, brokers, tmp_path):
    db = db_factory(*DB_ARGS)
    b = brokers(db.path, redis_srv.url)
    chans = ["ticks:KA", "quotes:KB", "ticks:KC:X2"]
    cols = {c: Collector() for c in chans}
    sub = Subscriber(redis_srv.url)
    for c in chans:
        sub.subscribe(c, cols[c].batch, batch_size=300, max_latency_ms=20, from_seq=0,
                      checkpoint=str(tmp_path / f"{c.replace(':', '_')}.ckpt"))
    prod = start_producer(db.path, 60_000, 50, 0.01, ["KA", "KB", "KC"], seed=3)  # ~12 s
    kills = 0
    try:
        next_kill = time.monotonic() + 0.3
        while prod.poll() is None or kills < 5:
            sub.run(timeout=0.1)
            if time.monotonic() >= next_kill:
                b.kill()  # SIGKILL at an arbitrary point of its loop
                kills += 1
                b.start()
                b.wait_ready()
                next_kill = time.monotonic() + 0.2 + 0.4 * (kills % 3) / 2
        run_until(sub, lambda: all(len(cols[c].rows) == len(expected_rows(db.path, c))
                                   for c in chans), timeout=120)
    finally:
        prod.wait(60)
        sub.stop()
    assert kills >= 5
    for c in chans:
        assert cols[c].rows == expected_rows(db.path, c), c
    c = redis_srv.client()
    for ch in ("ticks:KA", "quotes:KB", "ticks:KC"):
        check_stream(c, ch + ":stream", expected_rows(db.path, ch))  # no entry twice


@pytest.mark.slow
def test_redis_killed_and_restarted_with_appendonly(db_factory, redis_srv, brokers, tmp_path):
    db = db_factory(*DB_ARGS)
    b = brokers(db.path, redis_srv.url)
    chans = ["ticks:RA", "quotes:RB"]
    cols = {c: Collector() for c in chans}
    sub = Subscriber(redis_srv.url)
    for c in chans:
        sub.subscribe(c, cols[c].tick, from_seq=0,
                      checkpoint=str(tmp_path / f"{c.replace(':', '_')}.ckpt"))
    prod = start_producer(db.path, 8000, 40, 0.01, ["RA", "RB"], seed=4)  # >= 2 s
    try:
        run_until(sub, lambda: len(cols["ticks:RA"].rows) > 300)
        redis_srv.kill()  # SIGKILL: the last second of the append-only file may be lost
        t_end = time.monotonic() + 0.5
        while time.monotonic() < t_end:
            sub.run(timeout=0.1)  # the subscriber meets a dead Redis: retries
        redis_srv.start()
        run_until(sub, lambda: len(cols["ticks:RA"].rows) > 1000)
        assert prod.poll() is None  # still publishing
        redis_srv.restart()  # clean restart (SIGTERM: the file is complete)
        run_until(sub, lambda: prod.poll() is not None and all(
            len(cols[c].rows) == len(expected_rows(db.path, c)) for c in chans), timeout=90)
    finally:
        prod.wait(60)
        sub.stop()
    for c in chans:
        assert cols[c].rows == expected_rows(db.path, c), c
    assert sub.stats()["reconnects"] >= 2
    wait_for(lambda: b.status()["reconnects"] >= 2 and b.status()["redis"] == "ok", 10,
             what="the broker saw both restarts")  # idle, it pings
    c = redis_srv.client()
    for ch in chans:
        check_stream(c, ch + ":stream", expected_rows(db.path, ch))


def test_supervisor_starts_the_broker(db_factory, redis_srv):
    """`wayy start --redis URL` forks workers.broker.run: the same data reaches Redis."""
    db = db_factory("--shards", "2", "--feed", "none", "--redis", redis_srv.url)
    wait_for(lambda: any(b.get("redis") == "ok" for b in _broker_docs(db.path)), 60,
             what="supervisor's broker up")
    col = Collector()
    sub = Subscriber(redis_srv.url)
    sub.subscribe("ticks:SUP", col.tick, from_seq=0)
    produce(db.path, 300, 100, ["SUP"])
    want = expected_rows(db.path, "ticks:SUP")
    run_until(sub, lambda: len(col.rows) >= len(want))
    sub.stop()
    assert col.rows == want
    # `wayy tail` finds the URL and the credentials from the running database
    r = subprocess.run([sys.executable, "-m", "wayy.cli", "tail", "ticks:SUP", "--db", db.path,
                        "--from-seq", "0", "--count", "3", "--json"], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["seq"] for x in r.stdout.splitlines()] == [s for _, s in want[:3]]
    # the same Redis named by a URL without its password: the database's credentials apply
    bare = f"redis://127.0.0.1:{redis_srv.port}/0"
    r = subprocess.run([sys.executable, "-m", "wayy.cli", "tail", "ticks:SUP", "--remote", bare,
                        "--db", db.path, "--from-seq", "0", "--count", "1"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "wayy.cli", "tail", "ticks:SUP", "--remote", bare,
                        "--db", "/nonexistent", "--count", "1"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode != 0 and "give --password" in r.stderr
    # the password from a file (not in the process listing), never from both sources
    pw_file = os.path.join(os.path.dirname(db.path), "tail-password")
    with open(pw_file, "w") as f:
        f.write(PASSWORD + "\n")
    base = [sys.executable, "-m", "wayy.cli", "tail", "ticks:SUP", "--remote", bare,
            "--db", "/nonexistent", "--from-seq", "0", "--count", "1"]
    r = subprocess.run([*base, "--password-file", pw_file], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1, r.stderr
    r = subprocess.run([*base, "--password-file", pw_file, "--password", "x"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 1 and "not both" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*base, "--password-file", pw_file + ".missing"], capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode != 0 and "--password-file" in r.stderr and "Traceback" not in r.stderr


def _broker_docs(path: str) -> list[dict]:
    from wayy.remote import read_broker_status

    return [d for d in read_broker_status(path) if d["alive"]]


@pytest.mark.slow
def test_start_latest_skips_history_and_keeps_its_place(db_factory, redis_srv, brokers):
    db = db_factory(*DB_ARGS)
    produce(db.path, 400, 100, ["LTS"])  # history: not published with --start latest
    b = brokers(db.path, redis_srv.url, "--start", "latest")
    c = redis_srv.client()
    history = expected_rows(db.path, "ticks:LTS")
    cur = {k.decode(): int(v) for k, v in c.hgetall(BROKER_CURSORS_KEY).items()
           if b":" in k}
    k = history[0][0]
    assert cur[f"{k}:trades"] == history[-1][1] + 1  # written before any publish
    b.kill()
    produce(db.path, 400, 100, ["LTS"], seed=2)  # while no broker runs
    b.start()
    b.wait_ready()
    rows = expected_rows(db.path, "ticks:LTS")
    wait_for(lambda: c.exists("ticks:LTS:stream") and parse_id(
        c.xrevrange("ticks:LTS:stream", count=1)[0][0])[1] == rows[-1][1], 30,
        what="published")
    check_stream(c, "ticks:LTS:stream", rows[len(history):])  # from where "latest" began


@pytest.mark.slow
def test_rows_rolled_to_history_are_published_with_their_names(db_factory, redis_srv,
                                                                brokers):
    """A broker that starts behind a roll reads the rows back from history (batches whose
    symbol ids index their own names) and publishes them under the right symbols."""
    db = db_factory("--shards", "1", "--feed", "none", "--capacity", "8192")
    syms = ["H1", "H2", "H3", "H4", "H5"]
    for i in range(6):  # 30,000 rows through an 8,192-row table: it rolls
        # interned H5 first: ids in arrival order differ from the sorted names of history
        produce(db.path, 5000, 500, (syms[i % 2:] + syms[:i % 2])[::-1], seed=20 + i)
        time.sleep(0.2)
    with wayy.attach(db.path) as w:  # most rows are now only in history
        in_memory = sum(int(w.shards[0].snapshot()[t]) for t in (0, 1))
    assert in_memory < 8192 * 2 < 30_000 and os.listdir(os.path.join(db.path, "hist"))
    brokers(db.path, redis_srv.url)
    c = redis_srv.client()
    for s in syms:
        for ch in (f"ticks:{s}", f"quotes:{s}"):
            want = expected_rows(db.path, ch)
            assert len(want) > 1000
            wait_for(lambda: c.exists(ch + ":stream") and parse_id(
                c.xrevrange(ch + ":stream", count=1)[0][0])[1] == want[-1][1], 60,
                what=f"{ch} published")
            check_stream(c, ch + ":stream", want)


@pytest.mark.slow
def test_a_key_in_the_way_of_a_stream_is_reported_not_fatal(db_factory, redis_srv, brokers):
    db = db_factory(*DB_ARGS)
    c = redis_srv.client()
    c.set("ticks:BAD:stream", "someone else's string")
    b = brokers(db.path, redis_srv.url)
    col = Collector()
    sub = Subscriber(redis_srv.url)
    sub.subscribe("ticks:BAD", col.tick)
    sub.subscribe("ticks:OK1", col.tick)
    sub.run(timeout=0.5)
    produce(db.path, 600, 100, ["BAD", "OK1"])
    want = expected_rows(db.path, "ticks:BAD") + expected_rows(db.path, "ticks:OK1")
    run_until(sub, lambda: len(col.rows) >= len(want))
    sub.stop()
    assert sorted(col.rows) == sorted(want)  # the channels carry everything
    assert "WRONGTYPE" in sub.stats()["channels"]["ticks:BAD"]["stream_error"]
    assert c.get("ticks:BAD:stream") == b"someone else's string"
    check_stream(c, "ticks:OK1:stream", expected_rows(db.path, "ticks:OK1"))
    wait_for(lambda: b.status()["errors"] >= 1, 10, what="the error counted")
    assert "not usable as a stream" in b.log() and b.status()["redis"] == "ok"
    # the status counts the stream entries Redis holds, not the ones it could not write
    written = sum(c.xinfo_stream(k)["entries-added"] for k in c.scan_iter("*:stream")
                  if c.type(k) == b"stream")
    wait_for(lambda: b.status()["stream_entries"] == written, 10,
             what="stream_entries == the entries written")
    # the key removed: the stream is written again, and its first entry names the last row
    # that never reached it, so a replay through the hole counts the loss
    hole = expected_rows(db.path, "ticks:BAD")[-1][1]
    c.delete("ticks:BAD:stream")
    produce(db.path, 200, 100, ["BAD"], seed=2)
    wait_for(lambda: c.type("ticks:BAD:stream") == b"stream", 15,
             what="ticks:BAD:stream written again")
    (_id, fields), = c.xrange("ticks:BAD:stream", count=1)
    assert int(fields[b"p"]) == hole
    late = Subscriber(redis_srv.url)
    got = Collector()
    late.subscribe("ticks:BAD", got.tick, from_seq=0)
    run_until(late, lambda: got.rows and got.rows[-1] == expected_rows(db.path,
                                                                      "ticks:BAD")[-1])
    assert late.stats()["channels"]["ticks:BAD"]["lost_gaps"] == 1
    assert min(r[1] for r in got.rows) > hole
    late.stop()


@pytest.mark.slow
def test_a_second_database_on_the_same_redis_is_refused(db_factory, redis_srv, brokers):
    """Two databases publishing into one Redis would mix their ticks on the same channels
    and overwrite each other's cursors: the second one's broker is refused, says why, and
    publishes nothing; the first goes on."""
    db1 = db_factory(*DB_ARGS, name="one")
    db2 = db_factory(*DB_ARGS, name="two")
    b1 = brokers(db1.path, redis_srv.url)
    b2 = brokers(db2.path, redis_srv.url, index=1, wait=False)

    def refused():
        st = b2.status()
        return st if st and st["redis"] == "down" and st.get("redis_error") else None
    st = wait_for(refused, 60, what="the second database's broker refused")
    assert "another wayy database" in st["redis_error"]
    assert os.path.realpath(db1.path) in st["redis_error"]
    produce(db2.path, 300, 100, ["TWO"])
    produce(db1.path, 300, 100, ["ONE"])
    wait_for(lambda: b1.status()["published_rows"] == 300, 30, what="the first published")
    c = redis_srv.client()
    assert not c.exists("ticks:TWO:stream")
    check_stream(c, "ticks:ONE:stream", expected_rows(db1.path, "ticks:ONE"))
    assert b2.proc.poll() is None and b2.status()["published_rows"] == 0
    assert c.hget(BROKER_CURSORS_KEY, OWNER_FIELD).decode().endswith(os.path.realpath(db1.path))


@pytest.mark.slow
def test_a_second_database_on_another_db_number_of_the_same_redis_is_refused(
        db_factory, redis_srv, brokers):
    """Redis pub/sub ignores database numbers: a database publishing under /3 of a server
    another one publishes to under /0 would mix their live ticks; it is refused too."""
    db1 = db_factory(*DB_ARGS, name="one")
    db2 = db_factory(*DB_ARGS, name="two")
    b1 = brokers(db1.path, redis_srv.url)
    b2 = brokers(db2.path, redis_srv.url[:-1] + "3", index=1, wait=False)

    def refused():
        st = b2.status()
        return st if st and st["redis"] == "down" and st.get("redis_error") else None
    st = wait_for(refused, 60, what="the second database's broker refused")
    assert "another wayy database" in st["redis_error"]
    assert "database number 0" in st["redis_error"]
    produce(db2.path, 300, 100, ["TWO"])
    produce(db1.path, 300, 100, ["ONE"])
    wait_for(lambda: b1.status()["published_rows"] == 300, 30, what="the first published")
    assert b2.status()["published_rows"] == 0
    assert not redis_srv.client(db=3).exists("ticks:TWO:stream")
    b1.stop()  # the first one gone: the second takes over at its next look
    wait_for(lambda: b2.status()["published_rows"] == 300, 60, what="the second published")


def test_start_warns_when_its_redis_is_already_another_databases(db_factory, redis_srv):
    c = redis_srv.client()
    db1 = db_factory("--shards", "1", "--feed", "none", "--redis", redis_srv.url, name="one")
    wait_for(lambda: c.hget(BROKER_CURSORS_KEY, OWNER_FIELD), 60, what="db one's claim")
    assert "another wayy database" not in db1.log()
    db2 = db_factory("--shards", "1", "--feed", "none", "--redis", redis_srv.url, name="two")
    # (the broker logs its own "redis:" URL line: wait for the banner itself)
    wait_for(lambda: "shard(s) running at" in db2.log(), 30, what="the start banner")
    log = db2.log()
    assert "WARNING: this Redis is used by another wayy database" in log
    assert os.path.realpath(db1.path) in log


def test_another_database_under_another_database_number_is_flagged(db_factory, redis_srv):
    """Pub/sub channels are shared by all of a server's database numbers: a second
    database on /1 of the server the first publishes to on /0 is told at start, its brokers
    are refused, and `wayy status` says REFUSED (not "up")."""
    c = redis_srv.client()
    db1 = db_factory("--shards", "1", "--feed", "none", "--redis", redis_srv.url, name="one")
    wait_for(lambda: c.hget(BROKER_CURSORS_KEY, OWNER_FIELD), 60, what="db one's claim")
    url1 = redis_srv.url[:-1] + "1"
    db2 = db_factory("--shards", "1", "--feed", "none", "--redis", url1, name="two")
    wait_for(lambda: "shard(s) running at" in db2.log(), 30, what="the start banner")
    assert "WARNING: this Redis is used by another wayy database" in db2.log()
    assert "database number 0" in db2.log()

    def refused():
        r = subprocess.run(wayy_cmd("status", "--db", db2.path), capture_output=True,
                           text=True, timeout=60, cwd=REPO)
        return r.stdout if "redis: REFUSED" in r.stdout else None
    out = wait_for(refused, 30, what="status saying REFUSED")
    assert "another wayy database" in out and "redis: up" not in out
    r = subprocess.run(wayy_cmd("status", "--db", db1.path), capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert "redis: up" in r.stdout and "REFUSED" not in r.stdout


def test_start_warns_when_redis_cannot_be_reached(db_factory):
    """--redis URL with nothing listening: the database runs (local subscribers need no
    Redis), and the start banner says at once that Redis cannot be reached."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    db = db_factory("--shards", "1", "--feed", "none", "--redis", url)
    wait_for(lambda: "shard(s) running at" in db.log(), 30, what="the start banner")
    log = db.log()
    assert f"WARNING: Redis at {url} cannot be reached" in log, log
    assert "brokers retry" in log


def test_start_warns_when_redis_refuses_the_password(db_factory, redis_srv, tmp_path):
    """A wrong password for --redis: the database runs (local subscribers need no Redis),
    and the start banner says at once that Redis refuses the credentials."""
    pw = tmp_path / "pw"
    pw.write_text("not-the-password\n")
    pw.chmod(0o600)
    url = f"redis://127.0.0.1:{redis_srv.port}/0"
    db = db_factory("--shards", "1", "--feed", "none", "--redis", url,
                    "--redis-password-file", str(pw))
    wait_for(lambda: "shard(s) running at" in db.log(), 30, what="the start banner")
    log = db.log()
    assert "WARNING: Redis at" in log and "refuses this database's credentials" in log
    assert "not-the-password" not in log
    # status says so too, on its Redis line (not "up; details unavailable")
    r = subprocess.run(wayy_cmd("status", "--db", db.path), capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("redis:"))
    assert "REFUSES this database's credentials (the password in " in line, line
    assert "WRONGPASS" in line and "not-the-password" not in r.stdout


def test_status_says_when_a_server_without_password_refuses_one(db_factory, tmp_path):
    """A server with no password answers AUTH with "called without any password
    configured": the brokers cannot publish, and status says the credentials are refused
    (it read "details unavailable")."""
    from redisutil import redis_server

    pw = tmp_path / "pw"
    pw.write_text("a-password\n")
    pw.chmod(0o600)
    with redis_server(tmp_path / "redis") as srv:  # no requirepass
        db = db_factory("--shards", "1", "--feed", "none", "--redis",
                        f"redis://127.0.0.1:{srv.port}/0", "--redis-password-file", str(pw))
        r = subprocess.run(wayy_cmd("status", "--db", db.path), capture_output=True,
                           text=True, timeout=60, cwd=REPO)
        line = next(x for x in r.stdout.splitlines() if x.startswith("redis:"))
        assert "REFUSES this database's credentials" in line, line
        assert "without any password configured" in line


@pytest.mark.parametrize("args, words", [
    (("--password-file", "/nonexistent/pw"), "--password-file /nonexistent/pw: No such file"),
    (("--shards", "x"), "--shards must be comma-separated shard numbers"),
])
def test_standalone_broker_bad_options_fail_in_one_line(tmp_path, args, words):
    r = subprocess.run([sys.executable, "-m", "workers.broker", "--db", str(tmp_path / "db"),
                        "--redis", "redis://127.0.0.1:1/0", *args], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr


def test_database_id_is_made_once_and_kept(tmp_path):
    """Many processes asking at once get one id; it survives restarts and moves with the
    directory."""
    from multiprocessing import get_context

    from wayy.manifest import database_id

    d = tmp_path / "db"
    d.mkdir()
    with get_context("fork").Pool(4) as pool:
        ids = pool.map(database_id, [str(d)] * 16)
    assert len(set(ids)) == 1 and len(ids[0]) == 32
    assert sorted(os.listdir(d)) == ["wayy.id"]  # no temporary file left
    moved = tmp_path / "moved"
    d.rename(moved)
    assert database_id(str(moved)) == ids[0]
    (tmp_path / "other").mkdir()
    assert database_id(str(tmp_path / "other")) != ids[0]


@pytest.mark.slow
def test_restart_resumes_from_the_cursor_without_republishing(db_factory, redis_srv):
    """A database stopped and started again: its writers load the write-ahead log back while
    the broker starts. The broker waits for them, resumes from Redis' cursor (never taking
    the half-loaded shard for a recreated database) and publishes every row exactly once."""
    args = ("--shards", "2", "--feed", "none", "--capacity", "1048576", "--redis",
            redis_srv.url)
    syms = ["RS1", "RS2", "RS3", "RS4"]
    db = db_factory(*args, name="rs")
    produce(db.path, 400_000, 1000, syms)

    def published(n):
        return lambda: sum(d.get("published_rows", 0) for d in _broker_docs(db.path)) >= n
    wait_for(published(400_000), 120, what="first run published")
    c = redis_srv.client()
    before = {k: v for k, v in c.hgetall(BROKER_CURSORS_KEY).items() if b":" in k}
    db.stop()
    db = db_factory(*args, name="rs")
    produce(db.path, 2000, 100, syms, seed=2)
    wait_for(published(2000), 120, what="second run published")
    assert "recreated" not in db.log()
    after = {k: int(v) for k, v in c.hgetall(BROKER_CURSORS_KEY).items() if b":" in k}
    assert all(after[k] >= int(v) for k, v in before.items())
    for s in syms:
        check_stream(c, f"ticks:{s}:stream", expected_rows(db.path, f"ticks:{s}"))
    assert sum(d["published_rows"] for d in _broker_docs(db.path)) == 2000


@pytest.mark.parametrize("fmt", ["binary+lz4", "json"])
def test_a_symbol_with_more_venues_than_a_message_names_is_published_whole(
        db_factory, redis_srv, brokers, fmt):
    """A binary message names at most 255 venues; a writer accepts up to --max-venues
    (1,024). A pass with more venues for one symbol goes out as several messages and stream
    entries of consecutive rows, each row once, nothing refused."""
    db = db_factory(*DB_ARGS)
    n = 2 * wire.MAX_VENUES + 90
    venues = np.array([f"V{i}" for i in range(wire.MAX_VENUES + 45)])
    p = wayy.Producer(db.path)
    ts = time.time_ns() + np.arange(n)
    p.publish_batch("trades", {"ts": ts, "symbol": np.array(["MANY"] * n),
                               "venue": venues[np.arange(n) % len(venues)],
                               "price": 1.0 + np.arange(n), "size": np.ones(n)})
    p.flush(10.0)
    b = brokers(db.path, redis_srv.url, "--wire", fmt)
    col, one = Collector(), Collector()
    sub = Subscriber(redis_srv.url)
    sub.subscribe("ticks:MANY", col.tick, from_seq=0)
    sub.subscribe("ticks:MANY:V7", one.tick, from_seq=0)
    want = expected_rows(db.path, "ticks:MANY")
    want7 = expected_rows(db.path, "ticks:MANY:V7")
    try:
        run_until(sub, lambda: len(col.rows) >= n and len(one.rows) >= len(want7))
    finally:
        sub.stop()
    assert col.rows == want and len(want) == n
    assert one.rows == want7 and len(want7) == 2
    assert [t.price for t in col.ticks] == list(1.0 + np.arange(n))
    check_stream(redis_srv.client(), "ticks:MANY:stream", want)
    assert len(redis_srv.client().xrange("ticks:MANY:stream")) >= 2
    st = wait_for(lambda: (lambda s: s if s["published_rows"] == n else None)(
        json.load(open(os.path.join(db.path, "broker-0.status.json")))), 10,
        what="broker status")
    assert st["errors"] == 0, open(b.log_path).read()
