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
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping

import numba
import numpy as np

from shm import inbound
from shm.ingest import row_reason
from shm.layout import inbound as L
from shm.layout import tables as T
from shm.shard import InboundRing
from wayy.errors import (
    Backpressure,
    InvalidTick,
    UnknownTable,
    WriterUnavailable,
    translate,
)
from wayy.manifest import read_manifest
from wayy.names import (
    check_symbol,
    check_venue,
    name_words,
    shard_of,
    shard_of_names,
    to_name_array,
)

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


class Producer:
    """Writes ticks into the inbound rings of a running database's shards."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        """Attach to the database at ``path``.

        ``timeout`` is how long a publish waits for room in a full inbound ring (or for a
        restarting writer) before raising Backpressure / WriterUnavailable.
        """
        with translate(path):
            self.manifest = read_manifest(path)
            self._rings = [InboundRing.attach(self.manifest.prefix, k)
                           for k in range(self.manifest.shards)]
        self.path = path
        self.timeout = float(timeout)
        self.nshards = self.manifest.shards
        self._pid = os.getpid()
        self._routes: dict[tuple[str, str], tuple] = {}
        self._one = {"trades": self._trade, "quotes": self._quote}

    # --- one tick -----------------------------------------------------------------------
    def publish(self, table: str, **fields) -> None:
        """Publish one tick: ``publish("trades", symbol=, price=, size=, venue="", ts=now)``
        or ``publish("quotes", symbol=, bid=, ask=, bid_size=, ask_size=, venue="", ts=now)``.
        """
        fn = self._one.get(table)
        if fn is None:
            table_id(table)
        try:
            fn(**fields)
        except TypeError as exc:
            raise InvalidTick(f"{table}: {exc}; columns are "
                              f"{', '.join(T.COLUMNS[table_id(table)][:-1])}") from None

    def _route(self, symbol: str, venue: str, rtype: int) -> tuple:
        check_symbol(symbol)
        check_venue(venue)
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
        return route

    def _trade(self, symbol, price, size, venue="", ts=None) -> None:
        route = (self._routes.get((symbol, venue, L.TYPE_TRADES))
                 or self._route(symbol, venue, L.TYPE_TRADES))
        ts = time.time_ns() if ts is None else self._ts(ts)
        price = float(price)
        size = float(size)
        if not (0.0 < price < math.inf):
            raise InvalidTick(f"trade {symbol}: price {price} must be finite and > 0",
                              reason="price")
        if not (0.0 < size < math.inf):
            raise InvalidTick(f"trade {symbol}: size {size} must be finite and > 0",
                              reason="size")
        if inbound.write_one(route[1], route[2], route[3], ts, price, size, 0.0, 0.0) < 0:
            self._one_row_retry(route, ts, price, size, 0.0, 0.0)

    def _quote(self, symbol, bid, ask, bid_size, ask_size, venue="", ts=None) -> None:
        route = (self._routes.get((symbol, venue, L.TYPE_QUOTES))
                 or self._route(symbol, venue, L.TYPE_QUOTES))
        ts = time.time_ns() if ts is None else self._ts(ts)
        bid, ask, bs, az = float(bid), float(ask), float(bid_size), float(ask_size)
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
    def _ts(ts) -> int:
        if ts is None:
            return time.time_ns()
        if isinstance(ts, (bool, float)) or not isinstance(ts, (int, np.integer)):
            raise InvalidTick(f"ts must be int nanoseconds since the epoch, got {ts!r}",
                              reason="timestamp")
        ts = int(ts)
        if not T.MIN_TS_NS <= ts <= time.time_ns() + T.MAX_FUTURE_NS:
            raise InvalidTick(f"ts {ts} is before 1990 or more than a day in the future",
                              reason="timestamp")
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
        to "" and ``ts`` to now. ``ts`` is int64 nanoseconds (or datetime64).
        """
        t = table_id(table)
        if not isinstance(columns, Mapping):
            raise InvalidTick(f"publish_batch takes a dict of columns, got {type(columns).__name__}")
        unknown = set(columns) - _ALLOWED[t]
        if unknown:
            raise UnknownTable(f"unknown column(s) {sorted(unknown)} for table {table}; "
                               f"columns are {sorted(_ALLOWED[t])} (seq is assigned by wayy)")
        missing = _REQUIRED[t] - set(columns)
        if missing:
            raise InvalidTick(f"{table}: missing column(s) {sorted(missing)}")
        vals = [self._float_column(columns[c], c) for c in T.VALUE_COLUMNS[t]]
        n = len(vals[0])
        ts = self._ts_column(columns.get("ts"), n)
        lengths = {c: len(v) for c, v in zip(T.VALUE_COLUMNS[t], vals)}
        lengths["ts"] = len(ts)
        sym = to_name_array(columns["symbol"], "symbol", n)
        lengths["symbol"] = len(sym)
        ven = to_name_array(columns.get("venue", ""), "venue", n)
        lengths["venue"] = len(ven)
        if len(set(lengths.values())) != 1:
            raise InvalidTick(f"{table}: columns have unequal lengths {lengths}")
        if n == 0:
            return 0
        while len(vals) < T.MAX_VALUE_COLUMNS:
            vals.append(vals[0])
        nvals = len(T.VALUE_COLUMNS[t])
        sym8 = sym.view(np.uint8)
        ven8 = ven.view(np.uint8)
        row, reason = _first_bad_row(t, ts, vals[0], vals[1], vals[2], vals[3], nvals, n,
                                     time.time_ns())
        if row >= 0:
            raise InvalidTick(f"{table} row {row}: {_reason_text(reason, t)}", row=int(row),
                              reason=T.REJECT_NAMES[reason])
        rtype = L.TYPE_TRADES if t == T.TRADES else L.TYPE_QUOTES
        if self.nshards == 1:
            self._write_rows(0, rtype, _NO_ROWS, n, ts, sym8, ven8, vals, nvals)
            return n
        shards = np.empty(n, np.int64)
        shard_of_names(sym8, n, self.nshards, shards)
        order = np.argsort(shards, kind="stable")
        bounds = np.searchsorted(shards[order], np.arange(self.nshards + 1))
        for k in range(self.nshards):
            lo, hi = int(bounds[k]), int(bounds[k + 1])
            if hi > lo:
                self._write_rows(k, rtype, order[lo:hi], hi - lo, ts, sym8, ven8, vals, nvals)
        return n

    def max_batch_rows(self, table: str) -> int:
        """Rows that fit one inbound record: the largest batch that is visible atomically."""
        row_bytes = T.INBOUND_ROW_BYTES[table_id(table)]
        return (self._rings[0].max_record - L.REC_HEADER_BYTES) // row_bytes

    def _write_rows(self, k, rtype, rows, n, ts, sym8, ven8, vals, nvals) -> None:
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
                self._wait_and_retry(k, attempt, r)

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
            arr = arr.astype("datetime64[ns]").view(np.int64)
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
                    raise WriterUnavailable(
                        f"shard {k} does not accept ticks ({why or 'writer not running'}) "
                        f"after waiting {self.timeout:g}s", shard=k, path=self.path)
                raise Backpressure(
                    f"shard {k} inbound ring stayed full for {self.timeout:g}s: its writer is "
                    f"not keeping up or not running (see: wayy status --db {self.path})",
                    shard=k, path=self.path)
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)
            code = attempt()
            if code >= 0:
                return

    def close(self) -> None:
        """Unmap the inbound rings."""
        for ring in self._rings:
            ring.close()
        self._rings = []
        self._routes.clear()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
