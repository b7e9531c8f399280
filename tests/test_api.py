"""The public surface: __all__, CLI help for every command, and docs that name them."""

from __future__ import annotations

import json
import os
import time
import types

import pytest

import wayy
from tests.conftest import REPO, run_cli, wait_for
from wayy.cli import main as cli_main


def test_all_matches_public_names():
    public = {n for n in dir(wayy) if not n.startswith("_")}
    # submodules become attributes once anything imports them; only those in __all__ are API
    modules = {n for n in public if isinstance(getattr(wayy, n), types.ModuleType)
               and n not in wayy.__all__}
    assert set(wayy.__all__) - {"__version__"} == public - modules
    for name in wayy.__all__:
        assert hasattr(wayy, name), name


def test_every_error_is_a_wayy_error():
    for name in wayy.__all__:
        obj = getattr(wayy, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, wayy.WayyError), name


def test_every_command_has_help_and_is_documented():
    readme = open(os.path.join(REPO, "README.md")).read()
    ops = open(os.path.join(REPO, "docs", "operations.md")).read()
    assert cli_main.commands, "no commands registered"
    for name, cmd in cli_main.commands.items():
        assert cmd.help and len(cmd.help) > 20, f"command {name} has no help text"
        r = run_cli(name, "--help")
        assert r.returncode == 0 and "Usage:" in r.stdout, name
        for param in cmd.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"{name} {param.opts} has no help text"
        assert f"wayy {name}" in readme, f"README does not mention `wayy {name}`"
        assert f"wayy {name}" in ops or name == "status" and "wayy status" in readme
    r = run_cli("--help")
    assert r.returncode == 0 and all(n in r.stdout for n in cli_main.commands)



def _status_with_counters(path: str, monkeypatch, **set_counters) -> dict:
    """read_status of a live database with some of shard 0's control counters replaced."""
    import numpy as np

    from shm.layout import control as C
    from wayy import status

    monkeypatch.undo()
    attach = status.Control.attach

    class Patched:
        def __init__(self, real):
            self.real = real
            self.counters = np.array(real.counters)
            for name, value in set_counters.items():
                self.counters[getattr(C, name)] = value
            self.rejects = real.rejects

        def close(self):
            self.real.close()

    monkeypatch.setattr(status.Control, "attach", lambda *a: Patched(attach(*a)))
    return status.read_status(path, redis=False)


def test_status_rate_spanning_a_roll_is_unknown_never_negative(db_factory, monkeypatch):
    import time

    path = db_factory("--shards", "1", "--feed", "none").path
    now = time.time_ns()
    # the writer's window straddled a roll: rows counted after it minus rows before it
    st = _status_with_counters(path, monkeypatch, C_RATE=-52_000, C_LAST_ROLL_NS=now - 10**9)
    s = st["shards"][0]
    assert s["rate"] == 0 and s["rate_known"] is False
    assert st["totals"]["rate"] == 0 and st["totals"]["rate_known"] is False
    # positive but just after a roll: the window may still span it
    s = _status_with_counters(path, monkeypatch, C_RATE=700,
                              C_LAST_ROLL_NS=now - 10**8)["shards"][0]
    assert s["rate"] == 0 and not s["rate_known"]
    # long after the roll and the writer's start, the writer's figure stands
    s = _status_with_counters(path, monkeypatch, C_RATE=700, C_LAST_ROLL_NS=now - 10**10,
                              C_WRITER_START_NS=now - 10**10)["shards"][0]
    assert s["rate"] == 700 and s["rate_known"]


def test_status_heartbeat_age_is_never_negative(db_factory, monkeypatch):
    import time

    path = db_factory("--shards", "1", "--feed", "none").path
    # a heartbeat stamped after the reader's clock read (or a wall clock stepped back)
    future = time.time_ns() + 5 * 10**9
    s = _status_with_counters(path, monkeypatch, C_HEARTBEAT_NS=future,
                              C_WRITER_START_NS=future)["shards"][0]
    assert s["heartbeat_age_s"] == 0.0 and s["writer_uptime_s"] == 0.0


def test_status_supervisor_uptime_is_never_below_a_writers(db_factory, monkeypatch):
    """A status read that takes a while (8 shards to attach on a busy machine) read the
    database's uptime from a clock read before the shards': it showed writers older than
    their database. Here the writer started with the database, and attaching is slow."""
    import time

    from wayy import status
    from wayy.manifest import read_manifest

    path = db_factory("--shards", "1", "--feed", "none").path
    started = read_manifest(path).started_ns
    data_attach = status.ShardData.attach

    def slow_attach(*a):  # after the control counters are read: as a slow read of shard k
        time.sleep(0.3)
        return data_attach(*a)

    from shm.layout import control as C

    ctl_attach = status.Control.attach

    def started_with_the_database(*a):
        ctl = ctl_attach(*a)
        ctl.counters = ctl.counters.copy()
        ctl.counters[C.C_WRITER_START_NS] = started
        return ctl

    monkeypatch.setattr(status.ShardData, "attach", slow_attach)
    monkeypatch.setattr(status.Control, "attach", started_with_the_database)
    st = status.read_status(path, redis=False)
    assert st["uptime_s"] >= st["shards"][0]["writer_uptime_s"] > 0.3


def test_status_rate_after_a_real_roll_is_never_negative(db_factory):
    import time

    from wayy.status import read_status

    d = db_factory("--shards", "1", "--feed", "synthetic:rate=20000,symbols=20")
    time.sleep(3.0)  # a few rate windows' worth of rows before the roll
    assert run_cli("roll", "--db", d.path).returncode == 0
    seen = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        s = read_status(d.path, redis=False)["shards"][0]
        seen.append(s["rate"])
        assert s["heartbeat_age_s"] >= 0
        time.sleep(0.02)
    assert min(seen) >= 0, seen

    def known():  # settled: the rate is known again (a loaded machine may take a while)
        s = read_status(d.path, redis=False)["shards"][0]
        assert s["rate"] >= 0 and s["heartbeat_age_s"] >= 0
        return s["rate_known"] and s["rate"] > 0
    wait_for(known, 20, what="a known, positive rate after the roll")


def test_to_pandas_without_pandas_is_a_wayy_error(monkeypatch):
    import sys

    from wayy.errors import WayyError, import_pandas

    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(WayyError, match="pip install pandas"):
        import_pandas()


def test_publish_names_missing_and_unknown_columns(shared_db):
    p = wayy.Producer(shared_db.path)
    try:
        with pytest.raises(wayy.InvalidTick, match="missing size; columns are") as e:
            p.publish("trades", symbol="MISS", price=1.0)
        assert e.value.reason == "columns" and "_trade" not in str(e.value)
        with pytest.raises(wayy.InvalidTick, match="no column bid"):
            p.publish("trades", symbol="MISS", price=1.0, size=1.0, bid=2.0)
    finally:
        p.close()


def test_stop_after_the_supervisor_was_killed_removes_its_segments(db_factory):
    """A supervisor killed with SIGKILL leaves its segments in /dev/shm (its children
    follow it out); `wayy stop` then removes them and says so, instead of only answering
    that nothing runs."""
    import signal

    from shm.segment import db_prefix, list_segments
    from wayy.manifest import lock_holder, read_manifest

    d = db_factory("--shards", "1", "--feed", "none", "--no-redis")
    m = read_manifest(d.path)
    assert list_segments(db_prefix(d.path))
    os.kill(m.supervisor_pid, signal.SIGKILL)
    wait_for(lambda: not lock_holder(d.path)[0], what="the lock to be free")
    left = len(list_segments(db_prefix(d.path)))
    r = run_cli("status", "--db", d.path)  # says what is left, and what removes it
    assert r.returncode == 1 and f"left {left} shared-memory segment(s)" in r.stderr
    assert "wayy stop" in r.stderr
    r = run_cli("status", "--db", d.path, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["segments_left"] == left
    r = run_cli("stop", "--db", d.path)
    assert r.returncode == 0 and "supervisor died" in r.stdout, r.stderr
    assert list_segments(db_prefix(d.path)) == []
    r = run_cli("stop", "--db", d.path)
    assert r.returncode == 1 and "no database is running" in r.stderr
    r = run_cli("status", "--db", d.path)
    assert r.returncode == 1 and "segment" not in r.stderr


@pytest.mark.slow
def test_status_names_a_writer_that_stopped_reporting(db_factory):
    """A writer frozen (SIGSTOP) is not shown running at its last rate: its heartbeat has
    aged past WRITER_SILENT_S."""
    import signal

    from wayy.status import WRITER_SILENT_S

    d = db_factory("--shards", "1", "--feed", "none", "--no-redis")
    pid = d.status()["shards"][0]["writer_pid"]
    p = wayy.Producer(d.path)
    for i in range(50):  # a rate the writer records in its next second
        p.publish("trades", symbol="SIL", price=1.0 + i, size=1.0)
        time.sleep(0.02)
    p.close()
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(WRITER_SILENT_S + 1.5)
        r = run_cli("status", "--db", d.path)
        assert r.returncode == 0
        assert " silent " in r.stdout and f"writer pid {pid} has not reported" in r.stdout
        s = d.status()["shards"][0]
        assert s["silent"] and s["state"] == "running"
        assert s["rate"] == 0 and s["rate_known"] is False  # not its stale last rate
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: "silent" not in run_cli("status", "--db", d.path).stdout,
             what="the writer to report again")
    assert d.status()["shards"][0]["silent"] is False


def test_status_of_a_restarting_shard_names_no_dead_writer(db_factory):
    """While the supervisor restarts a killed writer, status gives no pid, uptime or rate of
    the dead one (they would read as a live writer that committed nothing)."""
    import signal

    from wayy.status import read_status

    d = db_factory("--shards", "1", "--feed", "none", "--no-redis")
    pid = d.status()["shards"][0]["writer_pid"]
    os.kill(pid, signal.SIGKILL)
    seen = wait_for(lambda: next((s for s in read_status(d.path, redis=False)["shards"]
                                  if s["state"] == "restarting"), None),
                    interval=0.002, what="the shard to read as restarting")
    assert seen["writer_pid"] is None and seen["writer_uptime_s"] is None
    assert seen["rate"] == 0 and seen["rate_known"] is False
    wait_for(lambda: d.status()["shards"][0]["state"] == "running", what="the new writer")
    s = d.status()["shards"][0]
    assert s["writer_pid"] not in (None, pid) and s["writer_uptime_s"] is not None
