"""Compiled loops over a write-ahead log's bytes: CRC-32, record scanning, LZ4 and decoding.

A WAL written at a few thousand ticks a second holds hundreds of thousands of small records;
a Python loop costs tens of microseconds per record, which made recovery slower than the
ingest it replays. These kernels do the per-record work natively; `shm.wal` keeps the Python
loop only to describe damage once the fast path stops at it.

Everything here checks bounds against the real buffer sizes: a hostile file can make a kernel
stop early or report an error, never read or write outside its arrays.
"""

from __future__ import annotations

import platform

import numba
import numpy as np

from shm.atomics import _syscall4, as_pointer
from shm.layout import wal as L

_SYS_WRITE = {"x86_64": 1, "amd64": 1, "aarch64": 64, "arm64": 64}.get(
    platform.machine().lower(), 1)

# --- CRC-32 (zlib's: reflected polynomial 0xEDB88320), slicing by 8 -------------------------


def _crc_tables() -> np.ndarray:
    t = np.zeros((8, 256), np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        t[0, i] = c
    for i in range(256):
        c = int(t[0, i])
        for k in range(1, 8):
            c = int(t[0, c & 0xFF]) ^ (c >> 8)
            t[k, i] = c
    return t


CRC_TABLES = _crc_tables()


@numba.njit(cache=True, nogil=True)
def crc32(buf, start, n):
    """zlib.crc32(buf[start:start + n]); ``start`` must be a multiple of 8 in ``buf``."""
    t = CRC_TABLES
    crc = np.uint32(0xFFFFFFFF)
    words = n // 8
    if words:
        w64 = buf[start : start + 8 * words].view(np.uint64)
        for i in range(words):
            w = w64[i]
            one = np.uint32(w & np.uint64(0xFFFFFFFF)) ^ crc
            two = np.uint32(w >> np.uint64(32))
            crc = (t[7, one & 0xFF] ^ t[6, (one >> 8) & 0xFF] ^ t[5, (one >> 16) & 0xFF]
                   ^ t[4, one >> 24] ^ t[3, two & 0xFF] ^ t[2, (two >> 8) & 0xFF]
                   ^ t[1, (two >> 16) & 0xFF] ^ t[0, two >> 24])
    for i in range(start + 8 * words, start + n):
        crc = t[0, (crc ^ np.uint32(buf[i])) & 0xFF] ^ (crc >> 8)
    return crc ^ np.uint32(0xFFFFFFFF)


# --- LZ4 block format ---------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def lz4_decompress(src, s0, slen, dst, dlen):
    """Decode the LZ4 block src[s0:s0 + slen] into dst[:dlen]; returns bytes written, or -1
    when the block is malformed or would write past ``dlen``."""
    ip = s0
    iend = s0 + slen
    if iend > src.shape[0] or dlen > dst.shape[0]:
        return -1
    op = 0
    while ip < iend:
        token = np.int64(src[ip])
        ip += 1
        lit = token >> 4
        if lit == 15:
            while True:
                if ip >= iend:
                    return -1
                b = np.int64(src[ip])
                ip += 1
                lit += b
                if b != 255:
                    break
        if ip + lit > iend or op + lit > dlen:
            return -1
        for k in range(lit):  # explicit loops: a slice copy checks for overlap and may
            dst[op + k] = src[ip + k]  # allocate a temporary, per sequence
        ip += lit
        op += lit
        if ip >= iend:
            break  # the last sequence carries literals only
        if ip + 2 > iend:
            return -1
        offset = np.int64(src[ip]) | (np.int64(src[ip + 1]) << 8)
        ip += 2
        if offset == 0 or offset > op:
            return -1
        ml = token & 15
        if ml == 15:
            while True:
                if ip >= iend:
                    return -1
                b = np.int64(src[ip])
                ip += 1
                ml += b
                if b != 255:
                    break
        ml += 4
        if op + ml > dlen:
            return -1
        m = op - offset
        for k in range(ml):  # forward, byte by byte: overlap repeats the last `offset` bytes
            dst[op + k] = dst[m + k]
        op += ml
    return op


# --- scanning -----------------------------------------------------------------------------------

# columns of the int64 record table the scanner fills (one row per good record)
R_OFFSET = 0
R_TYPE = 1
R_FLAGS = 2
R_FIRST_SEQ = 3
R_ROW_COUNT = 4
R_PAYLOAD_LEN = 5
R_RAW_LEN = 6
R_SEQ_SPAN = 7
R_WORDS = 8

# scanner state words (in and out)
SC_POS = 0  # byte offset of the next record
SC_EXPECTED = 1  # next seq of the log (-1: none yet)
SC_ROLL = 2  # roll_seq
SC_RECORDS = 3  # good records so far (a roll record must be the first)
SC_LAST = 4  # SC_LAST + record type: last seq of that table (-1: none)
SC_WORDS = 12

_ROW_SIZE = np.zeros(8, np.int64)
for _t, _n in L.ROW_SIZE.items():
    _ROW_SIZE[_t] = _n


@numba.njit(cache=True, nogil=True, inline="always")
def _u32(b, o):
    return (np.int64(b[o]) | (np.int64(b[o + 1]) << 8) | (np.int64(b[o + 2]) << 16)
            | (np.int64(b[o + 3]) << 24))


@numba.njit(cache=True, nogil=True, inline="always")
def _u16(b, o):
    return np.int64(b[o]) | (np.int64(b[o + 1]) << 8)


@numba.njit(cache=True, nogil=True, inline="always")
def _i64(b, o):
    return np.int64(_u32(b, o) | (_u32(b, o + 4) << 32))


@numba.njit(cache=True, nogil=True)
def scan_records(buf, size, shard, state, out):
    """Validate records from state[SC_POS] on, the way `shm.wal` does, filling ``out`` with
    one row per good record; stop at the first record that fails any check (the caller
    describes it), at the end of the data, or when ``out`` is full. Returns rows filled."""
    h = L.RECORD_HEADER_SIZE
    pos = state[SC_POS]
    n = 0
    while pos < size and n < out.shape[0]:
        if size - pos < h:
            break
        if _u32(buf, pos) != L.RECORD_MAGIC:
            break
        if crc32(buf, pos, L.RECORD_HEADER_CRC_SPAN) != _u32(buf, pos + L.RH_HEADER_CRC_OFFSET):
            break
        version = _u16(buf, pos + L.RH_VERSION_OFFSET)
        rtype = _u16(buf, pos + L.RH_TYPE_OFFSET)
        if version != L.VERSION or _u32(buf, pos + L.RH_SHARD_OFFSET) != shard:
            break
        flags = _u32(buf, pos + L.RH_FLAGS_OFFSET)
        first_seq = _i64(buf, pos + L.RH_FIRST_SEQ_OFFSET)
        row_count = _u32(buf, pos + L.RH_ROW_COUNT_OFFSET)
        payload_len = _u32(buf, pos + L.RH_PAYLOAD_LEN_OFFSET)
        raw_len = _u32(buf, pos + L.RH_RAW_LEN_OFFSET)
        seq_span = _u32(buf, pos + L.RH_SEQ_SPAN_OFFSET)
        # check_record_lengths
        if rtype < L.REC_TRADES or rtype > L.REC_ROLL or (flags & ~L.KNOWN_FLAGS) != 0:
            break
        if raw_len > L.MAX_PAYLOAD or payload_len > L.MAX_PAYLOAD:
            break
        if flags & L.FLAG_LZ4:
            if not (0 < payload_len < raw_len):
                break
        elif payload_len != raw_len:
            break
        if rtype == L.REC_TRADES or rtype == L.REC_QUOTES:
            if row_count == 0 or raw_len != row_count * _ROW_SIZE[rtype] \
                    or seq_span < row_count - 1:
                break
        elif rtype == L.REC_SYMBOL or rtype == L.REC_VENUE:
            if row_count != 1 or raw_len != L.NAME_PAYLOAD_SIZE or seq_span != 0:
                break
        elif raw_len != 0 or row_count != 0 or seq_span != 0:
            break
        end = pos + h + ((payload_len + L.ALIGNMENT - 1) & ~(L.ALIGNMENT - 1))
        if end > size:
            break
        if crc32(buf, pos + h, payload_len) != _u32(buf, pos + L.RH_PAYLOAD_CRC_OFFSET):
            break
        bad_pad = False
        for i in range(pos + h + payload_len, end):
            if buf[i] != 0:
                bad_pad = True
        if bad_pad:
            break
        if rtype == L.REC_TRADES or rtype == L.REC_QUOTES:
            if first_seq <= state[SC_LAST + rtype] or first_seq < 0:
                break
            state[SC_LAST + rtype] = first_seq + seq_span
            if first_seq + seq_span + 1 > state[SC_EXPECTED]:
                state[SC_EXPECTED] = first_seq + seq_span + 1
        elif rtype == L.REC_ROLL:
            if state[SC_RECORDS] > 0 or first_seq < 0:
                break
            state[SC_ROLL] = first_seq
            state[SC_EXPECTED] = first_seq
            state[SC_LAST + L.REC_TRADES] = first_seq - 1
            state[SC_LAST + L.REC_QUOTES] = first_seq - 1
        r = out[n]
        r[R_OFFSET] = pos
        r[R_TYPE] = rtype
        r[R_FLAGS] = flags
        r[R_FIRST_SEQ] = first_seq
        r[R_ROW_COUNT] = row_count
        r[R_PAYLOAD_LEN] = payload_len
        r[R_RAW_LEN] = raw_len
        r[R_SEQ_SPAN] = seq_span
        n += 1
        state[SC_RECORDS] += 1
        pos = end
    state[SC_POS] = pos
    return n


# --- decoding -----------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def decode_table(buf, offsets, flags, counts, payload_lens, raw_lens, cols, itemsizes, row0,
                 capacity, scratch):
    """Copy the rows of the given batch records (one table, file order) into ``cols`` (one
    uint8 view per column, in the record's column order) from row ``row0`` on. LZ4 payloads
    are decoded through ``scratch``. Returns rows written, or -(i + 1) when record i does
    not decode (bad LZ4) or would pass ``capacity``."""
    h = L.RECORD_HEADER_SIZE
    row = row0
    ncols = itemsizes.shape[0]
    for i in range(offsets.shape[0]):
        n = counts[i]
        if row + n > capacity:
            return -(i + 1)
        p0 = offsets[i] + h
        raw = raw_lens[i]
        if flags[i] & L.FLAG_LZ4:
            if raw > scratch.shape[0] or lz4_decompress(buf, p0, payload_lens[i], scratch,
                                                         raw) != raw:
                return -(i + 1)
            src = scratch
            pos = 0
        else:
            if p0 + raw > buf.shape[0]:
                return -(i + 1)
            src = buf
            pos = p0
        for c in range(ncols):
            isz = itemsizes[c]
            nb = n * isz
            cols[c][row * isz : row * isz + nb] = src[pos : pos + nb]
            pos += nb
        row += n
    return row - row0


@numba.njit(cache=True, nogil=True, inline="always")
def _put32(b, o, v):
    for k in range(4):
        b[o + k] = np.uint8((v >> (8 * k)) & 0xFF)


@numba.njit(cache=True, nogil=True)
def encode_record(out, rtype, shard, addrs, itemsizes, lo, n, first_seq, seq_span):
    """Assemble one raw (uncompressed) batch record of rows lo .. lo+n-1 of the columns at
    ``addrs`` (base addresses of whole columns, in the record's column order, ``itemsizes``
    their widths) into ``out``; returns its length (header, payload, padding), or -1 if
    ``out`` is too small. The writer's small-pass path: one call instead of a Python
    assembly per column. The columns are the caller's (the shard segment it writes), not
    file data: their addresses are trusted."""
    h = L.RECORD_HEADER_SIZE
    raw = 0
    for c in range(itemsizes.shape[0]):
        raw += n * itemsizes[c]
    total = h + ((raw + L.ALIGNMENT - 1) & ~(L.ALIGNMENT - 1))
    if total > out.shape[0]:
        return -1
    pos = h
    for c in range(itemsizes.shape[0]):
        isz = itemsizes[c]
        src = numba.carray(as_pointer(addrs[c] + lo * isz), n * isz, np.uint8)
        out[pos : pos + n * isz] = src
        pos += n * isz
    for i in range(pos, total):
        out[i] = 0
    _put32(out, L.RH_MAGIC_OFFSET, L.RECORD_MAGIC)
    out[L.RH_VERSION_OFFSET] = L.VERSION & 0xFF
    out[L.RH_VERSION_OFFSET + 1] = (L.VERSION >> 8) & 0xFF
    out[L.RH_TYPE_OFFSET] = rtype & 0xFF
    out[L.RH_TYPE_OFFSET + 1] = (rtype >> 8) & 0xFF
    _put32(out, L.RH_SHARD_OFFSET, shard)
    _put32(out, L.RH_FLAGS_OFFSET, 0)
    _put32(out, L.RH_FIRST_SEQ_OFFSET, first_seq & 0xFFFFFFFF)
    _put32(out, L.RH_FIRST_SEQ_OFFSET + 4, (first_seq >> 32) & 0xFFFFFFFF)
    _put32(out, L.RH_ROW_COUNT_OFFSET, n)
    _put32(out, L.RH_PAYLOAD_LEN_OFFSET, raw)
    _put32(out, L.RH_RAW_LEN_OFFSET, raw)
    _put32(out, L.RH_PAYLOAD_CRC_OFFSET, np.int64(crc32(out, h, raw)))
    _put32(out, L.RH_SEQ_SPAN_OFFSET, seq_span)
    _put32(out, L.RH_HEADER_CRC_OFFSET, np.int64(crc32(out, 0, L.RECORD_HEADER_CRC_SPAN)))
    return total


@numba.njit(cache=True, nogil=True)
def write_record(fd, out, rtype, shard, addrs, itemsizes, lo, n, first_seq, seq_span):
    """``encode_record``, then write() the record to ``fd`` until all of it is written or a
    call writes nothing (an error: the caller's own write() of the rest reports it, with
    its errno). Returns the bytes written, or -1 if ``out`` is too small. One call for
    what took a Python write loop and a kernel call before."""
    total = encode_record(out, rtype, shard, addrs, itemsizes, lo, n, first_seq, seq_span)
    if total < 0:
        return -1
    return write_all(fd, out.ctypes.data, total)


@numba.njit(cache=True, nogil=True)
def write_all(fd, addr, total):
    """write() ``total`` bytes at ``addr`` to ``fd`` until all are written or a call writes
    nothing (an error: the caller's own write() of the rest reports it, with its errno).
    Returns the bytes written."""
    done = 0
    while done < total:
        r = _syscall4(_SYS_WRITE, fd, addr + done, total - done, 0)
        if r <= 0:
            break
        done += r
    return done


def warm_up() -> None:
    """Compile (or load from cache) every kernel here, for both tables."""
    rw = np.zeros(64, np.uint8)
    ro = np.frombuffer(bytes(64), np.uint8)  # a mapped file is read-only: its own signature
    for buf in (rw, ro):
        crc32(buf, 0, 9)
        lz4_decompress(buf, 0, 0, rw, 0)
        state = np.full(SC_WORDS, -1, np.int64)
        state[SC_POS] = 0
        state[SC_RECORDS] = 0
        state[SC_ROLL] = 0
        scan_records(buf, 0, 0, state, np.zeros((1, R_WORDS), np.int64))
        z = np.zeros(0, np.int64)
        for ncols in (6, 8):
            cols = tuple(np.zeros(8, np.uint8) for _ in range(ncols))
            decode_table(buf, z, z, z, z, z, cols, np.ones(ncols, np.int64), 0, 0, rw)
    cols = np.zeros(64, np.uint8)
    addrs = np.full(8, cols.ctypes.data, np.int64)
    write_record(-1, np.zeros(256, np.uint8), 1, 0, addrs, np.ones(8, np.int64), 0, 1, 0, 0)
