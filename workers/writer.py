"""The shard writer: the only process that writes a shard's columns.

One pass (``do_work``): drain committed records from the inbound ring (validate, intern
names, append columns, link the per-symbol index), commit the new rows with one release
store, then hand the consumed ring space back to producers. Rejected rows are counted by
reason in the control segment; nothing a producer writes can crash the writer.

Started by the supervisor (forked, so numba kernels are already loaded) or on its own:
``python -m workers.writer --db PATH --shard K``.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import threading
import time

import numpy as np

from shm import inbound, ingest, wal_kernels
from shm.jit import in_disk_cache
from shm.atomics import futex_wake
from shm.layout import change_ring as CR
from shm.layout import control as C
from shm.layout import inbound as L
from shm.layout import shard as S
from shm.layout import tables as T
from shm import change_ring
from shm.change_ring import ChangeRingWriter
from shm.segment import pid_alive
from shm.shard import Control, InboundRing, ShardData, segment_name
from shm.errors import WalWriteError
from wayy import history
from workers.agent import Runner
from workers import roll
from workers.roll import RollConfig
from workers.shard_log import ShardLog, WalConfig

log = logging.getLogger("wayy.writer")

MAX_BATCHES_PER_PASS = 256
MAX_BYTES_PER_PASS = 2**20  # small passes: a full ring gets room back (release) every ~1 ms
# Idle (see ShardWriter.idle): after a pass the writer polls the ring's tail in a kernel for
# IDLE_SPIN_S, or for up to the poll window (`wayy start --writer-poll-us`) while ticks have
# been coming faster than every half window on average; then it sleeps on the futex.
IDLE_SPIN_S = 50e-6
DEFAULT_POLL_US = 250.0
MAX_POLL_US = 100_000.0
GAP_EWMA = 0.125  # weight of the newest gap between passes: an average over the last ~8
IDLE_WAIT_NS = 100_000_000  # heartbeat resolution while idle
MAX_NEXT_SEQ = 1 << 62  # the largest next seq shard-K.next-seq may hold (see _read_next_seq)
# Polling takes a core. While batches come faster than every POLL_BUSY_GAP_S and the writer
# has to wait for a CPU (_PollGovernor: its thread waited on the run queue for more than
# POLL_WAIT_SHARE of a check interval), other processes (subscribers, the broker, Redis,
# producers) need that core more than the writer needs to catch the next batch early: it
# sleeps at once instead, and tries polling again later.
POLL_BUSY_GAP_S = 50e-6
POLL_CHECK_S = 0.05
POLL_WAIT_SHARE = 0.05
POLL_RETRY_MIN_S = 0.2
POLL_RETRY_MAX_S = 3.2
POLL_GOVERNOR = os.environ.get("WAYY_POLL_GOVERNOR", "1") != "0"  # 0: always poll (A/B runs)
STALL_DEAD_CHECK_S = 0.2  # a claim unfinished this long: is its producer alive?
STALL_ZERO_HEADER_S = 5.0  # a claim with no header at all this long: pad over it
WAL_RETRY_S = 0.5  # while the WAL cannot be written, try again this often
WAL_RETELL_S = 60.0  # ... and say so in the log this often (and whenever the cause changes)
# on stop: at most this long to commit what producers handed in before the ring closed
# (within the supervisor's STOP_GRACE_S), and done once no record came for STOP_QUIET_S
STOP_DRAIN_S = 3.0
STOP_QUIET_S = 0.005
PIPELINE_MIN_ROWS = 2048  # passes at least this big are logged on the WAL thread

# Column pages are mapped ahead of the writer by a helper thread, so first-touch page faults
# (4 us a page on a VM; ~50 ns a trades row) stay off the drain -> commit path. The window
# follows the append rate: about PREFAULT_SECONDS of rows, between the two bounds.
PREFAULT = os.environ.get("WAYY_PREFAULT", "1") != "0"
PREFAULT_SECONDS = 0.25
PREFAULT_MIN_ROWS = 1 << 16
PREFAULT_MAX_ROWS = 1 << 21
PREFAULT_CHUNK_ROWS = 1 << 14
PREFAULT_NICE = 10
_MIN_ROW_BYTES = min(T.INBOUND_ROW_BYTES.values())  # inbound bytes of the smallest row
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p <<= 1
    return p


class ShardWriter:
    """Agent that owns shard ``shard`` of the database with segment prefix ``prefix``."""

    def __init__(self, prefix: str, shard: int, db_path: str | None = None,
                 wal_cfg: WalConfig | None = None, roll_cfg: RollConfig | None = None,
                 poll_us: float = DEFAULT_POLL_US) -> None:
        self.name = f"writer-{shard}"
        # the idle poll windows, in ns: the short one after any pass, the long one while
        # ticks come often (poll_us 0: sleep on the futex as soon as a pass finds nothing)
        self._poll_long_ns = int(max(0.0, min(poll_us, MAX_POLL_US)) * 1000)
        self._poll_short_ns = min(int(IDLE_SPIN_S * 1e9), self._poll_long_ns)
        self._gap = 1.0  # average seconds between passes that found work
        self.prefix = prefix
        self.shard = shard
        self.db_path = db_path
        self.wal_cfg = wal_cfg if wal_cfg is not None and db_path is not None \
            else WalConfig(enabled=False)
        self.log: ShardLog | None = None
        self._wal_retry_at = 0.0  # while the WAL cannot be written: when to try again
        self._wal_retries = 0  # failed retries since the WAL could last be written
        self._wal_told: tuple = (0.0, None)  # when the log last said why, and the cause
        self._pending: _WalJob | None = None  # a pass whose WAL append is in flight
        self._wal_stage: _WalStage | None = None
        # rolls to history need the database directory; without one (a bare writer in a
        # benchmark) the segment simply fills up
        self.roll_cfg = roll_cfg if roll_cfg is not None and db_path is not None \
            else RollConfig(daily=False, fill=None)
        self._roll_seen = 0  # roll requests (`wayy roll`) answered
        self._day = ""  # the UTC day the segment's rows belong to
        self.state = np.zeros(ingest.N_STATE, np.int64)
        self._stv = memoryview(self.state)
        self.batches = np.zeros((MAX_BATCHES_PER_PASS, ingest.B_WORDS), np.int64)
        self._last_work = 0.0
        self._stall_pos = -1
        self._stall_since = 0.0
        self._rate_t = time.monotonic()
        self._rate_rows = 0
        # --roll-fill checked after every pass (a burst fills a table within a second), and
        # a batch refused as "full" below the threshold rolls too (else the table would stay
        # stuck just short of it); a failed roll is retried at most once a second
        self._fill_rows = 0
        self._full_seen = 0
        self._fill_due = False
        self._fill_retry_at = 0.0
        self._saved_seq = -1  # the next seq last recorded in <db>/shard-K.next-seq
        self._governor: _PollGovernor | None = None

    # --- agent ----------------------------------------------------------------------------
    def on_start(self) -> None:
        """Map the shard, recover the committed state, and open the ring to producers."""
        self.data = ShardData.attach(self.prefix, self.shard, readonly=False)
        self.ring = InboundRing.attach(self.prefix, self.shard)
        self.ctl = Control.attach(self.prefix, self.shard, readonly=False)
        d = self.data
        self.seg8 = d.seg.buf
        snap = d.snapshot()
        st = self.state
        st[ingest.S_TRADES] = snap[S.COMMIT_TRADES]
        st[ingest.S_QUOTES] = snap[S.COMMIT_QUOTES]
        st[ingest.S_NEXT_SEQ] = snap[S.COMMIT_NEXT_SEQ]
        st[ingest.S_IN_POS] = snap[S.COMMIT_IN_POS]
        st[ingest.S_BATCHES] = snap[S.COMMIT_BATCHES]
        st[ingest.S_NSYM] = d.n_symbols()
        st[ingest.S_NVEN] = d.n_venues()
        # a previous writer of this shard may have died mid-pass: drop what it left uncommitted
        ingest.repair_after_crash(self.seg8, d.off, d.hdr64, st)
        if self.wal_cfg.enabled:
            cfg = self.wal_cfg
            self.log = ShardLog(self.db_path, self.shard, cfg.fsync, cfg.interval_ms,
                                cfg.compress)
            self.log.recover(d, st)
            self._wal_stage = _WalStage(self.log, d)
        if self.db_path is not None:
            self._continue_after_history()
        # the name tables only now: recovery may have loaded names the WAL holds, and a
        # name missing here would be interned again under a second id
        self.htab_s = np.zeros(_pow2_at_least(2 * d.max_symbols), np.int32)
        self.htab_v = np.zeros(_pow2_at_least(2 * d.max_venues), np.int32)
        ingest.rebuild_htab(d.sym_names.view(np.uint8), int(st[ingest.S_NSYM]), self.htab_s)
        ingest.rebuild_htab(d.ven_names.view(np.uint8), int(st[ingest.S_NVEN]), self.htab_v)
        ingest.release_inbound(self.ring.hdr64, self.ring.data8, st[ingest.S_IN_POS])
        c = self.ctl.counters
        c[C.C_WRITER_PID] = os.getpid()
        c[C.C_WRITER_START_NS] = time.time_ns()
        c[C.C_HEARTBEAT_NS] = time.time_ns()
        c[C.C_ROWS_TRADES] = st[ingest.S_TRADES]
        c[C.C_ROWS_QUOTES] = st[ingest.S_QUOTES]
        self.ring.hdr32[L.WRITER_PID_I32] = os.getpid()
        c[C.C_POLLING] = 1 if self._poll_long_ns else 0
        if self._poll_long_ns and POLL_GOVERNOR:
            self._governor = _PollGovernor(c)
        # a request made while the previous writer ran and not yet acted on is answered
        self._roll_seen = int(c[C.C_ROLL_REQUESTS_SEEN])
        # the day the rows belong to: the day this segment's WAL began (first start or last
        # roll), never a tick's own timestamp, which a producer may set to any date
        began = self.log.created_ns if self.log is not None else None
        self._day = roll.utc_date(began or time.time_ns())
        if self.roll_cfg.fill is not None:
            self._fill_rows = max(1, int(self.roll_cfg.fill * d.capacity))
            # a batch that does not fit waits in the ring for the roll, never rejected
            st[ingest.S_HOLD_FULL] = 1
        self._full_seen = int(self.ctl.rejects[T.REJECT_FULL])
        # rows loaded back from the WAL are not ingest: the first rate counts from here
        self._rate_rows = int(st[ingest.S_TRADES] + st[ingest.S_QUOTES])
        # change records for local subscribers and the broker; a restarted writer continues
        # the same ring, so readers see one unbroken sequence of records
        self.changes = ChangeRingWriter.attach(segment_name(self.prefix, self.shard, "changes"))
        self.prefaulter = _Prefaulter(self) if PREFAULT else None
        # the per-pass kernels take every array at once, as addresses (ingest.pass_memory;
        # self holds each of them for as long as the writer runs), and are called without
        # numba's per-call type dispatch
        r = self.ring
        ch = self.changes
        pf = self.prefaulter
        M = ingest
        self._mem = ingest.pass_memory({
            M.M_SEG8: self.seg8, M.M_OFF: d.off, M.M_RING64: r.hdr64, M.M_RING8: r.data8,
            M.M_HTAB_S: self.htab_s, M.M_HTAB_V: self.htab_v, M.M_STATE: st,
            M.M_REJECTS: self.ctl.rejects, M.M_BATCHES: self.batches,
            M.M_PF: pf.pf if pf is not None else _NO_PREFAULT,
            M.M_PF_COLS: pf.cols if pf is not None else _NO_PREFAULT_COLS,
            M.M_CH_HDR: ch._hdr, M.M_CH_SLOTS: ch._slots, M.M_CH_WCTL: ch._wctl,
            M.M_COUNTERS: self.ctl.counters})
        self._pass_tail = (MAX_BYTES_PER_PASS, _MIN_ROW_BYTES, _PAGE, self.log is None)
        self._pass = inbound.entry_point(ingest.writer_pass, self._mem, 0, *self._pass_tail)
        self._writer_apply = inbound.entry_point(ingest.writer_apply, self._mem, 0, 0)
        self._pass_tail3 = self._pass_tail[:3]
        # writer_pass_logged's WAL table: None to build (again) before the next pass, False
        # for none (passes are logged from Python)
        self._walt: "np.ndarray | bool | None" = self._build_walt()
        self._pass_logged = inbound.entry_point(
            ingest.writer_pass_logged, self._mem, np.zeros(ingest.W_WORDS, np.int64), 0,
            *self._pass_tail3)
        self._tail_hint = r.hdr64  # a plain read of tail, only to skip idle passes cheaply
        # requests made while no writer ran are answered by this one's first idle pass
        self._roll_req = memoryview(r.hdr64)
        today = roll.utc_date(time.time_ns())
        if self._day != today:
            # stopped before midnight, started after: the old day's rows go to history
            # before any new tick joins them (it would be labelled with that day, and
            # --history-days could delete it at once); with none, the new rows are today's
            if not (st[ingest.S_TRADES] or st[ingest.S_QUOTES]):
                self._day = today
            elif self.roll_cfg.daily:
                self.roll("day")  # on failure: retried from idle, like any day roll
        inbound.set_accepting(self.ring.hdr32, 1, L.REFUSE_NONE)
        # "running" (status, the start banner, feeds and tests wait for it) only once
        # producers are accepted: set before, a producer could meet "writer starting"
        self.ctl.counters[C.C_STATE] = C.STATE_RUNNING
        log.info("shard %d writer %d running: %d trades, %d quotes, next seq %d", self.shard,
                 os.getpid(), st[0], st[1], st[ingest.S_NEXT_SEQ])

    def _continue_after_history(self) -> None:
        """Never give out a seq given out before (in history, or recorded in
        shard-K.next-seq): with the WAL lost, emptied or damaged in its first record (or
        moved away to start empty, or off), recovery alone would start again lower, and
        queries -- which skip memory rows history already holds -- would hide new rows."""
        in_history = history.shard_next_seq(self.db_path, self.shard)
        floor = max(in_history, self._read_next_seq())
        st = self.state
        if int(st[ingest.S_NEXT_SEQ]) < floor:
            if self.log is None:  # --no-wal: nothing is kept across a stop, by design
                log.info("shard %d: no write-ahead log; seqs up to %d were given out before "
                         "(history holds up to %d); continuing from seq %d", self.shard,
                         floor - 1, in_history - 1, floor)
            else:
                log.warning("shard %d: seqs up to %d were given out before (history holds up "
                            "to %d) but the write-ahead log and memory hold only up to %d "
                            "(was the WAL removed, emptied or damaged?); continuing from seq "
                            "%d", self.shard, floor - 1, in_history - 1,
                            int(st[ingest.S_NEXT_SEQ]) - 1, floor)
            st[ingest.S_NEXT_SEQ] = floor
            if self.log is not None and not (st[ingest.S_TRADES] or st[ingest.S_QUOTES]):
                # a WAL with no row: start it at the new seq (a roll record), so that the
                # next start finds the seq there instead of warning again
                self.log.start_after_roll(self.data, st)
        self._saved_seq = int(st[ingest.S_NEXT_SEQ])

    def _seq_file(self) -> str:
        return os.path.join(self.db_path, f"shard-{self.shard}.next-seq")

    def _read_next_seq(self) -> int:
        """The next seq recorded by an earlier writer of this shard (0 if none). A file
        that holds no number, or one no shard reaches (MAX_NEXT_SEQ: 2^62 is 14,000 years
        at 10 M rows/s), is damaged: the writer refuses to start rather than give out seqs
        from it (they would wrap past 2^63)."""
        from wayy.errors import CorruptData

        path = self._seq_file()
        try:
            with open(path, "rb") as f:
                text = f.read(64).strip()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise CorruptData(f"shard {self.shard}: cannot read {path}: {exc.strerror}",
                              path=path, shard=self.shard) from None
        try:
            nxt = int(text or b"0")
        except ValueError:
            nxt = -1
        if not 0 <= nxt <= MAX_NEXT_SEQ:
            raise CorruptData(
                f"shard {self.shard}: {path} holds {text[:30]!r}, not a next seq (0 .. "
                f"{MAX_NEXT_SEQ}): damaged? Remove it to continue from the write-ahead log "
                f"and history, or write the shard's next seq into it", path=path,
                shard=self.shard)
        return nxt

    def _save_next_seq(self) -> None:
        """Record the next seq (at stop, and each second it moved): without a WAL -- or with
        one lost -- a restart must still not give out a seq consumers have seen."""
        if self.db_path is None:
            return
        nxt = int(self.state[ingest.S_NEXT_SEQ])
        if nxt == self._saved_seq:
            return
        path = self._seq_file()
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                f.write(f"{nxt}\n")
            os.replace(tmp, path)
            self._saved_seq = nxt
        except OSError as exc:  # a full disk: the WAL path reports it; this is a hint
            log.debug("shard %d: cannot record next seq: %s", self.shard, exc)

    def do_work(self) -> int:
        """Drain, commit, release. Returns the number of records consumed (0 = idle)."""
        sv = self._stv  # the state, read as Python ints without numpy's scalar boxing
        start_pos = sv[ingest.S_IN_POS]
        if self._tail_hint[L.TAIL_I64] <= start_pos:  # nothing claimed: skip the kernel
            sv[ingest.S_STALL_POS] = -1
            self._stall_pos = -1
            return 1 if self._pending is not None and self._finish_pending() else 0
        if self._wal_retry_at and time.monotonic() < self._wal_retry_at:
            return 0
        trades0 = sv[ingest.S_TRADES]
        quotes0 = sv[ingest.S_QUOTES]
        now = time.time_ns()
        walt = self._walt
        if walt is None and self._pending is None:  # the log moved by another path
            walt = self._walt = self._build_walt()
        if walt is not None and walt is not False and self._pending is None \
                and not self.log.failed():
            # map the pages this pass may write (unless the prefault thread has), drain, and
            # when the pass is small, append it to the WAL and commit it, in one call
            nb = self._pass_logged(self._mem, walt, now, *self._pass_tail3)
            consumed = sv[ingest.S_IN_POS] - start_pos
            if consumed and not self._logged(nb, now, trades0, quotes0):
                return 0
        else:
            # the same without the WAL append; with no WAL, the commit too
            nb = self._pass(self._mem, now, *self._pass_tail)
            consumed = sv[ingest.S_IN_POS] - start_pos
            if consumed and self.log is not None \
                    and not self._log_and_apply(nb, now, trades0, quotes0):
                return 0
        if consumed:
            if self._fill_rows and (sv[ingest.S_TRADES] >= self._fill_rows
                                    or sv[ingest.S_QUOTES] >= self._fill_rows
                                    or self.ctl.rejects[T.REJECT_FULL] != self._full_seen):
                self._fill_due = True
        elif self._pending is not None:
            self._finish_pending()
        if sv[ingest.S_FULL_HELD]:
            self._fill_due = True
        if consumed == 0 and sv[ingest.S_STALL_POS] >= 0:
            self._check_stall(sv[ingest.S_STALL_POS])
        else:
            self._stall_pos = -1
        return consumed

    # --- the WAL stage -----------------------------------------------------------------
    #
    # A pass is committed only after its WAL append returned (durability before visibility).
    # A big pass's append (checksum + write, ~40 ns a row) runs on a helper thread while this
    # thread drains the next pass -- both release the GIL -- so under load the WAL costs
    # little ingest rate; the commit waits for it at the start of the next pass. A small pass
    # is logged inline: a thread handoff would cost a tick more latency than the append.
    # At most one append is in flight, so records reach the file in pass order.

    def _build_walt(self) -> "np.ndarray | bool":
        """The WAL table of writer_pass_logged over the log as it is now, or False when
        passes are logged from Python (no WAL, compressed records, the "batch" policy, a
        log that cannot append until reopened)."""
        if self.log is None:
            return False
        walt = self.log.pass_log_table(self.data, PIPELINE_MIN_ROWS - 1)
        if walt is None:
            return False
        self._walt_view = memoryview(walt)
        self._note_logged = self.log.writer.note_appended
        return walt

    def _drop_walt(self) -> None:
        """Before the log moves by another path: hand it the seqs the compiled passes left
        in the table, and build the table again before the next pass."""
        if self._walt is not None and self._walt is not False:
            self.log.seqs_logged()
        self._walt = None

    def _logged(self, nb: int, now: int, trades0: int, quotes0: int) -> bool:
        """After writer_pass_logged consumed records: account for what it logged and
        committed, or log and commit the pass here. False: the WAL could not be written."""
        wv = self._walt_view
        status = wv[ingest.W_STATUS]
        if status == ingest.WS_LOGGED:
            self._note_logged(wv[ingest.W_NEED])
            if self._wal_retry_at:  # the first pass the WAL took after it could not
                self._wal_ok()
            return True
        if status == ingest.WS_WRITE_FAILED:
            self._walt = None  # finish_pass_write hands the log its seqs
            try:
                self.log.finish_pass_write()
            except (WalWriteError, OSError) as exc:
                self._wal_failed(exc)
                return False
            self._wal_ok()
            self._writer_apply(self._mem, now, nb)
            return True
        return self._log_and_apply(nb, now, trades0, quotes0)

    def _log_and_apply(self, nb: int, now: int, trades0: int, quotes0: int) -> bool:
        """Log this pass and commit it, now or (big passes) once its append completes."""
        self._drop_walt()
        if self._pending is not None and not self._finish_pending():
            return False
        st = self.state
        rows = int(st[ingest.S_TRADES]) - trades0 + int(st[ingest.S_QUOTES]) - quotes0
        if rows < PIPELINE_MIN_ROWS or self.log.failed():
            if not self._log_pass(trades0, quotes0, st):
                return False
            self._apply(nb, now)
            return True
        job = _WalJob(st.copy(), self.batches[:nb].copy(), nb, now, trades0, quotes0)
        self._pending = job
        self._wal_stage.submit(job)
        return True

    def _finish_pending(self) -> bool:
        """Wait for the append in flight, then commit its pass (False: it failed, undone)."""
        job = self._pending
        self._pending = None
        job.done.wait()
        if job.error is not None:
            self._wal_failed(job.error)
            return False
        self._wal_ok()
        self._apply(job.nb, job.now, job.state, job.batches)
        return True

    def _log_pass(self, trades0: int, quotes0: int, state: np.ndarray) -> bool:
        """Append the pass to the WAL inline. False on a write error (the pass is undone)."""
        try:
            if self.log.failed():
                self.log.reopen(self.data, self.state)
            self.log.append_pass(self.data, state, trades0, quotes0)
        except (WalWriteError, OSError) as exc:
            self._wal_failed(exc)
            return False
        self._wal_ok()
        return True

    def _wal_failed(self, exc: BaseException) -> None:
        """On a write error (disk full, I/O error): undo every uncommitted pass, refuse
        producers with the reason, and retry later. Nothing is lost: the inbound ring keeps
        the records until a commit releases them."""
        snap = self.data.snapshot()
        st = self.state
        for i, j in ((ingest.S_TRADES, S.COMMIT_TRADES), (ingest.S_QUOTES, S.COMMIT_QUOTES),
                     (ingest.S_NEXT_SEQ, S.COMMIT_NEXT_SEQ),
                     (ingest.S_IN_POS, S.COMMIT_IN_POS)):
            st[i] = snap[j]
        ingest.repair_after_crash(self.seg8, self.data.off, self.data.hdr64, st)
        now = time.monotonic()
        cause = getattr(exc, "errno", None), type(exc)
        if not self._wal_retry_at:
            log.error("shard %d: %s; not accepting ticks until the WAL can be written",
                      self.shard, exc)
            inbound.set_accepting(self.ring.hdr32, 0, L.REFUSE_DISK)
            self.ctl.counters[C.C_STATE] = C.STATE_DEGRADED
            self._wal_retries = 0
            self._wal_told = (now, cause)
        else:
            # retried every WAL_RETRY_S: the log says when the cause changes, and that it
            # persists once every WAL_RETELL_S
            self._wal_retries += 1
            told_at, told_cause = self._wal_told
            if cause != told_cause or now - told_at >= WAL_RETELL_S:
                log.error("shard %d: the WAL still cannot be written (%d retries): %s",
                          self.shard, self._wal_retries, exc)
                self._wal_told = (now, cause)
        self._wal_retry_at = now + WAL_RETRY_S

    def _wal_ok(self) -> None:
        if self._wal_retry_at:
            log.warning("shard %d: WAL writable again; accepting ticks", self.shard)
            self._wal_retry_at = 0.0
            self.ctl.counters[C.C_STATE] = C.STATE_RUNNING
            inbound.set_accepting(self.ring.hdr32, 1, L.REFUSE_NONE)

    def _apply(self, nb: int, now: int, snap: np.ndarray | None = None,
               batches: np.ndarray | None = None) -> None:
        """Everything between drain and the next pass: commit, then release the ring.

        ``snap``/``batches``: the state and change records of an earlier pass whose WAL
        append just completed (the working state has moved on since)."""
        if snap is None:
            self._writer_apply(self._mem, now, nb)
            return
        ch = self.changes
        ingest.apply_pass(self.data.hdr64, snap, now, ch._hdr, ch._slots, ch._wctl, batches, nb,
                          self.ring.hdr64, self.ring.data8, self.ctl.counters)
        self.state[ingest.S_BATCHES] = snap[ingest.S_BATCHES]

    def idle(self, work: int) -> None:
        """Spin briefly after work (more may be coming), then sleep on the ring's futex."""
        now = time.monotonic()
        req = int(self._roll_req[L.ROLL_REQUESTS_I64])
        if req != self._roll_seen:
            self._roll_seen = req
            self.roll("request")
            self.ctl.counters[C.C_ROLL_REQUESTS_SEEN] = req
        if self._fill_due:
            if now >= self._fill_retry_at:
                self._fill_due = False
                if self.roll("fill") is None:
                    self._fill_due = True
                    self._fill_retry_at = now + 1.0
            if self._fill_due and self.state[ingest.S_FULL_HELD]:
                # a held batch waits for a roll that failed (disk full): producers meet
                # backpressure as the ring fills; do not spin on the held record meanwhile
                time.sleep(0.01)
                return
        if now - self._rate_t >= 1.0:
            self._save_next_seq()
            why = roll.due(self.roll_cfg, self.data, self.state, self._day)
            if why is not None:
                self.roll(why)
            rows = int(self.state[ingest.S_TRADES] + self.state[ingest.S_QUOTES])
            c = self.ctl.counters
            c[C.C_RATE] = int((rows - self._rate_rows) / (now - self._rate_t))
            c[C.C_HEARTBEAT_NS] = time.time_ns()
            self._rate_rows = rows
            self._rate_t = now
        if work:
            self._gap += (min(now - self._last_work, 1.0) - self._gap) * GAP_EWMA
            self._last_work = now
            return
        if self._stall_pos >= 0:
            return
        # Poll, in a kernel without the GIL (the WAL threads run meanwhile), then sleep. The
        # long window only while ticks come faster than every half window: then the writer
        # never sleeps, so a producer pays no futex wake and a tick no writer wake-up; with
        # ticks seldom it sleeps soon, leaving the CPU to producers and subscribers (on a
        # small machine a polling writer takes the core they need). No sched_yield in the
        # poll: a yield hands the core to a background task for its whole time slice.
        if self._governor is not None and not self._governor.allows(
                now, self._gap < POLL_BUSY_GAP_S):
            window = 0
        else:
            window = (self._poll_long_ns if self._gap * 2e9 <= self._poll_long_ns
                      else self._poll_short_ns)
        quiet = int((now - self._last_work) * 1e9)
        if quiet < window and inbound.writer_poll(self.ring.hdr64,
                                                  int(self.state[ingest.S_IN_POS]),
                                                  window - quiet):
            return  # input is there: the next pass takes it
        self.ctl.counters[C.C_IDLE_LOOPS] += 1
        inbound.writer_wait(self.ring.hdr64, self.ring.hdr32, self.state[ingest.S_IN_POS],
                            IDLE_WAIT_NS)

    def _drain_for_stop(self) -> None:
        """Commit every record producers put in the ring before it closed: their publish
        returned, so a clean stop must store them. Ends once the ring stays empty for
        STOP_QUIET_S (a producer that saw the ring open just before it closed claims
        within microseconds), at STOP_DRAIN_S, or when the WAL cannot be written (then
        `wayy stop` says how much the ring still holds)."""
        sv = self._stv
        deadline = time.monotonic() + STOP_DRAIN_S
        quiet_since = time.monotonic()
        while not self._wal_retry_at:
            now = time.monotonic()
            if self.do_work():
                quiet_since = now
                continue
            if self._fill_due and sv[ingest.S_FULL_HELD]:
                self.idle(0)  # a batch that waits for a roll: roll, then drain it
            if self._tail_hint[L.TAIL_I64] > sv[ingest.S_IN_POS]:
                quiet_since = now  # a record claimed and still being written (or stalled)
            elif now - quiet_since >= STOP_QUIET_S:
                return
            if now >= deadline:
                break
            time.sleep(STOP_QUIET_S / 10)
        left = int(self._tail_hint[L.TAIL_I64]) - sv[ingest.S_IN_POS]
        if left > 0:
            log.warning("shard %d: stopping with %d bytes of ticks left in the inbound ring "
                        "(%s)", self.shard, left, "the WAL cannot be written"
                        if self._wal_retry_at else f"not drained within {STOP_DRAIN_S:.0f} s")

    def roll(self, why: str) -> dict | None:
        """Move the committed rows to history and start a new generation (workers/roll.py).

        A failure (disk full, say) leaves the segment as it was, is logged, and counts in
        C_ROLL_FAILS (C_LAST_ROLL_FAIL_NS: when); the next trigger retries. Every way out
        moves C_ROLLS or C_ROLL_FAILS before the caller marks a request seen, so `wayy roll`
        learns at once that its request failed instead of waiting out its timeout."""
        def failed(reason: object) -> None:
            log.error("shard %d: roll (%s) failed: %s", self.shard, why, reason)
            c = self.ctl.counters
            c[C.C_LAST_ROLL_FAIL_NS] = time.time_ns()
            c[C.C_ROLL_FAILS] += 1

        if self._pending is not None and not self._finish_pending():
            failed("the write-ahead log cannot be written")
            return None
        self._drop_walt()  # the roll starts a new WAL file
        if self.db_path is None:
            failed("this writer has no database directory to roll into")
            return None
        today = roll.utc_date(time.time_ns())
        label = self._day if why == "day" else today
        try:
            stats = roll.roll(self.db_path, self.data, self.state, self.log, label,
                              self.roll_cfg.keep_days)
        except Exception as exc:  # noqa: BLE001  (never take the writer down; retried)
            failed(exc)
            if self.log is not None and self.log.writer is None:
                # failed between closing the old WAL and opening the new one: reopen
                self.log.recover(self.data, self.state)
            return None
        self._day = today
        self._full_seen = int(self.ctl.rejects[T.REJECT_FULL])
        self._rate_rows = 0  # the rate counts rows since its last look: the roll reset them
        c = self.ctl.counters
        c[C.C_ROWS_TRADES] = self.state[ingest.S_TRADES]
        c[C.C_ROWS_QUOTES] = self.state[ingest.S_QUOTES]
        c[C.C_LAST_ROLL_NS] = time.time_ns()
        c[C.C_ROLLS] += 1
        return stats

    def _check_stall(self, pos: int) -> None:
        """A record is claimed but not committed: wait, then pad over it if its producer died."""
        now = time.monotonic()
        if pos != self._stall_pos:
            self._stall_pos = pos
            self._stall_since = now
            return
        waited = now - self._stall_since
        if waited < STALL_DEAD_CHECK_S:
            time.sleep(50e-6)
            return
        w = (pos & (self.ring.capacity - 1)) >> 2
        length = int(self.ring.data32[w])
        pid = int(self.ring.data32[w + 2])
        if length < 0 and pid > 0 and pid_alive(pid) and waited < 60.0:
            time.sleep(1e-3)
            return
        if length == 0 and waited < STALL_ZERO_HEADER_S:
            time.sleep(1e-3)
            return
        padded = ingest.pad_stalled(self.ring.data32, self.ring.hdr64, pos)
        self.ctl.rejects[T.REJECT_DEAD_PRODUCER] += 1
        log.warning("shard %d: padded over %d bytes claimed by dead producer %d", self.shard,
                    padded, pid)
        self._stall_pos = -1

    def on_close(self) -> None:
        """Close the ring to producers, commit what they handed in before, flush the WAL,
        and mark the shard stopped."""
        inbound.set_accepting(self.ring.hdr32, 0, L.REFUSE_STOPPED)
        self._drain_for_stop()
        if self._pending is not None:
            self._finish_pending()
        if self.log is not None:
            self._drop_walt()
        self._save_next_seq()
        if self._wal_stage is not None:
            self._wal_stage.stop()
        if self.log is not None:
            try:
                self.log.close()
            except (WalWriteError, OSError) as exc:
                log.error("shard %d: closing the WAL: %s", self.shard, exc)
        if self._governor is not None:
            self._governor.close()
            self._governor = None
        if getattr(self, "prefaulter", None) is not None:
            self.prefaulter.stop()
            self.prefaulter = None
        if getattr(self, "changes", None) is not None:
            self.changes.close()  # tells blocked subscribers the writer is gone
        self.ctl.counters[C.C_STATE] = C.STATE_STOPPED
        log.info("shard %d writer %d stopped", self.shard, os.getpid())


# a writer without a prefault thread: P_OK 0, so writer_pass only reads these. Module
# constants because pass_memory keeps addresses only: an array made in the call would be
# freed with the dict that held it
_NO_PREFAULT = np.zeros(ingest.P_WORDS, np.int64)
_NO_PREFAULT_COLS = np.zeros((2, ingest.P_MAX_COLUMNS, 2), np.int64)


class _PollGovernor:
    """Whether the writer may poll for input when idle: not while batches come fast and
    its thread has to wait for a CPU.

    Every POLL_CHECK_S it reads the thread's run-queue wait (``/proc/thread-self/schedstat``,
    field 2, ns). A share above POLL_WAIT_SHARE means the spinning writer holds a core that
    other processes are queueing for. With batches coming fast ("busy") that costs more than
    polling saves: the writer wakes often anyway, and sleeping lets batches coalesce (on a
    2-core machine at 100k ticks/s, polling doubled the latency to a remote subscriber and
    raised a local one's by a quarter). With batches seldom, the wake-up polling saves is
    most of a tick's latency, and polling goes on (at 10k ticks/s it kept 3 local
    subscribers 25 us faster although the writer waited for a CPU a third of the time).
    Polling then stops for a retry period that doubles (POLL_RETRY_MIN_S to
    POLL_RETRY_MAX_S) while every trial is refused again, and starts from the minimum once a
    trial passes. Where the file cannot be read (not Linux, no CONFIG_SCHED_INFO), the
    writer always polls, as before.
    """

    def __init__(self, counters: np.ndarray) -> None:
        self._counters = counters
        try:
            # opened by the writer's loop thread: the fd stays bound to that thread
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self._last = self._read()
        except (OSError, ValueError, IndexError):
            self.close()
            self._last = 0
        self._t = time.monotonic()
        self._check_at = self._t + POLL_CHECK_S
        self._off_until = 0.0  # while polling is off: when to try again
        self._retry = POLL_RETRY_MIN_S
        self._trial = False  # polling again after a pause, not yet confirmed

    def _read(self) -> int:
        return int(os.pread(self._fd, 128, 0).split()[1])

    def allows(self, now: float, busy: bool) -> bool:
        """Whether to poll now (``now``: time.monotonic(); ``busy``: batches come fast)."""
        if self._fd is None or now < self._check_at:
            return self._off_until == 0.0
        try:
            waited = self._read()
        except (OSError, ValueError, IndexError):
            self.close()
            self._off_until = 0.0
            self._counters[C.C_POLLING] = 1
            return True
        share = (waited - self._last) / max((now - self._t) * 1e9, 1.0)
        self._last, self._t = waited, now
        self._check_at = now + POLL_CHECK_S
        if self._off_until:
            if now < self._off_until:
                return False
            self._off_until = 0.0  # a trial: judged at the next check
            self._trial = True
            self._counters[C.C_POLLING] = 1
            return True
        if busy and share > POLL_WAIT_SHARE:
            # a trial refused again: pause twice as long as last time
            self._retry = (min(self._retry * 2, POLL_RETRY_MAX_S) if self._trial
                           else POLL_RETRY_MIN_S)
            self._off_until = now + self._retry
            self._trial = False
            self._counters[C.C_POLL_BACKOFFS] += 1
            self._counters[C.C_POLLING] = 0
            return False
        if self._trial:
            self._trial = False
            self._retry = POLL_RETRY_MIN_S
        return True

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
        self._fd = None


class _WalJob:
    """One pass handed to the WAL thread: what to log and what to commit after."""

    __slots__ = ("state", "batches", "nb", "now", "trades0", "quotes0", "done", "error")

    def __init__(self, state: np.ndarray, batches: np.ndarray, nb: int, now: int,
                 trades0: int, quotes0: int) -> None:
        self.state = state
        self.batches = batches
        self.nb = nb
        self.now = now
        self.trades0 = trades0
        self.quotes0 = quotes0
        self.done = threading.Event()
        self.error: BaseException | None = None


class _WalStage:
    """The thread that appends big passes to the WAL while the writer drains the next."""

    def __init__(self, shard_log: ShardLog, data: ShardData) -> None:
        self._log = shard_log
        self._data = data
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="wayy-wal", daemon=True)
        self._thread.start()

    def submit(self, job: _WalJob) -> None:
        self._jobs.put(job)

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(5.0)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._log.append_pass(self._data, job.state, job.trades0, job.quotes0)
            except BaseException as exc:  # noqa: BLE001  (handed to the writer thread)
                job.error = exc
            job.done.set()


class _Prefaulter:
    """Maps the pages of the next rows of every column before the writer writes them.

    A daemon thread at low priority runs ingest.prefault_loop (native, no GIL held) with
    the CPU nobody else wants; each writer pass (ingest.writer_pass) maps what it may write
    first, in case the thread is behind. See ingest.prefault_loop.
    """

    def __init__(self, writer: "ShardWriter") -> None:
        d = writer.data
        self._state = writer.state
        self.base = d.seg.buf.ctypes.data
        self._capacity = d.capacity
        self.cols = np.zeros((2, ingest.P_MAX_COLUMNS, 2), np.int64)
        for t in (T.TRADES, T.QUOTES):
            b = S.OFF_TABLES + t * S.OFF_TABLE_STRIDE
            cols = [(b + S.COL_TS, 8), (b + S.COL_SYMBOL, 4), (b + S.COL_VENUE, 4),
                    (b + S.COL_SEQ, 8), (b + S.COL_PREV, 8)]
            cols += [(b + S.COL_VALUES + c, 8) for c in range(len(T.VALUE_COLUMNS[t]))]
            for k, (i, size) in enumerate(cols):
                self.cols[t, k] = (d.off[i], size)
        self.pf = np.zeros(ingest.P_WORDS, np.int64)
        self.pf[ingest.P_OK] = 1
        self.pf[ingest.P_DONE + T.TRADES] = self._state[ingest.S_TRADES]
        self.pf[ingest.P_DONE + T.QUOTES] = self._state[ingest.S_QUOTES]
        self._stop = np.zeros(1, np.int32)
        self._thread = threading.Thread(target=self._run, args=(writer.ring,),
                                        name="wayy-prefault", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop[0] = 1
        futex_wake(self._stop, 0, 1)
        self._thread.join(1.0)

    def _run(self, ring: InboundRing) -> None:
        try:
            # leftover CPU only: under load the writer and its producers come first (the
            # loop holds no GIL, so its low priority cannot hold the writer up)
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), PREFAULT_NICE)
            except (AttributeError, OSError):
                pass
            ingest.prefault_loop(self.pf, self._stop, self.cols, self.base, _PAGE,
                                 self._capacity, self._state, ring.data8.ctypes.data,
                                 ring.capacity, PREFAULT_MIN_ROWS, PREFAULT_MAX_ROWS,
                                 PREFAULT_CHUNK_ROWS, int(PREFAULT_SECONDS * 1e9))
        except Exception:  # noqa: BLE001  (a helper: never take the writer down)
            log.exception("prefault thread stopped")


def kernels_cached() -> bool:
    """Whether numba's on-disk cache already holds the writer's main kernel: False on the
    first start on a machine (or after an upgrade), when warm_up compiles for about a
    minute instead of loading for a second or two."""
    return in_disk_cache(ingest.writer_pass) and in_disk_cache(ingest.writer_pass_logged)


def warm_up() -> None:
    """Compile (or load from cache) every kernel the writer uses, before going live."""
    from shm.segment import Segment  # noqa: F401  (import cost paid here too)

    change_ring.warm_up()
    wal_kernels.warm_up()
    cr_hdr = np.zeros(CR.HEADER_I64, np.int64)
    cr_hdr[CR.CAPACITY_I64] = CR.MIN_CAPACITY
    cr_slots = np.zeros(CR.MIN_CAPACITY * CR.RECORD_WORDS, np.int64)
    cr_wctl = np.zeros(CR.WAIT_I32, np.int32)

    ring = np.zeros(L.DATA_OFFSET // 8, np.int64)
    ring[L.CAPACITY_I64] = 1024
    ring[L.MAX_RECORD_I64] = 256
    data8 = np.zeros(1024, np.uint8)
    off = S.region_offsets(S.BLOCK_ROWS, 4, 4)
    seg8 = np.zeros(int(off[S.OFF_END]), np.uint8)
    hdr64 = seg8[: S.HEADER_BYTES].view(np.int64)
    hdr64[S.CAPACITY_I64] = S.BLOCK_ROWS
    hdr32 = hdr64.view(np.int32)
    hdr32[S.MAX_SYMBOLS_I32] = 4
    hdr32[S.MAX_VENUES_I32] = 4
    seg8[off[S.OFF_LAST_TRADE] : off[S.OFF_LAST_QUOTE] + 8 * 4].view(np.int64)[:] = -1
    st = np.zeros(ingest.N_STATE, np.int64)
    htab = np.zeros(8, np.int32)
    rejects = np.zeros(T.N_REJECT_REASONS, np.int64)
    batches = np.zeros((1, ingest.B_WORDS), np.int64)
    ingest.commit(hdr64, st, 0)
    ingest.release_inbound(ring, data8, 0)
    # the writer's per-pass kernels, with the argument types ShardWriter passes (each
    # boolean value of writer_pass's ``apply`` is the same signature); drain, prefault_pass
    # and publish_changes are compiled into them, not called from Python
    counters = np.zeros(C.N_COUNTERS, np.int64)
    M = ingest
    mem = ingest.pass_memory({
        M.M_SEG8: seg8, M.M_OFF: off, M.M_RING64: ring, M.M_RING8: data8, M.M_HTAB_S: htab,
        M.M_HTAB_V: htab, M.M_STATE: st, M.M_REJECTS: rejects, M.M_BATCHES: batches,
        M.M_PF: _NO_PREFAULT, M.M_PF_COLS: _NO_PREFAULT_COLS,
        M.M_CH_HDR: cr_hdr, M.M_CH_SLOTS: cr_slots, M.M_CH_WCTL: cr_wctl,
        M.M_COUNTERS: counters})
    ingest.writer_pass(mem, 0, 0, _MIN_ROW_BYTES, _PAGE, True)
    ingest.writer_apply(mem, 0, 0)
    ingest.writer_pass_logged(mem, np.zeros(ingest.W_WORDS, np.int64), 0, 0, _MIN_ROW_BYTES,
                              _PAGE)
    ingest.apply_pass(hdr64, st, 0, cr_hdr, cr_slots, cr_wctl, batches, 0, ring, data8,
                      counters)
    ingest.rebuild_htab(seg8, 0, htab)
    ingest.repair_after_crash(seg8, off, hdr64, st)
    ingest.link_rows(seg8, off, hdr64, st, 0, 0)
    ingest.bump_generation(np.zeros(S.HEADER_BYTES // 8, np.int64))
    ingest.pad_stalled(data8.view(np.int32), ring, 0)
    inbound.set_accepting(ring.view(np.int32), 0, 0)
    inbound.writer_wait(ring, ring.view(np.int32), 1 << 40, 0)
    inbound.writer_poll(ring, 1 << 40, 0)
    # prefault kernels with nothing to do (no system call made)
    pf = np.zeros(ingest.P_WORDS, np.int64)
    cols = np.zeros((2, ingest.P_MAX_COLUMNS, 2), np.int64)
    stop = np.ones(1, np.int32)
    ingest.prefault_loop(pf, stop, cols, 0, _PAGE, 0, st, 0, 0, 0, 0, 0, 0)
    futex_wake(stop, 0, 1)


def run(prefix: str, shard: int, db_path: str | None = None,
        wal_cfg: WalConfig | None = None, roll_cfg: RollConfig | None = None,
        poll_us: float = DEFAULT_POLL_US) -> None:
    """Run a shard writer in this process until SIGTERM/SIGINT (with a WAL in ``db_path``
    unless ``wal_cfg`` disables it; rolling to history per ``roll_cfg`` and when `wayy roll`
    bumps the inbound ring's roll_requests word; polling for input up to ``poll_us`` after
    a pass while ticks come often)."""
    runner = Runner(ShardWriter(prefix, shard, db_path, wal_cfg, roll_cfg, poll_us))
    runner.install_signals()
    runner.run()


def main() -> None:
    from wayy.manifest import read_manifest

    ap = argparse.ArgumentParser(description="Run one shard writer of a running database.")
    ap.add_argument("--db", required=True)
    ap.add_argument("--shard", type=int, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    m = read_manifest(args.db)
    run(m.prefix, args.shard, m.path,
        WalConfig(enabled=m.wal, fsync=m.fsync, interval_ms=m.fsync_interval_ms,
                  compress=m.wal_compress),
        RollConfig(daily=m.roll_daily, fill=m.roll_fill, keep_days=m.history_days),
        m.writer_poll_us)


if __name__ == "__main__":
    main()
