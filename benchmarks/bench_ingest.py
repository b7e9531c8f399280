"""Ingest benchmark: one shard, producer to committed rows, against a plain numpy append.

Prints one JSON line. A database with one shard is created for the run (segments in
/dev/shm, a shard writer forked from this process); then, in the same run:

  batch    ``Producer.publish_batch("trades", cols)`` of BATCH-row batches (4-character
           symbols over 500 names, 8 venues, as numpy 'U4' arrays; int64 ts; float64 price
           and size), timed from the first publish until the writer's committed row count
           reaches the total.
  single   ``Producer.publish("trades", symbol=, venue=, price=, size=)`` one tick at a
           time (ts = now), timed the same way.
  peers    the same rows appended with plain numpy into preallocated arrays: batch columns
           copied slice by slice into fresh arrays (``numpy_append_rows_per_s``: their pages
           are touched for the first time, as a database's new columns are) and again into
           the same, now mapped, arrays (``numpy_append_warm_rows_per_s``); and one row at a
           time from Python (``numpy_append_one_per_s``) -- what a process that keeps ticks
           in its own arrays would pay. No checks, no IPC, no durability: an upper bound.
  parts    where the time goes, on a second database with no writer running: the producer
           alone filling a big ring (``producer_only_*``), then the writer's passes alone
           draining it (``writer_only_*``), both in this process, for batches and ticks.

Every phase checks that the committed rows equal the rows sent and that no row was
rejected; the benchmark exits non-zero otherwise.

    PYTHONPATH=. python benchmarks/bench_ingest.py [--batch-rows 3000000] [--single 300000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import tempfile
import time

import numpy as np

from shm import inbound
from shm.layout import inbound as L
from shm.layout import tables as T
from shm.segment import db_prefix, list_segments, unlink_quiet
from shm.change_ring import ChangeRingWriter
from shm.shard import Control, InboundRing, ShardData, segment_name

BATCH = 1000
N_SYMBOLS = 500
VENUES = ("NYSE", "ARCA", "BATS", "IEX", "EDGX", "NSDQ", "BZX", "MEMX")


def make_batches(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Trade batches shaped like a feed: rising timestamps, random symbols and venues."""
    rng = np.random.default_rng(seed)
    syms = np.array([f"S{i:03d}" for i in range(N_SYMBOLS)])
    vens = np.array(VENUES)
    ts0 = time.time_ns() - 3_600_000_000_000
    out = []
    for i in range(count):
        out.append({
            "ts": (ts0 + i * 1_000_000 + np.cumsum(rng.integers(0, 1000, BATCH))).astype(np.int64),
            "symbol": syms[rng.integers(0, N_SYMBOLS, BATCH)],
            "venue": vens[rng.integers(0, len(vens), BATCH)],
            "price": np.round(100 + np.cumsum(rng.normal(0, 0.02, BATCH)), 2),
            "size": (rng.integers(1, 50, BATCH) * 100).astype(np.float64),
        })
    return out


def _cleanup(prefix: str) -> None:
    for name in list_segments(prefix):
        unlink_quiet(name)


@contextlib.contextmanager
def _single_shard_db(path: str, capacity: int, ring_bytes: int = L.DEFAULT_CAPACITY,
                     writer: bool = True, wal_cfg=None):
    """A one-shard database at ``path`` without the supervisor; yields its segment prefix.

    Creates the segments, writes the manifest and holds the lock, then forks a shard writer
    (unless ``writer`` is False), with a WAL in ``path`` when ``wal_cfg`` (a
    workers.shard_log.WalConfig) enables one. On exit: SIGTERM the writer, unlink the
    segments.
    """
    from wayy.manifest import Manifest, acquire_lock
    from workers import writer as writer_mod

    os.makedirs(path, exist_ok=True)
    prefix = db_prefix(path)
    _cleanup(prefix)
    fd = acquire_lock(path)
    if fd is None:
        raise RuntimeError(f"database lock at {path} is held by another process")
    pid = 0
    segs = []
    try:
        segs = [ShardData.create(prefix, 0, 1, capacity), InboundRing.create(prefix, 0, ring_bytes),
                Control.create(prefix, 0),
                ChangeRingWriter.create(segment_name(prefix, 0, "changes"), 65536)]
        Manifest(path, prefix, 1, capacity, ring_bytes, segs[0].max_symbols,
                 segs[0].max_venues, os.getpid(), time.time_ns()).write()
        if writer:
            writer_mod.warm_up()
            pid = os.fork()
            if pid == 0:  # the shard writer
                code = 0
                try:
                    os.close(fd)
                    writer_mod.run(prefix, 0, path, wal_cfg)
                except BaseException:  # noqa: BLE001  (report, never return into the bench)
                    import traceback
                    traceback.print_exc()
                    code = 1
                finally:
                    os._exit(code)
            ring = segs[1]
            deadline = time.monotonic() + 30.0
            while not ring.accepting()[0]:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    pid = 0
                    raise RuntimeError("shard writer exited before accepting ticks")
                if time.monotonic() > deadline:
                    raise RuntimeError("shard writer did not start accepting within 30 s")
                time.sleep(0.001)
        yield prefix
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        for s in segs:
            s.close()
        _cleanup(prefix)
        os.close(fd)


def wait_committed(data: ShardData, total: int, timeout: float = 60.0) -> float:
    """Poll the shard's committed trades count until it reaches ``total``; returns the time."""
    deadline = time.monotonic() + timeout
    committed = data.committed
    while True:
        got = committed(T.TRADES)
        if got >= total:
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {got} of {total} rows committed after {timeout:g} s")
        time.sleep(20e-6)


def check(prefix: str, data: ShardData, total: int, what: str) -> None:
    """Fail loudly unless exactly ``total`` trades are committed and nothing was rejected."""
    got = data.committed(T.TRADES)
    ctl = Control.attach(prefix, 0)
    rejects = {T.REJECT_NAMES[i]: int(v) for i, v in enumerate(ctl.rejects) if v}
    ctl.close()
    if got != total or rejects:
        raise SystemExit(f"bench_ingest {what}: committed {got} of {total} rows, "
                         f"rejects {rejects}")


def bench_end_to_end(path: str, batches: list, batch_rows: int, single: int,
                     capacity: int, ring_bytes: int, wal_cfg=None) -> dict:
    from wayy.producer import Producer

    out: dict = {}
    with _single_shard_db(path, capacity, ring_bytes, wal_cfg=wal_cfg) as prefix:
        data = ShardData.attach(prefix, 0)
        p = Producer(path)
        # first calls load every kernel from numba's cache: keep that out of the timing
        p.publish_batch("trades", batches[0])
        p.publish("trades", symbol="S000", venue="NYSE", price=1.0, size=1.0)
        total = BATCH + 1
        wait_committed(data, total)

        n_batches = batch_rows // BATCH
        nb = len(batches)
        publish_batch = p.publish_batch
        start = time.perf_counter()
        for i in range(n_batches):
            publish_batch("trades", batches[i % nb])
        sent = time.perf_counter()
        total += n_batches * BATCH
        done = wait_committed(data, total)
        check(prefix, data, total, "batch")
        out["batch_rows"] = n_batches * BATCH
        out["batch_rows_per_s"] = round(n_batches * BATCH / (done - start))
        out["batch_publish_rows_per_s"] = round(n_batches * BATCH / (sent - start))

        b0 = batches[0]
        ticks = list(zip(b0["symbol"].tolist(), b0["venue"].tolist(), b0["price"].tolist(),
                         b0["size"].tolist()))
        nt = len(ticks)
        publish = p.publish
        start = time.perf_counter()
        for i in range(single):
            s, v, px, sz = ticks[i % nt]
            publish("trades", symbol=s, venue=v, price=px, size=sz)
        sent = time.perf_counter()
        total += single
        done = wait_committed(data, total)
        check(prefix, data, total, "single")
        out["single_ticks"] = single
        out["single_ticks_per_s"] = round(single / (done - start))
        out["single_publish_ticks_per_s"] = round(single / (sent - start))
        p.close()
        data.close()
    return out


def bench_numpy(batches: list, batch_rows: int, single: int) -> dict:
    """The peer: the same rows appended into preallocated numpy arrays (no checks, no IPC)."""
    n_batches = batch_rows // BATCH
    nb = len(batches)
    b0 = batches[0]
    n = n_batches * BATCH
    big = {k: np.empty(n, v.dtype) for k, v in b0.items()}
    items = list(big.items())

    def append() -> float:
        start = time.perf_counter()
        o = 0
        for i in range(n_batches):
            b = batches[i % nb]
            for k, arr in items:
                arr[o : o + BATCH] = b[k]
            o += BATCH
        return time.perf_counter() - start

    t_batch = append()  # fresh arrays: first-touch page faults, as the database's columns
    t_warm = append()  # the same arrays again: pages already mapped

    ticks = list(zip(b0["symbol"].tolist(), b0["venue"].tolist(), b0["price"].tolist(),
                     b0["size"].tolist()))
    nt = len(ticks)
    ts_a = np.empty(single, np.int64)
    sym_a = np.empty(single, b0["symbol"].dtype)
    ven_a = np.empty(single, b0["venue"].dtype)
    px_a = np.empty(single, np.float64)
    sz_a = np.empty(single, np.float64)
    now = time.time_ns
    start = time.perf_counter()
    for i in range(single):
        s, v, px, sz = ticks[i % nt]
        ts_a[i] = now()
        sym_a[i] = s
        ven_a[i] = v
        px_a[i] = px
        sz_a[i] = sz
    t_one = time.perf_counter() - start
    return {"numpy_append_rows_per_s": round(n / t_batch),
            "numpy_append_warm_rows_per_s": round(n / t_warm),
            "numpy_append_one_per_s": round(single / t_one)}


def bench_parts(path: str, batches: list, capacity: int, single: int) -> dict:
    """Where the time goes: the producer alone filling a big ring (no writer running), then
    the writer's passes alone draining it, in this process; for batches, then single ticks."""
    from wayy.producer import Producer
    from workers.writer import ShardWriter

    ring_bytes = 128 * 2**20
    row_bytes = T.INBOUND_ROW_BYTES[T.TRADES]
    n_batches = int(ring_bytes * 0.9) // L.record_bytes(row_bytes, BATCH)
    n_ticks = min(single, int(ring_bytes * 0.9) // L.record_bytes(row_bytes, 1))
    b0 = batches[0]
    ticks = list(zip(b0["symbol"].tolist(), b0["venue"].tolist(), b0["price"].tolist(),
                     b0["size"].tolist()))
    out = {}
    for kind in ("batch", "single"):
        with _single_shard_db(path, capacity, ring_bytes, writer=False) as prefix:
            ring = InboundRing.attach(prefix, 0)
            inbound.set_accepting(ring.hdr32, 1, L.REFUSE_NONE)
            p = Producer(path)
            # fault the ring into the producer's own mapping (page tables are per mapping):
            # the end-to-end run laps a small ring whose pages are mapped after the first lap
            p._rings[0].data8[:] = 0
            p.publish_batch("trades", batches[0])
            for s, v, px, sz in ticks:
                p.publish("trades", symbol=s, venue=v, price=px, size=sz)
            first = BATCH + len(ticks)
            if kind == "batch":
                nb = len(batches)
                publish_batch = p.publish_batch
                start = time.perf_counter()
                for i in range(n_batches):
                    publish_batch("trades", batches[i % nb])
                t_prod = time.perf_counter() - start
                rows = n_batches * BATCH
            else:
                publish = p.publish
                nt = len(ticks)
                start = time.perf_counter()
                for i in range(n_ticks):
                    s, v, px, sz = ticks[i % nt]
                    publish("trades", symbol=s, venue=v, price=px, size=sz)
                t_prod = time.perf_counter() - start
                rows = n_ticks
            w = ShardWriter(prefix, 0)
            w.on_start()
            while w.do_work():  # the warm-up rows
                if int(w.state[T.TRADES]) >= first:
                    break
            while int(w.state[T.TRADES]) < first:
                w.do_work()
            start = time.perf_counter()
            while w.do_work():
                pass
            t_writer = time.perf_counter() - start
            data = ShardData.attach(prefix, 0)
            check(prefix, data, first + rows, f"parts {kind}")
            data.close()
            w.on_close()
            p.close()
            ring.close()
        unit = "rows" if kind == "batch" else "ticks"
        out[f"producer_only_{kind}_{unit}_per_s"] = round(rows / t_prod)
        out[f"writer_only_{kind}_{unit}_per_s"] = round(rows / t_writer)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-rows", type=int, default=3_000_000)
    parser.add_argument("--single", type=int, default=300_000)
    parser.add_argument("--capacity", type=int, default=2**24, help="rows per table")
    parser.add_argument("--ring-bytes", type=int, default=L.DEFAULT_CAPACITY)
    parser.add_argument("--no-parts", action="store_true", help="skip the component timings")
    args = parser.parse_args()

    batches = make_batches(64)
    result: dict = {"bench": "ingest", "python": platform.python_version(),
                    "numpy": np.__version__, "cpus": os.cpu_count(),
                    "config": {"shards": 1, "batch": BATCH, "batch_rows": args.batch_rows,
                               "single_ticks": args.single, "capacity": args.capacity,
                               "ring_bytes": args.ring_bytes, "symbols": N_SYMBOLS,
                               "venues": len(VENUES), "symbol_dtype": "U4"}}
    result["loadavg_start"] = round(os.getloadavg()[0], 2)
    base = os.environ.get("WAYY_BENCH_DIR") or tempfile.gettempdir()
    with tempfile.TemporaryDirectory(dir=base, prefix="wayy-bench-ingest-") as d:
        result.update(bench_end_to_end(os.path.join(d, "db"), batches, args.batch_rows,
                                       args.single, args.capacity, args.ring_bytes))
        result.update(bench_numpy(batches, args.batch_rows, args.single))
        if not args.no_parts:
            result.update(bench_parts(os.path.join(d, "parts"), batches, args.capacity,
                                      args.single))
    result["ratio_batch_vs_numpy_append"] = round(
        result["batch_rows_per_s"] / result["numpy_append_rows_per_s"], 4)
    result["ratio_batch_vs_numpy_append_warm"] = round(
        result["batch_rows_per_s"] / result["numpy_append_warm_rows_per_s"], 4)
    result["ratio_single_vs_numpy_append"] = round(
        result["single_ticks_per_s"] / result["numpy_append_rows_per_s"], 4)
    result["ratio_single_vs_numpy_append_one"] = round(
        result["single_ticks_per_s"] / result["numpy_append_one_per_s"], 4)
    result["loadavg_1m"] = round(os.getloadavg()[0], 2)  # other work on the box skews all
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
