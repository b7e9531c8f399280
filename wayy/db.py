"""Reading a running database: ``db = wayy.attach(path)``, ``db["trades"].tail(20, "AAPL")``.

Every shard is mapped read-only. A query takes one commit snapshot per shard and reads only
committed rows, so it sees whole batches, never waits for a writer, and a writer never waits
for it. Results are copies (named numpy columns), safe to keep after the database moves on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from shm import query
from shm.layout import tables as T
from shm.shard import ShardData
from wayy.errors import InvalidInput, UnknownTable, translate
from wayy.manifest import Manifest, read_manifest
from wayy.names import check_symbol, check_venue, shard_of


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
        import pandas as pd

        return pd.DataFrame(self.columns)

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
        self._tables = {name: Table(self, name) for name in T.TABLE_NAMES}
        self._pid = os.getpid()
        self._subscriptions: list = []
        self._rings: dict = {}
        self._reg = None

    def __getitem__(self, table: str) -> "Table":
        try:
            return self._tables[table]
        except (KeyError, TypeError):
            raise UnknownTable(f"unknown table {table!r}; tables are: "
                               f"{', '.join(T.TABLE_NAMES)}") from None

    @property
    def tables(self) -> tuple[str, ...]:
        return T.TABLE_NAMES

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
        """Every symbol that has ticked, across shards, sorted."""
        out: list[str] = []
        for k in range(self.nshards):
            out.extend(self._refresh_names(k)["sym"].tolist())
        return sorted(out)

    # --- subscriptions (wayy.subscribe) -----------------------------------------------------
    def subscribe(self, table_or_channel, symbol: str | None = None, venue: str | None = None,
                  callback=None, filter=None, batch_size: int | None = None,
                  max_latency_ms: float | None = None, checkpoint=None, from_seq=None,
                  from_ts=None, idle: str = "backoff", on_overrun=None, on_error=None,
                  stop_on_error: bool = False, checkpoint_every: int | None = None,
                  checkpoint_ms: float = 1000.0, on_checkpoint=None):
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
        """
        from wayy.subscribe import subscribe

        return subscribe(self, table_or_channel, symbol=symbol, venue=venue, callback=callback,
                         filter=filter, batch_size=batch_size, max_latency_ms=max_latency_ms,
                         checkpoint=checkpoint, from_seq=from_seq, from_ts=from_ts, idle=idle,
                         on_overrun=on_overrun, on_error=on_error, stop_on_error=stop_on_error,
                         checkpoint_every=checkpoint_every, checkpoint_ms=checkpoint_ms,
                         on_checkpoint=on_checkpoint)

    def run(self, timeout: float | None = None) -> None:
        """Run every active callback subscription in this thread until they all stop,
        Ctrl-C / SIGTERM (which stop them cleanly: checkpoints written), or ``timeout``
        seconds (then they stay active). A callback that stops with ``stop_on_error``
        stops the others and its exception is raised here."""
        from wayy.subscribe import _run

        _run([s for s in self._subscriptions if s.active and s.callback is not None], timeout)

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

    def _still_running(self) -> bool:
        """True while the supervisor that this Database attached to still runs (a database
        stopped and started again has new segments: this mapping would never see a tick)."""
        from wayy.manifest import lock_holder

        running, pid = lock_holder(self.path)
        return running and (pid is None or pid == self.manifest.supervisor_pid)

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
        for d in self.shards:
            d.close()
        self.shards = []

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<wayy.Database {self.path}: {self.nshards} shards>"


class Table:
    """One table across all shards: ``len``, ``tail``, ``between``."""

    def __init__(self, db: Database, name: str) -> None:
        self.db = db
        self.name = name
        self.id = T.TABLE_IDS[name]
        self.columns = T.COLUMNS[self.id]

    def __len__(self) -> int:
        return sum(d.committed(self.id) for d in self.db.shards)

    def __repr__(self) -> str:
        return f"<wayy.Table {self.name}: {len(self)} rows>"

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

    def tail(self, n: int = 20, symbol: str | None = None, venue: str | None = None) -> Result:
        """The last ``n`` committed rows (oldest first), of one symbol if given.

        With a symbol this follows the per-symbol index: O(n) whatever the table size. Without
        one, the last ``n`` rows of every shard are merged by timestamp. ``venue`` filters
        the rows found (it may then return fewer than ``n``).
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidInput(f"n must be a non-negative int, got {n!r}")
        n = int(n)
        if venue is not None:
            check_venue(venue)
        if symbol is not None:
            k, sid = self.db.symbol_id(symbol)
            if sid < 0 or n == 0:
                return self._empty()
            d = self.db.shards[k]
            committed = d.committed(self.id)
            out = np.empty(n, np.int64)
            got = query.tail_symbol(d.last[self.id], d.prev[self.id], committed, sid, n, out)
            res = Result(self.name, self._gather(k, out[:got]))
        else:
            parts = []
            for k, d in enumerate(self.db.shards):
                committed = d.committed(self.id)
                lo = max(0, committed - n)
                if committed > lo:
                    parts.append(self._gather(k, slice(lo, committed)))
            res = self._merge(parts)
            if len(res) > n:
                res = Result(self.name, {c: v[len(res) - n:] for c, v in res.columns.items()})
        if venue is not None:
            keep = res.columns["venue"] == venue
            res = Result(self.name, {c: v[keep] for c, v in res.columns.items()})
        return res

    def between(self, start_ts: int | None = None, end_ts: int | None = None,
                symbol: str | None = None) -> Result:
        """Committed rows with start_ts <= ts < end_ts (either bound may be None), in
        timestamp order, merged across shards; one symbol's rows if ``symbol`` is given."""
        start = _ts_bound(start_ts, "start_ts", np.iinfo(np.int64).min)
        end = _ts_bound(end_ts, "end_ts", np.iinfo(np.int64).max)
        if symbol is not None:
            k, sid = self.db.symbol_id(symbol)
            if sid < 0:
                return self._empty()
            shards = [(k, sid)]
        else:
            shards = [(k, -1) for k in range(self.db.nshards)]
        parts = []
        for k, sid in shards:
            d = self.db.shards[k]
            committed = d.committed(self.id)
            cols = d.cols[self.id]
            rows = query.between_rows(cols["ts"], d.blk_min[self.id], d.blk_max[self.id],
                                      committed, start, end, cols["symbol"], sid)
            if len(rows) == 0:
                continue
            if query.is_contiguous(rows):
                parts.append(self._gather(k, slice(int(rows[0]), int(rows[-1]) + 1)))
            else:
                parts.append(self._gather(k, rows))
        return self._merge(parts)

    def _merge(self, parts: list[dict[str, np.ndarray]]) -> Result:
        if not parts:
            return self._empty()
        if len(parts) == 1:
            cols = parts[0]
        else:
            cols = {c: np.concatenate([p[c] for p in parts]) for c in self.columns}
        ts = cols["ts"]
        if not query.is_sorted(ts):
            # stable: equal timestamps keep shard-then-seq order; near-sorted input is cheap
            order = np.argsort(ts, kind="stable")
            cols = {c: v[order] for c, v in cols.items()}
        return Result(self.name, cols)


def _decode_names(raw: np.ndarray) -> np.ndarray:
    """S16 names -> the narrowest 'U' array that holds them (results copy names per row)."""
    width = max(1, int(np.char.str_len(raw).max())) if len(raw) else 1
    return raw.astype(f"U{width}")


def _ts_bound(v, what: str, default: int) -> int:
    if v is None:
        return int(default)
    if isinstance(v, np.datetime64):
        return int(v.astype("datetime64[ns]").astype(np.int64))
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise InvalidInput(f"{what} must be int nanoseconds since the epoch (or "
                           f"numpy.datetime64), got {v!r}")
    return int(v)


def attach(path: str) -> Database:
    """Map the running database at ``path`` read-only (NotRunning if it is not running)."""
    with translate(path):
        return Database(read_manifest(path))
