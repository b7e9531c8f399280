"""WAL file format: round trips, LZ4 choice, torn tails, mid-file corruption, header checks,
failed writes on a full or size-limited file, fsync policy selection, fork safety."""

from __future__ import annotations

import errno
import os
import resource
import signal
import struct
import time
import zlib

import numpy as np
import pytest

from shm.errors import (CorruptRecord, LayoutMismatch, UsedAfterFork, WalLocked,
                        WalWriteError)
from shm.layout import wal as L
from shm.wal import WalWriter, column_addresses, decode, scan, truncate_to


def trades(n: int, compressible: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if compressible:
        return {
            "ts": 1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 1000,
            "symbol_id": (np.arange(n) % 4).astype(np.int32),
            "venue_id": np.zeros(n, dtype=np.int32),
            "price": np.full(n, 101.25),
            "size": np.full(n, 100.0),
        }
    return {
        "ts": rng.integers(0, 2**62, n, dtype=np.int64),
        "symbol_id": rng.integers(0, 2**31 - 1, n, dtype=np.int32),
        "venue_id": rng.integers(0, 2**31 - 1, n, dtype=np.int32),
        "price": rng.random(n),
        "size": rng.random(n),
    }


def quotes(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    bid = 100 + rng.random(n)
    return {
        "ts": 1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 500,
        "symbol_id": rng.integers(0, 8, n).astype(np.int32),
        "venue_id": rng.integers(0, 3, n).astype(np.int32),
        "bid": bid, "ask": bid + 0.01,
        "bid_size": rng.random(n), "ask_size": rng.random(n),
    }


def concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def assert_columns(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name, arr in want.items():
        np.testing.assert_array_equal(got[name], arr, err_msg=name)


def small_wal(path, shard: int = 3) -> list[int]:
    """A name record then four small batches; returns the record offsets (writer ends)."""
    ends = []
    with WalWriter(path, shard, fsync="off") as w:
        ends.append(w.end)
        w.append_symbol(0, "AAPL")
        seq = 0
        for i, n in enumerate((3, 2, 4, 3)):
            ends.append(w.end)
            w.append_batch(L.REC_TRADES, seq, trades(n, compressible=False, seed=i))
            seq += n
        ends.append(w.end)
    return ends


# --- layout --------------------------------------------------------------------------------

def test_struct_formats_agree_with_dtypes_and_offsets():
    values = [L.RECORD_MAGIC, 2, 3, 4, 5, -6, 7, 8, 9, 10, 11, 12]
    rec = np.frombuffer(L.RECORD_HEADER_STRUCT.pack(*values), dtype=L.RECORD_HEADER_DTYPE)[0]
    assert [int(rec[name]) for name in L.RECORD_HEADER_DTYPE.names] == values
    assert L.RECORD_HEADER_DTYPE.fields["first_seq"][1] == L.RH_FIRST_SEQ_OFFSET
    assert L.RECORD_HEADER_DTYPE.fields["header_crc"][1] == L.RH_HEADER_CRC_OFFSET
    fvalues = [L.FILE_MAGIC, 1, 32, 4, 5, -6, 7, 8]
    fh = np.frombuffer(L.FILE_HEADER_STRUCT.pack(*fvalues), dtype=L.FILE_HEADER_DTYPE)[0]
    assert [int(fh[name]) for name in L.FILE_HEADER_DTYPE.names] == fvalues
    assert L.ROW_SIZE[L.REC_TRADES] == 40 and L.ROW_SIZE[L.REC_QUOTES] == 56


# --- round trips ---------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_mixed_records(tmp_path, compress):
    path = tmp_path / "s2.wal"
    t_batches = [trades(1000, seed=1), trades(700, compressible=False, seed=2),
                 trades(1, seed=3)]
    q_batches = [quotes(500, seed=4), quotes(3, seed=5)]
    with WalWriter(path, 2, fsync="off", compress=compress) as w:
        w.append_symbol(0, "AAPL")
        w.append_venue(0, "XNAS")
        seq = 10
        order = [("t", 0), ("q", 0), ("t", 1), ("q", 1), ("t", 2)]
        t_seq, q_seq = [], []
        for kind, i in order:
            if kind == "t":
                n = w.append_batch(L.REC_TRADES, seq, t_batches[i])
                rows = len(t_batches[i]["ts"])
                t_seq.append(np.arange(seq, seq + rows))
            else:
                n = w.append_batch(L.REC_QUOTES, seq, q_batches[i])
                rows = len(q_batches[i]["ts"])
                q_seq.append(np.arange(seq, seq + rows))
            assert n % 8 == 0
            seq += rows
        w.append_symbol(1, "MSFT")
        assert w.next_seq == seq

    s = scan(path, shard=2)
    assert s.damage is None and s.damaged_bytes == 0 and s.good_end == os.path.getsize(path)
    assert s.next_seq == seq and s.rows == seq - 10
    assert list(s.types) == [L.REC_SYMBOL, L.REC_VENUE, 1, 2, 1, 2, 1, L.REC_SYMBOL]
    lz4_used = bool((s.records["flags"] & L.FLAG_LZ4).any())
    assert lz4_used == compress

    out = decode(path)
    assert_columns(out["trades"], concat(t_batches))
    assert_columns(out["quotes"], concat(q_batches))
    np.testing.assert_array_equal(out["trades"]["seq"], np.concatenate(t_seq))
    np.testing.assert_array_equal(out["quotes"]["seq"], np.concatenate(q_seq))
    assert out["symbols"] == {0: "AAPL", 1: "MSFT"} and out["venues"] == {0: "XNAS"}
    assert out["next_seq"] == seq

    again = decode(s)  # from a scan: same result without re-checksumming
    assert_columns(again["trades"], out["trades"])

    # min_seq replays only the rows a reader does not hold yet, cutting inside a batch.
    tail = decode(path, min_seq=1500)
    assert tail["trades"]["seq"][0] >= 1500 and tail["quotes"]["seq"].size == \
        (out["quotes"]["seq"] >= 1500).sum()
    keep = out["trades"]["seq"] >= 1500
    assert_columns(tail["trades"], {k: v[keep] for k, v in out["trades"].items()})


def test_lz4_only_when_smaller(tmp_path):
    path = tmp_path / "w.wal"
    with WalWriter(path, 0, fsync="off") as w:
        w.append_batch(L.REC_TRADES, 0, trades(1000, compressible=True))
        noisy = trades(1000, compressible=False)
        # seqs with random gaps (the other table's rows sit between): nothing to squeeze
        noisy["seq"] = 1000 + np.cumsum(np.random.default_rng(7).integers(1, 2**21, 1000))
        w.append_batch(L.REC_TRADES, int(noisy["seq"][0]), noisy)
        w.append_batch(L.REC_TRADES, int(noisy["seq"][-1]) + 1, trades(1, compressible=False))
    r = scan(path).records
    raw = 1000 * L.ROW_SIZE[L.REC_TRADES]
    assert r["flags"][0] == L.FLAG_LZ4 and r["payload_len"][0] < raw // 4
    # random values: only the seq column's constant high bytes squeeze out
    assert r["flags"][1] == L.FLAG_LZ4 and raw * 3 // 4 < r["payload_len"][1] < raw
    # One row does not compress: stored raw.
    assert r["flags"][2] == 0 and r["payload_len"][2] == L.ROW_SIZE[L.REC_TRADES]
    assert os.path.getsize(path) == (L.FILE_HEADER_SIZE + 3 * L.RECORD_HEADER_SIZE
                                     + L.padded(int(r["payload_len"][0]))
                                     + L.padded(int(r["payload_len"][1]))
                                     + L.ROW_SIZE[L.REC_TRADES])


def test_batch_validation(tmp_path):
    with WalWriter(tmp_path / "v.wal", 0, fsync="off") as w:
        good = trades(4)
        with pytest.raises(ValueError, match="missing"):
            w.append_batch(L.REC_TRADES, 0, {k: v for k, v in good.items() if k != "size"})
        with pytest.raises(ValueError, match="symbol_id"):
            w.append_batch(L.REC_TRADES, 0, {**good, "symbol_id": good["symbol_id"]
                                             .astype(np.int64)})
        with pytest.raises(ValueError, match="length"):
            w.append_batch(L.REC_TRADES, 0, {**good, "price": good["price"][:3]})
        with pytest.raises(ValueError, match="table_id"):
            w.append_batch(L.REC_SYMBOL, 0, good)
        assert w.append_batch(L.REC_TRADES, 0, {k: v[:0] for k, v in good.items()}) == 0
        w.append_batch(L.REC_TRADES, 0, good)
        with pytest.raises(ValueError, match="last trades seq is 3"):
            w.append_batch(L.REC_TRADES, 2, good)
        with pytest.raises(ValueError, match="do not continue"):  # seq[0] != first_seq
            w.append_batch(L.REC_TRADES, 9, {**good, "seq": np.arange(10, 14)})
        w.append_batch(L.REC_TRADES, 9, good)  # a gap: quotes may hold seqs 4..8
        assert w.next_seq == 13
        with pytest.raises(ValueError):
            w.append_symbol(1, "ÄPPLE")
        with pytest.raises(ValueError):
            w.append_symbol(1, "X" * 17)
        with pytest.raises(ValueError):
            w.append_venue(-1, "XNAS")
    s = scan(tmp_path / "v.wal")
    assert s.damage is None and s.next_seq == 13


def test_castable_and_strided_columns(tmp_path):
    path = tmp_path / "c.wal"
    want = trades(20, compressible=False)
    given = {**want, "ts": want["ts"].astype(np.int32), "symbol_id": want["symbol_id"]
             .astype(np.int16), "price": np.repeat(want["price"], 2)[::2],
             "size": want["size"].astype(">f8")}
    want["ts"] = want["ts"].astype(np.int32).astype(np.int64)
    want["symbol_id"] = want["symbol_id"].astype(np.int16).astype(np.int32)
    with WalWriter(path, 0, fsync="off") as w:
        w.append_batch(L.REC_TRADES, 0, given)
    assert_columns(decode(path)["trades"], want)


def test_reopen_continues_seq(tmp_path):
    path = tmp_path / "r.wal"
    with WalWriter(path, 1) as w:
        w.append_batch(L.REC_QUOTES, 0, quotes(10))
    with WalWriter(path, 1) as w:
        assert w.next_seq == 10
        w.append_batch(L.REC_TRADES, 10, trades(5))
    assert decode(path)["next_seq"] == 15


# --- damage --------------------------------------------------------------------------------

def test_torn_tail_at_every_byte(tmp_path):
    path = tmp_path / "t.wal"
    ends = small_wal(path)
    data = path.read_bytes()
    last, size = ends[-2], ends[-1]
    assert size == len(data)
    cut_path = tmp_path / "cut.wal"
    for cut in range(last, size):
        cut_path.write_bytes(data[:cut])
        s = scan(cut_path, shard=3)
        assert s.good_end == last, cut
        assert s.damaged_bytes == cut - last
        if cut == last:
            assert s.damage is None
            continue
        assert s.damage_kind == "tail" and not s.mid_file, (cut, s.reason)
        assert "torn record" in s.damage, (cut, s.damage)
        out = decode(cut_path)
        assert out["trades"]["seq"].tolist() == list(range(9))
        assert out["scan"].good_end == last

    # A torn WAL is not appended to until recovery cuts the tail off.
    cut_path.write_bytes(data[:size - 5])
    with pytest.raises(CorruptRecord, match="truncate_to"):
        WalWriter(cut_path, 3)
    assert truncate_to(cut_path, scan(cut_path).good_end) == size - 5 - last
    with WalWriter(cut_path, 3) as w:
        assert w.next_seq == 9
        w.append_batch(L.REC_TRADES, 9, trades(2))
    assert decode(cut_path)["trades"]["seq"].tolist() == list(range(11))


def test_zero_filled_tail_is_tail_damage(tmp_path):
    # What a crash leaves when the size reached disk but the data blocks did not.
    path = tmp_path / "z.wal"
    ends = small_wal(path)
    with open(path, "ab") as f:
        f.write(bytes(4096))
    s = scan(path)
    assert s.good_end == ends[-1] and s.damage_kind == "tail" and "zero-filled" in s.damage


def flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where, expect", [
    ("payload", "payload checksum"),
    ("row_count", "header checksum"),
    ("magic", "bad record magic"),
])
def test_mid_file_corruption_detected(tmp_path, where, expect):
    path = tmp_path / "m.wal"
    ends = small_wal(path)
    victim = ends[2]  # the second batch; two more records follow it
    offset = {"payload": victim + L.RECORD_HEADER_SIZE + 5,
              "row_count": victim + L.RH_ROW_COUNT_OFFSET,
              "magic": victim + L.RH_MAGIC_OFFSET + 1}[where]
    flip(path, offset)
    s = scan(path, shard=3)
    assert s.good_end == victim and s.damage_offset == victim
    assert s.mid_file and s.damage_kind == "mid-file"
    assert expect in s.damage and s.reason.startswith("mid-file corruption")
    assert s.next_record_offset == ends[3]
    out = decode(path)
    assert out["trades"]["seq"].tolist() == [0, 1, 2]  # nothing after the damage
    with pytest.raises(CorruptRecord):
        WalWriter(path, 3)


def test_corrupt_last_record_is_tail_damage(tmp_path):
    path = tmp_path / "l.wal"
    ends = small_wal(path)
    flip(path, ends[-2] + L.RECORD_HEADER_SIZE)
    s = scan(path)
    assert s.good_end == ends[-2] and s.damage_kind == "tail"
    assert "payload checksum" in s.damage


def test_seq_break_between_intact_records_is_mid_file(tmp_path):
    a, b = tmp_path / "a.wal", tmp_path / "b.wal"
    with WalWriter(a, 5, fsync="off") as w:
        w.append_batch(L.REC_TRADES, 0, trades(10))
    with WalWriter(b, 5, fsync="off") as w:
        w.append_batch(L.REC_TRADES, 7, trades(3))  # overlaps 7..9
    with open(a, "ab") as f:
        f.write(b.read_bytes()[L.FILE_HEADER_SIZE:])
    s = scan(a)
    assert s.mid_file and "seq overlap" in s.damage and s.next_seq == 10
    assert decode(a)["trades"]["seq"].tolist() == list(range(10))


def test_conflicting_names_raise(tmp_path):
    path = tmp_path / "n.wal"
    with WalWriter(path, 0, fsync="off") as w:
        w.append_symbol(3, "AAPL")
        w.append_symbol(3, "AAPL")  # re-interning the same binding is fine
        w.append_symbol(3, "MSFT")
    with pytest.raises(CorruptRecord, match="AAPL.*MSFT"):
        decode(path)


# --- file header ---------------------------------------------------------------------------

def rewrite_header(path, **fields) -> None:
    data = bytearray(path.read_bytes())
    names = L.FILE_HEADER_DTYPE.names
    values = dict(zip(names, L.FILE_HEADER_STRUCT.unpack_from(data, 0)))
    values.update(fields)
    L.FILE_HEADER_STRUCT.pack_into(data, 0, *(values[n] for n in names))
    struct.pack_into("<I", data, L.FH_CRC_OFFSET,
                     zlib.crc32(bytes(data[:L.FILE_HEADER_CRC_SPAN])))
    path.write_bytes(bytes(data))


def test_wrong_shard_version_magic(tmp_path):
    path = tmp_path / "h.wal"
    small_wal(path, shard=1)
    with pytest.raises(LayoutMismatch, match="shard 1, expected shard 2"):
        scan(path, shard=2)
    with pytest.raises(LayoutMismatch, match="shard 1, expected shard 2"):
        WalWriter(path, 2)
    rewrite_header(path, version=L.VERSION + 1)
    with pytest.raises(LayoutMismatch, match=f"version {L.VERSION + 1}.*version {L.VERSION}"):
        scan(path)
    with pytest.raises(LayoutMismatch):
        WalWriter(path, 1)
    rewrite_header(path, version=L.VERSION, magic=0x12345678)
    with pytest.raises(LayoutMismatch, match="0x12345678"):
        scan(path)
    rewrite_header(path, magic=L.FILE_MAGIC)
    assert scan(path, shard=1).damage is None
    flip(path, L.FH_CREATED_NS_OFFSET)
    with pytest.raises(CorruptRecord, match="file header checksum"):
        scan(path)


def test_verify_reports_a_wal_named_for_another_shard(tmp_path):
    # swapped files: each header is intact, but a writer would refuse both of them
    from tests.conftest import run_cli
    from wayy.verify import verify

    wal_dir = tmp_path / "wal"
    wal_dir.mkdir()
    small_wal(wal_dir / "shard-0.wal", shard=1)
    small_wal(wal_dir / "shard-1.wal", shard=0)
    small_wal(wal_dir / "shard-2.wal", shard=2)
    small_wal(wal_dir / "shard-3.wal.damaged-123", shard=0)
    reports = {os.path.basename(r.path): r for r in verify(str(tmp_path))}
    for name, (got, want) in {"shard-0.wal": (1, 0), "shard-1.wal": (0, 1),
                              "shard-3.wal.damaged-123": (0, 3)}.items():
        assert not reports[name].ok, name
        assert any(f"WAL belongs to shard {got}, expected shard {want}" in p
                   for p in reports[name].problems), reports[name].problems
    assert reports["shard-2.wal"].ok and reports["shard-2.wal"].problems == []
    r = run_cli("verify", "--db", str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "WAL belongs to shard 1, expected shard 0" in r.stdout, r.stdout
    assert "1 ok, 3 damaged" in r.stdout, r.stdout
    (wal_dir / "shard-4.wal").write_bytes(b"")  # an emptied WAL names no shard in itself
    assert [r.summary for r in verify(str(tmp_path)) if r.path.endswith("shard-4.wal")] == \
        ["empty (0 bytes, no file header), shard 4 by its name"]


def test_empty_and_torn_file_header(tmp_path):
    path = tmp_path / "e.wal"
    path.write_bytes(b"")
    s = scan(path)
    assert s.damage is None and s.shard is None and s.good_end == 0
    with WalWriter(path, 4) as w:  # an empty file gets its header written in place
        w.append_batch(L.REC_TRADES, 0, trades(2))
    assert scan(path, shard=4).next_seq == 2

    path.write_bytes(path.read_bytes()[:10])
    s = scan(path)
    assert s.damage_kind == "tail" and s.good_end == 0 and "file header" in s.damage
    with pytest.raises(CorruptRecord):
        WalWriter(path, 4)
    truncate_to(path, 0)
    with WalWriter(path, 4) as w:
        assert w.next_seq is None


# --- failed writes -------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_dev_full_raises_enospc():
    with pytest.raises(WalWriteError) as info:
        WalWriter("/dev/full", 0)
    assert info.value.errno == errno.ENOSPC and info.value.path == "/dev/full"
    assert info.value.truncated_to == 0


def test_failed_append_is_cut_back(tmp_path):
    # RLIMIT_FSIZE makes the kernel accept part of a write, then fail the rest with EFBIG:
    # the torn-write case, produced by a real kernel rather than a mock.
    path = tmp_path / "f.wal"
    w = WalWriter(path, 0, fsync="off", compress=False)
    w.append_batch(L.REC_TRADES, 0, trades(10))
    good_end = w.end
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (good_end + 100, hard))
        with pytest.raises(WalWriteError) as info:
            w.append_batch(L.REC_TRADES, 10, trades(100))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert info.value.errno == errno.EFBIG and info.value.truncated_to == good_end
    assert os.path.getsize(path) == good_end
    # Still usable once the limit is gone, and the same seq is retried.
    w.append_batch(L.REC_TRADES, 10, trades(100))
    w.close()
    s = scan(path)
    assert s.damage is None and s.next_seq == 110


@pytest.mark.parametrize("room", [0, 100])
def test_failed_append_rows_is_cut_back(tmp_path, room):
    """append_rows writes from a kernel: a write that fails at once (room 0) or after part
    of the record (room 100, then EFBIG) raises with the errno and leaves the log as it
    was, and the same rows go in once there is room."""
    cols = trades(100, compressible=False, seed=5)
    cols["seq"] = np.arange(100, dtype=np.int64)
    names = [name for name, _ in L.TABLE_COLUMNS[L.REC_TRADES]]
    views = [np.ascontiguousarray(cols[c]) for c in names]
    addrs = column_addresses(views)
    sizes = np.array([v.dtype.itemsize for v in views], np.int64)
    path = tmp_path / "f.wal"
    w = WalWriter(path, 0, fsync="off", compress=False)
    w.append_rows(L.REC_TRADES, addrs, sizes, 0, 10, 0, 9)
    good_end = w.end
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (good_end + room, hard))
        with pytest.raises(WalWriteError) as info:
            w.append_rows(L.REC_TRADES, addrs, sizes, 10, 100, 10, 99)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert info.value.errno == errno.EFBIG and info.value.truncated_to == good_end
    assert os.path.getsize(path) == good_end and w.end == good_end
    w.append_rows(L.REC_TRADES, addrs, sizes, 10, 100, 10, 99)
    w.close()
    s = scan(path)
    assert s.damage is None and s.next_seq == 100
    assert decode(path)["trades"]["seq"].tolist() == list(range(100))


# --- fsync policies ------------------------------------------------------------------------

def test_fsync_policies(tmp_path):
    batch = trades(100)
    with WalWriter(tmp_path / "b.wal", 0, fsync="batch") as w:
        for i in range(3):
            w.append_batch(L.REC_TRADES, 100 * i, batch)
            assert w.synced_end == w.end and w.sync_count == i + 1
            assert scan(tmp_path / "b.wal").next_seq == 100 * (i + 1)
        w.append_symbol(0, "AAPL")
        assert w.synced_end < w.end and w.maybe_sync() and w.synced_end == w.end

    with WalWriter(tmp_path / "o.wal", 0, fsync="off") as w:
        for i in range(3):
            w.append_batch(L.REC_TRADES, 100 * i, batch)
        assert w.sync_count == 0 and not w.maybe_sync()
        assert scan(tmp_path / "o.wal").next_seq == 300  # in the page cache, readable
    assert w.sync_count == 1  # close flushes

    with WalWriter(tmp_path / "i.wal", 0, fsync="interval", interval_ms=60_000) as w:
        for i in range(3):
            w.append_batch(L.REC_TRADES, 100 * i, batch)
        assert w.sync_count == 0 and not w.maybe_sync()

    with WalWriter(tmp_path / "j.wal", 0, fsync="interval", interval_ms=20) as w:
        w.append_batch(L.REC_TRADES, 0, batch)
        deadline = time.monotonic() + 5
        while not w.maybe_sync():
            assert time.monotonic() < deadline
        assert w.synced_end == w.end
        assert not w.maybe_sync()  # nothing new to flush
        start, began = w.sync_count, time.monotonic()
        deadline = began + 5
        seq = 100
        while time.monotonic() < began + 0.1 or w.sync_count == start:
            assert time.monotonic() < deadline, "appends never flushed"
            w.append_batch(L.REC_TRADES, seq, batch)
            seq += 100
        # Appends flush, but at most once per interval (plus one for the first).
        assert w.sync_count - start <= (time.monotonic() - began) / 0.02 + 1

    with pytest.raises(ValueError):
        WalWriter(tmp_path / "x.wal", 0, fsync="sometimes")


def test_one_writer_per_file(tmp_path):
    path = tmp_path / "lock.wal"
    with WalWriter(path, 0):
        with pytest.raises(WalLocked):
            WalWriter(path, 0)
        with pytest.raises(WalLocked):
            truncate_to(path, L.FILE_HEADER_SIZE)
    with WalWriter(path, 0):
        pass


def test_forked_child_cannot_use_writer(tmp_path):
    path = tmp_path / "fork.wal"
    with WalWriter(path, 0, fsync="off") as w:
        w.append_batch(L.REC_TRADES, 0, trades(5))
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                w.append_batch(L.REC_TRADES, 5, trades(5))
            except UsedAfterFork:
                code = 0
            except BaseException:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        w.append_batch(L.REC_TRADES, 5, trades(5))
    assert scan(path).next_seq == 10


def test_any_flipped_byte_is_caught(tmp_path):
    # A single flipped byte anywhere after the file header must stop the scan at the record
    # holding it, and decode must return exactly the records before that one.
    path = tmp_path / "fuzz.wal"
    ends = small_wal(path)
    data = path.read_bytes()
    rng = np.random.default_rng(11)
    target = tmp_path / "flipped.wal"
    for offset in rng.choice(np.arange(L.FILE_HEADER_SIZE, len(data)), 300, replace=False):
        damaged = bytearray(data)
        damaged[offset] ^= 1 << int(rng.integers(8))
        target.write_bytes(bytes(damaged))
        s = scan(target)
        record_start = max(e for e in ends if e <= offset)
        assert s.damage is not None and s.good_end == record_start, (offset, s.reason)
        rows_before = sum(n for end, n in zip(ends[2:], (3, 2, 4, 3)) if end <= record_start)
        assert decode(target)["trades"]["seq"].tolist() == list(range(rows_before))


def test_append_rows_writes_the_same_record_as_append_batch(tmp_path):
    cols = trades(300, compressible=False, seed=3)
    cols["seq"] = np.arange(300, dtype=np.int64) * 2 + 7  # gaps: the other table's seqs
    names = [name for name, _ in L.TABLE_COLUMNS[L.REC_TRADES]]
    views = [np.ascontiguousarray(cols[c]) for c in names]
    addrs = column_addresses(views)
    sizes = np.array([cols[c].dtype.itemsize for c in names], np.int64)
    a, b = tmp_path / "a.wal", tmp_path / "b.wal"
    with WalWriter(a, 0, fsync="off", compress=False) as w:
        w.append_batch(L.REC_TRADES, 7 + 2 * 10, {c: v[10:250] for c, v in cols.items()})
    with WalWriter(b, 0, fsync="off") as w:
        w.append_rows(L.REC_TRADES, addrs, sizes, 10, 250, 7 + 2 * 10, 7 + 2 * 249)
        with pytest.raises(ValueError, match="do not continue"):
            w.append_rows(L.REC_TRADES, addrs, sizes, 0, 5, 7, 15)
    ra, rb = a.read_bytes(), b.read_bytes()
    assert ra[L.FILE_HEADER_SIZE:] == rb[L.FILE_HEADER_SIZE:]  # file headers differ (time)
    out = decode(b)
    assert_columns(out["trades"], {c: v[10:250] for c, v in cols.items()})
