"""History on disk: partitions written atomically, read back alone and together with memory."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

import wayy
from shm.shard import ShardData
from tests.conftest import REPO, wait_for
from wayy import history as H

T0 = 1_700_000_000_000_000_000  # 2023-11-14
SYMS = ["AA", "BB.X", "CC-1", "DD", "EE", "FF", "GG", "HH"]
VENS = ["", "NYSE", "IEX", "ARCA"]
COLS = ("ts", "symbol", "venue", "price", "size", "seq")


def make_rows(rng, n: int, seq0: int, ts0: int, syms=SYMS, vens=VENS) -> tuple[dict, dict]:
    """(columns with int ids as write_partition takes them, the same rows with names)."""
    sid = rng.integers(0, len(syms), n).astype(np.int32)
    vid = rng.integers(0, len(vens), n).astype(np.int32)
    cols = {"ts": ts0 + np.arange(n, dtype=np.int64) * 1000 + rng.integers(-4000, 4000, n),
            "symbol": sid, "venue": vid, "price": rng.uniform(1, 500, n).round(2),
            "size": rng.integers(1, 100, n).astype(float),
            "seq": seq0 + np.arange(n, dtype=np.int64)}
    named = dict(cols, symbol=np.array(syms)[sid], venue=np.array(vens)[vid])
    return cols, named


def ordered(ref: dict, shard: np.ndarray, sel=None) -> dict:
    """Reference rows (optionally selected) in the documented order: ts, shard, seq."""
    if sel is not None:
        ref = {c: v[sel] for c, v in ref.items()}
        shard = shard[sel]
    o = np.lexsort((ref["seq"], shard, ref["ts"]))
    return {c: v[o] for c, v in ref.items()}


def tail_ref(ref: dict, shard: np.ndarray, n: int, sel=None, symbol: bool = False) -> dict:
    """Per shard the last n matching rows by seq, merged by ts (stable), the last n. A
    symbol's rows from a single shard stay in seq (arrival) order."""
    sel = np.ones(len(shard), bool) if sel is None else sel
    keep = np.zeros(len(shard), bool)
    shards = np.unique(shard[sel])
    for s in shards:
        idx = np.flatnonzero(sel & (shard == s))
        idx = idx[np.argsort(ref["seq"][idx])][-n:] if n else idx[:0]
        keep[idx] = True
    if symbol and len(shards) == 1:
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(ref["seq"][idx])]
        out = {c: v[idx] for c, v in ref.items()}
    else:
        out = ordered(ref, shard, keep)
    return {c: v[len(v) - n:] if len(v) > n else v for c, v in out.items()}


def assert_same(res, want: dict) -> None:
    assert len(res) == len(want["ts"])
    for c in COLS:
        np.testing.assert_array_equal(res[c], want[c], err_msg=c)


def cat(*ds: dict) -> dict:
    return {c: np.concatenate([d[c] for d in ds]) for c in ds[0]}


# --- the store alone ---------------------------------------------------------------------------
def test_round_trip_files_meta_and_verify(tmp_path):
    rng = np.random.default_rng(1)
    cols, named = make_rows(rng, 5000, 100, T0)
    path = H.write_partition(str(tmp_path), "2023-11-14", "trades", 3, cols, SYMS, VENS)
    assert path == str(tmp_path / "hist" / "2023-11-14" / "trades" / "shard-3.seq-100")
    files = sorted(os.listdir(path))
    assert files == sorted(["meta.json", "ts.i64", "symbol.i32", "venue.i32", "price.f64",
                            "size.f64", "seq.i64", "blk_min.i64", "blk_max.i64",
                            "sym_rows.i64", "sym_last.i64"])
    # raw little-endian, one value per row, memory-mappable as is
    np.testing.assert_array_equal(np.fromfile(os.path.join(path, "ts.i64"), "<i8"), cols["ts"])
    np.testing.assert_array_equal(np.fromfile(os.path.join(path, "symbol.i32"), "<i4"),
                                  cols["symbol"])
    meta = json.load(open(os.path.join(path, "meta.json")))
    assert (meta["rows"], meta["first_seq"], meta["last_seq"]) == (5000, 100, 5099)
    assert (meta["min_ts"], meta["max_ts"]) == (int(cols["ts"].min()), int(cols["ts"].max()))
    assert meta["symbols"] == SYMS and meta["venues"] == VENS and meta["shard"] == 3
    assert meta["block_rows"] == H.BLOCK_ROWS
    blk_min = np.fromfile(os.path.join(path, "blk_min.i64"), "<i8")
    assert len(blk_min) == -(-5000 // H.BLOCK_ROWS) and blk_min[0] == cols["ts"][:1024].min()
    assert H.verify_partition(path) == []
    assert H.verify_history(str(tmp_path)) == {path: []}
    store = H.HistoryStore(str(tmp_path))
    assert_same(store.between("trades"), ordered(named, np.zeros(5000, int)))
    assert store.last_seq("trades", 3) == 5099 and store.last_seq("quotes", 3) == -1
    assert store.rows("trades") == 5000 and store.rows("quotes") == 0
    assert [n for n in os.listdir(tmp_path / "hist") if n.startswith(".")] == []


def test_quotes_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    n = 300
    bid = rng.uniform(10, 20, n)
    cols = {"ts": T0 + np.arange(n), "symbol": np.zeros(n, np.int32),
            "venue": np.ones(n, np.int32), "bid": bid, "ask": bid + 0.01,
            "bid_size": np.full(n, 100.0), "ask_size": np.full(n, 200.0),
            "seq": np.arange(n)}
    H.write_partition(str(tmp_path), "2023-11-14", "quotes", 0, cols, ["Q"], ["", "ARCA"])
    r = H.HistoryStore(str(tmp_path)).tail("quotes", 10)
    assert list(r.columns) == ["ts", "symbol", "venue", "bid", "ask", "bid_size",
                               "ask_size", "seq"]
    np.testing.assert_array_equal(r["bid"], bid[-10:])
    assert set(r["venue"]) == {"ARCA"} and set(r["symbol"]) == {"Q"}


def _several_partitions(root: str, rng) -> tuple[dict, np.ndarray]:
    """2 dates x 3 shards, two rolls on the second date; returns reference rows + shard."""
    refs, shards = [], []
    for k in range(3):
        seq = 0
        for date, ts0, n in (("2023-11-13", T0 - 86_400 * 10**9, 3000),
                             ("2023-11-14", T0, 2500), ("2023-11-14", T0 + 3 * 10**9, 4200)):
            cols, named = make_rows(rng, n, seq, ts0 + k * 7)
            H.write_partition(root, date, "trades", k, cols, SYMS, VENS)
            refs.append(named)
            shards.append(np.full(n, k))
            seq += n + int(rng.integers(0, 5))  # rolls may leave seq gaps (the other table)
    return cat(*refs), np.concatenate(shards)


def test_between_and_tail_across_partitions_match_numpy(tmp_path):
    rng = np.random.default_rng(3)
    ref, shard = _several_partitions(str(tmp_path), rng)
    store = H.HistoryStore(str(tmp_path), max_mapped=2)  # forces unmapping along the way
    ts = ref["ts"]
    assert_same(store.between("trades"), ordered(ref, shard))
    for lo, hi in ((T0 + 10**6, T0 + 2 * 10**6), (T0 - 10**18, T0 + 10**6), (T0, T0),
                   (T0 + 3 * 10**9 + 5, T0 + 3 * 10**9 + 4_000_000)):
        sel = (ts >= lo) & (ts < hi)
        assert_same(store.between("trades", lo, hi), ordered(ref, shard, sel))
        for sym in ("BB.X", "HH"):
            s2 = sel & (ref["symbol"] == sym)
            assert_same(store.between("trades", lo, hi, symbol=sym), ordered(ref, shard, s2))
            s3 = s2 & (ref["venue"] == "IEX")
            assert_same(store.between("trades", lo, hi, symbol=sym, venue="IEX"),
                        ordered(ref, shard, s3))
        s4 = sel & (ref["venue"] == "")
        assert_same(store.between("trades", lo, hi, venue=""), ordered(ref, shard, s4))
    assert len(store.between("trades", symbol="NOPE")) == 0
    assert len(store.between("trades", venue="NOPE")) == 0
    for n in (0, 1, 7, 4000, 100_000):
        assert_same(store.tail("trades", n), tail_ref(ref, shard, n))
        assert_same(store.tail("trades", n, symbol="CC-1"),
                    tail_ref(ref, shard, n, ref["symbol"] == "CC-1", symbol=True))
        sel = (ref["symbol"] == "DD") & (ref["venue"] == "ARCA")
        assert_same(store.tail("trades", n, symbol="DD", venue="ARCA"),
                    tail_ref(ref, shard, n, sel, symbol=True))
        assert_same(store.tail("trades", n, venue="IEX"),
                    tail_ref(ref, shard, n, ref["venue"] == "IEX"))
    assert len(store._mapped) <= 2
    with pytest.raises(wayy.InvalidName):
        store.tail("trades", 5, symbol="bad name")
    with pytest.raises(wayy.UnknownTable):
        store.between("orders")


def test_symbol_ids_damaged_after_writing_are_corrupt_data_in_queries(tmp_path):
    """Random bytes over a partition's symbol.i32 (ids past its names): a query raises
    CorruptData naming the partition, not an IndexError; verify flags it too."""
    rng = np.random.default_rng(4)
    cols, _ = make_rows(rng, 3000, 100, T0)
    path = H.write_partition(str(tmp_path), "2023-11-14", "trades", 0, cols, SYMS, VENS)
    with open(os.path.join(path, "symbol.i32"), "r+b") as f:
        f.seek(400)
        f.write(np.full(64, 10**6, "<i4").tobytes())
    store = H.HistoryStore(str(tmp_path))
    with pytest.raises(wayy.CorruptData, match="symbol ids outside its .* names"):
        store.between("trades")
    assert H.verify_partition(path) != []
    store.close()
    other = str(tmp_path / "b")
    path = H.write_partition(other, "2023-11-15", "trades", 1, cols, SYMS, VENS)
    with open(os.path.join(path, "venue.i32"), "r+b") as f:  # -1: numpy's last name
        f.seek(40)
        f.write(np.full(1, -1, "<i4").tobytes())
    store = H.HistoryStore(other)
    with pytest.raises(wayy.CorruptData, match="venue ids outside"):
        store.between("trades")
    store.close()


def test_write_refuses_stored_rows_and_bad_input(tmp_path):
    root = str(tmp_path)
    rng = np.random.default_rng(4)
    cols, _ = make_rows(rng, 100, 1000, T0)
    H.write_partition(root, "2023-11-14", "trades", 0, cols, SYMS, VENS)
    with pytest.raises(H.HistoryExists, match="already exists"):  # the same roll again
        H.write_partition(root, "2023-11-14", "trades", 0, cols, SYMS, VENS)
    later, _ = make_rows(rng, 100, 1050, T0)  # overlaps seq 1050..1099
    with pytest.raises(H.HistoryExists, match="up to 1099"):
        H.write_partition(root, "2023-11-15", "trades", 0, later, SYMS, VENS)
    back, _ = make_rows(rng, 10, 5000, T0)
    with pytest.raises(wayy.InvalidInput, match="before the latest"):
        H.write_partition(root, "2023-11-13", "trades", 0, back, SYMS, VENS)
    # the same seqs in another shard or table are fine
    H.write_partition(root, "2023-11-14", "trades", 1, cols, SYMS, VENS)

    def bad(match, **changes):
        c = dict(cols, **{k: v for k, v in changes.items() if k in cols})
        with pytest.raises(wayy.InvalidInput, match=match):
            H.write_partition(root, changes.get("date", "2023-11-16"), "trades", 2, c,
                              changes.get("syms", SYMS), VENS)

    bad("holds ids 8..8, but symbols has 8", symbol=np.full(100, 8, np.int32))
    bad("strictly increasing", seq=np.full(100, 7))
    bad("rows, ts has", price=np.ones(99))
    bad("must hold integers", ts=cols["ts"].astype(float))
    bad("YYYY-MM-DD", date="2023-13-01")
    bad("YYYY-MM-DD", date="../../etc")
    bad("not a valid name", syms=SYMS[:-1] + ["a/b"])
    with pytest.raises(wayy.InvalidInput, match="missing"):
        H.write_partition(root, "2023-11-16", "trades", 2, {"ts": cols["ts"]}, SYMS, VENS)
    with pytest.raises(wayy.InvalidInput, match="at least one row"):
        H.write_partition(root, "2023-11-16", "trades", 2,
                          {c: v[:0] for c, v in cols.items()}, SYMS, VENS)
    with pytest.raises(wayy.UnknownTable):
        H.write_partition(root, "2023-11-16", "orders", 2, cols, SYMS, VENS)
    assert set(H.verify_history(root)) == {
        os.path.join(root, "hist", "2023-11-14", "trades", f"shard-{k}.seq-1000")
        for k in (0, 1)}
    assert not [n for n in os.listdir(os.path.join(root, "hist")) if n.startswith(".")]


def test_store_sees_new_and_removed_partitions(tmp_path):
    root = str(tmp_path)
    store = H.HistoryStore(root, refresh_s=3600)
    assert store.partitions() == [] and store.refresh() is False
    rng = np.random.default_rng(5)
    cols, _ = make_rows(rng, 10, 0, T0)
    H.write_partition(root, "2023-11-14", "trades", 0, cols, SYMS, VENS)
    assert store.partitions() == []  # cached until refreshed
    assert store.refresh() is True
    assert [p.first_seq for p in store.partitions("trades")] == [0]
    more, _ = make_rows(rng, 10, 10, T0)
    H.write_partition(root, "2023-11-14", "trades", 0, more, SYMS, VENS)  # same second
    store.refresh()
    assert [p.first_seq for p in store.partitions("trades")] == [0, 10]
    assert store.last_seq("trades", 0) == 19
    H.apply_retention(root, 0, today="2023-11-15")
    store.refresh()
    assert store.partitions() == [] and store.last_seq("trades", 0) == -1


# --- verification and hostile files --------------------------------------------------------------
def _one(tmp_path, n=3000) -> str:
    cols, _ = make_rows(np.random.default_rng(6), n, 0, T0)
    return H.write_partition(str(tmp_path), "2023-11-14", "trades", 0, cols, SYMS, VENS)


def _rewrite_meta(path: str, **changes) -> None:
    mp = os.path.join(path, "meta.json")
    meta = json.load(open(mp))
    meta.update(changes)
    with open(mp, "w") as f:
        json.dump(meta, f)


def test_verify_detects_flipped_byte_truncation_missing_file_and_bad_meta(tmp_path):
    path = _one(tmp_path)
    fp = os.path.join(path, "price.f64")
    with open(fp, "r+b") as f:
        f.seek(1234)
        b = f.read(1)
        f.seek(1234)
        f.write(bytes([b[0] ^ 0x01]))
    assert any("price.f64: crc32" in p for p in H.verify_partition(path))
    with open(fp, "r+b") as f:  # flip it back
        f.seek(1234)
        f.write(b)
    assert H.verify_partition(path) == []

    tsf = os.path.join(path, "ts.i64")
    good = open(tsf, "rb").read()
    with open(tsf, "r+b") as f:
        f.truncate(len(good) - 8)
    assert any("ts.i64: " in p and "expected" in p for p in H.verify_partition(path))
    store = H.HistoryStore(str(tmp_path))
    with pytest.raises(wayy.CorruptData, match="ts.i64 is"):  # never a SIGBUS
        store.between("trades")
    open(tsf, "wb").write(good)

    os.rename(os.path.join(path, "seq.i64"), os.path.join(tmp_path, "seq.bak"))
    assert "seq.i64: missing" in H.verify_partition(path)
    os.rename(os.path.join(tmp_path, "seq.bak"), os.path.join(path, "seq.i64"))

    # seq not increasing, with the crc made to match: caught by content checks
    seqf = os.path.join(path, "seq.i64")
    seq = np.fromfile(seqf, "<i8")
    seq[10] = seq[9]
    seq.tofile(seqf)
    meta = json.load(open(os.path.join(path, "meta.json")))
    _rewrite_meta(path, files=dict(meta["files"], seq=dict(meta["files"]["seq"],
                  crc32=__import__("zlib").crc32(seq.tobytes()))))
    assert any("seq not strictly increasing at row 10" in p for p in H.verify_partition(path))

    with open(os.path.join(path, "meta.json"), "w") as f:
        f.write("{not json")
    probs = H.verify_history(str(tmp_path))[path]
    assert len(probs) == 1 and "bad meta.json" in probs[0]
    os.mkdir(os.path.join(tmp_path, "hist", "junk"))
    assert H.verify_history(str(tmp_path))[os.path.join(tmp_path, "hist", "junk")]


@pytest.mark.parametrize("change", [
    {"rows": 10**15},  # absurd, with file sizes claimed to match below
    {"rows": 2**62},
    {"rows": -1},
    {"rows": True},
    {"table": "../../etc"},
    {"shard": 7},  # disagrees with the directory name
    {"symbols": ["ok", "../x"]},
    {"symbols": []},
    {"version": 99},
    {"block_rows": 7},
    {"min_ts": T0 * 2},
    {"files": {"ts": "x"}},
])
def test_hostile_meta_is_refused_without_big_allocations(tmp_path, change):
    path = _one(tmp_path, n=2000)
    if change.get("rows") == 10**15:
        meta = json.load(open(os.path.join(path, "meta.json")))
        files = {k: dict(v, bytes=v["bytes"] // 2000 * 10**15 if k not in
                         ("sym_rows", "sym_last") else v["bytes"])
                 for k, v in meta["files"].items()}
        files["blk_min"]["bytes"] = files["blk_max"]["bytes"] = -(-10**15 // H.BLOCK_ROWS) * 8
        change = dict(change, files=files, last_seq=10**15)
    _rewrite_meta(path, **change)
    tracemalloc.start()
    try:
        probs = H.verify_partition(path)
        store = H.HistoryStore(str(tmp_path))
        with pytest.raises((wayy.CorruptData, wayy.IncompatibleVersion)):
            store.between("trades")
        with pytest.raises((wayy.CorruptData, wayy.IncompatibleVersion)):
            store.tail("trades", 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert probs, "verify must report the bad meta"
    assert peak < 32 * 2**20, f"{peak} bytes allocated for a hostile meta"


def test_oversized_and_nested_meta_are_refused(tmp_path):
    path = _one(tmp_path, n=10)
    mp = os.path.join(path, "meta.json")
    with open(mp, "w") as f:
        f.write("[" * 200_000 + "]" * 200_000)
    assert "bad meta.json" in H.verify_partition(path)[0]
    with open(mp, "wb") as f:
        f.truncate(H.MAX_META_BYTES + 10)
    assert "larger than" in H.verify_partition(path)[0]


# --- crash safety --------------------------------------------------------------------------------
CHILD = r"""
import sys
import numpy as np
from wayy import history as H
root = sys.argv[1]
rng = np.random.default_rng(int(sys.argv[2]))
seq = H.HistoryStore(root).last_seq("trades", 0) + 1
print("ready", flush=True)
while True:
    n = int(rng.integers(100_000, 600_000))
    cols = {"ts": 1_700_000_000_000_000_000 + seq + np.arange(n, dtype=np.int64),
            "symbol": rng.integers(0, 3, n).astype(np.int32),
            "venue": np.zeros(n, np.int32), "price": rng.random(n), "size": rng.random(n),
            "seq": seq + np.arange(n, dtype=np.int64)}
    path = H.write_partition(root, "2023-11-14", "trades", 0, cols, ["A", "B", "C"], [""])
    print("done", path, flush=True)
    seq += n
"""


def _kill_rounds(root: str, rounds: int) -> int:
    """SIGKILL a process looping over write_partition at random moments; after each kill
    every partition verifies, leftovers are cleaned and seqs continue with no gap."""
    hist = os.path.join(root, "hist")
    mid_write = 0
    rnd = random.Random(7)
    for r in range(rounds):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, root, str(r)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
            time.sleep(rnd.uniform(0, 0.4))
            wait_for(lambda: os.path.isdir(hist) and any(
                n.startswith(".tmp-") for n in os.listdir(hist)), timeout=30,
                interval=0.001, what="a partition being written")
            time.sleep(rnd.uniform(0, 0.05))
            proc.send_signal(signal.SIGKILL)
            if any(n.startswith(".tmp-") for n in os.listdir(hist)):
                mid_write += 1
        finally:
            proc.kill()
            out, _ = proc.communicate(timeout=30)
        done = [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("done")]
        report = H.verify_history(root)
        assert all(p in report for p in done)  # every completed write survived
        assert {p: v for p, v in report.items() if v} == {}
        H.cleanup_temp(root)
        assert not [n for n in os.listdir(hist) if n.startswith(".")]
        seq = H.HistoryStore(root).between("trades")["seq"]
        np.testing.assert_array_equal(seq, np.arange(len(seq)))
    return mid_write


def test_sigkill_during_write_leaves_no_partition_or_a_whole_one(tmp_path):
    root = str(tmp_path / "db")
    try:
        assert _kill_rounds(root, 4) >= 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_sigkill_during_write_many_rounds(tmp_path):
    root = str(tmp_path / "db")
    try:
        assert _kill_rounds(root, 12) >= 4
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_cleanup_temp_spares_live_writers_only(tmp_path):
    import fcntl

    root = str(tmp_path)
    hist = os.path.join(root, "hist")
    os.makedirs(hist)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = os.path.join(hist, f".tmp-{dead.pid}-abc")
    os.makedirs(os.path.join(gone, "x"))
    trash = os.path.join(hist, ".trash-1-abc")
    os.makedirs(trash)
    live = os.path.join(hist, f".tmp-{os.getpid()}-def")
    os.mkdir(live)
    fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what write_partition holds while it writes
        assert sorted(H.cleanup_temp(root)) == sorted([gone, trash])
        assert os.path.isdir(live)
    finally:
        os.close(fd)
    assert H.cleanup_temp(root) == [live]
    assert os.listdir(hist) == []


# --- retention -----------------------------------------------------------------------------------
def test_retention_removes_old_dates_only_and_crash_safely(tmp_path):
    root = str(tmp_path)
    rng = np.random.default_rng(8)
    seq = 0
    dates = ["2023-11-10", "2023-11-11", "2023-11-12", "2023-11-13", "2023-11-14"]
    for i, d in enumerate(dates):
        cols, _ = make_rows(rng, 50, seq, T0 + i * 86_400 * 10**9)
        H.write_partition(root, d, "trades", 0, cols, SYMS, VENS)
        seq += 50
    assert H.apply_retention(root, None) == []
    with pytest.raises(wayy.InvalidInput):
        H.apply_retention(root, -1)
    removed = H.apply_retention(root, 2, today="2023-11-14")
    assert [p.split(os.sep)[-3] for p in removed] == dates[:2]
    assert sorted(os.listdir(os.path.join(root, "hist"))) == dates[2:]
    store = H.HistoryStore(root)
    assert [p.date for p in store.partitions()] == dates[2:]
    np.testing.assert_array_equal(store.between("trades")["seq"] // 50,
                                  np.repeat([2, 3, 4], 50))
    # a crash after the rename to trash leaves only trash, which the next cleanup removes
    victim = store.partitions()[0].path
    trash = os.path.join(root, "hist", ".trash-999999-x")
    os.rename(victim, trash)
    assert H.verify_history(root) and all(v == [] for v in H.verify_history(root).values())
    assert H.cleanup_temp(root) == [trash]
    assert H.apply_retention(root, 0, today="2030-01-01") and H.verify_history(root) == {}


def test_retention_of_one_shard_leaves_the_others_partitions(tmp_path):
    """Each writer applies retention to its own shard: one rolling into an old day is never
    raced by another removing the partition it is still writing and checking."""
    root = str(tmp_path)
    rng = np.random.default_rng(9)
    for shard in (0, 1):
        for i, d in enumerate(("2023-11-10", "2023-11-14")):
            cols, _ = make_rows(rng, 20, 100 * i, T0 + i * 86_400 * 10**9)
            H.write_partition(root, d, "trades", shard, cols, SYMS, VENS)
    removed = H.apply_retention(root, 2, today="2023-11-14", shard=1)
    assert [(p.split(os.sep)[-3], p.split(os.sep)[-1]) for p in removed] == \
        [("2023-11-10", "shard-1.seq-0")]
    left = [(p.date, p.shard) for p in H.HistoryStore(root).partitions()]
    assert sorted(left) == [("2023-11-10", 0), ("2023-11-14", 0), ("2023-11-14", 1)]


# --- history and memory together, on a running database ---------------------------------------------
def _publish(p, rng, n: int, ts0: int, syms, price0: int) -> None:
    sym = np.array(syms)[rng.integers(0, len(syms), n)]
    ven = np.array(VENS[1:])[rng.integers(0, 3, n)]
    ts = ts0 + np.arange(n) * 1000 + rng.integers(-4000, 4000, n)
    for lo in range(0, n, 500):
        sl = slice(lo, lo + 500)
        p.publish_batch("trades", {"ts": ts[sl], "symbol": sym[sl], "venue": ven[sl],
                                   "price": price0 + 1.0 + np.arange(n)[sl],
                                   "size": np.ones(n)[sl]})


def _as_partition_cols(res: dict, names: list[str], vens: list[str]) -> dict:
    return {"ts": res["ts"], "symbol": np.searchsorted(names, res["symbol"]).astype(np.int32),
            "venue": np.searchsorted(vens, res["venue"]).astype(np.int32),
            "price": res["price"], "size": res["size"], "seq": res["seq"]}


def test_db_reads_history_and_memory_as_one(db_factory):
    run = db_factory("--shards", "2", "--feed", "none", "--capacity", "65536")
    rng = np.random.default_rng(9)
    syms = ["H.A", "H.B", "H.C", "H.D", "H.E"]
    p = wayy.Producer(run.path)
    db = wayy.attach(run.path)
    try:
        _publish(p, rng, 3000, T0, syms, 0)
        wait_for(lambda: len(db["trades"]) == 3000, what="first rows")
        first = db["trades"].between().columns  # memory only: the truth
        shard_a = np.array([wayy.shard_of(s, 2) for s in first["symbol"]])

        # a roll of every row so far, caught before the segment reset (the crash window):
        # shard by shard, in two partitions (two days); memory still holds the same rows
        names, vens = sorted(syms), sorted(set(VENS))
        for k in (0, 1):
            mine = {c: v[shard_a == k] for c, v in first.items()}
            o = np.argsort(mine["seq"])
            mine = {c: v[o] for c, v in mine.items()}
            half = len(o) // 2
            for date, sl in (("2023-11-13", slice(0, half)), ("2023-11-14", slice(half, None))):
                H.write_partition(run.path, date, "trades", k,
                                  _as_partition_cols({c: v[sl] for c, v in mine.items()},
                                                     names, vens), names, vens)
        db.history.refresh()
        assert len(db["trades"]) == 3000  # counted once
        assert_same(db["trades"].between(), first)

        _publish(p, rng, 2000, T0 + 3 * 10**9, syms, 10_000)
        wait_for(lambda: len(db["trades"]) == 5000, what="rows after the roll")
        # an old partition of a shard this database no longer has (started with fewer shards)
        old, old_named = make_rows(rng, 100, 0, T0 - 10**12, syms=["OLD.X"], vens=[""])
        H.write_partition(run.path, "2023-11-12", "trades", 5, old, ["OLD.X"], [""])
        db.history.refresh()

        mem = db["trades"].between().columns
        ref = cat(mem_only := {c: v[np.isin(mem["price"], np.arange(10_001, 12_001))]
                               for c, v in mem.items()}, first)
        assert len(mem_only["ts"]) == 2000
        ref = cat(ref, old_named)
        shard = np.concatenate([np.array([wayy.shard_of(s, 2) for s in ref["symbol"][:5000]]),
                                np.full(100, 5)])
        assert len(db["trades"]) == 5100
        t = db["trades"]
        assert_same(t.between(), ordered(ref, shard))
        ts = ref["ts"]
        for lo, hi in ((T0 + 10**6, T0 + 3 * 10**9 + 10**6), (T0 - 10**13, T0)):
            sel = (ts >= lo) & (ts < hi)
            assert_same(t.between(lo, hi), ordered(ref, shard, sel))
            s2 = sel & (ref["symbol"] == "H.C")
            assert_same(t.between(lo, hi, symbol="H.C"), ordered(ref, shard, s2))
            s3 = sel & (ref["venue"] == "IEX")
            assert_same(t.between(lo, hi, venue="IEX"), ordered(ref, shard, s3))
        assert_same(t.between(symbol="OLD.X"), ordered(ref, shard, ref["symbol"] == "OLD.X"))
        for n in (3, 700, 2600, 6000):
            assert_same(t.tail(n), tail_ref(ref, shard, n))
            for s in ("H.B", "OLD.X"):
                sel = ref["symbol"] == s
                assert_same(t.tail(n, symbol=s), tail_ref(ref, shard, n, sel, symbol=True))
            sel = (ref["symbol"] == "H.D") & (ref["venue"] == "ARCA")
            assert_same(t.tail(n, symbol="H.D", venue="ARCA"),
                        tail_ref(ref, shard, n, sel, symbol=True))
            assert_same(t.tail(n, venue="NYSE"), tail_ref(ref, shard, n, ref["venue"] == "NYSE"))
        assert "OLD.X" in db.symbols() and "H.A" in db.symbols()
    finally:
        p.close()
        db.close()


def test_db_relists_history_when_a_shard_rolls(db_factory):
    """A roll bumps the shard's generation: readers list history again at once."""
    run = db_factory("--shards", "1", "--feed", "none", "--capacity", "65536")
    p = wayy.Producer(run.path)
    db = wayy.attach(run.path)
    writable = None
    try:
        p.publish("trades", symbol="GEN.A", price=1.0, size=1.0, ts=T0)
        wait_for(lambda: len(db["trades"]) == 1, what="one row")
        db.history.refresh_s = 3600  # no time-based re-listing during this test
        assert len(db["trades"].between(symbol="GEN.OLD")) == 0
        cols, _ = make_rows(np.random.default_rng(10), 40, 0, T0 - 10**12, syms=["GEN.OLD"],
                            vens=[""])
        H.write_partition(run.path, "2023-11-13", "trades", 7, cols, ["GEN.OLD"], [""])
        assert len(db["trades"].between(symbol="GEN.OLD")) == 0  # the cached listing
        writable = ShardData.attach(db.manifest.prefix, 0, readonly=False)
        from shm.layout import shard as S

        writable.hdr64[S.GENERATION_I64] += 1
        assert len(db["trades"].between(symbol="GEN.OLD")) == 40
        assert len(db["trades"]) == 41
        np.testing.assert_array_equal(db["trades"].tail(41)["price"][-1:], [1.0])
    finally:
        if writable is not None:
            writable.close()
        p.close()
        db.close()


@pytest.mark.parametrize("table", ["trades", "quotes"])
def test_history_tick_rows_made_in_chunks_are_every_row_in_order(table):
    """A subscriber replaying history gets its Tick tuples a chunk at a time; across chunk
    boundaries every field of every row is the one in the columns."""
    from shm.layout import tables as T
    from wayy.subscribe import Tick
    from wayy.subscribe_history import TICK_CHUNK_ROWS, tick_rows

    n = 2 * TICK_CHUNK_ROWS + 5
    rng = np.random.default_rng(7)
    names = (np.array(["AAPL", "MSFT", "SPY"]), np.array(["", "NYSE"]))
    cols = {"ts": np.arange(n, dtype=np.int64) * 1000, "seq": np.arange(n, dtype=np.int64) + 40,
            "symbol": rng.integers(0, 3, n).astype(np.int32),
            "venue": rng.integers(0, 2, n).astype(np.int32)}
    values = ("price", "size") if table == "trades" else ("bid", "ask", "bid_size", "ask_size")
    for c in values:
        cols[c] = rng.random(n)
    t = T.TABLE_NAMES.index(table)
    got = [Tick(row) for row in tick_rows(3, t, cols, names)]
    assert len(got) == n
    for i in (0, TICK_CHUNK_ROWS - 1, TICK_CHUNK_ROWS, n - 1):
        row = got[i]
        assert (row.timestamp, row.seq, row.shard, row.table) == (i * 1000, i + 40, 3, table)
        assert (row.symbol, row.venue) == (names[0][cols["symbol"][i]],
                                           names[1][cols["venue"][i]])
        assert type(row.symbol) is str and type(row.price or row.bid) is float
        for c in ("price", "size", "bid", "ask", "bid_size", "ask_size"):
            want = float(cols[c][i]) if c in values else None
            assert getattr(row, c) == want, (i, c)
    assert [r.seq for r in got] == list(range(40, 40 + n))
