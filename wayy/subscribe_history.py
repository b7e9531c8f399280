"""Rows a local subscriber needs that a roll has already moved to history on disk.

A subscriber that is behind when its shard rolls (or that starts from a checkpoint, `from_seq`
or `from_ts` older than the shard's memory) is told so by the follow kernel
(``shm.subscribers.R_HISTORY``: seqs ``F_NEXT .. F_HIST_END - 1`` of shard k are on disk).
This module reads exactly those rows back from the shard's partitions, keeps what the
subscription's channels want, and returns them in seq order, both tables merged, as
``(table id, columns)`` pieces the subscription delivers like rows from memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import repeat

import numpy as np

from shm.layout import tables as T
from wayy import history as H


Names = tuple  # (symbol names, venue names): a partition's 'U' arrays, indexed by id


def _ids(names: np.ndarray, wanted) -> np.ndarray:
    """The ids in ``names`` of the names in ``wanted`` (absent ones have none)."""
    return np.flatnonzero(np.isin(names, list(wanted)))


def _wanted(rules, sym: np.ndarray, ven: np.ndarray, names: Names) -> np.ndarray | None:
    """Mask of rows (symbol and venue ids into ``names``) that one table's channel rules
    (wayy.subscribe._Rules) want; None for all of them."""
    if rules.all_any:
        return None
    syms, vens = names
    m = np.zeros(len(sym), bool)
    if rules.all_venues:
        m |= np.isin(ven, _ids(vens, rules.all_venues))
    if rules.syms_any:
        m |= np.isin(sym, _ids(syms, rules.syms_any))
    for s, vs in rules.sym_venues.items():
        m |= np.isin(sym, _ids(syms, (s,))) & np.isin(ven, _ids(vens, vs))
    return m


def read(store: H.HistoryStore, shard: int, lo: int, hi: int, rules: tuple,
         floors: tuple[int, int] = (0, 0)
         ) -> tuple[list[tuple[int, dict[str, np.ndarray], Names]], np.ndarray | None]:
    """Rows of ``shard`` with lo <= seq < hi that ``rules`` (one _Rules per table) want, and
    not below their table's floor (a checkpoint's per-table cursor: rows under it were
    delivered before).

    Returns (pieces in seq order, None or the seqs found): each piece is (table id, columns,
    names), the columns copies with ``symbol`` and ``venue`` as int32 ids into ``names``
    (its partition's tables: the shard's ids when it rolled). Names are not decoded here:
    per tick they are decoded as delivered, a batch carries the ids. When some seqs are not
    in history (retention removed them), the ones that are come sorted, so that a caller
    that delivers part of the range can count what is missing below where it stopped.
    """
    store.refresh()
    found = 0
    seqs_found: list[np.ndarray] = []
    parts: list[tuple[int, dict[str, np.ndarray], Names]] = []
    for t in (T.TRADES, T.QUOTES):
        for p in store.by_shard(t).get(shard, []):
            if p.last_seq < lo or p.first_seq >= hi:
                continue
            seq = p.array("seq")
            a = int(np.searchsorted(seq, lo))
            b = int(np.searchsorted(seq, hi))
            if b <= a:
                continue
            found += b - a
            seqs_found.append(seq[a:b])
            if rules[t].empty():
                continue
            if floors[t] > lo:  # found (not lost), but delivered before
                a = max(a, int(np.searchsorted(seq, floors[t])))
                if b <= a:
                    continue
            names = p.names()
            # the mask from the mapped id columns, then only the rows wanted are copied
            keep = _wanted(rules[t], p.array("symbol")[a:b], p.array("venue")[a:b], names)
            cols = H.gather(p, slice(a, b) if keep is None else np.flatnonzero(keep) + a,
                            decode=False)
            if len(cols["seq"]):
                parts.append((t, cols, names))
    # both tables share the shard's seq: deliver in seq order, runs of one table at a time
    if len(parts) > 1:
        seqs = np.concatenate([c["seq"] for _, c, _n in parts])
        which = np.concatenate([np.full(len(c["seq"]), i)
                                for i, (_, c, _n) in enumerate(parts)])
        rowi = np.concatenate([np.arange(len(c["seq"])) for _, c, _n in parts])
        order = np.argsort(seqs, kind="stable")
        which, rowi = which[order], rowi[order]
        cut = np.flatnonzero(np.diff(which)) + 1
        out = []
        for s, e in zip(np.r_[0, cut], np.r_[cut, len(which)]):
            i = int(which[s])
            t, cols, names = parts[i]
            out.append((t, {c: v[rowi[s:e]] for c, v in cols.items()}, names))
        parts = out
    if found == hi - lo:
        return parts, None
    return parts, (np.sort(np.concatenate(seqs_found)) if seqs_found
                   else np.empty(0, np.int64))


# rows turned into Python objects at a time: a whole read at once (65,536 rows) took ~0.1 s
# before its first tick was delivered, holding up run()'s deadline and other shards
TICK_CHUNK_ROWS = 4096


def tick_rows(shard: int, t: int, cols: dict[str, np.ndarray], names: Names
              ) -> Iterator[tuple]:
    """The Tick field tuples (wayy.subscribe.Tick order) of one history piece (as
    :func:`read` returns it), made TICK_CHUNK_ROWS at a time as they are consumed."""
    n = len(cols["seq"])
    table = T.TABLE_NAMES[t]
    syms, vens = names
    for lo in range(0, n, TICK_CHUNK_ROWS):
        hi = min(n, lo + TICK_CHUNK_ROWS)
        m = hi - lo
        ts = cols["ts"][lo:hi].tolist()
        sym = syms[cols["symbol"][lo:hi]].tolist()
        ven = vens[cols["venue"][lo:hi]].tolist()
        seq = cols["seq"][lo:hi].tolist()
        none = [None] * m  # (one iterator each: zip takes the list four times)
        if t == T.TRADES:
            yield from zip(ts, sym, ven, cols["price"][lo:hi].tolist(),
                           cols["size"][lo:hi].tolist(), none, none, none, none, seq,
                           repeat(shard, m), repeat(table, m))
        else:
            yield from zip(ts, sym, ven, none, none, cols["bid"][lo:hi].tolist(),
                           cols["ask"][lo:hi].tolist(), cols["bid_size"][lo:hi].tolist(),
                           cols["ask_size"][lo:hi].tolist(), seq, repeat(shard, m),
                           repeat(table, m))
