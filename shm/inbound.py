"""Inbound ring mechanism: producers claim, write and commit records; the writer consumes.

Claiming is a compare-and-swap on ``tail`` rather than a blind atomic add: with an add, a
producer that finds the ring full has already moved ``tail`` and cannot give the space back,
so a full ring could only be met by waiting. With CAS a full ring is refused up front
(BACK_PRESSURED) and the producer decides how long to wait. Uncontended it is one atomic op.

Producer protocol (all inside one kernel call):
    pos = try_claim(...)            # CAS tail; header gets -length and pid
    write payload
    commit(...)                     # type, count, then length released (+length)
    wake the writer if it sleeps    # full fence, then check writer_sleeping

Writer protocol: read length at head with an acquire load; > 0 means the record is complete.
After processing, zero the consumed bytes (so the next lap sees 0 = not written) and release
``head``.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from shm.atomics import (
    clock_monotonic_ns,
    compare_exchange,
    cpu_relax,
    fence_full,
    fetch_add,
    futex_wait,
    futex_wake,
    load_acquire,
    store_release,
)
from shm.layout import inbound as L
from shm.layout import tables as T

BACK_PRESSURED = -1
"""try_claim: the ring has no room now. Retry later (the writer frees space as it consumes),
or give up after a timeout and report backpressure."""

NOT_ACCEPTING = -2
"""The shard writer is not consuming (starting, stopped, or its WAL cannot be written); see
the ring's refuse_reason. Retry later or report the reason."""

TOO_LARGE = -3
"""The record is larger than max_record: split the batch."""

INVALID = -4
"""write_trade / write_quote (and checking callers of write_batch): a value or timestamp is
out of range; nothing was written. The caller finds out which, and raises."""


def entry_point(fn, *args):
    """``fn``'s compiled entry point for exactly the types of ``args``, without calling it.

    Calling the entry point skips numba's per-call type dispatch, which costs as much as a
    short kernel itself (0.1-0.2 us per argument). Only pass arguments of the same types
    afterwards (the entry point does not check array dtypes). Falls back to ``fn``.
    """
    try:
        return fn.compile(tuple(fn.typeof_pyval(a) for a in args))
    except Exception:  # noqa: BLE001  (any numba internals change: keep the dispatcher)
        return fn


@numba.njit(cache=True, nogil=True, inline="always")
def _align(n):
    return (n + L.REC_ALIGN - 1) & ~(L.REC_ALIGN - 1)


@numba.njit(cache=True, nogil=True, inline="always")
def _claim(hdr64, hdr32, data32, length, pid):
    if load_acquire(hdr32, L.ACCEPTING_I32) != 1:
        return NOT_ACCEPTING
    capacity = hdr64[L.CAPACITY_I64]
    if length > hdr64[L.MAX_RECORD_I64]:
        return TOO_LARGE
    mask = capacity - 1
    while True:
        head = load_acquire(hdr64, L.HEAD_I64)
        tail = load_acquire(hdr64, L.TAIL_I64)
        idx = tail & mask
        to_end = capacity - idx
        padding = to_end if length > to_end else 0
        if tail + padding + length - head > capacity:
            return BACK_PRESSURED
        if compare_exchange(hdr64, L.TAIL_I64, tail, tail + padding + length) == tail:
            if padding:
                w = idx >> 2
                data32[w + 1] = L.TYPE_PADDING
                data32[w + 2] = pid
                store_release(data32, w, np.int32(padding))
                tail += padding
            w = (tail & mask) >> 2
            data32[w + 2] = pid
            store_release(data32, w, np.int32(-length))
            return tail


@numba.njit(cache=True, nogil=True)
def try_claim(hdr64, hdr32, data32, length, pid):
    """Claim ``length`` bytes (64-aligned). Returns the record's position or a code < 0."""
    return _claim(hdr64, hdr32, data32, length, pid)


@numba.njit(cache=True, nogil=True, inline="always")
def _commit(hdr32, data32, pos, mask, length, rtype, count):
    w = (pos & mask) >> 2
    data32[w + 1] = rtype
    data32[w + 3] = count
    store_release(data32, w, np.int32(length))
    # Dekker pair with the writer: it sets writer_sleeping, fences, re-checks the ring; we
    # store the record, fence, check writer_sleeping. One of us must see the other.
    fence_full()
    if load_acquire(hdr32, L.WRITER_SLEEPING_I32) != 0:
        # Only the producer that clears the flag wakes the writer: until the writer runs
        # again, every other commit would otherwise make a futex system call of its own.
        # The others need none: the writer, once woken, drains to the tail, and checks the
        # tail again before it next sleeps.
        if compare_exchange(hdr32, L.WRITER_SLEEPING_I32, np.int32(1), np.int32(0)) == 1:
            fetch_add(hdr32, L.WAKE_WORD_I32, np.int32(1))
            futex_wake(hdr32, L.WAKE_WORD_I32, 1)


@numba.njit(cache=True, nogil=True)
def request_roll(hdr64, hdr32):
    """Ask the writer to roll (bump roll_requests) and wake it if it sleeps; returns the
    new request count."""
    n = fetch_add(hdr64, L.ROLL_REQUESTS_I64, np.int64(1)) + 1
    fetch_add(hdr32, L.WAKE_WORD_I32, np.int32(1))
    futex_wake(hdr32, L.WAKE_WORD_I32, 1)
    return n


@numba.njit(cache=True, nogil=True)
def commit(hdr32, data32, pos, mask, length, rtype, count):
    """Publish a written record, then wake the writer if it is asleep."""
    _commit(hdr32, data32, pos, mask, length, rtype, count)


@numba.njit(cache=True, nogil=True)
def _write_payload(data8, off, n, rows, ts, sym8, ven8, v0, v1, v2, v3, nvals):
    """Copy rows (all of them, or the ``rows`` subset when its length > 0) column by column.

    Names move as two 8-byte words each; every column offset is 8-aligned by construction.
    """
    o_sym = off + 8 * n
    o_ven = o_sym + T.NAME_BYTES * n
    o_val = o_ven + T.NAME_BYTES * n
    ts_out = data8[off : o_sym].view(np.int64)
    sym_out = data8[o_sym : o_ven].view(np.uint64)
    ven_out = data8[o_ven : o_val].view(np.uint64)
    sym_in = sym8.view(np.uint64)
    ven_in = ven8.view(np.uint64)
    if rows.shape[0] > 0:
        for j in range(n):
            r = rows[j]
            ts_out[j] = ts[r]
            sym_out[2 * j] = sym_in[2 * r]
            sym_out[2 * j + 1] = sym_in[2 * r + 1]
            ven_out[2 * j] = ven_in[2 * r]
            ven_out[2 * j + 1] = ven_in[2 * r + 1]
        for c in range(nvals):
            src = v0 if c == 0 else (v1 if c == 1 else (v2 if c == 2 else v3))
            out = data8[o_val + 8 * n * c : o_val + 8 * n * (c + 1)].view(np.float64)
            for j in range(n):
                out[j] = src[rows[j]]
    else:
        ts_out[:] = ts[:n]
        sym_out[:] = sym_in[: 2 * n]
        ven_out[:] = ven_in[: 2 * n]
        for c in range(nvals):
            src = v0 if c == 0 else (v1 if c == 1 else (v2 if c == 2 else v3))
            data8[o_val + 8 * n * c : o_val + 8 * n * (c + 1)].view(np.float64)[:] = src[:n]


@numba.njit(cache=True, nogil=True)
def write_batch(hdr64, hdr32, data8, data32, pid, rtype, rows, n, ts, sym8, ven8,
                v0, v1, v2, v3, nvals):
    """Claim, fill and commit one record of ``n`` rows. Returns the position or a code < 0."""
    row_bytes = 8 + 2 * T.NAME_BYTES + 8 * nvals
    length = _align(L.REC_HEADER_BYTES + row_bytes * n)
    pos = _claim(hdr64, hdr32, data32, length, pid)
    if pos < 0:
        return pos
    mask = hdr64[L.CAPACITY_I64] - 1
    _write_payload(data8, (pos & mask) + L.REC_HEADER_BYTES, n, rows, ts, sym8, ven8,
                   v0, v1, v2, v3, nvals)
    _commit(hdr32, data32, pos, mask, length, rtype, n)
    return pos


KEY_S0, KEY_S1, KEY_E0, KEY_E1, KEY_PID, KEY_TYPE, KEY_NVALS = range(7)
KEY_WORDS = 8


@intrinsic
def _realtime_ns(typingctx):
    """clock_gettime(CLOCK_REALTIME) into a stack timespec: no heap array, so the per-tick
    kernels need no NRT (atomics.clock_realtime_ns allocates its timespec)."""
    sig = types.int64()

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        ts = cgutils.alloca_once(builder, ir.ArrayType(i64, 2))
        ptr_t = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(i32, [i32, ptr_t])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "clock_gettime")
        builder.call(fn, [ir.Constant(i32, 0), builder.bitcast(ts, ptr_t)])
        zero = ir.Constant(i32, 0)
        sec = builder.load(builder.gep(ts, [zero, zero]))
        nsec = builder.load(builder.gep(ts, [zero, ir.Constant(i32, 1)]))
        return builder.add(builder.mul(sec, ir.Constant(i64, 1_000_000_000)), nsec)

    return sig, codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _one_row(hdr64, data8, key, ts, v0, v1, v2, v3, nvals):
    hdr32 = hdr64.view(np.int32)
    data32 = data8.view(np.int32)
    length = _align(L.REC_HEADER_BYTES + 8 + 2 * T.NAME_BYTES + 8 * nvals)
    pos = _claim(hdr64, hdr32, data32, length, np.int32(key[KEY_PID]))
    if pos < 0:
        return pos
    mask = hdr64[L.CAPACITY_I64] - 1
    w = ((pos & mask) + L.REC_HEADER_BYTES) >> 3
    data64 = data8.view(np.int64)
    data64[w] = ts
    data64[w + 1] = key[KEY_S0]
    data64[w + 2] = key[KEY_S1]
    data64[w + 3] = key[KEY_E0]
    data64[w + 4] = key[KEY_E1]
    f = data8.view(np.float64)
    f[w + 5] = v0
    f[w + 6] = v1
    if nvals > 2:
        f[w + 7] = v2
        f[w + 8] = v3
    _commit(hdr32, data32, pos, mask, length, np.int32(key[KEY_TYPE]), 1)
    return pos


# The per-tick kernels allocate nothing, so they are compiled without numba's reference
# counting (_nrt=False): otherwise every array view and call costs atomic increments.
@numba.njit(cache=True, nogil=True, _nrt=False)
def write_one(hdr64, data8, key, ts, v0, v1, v2, v3):
    """Claim, fill and commit a one-row record.

    ``key`` (int64[KEY_WORDS]) carries what is fixed per (symbol, venue): the names as two
    little-endian words each, the producer pid, the record type and the value count. Fewer
    arguments keep the Python -> numba call cheap on this per-tick path.
    """
    return _one_row(hdr64, data8, key, ts, v0, v1, v2, v3, key[KEY_NVALS])


@numba.njit(cache=True, nogil=True, inline="always")
def _pos_finite(x):
    return x > 0.0 and x < np.inf


@numba.njit(cache=True, nogil=True, inline="always")
def _tick_ts(ts):
    """0 means now; anything else must be after 1990 and at most a day ahead (else -1)."""
    now = _realtime_ns()
    if ts == 0:
        return now
    if ts < T.MIN_TS_NS or ts > now + T.MAX_FUTURE_NS:
        return np.int64(-1)
    return ts


@numba.njit(cache=True, nogil=True, _nrt=False)
def write_trade(hdr64, data8, key, ts, price, size):
    """One trade, checked: ts (0 = now), price and size finite and > 0, else INVALID and
    nothing written. Otherwise as write_one. The per-tick path of Producer.publish."""
    ts = _tick_ts(ts)
    if ts < 0 or not (_pos_finite(price) and _pos_finite(size)):
        return INVALID
    return _one_row(hdr64, data8, key, ts, price, size, 0.0, 0.0, 2)


@numba.njit(cache=True, nogil=True, _nrt=False)
def write_quote(hdr64, data8, key, ts, bid, ask, bid_size, ask_size):
    """One quote, checked like write_trade (and bid <= ask)."""
    ts = _tick_ts(ts)
    if ts < 0 or not (_pos_finite(bid) and _pos_finite(ask) and _pos_finite(bid_size)
                      and _pos_finite(ask_size)) or bid > ask:
        return INVALID
    return _one_row(hdr64, data8, key, ts, bid, ask, bid_size, ask_size, 4)


@numba.njit(cache=True, nogil=True)
def writer_wait(hdr64, hdr32, pos, timeout_ns):
    """Writer idle: sleep on the wake word until a producer commits past ``pos`` or timeout.

    Sets writer_sleeping, fences, re-checks the tail (the other half of the Dekker pair in
    ``commit``), and only then sleeps, so a commit can never slip between check and sleep
    unnoticed. Returns 1 if input is (probably) there, 0 on timeout.
    """
    word = load_acquire(hdr32, L.WAKE_WORD_I32)
    store_release(hdr32, L.WRITER_SLEEPING_I32, np.int32(1))
    fence_full()
    if load_acquire(hdr64, L.TAIL_I64) > pos:
        store_release(hdr32, L.WRITER_SLEEPING_I32, np.int32(0))
        return 1
    r = futex_wait(hdr32, L.WAKE_WORD_I32, word, timeout_ns)
    store_release(hdr32, L.WRITER_SLEEPING_I32, np.int32(0))
    return 1 if r == 0 else 0


@numba.njit(cache=True, nogil=True)
def writer_poll(hdr64, pos, max_ns):
    """Writer idle, first stage: poll the ring's tail until it passes ``pos`` (1) or
    ``max_ns`` have passed (0). No system call but the clock, and the GIL released, so the
    writer's WAL threads run meanwhile; a commit is seen ~0.1 us after it lands."""
    deadline = clock_monotonic_ns() + max_ns
    while True:
        for _ in range(64):
            if load_acquire(hdr64, L.TAIL_I64) > pos:
                return 1
            cpu_relax()
        if clock_monotonic_ns() >= deadline:
            return 0


@numba.njit(cache=True, nogil=True)
def set_accepting(hdr32, accepting, reason):
    """Open or close the ring to producers (release store, so reason is seen first)."""
    hdr32[L.REFUSE_REASON_I32] = reason
    store_release(hdr32, L.ACCEPTING_I32, np.int32(accepting))
