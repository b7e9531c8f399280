"""Outbound change ring: the shard writer broadcasts one record per committed batch.

A single-writer, many-reader seqlock ring (layout: ``shm.layout.change_ring``). The writer
never waits: it overwrites the oldest slot whether or not anyone has read it. Readers map the
ring read-only, copy a record out, and check the slot's seqlock word before and after the copy,
so a record they get is always whole; a reader that was overtaken is told ``LAPPED`` and
backfills from the columns (they hold every row the ring ever pointed at).

Writer, per record (kernel ``publish``)::

    slot_seq = 2*pos + 1   (release)      readers that see this word skip the slot
    fields   = ...         (release each: none can become visible before the odd word)
    slot_seq = 2*pos + 2   (release)      the record is complete
    tail     = pos + 1     (release)
    full fence; if waiters > 0: futex_word += 1, futex_wake(all)

Reader, for position pos (kernel ``read``)::

    s1 = slot_seq (acquire); s1 < 2*pos+2 -> NOT_READY; s1 > 2*pos+2 -> LAPPED
    copy the fields (acquire loads), acquire fence, s2 = slot_seq
    s2 == s1 -> OK; otherwise the writer started a later lap on the slot mid-copy -> LAPPED

Blocking readers use the separate read-write wait-control segment (a ``PROT_READ`` reader
cannot register itself in the ring): see ``wait_once``.

Kernels take numpy views of the mappings: ``hdr`` int64 over the ring's header page, ``slots``
int64 over the slot area (capacity * 8 words), ``wctl`` int32 over the wait-control page.
They work on plain numpy arrays of the same shapes too, which is how the tests start.

Note: numba's on-disk cache is keyed on this file, not on ``shm.layout.change_ring``; the
constants compiled into these kernels come from there. A test writes through the kernels and
checks the bytes at the layout's offsets, so a stale cache after a layout change fails loudly.
"""

from __future__ import annotations

import ctypes
import os
import time

import numba
import numpy as np

from shm.atomics import (
    clock_monotonic_ns,
    cpu_relax,
    fence_acquire,
    fence_full,
    fetch_add,
    futex_wait,
    futex_wake,
    load_acquire,
    store_release,
)
from shm.errors import ShmError
from shm.layout import change_ring as L
from shm.segment import Segment, check_fits, unlink_quiet

__all__ = [
    "OK",
    "NOT_READY",
    "LAPPED",
    "CLOSED",
    "STATUS_NAMES",
    "ChangeRingWriter",
    "ChangeRingReader",
    "publish",
    "read",
    "read_many",
    "wait_once",
    "spin_wait",
    "wait_any",
    "waiter_enter",
    "waiter_leave",
    "close_ring",
    "load_tail",
    "is_closed",
    "slot_of",
    "lap_of",
    "published_word",
    "sym_bit",
    "sym_mask_of",
    "sym_mask_may_contain",
    "record_buffer",
    "wait_name",
    "unlink",
    "warm_up",
]

# --- status codes ------------------------------------------------------------------------------

OK = 0
"""The record was copied (``read``/``read_many``), or the awaited position is published
(``wait``). Process it and move on to the next position."""

NOT_READY = 1
"""Nothing at this position yet: the reader is caught up. Poll again, or ``wait`` for it.
From ``wait`` it means the timeout passed first."""

LAPPED = 2
"""The record at this position was overwritten before (or while) it was read: the reader
fell a whole ring behind. Its data are still in the columns: backfill from there up to
``tail()``, then resume the ring at ``tail()`` (or at ``oldest()`` to recover less from the
columns, accepting that it may lap again). Never skip silently: count the gap."""

CLOSED = 3
"""``wait`` only: the writer closed the ring and nothing was published at this position.
No more records will come from this writer; re-attach when a new writer starts."""

STATUS_NAMES = ("OK", "NOT_READY", "LAPPED", "CLOSED")

_RECORD_WORDS = L.RECORD_WORDS
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


# --- pure position arithmetic ---------------------------------------------------------------


@numba.njit(cache=True, nogil=True, inline="always")
def slot_of(pos, mask):
    """Slot index of ring position ``pos`` (``mask`` = capacity - 1)."""
    return pos & mask


@numba.njit(cache=True, nogil=True, inline="always")
def lap_of(pos, mask):
    """How many times the ring had wrapped when position ``pos`` was written."""
    return pos // (mask + 1)


@numba.njit(cache=True, nogil=True, inline="always")
def published_word(pos):
    """The seqlock word a slot holds once position ``pos`` is complete (odd = mid-write)."""
    return 2 * pos + 2


# --- header accessors -----------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def load_tail(hdr):
    """Next position the writer will fill; the newest published record is tail - 1."""
    return load_acquire(hdr, L.TAIL_I64)


@numba.njit(cache=True, nogil=True)
def is_closed(hdr):
    """True once the writer has closed the ring (its tail is then final)."""
    return load_acquire(hdr, L.WRITER_CLOSED_I64) != 0


# --- symbol bloom -------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True, inline="always")
def sym_bit(sym_id):
    """The ``sym_mask`` bit of one symbol id (int64; bit 63 makes it negative)."""
    return np.int64(1) << (sym_id & 63)


@numba.njit(cache=True, nogil=True)
def sym_mask_of(sym_ids):
    """``sym_mask`` of a batch: the OR of ``sym_bit`` over its symbol ids."""
    m = np.int64(0)
    for i in range(sym_ids.shape[0]):
        m |= np.int64(1) << (sym_ids[i] & 63)
    return m


@numba.njit(cache=True, nogil=True, inline="always")
def sym_mask_may_contain(mask, sym_id):
    """False when the batch surely has no row of ``sym_id``; True when it may."""
    return (mask >> (sym_id & 63)) & 1 != 0


# --- writer kernels -----------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _wake_all(wctl):
    # Bumping the word first makes a reader that read the old value and has not yet entered
    # futex_wait return at once (EAGAIN) instead of sleeping through this wake-up.
    fetch_add(wctl, L.FUTEX_WORD_I32, np.int32(1))
    futex_wake(wctl, L.FUTEX_WORD_I32, _INT32_MAX)


@numba.njit(cache=True, nogil=True)
def publish(hdr, slots, wctl, first_seq, count, table_id, first_row, ts_first, ts_last,
            sym_mask):
    """Write one change record at ``tail`` and advance it; wake blocked readers. Returns pos.

    Only the ring's single writer may call this.
    """
    pos = load_acquire(hdr, L.TAIL_I64)
    base = (pos & ((slots.shape[0] >> 3) - 1)) * _RECORD_WORDS
    store_release(slots, base + L.REC_SLOT_SEQ_I64, 2 * pos + 1)
    # Release stores for the fields too: a release store cannot be reordered before the
    # earlier odd word (compiler or CPU), so a reader that sees any new field also sees the
    # slot marked busy when it re-checks. On x86 these are plain movs.
    store_release(slots, base + L.REC_FIRST_SEQ_I64, first_seq)
    store_release(slots, base + L.REC_COUNT_I64, count)
    store_release(slots, base + L.REC_TABLE_ID_I64, table_id)
    store_release(slots, base + L.REC_FIRST_ROW_I64, first_row)
    store_release(slots, base + L.REC_TS_FIRST_I64, ts_first)
    store_release(slots, base + L.REC_TS_LAST_I64, ts_last)
    store_release(slots, base + L.REC_SYM_MASK_I64, sym_mask)
    store_release(slots, base + L.REC_SLOT_SEQ_I64, 2 * pos + 2)
    store_release(hdr, L.TAIL_I64, pos + 1)
    # Dekker pair with wait_once: we store tail then load waiters; a reader stores waiters
    # then loads tail. Release/acquire alone lets each load pass the other side's store
    # (store->load reordering, even on x86), so both could miss each other: the reader sleeps
    # on a tail that has moved and nobody wakes it. A full fence on both sides means at least
    # one of us sees the other's store.
    fence_full()
    if load_acquire(wctl, L.WAITERS_I32) > 0:
        _wake_all(wctl)
    return pos


@numba.njit(cache=True, nogil=True)
def close_ring(hdr, wctl):
    """Mark the ring closed (after the last publish) and wake every blocked reader."""
    store_release(hdr, L.WRITER_CLOSED_I64, np.int64(1))
    fence_full()
    # Unconditional: a reader that registered after our fence still sees writer_closed.
    _wake_all(wctl)


@numba.njit(cache=True, nogil=True)
def _reopen(hdr):
    """Clear ``writer_closed`` for a writer that continues a closed ring (attach)."""
    store_release(hdr, L.WRITER_CLOSED_I64, np.int64(0))


# --- reader kernels -------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _read_into(slots, mask, pos, out):
    if pos < 0:
        return LAPPED  # never in the ring: resync rather than wait forever
    base = (pos & mask) * _RECORD_WORDS
    want = 2 * pos + 2
    while True:
        s1 = load_acquire(slots, base + L.REC_SLOT_SEQ_I64)
        if s1 != want:
            # Below: an older lap's record, or pos itself half written. Above: a later lap.
            return NOT_READY if s1 < want else LAPPED
        # Atomic loads: with plain ones LLVM may merge the two slot-word reads into one and
        # the torn-read check disappears.
        for k in range(1, _RECORD_WORDS):
            out[k] = load_acquire(slots, base + k)
        fence_acquire()
        s2 = load_acquire(slots, base + L.REC_SLOT_SEQ_I64)
        if s2 == s1:
            out[L.REC_SLOT_SEQ_I64] = s1
            return OK
        # Torn: the writer began a later position in this slot during the copy. Go round
        # once more so the code comes from one consistent rule (it will say LAPPED).


@numba.njit(cache=True, nogil=True)
def read(hdr, slots, pos, out):
    """Copy record ``pos`` (8 int64 words, layout order) into ``out``. Returns a status.

    OK: ``out`` holds the record, whole. NOT_READY: not yet published. LAPPED: overwritten.
    ``out`` must be an int64 array of at least 8 words. ``hdr`` is unused today; every kernel
    takes the same leading views so callers never need to know which ones a kernel reads.
    """
    return _read_into(slots, (slots.shape[0] >> 3) - 1, pos, out)


@numba.njit(cache=True, nogil=True)
def read_many(hdr, slots, pos, out2d, max_n):
    """Copy up to ``max_n`` consecutive records from ``pos`` into rows of ``out2d``.

    Returns ``(status, n)``: rows ``out2d[:n]`` hold records pos .. pos+n-1, and ``status``
    says why it stopped — OK (filled ``min(max_n, len(out2d))``), NOT_READY (caught up at
    pos+n) or LAPPED (pos+n was overwritten; the n rows copied before it are good).
    ``out2d`` must be int64 of shape (rows, >= 8).
    """
    mask = (slots.shape[0] >> 3) - 1
    limit = min(max_n, out2d.shape[0])
    n = 0
    while n < limit:
        st = _read_into(slots, mask, pos + n, out2d[n])
        if st != OK:
            return st, n
        n += 1
    return OK, n


@numba.njit(cache=True, nogil=True)
def _ready(hdr, pos):
    # closed first: it is stored after the final tail, so closed == 1 means tail is final.
    closed = load_acquire(hdr, L.WRITER_CLOSED_I64) != 0
    if load_acquire(hdr, L.TAIL_I64) > pos:
        return OK
    return CLOSED if closed else NOT_READY


@numba.njit(cache=True, nogil=True)
def wait_once(hdr, wctl, pos, timeout_ns):
    """Sleep until position ``pos`` is published, the ring closes, or ``timeout_ns`` passes.

    Returns OK (tail > pos), CLOSED, or NOT_READY (timed out, or woken by a signal or a
    publish that did not reach pos: call again with the time left). One futex sleep at most,
    so a Python caller gets control back to handle signals.

    A reader killed inside this call leaves ``waiters`` one too high for good: nothing breaks,
    but the writer then pays a futex_wake syscall per publish until the ring is recreated.
    """
    st = _ready(hdr, pos)
    if st != NOT_READY or timeout_ns <= 0:
        return st
    # Read the word before registering: if the writer bumps it after this point,
    # futex_wait sees a different value and returns at once, so no wake-up is lost.
    word = load_acquire(wctl, L.FUTEX_WORD_I32)
    fetch_add(wctl, L.WAITERS_I32, np.int32(1))
    # The reader half of the Dekker pair in ``publish``: waiters store, full fence, tail load.
    fence_full()
    st = _ready(hdr, pos)
    if st == NOT_READY:
        futex_wait(wctl, L.FUTEX_WORD_I32, word, timeout_ns)
        st = _ready(hdr, pos)
    fetch_add(wctl, L.WAITERS_I32, np.int32(-1))
    return st


@numba.njit(cache=True, nogil=True)
def spin_wait(hdr, pos, max_ns):
    """Poll (PAUSE between reads, no system call) until position ``pos`` is published, the
    ring closes, or ``max_ns`` passes. Returns OK, CLOSED or NOT_READY, like ``wait_once``.

    For readers that trade a core for latency: the poll is a plain cached read of the tail
    until the writer's store invalidates the line, so a publish is seen ~0.1 us later, and
    the GIL is released meanwhile. Reads the clock only every 64 polls.
    """
    st = _ready(hdr, pos)
    if st != NOT_READY or max_ns <= 0:
        return st
    deadline = clock_monotonic_ns() + max_ns
    while True:
        for _ in range(64):
            if load_acquire(hdr, L.TAIL_I64) > pos:
                return OK
            cpu_relax()
        st = _ready(hdr, pos)
        if st != NOT_READY or clock_monotonic_ns() >= deadline:
            return st


@numba.njit(cache=True, nogil=True)
def waiter_enter(hdr, wctl, pos):
    """First half of a wait on several rings: returns the futex word to sleep on, or -1.

    Reads the word, registers as a waiter, then (full fence) checks the ring: -1 means
    position ``pos`` is already published or the ring is closed (do not sleep; call
    ``waiter_leave`` all the same). The same Dekker pair as ``wait_once``.
    """
    word = load_acquire(wctl, L.FUTEX_WORD_I32)
    fetch_add(wctl, L.WAITERS_I32, np.int32(1))
    fence_full()
    if _ready(hdr, pos) != NOT_READY:
        return np.int64(-1)
    return np.int64(word)


@numba.njit(cache=True, nogil=True)
def waiter_leave(wctl):
    """Undo ``waiter_enter``."""
    fetch_add(wctl, L.WAITERS_I32, np.int32(-1))


# --- Python faces ---------------------------------------------------------------------------


def wait_name(name: str) -> str:
    """Name of the wait-control segment that goes with ring ``name``."""
    return name + L.WAIT_SUFFIX


def unlink(name: str) -> bool:
    """Remove ring ``name`` and its wait control; True if either existed. Mappings stay valid."""
    a = unlink_quiet(name)
    b = unlink_quiet(wait_name(name))
    return a or b


def record_buffer(n: int | None = None) -> np.ndarray:
    """A zeroed int64 buffer for ``read`` (``n`` None: shape (8,)) or ``read_many`` ((n, 8))."""
    shape = (_RECORD_WORDS,) if n is None else (n, _RECORD_WORDS)
    return np.zeros(shape, np.int64)


def _to_i64(v: int) -> int:
    # sym_mask is 64 bits of flags; accept it as an unsigned int and store the same bits.
    v = int(v)
    return v - (1 << 64) if v > _INT64_MAX else v


class _Mapped:
    """What writer and reader share: the views, fork safety, close."""

    _what = "change ring"

    def __init__(self, name: str, seg: Segment, wseg: Segment) -> None:
        self.name = name
        self._seg = seg
        self._wseg = wseg
        self.capacity = int(seg.i64[L.CAPACITY_I64])
        self._hdr = seg.i64
        self._slots = seg.view(L.SLOTS_OFFSET, np.int64, self.capacity * _RECORD_WORDS)
        self._words = seg.view(0, np.int64, L.HEADER_I64 + self.capacity * _RECORD_WORDS)
        self._wctl = wseg.i32
        self._owner_pid = os.getpid()
        # None once closed, so one comparison on the hot path covers both misuse cases.
        self._pid: int | None = self._owner_pid

    def _unusable(self) -> ShmError:
        if self._pid is None:
            return ShmError(f"{self._what} {self.name} is closed")
        return ShmError(
            f"{self._what} {self.name} was mapped by pid {self._owner_pid} and used in forked "
            f"child pid {os.getpid()}: attach again in the child"
        )

    def _check(self) -> None:
        if self._pid != os.getpid():
            raise self._unusable()

    @property
    def hdr(self) -> np.ndarray:
        """int64 view of the ring header page, for calling the kernels from your own."""
        self._check()
        return self._hdr

    @property
    def slots(self) -> np.ndarray:
        """int64 view of the slot area (capacity * 8 words)."""
        self._check()
        return self._slots

    @property
    def words(self) -> np.ndarray:
        """int64 view of header page and slots together (``words[:L.HEADER_I64]`` is ``hdr``,
        the rest ``slots``): one argument instead of two for kernels that take both."""
        self._check()
        return self._words

    @property
    def wctl(self) -> np.ndarray:
        """int32 view of the wait-control page (read-write for readers too)."""
        self._check()
        return self._wctl

    def tail(self) -> int:
        """Next position to be written; the newest record is ``tail() - 1``."""
        self._check()
        return int(load_tail(self._hdr))

    def oldest(self) -> int:
        """The oldest position still in the ring now (the next publish may overwrite it)."""
        self._check()
        return max(0, int(load_tail(self._hdr)) - self.capacity)

    def writer_closed(self) -> bool:
        """True once the writer has closed the ring."""
        self._check()
        return bool(is_closed(self._hdr))

    def _unmap(self) -> None:
        # Our numpy views pin the mmaps; drop them first so the mappings really close.
        self._hdr = self._slots = self._wctl = self._words = None  # type: ignore[assignment]
        self._seg.close()
        self._wseg.close()
        self._pid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


def _attach_pair(name: str, readonly: bool) -> tuple[Segment, Segment]:
    """Map ring ``name`` (read-only for readers) and its wait control (always read-write),
    checking magic, major version and the ring's size."""
    seg = Segment.attach(name, L.MAGIC, L.VERSION_MAJOR, readonly=readonly, what="change ring")
    try:
        L.check_segment_size(int(seg.i64[L.CAPACITY_I64]), seg.size)
        wseg = Segment.attach(wait_name(name), L.WAIT_MAGIC, L.VERSION_MAJOR,
                              readonly=False, what="change ring wait control")
    except BaseException:
        seg.close()
        raise
    return seg, wseg


class ChangeRingWriter(_Mapped):
    """The single writer of one change ring (the shard writer process)."""

    _what = "change ring writer"

    @classmethod
    def create(cls, name: str, capacity: int) -> "ChangeRingWriter":
        """Create ring ``name`` (and ``name + '.w'``) with ``capacity`` records, mapped RW.

        Raises SegmentExists if either name exists (``unlink(name)`` reclaims a stale pair),
        CapacityError if the capacity is bad or /dev/shm cannot hold it.
        """
        size = L.segment_size(capacity)
        check_fits(size + L.WAIT_SEGMENT_BYTES)
        # Wait control first and ring last: readers treat the ring's version as the pair's
        # ready flag.
        wseg = Segment.create(wait_name(name), L.WAIT_SEGMENT_BYTES, L.WAIT_MAGIC,
                              L.WAIT_SEGMENT_BYTES)
        seg = None
        try:
            wseg.publish_version(L.VERSION_MAJOR, L.VERSION_MINOR)
            seg = Segment.create(name, size, L.MAGIC, L.HEADER_BYTES)
            seg.i64[L.CAPACITY_I64] = capacity
            seg.publish_version(L.VERSION_MAJOR, L.VERSION_MINOR)
        except BaseException:
            wseg.close()
            unlink_quiet(wait_name(name))
            if seg is not None:
                seg.close()
                unlink_quiet(name)
            raise
        return cls(name, seg, wseg)

    @classmethod
    def attach(cls, name: str) -> "ChangeRingWriter":
        """Map the existing ring ``name`` read-write to continue publishing into it.

        For a writer process that did not create the ring (the supervisor creates it) and for
        a restarted writer: publishing continues at the ring's ``tail``, so readers see one
        unbroken ring. A slot a killed writer left half written (odd seqlock word, tail not
        advanced) is simply written again at the same position. A ring a previous writer
        closed is reopened (``writer_closed`` back to 0) before this returns.

        Only one writer may be attached at a time: the caller (the shard writer, one process
        per shard) guarantees it. Raises SegmentMissing, or LayoutMismatch naming both
        versions / the bad size, like ``ChangeRingReader.attach``.
        """
        seg, wseg = _attach_pair(name, readonly=False)
        self = cls(name, seg, wseg)
        if is_closed(self._hdr):
            _reopen(self._hdr)
        return self

    def publish(self, first_seq: int, count: int, table_id: int, first_row: int,
                ts_first: int, ts_last: int, sym_mask: int) -> int:
        """Publish one change record; returns its position. ``sym_mask`` may be unsigned."""
        if self._pid != os.getpid():
            raise self._unusable()
        return publish(self._hdr, self._slots, self._wctl, first_seq, count, table_id,
                       first_row, ts_first, ts_last, _to_i64(sym_mask))

    def close(self) -> None:
        """Mark the ring closed, wake blocked readers, unmap. The names stay (see unlink)."""
        if self._pid is None:
            return
        self._check()
        close_ring(self._hdr, self._wctl)
        self._unmap()

    def unlink(self) -> None:
        """Remove both segment names (readers keep their mappings until they close)."""
        unlink(self.name)


class ChangeRingReader(_Mapped):
    """One reader of a change ring: maps the ring read-only and the wait control read-write."""

    _what = "change ring reader"

    @classmethod
    def attach(cls, name: str) -> "ChangeRingReader":
        """Map ring ``name`` read-only, checking magic, major version and size.

        Raises SegmentMissing if it does not exist, LayoutMismatch if it is not a change ring
        this code can read (the message names both versions).
        """
        seg, wseg = _attach_pair(name, readonly=True)
        return cls(name, seg, wseg)

    def read(self, pos: int, out: np.ndarray) -> int:
        """Copy record ``pos`` into ``out`` (int64, 8 words). Returns OK, NOT_READY or LAPPED."""
        if self._pid != os.getpid():
            raise self._unusable()
        if out.dtype != np.int64 or out.ndim != 1 or out.shape[0] < _RECORD_WORDS:
            raise ValueError(f"out must be int64 of shape ({_RECORD_WORDS},), got "
                             f"{out.dtype} {out.shape}")
        return int(read(self._hdr, self._slots, pos, out))

    def read_many(self, pos: int, out2d: np.ndarray, max_n: int | None = None) -> tuple[int, int]:
        """Copy up to ``max_n`` (default: all rows of ``out2d``) records from ``pos``.

        Returns ``(status, n)``; see the ``read_many`` kernel.
        """
        if self._pid != os.getpid():
            raise self._unusable()
        if out2d.dtype != np.int64 or out2d.ndim != 2 or out2d.shape[1] < _RECORD_WORDS:
            raise ValueError(f"out2d must be int64 of shape (n, {_RECORD_WORDS}), got "
                             f"{out2d.dtype} {out2d.shape}")
        st, n = read_many(self._hdr, self._slots, pos, out2d,
                          out2d.shape[0] if max_n is None else max_n)
        return int(st), int(n)

    def wait(self, pos: int, timeout_ns: int) -> int:
        """Block until position ``pos`` is published. Returns OK, CLOSED or NOT_READY (timeout).

        Sleeps on a futex (no CPU), in slices that let Python handle signals such as Ctrl-C.
        """
        self._check()
        deadline = time.monotonic_ns() + timeout_ns
        remaining = timeout_ns
        while True:
            st = int(wait_once(self._hdr, self._wctl, pos, remaining))
            if st != NOT_READY:
                return st
            remaining = deadline - time.monotonic_ns()
            if remaining <= 0:
                return NOT_READY

    def close(self) -> None:
        """Unmap both segments. Idempotent."""
        if self._pid is None:
            return
        self._check()
        self._unmap()



# --- waiting on several rings at once ------------------------------------------------------

_SYS_FUTEX_WAITV = 449  # Linux 5.16+, same number on x86-64 and arm64
_FUTEX2_SIZE_U32 = 0x02  # shared (no FUTEX2_PRIVATE): the wakers are other processes
_ETIMEDOUT, _EAGAIN, _EINTR, _ENOSYS = 110, 11, 4, 38


class _FutexWaitv(ctypes.Structure):
    _fields_ = [("val", ctypes.c_uint64), ("uaddr", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_have_waitv: bool | None = None  # unknown until the first call


def wait_any(readers: "list[ChangeRingReader]", positions, timeout_ns: int) -> int:
    """Block until any ring ``readers[i]`` publishes position ``positions[i]`` (or closes).

    Returns OK (something to read on at least one ring: poll them all) or NOT_READY (the
    timeout passed, or a signal arrived: Python then runs its handlers). One sleep at most.

    Sleeps on every ring's futex word at once with ``futex_waitv`` (Linux 5.16+). Where that
    syscall is missing it sleeps on the first ring only, for at most 1 ms at a time, so the
    others are still seen within a millisecond.
    """
    global _have_waitv
    n = len(readers)
    for r in readers:  # once per reader here; the views below skip the per-access check
        r._check()
    if n == 1 or _have_waitv is False:
        r = readers[0]
        t = timeout_ns if n == 1 else min(timeout_ns, 1_000_000)
        st = int(wait_once(r._hdr, r._wctl, int(positions[0]), t))
        if st == NOT_READY and n > 1:
            for r, p in zip(readers, positions):
                if int(_ready(r._hdr, int(p))) != NOT_READY:
                    return OK
        return OK if st != NOT_READY else NOT_READY
    entered = []
    try:
        waiters = (_FutexWaitv * n)()
        sleep = True
        for i, (r, p) in enumerate(zip(readers, positions)):
            word = int(waiter_enter(r._hdr, r._wctl, int(p)))
            entered.append(r)
            if word < 0:
                sleep = False
                break
            waiters[i].val = word & 0xFFFFFFFF
            waiters[i].uaddr = r._wctl.ctypes.data + L.FUTEX_WORD_OFFSET
            waiters[i].flags = _FUTEX2_SIZE_U32
        if not sleep:
            return OK
        if timeout_ns <= 0:
            return NOT_READY
        deadline = time.clock_gettime_ns(time.CLOCK_MONOTONIC) + timeout_ns
        ts = _Timespec(deadline // 1_000_000_000, deadline % 1_000_000_000)
        rc = _libc.syscall(ctypes.c_long(_SYS_FUTEX_WAITV), waiters, ctypes.c_uint(n),
                           ctypes.c_uint(0), ctypes.byref(ts), ctypes.c_int(time.CLOCK_MONOTONIC))
        if rc < 0:
            err = ctypes.get_errno()
            if err == _ENOSYS:
                _have_waitv = False
            elif err == _EAGAIN:  # a word moved between our read and the sleep: published
                return OK
        else:
            _have_waitv = True
        for r, p in zip(readers, positions):
            if int(_ready(r._hdr, int(p))) != NOT_READY:
                return OK
        return NOT_READY
    finally:
        for r in entered:
            waiter_leave(r._wctl)


def warm_up() -> None:
    """Compile (or load from cache) every kernel signature the two classes use.

    The first call of a jitted function in a process costs 0.15 s even with a warm cache;
    call this at start-up, before going live. Read-only and writeable views are separate
    signatures, so both are warmed.
    """
    hdr = np.zeros(L.HEADER_I64, np.int64)
    hdr[L.CAPACITY_I64] = L.MIN_CAPACITY
    slots = np.zeros(L.MIN_CAPACITY * _RECORD_WORDS, np.int64)
    wctl = np.zeros(L.WAIT_I32, np.int32)
    publish(hdr, slots, wctl, 0, 1, 0, 0, 0, 0, 0)
    hdr_ro, slots_ro = hdr.copy(), slots.copy()
    hdr_ro.flags.writeable = False
    slots_ro.flags.writeable = False
    out, out2d = record_buffer(), record_buffer(2)
    for h, s in ((hdr, slots), (hdr_ro, slots_ro)):
        read(h, s, 0, out)
        read_many(h, s, 0, out2d, 2)
        wait_once(h, wctl, 0, 0)
        spin_wait(h, 0, 0)
        waiter_enter(h, wctl, 0)
        waiter_leave(wctl)
        _ready(h, 0)
        load_tail(h)
        is_closed(h)
    close_ring(hdr, wctl)
    _reopen(hdr)
    sym_mask_of(np.zeros(1, np.int32))
    sym_mask_of(np.zeros(1, np.int64))
