"""Errors raised by the shared-memory and file-format mechanism.

    ShmError
    ├── SegmentMissing      a segment that should exist does not (database not running)
    ├── SegmentExists       a segment already exists where one is being created
    ├── LayoutMismatch      magic or major version of a segment/file differs from this code's
    ├── CapacityError       /dev/shm (or a configured limit) cannot hold what was asked for
    ├── CorruptRecord       a record fails its checksum or bounds (WAL, rings)
    ├── WalWriteError       writing or syncing a WAL failed (ENOSPC, EIO); carries path, errno
    ├── WalLocked           another live process holds the WAL open for writing
    └── UsedAfterFork       an object owning a file descriptor or mapping used in a forked child

The `wayy` package translates these into its own `WayyError` tree at the API boundary; `shm`
imports nothing of `wayy`.
"""

from __future__ import annotations


class ShmError(Exception):
    """Root of every error raised by the `shm` package."""


class SegmentMissing(ShmError):
    """A shared-memory segment that should exist does not."""


class SegmentExists(ShmError):
    """A shared-memory segment already exists under the name being created."""


class LayoutMismatch(ShmError):
    """A segment or file has another magic number or an incompatible version."""


class CapacityError(ShmError):
    """The requested capacity does not fit where it has to live."""


class CorruptRecord(ShmError):
    """A record is damaged: bad checksum, impossible length, or bad bounds."""


class WalWriteError(ShmError):
    """Appending to or syncing a write-ahead log failed at the OS level.

    `path` and `errno` name the file and the cause (errno.ENOSPC, errno.EIO, ...).
    `truncated_to` is the byte offset the file was cut back to after a failed append (the end of
    the last good record), or None when it could not be cut back or the failure was in fsync.
    """

    def __init__(self, message: str, path: str, errno: int | None,
                 truncated_to: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno
        self.truncated_to = truncated_to


class WalLocked(ShmError):
    """Another live process holds the write-ahead log open for writing."""


class UsedAfterFork(ShmError):
    """An object that owns a file descriptor or mapping was used in a forked child."""
