"""The `wayy` command line. The only module that imports click or prints for the user.

A WayyError becomes one line on stderr and exit status 1; a usage mistake exits 2 (click's
convention); nothing a user can cause prints a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import click

from wayy.errors import InvalidInput, NotRunning, WayyError

DEFAULT_DB_ENV = "WAYY_DB"


def default_db() -> str:
    """``$WAYY_DB``, else ``~/.wayy/db``: the same default for start, status and stop."""
    return os.environ.get(DEFAULT_DB_ENV) or os.path.join(os.path.expanduser("~"), ".wayy", "db")


def default_shards() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class _Cli(click.Group):
    """Turns WayyError into one line and a non-zero exit (1), and a usage error (a bad
    option value, an unknown option) into one line and exit status 2."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:  # --help, --version
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("wayy: aborted", err=True)
            sys.exit(1)
        except click.ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `wayy`: the help, as is
                exc.show()
                sys.exit(exc.exit_code)
            hint = (f" (see: {exc.ctx.command_path} --help)"
                    if isinstance(exc, click.UsageError) and exc.ctx is not None else "")
            click.echo(f"wayy: error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except WayyError as exc:
            click.echo(f"wayy: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)


class _Seconds(click.ParamType):
    """A positive, finite number of seconds (NaN and inf pass click.FloatRange)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (0.0 < v < float("inf")):
            self.fail(f"{value!r}: give a positive, finite number of seconds", param, ctx)
        return v


def _refuse_given(params: tuple[str, ...], what: str) -> None:
    """InvalidInput naming those of ``params`` given on the command line: options
    ``what`` (e.g. "the write-ahead log, which --no-wal turns off") configures, which this
    start would otherwise ignore in silence."""
    ctx = click.get_current_context()
    given = [f"--{n.replace('_', '-')}" for n in params
             if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
    if given:
        raise InvalidInput(f"{', '.join(given)} configure{'s' if len(given) == 1 else ''} "
                           f"{what}")


def _check_db(ctx, param, value: str | None) -> str | None:
    """--db names a directory: not "" (the current one, by accident), not a name with a
    control character (printed back in commands to copy), not a dangling symlink (whose
    target a start would create wherever it points)."""
    if value is None:
        return value
    if not value.strip():
        raise click.BadParameter("is empty: name the database directory", ctx, param)
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise click.BadParameter(f"{value!r} holds a control character (a newline, a tab...)",
                                 ctx, param)
    # the path itself, or a directory on the way to it, a symlink to nowhere
    p = os.path.abspath(os.path.expanduser(value))
    while True:
        if os.path.islink(p) and not os.path.exists(p):
            where = "" if p == os.path.abspath(os.path.expanduser(value)) else f" (in {value})"
            raise click.BadParameter(f"{p}{where} is a symlink to {os.readlink(p)}, which "
                                     f"does not exist", ctx, param)
        parent = os.path.dirname(p)
        if parent == p or os.path.exists(p):
            return value
        p = parent


db_option = click.option(
    "--db", "db", default=default_db, show_default=f"${DEFAULT_DB_ENV} or ~/.wayy/db",
    type=click.Path(file_okay=False), callback=_check_db,
    help="Database directory (segments are named after it).")


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wayy", prog_name="wayy")
def main() -> None:
    """wayy: real-time tick database — sharded shared-memory columns, local and Redis fan-out.

    Start a database with `wayy start`, look at it with `wayy status`, stop it with
    `wayy stop`. From Python: `db = wayy.attach(PATH)`, `wayy.Producer(PATH)`.
    """


@main.command()
@db_option
@click.option("--shards", type=int, default=None,
              show_default="the database's own count, or min(8, CPUs) for a new one",
              help="Writer processes; symbols are spread over them by a stable hash. Fixed "
                   "when the database is created.")
@click.option("--capacity", type=int, default=None, show_default="2097152",
              help="Rows per table per shard held in shared memory, a multiple of 1024. "
                   "When a table is full its writer rejects further rows with reason 'full' "
                   "(never overwrites); --roll-fill moves rows to history before that.")
@click.option("--ring-bytes", type=int, default=None, show_default="16 MiB",
              help="Bytes of each shard's inbound ring (power of two). Producers meet "
                   "backpressure only when it is full.")
@click.option("--max-symbols", type=int, default=None, show_default="65536",
              help="Distinct symbols per shard.")
@click.option("--feed", "feeds", multiple=True, default=("synthetic",), show_default=True,
              help="Feed to run: 'synthetic', 'synthetic:rate=5000,symbols=100,seed=1,"
                   "quote_ratio=0.7,venues=NYSE+NASDAQ', or 'none' for producers of your "
                   "own. Repeat for several feeds.")
@click.option("--fsync", type=click.Choice(["batch", "interval", "off"]), default="interval",
              show_default=True,
              help="When the write-ahead log is flushed to disk. batch: before each batch "
                   "becomes visible (survives power loss; slowest). interval: at least every "
                   "--fsync-interval-ms (a power loss loses at most that much). off: only at "
                   "stop. A killed process loses nothing under any policy.")
@click.option("--fsync-interval-ms", type=float, default=10.0, show_default=True,
              help="Flush period of --fsync interval.")
@click.option("--wal-compress", is_flag=True,
              help="LZ4-compress write-ahead log records when that makes them smaller: about "
                   "half the disk, but a slower ingest on a small machine.")
@click.option("--no-wal", is_flag=True,
              help="No write-ahead log: faster, but ticks are gone when the database stops "
                   "or the machine fails (a killed writer still recovers from shared memory).")
@click.option("--roll-daily/--no-roll-daily", default=True, show_default=True,
              help="At the end of each UTC day, move each shard's rows to history on disk "
                   "(DB/hist/DATE/TABLE/) and start the day with empty shared memory; "
                   "queries read history and memory as one table.")
@click.option("--roll-fill", type=float, default=0.9, show_default=True,
              help="Also roll a shard when a table reaches this fraction of --capacity "
                   "(0 < F <= 1), so a busy day never fills shared memory. 0 turns it off.")
@click.option("--history-days", type=int, default=None, show_default="keep everything",
              help="Delete history partitions older than this many days (checked at each "
                   "roll).")
@click.option("--writer-poll-us", type=float, default=250.0, show_default=True,
              help="While ticks arrive more often than every half this many microseconds, "
                   "a writer keeps polling for the next one this long after each batch "
                   "instead of sleeping (lowest latency, but about a core per busy shard); "
                   "otherwise it polls 50 us, then sleeps until a producer wakes it. "
                   "Polling pauses while the writer has to wait for a CPU (other "
                   "processes need that core). 0: sleep at once (least CPU).")
@click.option("--redis", "redis_url", metavar="URL", default=None,
              help="Publish to this existing Redis (redis://[user[:password]@]host:port/db "
                   "or unix:///path.sock?db=N) instead of starting one. A password in "
                   "the URL is kept in DB/redis/external-password (0600), never in wayy.json; "
                   "but a URL on the command line shows in process listings: prefer "
                   "--redis-password-file.")
@click.option("--redis-password-file", metavar="FILE", default=None,
              help="Read the password of --redis from FILE's first line (kept off the "
                   "command line, where every process listing shows it).")
@click.option("--no-redis", is_flag=True,
              help="Local only: no Redis and no broker (local subscribers still work).")
@click.option("--redis-port", type=int, default=0, show_default="0",
              help="Port of the embedded Redis. 0: the previous start's port if it is free, "
                   "else any free port (printed at start and kept in wayy.json).")
@click.option("--redis-bind", metavar="ADDR", default="127.0.0.1", show_default=True,
              help="Address the embedded Redis listens on. The default is loopback only; "
                   "use 0.0.0.0 for consumers on other machines (password-protected, not "
                   "encrypted: keep it on a trusted network).")
@click.option("--redis-pubsub-limit", metavar="'HARD SOFT SECONDS'", default=None,
              show_default="Redis' own, '32mb 8mb 60'",
              help="Embedded Redis' client-output-buffer-limit for pub/sub clients: a "
                   "subscriber further behind than HARD, or than SOFT for SECONDS, is "
                   "disconnected (wayy.remote reconnects and backfills from the streams).")
@click.option("--brokers", type=int, default=1, show_default=True,
              help="Broker processes publishing to Redis; shard k goes to broker k % N "
                   "(at most one broker per shard).")
@click.option("--wire", type=click.Choice(["json", "binary", "binary+lz4"]), default=None,
              show_default="binary+lz4",
              help="What the channels carry: json (one message per tick, readable with "
                   "redis-cli), binary (one columnar batch per message) or binary+lz4 "
                   "(compressed). See docs/wire-format.md.")
@click.option("--stream-retention", metavar="maxlen=N|age=DURATION|none", default=None,
              show_default="maxlen=100000",
              help="How much of each Redis stream (one per symbol and table, for replay) to "
                   "keep: maxlen=N entries (XTRIM MAXLEN ~; an entry is one batch of one "
                   "symbol), age=SECONDS or age=30m/6h/2d of tick time behind the stream's "
                   "newest entry (XTRIM MINID ~), or none (never trimmed).")
@click.option("--detach", is_flag=True, help="Run in the background; log to DB/wayy.log.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def start(db: str, shards: int | None, capacity: int | None, ring_bytes: int | None,
          max_symbols: int | None, feeds: tuple[str, ...], fsync: str,
          fsync_interval_ms: float, wal_compress: bool, no_wal: bool, roll_daily: bool, roll_fill: float,
          history_days: int | None, writer_poll_us: float, redis_url: str | None,
          redis_password_file: str | None, no_redis: bool,
          redis_port: int, redis_bind: str, redis_pubsub_limit: str | None, brokers: int,
          wire: str | None, stream_retention: str | None, detach: bool,
          verbose: bool) -> None:
    """Start a database: shared-memory segments, one writer per shard, feeds, and the
    Redis fan-out (an embedded redis-server and a broker, unless --redis or --no-redis).

    Runs in the foreground until Ctrl-C (or `wayy stop`), which stops everything and
    removes its shared memory. Prints where the data is, how to attach, and the Redis URL
    and credentials file remote consumers use.
    """
    from shm.layout import inbound as L
    from shm.layout import shard as S
    from workers.feeds import parse_feed_spec
    from workers.supervisor import Config, Supervisor

    if no_redis:  # Redis options a local-only start would silently ignore
        _refuse_given(("brokers", "wire", "stream_retention", "redis_port", "redis_bind",
                       "redis_pubsub_limit"), "the Redis fan-out, which --no-redis turns off")
    elif redis_url is not None:  # options of the embedded server, which --redis URL replaces
        _refuse_given(("redis_port", "redis_bind", "redis_pubsub_limit"),
                      "the embedded Redis, which --redis URL replaces (set them on that "
                      "server)")
    if no_wal:  # WAL options a start without the WAL would silently ignore
        _refuse_given(("wal_compress", "fsync", "fsync_interval_ms"),
                      "the write-ahead log, which --no-wal turns off")
    if max_symbols is not None and not 1 <= max_symbols <= 2**31 - 1:
        raise InvalidInput(f"--max-symbols {max_symbols} is out of range: 1 .. 2**31 - 1")
    specs = [parse_feed_spec(f) for f in feeds]
    specs = [s for s in specs if s.kind != "none"]
    if shards is None:
        from wayy.manifest import stored_shards

        try:
            shards = stored_shards(os.path.realpath(db)) or default_shards()
        except NotADirectoryError:  # a path that cannot be a directory: said where it is made
            shards = default_shards()
        except OSError as exc:
            raise InvalidInput(f"cannot read the shard count of {os.path.realpath(db)}: "
                               f"{exc.strerror}", path=db) from None
    cfg = Config(db=db, shards=shards,
                 capacity=S.DEFAULT_CAPACITY if capacity is None else capacity,
                 ring_capacity=L.DEFAULT_CAPACITY if ring_bytes is None else ring_bytes,
                 max_symbols=S.DEFAULT_MAX_SYMBOLS if max_symbols is None else max_symbols,
                 feeds=specs, wal=not no_wal, fsync=fsync, wal_compress=wal_compress,
                 fsync_interval_ms=fsync_interval_ms, roll_daily=roll_daily,
                 roll_fill=roll_fill or None, history_days=history_days,
                 writer_poll_us=writer_poll_us, no_redis=no_redis, redis_url=redis_url,
                 redis_password_file=redis_password_file,
                 redis_port=redis_port, redis_bind=redis_bind,
                 redis_pubsub_limit=redis_pubsub_limit, brokers=brokers)
    if wire is not None:
        cfg.wire = wire
    if stream_retention is not None:
        cfg.stream_retention = stream_retention
    cfg.check()
    path = os.path.realpath(db)
    level = logging.DEBUG if verbose else logging.INFO
    fmt = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"
    t0 = time.monotonic()
    started_ns = time.time_ns()

    def banner() -> None:
        feeds_txt = ", ".join(f.to_string() for f in specs) or "none (publish with wayy.Producer)"
        click.echo(
            f"wayy: {cfg.shards} shard(s) running at {path} "
            f"(ready in {time.monotonic() - t0:.2f}s)\n"
            f"  feeds:   {feeds_txt}\n"
            f"  attach:  python -c \"import wayy; db = wayy.attach('{path}'); "
            f"print(db['trades'].tail(5))\"\n"
            f"{_redis_banner(path)}"
            f"  status:  wayy status --db {path}\n"
            f"  stop:    wayy stop --db {path}" + ("" if detach else "   (or Ctrl-C)"))
        for line in _damage_notes(path, started_ns):
            click.echo(line, err=True)

    from workers.writer import kernels_cached

    first = not kernels_cached()
    if first:
        click.echo("wayy: first start on this machine: compiling kernels (a minute or more; "
                   "later starts take a second or two)", err=True)
    if not detach:
        logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
        sup = Supervisor(cfg)
        sup.run(on_ready=lambda err: banner() if err is None else None)
        return
    _start_detached(cfg, path, level, fmt, banner, compiling=first)


def _damage_notes(path: str, since_ns: int) -> list[str]:
    """Warnings for WALs found damaged in the middle during this start: the rows after the
    damage were not loaded (the writer kept a copy aside and logged the details)."""
    import glob

    out = []
    for f in sorted(glob.glob(os.path.join(path, "wal", "*.damaged-*"))):
        try:
            if int(f.rsplit("-", 1)[1]) < since_ns:
                continue
        except ValueError:
            continue
        out.append(f"wayy: warning: {os.path.basename(f).split('.damaged-')[0]} was damaged "
                   f"in the middle: the rows after the damage were not loaded (copy kept "
                   f"at {f}; details in the log; `wayy verify --db {path}` checks it)")
    return out


def _logged_warnings(log_path: str, offset: int) -> list[str]:
    """The warnings and errors a detached start logged (from byte ``offset`` of its log):
    a foreground start shows them as they come; a detached one would leave them in the
    file (a WAL removed or emptied, a torn tail cut back, a stalled producer)."""
    out = []
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return out
    for line in text.splitlines():
        for level in (" WARNING ", " ERROR "):
            if level in line:
                out.append(f"wayy: {level.strip().lower()} (logged): "
                           f"{line.split(level, 1)[1]}")
                break
    return out


def _redis_banner(path: str) -> str:
    """The banner's Redis lines, from the manifest (the port may have been chosen at start)."""
    from urllib.parse import urlsplit

    from wayy.manifest import read_manifest

    try:
        m = read_manifest(path)
    except WayyError:
        return ""
    if not m.redis_url:
        return "  redis:   none (--no-redis: local subscribers only)\n"
    kind = "embedded" if m.redis_embedded else "external"
    creds = f"password in {m.redis_credentials} (mode 0600)" if m.redis_credentials \
        else "no password"
    out = f"  redis:   {m.redis_url}  ({kind}, {m.wire}, {m.brokers} broker(s); {creds})\n"
    u = urlsplit(m.redis_url)
    if u.scheme == "redis" and u.hostname:
        auth = f"REDISCLI_AUTH=\"$(cat {m.redis_credentials})\" " if m.redis_credentials else ""
        out += (f"  remote:  {auth}redis-cli -h {u.hostname} -p {u.port or 6379} "
                f"SUBSCRIBE ticks:AAPL\n")
    if not m.redis_embedded:
        from wayy import redis_server
        from wayy.remote import redact
        from wayy.status import broker_cursors, foreign_broker, foreign_owner

        password = redis_server.read_password(m.redis_credentials)
        try:
            redis_server.command(m.redis_url, "PING", password=password, timeout=1.0)
        except redis_server.RedisReplyError as exc:
            # wrong credentials: the brokers would retry them for ever in silence
            return out + (f"  WARNING: Redis at {redact(m.redis_url)} refuses this "
                          f"database's credentials ({exc}); its brokers publish nothing "
                          f"until it accepts them (see --redis-password-file)\n")
        except (OSError, ConnectionError, ValueError) as exc:
            # down, or not Redis: the database runs; say so now rather than leave it to be
            # found in `wayy status` (the brokers retry, and publish once it answers)
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            return out + (f"  WARNING: Redis at {redact(m.redis_url)} cannot be reached "
                          f"({why}); the database runs, and its brokers retry and publish "
                          f"once it answers (wayy status shows it)\n")
        cursors = broker_cursors(m, password)
        other = foreign_owner(m, cursors) if cursors is not None else None
        if other is None:
            other = foreign_broker(m, password)
        if other is not None:
            out += (f"  WARNING: this Redis is used by another wayy database ({other}): "
                    f"this one's brokers are refused and publish nothing (wayy status says "
                    f"the same); give it its own Redis server (a database number is not "
                    f"enough: pub/sub channels are shared by all of a server's)\n")
    return out


def _start_detached(cfg, path: str, level: int, fmt: str, banner,
                    compiling: bool = False) -> None:
    from workers.supervisor import STOP_SIGNALS, Supervisor

    try:  # here too, not only in the supervisor: the log file goes in it before the fork
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"cannot create database directory {path}: {exc.strerror}",
                           path=path) from None
    log_path = os.path.join(path, "wayy.log")
    try:  # the child logs there: a directory it cannot write fails here, in one line
        os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    except OSError as exc:
        raise InvalidInput(f"cannot write to the database directory {path} "
                           f"({exc.filename}: {exc.strerror})", path=path) from None
    try:
        log_from = os.path.getsize(log_path)
    except OSError:
        log_from = 0
    r, w = os.pipe()
    # Ctrl-C / SIGTERM from the fork on waits (blocked) until the parent can cancel the start
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.setsid()
            log_fd = os.open(os.path.join(path, "wayy.log"),
                             os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            logging.basicConfig(level=level, format=fmt, stream=sys.stderr, force=True)

            def on_ready(err: str | None) -> None:
                os.write(w, (f"error: {err}" if err else "ok").encode() + b"\n")
                os.close(w)

            Supervisor(cfg).run(on_ready=on_ready)
        except WayyError as exc:
            try:
                os.write(w, f"error: {exc}\n".encode())
            except OSError:
                pass
            code = 1
        except BaseException:
            logging.exception("supervisor failed")
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    interrupted = []

    def cancel(signum, _frame) -> None:
        # Ctrl-C / SIGTERM while the database starts in the background cancels the start,
        # as it would in the foreground: without this the start went on unseen
        if not interrupted and compiling:
            click.echo("wayy: cancelling the start once the kernel compile in progress is "
                       "done (up to a minute)", err=True)
        interrupted.append(signum)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    old_handlers = {sig: signal.signal(sig, cancel) for sig in STOP_SIGNALS
                    if signal.getsignal(sig) is not signal.SIG_IGN}
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    try:
        with os.fdopen(r) as f:
            line = f.readline().strip()
    finally:
        for sig in old_handlers:
            # started: the few lines left to print do not undo it (a signal now would end
            # this command with 130 / 143 while the database runs on)
            signal.signal(sig, signal.SIG_IGN if not interrupted else old_handlers[sig])
    if interrupted:
        try:
            os.waitpid(pid, 0)  # stopping (or it had just said ready): once it has stopped all
        except ChildProcessError:
            pass
        raise WayyError(f"the start was cancelled ({signal.Signals(interrupted[0]).name}): "
                        f"the database at {path} is not running", path=path)
    if line == "ok":
        from wayy.manifest import lock_holder

        if lock_holder(path) != (True, pid):  # a `wayy stop` came right after it was ready
            raise WayyError(f"the database at {path} started, then stopped before this "
                            f"start returned (a `wayy stop`?); see {log_path}", path=path)
        banner()
        click.echo(f"  log:     {log_path}")
        for note in _logged_warnings(log_path, log_from):
            click.echo(note, err=True)
        return
    raise WayyError(line.removeprefix("error: ") or
                    f"supervisor exited during start; see {os.path.join(path, 'wayy.log')}")


@main.command()
@db_option
@click.option("--timeout", type=_Seconds(), default=15.0,
              show_default=True,
              help="Seconds to wait for a clean stop before killing the supervisor.")
def stop(db: str, timeout: float) -> None:
    """Stop a running database and remove its shared memory."""
    from shm.segment import db_prefix, list_segments, unlink_quiet
    from wayy.manifest import lock_holder

    path = os.path.realpath(db)
    running, pid = lock_holder(path)
    if not running:
        # a supervisor killed with SIGKILL leaves its segments behind (its children follow
        # it out); nobody holds the database's lock, so nothing uses them to write
        left = list_segments(db_prefix(path))
        if left:
            for name in left:
                unlink_quiet(name)
            click.echo(f"wayy: no database was running at {path} (its supervisor died); "
                       f"removed the {len(left)} shared-memory segment(s) it left")
            return
    if not running or not pid:
        raise NotRunning(f"no database is running at {path}")
    _warn_unstorable(path)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not lock_holder(path)[0]:
            click.echo(f"wayy: stopped the database at {path}")
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    for name in list_segments(db_prefix(path)):
        unlink_quiet(name)
    click.echo(f"wayy: the database at {path} did not stop in {timeout:g}s; killed pid {pid} "
               f"and removed its segments", err=True)
    sys.exit(1)


def _warn_unstorable(path: str) -> None:
    """A stop drains every inbound ring first, except where the WAL cannot be written
    (wal-blocked): say what is lost there -- ticks never acknowledged by a flush."""
    from shm.layout import inbound as L
    from shm.shard import InboundRing
    from wayy.manifest import read_manifest

    try:
        m = read_manifest(path)
        for k in range(m.shards):
            ring = InboundRing.attach(m.prefix, k)
            try:
                ok, _why = ring.accepting()
                blocked = not ok and int(ring.hdr32[L.REFUSE_REASON_I32]) == L.REFUSE_DISK
                pending = int(ring.hdr64[L.TAIL_I64]) - int(ring.hdr64[L.HEAD_I64])
            finally:
                ring.close()
            if blocked and pending > 0:
                click.echo(f"wayy: warning: shard {k} cannot write its write-ahead log: the "
                           f"{pending:,} bytes of ticks in its inbound ring, never "
                           f"acknowledged by a flush, are not stored", err=True)
    except (WayyError, OSError):
        pass  # stopping matters more than this warning


@main.command()
@db_option
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON; exit status 1 when the database is not running.")
def status(db: str, as_json: bool) -> None:
    """Per shard: state, writer pid and uptime, symbols, rows per table, ingest rate,
    rejects by reason; then every live local subscriber: pid, channels, lag, overruns;
    then Redis: up or down, URL, memory, clients, and the brokers' lag per shard."""
    from wayy.status import read_status

    path = os.path.realpath(db)
    try:
        st = read_status(path)
    except NotRunning as exc:
        from shm.segment import db_prefix, list_segments
        from wayy.manifest import lock_holder

        left = 0 if lock_holder(path)[0] else len(list_segments(db_prefix(path)))
        if as_json:
            click.echo(json.dumps({"running": False, "path": path, "error": str(exc),
                                   "segments_left": left}))
            sys.exit(1)
        if left:  # a supervisor killed with SIGKILL: its shared memory is still there
            raise NotRunning(f"{exc}; its supervisor died and left {left} shared-memory "
                             f"segment(s): `wayy stop --db {path}` removes them "
                             f"(`wayy start` does too)", path=path) from None
        raise
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(format_status(st))


def format_status(st: dict) -> str:
    """The human-readable status table."""
    up = _dur(st["uptime_s"])
    dur = st.get("durability") or {}
    wal = (f"WAL fsync {dur['fsync']}" + (f" ({dur['fsync_interval_ms']:g} ms)"
                                          if dur["fsync"] == "interval" else "")
           if dur.get("wal") else "no WAL (data lost at stop)")
    rolls = ", ".join(r for r in (
        "daily" if dur.get("roll_daily") else "",
        f"at {dur['roll_fill']:g} fill" if dur.get("roll_fill") else "") if r) or "manual only"
    keep = f", history kept {dur['history_days']} days" if dur.get("history_days") else ""
    lines = [f"wayy database {st['path']}: running, supervisor pid {st['supervisor_pid']}, "
             f"up {up}, {len(st['shards'])} shard(s)",
             f"durability: {wal}; rolls to history {rolls}{keep}",
             f"{'shard':>5} {'state':<10} {'pid':>7} {'uptime':>9} {'symbols':>8} "
             f"{'trades':>12} {'quotes':>12} {'rows/s':>9}  rejects"]
    silent = []
    for s in st["shards"]:
        rej = ", ".join(f"{k}={v}" for k, v in s["rejects"].items() if v) or "-"
        state, rate = s["state"], _rate_text(s)
        if s.get("silent"):
            # a writer stopped (SIGSTOP, a debugger) or stuck: its last rate is stale
            state, rate = "silent", "-"
            silent.append(f"shard {s['shard']}: writer pid {s['writer_pid']} has not "
                          f"reported for {s['heartbeat_age_s']:.0f} s (stopped, stuck, or in a "
                          f"long roll?); producers to it wait, then time out")
        # a restarting shard's pid and uptime are the dead writer's: not shown
        pid, uptime = ((s["writer_pid"], _dur(s["writer_uptime_s"])) if state != "restarting"
                       else ("-", "-"))
        lines.append(f"{s['shard']:>5} {state:<10} {pid:>7} "
                     f"{uptime:>9} {s['symbols']:>8} {s['trades']:>12,} "
                     f"{s['quotes']:>12,} {rate:>9}  {rej}")
    t = st["totals"]
    rej = ", ".join(f"{k}={v}" for k, v in t["rejects"].items() if v) or "-"
    lines.append(f"{'total':>5} {'':<10} {'':>7} {'':>9} {t['symbols']:>8} {t['trades']:>12,} "
                 f"{t['quotes']:>12,} {_rate_text(t):>9}  {rej}")
    lines += silent
    for s in st["shards"]:
        if s.get("roll_failures"):
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                 time.gmtime(s["last_roll_failure_ns"] / 1e9))
            lines.append(f"shard {s['shard']}: {s['roll_failures']} roll(s) to history "
                         f"failed, the last at {when} (rows stay in memory; see the log)")
    paused = [str(s["shard"]) for s in st["shards"]
              if s.get("poll_pauses") and not s.get("polling")]
    if paused:
        lines.append(f"writers of shard(s) {', '.join(paused)}: sleeping between batches "
                     f"instead of polling (other processes are waiting for the CPU)")
    subs = st.get("subscribers") or []
    lines.append(f"subscribers: {len(subs) or 'none'}")
    if subs:
        lines.append(f"{'pid':>7} {'mode':<5} {'idle':<7} {'delivered':>12} {'lag rows':>9} "
                     f"{'lag s':>7} {'overruns':>8} {'errors':>6}  channels")
        for s in subs:
            lines.append(f"{s['pid']:>7} {s['mode']:<5} {s['idle']:<7} {s['delivered']:>12,} "
                         f"{s['lag_rows']:>9,} {s['lag_s']:>7.3f} {s['overruns']:>8,} "
                         f"{s['errors']:>6,}  {s['channels']}")
        for s in subs:
            if s.get("silent"):
                lines.append(f"subscriber pid {s['pid']} has not reported for "
                             f"{s['heartbeat_age_s']:.0f} s (stopped, stuck in a callback, or "
                             f"not in run() / poll()): its figures are that old")
    lines.extend(_format_redis(st.get("redis")))
    return "\n".join(lines)


def _auth_refused(error: str) -> bool:
    """Whether a Redis error reply refuses the credentials (or asks for some)."""
    # (and a server with no password refuses one: "ERR AUTH <password> called without any
    # password configured for the default user")
    return (error.startswith(("WRONGPASS", "NOAUTH")) or "invalid password" in error
            or "without any password configured" in error)


def _format_redis(r: dict | None) -> list[str]:
    """The status lines about Redis and the brokers."""
    if r is None:
        return []
    if not r.get("enabled"):
        return ["redis: none (local only: started with --no-redis)"]
    kind = "embedded" if r.get("embedded") else "external"
    if not r.get("up"):
        lines = [f"redis: DOWN {r['url']} ({kind}): {r.get('error', '')}; the shards run on, "
                 f"the brokers retry"]
    elif r.get("foreign_owner"):
        lines = [f"redis: REFUSED {r['url']} ({kind}): {r['error']}"]
    elif "error" in r and r.get("credentials_readable") and _auth_refused(r["error"]):
        # the database's own credentials are refused: its brokers cannot publish either
        given = (f"the password in {r['credentials']}" if r.get("credentials")
                 else "no password")
        lines = [f"redis: up {r['url']} ({kind}) but REFUSES this database's credentials "
                 f"({given}): {r['error'].rstrip('.')}; the brokers publish nothing"]
    elif "error" in r:  # it answered, but we may not look inside (credentials unreadable)
        lines = [f"redis: up {r['url']} ({kind}); details unavailable: {r['error']}"]
    else:
        if r.get("embedded") and r.get("pid"):
            kind = f"embedded, pid {r['pid']}"
        lines = [f"redis: up {r['url']} ({kind}, v{r.get('version')}), memory "
                 f"{r.get('used_memory_human')}, {r.get('connected_clients')} client(s), "
                 f"wire {r.get('wire')}"]
    for b in r.get("brokers") or []:
        state = b.get("redis") if b.get("alive") else "not running"
        if b.get("alive") and b.get("responding") is False:
            state = f"NOT RESPONDING (no status for {b.get('age_s') or 0:.0f} s; was {state})"
        err = f" ({b['redis_error']})" if b.get("redis_error") and state != "ok" else ""
        lines.append(f"  broker-{b.get('index')} pid {b.get('pid')} shards {b.get('shards')}: "
                     f"{state}{err}, {b.get('published_rows') or 0:,} rows published, "
                     f"{b.get('reconnects') or 0} reconnect(s)")
    lag = r.get("broker_lag")
    if lag is not None:
        src = (" (from the brokers' last cursors: Redis cannot say)"
               if any(x.get("from_broker_report") for x in lag) else "")
        lines.append(f"  broker lag (rows){src}: " + ", ".join(
            f"shard {x['shard']}={'?' if x['lag_rows'] is None else format(x['lag_rows'], ',')}"
            for x in lag))
    elif r.get("up"):
        lines.append("  broker lag: unknown")
    return lines


@main.command()
@db_option
@click.option("--timeout", type=_Seconds(), default=120.0,
              show_default=True,
              help="Seconds to wait for every shard to finish its roll.")
def roll(db: str, timeout: float) -> None:
    """Roll now: every shard writer moves its rows to history on disk (DB/hist/DATE/TABLE/,
    labelled with today's UTC date) and starts again with empty shared memory.

    Queries (`db["trades"].between(...)`, `tail(...)`) read history and memory as one
    table, so nothing disappears from them; `seq` goes on. Waits until every shard has
    rolled and prints each shard's new generation (the rows moved are in the log). A shard
    whose roll fails (history not writable, disk full) is reported as soon as it fails;
    its rows stay in memory and in its write-ahead log, and the roll can be run again.
    Exits 1 if any shard did not roll, or if the database stops meanwhile.
    """
    from shm import errors as shm_errors
    from shm import inbound
    from shm.layout import control as C
    from shm.layout import shard as S
    from shm.shard import Control, InboundRing, ShardData
    from wayy.errors import translate
    from wayy.manifest import lock_holder, read_manifest

    path = os.path.realpath(db)
    m = read_manifest(path)
    supervisor = lock_holder(path)[1]

    def stopped() -> bool:
        # a stop unlinks the segments but our mappings stay readable: the lock (and its
        # holder, should the database be started again meanwhile) is what tells
        running, pid = lock_holder(path)
        return not running or pid != supervisor

    ctls: list = []
    datas: list = []
    rings: list = []
    try:
        try:
            with translate(path):
                for k in range(m.shards):
                    ctls.append(Control.attach(m.prefix, k))
                    datas.append(ShardData.attach(m.prefix, k))
                    rings.append(InboundRing.attach(m.prefix, k))
        except NotRunning as exc:
            if isinstance(exc.__cause__, shm_errors.SegmentMissing) and stopped():
                raise NotRunning(f"the database at {path} stopped before it could roll",
                                 path=path) from None
            raise
        before = [int(c.counters[C.C_ROLLS]) for c in ctls]
        for k, c in enumerate(ctls):
            state = int(c.counters[C.C_STATE])
            if state != C.STATE_RUNNING:
                if stopped():
                    raise NotRunning(f"the database at {path} stopped before it could roll",
                                     path=path)
                raise WayyError(f"shard {k} is not running (state {C.STATE_NAMES[state]}); "
                                f"try again when `wayy status` shows it running", shard=k)
        asked = [inbound.request_roll(r.hdr64, r.hdr32) for r in rings]
        deadline = time.monotonic() + timeout
        pending = set(range(m.shards))
        failed: set[int] = set()
        next_lock_check = time.monotonic() + 0.25
        while pending and time.monotonic() < deadline:
            for k in sorted(pending):
                c = ctls[k].counters
                # read before C_ROLLS: the writer stores the count first, then marks the
                # request seen, so a request seen without a roll is a roll that failed
                seen = int(c[C.C_ROLL_REQUESTS_SEEN])
                if int(c[C.C_ROLLS]) != before[k]:
                    pending.discard(k)
                elif seen >= asked[k]:
                    pending.discard(k)
                    failed.add(k)
            if pending and time.monotonic() >= next_lock_check:
                if stopped():
                    raise NotRunning(f"the database at {path} stopped while rolling "
                                     f"({m.shards - len(pending) - len(failed)} of {m.shards} "
                                     f"shard(s) rolled)", path=path)
                next_lock_check = time.monotonic() + 0.25
            time.sleep(0.02)
        where = _log_hint(path, supervisor)
        for k in range(m.shards):
            if k in failed:
                click.echo(f"shard {k}: roll failed ({where})", err=True)
            elif k in pending:
                click.echo(f"shard {k}: did not roll within {timeout:g}s ({where})", err=True)
            else:
                click.echo(f"shard {k}: rolled; generation "
                           f"{int(datas[k].hdr64[S.GENERATION_I64])}")
        if pending or failed:
            sys.exit(1)
        click.echo(f"wayy roll: history is in {os.path.join(path, 'hist')}")
    finally:
        for seg in (*ctls, *datas, *rings):
            seg.close()


def _log_hint(path: str, supervisor: int | None) -> str:
    """Where the running database logs: DB/wayy.log when detached, else `wayy start`'s own
    stderr (a wayy.log left by an earlier detached run would be the wrong place to look)."""
    log_file = os.path.join(path, "wayy.log")
    try:
        detached = os.readlink(f"/proc/{supervisor}/fd/2") == log_file
    except (OSError, TypeError):  # another user's process, no /proc, or no pid known
        detached = os.path.exists(log_file)
    return f"see the log: {log_file}" if detached else "see the log of `wayy start`"


@main.command()
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON reports.")
def verify(db: str, as_json: bool) -> None:
    """Check every write-ahead log and historical partition of a database (running or not).

    Prints one line per file: OK with its record, row and seq counts, or DAMAGED with what
    is wrong and where. Exits 1 if anything is damaged. Repairs nothing: a writer cuts a
    damaged WAL back to its last good record when it starts, and copies a WAL damaged in
    the middle aside (``wal/*.damaged-*``) first; this command keeps reporting such copies
    until you remove them.
    """
    from dataclasses import asdict

    from wayy.verify import verify as run_verify

    reports = run_verify(db)
    bad = [r for r in reports if not r.ok]
    if as_json:
        click.echo(json.dumps({"path": os.path.realpath(db), "ok": not bad,
                               "reports": [asdict(r) for r in reports]}, indent=2))
    else:
        if not reports:
            click.echo(f"wayy verify: nothing to check at {os.path.realpath(db)} (no WAL, no "
                       f"history)")
        for r in reports:
            click.echo(f"{'OK     ' if r.ok else 'DAMAGED'} {r.path}: {r.summary}")
            for p in r.problems:
                click.echo(f"        {p}")
        if reports:
            click.echo(f"wayy verify: {len(reports) - len(bad)} ok, {len(bad)} damaged")
    if bad:
        sys.exit(1)


@main.command()
@click.argument("channel")
@click.option("--remote", "remote_url", metavar="URL", default=None,
              help="Redis URL to follow (default: the running database's, from its manifest).")
@db_option
@click.option("--password", default=None, envvar="WAYY_REDIS_PASSWORD",
              help="Redis password (default: $WAYY_REDIS_PASSWORD, else the database's "
                   "credentials file when following its own Redis). A password given here "
                   "shows in process listings: prefer --password-file or the variable.")
@click.option("--password-file", metavar="PATH", default=None,
              help="Read the Redis password from the first line of this file.")
@click.option("--from-ts", default=None, metavar="NS|ISO-8601",
              help="Replay from the first tick at or after this time, then live.")
@click.option("--from-seq", type=int, default=None, help="Replay from this seq, then live.")
@click.option("--count", type=int, default=None, help="Stop after this many ticks.")
@click.option("--json", "as_json", is_flag=True, help="Print each tick as a JSON object.")
def tail(channel: str, remote_url: str | None, db: str, password: str | None,
         password_file: str | None, from_ts: str | None, from_seq: int | None,
         count: int | None, as_json: bool) -> None:
    """Print the ticks of CHANNEL (ticks:SYM[:VENUE] or quotes:SYM[:VENUE]) from Redis, one
    line per tick, live (after replaying from --from-ts / --from-seq) until Ctrl-C."""
    from urllib.parse import urlparse

    from wayy.errors import RedisRefused
    from wayy.manifest import read_manifest
    from wayy.remote import RedisLink, Subscriber, format_tick, parse_time

    if remote_url is not None:
        RedisLink(remote_url)  # checks the URL (one clear line), connects nothing
    if password_file is not None:
        src = click.get_current_context().get_parameter_source("password")
        if password is not None and src == click.core.ParameterSource.COMMANDLINE:
            raise InvalidInput("give --password or --password-file, not both")
        from wayy.redis_server import read_password_file

        password = read_password_file(password_file, option="--password-file")
    creds = None
    if remote_url is None:
        m = read_manifest(os.path.realpath(db))
        if not m.redis_url:
            raise InvalidInput(f"the database at {m.path} runs without Redis (--no-redis); "
                               f"give --remote URL")
        remote_url = m.redis_url
        creds = m.redis_credentials
    elif password is None and urlparse(remote_url).password is None:
        try:  # the database's own Redis named by URL: its credentials file still applies
            m = read_manifest(os.path.realpath(db))
            mine, theirs = urlparse(m.redis_url or ""), urlparse(remote_url)
            if m.redis_url and (mine.hostname, mine.port) == (theirs.hostname, theirs.port):
                creds = m.redis_credentials
        except (WayyError, ValueError):
            pass
    if password is None and creds:
        from wayy.redis_server import read_password

        password = read_password(creds)
        if password is None:
            raise InvalidInput(f"cannot read the Redis credentials {creds}; give "
                               f"--password-file or set WAYY_REDIS_PASSWORD")
    if count is not None and count <= 0:
        raise InvalidInput(f"--count must be positive, got {count}")
    ts = None if from_ts is None else parse_time(from_ts)
    _tail_reachable(remote_url, password)
    seen = [0]
    closed = [False]
    sub = Subscriber(remote_url, password=password)

    def show(tick) -> None:
        try:
            click.echo(json.dumps(tick.to_dict()) if as_json else format_tick(tick))
        except BrokenPipeError:  # `wayy tail ... | head`: the reader is gone, so are we
            closed[0] = True
            sub.stop()
            return
        seen[0] += 1
        if count is not None and seen[0] >= count:
            sub.stop()

    rsub = sub.subscribe(channel, show, from_ts=ts, from_seq=from_seq)
    try:
        # until Ctrl-C or --count, or until the reader of a pipe is gone -- also while no
        # tick comes to fail a write (`wayy tail ... | head -1` on a quiet channel)
        hint_at = time.monotonic() + TAIL_HINT_S
        while not sub._stopping and not closed[0]:
            sub.run(timeout=TAIL_READER_CHECK_S)
            if _reader_gone(sys.stdout):
                closed[0] = True
            elif hint_at and time.monotonic() >= hint_at and not sub._stopping:
                hint_at = 0.0
                if not seen[0]:
                    _tail_hint(remote_url, password, rsub.stream, channel)
    except RedisRefused as exc:
        if password is None and "NOAUTH" in str(exc):
            raise RedisRefused(f"{exc} (give --password-file or set WAYY_REDIS_PASSWORD)") \
                from None
        raise
    finally:
        sub.close()
    if closed[0]:
        # as a filter killed by SIGPIPE would end; stdout pointed at /dev/null first, or
        # the interpreter's last flush reports the broken pipe once more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)


TAIL_HINT_S = 5.0  # `wayy tail` says why nothing comes after this long
TAIL_CONNECT_S = 5.0  # `wayy tail` gives up when Redis cannot be reached at start
TAIL_READER_CHECK_S = 0.5  # how often `wayy tail` looks whether its pipe's reader is gone


def _reader_gone(stream) -> bool:
    """True once the reader of the pipe (or socket) behind ``stream`` has closed it. Asks
    poll() for no event: POLLERR / POLLHUP come regardless, and a terminal, file or
    /dev/null reports nothing."""
    import select

    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    p = select.poll()
    p.register(fd, 0)
    return any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in p.poll(0))


def _tail_reachable(url: str, password: str | None) -> None:
    """Fail at once, in one line, when Redis cannot be reached at all (a host that does not
    resolve, nothing listening): the subscriber would retry it for ever in silence. Once
    connected, a lost connection is the subscriber's to retry (and it does)."""
    from wayy import redis_server
    from wayy.errors import RedisUnavailable
    from wayy.remote import redact

    try:
        redis_server.command(url, "PING", password=password, timeout=TAIL_CONNECT_S)
    except (OSError, ConnectionError) as exc:
        raise RedisUnavailable(f"cannot connect to Redis at {redact(url)}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    except (redis_server.RedisReplyError, ValueError):
        pass  # it answers: what it says (NOAUTH, say) the subscriber reports with a hint


def _tail_hint(url: str, password: str | None, stream: str, channel: str) -> None:
    """Nothing came on ``channel`` yet: say whether Redis holds its stream at all (a
    symbol that never ticked here, or a name in the wrong case, waits for ever)."""
    from wayy import redis_server

    try:
        exists = redis_server.command(url, "EXISTS", stream, password=password, timeout=2.0)
    except (OSError, ConnectionError, redis_server.RedisReplyError, ValueError):
        return  # Redis is down or refuses: the subscriber says so itself
    if not exists:
        click.echo(f"wayy tail: nothing on {channel} yet, and Redis holds no {stream}: no "
                   f"tick of it was published to this Redis (names are case-sensitive); "
                   f"still waiting (Ctrl-C to stop)", err=True)


def _rate_text(row: dict) -> str:
    """Rows/s for the status table; '?' right after a start or a roll (not known yet)."""
    return f"{row['rate']:,}" if row.get("rate_known", True) else "?"


def _dur(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


if __name__ == "__main__":
    main()
