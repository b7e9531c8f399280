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
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Mapping

import lz4.block
import numpy as np

from shm.errors import CorruptRecord, UsedAfterFork, WalLocked, WalWriteError
from shm.layout import wal as L

__all__ = ["WalWriter", "WalScan", "scan", "truncate_to", "decode", "FSYNC_POLICIES"]

FSYNC_POLICIES = ("batch", "interval", "off")

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


def _seal_record(buf: bytearray, rtype: int, shard: int, flags: int, first_seq: int,
                 row_count: int, payload_len: int, raw_len: int) -> None:
    """Fill in the header of a record whose payload already sits at RECORD_HEADER_SIZE."""
    mv = memoryview(buf)
    payload_crc = zlib.crc32(mv[L.RECORD_HEADER_SIZE:L.RECORD_HEADER_SIZE + payload_len])
    L.RECORD_HEADER_STRUCT.pack_into(buf, 0, L.RECORD_MAGIC, L.VERSION, rtype, shard, flags,
                                     first_seq, row_count, payload_len, raw_len, payload_crc,
                                     0, 0)
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
                 scan: "WalScan | None" = None) -> None:
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

        self._open(scan)

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
            dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise WalWriteError(f"cannot create WAL {self.path}: {exc.strerror}", self.path,
                                exc.errno) from exc

    # --- appending -----------------------------------------------------------------------
    def append_batch(self, table_id: int, first_seq: int,
                     columns: Mapping[str, np.ndarray]) -> int:
        """Append one batch of rows of table REC_TRADES or REC_QUOTES; return bytes written.

        `columns` maps every column name of `TABLE_COLUMNS[table_id]` to a 1-D array of equal
        length; other dtypes are accepted when numpy casts them safely. Row i gets seq
        first_seq + i, and first_seq must continue the previous batch exactly. An empty batch
        writes nothing and returns 0.
        """
        self._check_usable()
        schema = L.TABLE_COLUMNS.get(table_id)
        if schema is None:
            raise ValueError(f"table_id {table_id} is not a batch record type "
                             f"({sorted(L.TABLE_COLUMNS)})")
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
        if first_seq < 0 or (self.next_seq is not None and first_seq != self.next_seq):
            raise ValueError(f"{self.path}: batch first_seq {first_seq} does not continue the "
                             f"log (next seq is {self.next_seq})")
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
        buf, flags, payload_len = self._encode(buf, raw_len)
        _seal_record(buf, table_id, self.shard, flags, first_seq, n, payload_len, raw_len)
        self._write(buf)
        self.next_seq = first_seq + n
        self._after_batch()
        return len(buf)

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

    def _write(self, buf: bytes | bytearray) -> None:
        """Hand one whole record to the kernel; on failure cut the file back to `self.end`."""
        view = memoryview(buf)
        done = 0
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
        if self._pid != os.getpid():
            raise UsedAfterFork(f"WAL writer for {self.path} was opened by pid {self._pid}, "
                                f"used in forked child {os.getpid()}")
        if self._failed is not None:
            raise WalWriteError(f"{self._failed} (writer unusable; reopen and recover)",
                                self.path, None)
        if self._fd is None:
            raise ValueError(f"WAL writer for {self.path} is closed")

    def close(self) -> None:
        """Flush (every policy) and close. Idempotent; skips the flush after a failure."""
        if self._pid != os.getpid():
            raise UsedAfterFork(f"WAL writer for {self.path} was opened by pid {self._pid}, "
                                f"closed in forked child {os.getpid()}")
        if self._fd is None:
            return
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


def _map_prefix(path: str, limit: int) -> tuple[np.ndarray, int]:
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
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
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
    pos = L.FILE_HEADER_SIZE
    damage: str | None = None
    seq_break = False
    while pos < size:
        left = size - pos
        if left < h:
            damage = f"torn record: {left} of {h} header bytes"
            break
        (magic, version, rtype, rshard, flags, first_seq, row_count, payload_len, raw_len,
         payload_crc, reserved, header_crc) = unpack(mv, pos)
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
        if version != L.VERSION or rshard != file_shard or reserved != 0:
            damage = (f"record version {version} / shard {rshard} / reserved {reserved} in a "
                      f"version {L.VERSION} WAL of shard {file_shard}")
            break
        why = check_lengths(rtype, flags, row_count, payload_len, raw_len)
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
            # Intact records with a seq break are a writer bug, not a torn write.
            if expected_seq is not None and first_seq != expected_seq:
                kind = "gap" if first_seq > expected_seq else "overlap"
                damage = f"seq {kind}: batch starts at {first_seq}, expected {expected_seq}"
                seq_break = True
                break
            if first_seq < 0:
                damage = f"negative first_seq {first_seq}"
                seq_break = True
                break
            expected_seq = first_seq + row_count
        records.append((pos, rtype, flags, first_seq, row_count, payload_len, raw_len))
        pos = end

    recs = np.array(records, dtype=SCAN_RECORD_DTYPE) if records else empty
    if damage is None:
        return WalScan(path, file_shard, created_ns, creator_pid, size, recs, pos, None, None,
                       None, None, expected_seq)
    following = _find_next_record(buf, pos + 8, size)
    kind = "mid-file" if seq_break or following is not None else "tail"
    return WalScan(path, file_shard, created_ns, creator_pid, size, recs, pos, damage, kind,
                   pos, following, expected_seq)


def scan(path: str | os.PathLike, shard: int | None = None) -> WalScan:
    """Read a WAL and validate every record; stop at the first bad one.

    Raises LayoutMismatch when the file is not a WAL of this format version (or, with
    `shard`, belongs to another shard) and CorruptRecord when the file header's checksum
    fails. Damage after the file header is reported in the returned WalScan, never raised.
    """
    path = os.fspath(path)
    buf, size = _read_file(path)
    return _scan_buffer(buf, size, path, shard)


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
    if isinstance(source, WalScan):
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


def _decode_table(mv: memoryview, recs: np.ndarray, rtype: int, min_seq: int | None,
                  path: str) -> dict[str, np.ndarray]:
    schema = L.TABLE_COLUMNS[rtype]
    first = recs["first_seq"]
    count = recs["row_count"]
    if min_seq is not None:
        keep = first + count > min_seq
        recs, first, count = recs[keep], first[keep], count[keep]
        skip = np.clip(min_seq - first, 0, None)
    else:
        skip = np.zeros(len(recs), dtype=np.int64)
    kept = count - skip
    total = int(kept.sum())
    out = {name: np.empty(total, dtype=dtype) for name, dtype in schema}
    # seq of every output row in one vectorised step: row j of record k is first[k]+skip[k]+j.
    starts = np.cumsum(kept) - kept
    out["seq"] = np.arange(total, dtype=np.int64) + np.repeat(first + skip - starts, kept)

    h = L.RECORD_HEADER_SIZE
    columns = [(out[name], dtype) for name, dtype in schema]
    decompress = lz4.block.decompress
    row = 0
    for (offset, _t, flags, _fs, n, payload_len, raw_len), s in zip(recs.tolist(),
                                                                   skip.tolist()):
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
        m = n - s
        for dst, dtype in columns:
            dst[row:row + m] = np.frombuffer(data, dtype, n, pos)[s:]
            pos += n * dtype.itemsize
        row += m
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
