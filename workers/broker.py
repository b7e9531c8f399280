"""The broker: every committed batch of its shards, out to Redis pub/sub channels and streams.

The broker is a local subscriber (``wayy.subscribe``, batch mode, whole tables) of every shard
(or of the subset it is given when ``--brokers N`` splits the shards). Per pass (``do_work``)
it takes what was committed since the last pass, up to ``MAX_TXN_ROWS`` rows, groups it by
symbol, and sends ONE MULTI/EXEC transaction to Redis holding, per symbol and table:

    PUBLISH {kind}:{sym}            the symbol's rows (wire format: json | binary | binary+lz4)
    PUBLISH {kind}:{sym}:{venue}    the rows of each named venue (no channel for venue "")
    XADD    {kind}:{sym}:stream     MAXLEN ~ N | MINID ~ M-age   <M>-<L>   d <batch> p <P> k <shard>
    HSET    wayy:broker:cursors     "<shard>:trades" <next seq> "<shard>:quotes" <next seq>

(``kind`` is ``ticks`` for trades, ``quotes`` for quotes.) The transaction's replies are read
after the next pass has been built, so the Redis round trip overlaps that work; the next
transaction is sent only once Redis has applied this one. Because the cursor is written in
the transaction that publishes, Redis holds exactly what was published up to the cursor: a
broker killed at any point (SIGKILL included) starts again from the cursor, and whatever it
publishes a second time (the pub/sub message of a transaction Redis lost on a crash, say)
carries the same shard and seq, which consumers drop.

Stream entry ids ``<M>-<L>``: ``L`` is the last seq of the entry's rows, ``M`` the running
maximum, over the stream, of tick timestamps in milliseconds. Both are non-decreasing along a
stream (a stream is one symbol, so one shard, whose seqs strictly increase), hence ids
strictly increase; ``XRANGE key <T_ms>-0 +`` replays from tick time T (every earlier row has
ts < T), and the seq is in the id. Field ``p`` is the ``L`` of the previous entry, so a reader
can prove that nothing between two entries was trimmed. Streams always hold binary batches
(binary+lz4 unless the wire is plain binary): one XADD per tick would cost more than the
ticks. Retention: ``maxlen=N`` (entries per stream, ``MAXLEN ~``) or ``age=SECONDS`` (tick
time before the stream's newest M, ``MINID ~``).

Redis unreachable at start or lost while running: the broker retries with backoff (logged,
never a crash); the shards never notice — the broker is a read-only subscriber whom the
writers never wait for. After every (re)connection it reads its cursors back from Redis and
re-subscribes from them (a Redis restarted from its append-only file may be behind what was
published before the crash). The first broker to connect claims the Redis key space for its
database (field ``db`` of the cursor hash: the id in ``<db>/wayy.id``, then host and path); a
broker of another database is refused there, since the two would share channels and streams.
Its state goes to ``<db>/broker-<index>.status.json`` every half second (``STATUS_FIELDS``),
which ``wayy status`` reads (``wayy.remote.read_broker_status``).

Started by the supervisor (``run(...)`` in a forked child) or on its own:
``python -m workers.broker --db PATH --redis URL [--shards 0,1] [--wire binary+lz4]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass

import hiredis
import numpy as np

from shm.layout import shard as S
from shm.layout import tables as T
from shm.segment import pid_alive
from wayy import wire
from wayy.channels import TABLE_KINDS
from wayy.errors import InvalidInput, NotRunning, WayyError
from wayy.manifest import database_id
from wayy.names import to_name_array
from wayy.remote import (
    BROKER_CLIENT_NAME,
    BROKER_CURSORS_KEY,
    F_DATA,
    F_PREV,
    F_SHARD,
    OWNER_FIELD,
    SHARDS_FIELD,
    STREAM_SUFFIX,
    RedisLink,
    RedisRefused,
    RedisUnavailable,
    broker_database,
    client_list,
    parse_id,
    redact,
    transient,
)
from wayy.status import lag_rows
from workers.agent import Runner

log = logging.getLogger("wayy.broker")

MAX_TXN_ROWS = 1 << 16  # rows per transaction: bounds one EXEC (Redis blocks while it runs)
IDLE_WAIT_S = 0.05  # longest sleep on the change rings between passes
STATUS_EVERY_S = 0.5
DRAIN_ON_CLOSE_S = 5.0  # on stop, publish what is committed for at most this long
PING_IDLE_S = 1.0  # an idle broker pings Redis this often (health, and a quick reconnect)
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0
LOG_DOWN_EVERY_S = 30.0
DEFAULT_RETENTION = "maxlen=100000"
# what Redis takes (MAXLEN / MINID are int64): beyond this a trim argument is refused at
# every XADD, and no stream would ever be written
MAX_RETENTION_ENTRIES = (1 << 62)
MAX_RETENTION_S = 100 * 365 * 86400
STARTS = ("earliest", "latest")
STATUS_FIELDS = ("pid", "index", "shards", "redis_url", "redis", "redis_error",
                 "redis_since_ns", "wire", "retention", "started_ns", "updated_ns",
                 "transactions", "published_rows", "messages", "bytes", "stream_entries",
                 "errors", "reconnects", "per_shard")

SMALL_GROUP = 64  # rows up to this: group ids with list min/max, not four numpy calls
_ZEROS32 = np.zeros(4096, np.int32)  # venue indices of one-venue groups (never written)
_BAD_STREAM = None  # _stream_last of a key that is not a stream: its XADDs are skipped
BAD_STREAM_RECHECK_S = 1.0  # how often such keys are looked at again
_MULTI = hiredis.pack_command((b"MULTI",))
_EXEC = hiredis.pack_command((b"EXEC",))
_KIND = {T.TRADES: TABLE_KINDS["trades"], T.QUOTES: TABLE_KINDS["quotes"]}
_TNAME = {T.TRADES: "trades", T.QUOTES: "quotes"}


# --- retention ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Retention:
    """How streams are trimmed: ``maxlen`` entries (``MAXLEN ~``) or ``age_ms`` of tick time
    behind the newest entry (``MINID ~``). Both None: never trimmed."""

    maxlen: int | None = None
    age_ms: int | None = None

    @classmethod
    def parse(cls, spec: "str | Retention | None") -> "Retention":
        """``maxlen=100000``, ``age=3600`` (seconds; suffixes s, m, h, d), or ``none``."""
        if isinstance(spec, Retention):
            return spec
        if spec is None or spec == "none":
            return cls()
        text = str(spec).strip()
        if re.fullmatch(r"\d+[smhd]", text):
            text = "age=" + text  # a bare duration: "6h"
        m = re.fullmatch(r"(maxlen|age)=(\d+)([smhd]?)", text)
        if not m:
            raise InvalidInput(f"retention {spec!r}: use maxlen=ENTRIES, age=SECONDS (or 30m, "
                               f"6h, 2d) or none")
        n = int(m.group(2))
        if n <= 0:
            raise InvalidInput(f"retention {spec!r} must be positive")
        if m.group(1) == "maxlen":
            if m.group(3):
                raise InvalidInput(f"retention {spec!r}: maxlen counts entries, no unit")
            if n > MAX_RETENTION_ENTRIES:
                raise InvalidInput(f"retention {spec!r}: at most maxlen="
                                   f"{MAX_RETENTION_ENTRIES} (or none: never trimmed)")
            return cls(maxlen=n)
        mult = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(3)]
        if n * mult > MAX_RETENTION_S:
            raise InvalidInput(f"retention {spec!r}: at most age={MAX_RETENTION_S // 86400}d "
                               f"(or none: never trimmed)")
        return cls(age_ms=n * mult * 1000)

    def __str__(self) -> str:
        if self.maxlen is not None:
            return f"maxlen={self.maxlen}"
        if self.age_ms is not None:
            return f"age={self.age_ms // 1000}"
        return "none"

    def trim_args(self, ms: int) -> tuple:
        """XADD's trim arguments for an entry whose id has ``ms`` as its M."""
        if self.maxlen is not None:
            return (b"MAXLEN", b"~", self.maxlen)
        if self.age_ms is not None:
            # age behind M, but never behind a point past this clock: one tick stamped
            # ahead of time (the writers accept up to a day) must not trim what the last
            # `age` of real time published
            return (b"MINID", b"~", max(0, min(ms, time.time_ns() // 1_000_000)
                                        - self.age_ms))
        return ()


def _venue_pieces(vid: np.ndarray, a: int, b: int) -> list[tuple[int, int]]:
    """Rows a..b of one symbol cut into runs of consecutive rows that name at most
    wire.MAX_VENUES venues each (a message holds no more); usually just (a, b)."""
    if b - a <= wire.MAX_VENUES or len(np.unique(vid[a:b])) <= wire.MAX_VENUES:
        return [(a, b)]
    out, start, seen = [], a, set()
    for i, v in enumerate(vid[a:b].tolist(), a):
        if v not in seen and len(seen) == wire.MAX_VENUES:
            out.append((start, i))
            start, seen = i, set()
        seen.add(v)
    out.append((start, b))
    return out


class _Overtaken(Exception):
    """A shard rolled while the broker held zero-copy views of its rows: they may be new
    rows now, so nothing built from them may be sent."""


@dataclass(slots=True)
class _Txn:
    """A packed MULTI/EXEC and what it does once Redis applies it."""

    data: bytes
    nreplies: int
    cursors: dict  # shard -> [trades, quotes] next seqs it writes
    ids: dict  # stream key -> (M, L) of the entry it adds
    last_ts: dict  # shard -> newest tick time it publishes
    rows: int
    messages: int
    nbytes: int


# --- the agent -----------------------------------------------------------------------------------

class Broker:
    """Agent that publishes the committed batches of ``shards`` (None: all) to Redis."""

    def __init__(self, db_path: str, shards: list[int] | None, redis_url: str,
                 password: str | None = None, wire_format: str = "binary+lz4",
                 retention: "str | Retention | None" = DEFAULT_RETENTION, index: int = 0,
                 username: str | None = None, start: str = "earliest") -> None:
        if wire_format not in wire.FORMATS:
            raise InvalidInput(f"wire format {wire_format!r}: use one of "
                               f"{', '.join(wire.FORMATS)}")
        if start not in STARTS:
            raise InvalidInput(f"start {start!r}: use earliest or latest")
        self.name = f"broker-{index}"
        self.db_path = os.path.realpath(db_path)
        self.want_shards = None if shards is None else sorted(set(int(k) for k in shards))
        self._locks: dict[int, int] = {}  # shard -> fd of its held broker lock file
        self._refused = False  # another broker holds one of its shards: it leaves no status
        self.redis_url = redis_url
        self.wire = wire_format
        self.retention = Retention.parse(retention)
        self.index = index
        self.start = start
        # policies picked once (STYLE 15): the channel encoder, the stream encoder
        self.encode = wire.encoder(wire_format)
        self.stream_binary = wire_format != "json"
        self.stream_compress = wire_format != "binary"
        # binary formats: every symbol group of a batch encoded by one kernel call
        self._genc = wire.GroupEncoder() if self.stream_binary else None
        self.link = RedisLink(redis_url, username, password, timeout=5.0,
                              name=f"wayy-broker-{index}")
        self.db = None
        self.sub = None
        self.shards: list[int] = []
        self._mine: set[int] = set()
        self._stash = None
        self._drained = False
        self._seen_cursors: list | None = None
        self.cursors: dict[int, list[int]] = {}  # committed in Redis: next seq per table
        self._stream_last: dict[bytes, tuple[int, int]] = {}  # key -> (M, L) of the last id
        # key -> the highest seq of rows meant for that stream that are not in it (its key
        # was not a stream, or its XADD was refused): the next entry written names it as
        # its ``p``, so a consumer reading past the hole counts the rows lost
        self._skipped: dict[bytes, int] = {}
        self._bad_recheck = 0.0  # when keys found unusable as streams are looked at again
        self._bad_told: set[bytes] = set()  # those already reported
        # shard -> [names object, its lists, its 16-byte tables (made when first wanted)]
        self._names: dict[int, list] = {}
        self._chan_cache: dict[tuple, object] = {}
        self._last_ts: dict[int, int] = {}
        self._retry_db = 0.0
        self._retry_redis = 0.0
        self._backoff = RETRY_MIN_S
        self._down_logged = 0.0
        self._status_due = 0.0
        self._lag_cache: dict = {}  # status: rows a roll took before they were published
        self._last_io = 0.0
        self.redis_state = "connecting"
        self.redis_error: str | None = None
        self.redis_since_ns = time.time_ns()
        self.started_ns = time.time_ns()
        self.stats = {"transactions": 0, "published_rows": 0, "messages": 0, "bytes": 0,
                      "stream_entries": 0, "errors": 0, "reconnects": 0}
        self._status_path = os.path.join(self.db_path, f"{self.name}.status.json")
        self.owner = b""  # "<database id> <host>:<path>", once the database is attached
        self._inflight: _Txn | None = None  # sent, its replies not read yet
        self._waiting_logged = False

    # --- agent -----------------------------------------------------------------------------
    def on_start(self) -> None:
        log.info("%s %d starting: %s, wire %s, retention %s", self.name, os.getpid(),
                 redact(self.redis_url), self.wire, self.retention)
        # load (or compile, once per machine) the codec kernels before the first batch
        wire.warm_up()
        if self._genc is not None:
            wire.warm_up_group_encoder()
        self._write_status(force=True)

    def do_work(self) -> int:
        """One pass: make sure the database and Redis are there, then publish what is new.
        Returns rows published (0 = nothing to do, or waiting to retry)."""
        now = time.monotonic()
        if self.db is None:
            if now < self._retry_db or not self._attach():
                return 0
        if not self.link.connected:
            if now < self._retry_redis:
                return 0
            if not self._connect():
                return 0
        if self.sub is None and not self._resubscribe():
            return 0
        try:
            items = self._collect()
        except NotRunning as exc:
            self._lost_db(exc)
            return 0
        try:
            if not items and self._stash is None and not self._cursor_moved():
                self._settle()
                return 0
            try:
                txn = self._build(items)
            except _Overtaken:
                self._reread()
                return 1
            self._settle()  # the previous transaction's replies, read after this one is built
            if txn is not None:
                self._send(txn)
                return txn.rows or 1
            return 1
        except (RedisUnavailable, RedisRefused) as exc:
            self._redis_down(exc)
        return 0

    def idle(self, work: int) -> None:
        """Sleep on the change rings (or until the next retry) when the pass found nothing."""
        now = time.monotonic()
        if now >= self._status_due:
            self._write_status()
        if work:
            self._last_io = now
            return
        if self.link.connected and now - self._last_io > PING_IDLE_S:
            # an idle broker still watches Redis: the status says whether it is up
            self._last_io = now
            try:
                self._settle()
                self.link.call("PING")
            except (RedisUnavailable, RedisRefused) as exc:
                self._redis_down(exc)
                return
        if self.sub is not None and self.link.connected:
            try:
                self._stash = self.sub.poll(timeout=IDLE_WAIT_S)
            except NotRunning as exc:
                self._lost_db(exc)
            return
        due = min(self._retry_db if self.db is None else now + IDLE_WAIT_S,
                  self._retry_redis if not self.link.connected else now + IDLE_WAIT_S)
        time.sleep(min(max(due - now, 0.005), IDLE_WAIT_S * 2))

    def on_close(self) -> None:
        """Publish what is committed (the supervisor stops writers before brokers), then
        unmap and disconnect."""
        deadline = time.monotonic() + DRAIN_ON_CLOSE_S
        try:
            while (self.sub is not None and self.link.connected
                   and time.monotonic() < deadline and self.do_work()):
                pass
        except Exception as exc:  # noqa: BLE001  (stopping: report, never hang)
            log.warning("%s: stopped before publishing everything: %s", self.name, exc)
        self.redis_state = "stopped"
        if self._refused:
            self._drop_status()
        else:
            self._write_status(force=True)
        self._close_sub()
        if self.db is not None:
            self.db.close()
            self.db = None
        self.link.close()
        for fd in self._locks.values():
            os.close(fd)  # frees the shard's lock
        self._locks.clear()
        log.info("%s stopped: %d rows in %d transactions", self.name,
                 self.stats["published_rows"], self.stats["transactions"])

    # --- the database ------------------------------------------------------------------------
    def _attach(self) -> bool:
        import wayy

        try:
            self.db = wayy.attach(self.db_path)
        except WayyError as exc:
            self._retry_db = time.monotonic() + 1.0
            if time.monotonic() - self._down_logged > LOG_DOWN_EVERY_S:
                self._down_logged = time.monotonic()
                log.warning("%s: database at %s not available (%s); retrying", self.name,
                            self.db_path, exc)
            return False
        try:
            dbid = database_id(self.db_path)
        except OSError as exc:
            raise InvalidInput(f"{self.name}: cannot read or create the database id in "
                               f"{self.db_path}: {exc.strerror}") from None
        self.owner = f"{dbid} {socket.gethostname()}:{self.db_path}".encode()
        # the connection's name says which database it publishes for (_other_publisher)
        self.link.name = f"{BROKER_CLIENT_NAME}{self.index}-{dbid}"
        n = self.db.nshards
        if self.want_shards is None:
            self.shards = list(range(n))
        else:
            bad = [k for k in self.want_shards if not 0 <= k < n]
            if bad:
                raise InvalidInput(f"{self.name}: shards {bad} do not exist; the database has "
                                   f"{n} (0..{n - 1})")
            self.shards = list(self.want_shards)
        self._lock_shards()
        self._mine = set(self.shards)
        self._names = {}
        try:
            starting = self.db.starting_shards(self.shards)
        except WayyError:
            starting = self.shards  # stopping or restarting under us: look again shortly
        if starting:
            # their writers are loading the write-ahead log back: until they are done the
            # next seq is not final (a cursor past it would look like a recreated database)
            if not self._waiting_logged:
                self._waiting_logged = True
                log.info("%s: waiting for shards %s to finish starting", self.name,
                         ",".join(map(str, starting)))
            self.db.close()
            self.db = None
            self._retry_db = time.monotonic() + 0.1
            return False
        log.info("%s: attached %s, publishing shards %s", self.name, self.db_path,
                 ",".join(map(str, self.shards)))
        return True

    def _lock_shards(self) -> None:
        """Hold ``<db>/broker-shard-<k>.lock`` (flock) for every shard this broker publishes,
        for the life of the process: a second broker of the same shards (started by hand
        beside `wayy start`'s) would publish every batch twice and collide in the streams.
        The kernel frees the locks of a killed broker, so its restart takes them again."""
        import fcntl

        for k in self.shards:
            if k in self._locks:
                continue
            path = os.path.join(self.db_path, f"broker-shard-{k}.lock")
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise InvalidInput(f"{self.name}: cannot open its lock file {path}: "
                                   f"{exc.strerror}", path=path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._refused = True
                try:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                finally:
                    os.close(fd)
                raise InvalidInput(f"{self.name}: shard {k} of {self.db_path} is already "
                                   f"published by another broker (pid {holder}); one broker "
                                   f"per shard (`wayy start --brokers N` runs them)") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self._locks[k] = fd

    def _lost_db(self, exc: BaseException) -> None:
        log.warning("%s: the database stopped (%s); waiting for it to come back", self.name,
                    exc)
        self._close_sub()
        if self.db is not None:
            try:
                self.db.close()
            except Exception:  # noqa: BLE001
                pass
        self.db = None
        self._retry_db = time.monotonic() + 1.0

    def _close_sub(self) -> None:
        self._stash = None
        if self.sub is not None:
            try:
                self.sub.stop()
            except Exception:  # noqa: BLE001
                pass
            self.sub = None

    def _resubscribe(self) -> bool:
        """Follow every shard from the cursors Redis holds (a local batch subscription)."""
        self._close_sub()
        start = {}
        for k in self.shards:
            c = self.cursors.get(k)
            if c is not None:
                start[k] = min(c)
        for _attempt in range(2):
            try:
                # idle "block": between passes the broker sleeps on the rings' futex words
                # (woken by the next commit) instead of spinning, which on a small machine
                # would take CPU from the writers and Redis.
                # max_latency_ms=1e-9 is 0 ns once truncated: every pass of the subscription
                # hands over everything it read (nothing waits in its accumulators), which
                # _next_cursors relies on
                self.sub = self.db.subscribe(["trades", "quotes"], batch_size=MAX_TXN_ROWS,
                                             max_latency_ms=1e-9, from_seq=start or None,
                                             idle="block", shards=self.shards)
                assert self.sub.max_latency_ns == 0
                break
            except NotRunning as exc:
                self._lost_db(exc)
                return False
            except InvalidInput as exc:
                if "past the database's next seq" not in str(exc) or exc.shard is None:
                    raise
                # Redis holds the progress of an earlier database at this path, recreated
                # without its history: publish this one from its start
                k = exc.shard
                log.error("%s: Redis' cursor for shard %d (%s) is past the database's next "
                          "seq: the database was recreated; publishing shard %d from seq 0",
                          self.name, k, self.cursors.get(k), k)
                self.cursors[k] = [0, 0]
                start[k] = 0
                if not self._write_cursors_now([k]):
                    return False
        if self.sub is None:
            return False
        for k in self.shards:
            if k not in self.cursors:
                nxt = self.sub.cursors()[k]
                self.cursors[k] = list(nxt)
                # persist where "latest" began, so a crash before the first publish
                # does not move it
                if self.start == "latest" and not self._write_cursors_now([k]):
                    return False
        return True

    # --- Redis ---------------------------------------------------------------------------------
    def _connect(self) -> bool:
        try:
            self.link.connect()
            # claim the Redis key space for this database (the first broker to connect wins)
            # and read the cursors back, in one round trip
            _, raw = self.link.pipeline([(b"HSETNX", BROKER_CURSORS_KEY, OWNER_FIELD,
                                          self.owner),
                                         (b"HGETALL", BROKER_CURSORS_KEY)])
            if transient(raw):
                raise RedisUnavailable(f"Redis is not ready: {raw}")
            if isinstance(raw, hiredis.ReplyError):
                raise RedisRefused(f"Redis refused HGETALL {BROKER_CURSORS_KEY}: {raw}")
        except (RedisUnavailable, RedisRefused) as exc:
            self._redis_down(exc)
            return False
        got: dict[int, list[int]] = {}
        owner = dict(zip(raw[::2], raw[1::2])).get(OWNER_FIELD, b"").decode(errors="replace")
        if owner.split(" ")[0] != self.owner.decode().split(" ")[0]:
            # two databases publishing into one Redis would share its channels and streams:
            # ticks of both on ticks:AAPL, seqs that collide, cursors that overwrite each other
            self._redis_down(RedisRefused(
                f"Redis at {self.link.where} is used by another wayy database ({owner}); "
                f"use another Redis server for this one, or, if that database is gone, "
                f"delete its progress: redis-cli -u URL DEL {BROKER_CURSORS_KEY}"),
                retry_s=RETRY_MAX_S)
            return False
        other = self._other_publisher()
        if other is not None:
            self._redis_down(RedisRefused(
                f"Redis server at {self.link.where} is used by another wayy database "
                f"({other}); its pub/sub channels are shared by all of the server's "
                f"database numbers, so the ticks of both would mix: use another Redis "
                f"server for this one"), retry_s=RETRY_MAX_S)
            return False
        try:
            # subscribers check that a batch's shard is its symbol's
            self.link.call("HSET", BROKER_CURSORS_KEY, SHARDS_FIELD, self.db.nshards)
        except (RedisUnavailable, RedisRefused) as exc:
            self._redis_down(exc)
            return False
        for f, v in zip(raw[::2], raw[1::2]):
            if f in (OWNER_FIELD, SHARDS_FIELD):
                continue
            try:
                k, _, t = f.decode().partition(":")
                got.setdefault(int(k), [-1, -1])[T.TABLE_IDS[t]] = int(v)
            except (ValueError, KeyError, UnicodeDecodeError):
                log.warning("%s: ignoring a malformed cursor field %r", self.name, f)
        self.cursors = {}
        for k in self.shards:
            c = got.get(k)
            if c is not None and min(c) >= 0:
                self.cursors[k] = c
            elif self.start == "earliest":
                self.cursors[k] = [0, 0]
        self._stream_last = {}
        was = self.redis_state
        self.redis_state = "ok"
        self.redis_error = None
        self.redis_since_ns = time.time_ns()
        self._backoff = RETRY_MIN_S
        if was == "down":
            log.info("%s: Redis at %s is back; resuming from cursors %s", self.name,
                     self.link.where, self._fmt_cursors())
        else:
            log.info("%s: connected to Redis at %s; cursors %s", self.name, self.link.where,
                     self._fmt_cursors())
        # whatever the subscription had consumed beyond Redis' cursors is published again
        self._close_sub()
        return self._resubscribe()

    def _fmt_cursors(self) -> str:
        return " ".join(f"{k}:{c[0]}/{c[1]}" for k, c in sorted(self.cursors.items())) or "none"

    def _redis_down(self, exc: BaseException, retry_s: float | None = None) -> None:
        self._inflight = None  # its reply is lost with the connection: Redis' cursors decide
        self.link.close()
        self._close_sub()
        now = time.monotonic()
        if self.redis_state != "down":
            self.redis_state = "down"
            self.redis_since_ns = time.time_ns()
            self.stats["reconnects"] += 1
        self.redis_error = str(exc)
        if now - self._down_logged > LOG_DOWN_EVERY_S or self._backoff == RETRY_MIN_S:
            self._down_logged = now
            log.warning("%s: Redis unavailable (%s); retrying with backoff, the shards are "
                        "not affected", self.name, exc)
        self._retry_redis = now + (self._backoff if retry_s is None else retry_s)
        self._backoff = min(self._backoff * 2, RETRY_MAX_S)
        self._write_status(force=True)

    def _write_cursors_now(self, shards: list[int]) -> bool:
        """HSET the cursors of ``shards`` at once (outside a publish). False: Redis is down."""
        args = []
        for k in shards:
            c = self.cursors[k]
            args += [f"{k}:trades", c[0], f"{k}:quotes", c[1]]
        try:
            self.link.call("HSET", BROKER_CURSORS_KEY, *args)
        except (RedisUnavailable, RedisRefused) as exc:
            self._redis_down(exc)
            return False
        return True

    # --- collecting and publishing ---------------------------------------------------------------
    def _collect(self) -> list:
        """Batches committed since the last pass, up to MAX_TXN_ROWS rows."""
        items = []
        rows = 0
        if self._stash is not None:
            items.append(self._stash)
            rows = len(self._stash)
            self._stash = None
        poll = self.sub.poll
        self._drained = False
        while rows < MAX_TXN_ROWS:
            b = poll(0)
            if b is None:
                self._drained = True
                break
            items.append(b)
            rows += len(b)
        return items

    def _next_cursors(self) -> dict[int, list[int]]:
        """Per shard, the next seq to publish of each table, given what was collected.

        The subscription's cursors are per table, and in poll mode a table's cursor moves
        only when a batch of that table is handed over. Drained (nothing more queued, every
        pass flushes what it read), every row below the larger of the two was handed over,
        whichever table it is in: both move there, so a table that stopped ticking does not
        hold the shard's resume point back. Never behind what Redis holds."""
        allc = self.sub.cursors()
        sent = self._sent_cursors()
        if self._drained:
            cur = {k: [max(allc[k])] * 2 for k in self.shards}
        else:
            cur = {k: list(allc[k]) for k in self.shards}
        for k, c in cur.items():
            old = sent.get(k)
            if old is not None:
                c[0], c[1] = max(c[0], old[0]), max(c[1], old[1])
        return cur

    def _cursor_moved(self) -> bool:
        """Whether the subscription moved past what Redis holds without handing over rows
        (rows of other brokers' shards, or rows Redis already has)."""
        cur = self.sub.cursors()
        if cur == self._seen_cursors:
            return False
        self._seen_cursors = cur
        sent = self._sent_cursors()
        return any(self._next_cursors()[k] != sent.get(k) for k in self.shards)

    def _batch_names(self, b) -> tuple[list[str], list[str]]:
        """(symbol names, venue names) that ``b``'s symbol / venue ids index: the shard's
        interned names for rows from memory, the batch's own for rows read back from history.
        (``Batch.names``, converted to lists once per names object.)"""
        return self._names_entry(b)[1]

    def _name_tables(self, b) -> tuple[np.ndarray, np.ndarray]:
        """The same names as 16-byte NUL-padded tables (read-only uint8), for the kernel."""
        entry = self._names_entry(b)
        if entry[2] is None:
            tables = []
            for a, what in zip(entry[0], ("symbol", "venue")):
                tab = (np.ascontiguousarray(to_name_array(a, what, len(a))).view(np.uint8)
                       if len(a) else np.zeros(16, np.uint8))
                tab.flags.writeable = False
                tables.append(tab)
            entry[2] = tuple(tables)
        return entry[2]

    def _names_entry(self, b) -> list:
        key = b.names
        cached = self._names.get(b.shard)
        if cached is not None and cached[0][0] is key[0] and cached[0][1] is key[1]:
            return cached
        entry = self._names[b.shard] = [key, (key[0].tolist(), key[1].tolist()), None]
        return entry

    def _build(self, items: list) -> "_Txn | None":
        """One MULTI/EXEC: every symbol group's PUBLISHes and XADD, and the cursors, packed.
        Built on top of the transaction in flight (its cursors and stream ids), as Redis
        will hold them once it applies; None when there is nothing to send."""
        cmds: list[bytes] = []
        add = cmds.append
        pack = hiredis.pack_command
        base = self._sent_cursors()
        ids: dict[bytes, tuple[int, int]] = {}
        rows = nbytes = nmsg = 0
        last_ts: dict[int, int] = {}
        entries: list = []
        for b in items:
            if not b.valid:
                raise _Overtaken
            k = b.shard
            if k not in self._mine:
                continue
            t = T.TABLE_IDS[b.table]
            floor = base[k][t]
            seq = b["seq"]
            if len(seq) == 0 or int(seq[-1]) < floor:
                continue
            cols = {c: b[c] for c in ("ts", "symbol_id", "venue_id", "seq")}
            for c in T.VALUE_COLUMNS[t]:
                cols[c] = b[c]
            if int(seq[0]) < floor:  # republished after a restart: Redis has these rows
                cut = int(np.searchsorted(seq, floor, "left"))
                cols = {c: v[cut:] for c, v in cols.items()}
            if self._genc is not None:
                try:
                    entries.extend(self._entries_fast(k, t, cols, b))
                    continue
                except wire.WireError:
                    pass  # the general path below says what cannot be encoded
            entries.extend(self._entries(k, t, cols, self._batch_names(b)))
        if self._bad_told and time.monotonic() >= self._bad_recheck:
            # keys that were not streams: removed since? (their XINFO is asked again)
            self._bad_recheck = time.monotonic() + BAD_STREAM_RECHECK_S
            for key in self._bad_told:
                self._stream_last.pop(key, None)
        self._load_stream_ids([e[2] for e in entries])  # may settle the transaction in flight
        stream_last = self._stream_last
        inflight_ids = self._inflight.ids if self._inflight is not None else {}
        for k, t, skey, ch, chv, msgs, vmsgs, data, n, last, ts_max in entries:
            for m in msgs:
                add(pack((b"PUBLISH", ch, m)))
                nbytes += len(m)
            nmsg += len(msgs)
            if chv is not None:  # one named venue: the same messages
                for m in msgs:
                    add(pack((b"PUBLISH", chv, m)))
                    nbytes += len(m)
                nmsg += len(msgs)
            for c, m in vmsgs:  # several venues: each named one's rows
                add(pack((b"PUBLISH", c, m)))
                nbytes += len(m)
                nmsg += 1
            # the stream entry: one binary batch
            if stream_last.get(skey, 0) is _BAD_STREAM:
                # not a stream (reported when found): pub/sub only
                self._skipped[skey] = max(self._skipped.get(skey, -1), last)
                continue
            if callable(data):
                data = data()
            prev_ms, prev_l = (ids.get(skey) or inflight_ids.get(skey)
                               or stream_last.get(skey, (0, -1)))
            ms = max(prev_ms, ts_max // 1_000_000)
            if last <= prev_l and ms == prev_ms:
                # seqs went back (a recreated database): keep ids increasing
                ms = prev_ms + 1
            add(pack((b"XADD", skey, *self.retention.trim_args(ms), f"{ms}-{last}".encode(),
                      F_DATA, data, F_PREV, str(prev_l).encode(), F_SHARD, str(k).encode())))
            ids[skey] = (ms, last)
            rows += n
            if ts_max > last_ts.get(k, 0):
                last_ts[k] = ts_max
        if not all(b.valid for b in items):  # a roll while encoding: what was read is suspect
            raise _Overtaken
        new = self._next_cursors()
        changed = [k for k in self.shards if new[k] != base.get(k)]
        if changed:
            args = []
            for k in changed:
                args += [f"{k}:trades".encode(), new[k][0], f"{k}:quotes".encode(), new[k][1]]
            add(pack((b"HSET", BROKER_CURSORS_KEY, *args)))
        if not cmds:
            return None
        return _Txn(b"".join((_MULTI, *cmds, _EXEC)), len(cmds) + 2,
                    {k: new[k] for k in changed}, ids, last_ts, rows, nmsg, nbytes)

    def _entries_fast(self, k: int, t: int, cols: dict, b) -> list:
        """What _entries gives, for the binary formats: every group (and venue) message of
        batch ``b``'s rows ``cols`` encoded by one kernel call (wire.GroupEncoder).
        WireError: take the general path."""
        sym8, ven8 = self._name_tables(b)
        vcols = T.VALUE_COLUMNS[t]
        out, groups, count = self._genc.encode(
            _TNAME[t], k, cols["ts"], cols["symbol_id"], cols["venue_id"], cols["seq"],
            [cols[c] for c in vcols], sym8, ven8)
        syms, vens = self._batch_names(b)
        message = wire.GroupEncoder.message
        compress = self.stream_compress
        entries = []
        for g in groups[:count].tolist():
            msg = message(out, g, compress)
            sym = syms[g[wire.G_SYM]]
            v = g[wire.G_VENUE]
            if g[wire.G_MAIN]:
                ch, skey = self._channel(t, sym)
                chv = self._venue_channel(t, sym, vens[v]) if v >= 0 and vens[v] else None
                entries.append((k, t, skey, ch, chv, (msg,), [], msg, g[wire.G_ROWS],
                                g[wire.G_LAST_SEQ], g[wire.G_TS_MAX]))
            else:
                entries[-1][6].append((self._venue_channel(t, sym, vens[v]), msg))
        return entries

    def _entries(self, k: int, t: int, cols: dict, names: tuple[list, list]) -> list:
        """Every symbol group of one shard's rows of one table, encoded in the wire format:
        ``(shard, table, stream key, channel, venue channel or None, messages, [(venue
        channel, message)], stream entry data (or a function giving it), rows, last seq,
        max ts)``. Rows that cannot be encoded are reported and left out."""
        entries = []
        for k, t, skey, ch, chv, wb, ts_max in self._groups(k, t, cols, names):
            try:
                msgs = self.encode(wb)
            except wire.WireError as exc:  # rows the writer accepted should always encode
                self._error(f"cannot encode {len(wb)} rows of {wb.symbol} (shard {k}, seq "
                            f"{int(wb.seq[0])}..{int(wb.seq[-1])}), not published: {exc}")
                continue
            vmsgs = []
            if chv is None and len(wb.venues) > 1:
                for j, v in enumerate(wb.venues):
                    if not v:
                        continue
                    sel = np.flatnonzero(wb.venue == j)
                    vb = wire.WireBatch(wb.table, k, wb.symbol, [v],
                                        np.zeros(len(sel), np.int32), wb.ts[sel], wb.seq[sel],
                                        {c: a[sel] for c, a in wb.values.items()})
                    c = self._venue_channel(t, wb.symbol, v)
                    vmsgs += [(c, m) for m in self.encode(vb)]
            if self.stream_binary and len(msgs) == 1:
                data = msgs[0]
            else:
                data = (lambda wb=wb: wire.encode_binary(wb, compress=self.stream_compress))
            entries.append((k, t, skey, ch, chv, msgs, vmsgs, data, len(wb),
                            int(wb.seq[-1]), ts_max))
        return entries

    def _reread(self) -> None:
        """A roll overtook rows collected but not yet published (zero-copy views of memory
        the roll reuses): drop them and follow again from what Redis holds, which reads
        them back from history. Nothing was sent from them."""
        self._stash = None
        self._settle()  # Redis' cursors then include the transaction in flight
        log.info("%s: a shard rolled before rows read from its memory were published; "
                 "reading them again from %s", self.name, self._fmt_cursors())
        self._resubscribe()

    def _send(self, txn: "_Txn") -> None:
        """Write a built transaction; its replies are read by the next ``_settle``, after the
        next pass has been built (the Redis round trip overlaps that work). Never more than
        one in flight: a transaction is sent only after Redis applied the one before, so a
        refused one can never be followed by one that moves the cursors past it."""
        assert self._inflight is None
        self.link.send(txn.data)
        self._inflight = txn

    def _settle(self) -> None:
        """Read the replies of the transaction in flight and take its effects as committed.
        A transaction Redis refused as a whole raises RedisRefused (the caller reconnects and
        resumes from the cursors in Redis)."""
        txn = self._inflight
        if txn is None:
            return
        replies = self.link.read_replies(txn.nreplies)  # +OK, QUEUED x n, the EXEC array
        self._inflight = None
        res = replies[-1]
        if isinstance(res, hiredis.ReplyError) or res is None:
            # EXECABORT (e.g. OOM at queue time): nothing was applied. Start over from the
            # cursors, after a backoff
            queued_err = next((r for r in replies[:-1] if isinstance(r, hiredis.ReplyError)),
                              None)
            raise RedisRefused(f"transaction refused: {queued_err or res}")
        ids = txn.ids
        # the XADDs Redis applied are the only bulk-string replies (PUBLISH and HSET answer
        # integers): a refused one (or a stream skipped as unusable) is not counted
        entries = 0
        for r in res:
            if type(r) is bytes:
                entries += 1
            elif isinstance(r, hiredis.ReplyError):
                self._error(f"Redis refused a command of the transaction: {r}")
                # a failed XADD leaves our idea of the stream's last id unsure: reload it;
                # its rows are not in the stream (the ones applied are: their reload
                # gives the same L)
                for key, (_ms, last) in ids.items():
                    self._skipped[key] = max(self._skipped.get(key, -1), last)
                self._stream_last = {}
                ids = {}
        self._stream_last.update(ids)
        self.cursors.update(txn.cursors)
        self._last_ts.update(txn.last_ts)
        st = self.stats
        st["transactions"] += 1
        st["published_rows"] += txn.rows
        st["messages"] += txn.messages
        st["bytes"] += txn.nbytes
        st["stream_entries"] += entries

    def _sent_cursors(self) -> dict[int, list[int]]:
        """The cursors Redis holds once the transaction in flight is applied."""
        if self._inflight is None or not self._inflight.cursors:
            return self.cursors
        return {**self.cursors, **self._inflight.cursors}

    def _groups(self, k: int, t: int, cols: dict, names: tuple[list, list]) -> list:
        """Split one shard's rows of one table into per-symbol wire batches (seq order kept):
        ``(shard, table, stream key, channel, venue channel or None, batch, max ts)``."""
        sid = cols["symbol_id"]
        vid = cols["venue_id"]
        n = len(sid)
        if n == 0:
            return []
        if n <= SMALL_GROUP:  # a few ticks: list min/max cost less than four numpy calls
            sl, vl = sid.tolist(), vid.tolist()
            smin, smax, vmin, vmax = min(sl), max(sl), min(vl), max(vl)
        else:
            smin, smax = int(sid.min()), int(sid.max())
            vmin, vmax = int(vid.min()), int(vid.max())
        syms, vens = names
        vcols = T.VALUE_COLUMNS[t]
        table = _TNAME[t]
        if smin == smax:  # one symbol (the common case of a busy symbol, or one tick)
            bounds = [(smin, 0, n)]
            src = cols
        else:
            order = np.argsort(sid, kind="stable")
            ss = sid[order]
            cuts = (np.flatnonzero(ss[1:] != ss[:-1]) + 1).tolist()
            edges = [0, *cuts, n]
            firsts = ss[edges[:-1]].tolist()
            bounds = [(firsts[i], edges[i], edges[i + 1]) for i in range(len(firsts))]
            src = {c: v[order] for c, v in cols.items() if c != "symbol_id"}
        one_venue = vmin == vmax
        if not one_venue and vmax - vmin >= wire.MAX_VENUES:  # more venues than a message names
            bounds = [(s, x, y) for s, a, b in bounds
                      for x, y in _venue_pieces(src["venue_id"], a, b)]
        out = []
        for s, a, b in bounds:
            sym = syms[s]
            ch, skey = self._channel(t, sym)
            v = src["venue_id"][a:b]
            if one_venue or (len(bounds) > 1 and int(v.min()) == int(v.max())):
                v0 = vmin if one_venue else int(v[0])
                venues = [vens[v0]]
                vidx = _ZEROS32[:b - a] if b - a <= len(_ZEROS32) else np.zeros(b - a, np.int32)
                chv = self._venue_channel(t, sym, venues[0]) if venues[0] else None
            else:
                u, inv = np.unique(v, return_inverse=True)
                venues = [vens[i] for i in u.tolist()]
                vidx = inv.astype(np.int32)
                chv = None
            ts = src["ts"][a:b]
            wb = wire.WireBatch(table, k, sym, venues, vidx, ts, src["seq"][a:b],
                                {c: src[c][a:b] for c in vcols})
            out.append((k, t, skey, ch, chv, wb, int(ts.max())))
        return out

    def _channel(self, t: int, sym: str) -> tuple[bytes, bytes]:
        """(channel, stream key) of a symbol's table, as bytes (cached)."""
        key = (t, sym)
        found = self._chan_cache.get(key)
        if found is None:
            if len(self._chan_cache) > 1_000_000:
                self._chan_cache.clear()
            kind = _KIND[t]
            found = self._chan_cache[key] = (f"{kind}:{sym}".encode(),
                                             f"{kind}:{sym}:{STREAM_SUFFIX}".encode())
        return found

    def _venue_channel(self, t: int, sym: str, venue: str) -> bytes:
        key = (t, sym, venue)
        found = self._chan_cache.get(key)
        if found is None:
            found = self._chan_cache[key] = f"{_KIND[t]}:{sym}:{venue}".encode()
        return found

    def _other_publisher(self) -> str | None:
        """Another wayy database's broker connected to this Redis server under another
        database number (the claim in the cursor hash covers one number only; pub/sub
        covers them all), connected before this one: "id ..., database number N". None
        when there is none or CLIENT LIST is not allowed (an ACL user: cannot tell)."""
        mine = self.owner.decode().split(" ")[0]
        try:
            me, listing = self.link.pipeline([(b"CLIENT", b"ID"),
                                               (b"CLIENT", b"LIST", b"TYPE", b"normal")])
        except (RedisUnavailable, RedisRefused):
            return None
        if not isinstance(listing, bytes) or not isinstance(me, int):
            return None
        for c in client_list(listing):
            theirs = broker_database(c)
            if theirs is None or theirs == mine or c.get("id") == str(me):
                continue  # not a broker, or one of this database (another index)
            # the one connected first stays: Redis numbers connections in order (an age in
            # whole seconds ties for two brokers connected within a second)
            if int(c.get("id", me)) < me:
                return f"id {theirs}, database number {c.get('db', '?')}"
        return None

    def _error(self, text: str) -> None:
        """Count an error; log the first ten, then one in a thousand."""
        self.stats["errors"] += 1
        n = self.stats["errors"]
        if n <= 10 or n % 1000 == 0:
            log.error("%s: %s (%d errors so far)", self.name, text, n)

    def _load_stream_ids(self, keys: list[bytes]) -> None:
        """The last id of every stream not seen since the connection began (XINFO STREAM's
        last-generated-id: right even when retention trimmed the stream empty)."""
        missing = [k for k in dict.fromkeys(keys) if k not in self._stream_last]
        if not missing:
            return
        self._settle()  # its replies come first on the connection
        missing = [k for k in missing if k not in self._stream_last]
        if not missing:
            return
        replies = self.link.pipeline([(b"XINFO", b"STREAM", k) for k in missing])
        for key, r in zip(missing, replies):
            if transient(r):  # not a verdict on the key: try again after a reconnect
                raise RedisUnavailable(f"Redis is not ready: {r}")
            if isinstance(r, hiredis.ReplyError):
                if "no such key" in str(r).lower():
                    self._stream_last[key] = (0, self._skipped.pop(key, -1))
                    self._bad_told.discard(key)
                    continue
                # e.g. WRONGTYPE: someone else's key has the stream's name. Keep publishing
                # the channels; the status and the log say the stream is not written.
                self._stream_last[key] = _BAD_STREAM
                if key not in self._bad_told:  # (looked at again every second)
                    self._bad_told.add(key)
                    self._error(f"{key.decode()} is not usable as a stream ({r}); its "
                                f"entries are not written until it is removed")
                continue
            f = dict(zip(r[::2], r[1::2]))
            lid = f.get(b"last-generated-id", b"0-0")
            ms, n = parse_id(lid)
            self._stream_last[key] = (ms, max(n if lid != b"0-0" else -1,
                                              self._skipped.pop(key, -1)))
            self._bad_told.discard(key)

    # --- status ----------------------------------------------------------------------------------
    def status(self) -> dict:
        """What the status file holds (STATUS_FIELDS)."""
        per_shard = {}
        if self.db is not None:
            for k in self.shards:
                d = self.db.shards[k]
                snap = d.snapshot()
                head = int(snap[S.COMMIT_NEXT_SEQ])
                c = self.cursors.get(k)
                newest = max((int(d.cols[t]["ts"][int(snap[t]) - 1])
                              for t in (T.TRADES, T.QUOTES) if snap[t] > 0), default=0)
                lag = None
                if c:
                    lag = lag_rows(self.db_path, k, d, snap, c, self._lag_cache)
                pub_ts = self._last_ts.get(k)
                lag_s = 0.0 if lag == 0 else (
                    (newest - pub_ts) / 1e9 if pub_ts and lag else None)
                per_shard[str(k)] = {"cursor": c, "next_seq": head, "lag_rows": lag,
                                     "lag_s": lag_s}
        # before the database is attached: the shards it was given (status shows them)
        shards = self.shards if self.db is not None else (self.want_shards or self.shards)
        return {"pid": os.getpid(), "index": self.index, "shards": shards,
                "redis_url": redact(self.redis_url), "redis": self.redis_state,
                "redis_error": self.redis_error, "redis_since_ns": self.redis_since_ns,
                "wire": self.wire, "retention": str(self.retention),
                "started_ns": self.started_ns, "updated_ns": time.time_ns(), **self.stats,
                "per_shard": per_shard}

    def _status_owner(self) -> int | None:
        """The pid named by this broker's status file, or None (none, unreadable)."""
        try:
            with open(self._status_path) as f:
                pid = json.load(f).get("pid")
        except (OSError, ValueError, AttributeError):
            return None
        return pid if isinstance(pid, int) and pid > 0 else None

    def _status_taken(self) -> bool:
        """Whether another live process writes this status file: a broker of the same index
        started by hand beside a running one must not overwrite the running one's status
        before it learns (at attach) that it is refused."""
        pid = self._status_owner()
        return pid != os.getpid() and pid_alive(pid)

    def _drop_status(self) -> None:
        """A refused broker removes the status file it wrote (status would list it)."""
        if self._status_owner() == os.getpid():
            try:
                os.unlink(self._status_path)
            except OSError:
                pass

    def _write_status(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._status_due:
            return
        self._status_due = now + STATUS_EVERY_S
        if not self._locks and self._status_taken():
            return
        try:
            doc = self.status()
        except Exception as exc:  # noqa: BLE001  (status must never stop the broker)
            doc = {"pid": os.getpid(), "index": self.index, "redis": self.redis_state,
                   "redis_error": self.redis_error, "updated_ns": time.time_ns(),
                   "status_error": str(exc)}
        tmp = f"{self._status_path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self._status_path)
        except OSError as exc:
            log.debug("%s: cannot write %s: %s", self.name, self._status_path, exc)


# --- entry points --------------------------------------------------------------------------------

def run(db_path: str, shards: list[int] | None, redis_url: str, password: str | None = None,
        wire: str = "binary+lz4", retention: "str | Retention | None" = DEFAULT_RETENTION,
        index: int = 0, username: str | None = None, start: str = "earliest") -> None:
    """Run one broker until SIGTERM/SIGINT (the supervisor forks this).

    ``shards``: the shards to publish (None: all); ``redis_url``: ``redis://host:port/db`` or
    ``unix:///path``; ``password`` (and ``username``) override the URL's; ``wire``: json,
    binary or binary+lz4; ``retention``: ``maxlen=N``, ``age=SECONDS`` or ``none``;
    ``index``: this broker's number when several split the shards (names its status file
    ``broker-<index>.status.json`` and its Redis client name); ``start``: where a shard with
    no cursor in Redis begins — ``earliest`` (every row the database holds) or ``latest``.
    """
    runner = Runner(Broker(db_path, shards, redis_url, password, wire, retention, index,
                           username, start))
    runner.install_signals()
    runner.run()


def split_shards(nshards: int, brokers: int) -> list[list[int]]:
    """Shards of each of ``brokers`` brokers (round robin): ``--brokers N``."""
    if brokers < 1:
        raise InvalidInput(f"--brokers must be at least 1, got {brokers}")
    brokers = min(brokers, nshards)
    return [list(range(i, nshards, brokers)) for i in range(brokers)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m workers.broker",
                                description="Publish a running wayy database to Redis.")
    p.add_argument("--db", required=True, help="database directory")
    p.add_argument("--redis", required=True, help="redis://[user:pass@]host:port[/db] or "
                                                  "unix:///path")
    p.add_argument("--password-file", help="file holding the Redis password")
    p.add_argument("--username", help="Redis ACL user")
    p.add_argument("--shards", help="comma-separated shards (default: all)")
    p.add_argument("--wire", default="binary+lz4", choices=wire.FORMATS)
    p.add_argument("--retention", default=DEFAULT_RETENTION,
                   help="maxlen=ENTRIES, age=SECONDS (or 30m, 6h, 2d), or none")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--start", default="earliest", choices=STARTS)
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    password = os.environ.get("WAYY_REDIS_PASSWORD")
    if a.password_file:
        try:
            with open(a.password_file) as f:
                password = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            p.error(f"--password-file {a.password_file}: {getattr(exc, 'strerror', None) or exc}")
    try:
        shards = None if not a.shards else [int(x) for x in a.shards.split(",") if x.strip()]
    except ValueError:
        p.error(f"--shards must be comma-separated shard numbers, got {a.shards!r}")
    try:
        run(a.db, shards, a.redis, password, a.wire, a.retention, a.index, a.username, a.start)
    except WayyError as exc:
        raise SystemExit(f"broker: error: {exc}") from None


if __name__ == "__main__":
    main()
