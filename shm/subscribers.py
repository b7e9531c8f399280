"""Subscriber-side mechanism: the follow kernel over a shard's change ring and columns, and the
subscriber registry segment that `wayy status` reads.

Following a shard (kernel ``follow``)
-------------------------------------
A subscriber keeps, per shard, an int64 state array (``F_*`` words). Its one authority is the
seq: ``st[F_NEXT]`` is the next seq to process, every row of the shard with a lower seq has
been processed (delivered, or filtered out). The change ring only says where new rows are:

    record (first_seq fs, count n, table t, first_row r)      rows r .. r+n-1 of t, seqs fs ..
      fs + n <= next      already processed (a duplicate): skip the record
      fs > next           a gap (a writer died between commit and publish, or the subscriber
                          starts behind): backfill [next, fs) from the columns, then re-read it
      otherwise           deliver rows with seq >= next, filtered by table / symbol / venue
    LAPPED                read the ring tail T, then the committed snapshot (next seq H):
                          backfill [next, H) from the columns, then continue the ring at T.
                          Every record at T or later was published after that snapshot was
                          taken... or before it: either way its rows are >= H or skipped as
                          duplicates, so nothing is delivered twice and nothing is missed.

Backfill walks both tables' ``seq`` columns (each strictly increasing) with two cursors found
by binary search; every seq below the committed next seq is in exactly one table, so the merge
is exact. Rows are never overwritten in shared memory (a full table rejects new rows), so a
backfill always finds them; a seq found in neither table is counted as lost, never skipped
silently.

Output, per call: ``runs`` rows ``(table, count, first_row, start, first_seq)`` in seq order —
``start == -1`` means the rows ``first_row .. first_row+count-1`` (a zero-copy slice; only when
a whole table is followed), otherwise ``rows[start:start+count]`` holds the matching row
indices and ``first_row``/``first_seq`` are -1.

Filter arrays, rebuilt by the caller when symbol or venue names appear (``R_NAMES``):

    want    uint8[2, max_symbols]  per table and symbol id: 0 no, 1 any venue, 2 see pairs
    ven_ok  uint8[2, max_venues]   per table and venue id, for whole-table channels at a venue
    pairs   int32[P, 3]            (table, symbol id, venue id) when want == 2
    fctl    int64[FC_WORDS]        FC_ALL0/1: 0 no whole-table channel, 1 every row, 2 every
                                   row at a venue in ven_ok; FC_MASK0/1: sym_mask bloom of the
                                   wanted symbol ids; FC_PENDING: some name not interned yet;
                                   FC_NPAIRS
"""

from __future__ import annotations

import os
import time

import numba
import numpy as np

from shm import change_ring as C
from shm import ingest
from shm.atomics import as_pointer, compare_exchange, fetch_add, load_acquire
from shm.errors import LayoutMismatch, SegmentExists
from shm.layout import change_ring as CRL
from shm.layout import shard as S
from shm.layout import subscribers as L
from shm.segment import Segment, pid_alive

# --- follow state words ----------------------------------------------------------------------
F_POS = 0  # next change-ring position to read
F_NEXT = 1  # next seq to process
F_BF_END = 2  # backfill from the columns while F_NEXT < F_BF_END
F_BF_RESUME = 3  # ring position to continue at when the backfill is done
F_BF_ROW0 = 4  # backfill cursors: next trades row, next quotes row
F_BF_ROW1 = 5
F_BF_N0 = 6  # committed rows per table when the backfill began
F_BF_N1 = 7
F_FLOOR0 = 8  # rows of trades / quotes with a lower seq are processed but not delivered
F_FLOOR1 = 9
F_NSYM = 10  # symbol / venue names the filter has looked at
F_NVEN = 11
F_OVERRUNS = 12
F_GAPS = 13
F_BACKFILLED = 14  # rows read from the columns
F_LAST_TS = 15  # ts of the last row processed
F_RECORDS = 16  # change records consumed
F_LOST = 17  # seqs found in neither table (never expected: counted, not hidden)
F_SEEN_NSYM = 18  # name counts seen when R_NAMES was returned
F_SEEN_NVEN = 19
F_HWM = 20  # committed next seq at the last backfill start (subscribe: the high-water seq)
F_HIST_END = 21  # R_HISTORY: seqs F_NEXT .. F_HIST_END-1 were rolled to history
F_GEN = 22  # the shard's segment generation when the last follow call began
F_WORDS = 24

# --- filter control words --------------------------------------------------------------------
FC_ALL0 = 0
FC_ALL1 = 1
FC_MASK0 = 2
FC_MASK1 = 3
FC_PENDING = 4
FC_NPAIRS = 5
FC_WORDS = 8
MAX_PAIRS = 256

# --- follow results --------------------------------------------------------------------------
R_IDLE = 0
"""Caught up: the ring has nothing newer. Deliver the output; poll again later."""
R_FULL = 1
"""The output buffers (or the per-call scan budget) are full: deliver, then call again."""
R_NAMES = 2
"""New symbol or venue names appeared while a filter name is unresolved: resolve names up to
st[F_SEEN_NSYM] / st[F_SEEN_NVEN], update the filter and st[F_NSYM] / st[F_NVEN], call again.
The record that triggered it was not consumed."""
R_LAPPED = 3
"""The ring overwrote records this subscriber had not read (counted in F_OVERRUNS): a backfill
from the columns is set up. Deliver the output, tell the user, call again."""
R_GAP = 4
"""A record's first seq is past F_NEXT (counted in F_GAPS): a backfill is set up. Call again."""
# 5: the change record's rows were overwritten by a roll (the segment started a new
#    generation); a backfill from the columns was started, which continues in history
R_ROLLED = 5
# 6: the next seqs were rolled to history: the caller delivers [F_NEXT, F_HIST_END) from
#    there and sets F_NEXT (everything returned before comes first)
R_HISTORY = 6
RESULT_NAMES = ("idle", "full", "names", "lapped", "gap", "rolled", "history")

RUN_TABLE = 0
RUN_COUNT = 1
RUN_FIRST_ROW = 2
RUN_START = 3
RUN_FIRST_SEQ = 4
RUN_WORDS = 5

_BIG = np.int64(2**62)


@numba.njit(cache=True, nogil=True, inline="always")
def _col64(seg8, off, t, col, cap):
    o = off[S.OFF_TABLES + t * S.OFF_TABLE_STRIDE + col]
    return seg8[o : o + 8 * cap].view(np.int64)


@numba.njit(cache=True, nogil=True, inline="always")
def _col32(seg8, off, t, col, cap):
    o = off[S.OFF_TABLES + t * S.OFF_TABLE_STRIDE + col]
    return seg8[o : o + 4 * cap].view(np.int32)


@numba.njit(cache=True, nogil=True, inline="always")
def _match(t, sid, vid, want, ven_ok, pairs, fctl):
    a = fctl[FC_ALL0 + t]
    if a == 1:
        return True
    if a == 2 and vid < ven_ok.shape[1] and ven_ok[t, vid] != 0:
        return True
    w = want[t, sid]
    if w == 1:
        return True
    if w == 2:
        for p in range(fctl[FC_NPAIRS]):
            if pairs[p, 0] == t and pairs[p, 1] == sid and pairs[p, 2] == vid:
                return True
    return False


@numba.njit(cache=True, nogil=True, inline="always")
def _names_grew(hdr32, st):
    """Names were interned past what the filter has seen (acquire loads: a record or row
    read before this is covered by the counts)."""
    ns = load_acquire(hdr32, S.N_SYMBOLS_I32)
    nv = load_acquire(hdr32, S.N_VENUES_I32)
    if ns > st[F_NSYM] or nv > st[F_NVEN]:
        st[F_SEEN_NSYM] = ns
        st[F_SEEN_NVEN] = nv
        return True
    return False


@numba.njit(cache=True, nogil=True, inline="always")
def _emit(t, r0, s0, n, st, want, ven_ok, pairs, fctl, sym, ven, runs, rows, nr, nu, nd,
          max_rows, scan_room):
    """Deliver what matches of rows r0 .. r0+n-1 of table t (seqs s0 ..). Returns
    (rows consumed from the span, nr, nu, nd); consumed < n when the output is full."""
    floor = st[F_FLOOR0 + t]
    if s0 + n <= floor:
        return n, nr, nu, nd
    d = floor - s0 if s0 < floor else 0
    a = fctl[FC_ALL0 + t]
    room = max_rows - nd
    if a == 1:
        m = min(n - d, room)
        if m > 0:
            if (nr > 0 and runs[nr - 1, RUN_TABLE] == t and runs[nr - 1, RUN_START] < 0
                    and runs[nr - 1, RUN_FIRST_ROW] + runs[nr - 1, RUN_COUNT] == r0 + d):
                runs[nr - 1, RUN_COUNT] += m  # continues the previous run: one slice
                return d + m, nr, nu, nd + m
            runs[nr, RUN_TABLE] = t
            runs[nr, RUN_COUNT] = m
            runs[nr, RUN_FIRST_ROW] = r0 + d
            runs[nr, RUN_START] = -1
            runs[nr, RUN_FIRST_SEQ] = s0 + d
            nr += 1
            nd += m
        return d + m, nr, nu, nd
    if a == 0 and fctl[FC_MASK0 + t] == 0:
        return n, nr, nu, nd  # nothing of this table is followed
    cnt = 0
    j = d
    end = min(n, d + scan_room)
    if a == 0 and fctl[FC_NPAIRS] == 0:
        # the common case, symbols at any venue: one byte lookup per row
        wt = want[t]
        while j < end and cnt < room:
            r = r0 + j
            if wt[sym[r]] != 0:
                rows[nu + cnt] = r
                cnt += 1
            j += 1
    else:
        while j < end and cnt < room:
            r = r0 + j
            if _match(t, sym[r], ven[r], want, ven_ok, pairs, fctl):
                rows[nu + cnt] = r
                cnt += 1
            j += 1
    if cnt > 0:
        if nr > 0 and runs[nr - 1, RUN_TABLE] == t and runs[nr - 1, RUN_START] >= 0:
            runs[nr - 1, RUN_COUNT] += cnt  # rows[] is filled in order: extend the run
            return j, nr, nu + cnt, nd + cnt
        runs[nr, RUN_TABLE] = t
        runs[nr, RUN_COUNT] = cnt
        runs[nr, RUN_FIRST_ROW] = -1
        runs[nr, RUN_START] = nu
        runs[nr, RUN_FIRST_SEQ] = -1
        nr += 1
        nu += cnt
        nd += cnt
    return j, nr, nu, nd


@numba.njit(cache=True, nogil=True)
def _start_backfill(st, hdr, seg8, off, end, resume, use_tail):
    """Backfill [F_NEXT, end) from the columns, then continue the ring at ``resume``.

    ``use_tail``: resume at the ring tail read now, and end at the committed next seq read
    after it (the lap and subscribe cases). Otherwise ``end``/``resume`` are used as given
    (a gap: end at the record's first seq, resume at the record).
    """
    hdr64 = seg8[: S.HEADER_BYTES].view(np.int64)
    cap = hdr64[S.CAPACITY_I64]
    if use_tail:
        resume = C.load_tail(hdr)  # first the tail, then the snapshot: see the module doc
    snap = np.empty(S.COMMIT_SLOT_WORDS, np.int64)
    ingest.snapshot(hdr64, snap)
    if use_tail:
        end = snap[S.COMMIT_NEXT_SEQ]
    st[F_HWM] = snap[S.COMMIT_NEXT_SEQ]
    n0 = snap[S.COMMIT_TRADES]
    n1 = snap[S.COMMIT_QUOTES]
    st[F_BF_N0] = n0
    st[F_BF_N1] = n1
    nxt = st[F_NEXT]
    if end <= nxt:
        st[F_BF_END] = -1
        st[F_POS] = resume
        return
    st[F_BF_END] = end
    st[F_BF_RESUME] = resume
    st[F_BF_ROW0] = np.searchsorted(_col64(seg8, off, 0, S.COL_SEQ, cap)[:n0], nxt)
    st[F_BF_ROW1] = np.searchsorted(_col64(seg8, off, 1, S.COL_SEQ, cap)[:n1], nxt)


@numba.njit(cache=True, nogil=True)
def begin(st, hdr, seg8, off, start_seq):
    """Position a new subscriber: live from now (start_seq < 0) or from ``start_seq``.

    Reads the ring tail, then the committed snapshot, whose next seq is the high-water mark
    (returned, and kept in st[F_HWM]): rows from start_seq up to it come from the columns,
    rows at or above it from the ring, starting at that tail. A start_seq above the mark
    is taken as the mark (the caller refuses those first).
    """
    st[F_BF_END] = -1
    st[F_NEXT] = _BIG if start_seq < 0 else start_seq
    _start_backfill(st, hdr, seg8, off, 0, 0, True)
    if st[F_NEXT] > st[F_HWM]:
        st[F_NEXT] = st[F_HWM]
    return st[F_HWM]


@numba.njit(cache=True, nogil=True)
def follow(hdr, slots, seg8, off, st, want, ven_ok, pairs, fctl, rec, runs, rows, max_rows,
           max_scan):
    """Advance one shard: backfill, then change records, into ``runs``/``rows``.

    Returns (result R_*, runs written, row indices written). See the module docstring.
    """
    hdr64 = seg8[: S.HEADER_BYTES].view(np.int64)
    hdr32 = seg8[: S.HEADER_BYTES].view(np.int32)
    cap = hdr64[S.CAPACITY_I64]
    seq0 = _col64(seg8, off, 0, S.COL_SEQ, cap)
    seq1 = _col64(seg8, off, 1, S.COL_SEQ, cap)
    ts0 = _col64(seg8, off, 0, S.COL_TS, cap)
    ts1 = _col64(seg8, off, 1, S.COL_TS, cap)
    sym0 = _col32(seg8, off, 0, S.COL_SYMBOL, cap)
    sym1 = _col32(seg8, off, 1, S.COL_SYMBOL, cap)
    ven0 = _col32(seg8, off, 0, S.COL_VENUE, cap)
    ven1 = _col32(seg8, off, 1, S.COL_VENUE, cap)
    # a caller that reads the rows after this returns checks the generation again: a roll
    # in between may have overwritten them
    st[F_GEN] = load_acquire(hdr64, S.GENERATION_I64)
    nr = 0
    nu = 0
    nd = 0
    scanned = 0
    max_runs = runs.shape[0]
    while True:
        if nr >= max_runs or nd >= max_rows or scanned >= max_scan:
            return R_FULL, nr, nu
        nxt = st[F_NEXT]
        if 0 <= st[F_BF_END] <= nxt:
            # the caller delivered the backfill's last rows itself (from history, R_HISTORY):
            # back to the ring where the backfill began, as below
            st[F_BF_END] = -1
            st[F_POS] = st[F_BF_RESUME]
        if st[F_BF_END] > nxt:
            # the rows are committed, so the names they use are interned: look now
            if fctl[FC_PENDING] != 0 and _names_grew(hdr32, st):
                return R_NAMES, nr, nu
            i0 = st[F_BF_ROW0]
            i1 = st[F_BF_ROW1]
            s0 = seq0[i0] if i0 < st[F_BF_N0] else _BIG
            s1 = seq1[i1] if i1 < st[F_BF_N1] else _BIG
            if s0 == nxt:
                t = 0
                i = i0
                lim = min(st[F_BF_N0] - i, st[F_BF_END] - nxt, max_scan - scanned)
                k = 1
                while k < lim and seq0[i + k] == nxt + k:
                    k += 1
                c, nr, nu, nd = _emit(0, i, nxt, k, st, want, ven_ok, pairs, fctl, sym0, ven0,
                                      runs, rows, nr, nu, nd, max_rows, max_scan - scanned)
                if c > 0:
                    st[F_LAST_TS] = ts0[i + c - 1]
            elif s1 == nxt:
                t = 1
                i = i1
                lim = min(st[F_BF_N1] - i, st[F_BF_END] - nxt, max_scan - scanned)
                k = 1
                while k < lim and seq1[i + k] == nxt + k:
                    k += 1
                c, nr, nu, nd = _emit(1, i, nxt, k, st, want, ven_ok, pairs, fctl, sym1, ven1,
                                      runs, rows, nr, nu, nd, max_rows, max_scan - scanned)
                if c > 0:
                    st[F_LAST_TS] = ts1[i + c - 1]
            else:
                n0 = st[F_BF_N0]
                n1 = st[F_BF_N1]
                first = min(seq0[0] if n0 > 0 else _BIG, seq1[0] if n1 > 0 else _BIG)
                if nxt < first:
                    # older than anything in memory: rolled to history
                    st[F_HIST_END] = min(first, st[F_BF_END])
                    return R_HISTORY, nr, nu
                # nxt is in neither table: cannot happen for committed seqs; count, never hide
                nn = min(min(s0, s1), st[F_BF_END])
                st[F_LOST] += nn - nxt
                st[F_NEXT] = nn
                t = -1
                c = 0
            if t >= 0:
                st[F_BF_ROW0 + t] += c
                st[F_NEXT] = nxt + c
                st[F_BACKFILLED] += c
                scanned += c
            if st[F_NEXT] >= st[F_BF_END]:
                st[F_BF_END] = -1
                st[F_POS] = st[F_BF_RESUME]
            continue
        pos = st[F_POS]
        code = C.read(hdr, slots, pos, rec)
        if code == C.NOT_READY:
            return R_IDLE, nr, nu
        if code == C.LAPPED:
            st[F_OVERRUNS] += 1
            _start_backfill(st, hdr, seg8, off, 0, 0, True)
            return R_LAPPED, nr, nu
        if fctl[FC_PENDING] != 0 and _names_grew(hdr32, st):
            return R_NAMES, nr, nu
        fs = rec[1]
        cnt = rec[2]
        t = rec[3]
        fr = rec[4]
        if fs + cnt <= nxt:
            st[F_POS] = pos + 1
            st[F_RECORDS] += 1
            continue
        if fs > nxt:
            st[F_GAPS] += 1
            _start_backfill(st, hdr, seg8, off, fs, pos, False)
            return R_GAP, nr, nu
        skip = nxt - fs
        left = cnt - skip
        if (t == 0 or t == 1) and (seq0 if t == 0 else seq1)[fr + skip] != nxt:
            # the record's rows are gone: a roll reset the segment since it was published
            _start_backfill(st, hdr, seg8, off, 0, 0, True)
            return R_ROLLED, nr, nu
        if t != 0 and t != 1:
            c = left  # not a table of ours: nothing to deliver (a newer writer's record kind)
        elif fctl[FC_ALL0 + t] == 0 and (rec[7] & fctl[FC_MASK0 + t]) == 0:
            c = left  # the bloom says no row of a wanted symbol is in the batch
        elif t == 0:
            c, nr, nu, nd = _emit(0, fr + skip, nxt, left, st, want, ven_ok, pairs, fctl, sym0,
                                  ven0, runs, rows, nr, nu, nd, max_rows, max_scan - scanned)
            scanned += c
        else:
            c, nr, nu, nd = _emit(1, fr + skip, nxt, left, st, want, ven_ok, pairs, fctl, sym1,
                                  ven1, runs, rows, nr, nu, nd, max_rows, max_scan - scanned)
            scanned += c
        st[F_NEXT] = nxt + c
        if c == left:
            st[F_LAST_TS] = rec[6]
            st[F_POS] = pos + 1
            st[F_RECORDS] += 1
        elif c > 0:
            st[F_LAST_TS] = (ts0 if t == 0 else ts1)[fr + skip + c - 1]


# --- the packed entry point ----------------------------------------------------------------
# A Python -> numba call pays about 0.1-0.15 us per array argument to unbox it; ``follow``
# takes 12. ``follow_packed`` takes five arrays, the rest carved out of
# them inside (free). ``ctl`` (int64) holds, at these offsets:
C_STATE = 0  # F_WORDS follow state words
C_FCTL = C_STATE + F_WORDS  # FC_WORDS filter control words
C_OFF = C_FCTL + FC_WORDS  # the shard's region offsets (shm.layout.shard.N_OFFSETS words)
C_REC = C_OFF + S.N_OFFSETS + 7 & ~7  # one change record (8 words)
C_MAX_ROWS = C_REC + 8  # rows per call
C_MAX_SCAN = C_MAX_ROWS + 1  # rows looked at per call
C_NRUNS = C_MAX_SCAN + 1  # runs that fit in ``out``
C_MAX_SYMBOLS = C_NRUNS + 1  # columns of ``filt`` that are ``want`` (the rest: ``ven_ok``)
C_PAIRS = C_REC + 16  # MAX_PAIRS x 3 words (table, symbol id, venue id)
C_WORDS = C_PAIRS + 3 * MAX_PAIRS
# ``filt`` is uint8[2, max_symbols + max_venues] (want | ven_ok) and ``out`` is int64:
# runs (C_NRUNS x RUN_WORDS), then row indices (C_MAX_ROWS).


@numba.njit(cache=True, nogil=True)
def follow_packed(ring64, seg8, ctl, filt, out):
    """``follow`` with its arguments packed (see C_*); the subscriber calls it through
    ``follow_mem``."""
    hdr = ring64[: CRL.HEADER_I64]
    slots = ring64[CRL.HEADER_I64 :]
    nruns = ctl[C_NRUNS]
    max_sym = ctl[C_MAX_SYMBOLS]
    return follow(hdr, slots, seg8, ctl[C_OFF : C_OFF + S.N_OFFSETS], ctl[:F_WORDS],
                  filt[:, :max_sym], filt[:, max_sym:],
                  ctl[C_PAIRS : C_PAIRS + 3 * MAX_PAIRS].reshape((MAX_PAIRS, 3)),
                  ctl[C_FCTL : C_FCTL + FC_WORDS], ctl[C_REC : C_REC + 8],
                  out[: nruns * RUN_WORDS].reshape((nruns, RUN_WORDS)),
                  out[nruns * RUN_WORDS :], ctl[C_MAX_ROWS], ctl[C_MAX_SCAN])


# ``follow_mem`` is ``follow_packed`` with its five arrays given as one table of (address,
# size) pairs (``follow_table``): unboxing one array instead of five takes ~0.5 us off every
# call, the largest share of a one-tick pass. The table's last word is ``filt``'s row length.
T_RING, T_SEG8, T_CTL, T_FILT, T_OUT = range(5)
T_FILT_COLS = 10
T_WORDS = 11


def follow_table(ring64: np.ndarray, seg8: np.ndarray, ctl: np.ndarray, filt: np.ndarray,
                 out: np.ndarray) -> np.ndarray:
    """The table ``follow_mem`` takes, for the arrays ``follow_packed`` would. Every array
    must be C-contiguous and of its dtype (ring64 and ctl, out int64; seg8, filt uint8);
    ctl, filt and out writeable. The caller keeps the arrays alive while it uses the table:
    the kernel holds only their addresses."""
    mem = np.zeros(T_WORDS, np.int64)
    for i, (a, dt, w) in enumerate(((ring64, np.int64, False), (seg8, np.uint8, False),
                                    (ctl, np.int64, True), (filt, np.uint8, True),
                                    (out, np.int64, True))):
        if a.dtype != dt or not a.flags.c_contiguous or (w and not a.flags.writeable):
            raise ValueError(f"follow_table: array {i} must be a C-contiguous array of "
                             f"{np.dtype(dt)}{', writeable' if w else ''} (got {a.dtype})")
        mem[2 * i] = a.ctypes.data
        mem[2 * i + 1] = a.size
    if filt.ndim != 2 or filt.shape[0] != 2:
        raise ValueError(f"follow_table: filt must have shape (2, n), not {filt.shape}")
    mem[T_FILT_COLS] = filt.shape[1]
    return mem


@numba.njit(cache=True, nogil=True)
def follow_mem(mem):
    """``follow_packed`` on the arrays of a ``follow_table``: the call the subscriber makes."""
    return follow_packed(
        numba.carray(as_pointer(mem[2 * T_RING]), mem[2 * T_RING + 1], np.int64),
        numba.carray(as_pointer(mem[2 * T_SEG8]), mem[2 * T_SEG8 + 1], np.uint8),
        numba.carray(as_pointer(mem[2 * T_CTL]), mem[2 * T_CTL + 1], np.int64),
        numba.carray(as_pointer(mem[2 * T_FILT]), (2, mem[T_FILT_COLS]), np.uint8),
        numba.carray(as_pointer(mem[2 * T_OUT]), mem[2 * T_OUT + 1], np.int64))


@numba.njit(cache=True, nogil=True)
def row_values(seg8, ctl, t, r):
    """Row ``r`` of table ``t``: (ts, symbol id, venue id, v0, v1, v2, v3, seq) in one call
    (v2, v3 are 0 for trades) -- the per-tick path for a handful of rows, where slicing
    every column from Python would cost ten times more."""
    off = ctl[C_OFF : C_OFF + S.N_OFFSETS]
    cap = seg8[: S.HEADER_BYTES].view(np.int64)[S.CAPACITY_I64]
    base = S.OFF_TABLES + t * S.OFF_TABLE_STRIDE
    o = off[base + S.COL_VALUES]
    v0 = seg8[o : o + 8 * cap].view(np.float64)[r]
    o = off[base + S.COL_VALUES + 1]
    v1 = seg8[o : o + 8 * cap].view(np.float64)[r]
    v2 = 0.0
    v3 = 0.0
    if t == 1:
        o = off[base + S.COL_VALUES + 2]
        v2 = seg8[o : o + 8 * cap].view(np.float64)[r]
        o = off[base + S.COL_VALUES + 3]
        v3 = seg8[o : o + 8 * cap].view(np.float64)[r]
    return (_col64(seg8, off, t, S.COL_TS, cap)[r], _col32(seg8, off, t, S.COL_SYMBOL, cap)[r],
            _col32(seg8, off, t, S.COL_VENUE, cap)[r], v0, v1, v2, v3,
            _col64(seg8, off, t, S.COL_SEQ, cap)[r])


@numba.njit(cache=True, nogil=True)
def first_seq_at_ts(seg8, off, from_ts):
    """The lowest seq of a committed row (either table) with ts >= from_ts, taking rows in
    seq order; the committed next seq when there is none. Skips ts blocks that cannot hold
    such a row."""
    hdr64 = seg8[: S.HEADER_BYTES].view(np.int64)
    cap = hdr64[S.CAPACITY_I64]
    snap = np.empty(S.COMMIT_SLOT_WORDS, np.int64)
    ingest.snapshot(hdr64, snap)
    best = snap[S.COMMIT_NEXT_SEQ]
    nblk = cap // S.BLOCK_ROWS
    for t in range(2):
        n = snap[t]
        ts = _col64(seg8, off, t, S.COL_TS, cap)
        seq = _col64(seg8, off, t, S.COL_SEQ, cap)
        bmax = _col64(seg8, off, t, S.COL_BLK_MAX, nblk)
        for b in range((n + S.BLOCK_ROWS - 1) // S.BLOCK_ROWS):
            if bmax[b] < from_ts:
                continue
            lo = b * S.BLOCK_ROWS
            hi = min(lo + S.BLOCK_ROWS, n)
            found = False
            for r in range(lo, hi):
                if ts[r] >= from_ts:
                    if seq[r] < best:
                        best = seq[r]
                    found = True
                    break
            if found:
                break
    return best


@numba.njit(cache=True, nogil=True)
def committed_next_seq(seg8):
    """The committed next seq of the shard (its high-water mark now)."""
    snap = np.empty(S.COMMIT_SLOT_WORDS, np.int64)
    ingest.snapshot(seg8[: S.HEADER_BYTES].view(np.int64), snap)
    return snap[S.COMMIT_NEXT_SEQ]


def new_state() -> np.ndarray:
    """A zeroed follow state (F_* words)."""
    st = np.zeros(F_WORDS, np.int64)
    st[F_BF_END] = -1
    return st


def warm_up() -> None:
    """Compile (or load) the follow kernels for read-only mappings before going live."""
    C.warm_up()
    cap = S.BLOCK_ROWS
    off = S.region_offsets(cap, 4, 4)
    seg8 = np.zeros(int(off[S.OFF_END]), np.uint8)
    seg8[: S.HEADER_BYTES].view(np.int64)[S.CAPACITY_I64] = cap
    hdr = np.zeros(C.L.HEADER_I64, np.int64)
    slots = np.zeros(2 * C.L.RECORD_WORDS, np.int64)
    seg8.flags.writeable = False
    hdr.flags.writeable = False
    slots.flags.writeable = False
    st = new_state()
    want = np.zeros((2, 4), np.uint8)
    ven_ok = np.zeros((2, 4), np.uint8)
    pairs = np.zeros((MAX_PAIRS, 3), np.int32)
    fctl = np.zeros(FC_WORDS, np.int64)
    rec = C.record_buffer()
    runs = np.zeros((4, RUN_WORDS), np.int64)
    rows = np.zeros(4, np.int64)
    begin(st, hdr, seg8, off, -1)
    follow(hdr, slots, seg8, off, st, want, ven_ok, pairs.astype(np.int64), fctl, rec, runs,
           rows, 4, 4)
    ring64 = np.zeros(CRL.HEADER_I64 + 2 * CRL.RECORD_WORDS, np.int64)
    ring64.flags.writeable = False
    ctl = np.zeros(C_WORDS, np.int64)
    ctl[C_OFF : C_OFF + S.N_OFFSETS] = off
    ctl[C_MAX_ROWS] = ctl[C_MAX_SCAN] = ctl[C_NRUNS] = ctl[C_MAX_SYMBOLS] = 4
    keep = (ring64, seg8, ctl, np.zeros((2, 8), np.uint8), np.zeros(4 * RUN_WORDS + 4, np.int64))
    follow_mem(follow_table(*keep))
    row_values(seg8, ctl, 0, 0)
    row_values(seg8, ctl, 1, 0)
    first_seq_at_ts(seg8, off, 0)
    committed_next_seq(seg8)


# --- registry ----------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _cas(arr, idx, expected, new):
    return compare_exchange(arr, idx, expected, new)


@numba.njit(cache=True, nogil=True)
def _add(arr, idx, v):
    return fetch_add(arr, idx, v)


def registry_name(prefix: str) -> str:
    """``<db prefix>.subs``."""
    return prefix + L.SUFFIX


class Slot:
    """One claimed registry slot: typed views of its words (written by its owner only)."""

    def __init__(self, registry: "Registry", index: int) -> None:
        self.registry = registry
        self.index = index
        base = L.SLOTS_OFFSET + index * L.SLOT_BYTES
        self.i64 = registry.seg.view(base, np.int64, L.SLOT_BYTES // 8)
        self.i32 = registry.seg.view(base, np.int32, L.SLOT_BYTES // 4)
        self.chan = registry.seg.view(base + L.CHANNELS_OFFSET, np.uint8, L.CHANNELS_BYTES)
        self.shards = registry.seg.view(base + L.SHARDS_OFFSET, np.int64,
                                        L.MAX_SHARDS * L.SHARD_WORDS).reshape(L.MAX_SHARDS,
                                                                              L.SHARD_WORDS)

    @property
    def owner(self) -> int:
        return int(self.i64[L.OWNER_I64])

    def channels(self) -> str:
        n = max(0, min(int(self.i32[L.CHANNELS_LEN_I32]), L.CHANNELS_BYTES))
        return bytes(self.chan[:n]).decode("utf-8", "replace")

    def set_channels(self, text: str) -> None:
        raw = text.encode()
        if len(raw) > L.CHANNELS_BYTES:
            raw = raw[: L.CHANNELS_BYTES - 3] + b"..."
        self.chan[: len(raw)] = np.frombuffer(raw, np.uint8)
        self.i32[L.CHANNELS_LEN_I32] = len(raw)

    def release(self) -> None:
        """Give the slot back (its owner only)."""
        if self.i64 is None:
            return
        self.i32[L.STATE_I32] = L.STATE_STOPPED
        _cas(self.i64, L.OWNER_I64, os.getpid(), 0)
        self.i64 = self.i32 = self.chan = self.shards = None  # type: ignore[assignment]


class Registry:
    """The subscriber registry segment of one database."""

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.max_slots = int(seg.i32[L.MAX_SLOTS_I32])
        L.check_segment(self.max_slots, int(seg.i64[L.SLOT_BYTES_I64]), seg.size)

    @classmethod
    def open(cls, prefix: str, max_slots: int = L.DEFAULT_SLOTS) -> "Registry":
        """Attach the registry read-write, creating it if this is the first subscriber."""
        name = registry_name(prefix)
        for _ in range(3):
            try:
                return cls(Segment.attach(name, L.MAGIC, L.VERSION_MAJOR, readonly=False,
                                          what="subscriber registry"))
            except LayoutMismatch:
                raise
            except Exception:  # noqa: BLE001  (missing: create it below)
                pass
            try:
                seg = Segment.create(name, L.segment_size(max_slots), L.MAGIC, L.HEADER_BYTES)
            except SegmentExists:
                continue  # another subscriber created it first: attach
            seg.i32[L.MAX_SLOTS_I32] = max_slots
            seg.i32[L.MAX_SHARDS_I32] = L.MAX_SHARDS
            seg.i64[L.SLOT_BYTES_I64] = L.SLOT_BYTES
            seg.publish_version(L.VERSION_MAJOR, L.VERSION_MINOR)
            return cls(seg)
        return cls(Segment.attach(name, L.MAGIC, L.VERSION_MAJOR, readonly=False,
                                  what="subscriber registry"))

    @classmethod
    def attach_readonly(cls, prefix: str) -> "Registry | None":
        """The registry mapped read-only (for status), or None if no subscriber ever came."""
        try:
            return cls(Segment.attach(registry_name(prefix), L.MAGIC, L.VERSION_MAJOR,
                                      readonly=True, what="subscriber registry"))
        except LayoutMismatch:
            raise
        except Exception:  # noqa: BLE001  (SegmentMissing: nobody subscribed yet)
            return None

    def _owner_view(self, i: int) -> np.ndarray:
        return self.seg.view(L.SLOTS_OFFSET + i * L.SLOT_BYTES, np.int64, L.SLOT_BYTES // 8)

    def claim(self) -> Slot | None:
        """Claim a free slot (or one whose owner died) for this process; None if all are
        held by live processes."""
        pid = os.getpid()
        for i in range(self.max_slots):
            v = self._owner_view(i)
            cur = int(v[L.OWNER_I64])
            if cur != 0 and (cur == pid or pid_alive(cur)):
                continue
            if int(_cas(v, L.OWNER_I64, cur, pid)) != cur:
                continue
            v[1:] = 0  # everything but the owner word
            slot = Slot(self, i)
            slot.i64[L.CLAIMED_NS_I64] = time.time_ns()
            slot.i64[L.HEARTBEAT_NS_I64] = time.time_ns()
            _add(self.seg.i64, L.CLAIMS_I64, 1)
            return slot
        return None

    def live(self) -> list[Slot]:
        """Slots whose owner process is alive."""
        out = []
        for i in range(self.max_slots):
            owner = int(self._owner_view(i)[L.OWNER_I64])
            if owner and pid_alive(owner):
                out.append(Slot(self, i))
        return out

    def close(self) -> None:
        self.seg.close()


__all__ = [
    "follow", "begin", "first_seq_at_ts", "committed_next_seq", "new_state", "warm_up",
    "Registry", "Slot", "registry_name", "pid_alive",
]
