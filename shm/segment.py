"""POSIX shared-memory segments: create, attach (read-only or read-write), name, reclaim.

`posix_ipc` rather than `multiprocessing.shared_memory`: the latter has no read-only mode and
its resource tracker unlinks a segment when any attached process exits. A segment outlives a
SIGKILLed owner in /dev/shm; the supervisor's lock file tells whether the owner is alive.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import time

import numba
import numpy as np
import posix_ipc

from shm.atomics import load_acquire, store_release
from shm.errors import CapacityError, LayoutMismatch, SegmentExists, SegmentMissing
from shm.layout import common

SHM_DIR = "/dev/shm"
CREATING_WAIT_S = 2.0  # how long attach waits for a segment another process is creating
NAME_PREFIX = "wayy."


def db_prefix(db_path: str) -> str:
    """Segment-name prefix for a database directory: ``/wayy.<12 hex of its real path>``.

    Derived from the resolved path, so two databases on one machine never collide and every
    process that names the same directory finds the same segments.
    """
    real = os.path.realpath(db_path)
    return "/" + NAME_PREFIX + hashlib.sha1(real.encode()).hexdigest()[:12]


def list_segments(prefix: str) -> list[str]:
    """Names (with leading '/') of the existing segments that start with ``prefix``."""
    stem = prefix.lstrip("/")
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted("/" + e for e in entries if e.startswith(stem + "."))


def unlink_quiet(name: str) -> bool:
    """Unlink a segment; return False if it did not exist."""
    try:
        posix_ipc.unlink_shared_memory(name)
        return True
    except posix_ipc.ExistentialError:
        return False


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists (owner liveness for segments, claims and slots)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def shm_free_bytes() -> int:
    """Bytes still available in /dev/shm (what a tmpfs size limit, e.g. Docker's 64 MB, leaves)."""
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


def check_fits(total_bytes: int) -> None:
    """Raise CapacityError when /dev/shm cannot hold ``total_bytes`` more."""
    free = shm_free_bytes()
    if total_bytes > free:
        raise CapacityError(
            f"/dev/shm has {free / 2**20:.0f} MiB free but the database needs "
            f"{total_bytes / 2**20:.0f} MiB: lower --capacity or --shards, or enlarge /dev/shm "
            f"(docker: --shm-size)"
        )


@numba.njit(cache=True)
def _load_version(i32):
    return load_acquire(i32, common.VERSION_INDEX_I32)


@numba.njit(cache=True)
def _store_version(i32, v):
    store_release(i32, common.VERSION_INDEX_I32, v)


class Segment:
    """One mapped POSIX shared-memory segment and typed numpy views into it."""

    def __init__(self, name: str, mm: mmap.mmap, size: int, readonly: bool) -> None:
        self.name = name
        self.size = size
        self.readonly = readonly
        self._mm = mm
        self.buf = np.frombuffer(mm, dtype=np.uint8, count=size)
        self.i32 = self.buf[:common.PAGE].view(np.int32)
        self.i64 = self.buf[:common.PAGE].view(np.int64)
        self.pid = os.getpid()

    # --- creation / attachment -----------------------------------------------------------
    @classmethod
    def create(cls, name: str, size: int, magic: int, header_size: int) -> "Segment":
        """Create a new zero-filled segment and fill the common header except its version.

        The caller initialises its own fields and then calls :meth:`publish_version`.
        """
        try:
            shm = posix_ipc.SharedMemory(name, flags=posix_ipc.O_CREX, mode=0o600, size=size)
        except posix_ipc.ExistentialError as exc:
            raise SegmentExists(f"shared-memory segment {name} already exists") from exc
        try:
            mm = mmap.mmap(shm.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            shm.close_fd()
        seg = cls(name, mm, size, readonly=False)
        seg.i64[common.MAGIC_OFFSET // 8] = magic
        seg.i32[common.HEADER_SIZE_OFFSET // 4] = header_size
        seg.i64[common.OWNER_PID_OFFSET // 8] = os.getpid()
        seg.i64[common.START_NS_OFFSET // 8] = time.time_ns()
        seg.i64[common.SEGMENT_SIZE_OFFSET // 8] = size
        return seg

    def publish_version(self, major: int, minor: int) -> None:
        """Write the version word last, with a release store: the segment is now ready."""
        _store_version(self.i32, common.pack_version(major, minor))

    @classmethod
    def attach(
        cls, name: str, magic: int, major: int, readonly: bool = True, what: str = "segment"
    ) -> "Segment":
        """Map an existing segment and check its magic and major version.

        A segment another process is creating right now (sized 0, or its magic not yet
        written) is waited for, up to CREATING_WAIT_S, as its version word is."""
        deadline = time.monotonic() + CREATING_WAIT_S
        while True:
            try:
                shm = posix_ipc.SharedMemory(name, flags=0, read_only=readonly)
            except posix_ipc.ExistentialError as exc:
                raise SegmentMissing(f"{what} {name} does not exist (is the database "
                                     f"running?)") from exc
            except posix_ipc.PermissionsError as exc:
                raise SegmentMissing(f"no permission to open {what} {name}") from exc
            size = 0
            try:
                size = os.fstat(shm.fd).st_size
                if size < common.PAGE and time.monotonic() < deadline:
                    continue  # created, not yet sized (shm_open, then ftruncate)
                if size < common.PAGE:
                    raise LayoutMismatch(f"{what} {name} is {size} bytes, smaller than its "
                                         f"header")
                prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
                mm = mmap.mmap(shm.fd, size, mmap.MAP_SHARED, prot)
                break
            finally:
                shm.close_fd()
                if size < common.PAGE:
                    time.sleep(0.001)
        seg = cls(name, mm, size, readonly=readonly)
        got_magic = int(seg.i64[common.MAGIC_OFFSET // 8]) & 0xFFFFFFFFFFFFFFFF
        while got_magic == 0 and time.monotonic() < deadline:  # sized, magic not yet written
            time.sleep(0.001)
            got_magic = int(seg.i64[common.MAGIC_OFFSET // 8]) & 0xFFFFFFFFFFFFFFFF
        if got_magic != magic & 0xFFFFFFFFFFFFFFFF:
            raise LayoutMismatch(
                f"{what} {name} has magic {got_magic:#x}, expected {magic & 0xFFFFFFFFFFFFFFFF:#x}"
            )
        word = int(_load_version(seg.i32))
        while word == 0 and time.monotonic() < deadline:  # creator still initialising
            time.sleep(0.001)
            word = int(_load_version(seg.i32))
        got_major, got_minor = common.unpack_version(word)
        if got_major != major:
            raise LayoutMismatch(
                f"{what} {name} has layout version {got_major}.{got_minor}; this wayy reads "
                f"version {major}.x — restart the database with the same wayy version"
            )
        return seg

    # --- access ---------------------------------------------------------------------------
    def view(self, offset: int, dtype, count: int) -> np.ndarray:
        """A typed numpy view of ``count`` items at byte ``offset`` (read-only if mapped so)."""
        nbytes = np.dtype(dtype).itemsize * count
        if offset < 0 or offset + nbytes > self.size:
            raise LayoutMismatch(
                f"view [{offset}, {offset + nbytes}) outside segment {self.name} of {self.size} bytes"
            )
        return self.buf[offset : offset + nbytes].view(dtype)

    @property
    def owner_pid(self) -> int:
        return int(self.i64[common.OWNER_PID_OFFSET // 8])

    @property
    def start_ns(self) -> int:
        return int(self.i64[common.START_NS_OFFSET // 8])

    def close(self) -> None:
        """Drop the mapping when no numpy view still uses it (else leave it to process exit)."""
        self.buf = self.i32 = self.i64 = None  # type: ignore[assignment]
        try:
            self._mm.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        """Remove the segment's name; existing mappings stay valid until closed."""
        unlink_quiet(self.name)
