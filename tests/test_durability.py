"""Durability: the write-ahead log brings every row back after a stop or a kill, damage in it
is detected and reported, and a full disk stops ingest cleanly until space returns."""

from __future__ import annotations

import contextlib
import functools
import glob
import multiprocessing as mp
import os
import random
import signal
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest

import wayy
from tests.conftest import run_cli, start_db, wait_for
from wayy.errors import WriterUnavailable
from wayy.names import shard_of

T0 = 1_700_000_000_000_000_000
SYMS = np.array([f"S{i:02d}" for i in range(40)])
VENUES = np.array(["", "NYSE", "ARCA", "IEX"])


def publish_mixed(path: str, n_batches: int, seed: int = 0, first_price: float = 1.0,
                  flush: bool = True) -> int:
    """Trades and quotes over 40 symbols and 4 venues; trade prices 1, 2, 3, ... Returns the
    number of trades published, once all of it is committed (``flush``; callers that wait
    for the trades alone would otherwise race the last quotes)."""
    rng = np.random.default_rng(seed)
    p = wayy.Producer(path)
    sent = 0
    for i in range(n_batches):
        n = int(rng.integers(1, 800))
        p.publish_batch("trades", {
            "ts": T0 + np.arange(sent, sent + n, dtype=np.int64) * 1000,
            "symbol": SYMS[rng.integers(0, len(SYMS), n)],
            "venue": VENUES[rng.integers(0, len(VENUES), n)],
            "price": first_price + np.arange(sent, sent + n, dtype=float),
            "size": rng.integers(1, 9, n) * 100.0})
        sent += n
        m = int(rng.integers(1, 300))
        bid = 100 + rng.random(m)
        p.publish_batch("quotes", {
            "ts": T0 + np.arange(m, dtype=np.int64), "symbol": SYMS[rng.integers(0, 40, m)],
            "venue": VENUES[rng.integers(0, len(VENUES), m)], "bid": bid, "ask": bid + 0.01,
            "bid_size": np.full(m, 100.0), "ask_size": np.full(m, 200.0)})
        if i % 7 == 0:
            p.publish("trades", symbol=str(SYMS[i % 40]), venue="NYSE",
                      price=first_price + sent, size=1.0, ts=T0 + sent * 1000)
            sent += 1
    if flush:
        p.flush(30.0)
    p.close()
    return sent


def snapshot(path: str) -> dict:
    """Every row of both tables, ordered by (shard, seq), as plain arrays."""
    db = wayy.attach(path)
    try:
        out = {}
        for table in ("trades", "quotes"):
            r = db[table].between()
            shard = np.array([shard_of(s, 64) for s in r["symbol"]], dtype=np.int64)
            order = np.lexsort((np.asarray(r["seq"]), shard))
            out[table] = {k: np.asarray(r[k])[order] for k in r.keys()}
        out["symbols"] = sorted(db.symbols())
        out["tail"] = db["trades"].tail(5, symbol="S07").to_pandas().to_dict("list")
        return out
    finally:
        db.close()


def assert_same(a: dict, b: dict) -> None:
    for table in ("trades", "quotes"):
        assert a[table].keys() == b[table].keys()
        for k in a[table]:
            np.testing.assert_array_equal(a[table][k], b[table][k], err_msg=f"{table}.{k}")
    assert a["symbols"] == b["symbols"]
    assert a["tail"] == b["tail"]


def wal_files(path: str) -> list[str]:
    return sorted(glob.glob(os.path.join(path, "wal", "shard-*.wal")))


def test_restart_recovers_every_row_and_continues_seq(db_factory):
    d = db_factory("--shards", "2", "--feed", "none")
    sent = publish_mixed(d.path, 60)
    db = wayy.attach(d.path)
    wait_for(lambda: len(db["trades"]) == sent, what="trades committed")
    db.close()
    before = snapshot(d.path)
    assert len(before["trades"]["price"]) == sent
    d.stop()
    assert len(wal_files(d.path)) == 2

    d2 = db_factory("--shards", "2", "--feed", "none")  # same directory: recovery
    after = snapshot(d2.path)
    assert_same(before, after)
    assert "recovered" in d2.log()
    # seq goes on with no gap and no reuse, per shard
    more = publish_mixed(d2.path, 5, seed=9, first_price=10_000_000.0)
    db = wayy.attach(d2.path)
    wait_for(lambda: len(db["trades"]) == sent + more, what="new trades")
    assert (db["trades"].between()["price"] >= 10_000_000.0).sum() == more
    seqs: dict[int, list] = {0: [], 1: []}
    for table in ("trades", "quotes"):
        t = db[table].between()
        shard = np.array([shard_of(s, 2) for s in t["symbol"]])
        for k in (0, 1):
            seqs[k].append(np.asarray(t["seq"])[shard == k])
    for k, parts in seqs.items():
        seq = np.sort(np.concatenate(parts))
        np.testing.assert_array_equal(seq, np.arange(len(seq)))  # 0..n-1: no gap, no reuse
    # the recovered names are the writer's names: a symbol ticking again after the restart
    # keeps its id, so a per-symbol query finds the rows of both runs
    assert sorted(db.symbols()) == before["symbols"]
    for k in (0, 1):
        d = db.shards[k]
        names = [bytes(x).rstrip(b"\0") for x in d.sym_names[:d.n_symbols()]]
        assert len(names) == len(set(names))
    s07 = db["trades"].between(symbol="S07")["price"]
    assert (s07 < 10_000_000.0).sum() == (before["trades"]["symbol"] == "S07").sum()
    assert (s07 >= 10_000_000.0).sum() > 0
    db.close()
    assert run_cli("verify", "--db", d2.path).returncode == 0


def test_no_wal_keeps_nothing_across_restart(db_factory):
    d = db_factory("--shards", "1", "--feed", "none", "--no-wal")
    sent = publish_mixed(d.path, 3)
    db = wayy.attach(d.path)
    wait_for(lambda: len(db["trades"]) == sent, what="trades committed")
    last = int(max(db["trades"].between()["seq"].max(), db["quotes"].between()["seq"].max()))
    db.close()
    d.stop()
    assert wal_files(d.path) == []
    d2 = db_factory("--shards", "1", "--feed", "none", "--no-wal")
    db = wayy.attach(d2.path)
    assert len(db["trades"]) == 0
    # the rows are gone, but their seqs were seen (by subscribers, remote consumers'
    # checkpoints): a new row must not take one of them
    with wayy.Producer(d2.path) as p:
        p.publish("trades", symbol="AGAIN", price=1.0, size=1.0)
        p.flush(10.0)
    assert int(db["trades"].tail(1)["seq"][0]) == last + 1
    db.close()


def _signal_pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` waits for process ``pid`` (stopped: delivered on SIGCONT)."""
    with open(f"/proc/{pid}/status") as f:
        masks = [int(line.split()[1], 16) for line in f
                 if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(m & (1 << (sig - 1)) for m in masks)


@pytest.mark.parametrize("wal", [True, False])
def test_a_clean_stop_stores_what_producers_handed_in(db_factory, wal):
    """publish returned, so the rows are the database's to keep: a clean stop commits what
    the inbound ring holds (published here while the writer was stopped, so all of it is
    still there when the stop reaches the writer) before the writer exits."""
    args = ("--shards", "1", "--feed", "none") + (() if wal else ("--no-wal",))
    d = db_factory(*args)
    wpid = d.status()["shards"][0]["writer_pid"]
    n = 5000
    p = wayy.Producer(d.path)
    os.kill(wpid, signal.SIGSTOP)
    stopper = None
    try:
        p.publish_batch("trades", {"ts": T0 + np.arange(n), "symbol": SYMS[np.arange(n) % 40],
                                   "price": np.arange(1.0, n + 1.0), "size": np.ones(n)})
        stopper = threading.Thread(target=d.stop)  # the writer's SIGTERM waits for SIGCONT
        stopper.start()
        wait_for(lambda: _signal_pending(wpid, signal.SIGTERM), 10,
                 what="the supervisor's SIGTERM to the writer")
    finally:
        os.kill(wpid, signal.SIGCONT)
        if stopper is not None:
            stopper.join(60)
        p.close()
    assert "left in the inbound ring" not in d.log()
    if wal:
        d2 = db_factory(*args)
        with wayy.attach(d2.path) as db:
            assert len(db["trades"]) == n
            assert db["trades"].between()["price"].tolist() == list(np.arange(1.0, n + 1.0))
    else:  # nothing survives a stop without the WAL, but the seqs were handed out
        assert open(os.path.join(d.path, "shard-0.next-seq")).read().split()[0] == str(n)


def _stopped_db_with_rows(db_factory, shards: int = 1, batches: int = 40):
    d = db_factory("--shards", str(shards), "--feed", "none", "--fsync", "batch")
    sent = publish_mixed(d.path, batches)
    db = wayy.attach(d.path)
    wait_for(lambda: len(db["trades"]) == sent, what="trades committed")
    db.close()
    before = snapshot(d.path)
    d.stop()
    return d, before


def test_torn_tail_is_cut_back_and_everything_before_it_recovered(db_factory):
    d, before = _stopped_db_with_rows(db_factory)
    wal_file = wal_files(d.path)[0]
    size = os.path.getsize(wal_file)
    with open(wal_file, "rb") as f:  # the first 70 bytes of a real record: a torn append
        f.seek(32)
        head = f.read(70)
    with open(wal_file, "ab") as f:
        f.write(head)
    r = run_cli("verify", "--db", d.path)
    assert r.returncode == 1 and "DAMAGED" in r.stdout and "torn" in r.stdout, r.stdout
    d2 = db_factory("--shards", "1", "--feed", "none", "--fsync", "batch")
    assert_same(before, snapshot(d2.path))
    assert os.path.getsize(wal_file) == size
    assert "cut back" in d2.log() and "70" in d2.log()
    assert run_cli("verify", "--db", d2.path).returncode == 0



@pytest.mark.parametrize("content", [  # one in the default suite, the other kinds with the slow
    b"9223372036854775807\n",
    *(pytest.param(c, marks=pytest.mark.slow)
      for c in (b"99999999999999999999\n", b"-5\n", b"\x00\xffgarbage"))])
def test_a_damaged_next_seq_file_stops_the_start_before_any_seq_is_given(db_factory,
                                                                          content):
    """shard-K.next-seq edited to a seq no shard reaches (2^63-1 made the next rows wrap to
    -2^63, crash the writer, and the restart drop the WAL), or to no number: the writer
    refuses to start, naming the file, and every row is still there once it is fixed."""
    d, before = _stopped_db_with_rows(db_factory)
    path = os.path.join(d.path, "shard-0.next-seq")
    good = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(content)
    r = run_cli("start", "--db", d.path, "--shards", "1", "--feed", "none", "--no-redis",
                "--detach")
    try:
        assert r.returncode == 1, r.stdout + r.stderr
        assert "writer-0 cannot start" in r.stderr and "shard-0.next-seq" in r.stderr
        assert "not a next seq" in r.stderr and "Traceback" not in r.stderr
    finally:
        run_cli("stop", "--db", d.path)
    with open(path, "wb") as f:
        f.write(good)
    d2 = db_factory("--shards", "1", "--feed", "none", "--fsync", "batch")
    assert_same(before, snapshot(d2.path))


@pytest.mark.parametrize("wal_fate", [
    "emptied",
    pytest.param("removed", marks=pytest.mark.slow),
    pytest.param("moved-away-no-wal", marks=pytest.mark.slow),
    pytest.param("first-record-damaged", marks=pytest.mark.slow)])
def test_seq_continues_above_history_whatever_became_of_the_wal(db_factory, wal_fate):
    """Rows rolled to history, then the WAL lost (emptied, removed, moved away as the
    --no-wal refusal suggests, or damaged in its first record): the next start continues
    seq above what history holds, so new rows are committed AND visible to every query."""
    d = db_factory("--shards", "1", "--feed", "none")
    p = wayy.Producer(d.path)
    for i in range(10):
        p.publish("trades", symbol="HW", price=100.0 + i, size=1.0)
    p.flush(10.0)
    p.close()
    assert run_cli("roll", "--db", d.path).returncode == 0
    d.stop()
    wal_file = wal_files(d.path)[0]
    # the next seq a stopping writer records: gone too (a database copied without it), so
    # history alone must carry the seq on
    os.unlink(os.path.join(d.path, "shard-0.next-seq"))
    args = ["--shards", "1", "--feed", "none"]
    if wal_fate == "emptied":
        open(wal_file, "w").close()
    elif wal_fate == "removed":
        os.unlink(wal_file)
    elif wal_fate == "moved-away-no-wal":
        os.rename(os.path.join(d.path, "wal"), os.path.join(d.path, "wal.away"))
        args.append("--no-wal")
    else:
        with open(wal_file, "r+b") as f:  # a byte of the new WAL's first (roll) record
            f.seek(70)
            b = f.read(1)
            f.seek(70)
            f.write(bytes([b[0] ^ 0xFF]))
    d2 = db_factory(*args, name="db")
    p = wayy.Producer(d2.path)
    p.publish("trades", symbol="HW", price=999.0, size=1.0)
    p.flush(10.0)
    p.close()
    db = wayy.attach(d2.path)
    try:
        assert len(db["trades"]) == 11
        r = db["trades"].tail(3, symbol="HW")
        assert list(r["price"]) == [108.0, 109.0, 999.0]
        assert list(r["seq"]) == [8, 9, 10]
        assert list(db["trades"].between(symbol="HW")["seq"]) == list(range(11))
    finally:
        db.close()
    assert "(history holds up to 9)" in d2.log()

@pytest.mark.slow
def test_mid_file_corruption_is_reported_and_nothing_after_it_trusted(db_factory, tmp_path):
    d, before = _stopped_db_with_rows(db_factory, batches=60)
    from shm import wal

    wal_file = wal_files(d.path)[0]
    found = wal.scan(wal_file)
    batch_recs = found.records[found.records["type"] <= 2]
    victim = batch_recs[len(batch_recs) // 2]
    # what must survive: every record before the damaged one (a pass's trades and quotes
    # records interleave in seq, so this is a prefix in file order, not in seq)
    prefix_copy = str(tmp_path / "prefix.wal")
    with open(wal_file, "rb") as src, open(prefix_copy, "wb") as dst:
        dst.write(src.read(int(victim["offset"])))
    expect = wal.decode(prefix_copy)
    with open(wal_file, "r+b") as f:  # one flipped bit in the payload of a middle record
        f.seek(int(victim["offset"]) + 48 + 5)
        b = f.read(1)
        f.seek(int(victim["offset"]) + 48 + 5)
        f.write(bytes([b[0] ^ 0x10]))
    r = run_cli("verify", "--db", d.path)
    assert r.returncode == 1 and "mid-file" in r.stdout and "checksum" in r.stdout, r.stdout

    d2 = db_factory("--shards", "1", "--feed", "none", "--fsync", "batch")
    after = snapshot(d2.path)
    assert "wayy: warning: shard-0.wal was damaged in the middle" in d2.log()
    # exactly the rows logged before the damaged record survive, nothing after it
    for table in ("trades", "quotes"):
        keep = np.isin(before[table]["seq"], expect[table]["seq"])
        assert keep.sum() == len(expect[table]["seq"])
        np.testing.assert_array_equal(after[table]["seq"], before[table]["seq"][keep])
        col = "price" if table == "trades" else "bid"
        np.testing.assert_array_equal(after[table][col], before[table][col][keep])
    assert len(after["trades"]["seq"]) < len(before["trades"]["seq"])
    assert "copied aside" in d2.log()
    aside = glob.glob(os.path.join(d2.path, "wal", "*.damaged-*"))
    assert len(aside) == 1
    r = run_cli("verify", "--db", d2.path)
    assert r.returncode == 1 and "damaged WAL copied aside" in r.stdout, r.stdout
    # new rows continue after the surviving prefix: no seq is handed out twice in the WAL
    publish_mixed(d2.path, 2, seed=3)
    d2.stop()
    assert wal.scan(wal_files(d2.path)[0]).damage is None


def test_wal_of_another_shard_or_version_is_refused(db_factory, tmp_path):
    d, _ = _stopped_db_with_rows(db_factory, shards=2, batches=5)
    w0, w1 = wal_files(d.path)
    os.rename(w0, w0 + ".x")
    os.rename(w1, w0)
    os.rename(w0 + ".x", w1)
    with pytest.raises(RuntimeError) as info:
        start_db(d.path, "--shards", "2", "--feed", "none", timeout=30)
    assert "shard" in str(info.value).lower() and "WAL" in str(info.value)
    os.rename(w0, w0 + ".x")
    os.rename(w1, w0)
    os.rename(w0 + ".x", w1)
    with open(w0, "r+b") as f:  # a future format version
        f.seek(4)
        f.write(b"\x09\x00")
    r = run_cli("verify", "--db", d.path)
    assert r.returncode == 1 and "version" in r.stdout


def test_shard_count_and_wal_are_kept_across_starts(db_factory):
    # WALs and history are per shard and a symbol's shard depends on the count: a start with
    # another count, or with --no-wal over existing logs, would hide rows; it is refused,
    # and a start without --shards takes the database's own count
    d, before = _stopped_db_with_rows(db_factory, shards=2, batches=5)
    assert open(os.path.join(d.path, "wayy.shards")).read().strip() == "2"
    for args, words in ((("--shards", "3"), "has 2 shards; start it with --shards 2"),
                        (("--shards", "2", "--no-wal"), "write-ahead logs")):
        r = run_cli("start", "--db", d.path, "--feed", "none", "--no-redis", "--detach", *args)
        assert r.returncode == 1 and words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # wayy.shards edited by hand: a count below the shards the files belong to (shard 1's
    # rows would be ignored, its symbols routed to shard 0), or no count, is refused
    count = os.path.join(d.path, "wayy.shards")
    for bad, words in (("1", "holds 1, but the database has files of shard 1"),
                       ("3", "the write-ahead logs are of shards 0..1 only"),
                       ("0", "holds 0, not a shard count"), ("two", "does not hold")):
        with open(count, "w") as f:
            f.write(bad + "\n")
        try:
            r = run_cli("start", "--db", d.path, "--feed", "none", "--no-redis", "--detach")
            assert r.returncode == 1 and words in r.stderr, r.stderr
            assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        finally:
            run_cli("stop", "--db", d.path)  # were it started after all
    with open(count, "w") as f:
        f.write("2\n")
    d2 = db_factory("--feed", "none")  # no --shards: the database's 2
    assert len(d2.status()["shards"]) == 2
    assert_same(before, snapshot(d2.path))
    d2.stop()
    # a writer that refuses its WAL says why, in one line, from `wayy start --detach`
    w0, w1 = wal_files(d2.path)
    os.rename(w0, w0 + ".x")
    os.rename(w1, w0)
    os.rename(w0 + ".x", w1)
    r = run_cli("start", "--db", d2.path, "--feed", "none", "--no-redis", "--detach")
    assert r.returncode == 1 and "cannot start" in r.stderr and "belongs to shard" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_detached_start_shows_what_it_logged_as_warnings(db_factory):
    """A WAL removed while the database was stopped: the rows are gone, the seqs go on, and
    `wayy start --detach` says so on stderr, not only in wayy.log."""
    d, _before = _stopped_db_with_rows(db_factory, shards=1, batches=3)
    os.remove(wal_files(d.path)[0])
    r = run_cli("start", "--db", d.path, "--feed", "none", "--no-redis", "--detach")
    try:
        assert r.returncode == 0, r.stderr
        notes = [x for x in r.stderr.splitlines() if x.startswith("wayy: warning (logged): ")]
        assert len(notes) == 1 and "shard 0: seqs up to" in notes[0], r.stderr
        assert "was the WAL removed, emptied or damaged?" in notes[0]
    finally:
        assert run_cli("stop", "--db", d.path).returncode == 0
    r = run_cli("start", "--db", d.path, "--feed", "none", "--no-redis", "--detach")
    try:  # a clean start says nothing of the kind
        assert r.returncode == 0 and "(logged)" not in r.stderr, r.stderr
    finally:
        assert run_cli("stop", "--db", d.path).returncode == 0


def test_a_start_refused_for_space_leaves_the_shard_count_free(tmp_path):
    """The error tells the user to lower --capacity or --shards: the next start with fewer
    shards must not be refused because the failed one fixed the count."""
    db = str(tmp_path / "db")
    r = run_cli("start", "--db", db, "--shards", "2", "--capacity", str(1 << 30), "--feed",
                "none", "--no-redis", "--detach")
    assert r.returncode == 1 and "/dev/shm" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(db, "wayy.shards"))
    r = run_cli("start", "--db", db, "--shards", "1", "--capacity", "4096", "--feed", "none",
                "--no-redis", "--detach")
    try:
        assert r.returncode == 0, r.stderr
        assert open(os.path.join(db, "wayy.shards")).read().strip() == "1"
    finally:
        run_cli("stop", "--db", db)


def test_a_handle_of_an_earlier_run_says_so(db_factory):
    # a Database attached before a restart maps the old run's shared memory: it must not go
    # on answering from it
    d = db_factory("--shards", "1", "--feed", "none")
    sent = publish_mixed(d.path, 3)
    old = wayy.attach(d.path)
    old_producer = wayy.Producer(d.path, timeout=0.3)
    wait_for(lambda: len(old["trades"]) == sent, what="trades committed")
    d.stop()
    # stopped: the Producer's run has ended (a NotRunning, and a WriterUnavailable)
    with pytest.raises(wayy.RunEnded, match="is not running") as exc:
        old_producer.publish("trades", symbol="S01", price=1.0, size=1.0)
    assert isinstance(exc.value, wayy.NotRunning) and exc.value.accepted == 0
    d2 = db_factory("--shards", "1", "--feed", "none")
    with pytest.raises(wayy.RunEnded, match="was stopped and started again"):
        old_producer.publish("trades", symbol="S01", price=1.0, size=1.0)
    with pytest.raises(wayy.WriterUnavailable, match="create a new Producer") as exc:
        old_producer.publish_batch("trades", {"symbol": np.array(["S01", "S02"]),
                                              "price": np.ones(2), "size": np.ones(2)})
    assert exc.value.accepted == 0 and exc.value.pending_rows.tolist() == [0, 1]
    old_producer.close()
    time.sleep(0.6)  # handles look at most every 0.5 s
    for query in (lambda: len(old["trades"]), lambda: old["trades"].tail(3),
                  lambda: old["quotes"].between()):
        with pytest.raises(wayy.NotRunning, match="attach again"):
            query()
    old.close()
    with wayy.attach(d2.path) as db:
        assert len(db["trades"]) == sent


def test_flush_returns_once_what_was_published_is_committed(db_factory):
    d = db_factory("--shards", "2", "--feed", "none")
    p = wayy.Producer(d.path)
    db = wayy.attach(d.path)
    # another producer's rows, not flushed by it: p's flush covers the whole ring
    sent = publish_mixed(d.path, 3, flush=False)
    p.publish_batch("trades", {"ts": T0 + np.arange(5000), "symbol": SYMS[np.arange(5000) % 40],
                               "price": np.arange(1.0, 5001.0), "size": np.ones(5000)})
    p.flush()
    assert len(db["trades"]) == sent + 5000  # committed: no waiting after flush
    # a stopped writer: flush says so at its timeout, and succeeds once the writer goes on
    wpid = d.status()["shards"][0]["writer_pid"]
    os.kill(wpid, signal.SIGSTOP)
    try:
        k0 = [s for s in SYMS if wayy.shard_of(str(s), 2) == 0][0]
        p.publish("trades", symbol=str(k0), price=1.0, size=1.0)
        with pytest.raises(wayy.WriterUnavailable, match="has not committed"):
            p.flush(timeout=0.3)
    finally:
        os.kill(wpid, signal.SIGCONT)
    p.flush()
    assert len(db["trades"]) == sent + 5001
    db.close()
    p.close()



def test_flush_raises_for_rows_a_writer_refused(db_factory):
    """publish returned, but the writer refused the rows (symbol table full; table full
    with --roll-fill 0): flush raises RowsRejected naming shard, reason and count, once;
    the next flush, with nothing refused since, returns."""
    d = db_factory("--shards", "1", "--feed", "none", "--max-symbols", "4",
                   "--capacity", "1024", "--roll-fill", "0")
    p = wayy.Producer(d.path)
    for i in range(8):
        p.publish("trades", symbol=f"SYM{i}", price=1.0, size=1.0)
    with pytest.raises(wayy.RowsRejected, match="4 symbols_full") as exc:
        p.flush(10.0)
    assert exc.value.rejected == {0: {"symbols_full": 4}}
    p.publish("trades", symbol="SYM0", price=2.0, size=1.0)
    p.flush(10.0)  # nothing refused since the last flush
    # each batch fits an empty table; together they overflow it, and --roll-fill 0 never rolls
    n = 1000
    for _ in range(2):
        assert p.publish_batch("trades", {"symbol": np.array(["SYM1"] * n),
                                          "price": np.ones(n), "size": np.ones(n)}) == n
    with pytest.raises(wayy.RowsRejected, match="full") as exc:
        p.flush(10.0)
    assert exc.value.rejected[0] == {"full": n}  # the second batch, whole
    db = wayy.attach(d.path)
    try:
        # SYM0..SYM3, SYM0 again and the first batch; none of the refused
        assert len(db["trades"]) == 5 + n
    finally:
        db.close()
        p.close()

@functools.lru_cache(maxsize=None)
def _can_mount() -> bool:
    probe = tempfile.mkdtemp(prefix="wayy-mount-probe-")  # each pytest process its own
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", probe], capture_output=True)
    os.rmdir(probe)
    return ok


@contextlib.contextmanager
def small_wal_disk(tmp_path):
    """``DB/wal`` of the database at tmp_path/db on a 512 KiB tmpfs (unmounted after):
    yields (database path, WAL directory)."""
    path = str(tmp_path / "db")
    wal_dir = os.path.join(path, "wal")
    os.makedirs(wal_dir)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", wal_dir], check=True)
    try:
        yield path, wal_dir
    finally:
        subprocess.run(["umount", "-l", wal_dir], capture_output=True)


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount(), reason="needs permission to mount a small tmpfs")
def test_full_disk_stops_ingest_with_a_clear_error_and_resumes(db_factory, tmp_path):
    with small_wal_disk(tmp_path) as (_path, wal_dir):
        d = db_factory("--shards", "1", "--feed", "none", "--fsync", "batch")
        p = wayy.Producer(d.path, timeout=2)
        acked = 0
        err = None
        rng = np.random.default_rng(1)
        for _ in range(5000):  # up to 20 MB of WAL: far more than the 512 KiB there are
            n = 100
            try:
                p.publish_batch("trades", {
                    "ts": np.full(n, T0), "symbol": "DISK",
                    "price": acked + 1.0 + np.arange(n), "size": rng.random(n) + 1,
                    "venue": rng.choice(["A", "B", "C"], n)})
                acked += n
            except WriterUnavailable as exc:
                err = exc
                break
        assert err is not None and "write-ahead log cannot be written" in str(err)
        st = d.status()["shards"][0]
        assert st["state"] == "wal-blocked"
        assert "No space left" in d.log()
        db = wayy.attach(d.path)
        committed = len(db["trades"])
        assert 0 < committed <= acked  # what was committed stays readable
        # space returns: the writer resumes by itself and commits what producers had handed in
        subprocess.run(["mount", "-o", "remount,size=64m", wal_dir], check=True)
        wait_for(lambda: d.status()["shards"][0]["state"] == "running", timeout=10,
                 what="writer resumes")
        wait_for(lambda: len(db["trades"]) == acked, timeout=10, what="acked rows committed")
        p.publish_batch("trades", {"ts": np.full(5, T0), "symbol": "DISK",
                                   "price": acked + 1.0 + np.arange(5), "size": np.ones(5)})
        acked += 5
        wait_for(lambda: len(db["trades"]) == acked, what="rows after resume")
        r = db["trades"].between()
        np.testing.assert_array_equal(np.sort(r["price"]), np.arange(1, acked + 1, dtype=float))
        db.close()
        p.close()
        before = snapshot(d.path)
        d.stop()
        d2 = db_factory("--shards", "1", "--feed", "none")
        assert_same(before, snapshot(d2.path))  # nothing committed was lost
        d2.stop()


@pytest.mark.skipif(not _can_mount(), reason="needs permission to mount a small tmpfs")
def test_stop_of_a_wal_blocked_shard_says_what_it_cannot_store(db_factory, tmp_path):
    """`wayy stop` drains the rings, except a shard whose WAL cannot be written: it stops
    anyway, and says how much of that ring (never acknowledged) is not stored."""
    with small_wal_disk(tmp_path):
        d = db_factory("--shards", "1", "--feed", "none", "--fsync", "batch")
        p = wayy.Producer(d.path, timeout=2)
        n = 100
        with pytest.raises(WriterUnavailable):
            for i in range(5000):
                p.publish_batch("trades", {"ts": np.full(n, T0), "symbol": "DISK",
                                           "price": i + 1.0 + np.arange(n),
                                           "size": np.ones(n)})
        p.close()
        assert d.status()["shards"][0]["state"] == "wal-blocked"
        r = run_cli("stop", "--db", d.path)
        assert r.returncode == 0, r.stderr
        assert "shard 0 cannot write its write-ahead log" in r.stderr, r.stderr
        assert "never acknowledged by a flush, are not stored" in r.stderr

def ingest_forever(path: str, seconds: float, q) -> None:
    """Producer process: trade batches priced 1, 2, 3, ... for ``seconds``; puts the count."""
    p = wayy.Producer(path, timeout=60)
    rng = np.random.default_rng(os.getpid())
    sent = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        time.sleep(0.002)
        n = int(rng.integers(1, 1500))
        p.publish_batch("trades", {"ts": np.full(n, T0), "symbol": SYMS[rng.integers(0, 40, n)],
                                   "price": np.arange(sent, sent + n, dtype=float) + 1,
                                   "size": np.full(n, 1.0)})
        sent += n
    p.close()
    q.put(sent)


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["batch", "interval"])
def test_writer_sigkill_then_full_restart_every_row_exactly_once(db_factory, fsync):
    """Kill the writer at random points (before, during, after WAL append, fsync and commit),
    then stop the whole database and start it from its WAL alone."""
    d = db_factory("--shards", "1", "--feed", "none", "--fsync", fsync,
                   "--capacity", str(2**23), "--ring-bytes", str(2**20))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    prod = ctx.Process(target=ingest_forever, args=(d.path, 8.0, q))
    prod.start()
    kills = 0
    rnd = random.Random(fsync)
    try:
        deadline = time.monotonic() + 7.5
        while time.monotonic() < deadline:
            time.sleep(rnd.uniform(0.2, 0.9))
            s = d.status()["shards"][0]
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
    db = wayy.attach(d.path)
    wait_for(lambda: len(db["trades"]) >= sent, timeout=60, what="all rows after kills")
    db.close()
    d.stop()
    d2 = db_factory("--shards", "1", "--feed", "none", "--capacity", str(2**23))
    db = wayy.attach(d2.path)
    r = db["trades"].between()
    assert len(r) == sent
    np.testing.assert_array_equal(np.sort(r["price"]), np.arange(1, sent + 1, dtype=float))
    np.testing.assert_array_equal(np.sort(r["seq"]), np.arange(sent))
    prices = r["price"][np.argsort(r["seq"])]
    assert np.all(np.diff(prices) == 1)  # arrival order kept
    db.close()
    assert run_cli("verify", "--db", d2.path).returncode == 0


def test_a_full_venue_table_is_reported_as_venues_full(db_factory):
    """A shard interns 1,023 named venues besides the empty one: a row with one more is
    refused by the writer and counted as venues_full (not symbols_full), and the rest of
    the batch is stored."""
    d = db_factory("--shards", "1", "--feed", "none", "--no-redis")
    n = 1025
    p = wayy.Producer(d.path)
    try:
        for a in range(0, n, 200):  # one batch per 200 venues
            m = min(200, n - a)
            p.publish_batch("trades", {"symbol": np.array(["VEN"] * m),
                                       "venue": np.array([f"V{i}" for i in range(a, a + m)]),
                                       "price": np.ones(m), "size": np.ones(m)})
        with pytest.raises(wayy.RowsRejected, match="2 venues_full") as exc:
            p.flush(10.0)
        assert exc.value.rejected == {0: {"venues_full": 2}}
    finally:
        p.close()
    with wayy.attach(d.path) as db:
        assert len(db["trades"]) == n - 2
    st = d.status()["shards"][0]["rejects"]
    assert st["venues_full"] == 2 and st["symbols_full"] == 0


@contextlib.contextmanager
def bare_writer(path: str):
    """A one-shard database at ``path`` whose writer this process drives (ShardWriter with
    the WAL, fsync interval) and a Producer: yields (writer, inbound ring, producer)."""
    from benchmarks.bench_ingest import _single_shard_db
    from shm import inbound
    from shm.layout import inbound as L
    from shm.shard import InboundRing
    from workers.shard_log import WalConfig
    from workers.writer import ShardWriter

    with _single_shard_db(path, 1 << 16, writer=False) as prefix:
        ring = InboundRing.attach(prefix, 0)
        inbound.set_accepting(ring.hdr32, 1, L.REFUSE_NONE)
        w = ShardWriter(prefix, 0, path, WalConfig(enabled=True, fsync="interval"))
        w.on_start()
        p = wayy.Producer(path, timeout=0.5)
        try:
            yield w, ring, p
        finally:
            p.close()
            w.on_close()
            ring.close()


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """RLIMIT_FSIZE at ``nbytes`` (SIGXFSZ ignored): a write past it takes what fits, then
    fails with EFBIG -- the kernel's own failure, not a mock."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


@pytest.mark.parametrize("room", [0, 30])
def test_a_small_pass_whose_wal_write_fails_is_not_committed_then_goes_in_once(tmp_path,
                                                                               room, caplog):
    """The writer appends small passes to the WAL and commits them in one compiled call
    (ingest.writer_pass_logged). When that write() fails at once (room 0) or after part of
    the records (room 30, then EFBIG), the pass is not committed, the WAL is cut back to
    its last whole record, the shard refuses ticks; once the file may grow, the same rows
    are logged once and committed. Passes logged by the Python path in between (new names,
    a pass of 300 rows) continue the same seqs."""
    import logging

    from shm import wal
    from shm.layout import control as C
    from shm.layout import inbound as L
    from shm.layout import wal as WL
    from workers.shard_log import wal_path
    from workers.writer import WAL_RETRY_S

    d = str(tmp_path)
    with bare_writer(d) as (w, ring, p):
        db = wayy.attach(d)
        price = [0.0]

        def tick(symbol: str = "A") -> None:
            price[0] += 1
            p.publish("trades", symbol=symbol, price=price[0], size=1.0, ts=T0)
            while w.do_work():
                pass

        try:
            for i in range(40):
                tick("AB"[i % 2] if i < 10 else "A")
            assert isinstance(w._walt, np.ndarray)  # small passes take the compiled path
            end = w.log.writer.end
            assert os.path.getsize(wal_path(d, 0)) == end
            with file_size_limit(end + room):
                price[0] += 1
                p.publish("trades", symbol="A", price=price[0], size=1.0, ts=T0)
                with caplog.at_level(logging.ERROR, logger="wayy.writer"):
                    assert w.do_work() == 0
            assert "File too large" in caplog.text  # the kernel's own EFBIG, not a mock
            assert len(db["trades"]) == 40  # not committed
            assert os.path.getsize(wal_path(d, 0)) == end == w.log.writer.end
            assert int(w.ctl.counters[C.C_STATE]) == C.STATE_DEGRADED
            assert int(ring.hdr32[L.ACCEPTING_I32]) == 0
            time.sleep(WAL_RETRY_S + 0.1)
            while w.do_work():
                pass
            assert len(db["trades"]) == 41
            assert int(w.ctl.counters[C.C_STATE]) == C.STATE_RUNNING
            n = 300  # the Python path, after compiled passes
            p.publish_batch("trades", {"ts": np.full(n, T0), "symbol": "A",
                                       "price": price[0] + 1 + np.arange(n),
                                       "size": np.ones(n)})
            price[0] += n
            while w.do_work():
                pass
            for i in range(20):  # compiled again, and a new name in between
                tick("C" if i == 10 else "A")
            assert isinstance(w._walt, np.ndarray)
        finally:
            rows = db["trades"].between()
            db.close()
    assert len(rows["price"]) == 41 + n + 20
    np.testing.assert_array_equal(np.sort(rows["price"]), np.arange(1.0, price[0] + 1))
    found = wal.scan(wal_path(d, 0), 0)
    assert found.damage is None, found.damage
    rec = found.records[found.records["type"] == WL.REC_TRADES]
    assert int(rec["row_count"].sum()) == len(rows["price"])
    # every record continues the one before: no seq twice, none missing
    np.testing.assert_array_equal(rec["first_seq"][1:],
                                  rec["first_seq"][:-1] + rec["row_count"][:-1])
    assert found.next_seq == int(rows["seq"].max()) + 1


def test_a_failed_pass_with_new_names_says_where_the_wal_ends_and_retries_are_told(
        tmp_path, caplog, monkeypatch):
    """A pass that logged a new symbol's name record and then failed on its rows is cut
    back whole: the error names the end the log has after that (it named the end after
    the name record), and a retry that fails again is logged too (at most once a
    WAL_RETELL_S, here 0), with the count of retries."""
    import logging

    from workers import writer as writer_mod
    from workers.shard_log import wal_path
    from workers.writer import WAL_RETRY_S

    monkeypatch.setattr(writer_mod, "WAL_RETELL_S", 0.0)
    d = str(tmp_path)
    with bare_writer(d) as (w, _ring, p):
        p.publish("trades", symbol="A", price=1.0, size=1.0, ts=T0)
        while w.do_work():
            pass
        end = w.log.writer.end
        with file_size_limit(end + 100):  # room for the name record of NEW, not its row
            p.publish("trades", symbol="NEW", price=2.0, size=1.0, ts=T0)
            with caplog.at_level(logging.ERROR, logger="wayy.writer"):
                assert w.do_work() == 0
                assert f"cut back to {end}, with the pass's name records" in caplog.text
                assert os.path.getsize(wal_path(d, 0)) == end
                time.sleep(WAL_RETRY_S + 0.1)
                assert w.do_work() == 0
                assert "the WAL still cannot be written (1 retries)" in caplog.text
        time.sleep(WAL_RETRY_S + 0.1)
        while w.do_work():
            pass
        db = wayy.attach(d)
        assert sorted(db["trades"].between()["symbol"].tolist()) == ["A", "NEW"]
        db.close()
