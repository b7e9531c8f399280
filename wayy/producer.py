"""Producers: put ticks into a running database from any process.

    p = wayy.Producer("/data/markets")
    p.publish("trades", symbol="AAPL", venue="NYSE", price=150.25, size=100)   # ts = now
    p.publish_batch("quotes", {"ts": ts, "symbol": syms, "venue": vens,
                               "bid": bid, "ask": ask, "bid_size": bs, "ask_size": az})

Each row goes to the shard that owns its symbol (`wayy.names.shard_of`). A batch becomes
visible all at once per shard; a batch larger than one inbound record
(``Producer.max_batch_rows(table)``) is written as several consecutive atomic batches.
The producer checks every row before writing and raises InvalidTick / InvalidName naming the
row and the reason; the writer checks again (it trusts no producer) and counts rejects.
Value columns must be numbers: a string ("1.5"), a bool or an object is refused, never
converted. ``ts`` must lie between 1990-01-01T00:00:00Z and one day past the producer's clock
(both inclusive).

Backpressure / WriterUnavailable from ``publish_batch`` carry ``accepted`` (rows already
written, visible to readers once committed) and ``pending_rows`` (indices of the rows that
were not): a batch split over several records or shards can be cut off part way, and a
retry must resend only the pending rows or the accepted ones are stored twice.
"""

from __future__ import annotations

import math
import numbers
import os
import time
import weakref
from collections.abc import Mapping

import numba
import numpy as np

from shm import inbound
from shm.ingest import row_reason
from shm.layout import inbound as L
from shm.layout import tables as T
from shm.shard import Control, InboundRing
from wayy.errors import (
    Backpressure,
    InvalidInput,
    InvalidTick,
    RowsRejected,
    RunEnded,
    UnknownTable,
    WayyError,
    WriterUnavailable,
    translate,
)
from wayy.manifest import check_db_path, lock_holder, read_manifest
from wayy.names import (
    check_symbol,
    check_new_venues,
    check_venue,
    name_words,
    shard_of,
    shard_of_names,
    to_name_array,
)
from wayy.times import TimeRangeError, datetime64_ns, seconds

_REQUIRED = {t: {"symbol"} | set(T.VALUE_COLUMNS[t]) for t in (T.TRADES, T.QUOTES)}
_ALLOWED = {t: _REQUIRED[t] | {"ts", "venue"} for t in (T.TRADES, T.QUOTES)}
_NO_ROWS = np.empty(0, np.int64)


@numba.njit(cache=True, nogil=True)
def _first_bad_row(table, ts, v0, v1, v2, v3, nvals, n, now_ns):
    """(row, reason) of the first invalid row, or (-1, 0)."""
    for j in range(n):
        if nvals == 2:
            r = row_reason(table, ts[j], v0[j], v1[j], 1.0, 1.0, now_ns)
        else:
            r = row_reason(table, ts[j], v0[j], v1[j], v2[j], v3[j], now_ns)
        if r != T.REJECT_OK:
            return j, r
    return -1, 0


@numba.njit(cache=True, nogil=True)
def _all_valid(ts, v0, v1, v2, v3, nvals, n, now_ns):
    """Whether every row passes row_reason: branch-free over the rows, so it vectorises
    (_first_bad_row says which row and why, when this says no)."""
    lo = T.MIN_TS_NS
    hi = now_ns + T.MAX_FUTURE_NS
    inf = np.inf
    bad = False
    for j in range(n):
        a = v0[j]
        b = v1[j]
        t = ts[j]
        bad |= (t < lo) | (t > hi) | ~(a > 0.0) | ~(a < inf) | ~(b > 0.0) | ~(b < inf)
    if nvals == 4:
        for j in range(n):
            a = v0[j]
            b = v1[j]
            c = v2[j]
            d = v3[j]
            bad |= ~(c > 0.0) | ~(c < inf) | ~(d > 0.0) | ~(d < inf) | (a > b)
    return not bad


@numba.njit(cache=True, nogil=True)
def _check_and_write(hdr64, hdr32, data8, data32, pid, rtype, n, ts, sym8, ven8, v0, v1, v2,
                     v3, nvals, now_ns):
    """Check every row (_all_valid), then -- only if all are valid -- inbound.write_batch of
    all of them, in one call. Returns the record position, a ring code < 0, or
    inbound.INVALID (nothing written; _first_bad_row then says which row and why)."""
    if not _all_valid(ts, v0, v1, v2, v3, nvals, n, now_ns):
        return inbound.INVALID
    return inbound.write_batch(hdr64, hdr32, data8, data32, pid, rtype, _EMPTY_ROWS, n, ts,
                               sym8, ven8, v0, v1, v2, v3, nvals)


_EMPTY_ROWS = np.empty(0, np.int64)  # a compile-time constant inside _check_and_write


@numba.njit(cache=True, nogil=True)
def _one_shard(sym8, n, nshards):
    """The shard every one of the ``n`` 16-byte names in ``sym8`` maps to, or -1 when they
    span several. A batch of one symbol (the common case) hashes one name."""
    names64 = sym8[: n * 16].view(np.uint64)
    first = np.empty(1, np.int64)
    shard_of_names(sym8, 1, nshards, first)
    k = first[0]
    out = np.empty(1, np.int64)
    for i in range(1, n):
        if names64[2 * i] == names64[0] and names64[2 * i + 1] == names64[1]:
            continue
        shard_of_names(sym8[i * 16:], 1, nshards, out)
        if out[0] != k:
            return -1
    return k


_MISSING = object()  # publish(): a field that was not given
_FIELDS = ("symbol", "price", "size", "bid", "ask", "bid_size", "ask_size")
_NO_VENUE = ""  # the default venue (CPython has one empty str, so `is` is exact)
# Values the per-tick fast path hands straight to its compiled entry point. The entry point
# converts its float arguments with float() semantics, which also takes "1.5", b"1" and True:
# anything else goes the general path, which refuses those.
_PLAIN_NUMBERS = frozenset((float, int, np.float64, np.float32, np.int64, np.int32,
                            np.int16, np.int8, np.uint64, np.uint32, np.uint16, np.uint8))
_REASON = {"price": "price", "bid": "price", "ask": "price", "size": "size",
           "bid_size": "size", "ask_size": "size"}


def _number(value, name: str, what: str) -> float:
    """``value`` of field ``name`` as a float; InvalidTick for anything but a number."""
    dtype = getattr(value, "dtype", None)
    if type(value) in _PLAIN_NUMBERS or (dtype.kind in "iuf" if isinstance(dtype, np.dtype)
                                         else isinstance(value, numbers.Number)
                                         and not isinstance(value, bool)):
        try:
            return float(value)
        except OverflowError:
            raise InvalidTick(f"{what}: {name} is an int beyond the float64 range",
                              reason=_REASON.get(name, name)) from None
        except (TypeError, ValueError):  # complex, or a Number float() does not take
            pass
    raise InvalidTick(f"{what}: {name} must be a number, got {type(value).__name__} "
                      f"{value!r:.40}", reason=_REASON.get(name, name))


def table_id(table: str) -> int:
    """The id of a table name; UnknownTable for anything else."""
    try:
        return T.TABLE_IDS[table]
    except (KeyError, TypeError):
        raise UnknownTable(f"unknown table {table!r}; tables are: trades, quotes") from None


def _reason_text(reason: int, table: int) -> str:
    return {
        T.REJECT_PRICE: "price must be finite and > 0" if table == T.TRADES
        else "bid and ask must be finite and > 0",
        T.REJECT_SIZE: "size must be finite and > 0" if table == T.TRADES
        else "bid_size and ask_size must be finite and > 0",
        T.REJECT_CROSSED: "bid > ask",
        T.REJECT_TS: "ts must be int nanoseconds since the epoch, after 1990 and at most a "
                     "day in the future",
    }.get(reason, T.REJECT_NAMES[reason])


def _check_fits(table: str, n: int, k: int, capacity: int) -> None:
    """A shard's table holds ``capacity`` rows: a batch with more for one shard could never
    be stored (even right after a roll), so it is refused before any row is written."""
    if n > capacity:
        raise InvalidInput(f"{table}: {n:,} rows of this batch go to shard {k}, more than its "
                           f"table holds (--capacity {capacity:,}); publish them in smaller "
                           f"batches")


def _cut_off(exc: Backpressure | WriterUnavailable, table: str, accepted: int, n: int,
             order: np.ndarray | None) -> Backpressure | WriterUnavailable:
    """The exception of the same class for a batch of ``n`` rows cut off after ``accepted``
    of them; ``order``: the order the rows were written in (None: as given)."""
    pending = (np.arange(accepted, n, dtype=np.int64) if order is None
               else np.sort(order[accepted:]).astype(np.int64))
    out = type(exc)(f"{table}: {accepted} of {n} rows were accepted before {exc}; resend only "
                    f"the other {n - accepted} (the exception's pending_rows)",
                    shard=exc.shard, seq=exc.seq, path=exc.path)
    out.accepted = accepted
    out.pending_rows = pending
    return out


_LIVE: "weakref.WeakSet[Producer]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A record names the pid that claimed it; a writer waits for a live claimer to finish
    # and pads over a dead one. A forked child killed mid-record must be seen as dead, so
    # it claims under its own pid, not its parent's.
    for p in list(_LIVE):
        p._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Producer:
    """Writes ticks into the inbound rings of a running database's shards.

    A Producer inherited by a forked child keeps working there (its records carry the
    child's pid, so the writer pads over them if the child dies mid-record)."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        """Attach to the database at ``path``.

        ``timeout`` is how long a publish waits for room in a full inbound ring (or for a
        restarting writer) before raising Backpressure / WriterUnavailable.
        """
        timeout = seconds(timeout, "Producer timeout", forever=True)
        path = check_db_path(path, "the Producer's database directory")
        with translate(path):
            self.manifest = read_manifest(path)
            self._rings = [InboundRing.attach(self.manifest.prefix, k)
                           for k in range(self.manifest.shards)]
            self._ctls = [Control.attach(self.manifest.prefix, k)
                          for k in range(self.manifest.shards)]
        # rows each shard's writer refused so far: flush() reports what it refuses after
        self._refused = [self._refusals(k) for k in range(len(self._ctls))]
        self.path = path
        self.timeout = timeout
        self.nshards = self.manifest.shards
        self._pid = os.getpid()
        self._routes: dict[tuple[str, str], tuple] = {}
        self._one = {"trades": self._trade, "quotes": self._quote}
        # per-tick fast path: (symbol, venue) -> (checked kernel entry, hdr64, data8, key, k)
        self._fast_trades: dict[tuple[str, str], tuple] = {}
        self._fast_quotes: dict[tuple[str, str], tuple] = {}
        self._entries: dict[int, object] = {}
        # rows per record by value-column count, per shard (max_record is fixed at creation)
        self._per_record = [{nv: (ring.max_record - L.REC_HEADER_BYTES) // (40 + 8 * nv)
                             for nv in (2, 4)} for ring in self._rings]
        _LIVE.add(self)

    def _forked(self) -> None:
        """In a forked child: claim records under this process's pid (the cached routes
        carry the parent's)."""
        self._pid = os.getpid()
        self._routes.clear()
        self._fast_trades.clear()
        self._fast_quotes.clear()

    # --- one tick -----------------------------------------------------------------------
    def publish(self, table: str, *, symbol=_MISSING, price=_MISSING, size=_MISSING,
                bid=_MISSING, ask=_MISSING, bid_size=_MISSING, ask_size=_MISSING, venue="",
                ts=None, **fields) -> None:
        """Publish one tick: ``publish("trades", symbol=, price=, size=, venue="", ts=now)``
        or ``publish("quotes", symbol=, bid=, ask=, bid_size=, ask_size=, venue="", ts=now)``.

        Values are numbers (int, float, numpy numbers); a str such as "1.5", a bool or None
        raises InvalidTick naming the field. ``ts`` is int nanoseconds since the epoch,
        from 1990-01-01T00:00:00Z to one day past now (both inclusive). Backpressure /
        WriterUnavailable (after ``timeout``) mean the tick was not written.
        """
        # Fast path: a (symbol, venue) seen before, plain values, nothing extra: one checked
        # kernel call (it reads the clock for ts = now itself, and checks the values).
        # Anything unusual, invalid or new goes to _publish_fields, which raises exactly
        # what it always did.
        if table == "trades":
            if (not fields and bid is _MISSING and ask is _MISSING and bid_size is _MISSING
                    and ask_size is _MISSING):
                try:
                    route = self._fast_trades.get((symbol, venue))
                except TypeError:  # unhashable: the general path names the field
                    route = None
                # `is float` first: the common case skips the set lookup
                if (route is not None
                        and (type(price) is float or type(price) in _PLAIN_NUMBERS)
                        and (type(size) is float or type(size) in _PLAIN_NUMBERS)):
                    t = 0 if ts is None else (ts if type(ts) is int and ts > 0 else -1)
                    if t >= 0:
                        entry, hdr64, data8, key, k = route
                        try:
                            code = entry(hdr64, data8, key, t, price, size)
                        except (TypeError, ValueError, OverflowError):
                            code = inbound.INVALID
                        if code >= 0:
                            return
                        if code != inbound.INVALID:
                            self._retry_tick(k, code, entry, hdr64, data8, key, t, price, size)
                            return
        elif table == "quotes":
            if not fields and price is _MISSING and size is _MISSING:
                try:
                    route = self._fast_quotes.get((symbol, venue))
                except TypeError:  # unhashable: the general path names the field
                    route = None
                if (route is not None
                        and (type(bid) is float or type(bid) in _PLAIN_NUMBERS)
                        and (type(ask) is float or type(ask) in _PLAIN_NUMBERS)
                        and (type(bid_size) is float or type(bid_size) in _PLAIN_NUMBERS)
                        and (type(ask_size) is float or type(ask_size) in _PLAIN_NUMBERS)):
                    t = 0 if ts is None else (ts if type(ts) is int and ts > 0 else -1)
                    if t >= 0:
                        entry, hdr64, data8, key, k = route
                        try:
                            code = entry(hdr64, data8, key, t, bid, ask, bid_size, ask_size)
                        except (TypeError, ValueError, OverflowError):
                            code = inbound.INVALID
                        if code >= 0:
                            return
                        if code != inbound.INVALID:
                            self._retry_tick(k, code, entry, hdr64, data8, key, t, bid, ask,
                                             bid_size, ask_size)
                            return
        given = {}
        for name, value in zip(_FIELDS, (symbol, price, size, bid, ask, bid_size, ask_size)):
            if value is not _MISSING:
                given[name] = value
        if venue is not _NO_VENUE:
            given["venue"] = venue
        if ts is not None:
            given["ts"] = ts
        given.update(fields)
        self._publish_fields(table, given)

    def _retry_tick(self, k: int, code: int, entry, *args) -> None:
        """The fast path met a full ring or a restarting writer: wait and retry (a closure
        in publish itself would make every call pay for its cells)."""
        self._wait_and_retry(k, lambda: entry(*args), code)

    def _publish_fields(self, table: str, fields: dict) -> None:
        """The general path of publish: every check in Python, with precise errors."""
        t = table_id(table)  # first: an unhashable table (a list) is UnknownTable too
        fn = self._one[T.TABLE_NAMES[t]]
        missing = sorted(_REQUIRED[t] - set(fields))
        unknown = sorted(set(fields) - _ALLOWED[t])
        if missing or unknown:
            what = "; ".join(x for x in (missing and f"missing {', '.join(missing)}",
                                         unknown and f"no column {', '.join(unknown)}") if x)
            raise InvalidTick(f"{table}: {what}; columns are "
                              f"{', '.join(T.COLUMNS[t][:-1])} (seq is assigned by wayy)",
                              reason="columns")
        fn(**fields)

    def _route(self, symbol: str, venue: str, rtype: int) -> tuple:
        self._check_open()
        check_symbol(symbol)
        check_venue(venue)
        check_new_venues(venue)
        k = shard_of(symbol, self.nshards)
        ring = self._rings[k]
        key = np.zeros(inbound.KEY_WORDS, np.int64)
        key[inbound.KEY_S0], key[inbound.KEY_S1] = name_words(symbol)
        key[inbound.KEY_E0], key[inbound.KEY_E1] = name_words(venue)
        key[inbound.KEY_PID] = self._pid
        key[inbound.KEY_TYPE] = rtype
        key[inbound.KEY_NVALS] = 2 if rtype == L.TYPE_TRADES else 4
        route = (k, ring.hdr64, ring.data8, key)
        if len(self._routes) < 1_000_000:
            self._routes[(symbol, venue, rtype)] = route
            trades = rtype == L.TYPE_TRADES
            entry = self._entries.get(rtype)
            if entry is None:
                if trades:
                    entry = inbound.entry_point(inbound.write_trade, ring.hdr64, ring.data8,
                                                key, 1, 1.0, 1.0)
                else:
                    entry = inbound.entry_point(inbound.write_quote, ring.hdr64, ring.data8,
                                                key, 1, 1.0, 1.0, 1.0, 1.0)
                self._entries[rtype] = entry
            fast = self._fast_trades if trades else self._fast_quotes
            fast[(symbol, venue)] = (entry, ring.hdr64, ring.data8, key, k)
        return route

    def _trade(self, symbol, price, size, venue="", ts=None) -> None:
        try:
            route = self._routes.get((symbol, venue, L.TYPE_TRADES))
        except TypeError:  # unhashable: _route names the field
            route = None
        route = route or self._route(symbol, venue, L.TYPE_TRADES)
        ts = time.time_ns() if ts is None else self._ts(ts, f"trade {symbol}")
        price = _number(price, "price", f"trade {symbol}")
        size = _number(size, "size", f"trade {symbol}")
        if not (0.0 < price < math.inf):
            raise InvalidTick(f"trade {symbol}: price {price} must be finite and > 0",
                              reason="price")
        if not (0.0 < size < math.inf):
            raise InvalidTick(f"trade {symbol}: size {size} must be finite and > 0",
                              reason="size")
        if inbound.write_one(route[1], route[2], route[3], ts, price, size, 0.0, 0.0) < 0:
            self._one_row_retry(route, ts, price, size, 0.0, 0.0)

    def _quote(self, symbol, bid, ask, bid_size, ask_size, venue="", ts=None) -> None:
        try:
            route = self._routes.get((symbol, venue, L.TYPE_QUOTES))
        except TypeError:  # unhashable: _route names the field
            route = None
        route = route or self._route(symbol, venue, L.TYPE_QUOTES)
        ts = time.time_ns() if ts is None else self._ts(ts, f"quote {symbol}")
        what = f"quote {symbol}"
        bid, ask = _number(bid, "bid", what), _number(ask, "ask", what)
        bs, az = _number(bid_size, "bid_size", what), _number(ask_size, "ask_size", what)
        if not (0.0 < bid < math.inf and 0.0 < ask < math.inf):
            raise InvalidTick(f"quote {symbol}: bid {bid} / ask {ask} must be finite and > 0",
                              reason="price")
        if not (0.0 < bs < math.inf and 0.0 < az < math.inf):
            raise InvalidTick(f"quote {symbol}: sizes {bs} / {az} must be finite and > 0",
                              reason="size")
        if bid > ask:
            raise InvalidTick(f"quote {symbol}: bid {bid} > ask {ask}", reason="crossed")
        if inbound.write_one(route[1], route[2], route[3], ts, bid, ask, bs, az) < 0:
            self._one_row_retry(route, ts, bid, ask, bs, az)

    @staticmethod
    def _ts(ts, what: str) -> int:
        """A tick's ts checked (``what``: "trade SYM" / "quote SYM", for the message)."""
        if isinstance(ts, (bool, float)) or not isinstance(ts, (int, np.integer)):
            raise InvalidTick(f"{what}: ts must be int nanoseconds since the epoch, got "
                              f"{ts!r}", reason="timestamp")
        ts = int(ts)
        if not T.MIN_TS_NS <= ts <= time.time_ns() + T.MAX_FUTURE_NS:
            raise InvalidTick(f"{what}: ts {ts} is before 1990 or more than a day in the "
                              f"future", reason="timestamp")
        return ts

    def _one_row_retry(self, route, ts, a, b, c, d) -> None:
        k, hdr64, data8, key = route
        code = inbound.write_one(hdr64, data8, key, ts, a, b, c, d)
        if code < 0:
            self._wait_and_retry(k, lambda: inbound.write_one(hdr64, data8, key, ts, a, b, c, d),
                                 code)

    # --- batches --------------------------------------------------------------------------
    def publish_batch(self, table: str, columns: Mapping[str, object]) -> int:
        """Publish equal-length columns (dict of arrays); returns the number of rows.

        Columns: ``symbol`` and the table's value columns are required; ``venue`` defaults
        to "" and ``ts`` to now. ``ts`` is int64 nanoseconds (or datetime64). Value columns
        must have a numeric dtype (strings, bools and objects raise InvalidTick).

        Every row is checked before anything is written. A batch larger than
        ``max_batch_rows(table)``, or spanning several shards, is written as several
        records; when Backpressure or WriterUnavailable cuts it off part way, the rows
        written so far stay written. The exception says how many ("N of M rows were
        accepted before ...") and carries ``accepted`` (that count) and ``pending_rows``
        (int64 indices into the batch, ascending, of the rows not written). A retry must
        send only those rows (index each column array with ``exc.pending_rows``), or the
        accepted rows are stored twice. ``accepted`` is 0 (nothing was written) when the
        batch fits one record of one shard.
        """
        if not self._rings:
            self._check_open()
        t = T.TABLE_IDS.get(table) if type(table) is str else None
        if t is None:
            t = table_id(table)
        if not isinstance(columns, Mapping):
            raise InvalidTick(f"publish_batch takes a dict of columns, got {type(columns).__name__}")
        keys = columns.keys()
        if not keys <= _ALLOWED[t]:
            unknown = set(columns) - _ALLOWED[t]
            raise UnknownTable(f"unknown column(s) {sorted(unknown)} for table {table}; "
                               f"columns are {sorted(_ALLOWED[t])} (seq is assigned by wayy)")
        if not keys >= _REQUIRED[t]:
            missing = _REQUIRED[t] - set(columns)
            raise InvalidTick(f"{table}: missing column(s) {sorted(missing)}")
        for c, v in columns.items():
            if isinstance(v, np.ma.MaskedArray) and np.ma.is_masked(v):
                # np.asarray would store whatever lies under the mask
                raise InvalidTick(f"{table}: column {c} is a masked array with masked rows: "
                                  f"fill them or drop those rows first")
        names = T.VALUE_COLUMNS[t]
        vals = [self._float_column(columns[c], c) for c in names]
        n = len(vals[0])
        ts = self._ts_column(columns.get("ts"), n)
        sym = to_name_array(columns["symbol"], "symbol", n)
        venues = columns.get("venue", "")
        ven = to_name_array(venues, "venue", n)
        check_new_venues(venues if isinstance(venues, str) else ven)
        if len(ts) != n or len(sym) != n or len(ven) != n or any(len(v) != n for v in vals):
            got = {c: len(v) for c, v in zip(names, vals)}
            got.update(ts=len(ts), symbol=len(sym), venue=len(ven))
            # only the columns given: a defaulted ts or venue takes the first column's length
            lengths = {c: got[c] for c in columns if c in got}
            raise InvalidTick(f"{table}: columns have unequal lengths {lengths}")
        if n == 0:
            return 0
        nvals = len(names)
        while len(vals) < T.MAX_VALUE_COLUMNS:
            vals.append(vals[0])
        # read-only views always: one kernel signature whatever the caller's arrays are
        sym8 = sym.view(np.uint8)
        sym8.flags.writeable = False
        ven8 = ven.view(np.uint8)
        ven8.flags.writeable = False
        rtype = L.TYPE_TRADES if t == T.TRADES else L.TYPE_QUOTES
        k = 0 if self.nshards == 1 else _one_shard(sym8, n, self.nshards)
        cap = self.manifest.capacity
        if k >= 0 and n <= self._per_record[k][nvals] and n <= cap:
            # the common case: one shard, one record -- check and write in one kernel call
            ring = self._rings[k]
            args = (ring.hdr64, ring.hdr32, ring.data8, ring.data32, self._pid, rtype, n, ts,
                    sym8, ven8, vals[0], vals[1], vals[2], vals[3], nvals)
            code = _check_and_write(*args, time.time_ns())
            if code >= 0:
                return n
            if code != inbound.INVALID:
                try:
                    self._retry_batch(k, code, args)
                except (Backpressure, WriterUnavailable) as exc:
                    raise _cut_off(exc, table, 0, n, None) from None
                return n
        row, reason = _first_bad_row(t, ts, vals[0], vals[1], vals[2], vals[3], nvals, n,
                                     time.time_ns())
        if row >= 0:
            raise InvalidTick(f"{table} row {row}: {_reason_text(reason, t)}", row=int(row),
                              reason=T.REJECT_NAMES[reason])
        if self.nshards == 1:
            _check_fits(table, n, 0, cap)
            try:
                self._write_rows(0, rtype, _NO_ROWS, n, ts, sym8, ven8, vals, nvals)
            except (Backpressure, WriterUnavailable) as exc:
                raise _cut_off(exc, table, exc.accepted, n, None) from None
            return n
        shards = np.empty(n, np.int64)
        shard_of_names(sym8, n, self.nshards, shards)
        order = np.argsort(shards, kind="stable")
        bounds = np.searchsorted(shards[order], np.arange(self.nshards + 1))
        per_shard = np.diff(bounds)
        k = int(per_shard.argmax())
        _check_fits(table, int(per_shard[k]), k, cap)  # before anything is written
        for k in range(self.nshards):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            if hi > lo:
                try:
                    self._write_rows(k, rtype, order[lo:hi], hi - lo, ts, sym8, ven8, vals,
                                     nvals)
                except (Backpressure, WriterUnavailable) as exc:
                    # shards are written in order, each in order: what went in is a prefix
                    raise _cut_off(exc, table, lo + exc.accepted, n, order) from None
        return n

    def _retry_batch(self, k: int, code: int, args: tuple) -> None:
        self._wait_and_retry(k, lambda: _check_and_write(*args, time.time_ns()), code)

    def max_batch_rows(self, table: str) -> int:
        """Rows that fit one inbound record: the largest batch that is visible atomically."""
        self._check_open()
        row_bytes = T.INBOUND_ROW_BYTES[table_id(table)]
        return (self._rings[0].max_record - L.REC_HEADER_BYTES) // row_bytes

    def _write_rows(self, k, rtype, rows, n, ts, sym8, ven8, vals, nvals) -> None:
        """Write ``n`` rows to shard ``k`` in records of at most ``max_record`` bytes, in
        order. Backpressure / WriterUnavailable get ``accepted``: the rows of this call that
        were written before it."""
        ring = self._rings[k]
        per = (ring.max_record - L.REC_HEADER_BYTES) // (40 + 8 * nvals)
        if rows.shape[0] == 0 and n > per:
            rows = np.arange(n, dtype=np.int64)
        for lo in range(0, n, per):
            sub = rows[lo : lo + per] if rows.shape[0] else rows
            m = min(per, n - lo)

            def attempt(sub=sub, m=m):
                return inbound.write_batch(ring.hdr64, ring.hdr32, ring.data8, ring.data32,
                                           self._pid, rtype, sub, m, ts, sym8, ven8,
                                           vals[0], vals[1], vals[2], vals[3], nvals)

            r = attempt()
            if r < 0:
                try:
                    self._wait_and_retry(k, attempt, r)
                except (Backpressure, WriterUnavailable) as exc:
                    exc.accepted = lo
                    raise

    @staticmethod
    def _float_column(values, name: str) -> np.ndarray:
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise InvalidTick(f"column {name} must be one-dimensional, got shape {arr.shape}")
        if arr.dtype.kind not in "iuf":
            raise InvalidTick(f"column {name} must be numeric, got dtype {arr.dtype}")
        out = np.ascontiguousarray(arr, dtype=np.float64)
        return out if out.flags.writeable else out.copy()

    @staticmethod
    def _ts_column(values, n: int) -> np.ndarray:
        if values is None:
            return np.full(n, time.time_ns(), np.int64)
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise InvalidTick(f"column ts must be one-dimensional, got shape {arr.shape}")
        if arr.dtype.kind == "M":
            try:
                arr = datetime64_ns(arr)
            except TimeRangeError as exc:
                raise InvalidTick(f"column ts: {exc}") from None
        elif arr.dtype.kind not in "iu":
            raise InvalidTick(f"column ts must be int64 nanoseconds since the epoch "
                              f"(or datetime64), got dtype {arr.dtype}")
        out = np.ascontiguousarray(arr, dtype=np.int64)
        return out if out.flags.writeable else out.copy()

    # --- backpressure ---------------------------------------------------------------------
    def _wait_and_retry(self, k: int, attempt, code: int) -> None:
        deadline = time.monotonic() + self.timeout
        delay = 20e-6
        while True:
            if code == inbound.TOO_LARGE:
                raise InvalidTick(f"record larger than shard {k}'s inbound ring allows")
            if time.monotonic() >= deadline:
                if code == inbound.NOT_ACCEPTING:
                    _ok, why = self._rings[k].accepting()
                    ended = self._run_ended()
                    if ended:
                        exc = RunEnded(
                            f"the database at {self.path} {ended} since this Producer "
                            f"attached; create a new Producer", shard=k, path=self.path)
                    else:
                        exc = WriterUnavailable(
                            f"shard {k} does not accept ticks ({why or 'writer not running'}) "
                            f"after waiting {self.timeout:g}s", shard=k, path=self.path)
                else:
                    exc = Backpressure(
                        f"shard {k} inbound ring stayed full for {self.timeout:g}s: its writer "
                        f"is not keeping up or not running (see: wayy status --db "
                        f"{self.path})", shard=k, path=self.path)
                exc.accepted = 0  # publish: the tick was not written
                exc.pending_rows = None
                raise exc
            time.sleep(delay)
            # the writer frees a full ring within microseconds of catching up: poll at a
            # fine grain rather than back off to milliseconds of idle producer
            delay = min(delay * 2, 200e-6)
            code = attempt()
            if code >= 0:
                return

    def _run_ended(self) -> str | None:
        """How this Producer's run of the database ended, or None while it runs: stopped or
        killed (nobody holds the database lock), or started again (a newer run's rings are
        new shared memory: this Producer's would never be drained again)."""
        if not lock_holder(self.path)[0]:
            return "is not running (stopped, or its supervisor died)"
        try:
            if read_manifest(self.path).started_ns != self.manifest.started_ns:
                return "was stopped and started again"
        except WayyError:
            pass
        return None

    # --- acknowledgement -----------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Wait until every tick published before this call is committed: written to the
        shard's write-ahead log and visible to queries and subscribers. ``publish`` returns
        once a tick is in the shard's inbound ring; a tick still there is lost if the whole
        database is killed, a committed one is not (docs/durability.md).

        Raises WriterUnavailable when ``timeout`` (default: the producer's) passes first
        (e.g. a writer stopped, or its disk full), and RowsRejected when a writer refused
        rows since this Producer's last flush (or its creation) -- a table full with
        ``--roll-fill 0``, or a shard's symbol table full: those rows are not stored. The
        counts are per shard, so they may include rows other producers published.
        """
        self._check_open()
        limit = (self.timeout if timeout is None
                 else seconds(timeout, "flush() timeout", forever=True))
        deadline = time.monotonic() + limit
        # what was claimed in each ring so far (this producer's ticks and maybe others'):
        # committed once the writer has released the ring up to there
        targets = [(k, ring, int(ring.hdr64[L.TAIL_I64])) for k, ring in enumerate(self._rings)]
        delay = 20e-6
        for k, ring, target in targets:
            while int(ring.hdr64[L.HEAD_I64]) < target:
                if time.monotonic() >= deadline:
                    ended = self._run_ended()
                    if ended:  # what the ring holds is never committed now
                        raise RunEnded(f"the database at {self.path} {ended} since this "
                                       f"Producer attached: shard {k}'s rows published "
                                       f"since its last commit are not stored; create a new "
                                       f"Producer", shard=k, path=self.path)
                    # a writer restarting after a crash drains the ring again: only a
                    # writer that is still not taking ticks at the deadline is named
                    ok, why = ring.accepting()
                    state = "" if ok else f" (its writer: {why or 'not running'})"
                    raise WriterUnavailable(f"shard {k} has not committed what was published "
                                            f"after {limit:g}s{state}; see: wayy status "
                                            f"--db {self.path}", shard=k, path=self.path)
                time.sleep(delay)
                delay = min(delay * 2, 1e-3)
        self._check_refusals()

    def _refusals(self, k: int) -> np.ndarray:
        """Shard ``k``'s rows refused after publish returned, by reason (a copy)."""
        got = np.array(self._ctls[k].rejects, dtype=np.int64)
        got[T.REJECT_DEAD_PRODUCER] = 0  # claims padded over: not rows refused
        return got

    def _check_refusals(self) -> None:
        refused = {}
        for k in range(len(self._ctls)):
            now = self._refusals(k)
            new = now - self._refused[k]
            self._refused[k] = now
            if new.any():
                refused[k] = {T.REJECT_NAMES[i]: int(c) for i, c in enumerate(new) if c > 0}
        if refused:
            what = "; ".join(f"shard {k}: " + ", ".join(f"{c} {r}" for r, c in d.items())
                             for k, d in refused.items())
            exc = RowsRejected(f"rows were refused after they were published ({what}); "
                               f"they are not stored. The counts are the shard's since this "
                               f"Producer's last flush and may include other producers' "
                               f"rows: see wayy status --db {self.path}", path=self.path,
                               rejected=refused)
            raise exc

    def _check_open(self) -> None:
        if not self._rings:
            raise InvalidInput(f"this Producer of {self.path} is closed; create a new one")

    def close(self) -> None:
        """Unmap the inbound rings (publish, publish_batch and flush then raise
        InvalidInput)."""
        for ring in self._rings:
            ring.close()
        self._rings = []
        for ctl in getattr(self, "_ctls", []):
            ctl.close()
        self._ctls = []
        self._routes.clear()
        self._fast_trades.clear()
        self._fast_quotes.clear()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
