"""A shard writer's write-ahead log: recovery at start, one append per pass, disk-full handling.

The writer calls, in order:

    log = ShardLog(db_path, shard, fsync=..., interval_ms=...)
    log.recover(data, state)      before going live: make the WAL and the segment agree
    log.append_pass(...)          after each drain, before the commit (durability first)
    log.close()                   on stop (flushes under every policy)

What "agree" means at start, with S = the segment's committed next seq and W = the WAL's:

    fresh segment (S == 0), W > 0   the database was stopped or the machine restarted: load
                                    every WAL row into the segment (bulk), commit, go on at W
    live segment, W > S             the previous writer died between WAL append and commit:
                                    those rows are still in the inbound ring (released only
                                    after a commit), so the WAL is cut back to S and the ring
                                    is drained again -- same rows, same seqs, logged once
    live segment, W < S             the WAL lost records the segment still has (a damaged
                                    WAL cut back to its good prefix): the missing rows are
                                    logged again from the segment
    W == S                          nothing to do

A torn tail (a crash mid-append) is cut off and logged with its byte count. Mid-file damage
is cut off too, but first the whole damaged file is copied aside (``*.damaged-<ns>``) and the
damage is logged as an error: nothing after it is trusted, and `wayy verify` keeps reporting
the copy until an operator removes it. A WAL of another shard or format version stops the
writer with an error naming both.

Where the WAL lives: ``<db>/wal/shard-<k>.wal``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass

import numpy as np

from shm import ingest, wal
from shm.errors import WalWriteError
from shm.layout import shard as S
from shm.layout import tables as T
from shm.layout import wal as WL
from shm.shard import ShardData

log = logging.getLogger("wayy.wal")

WAL_DIR = "wal"
_PAGE = os.sysconf("SC_PAGE_SIZE")
# Records are raw unless --wal-compress: LZ4 (~650 MB/s here) halves the WAL (38 -> 20 bytes
# a trade) but on two cores costs a fifth to a half of the ingest rate (benchmarks/RESULTS.md).
# Raw passes up to SMALL_PASS_ROWS are assembled and checksummed by one compiled call: the
# Python assembly costs tens of microseconds a pass, which is latency on every tick.
SMALL_PASS_ROWS = 256

_REC = {T.TRADES: WL.REC_TRADES, T.QUOTES: WL.REC_QUOTES}
_WAL_NAMES = {T.TRADES: ("ts", "symbol_id", "venue_id", "price", "size", "seq"),
              T.QUOTES: ("ts", "symbol_id", "venue_id", "bid", "ask", "bid_size", "ask_size",
                         "seq")}


@dataclass(frozen=True)
class WalConfig:
    """How writers log: `wayy start --fsync batch|interval|off [--no-wal]`."""

    enabled: bool = True
    fsync: str = "interval"
    interval_ms: float = 10.0
    compress: bool = False  # LZ4 every record when that is smaller (`--wal-compress`)


def wal_path(db_path: str, shard: int) -> str:
    """The WAL file of ``shard`` in the database directory."""
    return os.path.join(db_path, WAL_DIR, f"shard-{shard}.wal")


def _populate(ranges: list[tuple[int, int]]) -> None:
    for addr, nbytes in ranges:
        ingest.populate(addr, nbytes, _PAGE)


class RecoveryError(Exception):
    """The WAL cannot be applied to this segment (too many rows, names, a bad file)."""


class ShardLog:
    """The WAL of one shard, owned by its writer process."""

    def __init__(self, db_path: str, shard: int, fsync: str = "interval",
                 interval_ms: float = 10.0, compress: bool = False) -> None:
        self.path = wal_path(db_path, shard)
        self.shard = shard
        self.fsync = fsync
        self.interval_ms = interval_ms
        self.compress = compress
        self.writer: wal.WalWriter | None = None
        self.logged_symbols = 0  # names with ids below these are in the WAL
        self.logged_venues = 1  # venue 0 is the empty venue, never logged
        self.created_ns: int | None = None  # when the WAL file began (first start or roll)
        self.stats: dict = {}
        self._raw: dict = {}  # (id(data), table) -> (column addresses, item sizes, columns)
        self._compiled: tuple | None = None  # pass_log_table's table, a view of it, scratch
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    # --- start ----------------------------------------------------------------------------
    def recover(self, data: ShardData, state: np.ndarray) -> dict:
        """Bring the WAL and the segment into agreement (see the module docstring), open the
        WAL for appending, and return what was done (also kept in ``self.stats``)."""
        t0 = time.perf_counter()
        found = (wal.scan(self.path, self.shard, keep_buffer=True)
                 if os.path.exists(self.path) else None)
        stats = {"loaded_rows": 0, "relogged_rows": 0, "dropped_uncommitted_bytes": 0,
                 "truncated_bytes": 0, "damage": None}
        if found is not None and found.damage is not None:
            stats["damage"] = found.reason
            if found.mid_file:
                aside = f"{self.path}.damaged-{time.time_ns()}"
                shutil.copyfile(self.path, aside)
                log.error("shard %d: WAL %s: %s; copied aside to %s and cut back to the "
                          "good prefix (%d bytes dropped)", self.shard, self.path,
                          found.reason, aside, found.damaged_bytes)
            else:
                log.warning("shard %d: WAL %s: %s; cut back to %d bytes", self.shard,
                            self.path, found.reason, found.good_end)
            stats["truncated_bytes"] = wal.truncate_to(self.path, found.good_end)
            found = wal.scan(self.path, self.shard)

        if found is not None and found.roll_seq and self._holds_rolled_rows(data, state,
                                                                            found.roll_seq):
            # the writer died in a roll after starting the new WAL, before resetting the
            # segment: the rows are in history, finish the roll
            from workers.roll import reset_segment

            reset_segment(data, state)
            stats["finished_roll"] = True
            log.warning("shard %d: finished an interrupted roll (rows before seq %d are in "
                        "history)", self.shard, found.roll_seq)
        committed_seq = int(state[ingest.S_NEXT_SEQ])
        # a segment nobody ever committed to (a new run of the database), as opposed to one
        # with zero rows after a roll, whose WAL tail may be a pass the ring still holds
        fresh = int(data.hdr64[S.COMMIT_IDX_I64]) == 0
        wal_next = found.next_seq if found is not None and found.next_seq is not None else 0
        if found is not None and fresh and wal_next > 0:
            stats["loaded_rows"] = self._load(found, data, state)
        elif found is not None and wal_next > committed_seq:
            cut = self._first_record_from(found, committed_seq)
            stats["dropped_uncommitted_bytes"] = wal.truncate_to(self.path, cut)
            found = wal.scan(self.path, self.shard)
        if found is not None:
            self._count_logged_names(found)
        self.created_ns = found.created_ns if found is not None else time.time_ns()
        self.writer = wal.WalWriter(self.path, self.shard, fsync=self.fsync,
                                    interval_ms=self.interval_ms,
                                    compress=self.compress, scan=found,
                                    background=True)
        if not fresh and (self.writer.next_seq or 0) < committed_seq:
            stats["relogged_rows"] = self._relog(data, state, self.writer.next_seq or 0)
        stats["seconds"] = time.perf_counter() - t0
        self.stats = stats
        if stats["loaded_rows"]:
            log.info("shard %d: recovered %d rows from %s in %.3fs (%.1fM rows/s)", self.shard,
                     stats["loaded_rows"], self.path, stats["seconds"],
                     stats["loaded_rows"] / max(stats["seconds"], 1e-9) / 1e6)
        if stats["dropped_uncommitted_bytes"]:
            log.info("shard %d: dropped %d WAL bytes of an uncommitted pass (drained again "
                     "from the inbound ring)", self.shard, stats["dropped_uncommitted_bytes"])
        if stats["relogged_rows"]:
            log.warning("shard %d: logged %d rows again from shared memory that the WAL had "
                        "lost", self.shard, stats["relogged_rows"])
        return stats

    @staticmethod
    def _holds_rolled_rows(data: ShardData, state: np.ndarray, roll_seq: int) -> bool:
        return any(int(state[t]) > 0 and int(data.cols[t]["seq"][0]) < roll_seq
                   for t in (T.TRADES, T.QUOTES))

    def start_after_roll(self, data: ShardData, state: np.ndarray) -> None:
        """Replace the WAL with one that starts at the next seq and names every symbol and
        venue (roll step 2); the rows before are in history now."""
        from workers.roll import names_of

        self.writer.close()
        self.writer = None
        syms, vens = names_of(data, state)
        wal.start_after_roll(self.path, self.shard, int(state[ingest.S_NEXT_SEQ]), syms,
                             {i: v for i, v in enumerate(vens) if i > 0})
        found = wal.scan(self.path, self.shard)
        self._count_logged_names(found)
        self.created_ns = found.created_ns or time.time_ns()
        self.writer = wal.WalWriter(self.path, self.shard, fsync=self.fsync,
                                    interval_ms=self.interval_ms,
                                    compress=self.compress, scan=found,
                                    background=True)

    @staticmethod
    def _first_record_from(found: wal.WalScan, seq: int) -> int:
        """Offset of the first batch record holding seq >= ``seq`` (the file end if none).

        A pass's records are all committed or none, so no record straddles ``seq``.
        """
        recs = found.records
        batch = np.isin(recs["type"], list(WL.BATCH_TYPES)) & (recs["first_seq"] >= seq)
        hits = np.flatnonzero(batch)
        return int(recs["offset"][hits[0]]) if hits.size else found.good_end

    def _count_logged_names(self, found: wal.WalScan) -> None:
        recs = found.records
        # ids are assigned densely, so the record count tells which ids are logged
        self.logged_symbols = int(np.count_nonzero(recs["type"] == WL.REC_SYMBOL))
        self.logged_venues = 1 + int(np.count_nonzero(recs["type"] == WL.REC_VENUE))

    def _load(self, found: wal.WalScan, data: ShardData, state: np.ndarray) -> int:
        """Bulk-load every row of the WAL into a fresh segment and commit it."""
        # Fresh shared memory costs a page fault per 4 KiB on first write, more than copying
        # the rows: a thread maps the column pages (one madvise per column, no GIL held)
        # while this one decodes.
        recs = found.records
        ranges = []
        for t in (T.TRADES, T.QUOTES):
            n = min(int(recs["row_count"][recs["type"] == _REC[t]].sum()), data.capacity)
            r0 = int(state[t])
            ranges += [(a[r0:r0 + n].ctypes.data, a[r0:r0 + n].nbytes)
                       for a in (*data.cols[t].values(), data.prev[t])]
        mapper = threading.Thread(target=_populate, args=(ranges,), name="wayy-wal-map")
        mapper.start()
        try:
            return self._load_decoded(found, data, state)
        finally:
            mapper.join()

    def _load_decoded(self, found: wal.WalScan, data: ShardData, state: np.ndarray) -> int:
        recs = found.records
        for t in (T.TRADES, T.QUOTES):
            n = int(recs["row_count"][recs["type"] == _REC[t]].sum())
            if int(state[t]) + n > data.capacity:
                raise RecoveryError(
                    f"{self.path} holds {n} {T.TABLE_NAMES[t]} rows; this database holds "
                    f"{data.capacity} per table per shard (start with a larger --capacity)")
        targets = {_REC[t]: {wn: data.cols[t][cn] for wn, cn in zip(
            _WAL_NAMES[t], ("ts", "symbol", "venue", *T.VALUE_COLUMNS[t], "seq"))}
            for t in (T.TRADES, T.QUOTES)}
        out = wal.decode_into(found, targets, {_REC[t]: int(state[t]) for t in (0, 1)})
        syms, vens = out["symbols"], out["venues"]
        if syms and sorted(syms) != list(range(len(syms))):
            raise RecoveryError(f"{self.path}: symbol ids {sorted(syms)[:8]}... are not dense")
        if vens and sorted(vens) != list(range(1, len(vens) + 1)):
            raise RecoveryError(f"{self.path}: venue ids are not dense from 1")
        if len(syms) > data.max_symbols:
            raise RecoveryError(
                f"{self.path} names {len(syms)} symbols; this database holds "
                f"{data.max_symbols} per shard (start it with a larger --max-symbols)")
        if len(vens) + 1 > data.max_venues:
            raise RecoveryError(  # a fixed limit: no option raises it
                f"{self.path} names {len(vens)} venues; a shard holds at most "
                f"{data.max_venues - 1}")
        total = 0
        for t in (T.TRADES, T.QUOTES):
            n = out["rows"][_REC[t]]
            if n == 0:
                continue
            r0 = int(state[t])
            c = data.cols[t]
            # the index must never follow an id without a name (a hostile or damaged WAL)
            if (int(c["symbol"][r0:r0 + n].max()) >= len(syms)
                    or int(c["symbol"][r0:r0 + n].min()) < 0
                    or int(c["venue"][r0:r0 + n].max()) > len(vens)
                    or int(c["venue"][r0:r0 + n].min()) < 0):
                raise RecoveryError(f"{self.path}: {T.TABLE_NAMES[t]} rows name ids without "
                                    f"a name record")
            ingest.link_rows(data.seg.buf, data.off, data.hdr64, state, t, n)
            total += n
        for i, name in syms.items():
            data.sym_names[i] = name.encode()
        for i, name in vens.items():
            data.ven_names[i] = name.encode()
        data.hdr32[S.N_SYMBOLS_I32] = len(syms)
        data.hdr32[S.N_VENUES_I32] = len(vens) + 1
        state[ingest.S_NSYM] = len(syms)
        state[ingest.S_NVEN] = len(vens) + 1
        state[ingest.S_NEXT_SEQ] = max(int(state[ingest.S_NEXT_SEQ]), found.next_seq or 0)
        ingest.commit(data.hdr64, state, time.time_ns())
        return total

    def _relog(self, data: ShardData, state: np.ndarray, from_seq: int) -> int:
        """Append the committed rows with seq >= from_seq from the segment to the WAL."""
        self.log_names(data, state)
        total = 0
        for t in (T.TRADES, T.QUOTES):
            n = int(state[t])
            seq = data.cols[t]["seq"][:n]
            lo = int(np.searchsorted(seq, from_seq))
            if lo < n:
                self._append_table(data, t, lo, n)
                total += n - lo
        return total

    # --- running --------------------------------------------------------------------------
    def log_names(self, data: ShardData, state: np.ndarray) -> None:
        """Append name records for symbols and venues interned since the last call."""
        w = self.writer
        nsym = int(state[ingest.S_NSYM])
        for i in range(self.logged_symbols, nsym):
            w.append_symbol(i, data.sym_names[i].decode("ascii"))
            self.logged_symbols = i + 1
        nven = int(state[ingest.S_NVEN])
        for i in range(self.logged_venues, nven):
            w.append_venue(i, data.ven_names[i].decode("ascii"))
            self.logged_venues = i + 1

    def append_pass(self, data: ShardData, state: np.ndarray, trades0: int,
                    quotes0: int) -> None:
        """Log what one drain added (rows trades0.. and quotes0.. up to the state's counts),
        names first. Raises WalWriteError; the caller must not commit then."""
        w = self.writer
        mark = w.mark()
        names = (self.logged_symbols, self.logged_venues)
        try:
            if state[ingest.S_NSYM] > names[0] or state[ingest.S_NVEN] > names[1]:
                self.log_names(data, state)
            t1 = int(state[ingest.S_TRADES])
            q1 = int(state[ingest.S_QUOTES])
            if t1 > trades0:
                self._append_table(data, T.TRADES, trades0, t1)
            if q1 > quotes0:
                self._append_table(data, T.QUOTES, quotes0, q1)
        except WalWriteError as exc:
            # all of the pass or none of it: the rows are drained again once space returns
            self.logged_symbols, self.logged_venues = names
            w.rewind(mark)
            if exc.truncated_to is None or exc.truncated_to == mark[0]:
                raise
            # the name records the pass logged before the failed append went too: say
            # where the log ends now, not where that append had cut it back to
            raise WalWriteError(
                str(exc).replace(f"cut back to {exc.truncated_to}",
                                 f"cut back to {mark[0]}, with the pass's name records"),
                exc.path, exc.errno, truncated_to=mark[0]) from exc

    def _append_table(self, data: ShardData, t: int, lo: int, hi: int) -> None:
        cols = data.cols[t]
        if hi - lo <= SMALL_PASS_ROWS and not self.compress:
            # the low-latency case: one compiled call assembles and checksums the record
            addrs, sizes = self._raw_cols(data, t)
            seq = cols["seq"]
            self.writer.append_rows(_REC[t], addrs, sizes, lo, hi, int(seq[lo]),
                                    int(seq[hi - 1]))
            return
        columns = {wn: cols[cn][lo:hi] for wn, cn in zip(
            _WAL_NAMES[t], ("ts", "symbol", "venue", *T.VALUE_COLUMNS[t], "seq"))}
        self.writer.append_batch(_REC[t], int(cols["seq"][lo]), columns)

    # --- the compiled pass's appends ------------------------------------------------------
    def pass_log_table(self, data: ShardData, max_rows: int) -> np.ndarray | None:
        """The WAL table (ingest.W_*) with which ingest.writer_pass_logged appends passes of
        at most ``max_rows`` rows to this log itself, or None when passes are logged from
        Python (compressed records, the "batch" policy, a log that cannot append). Build it
        again whenever the log moved by another path (names, a big pass, a roll, a reopen):
        it holds the log's ends and counts as of now."""
        max_rows = min(max_rows, SMALL_PASS_ROWS)
        if self.compress or self.writer is None or max_rows <= 0:
            return None
        row = max(WL.ROW_SIZE[_REC[t]] for t in (T.TRADES, T.QUOTES))
        target = self.writer.compiled_append_target(
            2 * (WL.RECORD_HEADER_SIZE + WL.padded(max_rows * row)))
        if target is None:
            return None
        fd, scratch = target
        w = np.zeros(ingest.W_WORDS, np.int64)
        w[ingest.W_FD] = fd
        w[ingest.W_SCRATCH] = scratch.ctypes.data
        w[ingest.W_SCRATCH_LEN] = scratch.size
        w[ingest.W_SHARD] = self.shard
        w[ingest.W_NSYM] = self.logged_symbols
        w[ingest.W_NVEN] = self.logged_venues
        w[ingest.W_MAX_ROWS] = max_rows
        w[ingest.W_NEXT_SEQ] = self.writer.next_seq or 0
        last = self.writer.last_seqs()
        for t in (T.TRADES, T.QUOTES):
            addrs, sizes = self._raw_cols(data, t)
            w[ingest.W_LAST_SEQ + t] = last.get(_REC[t], -1)
            w[ingest.W_REC_TYPE + t] = _REC[t]
            w[ingest.W_NCOLS + t] = len(addrs)
            a = t * ingest.WAL_MAX_COLUMNS
            w[ingest.W_ADDRS + a:ingest.W_ADDRS + a + len(addrs)] = addrs
            w[ingest.W_SIZES + a:ingest.W_SIZES + a + len(sizes)] = sizes
        # the scratch buffer is the WalWriter's; the table holds only its address
        self._compiled = (w, memoryview(w), scratch)
        return w

    def seqs_logged(self, after_pass: bool = False) -> None:
        """Hand the log's seqs that writer_pass_logged keeps in its table (as its passes
        left them; ``after_pass``: as the last pass's records leave them) to the WalWriter:
        the passes account only for the bytes they write (``WalWriter.note_appended``), and
        whatever appends by another path needs the seqs first."""
        _, wv, _ = self._compiled
        nxt = ingest.W_PASS_NEXT_SEQ if after_pass else ingest.W_NEXT_SEQ
        last = ingest.W_PASS_LAST_SEQ if after_pass else ingest.W_LAST_SEQ
        self.writer.note_seqs({_REC[t]: wv[last + t] for t in (T.TRADES, T.QUOTES)
                               if wv[last + t] >= 0}, wv[nxt])

    def finish_pass_write(self) -> None:
        """After writer_pass_logged's write() took only part of a pass (WS_WRITE_FAILED):
        write the rest, or raise WalWriteError with the log cut back to before the pass."""
        _, wv, scratch = self._compiled
        self.seqs_logged()
        self.writer.complete_write(memoryview(scratch)[:wv[ingest.W_NEED]], wv[ingest.W_DONE])
        self.seqs_logged(after_pass=True)

    def _raw_cols(self, data: ShardData, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Table t's columns in WAL record order for WalWriter.append_rows: their addresses
        (``data`` keeps them mapped while this log writes its rows) and item sizes."""
        got = self._raw.get((id(data), t))
        if got is None:
            cols = [data.cols[t][c] for c in ("ts", "symbol", "venue", *T.VALUE_COLUMNS[t],
                                              "seq")]
            # the views stay in the entry: they keep the segment mapped (and the id unique)
            got = self._raw[(id(data), t)] = (
                wal.column_addresses(cols), np.array([c.dtype.itemsize for c in cols], np.int64),
                cols)
        return got[0], got[1]

    def failed(self) -> bool:
        """True when a flush failed: the writer must reopen the WAL (recover) before going on."""
        return self.writer is not None and self.writer._failed is not None

    def reopen(self, data: ShardData, state: np.ndarray) -> None:
        """After a failed flush: close without flushing and recover from what is on disk."""
        if self.writer is not None:
            try:
                self.writer.close()
            except (WalWriteError, OSError):
                pass
            self.writer = None
        self.recover(data, state)

    def close(self) -> None:
        """Flush and close (every policy flushes on close)."""
        if self.writer is not None:
            try:
                self.writer.close()
            finally:
                self.writer = None
