"""Local subscribers: every committed tick of the followed channels, in order, exactly once.

    db = wayy.attach("/data/markets")
    sub = db.subscribe("ticks:AAPL", callback=on_trade)            # per tick
    sub = db.subscribe("trades", callback=on_batch, batch_size=1000,
                       max_latency_ms=5)                            # columnar batches
    db.run()                                                        # until Ctrl-C / stop()

    with db.subscribe("quotes", symbol="MSFT") as sub:              # no callback:
        item = sub.poll(timeout=1.0)                                # poll ...
        for tick in sub: ...                                        # ... or iterate

One core, three faces (poll, iteration, callbacks). The core follows each shard's change ring
(one record per committed batch, ``shm.change_ring``) with ``shm.subscribers.follow``: the
ring says where new rows are, the columns hold them, and the seq is the one authority — so a
subscriber that was lapped, or that starts from a checkpoint, a seq or a time, backfills from
the columns and meets the live ring with no gap and no duplicate (see ``shm/subscribers.py``).

What is delivered is an *item*: a :class:`Tick` (per-tick mode, the default) or a
:class:`Batch` (batch mode: ``batch_size`` and/or ``max_latency_ms``). Within a shard, ticks
come in seq order; batches are per (shard, table), each in seq order. Shards are independent.

Idle strategies (Aeron's): ``spin`` polls without pause; ``yield`` gives the CPU away between
empty polls; ``block`` sleeps on the rings' futex words (woken by the writer, which makes a
wake-up call only while someone sleeps); ``backoff`` (the default) polls for ~10 us, then
sleeps like ``block`` — so a busy subscriber reacts in microseconds and an idle one costs
no CPU. Spinning subscribers starve a writer on a machine with few cores: prefer the default.
Following one ring, the waiting itself runs in a ring kernel (``spin_wait``, ``wait_once``).

Exactly-once with ``checkpoint=``: the per-shard, per-table cursors (next seq to deliver) are
written atomically (temporary file, fsync, rename) every ``checkpoint_ms`` (and every
``checkpoint_every`` deliveries if set) and on stop; a restarted subscriber resumes there. A
process killed between two checkpoints is handed the items after the last checkpoint again:
to make the *effects* exactly-once, keep your own state in the checkpoint with
``on_checkpoint`` (called just before each write; flush your output there and return what you
need to roll back to) and read it back from ``sub.state`` at start — the rows delivered since
are then delivered again to a state that has not seen them.
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import math
import os
import re
import signal
import threading
from threading import get_ident
import time
import zlib
from collections.abc import Iterable, Iterator
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np

from shm import change_ring as CR
from shm import inbound
from shm import subscribers as K
from shm.layout import change_ring as CRL
from shm.layout import shard as S
from shm.layout import subscribers as RL
from shm.layout import tables as T
from wayy.channels import Channel, channel_of, format_channel
from wayy.errors import (CorruptData, InvalidInput, NotRunning, WayyError, import_pandas,
                         translate)
from wayy.manifest import read_database_id
from wayy.names import shard_of
from wayy.times import RANGE_TEXT, TimeRangeError, datetime64_ns_scalar

log = logging.getLogger("wayy.subscribe")

IDLE_STRATEGIES = RL.IDLE_NAMES  # spin, yield, backoff, block
TICK_FIELDS = ("timestamp", "symbol", "venue", "price", "size", "bid", "ask", "bid_size",
               "ask_size", "seq", "shard", "table")
DEFAULT_BATCH_LATENCY_MS = 1000.0  # batch_size without max_latency_ms: a partial batch waits
CHECKPOINT_FORMAT = 1
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")  # a name stored under DB/checkpoints

# tuning (the benchmarks in benchmarks/bench_subscribe.py measured these)
TICK_MAX_ROWS = 4096  # rows per follow call in tick mode: bounds the first tick's latency
SMALL_RUN = 16  # runs up to this many rows are read row by row (memoryview reads)
BATCH_MAX_ROWS = 1 << 16  # rows per follow call in batch mode
MAX_SCAN = 1 << 18  # rows a follow call may look at (filtering / backfill): bounds one call
# seqs read back from history per pass: a long replay still lets run()'s deadline, other
# shards and housekeeping have their turn (tick callbacks cost ~1 us a row, batches far less)
HISTORY_TICK_SEQS = 1 << 16
HISTORY_BATCH_SEQS = 1 << 20
HISTORY_PASS_NS = 20_000_000  # and delivered for about this long per pass
# Backoff: poll briefly, then sleep on the futex. Short on purpose: three subscribers that
# each spin for tens of microseconds after every tick take the cores a writer needs (at 10k
# ticks/s they would never sleep at all). No sched_yield stage (Aeron has one): on a busy
# machine a yield hands the core to another task for its whole time slice, milliseconds, and
# a tick that comes meanwhile waits for it; a sleeper is woken (and preempts) at once.
BACKOFF_SPIN_NS = 10_000  # one followed ring: poll this long in a kernel (no GIL held)
BACKOFF_SPINS = 10  # several rings: empty passes of the loop (~1 us each) before sleeping
BACKOFF_MISSES = 4  # polls in a row that found nothing: then sleep at once, ...
BACKOFF_PROBE = 8  # ... and poll again only every this many times the loop goes idle
BACKOFF_HIT_NS = 30_000  # ... or as soon as a sleep ends this soon (a wake-up ~10-20 us)
SPIN_SLICE_NS = 100_000  # "spin" on one ring: kernel polls of at most this, between passes
PARK_MAX_NS = 100_000_000  # longest sleep: heartbeats, deadlines and signals stay timely
HOUSEKEEP_NS = 50_000_000  # registry counters and heartbeat at least this often
ALIVE_CHECK_NS = 1_000_000_000  # is the database still running?
STARTING_WAIT_S = 120.0  # a start point past a starting shard's next seq waits this long
ERROR_LOG_FIRST = 10  # callback errors logged in full; then one in ERROR_LOG_EVERY
ERROR_LOG_EVERY = 1000


# --- items ---------------------------------------------------------------------------------------

try:  # the C accessor namedtuple uses
    from collections import _tuplegetter as _getter  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    def _getter(i, doc):
        return property(itemgetter(i), doc=doc)

_TICK_INDEX = {name: i for i, name in enumerate(TICK_FIELDS)}
_TICK_INDEX["ts"] = 0
_TRADE_KEYS = ("timestamp", "symbol", "venue", "price", "size", "seq", "shard", "table")
_QUOTE_KEYS = ("timestamp", "symbol", "venue", "bid", "ask", "bid_size", "ask_size", "seq",
               "shard", "table")


class Tick(tuple):
    """One delivered row: the original design's tick fields plus ``seq``, ``shard``, ``table``.

    ``tick.price`` and ``tick["price"]`` both work (``ts`` is ``timestamp``). Fields a table
    does not have are None: a trade has no bid/ask, a quote no price/size. ``to_dict()`` gives
    the JSON tick of the wire format (only the fields of its table).
    """

    __slots__ = ()
    _fields = TICK_FIELDS

    timestamp = _getter(0, "ns since the epoch (UTC)")
    ts = _getter(0, "alias of timestamp")
    symbol = _getter(1, "symbol")
    venue = _getter(2, "venue ('' when none was given)")
    price = _getter(3, "trade price (None for quotes)")
    size = _getter(4, "trade size (None for quotes)")
    bid = _getter(5, "quote bid (None for trades)")
    ask = _getter(6, "quote ask (None for trades)")
    bid_size = _getter(7, "quote bid size (None for trades)")
    ask_size = _getter(8, "quote ask size (None for trades)")
    seq = _getter(9, "the row's seq in its shard")
    shard = _getter(10, "the shard that owns the symbol")
    table = _getter(11, "'trades' or 'quotes'")

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, _TICK_INDEX[key])
            except KeyError:
                raise KeyError(f"tick has no field {key!r}; fields are "
                               f"{', '.join(TICK_FIELDS)}") from None
        return tuple.__getitem__(self, key)

    def get(self, key: str, default=None):
        i = _TICK_INDEX.get(key)
        return default if i is None else tuple.__getitem__(self, i)

    def keys(self) -> tuple[str, ...]:
        return _TRADE_KEYS if tuple.__getitem__(self, 11) == "trades" else _QUOTE_KEYS

    def to_dict(self) -> dict:
        """The fields of this tick's table, as a dict (the JSON tick)."""
        return {k: tuple.__getitem__(self, _TICK_INDEX[k]) for k in self.keys()}

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={tuple.__getitem__(self, _TICK_INDEX[k])!r}" for k in self.keys())
        return f"Tick({body})"


class Batch:
    """Rows of one table of one shard, as columns, in seq order.

    ``batch["price"]`` is a numpy array: a zero-copy read-only view of shared memory when the
    rows are consecutive in the table (a whole table followed, nothing filtered), else a copy.
    ``batch["symbol"]`` / ``batch["venue"]`` decode names; ``"symbol_id"`` / ``"venue_id"``
    are the raw per-shard ids. Iterating a batch gives :class:`Tick` objects.
    """

    __slots__ = ("shard", "table", "zero_copy", "_cols", "_names", "_decoded", "_gen",
                 "_gen0")

    def __init__(self, shard: int, table: str, cols: dict, names: tuple, zero_copy: bool,
                 gen: np.ndarray | None = None, gen0: int = 0) -> None:
        self.shard = shard
        self.table = table
        self.zero_copy = zero_copy
        self._cols = cols
        self._names = names  # (symbol names, venue names) of the shard: numpy str arrays
        self._decoded: dict = {}
        self._gen = gen if zero_copy else None  # the segment's generation word (views only)
        self._gen0 = gen0

    @property
    def valid(self) -> bool:
        """Whether the rows are still the ones delivered: always for a copy; for zero-copy
        views, until the shard rolls (a roll reuses the memory). A callback that works on
        views for long, or keeps them, checks this after reading (or copies first)."""
        return self._gen is None or int(self._gen[0]) == self._gen0

    @property
    def columns(self) -> tuple[str, ...]:
        return T.COLUMNS[T.TABLE_IDS[self.table]]

    def __len__(self) -> int:
        return len(self._cols["ts"])

    def __getitem__(self, name: str) -> np.ndarray:
        if name in ("symbol", "venue"):
            v = self._decoded.get(name)
            if v is None:
                ids = self._cols[name]
                names = self._names[0 if name == "symbol" else 1]
                v = self._decoded[name] = names[ids]
            return v
        if name in ("symbol_id", "venue_id"):
            return self._cols[name[:-3]]
        try:
            return self._cols[name]
        except KeyError:
            raise KeyError(f"no column {name!r} in {self.table}; columns are "
                           f"{', '.join(self.columns)}") from None

    @property
    def names(self) -> tuple[np.ndarray, np.ndarray]:
        """(symbol names, venue names) that ``batch["symbol_id"]`` / ``["venue_id"]`` index:
        decode ids yourself, e.g. to group by symbol without decoding every row. The same
        array objects for every batch read from memory between two new symbols or venues."""
        return self._names

    @property
    def first_seq(self) -> int:
        return int(self._cols["seq"][0])

    @property
    def last_seq(self) -> int:
        return int(self._cols["seq"][-1])

    def keep(self, mask: np.ndarray) -> "Batch":
        """A batch of the rows where ``mask`` is true (a copy)."""
        return Batch(self.shard, self.table, {c: v[mask] for c, v in self._cols.items()},
                     self._names, False)

    def __iter__(self) -> Iterator[Tick]:
        rows = _zip_rows(self.shard, T.TABLE_IDS[self.table], self._cols, self._names)
        return (_tick_new(Tick, row) for row in rows)

    def to_dict(self) -> dict[str, np.ndarray]:
        return {c: self[c] for c in self.columns}

    def to_pandas(self):
        """A pandas DataFrame of the batch (requires pandas)."""
        return import_pandas().DataFrame(self.to_dict())

    def __repr__(self) -> str:
        n = len(self)
        seqs = f" seq {self.first_seq}..{self.last_seq}" if n else ""
        return f"<wayy.Batch {self.table} shard {self.shard}: {n} rows{seqs}>"


class Overrun(NamedTuple):
    """What ``on_overrun`` is told: rows ``[from_seq, to_seq)`` of ``shard`` are read from the
    columns because the change ring overwrote their records first. Nothing is lost."""

    shard: int
    from_seq: int
    to_seq: int
    overruns: int


_tick_new = tuple.__new__


# --- per shard -----------------------------------------------------------------------------------

class _Rules:
    """What one subscription wants of one table in one shard, by name."""

    __slots__ = ("all_any", "all_venues", "syms_any", "sym_venues")

    def __init__(self) -> None:
        self.all_any = False
        self.all_venues: set[str] = set()
        self.syms_any: set[str] = set()
        self.sym_venues: dict[str, set[str]] = {}

    def add(self, ch: Channel) -> None:
        if ch.symbol is None:
            if ch.venue is None:
                self.all_any = True
            else:
                self.all_venues.add(ch.venue)
        elif ch.venue is None:
            self.syms_any.add(ch.symbol)
        else:
            self.sym_venues.setdefault(ch.symbol, set()).add(ch.venue)

    def empty(self) -> bool:
        return not (self.all_any or self.all_venues or self.syms_any or self.sym_venues)


class _HistoryRead:
    """Seqs lo..hi-1 of one shard read back from history, delivered over several passes:
    ``items`` yields what is left (Tick tuples, or (table, columns, names) batches),
    ``held`` is one taken from it but not yet delivered, ``nxt`` the first seq not done."""

    __slots__ = ("hi", "nxt", "found_seqs", "items", "held")

    def __init__(self, lo: int, hi: int, found_seqs, items) -> None:
        self.hi, self.nxt = hi, lo
        self.found_seqs = found_seqs
        self.items = items
        self.held = None


class _Follow:
    """One subscription's position in one shard, and the kernel call that advances it."""

    def __init__(self, sub: "Subscription", k: int, rules: tuple[_Rules, _Rules],
                 max_rows: int) -> None:
        db = sub.db
        self.k = k
        self.hist: _HistoryRead | None = None  # rows read back from history, part delivered
        self.data = db.shards[k]
        self.ring = db._change_ring(k)
        self.rules = rules
        self.names = db._refresh_names(k)
        d = self.data
        # everything the kernel needs in five arrays (see shm.subscribers.C_*); the names
        # below are views into them
        self.ctl = ctl = np.zeros(K.C_WORDS, np.int64)
        self.st = ctl[:K.F_WORDS]
        self.st[K.F_BF_END] = -1
        self.fctl = ctl[K.C_FCTL:K.C_FCTL + K.FC_WORDS]
        self.pairs = ctl[K.C_PAIRS:K.C_PAIRS + 3 * K.MAX_PAIRS].reshape(K.MAX_PAIRS, 3)
        ctl[K.C_OFF:K.C_OFF + len(d.off)] = d.off
        nruns = min(max_rows, 4096)
        ctl[K.C_MAX_ROWS] = max_rows
        ctl[K.C_MAX_SCAN] = MAX_SCAN
        ctl[K.C_NRUNS] = nruns
        ctl[K.C_MAX_SYMBOLS] = d.max_symbols
        self.filt = np.zeros((2, d.max_symbols + d.max_venues), np.uint8)
        self.want = self.filt[:, :d.max_symbols]
        self.ven_ok = self.filt[:, d.max_symbols:]
        self.out = np.zeros(nruns * K.RUN_WORDS + max_rows, np.int64)
        self.runs = self.out[:nruns * K.RUN_WORDS].reshape(nruns, K.RUN_WORDS)
        self.rows = self.out[nruns * K.RUN_WORDS:]
        self.hdr = self.ring.hdr
        # the ring's tail word as a memoryview: one plain read per idle poll, a Python int
        self.tail = memoryview(self.hdr)[CRL.TAIL_I64:CRL.TAIL_I64 + 1]
        self.wait_pos = -1  # poll the kernel while tail > wait_pos (-1: always, backfilling)
        # per tick: rows a follow call found that run()'s deadline left undelivered; they
        # are delivered before the next follow call (which would overwrite self.out)
        self.pending: "_PendingTicks | None" = None
        self.wctl = self.ring.wctl
        # waiting on this one ring: the kernels' entry points, no per-call type dispatch
        self.wait_once = inbound.entry_point(CR.wait_once, self.hdr, self.wctl, 0, 0)
        self.spin_wait = inbound.entry_point(CR.spin_wait, self.hdr, 0, 0)
        self.seg8 = d.seg.buf
        self.hdr = self.ring.hdr
        # the segment's generation word: a roll bumps it before it reuses any row
        self.gen = memoryview(d.hdr64)[S.GENERATION_I64:S.GENERATION_I64 + 1]
        # the kernel holds these arrays' addresses (follow_table): they live as long as this
        self.arrays = (self.ring.words, self.seg8, ctl, self.filt, self.out)
        self.args = (K.follow_table(*self.arrays),)
        self.call = inbound.entry_point(K.follow_mem, *self.args)
        # The per-tick path reads state words, runs and row values through memoryviews: an
        # index gives a Python int or float in ~40 ns, where a numpy index (a numpy scalar)
        # costs 3x that and a kernel call (row_values) 10x. Plain loads are enough: the
        # follow kernel's acquire loads of the change record already ordered them.
        self.stv = memoryview(ctl)
        self.outv = memoryview(self.out)
        self.rows_at = nruns * K.RUN_WORDS  # rows[i] is outv[rows_at + i]
        self.colv = tuple(
            tuple(memoryview(d.cols[t][c]) for c in T.COLUMNS[t]) for t in (T.TRADES, T.QUOTES))
        self.sym_list: list[str] = self.names["sym"].tolist()
        self.ven_list: list[str] = self.names["ven"].tolist()
        self.sym_ids: dict[str, int] = {}
        self.ven_ids: dict[str, int] = {}
        self._decoded_sym = 0
        self._decoded_ven = 0
        self.resolve(d.n_symbols(), d.n_venues())

    def resolve(self, nsym: int, nven: int) -> None:
        """Rebuild the filter arrays for names 0 .. nsym-1 / nven-1 (incremental decode)."""
        d = self.data
        for i in range(self._decoded_sym, nsym):
            self.sym_ids[bytes(d.sym_names[i]).rstrip(b"\0").decode("ascii", "replace")] = i
        for i in range(self._decoded_ven, nven):
            self.ven_ids[bytes(d.ven_names[i]).rstrip(b"\0").decode("ascii", "replace")] = i
        self._decoded_sym = max(self._decoded_sym, nsym)
        self._decoded_ven = max(self._decoded_ven, nven)
        self.want[:] = 0
        self.ven_ok[:] = 0
        fc = self.fctl
        fc[:] = 0
        pending = False
        npairs = 0
        sym_ids, ven_ids = self.sym_ids, self.ven_ids
        for t, r in enumerate(self.rules):
            if r.all_any:
                fc[K.FC_ALL0 + t] = 1
            elif r.all_venues:
                for v in r.all_venues:
                    vid = ven_ids.get(v)
                    if vid is None:
                        pending = True
                    else:
                        self.ven_ok[t, vid] = 1
                        fc[K.FC_ALL0 + t] = 2
            mask = 0
            for s in r.syms_any:
                sid = sym_ids.get(s)
                if sid is None:
                    pending = True
                    continue
                self.want[t, sid] = 1
                mask |= 1 << (sid & 63)
            for s, vens in r.sym_venues.items():
                if s in r.syms_any:
                    continue
                sid = sym_ids.get(s)
                if sid is None:
                    pending = True
                    continue
                for v in vens:
                    vid = ven_ids.get(v)
                    if vid is None:
                        pending = True
                        continue
                    if npairs >= K.MAX_PAIRS:
                        raise InvalidInput(f"more than {K.MAX_PAIRS} symbol:venue channels in "
                                           f"one shard of one subscription")
                    self.pairs[npairs] = (t, sid, vid)
                    npairs += 1
                    self.want[t, sid] = 2
                    mask |= 1 << (sid & 63)
            fc[K.FC_MASK0 + t] = mask - (1 << 64) if mask >= 1 << 63 else mask
        fc[K.FC_NPAIRS] = npairs
        fc[K.FC_PENDING] = 1 if pending else 0
        self.st[K.F_NSYM] = nsym
        self.st[K.F_NVEN] = nven

    def name_arrays(self, db) -> tuple:
        """(symbol names, venue names) of the shard as numpy str arrays, covering every
        committed row (names are interned before the rows that use them commit)."""
        d = self.data
        if len(self.names["sym"]) < d.n_symbols() or len(self.names["ven"]) < d.n_venues():
            self.refresh_names(db)
        return (self.names["sym"], self.names["ven"])

    def refresh_names(self, db) -> tuple:
        self.names = db._refresh_names(self.k)
        self.sym_list = self.names["sym"].tolist()
        self.ven_list = self.names["ven"].tolist()
        return (self.names["sym"], self.names["ven"])


class _Acc:
    """Batch mode: pending rows of one (shard, table), as pieces (lo, hi) or index arrays."""

    __slots__ = ("f", "t", "pieces", "n", "first_seq", "last_seq", "gen", "since_ns")

    def __init__(self, f: _Follow, t: int) -> None:
        self.f = f
        self.t = t
        self.pieces: list = []
        self.n = 0
        self.first_seq = -1
        self.last_seq = -1  # seq of the newest pending row
        self.gen = -1  # the segment generation the pieces' row positions belong to
        self.since_ns = 0


# --- checkpoint ----------------------------------------------------------------------------------

def _checkpoint_path(db, spec: str) -> str:
    if not isinstance(spec, (str, os.PathLike)):
        raise InvalidInput(f"checkpoint must be a path or a name, got {type(spec).__name__}")
    spec = os.fspath(spec)
    if os.sep in spec or (os.altsep and os.altsep in spec):
        path = os.path.abspath(spec)
        if os.path.isdir(path):
            raise InvalidInput(f"checkpoint {path} is a directory; name a file in it, e.g. "
                               f"{os.path.join(path, 'strategy.json')}", path=path)
        if os.path.exists(path) and not os.path.isfile(path):  # /dev/null, a fifo
            raise InvalidInput(f"checkpoint {path} is not a regular file", path=path)
        return path
    if not CHECKPOINT_NAME_RE.match(spec) or spec.startswith("."):
        raise InvalidInput(f"checkpoint name {spec!r}: use 1-64 characters [A-Za-z0-9._-] "
                           f"(not starting with '.'), or a path with a '/'")
    return os.path.join(db.path, CHECKPOINT_DIR, spec + ".json")


def _checkpoint_in_use(path: str, pid: str) -> str:
    """Why a checkpoint file's lock is refused: held by ``pid`` (this process, or another)."""
    if pid == str(os.getpid()):
        return (f"checkpoint {path} is in use by another subscription of this process: "
                f"give each subscription a checkpoint of its own")
    return f"checkpoint {path} is in use by another subscriber (pid {pid})"


def _payload_crc(body: dict) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


class _Checkpoint:
    """The checkpoint file of one subscription: locked while in use, written atomically."""

    def __init__(self, path: str, db) -> None:
        self.path = path
        self.db = db
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            why = exc.strerror
            if isinstance(exc, FileExistsError):  # a file where a directory must be
                why = f"{os.path.dirname(path)} is not a directory"
            raise InvalidInput(f"checkpoint {path}: {why}", path=path) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.pread(self._lock_fd, 32, 0).decode().strip()
            except (OSError, UnicodeDecodeError):
                pid = "?"
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise InvalidInput(_checkpoint_in_use(path, pid), path=path) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        self.last_cursors: list | None = None
        # None when unreadable: then checkpoints are matched by path and prefix alone
        self.db_id = read_database_id(db.path)

    def load(self) -> dict | None:
        """The stored checkpoint, checked; None if there is none yet."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            if isinstance(doc, dict) and "wayy_remote_checkpoint" in doc:
                raise InvalidInput(f"checkpoint {self.path} is a remote subscriber's "
                                   f"(wayy.remote), not a local one's: give each its own "
                                   f"file", path=self.path)
            if not isinstance(doc, dict) or doc.get("wayy_checkpoint") != CHECKPOINT_FORMAT:
                raise ValueError("not a wayy checkpoint of format "
                                 f"{CHECKPOINT_FORMAT}")
            crc = doc.pop("crc32")
            if crc != _payload_crc(doc):
                raise ValueError("checksum mismatch")
            cursors = doc["cursors"]
            if (not isinstance(cursors, list) or not all(
                    isinstance(c, list) and len(c) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) and x >= -1
                            for x in c)
                    # -1: a shard not followed, which has no cursor for either table
                    and (c[0] < 0) == (c[1] < 0) for c in cursors)):
                raise ValueError("bad cursors")
            for key in ("db_path", "prefix", "shards"):
                doc[key]  # noqa: B018  (presence)
        except InvalidInput:  # another kind of checkpoint: not damage (an InvalidInput is
            raise             # a ValueError, which the next clauses would take for damage)
        except UnicodeDecodeError:
            raise CorruptData(f"checkpoint {self.path} is corrupt (not UTF-8 JSON text); "
                              f"delete it to start over", path=self.path) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptData(f"checkpoint {self.path} is corrupt ({exc}); delete it to start "
                              f"over", path=self.path) from None
        except RecursionError:  # JSON nested deeper than the parser goes
            raise CorruptData(f"checkpoint {self.path} is corrupt (nested too deeply); "
                              f"delete it to start over", path=self.path) from None
        m = self.db.manifest
        if doc["prefix"] != m.prefix or doc["db_path"] != m.path:
            raise InvalidInput(f"checkpoint {self.path} belongs to the database at "
                               f"{doc['db_path']}, not {m.path}", path=self.path)
        if doc.get("db_id") and self.db_id and doc["db_id"] != self.db_id:
            # the same path and prefix, but the directory was made again: its seqs are
            # another database's, and resuming would skip (or repeat) rows silently
            raise InvalidInput(f"checkpoint {self.path} belongs to an earlier database at "
                               f"{m.path} (id {doc['db_id']}; this one is {self.db_id}): the "
                               f"database was created again; delete the checkpoint to start "
                               f"over", path=self.path)
        if doc["shards"] != m.shards or len(doc["cursors"]) != m.shards:
            raise InvalidInput(f"checkpoint {self.path} was written for {doc['shards']} shards; "
                               f"the database has {m.shards}", path=self.path)
        self.last_cursors = doc["cursors"]
        return doc

    def write(self, cursors: list, channels: list[str], state: Any) -> None:
        """Write atomically: temporary file, fsync, rename, fsync the directory."""
        m = self.db.manifest
        doc = {"wayy_checkpoint": CHECKPOINT_FORMAT, "db_path": m.path, "prefix": m.prefix,
               "shards": m.shards, "channels": channels, "cursors": cursors, "state": state,
               "written_ns": time.time_ns(), "pid": os.getpid()}
        if self.db_id:
            doc["db_id"] = self.db_id
        try:
            doc["crc32"] = _payload_crc(doc)
            data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"on_checkpoint must return JSON-serialisable state: {exc}") \
                from None
        tmp = f"{self.path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.last_cursors = cursors

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


# --- the subscription ----------------------------------------------------------------------------

class _Mark:
    """Queue entry: apply a cursor when the consumer reaches it (nothing is handed out)."""

    __slots__ = ("k", "t", "cursor")

    def __init__(self, k: int, t: int, cursor: int) -> None:
        self.k = k
        self.t = t  # -1: both tables
        self.cursor = cursor


class _PendingTicks:
    """Per tick: what one follow call found and the callbacks have not had yet -- its runs
    not yet read, the rows read of the current one -- with the generation they were found
    in, the next seq not yet delivered, and the shard's next seq after them all."""

    __slots__ = ("runs", "rows", "gen", "resume", "end")

    def __init__(self, runs: list, rows: list | None, gen: int, resume: int,
                 end: int) -> None:
        self.runs = runs
        self.rows = rows
        self.gen = gen
        self.resume = resume
        self.end = end


def _first_seq_at_ts_in_history(hist, k: int, from_ts: int) -> int | None:
    """The lowest seq of a row of shard ``k`` in history (either table) with ts >= from_ts,
    taking each table's rows in seq order, as first_seq_at_ts does in memory; None when
    history holds no such row (every history row precedes the shard's memory rows)."""
    best = None
    for t in (T.TRADES, T.QUOTES):
        for part in hist.by_shard(t).get(k, ()):
            if part.rows == 0 or part.max_ts < from_ts:
                continue
            hit = np.flatnonzero(part.array("ts") >= from_ts)
            if len(hit):
                seq = int(part.array("seq")[hit[0]])
                best = seq if best is None else min(best, seq)
                break
    return best


class Subscription:
    """A live subscription. Create with :meth:`wayy.Database.subscribe`.

    Faces: ``poll(timeout)``, iteration, or a callback run by ``run()`` / ``db.run()``.
    ``stop()`` ends it (pending partial batches are delivered to a callback, the checkpoint
    is written); it is also a context manager.
    """

    def __init__(self, db, channels: list[Channel], *, callback, filter, batch_size,
                 max_latency_ms, checkpoint, checkpoint_every, checkpoint_ms, on_checkpoint,
                 from_seq, from_ts, idle, on_overrun, on_error, stop_on_error,
                 shards=None) -> None:
        self.db = db
        self.channels = channels
        self.callback = callback
        self.filter = filter
        self.on_overrun = on_overrun
        self.on_error = on_error
        self.on_checkpoint = on_checkpoint
        if not isinstance(stop_on_error, (bool, np.bool_)):
            raise InvalidInput(f"stop_on_error must be True or False, got {stop_on_error!r}")
        self.stop_on_error = bool(stop_on_error)
        self.idle_name = idle
        self.batch_mode = batch_size is not None or max_latency_ms is not None
        self.batch_size = int(batch_size) if batch_size is not None else 0
        if self.batch_mode and max_latency_ms is None:
            max_latency_ms = DEFAULT_BATCH_LATENCY_MS
        self.max_latency_ns = int(max_latency_ms * 1e6) if max_latency_ms is not None else 0
        self.error: BaseException | None = None
        self.stopped_reason: str | None = None
        self.state: Any = None  # restored on_checkpoint state
        self._pid = os.getpid()
        self._active = True
        self._stopping = False
        self._queue: collections.deque = collections.deque()
        self._delivered = 0
        self._items = 0
        self._errors = 0
        self._since_ckpt = 0
        self._checkpoint_every = checkpoint_every
        self._runner: dict = {}  # {0: ident of the thread running run() / poll() on it}
        self._made_by = get_ident()  # a db.run() in this thread (only) adopts it
        self._checkpoint_ns = int(checkpoint_ms * 1e6)
        now = time.monotonic_ns()
        self._ckpt_due = now + self._checkpoint_ns
        self._house_due = now
        # run(timeout=)'s deadline: a long pass stops there (_yielding) and goes on next run
        self._yield_at = 1 << 62
        self._yielding = False
        self._alive_due = now + ALIVE_CHECK_NS
        self._next_flush = 1 << 62
        self._slot = None
        self._ckpt: _Checkpoint | None = None
        self._ckpt_failed = False  # a checkpoint could not be made: the subscription stops
        nshards = db.nshards
        self.channel_names = [format_channel(c) for c in channels]

        # which shards, and what of each table there
        rules: dict[int, tuple[_Rules, _Rules]] = {}
        for ch in channels:
            t = T.TABLE_IDS[ch.table]
            ks = range(nshards) if ch.symbol is None else (shard_of(ch.symbol, nshards),)
            if shards is not None and ch.symbol is not None and ks[0] not in shards:
                raise InvalidInput(f"channel {ch.name}: symbol {ch.symbol} lives on shard "
                                   f"{ks[0]}, not in shards {sorted(shards)}")
            for k in ks:
                if shards is None or k in shards:
                    rules.setdefault(k, (_Rules(), _Rules()))[t].add(ch)
        if not rules:
            raise InvalidInput(f"none of shards {sorted(shards)} holds "
                               f"{', '.join(self.channel_names)}")
        max_rows = BATCH_MAX_ROWS if self.batch_mode else TICK_MAX_ROWS
        try:
            with translate(db.path):
                self._follows = [_Follow(self, k, rules[k], max_rows) for k in sorted(rules)]
            self._accs = {(f.k, t): _Acc(f, t) for f in self._follows for t in (0, 1)
                          if not f.rules[t].empty()}
            # cursors: next seq to deliver, per shard and table (checkpointed)
            self._cur = [[-1, -1] for _ in range(nshards)]  # -1: shard not followed

            start = self._start_points(checkpoint, from_seq, from_ts)
            # Register, then position every shard: tail first, then the committed snapshot,
            # whose next seq is the high-water mark; live delivery starts there.
            self._claim_slot()
            self.hwm: dict[int, int] = {}
            for f in self._follows:
                s = start.get(f.k, -1)
                floor = None
                top = s  # the highest start point: none may be past the next seq
                if isinstance(s, list):  # per-table cursors from a checkpoint
                    floor = s
                    s = min(s[t] for t in (0, 1) if not f.rules[t].empty())
                    top = max(floor[t] for t in (0, 1) if not f.rules[t].empty())
                hwm = int(K.begin(f.st, f.hdr, f.seg8, f.data.off, s))
                if top > hwm and self._wait_started(f.k):
                    hwm = int(K.begin(f.st, f.hdr, f.seg8, f.data.off, s))
                if top > hwm:
                    raise InvalidInput(
                        f"start seq {top} of shard {f.k} is past the database's next seq {hwm}: "
                        + ("the checkpoint is from another run of this database (recreated "
                           "without its history?)" if floor is not None else
                           "from_seq names a row not yet written"), shard=f.k, path=db.path)
                self.hwm[f.k] = hwm
                nxt = int(f.st[K.F_NEXT])
                if floor is not None:
                    f.st[K.F_FLOOR0], f.st[K.F_FLOOR1] = floor
                    self._cur[f.k] = list(floor)
                else:
                    self._cur[f.k] = [nxt, nxt]
            self._publish_status(time.time_ns(), RL.STATE_RUNNING)
        except BaseException:
            self._release()
            raise

    # --- set-up ------------------------------------------------------------------------------
    def _wait_started(self, k: int) -> bool:
        """Wait (up to STARTING_WAIT_S) while shard ``k``'s writer loads its write-ahead log
        back at the database's start; True if it was starting (its next seq has moved)."""
        if not self.db.starting_shards([k]):
            return False
        deadline = time.monotonic() + STARTING_WAIT_S
        while self.db.starting_shards([k]):
            if time.monotonic() > deadline:
                raise NotRunning(f"shard {k} is still starting after {STARTING_WAIT_S:.0f} s "
                                 f"(loading its write-ahead log); try again when wayy status "
                                 f"shows it running", shard=k, path=self.db.path)
            time.sleep(0.02)
        return True

    def _start_points(self, checkpoint, from_seq, from_ts) -> dict:
        """Per shard: -1 (live), a seq, or [trades, quotes] cursors from the checkpoint."""
        nshards = self.db.nshards
        if from_seq is not None and from_ts is not None:
            raise InvalidInput("give from_seq or from_ts, not both")
        start: dict = {}
        if from_seq is not None:
            if isinstance(from_seq, dict):
                items = from_seq.items()
            elif isinstance(from_seq, (list, tuple, np.ndarray)):
                if isinstance(from_seq, np.ndarray):
                    if from_seq.ndim != 1:
                        raise InvalidInput(f"from_seq as an array gives one seq per shard, "
                                           f"got shape {from_seq.shape}")
                    from_seq = from_seq.tolist()
                if len(from_seq) != nshards:
                    raise InvalidInput(f"from_seq as a list gives one seq per shard: "
                                       f"{nshards} of them, got {len(from_seq)} (a dict "
                                       f"names only some shards)")
                items = enumerate(from_seq)
            else:
                items = ((k, from_seq) for k in range(nshards))
            for k, s in items:
                if (isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < nshards):
                    raise InvalidInput(f"from_seq names shard {k!r}; shards are 0..{nshards - 1}")
                if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
                    raise InvalidInput(f"from_seq must be a non-negative int seq (or one per "
                                       f"shard), got {s!r}")
                if s > _INT64_MAX:
                    raise InvalidInput(f"from_seq {s} is past any seq a shard can hold",
                                       shard=k)
                start[k] = int(s)
        elif from_ts is not None:
            if isinstance(from_ts, np.datetime64):
                try:
                    from_ts = datetime64_ns_scalar(from_ts)
                except TimeRangeError as exc:
                    raise InvalidInput(f"from_ts {from_ts!r}: {exc}") from None
            if isinstance(from_ts, bool) or not isinstance(from_ts, (int, np.integer)):
                raise InvalidInput(f"from_ts must be int ns since the epoch or "
                                   f"numpy.datetime64, got {from_ts!r}")
            if not -_INT64_MAX - 1 <= int(from_ts) <= _INT64_MAX:
                # as the remote subscriber and `wayy tail` say: no stored time is out there
                raise InvalidInput(f"from_ts {from_ts} is outside {RANGE_TEXT}")
            from_ts = max(int(from_ts), 0)  # before 1970: from the first row
            hist = self.db.history
            hist.refresh()
            for f in self._follows:
                s = _first_seq_at_ts_in_history(hist, f.k, int(from_ts))
                start[f.k] = s if s is not None else int(
                    K.first_seq_at_ts(f.seg8, f.data.off, int(from_ts)))
        if checkpoint is not None:
            self._ckpt = _Checkpoint(_checkpoint_path(self.db, checkpoint), self.db)
            doc = self._ckpt.load()
            if doc is not None:
                were = doc.get("channels")
                if isinstance(were, list) and sorted(were) != sorted(self.channel_names):
                    # the cursors count rows of those channels: rows of another channel
                    # below them would be skipped, above them repeated
                    self._ckpt.close()
                    self._ckpt = None
                    raise InvalidInput(f"checkpoint {_checkpoint_path(self.db, checkpoint)} "
                                       f"belongs to channels {', '.join(map(str, were))}, "
                                       f"not {', '.join(self.channel_names)}; use another "
                                       f"checkpoint for this subscription")
                self.state = doc.get("state")
                # a shard the checkpointed subscription did not follow (-1) starts live
                return {k: list(c) for k, c in enumerate(doc["cursors"]) if min(c) >= 0}
        return start

    def _claim_slot(self) -> None:
        try:
            reg = self.db._registry()
            self._slot = reg.claim()
        except WayyError:
            raise
        except Exception as exc:  # noqa: BLE001  (status is best effort; never fail subscribe)
            log.warning("subscriber registry unavailable (%s): this subscriber will not show "
                        "in wayy status", exc)
            self._slot = None
            return
        if self._slot is None:
            log.warning("subscriber registry is full: this subscriber will not show in status")
            return
        s = self._slot
        s.set_channels(", ".join(self.channel_names))
        s.i32[RL.NSHARDS_I32] = self.db.nshards
        s.i32[RL.IDLE_I32] = IDLE_STRATEGIES.index(self.idle_name)
        s.i32[RL.MODE_I32] = RL.MODE_BATCH if self.batch_mode else RL.MODE_TICK
        for f in self._follows:
            s.shards[f.k, RL.SHARD_FOLLOWED] = 1

    # --- the core: one pass over every followed shard -----------------------------------------
    def _do_work(self) -> int:
        """Advance every shard once, delivering (callback) or queueing (poll) what is new.
        Returns a work count (0 = nothing happened)."""
        work = 0
        for f in self._follows:
            if f.tail[0] <= f.wait_pos:  # nothing new on the ring, no backfill under way
                continue
            work += self._pump(f)
            if self._stopping:
                return work + 1
        now = time.monotonic_ns()
        if now >= self._next_flush:
            work += self._flush(now, False)
        if now >= self._house_due:
            self._housekeep(now)
        return work

    def _pump(self, f: _Follow) -> int:
        work = 0
        if f.pending is not None:
            # rows an earlier pass read and run()'s deadline left: first, and only in a pass
            # that has time (a pass that yielded on another shard comes back here next run)
            if self._stopping or self._yielding:
                return work
            self._deliver_from(f, f.pending)
            work += 1
            if f.pending is not None or self._stopping or self._yielding:
                return work
        for _ in range(8):  # bounded, so other shards and deadlines get their turn
            if self._stopping or self._yielding:
                return work
            nxt0 = f.stv[K.F_NEXT]
            code, nr, nu = f.call(*f.args)
            if nr and f.gen[0] != f.stv[K.F_GEN]:
                # a roll reset the segment during the call: its rows may be overwritten, so
                # take them again (the backfill finds them in history)
                self._begin_again(f, nxt0)
                continue
            if nr:
                work += nr
                if self.batch_mode:
                    self._accumulate(f, nr)
                elif self.callback is not None:
                    self._deliver_ticks(f, nr, nxt0)
                    if self._stopping or self._yielding:
                        return work
                else:
                    self._queue_ticks(f, nr, nxt0)
            elif not self.batch_mode and self.callback is not None:
                self._cur[f.k][0] = self._cur[f.k][1] = f.stv[K.F_NEXT]
            if code == K.R_IDLE:
                break
            work += 1
            if code == K.R_NAMES:
                f.resolve(f.stv[K.F_SEEN_NSYM], f.stv[K.F_SEEN_NVEN])
            elif code == K.R_LAPPED:
                self._overrun(f)
            elif code == K.R_GAP:
                log.info("shard %d: seq gap in the change ring, rows %d..%d read from the "
                         "columns", f.k, int(f.st[K.F_NEXT]), int(f.st[K.F_BF_END]) - 1)
            elif code == K.R_HISTORY:
                self._from_history(f)
                break  # one bounded piece of history per pass
            elif code == K.R_ROLLED:
                log.info("shard %d rolled to history while subscriber %s was behind: rows "
                         "from seq %d are read back", f.k, ",".join(self.channel_names),
                         int(f.st[K.F_NEXT]))
        stv = f.stv
        f.wait_pos = stv[K.F_POS] if stv[K.F_BF_END] < 0 and f.pending is None else -1
        if self.batch_mode and not self._stopping:
            self._flush(time.monotonic_ns(), False)
        elif not self.batch_mode and self.callback is None and work and not self._stopping:
            self._queue.append(_Mark(f.k, -1, stv[K.F_NEXT]))
        return work

    def _from_history(self, f: _Follow) -> None:
        """Deliver seqs F_NEXT .. F_HIST_END-1 of shard f.k from history on disk (rolled
        while this subscriber was behind), in seq order, then go on from memory. A read
        takes at most HISTORY_*_SEQS seqs, and one call delivers for about HISTORY_PASS_NS:
        the rest of the read waits on the follow for the next passes (the kernel reports
        history again from F_NEXT), so run()'s deadline, checkpoints and other shards have
        their turn however slow the callback."""
        lo = int(f.st[K.F_NEXT])
        h = f.hist
        if h is None or h.nxt != lo:
            h = f.hist = self._read_history(f, lo)
        end_ns = time.monotonic_ns() + HISTORY_PASS_NS
        tick_mode = not self.batch_mode
        every = self._checkpoint_every if self._ckpt is not None else None
        i = 0
        while True:
            item = h.held
            if item is None:
                item = next(h.items, None)
                if item is None:
                    break
            h.held = None
            first = item[9] if tick_mode else int(item[1]["seq"][0])
            i += 1
            if self._stopping or (i > 1 and time.monotonic_ns() > end_ns):
                h.held = item  # delivered on the next pass, or never (stopping)
                self._history_done(f, h, first)
                return
            if not tick_mode:
                t, part, names = item
                after = int(part["seq"][-1]) + 1
                self._deliver_batch(f, t, Batch(f.k, T.TABLE_NAMES[t], part, names, False),
                                    after)
                if self._stopping:  # a batch that failed (stop_on_error) comes again
                    self._history_done(f, h, first if self.error is not None else after)
                    return
                continue
            tick = _tick_new(Tick, item)
            if self.filter is not None:
                keep = self._filter(self.filter, tick)
                if keep < 0:
                    self._history_done(f, h, first)
                    return
                if not keep:
                    continue
            if self.callback is None:
                self._queue.append(tick)
                continue
            try:
                self.callback(tick)
            except Exception as exc:  # noqa: BLE001
                if self._callback_failed(exc, tick):
                    self._history_done(f, h, first)
                    return
            self._delivered += 1
            self._items += 1
            self._since_ckpt += 1
            if every is not None and self._since_ckpt >= every:
                self._history_done(f, h, item[9] + 1)
                self.save_checkpoint()
        self._history_done(f, h, h.hi)
        f.hist = None

    def _read_history(self, f: _Follow, lo: int) -> _HistoryRead:
        from wayy import subscribe_history as SH

        hi = min(int(f.st[K.F_HIST_END]),
                 lo + (HISTORY_BATCH_SEQS if self.batch_mode else HISTORY_TICK_SEQS))
        if self.batch_mode:
            self._flush(time.monotonic_ns(), True)  # what came before goes first
        pieces, found_seqs = SH.read(self.db.history, f.k, lo, hi, f.rules,
                                     (int(f.st[K.F_FLOOR0]), int(f.st[K.F_FLOOR1])))
        if self.batch_mode:
            items = (b for t, cols, names in pieces
                     for b in self._history_parts(t, cols, names))
        else:
            items = (row for t, cols, names in pieces
                     for row in SH.tick_rows(f.k, t, cols, names))
        return _HistoryRead(lo, hi, found_seqs, items)

    def _history_done(self, f: _Follow, h: _HistoryRead, nxt: int) -> None:
        """Every wanted row of ``h`` below ``nxt`` is delivered; seqs below it that history
        lacks (retention removed them) are counted lost."""
        if h.found_seqs is not None:
            gone = (nxt - h.nxt) - (int(np.searchsorted(h.found_seqs, nxt))
                                    - int(np.searchsorted(h.found_seqs, h.nxt)))
            if gone:
                f.st[K.F_LOST] += gone
                log.warning("subscriber %s: %d of the rows of shard %d between seq %d and %d "
                            "are gone from history (retention) and cannot be delivered",
                            ",".join(self.channel_names), gone, f.k, h.nxt, nxt - 1)
        h.nxt = nxt
        f.st[K.F_NEXT] = nxt
        if self.callback is not None:
            self._cur[f.k][0] = self._cur[f.k][1] = nxt

    def _begin_again(self, f: _Follow, seq: int) -> None:
        """Follow shard f.k again from ``seq`` after a roll overtook rows read from memory
        (they come back from history, then the ring from its tail). When the ring also
        overwrote this subscriber's place meanwhile (a callback that stalled across the
        roll), that is an overrun like any other: counted and told, not passed over."""
        st = f.st
        pos = int(st[K.F_POS] if st[K.F_BF_END] < 0 else st[K.F_BF_RESUME])
        K.begin(st, f.hdr, f.seg8, f.data.off, seq)
        if int(f.tail[0]) - pos > f.ring.capacity:
            st[K.F_OVERRUNS] += 1
            self._overrun(f)

    def _overrun(self, f: _Follow) -> None:
        n = int(f.st[K.F_OVERRUNS])
        info = Overrun(f.k, int(f.st[K.F_NEXT]), int(f.st[K.F_BF_END]), n)
        if n <= 3 or n % 100 == 0:
            log.warning("subscriber %s lapped on shard %d (%d times): rows %d..%d are read "
                        "back (from the columns, or from history if rolled)",
                        ",".join(self.channel_names), f.k, n, info.from_seq,
                        info.to_seq - 1)
        if self.on_overrun is not None:
            try:
                self.on_overrun(info)
            except Exception as exc:  # noqa: BLE001
                self._callback_failed(exc, info)

    # --- per-tick delivery ---------------------------------------------------------------------
    def _columns(self, f: _Follow, t: int, run) -> tuple[dict, bool]:
        _t, cnt, fr, start, _fs = run
        cols = f.data.cols[t]
        if start < 0:
            sl = slice(fr, fr + cnt)
            return {c: cols[c][sl] for c in T.COLUMNS[t]}, True
        idx = f.rows[start:start + cnt]
        return {c: cols[c][idx] for c in T.COLUMNS[t]}, False

    def _run_rows(self, f: _Follow, run) -> Iterable[tuple]:
        """The Tick field tuples of one run, in seq order."""
        t, cnt, fr, start, _fs = run
        k = f.k
        if cnt <= SMALL_RUN:
            # a handful of rows (the low-latency case): memoryview reads of each value beat
            # slicing eight columns from Python
            if start < 0:
                rows = range(fr, fr + cnt)
            else:
                a = f.rows_at + start
                rows = f.outv[a:a + cnt].tolist()
            syms, vens = f.sym_list, f.ven_list
            out = []
            if t == 0:
                tsv, symv, venv, pv, szv, seqv = f.colv[0]
                for r in rows:
                    sid = symv[r]
                    vid = venv[r]
                    if sid >= len(syms) or vid >= len(vens):
                        f.refresh_names(self.db)
                        syms, vens = f.sym_list, f.ven_list
                    out.append((tsv[r], syms[sid], vens[vid], pv[r], szv[r], None, None, None,
                                None, seqv[r], k, "trades"))
            else:
                tsv, symv, venv, bv, av, bsv, asv, seqv = f.colv[1]
                for r in rows:
                    sid = symv[r]
                    vid = venv[r]
                    if sid >= len(syms) or vid >= len(vens):
                        f.refresh_names(self.db)
                        syms, vens = f.sym_list, f.ven_list
                    out.append((tsv[r], syms[sid], vens[vid], None, None, bv[r], av[r], bsv[r],
                                asv[r], seqv[r], k, "quotes"))
            return out
        cols, _ = self._columns(f, t, run)
        return _zip_rows(k, t, cols, f.name_arrays(self.db))

    def _deliver_ticks(self, f: _Follow, nr: int, nxt0: int) -> None:
        """Call the callback for every row of the runs, in seq order; keep the cursor exact.
        ``nxt0``: the shard's next seq before the call that found the runs."""
        # one run (the low-latency case) straight from the memoryview
        runs = [f.outv[:K.RUN_WORDS].tolist()] if nr == 1 else f.runs[:nr].tolist()
        self._deliver_from(f, _PendingTicks(runs, None, f.stv[K.F_GEN], nxt0,
                                            f.stv[K.F_NEXT]))

    def _deliver_from(self, f: _Follow, p: "_PendingTicks") -> None:
        """Deliver what ``p`` holds (the runs one follow call found, and the rows of the
        first of them when already read). When run()'s deadline comes first, the rest
        waits on ``f.pending`` and the next pass delivers it before any further follow
        call: a subscriber that calls run() with short timeouts does not read its rows
        again, nor lose its place."""
        cb = self.callback
        filt = self.filter
        k = f.k
        cursor = p.end  # the shard's next seq once every row is delivered
        gen = p.gen  # the generation the rows were found in (_pump checked it)
        resume = p.resume  # the next seq not yet delivered (or passed over as not ours)
        delivered = 0
        every = self._checkpoint_every if self._ckpt is not None else None
        runs = p.runs
        rows = p.rows
        f.pending = None
        while rows is not None or runs:
            if rows is None:
                rows = self._run_rows(f, runs.pop(0))
                if type(rows) is not list:
                    rows = list(rows)  # every value read now, before any callback runs
                if f.gen[0] != gen:
                    # a roll reused the memory while the rows were read (or while the
                    # callbacks of earlier runs ran): they may be new rows. Take them again
                    # from the first seq not yet delivered (the backfill finds them in
                    # history)
                    cursor = resume
                    self._begin_again(f, resume)
                    break
            tick = None
            n = 0
            left = None  # rows of this run not delivered when run()'s deadline came
            try:
                for i, row in enumerate(rows):
                    tick = _tick_new(Tick, row)
                    resume = tick[9] + 1
                    if filt is not None:
                        keep = self._filter(filt, tick)
                        if keep < 0:
                            cursor = tick[9]
                            break
                        if not keep:
                            continue
                    try:
                        cb(tick)
                    except Exception as exc:  # noqa: BLE001
                        if self._callback_failed(exc, tick):
                            cursor = tick[9]  # not processed: delivered again after restart
                            break
                    n += 1
                    if every is not None and self._since_ckpt + delivered + n >= every:
                        # checkpoint_every: right after the tick that reaches the count
                        self._cur[k][0] = self._cur[k][1] = tick[9] + 1
                        self._delivered += delivered + n
                        self._items += delivered + n
                        delivered = n = 0
                        self.save_checkpoint()
                    elif not n & 15 and time.monotonic_ns() >= self._pass_due():
                        # a long pass (a backlog, a slow callback): the heartbeat and the
                        # checkpoint_ms checkpoint do not wait for its end
                        self._cur[k][0] = self._cur[k][1] = tick[9] + 1
                        self._delivered += delivered + n
                        self._items += delivered + n
                        self._since_ckpt += delivered + n
                        delivered = n = 0
                        self._house_in_pass()
                        if self._yielding:
                            # run()'s deadline: the rest waits for the next pass
                            cursor = tick[9] + 1
                            left = rows[i + 1:]
                            break
                    if self._stopping:
                        cursor = tick[9] + 1
                        break
            except BaseException:
                # KeyboardInterrupt / SystemExit from the callback: that tick counts as not
                # delivered; everything before it was.
                self._delivered += n
                self._items += n
                if tick is not None:
                    self._cur[k][0] = self._cur[k][1] = tick[9]
                raise
            delivered += n
            rows = None
            if left is None and runs and self._yielding and not self._stopping:
                left = []  # (a deadline seen elsewhere: the runs not read wait too)
                cursor = resume
            if left is not None:
                if left or runs:
                    f.pending = _PendingTicks(runs, left, gen, resume, p.end)
                    f.wait_pos = -1  # the next pass comes here, whatever the ring does
                else:
                    cursor = p.end
                break
            if self._stopping:
                break
        self._cur[k][0] = self._cur[k][1] = cursor
        self._delivered += delivered
        self._items += delivered
        self._since_ckpt += delivered

    def _queue_ticks(self, f: _Follow, nr: int, nxt0: int) -> None:
        q = self._queue
        filt = self.filter
        gen = f.stv[K.F_GEN]
        read = [list(self._run_rows(f, run)) for run in f.runs[:nr].tolist()]
        if f.gen[0] != gen:  # a roll overtook the reads: take these rows again (history)
            self._begin_again(f, nxt0)
            return
        for rows in read:
            for row in rows:
                tick = _tick_new(Tick, row)
                if filt is not None:
                    keep = self._filter(filt, tick)
                    if keep < 0:
                        return
                    if not keep:
                        continue
                q.append(tick)
                if self._stopping:
                    return

    # --- batch delivery ------------------------------------------------------------------------
    def _accumulate(self, f: _Follow, nr: int) -> None:
        now = 0
        seqcols = (f.data.cols[0]["seq"], f.data.cols[1]["seq"])
        gen = int(f.stv[K.F_GEN])  # checked by _pump after the call that read these rows
        for t, cnt, fr, start, fs in f.runs[:nr].tolist():
            acc = self._accs[(f.k, t)]
            if acc.n and acc.gen != gen:
                # the pending rows' positions are of an earlier generation (a roll came in
                # between): emit them (from history) before taking rows of this one
                self._flush_acc(acc)
            if acc.n == 0:
                if not now:
                    now = time.monotonic_ns()
                acc.since_ns = now
                acc.first_seq = fs if start < 0 else int(seqcols[t][f.rows[start]])
                acc.gen = gen
                self._next_flush = min(self._next_flush, now + self.max_latency_ns)
            acc.last_seq = int(seqcols[t][fr + cnt - 1 if start < 0
                                          else f.rows[start + cnt - 1]])
            if start < 0:
                last = acc.pieces[-1] if acc.pieces else None
                if type(last) is tuple and last[1] == fr:
                    acc.pieces[-1] = (last[0], fr + cnt)
                else:
                    acc.pieces.append((fr, fr + cnt))
            else:
                acc.pieces.append(f.rows[start:start + cnt].copy())
            acc.n += cnt

    def _flush(self, now: int, everything: bool) -> int:
        """Emit batches: full ones always, partial ones past max_latency (or all)."""
        emitted = 0
        nxt_flush = 1 << 62
        size = self.batch_size
        for acc in self._accs.values():
            while acc.n and not self._stopping_hard() and not self._yielding:
                due = everything or now - acc.since_ns >= self.max_latency_ns
                if size and acc.n >= size:
                    self._emit(acc, size)
                elif due:
                    self._emit(acc, acc.n)
                else:
                    break
                emitted += 1
            if acc.n:
                nxt_flush = min(nxt_flush, acc.since_ns + self.max_latency_ns)
            else:
                # nothing pending: every row of this table below F_NEXT is done (never
                # backwards: rows delivered from history may be ahead of F_NEXT)
                if self.callback is not None and not self._stopping_hard():
                    c = self._cur[acc.f.k]
                    c[acc.t] = max(c[acc.t], int(acc.f.st[K.F_NEXT]))
        self._next_flush = nxt_flush
        return emitted

    def _stopping_hard(self) -> bool:
        return self._stopping and self.error is not None

    def _flush_acc(self, acc: _Acc) -> None:
        """Emit everything ``acc`` holds, now."""
        while acc.n and not self._stopping_hard():
            self._emit(acc, acc.n)

    def _emit_rolled(self, acc: _Acc) -> None:
        """The pending rows' segment was rolled to history (memory reset, maybe already
        overwritten): deliver them from history instead -- exactly the rows of this table
        with first_seq <= seq <= last_seq that the subscription wants, as accumulated."""
        from wayy import subscribe_history as SH

        f, t = acc.f, acc.t
        lo, hi, want = acc.first_seq, acc.last_seq + 1, acc.n
        acc.pieces, acc.n, acc.first_seq, acc.last_seq = [], 0, -1, -1
        pieces, _seqs = SH.read(self.db.history, f.k, lo, hi, f.rules)
        got = 0
        for pt, cols, pnames in pieces:
            if pt != t:
                continue
            for _t, part, names in self._history_parts(t, cols, pnames):
                if self._stopping:  # the checkpoint resumes at the first row not sent
                    if self.callback is not None:
                        self._cur[f.k][t] = max(self._cur[f.k][t], int(part["seq"][0]))
                    return
                self._deliver_batch(f, t, Batch(f.k, T.TABLE_NAMES[t], part, names, False),
                                    int(part["seq"][-1]) + 1)
                if self._stopping:  # the cursor is after the last batch delivered
                    return
            got += len(cols["seq"])
        if got < want:
            f.st[K.F_LOST] += want - got
            log.warning("subscriber %s: %d rows of shard %d (seq %d..%d) rolled to history "
                        "while pending and are not there (retention): not delivered",
                        ",".join(self.channel_names), want - got, f.k, lo, hi - 1)
        if self.callback is not None:
            self._cur[f.k][t] = max(self._cur[f.k][t], hi)

    def _history_parts(self, t: int, cols: dict, names: tuple):
        """Rows read back from history (subscribe_history.read: ids and the names they
        index) as (table, columns, names) batches of at most batch_size rows."""
        bcols = {c: cols[c] for c in T.COLUMNS[t]}
        n = len(bcols["seq"])
        size = self.batch_size or n
        for a in range(0, n, size):
            yield t, {c: v[a:a + size] for c, v in bcols.items()}, names

    def _deliver_batch(self, f: _Follow, t: int, batch: Batch, cursor: int) -> None:
        """Hand one batch to the callback (or the poll queue), cursor after it."""
        batch = self._filtered(batch)
        if batch is None:
            return
        if self.callback is None:
            mark = _Mark(f.k, t, cursor)
            self._queue.append((batch, mark) if len(batch) else mark)
            return
        if len(batch):
            try:
                self.callback(batch)
            except Exception as exc:  # noqa: BLE001
                if self._callback_failed(exc, batch):
                    return  # the cursor stays before this batch
            self._delivered += len(batch)
            self._items += 1
            self._since_ckpt += 1
        self._cur[f.k][t] = cursor
        if self._every_due():
            self.save_checkpoint()
        elif time.monotonic_ns() >= self._pass_due():
            self._house_in_pass()

    def _emit(self, acc: _Acc, n: int) -> None:
        f, t = acc.f, acc.t
        if int(f.gen[0]) != acc.gen:
            self._emit_rolled(acc)
            return
        cols = f.data.cols[t]
        take, rest, got = [], [], 0
        for i, p in enumerate(acc.pieces):
            m = (p[1] - p[0]) if type(p) is tuple else len(p)
            if got + m <= n:
                take.append(p)
                got += m
                if got == n:
                    rest = acc.pieces[i + 1:]
                    break
            else:
                cut = n - got
                if type(p) is tuple:
                    take.append((p[0], p[0] + cut))
                    rest = [(p[0] + cut, p[1])] + acc.pieces[i + 1:]
                else:
                    take.append(p[:cut])
                    rest = [p[cut:]] + acc.pieces[i + 1:]
                got = n
                break
        if len(take) == 1 and type(take[0]) is tuple:
            sl = slice(*take[0])
            bcols = {c: cols[c][sl] for c in T.COLUMNS[t]}
            zero = True
        else:
            idx = np.concatenate([np.arange(p[0], p[1]) if type(p) is tuple else p
                                  for p in take])
            bcols = {c: cols[c][idx] for c in T.COLUMNS[t]}
            zero = False
        if int(f.gen[0]) != acc.gen:  # rolled while we read: these may be new rows
            self._emit_rolled(acc)
            return
        acc.pieces = rest
        acc.n -= n
        if acc.n:
            p = rest[0]
            first_row = p[0] if type(p) is tuple else int(p[0])
            acc.first_seq = int(cols["seq"][first_row])
            cursor = acc.first_seq
        else:
            acc.first_seq = -1
            cursor = int(f.st[K.F_NEXT])
        names = f.name_arrays(self.db)
        self._deliver_batch(f, t, Batch(f.k, T.TABLE_NAMES[t], bcols, names, zero, f.gen,
                                        acc.gen), cursor)

    def _filtered(self, batch: Batch) -> Batch | None:
        """The batch after the subscription's filter (None: the filter raised and errors
        stop the subscription). True (or a numpy bool) keeps the batch, False or None drops
        it (as a per-tick filter's answer is read), a boolean mask keeps its rows. A filter
        that raises, or returns anything else, fails like a callback: counted, logged, and
        -- as a tick a per-tick filter raised on -- the batch is not delivered."""
        if self.filter is None:
            return batch
        try:
            keep = self.filter(batch)
            mask = np.asarray(False if keep is None else keep)
        except Exception as exc:  # noqa: BLE001
            if self._callback_failed(exc, batch, "filter"):
                return None
            mask = np.asarray(False)
        if mask.dtype != np.bool_ or mask.shape not in ((), (len(batch),)):
            # the message says it all: no traceback of wayy's own frames
            bad = InvalidInput(f"a batch filter must return a bool or a boolean mask of the "
                               f"batch's {len(batch)} rows, got {type(keep).__name__} of "
                               f"dtype {mask.dtype} and shape {mask.shape}")
            if self._callback_failed(bad, batch, "filter", trace=False):
                return None
            mask = np.asarray(False)
        if mask.shape == ():  # one answer for the whole batch (bool, numpy bool, None)
            return batch if mask else batch.keep(np.zeros(len(batch), bool))
        return batch.keep(mask)

    # --- errors ----------------------------------------------------------------------------------
    def _filter(self, filt, tick) -> int:
        """1 keep the tick, 0 skip it, -1 stop: the filter raised and errors stop the sub."""
        try:
            keep = filt(tick)
        except Exception as exc:  # noqa: BLE001
            return -1 if self._callback_failed(exc, tick, "filter") else 0
        try:
            return 1 if keep else 0
        except Exception as exc:  # noqa: BLE001  (an answer with no truth value: an array)
            # the user's mistake, said in one line: no traceback of wayy's own frames
            bad = InvalidInput(f"a per-tick filter must return a bool (true keeps the tick), "
                               f"got {type(keep).__name__}: {exc}")
            return -1 if self._callback_failed(bad, tick, "filter", trace=False) else 0

    def _callback_failed(self, exc: Exception, item, what: str = "callback",
                         trace: bool = True) -> bool:
        """Count, log (or hand to on_error) a failed callback (or ``what``: "filter"), with
        the traceback unless ``trace`` is False. True if the subscription stops."""
        self._errors += 1
        n = self._errors
        if self.on_error is not None:
            try:
                self.on_error(exc, item)
            except Exception:  # noqa: BLE001
                log.exception("on_error handler failed")
        elif n <= ERROR_LOG_FIRST or n % ERROR_LOG_EVERY == 0:
            chans = ",".join(self.channel_names)
            if trace:
                log.error("subscriber %s: %s raised on %r (%d errors so far)", chans, what,
                          item, n, exc_info=exc)
            else:
                log.error("subscriber %s: %s failed on %r: %s (%d errors so far)", chans,
                          what, item, exc, n)
        if self.stop_on_error:
            self.error = exc
            self.stopped_reason = f"{what} raised {type(exc).__name__}: {exc}"
            self._stopping = True
            return True
        return False

    # --- housekeeping: status, checkpoint, liveness ----------------------------------------------
    def _every_due(self) -> bool:
        """``checkpoint_every`` deliveries since the last checkpoint."""
        return self._checkpoint_every is not None and self._since_ckpt >= self._checkpoint_every

    def _housekeep(self, now: int) -> None:
        self._house_due = now + HOUSEKEEP_NS
        self._publish_status(time.time_ns(), RL.STATE_RUNNING)
        if self._ckpt is not None and (
                now >= self._ckpt_due or self._every_due()):
            self.save_checkpoint()
        if now >= self._alive_due:
            self._alive_due = now + ALIVE_CHECK_NS
            if not self.db._still_running():
                # deliver what is committed, then stop
                if all(f.st[K.F_BF_END] < 0 and f.hdr[CRL.TAIL_I64] <= f.st[K.F_POS]
                       for f in self._follows):
                    self.stopped_reason = "database stopped"
                    self._stopping = True

    def _pass_due(self) -> int:
        """When a pass still delivering must stop to housekeep (_house_in_pass)."""
        return min(self._house_due, self._yield_at,
                   self._ckpt_due if self._ckpt is not None else 1 << 62)

    def _house_in_pass(self) -> None:
        """Within a pass that delivers for long: the registry heartbeat and counters (what
        `wayy status` shows) and the checkpoint_ms checkpoint, which would otherwise wait
        for the pass to end. The caller has brought cursors and counters up to date."""
        now = time.monotonic_ns()
        if now >= self._house_due:
            self._house_due = now + HOUSEKEEP_NS
            self._publish_status(time.time_ns(), RL.STATE_RUNNING)
        if self._ckpt is not None and now >= self._ckpt_due:
            self.save_checkpoint()
        if now >= self._yield_at:
            self._yielding = True

    def _publish_status(self, wall_ns: int, state: int) -> None:
        s = self._slot
        if s is None:
            return
        i64 = s.i64
        i64[RL.HEARTBEAT_NS_I64] = wall_ns
        i64[RL.DELIVERED_I64] = self._delivered
        i64[RL.ITEMS_I64] = self._items
        i64[RL.ERRORS_I64] = self._errors
        over = back = lost = gaps = 0
        done = self._processed()
        for f in self._follows:
            st = f.st
            over += int(st[K.F_OVERRUNS])
            back += int(st[K.F_BACKFILLED])
            lost += int(st[K.F_LOST])
            gaps += int(st[K.F_GAPS])
            s.shards[f.k, RL.SHARD_NEXT_SEQ] = done[f.k]
            s.shards[f.k, RL.SHARD_LAST_TS] = st[K.F_LAST_TS]
        i64[RL.OVERRUNS_I64] = over
        i64[RL.BACKFILLED_I64] = back
        i64[RL.LOST_I64] = lost
        i64[RL.GAPS_I64] = gaps
        s.i32[RL.STATE_I32] = state

    def _processed(self) -> dict[int, int]:
        """Per followed shard, the seq below which every row is processed: with a callback,
        delivered (rows read ahead inside a long pass, or waiting in a batch, are still
        lag); when polled, read."""
        out = {}
        cur = self.cursors() if self.callback is not None else None
        for f in self._follows:
            nxt = int(f.st[K.F_NEXT])
            if cur is not None:
                done = [cur[f.k][t] for t in (0, 1) if not f.rules[t].empty()]
                if done and min(done) >= 0:
                    nxt = min(nxt, min(done))
            out[f.k] = nxt
        return out

    def cursors(self) -> list[list[int]]:
        """Per shard, per table (trades, quotes): the next seq to deliver (-1: shard not
        followed). Every matching row below it has been delivered."""
        cur = [list(c) for c in self._cur]
        if self.batch_mode and self.callback is not None:
            for (k, t), acc in self._accs.items():
                if acc.n:  # everything before the oldest pending row is done
                    cur[k][t] = max(cur[k][t], acc.first_seq)
        return cur

    def save_checkpoint(self) -> None:
        """Write the checkpoint now (no-op without ``checkpoint=``)."""
        if self._ckpt is None or self._ckpt_failed:
            return
        self._ckpt_due = time.monotonic_ns() + self._checkpoint_ns
        self._since_ckpt = 0
        cursors = self.cursors()
        try:
            state = None
            if self.on_checkpoint is not None:
                state = self.on_checkpoint()
            elif cursors == self._ckpt.last_cursors:
                return
            self._ckpt.write(cursors, self.channel_names, state)
        except Exception as exc:  # noqa: BLE001
            # without a checkpoint a restart would repeat or skip rows: stop, and say why
            # (once: stop() afterwards does not try again)
            if isinstance(exc, WayyError):
                err: WayyError = exc
            elif isinstance(exc, OSError):
                err = WayyError(f"checkpoint {self._ckpt.path} cannot be written: "
                                f"{exc.strerror or exc}", path=self._ckpt.path)
            else:
                err = InvalidInput(f"on_checkpoint raised {type(exc).__name__}: {exc}")
            if err is not exc:
                err.__cause__ = exc  # the user's traceback stays with the error run() raises
            self._ckpt_failed = True
            self.error = self.error or err
            self.stopped_reason = "checkpoint failed"
            self._stopping = True
            log.error("subscriber %s stops: %s", ",".join(self.channel_names), err)
            self._finish()  # nothing more is delivered, queued items included
            raise err from err.__cause__

    # --- faces -----------------------------------------------------------------------------------
    def _check_pid(self) -> None:
        if os.getpid() != self._pid:
            raise InvalidInput(f"subscription created in pid {self._pid} used in forked child "
                               f"{os.getpid()}: subscribe again in the child")

    def poll(self, timeout: float | None = 0.0):
        """The next item (a Tick, or a Batch in batch mode), or None if none came within
        ``timeout`` seconds (None: wait for ever; 0: do not wait). Raises NotRunning once the
        database has stopped and everything committed was delivered."""
        self._check_pid()
        if self.callback is not None:
            raise InvalidInput("this subscription has a callback: run it with run() or "
                               "db.run(), or subscribe without callback= to poll")
        deadline = _timeout_ns(timeout, "poll()")
        idle = _make_idle(self.idle_name)
        q = self._queue
        box = self._runner  # (_claim_thread, inlined: poll() is called once per item)
        me = get_ident()
        mine = not box
        if box.setdefault(0, me) != me:
            raise _run_elsewhere(self)
        if self._every_due():
            # the caller is back for more: what earlier polls returned is processed
            self.save_checkpoint()
        self._running = True
        try:
            while True:
                while q:
                    item = q.popleft()
                    if type(item) is _Mark:
                        self._apply_mark(item)
                        continue
                    if type(item) is Tick:
                        c = self._cur[item[10]]
                        c[0] = c[1] = item[9] + 1
                        self._delivered += 1
                    else:
                        item, mark = item
                        self._apply_mark(mark)
                        self._delivered += len(item)
                    self._items += 1
                    self._since_ckpt += 1
                    return item
                if not self._active:
                    if self.stopped_reason == "database stopped":
                        raise NotRunning(f"the database at {self.db.path} stopped",
                                         path=self.db.path)
                    return None
                if self._stopping:
                    self._running = False
                    self._finish()
                    if self.error is not None:
                        raise self.error
                    continue
                work = self._do_work()
                if q or work:
                    continue
                now = time.monotonic_ns()
                if deadline is not None and now >= deadline:
                    return None
                limit = PARK_MAX_NS if deadline is None else deadline - now
                idle.idle(0, [self], limit)
        finally:
            self._running = False
            if mine:
                box.clear()

    def _apply_mark(self, m: _Mark) -> None:
        if m.t < 0:
            self._cur[m.k][0] = self._cur[m.k][1] = m.cursor
        else:
            self._cur[m.k][m.t] = m.cursor

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        try:
            item = self.poll(None)
        except NotRunning:
            raise StopIteration from None
        if item is None:
            raise StopIteration
        return item

    def run(self, timeout: float | None = None) -> None:
        """Run this subscription's callback until stop(), Ctrl-C or ``timeout`` seconds."""
        _run([self], timeout)

    def stop(self) -> None:
        """Stop: deliver pending partial batches to a callback, write the checkpoint, release
        the status slot. Safe to call from a callback, a signal handler or another thread."""
        self._stopping = True
        if self._in_loop():
            return  # called from a callback or another thread: the running loop finishes
        self._finish()

    def _in_loop(self) -> bool:
        return getattr(self, "_running", False)

    def _finish(self) -> None:
        if not self._active or os.getpid() != self._pid:
            return
        q = self._queue
        while q and type(q[0]) is _Mark:
            self._apply_mark(q.popleft())
        q.clear()
        self._yield_at, self._yielding = 1 << 62, False
        try:
            if self.batch_mode and self.callback is not None and self.error is None:
                self._stopping = False  # let the flush deliver
                try:
                    self._flush(time.monotonic_ns(), True)
                finally:
                    self._stopping = True
            if self._ckpt is not None:
                self.save_checkpoint()
        finally:
            self._active = False
            if self.stopped_reason is None:
                self.stopped_reason = "stopped"
            self._release()

    def _release(self) -> None:
        if self._slot is not None:
            try:
                self._publish_status(time.time_ns(), RL.STATE_STOPPED)
                self._slot.release()
            except Exception:  # noqa: BLE001
                pass
            self._slot = None
        if self._ckpt is not None:
            self._ckpt.close()
        try:
            self.db._subscriptions.remove(self)
        except (ValueError, AttributeError):
            pass

    close = stop

    @property
    def active(self) -> bool:
        return self._active

    def stats(self) -> dict:
        """Counters: delivered rows, items, overruns, backfilled rows, errors, lost, gaps,
        per-shard processed seq and lag (rows committed but not yet processed)."""
        shards = {}
        over = back = lost = gaps = 0
        done = self._processed()
        for f in self._follows:
            st = f.st
            over += int(st[K.F_OVERRUNS])
            back += int(st[K.F_BACKFILLED])
            lost += int(st[K.F_LOST])
            gaps += int(st[K.F_GAPS])
            head = int(K.committed_next_seq(f.seg8))
            shards[f.k] = {"next_seq": done[f.k], "lag_rows": head - done[f.k],
                           "hwm_at_subscribe": self.hwm.get(f.k)}
        return {"channels": self.channel_names, "delivered": self._delivered,
                "items": self._items, "overruns": over, "backfilled": back,
                "errors": self._errors, "lost": lost, "gaps": gaps, "shards": shards,
                "active": self._active, "stopped_reason": self.stopped_reason}

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        mode = "batch" if self.batch_mode else "tick"
        state = "active" if self._active else f"stopped ({self.stopped_reason})"
        return (f"<wayy.Subscription {', '.join(self.channel_names)}: {mode} mode, "
                f"{self._delivered} rows delivered, {state}>")


def _zip_rows(k: int, t: int, cols: dict, names: tuple):
    sym = names[0][cols["symbol"]].tolist()
    ven = names[1][cols["venue"]].tolist()
    ts = cols["ts"].tolist()
    seq = cols["seq"].tolist()
    none = repeat(None)
    if t == T.TRADES:
        return zip(ts, sym, ven, cols["price"].tolist(), cols["size"].tolist(), none, none,
                   none, none, seq, repeat(k), repeat("trades"))
    return zip(ts, sym, ven, none, none, cols["bid"].tolist(), cols["ask"].tolist(),
               cols["bid_size"].tolist(), cols["ask_size"].tolist(), seq, repeat(k),
               repeat("quotes"))


# --- idle strategies -----------------------------------------------------------------------------

class _Idle:
    """Called after every pass of the loop with its work count; sleeps at most ``limit_ns``."""

    def idle(self, work: int, subs: list, limit_ns: int) -> None:  # pragma: no cover
        raise NotImplementedError


def _one_ring(subs: list):
    """The (subscription, follow) when the loop follows exactly one ring with nothing to
    backfill (the common case, and the latency benchmark's), else None: then an idle
    strategy can hand the wait to a ring kernel, with no Python between a publish and the
    next follow call but that kernel's return."""
    if len(subs) != 1:
        return None
    s = subs[0]
    if len(s._follows) != 1 or not s._active:
        return None
    f = s._follows[0]
    return None if f.stv[K.F_BF_END] >= 0 else (s, f)


def _limit(s, limit_ns: int) -> int:
    """``limit_ns`` cut to the subscription's next batch deadline."""
    if s.batch_mode and s._next_flush < (1 << 62):
        return min(limit_ns, s._next_flush - time.monotonic_ns())
    return limit_ns


class _Spin(_Idle):
    """Poll without pause. On one ring the polling runs in a kernel (``spin_wait``: a read of
    the tail every ~50 ns, the GIL released), in slices so housekeeping and signals stay
    timely; on several rings each pass of the loop polls them all."""

    def idle(self, work, subs, limit_ns):
        if work:
            return
        one = _one_ring(subs)
        if one is None:
            return
        s, f = one
        limit = _limit(s, min(limit_ns, SPIN_SLICE_NS))
        if limit > 0 and f.spin_wait(f.hdr, f.stv[K.F_POS], limit) == CR.CLOSED:
            time.sleep(0.001)  # a stopping writer: do not spin on its closed ring


class _Yield(_Idle):
    def idle(self, work, subs, limit_ns):
        if not work:
            os.sched_yield()


def _wait_rings(subs: list, limit_ns: int) -> None:
    """Sleep on the futex words of every followed ring until one publishes or limit passes."""
    one = _one_ring(subs)
    if one is not None:
        # one ring: straight to its kernel, so a wake-up costs the subscriber no Python
        # beyond this call
        s, f = one
        limit_ns = _limit(s, limit_ns)
        if limit_ns > 0 and f.wait_once(f.hdr, f.wctl, f.stv[K.F_POS],
                                        min(limit_ns, PARK_MAX_NS)) == CR.CLOSED:
            time.sleep(0.001)  # a stopping writer: do not spin on its closed ring
        return
    readers, positions, seen = [], [], {}
    for s in subs:
        if not s._active:
            continue
        limit_ns = _limit(s, limit_ns)
        for f in s._follows:
            if f.stv[K.F_BF_END] >= 0:
                return  # a backfill is under way: no sleeping
            i = seen.get(f.k)
            pos = f.stv[K.F_POS]
            if i is None:
                seen[f.k] = len(readers)
                readers.append(f.ring)
                positions.append(pos)
            elif pos < positions[i]:
                positions[i] = pos
    if not readers or limit_ns <= 0:
        return
    st = CR.wait_any(readers, positions, min(limit_ns, PARK_MAX_NS))
    if st == CR.OK and any(r.writer_closed() for r in readers):
        time.sleep(0.001)  # a stopping writer: do not spin on its closed ring


class _Block(_Idle):
    def idle(self, work, subs, limit_ns):
        if not work:
            _wait_rings(subs, limit_ns)


class _Backoff(_Idle):
    """After work, poll briefly (one ring: BACKOFF_SPIN_NS in a kernel; several: BACKOFF_SPINS
    passes of the loop), then sleep on the rings' futex words (woken by the next publish, or
    after the cap).

    The poll pays only while ticks come closer together than it lasts. After
    BACKOFF_MISSES polls in a row that found nothing, the subscriber sleeps at once, until a
    sleep ends within BACKOFF_HIT_NS or a probe poll (every BACKOFF_PROBE-th time) finds a
    tick: a burst turns polling back on. At a steady 10,000 ticks/s a 10 us poll after
    every tick found nothing and took 10% of a core per subscriber."""

    def __init__(self) -> None:
        self.empty = 0
        self.misses = 0  # polls in a row that found nothing
        self.skipped = 0  # polls skipped since the last one
        self.polling = False  # several rings: the loop's passes are the poll

    def idle(self, work, subs, limit_ns):
        if work:
            if self.polling:  # the poll found it
                self.misses = 0
            self.empty = 0
            self.polling = False
            return
        self.empty += 1
        if self.empty == 1 and self.misses >= BACKOFF_MISSES:
            self.skipped += 1
            if self.skipped < BACKOFF_PROBE:
                self.empty = BACKOFF_SPINS + 1  # no poll until the next work
                t0 = time.monotonic_ns()
                _wait_rings(subs, limit_ns)
                if time.monotonic_ns() - t0 < BACKOFF_HIT_NS:
                    # woken as soon as that: a burst, which a poll would have caught
                    self.misses = 0
                return
            self.skipped = 0
        one = _one_ring(subs)
        if one is None:
            self.polling = self.empty <= BACKOFF_SPINS
            if self.polling:
                return
            if self.empty == BACKOFF_SPINS + 1:
                self.misses += 1
        elif self.empty == 1:
            s, f = one
            limit = _limit(s, min(limit_ns, BACKOFF_SPIN_NS))
            if limit > 0 and f.spin_wait(f.hdr, f.stv[K.F_POS], limit) == CR.OK:
                self.misses = 0
                return  # published while polling: the next pass takes it
            self.misses += 1
            limit_ns -= max(limit, 0)  # then sleep the rest (the wait re-checks the ring)
        _wait_rings(subs, limit_ns)


_IDLE_CLASSES = {"spin": _Spin, "yield": _Yield, "backoff": _Backoff, "block": _Block}


def _make_idle(name: str) -> _Idle:
    return _IDLE_CLASSES[name]()


# --- running callbacks ---------------------------------------------------------------------------

def _claim_thread(subs: list["Subscription"]) -> list["Subscription"]:
    """Mark ``subs`` as run by this thread; InvalidInput if another thread runs one of them
    (two threads delivering one subscription would break its seq order and its cursors).
    Returns the ones claimed now (a nested run in a callback claims none). The claim is
    ``dict.setdefault``, one atomic step under the GIL: of two threads, one wins."""
    me = get_ident()
    claimed = []
    for s in subs:
        box = s._runner
        had = bool(box)
        if box.setdefault(0, me) != me:
            _release_thread(claimed)
            raise _run_elsewhere(s)
        if not had:
            claimed.append(s)
    return claimed


def _run_elsewhere(s: "Subscription") -> InvalidInput:
    return InvalidInput(f"subscription {', '.join(s.channel_names)} is being run by another "
                        f"thread: run() / poll() it from one thread at a time")


def _release_thread(claimed: list["Subscription"]) -> None:
    for s in claimed:
        s._runner.clear()


def _run(subs: list[Subscription], timeout: float | None, db=None) -> None:
    """Run callback subscriptions in this thread until all stop, Ctrl-C, or the timeout.
    With ``db``, callback subscriptions made on it while this runs (a callback may
    subscribe) join the run."""
    deadline = _timeout_ns(timeout, "run()")  # (checked first, nested or not)
    me = get_ident()
    if any(s._runner.get(0) == me for s in subs):
        # a run nested in a callback: the subscriptions this thread is already running are
        # in the middle of a pass (delivering theirs here would overtake the rest of it);
        # they go on when the callback returns. The others run here.
        subs = [s for s in subs if s._runner.get(0) != me]
        if not subs:
            return
    if not subs:
        raise InvalidInput("no active callback subscriptions to run")
    for s in subs:
        s._check_pid()
        if s.callback is None:
            raise InvalidInput(f"subscription {', '.join(s.channel_names)} has no callback: "
                               f"use poll() or iterate it")
    # the most eager idle strategy of the group decides (spin > yield > backoff > block)
    order = ("spin", "yield", "backoff", "block")
    idle = _make_idle(min((s.idle_name for s in subs), key=order.index))
    claimed = _claim_thread(subs)
    try:
        _run_claimed(subs, deadline, db, claimed, idle)
    finally:
        _release_thread(claimed)


def _run_claimed(subs: list[Subscription], deadline: int | None, db, claimed: list,
                 idle) -> None:
    main = threading.current_thread() is threading.main_thread()
    old = {}
    interrupted = []

    def on_signal(signum, _frame):
        interrupted.append(signum)
        for s in subs:
            s._stopping = True
            if s.stopped_reason is None:
                s.stopped_reason = f"signal {signal.Signals(signum).name}"

    if main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, on_signal)
    outer = {}
    for s in subs:
        s._running = True
        outer[id(s)] = s._yield_at
        if deadline is not None:
            s._yield_at = min(s._yield_at, deadline)
    idle_fn = idle.idle
    me = get_ident()
    known = db._subs_made if db is not None else 0
    try:
        live = list(subs)
        while True:
            if db is not None and db._subs_made != known:
                known = db._subs_made
                for s in db._subscriptions:
                    if s.active and s.callback is not None and s not in subs:
                        s._check_pid()
                        if s._runner or s._made_by != me:
                            continue  # another thread's, or an outer run's
                        claimed += _claim_thread([s])
                        s._running = True
                        subs.append(s)
                        live.append(s)
            if not live:
                break
            work = 0
            ended = False
            for s in live:
                if s._stopping:
                    ended = True
                    continue
                work += s._do_work()
                if s._stopping or not s._active:
                    ended = True
            if ended:
                done = [s for s in live if s._stopping or not s._active]
                for s in done:
                    s._finish()
                    live.remove(s)
                    if s.error is not None:
                        for o in live:
                            o._stopping = True
                            o._finish()
                        raise s.error
                continue
            if deadline is not None:
                now = time.monotonic_ns()
                if now >= deadline:
                    # still active: the checkpoints say where they stand, so a process that
                    # exits now resumes without a repeat
                    for s in live:
                        s.save_checkpoint()
                    return
                idle_fn(work, live, deadline - now)
            else:
                idle_fn(work, live, PARK_MAX_NS)
    finally:
        for s in subs:
            s._running = False
            s._yield_at = outer.get(id(s), 1 << 62)  # (a nested run's: the outer deadline)
            s._yielding = False
        for sig, h in old.items():
            signal.signal(sig, h)


# --- the entry point -----------------------------------------------------------------------------

def _channels(table_or_channel, symbol, venue) -> list[Channel]:
    if isinstance(table_or_channel, (list, tuple, set, frozenset)):
        if symbol is not None or venue is not None:
            raise InvalidInput("symbol= and venue= go with one table name, not a list of "
                               "channels")
        if not table_or_channel:
            raise InvalidInput("no channels given")
        chans = [c if isinstance(c, Channel) else channel_of(c) for c in table_or_channel]
    elif isinstance(table_or_channel, Channel):
        chans = [table_or_channel]
    else:
        chans = [channel_of(table_or_channel, symbol, venue)]
    out: list[Channel] = []
    for c in chans:  # keep order, drop repeats
        if c not in out:
            out.append(c)
    return out


_INT64_MAX = (1 << 63) - 1
MAX_ROWS_ARG = 1 << 40  # batch_size, checkpoint_every: far beyond any shard
MAX_MS_ARG = 86_400_000.0  # max_latency_ms, checkpoint_ms: one day


def _timeout_ns(timeout, what: str) -> int | None:
    """A ``timeout=`` in seconds (None: for ever; 0 or less: do not wait) as a deadline in
    monotonic ns."""
    if timeout is None:
        return None
    if timeout.__class__ is float and 0.0 <= timeout < MAX_TIMEOUT_S \
            or timeout.__class__ is int and 0 <= timeout < MAX_TIMEOUT_S:
        return time.monotonic_ns() + int(timeout * 1e9)  # the usual case, checked cheaply
    ok = not isinstance(timeout, bool) and isinstance(timeout, (int, float, np.integer,
                                                                np.floating))
    try:
        t = float(timeout) if ok else math.nan
    except OverflowError:  # an int beyond any float
        t = math.inf if timeout > 0 else -math.inf
    if math.isnan(t):
        raise InvalidInput(f"{what} timeout must be a number of seconds or None, got "
                           f"{timeout!r}")
    t = min(t, MAX_TIMEOUT_S)  # inf (or beyond a century): for ever
    return None if t >= MAX_TIMEOUT_S else time.monotonic_ns() + int(max(t, 0.0) * 1e9)


MAX_TIMEOUT_S = 100 * 365 * 86400.0


def _positive(v, what: str, integer: bool):
    if v is None:
        return None
    ok = isinstance(v, (int, np.integer)) if integer else isinstance(v, (int, float, np.number))
    if isinstance(v, bool) or not ok or not math.isfinite(float(v)) or v <= 0:
        kind = "a positive int" if integer else "a positive number"
        raise InvalidInput(f"{what} must be {kind}, got {v!r}")
    limit = MAX_ROWS_ARG if integer else MAX_MS_ARG
    if v > limit:
        unit = "rows" if integer else "ms (one day)"
        raise InvalidInput(f"{what} must be at most {int(limit):,} {unit}, got {v!r}")
    return v


def subscribe(db, table_or_channel, *, symbol=None, venue=None, callback=None, filter=None,
              batch_size=None, max_latency_ms=None, checkpoint=None, from_seq=None,
              from_ts=None, idle="backoff", on_overrun=None, on_error=None,
              stop_on_error=False, checkpoint_every=None, checkpoint_ms=1000.0,
              on_checkpoint=None, shards=None) -> Subscription:
    """Check the arguments of ``Database.subscribe`` and start the subscription."""
    if os.getpid() != db._pid:
        raise InvalidInput(f"database attached in pid {db._pid} used in forked child "
                           f"{os.getpid()}: attach again in the child")
    if not db.shards:
        raise InvalidInput("the database is closed")
    # a handle of a stopped (or stopped and started again) database would follow rings no
    # writer publishes to any more: say so now, as a query would
    db._check_current(force=True)
    channels = _channels(table_or_channel, symbol, venue)
    for name, fn in (("callback", callback), ("filter", filter), ("on_overrun", on_overrun),
                     ("on_error", on_error), ("on_checkpoint", on_checkpoint)):
        if fn is not None and not callable(fn):
            raise InvalidInput(f"{name} must be callable, got {type(fn).__name__}")
    _positive(batch_size, "batch_size", True)
    _positive(max_latency_ms, "max_latency_ms", False)
    _positive(checkpoint_every, "checkpoint_every", True)
    _positive(checkpoint_ms, "checkpoint_ms", False)
    if idle not in IDLE_STRATEGIES:
        raise InvalidInput(f"idle must be one of {', '.join(IDLE_STRATEGIES)}, got {idle!r}")
    if on_checkpoint is not None and checkpoint is None:
        raise InvalidInput("on_checkpoint needs checkpoint= (where the state is stored)")
    if shards is not None:
        try:
            shards = frozenset(shards)
        except TypeError:
            raise InvalidInput(f"shards must be a list of shard numbers, got {shards!r}") \
                from None
        n = db.nshards
        bad = [k for k in shards if isinstance(k, bool) or not isinstance(k, (int, np.integer))
               or not 0 <= k < n]
        if bad or not shards:
            raise InvalidInput(f"shards must name shards 0..{n - 1}, got "
                               f"{sorted(shards, key=str)}")
    sub = Subscription(db, channels, callback=callback, filter=filter, batch_size=batch_size,
                       max_latency_ms=max_latency_ms, checkpoint=checkpoint,
                       checkpoint_every=checkpoint_every, checkpoint_ms=checkpoint_ms,
                       on_checkpoint=on_checkpoint, from_seq=from_seq, from_ts=from_ts,
                       idle=idle, on_overrun=on_overrun, on_error=on_error,
                       stop_on_error=stop_on_error, shards=shards)
    db._subscriptions.append(sub)
    db._subs_made += 1
    return sub


__all__ = ["Subscription", "Tick", "Batch", "Overrun", "IDLE_STRATEGIES", "TICK_FIELDS"]
