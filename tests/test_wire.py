"""Wire formats: round trips, the spec (checked by an independent pure-Python implementation
of docs/wire-format.md), the stored test vectors, sizes, and hostile input (only WireError may
come out of decode, and nothing big is allocated for a small message)."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tracemalloc

import lz4.block
import numpy as np
import pytest

from wayy.errors import InvalidInput
from wayy.wire import (
    FORMATS,
    VALUE_COLUMNS,
    WireBatch,
    WireError,
    decode,
    encode,
    encode_binary,
    encode_json,
    encoder,
    warm_up,
)

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors", "wire")
T0 = 1_674_100_800_123_456_789
U64 = (1 << 64) - 1
COLS = {"trades": ("price", "size"), "quotes": ("bid", "ask", "bid_size", "ask_size")}


# -- helpers ---------------------------------------------------------------------------------

def make(table="trades", n=100, nv=3, seed=0, shard=3, symbol="AAPL", ts_unit=1000,
         seq_gap=120) -> WireBatch:
    """Realistic per-symbol ticks: 0.01-grid random walk, round lots, us timestamps."""
    rng = np.random.default_rng(seed)
    venues = ["NYSE", "ARCA", "BATS", "IEX"][:nv]
    ts = T0 + np.cumsum(rng.integers(1, 5000, n)) * ts_unit
    seq = 10_000 + np.cumsum(rng.integers(1, seq_gap, n))
    cents = 15_000 + np.cumsum(rng.integers(-3, 4, n))
    if table == "trades":
        values = {"price": cents / 100, "size": rng.integers(1, 10, n) * 100.0}
    else:
        values = {"bid": cents / 100, "ask": (cents + rng.integers(1, 4, n)) / 100,
                  "bid_size": rng.integers(1, 10, n) * 100.0,
                  "ask_size": rng.integers(1, 10, n) * 100.0}
    return WireBatch(table=table, shard=shard, symbol=symbol, venues=venues,
                     venue=rng.integers(0, nv, n).astype(np.int32), ts=ts, seq=seq,
                     values=values)


def batch(table, venues, venue, ts, seq, shard=1, symbol="SYM", **values) -> WireBatch:
    return WireBatch(table=table, shard=shard, symbol=symbol, venues=list(venues),
                     venue=np.array(venue, dtype=np.int32), ts=np.array(ts, dtype=np.int64),
                     seq=np.array(seq, dtype=np.int64),
                     values={k: np.array(v, dtype=np.float64) for k, v in values.items()})


def bits(a) -> list[int]:
    return np.asarray(a, dtype=np.float64).view(np.int64).tolist()


def assert_same(a: WireBatch, b: WireBatch) -> None:
    """Same rows, bit for bit (venues compared by name)."""
    assert (a.table, a.shard, a.symbol) == (b.table, b.shard, b.symbol)
    assert len(a) == len(b)
    assert np.asarray(a.ts).tolist() == np.asarray(b.ts).tolist()
    assert np.asarray(a.seq).tolist() == np.asarray(b.seq).tolist()
    assert [a.venues[i] for i in np.asarray(a.venue).tolist()] == \
        [b.venues[i] for i in np.asarray(b.venue).tolist()]
    assert set(a.values) == set(b.values)
    for k in a.values:
        assert bits(a.values[k]) == bits(b.values[k]), k


# -- an independent implementation of docs/wire-format.md, one row at a time -----------------

def uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        if v < 0x80:
            out.append(v)
            return bytes(out)
        out.append((v & 0x7F) | 0x80)
        v >>= 7


def zvarint(v: int) -> bytes:
    return uvarint(((v << 1) ^ (v >> 63)) & U64)


def s64(v: int) -> int:
    v &= U64
    return v - (1 << 64) if v >> 63 else v


def ref_int_array(a: list[int], min_w: int = 0) -> bytes:
    """Canonical IntArray of int64 values ``a`` (spec: b = min, g = gcd, smallest w)."""
    if not a:
        return b"\x01\x00\x00"
    b = min(a)
    g = 0
    for v in a:
        g = math.gcd(g, (v - b) & U64)
    g = g or 1
    us = [((v - b) & U64) // g for v in a]
    w = next(w for w in (0, 1, 2, 4, 8) if max(us) < 1 << (8 * w))
    w = max(w, min_w)
    return uvarint(g) + zvarint(b) + bytes([w]) + b"".join(u.to_bytes(w, "little") for u in us)


def ref_delta_column(x: list[int], min_w: int = 0) -> bytes:
    return ref_int_array([s64(x[i + 1] - x[i]) for i in range(len(x) - 1)], min_w)


def ref_value_column(xs: list[float]) -> bytes:
    amax = max(abs(x) for x in xs)
    for e in range(13):  # the smallest e that round-trips every value, bit for bit
        if not math.isfinite(amax) or amax * 10.0 ** e >= 2.0 ** 48:
            break
        qs = [int(np.rint(x * 10.0 ** e)) for x in xs]
        if all(struct.pack("<d", q / 10.0 ** e) == struct.pack("<d", x) for q, x in zip(qs, xs)):
            return bytes([1, e]) + zvarint(qs[0]) + ref_delta_column(qs)
    return b"\x00" + b"".join(struct.pack("<d", x) for x in xs)


def ref_encode(b: WireBatch, compress: bool) -> bytes:
    n = len(b)
    ts, seq = [int(x) for x in b.ts], [int(x) for x in b.seq]
    body = bytes([len(b.symbol)]) + b.symbol.encode() + bytes([len(b.venues)])
    for v in b.venues:
        body += bytes([len(v)]) + v.encode()
    body += ref_delta_column(ts, 1) + ref_delta_column(seq)
    if len(b.venues) > 1:
        vi = [int(x) for x in b.venue]
        body += zvarint(vi[0]) + ref_delta_column(vi)
    for k in COLS[b.table]:
        body += ref_value_column([float(x) for x in b.values[k]])
    flags, payload = 0, body
    if compress:
        packed = lz4.block.compress(body, store_size=False)
        if len(packed) < len(body):
            flags, payload = 1, packed
    head = struct.pack("<4sBBBBIIqqqqI", b"WAYB", 1, flags, {"trades": 1, "quotes": 2}[b.table],
                       0, n, b.shard, seq[0], seq[-1], ts[0], ts[-1], len(body))
    return head + payload


def ref_decode(msg: bytes) -> dict:
    """Decode by the spec, one value at a time (no validation beyond what parsing needs)."""
    (magic, ver, flags, schema, _r, n, shard, seq0, _seq1, ts0, _ts1,
     blen) = struct.unpack_from("<4sBBBBIIqqqqI", msg)
    assert (magic, ver) == (b"WAYB", 1)
    body = lz4.block.decompress(msg[52:], uncompressed_size=blen) if flags & 1 else msg[52:]
    pos = 0

    def u8():
        nonlocal pos
        pos += 1
        return body[pos - 1]

    def take(k):
        nonlocal pos
        pos += k
        return body[pos - k:pos]

    def uv():
        v = shift = 0
        while True:
            c = u8()
            v |= (c & 0x7F) << shift
            shift += 7
            if c < 0x80:
                return v

    def zv():
        z = uv()
        return (z >> 1) ^ -(z & 1)

    def delta_col(first):
        g, b, w = uv(), zv(), u8()
        x = [first]
        for _ in range(n - 1):
            u = int.from_bytes(take(w), "little") if w else 0
            x.append(s64(x[-1] + b + g * u))
        return x

    symbol = take(u8()).decode()
    venues = [take(u8()).decode() for _ in range(u8())]
    ts, seq = delta_col(ts0), delta_col(seq0)
    venue = delta_col(zv()) if len(venues) > 1 else [0] * n
    table = {1: "trades", 2: "quotes"}[schema]
    values = {}
    for k in COLS[table]:
        mode = u8()
        if mode == 0:
            values[k] = [struct.unpack("<d", take(8))[0] for _ in range(n)]
        else:
            e = u8()
            values[k] = [q / 10.0 ** e for q in delta_col(zv())]
    assert pos == len(body)
    return {"table": table, "shard": shard, "symbol": symbol, "venues": venues,
            "venue": venue, "ts": ts, "seq": seq, "values": values}


def ref_matches(d: dict, b: WireBatch) -> None:
    assert (d["table"], d["shard"], d["symbol"], d["venues"]) == \
        (b.table, b.shard, b.symbol, list(b.venues))
    assert d["ts"] == b.ts.tolist() and d["seq"] == b.seq.tolist()
    assert d["venue"] == b.venue.tolist()
    for k, v in d["values"].items():
        assert bits(v) == bits(b.values[k]), k


# -- round trips and the spec -----------------------------------------------------------------

CASES = [
    dict(table="trades", n=100, nv=3),
    dict(table="trades", n=1, nv=1),
    dict(table="trades", n=2, nv=2),
    dict(table="quotes", n=100, nv=1),
    dict(table="quotes", n=1000, nv=4, ts_unit=1),
    dict(table="trades", n=257, nv=2, seq_gap=70_000, ts_unit=7),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['table']}-{c['n']}-{c['nv']}")
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_is_exact_and_deterministic(case, fmt):
    b = make(**case)
    msgs = encode(b, fmt)
    assert len(msgs) == (len(b) if fmt == "json" else 1)
    assert encode(b, fmt) == msgs  # deterministic
    decoded = [decode(m) for m in msgs]
    if fmt == "json":
        assert all(len(d) == 1 for d in decoded)
        rows = [r for d in decoded for r in d.rows()]
        assert rows == b.rows()
        assert [encode_json(d)[0] for d in decoded] == msgs
    else:
        assert_same(decoded[0], b)
        assert encode(decoded[0], fmt) == msgs  # decode -> encode gives the same bytes


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['table']}-{c['n']}-{c['nv']}")
@pytest.mark.parametrize("compress", [False, True])
def test_matches_an_independent_implementation_of_the_spec(case, compress):
    b = make(**case)
    msg = encode_binary(b, compress=compress)
    assert msg == ref_encode(b, compress)
    ref_matches(ref_decode(msg), b)


def test_unusual_values_round_trip_bit_for_bit():
    """Not-short-decimals, signed zero, NaN payloads, infinities, subnormals, extremes of
    int64 in ts and seq, ts out of order, many venues, long and empty names."""
    nan2 = np.array([0x7FF8000000000BAD], dtype=np.int64).view(np.float64)[0]
    venues = [f"V{i}" for i in range(254)] + [""]
    b = batch("quotes", venues, [254, 0, 253, 1], [(1 << 63) - 1, -(1 << 63), 0, -1],
              [-(1 << 63), -5, 0, (1 << 63) - 1], shard=0xFFFFFFFF, symbol="A" * 16,
              bid=[0.1 + 0.2, 1 / 3, -0.0, 5e-324],
              ask=[float("inf"), -float("inf"), float("nan"), nan2],
              bid_size=[1.7976931348623157e308, -2.2250738585072014e-308, 2.0 ** 60, 0.0],
              ask_size=[0.5, 0.25, -0.125, 1e-12])
    for compress in (False, True):
        msg = encode_binary(b, compress=compress)
        d = decode(msg)
        assert_same(d, b)
        assert d.venues == venues
        assert encode_binary(d, compress=compress) == msg
        assert msg == ref_encode(b, compress)


def test_extreme_batches_round_trip():
    """Random batches at the edges: int64 extremes, 255 venues, any float64 bit pattern,
    decimals with up to 12 places near 2**47, huge and tiny magnitudes."""
    rng = np.random.default_rng(0)
    for it in range(400):
        table = ("trades", "quotes")[it % 2]
        seq = np.sort(rng.choice(np.array([-2**63, -2**62, -1, 0, 2**62, 2**63 - 1]),
                                 int(rng.integers(1, 6)), replace=False))
        n = len(seq)
        values = {}
        for c in VALUE_COLUMNS[table]:
            kind = it // 2 % 3
            if kind == 0:
                v = rng.integers(-2**47, 2**47, n) / 10.0 ** int(rng.integers(0, 13))
            elif kind == 1:
                v = rng.integers(-2**63, 2**63 - 1, n, endpoint=True).view(np.float64)
            else:
                v = rng.standard_normal(n) * 10.0 ** int(rng.integers(-300, 300))
            values[c] = v
        nv = int(rng.integers(1, 256))
        b = WireBatch(table, int(rng.integers(0, 2**32)), "S", [f"V{i}" for i in range(nv)],
                      rng.integers(0, nv, n).astype(np.int32),
                      rng.integers(-2**63, 2**63 - 1, n, endpoint=True), seq, values)
        for compress in (False, True):
            m = encode_binary(b, compress)
            d = decode(m)
            assert_same(d, b)
            assert encode_binary(d, compress) == m


@pytest.mark.slow
def test_kernels_stay_in_bounds(tmp_path):
    """numba does not check array bounds: rerun the edge, hostile and fuzz tests with
    NUMBA_BOUNDSCHECK=1 (a private cache: boundschecked code must not be cached for normal
    runs), where any out-of-bounds access raises instead of reading or writing memory."""
    cache = tmp_path / "numba-cache"
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(cache))
    try:
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", __file__,
             "-k", "extreme or hostile or truncation or fuzz or unusual or every_row"],
            env=env, capture_output=True, text=True, timeout=600,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert " passed" in r.stdout and "failed" not in r.stdout
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_decimal_columns_and_raw_fallback_by_content():
    grid = batch("trades", ["X"], [0, 0, 0], [T0, T0 + 1, T0 + 2], [1, 2, 3],
                 price=[150.25, 150.26, 150.24], size=[100, 200, 100])
    off = batch("trades", ["X"], [0, 0, 0], [T0, T0 + 1, T0 + 2], [1, 2, 3],
                price=[150.25, 150.26, 150.25 + 1e-9 / 3], size=[100, 200, 100])
    g, o = encode_binary(grid, False), encode_binary(off, False)
    # one value that is not a short decimal sends its whole column as raw float64
    raw_price = b"\x00" + struct.pack("<3d", *off.values["price"])
    assert raw_price in o and b"\x00" + struct.pack("<d", 150.25) not in g
    assert b"\x01\x02" + zvarint(15025) in g  # DECIMAL, e=2, first q 15025
    assert len(o) - len(g) == len(raw_price) - len(ref_value_column([150.25, 150.26, 150.24]))
    assert_same(decode(o), off)
    # 10 places are a decimal; float sums such as 0.1 + 0.2 are not
    ten = batch("trades", ["X"], [0], [T0], [1], price=[1.0123456789], size=[0.1 + 0.2])
    assert_same(decode(encode_binary(ten, False)), ten)


def test_binary_is_at_least_ten_times_smaller_than_json_on_per_symbol_batches():
    for table in ("trades", "quotes"):
        for seed in range(3):
            b = make(table, n=100, nv=3, seed=seed)
            js = sum(len(m) for m in encode_json(b))
            binary = len(encode_binary(b, compress=False))
            lz = len(encode_binary(b, compress=True))
            assert js / binary >= 10, (table, js, binary)
            assert lz <= binary


def test_lz4_only_when_it_makes_the_batch_smaller():
    n = 500
    flat = batch("trades", ["X"], [0] * n, T0 + np.arange(n) * 1000, np.arange(n) * 2,
                 price=[10.0] * n, size=[100.0] * n)
    plain, packed = encode_binary(flat, False), encode_binary(flat, True)
    assert packed[5] & 1 and not plain[5] & 1
    assert len(packed) < len(plain)
    assert_same(decode(packed), flat)
    rng = np.random.default_rng(5)
    noisy = batch("trades", ["X"], [0] * 50, T0 + rng.integers(0, 1 << 40, 50), np.arange(50),
                  price=rng.random(50), size=rng.random(50))
    assert encode_binary(noisy, True) == encode_binary(noisy, False)  # no flag, same bytes
    assert encode(noisy, "binary+lz4") == encode(noisy, "binary")


def test_every_row_costs_at_least_one_body_byte():
    """The decoder's allocation bound (count <= body length) holds for the most compressible
    batch an encoder can be given: constant everything."""
    n = 5000
    flat = batch("quotes", ["X"], [0] * n, [T0] * n, np.arange(n), bid=[1.0] * n, ask=[1.0] * n,
                 bid_size=[1.0] * n, ask_size=[1.0] * n)
    for compress in (False, True):
        msg = encode_binary(flat, compress)
        body_len = struct.unpack_from("<I", msg, 48)[0]
        assert body_len >= n
        assert_same(decode(msg), flat)


# -- test vectors -------------------------------------------------------------------------------

def load_vectors() -> dict:
    with open(os.path.join(VECTORS, "vectors.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("entry", load_vectors()["binary"], ids=lambda e: e["file"])
def test_vectors_decode_to_their_description_and_re_encode_byte_identically(entry):
    with open(os.path.join(VECTORS, entry["file"]), "rb") as f:
        msg = f.read()
    assert len(msg) == entry["bytes"]
    assert bool(msg[5] & 1) == entry["lz4"]
    want = entry["decoded"]
    d = decode(msg)
    assert (d.table, d.shard, d.symbol, d.venues) == \
        (want["table"], want["shard"], want["symbol"], want["venues"])
    assert d.venue.tolist() == want["venue"]
    assert d.ts.tolist() == want["ts"] and d.seq.tolist() == want["seq"]
    for k, hexes in want["values_bits"].items():
        assert [struct.pack(">d", x).hex() for x in d.values[k].tolist()] == hexes
        assert bits(d.values[k]) == bits(want["values"][k])
    assert encode_binary(d, compress=entry["compress"]) == msg
    ref = ref_decode(msg)
    ref_matches(ref, d)


def test_json_vectors():
    for entry in load_vectors()["json"]:
        d = decode(entry["message"].encode())
        assert d.rows() == [entry["decoded"]]
        assert encode_json(d)[0].decode() == entry["message"]


# -- JSON ---------------------------------------------------------------------------------------

def test_json_tick_has_the_original_design_fields_plus_table_shard_seq():
    b = make("trades", n=3, nv=2)
    msgs = encode_json(b)
    assert len(msgs) == 3
    obj = json.loads(msgs[0])
    assert list(obj) == ["timestamp", "symbol", "venue", "price", "size", "table", "shard",
                         "seq"]
    assert obj["timestamp"] == int(b.ts[0]) and type(obj["timestamp"]) is int
    assert obj["symbol"] == "AAPL" and obj["venue"] == b.venues[b.venue[0]]
    assert (obj["table"], obj["shard"], obj["seq"]) == ("trades", 3, int(b.seq[0]))
    q = json.loads(encode_json(make("quotes", n=1, nv=1))[0])
    assert list(q)[3:7] == ["bid", "ask", "bid_size", "ask_size"]
    # what a redis-py user does with a message gives the same dicts as rows()
    assert [json.loads(m) for m in msgs] == b.rows()


def test_json_is_lossless_for_floats_and_big_timestamps():
    b = batch("trades", ["X"], [0, 0], [(1 << 63) - 1, -(1 << 63)], [(1 << 62), (1 << 62) + 1],
              price=[0.1 + 0.2, 5e-324], size=[1.7976931348623157e308, 1 / 3])
    for m in encode_json(b):
        assert_same(decode(m), decode(m))
    rows = [decode(m).rows()[0] for m in encode_json(b)]
    assert rows == b.rows()
    assert bits([r["price"] for r in rows]) == bits(b.values["price"])


def test_json_decode_accepts_whitespace_any_key_order_extra_keys_and_str():
    msg = ('  {"seq": 5, "shard": 0, "table": "quotes", "venue": "", "symbol": "EUR.USD",'
           ' "bid": 1, "ask": 1.5, "bid_size": 2, "ask_size": 3e2, "timestamp": 7, "new": []}')
    d = decode(msg.encode())
    assert d.rows() == [{"timestamp": 7, "symbol": "EUR.USD", "venue": "", "bid": 1.0,
                         "ask": 1.5, "bid_size": 2.0, "ask_size": 300.0, "table": "quotes",
                         "shard": 0, "seq": 5}]
    assert decode(msg).rows() == d.rows()
    assert decode(bytearray(msg.encode())).rows() == d.rows()
    assert decode(memoryview(msg.encode())).rows() == d.rows()


# -- encode errors ------------------------------------------------------------------------------

def replace(b: WireBatch, **kw) -> WireBatch:
    d = dict(b.__dict__)
    d.update(kw)
    return WireBatch(**d)


def test_encode_refuses_batches_a_decoder_would_refuse():
    b = make("trades", n=4, nv=2)
    bad = {
        "unknown table": replace(b, table="bars"),
        "shard": replace(b, shard=-1),
        "characters outside": replace(b, symbol="AA*PL"),
        "longer than 16": replace(b, venues=["NYSE", "X" * 17]),
        "not distinct": replace(b, venues=["NYSE", "NYSE"]),
        "non-empty list": replace(b, venues=[]),
        "at most 255": replace(b, venues=[f"V{i}" for i in range(256)]),
        "strictly increasing": replace(b, seq=np.array([1, 2, 2, 3])),
        "outside venues": replace(b, venue=np.array([0, 1, 2, 0], dtype=np.int32)),
        "values must be exactly": replace(b, values={"price": b.values["price"]}),
        "has 3 rows": replace(b, seq=np.array([1, 2, 3])),
        "one-dimensional": replace(b, ts=np.zeros((2, 2), dtype=np.int64)),
        "must hold integers": replace(b, ts=np.array([1.5, 2, 3, 4])),
    }
    for words, bb in bad.items():
        for fmt in FORMATS:
            with pytest.raises(WireError, match=words):
                encode(bb, fmt)
    empty = replace(b, venue=np.zeros(0, np.int32), ts=np.zeros(0, np.int64),
                    seq=np.zeros(0, np.int64),
                    values={k: np.zeros(0) for k in b.values})
    with pytest.raises(WireError, match="empty batch"):
        encode_binary(empty)
    assert encode_json(empty) == []
    nan = replace(b, values={"price": np.array([1.0, np.nan, 2, 3]), "size": b.values["size"]})
    with pytest.raises(WireError, match="NaN or infinity"):
        encode_json(nan)
    assert_same(decode(encode_binary(nan)), nan)  # binary carries NaN losslessly
    with pytest.raises(WireError, match="unknown wire format"):
        encode(b, "msgpack")
    with pytest.raises(WireError, match="expected a WireBatch"):
        encode_binary({"table": "trades"})  # type: ignore[arg-type]


def test_name_checks_are_not_fooled_by_their_caches():
    """The empty venue is valid, the empty symbol is not, whatever was encoded before."""
    ok = batch("trades", [""], [0], [T0], [1], symbol="A", price=[1.0], size=[1.0])
    encode_binary(ok)
    encode_json(ok)
    decode(encode_json(ok)[0])
    for fmt in FORMATS:
        with pytest.raises(WireError, match="symbol is empty"):
            encode(replace(ok, symbol=""), fmt)
    with pytest.raises(WireError, match="symbol is empty"):
        decode(encode_json(ok)[0].replace(b'"symbol":"A"', b'"symbol":""'))
    with pytest.raises(WireError, match="venues must be"):
        encode_binary(replace(ok, venues=None))
    with pytest.raises(WireError, match="must be a str"):
        encode_binary(replace(ok, symbol=["A"]))


def test_wire_error_is_an_invalid_input_and_a_value_error():
    assert issubclass(WireError, InvalidInput) and issubclass(WireError, ValueError)
    assert encoder("json") is encode_json
    assert set(FORMATS) == {"json", "binary", "binary+lz4"}
    warm_up()


# -- hostile input --------------------------------------------------------------------------------

HEADER = struct.Struct("<4sBBBBIIqqqqI")


def patch_header(msg: bytes, **fields) -> bytes:
    names = ["magic", "version", "flags", "schema", "reserved", "count", "shard", "seq0", "seq1",
             "ts0", "ts1", "body_len"]
    vals = dict(zip(names, HEADER.unpack_from(msg)))
    vals.update(fields)
    return HEADER.pack(*[vals[k] for k in names]) + msg[52:]


def with_body(msg: bytes, body: bytes, **fields) -> bytes:
    """``msg``'s header (uncompressed, body length fixed) on a hand-made body."""
    return patch_header(msg[:52] + body, flags=0, body_len=len(body), **fields)


SMALL = batch("trades", ["NYSE", "ARCA"], [0, 1, 0], [T0, T0 + 1000, T0 + 251_000],
              [1000, 1007, 1010], shard=3, symbol="AAPL", price=[150.25, 150.26, 150.24],
              size=[100, 300, 100])
NAMES = b"\x04AAPL\x02\x04NYSE\x04ARCA"
TS = ref_delta_column([T0, T0 + 1000, T0 + 251_000], 1)
SEQ = ref_delta_column([1000, 1007, 1010])
VEN = zvarint(0) + ref_delta_column([0, 1, 0])
PRICE = ref_value_column([150.25, 150.26, 150.24])
SIZE = ref_value_column([100.0, 300.0, 100.0])


def test_hand_made_body_matches_the_encoder():
    msg = encode_binary(SMALL, compress=False)
    assert msg[52:] == NAMES + TS + SEQ + VEN + PRICE + SIZE
    assert_same(decode(with_body(msg, NAMES + TS + SEQ + VEN + PRICE + SIZE)), SMALL)


def hostile_messages() -> list[tuple[str, bytes]]:
    msg = encode_binary(SMALL, compress=False)
    body = msg[52:]
    big = make("quotes", n=300, nv=1)
    lz = encode_binary(replace(big, ts=T0 + np.arange(300) * 1000), compress=True)
    assert lz[5] & 1
    out = [
        ("not a wayy message", b"GET / HTTP/1.1\r\n"),
        ("empty message", b""),
        ("truncated batch: 51 bytes", msg[:51]),
        ("not a wayy message: starts with b'WAYX", b"WAYX" + msg[4:]),
        ("unsupported wire version 2", patch_header(msg, version=2)),
        ("unknown flags", patch_header(msg, flags=0x82)),
        ("unknown schema id 3", patch_header(msg, schema=3)),
        ("unknown schema id 0", patch_header(msg, schema=0)),
        ("reserved", patch_header(msg, reserved=1)),
        ("count is 0", patch_header(msg, count=0)),
        ("more than max_rows", patch_header(msg, count=2_000_000)),
        ("exceeds body length", patch_header(msg, count=57)),
        ("the message has", msg[:-1]),
        ("the message has", msg + b"\x00"),
        ("bad LZ4 body", lz[:60] + b"\xff" * (len(lz) - 60)),
        ("bad LZ4 body", lz[:-3]),
        ("can expand to", patch_header(lz, body_len=(len(lz) - 52) * 300)),
        ("bad LZ4 body: decompressed", patch_header(lz, body_len=struct.unpack_from(
            "<I", lz, 48)[0] + 5)),
        ("symbol length 0", with_body(msg, b"\x00" + body[5:])),
        ("symbol length 17", with_body(msg, b"\x11" + b"A" * 17 + body[5:])),
        ("characters outside", with_body(msg, b"\x04AA*L" + body[5:])),
        ("characters outside", with_body(msg, b"\x04AA\xc3\x84" + body[5:])),
        ("venue count is 0", with_body(msg, b"\x04AAPL\x00" + TS + SEQ + PRICE + SIZE)),
        ("not distinct", with_body(msg, b"\x04AAPL\x02\x04NYSE\x04NYSE" + TS + SEQ + VEN + PRICE
                                   + SIZE)),
        ("venue 1 length 200", with_body(msg, b"\x04AAPL\x02\x04NYSE\xc8" + b"A" * 300)),
        ("venue index 2", with_body(msg, NAMES + TS + SEQ + zvarint(0)
                                    + ref_delta_column([0, 2, 0]) + PRICE + SIZE)),
        ("venue index -1", with_body(msg, NAMES + TS + SEQ + zvarint(-1)
                                     + ref_delta_column([-1, 0, 0]) + PRICE + SIZE)),
        ("seq not strictly increasing", with_body(
            msg, NAMES + TS + ref_delta_column([1000, 1012, 1010]) + VEN + PRICE + SIZE)),
        ("last seq", with_body(msg, NAMES + TS + ref_delta_column([1000, 1007, 1011]) + VEN
                               + PRICE + SIZE)),
        ("last ts", with_body(msg, NAMES + ref_delta_column([T0, T0, T0], 1) + SEQ + VEN
                              + PRICE + SIZE)),
        ("has width 3", with_body(msg, NAMES + b"\x01\x00\x03" + b"\x00" * 6 + SEQ + VEN
                                  + PRICE + SIZE)),
        ("has step 0", with_body(msg, NAMES + b"\x00\x00\x01\x00\x00" + SEQ + VEN + PRICE
                                 + SIZE)),
        ("overflows 64 bits", with_body(msg, NAMES + b"\xff" * 11 + b"\x00" * 40)),
        ("overflows 64 bits", with_body(msg, NAMES + b"\xff" * 9 + b"\x02" + b"\x00" * 40)),
        ("unknown encoding 7", with_body(msg, NAMES + TS + SEQ + VEN + b"\x07" + PRICE[1:]
                                         + SIZE)),
        ("decimal exponent 23", with_body(msg, NAMES + TS + SEQ + VEN + b"\x01\x17" + PRICE[2:]
                                          + SIZE)),
        ("beyond 2\\*\\*53", with_body(msg, NAMES + TS + SEQ + VEN + b"\x01\x00"
                                        + zvarint(1 << 54) + ref_delta_column([0, 0, 0])
                                        + SIZE)),
        ("left over", with_body(msg, NAMES + TS + SEQ + VEN + PRICE + SIZE + b"\x00")),
        ("truncated batch", with_body(msg, NAMES + TS + SEQ + VEN + PRICE + SIZE[:-1])),
        ("truncated batch", with_body(msg, NAMES + TS + SEQ + VEN + b"\x00" + b"\x00" * 23
                                      + SIZE)),
        ("truncated batch", with_body(msg, NAMES + TS + SEQ + VEN + PRICE)),
        ("truncated batch", with_body(msg, NAMES[:7])),
        # JSON
        ("malformed JSON tick", b'{"timestamp": 1,'),
        ("malformed JSON tick", b"{" * 2000 + b"}" * 2000),
        ("malformed JSON tick", b'{"a":' + b"[" * 4000),  # deeper than the parser recurses
        ("malformed JSON tick", b'{"a": 1} [2]'),
        ("malformed JSON tick", b'{"table": "trades", "symbol": "\xff\xfe"}'),
        ("not a wayy message", b"  [1, 2]"),
        ("longer than 4096", b"{" + b" " * 5000 + b"}"),
        ("'table' must be", b'{"table": "bars"}'),
        ("'table' must be", b'{"table": ["trades"]}'),
        ("lacks 'timestamp'", b'{"table": "trades"}'),
        ("must be an integer", b'{"table": "trades", "timestamp": 1.5}'),
        ("must be an integer", b'{"table": "trades", "timestamp": true}'),
        ("out of range", b'{"table": "trades", "timestamp": 9223372036854775808}'),
        ("lacks 'seq'", b'{"table": "trades", "timestamp": 1}'),
        ("'shard' = -1 is out of range", b'{"table":"trades","timestamp":1,"seq":1,"shard":-1}'),
        ("lacks 'symbol'", b'{"table":"trades","timestamp":1,"seq":1,"shard":1}'),
        ("characters outside", b'{"table":"trades","timestamp":1,"seq":1,"shard":1,'
                               b'"symbol":"A B","venue":""}'),
        ("must be a str", b'{"table":"trades","timestamp":1,"seq":1,"shard":1,'
                          b'"symbol":"AB","venue":7}'),
        ("lacks 'price'", b'{"table":"trades","timestamp":1,"seq":1,"shard":1,'
                          b'"symbol":"AB","venue":"X"}'),
        ("must be a number", b'{"table":"trades","timestamp":1,"seq":1,"shard":1,'
                             b'"symbol":"AB","venue":"X","price":"1.5","size":1}'),
        ("must be a number", b'{"table":"trades","timestamp":1,"seq":1,"shard":1,'
                             b'"symbol":"AB","venue":"X","price":false,"size":1}'),
        ("not finite", b'{"table":"trades","timestamp":1,"seq":1,"shard":1,'
                       b'"symbol":"AB","venue":"X","price":1e999,"size":1}'),
        ("NaN is not a number", b'{"table":"trades","timestamp":1,"seq":1,"shard":1,'
                                b'"symbol":"AB","venue":"X","price":NaN,"size":1}'),
        ("too large for a float64", b'{"table":"trades","timestamp":1,"seq":1,"shard":1,'
                                    b'"symbol":"AB","venue":"X","price":1,"size":1'
                                    + b"0" * 400 + b"}"),
    ]
    return out


@pytest.mark.parametrize("words, msg", hostile_messages(),
                         ids=[f"{i}-{w[:30]}" for i, (w, _) in enumerate(hostile_messages())])
def test_hostile_messages_raise_wire_error_saying_why(words, msg):
    with pytest.raises(WireError, match=words):
        decode(msg)


def test_every_truncation_of_valid_messages_is_refused():
    for m in (encode_binary(make("trades", n=50), False), encode_binary(SMALL, False),
              *[encode_binary(make("quotes", n=k, nv=1, ts_unit=1000), True) for k in (1, 200)]):
        for cut in range(len(m)):
            with pytest.raises(WireError):
                decode(m[:cut])


def test_wrong_input_types_are_refused():
    for bad in (None, 42, [b"WAYB"], {"a": 1}):
        with pytest.raises(WireError, match="expected bytes"):
            decode(bad)  # type: ignore[arg-type]


def test_small_hostile_messages_allocate_little():
    """Huge declared counts and lengths are refused before anything is allocated."""
    msg = encode_binary(SMALL, compress=False)
    lz = encode_binary(batch("trades", ["X"], [0] * 400, T0 + np.arange(400), np.arange(400),
                             price=[1.0] * 400, size=[1.0] * 400), compress=True)
    hostile = [patch_header(msg, count=1_000_000), patch_header(msg, count=0xFFFFFFFF),
               patch_header(lz, count=900_000, body_len=0xFFFFFFFF),
               patch_header(lz, count=900_000, body_len=(len(lz) - 52) * 256),
               patch_header(msg, body_len=0xFFFFFFFF), b"{" * 4000]
    tracemalloc.start()
    try:
        for m in hostile:
            tracemalloc.reset_peak()
            with pytest.raises(WireError):
                decode(m)
            _, peak = tracemalloc.get_traced_memory()
            assert peak < 2_000_000, (m[:60], peak)
    finally:
        tracemalloc.stop()


def mutate(rng: random.Random, msg: bytes) -> bytes:
    m = bytearray(msg)
    kind = rng.randrange(6)
    if kind == 0 and m:  # flip bits
        for _ in range(rng.randint(1, 4)):
            m[rng.randrange(len(m))] ^= 1 << rng.randrange(8)
    elif kind == 1 and m:  # set random bytes, often in the header
        for _ in range(rng.randint(1, 3)):
            m[rng.randrange(min(len(m), 64) if rng.random() < 0.5 else len(m))] = \
                rng.randrange(256)
    elif kind == 2:  # truncate
        m = m[:rng.randrange(len(m) + 1)]
    elif kind == 3:  # insert or delete bytes
        i = rng.randrange(len(m) + 1)
        if rng.random() < 0.5:
            m[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            del m[i:i + rng.randint(1, 8)]
    elif kind == 4:  # a header field set to an extreme
        off = rng.choice([5, 6, 8, 12, 16, 24, 32, 40, 48])
        width = {5: 1, 6: 1, 8: 4, 12: 4, 48: 4}.get(off, 8)
        m[off:off + width] = rng.choice([b"\xff", b"\x00", b"\x7f", b"\x80"]) * width
    else:  # JSON edits
        s = bytes(m).replace(b"1", rng.choice([b"", b"-", b"1e999", b'"', b"[", b"9" * 30]), 1)
        m = bytearray(s)
    return bytes(m)


def test_fuzz_mutations_raise_only_wire_error():
    """Seeded random mutations of valid messages: decode returns a sound batch or raises
    WireError from an explicit check (never the internal safety net, never anything else)."""
    rng = random.Random(20261126)
    seeds = [encode_binary(SMALL, False), encode_binary(make("trades", n=40), False),
             encode_binary(make("quotes", n=30, nv=1), False),
             encode_binary(batch("quotes", ["X"], [0] * 300, T0 + np.arange(300) * 7,
                                 np.arange(300), bid=[1.5] * 300, ask=[1.5] * 300,
                                 bid_size=[3.0] * 300, ask_size=[4.0] * 300), True),
             encode_binary(make("trades", n=3, nv=2, seed=9), True),
             *encode_json(make("quotes", n=2, nv=2))]
    ok = refused = 0
    for i in range(4000):
        msg = mutate(rng, rng.choice(seeds))
        if rng.random() < 0.2:
            msg = mutate(rng, msg)
        try:
            d = decode(msg, max_rows=100_000)
        except WireError as exc:
            assert "internal decoder error" not in str(exc)
            refused += 1
            continue
        ok += 1
        n = len(d)
        assert n >= 1 and len(d.seq) == n and len(d.venue) == n
        assert all(len(v) == n for v in d.values.values())
        assert (np.diff(d.seq) > 0).all() if n > 1 else True
        assert d.venue.min() >= 0 and d.venue.max() < len(d.venues)
        if d.values and all(np.isfinite(v).all() for v in d.values.values()):
            encode_json(d)
        encode_binary(d)  # whatever decodes re-encodes
    assert refused > 1000 and ok > 50  # the mutations exercise both outcomes


@pytest.mark.parametrize("readonly", [False, True])
def test_group_encoder_gives_encode_binarys_bytes_for_every_symbol_and_venue(readonly):
    """wire.GroupEncoder (the broker's one-call path) against encode_binary of the same
    per-symbol WireBatches: one message per symbol (all its venues), then one per named
    venue when a symbol's rows have several; byte-identical, compressed or not, for random
    batches of both tables (NaN values, a lone symbol or venue, ts going backwards,
    read-only columns as shared memory gives them), with buffers that have to grow."""
    from wayy.names import to_name_array
    from wayy.wire import G_MAIN, G_SYM, G_VENUE, GroupEncoder

    rng = np.random.default_rng(7)
    enc = GroupEncoder()
    enc._out = np.empty(64, np.uint8)  # force the retry with bigger buffers
    enc._groups = np.empty((1, enc._groups.shape[1]), np.int64)
    # symbol ids 0-3, or spread over 0..9999 (ids far apart: the merge sort, not counting)
    syms = np.array([f"S{i}" for i in range(10_000)])
    syms[:4] = ["AAPL", "MSFT", "X", "SIXTEEN.CHARS.AB"]
    sparse = np.array([0, 3001, 6002, 9999])
    vens = np.array(["", "NYSE", "NASDAQ", "ARCA"])
    sym8 = to_name_array(syms, "symbol", len(syms)).view(np.uint8).copy()
    ven8 = to_name_array(vens, "venue", 4).view(np.uint8).copy()
    for trial in range(120):
        table = ("trades", "quotes")[trial % 2]
        n = int(rng.integers(1, 200))
        ts = np.sort(rng.integers(1, 10**18, n)).astype(np.int64)
        if trial % 5 == 0:
            ts = ts[::-1].copy()
        sid = rng.integers(0, 4 if trial % 3 else 1, n).astype(np.int32)
        if trial % 4 == 1:
            sid = sparse[sid].astype(np.int32)
        vid = (rng.integers(0, 4 if trial % 4 else 1, n) if trial % 7 else np.full(n, 2)
               ).astype(np.int32)
        seq = np.cumsum(rng.integers(1, 5, n)).astype(np.int64)
        names = VALUE_COLUMNS[table]
        vals = [np.round(rng.random(n) * 1000 + 1, int(rng.integers(0, 5))) for _ in names]
        if trial % 11 == 0:
            vals[0][0] = np.nan
        if readonly:
            for a in (ts, sid, vid, seq, *vals):
                a.flags.writeable = False
        compress = trial % 3 != 0
        out, groups, count = enc.encode(table, 3, ts, sid, vid, seq, list(vals), sym8, ven8)
        got = [(int(g[G_SYM]), int(g[G_VENUE]), int(g[G_MAIN]),
                GroupEncoder.message(out, g, compress)) for g in groups[:count]]
        want = []
        order = np.argsort(sid, kind="stable")
        for s in np.unique(sid):
            rows = order[sid[order] == s]
            u, inv = np.unique(vid[rows], return_inverse=True)
            wb = WireBatch(table, 3, str(syms[s]), [str(vens[i]) for i in u],
                           inv.astype(np.int32), ts[rows], seq[rows],
                           {c: a[rows] for c, a in zip(names, vals)})
            want.append((int(s), int(u[0]) if len(u) == 1 else -1, 1,
                         encode_binary(wb, compress=compress)))
            for v in (u if len(u) > 1 else []):
                if not vens[v]:
                    continue  # venue "": no channel of its own
                r = rows[vid[rows] == v]
                vb = WireBatch(table, 3, str(syms[s]), [str(vens[v])],
                               np.zeros(len(r), np.int32), ts[r], seq[r],
                               {c: a[r] for c, a in zip(names, vals)})
                want.append((int(s), int(v), 0, encode_binary(vb, compress=compress)))
        assert got == want, trial


def test_group_encoder_cuts_a_symbol_with_more_venues_than_a_message_names():
    """More than MAX_VENUES venues in one symbol's rows: the kernel cuts them into messages
    of consecutive rows naming at most MAX_VENUES each, exactly where the broker's general
    path (workers.broker._venue_pieces) cuts, with the same bytes."""
    from wayy.names import to_name_array
    from wayy.wire import G_MAIN, G_ROWS, MAX_VENUES, GroupEncoder
    from workers.broker import _venue_pieces

    nven = MAX_VENUES + 45
    n = 2 * MAX_VENUES + 90
    vens = np.array([f"V{i}" for i in range(nven)])
    sym8 = to_name_array(np.array(["MANY"]), "symbol", 1).view(np.uint8).copy()
    ven8 = to_name_array(vens, "venue", nven).view(np.uint8).copy()
    ts = np.arange(n, dtype=np.int64) + 10**18
    sid = np.zeros(n, np.int32)
    vid = (np.arange(n) % nven).astype(np.int32)
    seq = np.arange(n, dtype=np.int64)
    vals = [1.0 + np.arange(n), np.ones(n)]
    out, groups, count = GroupEncoder().encode("trades", 0, ts, sid, vid, seq, vals, sym8, ven8)
    main = [g for g in groups[:count] if g[G_MAIN]]
    pieces = _venue_pieces(vid, 0, n)
    assert len(pieces) == len(main) == 3
    assert [int(g[G_ROWS]) for g in main] == [b - a for a, b in pieces]
    for g, (a, b) in zip(main, pieces):
        u, inv = np.unique(vid[a:b], return_inverse=True)
        assert len(u) <= MAX_VENUES
        wb = WireBatch("trades", 0, "MANY", [str(vens[i]) for i in u], inv.astype(np.int32),
                       ts[a:b], seq[a:b], {"price": vals[0][a:b], "size": vals[1][a:b]})
        assert GroupEncoder.message(out, g, True) == encode_binary(wb, compress=True)
