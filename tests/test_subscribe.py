"""Local subscribers.

Part 1 runs the subscriber against shard segments and change rings that this process writes
itself (``FakeDb``: columns, commit and publish exactly as the shard writer does them), so
laps, seq gaps and crashes between commit and publish can be staged precisely. Part 2 runs real
databases (`wayy start`), real subscriber processes and real signals.

Acceptable outcomes are named in every test: each row delivered exactly once, in seq order
per shard — never a duplicate, never a gap.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import wayy
from shm import ingest
from shm import subscribers as K
from shm.change_ring import ChangeRingReader, ChangeRingWriter, sym_mask_of
from shm.layout import change_ring as CRL
from shm.layout import shard as S
from shm.layout import tables as T
from shm.segment import db_prefix, list_segments, unlink_quiet
from shm.shard import ShardData, segment_name
from tests.conftest import REPO, run_cli, wait_for
from wayy.errors import CorruptData, InvalidInput, InvalidName, NotRunning
from wayy.manifest import Manifest, acquire_lock
from wayy.names import shard_of
from wayy.status import read_subscribers
from wayy.subscribe import Batch, Overrun, Tick, _payload_crc

T0 = 1_700_000_000_000_000_000


class FakeDb:
    """Shard segments and change rings of a database, written by this process.

    ``append`` does what the shard writer does for one accepted batch: intern names, write
    the columns and the per-symbol links, commit (one release store), publish one change
    record. ``publish=False`` stages a writer that died between commit and publish.
    """

    def __init__(self, path: str, nshards: int = 2, capacity: int = 1 << 16, ring: int = 64,
                 max_symbols: int = 64, max_venues: int = 8) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = os.path.realpath(path)
        self.prefix = db_prefix(self.path)
        self.lock = acquire_lock(self.path)  # "running": subscribers check the lock
        self.nshards = nshards
        self.data = [ShardData.create(self.prefix, k, nshards, capacity, max_symbols,
                                      max_venues) for k in range(nshards)]
        self.rings = [ChangeRingWriter.create(segment_name(self.prefix, k, "changes"), ring)
                      for k in range(nshards)]
        self.state = [np.zeros(ingest.N_STATE, np.int64) for _ in range(nshards)]
        for st in self.state:
            st[ingest.S_NVEN] = 1  # venue 0 is ""
        self.manifest = Manifest(path=self.path, prefix=self.prefix, shards=nshards,
                                 capacity=capacity, ring_capacity=1 << 16,
                                 max_symbols=max_symbols, max_venues=max_venues,
                                 supervisor_pid=os.getpid(), started_ns=time.time_ns(),
                                 change_ring_records=ring)
        self.dbs: list = []

    def attach(self) -> wayy.Database:
        db = wayy.Database(self.manifest)
        self.dbs.append(db)
        return db

    def _intern(self, k: int, names, symbols: bool) -> np.ndarray:
        d, st = self.data[k], self.state[k]
        arr = d.sym_names if symbols else d.ven_names
        w = ingest.S_NSYM if symbols else ingest.S_NVEN
        have = {bytes(arr[i]).rstrip(b"\0").decode(): i for i in range(int(st[w]))}
        out = []
        for nm in names:
            i = have.get(nm)
            if i is None:
                i = int(st[w])
                arr[i] = nm.encode()
                have[nm] = i
                st[w] += 1
                d.hdr32[S.N_SYMBOLS_I32 if symbols else S.N_VENUES_I32] = st[w]
            out.append(i)
        return np.array(out, np.int32)

    def append(self, table: str, symbols, values=None, venues=None, ts=None, k=None,
               publish: bool = True) -> list[int]:
        """One accepted batch; every symbol must be on shard ``k`` (default: the first's)."""
        symbols = list(symbols)
        n = len(symbols)
        if k is None:
            k = shard_of(symbols[0], self.nshards)
        assert all(shard_of(s, self.nshards) == k for s in symbols)
        d, st = self.data[k], self.state[k]
        t = T.TABLE_IDS[table]
        if values is None:
            base = float(st[ingest.S_NEXT_SEQ]) + 1.0
            values = [np.arange(n) + base] + [np.arange(n) + base + 0.5] * (
                len(T.VALUE_COLUMNS[t]) - 1)
        sid = self._intern(k, symbols, True)
        vid = self._intern(k, venues if venues is not None else [""] * n, False)
        r0, s0 = int(st[t]), int(st[ingest.S_NEXT_SEQ])
        ts = np.full(n, T0 + s0) if ts is None else np.asarray(ts, np.int64)
        cols = d.cols[t]
        cols["ts"][r0:r0 + n] = ts
        cols["symbol"][r0:r0 + n] = sid
        cols["venue"][r0:r0 + n] = vid
        for c, v in zip(T.VALUE_COLUMNS[t], values):
            cols[c][r0:r0 + n] = v
        cols["seq"][r0:r0 + n] = np.arange(s0, s0 + n)
        for j in range(n):
            r, b = r0 + j, (r0 + j) // S.BLOCK_ROWS
            if r % S.BLOCK_ROWS == 0:
                d.blk_min[t][b] = d.blk_max[t][b] = ts[j]
            else:
                d.blk_min[t][b] = min(d.blk_min[t][b], ts[j])
                d.blk_max[t][b] = max(d.blk_max[t][b], ts[j])
            d.prev[t][r] = d.last[t][sid[j]]
            d.last[t][sid[j]] = r
        st[t] += n
        st[ingest.S_NEXT_SEQ] += n
        ingest.commit(d.hdr64, st, time.time_ns())
        if publish:
            self.rings[k].publish(s0, n, t, r0, int(ts[0]), int(ts[-1]),
                                  int(sym_mask_of(sid)))
        return list(range(s0, s0 + n))

    def close(self) -> None:
        for db in self.dbs:
            db.close()
        for r in self.rings:
            r.close()
            r.unlink()
        for d in self.data:
            d.close()
            d.seg.unlink()
        for name in list_segments(self.prefix):
            unlink_quiet(name)
        os.close(self.lock)


@pytest.fixture(scope="module", autouse=True)
def _warm():
    K.warm_up()


@pytest.fixture
def fake(tmp_path):
    made = []

    def make(**kw) -> FakeDb:
        f = FakeDb(str(tmp_path / f"fake{len(made)}"), **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()
        assert not list_segments(f.prefix)


def _seqs(items) -> list[tuple[int, int]]:
    return [(t.shard, t.seq) for t in items]


# --- ticks ---------------------------------------------------------------------------------------

def test_tick_fields_order_and_channel_filtering(fake):
    f = fake(nshards=2)
    db = f.attach()
    aapl, goog = [], []
    db.subscribe("ticks:AAPL", callback=aapl.append)
    db.subscribe("quotes", symbol="GOOG", venue="NYSE", callback=goog.append)
    every = db.subscribe(["trades", "quotes"])  # every row of both tables, polled
    f.append("trades", ["AAPL", "MSFT", "AAPL"], venues=["NYSE", "IEX", "IEX"])
    f.append("quotes", ["GOOG", "GOOG", "AAPL"], venues=["NYSE", "ARCA", "NYSE"])
    f.append("trades", ["S2", "Y"])  # shard 0
    db.run(timeout=0.2)
    assert [(t.seq, t.venue, t.price) for t in aapl] == [(0, "NYSE", 1.0), (2, "IEX", 3.0)]
    t = aapl[0]
    assert t.symbol == t["symbol"] == "AAPL" and t.table == "trades" and t.shard == 1
    assert t.timestamp == t.ts == t["ts"] == T0 and t.size == 1.5 and t.bid is None
    assert t.to_dict() == {"timestamp": T0, "symbol": "AAPL", "venue": "NYSE", "price": 1.0,
                           "size": 1.5, "seq": 0, "shard": 1, "table": "trades"}
    assert [(q.seq, q.venue, q.bid, q.ask) for q in goog] == [(3, "NYSE", 4.0, 4.5)]
    assert goog[0].price is None and set(goog[0].keys()) >= {"bid", "ask", "bid_size"}
    with pytest.raises(KeyError, match="no field"):
        t["nope"]
    got = []
    while (item := every.poll(0.05)) is not None:
        got.append(item)
    # per shard in seq order, across tables
    assert [s for s in _seqs(got) if s[0] == 1] == [(1, i) for i in range(6)]
    assert [s for s in _seqs(got) if s[0] == 0] == [(0, 0), (0, 1)]


def test_subscribe_before_the_symbol_exists(fake):
    f = fake(nshards=1)
    db = f.attach()
    got = []
    db.subscribe("ticks:LATE:NYSE", callback=got.append)
    db.subscribe("trades", venue="ARCA", callback=got.append)
    f.append("trades", ["EARLY"])
    db.run(timeout=0.05)
    assert got == []
    f.append("trades", ["LATE", "LATE", "EARLY"], venues=["IEX", "NYSE", "ARCA"])
    db.run(timeout=0.1)
    assert sorted((t.symbol, t.venue) for t in got) == [("EARLY", "ARCA"), ("LATE", "NYSE")]


def test_live_starts_at_the_high_water_mark_with_no_gap_or_duplicate(fake):
    f = fake(nshards=1)
    db = f.attach()
    f.append("trades", ["A"] * 5)
    sub = db.subscribe("trades")
    assert sub.hwm == {0: 5}
    f.append("trades", ["A"] * 3)
    got = [sub.poll(1.0).seq for _ in range(3)]
    assert got == [5, 6, 7] and sub.poll(0.01) is None
    # from_seq: history from the columns, then live, meeting exactly
    hist = db.subscribe("trades", from_seq=2)
    f.append("trades", ["A"] * 2)
    got = [hist.poll(1.0).seq for _ in range(8)]
    assert got == list(range(2, 10)) and hist.poll(0.01) is None


def test_a_record_published_before_subscribe_but_after_the_tail_is_not_repeated(fake):
    """The subscriber reads the ring tail, then the snapshot: a batch committed in between is
    below the high-water mark and its record (at or after that tail) is skipped."""
    f = fake(nshards=1)
    db = f.attach()
    f.append("trades", ["A"] * 2, publish=False)  # committed, its record still to come
    sub = db.subscribe("trades")
    f.rings[0].publish(0, 2, 0, 0, T0, T0, 1)  # the late record of rows below the mark
    f.append("trades", ["A"])
    assert sub.poll(1.0).seq == 2 and sub.poll(0.02) is None


def test_lapped_subscriber_backfills_every_row_exactly_once(fake):
    f = fake(nshards=1, ring=4)
    db = f.attach()
    told: list[Overrun] = []
    sub = db.subscribe("ticks:A", on_overrun=told.append)
    want = []
    for i in range(50):
        seqs = f.append("trades", ["A", "B"] if i % 3 else ["A"])
        want.append(seqs[0])  # A is each batch's first row
        if i % 7 == 0:
            f.append("quotes", ["A"])  # the other table: not followed
    got = []
    while (t := sub.poll(0.05)) is not None:
        got.append(t)
    assert [t.seq for t in got] == want and {t.symbol for t in got} == {"A"}
    st = sub.stats()
    assert st["overruns"] >= 1 and told and told[0].shard == 0
    assert told[0].from_seq == 0 and told[0].to_seq > 0
    assert st["backfilled"] > 0 and st["lost"] == 0


def test_seq_gap_from_a_writer_that_died_between_commit_and_publish(fake):
    f = fake(nshards=1)
    db = f.attach()
    got = []
    sub = db.subscribe("trades", callback=got.append)
    f.append("trades", ["A"] * 2)
    f.append("trades", ["A"] * 3, publish=False)  # committed, never announced
    f.append("trades", ["A"])
    db.run(timeout=0.1)
    assert [t.seq for t in got] == list(range(6))
    assert sub.stats()["gaps"] == 1


def test_from_ts(fake):
    f = fake(nshards=1)
    db = f.attach()
    f.append("trades", ["A"] * 4, ts=[T0 + 10, T0 + 20, T0 + 30, T0 + 40])
    f.append("quotes", ["A"] * 2, ts=[T0 + 25, T0 + 50])
    sub = db.subscribe(["trades", "quotes"], from_ts=T0 + 25)
    got = [(t.table, t.timestamp) for t in iter(lambda: sub.poll(0.02), None)]
    assert got == [("trades", T0 + 30), ("trades", T0 + 40), ("quotes", T0 + 25),
                   ("quotes", T0 + 50)]
    assert db.subscribe("trades", from_ts=np.datetime64(T0 + 35, "ns")).poll(0.02).price == 4.0


# --- batches -------------------------------------------------------------------------------------

def test_batch_size_limit_and_zero_copy_views(fake):
    f = fake(nshards=1)
    db = f.attach()
    batches: list[Batch] = []
    db.subscribe("trades", callback=batches.append, batch_size=100, max_latency_ms=300)
    for _ in range(7):
        f.append("trades", ["A", "B"] * 50)
    f.append("trades", ["A"] * 30)
    t0 = time.monotonic()
    db.run(timeout=0.02)
    assert [len(b) for b in batches[:7]] == [100] * 7
    if time.monotonic() - t0 < 0.25:
        assert len(batches) == 7  # the last 30 rows wait for max_latency_ms
    b = batches[0]
    assert b.zero_copy and not b["price"].flags.writeable and not b["price"].flags.owndata
    assert list(b["symbol"][:3]) == ["A", "B", "A"] and b.first_seq == 0 and b.last_seq == 99
    assert list(b["symbol_id"][:2]) == [0, 1]
    ticks = list(b)
    assert isinstance(ticks[0], Tick) and ticks[1].symbol == "B" and ticks[99].seq == 99
    t_end = time.monotonic() + 3
    while len(batches) < 8 and time.monotonic() < t_end:
        db.run(timeout=0.01)
    assert [len(x) for x in batches] == [100] * 7 + [30]
    assert b.to_pandas()["price"].iloc[0] == 1.0


def test_batch_max_latency_and_filtered_copies(fake):
    f = fake(nshards=1)
    db = f.attach()
    seen = []

    def on_batch(b):
        seen.append((time.monotonic(), b))

    db.subscribe("ticks:A", callback=on_batch, max_latency_ms=200)
    t0 = time.monotonic()
    f.append("trades", ["A", "B", "A"])
    db.run(timeout=0.02)
    if time.monotonic() - t0 < 0.15:  # (a machine that stalled 150 ms proves nothing here)
        assert seen == []  # younger than max_latency: still pending
    deadline = time.monotonic() + 2
    while not seen and time.monotonic() < deadline:
        db.run(timeout=0.05)
    assert len(seen) == 1
    at, b = seen[0]
    assert 0.195 <= at - t0 < 1.5
    assert list(b["seq"]) == [0, 2] and not b.zero_copy and b["price"].flags.owndata


def test_batch_filter_mask(fake):
    f = fake(nshards=1)
    db = f.attach()
    sub = db.subscribe("trades", batch_size=10, filter=lambda b: b["price"] > 5)
    f.append("trades", ["A"] * 10)
    b = sub.poll(1.0)
    assert list(b["price"]) == [6.0, 7.0, 8.0, 9.0, 10.0]
    assert sub.cursors()[0][0] == 10  # next trade; quotes are not followed


def test_a_batch_filter_returning_the_wrong_thing_is_logged_in_one_line(fake, caplog):
    """A filter that returns a list (not a bool or a mask) is a user's mistake: counted,
    the batch not delivered, and logged with what was wrong, not with wayy's traceback."""
    f = fake(nshards=1)
    db = f.attach()
    got = []
    sub = db.subscribe("trades", callback=got.append, batch_size=10,
                       filter=lambda b: [True])
    f.append("trades", ["A"] * 10)
    with caplog.at_level(logging.ERROR, logger="wayy.subscribe"):
        db.run(timeout=0.3)
    assert got == [] and sub.stats()["errors"] >= 1
    rec = [r for r in caplog.records if "batch filter must return" in r.getMessage()]
    assert rec and all(r.exc_info is None for r in rec)
    assert "got list" in rec[0].getMessage() and "Traceback" not in caplog.text


def test_a_tick_filter_returning_an_array_is_logged_in_one_line(fake, caplog):
    """A per-tick filter answering with an array has no truth value: counted, the tick not
    delivered, one line saying what was wrong (not wayy's traceback); the next ticks go on."""
    f = fake(nshards=1)
    db = f.attach()
    got = []
    sub = db.subscribe("trades", callback=got.append,
                       filter=lambda t: np.array([True, t.price > 2]))
    f.append("trades", ["A"] * 3)
    with caplog.at_level(logging.ERROR, logger="wayy.subscribe"):
        db.run(timeout=0.3)
    assert got == [] and sub.stats()["errors"] == 3
    rec = [r for r in caplog.records if "per-tick filter must return" in r.getMessage()]
    assert rec and all(r.exc_info is None for r in rec)
    assert "got ndarray" in rec[0].getMessage() and "Traceback" not in caplog.text


# --- checkpoints ---------------------------------------------------------------------------------

def test_checkpoint_resume_no_gap_no_duplicate(fake, tmp_path):
    f = fake(nshards=2)
    path = str(tmp_path / "ck" / "s1.json")
    syms = ["AAPL", "S2"]  # one per shard
    db = f.attach()
    got = []
    sub = db.subscribe("trades", callback=got.append, checkpoint=path)
    assert sub.state is None
    for s in syms:
        f.append("trades", [s] * 3)
    db.run(timeout=0.05)
    sub.stop()
    doc = json.load(open(path))
    assert doc["cursors"] == [[3, 3], [3, 3]] and doc["prefix"] == f.prefix
    for s in syms:
        f.append("trades", [s] * 2)
    db2 = f.attach()
    got2 = []
    sub2 = db2.subscribe("trades", callback=got2.append, checkpoint=path)
    db2.run(timeout=0.05)
    assert sorted(_seqs(got)) == [(k, i) for k in (0, 1) for i in range(3)]
    assert sorted(_seqs(got2)) == [(k, i) for k in (0, 1) for i in (3, 4)]
    sub2.stop()


def test_run_returning_by_its_timeout_writes_the_checkpoint(fake, tmp_path):
    # a script that runs for a while and exits without stop() must not repeat rows next time
    f = fake(nshards=2)
    path = str(tmp_path / "t.json")
    db = f.attach()
    got = []
    sub = db.subscribe("trades", callback=got.append, checkpoint=path, checkpoint_ms=60_000)
    for sym in ("AAPL", "S2"):
        f.append("trades", [sym] * 3)
    db.run(timeout=0.2)
    assert len(got) == 6 and sub.active
    assert json.load(open(path))["cursors"] == [[3, 3], [3, 3]]
    sub.stop()


@pytest.mark.parametrize("batch", [False, True])
def test_checkpoint_ms_and_status_within_a_long_pass(fake, tmp_path, batch):
    """A backlog delivered to a slow callback is one long pass: the checkpoint_ms checkpoint
    and the registry's heartbeat and counters (`wayy status`) are kept up inside it, not
    only once it ends (a SIGKILL there repeated the whole backlog; status showed 0 delivered
    and a stale heartbeat)."""
    f = fake(nshards=1)
    f.append("trades", ["AAPL"] * 5000)
    path = str(tmp_path / "long.json")
    db = f.attach()
    heads = [(int(d.snapshot()[S.COMMIT_NEXT_SEQ]), T0) for d in f.data]
    seen: dict = {}
    count = [0]

    def look() -> None:
        seen["at"] = count[0]
        seen["cursor"] = (json.load(open(path))["cursors"][0][0] if os.path.exists(path)
                          else None)
        seen["status"] = read_subscribers(f.prefix, heads, time.time_ns())[0]
        seen["stats_lag"] = sub.stats()["shards"][0]["lag_rows"]
        sub.stop()

    def on_tick(_t) -> None:
        count[0] += 1
        time.sleep(0.0005)
        if count[0] == 600:
            look()

    def on_batch(b) -> None:
        count[0] += len(b)
        time.sleep(0.005)
        if count[0] >= 600 and not seen:
            look()

    sub = db.subscribe("trades", callback=on_batch if batch else on_tick, from_seq=0,
                       checkpoint=path, checkpoint_ms=50,
                       **({"batch_size": 10, "max_latency_ms": 1000} if batch else {}))
    db.run(timeout=30)  # (a stop in batch mode still delivers the batches pending)
    assert seen["at"] == 600, seen
    assert seen["cursor"] is not None and 0 < seen["cursor"] <= 600, seen
    st = seen["status"]
    assert 0 < st["delivered"] <= 600, st
    # rows read ahead inside the pass (or waiting in a batch) but not delivered are lag
    assert st["lag_rows"] >= 5000 - 610, st
    assert seen["stats_lag"] >= 5000 - 610, seen
    assert st["heartbeat_age_s"] < 1.0 and not st["silent"], st


@pytest.mark.parametrize("batch", [False, True])
def test_run_timeout_holds_within_a_long_pass(fake, batch):
    """db.run(timeout=) returns near its deadline even in the middle of a backlog delivered
    to a slow callback (it waited for the whole pass: 36 s for a 2 s timeout), and the next
    run goes on from there: every row once, in order."""
    f = fake(nshards=1)
    want = f.append("trades", ["AAPL"] * 3000)
    db = f.attach()
    got: list[int] = []

    def on_tick(t) -> None:
        got.append(t.seq)
        time.sleep(0.0005)

    def on_batch(b) -> None:
        got.extend(int(x) for x in b["seq"])
        time.sleep(0.005)

    db.subscribe("trades", callback=on_batch if batch else on_tick, from_seq=0,
                 **({"batch_size": 10, "max_latency_ms": 1000} if batch else {}))
    t0 = time.monotonic()
    db.run(timeout=0.3)
    took = time.monotonic() - t0
    assert took < 1.0, took  # the whole backlog takes ~1.5-2 s
    assert 0 < len(got) < len(want)
    for _ in range(100):
        if len(got) >= len(want):
            break
        db.run(timeout=0.3)
    assert got == want


@pytest.mark.parametrize("nshards", [1, 2])
def test_short_run_timeouts_go_on_where_the_last_run_stopped(fake, nshards):
    """A per-tick subscriber driven by db.run(timeout=0.001) over a backlog: each run
    delivers until its deadline, and the rows its follow call read but did not deliver
    wait for the next run -- they are not read again (every run read up to 32,768 rows
    again to deliver 16: 100x slower) -- every row once, in order; with two shards, each
    shard's rows go on where they stopped."""
    f = fake(nshards=nshards)

    def backlog(sym: str) -> None:
        for table, n in (("trades", 10_000), ("quotes", 3_000), ("trades", 5_000),
                         ("quotes", 2_000)):
            f.append(table, [sym] * n)

    backlog("AAPL")  # shard 1 of 2
    db = f.attach()
    got: list[tuple[int, str, int]] = []
    sub = db.subscribe(["trades", "quotes"], from_seq=0,
                       callback=lambda t: got.append((t.shard, t.table, t.seq)))
    calls = []
    for follow in sub._follows:
        def counted(*args, call=follow.call):
            calls.append(1)
            return call(*args)
        follow.call = counted
    db.run(timeout=0.001)  # rows of shard 1 wait for the next run
    runs = 1
    if nshards == 2:
        backlog("S2")  # shard 0: the next run's deadline comes while delivering these
    total = len(db["trades"]) + len(db["quotes"])
    while len(got) < total and runs < 100_000:
        db.run(timeout=0.001)
        runs += 1
    assert len(got) == total == len(set(got))
    for k in range(nshards):  # each shard's seqs once, in order
        seqs = [s for kk, _, s in got if kk == k]
        assert seqs == list(range(len(seqs)))
    assert runs > 3  # the deadline did cut the backlog into several runs
    # a few follow calls read the backlog (it took one per run: ~1,000 here)
    assert len(calls) <= 20 * nshards, (len(calls), runs)


def test_rows_left_by_a_deadline_wait_when_the_next_deadline_comes_on_another_shard(fake):
    """Rows a run read and did not deliver (its deadline came) wait for the next run. When
    that run's deadline comes on another shard first, they wait once more -- they are not
    delivered in part with the rest passed over. (Slow ticks place the deadlines: a run
    looks at its deadline every 16 ticks.)"""
    f = fake(nshards=2)
    for table in ("trades", "quotes") * 5:
        f.append(table, ["AAPL"] * 20)  # shard 1: ten runs of 20 rows
    db = f.attach()
    got: list[tuple[int, int]] = []
    slow = {(1, 15), (0, 15)}  # the 16th tick of each shard's first run

    def on_tick(t) -> None:
        got.append((t.shard, t.seq))
        if (t.shard, t.seq) in slow:
            time.sleep(0.01)  # past run()'s deadline: the run stops after this tick

    db.subscribe(["trades", "quotes"], from_seq=0, callback=on_tick)
    db.run(timeout=0.005)  # shard 1: 16 rows delivered, 4 + nine runs wait
    assert got == [(1, s) for s in range(16)]
    for table in ("trades", "quotes") * 5:
        f.append(table, ["S2"] * 20)  # shard 0: its deadline comes first in the next run
    for _ in range(1000):
        if len(got) >= 400:
            break
        db.run(timeout=0.005)
    for k in (0, 1):
        assert [s for kk, s in got if kk == k] == list(range(200)), k
    assert len(got) == 400


def test_checkpoint_by_name_lives_under_the_database(fake):
    f = fake(nshards=1)
    db = f.attach()
    sub = db.subscribe("trades", checkpoint="strat-1")
    f.append("trades", ["A"])
    assert sub.poll(1.0).seq == 0
    sub.stop()
    assert json.load(open(os.path.join(f.path, "checkpoints", "strat-1.json")))["cursors"] == \
        [[1, 1]]
    with pytest.raises(InvalidInput, match="checkpoint name"):
        db.subscribe("trades", checkpoint="bad name!")
    with pytest.raises(InvalidInput, match="1-64 characters"):
        db.subscribe("trades", checkpoint="x" * 65)
    db.subscribe("trades", checkpoint="example-mean_reversion").stop()  # long names are fine
    with pytest.raises(InvalidInput, match="is a directory"):
        db.subscribe("trades", checkpoint=f.path + "/")


def test_checkpoint_in_batch_mode_keeps_per_table_cursors(fake, tmp_path):
    f = fake(nshards=1)
    path = str(tmp_path / "b.json")
    db = f.attach()
    got = []
    sub = db.subscribe(["trades", "quotes"], callback=lambda b: got.append(list(b["seq"])),
                       batch_size=4, max_latency_ms=10_000, checkpoint=path)
    f.append("trades", ["A"] * 4)   # seqs 0-3: a full trades batch
    f.append("quotes", ["A"] * 2)   # 4-5: pending
    f.append("trades", ["A"] * 1)   # 6: pending
    db.run(timeout=0.05)
    assert got == [[0, 1, 2, 3]]
    assert sub.cursors() == [[6, 4]]  # next trade to deliver is 6, next quote 4
    sub.save_checkpoint()
    os.kill(os.getpid(), 0)
    # a "crash": no stop, no flush; a new subscriber resumes from the checkpoint
    sub._ckpt.close()
    sub._active = False
    got.clear()
    sub2 = db.subscribe(["trades", "quotes"], callback=lambda b: got.append(list(b["seq"])),
                        batch_size=4, max_latency_ms=1, checkpoint=path)
    db.run(timeout=0.05)
    assert sorted(got) == [[4, 5], [6]]
    sub2.stop()


def test_on_checkpoint_state_round_trips(fake, tmp_path):
    f = fake(nshards=1)
    path = str(tmp_path / "st.json")
    db = f.attach()
    count = [0]

    def cb(t):
        count[0] += 1

    db.subscribe("trades", callback=cb, checkpoint=path, on_checkpoint=lambda: {"n": count[0]})
    f.append("trades", ["A"] * 4)
    db.run(timeout=0.05)
    db.close()
    db2 = f.attach()
    sub = db2.subscribe("trades", checkpoint=path)
    assert sub.state == {"n": 4}
    with pytest.raises(InvalidInput, match="needs checkpoint"):
        db2.subscribe("trades", on_checkpoint=dict)


def test_bad_checkpoints_are_refused(fake, tmp_path):
    f = fake(nshards=1)
    db = f.attach()
    p = str(tmp_path / "c.json")
    held = db.subscribe("trades", checkpoint=p)
    with pytest.raises(InvalidInput, match="in use by another subscription of this process"):
        db.subscribe("trades", checkpoint=p)
    held.stop()
    other = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0); "
        "print('held', flush=True); sys.stdin.read()"), p + ".lock"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(InvalidInput, match=rf"in use by another subscriber \(pid {other.pid}\)"):
            db.subscribe("trades", checkpoint=p)
    finally:
        other.stdin.close()
        other.wait(10)
    for junk in (b"{not json", b"[]", b'{"wayy_checkpoint": 1}', b"[" * 100000 + b"]" * 100000):
        open(p, "wb").write(junk)
        with pytest.raises(CorruptData, match="corrupt"):
            db.subscribe("trades", checkpoint=p)
    # a good checkpoint with one flipped digit fails its checksum
    held = db.subscribe("trades", checkpoint=p + "2")
    f.append("trades", ["A"] * 12)
    held.poll(1.0)
    held.stop()
    raw = open(p + "2").read().replace('"cursors":[[1,1]]', '"cursors":[[9,9]]')
    open(p + "2", "w").write(raw)
    with pytest.raises(CorruptData, match="checksum"):
        db.subscribe("trades", checkpoint=p + "2")
    # another subscription's checkpoint: its cursors count other rows
    osub = db.subscribe("ticks:A", checkpoint=p + "5")
    osub.stop()
    for chans in ("ticks:B", "trades", ["ticks:A", "ticks:B"]):
        with pytest.raises(InvalidInput, match="belongs to channels ticks:A"):
            db.subscribe(chans, checkpoint=p + "5")
    db.subscribe("ticks:A", checkpoint=p + "5").stop()  # the same channels: fine
    # another database's checkpoint
    other = fake(nshards=1)
    odb = other.attach()
    osub = odb.subscribe("trades", checkpoint=p + "3")
    osub.stop()
    with pytest.raises(InvalidInput, match="belongs to the database"):
        db.subscribe("trades", checkpoint=p + "3")
    # a checkpoint ahead of the database (recreated without history)
    other.append("trades", ["A"] * 40)
    osub = odb.subscribe("trades", checkpoint=p + "4", from_seq=0)
    while osub.poll(0.02) is not None:
        pass
    osub.stop()
    doc = json.load(open(p + "4"))
    doc.update(db_path=f.path, prefix=f.prefix)
    doc.pop("crc32")
    doc["crc32"] = _payload_crc(doc)
    json.dump(doc, open(p + "4", "w"))
    with pytest.raises(InvalidInput, match="past the database's next seq.*checkpoint is from "
                                           "another run"):
        db.subscribe("trades", checkpoint=p + "4")
    with pytest.raises(InvalidInput, match="past the database's next seq.*from_seq names a "
                                           "row not yet written"):
        db.subscribe("trades", from_seq=10**12)
    # one table's cursor past the end is refused too, not only the lower of the two
    f.append("quotes", ["A"] * 3)
    both = db.subscribe(["trades", "quotes"], checkpoint=p + "6", from_seq=0)
    while both.poll(0.02) is not None:
        pass
    both.stop()
    doc = json.load(open(p + "6"))
    doc["cursors"][0][1] += 10**9
    doc.pop("crc32")
    doc["crc32"] = _payload_crc(doc)
    json.dump(doc, open(p + "6", "w"))
    with pytest.raises(InvalidInput, match="past the database's next seq"):
        db.subscribe(["trades", "quotes"], checkpoint=p + "6")
    # -1 (not followed) for one table of a followed shard: no file wayy writes
    doc["cursors"][0] = [-1, 3]
    doc.pop("crc32")
    doc["crc32"] = _payload_crc(doc)
    json.dump(doc, open(p + "6", "w"))
    with pytest.raises(CorruptData, match="bad cursors"):
        db.subscribe(["trades", "quotes"], checkpoint=p + "6")


# --- errors and faces ----------------------------------------------------------------------------

def test_callback_errors_are_logged_counted_and_skipped(fake, caplog):
    f = fake(nshards=1)
    db = f.attach()
    ok = []

    def cb(t):
        if t.seq % 2:
            raise ValueError(f"bad {t.seq}")
        ok.append(t.seq)

    sub = db.subscribe("trades", callback=cb)
    f.append("trades", ["A"] * 6)
    with caplog.at_level(logging.ERROR, logger="wayy.subscribe"):
        db.run(timeout=0.05)
    assert ok == [0, 2, 4] and sub.stats()["errors"] == 3 and sub.active
    assert "callback raised on Tick(" in caplog.text and "seq=1" in caplog.text
    assert "ValueError: bad 1" in caplog.text


def test_stop_on_error_raises_and_keeps_the_failing_tick_for_later(fake, tmp_path):
    f = fake(nshards=1)
    db = f.attach()
    p = str(tmp_path / "e.json")
    seen, errs = [], []

    def cb(t):
        if t.seq == 3:
            raise RuntimeError("poison")
        seen.append(t.seq)

    sub = db.subscribe("trades", callback=cb, stop_on_error=True, checkpoint=p,
                       on_error=lambda e, item: errs.append((str(e), item.seq)))
    other = db.subscribe("trades", callback=lambda t: None)
    f.append("trades", ["A"] * 6)
    with pytest.raises(RuntimeError, match="poison"):
        db.run(timeout=1)
    assert seen == [0, 1, 2] and errs == [("poison", 3)] and not sub.active
    assert not other.active  # run() stopped the rest cleanly
    assert json.load(open(p))["cursors"] == [[3, 3]]  # seq 3 is delivered again on restart


def test_bad_arguments(fake):
    f = fake(nshards=1)
    db = f.attach()
    for kw, words in [
        (dict(table_or_channel="ticks:A:B:C"), "expected ticks"),
        (dict(table_or_channel="ohlc:A"), "ohlc"),
        (dict(table_or_channel="bars"), "unknown table"),
        (dict(table_or_channel=["ticks:A"], symbol="A"), "not a list"),
        (dict(table_or_channel=[]), "no channels"),
        (dict(table_or_channel="trades", idle="sleepy"), "idle must be"),
        (dict(table_or_channel="trades", batch_size=0), "batch_size"),
        (dict(table_or_channel="trades", batch_size=2.5), "batch_size"),
        (dict(table_or_channel="trades", max_latency_ms=-1), "max_latency_ms"),
        (dict(table_or_channel="trades", callback=3), "callback must be callable"),
        (dict(table_or_channel="trades", from_seq=-1), "from_seq"),
        (dict(table_or_channel="trades", from_seq={5: 0}), "shard 5"),
        (dict(table_or_channel="trades", from_seq=0, from_ts=T0), "not both"),
        (dict(table_or_channel="trades", from_ts="today"), "from_ts"),
        (dict(table_or_channel="trades", from_seq=10**6), "past the database"),
        (dict(table_or_channel="trades", shards=[1]), "shards must name shards 0..0"),
        (dict(table_or_channel="trades", shards=[]), "shards must name"),
        (dict(table_or_channel="trades", shards=3), "list of shard numbers"),
        (dict(table_or_channel="trades", from_seq=[0, 0]), "one seq per shard"),
        (dict(table_or_channel="trades", from_seq=np.zeros((1, 1), int)), "one seq per"),
        (dict(table_or_channel="trades", stop_on_error="no"), "stop_on_error"),
    ]:
        with pytest.raises(InvalidInput, match=words):
            db.subscribe(**kw)
    assert issubclass(InvalidName, InvalidInput)
    sub = db.subscribe("trades", callback=print)
    with pytest.raises(InvalidInput, match="has a callback"):
        sub.poll()
    sub.stop()
    with pytest.raises(InvalidInput, match="no active callback"):
        db.run(timeout=0.01)
    assert not db.subscriptions
    # timeouts: a number of seconds or None, never a Python error from deep inside
    sub = db.subscribe("trades", callback=print)
    psub = db.subscribe("quotes")
    for bad in (float("nan"), "1", True, [1], np.complex128(1)):
        with pytest.raises(InvalidInput, match="timeout must be a number"):
            db.run(timeout=bad)
        with pytest.raises(InvalidInput, match="timeout must be a number"):
            psub.poll(timeout=bad)
    db.run(timeout=-1.0)  # the past: one pass, no wait
    db.run(timeout=-10**400)  # (beyond any float, still the past)
    assert psub.poll(timeout=float("-inf")) is None
    assert psub.poll(timeout=-10**400) is None
    sub.stop()
    psub.stop()


def test_not_running(tmp_path):
    with pytest.raises(NotRunning, match="directory does not exist"):
        wayy.attach(str(tmp_path / "nothing"))
    with pytest.raises(NotRunning, match="directory does not exist"):
        wayy.attach(tmp_path / "nothing")  # a pathlib.Path is a path too
    for bad in (None, b"/x", "", 3):
        with pytest.raises(InvalidInput, match="non-empty str or path"):
            wayy.attach(bad)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotRunning, match="a file, not a database directory"):
        wayy.attach(str(tmp_path / "afile"))


def test_iteration_context_manager_and_stop_inside_a_callback(fake):
    f = fake(nshards=1)
    db = f.attach()
    f.append("trades", ["A"] * 5)
    with db.subscribe("trades", from_seq=0) as sub:
        got = []
        for t in sub:
            got.append(t.seq)
            if t.seq == 3:
                break
    assert got == [0, 1, 2, 3] and not sub.active and sub.cursors() == [[4, 4]]
    seen = []

    def cb(t):
        seen.append(t.seq)
        if t.seq == 1:
            cbsub.stop()

    cbsub = db.subscribe("trades", callback=cb, from_seq=0)
    db.run(timeout=1)
    assert seen == [0, 1] and cbsub.cursors() == [[2, 2]] and not cbsub.active


def test_run_stops_cleanly_on_sigint_and_writes_checkpoints(fake, tmp_path):
    f = fake(nshards=1)
    db = f.attach()
    p = str(tmp_path / "i.json")
    got = []
    sub = db.subscribe("trades", callback=got.append, checkpoint=p, idle="block")
    f.append("trades", ["A"] * 3)
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    db.run()  # returns on SIGINT instead of raising KeyboardInterrupt
    assert time.monotonic() - t0 < 5
    assert len(got) == 3 and not sub.active and "SIGINT" in sub.stopped_reason
    assert json.load(open(p))["cursors"] == [[3, 3]]


@pytest.mark.parametrize("idle", ["spin", "yield", "backoff", "block"])
def test_every_idle_strategy_wakes_for_new_rows_on_any_shard(fake, idle):
    f = fake(nshards=2)
    db = f.attach()
    sub = db.subscribe("trades", idle=idle)
    for sym in ("S2", "AAPL", "S2"):  # shard 0, 1, 0
        threading.Timer(0.05, f.append, ("trades", [sym])).start()
        t0 = time.monotonic()
        t = sub.poll(5.0)
        assert t is not None and t.symbol == sym
        assert time.monotonic() - t0 < 1.0


def test_shards_restricts_what_is_followed(fake):
    f = fake(nshards=2)
    db = f.attach()
    sub = db.subscribe("trades", shards=[1])  # AAPL lives on shard 1, S2 on shard 0
    assert list(sub.hwm) == [1]
    f.append("trades", ["S2"])
    f.append("trades", ["AAPL"])
    t = sub.poll(2.0)
    assert t is not None and t.symbol == "AAPL" and t.shard == 1
    assert sub.poll(0.2) is None
    assert sub.cursors()[0] == [-1, -1]
    sub.stop()
    with pytest.raises(InvalidInput, match="S2 lives on shard 0, not in shards"):
        db.subscribe("ticks:S2", shards=[1])
    # also in a list with channels that are followed: refused, not silently never delivered
    with pytest.raises(InvalidInput, match="S2 lives on shard 0, not in shards"):
        db.subscribe(["ticks:S2", "trades"], callback=print, shards=[1])


@pytest.mark.parametrize("idle,sleeping", [("backoff", 1), ("block", 1), ("spin", 0)])
def test_one_ring_idle_strategies_wait_in_the_kernel_and_wake_for_each_tick(fake, idle,
                                                                            sleeping):
    # one followed ring takes the direct path: backoff and block must really sleep on the
    # ring's futex (registered as a waiter, so the writer wakes it), spin polls in a kernel
    # that releases the GIL (the ticks come from a thread of this process); all three wake
    # for every tick
    f = fake(nshards=1)
    db = f.attach()
    got, waiters = [], []

    def on_tick(t):
        got.append(t.seq)
        if len(got) == 3:
            sub.stop()

    def publish():
        # on a loaded machine the subscriber may not have gone back to sleep yet: give it
        # up to 5 s (a strategy that never sleeps still fails: its count stays 0)
        # (the value seen is kept: a second read could fall between two 100 ms parks)
        deadline = time.monotonic() + 5
        seen = int(f.rings[0].wctl[CRL.WAITERS_I32])
        while seen != sleeping and time.monotonic() < deadline:
            time.sleep(0.005)
            seen = int(f.rings[0].wctl[CRL.WAITERS_I32])
        waiters.append(seen)
        f.append("trades", ["A"])

    def publish_three():
        for _ in range(3):
            time.sleep(0.1)
            publish()

    sub = db.subscribe("ticks:A", callback=on_tick, idle=idle)
    threading.Thread(target=publish_three, daemon=True).start()
    db.run(timeout=30)
    assert got == [0, 1, 2] and not sub.active
    assert waiters == [sleeping] * 3  # asleep in the kernel (or polling) when a tick came
    assert int(f.rings[0].wctl[CRL.WAITERS_I32]) == 0  # and unregistered after


def _count_polls(sub) -> list:
    """A list that gets an item for every poll (spin_wait call) of ``sub``'s one ring."""
    follow = sub._follows[0]
    polls: list = []
    spin_wait = follow.spin_wait

    def counted(*args):
        polls.append(1)
        return spin_wait(*args)

    follow.spin_wait = counted
    return polls


def test_backoff_stops_polling_after_ticks_that_come_further_apart_than_its_poll(fake):
    """The default strategy polls ~10 us after a delivery, then sleeps. Ticks 20 ms apart
    are never caught by that poll: after a few misses it sleeps at once, and polls again
    only now and then (to notice a burst). Every tick is still delivered, in order."""
    from wayy.subscribe import BACKOFF_MISSES, BACKOFF_PROBE

    f = fake(nshards=1)
    db = f.attach()
    got = []
    n = 40

    def on_tick(t):
        got.append(t.seq)
        if len(got) == n:
            sub.stop()

    def publish():
        for _ in range(n):
            time.sleep(0.02)
            f.append("trades", ["A"])

    sub = db.subscribe("ticks:A", callback=on_tick, idle="backoff")
    polls = _count_polls(sub)
    threading.Thread(target=publish, daemon=True).start()
    db.run(timeout=30)
    assert got == list(range(n)) and not sub.active
    # a poll after every tick would be n; misses first, then one probe in BACKOFF_PROBE
    assert BACKOFF_MISSES < len(polls) <= BACKOFF_MISSES + n // BACKOFF_PROBE + 2, polls


def test_backoff_polls_again_once_a_sleep_ends_at_once(fake):
    """After polls that found nothing, the default strategy sleeps at once; a sleep that
    ends at once (a tick was already there: a burst) turns its polling back on."""
    from wayy.subscribe import BACKOFF_MISSES, _Backoff

    f = fake(nshards=1)
    db = f.attach()
    sub = db.subscribe("ticks:A", idle="backoff")
    polls = _count_polls(sub)
    idle = _Backoff()
    for _ in range(BACKOFF_MISSES):  # after each of these "deliveries", nothing comes
        idle.idle(1, [sub], 0)
        idle.idle(0, [sub], 2_000_000)
    assert idle.misses == BACKOFF_MISSES and len(polls) == BACKOFF_MISSES
    reset = False
    for _ in range(5):  # (a preemption inside the timed sleep could hide one: retry)
        f.append("trades", ["A"])
        idle.idle(1, [sub], 0)
        idle.idle(0, [sub], 2_000_000)  # no poll: sleeps, and the tick is already there
        assert sub.poll(1.0) is not None
        if idle.misses == 0:
            reset = True
            break
    assert reset and len(polls) == BACKOFF_MISSES
    idle.idle(1, [sub], 0)
    idle.idle(0, [sub], 2_000_000)
    assert len(polls) == BACKOFF_MISSES + 1  # polling again


def test_one_ring_block_keeps_batch_deadlines_and_does_not_spin_on_a_closed_ring(fake):
    f = fake(nshards=1)
    db = f.attach()
    batches = []
    sub = db.subscribe("ticks:A", callback=batches.append, max_latency_ms=50, idle="block")
    f.append("trades", ["A", "A"])
    t_end = time.monotonic() + 5
    while not batches and time.monotonic() < t_end:
        db.run(timeout=0.05)
    assert [list(b["seq"]) for b in batches] == [[0, 1]]  # the deadline ended the sleep
    f.rings[0].close()  # the writer stopped: wait_once now returns CLOSED at once
    passes = [0]
    do_work = sub._do_work

    def counted():
        passes[0] += 1
        return do_work()

    sub._do_work = counted
    db.run(timeout=0.3)
    # a spinning loop would make tens of thousands of passes; pausing 1 ms a pass, <= ~300
    assert 0 < passes[0] < 3000
    sub.stop()


def test_status_registry_shows_live_subscribers_and_forgets_stopped_ones(fake):
    f = fake(nshards=2)
    db = f.attach()
    sub = db.subscribe(["ticks:AAPL", "quotes:S2:NYSE"], callback=lambda t: None)
    f.append("trades", ["AAPL"] * 4)
    heads = [(int(d.snapshot()[S.COMMIT_NEXT_SEQ]), T0) for d in f.data]
    rows = read_subscribers(f.prefix, heads, time.time_ns())
    assert len(rows) == 1
    r = rows[0]
    assert r["pid"] == os.getpid() and r["channels"] == "ticks:AAPL, quotes:S2:NYSE"
    assert r["mode"] == "tick" and r["idle"] == "backoff" and r["lag_rows"] == 4
    db.run(timeout=0.1)
    sub._housekeep(time.monotonic_ns())
    r = read_subscribers(f.prefix, heads, time.time_ns())[0]
    assert r["delivered"] == 4 and r["lag_rows"] == 0
    sub.stop()
    assert read_subscribers(f.prefix, heads, time.time_ns()) == []


def test_a_subscriber_that_stopped_reporting_is_named_silent(fake):
    """A subscriber whose heartbeat is older than 5 s (SIGSTOP, a callback stuck, or not
    polling) is `silent`, and `wayy status` says so on a line of its own."""
    from shm.layout import subscribers as RL
    from wayy.cli import format_status

    f = fake(nshards=1)
    db = f.attach()
    sub = db.subscribe("ticks:AAPL", callback=lambda t: None)
    sub._housekeep(time.monotonic_ns())
    heads = [(int(d.snapshot()[S.COMMIT_NEXT_SEQ]), T0) for d in f.data]
    (r,) = read_subscribers(f.prefix, heads, time.time_ns())
    assert not r["silent"]
    sub._slot.i64[RL.HEARTBEAT_NS_I64] = time.time_ns() - 12 * 10**9
    (r,) = read_subscribers(f.prefix, heads, time.time_ns())
    assert r["silent"] and r["heartbeat_age_s"] >= 12
    st = {"path": f.path, "supervisor_pid": 1, "uptime_s": 1.0, "shards": [],
          "totals": {"symbols": 0, "trades": 0, "quotes": 0, "rate": 0, "rate_known": True,
                     "rejects": {}},
          "durability": {}, "subscribers": [r]}
    text = format_status(st)
    assert f"subscriber pid {os.getpid()} has not reported for 12 s" in text, text
    sub.stop()


def test_change_ring_writer_attach_continues_the_ring(fake):
    f = fake(nshards=1, ring=4)
    name = segment_name(f.prefix, 0, "changes")
    f.rings[0].publish(0, 1, 0, 0, T0, T0, 1)
    f.rings[0].close()  # a writer that stopped cleanly
    r = ChangeRingReader.attach(name)
    assert r.writer_closed()
    w = ChangeRingWriter.attach(name)  # its successor
    assert not r.writer_closed() and w.tail() == 1
    assert w.publish(1, 1, 0, 1, T0, T0, 1) == 1
    out = np.zeros(8, np.int64)
    assert r.read(1, out) == 0 and out[CRL.REC_FIRST_SEQ_I64] == 1
    r.close()
    f.rings[0] = w


# --- part 2: real databases, real processes, real signals --------------------------------------

_FORK = multiprocessing.get_context("fork")


def _record_subscriber(path: str, out: str, expect, mode: str, idle: str, ready,
                       timeout: float = 90.0) -> None:
    """Subscribe to both tables; record (shard, table, seq, price) of every row delivered;
    stop once ``expect.value`` (set by the parent when the producers are done) rows arrived.
    ``mode``: tick or batch."""
    db = wayy.attach(path)
    got: list = []

    def on_tick(t):
        got.append((t.shard, 0 if t.table == "trades" else 1, t.seq,
                    t.price if t.price is not None else t.bid))

    def on_batch(b):
        v = b["price"] if b.table == "trades" else b["bid"]
        tid = 0 if b.table == "trades" else 1
        got.extend(zip([b.shard] * len(b), [tid] * len(b), b["seq"].tolist(), v.tolist()))

    if mode == "batch":
        sub = db.subscribe(["trades", "quotes"], callback=on_batch, batch_size=500,
                           max_latency_ms=5, idle=idle)
    else:
        sub = db.subscribe(["trades", "quotes"], callback=on_tick, idle=idle)
    ready.set()
    deadline = time.monotonic() + timeout
    while not (expect.value and len(got) >= expect.value) and time.monotonic() < deadline:
        db.run(timeout=0.05)
    sub.stop()
    np.save(out, np.array(got, dtype=np.float64).reshape(-1, 4))
    st = sub.stats()
    with open(out + ".json", "w") as f:
        json.dump({"overruns": st["overruns"], "backfilled": st["backfilled"],
                   "lost": st["lost"]}, f)
    db.close()


def _produce(path: str, seed: int, n_batches: int, ids_from: int) -> None:
    """Batches of 1-300 rows over 40 symbols (both shards), both tables; every row carries a
    unique id in price (trades) or bid (quotes)."""
    rng = np.random.default_rng(seed)
    p = wayy.Producer(path, timeout=30)
    syms = np.array([f"P{i:02d}" for i in range(40)])
    nid = ids_from
    for _ in range(n_batches):
        n = int(rng.integers(1, 300))
        ids = nid + np.arange(n, dtype=np.float64)
        nid += n
        if rng.random() < 0.6:
            p.publish_batch("trades", {"symbol": syms[rng.integers(0, 40, n)], "price": ids,
                                       "size": np.ones(n)})
        else:
            p.publish_batch("quotes", {"symbol": syms[rng.integers(0, 40, n)], "bid": ids,
                                       "ask": ids + 0.5, "bid_size": np.ones(n),
                                       "ask_size": np.ones(n)})
    p.close()
    return nid


def _check_exactly_once(rows: np.ndarray, ids: np.ndarray, nshards: int, what: str) -> None:
    assert len(rows) == len(ids), f"{what}: {len(rows)} rows delivered, {len(ids)} ingested"
    np.testing.assert_array_equal(np.sort(rows[:, 3]), np.sort(ids), err_msg=what)
    for k in range(nshards):
        seqs = rows[rows[:, 0] == k, 2]
        # every committed seq of the shard, once; in seq order unless batches (per table)
        assert len(np.unique(seqs)) == len(seqs), f"{what}: duplicate seq on shard {k}"
        for t in (0, 1):
            s = rows[(rows[:, 0] == k) & (rows[:, 1] == t), 2]
            assert np.all(np.diff(s) > 0), f"{what}: shard {k} table {t} out of seq order"
        np.testing.assert_array_equal(np.sort(seqs), np.arange(len(seqs)), err_msg=what)


def test_subscriber_processes_each_get_every_row_once_in_order(db_factory, tmp_path):
    dbr = db_factory("--shards", "2", "--feed", "none", "--capacity", "1048576")
    setups = [("tick", "backoff"), ("batch", "block"), ("tick", "yield")]
    n_batches = 400
    expect = _FORK.RawValue("q", 0)
    subs = []
    for i, (mode, idle) in enumerate(setups):
        ready = _FORK.Event()
        out = str(tmp_path / f"sub{i}.npy")
        p = _FORK.Process(target=_record_subscriber,
                          args=(dbr.path, out, expect, mode, idle, ready))
        p.start()
        assert ready.wait(30)
        subs.append((p, out))
    prods = [_FORK.Process(target=_produce, args=(dbr.path, seed, n_batches, seed * 10**7))
             for seed in (1, 2)]
    for p in prods:
        p.start()
    for p in prods:
        p.join(120)
        assert p.exitcode == 0
    db = wayy.attach(dbr.path)
    ids = np.concatenate([db["trades"].between()["price"], db["quotes"].between()["bid"]])
    db.close()
    expect.value = len(ids)
    assert dbr.status()["totals"]["rejects"] == {k: 0 for k in dbr.status()["totals"]["rejects"]}
    for (p, out), (mode, idle) in zip(subs, setups):
        p.join(90)
        assert p.exitcode == 0, f"{mode}/{idle} subscriber exited {p.exitcode}"
        _check_exactly_once(np.load(out), ids, 2, f"{mode}/{idle}")


def _slow_subscriber(path: str, out: str, expect: int, ready, release) -> None:
    db = wayy.attach(path)
    got = []
    told = []

    def cb(t):
        if not got:
            release.wait(60)  # stuck in the first callback while the producer laps the ring
        got.append(t.seq)
        if len(got) >= expect:
            sub.stop()

    sub = db.subscribe("trades", callback=cb, on_overrun=told.append)
    ready.set()
    db.run(timeout=90)
    np.save(out, np.array(got, np.int64))
    with open(out + ".json", "w") as f:
        json.dump({"overruns": sub.stats()["overruns"], "told": len(told),
                   "backfilled": sub.stats()["backfilled"]}, f)
    db.close()


def _alternating_ticks(path: str, n: int) -> None:
    """A trade, a quote, a trade, ...: the writer merges adjacent batches of one table into
    one change record, so alternating tables gives one record per publish."""
    p = wayy.Producer(path, timeout=30)
    for i in range(n):
        if i % 2:
            p.publish("quotes", symbol="SL", bid=1.0, ask=2.0, bid_size=1.0, ask_size=1.0)
        else:
            p.publish("trades", symbol="SL", price=1.0 + i, size=1.0)
    p.close()


def test_slow_subscriber_is_lapped_backfills_and_gets_every_row_once(db_factory, tmp_path):
    dbr = db_factory("--shards", "1", "--feed", "none")
    db = wayy.attach(dbr.path)
    cap = db._change_ring(0).capacity
    n = 2 * (cap + cap // 4)  # one record per publish: more than the ring holds
    ready, release = _FORK.Event(), _FORK.Event()
    out = str(tmp_path / "slow.npy")
    sp = _FORK.Process(target=_slow_subscriber, args=(dbr.path, out, n // 2, ready, release))
    sp.start()
    assert ready.wait(30)
    prod = _FORK.Process(target=_alternating_ticks, args=(dbr.path, n))
    prod.start()
    prod.join(120)
    assert prod.exitcode == 0
    wait_rows = time.monotonic() + 30
    while len(db["quotes"]) < n // 2 and time.monotonic() < wait_rows:
        time.sleep(0.01)
    release.set()
    sp.join(120)
    assert sp.exitcode == 0
    got = np.load(out)
    info = json.load(open(out + ".json"))
    want = db["trades"].between()["seq"]
    assert len(want) == n // 2 and db._change_ring(0).tail() > cap
    np.testing.assert_array_equal(got, np.sort(want))  # every trade, once, in seq order
    assert info["overruns"] >= 1 and info["told"] == info["overruns"]
    assert info["backfilled"] > 0
    db.close()


def _checkpointed(path: str, ckpt: str, outfile: str) -> None:
    """Append each trade's price to ``outfile`` (64 at a time: a kill usually leaves rows
    written after the last checkpoint); the checkpoint stores the file's length, and a
    restart truncates the file to it first: effects exactly once."""
    db = wayy.attach(path)
    fd = os.open(outfile, os.O_RDWR | os.O_CREAT, 0o644)
    buf = []

    def on_trade(t):
        buf.append(t.price)
        if len(buf) >= 64:
            os.write(fd, np.array(buf, np.float64).tobytes())
            buf.clear()
            # a strategy's work: a delivery takes a while, so the random kills land inside
            # one too (rows written after the last checkpoint), not only between deliveries
            time.sleep(0.0005)

    def flush_state():
        if buf:
            os.write(fd, np.array(buf, np.float64).tobytes())
            buf.clear()
        os.fsync(fd)
        return {"length": os.lseek(fd, 0, os.SEEK_END)}

    sub = db.subscribe("trades", callback=on_trade, checkpoint=ckpt,
                       on_checkpoint=flush_state, checkpoint_ms=20, from_seq=0)
    length = (sub.state or {}).get("length", 0)
    os.ftruncate(fd, length)
    os.lseek(fd, length, os.SEEK_SET)
    db.run()


def _kill_restart_run(path: str, tmp_path, kills: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ckpt = str(tmp_path / "k.json")
    outfile = str(tmp_path / "k.out")
    prod = _FORK.Process(target=_paced_producer, args=(path, n, 2.0 + kills * 0.4))
    prod.start()
    rolled_back = mid_stream = 0
    for _ in range(kills):
        p = _FORK.Process(target=_checkpointed, args=(path, ckpt, outfile))
        p.start()
        time.sleep(float(rng.uniform(0.1, 0.6)))
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        if os.path.exists(ckpt):
            length = json.load(open(ckpt))["state"]["length"]
            mid_stream += 0 < length < 8 * n
            rolled_back += os.path.getsize(outfile) > length  # the restart must cut these
    prod.join(60)
    assert prod.exitcode == 0
    # a last run that sees everything, stopped cleanly
    p = _FORK.Process(target=_checkpointed, args=(path, ckpt, outfile))
    p.start()
    db = wayy.attach(path)

    def done():
        st = json.load(open(ckpt)) if os.path.exists(ckpt) else None
        return st and st["state"] and st["state"]["length"] == 8 * n

    try:
        deadline = time.monotonic() + 60
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.kill(p.pid, signal.SIGTERM)
        p.join(20)
    got = np.fromfile(outfile, np.float64)
    want = db["trades"].between()["price"]
    db.close()
    assert len(want) == n
    assert len(got) == n, f"{len(got)} rows in the output, {n} ingested"
    np.testing.assert_array_equal(np.sort(got), np.sort(want))
    assert len(np.unique(got)) == n
    # the kills really landed mid-stream, with rows delivered after the last checkpoint
    assert mid_stream >= kills // 2 and rolled_back >= 1, (mid_stream, rolled_back)


def _paced_producer(path: str, n: int, seconds: float) -> None:
    p = wayy.Producer(path, timeout=30)
    per = max(1, n // 200)
    for i in range(0, n, per):
        m = min(per, n - i)
        p.publish_batch("trades", {"symbol": np.array(["K1", "K2"] * m)[:m],
                                   "price": 1.0 + i + np.arange(m), "size": np.ones(m)})
        time.sleep(seconds / 200)
    p.close()


def test_sigkill_a_checkpointed_subscriber_and_restart_exactly_once(db_factory, tmp_path):
    dbr = db_factory("--shards", "2", "--feed", "none")
    _kill_restart_run(dbr.path, tmp_path, kills=4, n=20_000, seed=3)


@pytest.mark.slow
def test_sigkill_many_times_under_heavy_ingest(db_factory, tmp_path):
    dbr = db_factory("--shards", "2", "--feed", "none", "--capacity", "2097152")
    _kill_restart_run(dbr.path, tmp_path, kills=25, n=400_000, seed=11)


def test_status_lists_live_subscribers(db_factory):
    dbr = db_factory("--shards", "2", "--feed", "none")
    db = wayy.attach(dbr.path)
    sub = db.subscribe(["ticks:AAPL", "quotes:MSFT"], idle="block")
    p = wayy.Producer(dbr.path)
    for i in range(5):
        p.publish("trades", symbol="AAPL", price=1.0 + i, size=1.0)
    wait_for_rows = time.monotonic() + 10
    while len(db["trades"]) < 5 and time.monotonic() < wait_for_rows:
        time.sleep(0.01)
    r = run_cli("status", "--db", dbr.path, "--json")
    st = json.loads(r.stdout)
    (s,) = st["subscribers"]
    assert s["pid"] == os.getpid() and s["channels"] == "ticks:AAPL, quotes:MSFT"
    assert s["lag_rows"] == 5 and s["idle"] == "block"
    for _ in range(5):
        assert sub.poll(5.0) is not None
    sub._housekeep(time.monotonic_ns())
    r = run_cli("status", "--db", dbr.path)
    assert "subscribers: 1" in r.stdout and "ticks:AAPL, quotes:MSFT" in r.stdout
    assert json.loads(run_cli("status", "--db", dbr.path, "--json").stdout)[
        "subscribers"][0]["lag_rows"] == 0
    sub.stop()
    assert json.loads(run_cli("status", "--db", dbr.path, "--json").stdout)["subscribers"] == []
    p.close()
    db.close()


def test_iteration_ends_when_the_database_stops(db_factory):
    dbr = db_factory("--shards", "1", "--feed", "none")
    db = wayy.attach(dbr.path)
    sub = db.subscribe("trades", idle="block")
    p = wayy.Producer(dbr.path)
    p.publish("trades", symbol="Z", price=1.0, size=1.0)
    p.close()
    assert next(iter(sub)).symbol == "Z"
    dbr.stop()
    t0 = time.monotonic()
    assert list(sub) == []  # ends (the database stopped), within the liveness check period
    assert time.monotonic() - t0 < 10 and sub.stopped_reason == "database stopped"
    with pytest.raises(NotRunning):
        sub.poll(0)
    db.close()
    with pytest.raises(NotRunning):
        wayy.attach(dbr.path)


def test_examples_run_against_wayy_start(db_factory):
    dbr = db_factory("--shards", "2", "--feed", "synthetic:rate=4000,symbols=20,seed=3")
    r = subprocess.run([sys.executable, "examples/strategies.py", "--db", dbr.path,
                        "--seconds", "2.5"], capture_output=True, text=True, timeout=60,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert r.returncode == 0, r.stderr
    for name in ("mean_reversion", "momentum", "pair"):
        line = next(x for x in r.stdout.splitlines() if x.startswith(f"[{name}] done"))
        assert int(line.split(": ")[1].split()[0]) > 0, line  # saw ticks


@pytest.mark.parametrize("delay", [0.1, 0.4, 0.7, 1.0])
def test_ctrl_c_at_any_moment_of_the_example_is_quiet(db_factory, delay):
    """Ctrl-C while the example still imports, attaches or subscribes: exit 130 (or, once
    db.run() has it, a clean stop and 0), never a KeyboardInterrupt traceback. ``delay``
    counts from when Python itself has started."""
    from tests.conftest import ctrl_c_after_start

    dbr = db_factory("--shards", "1", "--feed", "synthetic:rate=1000,symbols=5,seed=3")
    rc, err = ctrl_c_after_start([sys.executable, "examples/strategies.py", "--db", dbr.path,
                                  "--checkpoint"], delay,
                                 env={**os.environ, "PYTHONPATH": REPO})
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert rc in (130, 0), (rc, err)


def test_a_restarted_writer_continues_the_ring_and_nothing_is_lost(db_factory):
    dbr = db_factory("--shards", "1", "--feed", "none")
    db = wayy.attach(dbr.path)
    sub = db.subscribe("trades", idle="block")
    p = wayy.Producer(dbr.path, timeout=30)
    p.publish_batch("trades", {"symbol": ["W"] * 100, "price": np.arange(100) + 1.0,
                               "size": np.ones(100)})
    got = [sub.poll(10).seq for _ in range(100)]
    pid = dbr.status()["shards"][0]["writer_pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = dbr.status()["shards"][0]
        if s["state"] == "running" and s["writer_pid"] not in (0, pid):
            break
        time.sleep(0.02)
    p.publish_batch("trades", {"symbol": ["W"] * 50, "price": np.arange(50) + 101.0,
                               "size": np.ones(50)})
    got += [sub.poll(10).seq for _ in range(50)]
    assert got == list(range(150)) and sub.poll(0.05) is None
    assert db._change_ring(0).tail() >= 2  # the same ring, continued
    p.close()
    db.close()


def test_a_change_ring_of_another_layout_version_is_refused_clearly(fake):
    f = fake(nshards=1)
    f.rings[0]._seg.publish_version(CRL.VERSION_MAJOR + 1, 0)
    db = f.attach()
    with pytest.raises(wayy.IncompatibleVersion, match="layout version"):
        db.subscribe("trades")
    f.rings[0]._seg.publish_version(CRL.VERSION_MAJOR, CRL.VERSION_MINOR)


# --- found by an outside-in check ---------------------------------------------------------------

def test_checkpoint_of_a_database_made_again_at_the_same_path_is_refused(fake, tmp_path):
    """Same path, same segment prefix, but the directory was made again (a new wayy.id):
    resuming from the old cursors would skip the new database's first rows silently."""
    f = fake(nshards=1)
    with open(os.path.join(f.path, "wayy.id"), "w") as fh:
        fh.write("a" * 32 + "\n")
    p = str(tmp_path / "c.json")
    db = f.attach()
    sub = db.subscribe("trades", checkpoint=p, from_seq=0)
    f.append("trades", ["A"] * 5)
    assert len([sub.poll(1.0) for _ in range(5)]) == 5
    sub.stop()
    assert json.load(open(p))["db_id"] == "a" * 32
    db.subscribe("trades", checkpoint=p).stop()  # the same database: resumes
    with open(os.path.join(f.path, "wayy.id"), "w") as fh:
        fh.write("b" * 32 + "\n")
    with pytest.raises(InvalidInput, match="created again"):
        db.subscribe("trades", checkpoint=p)


def test_batch_filter_that_raises_or_returns_a_bad_mask_skips_the_batch(fake):
    f = fake(nshards=1)
    db = f.attach()
    got, errors = [], []
    bad = {"raise": lambda b: 1 / 0, "short mask": lambda b: np.array([True]),
           "ints": lambda b: np.arange(len(b)), "none": lambda b: None,
           "numpy false": lambda b: np.bool_(False)}
    for why, filt in bad.items():
        db.subscribe("trades", batch_size=4, filter=filt, callback=got.append,
                     on_error=lambda exc, item: errors.append(exc))
    f.append("trades", ["A"] * 4)
    db.run(timeout=0.3)  # no traceback out of run: each is an error of its subscription
    assert got == []
    assert len(errors) == 3  # None and numpy False drop the batch without an error
    assert isinstance(errors[0], ZeroDivisionError)
    assert all(isinstance(e, InvalidInput) and "boolean mask" in str(e) for e in errors[1:])
    assert all(s.active for s in db.subscriptions)
    # a numpy bool True (e.g. from .any()) keeps the batch
    kept = []
    db.subscribe("trades", batch_size=4, callback=kept.append,
                 filter=lambda b: (b["price"] > 0).any(), from_seq=0)
    db.run(timeout=0.3)
    assert [len(b) for b in kept] == [4]


def test_subscribing_on_a_handle_of_a_stopped_database_raises_not_running(fake):
    f = fake(nshards=1)
    db = f.attach()
    os.close(f.lock)  # the supervisor is gone
    try:
        with pytest.raises(NotRunning):
            db.subscribe("trades", callback=lambda t: None)
    finally:
        f.lock = acquire_lock(f.path)


def test_a_subscription_made_inside_run_joins_it(fake):
    f = fake(nshards=2)
    db = f.attach()
    late = []

    def first(t):
        if not late:
            late.append(db.subscribe("ticks:B", callback=late.append))

    db.subscribe("ticks:A", callback=first)
    f.append("trades", ["A"])
    deadline = time.monotonic() + 5
    while not late and time.monotonic() < deadline:
        db.run(timeout=0.05)
    threading.Timer(0.2, lambda: f.append("trades", ["B"] * 3)).start()
    db.run(timeout=1.0)  # the one run services both
    assert [t.symbol for t in late[1:]] == ["B"] * 3
    # a callback that subscribes and stops its own subscription: the new one still runs
    later = []

    def hand_over(t):
        if not later:
            later.append(db.subscribe("ticks:D", callback=later.append))
            sub_c.stop()

    sub_c = db.subscribe("ticks:C", callback=hand_over)
    for s in db.subscriptions:
        if s is not sub_c:
            s.stop()
    f.append("trades", ["C"])
    threading.Timer(0.3, lambda: f.append("trades", ["D"] * 2)).start()
    db.run(timeout=1.5)
    assert [t.symbol for t in later[1:]] == ["D"] * 2


def test_huge_start_points_and_limits_are_clear_errors(fake):
    f = fake(nshards=1)
    db = f.attach()
    f.append("trades", ["A"] * 3)
    for kw in ({"from_seq": 2**70}, {"from_seq": {0: 2**64}}, {"batch_size": 2**70},
               {"checkpoint_every": 2**70, "checkpoint": "x"}, {"max_latency_ms": 1e300}):
        with pytest.raises(InvalidInput):
            db.subscribe("trades", **kw)
    for far in (2**70, 2**63, -2**63 - 1):  # no stored time is there: as remote and tail say
        with pytest.raises(InvalidInput, match="outside"):
            db.subscribe("trades", from_ts=far)
    s = db.subscribe("trades", from_ts=2**63 - 1)  # later than everything: live
    assert s.poll(0.05) is None
    s.stop()
    s = db.subscribe("trades", from_ts=-2**63)  # before everything: from the first row
    assert [s.poll(1.0).seq for _ in range(3)] == [0, 1, 2]
    s.stop()
    with pytest.raises(InvalidInput, match="NaT"):
        db.subscribe("trades", from_ts=np.datetime64("NaT"))
    for far in (np.datetime64("2300-01-01"), np.datetime64("1600-01-01")):  # numpy would wrap
        with pytest.raises(InvalidInput, match="outside"):
            db.subscribe("trades", from_ts=far)


def test_a_checkpoint_that_cannot_be_made_stops_the_subscription_once(fake, tmp_path):
    f = fake(nshards=1)
    db = f.attach()
    sub = db.subscribe("trades", callback=lambda t: None, checkpoint=str(tmp_path / "c.json"),
                       on_checkpoint=lambda: {"not json": object()})
    f.append("trades", ["A"] * 2)
    with pytest.raises(InvalidInput, match="JSON"):
        db.run(timeout=3.0)  # the first checkpoint is due within a second
    assert sub.stopped_reason == "checkpoint failed" and not sub.active
    sub.stop()  # no second error
    # an on_checkpoint that raises: its exception is the cause of the error run() raises
    rsub = db.subscribe("trades", callback=lambda t: None, checkpoint=str(tmp_path / "r.json"),
                        checkpoint_every=1, on_checkpoint=lambda: 1 / 0)
    f.append("trades", ["A"])
    with pytest.raises(InvalidInput, match="on_checkpoint raised ZeroDivisionError") as ei:
        db.run(timeout=3.0)
    assert isinstance(ei.value.__cause__, ZeroDivisionError)
    assert rsub.stopped_reason == "checkpoint failed"
    # poll mode: nothing is handed out after the failure
    psub = db.subscribe("trades", checkpoint=str(tmp_path / "p.json"), checkpoint_every=1,
                        on_checkpoint=lambda: {"x": float("nan")})  # NaN is not JSON
    f.append("trades", ["A"] * 5)
    failed_at = None
    deadline = time.monotonic() + 5
    while failed_at is None and time.monotonic() < deadline:
        try:
            psub.poll(0.1)
        except InvalidInput:
            failed_at = psub.stats()["delivered"]
    assert failed_at is not None and not psub.active
    f.append("trades", ["A"] * 3)
    assert [psub.poll(0.1) for _ in range(5)] == [None] * 5  # nothing after the failure
    assert psub.stats()["delivered"] == failed_at
    assert not os.path.exists(tmp_path / "p.json")


def test_zero_copy_batch_says_when_a_roll_reused_its_memory(fake):
    f = fake(nshards=1)
    db = f.attach()
    sub = db.subscribe("trades", batch_size=4)
    f.append("trades", ["A"] * 4)
    b = sub.poll(1.0)
    assert b.zero_copy and b.valid
    ingest.bump_generation(f.data[0].hdr64)  # what a roll does before reusing the rows
    assert not b.valid
    assert b.keep(np.ones(len(b), bool)).valid  # a copy stays valid
    sub.stop()


def test_a_segment_being_created_is_waited_for_not_called_incompatible(tmp_path):
    """wayy status (or a second subscriber) can open the subscriber registry between its
    creator's shm_open and ftruncate: 0 bytes for an instant. That is not another layout
    version: attach waits for the creator (a CI run caught `status` failing on it)."""
    import posix_ipc

    from shm.subscribers import Registry, registry_name

    prefix = db_prefix(str(tmp_path / "racedb"))
    name = registry_name(prefix)
    raw = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=0)  # created, not sized
    raw.close_fd()

    def finish_creating():
        time.sleep(0.1)
        unlink_quiet(name)
        Registry.open(prefix).seg.close()

    t = threading.Thread(target=finish_creating)
    t.start()
    try:
        reg = Registry.attach_readonly(prefix)
        assert reg is not None and reg.max_slots > 0
        reg.seg.close()
    finally:
        t.join()
        unlink_quiet(name)


def test_checkpoint_every_writes_right_after_the_delivery_that_reaches_the_count(fake,
                                                                                   tmp_path):
    """checkpoint_every=N: a checkpoint after every N deliveries, not when housekeeping
    next looks (every 50 ms), so a crash repeats fewer than N."""
    f = fake(nshards=1)
    db = f.attach()
    n = [0]
    at: list[int] = []

    def cb(_t):
        n[0] += 1

    sub = db.subscribe("trades", callback=cb, checkpoint=str(tmp_path / "e1"),
                       checkpoint_every=1, checkpoint_ms=10**6,
                       on_checkpoint=lambda: at.append(n[0]) or n[0])
    f.append("trades", ["A"] * 300)
    db.run(timeout=0.5)
    assert n[0] == 300 and list(range(1, 301)) == sorted(set(at))
    sub.stop()
    # batches: after every 2 batches of 10
    nb = [0]
    bat: list[int] = []
    bsub = db.subscribe("trades", callback=lambda b: nb.__setitem__(0, nb[0] + len(b)),
                        batch_size=10, max_latency_ms=1, checkpoint=str(tmp_path / "e2"),
                        checkpoint_every=2, checkpoint_ms=10**6, from_seq=0,
                        on_checkpoint=lambda: bat.append(nb[0]) or nb[0])
    db.run(timeout=0.5)
    assert nb[0] == 300 and {20 * i for i in range(1, 16)} <= set(bat)
    bsub.stop()
    # polling: when the next poll() comes (what the earlier ones returned is processed)
    pat: list[int] = []
    got = [0]
    psub = db.subscribe("trades", checkpoint=str(tmp_path / "e3"), checkpoint_every=5,
                        checkpoint_ms=10**6, from_seq=0,
                        on_checkpoint=lambda: pat.append(got[0]) or got[0])
    while psub.poll(0.05) is not None:
        got[0] += 1
    assert got[0] == 300 and {5 * i for i in range(1, 61)} <= set(pat)
    psub.stop()


def test_two_threads_cannot_run_one_subscription_at_once(fake):
    f = fake(nshards=1)
    db = f.attach()
    seen = []
    sub = db.subscribe("trades", callback=lambda t: seen.append(t.seq))
    other = threading.Thread(target=db.run, kwargs={"timeout": 3.0})
    other.start()
    try:
        wait_for(lambda: bool(sub._runner), what="the other thread to run it")
        with pytest.raises(InvalidInput, match="being run by another thread"):
            db.run(timeout=0.1)
        with pytest.raises(InvalidInput, match="being run by another thread"):
            sub.run(timeout=0.1)
        f.append("trades", ["A"] * 50)
        wait_for(lambda: len(seen) == 50, what="the ticks")
    finally:
        sub.stop()
        other.join(10)
    assert seen == list(range(50)) and not other.is_alive()
    # once that run is over, this thread may run a new one
    again = db.subscribe("trades", callback=lambda t: seen.append(t.seq))
    f.append("trades", ["A"])
    db.run(timeout=0.2)
    assert seen[-1] == 50
    again.stop()


def test_a_run_nested_in_a_callback_runs_the_others_not_its_own(fake):
    """A callback may run db.run() itself (a strategy waiting on another feed). Its own
    subscription is in the middle of a pass: the nested run must not deliver its later
    rows ahead of the rest of that pass, and a stop() after it stops it where it is."""
    f = fake(nshards=1)
    db = f.attach()
    seen, others = [], []
    sub = None

    def cb(t):
        seen.append(t.seq)
        if len(seen) == 5:
            f.append("trades", ["A"] * 100)  # rows for a later pass
            db.run(timeout=0.05)
            sub.stop()

    sub = db.subscribe("trades", callback=cb, from_seq=0)
    other = db.subscribe("trades", callback=lambda t: others.append(t.seq), from_seq=0)
    f.append("trades", ["A"] * 200)
    db.run(timeout=1.0)
    assert seen == [0, 1, 2, 3, 4]  # stopped where it was; nothing overtook the pass
    assert not sub.active and sub.stopped_reason == "stopped"
    assert others == list(range(300))  # the other subscription ran, nested and after
    other.stop()


def test_a_running_db_run_leaves_another_threads_new_subscription_to_it(fake):
    f = fake(nshards=1)
    db = f.attach()
    main_seen, theirs = [], []
    q = db.subscribe("quotes", callback=lambda t: main_seen.append(t.seq))
    runner = threading.Thread(target=db.run, kwargs={"timeout": 2.0})
    runner.start()
    try:
        wait_for(lambda: bool(q._runner), what="db.run() running in the other thread")
        mine = db.subscribe("trades", callback=lambda t: theirs.append(threading.get_ident()))
        time.sleep(0.2)  # several of its passes: it must not adopt `mine`
        assert not mine._runner
        f.append("trades", ["A"] * 20)
        mine.run(timeout=0.5)  # this thread runs it, never "being run by another thread"
        assert theirs == [threading.get_ident()] * 20
        mine.stop()
    finally:
        runner.join(10)
