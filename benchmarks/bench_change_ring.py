"""Change ring throughput: one writer process streaming to one reader process, and publish alone.

Prints one JSON line:

    stream_*    the writer (this process) publishes N records as fast as it can while a forked
                reader follows with read_many in batches; records/s as the reader receives them,
                and how many the reader lost to laps (the writer never waits for it)
    publish_*   publish with no reader: inside one kernel loop, and one Python call per record
    peer_pipe_* the same records as 64-byte rows through an os.pipe in batches (a peer with
                backpressure instead of laps), writer here, reader in a forked process
    read_*      read_many over a full ring in the same process (no writer): the reader's own
                ceiling, without cache-line transfers or a contended CPU
    load_1min   the host's load average before the run: on 2 cores, any other busy process
                takes the CPU one of the two streaming processes needs

Run: PYTHONPATH=. python benchmarks/bench_change_ring.py [--records N] [--capacity C]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time

import numba
import numpy as np

from shm import change_ring as C
from shm.atomics import clock_monotonic_ns, cpu_relax
from shm.layout import change_ring as L


@numba.njit(nogil=True)
def _produce(hdr, slots, wctl, n):
    for i in range(n):
        C.publish(hdr, slots, wctl, i, 1, i & 1, i, i, i, np.int64(1) << (i & 63))
    return n


@numba.njit(nogil=True)
def _consume(hdr, slots, out2d, n_total, max_ns):
    capacity = slots.shape[0] // 8
    deadline = clock_monotonic_ns() + max_ns
    received = laps = lost = 0
    check = 0  # consume what was read so no load can be optimised away
    pos = 0
    while pos < n_total:
        st, n = C.read_many(hdr, slots, pos, out2d, out2d.shape[0])
        for i in range(n):
            check += out2d[i, 1]
        received += n
        pos += n
        if st == C.LAPPED:
            laps += 1
            resume = max(pos + 1, C.load_tail(hdr) - capacity // 2)
            lost += resume - pos
            pos = resume
        elif st == C.NOT_READY:
            if C.is_closed(hdr) and C.load_tail(hdr) <= pos:
                break
            if clock_monotonic_ns() > deadline:
                break
            cpu_relax()
    return received, laps, lost, clock_monotonic_ns(), check


@numba.njit(nogil=True)
def _reread(hdr, slots, out2d, first, n, reps):
    check = 0
    for _ in range(reps):
        pos = first
        while pos < first + n:
            st, k = C.read_many(hdr, slots, pos, out2d, out2d.shape[0])
            if st == C.LAPPED or k == 0:
                return -1
            for i in range(k):
                check += out2d[i, 1]
            pos += k
    return check


def _reader(name: str, n: int, batch: int, ready, results) -> None:
    with C.ChangeRingReader.attach(name) as r:
        out2d = C.record_buffer(batch)
        ready.put(os.getpid())
        received, laps, lost, t_end, _ = _consume(r.hdr, r.slots, out2d, n, 120 * 10**9)
        results.put((int(received), int(laps), int(lost), int(t_end)))


def _warm(capacity: int, batch: int) -> None:
    hdr = np.zeros(L.HEADER_I64, np.int64)
    slots = np.zeros(capacity * 8, np.int64)
    wctl = np.zeros(L.WAIT_I32, np.int32)
    hdr[L.CAPACITY_I64] = capacity
    _produce(hdr, slots, wctl, 4)
    C.close_ring(hdr, wctl)
    hdr.flags.writeable = slots.flags.writeable = False
    _consume(hdr, slots, C.record_buffer(batch), 4, 10**9)
    _reread(hdr, slots, C.record_buffer(batch), 0, 4, 1)


def _stream(ctx, name: str, n: int, cap: int, batch: int) -> dict:
    """Writer here, reader in a forked process; records/s as the reader receives them."""
    w = C.ChangeRingWriter.create(name, cap)
    ready, results = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_reader, args=(name, n, batch, ready, results), daemon=True)
    p.start()
    try:
        ready.get(timeout=60)
        t0 = clock_monotonic_ns()
        _produce(w.hdr, w.slots, w.wctl, n)
        t_written = clock_monotonic_ns()
        w.close()
        received, laps, lost, t_end = results.get(timeout=180)
    finally:
        w.close()
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join()
        C.unlink(name)
    return dict(
        stream_records_per_s=round(received / ((t_end - t0) / 1e9)),
        stream_writer_records_per_s=round(n / ((t_written - t0) / 1e9)),
        stream_received=received, stream_lapped=laps, stream_lost=lost,
    )


def _pipe_reader(fd: int, other_end: int, nbytes: int, results) -> None:
    os.close(other_end)  # else EOF never comes
    got = 0
    while got < nbytes:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        got += len(chunk)
    results.put((got, clock_monotonic_ns()))


def _pipe_peer(ctx, n: int, batch: int) -> dict:
    """Peer: the same 64-byte records through a pipe, ``batch`` per write."""
    rfd, wfd = os.pipe()
    results = ctx.Queue()
    blocks = n // batch
    p = ctx.Process(target=_pipe_reader, args=(rfd, wfd, blocks * batch * 64, results),
                    daemon=True)
    p.start()
    os.close(rfd)
    try:
        block = np.arange(batch * 8, dtype=np.int64).tobytes()
        t0 = clock_monotonic_ns()
        for _ in range(blocks):
            os.write(wfd, block)
        os.close(wfd)
        wfd = -1
        got, t_end = results.get(timeout=180)
    finally:
        if wfd >= 0:
            os.close(wfd)
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join()
    return {"peer_pipe_records_per_s": round(got // 64 / ((t_end - t0) / 1e9))}


def _alone(name: str, n: int, cap: int, batch: int, calls: int) -> dict:
    """Publish with no reader, then read a full ring with no writer, kernels and Python calls."""
    res = {}
    w = C.ChangeRingWriter.create(name, cap)
    try:
        t0 = time.perf_counter()
        _produce(w.hdr, w.slots, w.wctl, n)
        res["publish_kernel_records_per_s"] = round(n / (time.perf_counter() - t0))
        pub = w.publish
        t0 = time.perf_counter()
        for i in range(calls):
            pub(i, 1, 0, i, i, i, 1)
        res["publish_python_calls_per_s"] = round(calls / (time.perf_counter() - t0))
        with C.ChangeRingReader.attach(name) as r:
            reps = max(1, n // cap)
            first = r.tail() - cap
            out2d = C.record_buffer(batch)
            _reread(r.hdr, r.slots, out2d, first, cap, 1)
            t0 = time.perf_counter()
            ok = _reread(r.hdr, r.slots, out2d, first, cap, reps)
            dt = time.perf_counter() - t0
            assert ok >= 0, "lapped with no writer running"
            res["read_kernel_records_per_s"] = round(reps * cap / dt)
            out = C.record_buffer()
            t0 = time.perf_counter()
            for i in range(calls):
                r.read(first + (i & (cap - 1)), out)
            res["read_python_calls_per_s"] = round(calls / (time.perf_counter() - t0))
    finally:
        w.close()
        C.unlink(name)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--capacity", type=int, default=1 << 16)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--python-calls", type=int, default=300_000)
    args = ap.parse_args()
    n, cap, batch = args.records, args.capacity, args.batch

    C.warm_up()
    _warm(cap, batch)
    ctx = multiprocessing.get_context("fork")
    name = f"/wayy.bench.{os.getpid()}.cr"
    result: dict = {"bench": "change_ring", "records": n, "capacity": cap, "batch": batch,
                    "cpus": os.cpu_count(), "machine": platform.machine(),
                    "load_1min": round(os.getloadavg()[0], 2)}
    try:
        result.update(_stream(ctx, name, n, cap, batch))
        result.update(_alone(name, n, cap, batch, args.python_calls))
        result.update(_pipe_peer(ctx, n, batch))
    finally:
        C.unlink(name)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
