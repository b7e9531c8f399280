"""Wire formats: bytes per tick and encode/decode speed, JSON vs binary vs binary+lz4.

Synthetic ticks as the broker sees them: one shard carrying --symbols symbols (so one
symbol's seq numbers advance by ~symbols between its ticks), each symbol on 1-3 venues, prices
a random walk on a 0.01 grid (values k/100, as a feed parser produces), sizes in round lots of
100, timestamps advancing 1 us - 10 ms (log-uniform) per tick. Cut into per-symbol batches of
--batch rows (one channel's batch), for trades and quotes.

Prints one JSON line:

    bytes_per_tick.{trades,quotes}.{json,binary,binary+lz4,peer_json_dumps}
    ratio_json_vs_{binary,binary+lz4}      JSON bytes / binary bytes (goal >= 10)
    *_ns_timestamps                        the same with nanosecond-resolution timestamps
    speed.{batch}.{fmt}.{wall,cpu}.{encode,decode,end_to_end}_ticks_per_s
                                           best of --repeat runs; "cpu" counts this thread's
                                           CPU time only (steady on a shared machine)
    speed.{batch}.peer_json_dumps          json.dumps(dict) per tick / json.loads per message
                                           (what a redis-py user writes), same ticks
    ratio_binary+lz4_vs_peer_end_to_end_cpu_batch_{rows}   binary+lz4 / the peer, CPU time

Run: PYTHONPATH=. python benchmarks/bench_wire.py [--batches 200] [--batch 100] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from wayy.wire import FORMATS, WireBatch, decode, encode, warm_up

T0 = 1_674_100_800_000_000_000
VENUES = ["NYSE", "NASDAQ", "ARCA", "BATS", "IEX", "EDGX"]


def make_batches(table: str, nbatches: int, rows: int, symbols: int, seed: int,
                 ns_ts: bool) -> list[WireBatch]:
    """``nbatches`` per-symbol batches of ``rows`` realistic ticks."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(nbatches):
        sym = f"S{b % symbols:03d}"
        nv = int(rng.integers(1, 4))
        venues = list(rng.choice(VENUES, nv, replace=False))
        gaps_ns = np.exp(rng.uniform(np.log(1e3), np.log(1e7), rows))  # 1 us .. 10 ms
        gaps = gaps_ns.astype(np.int64) if ns_ts else (gaps_ns / 1e3).astype(np.int64) * 1000
        ts = T0 + b * 10**9 + np.cumsum(np.maximum(gaps, 1))
        seq = 1_000_000 + b * rows * symbols + np.cumsum(rng.geometric(1 / symbols, rows))
        cents = int(rng.integers(1_000, 50_000)) + np.cumsum(rng.integers(-3, 4, rows))
        lots = lambda: rng.integers(1, 11, rows) * 100.0  # noqa: E731
        if table == "trades":
            values = {"price": cents / 100, "size": lots()}
        else:
            ask = cents + rng.integers(1, 4, rows)
            values = {"bid": cents / 100, "ask": ask / 100, "bid_size": lots(),
                      "ask_size": lots()}
        out.append(WireBatch(table=table, shard=b % 8, symbol=sym, venues=venues,
                             venue=rng.integers(0, nv, rows).astype(np.int32), ts=ts, seq=seq,
                             values=values))
    return out


def sizes(batches: list[WireBatch]) -> dict:
    ticks = sum(len(b) for b in batches)
    out = {fmt: round(sum(len(m) for b in batches for m in encode(b, fmt)) / ticks, 2)
           for fmt in FORMATS}
    peer = sum(len(json.dumps(r).encode()) for b in batches for r in b.rows())
    out["peer_json_dumps"] = round(peer / ticks, 2)
    return out


def best(fn, repeat: int) -> tuple[float, float]:
    """Smallest wall time and smallest CPU time (this thread) of ``repeat`` runs of fn().
    CPU time leaves out the time other processes held the core: on a shared 2-core machine
    it is the steadier measure of what one core does."""
    wall, cpu = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - w)
    return min(wall), min(cpu)


def rates(ticks: int, enc: tuple[float, float], dec: tuple[float, float]) -> dict:
    out = {}
    for i, clock in enumerate(("wall", "cpu")):
        out[clock] = {"encode_ticks_per_s": round(ticks / enc[i]),
                      "decode_ticks_per_s": round(ticks / dec[i]),
                      "end_to_end_ticks_per_s": round(ticks / (enc[i] + dec[i]))}
    return out


def speed(batches: list[WireBatch], repeat: int) -> dict:
    ticks = sum(len(b) for b in batches)
    out = {}
    for fmt in FORMATS:
        msgs = [m for b in batches for m in encode(b, fmt)]
        te = best(lambda: [encode(b, fmt) for b in batches], repeat)
        td = best(lambda: [decode(m) for m in msgs], repeat)
        out[fmt] = rates(ticks, te, td)
    # the peer: one dict per tick (as a feed handler holds them), json.dumps / json.loads
    dicts = [r for b in batches for r in b.rows()]
    pmsgs = [json.dumps(d).encode() for d in dicts]
    te = best(lambda: [json.dumps(d).encode() for d in dicts], repeat)
    td = best(lambda: [json.loads(m) for m in pmsgs], repeat)
    out["peer_json_dumps"] = rates(ticks, te, td)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=200, help="batches per table")
    ap.add_argument("--batch", type=int, default=100, help="rows per batch (sizes)")
    ap.add_argument("--symbols", type=int, default=50, help="symbols sharing the shard")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    warm_up()
    res: dict = {"bench": "wire", "python": platform.python_version(),
                 "numpy": np.__version__, "cpus": os.cpu_count(), "loadavg_start": load,
                 "config": vars(args)}
    bpt: dict = {}
    for table, seed in (("trades", 1), ("quotes", 2)):
        bpt[table] = sizes(make_batches(table, args.batches, args.batch, args.symbols, seed,
                                        False))
        bpt[table + "_ns_timestamps"] = sizes(make_batches(table, args.batches, args.batch,
                                                           args.symbols, seed, True))
    res["bytes_per_tick"] = bpt
    for key, s in bpt.items():
        for fmt in ("binary", "binary+lz4"):
            res[f"ratio_json_vs_{fmt}_{key}"] = round(s["json"] / s[fmt], 2)
        res[f"ratio_peer_json_vs_binary+lz4_{key}"] = round(s["peer_json_dumps"] /
                                                            s["binary+lz4"], 2)
    res["speed"] = {}
    for rows in sorted({100, 1000, args.batch}):
        nb = max(1, args.batches * args.batch // rows)
        batches = make_batches("trades", nb, rows, args.symbols, 3, False)
        res["speed"][f"trades_batch_{rows}"] = sp = speed(batches, args.repeat)
        res[f"ratio_binary+lz4_vs_peer_end_to_end_cpu_batch_{rows}"] = round(
            sp["binary+lz4"]["cpu"]["end_to_end_ticks_per_s"] /
            sp["peer_json_dumps"]["cpu"]["end_to_end_ticks_per_s"], 1)
    res["speed"]["quotes_batch_100"] = speed(
        make_batches("quotes", args.batches, 100, args.symbols, 4, False), args.repeat)
    res["loadavg_1m"] = os.getloadavg()[0]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
