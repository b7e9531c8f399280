"""Write the wire-format test vectors: *.bin messages and vectors.json describing them.

Run once (``python tests/vectors/wire/make_vectors.py``) when the format changes; the tests
never regenerate them: they decode the stored files and check that re-encoding gives the same
bytes. Inputs are written out literally or from integer arithmetic, so they do not depend on a
random generator's version.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from wayy.wire import WireBatch, decode, encode_binary, encode_json

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = 1_674_100_800_123_456_789  # the original design's example timestamp


def lcg(seed: int, n: int, mod: int) -> list[int]:
    """A tiny deterministic generator (numbers in [0, mod))."""
    out, x = [], seed
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append((x >> 33) % mod)
    return out


def batch(table, shard, symbol, venues, venue, ts, seq, **values) -> WireBatch:
    return WireBatch(table=table, shard=shard, symbol=symbol, venues=list(venues),
                     venue=np.array(venue, dtype=np.int32), ts=np.array(ts, dtype=np.int64),
                     seq=np.array(seq, dtype=np.int64),
                     values={k: np.array(v, dtype=np.float64) for k, v in values.items()})


def vectors() -> list[tuple[str, str, WireBatch, bool]]:
    out = []
    # 1. tiny, uncompressed: the worked example in docs/wire-format.md
    out.append(("trades_aapl_3rows", "3 AAPL trades on 2 venues: the worked example", batch(
        "trades", 3, "AAPL", ["NYSE", "ARCA"], [0, 1, 0],
        [T0, T0 + 1_000, T0 + 251_000], [1000, 1007, 1010],
        price=[150.25, 150.26, 150.24], size=[100, 300, 100]), False))

    # 2. 100 realistic trades: random walk on a 0.01 grid, round lots, us timestamps
    n = 100
    steps, lots, gaps, sgaps, vens = (lcg(1, n, 7), lcg(2, n, 10), lcg(3, n, 5000),
                                      lcg(4, n, 120), lcg(5, n, 3))
    cents, ts, seq = [18_999], [T0], [52_001]
    for i in range(1, n):
        cents.append(cents[-1] + steps[i] - 3)
        ts.append(ts[-1] + (gaps[i] + 1) * 1_000)
        seq.append(seq[-1] + sgaps[i] + 1)
    out.append(("trades_msft_100", "100 MSFT trades, 3 venues, decimal prices, binary", batch(
        "trades", 5, "MSFT", ["NASDAQ", "NYSE", "BATS"], vens, ts, seq,
        price=[c / 100 for c in cents], size=[(k + 1) * 100 for k in lots]), False))

    # 3. 200 quotes at a fixed 1 ms cadence on one venue: compressible, sent with LZ4
    n = 200
    moves = lcg(6, n, 3)
    bid, ts, seq = [41_210], [T0], [7]
    for i in range(1, n):
        bid.append(bid[-1] + moves[i] - 1)
        ts.append(ts[-1] + 1_000_000)
        seq.append(seq[-1] + 4)
    out.append(("quotes_spy_arca_lz4", "200 SPY quotes on ARCA, LZ4 body", batch(
        "quotes", 0, "SPY", ["ARCA"], [0] * n, ts, seq,
        bid=[b / 100 for b in bid], ask=[(b + 1) / 100 for b in bid],
        bid_size=[500] * n, ask_size=[(1 + (i % 4 == 0)) * 500 for i in range(n)]), True))

    # 4. values that are not short decimals: raw float64 columns; ns timestamps, not monotonic
    out.append(("trades_raw_floats", "raw float64 fallback, crypto-style sizes", batch(
        "trades", 7, "BTC-USD", ["coinbase", "kraken"], [1, 0, 1, 1],
        [T0, T0 - 17, T0 + 999_999_999, T0 + 1_000_000_000], [2**40, 2**40 + 1, 2**41, 2**42],
        price=[0.1 + 0.2, 1 / 3, 2.0 ** -30, 43_210.123456789012],
        size=[0.00012345678901234, 1e-300, 5e-324, 1.7976931348623157e308]), False))

    # 5. one row, the empty venue
    out.append(("quotes_single_row", "one quote, empty venue name", batch(
        "quotes", 4_294_967_295, "EURUSD.FX", [""], [0], [T0], [0],
        bid=[1.08345], ask=[1.08347], bid_size=[1_000_000], ask_size=[2_500_000]), False))
    return out


def describe(b: WireBatch) -> dict:
    vals = {k: [float(x) for x in v] for k, v in b.values.items()}
    bits = {k: [struct.pack(">d", x).hex() for x in v] for k, v in vals.items()}
    return {"table": b.table, "shard": int(b.shard), "symbol": b.symbol, "venues": b.venues,
            "venue": [int(x) for x in b.venue], "ts": [int(x) for x in b.ts],
            "seq": [int(x) for x in b.seq], "values": vals, "values_bits": bits}


def dumps(obj: object, indent: str = "") -> str:
    """JSON with objects one key a line and lists of numbers or strings on one line."""
    if isinstance(obj, dict):
        inner = indent + "  "
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        inner = indent + "  "
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in obj) + "\n" + indent + "]"
    return json.dumps(obj)


def main() -> None:
    files = []
    for name, what, b, compress in vectors():
        msg = encode_binary(b, compress=compress)
        assert encode_binary(decode(msg), compress=compress) == msg
        with open(os.path.join(HERE, name + ".bin"), "wb") as f:
            f.write(msg)
        files.append({"file": name + ".bin", "about": what, "compress": compress,
                      "lz4": bool(msg[5] & 1), "bytes": len(msg), "decoded": describe(b)})
    jb = vectors()[0][2]
    json_msgs = [{"message": m.decode("ascii"), "decoded": row}
                 for m, row in zip(encode_json(jb), jb.rows())]
    doc = {"format": "wayy wire format version 1 (docs/wire-format.md)",
           "binary": files, "json": json_msgs}
    with open(os.path.join(HERE, "vectors.json"), "w") as f:
        f.write(dumps(doc) + "\n")
    for x in files:
        print(x["file"], x["bytes"], "bytes", "lz4" if x["lz4"] else "")


if __name__ == "__main__":
    main()
