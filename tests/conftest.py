"""Fixtures: real databases started with the real CLI, cleaned up even when a test fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from shm.segment import db_prefix, list_segments, unlink_quiet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Every kernel a database or a test uses, compiled into numba's on-disk cache before the
# first test: on a fresh clone that takes a minute or more (longer on a loaded machine), which
# must not be charged to whichever test happens to start the first database under its timeout.
_WARM_UP = """
import time
t0 = time.monotonic()
from workers import writer
writer.warm_up()
from shm import subscribers
subscribers.warm_up()
from wayy import wire
wire.warm_up()
wire.warm_up_group_encoder()
import wayy.ops
print(f"{time.monotonic() - t0:.1f}")
"""


def pytest_sessionstart(session) -> None:
    """Fill numba's on-disk cache once, in a child process, before any test runs."""
    from shm.jit import in_disk_cache
    from shm import subscribers
    from wayy import wire
    from workers import writer

    if all(in_disk_cache(k) for k in (writer.ingest.writer_pass, subscribers.follow_mem,
                                      wire._encode_groups)):
        return
    out = subprocess.run([sys.executable, "-c", _WARM_UP], cwd=REPO, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise pytest.UsageError(f"compiling wayy's kernels failed:\n{out.stderr}")
    sys.stderr.write(f"wayy: kernels compiled into numba's cache in {out.stdout.strip()} s\n")


def wayy_cmd(*args: str) -> list[str]:
    """The `wayy` CLI run with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "wayy.cli", *args]


def interpreter_start_s() -> float:
    """Seconds for this interpreter to start and import a first module of the repo, now (on a
    slow machine most of 0.2 s): a signal sent sooner meets Python's own start-up, before any
    wayy code can handle it. Also byte-compiles workers/launch.py, as an install would."""
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import workers.launch"], cwd=REPO, check=True,
                   timeout=60)
    return time.monotonic() - t0


def sigint_as_a_terminal_gives_it() -> None:
    """preexec_fn: SIGINT's default action in the child (a test runner's worker may ignore
    it), as a process started from a terminal has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ctrl_c_after_start(argv: list[str], delay: float, **popen_kw) -> tuple[int, str]:
    """Run ``argv`` (in the repo), Ctrl-C it ``delay`` seconds after Python itself has
    started (interpreter_start_s), and return its exit status and stderr once it ends."""
    delay += interpreter_start_s()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, preexec_fn=sigint_as_a_terminal_gives_it, **popen_kw)
    try:
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(wayy_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


class RunningDb:
    """A `wayy start` process in the foreground, its path and its stderr log."""

    def __init__(self, path: str, proc: subprocess.Popen, log_path: str) -> None:
        self.path = path
        self.proc = proc
        self.log_path = log_path

    def status(self) -> dict:
        from wayy.status import read_status

        return read_status(self.path)

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # the database lock goes with the last process holding it: a test that starts the
        # same database again must not race a child still on its way out
        from wayy.manifest import lock_holder

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running, pid = lock_holder(self.path)
            # held by this run's supervisor (or its children, under its pid) -- not by a
            # later run of the same database, which must not make this stop wait
            if not running or (pid is not None and pid != self.proc.pid):
                break
            time.sleep(0.05)
        return self.proc.returncode


# options that put Redis under test; a start naming none of them runs with --no-redis
REDIS_OPTIONS = ("--redis", "--no-redis", "--redis-port", "--redis-bind", "--redis-pubsub-limit",
                 "--redis-password-file",
                 "--brokers", "--wire", "--stream-retention")


def start_db(path: str, *args: str, timeout: float = 60.0, redis: bool | None = None
             ) -> RunningDb:
    """Start `wayy start --db path ...` and wait until every writer accepts ticks.

    Redis: unless ``redis=True`` or ``args`` name a Redis option, the database runs with
    ``--no-redis`` — the broker is one more process and one more local subscriber, which
    tests of other parts should neither pay for nor count. ``redis=True``: the default
    (embedded Redis and a broker), as a user's plain `wayy start` gets it.
    """
    from wayy.errors import NotRunning
    from wayy.status import read_status

    if redis is None:
        redis = any(a.split("=")[0] in REDIS_OPTIONS for a in args)
    if not redis:
        args = (*args, "--no-redis")
    os.makedirs(path, exist_ok=True)
    log_path = os.path.join(path, "test-start.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(wayy_cmd("start", "--db", path, *args), stdout=log, stderr=log,
                            cwd=REPO, start_new_session=True)
    log.close()
    db = RunningDb(path, proc, log_path)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"wayy start exited with {proc.returncode}:\n{db.log()}")
            try:
                st = read_status(path, redis=False)
                if all(s["state"] == "running" for s in st["shards"]):
                    return db
            except NotRunning:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"wayy start not ready after {timeout}s:\n{db.log()}")
    except BaseException:
        # any failure while waiting (an unexpected status error included) must not leave
        # the database running behind the test
        db.stop()
        raise


def cleanup_db(db: RunningDb) -> None:
    """Stop the database and remove anything it may have left (asserted by the tests)."""
    db.stop()
    for name in list_segments(db_prefix(db.path)):
        unlink_quiet(name)


@pytest.fixture
def db_factory(tmp_path):
    """Start databases on demand; every one is stopped and its segments removed at the end."""
    started: list[RunningDb] = []

    def make(*args: str, name: str = "db", redis: bool | None = None) -> RunningDb:
        db = start_db(str(tmp_path / name), *args, redis=redis)
        started.append(db)
        return db

    yield make
    for db in started:
        cleanup_db(db)


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory):
    """One 4-shard database with no feed, shared by a module's read-mostly tests."""
    path = str(tmp_path_factory.mktemp("shared") / "db")
    db = start_db(path, "--shards", "4", "--feed", "none", "--capacity", "262144",
                  "--ring-bytes", str(4 * 2**20))
    yield db
    cleanup_db(db)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or the monotonic deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
