"""Feeds: processes that put ticks into a running database.

    --feed none                                   no feed
    --feed synthetic                              synthetic market, defaults below
    --feed synthetic:rate=5000,symbols=100,seed=1,quote_ratio=0.7,venues=NYSE+NASDAQ

The synthetic feed models a plausible equity market, vectorised with numpy:

- a universe whose first symbols are real large-cap tickers (AAPL, MSFT, AMZN, ...), then
  generated ones (``SYM081``, ``SYM082``, ...); activity is Zipf-skewed, so the first
  names tick far more often than the tail;
- per symbol, a mid price that starts log-uniform in 10..1000 and follows a random walk in
  log space (about 1 bp per tick), gently mean-reverting toward its start (an
  Ornstein-Uhlenbeck walk whose stationary spread is ~20 %, hard-bounded to a factor of e)
  so it never drifts to absurd values however long it runs;
- quotes: bid/ask on the 0.01 grid around the mid, 1-5 ticks wide, sizes 100-5000 in round
  lots; trades: at the bid, at the ask or inside the spread, sizes 1-1000;
- ``ts`` = wall-clock nanoseconds (``time.time_ns``), spread evenly over the interval the
  batch covers and non-decreasing per feed even if the wall clock steps back.

The agent (:class:`SyntheticFeed`) keeps an exact average rate: each pass publishes the
ticks due since start (``rate * elapsed``) with one ``publish_batch`` per table, at most
50 ms worth at once; if it falls more than a second behind it skips ahead (counted as
``lagged_ticks``) rather than bursting. Between passes it sleeps until the next tick is due
(1 ms at least, 50 ms at most), so it never spins. Rows are generated ahead in blocks of
~100 ms (``SyntheticGenerator.take``) so a pass costs a few numpy calls, not a hundred.
A synthetic feed never blocks: Backpressure or WriterUnavailable from the producer drops
that batch (counted; warned at most once per 10 s).

Run on its own: ``python -m workers.feeds --db PATH --feed SPEC``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from shm.layout.tables import NAME_BYTES
from wayy.errors import Backpressure, InvalidInput, InvalidName, WayyError, WriterUnavailable
from wayy.names import check_new_venues, check_symbol, check_venue

log = logging.getLogger("wayy.feeds")

KINDS = ("synthetic", "none")
DEFAULT_RATE = 5000.0
DEFAULT_SYMBOLS = 100
DEFAULT_QUOTE_RATIO = 0.7
DEFAULT_VENUES = ("NYSE", "NASDAQ", "ARCA", "BATS", "IEX")
MAX_SYMBOLS = 5000
MAX_RATE = 10_000_000.0  # ticks/s; beyond this one Python process cannot generate anyway

SPEC_HELP = ("valid feeds: 'none', 'synthetic' or 'synthetic:OPT=V,...' with options "
             "rate=TICKS_PER_S (> 0, default 5000), symbols=N (1..5000, default 100), "
             "seed=INT (>= 0, default random), quote_ratio=R (0..1, default 0.7), "
             "venues=V1+V2+... (default NYSE+NASDAQ+ARCA+BATS+IEX)")

# Real large-cap US equities and ETFs, most active first; generated names follow.
REAL_TICKERS = (
    "AAPL", "MSFT", "AMZN", "GOOG", "META", "NVDA", "TSLA", "SPY", "QQQ", "JPM",
    "V", "MA", "UNH", "XOM", "JNJ", "WMT", "PG", "HD", "CVX", "LLY",
    "AVGO", "KO", "PEP", "COST", "MRK", "ABBV", "BAC", "ADBE", "CRM", "NFLX",
    "AMD", "INTC", "CSCO", "ORCL", "TMO", "ACN", "MCD", "DIS", "ABT", "WFC",
    "DHR", "TXN", "NKE", "VZ", "CMCSA", "PM", "NEE", "QCOM", "UPS", "LIN",
    "HON", "BMY", "RTX", "AMGN", "T", "LOW", "SBUX", "IBM", "GS", "MS",
    "CAT", "BA", "GE", "INTU", "AMAT", "ISRG", "BLK", "DE", "GOOGL", "BRK.B",
    "IWM", "DIA", "PYPL", "UBER", "PLTR", "COIN", "MU", "SHOP", "C", "PFE",
)

TICK = 0.01  # price grid
MIN_START_PRICE = 10.0
MAX_START_PRICE = 1000.0
VOL_BP_RANGE = (0.7, 1.5)  # per-tick log-price volatility, basis points, per symbol
STATIONARY_SD = 0.2  # stationary std of log(price / start) of the mean-reverting walk
LOG_BAND = 1.0  # hard bound: price stays within start / e .. start * e
SPREAD_CDF = np.cumsum([0.40, 0.25, 0.15, 0.12, 0.08])  # spread of 1..5 ticks
LOG_1M_LOT_P = math.log(1.0 - 0.25)  # quote size lots ~ geometric(0.25)
ZIPF_S = 1.0  # symbol activity ~ 1 / rank ** ZIPF_S

MAX_BATCH_S = 0.05  # one pass generates at most this much time's worth of ticks
MAX_BATCH_ROWS = 250_000  # ... and never more rows than this
BLOCK_S = 0.1  # the live feed generates ticks ahead in blocks of this much time ...
MIN_BLOCK_ROWS = 1024  # ... but at least this many rows
MAX_LAG_S = 1.0  # further behind than this: skip ahead instead of catching up
IDLE_SLEEP_S = 0.001  # least sleep between passes: batches of >= 1 ms of ticks
MAX_IDLE_SLEEP_S = 0.05  # most: at low rates, sleep until the next tick falls due
WARN_EVERY_S = 10.0
PUBLISH_TIMEOUT_S = 0.01  # how long run_feed's producer may wait for room before dropping
WRITERS_READY_S = 60.0  # how long a feed waits for the writers to finish starting


# --- spec ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeedSpec:
    """A parsed ``--feed`` option."""

    kind: str = "synthetic"
    rate: float = DEFAULT_RATE
    symbols: int = DEFAULT_SYMBOLS
    quote_ratio: float = DEFAULT_QUOTE_RATIO
    seed: int | None = None
    venues: tuple[str, ...] = field(default=DEFAULT_VENUES)

    def to_string(self) -> str:
        """The canonical ``--feed`` text; ``parse_feed_spec(s.to_string()) == s``."""
        if self.kind == "none":
            return "none"
        opts = [f"rate={self.rate:g}", f"symbols={self.symbols}",
                f"quote_ratio={self.quote_ratio:g}", f"venues={'+'.join(self.venues)}"]
        if self.seed is not None:
            opts.insert(2, f"seed={self.seed}")
        return f"{self.kind}:" + ",".join(opts)

    __str__ = to_string


def _bad(spec: str, why: str) -> InvalidInput:
    if len(spec) > 80:  # a pasted megabyte is not echoed back whole
        spec = spec[:60] + f"... ({len(spec)} characters)"
    if len(why) > 200:
        why = why[:180] + "..."
    return InvalidInput(f"invalid --feed {spec!r}: {why}; {SPEC_HELP}")


def _number(spec: str, key: str, text: str, kind: type):
    try:
        if kind is int:
            v = int(text, 10)
        else:
            v = float(text)
    except ValueError:
        raise _bad(spec, f"{key}={text!r} is not {'an integer' if kind is int else 'a number'}") \
            from None
    if kind is float and not math.isfinite(v):
        raise _bad(spec, f"{key}={text!r} is not a finite number")
    return v


def parse_feed_spec(spec: str) -> FeedSpec:
    """Parse a ``--feed`` value; InvalidInput (one line, listing the options) if it is wrong."""
    if not isinstance(spec, str):
        raise _bad(str(spec), f"expected a string, got {type(spec).__name__}")
    text = spec.strip()
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise _bad(spec, f"unknown feed kind {kind!r}" if kind else "empty feed")
    if kind == "none":
        if sep:
            raise _bad(spec, "feed 'none' takes no options")
        return FeedSpec(kind="none")
    opts: dict[str, object] = {}
    if sep and not rest.strip():
        raise _bad(spec, "no options after ':'")
    for item in rest.split(",") if sep else ():
        key, eq, val = item.partition("=")
        key, val = key.strip().lower(), val.strip()
        if not eq or not key or not val:
            raise _bad(spec, f"option {item.strip()!r} is not KEY=VALUE")
        if key in opts:
            raise _bad(spec, f"option {key!r} given twice")
        if key == "rate":
            v = _number(spec, key, val, float)
            if not 0 < v <= MAX_RATE:
                raise _bad(spec, f"rate={val} must be > 0 and at most {MAX_RATE:.0f} ticks/s")
        elif key == "symbols":
            v = _number(spec, key, val, int)
            if not 1 <= v <= MAX_SYMBOLS:
                raise _bad(spec, f"symbols={val} must be between 1 and {MAX_SYMBOLS}")
        elif key == "seed":
            if val.lower() in ("random", "none"):
                v = None
            else:
                v = _number(spec, key, val, int)
                if v < 0:
                    raise _bad(spec, f"seed={val} must be >= 0")
        elif key == "quote_ratio":
            v = _number(spec, key, val, float)
            if not 0.0 <= v <= 1.0:
                raise _bad(spec, f"quote_ratio={val} must be between 0 and 1")
        elif key == "venues":
            names = [n.strip() for n in val.split("+")]
            for n in names:
                if not n:
                    raise _bad(spec, f"venues={val!r} has an empty venue name")
                try:
                    check_venue(n)
                    check_new_venues(n)  # "stream": the producer would refuse every tick
                except InvalidName as exc:
                    raise _bad(spec, str(exc)) from None
            v = tuple(dict.fromkeys(names))  # de-duplicated, order kept
        else:
            raise _bad(spec, f"unknown option {key!r}")
        opts[key] = v
    return FeedSpec(kind="synthetic", **opts)  # type: ignore[arg-type]


# --- universe and rate --------------------------------------------------------------------
def universe(n: int) -> list[str]:
    """The first ``n`` symbols: real tickers, then SYM081, SYM082, ... (1-based rank)."""
    real = list(REAL_TICKERS[:n])
    return real + [f"SYM{i:03d}" for i in range(len(real) + 1, n + 1)]


def ticks_due(rate: float, elapsed_ns: int) -> int:
    """Ticks a feed of ``rate`` ticks/s owes after ``elapsed_ns``: floor(rate * elapsed)."""
    elapsed_ns = int(elapsed_ns)
    if elapsed_ns <= 0:
        return 0
    if float(rate).is_integer():  # exact integer arithmetic for whole rates
        return int(rate) * elapsed_ns // 1_000_000_000
    return int(math.floor(rate * (elapsed_ns / 1e9) * (1 + 1e-12)))


class RateSchedule:
    """How many ticks are due at each pass, so the average rate is exact over time.

    ``take(now_ns)`` returns the ticks to generate now: the ones due since ``start`` not yet
    taken, at most ``max_batch_s`` worth (and ``MAX_BATCH_ROWS``). If more than ``max_lag_s``
    worth is outstanding (the process was stopped or starved), the excess is skipped and
    counted in ``lagged``, so a feed never bursts to catch up on the distant past.
    """

    def __init__(self, rate: float, start_ns: int, max_batch_s: float = MAX_BATCH_S,
                 max_lag_s: float = MAX_LAG_S) -> None:
        self.rate = float(rate)
        self.start_ns = int(start_ns)
        self.taken = 0
        self.lagged = 0
        self.backlog = 0  # ticks owed but left for the next pass by the last take()
        self.cap = max(1, min(MAX_BATCH_ROWS, int(self.rate * max_batch_s)))
        self.max_lag = max(self.cap, int(self.rate * max_lag_s))

    def take(self, now_ns: int) -> int:
        owed = ticks_due(self.rate, now_ns - self.start_ns) - self.taken
        if owed <= 0:
            self.backlog = 0
            return 0
        if owed > self.max_lag:
            skip = owed - self.max_lag
            self.lagged += skip
            self.taken += skip
            owed = self.max_lag
        n = min(owed, self.cap)
        self.taken += n
        self.backlog = owed - n
        return n

    def next_due_ns(self) -> int:
        """Wall (monotonic) time at which the next tick falls due."""
        return self.start_ns + int(math.ceil((self.taken + 1) * 1e9 / self.rate))


# --- generator ----------------------------------------------------------------------------
def _names(values, what: str) -> np.ndarray:
    out = np.array([v.encode("ascii") for v in values], dtype=f"S{NAME_BYTES}")
    for v in values:
        check_symbol(v, what)
    return out


class SyntheticGenerator:
    """Generates batches of synthetic trades and quotes; needs no database.

    ``generate(n)`` returns ``(trades_columns, quotes_columns)``: dicts of numpy arrays in
    the shape ``Producer.publish_batch`` takes (``ts`` int64, ``symbol``/``venue`` as 16-byte
    ASCII names, value columns float64). Rows of one call are in time order; each table's
    columns hold its rows in that order. ``take(n)`` is the same for a live feed calling
    with a few rows a millisecond: it slices rows from a block generated ahead.
    """

    def __init__(self, spec: FeedSpec, clock: Callable[[], int] = time.time_ns,
                 block_rows: int | None = None) -> None:
        if spec.kind != "synthetic":
            raise InvalidInput(f"SyntheticGenerator needs a synthetic feed spec, got {spec}")
        self.spec = spec
        self.clock = clock
        self.rng = rng = np.random.default_rng(spec.seed)
        self.symbol_names = universe(spec.symbols)
        self.venue_names = list(spec.venues)
        self.sym = _names(self.symbol_names, "symbol")
        self.ven = _names(self.venue_names, "venue")
        n = len(self.symbol_names)
        w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** ZIPF_S
        self.sym_cdf = np.cumsum(w / w.sum())
        wv = 1.0 / np.arange(1, len(self.venue_names) + 1, dtype=np.float64)
        self.ven_cdf = np.cumsum(wv / wv.sum())
        self.mu = rng.uniform(math.log(MIN_START_PRICE), math.log(MAX_START_PRICE), n)
        self.logp = self.mu.copy()
        self.sigma = rng.uniform(*VOL_BP_RANGE, n) * 1e-4
        # OU in tick time: x' = x + theta (mu - x) + sigma z; stationary sd = sigma/sqrt(2 theta)
        self.keep = 1.0 - self.sigma**2 / (2.0 * STATIONARY_SD**2)
        self.last_ts = int(clock())
        self.block_rows = (int(block_rows) if block_rows else
                           min(MAX_BATCH_ROWS, max(MIN_BLOCK_ROWS, int(spec.rate * BLOCK_S))))
        self._block: tuple | None = None
        self._block_n = 0
        self._cursor = 0

    def _walk(self, idx: np.ndarray) -> np.ndarray:
        """Log mid price after each tick (symbol ``idx[j]`` moves at tick j); updates state.

        Grouped by symbol without a Python loop: the pull toward the anchor is exact per tick
        (``keep ** k``), the noise is the within-batch cumulative sum (its own reversion is
        applied from the next batch on -- immaterial, as theta is ~1e-7 per tick).
        """
        n = idx.shape[0]
        nsym = self.mu.shape[0]
        order = np.argsort(idx, kind="stable")
        sidx = idx[order]
        eps = self.rng.standard_normal(n) * self.sigma[sidx]
        counts = np.bincount(idx, minlength=nsym)
        starts = np.cumsum(counts) - counts
        cs = np.cumsum(eps)
        before = np.concatenate(([0.0], cs))[starts]  # sum of eps of earlier groups
        noise = cs - before[sidx]  # cumulative noise within each symbol's ticks
        k = np.arange(1, n + 1) - starts[sidx]  # 1-based tick count within the symbol
        mu = self.mu[sidx]
        path = mu + (self.logp[sidx] - mu) * self.keep[sidx] ** k + noise
        np.minimum(path, mu + LOG_BAND, out=path)
        np.maximum(path, mu - LOG_BAND, out=path)
        has = counts > 0
        self.logp[has] = path[(starts + counts - 1)[has]]
        out = np.empty(n)
        out[order] = path
        return out

    def _now(self, now_ns: int | None) -> tuple[int, int]:
        """(start, delta): the interval (start, start + delta] the next ticks are stamped in.

        It runs from the previous batch's stamp to now, never backwards, so ``ts`` is
        non-decreasing per feed whatever the wall clock does.
        """
        now = int(self.clock()) if now_ns is None else int(now_ns)
        now = max(now, self.last_ts)
        last = self.last_ts
        self.last_ts = now
        return last, now - last

    @staticmethod
    def _stamp(pos: np.ndarray, first: int, n: int, last: int, delta: int) -> np.ndarray:
        """ts of rows ``pos`` of a batch of ``n`` rows starting at row ``first``: spread
        evenly over (last, last + delta], the batch's final row exactly at the end."""
        off = ((pos - (first - 1)) * (delta / n)).astype(np.int64)
        np.minimum(off, delta, out=off)
        return off + last

    def _rows(self, n: int) -> tuple[dict, dict, np.ndarray, np.ndarray]:
        """``n`` ticks without ``ts``: (trades, quotes, trade_rows, quote_rows), where the
        last two give each trade's and quote's position among the ``n`` ticks."""
        u = self.rng.random((8, n))  # every uniform draw of the batch in one call
        nsym, nven = self.sym_cdf.shape[0], self.ven_cdf.shape[0]
        idx = np.minimum(np.searchsorted(self.sym_cdf, u[0], side="right"), nsym - 1)
        ven = np.minimum(np.searchsorted(self.ven_cdf, u[1], side="right"), nven - 1)
        is_quote = u[2] < self.spec.quote_ratio
        mid_t = np.exp(self._walk(idx)) / TICK  # mid price in ticks
        spread = np.minimum(np.searchsorted(SPREAD_CDF, u[3], side="right"), 4) + 1.0
        bid_t = np.maximum(np.floor(mid_t - spread / 2.0), 1.0)
        ask_t = bid_t + spread

        q = np.flatnonzero(is_quote)
        t = np.flatnonzero(~is_quote)
        # quote sizes: round lots, geometric (p = 0.25) capped at 50 lots
        lots = np.minimum(np.floor(np.log1p(-u[6:8, q]) / LOG_1M_LOT_P) + 1.0, 50.0)
        quotes = {
            "symbol": self.sym[idx[q]],
            "venue": self.ven[ven[q]],
            "bid": bid_t[q] / 100.0,
            "ask": ask_t[q] / 100.0,
            "bid_size": lots[0] * 100.0,
            "ask_size": lots[1] * 100.0,
        }
        # trades: 45 % at the bid, 45 % at the ask, 10 % anywhere from bid to ask
        side, bt, st = u[4, t], bid_t[t], spread[t]
        inside = bt + np.floor(u[5, t] * (st + 1.0))
        px_t = np.where(side < 0.45, bt, np.where(side < 0.9, bt + st, inside))
        # sizes: 40 % odd lots 1..99, else round lots 100..1000
        v = u[7, t]
        size = np.where(u[6, t] < 0.4, 1.0 + np.floor(v * 99.0), 100.0 + 100.0 * np.floor(v * 10.0))
        trades = {
            "symbol": self.sym[idx[t]],
            "venue": self.ven[ven[t]],
            "price": px_t / 100.0,
            "size": size,
        }
        return trades, quotes, t, q

    def generate(self, n: int, now_ns: int | None = None) -> tuple[dict, dict]:
        """``n`` fresh ticks (trades and quotes together), stamped over the time since the
        previous batch up to ``now_ns`` (default: now). Returns (trades, quotes) columns."""
        n = int(n)
        if n <= 0:
            return self._empty("trades"), self._empty("quotes")
        trades, quotes, t, q = self._rows(n)
        last, delta = self._now(now_ns)
        trades["ts"] = self._stamp(t, 0, n, last, delta)
        quotes["ts"] = self._stamp(q, 0, n, last, delta)
        return trades, quotes

    def take(self, n: int, now_ns: int | None = None) -> tuple[dict, dict]:
        """Like :meth:`generate`, but cheap for small ``n``: the next ``n`` rows of a block
        generated ahead (``block_rows`` at a time), as slices of its columns plus fresh
        ``ts``. What a live feed calls once a millisecond; numpy's fixed cost per call is
        paid once per block instead of once per pass."""
        n = int(n)
        if n <= 0:
            return self._empty("trades"), self._empty("quotes")
        if self._block is None or self._cursor + n > self._block_n:
            # a new block; rows left in the old one are skipped (the walk already moved on)
            size = max(n, self.block_rows)
            trades, quotes, t, q = self._rows(size)
            cq = np.searchsorted(q, np.arange(size + 1))  # quotes among the first r rows
            self._block = (trades, quotes, t, q, cq)
            self._block_n = size
            self._cursor = 0
        trades, quotes, t, q, cq = self._block
        a, b = self._cursor, self._cursor + n
        self._cursor = b
        qa, qb = int(cq[a]), int(cq[b])
        ta, tb = a - qa, b - qb
        last, delta = self._now(now_ns)
        tr = {c: v[ta:tb] for c, v in trades.items()}
        qu = {c: v[qa:qb] for c, v in quotes.items()}
        tr["ts"] = self._stamp(t[ta:tb], a, n, last, delta)
        qu["ts"] = self._stamp(q[qa:qb], a, n, last, delta)
        return tr, qu

    @staticmethod
    def _empty(table: str) -> dict:
        cols = ("price", "size") if table == "trades" else ("bid", "ask", "bid_size", "ask_size")
        out = {"ts": np.empty(0, np.int64), "symbol": np.empty(0, f"S{NAME_BYTES}"),
               "venue": np.empty(0, f"S{NAME_BYTES}")}
        out.update({c: np.empty(0, np.float64) for c in cols})
        return out

    def prices(self) -> dict[str, float]:
        """Current mid price of every symbol."""
        return dict(zip(self.symbol_names, np.exp(self.logp).tolist()))


# --- agent --------------------------------------------------------------------------------
class SyntheticFeed:
    """Agent publishing a synthetic market through ``producer`` (anything with
    ``publish_batch(table, columns)``) at the spec's average rate."""

    def __init__(self, producer, spec: FeedSpec,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns,
                 clock: Callable[[], int] = time.time_ns,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = "feed-synthetic"
        self.producer = producer
        self.spec = spec
        self.gen = SyntheticGenerator(spec, clock=clock)
        self._mono = monotonic_ns
        self._sleep = sleep
        self.schedule = RateSchedule(spec.rate, monotonic_ns())
        self.ticks_sent = 0
        self.trades_sent = 0
        self.quotes_sent = 0
        self.batches = 0
        self.drops = 0
        self.dropped_ticks = 0
        self._warned_at: float | None = None
        self._drops_unwarned = 0

    @property
    def lagged_ticks(self) -> int:
        return self.schedule.lagged

    def counters(self) -> dict[str, int]:
        return {"ticks_sent": self.ticks_sent, "trades_sent": self.trades_sent,
                "quotes_sent": self.quotes_sent, "batches": self.batches, "drops": self.drops,
                "dropped_ticks": self.dropped_ticks, "lagged_ticks": self.lagged_ticks}

    # --- agent protocol ---
    def on_start(self) -> None:
        self.schedule = RateSchedule(self.spec.rate, self._mono())
        self.gen.last_ts = max(self.gen.last_ts, int(self.gen.clock()))
        log.info("feed %s: %d symbols (%s ...), %g ticks/s, quote ratio %g, venues %s",
                 self.spec.kind, self.spec.symbols, ", ".join(self.gen.symbol_names[:5]),
                 self.spec.rate, self.spec.quote_ratio, "+".join(self.spec.venues))

    def do_work(self) -> int:
        n = self.schedule.take(self._mono())
        if n == 0:
            return 0
        trades, quotes = self.gen.take(n)
        sent = 0
        for table, cols in (("quotes", quotes), ("trades", trades)):
            rows = cols["ts"].shape[0]
            if rows == 0:
                continue
            try:
                self.producer.publish_batch(table, cols)
            except (Backpressure, WriterUnavailable) as exc:
                self._dropped(table, rows, exc)
                continue
            self.batches += 1
            sent += rows
            if table == "trades":
                self.trades_sent += rows
            else:
                self.quotes_sent += rows
        self.ticks_sent += sent
        return sent

    def idle(self, work: int) -> None:
        """Sleep until the next tick is due (at least 1 ms, at most 50 ms) -- never spin.

        Only when the last pass was capped and more ticks are owed does it return at once.
        The 1 ms floor keeps passes to about a thousand a second whatever the rate, each
        publishing one batch per table.
        """
        if self.schedule.backlog > 0:
            return
        wait = (self.schedule.next_due_ns() - self._mono()) / 1e9
        self._sleep(min(max(wait, IDLE_SLEEP_S), MAX_IDLE_SLEEP_S))

    def on_close(self) -> None:
        log.info("feed %s stopped: %s", self.spec.kind,
                 ", ".join(f"{k} {v}" for k, v in self.counters().items()))

    # --- drops ---
    def _dropped(self, table: str, rows: int, exc: WayyError) -> None:
        """Count a dropped batch; warn at most once per WARN_EVERY_S.

        A batch spanning several shards may have reached some of them before the one that
        refused; the whole batch is counted as dropped.
        """
        self.drops += 1
        self.dropped_ticks += rows
        self._drops_unwarned += 1
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY_S:
            log.warning("feed %s: dropped %d batch(es) (%d %s ticks in the last one; %d "
                        "dropped in all): %s", self.spec.kind, self._drops_unwarned, rows,
                        table, self.dropped_ticks, exc)
            self._warned_at = now
            self._drops_unwarned = 0


# --- process ------------------------------------------------------------------------------
def make_agent(producer, spec: FeedSpec):
    """The agent for ``spec`` publishing through ``producer``; None for the 'none' feed."""
    if spec.kind == "none":
        return None
    if spec.kind == "synthetic":
        return SyntheticFeed(producer, spec)
    raise InvalidInput(f"unknown feed kind {spec.kind!r}; {SPEC_HELP}")


def _wait_for_writers(db_path: str, timeout: float = WRITERS_READY_S) -> None:
    """Return once no writer of the database is on its first start (loading its WAL
    back): the supervisor starts the feeds beside the writers, and a feed's first batches
    to a shard still loading were refused ("writer starting") and dropped. After
    ``timeout`` it goes on (drops are then counted and warned about as usual)."""
    import wayy

    deadline = time.monotonic() + timeout
    try:
        with wayy.attach(db_path) as db:
            while db.starting_shards() and time.monotonic() < deadline:
                time.sleep(0.01)
    except WayyError:
        pass  # not running (any more): the producer says so


def run_feed(db_path: str, spec: FeedSpec, *, publish_timeout: float = PUBLISH_TIMEOUT_S) -> None:
    """Run the feed ``spec`` into the database at ``db_path`` until SIGTERM/SIGINT.

    The 'none' feed returns at once. NotRunning if no database is running there.
    """
    if spec.kind == "none":
        log.info("feed none: nothing to publish")
        return
    from wayy.producer import Producer
    from workers.agent import Runner

    _wait_for_writers(db_path)
    with Producer(db_path, timeout=publish_timeout) as producer:
        runner = Runner(make_agent(producer, spec))
        runner.install_signals()
        runner.run()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workers.feeds",
                                 description="Publish a feed into a running database.",
                                 epilog=SPEC_HELP)
    ap.add_argument("--db", required=True, help="database directory")
    ap.add_argument("--feed", default="synthetic", help="feed spec (default: synthetic)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        spec = parse_feed_spec(args.feed)
        run_feed(args.db, spec)
    except WayyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
