"""Outbound change ring: layout, position arithmetic, kernels on plain arrays, then processes.

Acceptable outcomes in the concurrent tests are named: a reader gets exactly the record it
asked for (every field derived from its position, checksum intact), or NOT_READY, or LAPPED —
never a mix of two records and never another position's record reported OK.
"""

from __future__ import annotations

import itertools
import mmap
import multiprocessing
import os
import re
import threading
import time
import traceback

import numba
import numpy as np
import posix_ipc
import pytest

from shm import change_ring as C
from shm.atomics import clock_monotonic_ns, cpu_relax, load_acquire, store_release
from shm.errors import CapacityError, LayoutMismatch, SegmentExists, SegmentMissing, ShmError
from shm.layout import change_ring as L
from shm.layout import common

_FORK = multiprocessing.get_context("fork")
_names = itertools.count()
_PREFIX = f"wayy.test.{os.getpid()}."


def _new_name() -> str:
    return f"/{_PREFIX}cr{next(_names)}"


@pytest.fixture(autouse=True)
def _no_leftover_segments():
    yield
    left = [e for e in os.listdir("/dev/shm") if e.startswith(_PREFIX)]
    for e in left:  # clean up for the next test, then fail this one
        C.unlink("/" + e.removesuffix(L.WAIT_SUFFIX))
    assert not left, f"segments left in /dev/shm: {left}"


@pytest.fixture(scope="module", autouse=True)
def _warm():
    # Compile before any fork so children never compile (2 cores: it would skew timings).
    C.warm_up()


@pytest.fixture
def ring_name():
    name = _new_name()
    try:
        yield name
    finally:
        C.unlink(name)


@pytest.fixture
def ring(ring_name):
    """A writer with capacity 4 and one reader of it."""
    w = C.ChangeRingWriter.create(ring_name, 4)
    try:
        r = C.ChangeRingReader.attach(ring_name)
        try:
            yield w, r
        finally:
            r.close()
    finally:
        w.close()


# --- layout ---------------------------------------------------------------------------------

RECORD_FIELDS = ["slot_seq", "first_seq", "count", "table_id", "first_row", "ts_first",
                 "ts_last", "sym_mask"]


def _line(off: int) -> int:
    return off // common.CACHE_LINE


def test_ring_header_offsets_are_ordered_and_tail_has_its_own_line():
    fields = [
        (common.MAGIC_OFFSET, 8), (common.VERSION_OFFSET, 4), (common.HEADER_SIZE_OFFSET, 4),
        (common.OWNER_PID_OFFSET, 8), (common.START_NS_OFFSET, 8),
        (common.SEGMENT_SIZE_OFFSET, 8), (L.CAPACITY_OFFSET, 8),
        (L.WRITER_CLOSED_OFFSET, 8), (L.TAIL_OFFSET, 8),
    ]
    for (a, size), (b, _) in zip(fields, fields[1:]):
        assert a + size <= b, f"field at {a} (+{size}) overlaps field at {b}"
    others = [off for off, _ in fields if off != L.TAIL_OFFSET]
    assert all(_line(o) != _line(L.TAIL_OFFSET) for o in others)
    assert L.TAIL_OFFSET % common.CACHE_LINE == 0
    assert L.HEADER_BYTES % common.PAGE == 0 and L.SLOTS_OFFSET == L.HEADER_BYTES
    assert L.TAIL_OFFSET + 8 <= L.HEADER_BYTES


def test_wait_control_words_have_their_own_lines():
    lines = {_line(L.WAITERS_OFFSET), _line(L.FUTEX_WORD_OFFSET), _line(common.COMMON_END - 1)}
    assert len(lines) == 3
    assert L.WAITERS_OFFSET % 4 == 0 and L.FUTEX_WORD_OFFSET % 4 == 0
    assert L.FUTEX_WORD_OFFSET + 4 <= L.WAIT_SEGMENT_BYTES


def test_record_is_eight_words_in_documented_order():
    assert L.SLOT_BYTES == 64 and L.RECORD_WORDS == 8
    offsets = [getattr(L, f"REC_{f.upper()}_OFFSET") for f in RECORD_FIELDS]
    assert offsets == list(range(0, 64, 8))
    assert [getattr(L, f"REC_{f.upper()}_I64") for f in RECORD_FIELDS] == list(range(8))
    assert (L.TABLE_TRADES, L.TABLE_QUOTES) == (0, 1)


def test_diagram_matches_offsets():
    doc = L.__doc__
    for off, word in [(L.CAPACITY_OFFSET, "capacity"), (L.WRITER_CLOSED_OFFSET, "writer_closed"),
                      (L.TAIL_OFFSET, "tail"), (L.SLOTS_OFFSET, "slots"),
                      (L.WAITERS_OFFSET, "waiters"), (L.FUTEX_WORD_OFFSET, "futex_word")]:
        assert re.search(rf"^\s+{off}\s+{word}\b", doc, re.M), f"{word} at {off} not drawn"
    for f in RECORD_FIELDS:
        off = getattr(L, f"REC_{f.upper()}_OFFSET")
        assert re.search(rf"^\s+{off}\s+{f}\b", doc, re.M), f"record {f} at {off} not drawn"


def test_segment_size():
    assert L.segment_size(4) == L.SLOTS_OFFSET + 4 * 64
    assert L.segment_size(2**20) == L.SLOTS_OFFSET + 2**26


@pytest.mark.parametrize("n", [2, 4, 1024, 2**32])
def test_check_capacity_accepts_powers_of_two(n):
    L.check_capacity(n)


@pytest.mark.parametrize("n", [0, 1, 3, 12, -4, 2**33, 1000])
def test_check_capacity_rejects_with_the_number(n):
    with pytest.raises(CapacityError, match=re.escape(str(n))) as ei:
        L.check_capacity(n)
    assert str(L.MIN_CAPACITY) in str(ei.value)


def test_check_segment_size_rejects_short_or_bad_headers():
    L.check_segment_size(4, L.segment_size(4))
    with pytest.raises(LayoutMismatch, match=str(L.segment_size(4))):
        L.check_segment_size(4, L.segment_size(4) - 1)
    with pytest.raises(LayoutMismatch, match="6"):
        L.check_segment_size(6, 1 << 20)


# --- position arithmetic and kernels on plain arrays ---------------------------------------


@pytest.mark.parametrize("capacity", [2, 4, 1024])
def test_slot_and_lap_arithmetic(capacity):
    mask = capacity - 1
    positions = np.array([0, 1, capacity - 1, capacity, capacity + 1, 5 * capacity + 3,
                          2**40 + 7], dtype=np.int64)
    for p in positions:
        assert C.slot_of(p, mask) == p % capacity
        assert C.lap_of(p, mask) == p // capacity
        assert C.published_word(p) == 2 * p + 2
        # a position and its next lap share a slot but never a published word
        assert C.slot_of(p + capacity, mask) == C.slot_of(p, mask)
        assert C.published_word(p + capacity) > C.published_word(p)


def _plain_ring(capacity: int):
    hdr = np.zeros(L.HEADER_I64, np.int64)
    hdr[L.CAPACITY_I64] = capacity
    return hdr, np.zeros(capacity * 8, np.int64), np.zeros(L.WAIT_I32, np.int32)


def test_kernels_write_at_the_layout_offsets():
    # Also guards against a stale numba cache after a layout change (see shm.change_ring).
    hdr, slots, wctl = _plain_ring(4)
    for p in range(6):
        assert C.publish(hdr, slots, wctl, 100 + p, 2, 1, 7, 50, 60, -1) == p
    pos = 5
    raw = slots.view(np.uint8)
    base = C.slot_of(pos, 3) * L.SLOT_BYTES

    def word(off):
        return int(np.frombuffer(raw[base + off:base + off + 8].tobytes(), "<i8")[0])

    assert word(L.REC_SLOT_SEQ_OFFSET) == 2 * pos + 2
    assert word(L.REC_FIRST_SEQ_OFFSET) == 105
    assert (word(L.REC_COUNT_OFFSET), word(L.REC_TABLE_ID_OFFSET),
            word(L.REC_FIRST_ROW_OFFSET)) == (2, 1, 7)
    assert (word(L.REC_TS_FIRST_OFFSET), word(L.REC_TS_LAST_OFFSET),
            word(L.REC_SYM_MASK_OFFSET)) == (50, 60, -1)
    hraw = hdr.view(np.uint8)
    assert int(np.frombuffer(hraw[L.TAIL_OFFSET:L.TAIL_OFFSET + 8].tobytes(), "<i8")[0]) == 6
    C.close_ring(hdr, wctl)
    assert int(np.frombuffer(hraw[L.WRITER_CLOSED_OFFSET:L.WRITER_CLOSED_OFFSET + 8].tobytes(),
                             "<i8")[0]) == 1
    assert wctl[L.FUTEX_WORD_I32] == 1  # close bumps the futex word even with no waiters


def test_read_statuses_on_plain_arrays():
    hdr, slots, wctl = _plain_ring(4)
    out = C.record_buffer()
    assert C.read(hdr, slots, 0, out) == C.NOT_READY
    C.publish(hdr, slots, wctl, 10, 1, 0, 0, 0, 0, 0)
    assert C.read(hdr, slots, 0, out) == C.OK and out[L.REC_FIRST_SEQ_I64] == 10
    assert C.read(hdr, slots, 1, out) == C.NOT_READY
    assert C.read(hdr, slots, 4, out) == C.NOT_READY  # a lap ahead of the writer
    assert C.read(hdr, slots, -1, out) == C.LAPPED
    # A slot caught mid-write: its own position is not ready, an older lap's is gone.
    slots[8 * 1] = 2 * 5 + 1  # position 5 being written in slot 1
    assert C.read(hdr, slots, 5, out) == C.NOT_READY
    assert C.read(hdr, slots, 1, out) == C.LAPPED
    assert C.load_tail(hdr) == 1 and not C.is_closed(hdr)


def test_sym_mask_bloom():
    ids = np.array([0, 5, 63, 64 + 7], np.int32)
    m = C.sym_mask_of(ids)
    expect = (1 << 0) | (1 << 5) | (1 << 63) | (1 << 7)
    assert m & 0xFFFFFFFFFFFFFFFF == expect
    assert C.sym_bit(63) == -(2**63)
    for s in range(200):
        assert C.sym_mask_may_contain(m, s) == bool(expect >> (s & 63) & 1)


# --- one process, real segments ---------------------------------------------------------------


def test_publish_read_round_trip(ring):
    w, r = ring
    out = C.record_buffer()
    assert r.tail() == 0 and r.read(0, out) == C.NOT_READY
    mask = (1 << 63) | 5  # unsigned from the caller's point of view
    assert w.publish(1000, 3, L.TABLE_QUOTES, 42, 1_700_000_000_000_000_000,
                     1_700_000_000_000_000_900, mask) == 0
    assert r.tail() == 1
    assert r.read(0, out) == C.OK
    assert list(out) == [2, 1000, 3, 1, 42, 1_700_000_000_000_000_000,
                         1_700_000_000_000_000_900, mask - (1 << 64)]
    assert int(out[L.REC_SYM_MASK_I64]) & 0xFFFFFFFFFFFFFFFF == mask


def test_not_ready_and_lapped_on_tiny_ring(ring):
    w, r = ring  # capacity 4
    out, out2d = C.record_buffer(), C.record_buffer(10)
    for p in range(4):
        w.publish(p, 1, 0, p, p, p, 0)
    assert [r.read(p, out) for p in range(5)] == [C.OK] * 4 + [C.NOT_READY]
    w.publish(4, 1, 0, 4, 4, 4, 0)
    w.publish(5, 1, 0, 5, 5, 5, 0)
    assert [r.read(p, out) for p in range(7)] == [C.LAPPED] * 2 + [C.OK] * 4 + [C.NOT_READY]
    assert r.oldest() == 2 and r.tail() == 6
    assert r.read_many(0, out2d) == (C.LAPPED, 0)
    st, n = r.read_many(2, out2d)
    assert (st, n) == (C.NOT_READY, 4)
    assert list(out2d[:n, L.REC_FIRST_SEQ_I64]) == [2, 3, 4, 5]
    assert r.read_many(2, out2d, max_n=2) == (C.OK, 2)
    assert r.read_many(2, out2d, max_n=0) == (C.OK, 0)


def test_read_many_stops_at_a_lap_after_good_records():
    # Only a concurrent writer can overtake a reader mid-batch; stage that moment by hand:
    # positions 1..7 are published and the writer has begun position 11 in position 3's slot.
    hdr, slots, wctl = _plain_ring(8)
    for p in range(8):
        C.publish(hdr, slots, wctl, p, 1, 0, 0, 0, 0, 0)
    slots[8 * C.slot_of(11, 7)] = 2 * 11 + 1
    out2d = C.record_buffer(8)
    st, n = C.read_many(hdr, slots, 1, out2d, 8)
    assert (st, n) == (C.LAPPED, 2)
    assert list(out2d[:n, L.REC_FIRST_SEQ_I64]) == [1, 2]


def test_reader_mapping_is_read_only(ring, ring_name):
    w, r = ring
    assert not r.hdr.flags.writeable and not r.slots.flags.writeable
    with pytest.raises(ValueError):
        r.slots[0] = 1
    with pytest.raises(ValueError):
        r.hdr.flags.writeable = True
    assert r.wctl.flags.writeable and w.hdr.flags.writeable
    # The mapping itself is PROT_READ, not merely a numpy flag.
    perms = set()
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith("/dev/shm" + ring_name):
                perms.add(line.split()[1])
    assert "r--s" in perms and "rw-s" in perms  # the reader's and the writer's mappings


def _raw_rw(name: str):
    shm = posix_ipc.SharedMemory(name)
    try:
        return mmap.mmap(shm.fd, shm.size)
    finally:
        shm.close_fd()


def test_attach_rejects_wrong_magic(ring_name):
    with C.ChangeRingWriter.create(ring_name, 4):
        mm = _raw_rw(ring_name)
        try:
            mm[common.MAGIC_OFFSET:common.MAGIC_OFFSET + 8] = (0x1234).to_bytes(8, "little")
        finally:
            mm.close()
        with pytest.raises(LayoutMismatch) as ei:
            C.ChangeRingReader.attach(ring_name)
        msg = str(ei.value)
        assert "0x1234" in msg and f"{L.MAGIC:#x}" in msg


def test_attach_rejects_other_major_version_naming_both(ring_name):
    with C.ChangeRingWriter.create(ring_name, 4):
        mm = _raw_rw(ring_name)
        try:
            word = common.pack_version(L.VERSION_MAJOR + 1, 3).to_bytes(4, "little")
            mm[common.VERSION_OFFSET:common.VERSION_OFFSET + 4] = word
        finally:
            mm.close()
        with pytest.raises(LayoutMismatch) as ei:
            C.ChangeRingReader.attach(ring_name)
        msg = str(ei.value)
        assert f"{L.VERSION_MAJOR + 1}.3" in msg and f"{L.VERSION_MAJOR}." in msg


def test_attach_rejects_header_capacity_that_does_not_fit(ring_name):
    with C.ChangeRingWriter.create(ring_name, 4):
        mm = _raw_rw(ring_name)
        try:
            mm[L.CAPACITY_OFFSET:L.CAPACITY_OFFSET + 8] = (1024).to_bytes(8, "little")
        finally:
            mm.close()
        with pytest.raises(LayoutMismatch, match="1024"):
            C.ChangeRingReader.attach(ring_name)


def test_missing_and_existing_segments(ring_name):
    with pytest.raises(SegmentMissing):
        C.ChangeRingReader.attach(ring_name)
    with C.ChangeRingWriter.create(ring_name, 4):
        with pytest.raises(SegmentExists):
            C.ChangeRingWriter.create(ring_name, 4)
    C.unlink(ring_name)
    # a stale wait control alone also blocks creation, and nothing half-made is left behind
    posix_ipc.SharedMemory(C.wait_name(ring_name), posix_ipc.O_CREX, size=4096).close_fd()
    with pytest.raises(SegmentExists):
        C.ChangeRingWriter.create(ring_name, 4)
    assert not os.path.exists("/dev/shm" + ring_name)


def test_create_rejects_bad_capacity(ring_name):
    with pytest.raises(CapacityError, match="12"):
        C.ChangeRingWriter.create(ring_name, 12)
    assert not os.path.exists("/dev/shm" + ring_name)


def test_bad_buffers_and_closed_objects(ring_name):
    w = C.ChangeRingWriter.create(ring_name, 4)
    r = C.ChangeRingReader.attach(ring_name)
    with pytest.raises(ValueError):
        r.read(0, np.zeros(4, np.int64))
    with pytest.raises(ValueError):
        r.read(0, np.zeros(8, np.float64))
    with pytest.raises(ValueError):
        r.read_many(0, np.zeros((4, 4), np.int64))
    r.close()
    r.close()
    w.close()
    w.close()
    with pytest.raises(ShmError, match="closed"):
        r.read(0, C.record_buffer())
    with pytest.raises(ShmError, match="closed"):
        w.publish(0, 1, 0, 0, 0, 0, 0)


def test_wait_times_out_and_unregisters(ring):
    w, r = ring
    t0 = time.monotonic_ns()
    assert r.wait(0, 50_000_000) == C.NOT_READY
    elapsed = time.monotonic_ns() - t0
    assert 50_000_000 <= elapsed < 1_000_000_000
    assert w.wctl[L.WAITERS_I32] == 0
    w.publish(0, 1, 0, 0, 0, 0, 0)
    assert r.wait(0, 0) == C.OK and r.wait(0, 10**9) == C.OK


# --- processes ---------------------------------------------------------------------------------


def _child(q, fn, *args):
    try:
        q.put(("ok", fn(*args)))
    except BaseException:
        q.put(("err", traceback.format_exc()))


class _Procs:
    """Start forked children; always kill and reap them, even when the test fails."""

    def __init__(self) -> None:
        self.q = _FORK.Queue()
        self.procs: list = []

    def start(self, fn, *args):
        p = _FORK.Process(target=_child, args=(self.q, fn) + args, daemon=True)
        p.start()
        self.procs.append(p)
        return p

    def result(self, timeout_s: float = 20.0):
        kind, val = self.q.get(timeout=timeout_s)
        assert kind == "ok", val
        return val

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        self.q.close()
        self.q.join_thread()


def _wait_for(cond, timeout_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.0005)


def _use_in_child(w, r):
    msgs = []
    for call in (lambda: w.publish(0, 1, 0, 0, 0, 0, 0), lambda: r.read(0, C.record_buffer()),
                 lambda: w.close()):
        try:
            call()
            msgs.append(None)
        except ShmError as e:
            msgs.append(str(e))
    return msgs


def test_mapping_used_in_forked_child_raises(ring):
    w, r = ring
    with _Procs() as ps:
        ps.start(_use_in_child, w, r)
        msgs = ps.result()
    assert all(m and "forked child" in m for m in msgs), msgs
    assert not r.writer_closed()  # the child's close() did not touch the shared ring


def _wait_in_child(name, pos, timeout_ns, q_ready):
    with C.ChangeRingReader.attach(name) as r:
        q_ready.put(os.getpid())
        st = r.wait(pos, timeout_ns)
        return st, time.monotonic_ns()


def test_blocking_wait_wakes_on_publish_from_another_process(ring_name):
    with C.ChangeRingWriter.create(ring_name, 4) as w, _Procs() as ps:
        ready = _FORK.Queue()
        ps.start(_wait_in_child, ring_name, 0, 10 * 10**9, ready)
        ready.get(timeout=20)
        # The child has registered as a waiter: it is asleep on the futex or about to be.
        _wait_for(lambda: w.wctl[L.WAITERS_I32] > 0, 10, "the child to register")
        t0 = time.monotonic_ns()
        w.publish(0, 1, 0, 0, 0, 0, 0)
        st, t_woke = ps.result()
        assert st == C.OK
        assert t_woke - t0 < 500_000_000, f"woke {(t_woke - t0) / 1e6:.1f} ms after publish"
        _wait_for(lambda: w.wctl[L.WAITERS_I32] == 0, 5, "waiters to drop to 0")


def test_blocking_wait_returns_closed_when_writer_closes(ring_name):
    w = C.ChangeRingWriter.create(ring_name, 4)
    try:
        w.publish(0, 1, 0, 0, 0, 0, 0)
        with _Procs() as ps:
            ready = _FORK.Queue()
            ps.start(_wait_in_child, ring_name, 1, 10 * 10**9, ready)
            ready.get(timeout=20)
            _wait_for(lambda: w.wctl[L.WAITERS_I32] > 0, 10, "the child to register")
            t0 = time.monotonic_ns()
            w.close()
            st, t_woke = ps.result()
        assert st == C.CLOSED and t_woke - t0 < 500_000_000
    finally:
        w.close()


def test_spin_wait_statuses(ring):
    w, r = ring
    t0 = time.monotonic_ns()
    assert C.spin_wait(r.hdr, 0, 20_000_000) == C.NOT_READY  # nothing came: timed out
    assert time.monotonic_ns() - t0 >= 20_000_000
    assert C.spin_wait(r.hdr, 0, 0) == C.NOT_READY
    w.publish(0, 1, 0, 0, 0, 0, 0)
    assert C.spin_wait(r.hdr, 0, 10 * 10**9) == C.OK
    assert w.wctl[L.WAITERS_I32] == 0  # polling readers never register as waiters
    w.close()
    assert C.spin_wait(r.hdr, 1, 10 * 10**9) == C.CLOSED  # at once, not after 10 s
    assert C.spin_wait(r.hdr, 0, 10 * 10**9) == C.OK  # what was published still reads OK


def test_spin_wait_releases_the_gil_and_sees_a_publish(ring):
    # the publish comes from a Python thread of this process: if the spinning kernel held
    # the GIL, that thread could not run and the spin would time out (NOT_READY)
    w, r = ring
    threading.Timer(0.05, w.publish, (0, 1, 0, 0, 0, 0, 0)).start()
    assert C.spin_wait(r.hdr, 0, 5 * 10**9) == C.OK


def _wait_any_in_child(names, positions, timeout_ns, q_ready):
    readers = [C.ChangeRingReader.attach(n) for n in names]
    try:
        q_ready.put(os.getpid())
        st = C.wait_any(readers, positions, timeout_ns)
        return st, time.monotonic_ns()
    finally:
        for r in readers:
            r.close()


@pytest.fixture
def two_rings():
    names = [_new_name(), _new_name()]
    ws = [C.ChangeRingWriter.create(n, 4) for n in names]
    rs = [C.ChangeRingReader.attach(n) for n in names]
    try:
        yield names, ws, rs
    finally:
        for x in rs + ws:
            x.close()
        for n in names:
            C.unlink(n)


def test_wait_any_returns_at_once_when_any_ring_has_the_position(two_rings):
    _names, ws, rs = two_rings
    assert C.wait_any(rs, [0, 0], 20_000_000) == C.NOT_READY  # nothing anywhere: timed out
    ws[1].publish(0, 1, 0, 0, 0, 0, 0)
    assert C.wait_any(rs, [0, 0], 10 * 10**9) == C.OK  # ring 1 has position 0
    assert C.wait_any(rs, [0, 1], 20_000_000) == C.NOT_READY  # each already read up to tail
    assert C.wait_any(rs[:1], [0], 20_000_000) == C.NOT_READY  # the one-ring path
    ws[0].close()
    assert C.wait_any(rs, [0, 1], 10 * 10**9) == C.OK  # a closed ring: go and look
    assert ws[1].wctl[L.WAITERS_I32] == 0  # every wait above unregistered


def test_wait_any_wakes_on_a_publish_to_any_ring_from_another_process(two_rings):
    names, ws, _rs = two_rings
    with _Procs() as ps:
        ready = _FORK.Queue()
        ps.start(_wait_any_in_child, names, [0, 0], 10 * 10**9, ready)
        ready.get(timeout=20)
        # registered on both rings: asleep (futex_waitv) or about to be
        _wait_for(lambda: all(w.wctl[L.WAITERS_I32] > 0 for w in ws), 10, "the child to wait")
        t0 = time.monotonic_ns()
        ws[1].publish(0, 1, 0, 0, 0, 0, 0)  # the second ring, not the first
        st, t_woke = ps.result()
    assert st == C.OK and t_woke - t0 < 500_000_000
    _wait_for(lambda: all(w.wctl[L.WAITERS_I32] == 0 for w in ws), 5, "waiters back to 0")


def test_wait_any_refuses_a_closed_reader(two_rings):
    _names, _ws, rs = two_rings
    rs[1].close()
    with pytest.raises(ShmError, match="closed"):
        C.wait_any(rs, [0, 0], 1_000_000)


# Stress: every field of record pos is a function of pos, and sym_mask a checksum of the rest,
# so a record copied half from one lap and half from another cannot pass.


@numba.njit(nogil=True, inline="always")
def _fields(pos):
    count = pos * 3 + 1
    table = pos & 1
    first_row = pos * 7 + 5
    ts_first = pos * 11 + 1_000
    ts_last = ts_first + count
    check = ((pos * 1_000_003) ^ (count * 999_983) ^ (table * 7_919) ^ (first_row * 104_729)
             ^ (ts_first * 15_485_863) ^ (ts_last * 32_452_843))
    return pos, count, table, first_row, ts_first, ts_last, check


# The writer runs at least MIN and until every reader has had STRESS_OK whole records and
# STRESS_LAPS laps (progress it reads from a shared anonymous page), at most MAX: on a busy
# 2-core machine three spinning processes share two cores and a fixed duration proves little.
STRESS_READERS = 2
STRESS_OK = 10_000
STRESS_LAPS = 100
STRESS_MIN_NS = 1_500_000_000
STRESS_MAX_NS = 20_000_000_000
_PROGRESS_STRIDE = 8  # int64 words: one cache line per reader


@numba.njit(nogil=True)
def _stress_write(hdr, slots, wctl, progress, min_ns, max_ns):
    start = clock_monotonic_ns()
    pos = C.load_tail(hdr)
    while True:
        for _ in range(64):
            a, b, c, d, e, f, g = _fields(pos)
            C.publish(hdr, slots, wctl, a, b, c, d, e, f, g)
            pos += 1
        elapsed = clock_monotonic_ns() - start
        if elapsed >= max_ns:
            return pos
        if elapsed >= min_ns:
            done = True
            for k in range(STRESS_READERS):
                ok = load_acquire(progress, k * _PROGRESS_STRIDE)
                laps = load_acquire(progress, k * _PROGRESS_STRIDE + 2)
                done = done and ok >= STRESS_OK and laps >= STRESS_LAPS
            if done:
                return pos


@numba.njit(nogil=True)
def _good(rec, pos):
    a, b, c, d, e, f, g = _fields(pos)
    return (rec[0] == 2 * pos + 2 and rec[1] == a and rec[2] == b and rec[3] == c
            and rec[4] == d and rec[5] == e and rec[6] == f and rec[7] == g)


@numba.njit(nogil=True)
def _stress_read(hdr, slots, out2d, batch, progress, k, max_ns):
    """Follow the ring until it closes; counts [ok, bad, lapped, not_ready]."""
    counts = np.zeros(4, np.int64)
    capacity = slots.shape[0] // 8
    deadline = clock_monotonic_ns() + max_ns
    pos = 0
    while clock_monotonic_ns() < deadline:
        if batch == 1:
            st = C.read(hdr, slots, pos, out2d[0])
            n = 1 if st == C.OK else 0
        else:
            st, n = C.read_many(hdr, slots, pos, out2d, batch)
        for i in range(n):
            if _good(out2d[i], pos + i):
                counts[0] += 1
            else:
                counts[1] += 1
        pos += n
        if st == C.LAPPED:
            counts[2] += 1
            pos = max(pos + 1, C.load_tail(hdr) - capacity // 2)
        elif st == C.NOT_READY:
            counts[3] += 1
            if C.is_closed(hdr) and C.load_tail(hdr) <= pos:
                break
            cpu_relax()
        for j in range(4):
            store_release(progress, k * _PROGRESS_STRIDE + j, counts[j])
    return counts


def _stress_writer_child(name, capacity, progress, q_created):
    with C.ChangeRingWriter.create(name, capacity) as w:
        q_created.put(1)
        t0 = time.monotonic()
        n = _stress_write(w.hdr, w.slots, w.wctl, progress, STRESS_MIN_NS, STRESS_MAX_NS)
        return int(n), time.monotonic() - t0


def _stress_reader_child(name, batch, progress, k):
    with C.ChangeRingReader.attach(name) as r:
        out = C.record_buffer(batch)
        counts = _stress_read(r.hdr, r.slots, out, batch, progress, k, STRESS_MAX_NS + 10**10)
        return [int(c) for c in counts]


def test_stress_one_writer_two_readers_never_see_a_mixed_record(ring_name):
    capacity = 8
    # A page shared with the forked children (MAP_SHARED | MAP_ANONYMOUS) for progress.
    page = mmap.mmap(-1, mmap.PAGESIZE)
    progress = np.frombuffer(page, np.int64)
    try:
        # Compile in the parent, on the same array kinds the children use, before forking.
        hdr, slots, wctl = _plain_ring(capacity)
        _stress_write(hdr, slots, wctl, np.full(64, 1 << 40, np.int64), 0, 0)
        C.close_ring(hdr, wctl)
        hdr.flags.writeable = slots.flags.writeable = False
        for batch in (1, 4):
            _stress_read(hdr, slots, C.record_buffer(batch), batch, np.zeros(64, np.int64), 0,
                         10**9)

        with _Procs() as ps:
            created = _FORK.Queue()
            ps.start(_stress_writer_child, ring_name, capacity, progress, created)
            created.get(timeout=20)
            for k, batch in enumerate((1, 4)):  # one reads record by record, one in batches
                ps.start(_stress_reader_child, ring_name, batch, progress, k)
            results = [ps.result(STRESS_MAX_NS / 1e9 + 30) for _ in range(1 + STRESS_READERS)]
    finally:
        del progress
        try:
            page.close()
        except BufferError:  # a failing assertion's traceback may still hold a view
            pass
    published, seconds = next(x for x in results if isinstance(x, tuple))
    readers = [x for x in results if isinstance(x, list)]
    summary = (f"writer {published} records in {seconds:.2f}s; "
               f"readers [ok, bad, lapped, idle] {readers}")
    for ok, bad, lapped, _idle in readers:
        assert bad == 0, f"mixed or misplaced records reported OK: {summary}"
        assert ok >= STRESS_OK and lapped >= STRESS_LAPS, f"too little overlap: {summary}"
