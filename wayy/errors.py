"""Every error wayy raises, grouped by what the caller can do about it.

    WayyError                          root: catch this to catch everything wayy raises
    ├── InvalidInput                   the caller passed something wrong; fix the call
    │   ├── InvalidName                symbol / venue / tenant / channel name not allowed
    │   ├── InvalidTick                a field value is out of range (row and reason named)
    │   ├── UnknownTable               no such table or column
    │   └── RedisRefused               Redis refused a command or the credentials (not retried)
    ├── NotRunning                     no database is running at that path; start it
    ├── AlreadyRunning                 a database is already running at that path
    ├── IncompatibleVersion            segment or file written by another wayy layout version
    ├── InsufficientSpace              /dev/shm or disk cannot hold what was asked for
    ├── Backpressure                   a shard's inbound ring stayed full past the timeout
    ├── WriterUnavailable              the shard writer refuses input (starting, stopped, disk)
    ├── RowsRejected                   a writer refused rows after publish returned (flush)
    ├── CorruptData                    a file or record failed its checks
    └── RedisUnavailable               Redis cannot be reached or the connection was lost
                                       (retried with backoff)

Errors carry ``shard``, ``seq`` and ``path`` where they apply. Errors from `shm`, posix_ipc
and the OS are translated in one place, :func:`translate`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from shm import errors as shm_errors


class WayyError(Exception):
    """Root of every wayy error."""

    def __init__(self, message: str, *, shard: int | None = None, seq: int | None = None,
                 path: str | None = None) -> None:
        super().__init__(message)
        self.shard = shard
        self.seq = seq
        self.path = path


class InvalidInput(WayyError, ValueError):
    """The caller passed something wrong; nothing was written."""


class InvalidName(InvalidInput):
    """A symbol, venue, tenant or channel name outside the allowed character set or length."""


class InvalidTick(InvalidInput):
    """A tick field is out of range; ``row`` and ``reason`` say which and why."""

    def __init__(self, message: str, *, row: int | None = None, reason: str = "",
                 **kw) -> None:
        super().__init__(message, **kw)
        self.row = row
        self.reason = reason


class UnknownTable(InvalidInput, KeyError):
    """No such table or column."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class NotRunning(WayyError):
    """No database is running (or was ever created) at the path."""


class AlreadyRunning(WayyError):
    """A database is already running at the path."""


class IncompatibleVersion(WayyError):
    """A segment or file was written by an incompatible layout version."""


class InsufficientSpace(WayyError):
    """Shared memory or disk cannot hold what was asked for."""


class Backpressure(WayyError):
    """A shard's inbound ring stayed full for longer than the producer's timeout."""


class WriterUnavailable(WayyError):
    """The shard writer does not accept input now; the message says why."""


class RunEnded(NotRunning, WriterUnavailable):
    """A Producer's run of the database has ended: the database stopped, died, or was
    started again since the Producer was made (its inbound rings are gone or never drained
    again). Create a new Producer. A NotRunning, like a stale ``attach`` handle's queries,
    and a WriterUnavailable, so ``accepted`` / ``pending_rows`` handling catches it too."""


class RowsRejected(WayyError):
    """A writer refused rows after ``publish`` returned (the table or the shard's symbol
    table was full): raised by ``Producer.flush``. ``rejected`` maps shard -> {reason:
    rows}."""

    def __init__(self, message: str, *, rejected: dict | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.rejected: dict[int, dict[str, int]] = {} if rejected is None else rejected


class RedisUnavailable(WayyError):
    """Redis cannot be reached, or the connection was lost: retried with backoff."""


class RedisRefused(InvalidInput):
    """Redis refused a command or the credentials (wrong password, ACL): not retried."""


class CorruptData(WayyError):
    """A file or record failed its integrity checks."""


@contextlib.contextmanager
def translate(path: str | None = None) -> Iterator[None]:
    """Turn `shm` and OS errors raised inside the block into WayyErrors (``raise from``)."""
    try:
        yield
    except WayyError:
        raise
    except shm_errors.SegmentMissing as exc:
        raise NotRunning(f"no running database at {path}: {exc}", path=path) from exc
    except shm_errors.LayoutMismatch as exc:
        raise IncompatibleVersion(str(exc), path=path) from exc
    except shm_errors.CapacityError as exc:
        raise InsufficientSpace(str(exc), path=path) from exc
    except shm_errors.CorruptRecord as exc:
        raise CorruptData(str(exc), path=path) from exc
    except shm_errors.SegmentExists as exc:
        raise AlreadyRunning(str(exc), path=path) from exc
    except PermissionError as exc:
        raise NotRunning(f"permission denied for {path}: {exc}", path=path) from exc


__all__ = [
    "WayyError",
    "InvalidInput",
    "InvalidName",
    "InvalidTick",
    "UnknownTable",
    "NotRunning",
    "AlreadyRunning",
    "IncompatibleVersion",
    "InsufficientSpace",
    "Backpressure",
    "WriterUnavailable",
    "CorruptData",
    "RedisUnavailable",
    "RedisRefused",
    "translate",
]


def import_pandas():
    """pandas, for ``to_pandas()``: an optional dependency, so its absence is a WayyError
    that says how to install it, not a bare ModuleNotFoundError."""
    try:
        import pandas
    except ImportError:
        raise WayyError("to_pandas() needs pandas, which wayy does not install: "
                        "pip install pandas") from None
    return pandas
