"""Writer-side kernels: drain the inbound ring into a shard's columns, then commit.

The shard writer is the only process that runs these, so nothing here takes a lock. One
writer pass:

    n = drain(...)        validate rows, intern names, append columns, link per-symbol index,
                          update ts blocks -- all beyond the committed count, invisible
    (the WAL append goes here: durability before visibility)
    commit(...)           one commit slot, then commit_idx with a release store
    release_inbound(...)  zero the consumed ring bytes, release the ring head

``state`` is the writer's private int64 working copy (S_* indices); it equals the committed
snapshot right after ``commit``.
"""

from __future__ import annotations

import numba
import numpy as np

from shm.atomics import load_acquire, store_release
from shm.layout import inbound as L
from shm.layout import shard as S
from shm.layout import tables as T

# writer state words
S_TRADES = 0
S_QUOTES = 1
S_NEXT_SEQ = 2
S_IN_POS = 3
S_NSYM = 4
S_NVEN = 5
S_BATCHES = 6
S_STALL_POS = 7  # position of a record that is claimed but not committed, or -1
N_STATE = 8

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
        elif ended:
            return False
        elif not (
            (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 46 or c == 95 or c == 45
        ):
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _intern(names8, htab, n_names, max_names, rec8, o, allow_empty, count_i32, count_idx):
    """Id of the 16-byte name at rec8[o:], interning it if new. -1 invalid, -2 table full."""
    key = rec8[o : o + 16].view(np.uint64)
    w0 = key[0]
    w1 = key[1]
    names64 = names8.view(np.uint64)
    mask = htab.shape[0] - 1
    h = _hash(w0, w1, mask)
    while True:
        e = htab[h]
        if e == 0:
            break
        i = e - 1
        if names64[2 * i] == w0 and names64[2 * i + 1] == w1:
            return i
        h = (h + 1) & mask
    if not valid_name(rec8, o, allow_empty):
        return -1
    n = n_names[0]
    if n >= max_names:
        return -2
    names64[2 * n] = w0
    names64[2 * n + 1] = w1
    htab[h] = n + 1
    n_names[0] = n + 1
    # readers map names by id; the name must be visible before any committed row uses it
    store_release(count_i32, count_idx, np.int32(n + 1))
    return n


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


@numba.njit(cache=True, nogil=True)
def row_reason(table, ts, a, b, c, d, now_ns):
    """Reject reason for one row (REJECT_OK if valid). Trades: a=price, b=size; quotes:
    a=bid, b=ask, c=bid_size, d=ask_size. Shared by producers (to raise early) and the
    writer (which trusts no producer)."""
    if ts < T.MIN_TS_NS or ts > now_ns + T.MAX_FUTURE_NS:
        return T.REJECT_TS
    if table == T.TRADES:
        if not (a > 0.0 and a < np.inf):
            return T.REJECT_PRICE
        if not (b > 0.0 and b < np.inf):
            return T.REJECT_SIZE
        return T.REJECT_OK
    if not (a > 0.0 and a < np.inf and b > 0.0 and b < np.inf):
        return T.REJECT_PRICE
    if not (c > 0.0 and c < np.inf and d > 0.0 and d < np.inf):
        return T.REJECT_SIZE
    if a > b:
        return T.REJECT_CROSSED
    return T.REJECT_OK


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
    nb = 0
    capacity = np.int64(hdr32.view(np.int64)[S.CAPACITY_I64])
    max_sym = hdr32[S.MAX_SYMBOLS_I32]
    max_ven = hdr32[S.MAX_VENUES_I32]
    sym_names = seg8[off[S.OFF_SYM_NAMES] : off[S.OFF_SYM_NAMES] + T.NAME_BYTES * max_sym]
    ven_names = seg8[off[S.OFF_VEN_NAMES] : off[S.OFF_VEN_NAMES] + T.NAME_BYTES * max_ven]
    nsym = state[S_NSYM : S_NSYM + 1]
    nven = state[S_NVEN : S_NVEN + 1]
    while pos < tail and pos < end and nb < batches.shape[0]:
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
        base = (pos & mask) + L.REC_HEADER_BYTES
        r_ts = ring8[base : base + 8 * count].view(np.int64)
        o_sym = base + 8 * count
        o_ven = o_sym + T.NAME_BYTES * count
        o_val = o_ven + T.NAME_BYTES * count
        vals = ring8[o_val : o_val + 8 * nvals * count].view(np.float64)

        tb = S.OFF_TABLES + table * S.OFF_TABLE_STRIDE
        c_ts = seg8[off[tb + S.COL_TS] : off[tb + S.COL_TS] + 8 * capacity].view(np.int64)
        c_sym = seg8[off[tb + S.COL_SYMBOL] : off[tb + S.COL_SYMBOL] + 4 * capacity].view(np.int32)
        c_ven = seg8[off[tb + S.COL_VENUE] : off[tb + S.COL_VENUE] + 4 * capacity].view(np.int32)
        c_seq = seg8[off[tb + S.COL_SEQ] : off[tb + S.COL_SEQ] + 8 * capacity].view(np.int64)
        c_prev = seg8[off[tb + S.COL_PREV] : off[tb + S.COL_PREV] + 8 * capacity].view(np.int64)
        nblk = capacity // S.BLOCK_ROWS
        b_min = seg8[off[tb + S.COL_BLK_MIN] : off[tb + S.COL_BLK_MIN] + 8 * nblk].view(np.int64)
        b_max = seg8[off[tb + S.COL_BLK_MAX] : off[tb + S.COL_BLK_MAX] + 8 * nblk].view(np.int64)
        lo = S.OFF_LAST_TRADE if table == T.TRADES else S.OFF_LAST_QUOTE
        last = seg8[off[lo] : off[lo] + 8 * max_sym].view(np.int64)

        first_row = state[table]
        first_seq = state[S_NEXT_SEQ]
        ts_first = np.int64(0)
        ts_last = np.int64(0)
        sym_mask = np.uint64(0)
        for j in range(count):
            ts = r_ts[j]
            if nvals == 2:
                reason = row_reason(table, ts, vals[j], vals[count + j], 1.0, 1.0, now_ns)
            else:
                reason = row_reason(table, ts, vals[j], vals[count + j], vals[2 * count + j],
                                    vals[3 * count + j], now_ns)
            if reason != T.REJECT_OK:
                rejects[reason] += 1
                continue
            row = state[table]
            if row >= capacity:
                rejects[T.REJECT_FULL] += 1
                continue
            sid = _intern(sym_names, htab_s, nsym, max_sym, ring8, o_sym + j * T.NAME_BYTES,
                          False, hdr32, S.N_SYMBOLS_I32)
            if sid < 0:
                rejects[T.REJECT_SYMBOL if sid == -1 else T.REJECT_SYMBOLS_FULL] += 1
                continue
            vid = _intern(ven_names, htab_v, nven, max_ven, ring8, o_ven + j * T.NAME_BYTES,
                          True, hdr32, S.N_VENUES_I32)
            if vid < 0:
                rejects[T.REJECT_VENUE if vid == -1 else T.REJECT_SYMBOLS_FULL] += 1
                continue
            c_ts[row] = ts
            c_sym[row] = sid
            c_ven[row] = vid
            for c in range(nvals):
                col = seg8[off[tb + S.COL_VALUES + c] : off[tb + S.COL_VALUES + c] + 8 * capacity]
                col.view(np.float64)[row] = vals[c * count + j]
            seq = state[S_NEXT_SEQ]
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
            if state[table] == first_row:
                ts_first = ts
            ts_last = ts
            sym_mask |= np.uint64(1) << np.uint64(sid & 63)
            state[table] = row + 1
            state[S_NEXT_SEQ] = seq + 1
        added = state[table] - first_row
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
    state[S_IN_POS] = pos
    return nb


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
