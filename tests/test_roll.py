"""Rolls: shard writers move their rows to history on disk and start over, and queries,
restarts and crashes in the middle of a roll never lose or repeat a row."""

from __future__ import annotations

import glob
import multiprocessing as mp
import os
import random
import signal
import time

import numpy as np
import pytest

import wayy
from tests.conftest import run_cli, wait_for
from tests.test_durability import SYMS, assert_same, ingest_forever, publish_mixed, snapshot

T0 = 1_700_000_000_000_000_000


def partitions(path: str) -> list[str]:
    return sorted(glob.glob(os.path.join(path, "hist", "*", "*", "shard-*")))


def committed_in_memory(path: str) -> int:
    from shm.layout import tables as T
    from shm.shard import ShardData
    from wayy.manifest import read_manifest

    m = read_manifest(path)
    total = 0
    for k in range(m.shards):
        d = ShardData.attach(m.prefix, k)
        total += d.committed(T.TRADES) + d.committed(T.QUOTES)
        d.close()
    return total


def test_roll_moves_rows_to_history_and_queries_do_not_notice(db_factory):
    d = db_factory("--shards", "2", "--feed", "none", "--no-redis")
    sent = publish_mixed(d.path, 40)
    db = wayy.attach(d.path)
    wait_for(lambda: len(db["trades"]) == sent, what="trades committed")
    before = snapshot(d.path)
    r = run_cli("roll", "--db", d.path)
    assert r.returncode == 0, r.stderr
    assert "shard 0: rolled" in r.stdout and "shard 1: rolled" in r.stdout
    assert len(partitions(d.path)) == 4  # 2 tables x 2 shards
    assert committed_in_memory(d.path) == 0  # shared memory starts over
    assert_same(before, snapshot(d.path))  # ...and queries read history instead
    assert len(db["trades"]) == sent

    more = publish_mixed(d.path, 5, seed=4, first_price=10_000_000.0)
    wait_for(lambda: len(db["trades"]) == sent + more, what="trades after the roll")
    r = db["trades"].between()
    assert len(r) == sent + more and len(np.unique(r["price"])) == sent + more
    tail = db["trades"].tail(3, symbol="S07")
    assert len(tail) == 3
    db.close()
    after = snapshot(d.path)
    assert run_cli("verify", "--db", d.path).returncode == 0

    d.stop()  # history stays, the new WAL holds only what came after the roll
    d2 = db_factory("--shards", "2", "--feed", "none", "--no-redis")
    assert_same(after, snapshot(d2.path))


def test_fill_roll_keeps_a_small_segment_from_filling_up(db_factory):
    d = db_factory("--shards", "1", "--feed", "none", "--no-redis", "--capacity", "16384",
                   "--roll-fill", "0.5")
    p = wayy.Producer(d.path)
    n, sent = 2000, 0
    db = wayy.attach(d.path)
    for i in range(30):  # 60,000 rows through a 16,384-row table
        p.publish_batch("trades", {"ts": np.full(n, T0 + i), "symbol": SYMS[np.arange(n) % 40],
                                   "price": sent + 1.0 + np.arange(n), "size": np.ones(n)})
        sent += n
        # the fill check runs about once a second: pace so a roll can keep up
        wait_for(lambda: len(db["trades"]) == sent, timeout=20, what="rows committed")
        if i % 4 == 3:
            time.sleep(1.1)
    st = d.status()["shards"][0]
    assert st["rejects"]["full"] == 0
    assert len(partitions(d.path)) >= 2
    r = db["trades"].between()
    np.testing.assert_array_equal(np.sort(r["price"]), np.arange(1, sent + 1, dtype=float))
    np.testing.assert_array_equal(np.sort(r["seq"]), np.arange(sent))
    db.close()
    p.close()


def test_a_burst_into_a_small_table_is_rolled_not_dropped(db_factory):
    # batches published as fast as possible, with no pause for the roll: the writer rolls
    # when a table passes --roll-fill, and a batch that does not fit waits in the ring for
    # the roll instead of being rejected (also below the threshold: 3 x 300 = 900 rows
    # of 1,024 is short of 0.9, and the 4th batch does not fit)
    d = db_factory("--shards", "1", "--feed", "none", "--no-redis", "--capacity", "1024")
    p = wayy.Producer(d.path)
    n, sent = 300, 0
    for i in range(40):
        p.publish_batch("trades", {"ts": np.full(n, T0 + i), "symbol": SYMS[np.arange(n) % 40],
                                   "price": sent + 1.0 + np.arange(n), "size": np.ones(n)})
        sent += n
    db = wayy.attach(d.path)
    wait_for(lambda: len(db["trades"]) == sent, timeout=60, what="every row committed")
    assert d.status()["shards"][0]["rejects"]["full"] == 0
    r = db["trades"].between()
    np.testing.assert_array_equal(np.sort(r["price"]), np.arange(1, sent + 1, dtype=float))
    db.close()
    p.close()


def test_day_of_the_rows_is_the_wal_s_not_a_tick_s(db_factory):
    # a tick stamped in 2000 must not make a restarted writer think its rows belong to
    # 2000-01-01: that roll would label today's rows with that date, and --history-days
    # would delete them at once
    args = ("--shards", "1", "--feed", "none", "--no-redis", "--history-days", "5")
    d = db_factory(*args)
    p = wayy.Producer(d.path)
    p.publish("trades", symbol="OLD", price=1.0, size=1.0, ts=946_684_800 * 10**9)
    now = time.time_ns()
    p.publish_batch("trades", {"ts": now + np.arange(1000), "symbol": SYMS[np.arange(1000) % 40],
                               "price": np.arange(1.0, 1001.0), "size": np.ones(1000)})
    p.close()
    db = wayy.attach(d.path)
    wait_for(lambda: len(db["trades"]) == 1001, what="rows committed")
    db.close()
    d.stop()
    d2 = db_factory(*args)
    time.sleep(2.5)  # the daily-roll check runs once a second
    db = wayy.attach(d2.path)
    assert len(db["trades"]) == 1001
    db.close()
    assert partitions(d2.path) == [] and "rolled" not in d2.log()


def _age_wal(path: str, shard: int, days: int) -> None:
    """Make a stopped database's WAL of ``shard`` look begun ``days`` days ago (its file
    header's created_ns): as if it had been stopped before midnight and started after."""
    import zlib

    from shm.layout import wal as WL

    f = os.path.join(path, "wal", f"shard-{shard}.wal")
    with open(f, "r+b") as fh:
        hdr = bytearray(fh.read(WL.FILE_HEADER_SIZE))
        fields = list(WL.FILE_HEADER_STRUCT.unpack(hdr))
        fields[5] -= days * 86_400 * 10**9  # created_ns
        WL.FILE_HEADER_STRUCT.pack_into(hdr, 0, *fields)
        fields[-1] = zlib.crc32(hdr[:WL.FILE_HEADER_CRC_SPAN])
        WL.FILE_HEADER_STRUCT.pack_into(hdr, 0, *fields)
        fh.seek(0)
        fh.write(hdr)


def test_ticks_of_a_start_on_a_later_day_do_not_join_the_old_day(db_factory):
    """The old day's rows go to history before the writer accepts a tick: a tick published
    (and flushed) at once must not be labelled with the old day -- --history-days would
    delete it with that day's rows."""
    args = ("--shards", "1", "--feed", "none", "--no-redis", "--history-days", "2")
    d = db_factory(*args)
    p = wayy.Producer(d.path)
    p.publish_batch("trades", {"ts": time.time_ns() + np.arange(100), "symbol": "OLDDAY",
                               "price": np.arange(1.0, 101.0), "size": np.ones(100)})
    p.flush(10.0)
    p.close()
    d.stop()
    _age_wal(d.path, 0, 3)
    d2 = db_factory(*args)
    with wayy.Producer(d2.path) as p:
        for i in range(8):
            p.publish("trades", symbol="NEWDAY", price=1.0 + i, size=1.0)
        p.flush(10.0)
    time.sleep(2.5)  # a day roll found by the writer's once-a-second check has happened too
    with wayy.attach(d2.path) as db:
        r = db["trades"].between()
        assert r["price"].tolist() == [1.0 + i for i in range(8)]
        assert set(r["symbol"].tolist()) == {"NEWDAY"}
    log = d2.log()
    assert "rolled 100 trades" in log and "retention removed" in log


def test_a_start_on_a_later_day_with_no_rows_labels_new_rows_with_today(db_factory):
    """Stopped right after a roll (no rows in memory) and started days later: the new rows
    belong to the day they came, not to the day the WAL began -- a day roll a second later
    would label them with that old day, and --history-days delete them."""
    args = ("--shards", "1", "--feed", "none", "--no-redis", "--history-days", "2")
    d = db_factory(*args)
    with wayy.Producer(d.path) as p:
        p.publish("trades", symbol="OLDDAY", price=1.0, size=1.0)
        p.flush(10.0)
    assert run_cli("roll", "--db", d.path).returncode == 0
    d.stop()
    _age_wal(d.path, 0, 3)  # the day roll of 3 days ago, then a stop
    _age_history(d.path, 4)
    d2 = db_factory(*args)
    with wayy.Producer(d2.path) as p:
        for i in range(8):
            p.publish("trades", symbol="NEWDAY", price=1.0 + i, size=1.0)
        p.flush(10.0)
    time.sleep(2.5)  # the writer's once-a-second day check has run
    with wayy.attach(d2.path) as db:
        assert db["trades"].between()["symbol"].tolist().count("NEWDAY") == 8
    assert "rolled 8 trades" not in d2.log()


def _age_history(path: str, days: int) -> None:
    """Move every history partition ``days`` days back (its date directory and meta)."""
    import datetime as dt
    import json

    hist = os.path.join(path, "hist")
    for date in sorted(os.listdir(hist)):
        old = dt.date.fromisoformat(date)
        new = (old - dt.timedelta(days=days)).isoformat()
        for meta in glob.glob(os.path.join(hist, date, "*", "*", "meta.json")):
            m = json.load(open(meta))
            m["date"] = new
            with open(meta, "w") as f:
                json.dump(m, f, separators=(",", ":"))
        os.rename(os.path.join(hist, date), os.path.join(hist, new))


@pytest.mark.slow
def test_writer_killed_during_rolls_loses_and_repeats_nothing(db_factory):
    """Rolls requested again and again under load, the writer SIGKILLed at random moments
    around them (while writing history, swapping the WAL, resetting the segment)."""
    d = db_factory("--shards", "1", "--feed", "none", "--no-redis", "--fsync", "batch",
                   "--capacity", str(2**22))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    prod = ctx.Process(target=ingest_forever, args=(d.path, 10.0, q))
    prod.start()
    rnd = random.Random(11)
    kills = rolls = 0
    from shm import inbound
    from shm.segment import db_prefix
    from shm.shard import InboundRing

    ring = InboundRing.attach(db_prefix(os.path.realpath(d.path)), 0)
    try:
        deadline = time.monotonic() + 9.5
        while time.monotonic() < deadline:
            time.sleep(rnd.uniform(0.1, 0.5))
            s = d.status()["shards"][0]
            if s["state"] != "running":
                continue
            inbound.request_roll(ring.hdr64, ring.hdr32)
            rolls += 1
            if rnd.random() < 0.6:
                time.sleep(rnd.uniform(0.0, 0.25))
                os.kill(s["writer_pid"], signal.SIGKILL)
                kills += 1
        sent = q.get(timeout=120)
        prod.join(60)
        assert prod.exitcode == 0
    finally:
        ring.close()
        if prod.is_alive():
            prod.kill()
    assert kills >= 3 and rolls >= 6
    db = wayy.attach(d.path)
    wait_for(lambda: len(db["trades"]) >= sent, timeout=60, what="every row after the kills")
    r = db["trades"].between()
    assert len(r) == sent
    np.testing.assert_array_equal(np.sort(r["price"]), np.arange(1, sent + 1, dtype=float))
    np.testing.assert_array_equal(np.sort(r["seq"]), np.arange(sent))
    db.close()
    assert partitions(d.path)
    assert run_cli("verify", "--db", d.path).returncode == 0
    d.stop()
    d2 = db_factory("--shards", "1", "--feed", "none", "--no-redis", "--capacity", str(2**22))
    db = wayy.attach(d2.path)
    r = db["trades"].between()
    assert len(r) == sent  # history + WAL after a full restart: still exactly once
    np.testing.assert_array_equal(np.sort(r["seq"]), np.arange(sent))
    db.close()


def test_subscriber_behind_across_a_roll_gets_every_row_once_from_history(db_factory,
                                                                          tmp_path):
    d = db_factory("--shards", "2", "--feed", "none", "--no-redis")
    db = wayy.attach(d.path)
    ticks = db.subscribe("trades", idle="block")  # polled later: it falls behind
    aapl = db.subscribe("ticks:S07", idle="block")
    batches = db.subscribe("quotes", batch_size=50, max_latency_ms=100)
    ckpt = str(tmp_path / "ckpt")
    first = db.subscribe("trades", checkpoint=ckpt)
    sent = publish_mixed(d.path, 20)
    wait_for(lambda: len(db["trades"]) == sent, what="trades committed")
    got_first = [first.poll(1.0).seq for _ in range(100)]  # 100 delivered, checkpointed
    first.save_checkpoint()
    first.stop()
    quotes_before = len(db["quotes"])

    assert run_cli("roll", "--db", d.path).returncode == 0
    more = publish_mixed(d.path, 5, seed=8, first_price=10_000_000.0)
    wait_for(lambda: len(db["trades"]) == sent + more, what="trades after the roll")
    total_quotes = len(db["quotes"])
    assert total_quotes > quotes_before

    def drain(sub):
        out = []
        while (item := sub.poll(0.5)) is not None:
            out.append(item)
        return out

    got = drain(ticks)
    assert len(got) == sent + more
    seqs = {}
    for t in got:
        seqs.setdefault(t.shard, []).append(t.seq)
    for k, s in seqs.items():
        assert s == sorted(s) and len(set(s)) == len(s)  # in order, no duplicate
    assert sorted(t.price for t in got) == sorted(db["trades"].between()["price"].tolist())

    want = db["trades"].between(symbol="S07")
    got7 = drain(aapl)
    assert sorted(t.seq for t in got7) == sorted(want["seq"].tolist())
    assert all(t.symbol == "S07" for t in got7)

    got_b = drain(batches)
    got_b += drain(batches)  # quotes committed after the first look
    assert sum(len(b) for b in got_b) == len(db["quotes"]) >= total_quotes
    assert all(b.table == "quotes" for b in got_b)

    # from_ts older than the shard's memory starts in history, then goes on to the end
    # (trade ts grow with seq before the roll, so the first row at t_from is that S07 trade)
    pre = want["price"] < 10_000_000.0
    i = int(np.flatnonzero(pre)[pre.sum() // 3])
    t_from, s_from = int(want["ts"][i]), int(want["seq"][i])
    since = db.subscribe("ticks:S07", from_ts=t_from)
    got_ts = drain(since)
    since.stop()
    assert [t.seq for t in got_ts] == sorted(want["seq"][want["seq"] >= s_from].tolist())
    assert got_ts[0].ts == t_from

    # a subscriber restarted from a checkpoint taken before the roll resumes from history
    again = db.subscribe("trades", checkpoint=ckpt)
    rest = drain(again)
    assert len(rest) + len(got_first) == sent + more
    assert len({(t.shard, t.seq) for t in rest}) == len(rest)
    for sub in (ticks, aapl, batches, again):
        sub.stop()
    db.close()


def test_batch_subscriber_with_rows_pending_across_fill_rolls_gets_each_row_once(db_factory):
    """A batch-mode subscriber (the broker is one) slightly slower than ingest holds rows
    it has not emitted yet when the shard rolls (here: every ~7,400 rows, --roll-fill 0.9
    of 8,192) and memory starts over: those rows come from history -- every seq exactly
    once, in order, batches within batch_size -- never the new rows now at their places."""
    import threading

    d = db_factory("--shards", "1", "--feed", "none", "--capacity", "8192")
    db = wayy.attach(d.path)
    seen = []

    def cb(b):
        seen.append(np.array(b["seq"]))
        time.sleep(0.01)

    db.subscribe("trades", callback=cb, batch_size=500, max_latency_ms=5)
    n, per = 40_000, 2_000

    def produce():
        with wayy.Producer(d.path, timeout=30) as p:
            for j in range(n // per):
                i = np.arange(j * per, (j + 1) * per)
                p.publish_batch("trades", {"ts": T0 + i, "symbol": np.full(per, "PEND"),
                                           "venue": np.full(per, "X"), "price": i + 1.0,
                                           "size": np.ones(per)})
            p.flush(30.0)

    th = threading.Thread(target=produce)
    th.start()
    try:
        deadline = time.monotonic() + 60
        while sum(len(x) for x in seen) < n and time.monotonic() < deadline:
            db.run(timeout=0.5)
    finally:
        th.join()
    got = np.concatenate(seen)
    assert int(d.status()["shards"][0]["rolls"]) >= 3  # rows were pending across rolls
    np.testing.assert_array_equal(got, np.arange(n))  # each seq once, in order
    assert max(len(x) for x in seen) <= 500
    db.close()


def test_tail_with_a_huge_n_or_a_bad_symbol_across_history_and_memory(db_factory):
    """tail(n) with n far beyond the rows (with a symbol, with history and memory) returns
    every row; a symbol that is not a str is an InvalidName, not a TypeError."""
    d = db_factory("--shards", "1", "--feed", "none")
    p = wayy.Producer(d.path)
    db = wayy.attach(d.path)
    try:
        for i in range(5):
            p.publish("trades", symbol="HUGE", price=1.0 + i, size=1.0)
        p.flush(10.0)
        for n in (10**12, 2**63 - 1):
            assert list(db["trades"].tail(n, symbol="HUGE")["price"]) == [1, 2, 3, 4, 5]
        assert run_cli("roll", "--db", d.path).returncode == 0
        for i in range(5, 8):
            p.publish("trades", symbol="HUGE", price=1.0 + i, size=1.0)
        p.flush(10.0)
        for n in (10**12, 2**63 - 1):
            assert list(db["trades"].tail(n, symbol="HUGE")["price"]) == list(range(1, 9))
            assert list(db["trades"].tail(n, symbol="HUGE", venue="")["price"]) == \
                list(range(1, 9))
            assert len(db["trades"].tail(n)) == 8
        for bad in (["HUGE", "X"], b"HUGE", 5):
            with pytest.raises(wayy.InvalidName):
                db["trades"].tail(5, symbol=bad)
    finally:
        db.close()
        p.close()


def _publish_alternating(path: str, sym: str, n: int, first_price: float) -> None:
    """``n`` trades and ``n`` quotes of ``sym``, alternating: every row is a run of its own
    in a subscriber's pass (runs are per table)."""
    p = wayy.Producer(path)
    for i in range(n):
        p.publish("trades", symbol=sym, price=first_price + i, size=1.0)
        p.publish("quotes", symbol=sym, bid=first_price + i, ask=first_price + i + 1,
                  bid_size=1.0, ask_size=1.0)
    p.flush(10.0)
    p.close()


def test_per_tick_subscriber_overtaken_by_a_roll_mid_pass_gets_each_row_once(db_factory):
    """A pass of a per-tick subscription holds many runs; its callback for the first row
    rolls the shard and publishes rows that reuse the memory the later runs were in. Those
    runs are read again from history: every row once, in seq order, with its own values
    (read after the roll, they would be the new rows)."""
    d = db_factory("--shards", "1", "--feed", "none", "--no-redis")
    db = wayy.attach(d.path)
    _publish_alternating(d.path, "RMP", 20, 100.0)
    wait_for(lambda: len(db["quotes"]) == 20, what="first rows committed")
    got: list = []
    rolled = []

    def cb(t):
        got.append((t.seq, t.table, t.price if t.table == "trades" else t.bid))
        if not rolled:
            rolled.append(1)
            assert run_cli("roll", "--db", d.path).returncode == 0
            _publish_alternating(d.path, "RMP", 20, 5000.0)
            wait_for(lambda: len(db["quotes"]) == 40, what="rows after the roll")

    sub = db.subscribe(["ticks:RMP", "quotes:RMP"], callback=cb, from_seq=0)
    deadline = time.monotonic() + 30
    while len(got) < 80 and time.monotonic() < deadline:
        db.run(timeout=0.2)
    sub.stop()
    want = []
    for table, col in (("trades", "price"), ("quotes", "bid")):
        r = db[table].between(symbol="RMP")
        want += list(zip(r["seq"].tolist(), [table] * len(r), r[col].tolist()))
    assert rolled and got == sorted(want) and len(got) == 80
    db.close()


@pytest.mark.slow
def test_a_callback_stalled_across_a_roll_and_a_lap_is_told_of_the_overrun(db_factory):
    """A per-tick callback stalls while the shard rolls and the change ring wraps past the
    subscriber's place. The rows the roll overtook come back from history -- and the lap
    is an overrun like any other: on_overrun and the counter tell it (an outside check saw
    it passed over in silence when the roll came early in the stall)."""
    d = db_factory("--shards", "1", "--feed", "none", "--no-redis")
    db = wayy.attach(d.path)
    _publish_alternating(d.path, "RLP", 20, 100.0)
    wait_for(lambda: len(db["quotes"]) == 20, what="first rows committed")
    n = 66_000  # more commits than the change ring holds records (65,536)
    got: list = []
    overruns: list = []

    def cb(t):
        got.append(t.seq)
        if len(got) == 1:  # the stall: a roll, then the ring wraps
            assert run_cli("roll", "--db", d.path).returncode == 0
            p = wayy.Producer(d.path)
            for i in range(n):
                p.publish("trades", symbol="RLP", price=1.0 + i, size=1.0)
                p.flush(10.0)
            p.close()

    sub = db.subscribe(["ticks:RLP", "quotes:RLP"], callback=cb, from_seq=0,
                       on_overrun=overruns.append)
    try:
        deadline = time.monotonic() + 120
        while len(got) < 40 + n and time.monotonic() < deadline:
            db.run(timeout=0.5)
        want = sorted(db["trades"].between(symbol="RLP")["seq"].tolist()
                      + db["quotes"].between(symbol="RLP")["seq"].tolist())
        assert got == want and len(got) == 40 + n
        assert len(overruns) == 1 and sub.stats()["overruns"] == 1, overruns
        assert overruns[0].from_seq == 1 and overruns[0].to_seq == 40 + n
    finally:
        sub.stop()
        db.close()


def test_broker_holding_views_across_a_roll_publishes_every_row_once(db_factory, tmp_path):
    """The broker collects zero-copy views and encodes them later. Here (a broker run in
    this process) a roll, and rows that reuse the memory, come right after it collected:
    it must not publish what the views then hold (other rows, or rows refused as
    unencodable and skipped), but read the collected rows again from history."""
    from tests.redisutil import redis_server
    from tests.test_broker import Collector, expected_rows, run_until
    from wayy.remote import Subscriber
    from workers.broker import Broker

    d = db_factory("--shards", "1", "--feed", "none", "--no-redis")
    syms = [f"BV{i}" for i in range(4)]
    price = [1.0]

    def publish(m: int) -> None:
        p = wayy.Producer(d.path)
        p.publish_batch("trades", {"symbol": [syms[i % 4] for i in range(m)],
                                   "price": price[0] + np.arange(m), "size": np.ones(m)})
        price[0] += m
        p.flush(10.0)
        p.close()

    db = wayy.attach(d.path)
    with redis_server(tmp_path / "redis") as srv:
        br = Broker(d.path, None, srv.url)
        br.on_start()
        rolled = []
        real_collect = br._collect

        def collect():
            items = real_collect()
            if items and not rolled:
                rolled.append(1)
                assert run_cli("roll", "--db", d.path).returncode == 0
                publish(1000)  # into the memory the collected views point at
                wait_for(lambda: len(db["trades"]) == 2000, what="rows after the roll")
            return items

        br._collect = collect
        try:
            publish(1000)
            wait_for(lambda: len(db["trades"]) == 1000, what="first rows")
            deadline = time.monotonic() + 60
            while br.stats["published_rows"] < 2000 and time.monotonic() < deadline:
                if not br.do_work():
                    time.sleep(0.01)
            br._settle()
            assert rolled and br.stats["errors"] == 0
            for s in syms:
                want = expected_rows(d.path, f"ticks:{s}")
                assert len(want) == 500
                col = Collector()
                sub = Subscriber(srv.url)
                sub.subscribe(f"ticks:{s}", col.tick, from_seq=0)
                run_until(sub, lambda: len(col.rows) >= len(want), timeout=30)
                sub.close()
                assert col.rows == want, s
                prices = [t.price for t in col.ticks]
                assert prices == sorted(prices) and len(set(prices)) == 500
        finally:
            br.on_close()
            db.close()


def test_status_counts_rows_a_roll_took_before_the_broker_published_them(db_factory):
    """Broker lag is next seq minus the broker's cursor wherever the rows are: rows rolled to
    history before the broker got to them still lag, in `wayy status` and in the broker's
    own status."""
    d = db_factory("--shards", "1", "--feed", "none", redis=True)
    p = wayy.Producer(d.path)
    p.publish("trades", symbol="LAG", price=1.0, size=1.0)
    p.flush(10.0)

    def lag():
        got = d.status()["redis"]["broker_lag"]
        return got[0]["lag_rows"] if got and got[0]["cursor"] else None

    wait_for(lambda: lag() == 0, timeout=30, what="the broker to publish the first row")
    pid = d.status()["redis"]["brokers"][0]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        for i in range(5):
            p.publish("trades", symbol="LAG", price=2.0 + i, size=1.0)
        p.publish("quotes", symbol="LAG", bid=1.0, ask=2.0, bid_size=1.0, ask_size=1.0)
        p.flush(10.0)
        assert lag() == 6
        assert run_cli("roll", "--db", d.path).returncode == 0
        assert committed_in_memory(d.path) == 0
        assert lag() == 6  # in history now, and still not published
        p.publish("trades", symbol="LAG", price=9.0, size=1.0)  # one in memory as well
        p.flush(10.0)
        assert lag() == 7
        out = run_cli("status", "--db", d.path)
        assert out.returncode == 0 and "broker lag (rows): shard 0=7" in out.stdout, out.stdout
    finally:
        os.kill(pid, signal.SIGCONT)
        p.close()
    wait_for(lambda: lag() == 0, timeout=30, what="the broker to catch up from history")


def test_a_long_replay_from_history_yields_to_run_s_deadline(db_factory, tmp_path):
    """A subscriber starting far back in history gets it in bounded pieces: run(timeout=0)
    makes one pass (at most HISTORY_TICK_SEQS rows), and later runs go on from there, each
    row once, in seq order."""
    from wayy.subscribe import HISTORY_TICK_SEQS

    d = db_factory("--shards", "1", "--feed", "none", "--no-redis", "--capacity", "307200")
    n = 3 * HISTORY_TICK_SEQS + 123
    p = wayy.Producer(d.path)
    for a in range(0, n, 50_000):
        m = min(50_000, n - a)
        p.publish_batch("trades", {"symbol": np.array(["H1", "H2"] * (m // 2) + ["H1"] * (m % 2)),
                                   "price": 1.0 + a + np.arange(m), "size": np.ones(m)})
    p.flush(30.0)
    p.close()
    assert run_cli("roll", "--db", d.path).returncode == 0
    db = wayy.attach(d.path)
    got = []
    sub = db.subscribe("trades", callback=lambda t: got.append(t.seq), from_seq=0)
    try:
        db.run(timeout=0)
        assert 0 < len(got) <= HISTORY_TICK_SEQS
        passes = 1
        while len(got) < n and passes < 100_000:
            db.run(timeout=0)
            passes += 1
        assert passes >= 4  # four pieces at least: it did not all come in one pass
        assert got == list(range(n))
    finally:
        sub.stop()
    # a slow callback: one pass delivers for a bounded time, not a whole read of history
    slow = []
    ssub = db.subscribe("trades", callback=lambda t: (slow.append(t.seq), time.sleep(0.001)),
                        from_seq=0)
    try:
        db.run(timeout=0)
        assert 0 < len(slow) <= 100 and slow == list(range(len(slow)))
    finally:
        ssub.stop()
    # batches, both tables, stopped in the middle of the replay (as by Ctrl-C): the
    # checkpoint says where it stopped, and the restart delivers the rest, none twice
    ckpt = str(tmp_path / "ckpt")
    rows = []

    def on_batch(b):
        rows.extend(b["seq"].tolist())
        if len(rows) >= n // 3:
            bsub.stop()

    bsub = db.subscribe(["trades", "quotes"], callback=on_batch, batch_size=1000,
                        checkpoint=ckpt, from_seq=0)
    try:
        db.run(timeout=60)
        first = len(rows)
        assert n // 3 <= first < n and bsub.cursors()[0][0] == rows[-1] + 1
    finally:
        bsub.stop()
    # ...and a batch callback that raises with stop_on_error: that batch comes again
    calls = []

    def failing(b):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("third batch")
        rows.extend(b["seq"].tolist())

    bsub = db.subscribe(["trades", "quotes"], callback=failing, batch_size=1000,
                        checkpoint=ckpt, stop_on_error=True)
    try:
        with pytest.raises(RuntimeError, match="third batch"):
            db.run(timeout=60)
        assert len(rows) == first + 2000
    finally:
        bsub.stop()
    bsub = db.subscribe(["trades", "quotes"], callback=lambda b: rows.extend(b["seq"].tolist()),
                        batch_size=1000, checkpoint=ckpt)
    try:
        deadline = time.monotonic() + 60
        while len(rows) < n and time.monotonic() < deadline:
            db.run(timeout=0.2)
        assert rows == list(range(n))
    finally:
        bsub.stop()
        db.close()


@pytest.mark.slow  # 66,000 commits one by one: ~30 s
def test_a_checkpoint_older_than_a_roll_and_a_lap_resumes_without_a_false_overrun(
        db_factory, tmp_path):
    """A subscriber resumes from a checkpoint taken before the change ring wrapped and the
    shard rolled: its rows come from history to the end of the backfill, then it goes on
    from the ring where the backfill began -- not from a stale ring position, which read as
    lapped (an overrun reported with to_seq -1)."""
    d = db_factory("--shards", "1", "--feed", "none", "--no-redis")
    ckpt = str(tmp_path / "ckpt")
    p = wayy.Producer(d.path)
    p.publish("trades", symbol="LAP", price=1.0, size=1.0)
    p.flush(10.0)
    db = wayy.attach(d.path)
    got, overruns = [], []

    def subscribe():
        return db.subscribe("trades", callback=lambda t: got.append(t.seq), checkpoint=ckpt,
                            from_seq=0, on_overrun=overruns.append)

    sub = subscribe()
    db.run(timeout=0.5)
    sub.stop()
    assert got == [0]
    n = 66_000  # more commits than the change ring holds records (65,536)
    for i in range(n):
        p.publish("trades", symbol="LAP", price=2.0 + i, size=1.0)
        p.flush(10.0)
    p.close()
    assert run_cli("roll", "--db", d.path).returncode == 0
    sub = subscribe()
    try:
        while len(got) < n + 1 and not overruns:
            db.run(timeout=0.5)
        p = wayy.Producer(d.path)  # and live rows after it, from the ring
        p.publish("trades", symbol="LAP", price=-1.0 + 1e9, size=1.0)
        p.flush(10.0)
        p.close()
        deadline = time.monotonic() + 30
        while len(got) < n + 2 and time.monotonic() < deadline:
            db.run(timeout=0.5)
        assert overruns == [] and sub.stats()["overruns"] == 0
        assert got == list(range(n + 2))
    finally:
        sub.stop()
        db.close()


@pytest.mark.parametrize("batch", [False, True])
def test_a_checkpoint_with_differing_table_cursors_resumes_each_table_from_history(
        db_factory, tmp_path, batch):
    """Batch subscribers checkpoint one cursor per table, often different. Resumed after a
    roll (the rows now in history), each table goes on from its own cursor: trades below
    the trades cursor were delivered before and must not come again."""
    import json

    from wayy.subscribe import _payload_crc

    d = db_factory("--shards", "1", "--feed", "none")
    p = wayy.Producer(d.path)
    for i in range(200):
        p.publish("trades", symbol="SPY", price=1.0 + i, size=1)
        p.publish("quotes", symbol="SPY", bid=1.0, ask=2.0, bid_size=1, ask_size=1)
    p.close()
    ck = str(tmp_path / "ck.json")
    with wayy.attach(d.path) as db:
        wait_for(lambda: len(db["trades"]) + len(db["quotes"]) == 400, what="the rows")
        db.subscribe(["trades", "quotes"], checkpoint=ck).stop()
    assert run_cli("roll", "--db", d.path).returncode == 0
    doc = json.load(open(ck))
    doc["cursors"][0] = [300, 100]  # delivered: trades below seq 300, quotes below 100
    doc.pop("crc32")
    doc["crc32"] = _payload_crc(doc)
    json.dump(doc, open(ck, "w"))
    got = []
    kw = {"batch_size": 50, "max_latency_ms": 1} if batch else {}
    with wayy.attach(d.path) as db:
        def cb(item):
            if batch:
                got.extend((s, item.table) for s in item["seq"].tolist())
            else:
                got.append((item.seq, item.table))

        db.subscribe(["trades", "quotes"], checkpoint=ck, callback=cb, **kw)
        db.run(timeout=2.0)
    seqs = {t: [s for s, tt in got if tt == t] for t in ("trades", "quotes")}
    assert seqs["trades"] == list(range(300, 400, 2))  # trades have the even seqs
    assert seqs["quotes"] == list(range(101, 400, 2))


def test_a_retention_failure_does_not_fail_a_roll_that_moved_the_rows(tmp_path, caplog):
    """Retention runs after the rows are in history and the memory is reset: when it fails
    (here: a cut-off before year 1, which the CLI now refuses), the roll is still done --
    reported as done, not as failed with the rows already moved."""
    import logging

    from benchmarks.bench_ingest import _single_shard_db
    from shm import inbound
    from shm.layout import control as C
    from shm.layout import inbound as L
    from shm.shard import InboundRing
    from workers.roll import RollConfig
    from workers.writer import ShardWriter

    d = str(tmp_path)
    with _single_shard_db(d, 1 << 16, writer=False) as prefix:
        ring = InboundRing.attach(prefix, 0)
        inbound.set_accepting(ring.hdr32, 1, L.REFUSE_NONE)
        w = ShardWriter(prefix, 0, d, None, RollConfig(keep_days=10**7))
        w.on_start()
        p = wayy.Producer(d)
        try:
            p.publish_batch("trades", {"symbol": ["RT"] * 10, "price": np.arange(1.0, 11.0),
                                       "size": np.ones(10)})
            while w.do_work():
                pass
            with caplog.at_level(logging.WARNING, logger="wayy.roll"):
                stats = w.roll("request")
            assert stats is not None and stats["rows"]["trades"] == 10
            assert "retention failed" in caplog.text
            assert int(w.ctl.counters[C.C_ROLL_FAILS]) == 0
        finally:
            p.close()
            w.on_close()
            ring.close()
