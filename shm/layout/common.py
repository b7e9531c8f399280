"""The header prefix every wayy shared-memory segment starts with.

    0        8        12       16       24       32       40              64
    +--------+--------+--------+--------+--------+--------+---------------+
    | magic  |version |hdr size| owner  | start  |segment |  (layout's    |
    |  u64   |  u32   |  u32   | pid i64| ns i64 |size i64|   own fields) |
    +--------+--------+--------+--------+--------+--------+---------------+

The creator fills everything, then writes ``version`` last with a release store: a reader that
sees a non-zero version sees a fully initialised header ("ready" flag). ``version`` packs
major << 16 | minor; an attaching process refuses another major version.
"""

from __future__ import annotations

MAGIC_OFFSET = 0
MAGIC_SIZE = 8
VERSION_OFFSET = MAGIC_OFFSET + MAGIC_SIZE
VERSION_SIZE = 4
HEADER_SIZE_OFFSET = VERSION_OFFSET + VERSION_SIZE
HEADER_SIZE_SIZE = 4
OWNER_PID_OFFSET = HEADER_SIZE_OFFSET + HEADER_SIZE_SIZE
OWNER_PID_SIZE = 8
START_NS_OFFSET = OWNER_PID_OFFSET + OWNER_PID_SIZE
START_NS_SIZE = 8
SEGMENT_SIZE_OFFSET = START_NS_OFFSET + START_NS_SIZE
SEGMENT_SIZE_SIZE = 8
COMMON_END = SEGMENT_SIZE_OFFSET + SEGMENT_SIZE_SIZE  # 40

CACHE_LINE = 64
PAGE = 4096

# int32 element index of the version word, for store_release / load_acquire on an int32 view.
VERSION_INDEX_I32 = VERSION_OFFSET // 4


def pack_version(major: int, minor: int) -> int:
    """Pack a (major, minor) version into the u32 header word."""
    return (major << 16) | minor


def unpack_version(word: int) -> tuple[int, int]:
    """Split the u32 header version word into (major, minor)."""
    return (word >> 16) & 0xFFFF, word & 0xFFFF


def align(n: int, to: int = CACHE_LINE) -> int:
    """Round ``n`` up to a multiple of ``to`` (a power of two)."""
    return (n + to - 1) & ~(to - 1)
