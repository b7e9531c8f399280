"""Writer-side kernels: drain the inbound ring into a shard's columns, then commit.

The shard writer is the only process that runs these, so nothing here takes a lock. One
writer pass:

    n = drain(...)        validate rows, intern names, append columns, link per-symbol index,
                          update ts blocks -- all beyond the committed count, invisible
    (the WAL append goes here: durability before visibility)
    commit(...)           one commit slot, then commit_idx with a release store
    publish_changes(...)  the pass's change records, for subscribers and the broker
    release_inbound(...)  zero the consumed ring bytes, release the ring head

The writer calls them through ``writer_pass`` (prefault, drain and, with no WAL, the rest)
and ``writer_apply`` (the rest, after a WAL append; ``apply_pass`` for a pass whose append
ran on the WAL thread): one kernel call per pass instead of five, because each call from
Python costs 0.3-0.5 us, as much as a one-tick pass's work.

``state`` is the writer's private int64 working copy (S_* indices); it equals the committed
snapshot right after ``commit``.
"""

from __future__ import annotations

import platform

import numba
import numpy as np

from shm import change_ring
from shm.atomics import (_syscall4, as_pointer, clock_monotonic_ns, fence_full, futex_wait,
                         load_acquire, store_release)
from shm.layout import control as C
from shm.layout import inbound as L
from shm.layout import shard as S
from shm.layout import tables as T
from shm.wal_kernels import encode_record, write_all

# writer state words
S_TRADES = 0
S_QUOTES = 1
S_NEXT_SEQ = 2
S_IN_POS = 3
S_NSYM = 4
S_NVEN = 5
S_BATCHES = 6
S_STALL_POS = 7  # position of a record that is claimed but not committed, or -1
S_HOLD_FULL = 8  # in: 1 = a batch that does not fit stops the pass instead of being rejected
S_FULL_HELD = 9  # out: 1 = the pass stopped at such a batch (the writer rolls, then drains it)
N_STATE = 10

# columns of the per-batch output rows (one per inbound record that produced rows)
B_FIRST_SEQ = 0
B_COUNT = 1
B_TABLE = 2
B_FIRST_ROW = 3
B_TS_FIRST = 4
B_TS_LAST = 5
B_SYM_MASK = 6
B_WORDS = 8

_H1 = np.uint64(0x9E3779B97F4A7C15)
_H2 = np.uint64(0xC2B2AE3D27D4EB4F)


@numba.njit(cache=True, nogil=True, inline="always")
def _hash(w0, w1, mask):
    h = (w0 * _H1) ^ (w1 * _H2)
    h ^= h >> np.uint64(29)
    return np.int64(h & np.uint64(mask))


# allowed name characters [A-Za-z0-9._-]: a 256-entry table (a compile-time constant in
# kernels) so a character costs one load instead of six comparisons
NAME_CHARS = np.zeros(256, np.uint8)
for _c in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-":
    NAME_CHARS[_c] = 1
del _c


@numba.njit(cache=True, nogil=True, inline="always")
def _valid_word(w, ended):
    """Check the 8 bytes of one little-endian name word. Returns (ok, ended)."""
    for k in range(8):
        c = (w >> np.uint64(8 * k)) & np.uint64(0xFF)
        if c == 0:
            ended = True
        elif ended or NAME_CHARS[c] == 0:
            return False, ended
    return True, ended


@numba.njit(cache=True, nogil=True)
def valid_words(w0, w1, allow_empty):
    """The 16-byte name held in two little-endian uint64 words: ASCII [A-Za-z0-9._-],
    NUL-padded (no character after a NUL); empty only when allow_empty."""
    if w0 == 0:
        return allow_empty and w1 == 0
    ok, ended = _valid_word(w0, False)
    if not ok:
        return False
    ok, ended = _valid_word(w1, ended)
    return ok


@numba.njit(cache=True, nogil=True)
def valid_name(b, o, allow_empty):
    """ASCII [A-Za-z0-9._-], NUL-padded; empty only when allow_empty."""
    if b[o] == 0:
        for k in range(1, T.NAME_BYTES):
            if b[o + k] != 0:
                return False
        return allow_empty
    ended = False
    for k in range(T.NAME_BYTES):
        c = b[o + k]
        if c == 0:
            ended = True
        elif ended or NAME_CHARS[c] == 0:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _intern(names64, htab, n, max_names, w0, w1, allow_empty, count_i32, count_idx):
    """Id of the name (w0, w1), interning it as id ``n`` if new.

    Returns the id, or -1 invalid name, -2 table full; an id equal to ``n`` means the name
    was added (the caller advances its count). The row loop in _drain_run probes the table
    itself (a call per row, or numba inlining a function that takes arrays, costs reference
    count traffic on every row) and only calls this for names it did not find.
    """
    mask = htab.shape[0] - 1
    h = _hash(w0, w1, mask)
    while True:
        e = htab[h]
        if e == 0:
            break
        i = e - 1
        if names64[2 * i] == w0 and names64[2 * i + 1] == w1:
            return np.int64(i)
        h = (h + 1) & mask
    if not valid_words(w0, w1, allow_empty):
        return np.int64(-1)
    if n >= max_names:
        return np.int64(-2)
    names64[2 * n] = w0
    names64[2 * n + 1] = w1
    htab[h] = n + 1
    # readers map names by id; the name must be visible before any committed row uses it
    store_release(count_i32, count_idx, np.int32(n + 1))
    return np.int64(n)


@numba.njit(cache=True, nogil=True)
def rebuild_htab(names8, n, htab):
    """Fill the writer-private open-addressing table from the first ``n`` names."""
    htab[:] = 0
    names64 = names8.view(np.uint64)
    mask = htab.shape[0] - 1
    for i in range(n):
        h = _hash(names64[2 * i], names64[2 * i + 1], mask)
        while htab[h] != 0:
            h = (h + 1) & mask
        htab[h] = i + 1


@numba.njit(cache=True, nogil=True, inline="always")
def _pos_finite(x):
    return x > 0.0 and x < np.inf


@numba.njit(cache=True, nogil=True)
def row_reason(table, ts, a, b, c, d, now_ns):
    """Reject reason for one row (REJECT_OK if valid). Trades: a=price, b=size; quotes:
    a=bid, b=ask, c=bid_size, d=ask_size. Shared by producers (to raise early) and the
    writer (which trusts no producer)."""
    if ts < T.MIN_TS_NS or ts > now_ns + T.MAX_FUTURE_NS:
        return T.REJECT_TS
    if table == T.TRADES:
        if not _pos_finite(a):
            return T.REJECT_PRICE
        if not _pos_finite(b):
            return T.REJECT_SIZE
        return T.REJECT_OK
    if not (_pos_finite(a) and _pos_finite(b)):
        return T.REJECT_PRICE
    if not (_pos_finite(c) and _pos_finite(d)):
        return T.REJECT_SIZE
    if a > b:
        return T.REJECT_CROSSED
    return T.REJECT_OK


# Column views over the segment at byte offset o, n items (fewer where the segment ends,
# as a slice would give). numba.carray, not a slice: a pass makes ~25 of them, and a
# slice's reference counting cost ~20 ns each -- a third of a one-tick pass's drain.
@numba.njit(cache=True, nogil=True, inline="always")
def _fit(seg8, o, n, itemsize):
    return max(0, min(n, (seg8.shape[0] - o) // itemsize))


@numba.njit(cache=True, nogil=True, inline="always")
def _i64(seg8, o, n):
    return numba.carray(as_pointer(seg8.ctypes.data + o), _fit(seg8, o, n, 8), np.int64)


@numba.njit(cache=True, nogil=True, inline="always")
def _i32(seg8, o, n):
    return numba.carray(as_pointer(seg8.ctypes.data + o), _fit(seg8, o, n, 4), np.int32)


@numba.njit(cache=True, nogil=True, inline="always")
def _f64(seg8, o, n):
    return numba.carray(as_pointer(seg8.ctypes.data + o), _fit(seg8, o, n, 8), np.float64)


@numba.njit(cache=True, nogil=True, inline="always")
def _u64(seg8, o, n):
    return numba.carray(as_pointer(seg8.ctypes.data + o), _fit(seg8, o, n, 8), np.uint64)


# the venue "stream" as the first word of its NUL-padded name (the second is 0): refused by
# the writer too, which trusts no producer (wayy.names.RESERVED_VENUE)
_RESERVED_VENUE_W0 = np.uint64(int.from_bytes(b"stream".ljust(8, b"\0"), "little"))


# words of the per-pass scratch array ``st`` that drain shares with _drain_run
R_ROW = 0  # next row of the table being appended
R_SEQ = 1  # next seq
R_NSYM = 2  # symbols interned
R_NVEN = 3  # venues interned
R_SYM0 = 4  # one-entry cache of the last symbol: its two words and its id (-1 = empty)
R_SYM1 = 5
R_SID = 6
R_VEN0 = 7  # the same for the last venue
R_VEN1 = 8
R_VID = 9
R_NB = 10  # batches produced this pass
R_HOLD = 11  # S_HOLD_FULL in; 2 out when a batch that does not fit was held back
R_WORDS = 12


@numba.njit(cache=True, nogil=True)
def _drain_run(table, nvals, ring8, ring32, pos, tail, end, mask, max_record, now_ns,
               capacity, c_ts, c_sym, c_ven, o0, o1, o2, o3, c_seq, c_prev, b_min, b_max, last,
               sym64, htab_s, max_sym, ven64, htab_v, max_ven, hdr32, st, rejects, batches):
    """Append consecutive well-formed records of ``table`` from ``pos``; return the position
    of the first record it did not take (another table's, padding, unfinished, malformed:
    drain decides about those).

    One call per run of records rather than per record: every call of a kernel that takes
    arrays costs two atomic reference-count updates per array, which a stream of one-row
    records would otherwise pay per row. Name lookups are written out in the row loop for
    the same reason; only new names go through _intern.
    """
    rtype = table + 1
    row_bytes = 40 + 8 * nvals
    row = st[R_ROW]
    seq = st[R_SEQ]
    nsym = st[R_NSYM]
    nven = st[R_NVEN]
    cs0 = np.uint64(st[R_SYM0])
    cs1 = np.uint64(st[R_SYM1])
    csid = st[R_SID]
    cv0 = np.uint64(st[R_VEN0])
    cv1 = np.uint64(st[R_VEN1])
    cvid = st[R_VID]
    nb = st[R_NB]
    max_ts = now_ns + T.MAX_FUTURE_NS
    smask = htab_s.shape[0] - 1
    vmask = htab_v.shape[0] - 1
    while pos < tail and pos < end and nb < batches.shape[0]:
        w = (pos & mask) >> 2
        length = load_acquire(ring32, w)
        if length <= 0 or ring32[w + 1] != rtype or length % L.REC_ALIGN != 0:
            break
        count = ring32[w + 3]
        if length > max_record or count < 0 or L.REC_HEADER_BYTES + count * row_bytes > length:
            break
        if row + count > capacity:
            if st[R_HOLD] == 1 and count <= capacity:
                # the writer rolls the table to history, then this batch fits: hold it
                st[R_HOLD] = 2
                break
            # the table cannot take the whole batch: reject it whole (a batch is visible
            # all at once or not at all), never part of it
            rejects[T.REJECT_FULL] += count
            pos += length
            continue
        base = (pos & mask) + L.REC_HEADER_BYTES
        r_ts = ring8[base : base + 8 * count].view(np.int64)
        o_sym = base + 8 * count
        o_ven = o_sym + T.NAME_BYTES * count
        o_val = o_ven + T.NAME_BYTES * count
        r_sym = ring8[o_sym : o_ven].view(np.uint64)
        r_ven = ring8[o_ven : o_val].view(np.uint64)
        vals = ring8[o_val : o_val + 8 * nvals * count].view(np.float64)
        first_row = row
        first_seq = seq
        ts_first = np.int64(0)
        ts_last = np.int64(0)
        sym_mask = np.uint64(0)
        for j in range(count):
            ts = r_ts[j]
            a = vals[j]
            b = vals[count + j]
            if nvals == 2:
                c = 1.0
                d = 1.0
            else:
                c = vals[2 * count + j]
                d = vals[3 * count + j]
            # row_reason, written out for the all-valid case
            if (ts < T.MIN_TS_NS or ts > max_ts or not _pos_finite(a) or not _pos_finite(b)
                    or not _pos_finite(c) or not _pos_finite(d) or (nvals == 4 and a > b)):
                rejects[row_reason(table, ts, a, b, c, d, now_ns)] += 1
                continue
            s0 = r_sym[2 * j]
            s1 = r_sym[2 * j + 1]
            if csid >= 0 and s0 == cs0 and s1 == cs1:
                sid = csid
            else:
                sid = np.int64(-3)
                h = _hash(s0, s1, smask)
                while True:
                    e = np.int64(htab_s[h])
                    if e == 0:
                        break
                    if sym64[2 * e - 2] == s0 and sym64[2 * e - 1] == s1:
                        sid = e - 1
                        break
                    h = (h + 1) & smask
                if sid == -3:
                    sid = _intern(sym64, htab_s, nsym, max_sym, s0, s1, False, hdr32,
                                  S.N_SYMBOLS_I32)
                    if sid < 0:
                        rejects[T.REJECT_SYMBOL if sid == -1 else T.REJECT_SYMBOLS_FULL] += 1
                        continue
                    if sid == nsym:
                        nsym += 1
                cs0 = s0
                cs1 = s1
                csid = sid
            e0 = r_ven[2 * j]
            e1 = r_ven[2 * j + 1]
            if cvid >= 0 and e0 == cv0 and e1 == cv1:
                vid = cvid
            else:
                vid = np.int64(-3)
                h = _hash(e0, e1, vmask)
                while True:
                    e = np.int64(htab_v[h])
                    if e == 0:
                        break
                    if ven64[2 * e - 2] == e0 and ven64[2 * e - 1] == e1:
                        vid = e - 1
                        break
                    h = (h + 1) & vmask
                if vid == -3:
                    if e0 == _RESERVED_VENUE_W0 and e1 == 0:
                        vid = np.int64(-1)  # names the Redis stream of a channel
                    else:
                        vid = _intern(ven64, htab_v, nven, max_ven, e0, e1, True, hdr32,
                                      S.N_VENUES_I32)
                    if vid < 0:
                        rejects[T.REJECT_VENUE if vid == -1 else T.REJECT_VENUES_FULL] += 1
                        continue
                    if vid == nven:
                        nven += 1
                cv0 = e0
                cv1 = e1
                cvid = vid
            c_ts[row] = ts
            c_sym[row] = sid
            c_ven[row] = vid
            o0[row] = a
            o1[row] = b
            if nvals == 4:
                o2[row] = c
                o3[row] = d
            c_seq[row] = seq
            c_prev[row] = last[sid]
            # prev is in place before last[] points at the row: a reader following last[]
            # (acquire) always finds a complete link
            store_release(last, sid, row)
            blk = row // S.BLOCK_ROWS
            if row % S.BLOCK_ROWS == 0:
                b_min[blk] = ts
                b_max[blk] = ts
            else:
                if ts < b_min[blk]:
                    b_min[blk] = ts
                if ts > b_max[blk]:
                    b_max[blk] = ts
            if row == first_row:
                ts_first = ts
            ts_last = ts
            sym_mask |= np.uint64(1) << np.uint64(sid & 63)
            row += 1
            seq += 1
        added = row - first_row
        if added > 0:
            bo = batches[nb]
            bo[B_FIRST_SEQ] = first_seq
            bo[B_COUNT] = added
            bo[B_TABLE] = table
            bo[B_FIRST_ROW] = first_row
            bo[B_TS_FIRST] = ts_first
            bo[B_TS_LAST] = ts_last
            bo[B_SYM_MASK] = np.int64(sym_mask)
            nb += 1
        pos += length
    st[R_ROW] = row
    st[R_SEQ] = seq
    st[R_NSYM] = nsym
    st[R_NVEN] = nven
    st[R_SYM0] = np.int64(cs0)
    st[R_SYM1] = np.int64(cs1)
    st[R_SID] = csid
    st[R_VEN0] = np.int64(cv0)
    st[R_VEN1] = np.int64(cv1)
    st[R_VID] = cvid
    st[R_NB] = nb
    return pos


@numba.njit(cache=True, nogil=True)
def drain(seg8, off, hdr32, ring64, ring8, ring32, htab_s, htab_v, state, rejects,
          batches, now_ns, max_bytes):
    """Apply committed inbound records from state[S_IN_POS] on. Returns batches produced.

    Stops at the ring tail, at a record still being written (its position goes to
    state[S_STALL_POS]), after ``max_bytes`` of records, or when ``batches`` is full.
    """
    cap = ring64[L.CAPACITY_I64]
    mask = cap - 1
    max_record = ring64[L.MAX_RECORD_I64]
    tail = load_acquire(ring64, L.TAIL_I64)
    pos = state[S_IN_POS]
    end = pos + max_bytes
    state[S_STALL_POS] = -1
    if pos >= tail:
        return 0
    capacity = np.int64(hdr32.view(np.int64)[S.CAPACITY_I64])
    max_sym = hdr32[S.MAX_SYMBOLS_I32]
    max_ven = hdr32[S.MAX_VENUES_I32]
    sym64 = _u64(seg8, off[S.OFF_SYM_NAMES], T.NAME_BYTES // 8 * max_sym)
    ven64 = _u64(seg8, off[S.OFF_VEN_NAMES], T.NAME_BYTES // 8 * max_ven)
    nblk = capacity // S.BLOCK_ROWS
    # every column view once per pass, not per record or per row
    tb = S.OFF_TABLES
    t_ts = _i64(seg8, off[tb + S.COL_TS], capacity)
    t_sym = _i32(seg8, off[tb + S.COL_SYMBOL], capacity)
    t_ven = _i32(seg8, off[tb + S.COL_VENUE], capacity)
    t_v0 = _f64(seg8, off[tb + S.COL_VALUES], capacity)
    t_v1 = _f64(seg8, off[tb + S.COL_VALUES + 1], capacity)
    t_seq = _i64(seg8, off[tb + S.COL_SEQ], capacity)
    t_prev = _i64(seg8, off[tb + S.COL_PREV], capacity)
    t_bmin = _i64(seg8, off[tb + S.COL_BLK_MIN], nblk)
    t_bmax = _i64(seg8, off[tb + S.COL_BLK_MAX], nblk)
    t_last = _i64(seg8, off[S.OFF_LAST_TRADE], max_sym)
    qb = S.OFF_TABLES + S.OFF_TABLE_STRIDE
    q_ts = _i64(seg8, off[qb + S.COL_TS], capacity)
    q_sym = _i32(seg8, off[qb + S.COL_SYMBOL], capacity)
    q_ven = _i32(seg8, off[qb + S.COL_VENUE], capacity)
    q_v0 = _f64(seg8, off[qb + S.COL_VALUES], capacity)
    q_v1 = _f64(seg8, off[qb + S.COL_VALUES + 1], capacity)
    q_v2 = _f64(seg8, off[qb + S.COL_VALUES + 2], capacity)
    q_v3 = _f64(seg8, off[qb + S.COL_VALUES + 3], capacity)
    q_seq = _i64(seg8, off[qb + S.COL_SEQ], capacity)
    q_prev = _i64(seg8, off[qb + S.COL_PREV], capacity)
    q_bmin = _i64(seg8, off[qb + S.COL_BLK_MIN], nblk)
    q_bmax = _i64(seg8, off[qb + S.COL_BLK_MAX], nblk)
    q_last = _i64(seg8, off[S.OFF_LAST_QUOTE], max_sym)
    st = np.zeros(R_WORDS, np.int64)
    st[R_SEQ] = state[S_NEXT_SEQ]
    st[R_NSYM] = state[S_NSYM]
    st[R_NVEN] = state[S_NVEN]
    st[R_SID] = -1
    st[R_VID] = -1
    st[R_HOLD] = state[S_HOLD_FULL]
    while pos < tail and pos < end and st[R_NB] < batches.shape[0] and st[R_HOLD] != 2:
        w = (pos & mask) >> 2
        length = load_acquire(ring32, w)
        if length <= 0:
            state[S_STALL_POS] = pos
            break
        rtype = ring32[w + 1]
        count = ring32[w + 3]
        if rtype == L.TYPE_PADDING:
            pos += length
            continue
        if length % L.REC_ALIGN != 0 or length > max_record:
            # a header no producer of ours writes: nothing after it can be located, so skip
            # to the tail (counted) rather than interpret garbage as rows
            rejects[T.REJECT_MALFORMED] += 1
            pos = tail
            break
        table = rtype - 1
        if table != T.TRADES and table != T.QUOTES:
            rejects[T.REJECT_MALFORMED] += 1
            pos += length
            continue
        nvals = 2 if table == T.TRADES else 4
        if count < 0 or L.REC_HEADER_BYTES + count * (40 + 8 * nvals) > length:
            rejects[T.REJECT_MALFORMED] += 1
            pos += length
            continue
        # a well-formed record: append it and every following one of the same table
        st[R_ROW] = state[table]
        if table == T.TRADES:
            pos = _drain_run(T.TRADES, 2, ring8, ring32, pos, tail, end, mask, max_record,
                             now_ns, capacity, t_ts, t_sym, t_ven, t_v0, t_v1, t_v0, t_v1,
                             t_seq, t_prev, t_bmin, t_bmax, t_last, sym64, htab_s, max_sym,
                             ven64, htab_v, max_ven, hdr32, st, rejects, batches)
        else:
            pos = _drain_run(T.QUOTES, 4, ring8, ring32, pos, tail, end, mask, max_record,
                             now_ns, capacity, q_ts, q_sym, q_ven, q_v0, q_v1, q_v2, q_v3,
                             q_seq, q_prev, q_bmin, q_bmax, q_last, sym64, htab_s, max_sym,
                             ven64, htab_v, max_ven, hdr32, st, rejects, batches)
        state[table] = st[R_ROW]
    state[S_NEXT_SEQ] = st[R_SEQ]
    state[S_NSYM] = st[R_NSYM]
    state[S_NVEN] = st[R_NVEN]
    state[S_IN_POS] = pos
    state[S_FULL_HELD] = 1 if st[R_HOLD] == 2 else 0
    return st[R_NB]


@numba.njit(cache=True, nogil=True)
def commit(hdr64, state, now_ns):
    """Publish the working state as the committed snapshot (one slot, then commit_idx)."""
    idx = hdr64[S.COMMIT_IDX_I64] + 1
    slot = S.COMMIT_SLOT0_I64 + (idx & 1) * S.COMMIT_SLOT_WORDS
    hdr64[slot + S.COMMIT_TRADES] = state[S_TRADES]
    hdr64[slot + S.COMMIT_QUOTES] = state[S_QUOTES]
    hdr64[slot + S.COMMIT_NEXT_SEQ] = state[S_NEXT_SEQ]
    hdr64[slot + S.COMMIT_IN_POS] = state[S_IN_POS]
    hdr64[slot + S.COMMIT_NS] = now_ns
    state[S_BATCHES] += 1
    hdr64[slot + S.COMMIT_BATCHES] = state[S_BATCHES]
    store_release(hdr64, S.COMMIT_IDX_I64, idx)


@numba.njit(cache=True, nogil=True)
def bump_generation(hdr64):
    """Start a new segment generation (a roll), before any row of it is overwritten: a reader
    that sees the generation move while it read knows its rows may be gone."""
    store_release(hdr64, S.GENERATION_I64, hdr64[S.GENERATION_I64] + 1)
    fence_full()  # the bump is visible before any later store overwrites a row


@numba.njit(cache=True, nogil=True)
def snapshot(hdr64, out):
    """Copy the committed snapshot (COMMIT_* words) into ``out``; returns commit_idx."""
    while True:
        idx = load_acquire(hdr64, S.COMMIT_IDX_I64)
        slot = S.COMMIT_SLOT0_I64 + (idx & 1) * S.COMMIT_SLOT_WORDS
        for k in range(S.COMMIT_SLOT_WORDS):
            out[k] = load_acquire(hdr64, slot + k)
        if load_acquire(hdr64, S.COMMIT_IDX_I64) == idx:
            return idx


@numba.njit(cache=True, nogil=True)
def release_inbound(ring64, ring8, upto):
    """Zero the consumed bytes [head, upto) so the next lap reads 0, then release head."""
    mask = ring64[L.CAPACITY_I64] - 1
    head = ring64[L.HEAD_I64]
    p = head
    while p < upto:
        i = p & mask
        n = min(upto - p, mask + 1 - i)
        ring8[i : i + n] = 0
        p += n
    store_release(ring64, L.HEAD_I64, upto)


@numba.njit(cache=True, nogil=True)
def pad_stalled(ring32, ring64, pos):
    """Turn the claimed-but-unfinished record at ``pos`` into padding. Returns bytes padded.

    Used only after its producer is known dead. A claim whose header is still 0 (the producer
    died between claiming and writing its header) is padded up to the next record header
    that is set, or to the tail.
    """
    mask = ring64[L.CAPACITY_I64] - 1
    w = (pos & mask) >> 2
    length = load_acquire(ring32, w)
    if length < 0:
        ring32[w + 1] = L.TYPE_PADDING
        store_release(ring32, w, np.int32(-length))
        return -length
    if length > 0:
        return 0
    tail = load_acquire(ring64, L.TAIL_I64)
    # a claim never crosses the end of the data area, so the gap ends there at the latest
    p = pos + L.REC_ALIGN
    while p < tail and (p & mask) != 0 and ring32[(p & mask) >> 2] == 0:
        p += L.REC_ALIGN
    n = p - pos
    ring32[w + 1] = L.TYPE_PADDING
    store_release(ring32, w, np.int32(n))
    return n


@numba.njit(cache=True, nogil=True)
def repair_after_crash(seg8, off, hdr64, state):
    """Make the uncommitted tail harmless after a writer died mid-pass.

    Per-symbol ``last`` links that point at uncommitted rows are walked back to committed
    ones, and the ts block of the last committed row is recomputed from committed rows.
    """
    capacity = hdr64[S.CAPACITY_I64]
    hdr32 = hdr64.view(np.int32)
    max_sym = hdr32[S.MAX_SYMBOLS_I32]
    for table in range(2):
        n = state[table]
        tb = S.OFF_TABLES + table * S.OFF_TABLE_STRIDE
        c_ts = seg8[off[tb + S.COL_TS] : off[tb + S.COL_TS] + 8 * capacity].view(np.int64)
        c_prev = seg8[off[tb + S.COL_PREV] : off[tb + S.COL_PREV] + 8 * capacity].view(np.int64)
        nblk = capacity // S.BLOCK_ROWS
        b_min = seg8[off[tb + S.COL_BLK_MIN] : off[tb + S.COL_BLK_MIN] + 8 * nblk].view(np.int64)
        b_max = seg8[off[tb + S.COL_BLK_MAX] : off[tb + S.COL_BLK_MAX] + 8 * nblk].view(np.int64)
        lo = S.OFF_LAST_TRADE if table == T.TRADES else S.OFF_LAST_QUOTE
        last = seg8[off[lo] : off[lo] + 8 * max_sym].view(np.int64)
        for s in range(max_sym):
            r = last[s]
            while r >= n:
                nr = c_prev[r]
                r = nr if nr < r else -1  # links only point backwards; anything else is junk
            last[s] = r
        if n > 0:
            blk = (n - 1) // S.BLOCK_ROWS
            start = blk * S.BLOCK_ROWS
            lo_ts = c_ts[start]
            hi_ts = c_ts[start]
            for r in range(start, n):
                lo_ts = min(lo_ts, c_ts[r])
                hi_ts = max(hi_ts, c_ts[r])
            b_min[blk] = lo_ts
            b_max[blk] = hi_ts


@numba.njit(cache=True, nogil=True)
def link_rows(seg8, off, hdr64, state, table, n):
    """Index ``n`` rows already in the columns after the table's last row (per-symbol links,
    ts blocks), and count them in ``state``. Returns n, or -1 past capacity. Uncommitted.

    Recovery copies a WAL's columns straight into the segment, then calls this: the same
    structures drain builds row by row, in one pass.
    """
    capacity = hdr64[S.CAPACITY_I64]
    r0 = state[table]
    if n <= 0:
        return 0
    if r0 + n > capacity:
        return -1
    max_sym = hdr64.view(np.int32)[S.MAX_SYMBOLS_I32]
    tb = S.OFF_TABLES + table * S.OFF_TABLE_STRIDE
    c_ts = _i64(seg8, off[tb + S.COL_TS], capacity)
    c_sym = _i32(seg8, off[tb + S.COL_SYMBOL], capacity)
    c_seq = _i64(seg8, off[tb + S.COL_SEQ], capacity)
    c_prev = _i64(seg8, off[tb + S.COL_PREV], capacity)
    nblk = capacity // S.BLOCK_ROWS
    b_min = _i64(seg8, off[tb + S.COL_BLK_MIN], nblk)
    b_max = _i64(seg8, off[tb + S.COL_BLK_MAX], nblk)
    lo = S.OFF_LAST_TRADE if table == T.TRADES else S.OFF_LAST_QUOTE
    last = _i64(seg8, off[lo], max_sym)
    for j in range(n):
        row = r0 + j
        sid = c_sym[row]
        c_prev[row] = last[sid]
        last[sid] = row
        t = c_ts[row]
        blk = row // S.BLOCK_ROWS
        if row % S.BLOCK_ROWS == 0:
            b_min[blk] = t
            b_max[blk] = t
        else:
            if t < b_min[blk]:
                b_min[blk] = t
            if t > b_max[blk]:
                b_max[blk] = t
    state[table] = r0 + n
    if c_seq[r0 + n - 1] + 1 > state[S_NEXT_SEQ]:
        state[S_NEXT_SEQ] = c_seq[r0 + n - 1] + 1
    return n


# --- mapping column pages ahead of the writer ------------------------------------------------
#
# A first write to a page of a shared-memory segment costs a page fault (~4 us on a VM, ~50 ns
# per trades row); madvise(MADV_POPULATE_WRITE) maps a whole range in one call, cheaper per
# page, and leaves the contents alone. The writer runs prefault_loop on a helper thread (no
# GIL held: a low-priority thread holding the GIL would stall the writer) and calls
# prefault_rows itself for what one pass may write when the helper is behind.

_SYS_MADVISE = {"x86_64": 28, "amd64": 28, "aarch64": 233, "arm64": 233}.get(
    platform.machine().lower(), 28)
MADV_POPULATE_WRITE = 23  # Linux 5.14+; older kernels refuse it and pages fault as before

# words of the int64 prefault control array shared by the writer and its helper thread
P_OK = 0  # 1 while madvise works; 0 after it failed once (then nobody tries again)
P_DONE = 1  # P_DONE + t: rows of table t whose pages are mapped
P_WORDS = 4
P_MAX_COLUMNS = 5 + T.MAX_VALUE_COLUMNS  # ts, symbol, venue, seq, prev, value columns


@numba.njit(cache=True, nogil=True)
def populate(addr, nbytes, page):
    """madvise(MADV_POPULATE_WRITE) over the pages of [addr, addr + nbytes). True if done."""
    lo = addr & ~(page - 1)
    hi = (addr + nbytes + page - 1) & ~(page - 1)
    return _syscall4(_SYS_MADVISE, lo, hi - lo, MADV_POPULATE_WRITE, 0) == 0


@numba.njit(cache=True, nogil=True)
def prefault_rows(pf, cols, base, page, capacity, state, t, upto):
    """Map the pages of rows [mapped, upto) of table ``t`` in every column. ``cols[t, k]``
    is (byte offset, item size) of column k (size 0: none). Returns rows newly mapped."""
    if pf[P_OK] == 0:
        return 0
    lo = max(pf[P_DONE + t], load_acquire(state, t))
    hi = min(upto, capacity)
    if lo >= hi:
        return 0
    for k in range(cols.shape[1]):
        size = cols[t, k, 1]
        if size > 0 and not populate(base + cols[t, k, 0] + lo * size, (hi - lo) * size, page):
            pf[P_OK] = 0
            return 0
    if hi > pf[P_DONE + t]:  # both threads write this word: never move it back
        pf[P_DONE + t] = hi
    return hi - lo


@numba.njit(cache=True, nogil=True)
def prefault_pass(pf, cols, base, page, capacity, state, ahead):
    """The writer, before a pass that may append ``ahead`` rows to either table."""
    prefault_rows(pf, cols, base, page, capacity, state, T.TRADES,
                  load_acquire(state, S_TRADES) + ahead)
    prefault_rows(pf, cols, base, page, capacity, state, T.QUOTES,
                  load_acquire(state, S_QUOTES) + ahead)


@numba.njit(cache=True, nogil=True)
def prefault_loop(pf, stop32, cols, base, page, capacity, state, ring_addr, ring_bytes,
                  min_rows, max_rows, chunk_rows, window_ns):
    """The helper thread: map the inbound ring, then keep every table's next rows mapped --
    about ``window_ns`` of rows at the recent append rate, between min_rows and max_rows --
    a chunk at a time, until stop32[0] becomes non-zero (futex-woken)."""
    o = 0
    while o < ring_bytes:
        if load_acquire(stop32, 0) != 0:
            return
        n = min(1 << 20, ring_bytes - o)
        if not populate(ring_addr + o, n, page):
            pf[P_OK] = 0
            return
        o += n
    last_t = clock_monotonic_ns()
    last0 = load_acquire(state, S_TRADES)
    last1 = load_acquire(state, S_QUOTES)
    rate0 = 0.0  # rows per ns
    rate1 = 0.0
    while load_acquire(stop32, 0) == 0 and pf[P_OK] != 0:
        now = clock_monotonic_ns()
        if now - last_t >= 10_000_000:
            r0 = load_acquire(state, S_TRADES)
            r1 = load_acquire(state, S_QUOTES)
            dt = now - last_t
            rate0 = max(rate0 * 0.5, (r0 - last0) / dt)
            rate1 = max(rate1 * 0.5, (r1 - last1) / dt)
            last0 = r0
            last1 = r1
            last_t = now
        busy = False
        for t in range(2):
            rate = rate0 if t == 0 else rate1
            window = min(max_rows, max(min_rows, np.int64(rate * window_ns)))
            rows = load_acquire(state, t)
            lo = max(pf[P_DONE + t], rows)
            target = min(rows + window, capacity)
            if lo < target:
                prefault_rows(pf, cols, base, page, capacity, state, t,
                              min(target, lo + chunk_rows))
                busy = True
        if not busy:
            futex_wait(stop32, 0, 0, 5_000_000)


@numba.njit(cache=True, nogil=True)
def publish_changes(hdr, slots, wctl, batches, nb):
    """Announce ``nb`` committed batches on the change ring; returns records published.

    Adjacent batches of the same table whose rows and seqs both continue each other are one
    record: a stream of one-tick batches then costs one ring record per pass, not per tick.
    """
    if nb == 0:
        return 0
    out = 0
    cur = batches[0].copy()
    for i in range(1, nb + 1):
        if i < nb:
            b = batches[i]
            if (b[B_TABLE] == cur[B_TABLE]
                    and b[B_FIRST_SEQ] == cur[B_FIRST_SEQ] + cur[B_COUNT]
                    and b[B_FIRST_ROW] == cur[B_FIRST_ROW] + cur[B_COUNT]):
                cur[B_COUNT] += b[B_COUNT]
                cur[B_TS_LAST] = b[B_TS_LAST]
                cur[B_SYM_MASK] |= b[B_SYM_MASK]
                continue
        change_ring.publish(hdr, slots, wctl, cur[B_FIRST_SEQ], cur[B_COUNT], cur[B_TABLE],
                            cur[B_FIRST_ROW], cur[B_TS_FIRST], cur[B_TS_LAST], cur[B_SYM_MASK])
        out += 1
        if i < nb:
            cur[:] = batches[i]
    return out


@numba.njit(cache=True, nogil=True)
def apply_pass(hdr64, state, now_ns, ch_hdr, ch_slots, ch_wctl, batches, nb, ring64, ring8,
               counters):
    """Everything after a drained pass is durable: commit ``state``, announce its ``nb``
    batches on the change ring, release its inbound bytes, and count it in the control
    segment's ``counters``."""
    commit(hdr64, state, now_ns)
    publish_changes(ch_hdr, ch_slots, ch_wctl, batches, nb)
    release_inbound(ring64, ring8, state[S_IN_POS])
    counters[C.C_ROWS_TRADES] = state[S_TRADES]
    counters[C.C_ROWS_QUOTES] = state[S_QUOTES]
    counters[C.C_BATCHES] += nb
    counters[C.C_HEARTBEAT_NS] = now_ns


# The writer's arrays as one int64 table of (address, items) pairs, M_* below: writer_pass
# and writer_apply take it instead of 18 arrays, because a call from Python unboxes every
# array argument (~50 ns each: 0.9 us of a one-tick pass). Built once per writer by
# ``pass_memory``, whose caller keeps every array alive (and mapped) while it passes it.
M_SEG8 = 0  # the shard segment, bytes (its columns, header and name tables)
M_OFF = 1  # the segment's region offsets (layout.shard.region_offsets)
M_RING64 = 2  # the inbound ring's header, int64
M_RING8 = 3  # the inbound ring's data, bytes
M_HTAB_S = 4  # symbol and venue hash tables, int32
M_HTAB_V = 5
M_STATE = 6  # the writer's working state (S_*)
M_REJECTS = 7  # the control segment's reject counters
M_BATCHES = 8  # the pass's batches, int64[n, B_WORDS]
M_PF = 9  # prefault state (P_*; P_OK 0: no prefaulting)
M_PF_COLS = 10  # prefault columns, int64[2, P_MAX_COLUMNS, 2]
M_CH_HDR = 11  # the change ring's header, slots and wait words
M_CH_SLOTS = 12
M_CH_WCTL = 13
M_COUNTERS = 14  # the control segment's counters (layout.control C_*)
M_WORDS = 2 * 15
_M_DTYPES = {M_SEG8: np.uint8, M_RING8: np.uint8, M_HTAB_S: np.int32, M_HTAB_V: np.int32,
             M_CH_WCTL: np.int32}  # the rest: int64


def pass_memory(arrays: dict) -> np.ndarray:
    """The table writer_pass takes: ``arrays`` maps every M_* index to its writeable,
    C-contiguous array of the dtype its comment gives. The caller keeps the arrays alive."""
    mem = np.zeros(M_WORDS, np.int64)
    for k in range(M_WORDS // 2):
        a = arrays[k]
        want = np.dtype(_M_DTYPES.get(k, np.int64))
        if a.dtype != want or not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"pass_memory: array {k} must be a writeable, C-contiguous "
                             f"array of {want} (got {a.dtype}, contiguous "
                             f"{a.flags.c_contiguous}, writeable {a.flags.writeable})")
        mem[2 * k] = a.ctypes.data
        mem[2 * k + 1] = a.size
    return mem


@numba.njit(cache=True, nogil=True, inline="always")
def _m_i64(mem, k):
    return numba.carray(as_pointer(mem[2 * k]), mem[2 * k + 1], np.int64)


@numba.njit(cache=True, nogil=True, inline="always")
def _m_u8(mem, k):
    return numba.carray(as_pointer(mem[2 * k]), mem[2 * k + 1], np.uint8)


@numba.njit(cache=True, nogil=True, inline="always")
def _m_i32(mem, k):
    return numba.carray(as_pointer(mem[2 * k]), mem[2 * k + 1], np.int32)


@numba.njit(cache=True, nogil=True, inline="always")
def _m_hdr64(mem):
    return numba.carray(as_pointer(mem[2 * M_SEG8]), S.HEADER_BYTES // 8, np.int64)


@numba.njit(cache=True, nogil=True, inline="always")
def _m_batches(mem):
    return numba.carray(as_pointer(mem[2 * M_BATCHES]),
                        (mem[2 * M_BATCHES + 1] // B_WORDS, B_WORDS), np.int64)


@numba.njit(cache=True, nogil=True)
def writer_apply(mem, now_ns, nb):
    """``apply_pass`` of the pass in ``mem``'s state and batches (after its WAL append)."""
    apply_pass(_m_hdr64(mem), _m_i64(mem, M_STATE), now_ns, _m_i64(mem, M_CH_HDR),
               _m_i64(mem, M_CH_SLOTS), _m_i32(mem, M_CH_WCTL), _m_batches(mem), nb,
               _m_i64(mem, M_RING64), _m_u8(mem, M_RING8), _m_i64(mem, M_COUNTERS))


@numba.njit(cache=True, nogil=True)
def writer_pass(mem, now_ns, max_bytes, min_row_bytes, page, apply):
    """One writer pass in one call: map the pages it may write (when pf[P_OK]: a prefault
    thread runs), drain up to ``max_bytes``, and when ``apply`` (no WAL append in between)
    ``apply_pass`` it if it consumed anything. Returns the batches drained; the caller
    compares state[S_IN_POS] with its value before to see whether records were consumed."""
    seg8 = _m_u8(mem, M_SEG8)
    hdr64 = _m_hdr64(mem)
    state = _m_i64(mem, M_STATE)
    ring64 = _m_i64(mem, M_RING64)
    ring8 = _m_u8(mem, M_RING8)
    batches = _m_batches(mem)
    pf = _m_i64(mem, M_PF)
    pos = state[S_IN_POS]
    if pf[P_OK] != 0:
        cols = numba.carray(as_pointer(mem[2 * M_PF_COLS]), (2, P_MAX_COLUMNS, 2), np.int64)
        prefault_pass(pf, cols, mem[2 * M_SEG8], page, hdr64[S.CAPACITY_I64], state,
                      min(ring64[L.TAIL_I64] - pos, max_bytes) // min_row_bytes + 1)
    nb = drain(seg8, _m_i64(mem, M_OFF),
               numba.carray(as_pointer(mem[2 * M_SEG8]), S.HEADER_BYTES // 4, np.int32),
               ring64, ring8, numba.carray(as_pointer(mem[2 * M_RING8]),
                                           mem[2 * M_RING8 + 1] // 4, np.int32),
               _m_i32(mem, M_HTAB_S), _m_i32(mem, M_HTAB_V), state, _m_i64(mem, M_REJECTS),
               batches, now_ns, max_bytes)
    if apply and state[S_IN_POS] != pos:
        apply_pass(hdr64, state, now_ns, _m_i64(mem, M_CH_HDR), _m_i64(mem, M_CH_SLOTS),
                   _m_i32(mem, M_CH_WCTL), batches, nb, ring64, ring8,
                   _m_i64(mem, M_COUNTERS))
    return nb


# The WAL side of writer_pass_logged: an int64 table, W_* below, built by the writer's log
# (workers.shard_log.ShardLog.pass_log_table) over its open WAL file, and refreshed by it
# whenever the log moved by another path. With it, a small pass is drained, appended to the
# WAL and committed in one compiled call: the Python assembly around the append (~5 us of
# a one-tick pass) is out of the latency path.
W_FD = 0  # the WAL's file descriptor (O_APPEND)
W_SCRATCH = 1  # the record buffer: address, bytes
W_SCRATCH_LEN = 2
W_SHARD = 3
W_NSYM = 4  # symbols and venues whose names are in the log: a pass that interned more
W_NVEN = 5  #   takes the Python path, which logs names before rows
W_MAX_ROWS = 6  # passes with more rows take the Python path (raw records of at most this)
W_NEXT_SEQ = 7  # in/out: the log's next seq
W_LAST_SEQ = 8  # + t, in/out: the last seq logged of table t, -1 for none
W_REC_TYPE = 10  # + t: table t's record type (shm.layout.wal REC_*)
W_NCOLS = 12  # + t: table t's columns in record order
W_STATUS = 14  # out: WS_*
W_NEED = 15  # out: bytes of the pass's records
W_DONE = 16  # out: bytes write() took of them
W_PASS_NEXT_SEQ = 17  # out: W_NEXT_SEQ and W_LAST_SEQ + t as the pass's records leave them
W_PASS_LAST_SEQ = 18  # + t  (copied there once write() took them all)
WAL_MAX_COLUMNS = 4 + T.MAX_VALUE_COLUMNS  # ts, symbol, venue, values, seq
W_ADDRS = 20  # + t * WAL_MAX_COLUMNS + c: column c's base address
W_SIZES = W_ADDRS + 2 * WAL_MAX_COLUMNS  # + t * WAL_MAX_COLUMNS + c: its item size
W_WORDS = W_SIZES + 2 * WAL_MAX_COLUMNS

WS_IDLE = 0  # nothing consumed
WS_LOGGED = 1  # appended to the WAL and committed
WS_PYTHON = 2  # drained, neither logged nor committed: the caller logs and commits
WS_WRITE_FAILED = 3  # write() took W_DONE of W_NEED bytes; nothing committed


@numba.njit(cache=True, nogil=True)
def writer_pass_logged(mem, wal, now_ns, max_bytes, min_row_bytes, page):
    """``writer_pass`` with the WAL: drain, then -- when the pass interned no new name and
    holds at most wal[W_MAX_ROWS] rows that continue the log's seqs -- write its raw records
    (trades, then quotes) with one write() and commit it. Durability before visibility: the
    commit happens only once write() took every byte. wal[W_STATUS] says what was done;
    returns the batches drained."""
    state = _m_i64(mem, M_STATE)
    pos = state[S_IN_POS]
    lo = (state[S_TRADES], state[S_QUOTES])
    nb = writer_pass(mem, now_ns, max_bytes, min_row_bytes, page, False)
    if state[S_IN_POS] == pos:
        wal[W_STATUS] = WS_IDLE
        return nb
    wal[W_STATUS] = WS_PYTHON
    if state[S_NSYM] > wal[W_NSYM] or state[S_NVEN] > wal[W_NVEN]:
        return nb
    hi = (state[S_TRADES], state[S_QUOTES])
    if hi[0] - lo[0] + hi[1] - lo[1] > wal[W_MAX_ROWS]:
        return nb
    out = numba.carray(as_pointer(wal[W_SCRATCH]), wal[W_SCRATCH_LEN], np.uint8)
    total = 0
    last = (wal[W_LAST_SEQ], wal[W_LAST_SEQ + 1])
    for t in range(2):
        n = hi[t] - lo[t]
        if n == 0:
            continue
        k = wal[W_NCOLS + t]
        a = W_ADDRS + t * WAL_MAX_COLUMNS
        addrs = wal[a:a + k]
        sizes = wal[W_SIZES + t * WAL_MAX_COLUMNS:W_SIZES + t * WAL_MAX_COLUMNS + k]
        seq = numba.carray(as_pointer(addrs[k - 1]), hi[t], np.int64)
        first = seq[lo[t]]
        span = seq[hi[t] - 1] - first
        if first <= last[t] or span < n - 1:
            return nb  # out of order: the Python path says so
        r = encode_record(out[total:], wal[W_REC_TYPE + t], wal[W_SHARD], addrs, sizes, lo[t],
                          n, first, span)
        if r < 0:
            return nb
        total += r
    wal[W_PASS_NEXT_SEQ] = wal[W_NEXT_SEQ]
    for t in range(2):
        wal[W_PASS_LAST_SEQ + t] = last[t]
        if hi[t] > lo[t]:
            s = numba.carray(as_pointer(wal[W_ADDRS + t * WAL_MAX_COLUMNS + wal[W_NCOLS + t]
                                            - 1]), hi[t], np.int64)[hi[t] - 1]
            wal[W_PASS_LAST_SEQ + t] = s
            wal[W_PASS_NEXT_SEQ] = max(wal[W_PASS_NEXT_SEQ], s + 1)
    done = write_all(wal[W_FD], wal[W_SCRATCH], total)
    wal[W_NEED] = total
    wal[W_DONE] = done
    if done < total:
        wal[W_STATUS] = WS_WRITE_FAILED
        return nb
    wal[W_NEXT_SEQ] = wal[W_PASS_NEXT_SEQ]
    wal[W_LAST_SEQ] = wal[W_PASS_LAST_SEQ]
    wal[W_LAST_SEQ + 1] = wal[W_PASS_LAST_SEQ + 1]
    apply_pass(_m_hdr64(mem), state, now_ns, _m_i64(mem, M_CH_HDR), _m_i64(mem, M_CH_SLOTS),
               _m_i32(mem, M_CH_WCTL), _m_batches(mem), nb, _m_i64(mem, M_RING64),
               _m_u8(mem, M_RING8), _m_i64(mem, M_COUNTERS))
    wal[W_STATUS] = WS_LOGGED
    return nb
