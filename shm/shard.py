"""A shard's segments as Python objects: creation by the supervisor, mapping by everyone.

Three segments per shard, named ``<db prefix>.<shard>.<kind>``:

    .data  shard segment (layout.shard): names, columns, per-symbol index, commits
    .in    inbound ring (layout.inbound): producers -> writer
    .ctl   control segment (layout.control): writer counters and state
"""

from __future__ import annotations

import numpy as np

from shm import ingest
from shm.errors import CapacityError
from shm.layout import common
from shm.layout import control as C
from shm.layout import inbound as L
from shm.layout import shard as S
from shm.layout import tables as T
from shm.segment import Segment


def segment_name(prefix: str, shard: int, kind: str) -> str:
    """``/wayy.<hash>.<shard>.<kind>`` for kind in data / in / ctl (and later rings)."""
    return f"{prefix}.{shard}.{kind}"


def shard_bytes(capacity: int, max_symbols: int, max_venues: int, ring_capacity: int) -> int:
    """Bytes of shared memory one shard needs (all three segments)."""
    return (
        S.segment_size(capacity, max_symbols, max_venues)
        + L.segment_size(ring_capacity)
        + C.SEGMENT_BYTES
    )


class ShardData:
    """The shard segment with typed views; read-only unless created or attached writable."""

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.hdr64 = seg.i64
        self.hdr32 = seg.i32
        self.shard = int(self.hdr32[S.SHARD_I32])
        self.nshards = int(self.hdr32[S.NSHARDS_I32])
        self.capacity = int(self.hdr64[S.CAPACITY_I64])
        self.max_symbols = int(self.hdr32[S.MAX_SYMBOLS_I32])
        self.max_venues = int(self.hdr32[S.MAX_VENUES_I32])
        self.off = S.region_offsets(self.capacity, self.max_symbols, self.max_venues)
        if int(self.off[S.OFF_END]) > seg.size:
            raise CapacityError(
                f"shard segment {seg.name} is {seg.size} bytes, its header implies "
                f"{int(self.off[S.OFF_END])}"
            )
        cap = self.capacity
        self.sym_names = seg.view(int(self.off[S.OFF_SYM_NAMES]), "S16", self.max_symbols)
        self.ven_names = seg.view(int(self.off[S.OFF_VEN_NAMES]), "S16", self.max_venues)
        self.last = (
            seg.view(int(self.off[S.OFF_LAST_TRADE]), np.int64, self.max_symbols),
            seg.view(int(self.off[S.OFF_LAST_QUOTE]), np.int64, self.max_symbols),
        )
        self.cols: list[dict[str, np.ndarray]] = []
        self.prev: list[np.ndarray] = []
        self.blk_min: list[np.ndarray] = []
        self.blk_max: list[np.ndarray] = []
        nblk = cap // S.BLOCK_ROWS
        for t in (T.TRADES, T.QUOTES):
            base = S.OFF_TABLES + t * S.OFF_TABLE_STRIDE
            cols = {
                "ts": seg.view(int(self.off[base + S.COL_TS]), np.int64, cap),
                "symbol": seg.view(int(self.off[base + S.COL_SYMBOL]), np.int32, cap),
                "venue": seg.view(int(self.off[base + S.COL_VENUE]), np.int32, cap),
            }
            for c, name in enumerate(T.VALUE_COLUMNS[t]):
                cols[name] = seg.view(int(self.off[base + S.COL_VALUES + c]), np.float64, cap)
            cols["seq"] = seg.view(int(self.off[base + S.COL_SEQ]), np.int64, cap)
            self.cols.append(cols)
            self.prev.append(seg.view(int(self.off[base + S.COL_PREV]), np.int64, cap))
            self.blk_min.append(seg.view(int(self.off[base + S.COL_BLK_MIN]), np.int64, nblk))
            self.blk_max.append(seg.view(int(self.off[base + S.COL_BLK_MAX]), np.int64, nblk))
        self._snap = np.zeros(S.COMMIT_SLOT_WORDS, np.int64)

    @classmethod
    def create(cls, prefix: str, shard: int, nshards: int, capacity: int,
               max_symbols: int = S.DEFAULT_MAX_SYMBOLS,
               max_venues: int = S.DEFAULT_MAX_VENUES) -> "ShardData":
        """Create and initialise the shard segment (supervisor only)."""
        size = S.segment_size(capacity, max_symbols, max_venues)
        seg = Segment.create(segment_name(prefix, shard, "data"), size, S.MAGIC, S.HEADER_BYTES)
        seg.i32[S.SHARD_I32] = shard
        seg.i32[S.NSHARDS_I32] = nshards
        seg.i64[S.CAPACITY_I64] = capacity
        seg.i32[S.MAX_SYMBOLS_I32] = max_symbols
        seg.i32[S.MAX_VENUES_I32] = max_venues
        seg.i64[S.BLOCK_ROWS_I64] = S.BLOCK_ROWS
        seg.i32[S.N_VENUES_I32] = 1  # venue id 0 is the empty venue
        self = cls(seg)
        self.last[0][:] = -1
        self.last[1][:] = -1
        seg.publish_version(S.VERSION_MAJOR, S.VERSION_MINOR)
        return self

    @classmethod
    def attach(cls, prefix: str, shard: int, readonly: bool = True) -> "ShardData":
        """Map an existing shard segment (read-only for readers)."""
        seg = Segment.attach(segment_name(prefix, shard, "data"), S.MAGIC, S.VERSION_MAJOR,
                             readonly=readonly, what="shard segment")
        return cls(seg)

    def snapshot(self) -> np.ndarray:
        """The committed snapshot (COMMIT_* words): counts, next seq, inbound position."""
        ingest.snapshot(self.hdr64, self._snap)
        return self._snap

    def committed(self, table: int) -> int:
        """Rows of ``table`` visible to readers."""
        return int(self.snapshot()[table])

    def n_symbols(self) -> int:
        return int(self.hdr32[S.N_SYMBOLS_I32])

    def n_venues(self) -> int:
        return int(self.hdr32[S.N_VENUES_I32])

    def close(self) -> None:
        self.cols = []
        self.prev = self.blk_min = self.blk_max = []
        self.sym_names = self.ven_names = self.last = None  # type: ignore[assignment]
        self.hdr64 = self.hdr32 = None  # type: ignore[assignment]
        self.seg.close()


class InboundRing:
    """The inbound ring segment with the views producer and writer kernels take."""

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.hdr64 = seg.i64
        self.hdr32 = seg.i32
        self.capacity = int(self.hdr64[L.CAPACITY_I64])
        self.data8 = seg.view(L.DATA_OFFSET, np.uint8, self.capacity)
        self.data32 = self.data8.view(np.int32)

    @classmethod
    def create(cls, prefix: str, shard: int, capacity: int = L.DEFAULT_CAPACITY) -> "InboundRing":
        """Create the ring (supervisor only); it starts refusing until a writer accepts."""
        seg = Segment.create(segment_name(prefix, shard, "in"), L.segment_size(capacity),
                             L.MAGIC, L.HEADER_BYTES)
        seg.i64[L.CAPACITY_I64] = capacity
        seg.i64[L.MAX_RECORD_I64] = capacity // 4
        seg.i32[L.ACCEPTING_I32] = 0
        seg.i32[L.REFUSE_REASON_I32] = L.REFUSE_STARTING
        seg.publish_version(L.VERSION_MAJOR, L.VERSION_MINOR)
        return cls(seg)

    @classmethod
    def attach(cls, prefix: str, shard: int) -> "InboundRing":
        """Map the ring read-write (producers and the writer both write it)."""
        seg = Segment.attach(segment_name(prefix, shard, "in"), L.MAGIC, L.VERSION_MAJOR,
                             readonly=False, what="inbound ring")
        return cls(seg)

    @property
    def max_record(self) -> int:
        return int(self.hdr64[L.MAX_RECORD_I64])

    def accepting(self) -> tuple[bool, str]:
        """Whether the writer consumes, and if not, why."""
        if int(self.hdr32[L.ACCEPTING_I32]) == 1:
            return True, ""
        reason = int(self.hdr32[L.REFUSE_REASON_I32])
        return False, L.REFUSE_NAMES[reason] if 0 <= reason < len(L.REFUSE_NAMES) else "unknown"

    def close(self) -> None:
        self.hdr64 = self.hdr32 = self.data8 = self.data32 = None  # type: ignore[assignment]
        self.seg.close()


class Control:
    """The shard control segment: counters (C_*) and reject counters."""

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.counters = seg.view(C.COUNTERS_OFFSET, np.int64, C.N_COUNTERS)
        self.rejects = seg.view(C.REJECTS_OFFSET, np.int64, T.N_REJECT_REASONS)

    @classmethod
    def create(cls, prefix: str, shard: int) -> "Control":
        seg = Segment.create(segment_name(prefix, shard, "ctl"), C.SEGMENT_BYTES, C.MAGIC,
                             C.HEADER_BYTES)
        seg.publish_version(C.VERSION_MAJOR, C.VERSION_MINOR)
        return cls(seg)

    @classmethod
    def attach(cls, prefix: str, shard: int, readonly: bool = True) -> "Control":
        seg = Segment.attach(segment_name(prefix, shard, "ctl"), C.MAGIC, C.VERSION_MAJOR,
                             readonly=readonly, what="control segment")
        return cls(seg)

    def close(self) -> None:
        self.counters = self.rejects = None  # type: ignore[assignment]
        self.seg.close()


__all__ = ["ShardData", "InboundRing", "Control", "segment_name", "shard_bytes", "common"]
