"""Write-ahead log: append a shard's records to one file; scan, repair and decode it.

The byte layout lives in `shm.layout.wal`. This module is the mechanism:

    WalWriter(path, shard, fsync=..., interval_ms=...)   append_batch / append_symbol /
                                                          append_venue / maybe_sync / sync / close
    scan(path, shard=None) -> WalScan                     validate every record, locate damage
    truncate_to(path, good_end) -> int                    cut a damaged tail off (recovery)
    decode(path_or_scan, min_seq=None) -> dict            bulk decode into numpy columns

What each fsync policy promises (chosen once, when the writer opens):

    "batch"     append_batch returns only after fdatasync(): a batch whose append returned
                survives a power loss or a kernel crash. Symbol and venue records appended
                before it are covered by the same flush. Cost: one disk flush per batch.
    "interval"  (the default) fdatasync() at most once per interval_ms: on an append that finds
                the last flush older than interval_ms, on maybe_sync() (which the writer loop
                calls when idle) and on close(). A power loss loses at most the records
                appended in the last interval_ms plus the writer's idle-poll gap.
    "off"       fdatasync() only on close(). A power loss may lose everything since the last
                close.

Under every policy a process crash (SIGKILL included) loses nothing whose append returned: the
bytes are in the kernel's page cache once write() returns. Each record goes to the kernel in a
single write() of a preassembled buffer, so a crash leaves whole records followed by at most one
torn record at the tail, which `scan` reports and `truncate_to` removes.

A failed write (ENOSPC, EIO, EFBIG) raises WalWriteError after cutting the file back to the end
of the last good record, so the writer stays usable once space is freed. A failed fdatasync()
makes the writer unusable: Linux may have dropped the dirty pages, so what is on disk is
unknown and the caller must reopen and recover from `scan`.
"""

from __future__ import annotations

import errno as errno_codes
import fcntl
import mmap
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Mapping

import lz4.block
import numpy as np

from shm.errors import CorruptRecord, UsedAfterFork, WalLocked, WalWriteError
from shm import wal_kernels as K
from shm.layout import wal as L

__all__ = ["WalWriter", "WalScan", "scan", "truncate_to", "decode", "decode_into",
           "start_after_roll", "column_addresses", "FSYNC_POLICIES"]

FSYNC_POLICIES = ("batch", "interval", "off")

# this process's pid, kept current across fork: os.getpid() is a system call (0.15 us), and
# every append checks that the writer is used by the process that opened it
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def column_addresses(columns) -> np.ndarray:
    """The base addresses of whole columns (numpy arrays), for ``WalWriter.append_rows``.
    The caller keeps the columns alive (and mapped) for as long as it passes these."""
    return np.array([c.ctypes.data for c in columns], np.int64)


# fdatasync also flushes the file size, which is all an append-only file needs; macOS lacks it.
_fdatasync = getattr(os, "fdatasync", os.fsync)

_U32 = struct.Struct("<I")
_ZERO_PAD = bytes(L.ALIGNMENT)

# One row per good record found by `scan`.
SCAN_RECORD_DTYPE = np.dtype([
    ("offset", "<i8"), ("type", "<u2"), ("flags", "<u4"), ("first_seq", "<i8"),
    ("row_count", "<i8"), ("payload_len", "<i8"), ("raw_len", "<i8"),
])

# Bound the forward search for a valid header after damage: a hostile file full of magic
# numbers must not turn a scan quadratic.
_MAX_RESYNC_CANDIDATES = 10_000


# =============================================================================================
# Writing
# =============================================================================================

def _file_header_bytes(shard: int) -> bytes:
    buf = bytearray(L.FILE_HEADER_SIZE)
    L.FILE_HEADER_STRUCT.pack_into(buf, 0, L.FILE_MAGIC, L.VERSION, L.FILE_HEADER_SIZE, shard,
                                   os.getpid() & 0xFFFFFFFF, time.time_ns(), 0, 0)
    _U32.pack_into(buf, L.FH_CRC_OFFSET, zlib.crc32(memoryview(buf)[:L.FILE_HEADER_CRC_SPAN]))
    return bytes(buf)


def _fsync_parent(path: str) -> None:
    """Make a rename or link of ``path`` durable: fsync the directory holding it."""
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _seal_record(buf: bytearray, rtype: int, shard: int, flags: int, first_seq: int,
                 row_count: int, payload_len: int, raw_len: int, seq_span: int = 0) -> None:
    """Fill in the header of a record whose payload already sits at RECORD_HEADER_SIZE."""
    mv = memoryview(buf)
    payload_crc = zlib.crc32(mv[L.RECORD_HEADER_SIZE:L.RECORD_HEADER_SIZE + payload_len])
    L.RECORD_HEADER_STRUCT.pack_into(buf, 0, L.RECORD_MAGIC, L.VERSION, rtype, shard, flags,
                                     first_seq, row_count, payload_len, raw_len, payload_crc,
                                     seq_span, 0)
    _U32.pack_into(buf, L.RH_HEADER_CRC_OFFSET, zlib.crc32(mv[:L.RECORD_HEADER_CRC_SPAN]))


def _encode_raw(buf: bytearray, raw_len: int) -> tuple[bytearray, int, int]:
    return buf, 0, raw_len


def _encode_lz4(buf: bytearray, raw_len: int) -> tuple[bytearray, int, int]:
    h = L.RECORD_HEADER_SIZE
    packed = lz4.block.compress(memoryview(buf)[h:h + raw_len], store_size=False)
    # Compare what lands on disk: a saving swallowed by padding is not worth an LZ4 decode.
    if L.padded(len(packed)) >= L.padded(raw_len):
        return buf, 0, raw_len
    out = bytearray(h + L.padded(len(packed)))
    out[h:h + len(packed)] = packed
    return out, L.FLAG_LZ4, len(packed)


class WalWriter:
    """Appends records to one shard's WAL file. One writer per file, enforced with flock.

    Opening an existing file verifies its header (another shard or format version raises
    LayoutMismatch naming both) and scans it; a file with a damaged tail raises CorruptRecord
    instead of appending after the damage, which would turn a torn tail into mid-file
    corruption. Pass the `scan` that recovery already made (after `truncate_to`) to skip the
    second read of the file.

    Not thread-safe, and not usable from a forked child (raises UsedAfterFork).
    """

    def __init__(self, path: str | os.PathLike, shard: int, fsync: str = "interval",
                 interval_ms: float = 10, compress: bool = True,
                 scan: "WalScan | None" = None, background: bool = False) -> None:
        self.path = os.fspath(path)
        self.shard = int(shard)
        if not 0 <= self.shard <= 0xFFFFFFFF:
            raise ValueError(f"shard {shard} out of range")
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy {fsync!r}, expected one of {FSYNC_POLICIES}")
        if not interval_ms > 0:
            raise ValueError(f"interval_ms must be positive, got {interval_ms}")
        self.fsync = fsync
        self.interval_ns = int(interval_ms * 1_000_000)
        self._pid = os.getpid()
        self._fd: int | None = None
        self._failed: str | None = None
        self.end = 0
        self.synced_end = 0
        self.sync_count = 0
        self.next_seq: int | None = None
        self._last_seq: dict[int, int] = {}  # table id -> last seq appended
        self._last_sync_ns = time.monotonic_ns()

        # Policies are picked here, once, so the append path never branches on them.
        self._after_batch: Callable[[], None] = {
            "batch": self._sync, "interval": self._sync_if_due, "off": _nothing,
        }[fsync]
        self._idle_sync: Callable[[], bool] = {
            "batch": self._sync_if_dirty, "interval": self._sync_if_dirty_and_due,
            "off": _false,
        }[fsync]
        self._encode = _encode_lz4 if compress else _encode_raw
        self._syncer: threading.Thread | None = None
        self._scratch: np.ndarray | None = None  # append_rows' reused record buffer

        self._open(scan)
        if background and fsync == "interval":
            # A flush takes milliseconds on a real disk: done inline it would stall the
            # append path every interval. A thread flushes instead (fdatasync releases the
            # GIL) and the append path never syncs under this policy.
            self._after_batch = _nothing
            self._idle_sync = _false
            self._stop_syncer = threading.Event()
            self._syncer = threading.Thread(target=self._sync_loop, name="wayy-wal-sync",
                                            daemon=True)
            self._syncer.start()

    def _sync_loop(self) -> None:
        while not self._stop_syncer.wait(self.interval_ns / 1e9):
            end = self.end
            fd = self._fd
            if fd is None or self._failed is not None:
                return
            if end == self.synced_end:
                continue
            try:
                _fdatasync(fd)
            except OSError as exc:
                self._failed = f"WAL {self.path}: fdatasync failed: {exc.strerror}"
                return
            self._last_sync_ns = time.monotonic_ns()
            self.synced_end = end
            self.sync_count += 1

    # --- opening -------------------------------------------------------------------------
    def _open(self, given: "WalScan | None") -> None:
        if not os.path.exists(self.path):
            self._create()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise WalWriteError(f"cannot open WAL {self.path}: {exc.strerror}", self.path,
                                exc.errno) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise WalLocked(f"WAL {self.path} is held by another writer") from exc
            self._fd = fd
            size = os.fstat(fd).st_size
            if size == 0:
                # An empty file (created by someone else, or a device such as /dev/full).
                self._write(_file_header_bytes(self.shard))
                self.synced_end = 0
                return
            if size >= L.FILE_HEADER_SIZE:
                _parse_file_header(os.pread(fd, L.FILE_HEADER_SIZE, 0), self.path, self.shard)
            found = given
            if (found is None or found.damage is not None or found.good_end != size
                    or found.shard != self.shard):
                found = scan(self.path, self.shard)
            if found.damage is not None or found.good_end != size:
                raise CorruptRecord(
                    f"{self.path}: {found.reason}; recover it (truncate_to(path, "
                    f"{found.good_end})) before appending")
            self.end = self.synced_end = size
            self.next_seq = found.next_seq
            self._last_seq = dict(found.last_seq)
        except BaseException:
            self._fd = None
            os.close(fd)
            raise

    def _create(self) -> None:
        """Create the file with its header in place, atomically: the WAL path never names a
        file without a complete, durable header."""
        tmp = f"{self.path}.tmp.{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                header = _file_header_bytes(self.shard)
                if os.write(fd, header) != len(header):
                    raise OSError(errno_codes.EIO, "short write of the WAL file header")
                _fdatasync(fd)
            finally:
                os.close(fd)
            try:
                # link, unlike rename, fails if another process created the WAL first.
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
            _fsync_parent(self.path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise WalWriteError(f"cannot create WAL {self.path}: {exc.strerror}", self.path,
                                exc.errno) from exc

    # --- appending -----------------------------------------------------------------------
    def append_batch(self, table_id: int, first_seq: int,
                     columns: Mapping[str, np.ndarray], compress: bool | None = None) -> int:
        """Append one batch of rows of table REC_TRADES or REC_QUOTES; return bytes written.

        `columns` maps every column name of `TABLE_COLUMNS[table_id]` to a 1-D array of equal
        length; other dtypes are accepted when numpy casts them safely. The "seq" column may
        be left out: row i then gets seq first_seq + i. Seqs must increase strictly within
        the batch (trusted from the caller; the first and last are checked) and start after
        the last seq of the previous batch of the same table; first_seq must equal seq[0].
        An empty batch writes nothing and returns 0. `compress` overrides the writer's
        setting for this record (LZ4 is kept only when it saves space either way).
        """
        self._check_usable()
        schema = L.TABLE_COLUMNS.get(table_id)
        if schema is None:
            raise ValueError(f"table_id {table_id} is not a batch record type "
                             f"({sorted(L.TABLE_COLUMNS)})")
        if "seq" not in columns:
            n0 = len(next(iter(columns.values()))) if columns else 0
            columns = {**columns, "seq": np.arange(first_seq, first_seq + n0, dtype=np.int64)}
        if len(columns) != len(schema):
            extra = set(columns) - {name for name, _ in schema}
            missing = {name for name, _ in schema} - set(columns)
            raise ValueError(f"{L.TABLE_NAMES[table_id]} batch: missing columns "
                             f"{sorted(missing)}, unexpected {sorted(extra)}")
        arrays = []
        for name, dtype in schema:
            try:
                col = columns[name]
            except KeyError:
                raise ValueError(f"{L.TABLE_NAMES[table_id]} batch has no column {name!r}") \
                    from None
            col = np.asarray(col)
            # The dtype comparison spares the common exact-match case can_cast's microsecond.
            if col.ndim != 1 or (col.dtype != dtype and not np.can_cast(col.dtype, dtype,
                                                                        "safe")):
                raise ValueError(f"column {name!r}: need 1-D {dtype}, got {col.ndim}-D "
                                 f"{col.dtype}")
            arrays.append(col)
        n = len(arrays[0])
        if any(len(a) != n for a in arrays):
            raise ValueError(f"{L.TABLE_NAMES[table_id]} batch columns differ in length: "
                             f"{[len(a) for a in arrays]}")
        if n == 0:
            return 0
        seq = arrays[-1]
        last_seq = int(seq[-1])
        prev = self._last_seq.get(table_id, -1)
        if first_seq < 0 or int(seq[0]) != first_seq or first_seq <= prev \
                or last_seq - first_seq < n - 1 or last_seq - first_seq > 0xFFFFFFFF:
            raise ValueError(f"{self.path}: {L.TABLE_NAMES[table_id]} batch seqs "
                             f"{int(seq[0])}..{last_seq} (first_seq {first_seq}, {n} rows) do "
                             f"not continue the log (last {L.TABLE_NAMES[table_id]} seq is "
                             f"{prev})")
        raw_len = n * L.ROW_SIZE[table_id]
        if raw_len > L.MAX_PAYLOAD:
            raise ValueError(f"batch of {n} rows is {raw_len} bytes, over {L.MAX_PAYLOAD}")

        h = L.RECORD_HEADER_SIZE
        buf = bytearray(h + L.padded(raw_len))
        pos = h
        for a, (_name, dtype) in zip(arrays, schema):
            # Assigning through a typed view casts, byte-swaps and gathers strided input in
            # the one copy that has to happen anyway.
            np.frombuffer(buf, dtype, n, pos)[:] = a
            pos += n * dtype.itemsize
        encode = self._encode if compress is None else (_encode_lz4 if compress
                                                         else _encode_raw)
        buf, flags, payload_len = encode(buf, raw_len)
        _seal_record(buf, table_id, self.shard, flags, first_seq, n, payload_len, raw_len,
                     last_seq - first_seq)
        self._write(buf)
        self._last_seq[table_id] = last_seq
        self.next_seq = max(self.next_seq or 0, last_seq + 1)
        self._after_batch()
        return len(buf)

    def append_rows(self, table_id: int, addrs: np.ndarray, itemsizes: np.ndarray, lo: int,
                    hi: int, first_seq: int, last_seq: int) -> int:
        """Append rows lo .. hi-1 of whole columns at ``addrs`` (``column_addresses`` of
        them, in the record's column order; ``itemsizes`` their widths) as one raw record;
        return bytes written.

        The writer's fast path for small passes: the caller guarantees what append_batch
        checks (dtypes, strictly increasing seqs first_seq .. last_seq) and keeps the
        columns mapped; the log's order is still checked here. One compiled call assembles,
        checksums and writes the record."""
        self._check_usable()
        n = hi - lo
        prev = self._last_seq.get(table_id, -1)
        if n <= 0 or first_seq <= prev or last_seq - first_seq < n - 1:
            raise ValueError(f"{self.path}: {L.TABLE_NAMES.get(table_id)} rows seq "
                             f"{first_seq}..{last_seq} do not continue the log (last {prev})")
        need = L.RECORD_HEADER_SIZE + L.padded(n * L.ROW_SIZE[table_id])
        if self._scratch is None or len(self._scratch) < need:
            self._scratch = np.empty(max(need, 1 << 16), np.uint8)
        done = 0
        try:
            done = K.write_record(self._fd, self._scratch, table_id, self.shard, addrs,
                                  itemsizes, lo, n, first_seq, last_seq - first_seq)
        except BaseException:
            # a signal handler's exception as the call returned: the bytes may be in the
            # file (_undo_partial looks at its size)
            self._undo_partial(OSError(errno_codes.EINTR, "interrupted"), done)
            raise
        if done == need:
            self.end += need
        else:  # a write failed or wrote part: write the rest for the error (and its errno)
            self._write(memoryview(self._scratch)[:need], done)
        self._last_seq[table_id] = last_seq
        self.next_seq = max(self.next_seq or 0, last_seq + 1)
        self._after_batch()
        return need

    def compiled_append_target(self, min_bytes: int) -> "tuple[int, np.ndarray] | None":
        """The file descriptor and a record buffer of at least ``min_bytes`` for records that
        a compiled pass assembles and write()s itself (ingest.writer_pass_logged), which then
        reports them with ``note_appended``; None when this log's policy must act after each
        append ("batch" flushes it, an inline "interval" may) or it cannot append now."""
        if self._failed is not None or self._fd is None or self._pid != _PID[0] \
                or self._after_batch is not _nothing:
            return None
        if self._scratch is None or len(self._scratch) < min_bytes:
            self._scratch = np.empty(max(min_bytes, 1 << 16), np.uint8)
        return self._fd, self._scratch

    def last_seqs(self) -> dict[int, int]:
        """The last seq appended per record type (table), as ``note_appended`` takes them."""
        return dict(self._last_seq)

    def note_appended(self, nbytes: int) -> None:
        """Account for ``nbytes`` of whole batch records that a compiled pass wrote to this
        log's file (see ``compiled_append_target``); their seqs come with ``note_seqs``
        before anything else appends."""
        self.end += nbytes

    def note_seqs(self, last_seqs: "dict[int, int]", next_seq: int) -> None:
        """The last seq per record type (table) and the next seq that records written by a
        compiled pass leave (see ``note_appended``)."""
        self._last_seq.update(last_seqs)
        self.next_seq = next_seq

    def complete_write(self, buf: memoryview, done: int) -> None:
        """Write the rest of records of which a compiled pass's write() took only ``done``
        bytes (the errno comes with the next call), or raise WalWriteError with the file cut
        back to where they began. ``end`` moves past them on success."""
        self._check_usable()
        self._write(buf, done)

    def append_symbol(self, symbol_id: int, name: str) -> int:
        """Record that `symbol_id` names `name` (ASCII, 1-16 bytes); return bytes written."""
        return self._append_name(L.REC_SYMBOL, symbol_id, name)

    def append_venue(self, venue_id: int, name: str) -> int:
        """Record that `venue_id` names `name` (ASCII, 1-16 bytes); return bytes written."""
        return self._append_name(L.REC_VENUE, venue_id, name)

    def _append_name(self, rtype: int, ident: int, name: str) -> int:
        self._check_usable()
        if not 0 <= ident <= 0x7FFFFFFF:
            raise ValueError(f"id {ident} out of int32 range")
        try:
            encoded = name.encode("ascii")
        except (UnicodeEncodeError, AttributeError):
            raise ValueError(f"name {name!r} is not an ASCII string") from None
        if not 1 <= len(encoded) <= L.NAME_MAX or b"\0" in encoded:
            raise ValueError(f"name {name!r} must be 1-{L.NAME_MAX} bytes without NUL")
        buf = bytearray(L.RECORD_HEADER_SIZE + L.padded(L.NAME_PAYLOAD_SIZE))
        L.NAME_PAYLOAD_STRUCT.pack_into(buf, L.RECORD_HEADER_SIZE, ident, encoded)
        _seal_record(buf, rtype, self.shard, 0, L.NO_SEQ, 1, L.NAME_PAYLOAD_SIZE,
                     L.NAME_PAYLOAD_SIZE)
        self._write(buf)
        return len(buf)

    def _write(self, buf: bytes | bytearray | memoryview, done: int = 0) -> None:
        """Hand one whole record to the kernel (its first ``done`` bytes already are); on
        failure cut the file back to `self.end`."""
        view = memoryview(buf)
        try:
            while done < len(buf):
                # A short count on a regular file means the next call reports the error
                # (ENOSPC, EFBIG); loop to get it rather than guess.
                n = os.write(self._fd, view[done:])
                if n == 0:
                    raise OSError(errno_codes.EIO, "write() returned 0")
                done += n
        except OSError as exc:
            raise self._undo_partial(exc, done) from exc
        except BaseException:
            # An exception from a signal handler between the kernel taking the bytes and
            # `end` moving: the caller sees the append fail, so the record must not stay.
            self._undo_partial(OSError(errno_codes.EINTR, "interrupted"), done)
            raise
        self.end += len(buf)

    def _undo_partial(self, exc: OSError, written: int) -> WalWriteError:
        what = f"WAL {self.path}: write failed at offset {self.end}: {exc.strerror}"
        try:
            if written == 0 and os.fstat(self._fd).st_size == self.end:
                return WalWriteError(what, self.path, exc.errno, truncated_to=self.end)
            os.ftruncate(self._fd, self.end)
        except OSError as undo_exc:
            self._failed = (f"{what}; cutting it back also failed ({undo_exc.strerror}), "
                            f"so a torn record may remain")
            return WalWriteError(self._failed, self.path, exc.errno)
        return WalWriteError(f"{what}; cut back to {self.end}", self.path, exc.errno,
                             truncated_to=self.end)

    def mark(self) -> tuple:
        """A point to `rewind` to: the end of the log and its seq bookkeeping."""
        return (self.end, dict(self._last_seq), self.next_seq)

    def rewind(self, mark: tuple) -> None:
        """Cut the records appended since `mark` off the file (a pass that cannot be completed
        must not leave half of itself in the log). A failed cut makes the writer unusable."""
        self._check_usable()
        end, last_seq, next_seq = mark
        if end == self.end:
            return
        try:
            os.ftruncate(self._fd, end)
        except OSError as exc:
            self._failed = f"WAL {self.path}: cutting back to {end} failed: {exc.strerror}"
            raise WalWriteError(self._failed, self.path, exc.errno) from exc
        self.end = end
        self.synced_end = min(self.synced_end, end)
        self._last_seq = dict(last_seq)
        self.next_seq = next_seq

    # --- syncing -------------------------------------------------------------------------
    def sync(self) -> None:
        """fdatasync() now, whatever the policy."""
        self._check_usable()
        self._sync()

    def maybe_sync(self) -> bool:
        """Called by the writer loop when idle: flush what the policy owes; True if it synced.

        "interval" flushes unsynced records once interval_ms has passed since the last flush;
        "batch" flushes stray name records; "off" does nothing.
        """
        self._check_usable()
        return self._idle_sync()

    def _sync(self) -> None:
        try:
            _fdatasync(self._fd)
        except OSError as exc:
            # After a failed fsync the kernel may have marked the lost pages clean: retrying
            # would "succeed" without the data. Refuse further use; the caller recovers.
            self._failed = f"WAL {self.path}: fdatasync failed: {exc.strerror}"
            raise WalWriteError(self._failed, self.path, exc.errno) from exc
        self._last_sync_ns = time.monotonic_ns()
        self.synced_end = self.end
        self.sync_count += 1

    def _sync_if_due(self) -> None:
        if time.monotonic_ns() - self._last_sync_ns >= self.interval_ns:
            self._sync()

    def _sync_if_dirty(self) -> bool:
        if self.synced_end == self.end:
            return False
        self._sync()
        return True

    def _sync_if_dirty_and_due(self) -> bool:
        if self.synced_end == self.end or \
                time.monotonic_ns() - self._last_sync_ns < self.interval_ns:
            return False
        self._sync()
        return True

    # --- lifecycle -----------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self._pid != _PID[0]:
            raise UsedAfterFork(f"WAL writer for {self.path} was opened by pid {self._pid}, "
                                f"used in forked child {os.getpid()}")
        if self._failed is not None:
            raise WalWriteError(f"{self._failed} (writer unusable; reopen and recover)",
                                self.path, None)
        if self._fd is None:
            raise ValueError(f"WAL writer for {self.path} is closed")

    def close(self) -> None:
        """Flush (every policy) and close. Idempotent; skips the flush after a failure."""
        if self._pid != _PID[0]:
            raise UsedAfterFork(f"WAL writer for {self.path} was opened by pid {self._pid}, "
                                f"closed in forked child {os.getpid()}")
        if self._fd is None:
            return
        if self._syncer is not None:
            self._stop_syncer.set()
            self._syncer.join()
            self._syncer = None
        try:
            if self._failed is None and self.synced_end != self.end:
                self._sync()
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def closed(self) -> bool:
        """True once close() has run."""
        return self._fd is None

    def __enter__(self) -> "WalWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"WalWriter({self.path!r}, shard={self.shard}, fsync={self.fsync!r}, "
                f"end={self.end}, next_seq={self.next_seq})")


def _nothing() -> None:
    return None


def _false() -> bool:
    return False


# =============================================================================================
# Scanning and recovery
# =============================================================================================

@dataclass(frozen=True, eq=False)
class WalScan:
    """What `scan` found: the good records, where the good prefix ends, and any damage.

    `records` is a structured array (SCAN_RECORD_DTYPE: offset, type, flags, first_seq,
    row_count, payload_len, raw_len), one row per good record in file order. `damage_kind` is
    None (clean), "tail" (the last record is torn or damaged and nothing valid follows — what a
    crash mid-append leaves; safe to `truncate_to(good_end)`) or "mid-file" (a valid-looking
    record follows the damage, or seq breaks between intact records: not a crash artefact,
    nothing after good_end is trusted, and truncating discards those records).

    On a WAL that a live writer is appending to, a "tail" may be an append in flight.
    """

    path: str
    shard: int | None
    created_ns: int | None
    creator_pid: int | None
    file_size: int
    records: np.ndarray
    good_end: int
    damage: str | None
    damage_kind: str | None
    damage_offset: int | None
    next_record_offset: int | None
    next_seq: int | None
    last_seq: dict = field(default_factory=dict)  # record type -> last seq in the good prefix
    # seq from which this log holds rows: every smaller seq is in history (REC_ROLL), else 0
    roll_seq: int = 0
    # the bytes scanned, when scan(keep_buffer=True): decode reads them instead of the file
    buffer: np.ndarray | None = field(default=None, repr=False)

    @property
    def damaged_bytes(self) -> int:
        """Bytes past the good prefix."""
        return self.file_size - self.good_end

    @property
    def mid_file(self) -> bool:
        """True when the damage is not confined to the tail."""
        return self.damage_kind == "mid-file"

    @property
    def reason(self) -> str:
        """One line describing the damage, or "clean"."""
        if self.damage is None:
            return "clean"
        if self.damage_kind == "mid-file":
            follow = ("" if self.next_record_offset is None
                      else f"; a valid record header follows at offset "
                           f"{self.next_record_offset}")
            return (f"mid-file corruption at offset {self.damage_offset}: {self.damage}"
                    f"{follow}; {self.damaged_bytes} bytes after offset {self.good_end} "
                    f"untrusted")
        return (f"damaged tail at offset {self.damage_offset}: {self.damage}; "
                f"{self.damaged_bytes} bytes to drop")

    @property
    def offsets(self) -> np.ndarray:
        """Byte offset of each good record."""
        return self.records["offset"]

    @property
    def types(self) -> np.ndarray:
        """Record type of each good record."""
        return self.records["type"]

    @property
    def first_seq(self) -> np.ndarray:
        """first_seq of each good record (NO_SEQ for name records)."""
        return self.records["first_seq"]

    @property
    def row_count(self) -> np.ndarray:
        """Row count of each good record."""
        return self.records["row_count"]

    @property
    def rows(self) -> int:
        """Rows in the good batch records."""
        batch = np.isin(self.records["type"], list(L.BATCH_TYPES))
        return int(self.records["row_count"][batch].sum())


def _read_file(path: str) -> tuple[np.ndarray, int]:
    """The file's bytes in a private buffer, and how many there were.

    A copy rather than an mmap: a writer that cuts a failed append back would turn a mapped
    reader's access to the vanished pages into SIGBUS, and a full disk must not crash a reader.
    """
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = np.empty(size, dtype=np.uint8)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    return buf[:got], got


def _map_prefix(path: str, limit: int, populate: bool = False) -> tuple[np.ndarray, int]:
    """The first `limit` bytes of the file, mapped read-only (fewer if the file is shorter).

    Mapping is safe here where it is not in `scan`: a good prefix holds only complete records,
    and nothing cuts complete records off a WAL (a writer cuts back only its own failed append;
    recovery cuts only past a good end). The mapping is released when the returned array and
    its views are garbage: closing it explicitly would fail while numpy views exist.
    """
    with open(path, "rb") as f:
        size = min(os.fstat(f.fileno()).st_size, limit)
        if size == 0:
            return np.empty(0, dtype=np.uint8), 0
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        mm = mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ)
    return np.frombuffer(mm, dtype=np.uint8, count=size), size


def _parse_file_header(raw: bytes | memoryview, path: str,
                       expected_shard: int | None) -> tuple[int, int, int]:
    """Check a complete file header; return (shard, creator_pid, created_ns)."""
    (magic, version, header_len, shard, creator_pid, created_ns, _reserved,
     stored_crc) = L.FILE_HEADER_STRUCT.unpack_from(raw, 0)
    L.check_file_header(path, magic, version, header_len, shard, None)
    L.check_file_header_crc(path, stored_crc,
                            zlib.crc32(memoryview(raw)[:L.FILE_HEADER_CRC_SPAN]))
    L.check_file_header(path, magic, version, header_len, shard, expected_shard)
    return shard, creator_pid, created_ns


def _header_is_valid(mv: memoryview, pos: int, size: int) -> bool:
    if size - pos < L.RECORD_HEADER_SIZE:
        return False
    magic, = _U32.unpack_from(mv, pos)
    stored, = _U32.unpack_from(mv, pos + L.RH_HEADER_CRC_OFFSET)
    return magic == L.RECORD_MAGIC and \
        zlib.crc32(mv[pos:pos + L.RECORD_HEADER_CRC_SPAN]) == stored


def _find_next_record(buf: np.ndarray, start: int, size: int) -> int | None:
    """Offset of the first 8-aligned valid record header at or after `start`, if any."""
    start = L.padded(start)
    if size - start < L.RECORD_HEADER_SIZE:
        return None
    words = buf[start:start + (size - start) // 8 * 8].view("<u4")[::2]
    candidates = np.flatnonzero(words == L.RECORD_MAGIC)[:_MAX_RESYNC_CANDIDATES]
    mv = memoryview(buf)
    for c in candidates.tolist():
        if _header_is_valid(mv, start + 8 * c, size):
            return start + 8 * c
    return None


def _scan_buffer(buf: np.ndarray, size: int, path: str, shard: int | None) -> WalScan:
    mv = memoryview(buf)
    empty = np.empty(0, dtype=SCAN_RECORD_DTYPE)
    if size < L.FILE_HEADER_SIZE:
        if size >= 4:
            magic, = _U32.unpack_from(mv, 0)
            if magic != L.FILE_MAGIC:
                L.check_file_header(path, magic, L.VERSION, L.FILE_HEADER_SIZE, 0, None)
        damage = None if size == 0 else \
            f"torn file header ({size} of {L.FILE_HEADER_SIZE} bytes)"
        return WalScan(path, None, None, None, size, empty, 0, damage,
                       None if size == 0 else "tail", None if size == 0 else 0, None, None)
    file_shard, creator_pid, created_ns = _parse_file_header(mv, path, shard)

    h = L.RECORD_HEADER_SIZE
    unpack = L.RECORD_HEADER_STRUCT.unpack_from
    check_lengths = L.check_record_lengths
    crc32 = zlib.crc32
    records: list[tuple] = []
    expected_seq: int | None = None
    last_seq: dict[int, int] = {}
    # the fast path: a compiled loop validates record after record and stops at the first
    # that fails a check; the Python loop below then says what is wrong with it
    kstate = np.full(K.SC_WORDS, -1, np.int64)
    kstate[K.SC_POS] = L.FILE_HEADER_SIZE
    kstate[K.SC_RECORDS] = 0
    kstate[K.SC_ROLL] = 0
    fast = []
    while True:
        out = np.empty((min(1 << 16, (size - int(kstate[K.SC_POS])) // h + 1), K.R_WORDS),
                       np.int64)
        got = K.scan_records(buf, size, file_shard, kstate, out)
        if got:
            fast.append(out[:got])
        if got < len(out):
            break
    pos = int(kstate[K.SC_POS])
    expected_seq = int(kstate[K.SC_EXPECTED]) if kstate[K.SC_EXPECTED] >= 0 else None
    roll_seq = int(kstate[K.SC_ROLL])
    for t in L.BATCH_TYPES:
        if kstate[K.SC_LAST + t] >= 0:
            last_seq[t] = int(kstate[K.SC_LAST + t])
    had = int(kstate[K.SC_RECORDS])
    damage: str | None = None
    seq_break = False
    while pos < size:
        left = size - pos
        if left < h:
            damage = f"torn record: {left} of {h} header bytes"
            break
        (magic, version, rtype, rshard, flags, first_seq, row_count, payload_len, raw_len,
         payload_crc, seq_span, header_crc) = unpack(mv, pos)
        if magic != L.RECORD_MAGIC:
            if not buf[pos:].any():
                damage = f"zero-filled tail of {left} bytes"
            else:
                damage = f"bad record magic 0x{magic:08x}"
            break
        computed = crc32(mv[pos:pos + L.RECORD_HEADER_CRC_SPAN])
        if computed != header_crc:
            damage = (f"record header checksum 0x{header_crc:08x}, computed "
                      f"0x{computed:08x}")
            break
        if version != L.VERSION or rshard != file_shard:
            damage = (f"record version {version} / shard {rshard} in a version {L.VERSION} "
                      f"WAL of shard {file_shard}")
            break
        why = check_lengths(rtype, flags, row_count, payload_len, raw_len, seq_span)
        if why is not None:
            damage = why
            break
        end = pos + h + L.padded(payload_len)
        if end > size:
            damage = f"torn record: needs {end - pos} bytes, {left} present"
            break
        computed = crc32(mv[pos + h:pos + h + payload_len])
        if computed != payload_crc:
            damage = (f"payload checksum 0x{payload_crc:08x}, computed 0x{computed:08x}")
            break
        if mv[pos + h + payload_len:end] != _ZERO_PAD[:end - pos - h - payload_len]:
            damage = "nonzero record padding"
            break
        if rtype in L.BATCH_TYPES:
            # Intact records whose seqs go back are a writer bug, not a torn write.
            prev = last_seq.get(rtype, -1)
            if first_seq <= prev:
                damage = (f"seq overlap: {L.TABLE_NAMES[rtype]} batch starts at {first_seq}, "
                          f"after {L.TABLE_NAMES[rtype]} seq {prev}")
                seq_break = True
                break
            if first_seq < 0:
                damage = f"negative first_seq {first_seq}"
                seq_break = True
                break
            last_seq[rtype] = first_seq + seq_span
            expected_seq = max(expected_seq or 0, first_seq + seq_span + 1)
        elif rtype == L.REC_ROLL:
            if records or had or first_seq < 0:
                damage = (f"roll record at offset {pos} is not the first record"
                          if records or had else f"roll record with negative seq {first_seq}")
                seq_break = True
                break
            roll_seq = first_seq
            expected_seq = first_seq
            for t in L.BATCH_TYPES:
                last_seq[t] = first_seq - 1
        records.append((pos, rtype, flags, first_seq, row_count, payload_len, raw_len))
        pos = end

    recs = np.array(records, dtype=SCAN_RECORD_DTYPE) if records else empty
    if fast:
        rows = np.concatenate(fast)
        frecs = np.empty(len(rows), dtype=SCAN_RECORD_DTYPE)
        for name, col in (("offset", K.R_OFFSET), ("type", K.R_TYPE), ("flags", K.R_FLAGS),
                          ("first_seq", K.R_FIRST_SEQ), ("row_count", K.R_ROW_COUNT),
                          ("payload_len", K.R_PAYLOAD_LEN), ("raw_len", K.R_RAW_LEN)):
            frecs[name] = rows[:, col]
        recs = np.concatenate([frecs, recs]) if len(recs) else frecs
    if damage is None:
        return WalScan(path, file_shard, created_ns, creator_pid, size, recs, pos, None, None,
                       None, None, expected_seq, last_seq, roll_seq=roll_seq)
    following = _find_next_record(buf, pos + 8, size)
    kind = "mid-file" if seq_break or following is not None else "tail"
    return WalScan(path, file_shard, created_ns, creator_pid, size, recs, pos, damage, kind,
                   pos, following, expected_seq, last_seq, roll_seq=roll_seq)


def scan(path: str | os.PathLike, shard: int | None = None,
         keep_buffer: bool = False) -> WalScan:
    """Read a WAL and validate every record; stop at the first bad one.

    Raises LayoutMismatch when the file is not a WAL of this format version (or, with
    `shard`, belongs to another shard) and CorruptRecord when the file header's checksum
    fails. Damage after the file header is reported in the returned WalScan, never raised.
    """
    path = os.fspath(path)
    if keep_buffer:
        # the caller owns the file (nobody cuts it while mapped): map it with its pages
        # populated, which is several times faster than reading into fresh memory
        buf, size = _map_prefix(path, 1 << 62, populate=True)
    else:
        buf, size = _read_file(path)
    found = _scan_buffer(buf, size, path, shard)
    if keep_buffer:
        # only the owner of the file (recovery, with the writer's lock) should keep it:
        # decode then trusts these bytes instead of the file
        object.__setattr__(found, "buffer", buf)
    return found


def start_after_roll(path: str | os.PathLike, shard: int, next_seq: int,
                     symbols: list[str], venues: dict[int, str]) -> None:
    """Replace the WAL at `path` with a new one that starts at `next_seq`, atomically.

    The new file holds the file header, a REC_ROLL record (every smaller seq is in history)
    and a name record for each symbol (ids 0..) and venue (`venues`: id -> name, the empty
    venue 0 left out), is fsynced under a temporary name and renamed over `path`: a crash
    leaves the old log or the new one, never a mix. The caller must not hold a WalWriter
    on `path` (close it first).
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    buf = bytearray(_file_header_bytes(shard))
    rec = bytearray(L.RECORD_HEADER_SIZE)
    _seal_record(rec, L.REC_ROLL, shard, 0, next_seq, 0, 0, 0)
    buf += rec
    for rtype, names in ((L.REC_SYMBOL, dict(enumerate(symbols))), (L.REC_VENUE, venues)):
        for ident, name in names.items():
            nb = bytearray(L.RECORD_HEADER_SIZE + L.padded(L.NAME_PAYLOAD_SIZE))
            L.NAME_PAYLOAD_STRUCT.pack_into(nb, L.RECORD_HEADER_SIZE, ident,
                                            name.encode("ascii"))
            _seal_record(nb, rtype, shard, 0, L.NO_SEQ, 1, L.NAME_PAYLOAD_SIZE,
                         L.NAME_PAYLOAD_SIZE)
            buf += nb
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(buf)
            done = 0
            while done < len(buf):
                done += os.write(fd, view[done:])
            _fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_parent(path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise WalWriteError(f"cannot start a new WAL at {path}: {exc.strerror}", path,
                            exc.errno) from exc


def truncate_to(path: str | os.PathLike, good_end: int) -> int:
    """Cut the WAL back to `good_end` (a WalScan's) durably; return the bytes removed.

    Takes the writer's lock, so a WAL that a live writer holds raises WalLocked rather than
    being cut under it.
    """
    path = os.fspath(path)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise WalLocked(f"WAL {path} is held by a writer; stop it before recovery") \
                from exc
        size = os.fstat(fd).st_size
        if not 0 <= good_end <= size:
            raise ValueError(f"{path}: good_end {good_end} outside the file (size {size})")
        if good_end < size:
            os.ftruncate(fd, good_end)
            _fdatasync(fd)
        return size - good_end
    finally:
        os.close(fd)


# =============================================================================================
# Decoding
# =============================================================================================

def decode(source: str | os.PathLike | WalScan, min_seq: int | None = None) -> dict:
    """Decode a WAL's good records into per-table numpy columns.

    `source` is a path (read and scanned here, once) or a WalScan of the file (its good prefix
    is mapped, not read or checksummed again). With `min_seq`, rows with seq < min_seq are
    left out — for replaying only what the columns in shared memory do not hold yet.

    Returns::

        {"trades": {"ts", "symbol_id", "venue_id", "price", "size", "seq": arrays},
         "quotes": {"ts", "symbol_id", "venue_id", "bid", "ask", "bid_size", "ask_size",
                    "seq": arrays},
         "symbols": {id: name}, "venues": {id: name},
         "next_seq": int | None,       # seq after the last good batch
         "scan": WalScan}              # damage, if any, is reported here

    Damage stops decoding at the scan's good_end and is reported, not raised. Raises
    CorruptRecord for checksummed records whose content is still impossible (an LZ4 block
    that does not decompress to raw_len, one id bound to two names) and when a WalScan no
    longer matches the file.
    """
    if isinstance(source, WalScan) and source.buffer is not None:
        found = source
        buf = source.buffer
    elif isinstance(source, WalScan):
        found = source
        buf, size = _map_prefix(found.path, found.good_end)
        if size < found.good_end:
            raise CorruptRecord(f"{found.path}: file is {size} bytes, shorter than the "
                                f"scanned good prefix of {found.good_end}")
        if size >= L.FILE_HEADER_SIZE:
            shard, _pid, created_ns = _parse_file_header(memoryview(buf), found.path,
                                                         found.shard)
            if created_ns != found.created_ns:
                raise CorruptRecord(f"{found.path}: file was replaced since it was scanned")
    else:
        path = os.fspath(source)
        buf, size = _read_file(path)
        found = _scan_buffer(buf, size, path, None)

    mv = memoryview(buf)
    recs = found.records
    result: dict = {}
    for rtype, table in L.TABLE_NAMES.items():
        result[table] = _decode_table(mv, recs[recs["type"] == rtype], rtype, min_seq,
                                      found.path)
    result["symbols"] = _decode_names(mv, recs[recs["type"] == L.REC_SYMBOL], found.path)
    result["venues"] = _decode_names(mv, recs[recs["type"] == L.REC_VENUE], found.path)
    result["next_seq"] = found.next_seq
    result["scan"] = found
    return result


def decode_into(found: WalScan, targets: Mapping[int, Mapping[str, np.ndarray]],
                start: Mapping[int, int]) -> dict:
    """Decode a scanned WAL's batch rows straight into caller-owned column arrays.

    `targets[rtype][column]` receives the rows of that table from row `start[rtype]` on, in
    file order (recovery passes the shard's shared-memory columns: no intermediate copy).
    The caller checks capacity first (`found.records` has the row counts). Returns
    {"rows": {rtype: n}, "symbols": {id: name}, "venues": {id: name}}.
    """
    buf = found.buffer if found.buffer is not None else _map_prefix(found.path,
                                                                     found.good_end)[0]
    mv = memoryview(buf)
    recs = found.records
    rows = {}
    for rtype, dst in targets.items():
        schema = L.TABLE_COLUMNS[rtype]
        mine = recs[recs["type"] == rtype]
        cols = []
        for name, dtype in schema:
            col = dst[name]
            if col.dtype != dtype or not col.flags.c_contiguous:
                raise ValueError(f"decode_into: column {name!r} must be contiguous {dtype}")
            cols.append(col.view(np.uint8))
        capacity = min(len(dst[name]) for name, _ in schema)
        lz4 = mine["flags"] & L.FLAG_LZ4 != 0
        scratch = np.empty(int(mine["raw_len"][lz4].max()) if lz4.any() else 0, np.uint8)
        got = K.decode_table(buf, np.ascontiguousarray(mine["offset"]),
                             mine["flags"].astype(np.int64), mine["row_count"].astype(np.int64),
                             mine["payload_len"].astype(np.int64),
                             mine["raw_len"].astype(np.int64), tuple(cols),
                             np.array([dt.itemsize for _, dt in schema], np.int64),
                             start.get(rtype, 0), capacity, scratch)
        if got < 0:
            off = int(mine["offset"][-got - 1])
            raise CorruptRecord(f"{found.path}: record at offset {off} does not decode "
                                f"(a bad LZ4 block, or more rows than the columns hold)")
        rows[rtype] = got
    return {"rows": rows,
            "symbols": _decode_names(mv, recs[recs["type"] == L.REC_SYMBOL], found.path),
            "venues": _decode_names(mv, recs[recs["type"] == L.REC_VENUE], found.path)}


def _decode_table(mv: memoryview, recs: np.ndarray, rtype: int, min_seq: int | None,
                  path: str) -> dict[str, np.ndarray]:
    schema = L.TABLE_COLUMNS[rtype]
    count = recs["row_count"]
    total = int(count.sum())
    out = {name: np.empty(total, dtype=dtype) for name, dtype in schema}

    h = L.RECORD_HEADER_SIZE
    columns = [(out[name], dtype) for name, dtype in schema]
    decompress = lz4.block.decompress
    row = 0
    for offset, _t, flags, _fs, n, payload_len, raw_len in recs.tolist():
        p0 = offset + h
        if flags & L.FLAG_LZ4:
            try:
                data = decompress(mv[p0:p0 + payload_len], uncompressed_size=raw_len)
            except lz4.block.LZ4BlockError as exc:
                raise CorruptRecord(f"{path}: record at offset {offset}: LZ4 block does not "
                                    f"decompress: {exc}") from exc
            if len(data) != raw_len:
                raise CorruptRecord(f"{path}: record at offset {offset}: LZ4 block gives "
                                    f"{len(data)} bytes, header says {raw_len}")
            pos = 0
        else:
            data = mv
            pos = p0
        for dst, dtype in columns:
            dst[row:row + n] = np.frombuffer(data, dtype, n, pos)
            pos += n * dtype.itemsize
        row += n
    if min_seq is not None and total:
        # seqs interleave across tables, so a record may hold rows on both sides of min_seq
        keep = out["seq"] >= min_seq
        if not keep.all():
            out = {name: col[keep] for name, col in out.items()}
    return out


def _decode_names(mv: memoryview, recs: np.ndarray, path: str) -> dict[int, str]:
    names: dict[int, str] = {}
    unpack = L.NAME_PAYLOAD_STRUCT.unpack_from
    for offset in recs["offset"].tolist():
        ident, raw = unpack(mv, offset + L.RECORD_HEADER_SIZE)
        try:
            name = raw.rstrip(b"\0").decode("ascii")
        except UnicodeDecodeError:
            raise CorruptRecord(f"{path}: name record at offset {offset} is not ASCII") \
                from None
        if names.setdefault(ident, name) != name:
            raise CorruptRecord(f"{path}: id {ident} named both {names[ident]!r} and "
                                f"{name!r} (record at offset {offset})")
    return names
