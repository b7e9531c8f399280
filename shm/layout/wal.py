"""Write-ahead log file layout: one append-only file per shard, a file header, then records.

All integers are little-endian. Every record starts on an 8-byte boundary (the file header is
32 bytes and every record is padded to a multiple of 8), so `first_seq` is always aligned and a
scanner can look for the next record header at 8-byte steps after damage.

File header (FILE_HEADER_SIZE = 32 bytes, at offset 0):

     0               4       6       8               12              16
     +---------------+-------+-------+---------------+---------------+
     | FILE_MAGIC    |version|hdr_len| shard         | creator_pid   |
     +---------------+-------+-------+---------------+---------------+
    16                               24              28              32
     +-------------------------------+---------------+---------------+
     | created_ns (i64, wall ns)     | reserved (0)  | header_crc    |
     +-------------------------------+---------------+---------------+

    header_crc = zlib.crc32(bytes[0:28])

Record (RECORD_HEADER_SIZE = 48 bytes, then the payload, then zero padding to 8 bytes):

     0               4       6       8               12              16
     +---------------+-------+-------+---------------+---------------+
     | RECORD_MAGIC  |version| type  | shard         | flags         |
     +---------------+-------+-------+---------------+---------------+
    16                               24              28              32
     +-------------------------------+---------------+---------------+
     | first_seq (i64)               | row_count     | payload_len   |
     +-------------------------------+---------------+---------------+
    32              36              40              44              48
     +---------------+---------------+---------------+---------------+
     | raw_len       | payload_crc   | seq_span      | header_crc    |
     +---------------+---------------+---------------+---------------+
    48
     +---------------------------------------------------------------+
     | payload: payload_len bytes (LZ4 block if flags & FLAG_LZ4)    |
     | zero padding up to the next multiple of 8                     |
     +---------------------------------------------------------------+

    payload_crc = zlib.crc32(payload as stored on disk)
    header_crc  = zlib.crc32(header bytes[0:44])   -- covers payload_crc, so the record is
                                                      covered end to end

Two checksums rather than one: the header checksum makes `payload_len` trustworthy before the
payload is read, so a scanner can tell "the record runs past the end of the file" (a torn
append) from "the header is garbage" (corruption) instead of guessing.

Record types and their payloads:

    REC_TRADES  first_seq = seq of row 0, row_count = n, seq_span = seq of row n-1 minus
                first_seq; columns back to back:
                ts i64[n] | symbol_id i32[n] | venue_id i32[n] | price f64[n] | size f64[n] |
                seq i64[n]
    REC_QUOTES  as trades with: ts i64[n] | symbol_id i32[n] | venue_id i32[n] |
                bid f64[n] | ask f64[n] | bid_size f64[n] | ask_size f64[n] | seq i64[n]
    REC_SYMBOL  row_count = 1, first_seq = NO_SEQ; payload: id i32 | name 16 bytes ASCII,
    REC_VENUE   NUL-padded (NAME_PAYLOAD_SIZE = 20 bytes)
    REC_ROLL    the log starts after a roll: every row with a smaller seq is in history;
                first_seq = the next seq, row_count = 0, no payload. Only as the first
                record of a file (a writer starts a new file at each roll, with REC_ROLL and
                then the name records of every symbol and venue it knows)

seq is per shard and shared by both tables, so one writer pass that took trades and quotes
interleaved gives a trades record and a quotes record whose seq ranges interleave: each record
carries its rows' seq column, strictly increasing, and within a table the records' seqs
increase strictly in file order. Name records and seq_span = 0 carry no rows.

Version history: 1 had no seq column (rows of a record had contiguous seqs); 2 adds it and
turns the reserved header word into seq_span.
"""

from __future__ import annotations

import struct

import numpy as np

from shm.errors import CorruptRecord, LayoutMismatch

# "WYWL" and "WYWR" read as ASCII in a hex dump of the little-endian words.
FILE_MAGIC = 0x4C575957
RECORD_MAGIC = 0x52575957
VERSION = 2
ALIGNMENT = 8

# --- file header: each offset follows from the previous field ----------------------------------
FH_MAGIC_OFFSET = 0
FH_VERSION_OFFSET = FH_MAGIC_OFFSET + 4
FH_HEADER_LEN_OFFSET = FH_VERSION_OFFSET + 2
FH_SHARD_OFFSET = FH_HEADER_LEN_OFFSET + 2
FH_CREATOR_PID_OFFSET = FH_SHARD_OFFSET + 4
FH_CREATED_NS_OFFSET = FH_CREATOR_PID_OFFSET + 4
FH_RESERVED_OFFSET = FH_CREATED_NS_OFFSET + 8
FH_CRC_OFFSET = FH_RESERVED_OFFSET + 4
FILE_HEADER_SIZE = FH_CRC_OFFSET + 4
FILE_HEADER_CRC_SPAN = FH_CRC_OFFSET  # the checksum covers every byte before it

FILE_HEADER_STRUCT = struct.Struct("<IHHIIqII")
FILE_HEADER_DTYPE = np.dtype({
    "names": ["magic", "version", "header_len", "shard", "creator_pid", "created_ns",
              "reserved", "header_crc"],
    "formats": ["<u4", "<u2", "<u2", "<u4", "<u4", "<i8", "<u4", "<u4"],
    "offsets": [FH_MAGIC_OFFSET, FH_VERSION_OFFSET, FH_HEADER_LEN_OFFSET, FH_SHARD_OFFSET,
                FH_CREATOR_PID_OFFSET, FH_CREATED_NS_OFFSET, FH_RESERVED_OFFSET, FH_CRC_OFFSET],
    "itemsize": FILE_HEADER_SIZE,
})

# --- record header ------------------------------------------------------------------------------
RH_MAGIC_OFFSET = 0
RH_VERSION_OFFSET = RH_MAGIC_OFFSET + 4
RH_TYPE_OFFSET = RH_VERSION_OFFSET + 2
RH_SHARD_OFFSET = RH_TYPE_OFFSET + 2
RH_FLAGS_OFFSET = RH_SHARD_OFFSET + 4
RH_FIRST_SEQ_OFFSET = RH_FLAGS_OFFSET + 4
RH_ROW_COUNT_OFFSET = RH_FIRST_SEQ_OFFSET + 8
RH_PAYLOAD_LEN_OFFSET = RH_ROW_COUNT_OFFSET + 4
RH_RAW_LEN_OFFSET = RH_PAYLOAD_LEN_OFFSET + 4
RH_PAYLOAD_CRC_OFFSET = RH_RAW_LEN_OFFSET + 4
RH_SEQ_SPAN_OFFSET = RH_PAYLOAD_CRC_OFFSET + 4
RH_HEADER_CRC_OFFSET = RH_SEQ_SPAN_OFFSET + 4
RECORD_HEADER_SIZE = RH_HEADER_CRC_OFFSET + 4
RECORD_HEADER_CRC_SPAN = RH_HEADER_CRC_OFFSET

RECORD_HEADER_STRUCT = struct.Struct("<IHHIIqIIIIII")
RECORD_HEADER_DTYPE = np.dtype({
    "names": ["magic", "version", "type", "shard", "flags", "first_seq", "row_count",
              "payload_len", "raw_len", "payload_crc", "seq_span", "header_crc"],
    "formats": ["<u4", "<u2", "<u2", "<u4", "<u4", "<i8", "<u4", "<u4", "<u4", "<u4", "<u4",
                "<u4"],
    "offsets": [RH_MAGIC_OFFSET, RH_VERSION_OFFSET, RH_TYPE_OFFSET, RH_SHARD_OFFSET,
                RH_FLAGS_OFFSET, RH_FIRST_SEQ_OFFSET, RH_ROW_COUNT_OFFSET,
                RH_PAYLOAD_LEN_OFFSET, RH_RAW_LEN_OFFSET, RH_PAYLOAD_CRC_OFFSET,
                RH_SEQ_SPAN_OFFSET, RH_HEADER_CRC_OFFSET],
    "itemsize": RECORD_HEADER_SIZE,
})

# --- record types and flags ---------------------------------------------------------------------
REC_TRADES = 1
REC_QUOTES = 2
REC_SYMBOL = 3
REC_VENUE = 4
REC_ROLL = 5
RECORD_TYPES = frozenset({REC_TRADES, REC_QUOTES, REC_SYMBOL, REC_VENUE, REC_ROLL})
BATCH_TYPES = frozenset({REC_TRADES, REC_QUOTES})
NAME_TYPES = frozenset({REC_SYMBOL, REC_VENUE})

FLAG_LZ4 = 1 << 0
KNOWN_FLAGS = FLAG_LZ4

NO_SEQ = -1  # first_seq of records that carry no rows

# --- payloads -----------------------------------------------------------------------------------
NAME_MAX = 16
NAME_PAYLOAD_STRUCT = struct.Struct(f"<i{NAME_MAX}s")
NAME_PAYLOAD_SIZE = NAME_PAYLOAD_STRUCT.size

TABLE_NAMES = {REC_TRADES: "trades", REC_QUOTES: "quotes"}
TABLE_COLUMNS: dict[int, tuple[tuple[str, np.dtype], ...]] = {
    REC_TRADES: (
        ("ts", np.dtype("<i8")),
        ("symbol_id", np.dtype("<i4")),
        ("venue_id", np.dtype("<i4")),
        ("price", np.dtype("<f8")),
        ("size", np.dtype("<f8")),
        ("seq", np.dtype("<i8")),
    ),
    REC_QUOTES: (
        ("ts", np.dtype("<i8")),
        ("symbol_id", np.dtype("<i4")),
        ("venue_id", np.dtype("<i4")),
        ("bid", np.dtype("<f8")),
        ("ask", np.dtype("<f8")),
        ("bid_size", np.dtype("<f8")),
        ("ask_size", np.dtype("<f8")),
        ("seq", np.dtype("<i8")),
    ),
}
ROW_SIZE = {t: sum(dt.itemsize for _, dt in cols) for t, cols in TABLE_COLUMNS.items()}

# u32 length fields; stay well below so a batch never approaches the field's range.
MAX_PAYLOAD = 1 << 30


def padded(n: int) -> int:
    """`n` rounded up to the record alignment."""
    return (n + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


def check_file_header(path: str, magic: int, version: int, header_len: int, shard: int,
                      expected_shard: int | None) -> None:
    """Raise LayoutMismatch if a WAL file header belongs to another format, version or shard."""
    if magic != FILE_MAGIC:
        raise LayoutMismatch(
            f"{path}: not a wayy WAL (magic 0x{magic:08x}, expected 0x{FILE_MAGIC:08x})")
    if version != VERSION:
        raise LayoutMismatch(
            f"{path}: WAL format version {version}, this code reads version {VERSION}")
    if header_len != FILE_HEADER_SIZE:
        raise LayoutMismatch(
            f"{path}: WAL file header is {header_len} bytes, expected {FILE_HEADER_SIZE}")
    if expected_shard is not None and shard != expected_shard:
        raise LayoutMismatch(f"{path}: WAL belongs to shard {shard}, expected shard "
                             f"{expected_shard}")


def check_record_lengths(rtype: int, flags: int, row_count: int, payload_len: int,
                         raw_len: int, seq_span: int = 0) -> str | None:
    """Return why a record's type/length fields are inconsistent, or None when they agree.

    Returns a reason instead of raising because the scanner turns it into a damage report.
    """
    if rtype not in RECORD_TYPES:
        return f"unknown record type {rtype}"
    if flags & ~KNOWN_FLAGS:
        return f"unknown flags 0x{flags:x}"
    if raw_len > MAX_PAYLOAD or payload_len > MAX_PAYLOAD:
        return f"impossible length (payload {payload_len}, raw {raw_len})"
    if flags & FLAG_LZ4:
        # Compression is only kept when it saves space, and an empty LZ4 block is not stored.
        if not 0 < payload_len < raw_len:
            return f"LZ4 payload of {payload_len} bytes for {raw_len} raw bytes"
    elif payload_len != raw_len:
        return f"raw payload of {payload_len} bytes but raw_len {raw_len}"
    if rtype in BATCH_TYPES:
        if row_count == 0 or raw_len != row_count * ROW_SIZE[rtype]:
            return (f"{TABLE_NAMES[rtype]} batch of {row_count} rows needs "
                    f"{row_count * ROW_SIZE[rtype]} raw bytes, header says {raw_len}")
        if seq_span < row_count - 1:
            return f"{row_count} rows cannot have strictly increasing seqs spanning {seq_span}"
    elif seq_span != 0:
        return f"record type {rtype} carries no rows but seq_span {seq_span}"
    elif rtype in NAME_TYPES:
        if row_count != 1 or raw_len != NAME_PAYLOAD_SIZE:
            return f"name record with row_count {row_count}, raw_len {raw_len}"
    elif raw_len != 0 or row_count != 0:  # REC_ROLL
        return f"roll record with {raw_len} payload bytes, {row_count} rows"
    return None


def check_file_header_crc(path: str, stored: int, computed: int) -> None:
    """Raise CorruptRecord if the file header checksum does not match."""
    if stored != computed:
        raise CorruptRecord(f"{path}: WAL file header checksum 0x{stored:08x}, computed "
                            f"0x{computed:08x}")


assert FILE_HEADER_STRUCT.size == FILE_HEADER_SIZE == FILE_HEADER_DTYPE.itemsize == 32
assert RECORD_HEADER_STRUCT.size == RECORD_HEADER_SIZE == RECORD_HEADER_DTYPE.itemsize == 48
assert RH_FIRST_SEQ_OFFSET % 8 == 0 and FILE_HEADER_SIZE % ALIGNMENT == 0
assert RECORD_HEADER_SIZE % ALIGNMENT == 0
