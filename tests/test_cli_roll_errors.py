"""`wayy roll` and `wayy start --detach` when things go wrong: a roll that fails is reported at
once and loses nothing, a database that stops under a roll ends it with one line, and query
bounds beyond int64 nanoseconds mean what they say."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest

import wayy
from shm.layout import control as C
from shm.layout import inbound as L
from shm.segment import db_prefix, list_segments, unlink_quiet
from shm.shard import Control, InboundRing, segment_name
from tests.conftest import REPO, run_cli, wait_for, wayy_cmd
from tests.test_durability import assert_same, publish_mixed, snapshot
from tests.test_roll import committed_in_memory, partitions


def one_error_line(stderr: str) -> str:
    """The single line a failing command printed; fails if there is more, or a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def control_counters(path: str, shards: int) -> list[np.ndarray]:
    ctls = [Control.attach(db_prefix(path), k) for k in range(shards)]
    try:
        return [c.counters.copy() for c in ctls]
    finally:
        for c in ctls:
            c.close()


@pytest.mark.parametrize("detach", [False, True], ids=["foreground", "detached"])
def test_start_in_a_directory_that_cannot_be_made_is_one_line(tmp_path, detach):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a path under a file cannot be made, even by root
    bad = [str(blocker / "db")]
    if os.path.isdir("/proc"):
        bad.append("/proc/wayy-no-such-dir/db")  # what the outside check ran
    for path in bad:
        r = run_cli("start", "--db", path, "--feed", "none", "--no-redis",
                    *(["--detach"] if detach else []), timeout=60)
        assert r.returncode == 1, (path, r.stdout, r.stderr)
        line = one_error_line(r.stderr)
        assert line.startswith("wayy: error: cannot create database directory"), line
        assert path in line
        assert not list_segments(db_prefix(path))
    assert blocker.read_text() == ""


def test_failed_roll_is_reported_at_once_and_loses_nothing(db_factory):
    d = db_factory("--shards", "2", "--feed", "none", "--no-roll-daily", "--roll-fill", "0",
                   "--capacity", "16384")
    sent = publish_mixed(d.path, 12)
    db = wayy.attach(d.path)
    try:
        wait_for(lambda: len(db["trades"]) == sent, what="trades committed")
    finally:
        db.close()
    before = snapshot(d.path)
    in_memory = committed_in_memory(d.path)
    fails0 = [int(c[C.C_ROLL_FAILS]) for c in control_counters(d.path, 2)]

    # a roll writes DB/hist/DATE/TABLE/...: a file where that directory goes stops it for
    # root too (the outside check used a full tmpfs; mounting one needs privileges)
    hist = os.path.join(d.path, "hist")
    with open(hist, "w") as f:
        f.write("not a directory\n")
    t0 = time.monotonic()
    t_ns = time.time_ns()
    r = run_cli("roll", "--db", d.path, "--timeout", "60")
    took = time.monotonic() - t0
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert took < 15, f"took {took:.1f}s: the failure waited for the timeout"
    assert "Traceback" not in r.stderr
    for k in range(2):
        assert f"shard {k}: roll failed (see the log of `wayy start`)" in r.stderr, r.stderr
    assert "did not roll" not in r.stderr and "rolled" not in r.stdout
    counters = control_counters(d.path, 2)
    for k, c in enumerate(counters):
        assert int(c[C.C_ROLL_FAILS]) == fails0[k] + 1
        assert t_ns <= int(c[C.C_LAST_ROLL_FAIL_NS]) <= time.time_ns()
        assert int(c[C.C_ROLLS]) == 0
        assert int(c[C.C_STATE]) == C.STATE_RUNNING
    assert "roll (request) failed" in d.log()
    assert committed_in_memory(d.path) == in_memory  # nothing left memory
    st = run_cli("status", "--db", d.path)  # the status says so too
    assert st.returncode == 0 and "shard 1: 1 roll(s) to history failed" in st.stdout, st.stdout
    assert d.status()["shards"][0]["roll_failures"] == fails0[0] + 1

    os.remove(hist)
    more = publish_mixed(d.path, 3, seed=5, first_price=1_000_000.0)  # still ingesting
    db = wayy.attach(d.path)
    try:
        wait_for(lambda: len(db["trades"]) == sent + more, what="trades after the failure")
    finally:
        db.close()
    mid = snapshot(d.path)
    assert np.isin(before["trades"]["seq"], mid["trades"]["seq"]).all()
    assert np.isin(before["quotes"]["seq"], mid["quotes"]["seq"]).all()
    r = run_cli("roll", "--db", d.path, "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert "shard 0: rolled" in r.stdout and "shard 1: rolled" in r.stdout
    assert committed_in_memory(d.path) == 0
    assert len(partitions(d.path)) == 4  # 2 tables x 2 shards
    after = snapshot(d.path)
    assert_same(mid, after)  # every row once, now read from history
    assert len(after["trades"]["seq"]) == sent + more
    assert run_cli("verify", "--db", d.path).returncode == 0


@pytest.mark.slow
def test_roll_ends_with_one_line_when_the_database_stops_meanwhile(db_factory):
    d = db_factory("--shards", "1", "--feed", "none", "--capacity", "2048")
    writer = d.status()["shards"][0]["writer_pid"]
    ring = InboundRing.attach(db_prefix(d.path), 0)
    asked = int(ring.hdr64[L.ROLL_REQUESTS_I64])
    # a stopped writer never answers the request, so the stop surely lands mid-wait
    os.kill(writer, signal.SIGSTOP)
    roller = stopper = None
    try:
        roller = subprocess.Popen(wayy_cmd("roll", "--db", d.path, "--timeout", "120"),
                                  cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        wait_for(lambda: int(ring.hdr64[L.ROLL_REQUESTS_I64]) > asked, timeout=30,
                 what="the roll request")
        t0 = time.monotonic()
        # the supervisor SIGKILLs the frozen writer after its grace period, then stops
        stopper = subprocess.Popen(wayy_cmd("stop", "--db", d.path, "--timeout", "60"),
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        out, err = roller.communicate(timeout=60)
        took = time.monotonic() - t0
        assert roller.returncode == 1, (out, err)
        line = one_error_line(err)
        assert line == (f"wayy: error: the database at {os.path.realpath(d.path)} stopped "
                        f"while rolling (0 of 1 shard(s) rolled)"), line
        assert took < 30, f"took {took:.1f}s: the roll did not notice the stop"
        assert stopper.wait(60) == 0
    finally:
        ring.close()
        for p in (roller, stopper):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        try:
            os.kill(writer, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert not list_segments(db_prefix(d.path))


def test_roll_when_a_segment_is_gone_is_one_line(db_factory):
    d = db_factory("--shards", "2", "--feed", "none", "--capacity", "2048")
    # what `wayy stop` leaves for an instant before it lets the lock go
    import posix_ipc

    posix_ipc.unlink_shared_memory(segment_name(db_prefix(d.path), 1, "data"))
    r = run_cli("roll", "--db", d.path, "--timeout", "60")
    assert r.returncode == 1
    line = one_error_line(r.stderr)
    assert line.startswith(f"wayy: error: no running database at "
                           f"{os.path.realpath(d.path)}"), line
    assert "rolled" not in r.stdout


def test_between_bounds_beyond_int64_are_no_bound(db_factory):
    d = db_factory("--shards", "2", "--feed", "none", "--capacity", "16384")
    sent = publish_mixed(d.path, 4)
    assert run_cli("roll", "--db", d.path).returncode == 0  # history and memory both
    more = publish_mixed(d.path, 2, seed=3, first_price=1_000_000.0)
    db = wayy.attach(d.path)
    try:
        t = db["trades"]
        wait_for(lambda: len(t) == sent + more, what="trades committed")
        everything = np.sort(t.between()["seq"])
        assert len(everything) == sent + more
        for kw in ({"end_ts": 2**70}, {"start_ts": -2**70},
                   {"start_ts": -2**70, "end_ts": 2**70},
                   {"end_ts": np.uint64(2**64 - 1)},
                   {"end_ts": np.datetime64("3000-01-01")},  # numpy's own cast wraps < 0
                   {"start_ts": np.datetime64("1500-01-01")},
                   {"end_ts": np.datetime64(10**15, "D")},
                   {"start_ts": np.datetime64(-10**9, "Y")}):
            np.testing.assert_array_equal(np.sort(t.between(**kw)["seq"]), everything,
                                          err_msg=str(kw))
        for kw in ({"start_ts": 2**70}, {"end_ts": -2**70},
                   {"start_ts": np.datetime64("2300-01-01")}):
            assert len(t.between(**kw)) == 0, kw
        got = t.between(start_ts=np.datetime64(1_700_000_000, "s"), end_ts=2**70,
                        symbol="S07")
        assert len(got) and set(got["symbol"]) == {"S07"}
        for bad in (np.datetime64("NaT"), 1.5, "2024-01-01", True):
            with pytest.raises(wayy.InvalidInput) as ei:
                t.between(end_ts=bad)
            assert isinstance(ei.value, ValueError) and "end_ts" in str(ei.value)
    finally:
        db.close()


def test_failed_roll_of_a_detached_database_names_its_log_file(tmp_path):
    path = os.path.realpath(str(tmp_path / "db"))
    r = run_cli("start", "--db", path, "--detach", "--shards", "1", "--feed", "none",
                "--no-redis", "--capacity", "2048", "--no-roll-daily")
    try:
        assert r.returncode == 0, r.stderr
        with wayy.Producer(path) as p:  # rows to roll: a roll of nothing writes no history
            for i in range(10):
                p.publish("trades", symbol="DET", price=1.0 + i, size=1.0)
            p.flush(10.0)
        with open(os.path.join(path, "hist"), "w") as f:
            f.write("not a directory\n")
        r = run_cli("roll", "--db", path, "--timeout", "60")
        assert r.returncode == 1
        log_file = os.path.join(path, "wayy.log")
        assert one_error_line(r.stderr) == f"shard 0: roll failed (see the log: {log_file})"
        with open(log_file) as f:
            assert "shard 0: roll (request) failed" in f.read()
    finally:
        stopped = run_cli("stop", "--db", path)
        for name in list_segments(db_prefix(path)):
            unlink_quiet(name)
    assert stopped.returncode == 0, stopped.stderr
