"""Reading a running database: ``db = wayy.attach(path)``, ``db["trades"].tail(20, "AAPL")``.

Every shard is mapped read-only. A query takes one commit snapshot per shard and reads only
committed rows, so it sees whole batches, never waits for a writer, and a writer never waits
for it. Results are copies (named numpy columns), safe to keep after the database moves on.

Tables read history on disk (``<db>/hist``, :mod:`wayy.history`) and memory as one: a shard's
rolled partitions come before its memory rows, memory rows already in history (a roll caught
between writing its partition and resetting the segment) are skipped, and a query that a roll
overtakes (the shard's generation moved) simply runs again. With no ``hist`` directory the
cost is one cached check, so memory-only queries stay as fast as before.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np

from shm import query
from shm.layout import shard as S
from shm.layout import tables as T
from shm.shard import ShardData
from wayy import history as H
from wayy.errors import (InvalidInput, NotRunning, UnknownTable, WayyError, import_pandas,
                         translate)
from wayy.manifest import Manifest, check_db_path, read_manifest
from wayy.names import check_symbol, check_venue, shard_of


_GEN = S.GENERATION_I64
ALIVE_CHECK_S = 0.5  # a query looks at most this often whether its database still runs


class Result:
    """Query result: equal-length named numpy columns in the table's column order."""

    def __init__(self, table: str, columns: dict[str, np.ndarray]) -> None:
        self.table = table
        self.columns = columns

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise UnknownTable(f"no column {name!r} in {self.table}; columns are "
                               f"{', '.join(self.columns)}") from None

    def __len__(self) -> int:
        return len(self.columns["ts"])

    @property
    def num_rows(self) -> int:
        return len(self)

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def keys(self):
        return self.columns.keys()

    def row(self, i: int) -> dict:
        """Row ``i`` as a dict of Python scalars."""
        return {k: v[i].item() for k, v in self.columns.items()}

    def to_pandas(self):
        """A pandas DataFrame (requires pandas); ``ts`` stays int64 nanoseconds."""
        return import_pandas().DataFrame(self.columns)

    def __repr__(self) -> str:
        return f"<wayy.Result {self.table}: {len(self)} rows, columns {list(self.columns)}>"


class Database:
    """A running database mapped read-only. Use :func:`attach`."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.path = manifest.path
        self.nshards = manifest.shards
        with translate(self.path):
            self.shards = [ShardData.attach(manifest.prefix, k) for k in range(self.nshards)]
        self._names: list[dict[str, np.ndarray | dict]] = [
            {"sym": np.empty(0, "U16"), "ven": np.empty(0, "U16"), "sym_ids": {}, "ven_ids": {}}
            for _ in range(self.nshards)
        ]
        self._sym_cache: dict[str, tuple[int, int]] = {}
        self.history = H.HistoryStore(self.path)
        self._all = tuple(range(self.nshards))
        # memoryviews read a header word as a Python int ~3x faster than numpy indexing
        self._hdr = [memoryview(d.hdr64) for d in self.shards]
        self._gens = list(self._generations(self._all))
        self._tables = {name: Table(self, name) for name in T.TABLE_NAMES}
        self._pid = os.getpid()
        self._subscriptions: list = []
        self._subs_made = 0  # subscriptions ever made here: db.run() notices new ones
        self._rings: dict = {}
        self._reg = None
        self._alive_due = time.monotonic() + ALIVE_CHECK_S

    def __getitem__(self, table: str) -> "Table":
        try:
            return self._tables[table]
        except (KeyError, TypeError):
            raise UnknownTable(f"unknown table {table!r}; tables are: "
                               f"{', '.join(T.TABLE_NAMES)}") from None

    @property
    def tables(self) -> tuple[str, ...]:
        return T.TABLE_NAMES

    # --- generations (a roll resets a shard's segment and bumps its generation) ------------
    def _generations(self, shards) -> tuple[int, ...]:
        return tuple([self._hdr[k][_GEN] for k in shards])

    def _sync(self, shards) -> tuple[int, ...]:
        """Generations of ``shards`` now. When one moved (a roll), that shard's names are
        read again and the history listing at once (the roll wrote its partition first)."""
        gens = self._generations(shards)
        moved = False
        for k, g in zip(shards, gens):
            if g != self._gens[k]:
                self._gens[k] = g
                self._names[k] = {"sym": np.empty(0, "U16"), "ven": np.empty(0, "U16"),
                                  "sym_ids": {}, "ven_ids": {}}
                moved = True
        if moved:
            self._sym_cache.clear()
            self.history.refresh()
        return gens

    # --- names ----------------------------------------------------------------------------
    def _refresh_names(self, k: int) -> dict:
        cache = self._names[k]
        d = self.shards[k]
        ns, nv = d.n_symbols(), d.n_venues()
        if ns != len(cache["sym"]):
            cache["sym"] = _decode_names(d.sym_names[:ns])
            cache["sym_ids"] = {s: i for i, s in enumerate(cache["sym"].tolist())}
        if nv != len(cache["ven"]):
            cache["ven"] = _decode_names(d.ven_names[:nv])
            cache["ven_ids"] = {s: i for i, s in enumerate(cache["ven"].tolist())}
        return cache

    def symbol_id(self, symbol: str) -> tuple[int, int]:
        """(shard, id) of a symbol; id -1 if the symbol has not ticked yet."""
        found = self._sym_cache.get(symbol)
        if found is not None:  # an interned id never changes
            return found
        check_symbol(symbol)
        k = shard_of(symbol, self.nshards)
        ids = self._names[k]["sym_ids"]
        sid = ids.get(symbol)
        if sid is None:
            sid = self._refresh_names(k)["sym_ids"].get(symbol, -1)
        if sid >= 0 and len(self._sym_cache) < 1_000_000:
            self._sym_cache[symbol] = (k, sid)
        return k, sid

    def symbols(self) -> list[str]:
        """Every symbol that has ticked, across shards and history, sorted."""
        out: set[str] = set()
        for k in range(self.nshards):
            out.update(self._refresh_names(k)["sym"].tolist())
        for p in self.history.partitions():
            names = p.names()[0]
            out.update(names[p.array("sym_rows") > 0].tolist())
        return sorted(out)

    # --- subscriptions (wayy.subscribe) -----------------------------------------------------
    def subscribe(self, table_or_channel, symbol: str | None = None, venue: str | None = None,
                  callback=None, filter=None, batch_size: int | None = None,
                  max_latency_ms: float | None = None, checkpoint=None, from_seq=None,
                  from_ts=None, idle: str = "backoff", on_overrun=None, on_error=None,
                  stop_on_error: bool = False, checkpoint_every: int | None = None,
                  checkpoint_ms: float = 1000.0, on_checkpoint=None, shards=None):
        """Follow committed ticks as they arrive: see :mod:`wayy.subscribe`.

        ``table_or_channel``: ``"trades"`` / ``"quotes"`` (with optional ``symbol``, ``venue``),
        a channel (``"ticks:AAPL"``, ``"quotes:MSFT:NASDAQ"``) or a list of channels.
        ``callback(item)`` gets a :class:`wayy.Tick` per row, or a :class:`wayy.Batch` when
        ``batch_size`` / ``max_latency_ms`` are given; without a callback, ``poll()`` or
        iterate. ``idle``: ``"backoff"`` (default), ``"spin"``, ``"yield"`` or ``"block"``.
        Start points: live (default), ``from_seq`` (an int for every shard, or per shard),
        ``from_ts``, or the cursors in ``checkpoint`` (a path, or a name stored under the
        database directory) when it exists. Returns a :class:`wayy.Subscription`; its
        ``hwm`` maps each followed shard to the seq at which live delivery began.
        ``shards``: follow only these shards (e.g. to split a table among processes).
        """
        from wayy.subscribe import subscribe

        return subscribe(self, table_or_channel, symbol=symbol, venue=venue, callback=callback,
                         filter=filter, batch_size=batch_size, max_latency_ms=max_latency_ms,
                         checkpoint=checkpoint, from_seq=from_seq, from_ts=from_ts, idle=idle,
                         on_overrun=on_overrun, on_error=on_error, stop_on_error=stop_on_error,
                         checkpoint_every=checkpoint_every, checkpoint_ms=checkpoint_ms,
                         on_checkpoint=on_checkpoint, shards=shards)

    def run(self, timeout: float | None = None) -> None:
        """Run every active callback subscription in this thread until they all stop,
        Ctrl-C / SIGTERM (which stop them cleanly: checkpoints written), or ``timeout``
        seconds (then they stay active). A callback that stops with ``stop_on_error``
        stops the others and its exception is raised here. Subscriptions made in this
        thread while it runs (in a callback, say) join it; those another thread runs are
        left to it. Called from a callback, it runs the other subscriptions (its own is
        mid-pass and goes on when the callback returns)."""
        from wayy.subscribe import _run

        _run([s for s in self._subscriptions if s.active and s.callback is not None], timeout,
             self)

    @property
    def subscriptions(self) -> list:
        """Active subscriptions made through this Database."""
        return [s for s in self._subscriptions if s.active]

    def _change_ring(self, k: int):
        """The change ring of shard ``k``, mapped read-only once per Database."""
        r = self._rings.get(k)
        if r is None:
            from shm.change_ring import ChangeRingReader
            from shm.shard import segment_name

            with translate(self.path):
                r = self._rings[k] = ChangeRingReader.attach(
                    segment_name(self.manifest.prefix, k, "changes"))
        return r

    def _registry(self):
        if self._reg is None:
            from shm.subscribers import Registry

            with translate(self.path):
                self._reg = Registry.open(self.manifest.prefix)
        return self._reg

    def _check_current(self, force: bool = False) -> None:
        """Raise NotRunning when the database this handle attached to has stopped or was
        started again (new shared memory: this mapping would answer from the old run's rows
        for ever). Looked at most every ALIVE_CHECK_S, so queries stay cheap; ``force``:
        look now (for rare calls such as subscribe)."""
        now = time.monotonic()
        if now < self._alive_due and not force:
            return
        if not self.shards:
            raise InvalidInput(f"this handle of {self.path} is closed; call wayy.attach again")
        self._alive_due = now + ALIVE_CHECK_S
        if not self._still_running():
            self._alive_due = 0.0
            raise NotRunning(f"the database at {self.path} has stopped or was started again "
                             f"since this handle attached it; call wayy.attach again",
                             path=self.path)

    def _still_running(self) -> bool:
        """True while the supervisor that this Database attached to still runs (a database
        stopped and started again has new segments: this mapping would never see a tick)."""
        from wayy.manifest import lock_holder

        running, pid = lock_holder(self.path)
        return running and (pid is None or pid == self.manifest.supervisor_pid)

    def starting_shards(self, shards=None) -> list[int]:
        """The shards (of ``shards``, default all) whose writer has not finished its first
        start: it may still be loading its write-ahead log back, so the shard's next seq and
        rows are not final yet. Empty once every writer has run (a restarting writer keeps
        its shard's rows in memory, so it does not count)."""
        from shm.errors import SegmentMissing
        from shm.layout import control as C
        from shm.shard import Control

        out = []
        with translate(self.path):
            for k in (self._all if shards is None else shards):
                try:
                    ctl = Control.attach(self.manifest.prefix, k)
                except SegmentMissing:
                    continue  # no writer control (stopping): the next read says NotRunning
                try:
                    if int(ctl.counters[C.C_STATE]) == C.STATE_CREATED:
                        out.append(k)
                finally:
                    ctl.close()
        return out

    def close(self) -> None:
        """Stop every subscription (checkpoints written), then unmap everything."""
        for sub in list(self._subscriptions):
            sub.stop()
        self._subscriptions = []
        for r in self._rings.values():
            r.close()
        self._rings = {}
        if self._reg is not None:
            self._reg.close()
            self._reg = None
        for h in self._hdr:
            h.release()
        self._hdr = []
        for d in self.shards:
            d.close()
        self.shards = []
        self.history.close()
        self._alive_due = 0.0  # the next query looks, and finds the handle closed

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<wayy.Database {self.path}: {self.nshards} shards>"


class Table:
    """One table across all shards, history on disk and memory together: ``len``, ``tail``,
    ``between``.

    Order of results: ``between`` (and ``tail`` without a symbol) returns rows in ``ts``
    order; rows with equal ``ts`` come in shard order, then ``seq`` order (a shard's history
    before its memory, as its seqs are older). ``tail`` with a symbol returns that symbol's
    rows in arrival (``seq``) order, as memory has always done.
    """

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self.id = T.TABLE_IDS[name]
        self.columns = T.COLUMNS[self.id]

    def __len__(self) -> int:
        """Rows in history and memory (a row in both during a roll counts once)."""
        db = self.db
        db._check_current()
        if time.monotonic() < db.history.empty_until:  # no history: memory only
            total = sum([d.committed(self.id) for d in db.shards])
            if [h[_GEN] for h in db._hdr] == db._gens:  # no roll since the last sync
                return total
        return self._consistent(db._all, self._count)

    def __repr__(self) -> str:
        return f"<wayy.Table {self.name}: {len(self)} rows>"

    # --- reading history and memory consistently ------------------------------------------
    def _consistent(self, shards, read):
        """``read()`` between two looks at the generations of ``shards``: a roll (segment
        reset) during the read makes it read again, so rows never vanish between a stale
        history listing and a reset segment, and never come from a half-reused one."""
        for _ in range(1000):
            gens = self.db._sync(shards)
            out = read()
            if self.db._generations(shards) == gens:
                return out
        raise WayyError(f"{self.name}: the database rolled 1000 times during one query",
                        path=self.db.path)

    def _hist(self) -> dict[int, list[H.Partition]]:
        """This table's partitions per shard (listing re-checked at most every refresh_s)."""
        self.db.history.poll()
        return self.db.history.by_shard(self.id)

    def _mem_lo(self, k: int, committed: int) -> int:
        """First memory row of shard ``k`` not already in history (seq > history's last)."""
        last = self.db.history.last_seq(self.id, k)
        if last < 0 or committed == 0:
            return 0
        seq = self.db.shards[k].cols[self.id]["seq"][:committed]
        return int(np.searchsorted(seq, last, side="right"))

    def _venue_id(self, k: int, venue: str) -> int:
        vid = self.db._names[k]["ven_ids"].get(venue)
        if vid is None:
            vid = self.db._refresh_names(k)["ven_ids"].get(venue, -1)
        return vid

    def _count(self) -> int:
        parts = self._hist()
        total = 0
        for k, d in enumerate(self.db.shards):
            c = d.committed(self.id)
            total += c - (self._mem_lo(k, c) if k in parts else 0)
        return total + sum(p.rows for ps in parts.values() for p in ps)

    def _gather(self, k: int, rows: np.ndarray | slice) -> dict[str, np.ndarray]:
        d = self.db.shards[k]
        cols = d.cols[self.id]
        names = self.db._refresh_names(k)
        out: dict[str, np.ndarray] = {}
        take = isinstance(rows, np.ndarray)
        for c in self.columns:
            v = cols[c].take(rows) if take else cols[c][rows]
            if c == "symbol":
                v = names["sym"][v]
            elif c == "venue":
                v = names["ven"][v]
            out[c] = v.copy() if isinstance(rows, slice) else v
        return out

    def _empty(self) -> Result:
        cols = {}
        for c in self.columns:
            d = self.db.shards[0].cols[self.id]
            cols[c] = np.empty(0, "U16") if c in ("symbol", "venue") else d[c][:0].copy()
        return Result(self.name, cols)

    # --- tail -------------------------------------------------------------------------------
    def tail(self, n: int = 20, symbol: str | None = None, venue: str | None = None) -> Result:
        """The last ``n`` rows (oldest first) matching ``symbol`` and ``venue`` when given,
        from memory and, when memory holds fewer, from history on disk.

        With a symbol this follows the per-symbol index in memory: O(n) whatever the table
        size; rows come in arrival order. Without one, the last ``n`` rows of every shard are
        merged by timestamp. A ``venue`` keeps looking further back until ``n`` rows of that
        venue are found (or there are no more).
        """
        if n.__class__ is not int or n < 0:
            n = H._check_n(n)
        if symbol is not None and symbol.__class__ is not str:
            check_symbol(symbol)  # InvalidName (a list, bytes ...), before any lookup
        self.db._check_current()
        if venue is None and time.monotonic() < self.db.history.empty_until:
            res = self._tail_memory_only(n, symbol)
            if res is not None:
                return res
        if venue is not None:
            check_venue(venue)
        if symbol is None:
            return self._consistent(self.db._all, lambda: self._tail_all(n, venue))
        k = self.db.symbol_id(symbol)[0]
        return self._consistent((k,), lambda: self._tail_symbol(n, symbol, venue))

    def _tail_memory_only(self, n: int, symbol: str | None) -> Result | None:
        """tail() when there is no history and no roll under way: the memory path alone, as
        fast as before history existed. None: take the general path.

        One look at the generations, after reading, is enough: if they still equal those
        the history listing was synced to, no reset happened before or during the read."""
        db = self.db
        if symbol is not None:
            found = db._sym_cache.get(symbol)
            if found is None or n == 0:
                return None
            k, sid = found
            d = db.shards[k]
            committed = d.committed(self.id)
            out = np.empty(min(n, committed), np.int64)  # n may be far beyond the rows
            got = query.tail_symbol(d.last[self.id], d.prev[self.id], committed,
                                    sid, len(out), out)
            res = Result(self.name, self._gather(k, out[:got]))
            # rows read before a reset of the generation this listing is synced to: valid
            return res if db._hdr[k][_GEN] == db._gens[k] else None
        parts = []
        for k, d in enumerate(db.shards):
            committed = d.committed(self.id)
            lo = max(0, committed - n)
            if committed > lo:
                parts.append(self._gather(k, slice(lo, committed)))
        res = self._merge(parts)
        if len(res) > n:
            res = Result(self.name, H.tail_of(res.columns, n))
        return res if [h[_GEN] for h in db._hdr] == db._gens else None

    def _tail_symbol(self, n: int, symbol: str, venue: str | None) -> Result:
        k, sid = self.db.symbol_id(symbol)
        parts = self._hist()
        mem = None
        if sid >= 0 and n:
            d = self.db.shards[k]
            committed = d.committed(self.id)
            lo = self._mem_lo(k, committed) if k in parts else 0
            rows = self._mem_tail_rows(k, sid, n, venue, lo, committed)
            if len(rows):
                mem = self._gather(k, rows)
        if not parts or not n:
            if mem is None:
                return self._empty()
            return Result(self.name, mem)
        pieces = []
        for s in sorted(parts.keys() | {k}):
            own = mem if s == k else None
            need = n - (len(own["ts"]) if own is not None else 0)
            old = self.db.history.shard_tail(parts[s], need, symbol, venue) \
                if need > 0 and s in parts else None
            got = [p for p in (old, own) if p is not None]
            if got:
                pieces.append(H.concat(got))
        return self._result(pieces, n, by_ts=False)

    def _mem_tail_rows(self, k: int, sid: int, n: int, venue: str | None, lo: int,
                       committed: int) -> np.ndarray:
        """Memory rows (>= lo) of the last ``n`` of symbol ``sid`` (and venue), ascending."""
        d = self.db.shards[k]
        vid = -1
        if venue is not None and (vid := self._venue_id(k, venue)) < 0:
            return np.empty(0, np.int64)
        want = min(n, committed)  # n may be far beyond the rows there are
        while True:
            out = np.empty(want, np.int64)
            got = query.tail_symbol(d.last[self.id], d.prev[self.id], committed, sid, want,
                                    out)
            rows = out[:got]
            cut = int(np.searchsorted(rows, lo)) if lo else 0
            rows = rows[cut:]
            if vid < 0:
                return rows
            match = rows[d.cols[self.id]["venue"].take(rows) == vid]
            if len(match) >= n or got < want or cut or want >= committed:
                # enough, or no older rows left
                return match[len(match) - n:] if len(match) > n else match
            want = min(want * 4, committed)

    def _tail_all(self, n: int, venue: str | None) -> Result:
        parts = self._hist()
        pieces = []
        shards = sorted(parts.keys() | set(range(self.db.nshards))) if n else []
        for s in shards:
            got = []
            if s < self.db.nshards:
                d = self.db.shards[s]
                committed = d.committed(self.id)
                lo = self._mem_lo(s, committed) if s in parts else 0
                if venue is None:
                    lo = max(lo, committed - n)
                    if committed > lo:
                        got.append(self._gather(s, slice(lo, committed)))
                elif (vid := self._venue_id(s, venue)) >= 0:
                    cols = d.cols[self.id]
                    rows = H.scan_back(cols["symbol"], cols["venue"], lo, committed, -1, vid, n)
                    if len(rows):
                        got.append(self._gather(s, rows))
            need = n - (len(got[0]["ts"]) if got else 0)
            if need > 0 and s in parts:
                old = self.db.history.shard_tail(parts[s], need, None, venue)
                if old is not None:
                    got.insert(0, old)
            if got:
                pieces.append(H.concat(got))
        return self._result(pieces, n, by_ts=True)

    def _result(self, pieces: list[dict[str, np.ndarray]], n: int, by_ts: bool) -> Result:
        """Per-shard pieces (each in seq order) -> the last ``n`` rows, merged by ts when
        ``by_ts`` or when several shards contributed (else in seq order)."""
        if not pieces:
            return self._empty()
        cols = H.merge_by_ts(pieces) if by_ts or len(pieces) > 1 else pieces[0]
        return Result(self.name, H.tail_of(cols, n))

    # --- between ----------------------------------------------------------------------------
    def between(self, start_ts: int | None = None, end_ts: int | None = None,
                symbol: str | None = None, venue: str | None = None) -> Result:
        """Rows with start_ts <= ts < end_ts (either bound may be None) from history and
        memory, in timestamp order (equal timestamps: shard, then seq order); only
        ``symbol``'s / ``venue``'s rows when given. Partitions and memory blocks whose ts
        range cannot overlap are skipped unread.

        Bounds are int nanoseconds since the epoch or numpy.datetime64 (any unit). A bound
        beyond the int64 nanosecond range (before 1677 or after 2262) is no bound on that
        side: ``end_ts=2**70`` is the same as ``end_ts=None`` (and a start after 2262 or an
        end before 1677 selects nothing). NaT and non-integers raise InvalidInput."""
        start = _ts_bound(start_ts, "start_ts", np.iinfo(np.int64).min)
        end = _ts_bound(end_ts, "end_ts", np.iinfo(np.int64).max)
        if venue is not None:
            check_venue(venue)
        db = self.db
        db._check_current()
        if time.monotonic() < db.history.empty_until:  # no history: memory only
            res = self._between(start, end, symbol, venue, {})
            if [h[_GEN] for h in db._hdr] == db._gens:  # no roll since the last sync
                return res
        if symbol is None:
            return self._consistent(db._all, lambda: self._between(start, end, None, venue))
        k = db.symbol_id(symbol)[0]
        return self._consistent((k,), lambda: self._between(start, end, symbol, venue))

    def _between(self, start: int, end: int, symbol: str | None, venue: str | None,
                 parts: dict[int, list[H.Partition]] | None = None) -> Result:
        if symbol is not None:
            k, sid = self.db.symbol_id(symbol)
            mem = {k: sid} if sid >= 0 else {}
        else:
            mem = dict.fromkeys(self.db._all, -1)
        if parts is None:
            parts = self._hist()
        pieces = []
        shards = sorted(parts.keys() | mem.keys()) if parts else list(mem)
        for s in shards:
            for p in parts.get(s, ()):
                got = H.part_between(p, start, end, symbol, venue)
                if got is not None:
                    pieces.append(got)
            if s in mem:
                got = self._mem_between(s, mem[s], start, end, venue, s in parts)
                if got is not None:
                    pieces.append(got)
        return self._merge(pieces)

    def _mem_between(self, k: int, sid: int, start: int, end: int, venue: str | None,
                     has_hist: bool) -> dict[str, np.ndarray] | None:
        d = self.db.shards[k]
        vid = -1
        if venue is not None and (vid := self._venue_id(k, venue)) < 0:
            return None
        committed = d.committed(self.id)
        cols = d.cols[self.id]
        rows = query.between_rows(cols["ts"], d.blk_min[self.id], d.blk_max[self.id],
                                  committed, start, end, cols["symbol"], sid)
        if has_hist and len(rows):
            rows = rows[np.searchsorted(rows, self._mem_lo(k, committed)):]
        if vid >= 0 and len(rows):
            rows = rows[cols["venue"].take(rows) == vid]
        if len(rows) == 0:
            return None
        if query.is_contiguous(rows):
            return self._gather(k, slice(int(rows[0]), int(rows[-1]) + 1))
        return self._gather(k, rows)

    def _merge(self, parts: list[dict[str, np.ndarray]]) -> Result:
        if not parts:
            return self._empty()
        # stable: equal timestamps keep shard-then-seq order; near-sorted input is cheap
        return Result(self.name, H.merge_by_ts(parts))


def _decode_names(raw: np.ndarray) -> np.ndarray:
    """S16 names -> the narrowest 'U' array that holds them (results copy names per row)."""
    width = max(1, int(np.char.str_len(raw).max())) if len(raw) else 1
    return raw.astype(f"U{width}")


_I64_MIN, _I64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
# exact nanoseconds of numpy's fixed-length datetime64 units; 'Y' and 'M' (not fixed) go
# through days, and the units below a nanosecond divide instead
_NS_PER_UNIT = {"W": 7 * 86_400 * 10**9, "D": 86_400 * 10**9, "h": 3_600 * 10**9,
                "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_UNITS_PER_NS = {"ps": 10**3, "fs": 10**6, "as": 10**9}
# years / months from 1970 past which a datetime64 is certainly outside int64 nanoseconds
# (1677-09-21 .. 2262-04-11), so its days need not be computed (they could overflow too)
_BEYOND_NS = {"Y": 300, "M": 300 * 12}


def _ts_bound(v, what: str, default: int) -> int:
    """A between() bound as int64 nanoseconds, clamped to the int64 range.

    Clamping keeps the answer exact: every stored ts is an int64 (in fact 1990 .. a little
    past now), so a start below the range or an end above it excludes nothing, and a start
    above it or an end below it matches nothing, just as the unclamped bound would. A
    datetime64 is converted exactly (numpy's own cast to ns wraps around silently outside
    the range); a fraction of a nanosecond rounds up, which is exact for ``>=`` and ``<``
    on integer timestamps."""
    if v is None:
        return int(default)
    if isinstance(v, np.datetime64):
        if np.isnat(v):
            raise InvalidInput(f"{what} is NaT (not a time); pass None for no bound")
        unit, count = np.datetime_data(v.dtype)
        n = int(v.astype(np.int64)) * count
        if unit in _BEYOND_NS:
            if abs(n) > _BEYOND_NS[unit]:
                return _I64_MAX if n > 0 else _I64_MIN
            unit, n = "D", int(v.astype("datetime64[D]").astype(np.int64))
        if unit in _NS_PER_UNIT:
            ns = n * _NS_PER_UNIT[unit]
        elif unit in _UNITS_PER_NS:
            ns = -(-n // _UNITS_PER_NS[unit])
        else:  # "generic": a datetime64 without a unit is a count of nothing in particular
            raise InvalidInput(f"{what} must be int nanoseconds since the epoch (or "
                               f"numpy.datetime64 with a unit), got {v!r}")
        return min(max(ns, _I64_MIN), _I64_MAX)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidInput(f"{what} must be int nanoseconds since the epoch (or "
                           f"numpy.datetime64), got {v!r}")
    return min(max(int(v), _I64_MIN), _I64_MAX)


def attach(path: str) -> Database:
    """Map the running database at ``path`` read-only (NotRunning if it is not running)."""
    path = check_db_path(path, "attach()'s database directory")
    with translate(path):
        return Database(read_manifest(path))
