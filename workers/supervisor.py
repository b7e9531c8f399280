"""The supervisor: owns a database's segments and processes from `wayy start` to stop.

Start: take the database lock, reclaim segments a dead previous run left behind, check that
/dev/shm can hold the shards, create every segment, write the manifest, warm up the numba
kernels once, then fork one writer per shard and the configured feeds. Forking from a
warmed-up parent is what makes start fast: children inherit compiled kernels and pay no
import or JIT cost (so the supervisor never starts threads before forking).

Run: restart any child that dies, with exponential backoff (logged, counted in the shard's
control segment). Stop (SIGTERM/SIGINT): stop feeds first so their last batches drain, then
writers; SIGKILL what does not exit within the grace period; unlink every segment; remove the
manifest; release the lock.
"""

from __future__ import annotations

import ctypes
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
from shm.shard import Control, InboundRing, ShardData, segment_name, shard_bytes
from wayy.errors import AlreadyRunning, InsufficientSpace, InvalidInput, WayyError, translate
from wayy.manifest import MANIFEST_NAME, Manifest, acquire_lock

log = logging.getLogger("wayy.supervisor")

MAX_SHARDS = 256
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


@dataclass
class Child:
    """A supervised child process: what to run, its pid, and its restart backoff."""

    name: str
    target: Callable[[], None]
    shard: int | None = None
    pid: int = 0
    started: float = 0.0
    backoff: float = BACKOFF_MIN_S
    restart_at: float = 0.0


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
        self.lock_fd: int | None = None
        self._segments: list = []
        self.change_rings: list[ChangeRingWriter] = []
        self.pid = os.getpid()

    # --- start ----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Lock, reclaim, check space, create segments and manifest, warm up kernels."""
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"cannot create database directory {self.path}: "
                               f"{exc.strerror}") from None
        self.lock_fd = acquire_lock(self.path)
        if self.lock_fd is None:
            from wayy.manifest import lock_holder

            _running, pid = lock_holder(self.path)
            raise AlreadyRunning(f"a database is already running at {self.path} (pid {pid}); "
                                 f"stop it with: wayy stop --db {self.path}", path=self.path)
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
        from workers import writer

        writer.warm_up()
        Manifest(path=self.path, prefix=self.prefix, shards=cfg.shards, capacity=cfg.capacity,
                 ring_capacity=cfg.ring_capacity, max_symbols=cfg.max_symbols,
                 max_venues=cfg.max_venues, change_ring_records=cfg.change_ring_records,
                 supervisor_pid=os.getpid(),
                 started_ns=time.time_ns()).write()
        for k in range(cfg.shards):
            self.children.append(Child(f"writer-{k}", self._writer_target(k), shard=k))
        for i, spec in enumerate(cfg.feeds):
            self.children.append(Child(f"feed-{i}-{spec.kind}", self._feed_target(spec)))

    def _writer_target(self, k: int) -> Callable[[], None]:
        def target() -> None:
            from workers import writer

            writer.run(self.prefix, k)

        return target

    def _feed_target(self, spec) -> Callable[[], None]:
        def target() -> None:
            from workers import feeds

            feeds.run_feed(self.path, spec)

        return target

    def spawn(self, child: Child) -> None:
        """Fork ``child``; the child never returns into the caller's code."""
        pid = os.fork()
        if pid:
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
            child.target()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            log.exception("%s failed", child.name)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def start_children(self) -> None:
        """Start every writer, then the feeds."""
        for child in self.children:
            self.spawn(child)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until every writer accepts input; raise WayyError if one fails first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reap(restart=False)
            writers = [c for c in self.children if c.shard is not None]
            dead = [c for c in writers if c.pid == 0]
            if dead:
                raise WayyError(f"{dead[0].name} exited during start (see the log)",
                                shard=dead[0].shard, path=self.path)
            if all(self.controls[c.shard].counters[C.C_STATE] == C.STATE_RUNNING
                   and self.controls[c.shard].counters[C.C_WRITER_PID] == c.pid
                   for c in writers):
                return
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
        self.running = False

    # --- stop -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop feeds, then writers; unlink segments, remove manifest, release the lock."""
        self.running = False
        feeds = [c for c in self.children if c.shard is None]
        writers = [c for c in self.children if c.shard is not None]
        self._stop_group(feeds)
        self._stop_group(writers)
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
                self.wait_ready()
            except WayyError as exc:
                if on_ready:
                    on_ready(str(exc))
                    on_ready = None
                raise
            if on_ready:
                on_ready(None)
            self.loop()
        finally:
            if self.lock_fd is not None:
                self.shutdown()
