"""Bad input: producers raise clear errors; writers reject, count by reason, keep running."""

from __future__ import annotations

import math
import os
import re
import sys
import time

import numpy as np
import posix_ipc
import pytest

import wayy
from shm import inbound
from shm.layout import inbound as L
from shm.layout import tables as T
from shm.segment import db_prefix, list_segments
from shm.shard import InboundRing, segment_name
from tests.conftest import REPO, run_cli, sigint_as_a_terminal_gives_it, wait_for

T0 = 1_700_000_000_000_000_000
GOOD = {"symbol": "GOOD", "price": 10.0, "size": 5.0}


@pytest.fixture(scope="module")
def producer(shared_db):
    p = wayy.Producer(shared_db.path)
    yield p
    p.close()


@pytest.mark.parametrize("fields,reason", [
    ({"price": math.nan}, "price"),
    ({"price": math.inf}, "price"),
    ({"price": -1.0}, "price"),
    ({"price": 0.0}, "price"),
    ({"size": 0}, "size"),
    ({"size": -5}, "size"),
    ({"size": math.nan}, "size"),
    ({"ts": 100}, "timestamp"),  # 1970
    ({"ts": 631_152_000_000_000_000 - 1}, "timestamp"),  # just before 1990
    ({"ts": 2**62}, "timestamp"),  # far future
    ({"ts": 1.7e18}, "timestamp"),  # float, not int nanoseconds
])
def test_producer_rejects_bad_trade_values(producer, fields, reason):
    with pytest.raises(wayy.InvalidTick) as ei:
        producer.publish("trades", **{**GOOD, **fields})
    assert ei.value.reason == reason
    assert str(ei.value).startswith(f"trade {GOOD['symbol']}: ")  # names the tick


@pytest.mark.parametrize("symbol", ["", "A" * 17, "AA PL", "AAPL*", "AA?L", "A[1]", "AAPL:NYSE",
                                    "A\\B", "A/B", "ÄPFEL", "a\tb", "x\n"])
def test_producer_rejects_bad_symbols(producer, symbol):
    with pytest.raises(wayy.InvalidName):
        producer.publish("trades", **{**GOOD, "symbol": symbol})
    with pytest.raises(wayy.InvalidName):
        producer.publish_batch("trades", {"symbol": [symbol], "price": [1.0], "size": [1.0]})


@pytest.mark.parametrize("venue", ["NY SE", "N*", "V" * 17, "é"])
def test_producer_rejects_bad_venues(producer, venue):
    with pytest.raises(wayy.InvalidName):
        producer.publish("trades", **{**GOOD, "venue": venue})


def test_producer_rejects_bad_quotes(producer):
    q = {"symbol": "Q", "bid": 10.0, "ask": 10.5, "bid_size": 1, "ask_size": 1}
    with pytest.raises(wayy.InvalidTick, match="bid 11.0 > ask"):
        producer.publish("quotes", **{**q, "bid": 11.0})
    with pytest.raises(wayy.InvalidTick):
        producer.publish("quotes", **{**q, "ask_size": 0})
    with pytest.raises(wayy.InvalidTick):
        producer.publish("quotes", **{**q, "ask": math.nan})


def test_datetime64_timestamps_beyond_int64_ns_are_refused_not_wrapped(producer):
    """numpy would wrap 2300-01-01 onto a time in the 1700s; the producer names the column
    and the reason instead (and a good datetime64 column is taken)."""
    for bad in (np.array(["2300-01-01"], "datetime64[D]"), np.array(["NaT"], "datetime64[ns]")):
        with pytest.raises(wayy.InvalidTick, match="column ts: (outside|NaT)"):
            producer.publish_batch("trades", {"symbol": ["DT"], "price": [1.0], "size": [1.0],
                                              "ts": bad})
    now = np.array([np.datetime64(time.time_ns(), "ns").astype("datetime64[us]")])
    assert producer.publish_batch("trades", {"symbol": ["DT"], "price": [1.0], "size": [1.0],
                                             "ts": now}) == 1


def test_unknown_tables_columns_and_shapes(producer):
    with pytest.raises(wayy.UnknownTable, match="unknown table 'orders'"):
        producer.publish("orders", **GOOD)
    with pytest.raises(wayy.InvalidTick, match="no column colour"):
        producer.publish("trades", **GOOD, colour="red")
    with pytest.raises(wayy.InvalidTick, match="missing"):
        producer.publish("trades", symbol="X", price=1.0)
    with pytest.raises(wayy.UnknownTable, match="colour"):
        producer.publish_batch("trades", {**{k: [v] for k, v in GOOD.items()}, "colour": [1]})
    with pytest.raises(wayy.UnknownTable, match="seq"):
        producer.publish_batch("trades", {**{k: [v] for k, v in GOOD.items()}, "seq": [1]})
    # the lengths of the columns given, not of a defaulted ts or venue
    with pytest.raises(wayy.InvalidTick,
                       match=r"unequal lengths \{'symbol': 2, 'price': 1, 'size': 2\}$"):
        producer.publish_batch("trades", {"symbol": ["A", "B"], "price": [1.0], "size": [1, 2]})
    with pytest.raises(wayy.InvalidTick, match="numeric"):
        producer.publish_batch("trades", {"symbol": ["A"], "price": ["1.0"], "size": [1]})
    with pytest.raises(wayy.InvalidTick, match="ts must be int64"):
        producer.publish_batch("trades", {"symbol": ["A"], "price": [1.0], "size": [1],
                                          "ts": [1.7e18]})
    with pytest.raises(wayy.InvalidTick, match="row 1"):
        producer.publish_batch("trades", {"symbol": ["A", "B"], "price": [1.0, -1.0],
                                          "size": [1, 1]})
    with pytest.raises(wayy.InvalidName, match="row 2"):
        producer.publish_batch("trades", {"symbol": ["A", "B", "C D"], "price": [1.0] * 3,
                                          "size": [1] * 3})
    assert producer.publish_batch("trades", {"symbol": [], "price": [], "size": []}) == 0
    with pytest.raises(wayy.UnknownTable):
        wayy.attach(producer.path)["orders"]


NOT_NUMBERS = ["abc", "1.5", "", b"1", True, False, np.True_, None, [1.0], {"x": 1}, 1 + 2j,
               np.str_("2.0"), np.array("2.0")]


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=repr)
def test_publish_refuses_values_that_are_not_numbers(producer, value):
    # each field twice: the first call of a (symbol, venue) takes the general path, later
    # ones the compiled fast path, and neither may convert "1.5" or True to a float
    producer.publish("trades", symbol="NUM", price=1.0, size=1.0)
    producer.publish("quotes", symbol="NUM", bid=1.0, ask=2.0, bid_size=1, ask_size=1)
    trade = {"symbol": "NUM", "price": 1.0, "size": 1.0}
    quote = {"symbol": "NUM", "bid": 1.0, "ask": 2.0, "bid_size": 1, "ask_size": 1}
    for table, row in (("trades", trade), ("quotes", quote)):
        for field in row:
            if field == "symbol":
                continue
            for _ in range(2):
                with pytest.raises(wayy.InvalidTick, match=f"{field} must be a number") as ei:
                    producer.publish(table, **{**row, field: value})
                assert ei.value.reason == ("size" if "size" in field else "price")
                assert "\n" not in str(ei.value)


def test_publish_refuses_an_int_beyond_float64(producer):
    for _ in range(2):
        with pytest.raises(wayy.InvalidTick, match="price is an int beyond the float64 range") as ei:
            producer.publish("trades", symbol="NUM", price=10**400, size=1.0)
        assert ei.value.reason == "price"


def test_publish_accepts_numbers_of_any_numeric_type(producer):
    from decimal import Decimal
    from fractions import Fraction

    for value in (2, 2.5, np.float32(2.5), np.int64(2), np.uint8(2), np.float16(2.5),
                  np.array(2.5), Decimal("2.5"), Fraction(5, 2)):
        for _ in range(2):
            producer.publish("trades", symbol="NUM2", price=value, size=value)
            producer.publish("quotes", symbol="NUM2", bid=value, ask=value, bid_size=value,
                             ask_size=value)


@pytest.mark.parametrize("column", [np.array(["1.5"]), np.array([True]), np.array([1.5], object),
                                    ["1.5"], [True], [1.5, None], [b"1"]], ids=repr)
def test_publish_batch_refuses_columns_that_are_not_numbers(producer, column):
    trade = {"symbol": ["NUM"], "price": [1.0], "size": [1.0]}
    quote = {"symbol": ["NUM"], "bid": [1.0], "ask": [2.0], "bid_size": [1], "ask_size": [1]}
    for table, cols in (("trades", trade), ("quotes", quote)):
        for field in cols:
            if field == "symbol":
                continue
            bad = {**cols, field: column}
            if len(column) != 1:
                bad = {c: (v * len(column) if c != field else v) for c, v in bad.items()}
            with pytest.raises(wayy.InvalidTick, match=f"column {field} must be numeric"):
                producer.publish_batch(table, bad)


def test_publish_batch_refuses_masked_rows(producer):
    """A masked array's masked rows hold whatever lies under the mask: refused, not stored.
    One with nothing masked is taken as its data."""
    price = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    for col in ("price", "symbol"):
        cols = {"symbol": ["MSK"] * 3, "price": np.ones(3), "size": np.ones(3)}
        cols[col] = price if col == "price" else np.ma.masked_array(["MSK"] * 3,
                                                                      mask=[1, 0, 0])
        with pytest.raises(wayy.InvalidTick, match=f"column {col} is a masked array"):
            producer.publish_batch("trades", cols)
    assert producer.publish_batch("trades", {"symbol": ["MSK"] * 3, "size": np.ones(3),
                                             "price": np.ma.masked_array([1.0, 2.0, 3.0])}) == 3


@pytest.mark.parametrize("value", [["AAPL"], np.ma.masked_array(["AAPL"]), {"s": 1}], ids=repr)
def test_publish_names_an_unhashable_symbol_or_venue(producer, value):
    """A symbol or venue of a type with no hash (a list, a masked array) is the user's
    mistake of the field: InvalidName naming it, as any non-str symbol, not a TypeError."""
    producer.publish("trades", symbol="UNH", price=1.0, size=1.0)  # the fast path is warm
    producer.publish("quotes", symbol="UNH", bid=1.0, ask=2.0, bid_size=1, ask_size=1)
    for field in ("symbol", "venue"):
        tick = {"symbol": "UNH", field: value}
        with pytest.raises(wayy.InvalidName, match=f"{field} must be a str"):
            producer.publish("trades", **tick, price=1.0, size=1.0)
        with pytest.raises(wayy.InvalidName, match=f"{field} must be a str"):
            producer.publish("quotes", **tick, bid=1.0, ask=2.0, bid_size=1, ask_size=1)


@pytest.mark.parametrize("names, words", [
    (["NUL", "ZB\x00"], "row 1 ('ZB\\x00') holds a NUL"),  # numpy would store "ZB"
    ([b"NUL", b"ZB\x00"], "row 1 (b'ZB\\x00') holds a NUL"),
    (["NUL", 5], "row 1 is int 5"),  # numpy would store "5"; publish refuses 5
    (("NUL", None), "row 1 is NoneType"),
    ([b"NUL", "NUL"], "row 1 is str")], ids=repr)
def test_publish_batch_refuses_names_numpy_would_change(producer, names, words):
    """A list of names goes through numpy, which drops a trailing NUL and turns other types
    into text: what publish() refuses must not be stored changed by publish_batch()."""
    for col in ("symbol", "venue"):
        cols = {"symbol": ["NUL", "NUL"], "venue": ["X", "X"], "price": [1.0, 2.0],
                "size": [1.0, 1.0], col: names}
        with pytest.raises(wayy.InvalidName, match=re.escape(f"{col} of {words}")):
            producer.publish_batch("trades", cols)


def test_closed_handles_and_bad_paths_are_clear_errors(shared_db):
    """A closed Database or Producer says it is closed (it raised IndexError from inside
    wayy); a path of the wrong type or with a NUL byte is InvalidInput (was TypeError /
    ValueError); timeouts that cannot be waited for are refused."""
    db = wayy.attach(shared_db.path)
    db.close()
    for q in (lambda: db["trades"].tail(2), lambda: db["trades"].between(None, None),
              lambda: len(db["trades"])):
        with pytest.raises(wayy.InvalidInput, match="is closed"):
            q()
    p = wayy.Producer(shared_db.path)
    p.publish("trades", symbol="CLS", price=1.0, size=1.0)
    p.close()
    for call in (lambda: p.publish("trades", symbol="CLS", price=1.0, size=1.0),
                 lambda: p.max_batch_rows("trades"),
                 lambda: p.publish_batch("trades", {"symbol": ["CLS"], "price": [1.0],
                                                    "size": [1.0]}),
                 lambda: p.flush()):
        with pytest.raises(wayy.InvalidInput, match="is closed"):
            call()
    for bad in (None, 5, "", shared_db.path + "\x00"):
        with pytest.raises(wayy.InvalidInput, match="non-empty str or path"):
            wayy.attach(bad)
        with pytest.raises(wayy.InvalidInput, match="non-empty str or path"):
            wayy.Producer(bad)
    for t in (math.nan, -1, "1", True):
        with pytest.raises(wayy.InvalidInput, match="Producer timeout"):
            wayy.Producer(shared_db.path, timeout=t)
    wayy.Producer(shared_db.path, timeout=math.inf).close()  # for ever: allowed
    with wayy.Producer(shared_db.path) as p:
        for t in (math.nan, -1, "1"):
            with pytest.raises(wayy.InvalidInput, match="flush\\(\\) timeout"):
                p.flush(timeout=t)
    with pytest.raises(wayy.InvalidInput, match="window must be an int"):
        wayy.ops.mavg(np.ones(3), 2**64)
    with pytest.raises(wayy.InvalidInput, match="periods must be an int"):
        wayy.ops.pct_change(np.ones(3), 2**63)
    with wayy.Producer(shared_db.path) as p, pytest.raises(wayy.UnknownTable):
        p.publish(["trades"], symbol="CLS", price=1.0, size=1.0)  # (was TypeError)


@pytest.mark.parametrize("shards", [1, 2])
def test_batch_cut_off_by_backpressure_says_which_rows_were_accepted(db_factory, shards):
    # the writer of the last shard is stopped (SIGSTOP), so its ring fills part way through
    # a batch of many records; a retry of exactly pending_rows stores every row once
    import signal

    d = db_factory("--shards", str(shards), "--feed", "none", "--capacity", "262144",
                   "--ring-bytes", str(2**20))
    stopped = shards - 1
    syms = [s for s in (f"CUT{i}" for i in range(100)) if wayy.shard_of(s, shards) == stopped][:3]
    others = [s for s in (f"CUT{i}" for i in range(100))
              if wayy.shard_of(s, shards) != stopped][:3]
    n = 40_000
    rng = np.random.default_rng(5)
    symbol = np.array(syms + others if shards > 1 else syms, dtype="U16")[
        rng.integers(0, 6 if shards > 1 else 3, n)]
    cols = {"symbol": symbol, "price": 1.0 + np.arange(n, dtype=np.float64),
            "size": np.ones(n), "ts": np.full(n, T0, np.int64)}
    p = wayy.Producer(d.path, timeout=0.3)
    assert p.max_batch_rows("trades") < n // 4  # several records, more than the ring holds
    pid = d.status()["shards"][stopped]["writer_pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(wayy.Backpressure) as ei:
            p.publish_batch("trades", cols)
    finally:
        os.kill(pid, signal.SIGCONT)
    exc = ei.value
    assert 0 < exc.accepted < n
    assert f"{exc.accepted} of {n} rows were accepted before" in str(exc)
    assert "\n" not in str(exc)
    pending = exc.pending_rows
    assert pending.dtype == np.int64 and len(pending) == n - exc.accepted
    assert np.all(np.diff(pending) > 0)
    db = wayy.attach(d.path)
    wait_for(lambda: len(db["trades"]) == exc.accepted, what="accepted rows committed")
    got = np.sort(db["trades"].between()["price"])
    np.testing.assert_array_equal(got, np.delete(cols["price"], pending))
    assert p.publish_batch("trades", {c: v[pending] for c, v in cols.items()}) == len(pending)
    wait_for(lambda: len(db["trades"]) == n, what="every row once")
    np.testing.assert_array_equal(np.sort(db["trades"].between()["price"]), cols["price"])
    p.close()
    db.close()


def test_writer_rejects_what_bypasses_the_producer(shared_db):
    """Raw records straight onto the ring: each bad row is counted by reason, good ones land."""
    prefix = db_prefix(shared_db.path)
    sym = "RAW.X"
    k = wayy.shard_of(sym, 4)
    ring = InboundRing.attach(prefix, k)
    before = shared_db.status()["shards"][k]["rejects"]
    n = 8
    ts = np.full(n, T0, np.int64)
    ts[1] = 5  # timestamp
    names = np.array([sym] * n, dtype="S16")
    names[2] = b"BAD SYM"  # symbol
    names[3] = b"*"  # symbol
    venues = np.array([b""] * n, dtype="S16")
    venues[4] = b"V:1"  # venue
    venues[7] = b"stream"  # venue: reserved, names the Redis stream of ticks:RAW.X
    price = np.full(n, 10.0)
    price[5] = np.nan  # price
    size = np.full(n, 2.0)
    size[6] = -1  # size
    pos = inbound.write_batch(ring.hdr64, ring.hdr32, ring.data8, ring.data32, os.getpid(),
                              L.TYPE_TRADES, np.empty(0, np.int64), n, ts,
                              names.view(np.uint8), venues.view(np.uint8), price, size, price,
                              price, 2)
    assert pos >= 0
    # a crossed quote
    qn = np.array([sym], dtype="S16")
    pos = inbound.write_batch(ring.hdr64, ring.hdr32, ring.data8, ring.data32, os.getpid(),
                              L.TYPE_QUOTES, np.empty(0, np.int64), 1, np.array([T0]),
                              qn.view(np.uint8), np.zeros(16, np.uint8), np.array([11.0]),
                              np.array([10.0]), np.array([1.0]), np.array([1.0]), 4)
    assert pos >= 0

    def counted():
        r = shared_db.status()["shards"][k]["rejects"]
        return all(r[name] - before[name] >= want for name, want in
                   [("timestamp", 1), ("symbol", 2), ("venue", 2), ("price", 1), ("size", 1),
                    ("crossed", 1)]) and r

    wait_for(counted, what="rejects counted")
    db = wayy.attach(shared_db.path)
    wait_for(lambda: len(db["trades"].tail(10, symbol=sym)) == 1, what="the good row")
    assert db["trades"].tail(10, symbol=sym)["venue"].tolist() == [""]
    assert all(s["state"] == "running" for s in shared_db.status()["shards"])
    ring.close()
    db.close()


def test_full_table_rejects_whole_batches_and_never_overwrites(db_factory):
    db_run = db_factory("--shards", "1", "--feed", "none", "--capacity", "2048",
                        "--roll-fill", "0")  # a full table, not a roll to history
    p = wayy.Producer(db_run.path)

    def batch(lo: int, n: int) -> None:
        p.publish_batch("trades", {"symbol": "FULL", "price": np.arange(lo, lo + n, dtype=float),
                                   "size": np.ones(n), "ts": np.full(n, T0)})

    batch(1, 2000)
    batch(2001, 100)  # does not fit whole: rejected whole, atomically
    batch(3001, 48)  # fits exactly
    batch(4001, 1)  # table full
    wait_for(lambda: db_run.status()["totals"]["rejects"]["full"] == 101, what="full rejects")
    db = wayy.attach(db_run.path)
    wait_for(lambda: len(db["trades"]) == 2048, what="rows")
    r = db["trades"].between()
    want = np.concatenate([np.arange(1, 2001), np.arange(3001, 3049)]).astype(float)
    np.testing.assert_array_equal(r["price"], want)
    assert db_run.status()["shards"][0]["state"] == "running"
    p.close()
    db.close()


def test_a_batch_bigger_than_a_table_is_refused_before_any_row_is_written(db_factory):
    """More rows for one shard than its table holds could never be stored, not even right
    after a roll: refused up front (nothing written), where it used to be accepted and
    then rejected in part as `full` at flush. Spread over two shards it fits."""
    db_run = db_factory("--shards", "2", "--feed", "none", "--capacity", "2048")
    p = wayy.Producer(db_run.path)
    db = wayy.attach(db_run.path)
    try:
        n = 3000
        with pytest.raises(wayy.InvalidInput, match="more than its table holds"):
            p.publish_batch("trades", {"symbol": ["BIG"] * n, "price": np.ones(n),
                                       "size": np.ones(n)})
        syms = [f"S{i}" for i in range(8)]
        spread = [syms[i % 8] for i in range(n)]
        by_shard = np.bincount([wayy.shard_of(x, 2) for x in spread], minlength=2)
        assert by_shard.max() <= 2048  # each shard's part fits
        assert p.publish_batch("trades", {"symbol": spread, "price": np.ones(n),
                                          "size": np.ones(n)}) == n
        p.flush(10.0)
        wait_for(lambda: len(db["trades"]) == n, what="the spread batch")
        assert len(db["trades"].between(symbol="BIG")) == 0
        assert db_run.status()["totals"]["rejects"]["full"] == 0
    finally:
        p.close()
        db.close()


@pytest.mark.slow
def test_cli_errors_are_one_line(db_factory, tmp_path):
    db_run = db_factory("--shards", "1", "--feed", "none", "--capacity", "2048")
    r = run_cli("start", "--db", db_run.path, "--feed", "none", "--capacity", "2048")
    assert r.returncode == 1
    assert "already running" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr

    huge = str(tmp_path / "huge")
    r = run_cli("start", "--db", huge, "--shards", "64", "--capacity", str(2**30 - 2**20),
                "--feed", "none")
    assert r.returncode == 1
    assert "/dev/shm" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    for args, text in [(["--shards", "0"], "--shards"), (["--capacity", "1000"], "capacity"),
                       (["--redis", "redis://[::1"], "--redis"),
                       (["--redis", "redis://u:pw@[zz]:6379/0"], "--redis"),
                       (["--redis", "unix://"], "no socket path"),
                       (["--ring-bytes", "1000"], "power of two"),
                       (["--feed", "bogus"], "feed"),
                       (["--writer-poll-us", "-1"], "--writer-poll-us"),
                       (["--writer-poll-us", "nan"], "--writer-poll-us"),
                       (["--max-symbols", "0"], "--max-symbols 0 is out of range: 1 .. 2**31 - 1"),
                       (["--no-wal", "--wal-compress"], "--wal-compress configures the write"),
                       (["--no-wal", "--fsync", "batch"], "which --no-wal turns off"),
                       (["--redis", "redis://127.0.0.1:7/0", "--redis-port", "5"],
                        "--redis-port configures the embedded Redis"),
                       (["--redis", "redis://127.0.0.1:0/0"], "port 0 is no port"),
                       (["--redis", "redis://127.0.0.1:/0"], "port after ':' is empty"),
                       (["--history-days", "9223372036854775808"], "--history-days"),
                       (["--feed", "synthetic:venues=stream"], "reserved"),
                       (["--shards", "x"], "Invalid value for '--shards'")]:
        r = run_cli("start", "--db", str(tmp_path / "bad"), *args)
        assert r.returncode != 0 and text in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)  # one clear line

    for cmd in ("roll", "stop"):  # a timeout that cannot be waited: refused before acting
        for bad in ("-1", "nan", "inf", "0"):
            r = run_cli(cmd, "--db", db_run.path, "--timeout", bad)
            assert r.returncode == 2 and "--timeout" in r.stderr, (cmd, bad, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1 and f"{cmd} --help" in r.stderr
    assert db_run.status()["shards"][0]["state"] == "running"
    r = run_cli("status", "--db", str(tmp_path / "nothing"))
    assert r.returncode == 1 and "no database" in r.stderr
    r = run_cli("status", "--db", str(tmp_path / "nothing"), "--json")
    assert r.returncode == 1 and '"running": false' in r.stdout
    r = run_cli("stop", "--db", str(tmp_path / "nothing"))
    assert r.returncode == 1 and "no database" in r.stderr


def test_segment_of_another_version_is_refused(db_factory):
    db_run = db_factory("--shards", "1", "--feed", "none", "--capacity", "2048")
    name = segment_name(db_prefix(db_run.path), 0, "data")
    shm = posix_ipc.SharedMemory(name)
    import mmap

    mm = mmap.mmap(shm.fd, 4096)
    shm.close_fd()
    old = mm[8:12]
    mm[8:12] = (99 << 16).to_bytes(4, "little")
    try:
        with pytest.raises(wayy.IncompatibleVersion, match="version 99.0"):
            wayy.attach(db_run.path)
    finally:
        mm[8:12] = old
        mm.close()


def test_attach_when_not_running(tmp_path):
    with pytest.raises(wayy.NotRunning):
        wayy.attach(str(tmp_path / "none"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(wayy.NotRunning):
        wayy.Producer(str(tmp_path / "empty"))


def test_reject_names_cover_every_reason():
    assert len(T.REJECT_NAMES) == T.N_REJECT_REASONS


def test_the_venue_stream_is_refused_at_publish(shared_db):
    """ticks:SYM:stream names the Redis stream of ticks:SYM: a venue of that name could be
    published but its channel never followed."""
    p = wayy.Producer(shared_db.path)
    try:
        with pytest.raises(wayy.InvalidName, match="reserved"):
            p.publish("trades", symbol="VST", venue="stream", price=1.0, size=1.0)
        with pytest.raises(wayy.InvalidName, match="row 1.*reserved"):
            p.publish_batch("trades", {"symbol": ["VST", "VST"], "venue": ["X", "stream"],
                                       "price": [1.0, 1.0], "size": [1.0, 1.0]})
        with pytest.raises(wayy.InvalidName, match="reserved"):
            p.publish_batch("trades", {"symbol": ["VST"], "venue": "stream", "price": [1.0],
                                       "size": [1.0]})
        p.publish("trades", symbol="VST", venue="streams", price=1.0, size=1.0)  # only that
    finally:
        p.close()


@pytest.mark.parametrize("edit", [{"shards": "two"}, {"capacity": None}, {"shards": 0},
                                  {"wal": "yes"}, {"extra": 1}, {"redis_url": 5}, None, [],
                                  "x", {"wire": "xml"}, {"fsync_interval_ms": float("nan")},
                                  {"capacity": -5}, {"shards": 2}, {"path": "/tmp"},
                                  {"redis_url": "redis://127.0.0.1/0"}])
def test_a_damaged_manifest_is_corrupt_data_not_a_type_error(db_factory, edit):
    """wayy.json of a running database edited to a wrong type, a value out of range or an
    unknown field: attach, Producer and `wayy status` fail with CorruptData in one line,
    not a TypeError (nor go on with a value no start can write)."""
    import json

    d = db_factory("--shards", "1", "--feed", "none")
    path = os.path.join(d.path, "wayy.json")
    good = open(path).read()
    doc = json.loads(good)
    if isinstance(edit, dict):
        doc.update(edit)
    else:
        doc = edit  # the whole file: not a JSON object
    with open(path, "w") as f:
        json.dump(doc, f)
    try:
        for make in (wayy.attach, wayy.Producer):
            with pytest.raises(wayy.CorruptData, match="manifest .* is damaged"):
                make(d.path)
        r = run_cli("status", "--db", d.path)
        assert r.returncode == 1 and "is damaged" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        with open(path, "w") as f:
            f.write(good)


@pytest.mark.parametrize("damage", ["bytes", "directory", "dangling"])
def test_a_damaged_database_id_stops_the_start_in_one_line(tmp_path, damage):
    """wayy.id holding bytes that are no id (not even UTF-8), or a directory, or a symlink
    to nowhere: `wayy start` says which file and what to do, instead of "supervisor exited
    during start" and a traceback in the log."""
    d = tmp_path / "db"
    d.mkdir()
    if damage == "bytes":
        (d / "wayy.id").write_bytes(b"\xff\xfe\x00junk")
    elif damage == "directory":
        (d / "wayy.id").mkdir()
    else:
        (d / "wayy.id").symlink_to(tmp_path / "nowhere")
    try:
        r = run_cli("start", "--db", str(d), "--shards", "1", "--feed", "none", "--no-redis",
                    "--detach")
        assert r.returncode == 1 and "wayy.id" in r.stderr, r.stderr
        assert "delete it and start the database again" in r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not os.path.exists(d / "wayy.json")
    finally:
        run_cli("stop", "--db", str(d))  # were it started after all


@pytest.mark.parametrize("detach", [False, True])
def test_a_database_directory_it_cannot_write_is_one_line(tmp_path, detach):
    """A directory wayy cannot write (a read-only mount; here wayy.lock and wayy.log made
    directories, which fail the same open() as root): one line naming the file, not the
    OSError traceback of the lock (or, detached, of a log the child could not open)."""
    d = tmp_path / "db"
    d.mkdir()
    (d / "wayy.lock").mkdir()
    if detach:
        (d / "wayy.log").mkdir()
    try:
        r = run_cli("start", "--db", str(d), "--shards", "1", "--feed", "none", "--no-redis",
                    *(["--detach"] if detach else []))
        assert r.returncode == 1, r.stderr
        bad = "wayy.log" if detach else "wayy.lock"
        assert f"cannot write to the database directory {d} ({d / bad}: Is a directory)" \
            in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        run_cli("stop", "--db", str(d))  # were it started after all


def test_a_stop_that_comes_once_the_writers_are_ready_is_an_ordinary_stop(tmp_path):
    """A stop that reaches the supervisor after every writer accepts ticks, but before the
    supervisor looked (a busy machine), stops a database that started: exit 0, not "stopped
    during its start" (a test saw every writer running, stopped, and got exit 1)."""
    import signal
    import subprocess

    from tests.conftest import wayy_cmd
    from wayy.errors import NotRunning
    from wayy.manifest import lock_holder
    from wayy.status import read_status

    d = str(tmp_path / "db")
    start = subprocess.Popen(wayy_cmd("start", "--db", d, "--shards", "2", "--feed", "none",
                                      "--no-redis"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    sup = None
    try:
        wait_for(lambda: lock_holder(d)[0] or start.poll() is not None, 60,
                 what="the supervisor holding the lock")
        sup = lock_holder(d)[1]

        def children() -> int:
            n = 0
            for task in os.listdir(f"/proc/{sup}/task"):
                try:
                    with open(f"/proc/{sup}/task/{task}/children") as f:
                        n += len(f.read().split())
                except FileNotFoundError:
                    pass  # a thread that ended meanwhile
            return n

        wait_for(lambda: children() >= 2, 60, what="both writers forked")
        os.kill(sup, signal.SIGSTOP)  # the supervisor looks no more; the writers go on

        def all_running() -> bool:
            try:
                return all(s["state"] == "running" for s in read_status(d, redis=False)["shards"])
            except NotRunning:
                return False

        wait_for(all_running, 60, what="every writer running")
        os.kill(sup, signal.SIGTERM)  # pending until it runs again
        os.kill(sup, signal.SIGCONT)
        out, err = start.communicate(timeout=60)
        assert start.returncode == 0, (out, err)
        assert "stopped during its start" not in err, err
        assert not lock_holder(d)[0]
    finally:
        if sup is not None and start.poll() is None:
            os.kill(sup, signal.SIGCONT)
        if start.poll() is None:
            start.kill()
        run_cli("stop", "--db", d)


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.4])
def test_ctrl_c_while_the_command_still_imports_is_quiet(tmp_path, delay):
    """Ctrl-C in the first moments of `wayy` (numba still importing): exit 130 -- or, once
    a start runs, its own stop -- never a KeyboardInterrupt traceback. ``delay`` counts from
    when Python itself has started (before that no code of wayy runs to catch it)."""
    from tests.conftest import ctrl_c_after_start

    d = str(tmp_path / "db")
    try:
        rc, err = ctrl_c_after_start([sys.executable, "-m", "workers.launch", "start", "--db",
                                      d, "--shards", "1", "--feed", "none", "--no-redis"],
                                     delay)
    finally:
        run_cli("stop", "--db", d)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert rc in (130, 1, 0), (rc, err)


def test_ctrl_c_during_a_detached_start_cancels_it(tmp_path):
    """Ctrl-C (or SIGTERM) to `wayy start --detach` while it waits for the database: the
    start is cancelled -- one line, exit 1, nothing left running -- instead of the command
    dying in silence while the database comes up behind it."""
    import signal
    import subprocess

    from tests.conftest import wayy_cmd
    from wayy.manifest import lock_holder

    d = str(tmp_path / "db")
    start = subprocess.Popen(wayy_cmd("start", "--db", d, "--shards", "1", "--feed", "none",
                                      "--no-redis", "--detach"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                             preexec_fn=sigint_as_a_terminal_gives_it)
    try:
        wait_for(lambda: lock_holder(d)[0] or start.poll() is not None, 60,
                 what="the supervisor holding the lock")
        assert start.poll() is None, "started before the Ctrl-C could be sent"
        start.send_signal(signal.SIGINT)
        out, err = start.communicate(timeout=60)
        assert start.returncode == 1, (out, err)
        assert "the start was cancelled (SIGINT)" in err and "running at" not in out, (out, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not lock_holder(d)[0]
        assert not list_segments(db_prefix(d))
    finally:
        if start.poll() is None:
            start.kill()
        run_cli("stop", "--db", d)


@pytest.mark.slow
@pytest.mark.parametrize("detach", [False, True])
def test_a_first_start_cancelled_while_compiling_says_it_waits(tmp_path, detach):
    """Ctrl-C during a first start's kernel compile (which numba cannot interrupt): a line
    at once says the stop waits for the compile, instead of a minute of silence; then the
    start ends as cancelled, leaving nothing behind. An empty numba cache makes it a first
    start."""
    import signal
    import subprocess
    import threading

    from tests.conftest import wayy_cmd
    from wayy.manifest import lock_holder

    d = str(tmp_path / "db")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    args = ["start", "--db", d, "--shards", "1", "--feed", "none", "--no-redis"]
    proc = subprocess.Popen(wayy_cmd(*args, *(["--detach"] if detach else [])),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=env, preexec_fn=sigint_as_a_terminal_gives_it)
    lines: list[tuple[float, str]] = []

    def collect() -> None:
        for line in proc.stderr:
            lines.append((time.monotonic(), line))

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("compiling kernels" in x for _, x in lines), 120,
                 what="the first-start notice")
        wait_for(lambda: lock_holder(d)[0] or proc.poll() is not None, 120,
                 what="the supervisor holding the lock")
        time.sleep(1.0)  # into the compile (it lasts tens of seconds)
        assert proc.poll() is None, "the start ended before the Ctrl-C"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: any("compile in progress is done" in x for _, x in lines), 10,
                 what="the line saying the stop waits for the compile")
        said = next(t for t, x in lines if "compile in progress is done" in x)
        assert said - sent < 10
        proc.wait(timeout=280)
        reader.join(10)
        err = "".join(x for _, x in lines)
        assert proc.returncode == 1, err
        assert ("the start was cancelled (SIGINT)" if detach
                else "was stopped during its start") in err, err
        assert "Traceback" not in err, err
        assert not lock_holder(d)[0]
        assert not list_segments(db_prefix(d))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        run_cli("stop", "--db", d)


def test_a_start_stopped_before_it_was_ready_says_so(tmp_path):
    """`wayy stop` while a detached start is still starting: the start must not print its
    "running" banner with exit status 0 for a database that is gone."""
    import signal
    import subprocess

    from tests.conftest import wayy_cmd
    from wayy.manifest import lock_holder

    d = str(tmp_path / "db")
    start = subprocess.Popen(wayy_cmd("start", "--db", d, "--shards", "1", "--feed", "none",
                                      "--no-redis", "--detach"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_for(lambda: lock_holder(d)[0] or start.poll() is not None, 60,
                 what="the supervisor holding the lock")
        assert start.poll() is None, "started before the stop could be sent"
        # what `wayy stop` sends, at once (the CLI itself takes longer than a warm start)
        os.kill(lock_holder(d)[1], signal.SIGTERM)
        out, err = start.communicate(timeout=60)
        assert start.returncode == 1, (out, err)
        assert "was stopped during its start" in err and "running at" not in out, (out, err)
        assert not lock_holder(d)[0]
    finally:
        if start.poll() is None:
            start.kill()
        run_cli("stop", "--db", d)


def test_a_look_at_a_lock_just_taken_waits_for_its_pid(tmp_path):
    """A start writes its pid into the lock file just after taking the lock; `wayy stop`
    (or a script) looking in between got "held, pid unknown" -- and stop said "no database
    is running" while one was starting. The look waits a moment for the pid."""
    import subprocess

    from wayy.manifest import lock_holder

    d = tmp_path / "db"
    d.mkdir()
    lock = d / "wayy.lock"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, sys, time
fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(0.3)
os.pwrite(fd, f"{{os.getpid()}}\\n".encode(), 0)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holder(str(d)) == (True, holder.pid)
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert lock_holder(str(d)) == (False, None)


def test_a_start_is_not_refused_by_someone_looking_at_its_lock(tmp_path):
    """`wayy status`, attach and scripts waiting for a start look at the database lock by
    holding it shared for a moment; a start meeting such a look was refused as "already
    running (pid None)". It retries; only a lock that stays held refuses it."""
    import fcntl
    import threading

    d = tmp_path / "db"
    d.mkdir()
    done = threading.Event()

    def look() -> None:  # far longer looks than lock_holder's, and more often
        fd = os.open(d / "wayy.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while not done.is_set():
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:  # the supervisor holds it: the look says "running"
                    time.sleep(0.004)
                    continue
                time.sleep(0.02)
                fcntl.flock(fd, fcntl.LOCK_UN)
                time.sleep(0.004)
        finally:
            os.close(fd)

    t = threading.Thread(target=look, daemon=True)
    t.start()
    try:
        r = run_cli("start", "--db", str(d), "--shards", "1", "--feed", "none", "--no-redis",
                    "--detach")
        assert r.returncode == 0 and "running at" in r.stdout, r.stderr
    finally:
        done.set()
        t.join()
        run_cli("stop", "--db", str(d))


@pytest.mark.slow
def test_db_paths_that_cannot_be_meant_are_refused(tmp_path):
    """--db "" (the current directory, by accident), a name with a newline, a symlink to
    nowhere (a start would create its target): one line, exit 2, nothing created."""
    import subprocess

    from tests.conftest import wayy_cmd

    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "missing" / "db")
    through = str(dangling / "sub")  # a directory on the way is the symlink to nowhere
    here = tmp_path / "cwd"  # what --db "" would have meant
    here.mkdir()
    try:
        for value, words in (("", "is empty"), (str(tmp_path / "a\nb"), "control character"),
                             (str(dangling), "which does not exist"),
                             (through, "which does not exist")):
            for cmd in ("start", "status", "stop"):
                r = subprocess.run(wayy_cmd(cmd, "--db", value, *(
                    ("--no-redis", "--detach") if cmd == "start" else ())),
                    capture_output=True, text=True, timeout=60, cwd=here)
                assert r.returncode == 2 and words in r.stderr, (cmd, value, r.stderr)
                assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert not (tmp_path / "missing").exists() and not (tmp_path / "a\nb").exists()
        assert os.listdir(here) == []
    finally:
        for leftover in (here, tmp_path / "missing" / "db",
                         tmp_path / "missing" / "db" / "sub"):  # were one started after all
            run_cli("stop", "--db", str(leftover))
