"""Tests for workers.feeds: --feed parsing, the synthetic generator, the rate schedule, the
agent's drop handling, and (one small test) publishing into a one-shard database."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time

import numpy as np
import pytest

from wayy.errors import Backpressure, InvalidInput, NotRunning, WriterUnavailable
from wayy.names import check_symbol, check_venue
from workers import feeds
from workers.feeds import (
    FeedSpec,
    RateSchedule,
    SyntheticFeed,
    SyntheticGenerator,
    parse_feed_spec,
    ticks_due,
    universe,
)

MIN_TS_NS = 631_152_000_000_000_000


# --- spec parsing ---------------------------------------------------------------------------
def test_defaults():
    s = parse_feed_spec("synthetic")
    assert s == FeedSpec()
    assert (s.kind, s.rate, s.symbols, s.quote_ratio, s.seed) == ("synthetic", 5000.0, 100,
                                                                   0.7, None)
    assert s.venues == ("NYSE", "NASDAQ", "ARCA", "BATS", "IEX")


def test_full_spec():
    s = parse_feed_spec("synthetic:rate=2500.5,symbols=250,seed=1,quote_ratio=0.25,"
                        "venues=NYSE+NASDAQ")
    assert s == FeedSpec("synthetic", 2500.5, 250, 0.25, 1, ("NYSE", "NASDAQ"))


def test_partial_spec_whitespace_and_case():
    s = parse_feed_spec("  Synthetic: rate = 100 , quote_ratio=1 ,venues=IEX+IEX ")
    assert (s.rate, s.quote_ratio, s.symbols, s.venues) == (100.0, 1.0, 100, ("IEX",))
    assert parse_feed_spec("synthetic:quote_ratio=0").quote_ratio == 0.0
    assert parse_feed_spec("synthetic:symbols=5000").symbols == 5000
    assert parse_feed_spec("synthetic:seed=random").seed is None
    assert parse_feed_spec("synthetic:rate=1e6").rate == 1e6


def test_none():
    assert parse_feed_spec("none").kind == "none"
    assert parse_feed_spec("NONE").to_string() == "none"


@pytest.mark.parametrize("text", ["synthetic", "synthetic:seed=7,rate=123.5,symbols=3",
                                  "synthetic:venues=A+B.C+D-1,quote_ratio=0.5", "none"])
def test_round_trip(text):
    s = parse_feed_spec(text)
    assert parse_feed_spec(s.to_string()) == s
    assert str(s) == s.to_string()


@pytest.mark.parametrize("text, needle", [
    ("", "empty feed"),
    ("websocket", "unknown feed kind"),
    ("replay:file=x", "unknown feed kind"),
    ("none:rate=1", "takes no options"),
    ("synthetic:", "no options"),
    ("synthetic:speed=5", "unknown option 'speed'"),
    ("synthetic:rate", "not KEY=VALUE"),
    ("synthetic:rate=", "not KEY=VALUE"),
    ("synthetic:rate=5,,symbols=3", "not KEY=VALUE"),
    ("synthetic:rate=0", "rate=0 must be > 0"),
    ("synthetic:rate=-5", "must be > 0"),
    ("synthetic:rate=nan", "not a finite number"),
    ("synthetic:rate=inf", "not a finite number"),
    ("synthetic:rate=fast", "not a number"),
    ("synthetic:rate=1e9", "at most"),
    ("synthetic:symbols=0", "between 1 and 5000"),
    ("synthetic:symbols=5001", "between 1 and 5000"),
    ("synthetic:symbols=1.5", "not an integer"),
    ("synthetic:seed=-1", "must be >= 0"),
    ("synthetic:seed=x", "not an integer"),
    ("synthetic:quote_ratio=-0.1", "between 0 and 1"),
    ("synthetic:quote_ratio=1.01", "between 0 and 1"),
    ("synthetic:quote_ratio=nan", "not a finite number"),
    ("synthetic:venues=NYSE+", "empty venue"),
    ("synthetic:venues=NY*SE", "characters outside"),
    ("synthetic:venues=ABCDEFGHIJKLMNOPQ", "longer than 16"),
    ("synthetic:rate=5,rate=6", "given twice"),
])
def test_invalid_specs(text, needle):
    with pytest.raises(InvalidInput) as ei:
        parse_feed_spec(text)
    msg = str(ei.value)
    assert needle in msg
    assert "\n" not in msg
    # every message lists the valid options
    for opt in ("none", "synthetic", "rate=", "symbols=", "seed=", "quote_ratio=", "venues="):
        assert opt in msg


def test_a_huge_invalid_spec_is_not_echoed_whole():
    with pytest.raises(InvalidInput) as ei:
        parse_feed_spec("synthetic:venues=" + "A" * 10_000)
    assert len(str(ei.value)) < 1000 and "10017 characters" in str(ei.value)


def test_invalid_type():
    with pytest.raises(InvalidInput):
        parse_feed_spec(None)  # type: ignore[arg-type]


# --- universe -------------------------------------------------------------------------------
def test_universe():
    u = universe(5000)
    assert len(u) == 5000 == len(set(u))
    assert u[:10] == ["AAPL", "MSFT", "AMZN", "GOOG", "META", "NVDA", "TSLA", "SPY", "QQQ",
                      "JPM"]
    n_real = len(feeds.REAL_TICKERS)
    assert n_real >= 60
    assert u[n_real] == f"SYM{n_real + 1:03d}"
    assert u[-1] == "SYM5000"
    for name in u:
        check_symbol(name)
    assert universe(3) == ["AAPL", "MSFT", "AMZN"]


# --- generator ------------------------------------------------------------------------------
def _s(arr) -> list[str]:
    return [b.decode("ascii") for b in arr.tolist()]


def check_valid(trades: dict, quotes: dict, spec: FeedSpec, t_lo: int, t_hi: int) -> None:
    """Every row would pass wayy's checks (and the feed's own promises hold)."""
    syms = set(universe(spec.symbols))
    for cols, values in ((trades, ("price", "size")),
                         (quotes, ("bid", "ask", "bid_size", "ask_size"))):
        n = len(cols["ts"])
        assert set(cols) == {"ts", "symbol", "venue", *values}
        for c in values:
            assert cols[c].dtype == np.float64 and len(cols[c]) == n
            assert np.isfinite(cols[c]).all() and (cols[c] > 0).all(), c
        ts = cols["ts"]
        assert ts.dtype == np.int64
        assert (np.diff(ts) >= 0).all()
        if n:
            assert MIN_TS_NS < t_lo <= ts[0] and ts[-1] <= t_hi
        assert cols["symbol"].dtype == np.dtype("S16") and cols["venue"].dtype == np.dtype("S16")
        for name in set(_s(np.unique(cols["symbol"]))):
            check_symbol(name)
            assert name in syms
        for name in set(_s(np.unique(cols["venue"]))):
            check_venue(name)
            assert name in spec.venues
    bid, ask = quotes["bid"], quotes["ask"]
    assert (bid < ask).all()
    spread_ticks = np.round((ask - bid) * 100)
    assert ((spread_ticks >= 1) & (spread_ticks <= 5)).all()
    for c in ("bid", "ask"):  # on the 0.01 grid
        np.testing.assert_allclose(quotes[c] * 100, np.round(quotes[c] * 100), atol=1e-6)
    np.testing.assert_allclose(trades["price"] * 100, np.round(trades["price"] * 100), atol=1e-6)
    for c in ("bid_size", "ask_size"):
        s = quotes[c]
        assert ((s >= 100) & (s <= 5000) & (s % 100 == 0)).all()
    s = trades["size"]
    assert ((s >= 1) & (s <= 1000) & (s == np.round(s))).all()


def test_generate_valid_rows_and_ratio():
    spec = parse_feed_spec("synthetic:seed=3,symbols=300")
    t0 = time.time_ns()
    gen = SyntheticGenerator(spec)  # the first batch covers the time since creation
    trades, quotes = gen.generate(100_000)
    t1 = time.time_ns()
    check_valid(trades, quotes, spec, t0, t1)
    nq, nt = len(quotes["ts"]), len(trades["ts"])
    assert nq + nt == 100_000
    assert abs(nq / 100_000 - 0.7) < 0.01
    # both tables together are in time order too, and ts spread over the batch's interval
    merged = np.sort(np.concatenate([trades["ts"], quotes["ts"]]))
    assert merged[-1] == max(trades["ts"][-1], quotes["ts"][-1])
    # a second batch continues after the first
    t2 = time.time_ns()
    trades2, quotes2 = gen.generate(1000)
    check_valid(trades2, quotes2, spec, int(merged[-1]), time.time_ns())
    assert min(trades2["ts"][0], quotes2["ts"][0]) >= merged[-1]
    assert max(trades2["ts"][-1], quotes2["ts"][-1]) >= t2


def test_generate_passes_producer_checks():
    """The producer's own validation kernel and name encoder accept every generated row."""
    from shm.layout import tables as T
    from wayy.names import to_name_array
    from wayy.producer import _first_bad_row

    spec = parse_feed_spec("synthetic:seed=11,symbols=5000,venues=NYSE+N.Y-1")
    trades, quotes = SyntheticGenerator(spec).generate(20_000)
    now = time.time_ns()
    for t, cols, vals in ((T.TRADES, trades, ("price", "size")),
                          (T.QUOTES, quotes, ("bid", "ask", "bid_size", "ask_size"))):
        v = [cols[c] for c in vals]
        while len(v) < 4:
            v.append(v[0])
        n = len(cols["ts"])
        assert _first_bad_row(t, cols["ts"], *v, len(vals), n, now) == (-1, 0)
        to_name_array(cols["symbol"], "symbol", n)
        to_name_array(cols["venue"], "venue", n)


def test_ratio_extremes_and_empty():
    t, q = SyntheticGenerator(parse_feed_spec("synthetic:quote_ratio=0,seed=1")).generate(500)
    assert len(q["ts"]) == 0 and len(t["ts"]) == 500
    t, q = SyntheticGenerator(parse_feed_spec("synthetic:quote_ratio=1,seed=1")).generate(500)
    assert len(t["ts"]) == 0 and len(q["ts"]) == 500
    t, q = SyntheticGenerator(parse_feed_spec("synthetic:seed=1")).generate(0)
    assert len(t["ts"]) == 0 and len(q["bid"]) == 0 and q["symbol"].dtype == np.dtype("S16")


def test_trades_at_bid_ask_or_inside():
    """Trades print at the bid, the ask or between (checked against the mid they came from)."""
    spec = parse_feed_spec("synthetic:seed=5,symbols=1,quote_ratio=0")
    gen = SyntheticGenerator(spec)
    mids = []
    prices = []
    for _ in range(2000):
        trades, _q = gen.generate(1)
        prices.append(trades["price"][0])
        mids.append(math.exp(gen.logp[0]))
    mids = np.array(mids)
    prices = np.array(prices)
    # bid = floor(mid - spread/2) and ask = bid + spread, spread <= 5 ticks: within 3.5 cents
    assert (np.abs(prices - mids) <= 0.0351).all()
    assert len(np.unique(np.round(prices - np.floor(mids * 100) / 100, 2))) > 3


def test_zipf_activity_and_venues():
    spec = parse_feed_spec("synthetic:seed=2,symbols=1000")
    trades, quotes = SyntheticGenerator(spec).generate(200_000)
    syms = np.concatenate([trades["symbol"], quotes["symbol"]])
    names, counts = np.unique(syms, return_counts=True)
    by = dict(zip(_s(names), counts.tolist()))
    assert by["AAPL"] > by["MSFT"] > by["JPM"] > by.get("SYM500", 0)
    assert by["AAPL"] / 200_000 > 0.1  # ~1/H(1000) = 13 %
    assert len(by) > 900  # the tail still ticks
    vens = np.concatenate([trades["venue"], quotes["venue"]])
    vn, vc = np.unique(vens, return_counts=True)
    assert set(_s(vn)) == set(spec.venues)


def test_seeded_generation_is_reproducible():
    spec = parse_feed_spec("synthetic:seed=42")
    a = SyntheticGenerator(spec, clock=lambda: 1_700_000_000_000_000_000)
    b = SyntheticGenerator(spec, clock=lambda: 1_700_000_000_000_000_000)
    for x, y in zip(a.generate(5000), b.generate(5000)):
        for c in x:
            np.testing.assert_array_equal(x[c], y[c])
    c = SyntheticGenerator(parse_feed_spec("synthetic:seed=43"))
    assert not np.array_equal(a.mu, c.mu)


def test_timestamps_monotonic_when_clock_steps_back():
    now = [1_700_000_000_000_000_000]
    gen = SyntheticGenerator(parse_feed_spec("synthetic:seed=1"), clock=lambda: now[0])
    now[0] += 1_000_000
    t1, q1 = gen.generate(100)
    now[0] -= 5_000_000  # wall clock stepped back
    t2, q2 = gen.generate(100)
    ts = np.concatenate([np.sort(np.concatenate([t1["ts"], q1["ts"]])),
                         np.sort(np.concatenate([t2["ts"], q2["ts"]]))])
    assert (np.diff(ts) >= 0).all()
    # the first batch is spread evenly over the millisecond it covers
    first = np.sort(np.concatenate([t1["ts"], q1["ts"]]))
    assert first[0] == 1_700_000_000_000_000_000 + 10_000
    assert first[-1] == 1_700_000_000_001_000_000


def test_take_slices_a_block_generated_ahead():
    """take(n) hands out consecutive rows of one generate(block) call, freshly stamped."""
    spec = parse_feed_spec("synthetic:seed=21,symbols=40")
    clock = [1_700_000_000_000_000_000]
    ref = SyntheticGenerator(spec, clock=lambda: clock[0])
    want_t, want_q = ref.generate(1000)
    gen = SyntheticGenerator(spec, clock=lambda: clock[0], block_rows=1000)
    parts = []
    for n in (1, 5, 250, 44, 700):
        clock[0] += 1_000_000
        t, q = gen.take(n)
        assert len(t["ts"]) + len(q["ts"]) == n
        check_valid(t, q, spec, clock[0] - 1_000_000 + 1, clock[0])
        both = np.sort(np.concatenate([t["ts"], q["ts"]]))
        assert both[-1] == clock[0]  # the batch's last row is stamped now
        assert len(np.unique(both)) == n  # evenly spread: distinct stamps
        parts.append((t, q))
    for c in want_t:
        if c != "ts":
            np.testing.assert_array_equal(np.concatenate([p[0][c] for p in parts]), want_t[c])
    for c in want_q:
        if c != "ts":
            np.testing.assert_array_equal(np.concatenate([p[1][c] for p in parts]), want_q[c])
    # the next take starts a new block; stamps keep rising
    clock[0] += 1_000_000
    t, q = gen.take(300)
    assert len(t["ts"]) + len(q["ts"]) == 300
    check_valid(t, q, spec, clock[0] - 1_000_000 + 1, clock[0])
    assert gen.take(0)[0]["price"].shape == (0,)


def test_walk_matches_per_tick_reference():
    """The vectorised grouped walk equals a plain per-tick loop over the same draws."""
    spec = parse_feed_spec("synthetic:seed=9,symbols=12")
    gen = SyntheticGenerator(spec)
    gen.logp += np.linspace(-0.5, 0.5, 12)  # start away from the anchors
    rng = np.random.default_rng(1)
    for n in (1, 7, 3000):
        idx = rng.integers(0, 12, n)
        x0 = gen.logp.copy()
        state = gen.rng.bit_generator.state
        got = gen._walk(idx)
        replay = np.random.default_rng()
        replay.bit_generator.state = state
        order = np.argsort(idx, kind="stable")
        z = replay.standard_normal(n)
        eps = np.empty(n)
        eps[order] = z * gen.sigma[idx[order]]
        det = x0 - gen.mu
        noise = np.zeros(12)
        want = np.empty(n)
        last = x0.copy()
        for j in range(n):
            s = idx[j]
            det[s] *= gen.keep[s]
            noise[s] += eps[j]
            want[j] = min(max(gen.mu[s] + det[s] + noise[s], gen.mu[s] - 1), gen.mu[s] + 1)
            last[s] = want[j]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        np.testing.assert_allclose(gen.logp, last, rtol=0, atol=1e-9)


def test_mean_reversion_pulls_back():
    """Without noise, a displaced price decays toward its anchor by keep**ticks, whether the
    ticks come in one batch or many."""
    spec = parse_feed_spec("synthetic:seed=4,symbols=1")
    a, b = SyntheticGenerator(spec), SyntheticGenerator(spec)
    for g in (a, b):
        g.sigma[:] = 0.0
        g.logp[:] = g.mu + 0.9
    a.generate(400_000)
    for _ in range(40):
        b.generate(10_000)
    want = 0.9 * a.keep[0] ** 400_000
    assert want < 0.9 * 0.96
    np.testing.assert_allclose(a.logp - a.mu, want, rtol=1e-6)
    np.testing.assert_allclose(b.logp - b.mu, want, rtol=1e-6)


def test_prices_sane_after_a_million_ticks():
    spec = parse_feed_spec("synthetic:seed=7,symbols=50")
    gen = SyntheticGenerator(spec)
    start = np.exp(gen.mu)
    assert start.min() >= 10 and start.max() <= 1000
    lo = hi = None
    for _ in range(10):
        trades, quotes = gen.generate(100_000)
        px = np.concatenate([trades["price"], quotes["bid"], quotes["ask"]])
        lo = px.min() if lo is None else min(lo, px.min())
        hi = px.max() if hi is None else max(hi, px.max())
        assert np.isfinite(px).all() and (px > 0).all()
    assert lo > 10 / math.e - 0.05 and hi < 1000 * math.e + 0.05
    dev = np.abs(gen.logp - gen.mu)
    assert dev.max() <= 1.0 + 1e-12
    # the busiest name moved a plausible amount (~1 bp per tick over ~200k ticks), not absurdly
    assert 0.0 < dev.max() < 0.5
    last = gen.prices()
    assert set(last) == set(universe(50))


# --- rate ------------------------------------------------------------------------------------
def test_ticks_due():
    assert ticks_due(5000, 0) == 0
    assert ticks_due(5000, -10) == 0
    assert ticks_due(5000, 1_000_000_000) == 5000
    assert ticks_due(5000, 199_999) == 0
    assert ticks_due(5000, 200_000) == 1
    assert ticks_due(5000, 3_600 * 1_000_000_000) == 18_000_000
    assert ticks_due(0.5, 2_000_000_000) == 1
    assert ticks_due(0.5, 1_999_999_999) == 0
    assert ticks_due(2500.5, 10_000_000_000) == 25_005
    assert ticks_due(0.1, 30_000_000_000) == 3


def test_schedule_exact_average_rate():
    sched = RateSchedule(5000, start_ns=1_000)
    total = 0
    rng = np.random.default_rng(0)
    t = 1_000
    while t < 1_000 + 10_000_000_000:
        t += int(rng.integers(1, 3_000_000))  # passes 0-3 ms apart
        total += sched.take(t)
    assert total == ticks_due(5000, t - 1_000)
    assert sched.lagged == 0


def test_schedule_caps_batches_and_skips_lag():
    sched = RateSchedule(10_000, start_ns=0)
    assert sched.cap == 500  # 50 ms worth
    assert sched.take(20_000_000) == 200
    assert sched.take(200_000_000) == 500  # 1800 owed, capped
    assert sched.take(200_000_000) == 500
    assert sched.lagged == 0
    # stalled for 10 s: only the last second is caught up, the rest skipped
    owed = ticks_due(10_000, 10_200_000_000) - sched.taken
    got = sum(sched.take(10_200_000_000) for _ in range(100))
    assert got == 10_000
    assert sched.lagged == owed - 10_000
    assert sched.take(10_200_000_000) == 0
    assert sched.next_due_ns() > 10_200_000_000 - 1


# --- agent ----------------------------------------------------------------------------------
class FakeProducer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail: Exception | None = None

    def publish_batch(self, table, columns):
        if self.fail is not None:
            raise self.fail
        n = len(columns["ts"])
        self.calls.append((table, n))
        return n


class Clock:
    def __init__(self) -> None:
        self.t = 5_000_000_000
        self.slept = 0

    def mono(self) -> int:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept += 1
        self.t += int(s * 1e9)


def make_feed(spec_text="synthetic:seed=1,rate=5000"):
    clock = Clock()
    prod = FakeProducer()
    feed = SyntheticFeed(prod, parse_feed_spec(spec_text), monotonic_ns=clock.mono,
                         sleep=clock.sleep)
    feed.on_start()
    return feed, prod, clock


def test_agent_publishes_due_ticks_once_per_table():
    feed, prod, clock = make_feed()
    assert feed.do_work() == 0
    feed.idle(0)
    assert clock.slept == 1
    clock.t += 9_000_000  # with the 1 ms idle sleep: 10 ms, 50 ticks due
    n = feed.do_work()
    assert n == 50
    assert sorted(t for t, _ in prod.calls) == ["quotes", "trades"]
    assert sum(k for _, k in prod.calls) == 50
    feed.idle(n)
    assert clock.slept == 2  # sleeps 1 ms after work too (only a capped pass does not)
    c = feed.counters()
    assert c["ticks_sent"] == 50 == c["trades_sent"] + c["quotes_sent"]
    assert c["batches"] == 2 and c["drops"] == 0
    clock.t += 200_000_000  # far behind: 250 ticks per pass, no sleep while a backlog is owed
    assert feed.do_work() == 250
    feed.idle(250)
    assert clock.slept == 2


def test_agent_average_rate_over_time():
    feed, prod, clock = make_feed("synthetic:seed=1,rate=3333")
    end = clock.t + 5_000_000_000
    while clock.t < end:
        feed.idle(feed.do_work())
        clock.t += 700_000  # the pass itself took 0.7 ms
    feed.do_work()
    assert feed.ticks_sent == ticks_due(3333, clock.t - 5_000_000_000)
    assert feed.counters()["lagged_ticks"] == 0
    assert sum(k for _, k in prod.calls) == feed.ticks_sent


@pytest.mark.parametrize("exc", [Backpressure("shard 0 inbound ring stayed full", shard=0),
                                 WriterUnavailable("shard 0 does not accept ticks", shard=0)])
def test_agent_drops_on_backpressure(exc, caplog, monkeypatch):
    feed, prod, clock = make_feed()
    prod.fail = exc
    with caplog.at_level(logging.WARNING, logger="wayy.feeds"):
        for _ in range(20):
            clock.t += 1_000_000
            assert feed.do_work() == 0  # dropped, never raised, never blocked
            feed.idle(0)  # + 1 ms
    c = feed.counters()
    assert c["ticks_sent"] == 0 and c["batches"] == 0
    assert c["drops"] >= 20 and c["dropped_ticks"] == 195  # last pass at 39 ms, 5000/s
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # at most one warning per 10 s
    assert str(exc) in warnings[0].getMessage()
    # after 10 s another warning, summarising the drops since the last one
    real = time.monotonic()
    monkeypatch.setattr(feeds.time, "monotonic", lambda: real + 11.0)
    with caplog.at_level(logging.WARNING, logger="wayy.feeds"):
        clock.t += 2_000_000
        feed.do_work()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    # recovery: the producer accepts again
    prod.fail = None
    clock.t += 2_000_000
    assert feed.do_work() == 10
    assert feed.ticks_sent == 10


def test_agent_drop_counts_exact():
    feed, prod, clock = make_feed()
    prod.fail = Backpressure("full", shard=0)
    clock.t += 100_000_000  # 500 owed, 250 per pass (50 ms cap)
    feed.do_work()
    feed.do_work()
    assert feed.dropped_ticks == 500
    assert feed.drops == 4  # two passes x two tables


def test_make_agent_and_run_feed_none():
    assert feeds.make_agent(None, parse_feed_spec("none")) is None
    feeds.run_feed("/nonexistent/db", parse_feed_spec("none"))  # returns at once


def test_main_errors_are_one_line(capsys, tmp_path):
    assert feeds.main(["--db", str(tmp_path), "--feed", "synthetic:rate=0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: invalid --feed") and err.count("\n") == 1
    assert feeds.main(["--db", str(tmp_path), "--feed", "none"]) == 0
    assert feeds.main(["--db", str(tmp_path / "nodb"), "--feed", "synthetic"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and err.count("\n") == 1


def test_run_feed_not_running(tmp_path):
    with pytest.raises(NotRunning):
        feeds.run_feed(str(tmp_path), parse_feed_spec("synthetic"))


# --- into a real one-shard database (writer driven in this process) --------------------------
@contextlib.contextmanager
def one_shard_db(path: str):
    from shm.segment import db_prefix, list_segments, unlink_quiet
    from shm.change_ring import ChangeRingWriter
    from shm.shard import Control, InboundRing, ShardData, segment_name
    from wayy.manifest import Manifest, acquire_lock

    prefix = db_prefix(path)
    for name in list_segments(prefix):
        unlink_quiet(name)
    fd = acquire_lock(path)
    assert fd is not None
    segs = []
    try:
        segs = [ShardData.create(prefix, 0, 1, 1 << 16), InboundRing.create(prefix, 0, 1 << 20),
                Control.create(prefix, 0),
                ChangeRingWriter.create(segment_name(prefix, 0, "changes"), 1024)]
        Manifest(path, prefix, 1, 1 << 16, 1 << 20, segs[0].max_symbols, segs[0].max_venues,
                 os.getpid(), time.time_ns()).write()
        yield prefix, segs
    finally:
        for s in segs:
            s.close()
        for name in list_segments(prefix):
            unlink_quiet(name)
        os.close(fd)


def test_feed_into_database(tmp_path):
    from shm.layout import tables as T
    from wayy.producer import Producer
    from workers.writer import ShardWriter

    with one_shard_db(str(tmp_path)) as (prefix, (data, ring, ctl, _changes)):
        with Producer(str(tmp_path), timeout=0.0) as prod:
            clock = Clock()
            feed = SyntheticFeed(prod, parse_feed_spec("synthetic:seed=3,rate=20000"),
                                 monotonic_ns=clock.mono, sleep=clock.sleep)
            feed.on_start()
            # no writer yet: the ring refuses, the feed drops and carries on
            clock.t += 5_000_000
            assert feed.do_work() == 0
            assert feed.drops == 2 and feed.dropped_ticks == 100
            writer = ShardWriter(prefix, 0)
            writer.on_start()
            try:
                for _ in range(20):
                    clock.t += 5_000_000
                    feed.do_work()
                    writer.do_work()
                writer.do_work()
            finally:
                writer.on_close()
            assert feed.ticks_sent == 20 * 100
            assert data.committed(T.TRADES) == feed.trades_sent
            assert data.committed(T.QUOTES) == feed.quotes_sent
            assert int(ctl.rejects.sum()) == 0


def test_a_feed_waits_for_writers_still_loading_their_wal(db_factory):
    """`wayy start --feed synthetic` on a database whose shard reloads a large WAL: the feed
    starts beside the writers, and used to have its first batches to that shard refused
    ("writer starting") and dropped. It now waits for them: no drop."""
    import wayy

    d = db_factory("--shards", "2", "--feed", "none", "--no-redis")
    p = wayy.Producer(d.path)
    n = 100_000
    for _ in range(6):  # 600,000 rows for the shard of AAPL to load back
        p.publish_batch("trades", {"symbol": ["AAPL"] * n, "price": np.arange(1.0, n + 1),
                                   "size": np.ones(n)})
    p.flush(60.0)
    p.close()
    d.stop()
    d2 = db_factory("--shards", "2", "--feed", "synthetic:rate=500", "--no-redis")
    db = wayy.attach(d2.path)
    try:
        wait_for_rows = time.monotonic() + 30
        while len(db["quotes"]) < 200 and time.monotonic() < wait_for_rows:
            time.sleep(0.05)
        assert len(db["quotes"]) >= 200
    finally:
        db.close()
    assert "dropped" not in d2.log()
