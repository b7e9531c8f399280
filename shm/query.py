"""Reader-side kernels over a shard's committed rows: per-symbol tail and time ranges.

Every kernel takes ``committed`` from one snapshot and never looks at rows at or past it, so
a query sees whole batches only and never waits for the writer.
"""

from __future__ import annotations

import numba
import numpy as np

from shm.atomics import load_acquire
from shm.layout import shard as S


@numba.njit(cache=True, nogil=True)
def tail_symbol(last, prev, committed, sid, n, out):
    """Rows of the last ``n`` committed rows of symbol ``sid``, oldest first, into ``out``.

    Follows the per-symbol back links: O(n), independent of the table size. Returns how
    many rows were written.
    """
    r = load_acquire(last, sid)
    while r >= committed:  # rows appended but not yet committed
        r = prev[r]
    k = 0
    while r >= 0 and k < n:
        out[k] = r
        k += 1
        nr = prev[r]
        r = nr if nr < r else -1  # links only point backwards
    for i in range(k // 2):  # oldest first, as results are returned
        out[i], out[k - 1 - i] = out[k - 1 - i], out[i]
    return k


@numba.njit(cache=True, nogil=True)
def between_rows(ts, blk_min, blk_max, committed, start, end, sym, sid):
    """Committed rows with start <= ts < end (and symbol == sid unless sid < 0), in row order.

    Blocks whose [min, max] cannot overlap the range are skipped without touching their rows,
    so near-sorted data costs O(blocks + matches).
    """
    nblk = (committed + S.BLOCK_ROWS - 1) // S.BLOCK_ROWS
    bound = 0
    for b in range(nblk):
        if blk_max[b] >= start and blk_min[b] < end:
            bound += min(S.BLOCK_ROWS, committed - b * S.BLOCK_ROWS)
    out = np.empty(bound, np.int64)
    k = 0
    for b in range(nblk):
        if blk_max[b] < start or blk_min[b] >= end:
            continue
        lo = b * S.BLOCK_ROWS
        hi = min(lo + S.BLOCK_ROWS, committed)
        for r in range(lo, hi):
            t = ts[r]
            if t >= start and t < end and (sid < 0 or sym[r] == sid):
                out[k] = r
                k += 1
    return out[:k]


@numba.njit(cache=True, nogil=True)
def is_sorted(a):
    """True when ``a`` is non-decreasing (then no sort is needed)."""
    for i in range(1, a.shape[0]):
        if a[i] < a[i - 1]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def is_contiguous(rows):
    """True when ``rows`` is one run r, r+1, ... (then a slice replaces a gather)."""
    n = rows.shape[0]
    return n == 0 or rows[n - 1] - rows[0] == n - 1
