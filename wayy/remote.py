"""Remote subscribers: the ticks of a running database from any machine, through Redis.

    from wayy.remote import Subscriber

    # the URL and password file `wayy start` printed (its embedded Redis takes a free port)
    with Subscriber("redis://127.0.0.1:43121/0", password=pw) as sub:
        sub.subscribe("ticks:AAPL", on_trade)                         # a wayy.Tick per row
        sub.subscribe("quotes:MSFT:NASDAQ", on_batch, batch_size=500,  # wayy.Batch columns
                      max_latency_ms=5)
        sub.subscribe("ticks:SPY", on_trade, checkpoint="spy.ckpt")   # exactly-once restarts
        sub.run()                                                     # until Ctrl-C / stop()

The broker (``workers/broker.py``) publishes every committed batch, per symbol, to the pub/sub
channels ``ticks:{sym}``, ``ticks:{sym}:{venue}``, ``quotes:{sym}``, ``quotes:{sym}:{venue}``,
and appends it, in the same MULTI/EXEC transaction, to the stream ``{kind}:{sym}:stream``.
Every row carries its shard and its seq (strictly increasing per shard), so a subscriber can
always tell what it has seen.

Gapless handoff, per channel: SUBSCRIBE first (live messages are buffered from then on), then
replay the stream from the start point to its end, then the buffer, then live — each row
delivered only if its seq is past the channel's position in its shard. Anything published
after the SUBSCRIBE is in the buffer or live; anything before it is in the stream; the seq
drops what is in both. After a disconnect (Redis restarted, a network error, or Redis closing
a subscriber that fell behind its ``client-output-buffer-limit pubsub``) the same steps run
again from the position: nothing is missed, nothing repeated.

Stream entry ids are ``<M>-<L>``: ``L`` the last seq of the entry's batch, ``M`` the running
maximum of the stream's tick timestamps in milliseconds (so ids strictly increase even when
tick times do not). Replay from a timestamp T is ``XRANGE key T_ms-0 +``; every earlier row
has ``ts < T``. An entry's fields are ``d`` (one binary batch, docs/wire-format.md), ``k``
(the shard) and ``p`` (the last seq of the previous entry in the stream): an entry whose ``p``
is past the position proves that entries in between were trimmed by retention — the loss is
counted (``stats()["lost_gaps"]``) and logged, never silent. See docs/remote.md.

Receiving: pub/sub is read on a plain socket with the hiredis reader, not through redis-py's
PubSub (redis-py 8.1.0 formats a debug string per message even with logging off, its issue
4230; measured in benchmarks/bench_remote.py). Commands go through the same small RESP link.
"""

from __future__ import annotations

import collections
import fcntl
import json
import logging
import math
import os
import select
import signal
import socket
import threading
import time
import zlib
from itertools import repeat
from typing import Any, Callable
from urllib.parse import unquote, urlparse

import hiredis
import numpy as np

from wayy import wire
from wayy.channels import TABLE_KINDS, Channel, format_channel, parse_channel
from wayy.errors import CorruptData, InvalidInput, RedisRefused, RedisUnavailable, WayyError
from wayy.names import shard_of
from wayy.redis_server import empty_port
from wayy.subscribe import Batch, Tick, _checkpoint_in_use, _timeout_ns
from wayy.times import RANGE_TEXT, TimeRangeError, datetime64_ns_scalar, iso_ns, seconds

log = logging.getLogger("wayy.remote")

CHECKPOINT_FORMAT = 1
REPLAY_CHUNK = 1000  # stream entries per XRANGE call
MAX_BUFFER_BYTES = 64 << 20  # live messages held while a channel replays; past it: dropped
HEALTH_PING_S = 5.0  # silence on the pub/sub socket this long: ping it
RECONNECT_MIN_S = 0.05
# rows a message may declare: wayy's broker sends at most 65,536 (a change-ring batch), and
# an LZ4 body expands up to 256x, so without a tight limit a 4 kB message could make the
# decoder allocate a million rows
MAX_ROWS = 1 << 17
MAX_ROWS_LIMIT = 1 << 24  # what max_rows= may raise it to
MAX_WAIT_S = 86_400.0  # the longest timeout= / reconnect_max_s= (a day)
RECONNECT_MAX_S = 5.0
ERROR_LOG_FIRST = 10
ERROR_LOG_EVERY = 1000
RECV_BYTES = 1 << 20

STREAM_SUFFIX = "stream"
# error replies of a Redis that is there but not ready (loading its data after a restart,
# running a long script, a replica without its master): wait and retry, never give up on
# the command as if it were refused
TRANSIENT_ERRORS = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN")


def transient(reply: object) -> bool:
    """Whether an error reply says "not now" rather than "no" (TRANSIENT_ERRORS)."""
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith(TRANSIENT_ERRORS)


BROKER_CURSORS_KEY = "wayy:broker:cursors"  # hash "<shard>:<table>" -> next seq to publish
OWNER_FIELD = b"db"  # ... "db" -> "<id> <host>:<path>", the database that publishes
SHARDS_FIELD = b"shards"  # ... and "shards" -> its shard count
BROKER_CLIENT_NAME = "wayy-broker-"  # + "<index>-<database id>": a broker's connection name


def client_list(listing: bytes) -> list[dict[str, str]]:
    """The clients of a ``CLIENT LIST`` reply, each as its fields (id, name, age, db, ...)."""
    return [dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
            for line in listing.decode(errors="replace").splitlines()]


def broker_database(client: dict[str, str]) -> str | None:
    """The database id a wayy broker's connection is named for; None for other clients."""
    name = client.get("name", "")
    if not name.startswith(BROKER_CLIENT_NAME):
        return None
    theirs = name.rsplit("-", 1)[-1]
    return theirs if len(theirs) == 32 else None
F_DATA, F_PREV, F_SHARD = b"d", b"p", b"k"


# --- names -------------------------------------------------------------------------------------

def stream_key(channel: str | Channel) -> str:
    """The Redis stream of a channel: ``ticks:AAPL:NYSE`` -> ``ticks:AAPL:stream`` (one stream
    per symbol and table; a venue channel replays from it, filtered)."""
    ch = parse_channel(channel) if isinstance(channel, str) else channel
    if ch.symbol is None:
        raise InvalidInput(f"channel {format_channel(ch)} names no symbol: remote channels are "
                           f"ticks:SYMBOL[:VENUE] and quotes:SYMBOL[:VENUE]")
    return f"{TABLE_KINDS[ch.table]}:{ch.symbol}:{STREAM_SUFFIX}"


def parse_id(raw: bytes | str) -> tuple[int, int]:
    """``b"1700000000123-42"`` -> ``(1700000000123, 42)``: (ms of tick time, last seq)."""
    s = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, n = s.partition("-")
    return int(ms), int(n)


def redact(url: str) -> str:
    """The URL without its password (for logs and status files)."""
    try:
        p = urlparse(url)
        if p.password is None:
            return url
    except ValueError:  # not a URL at all: show nothing of it that might be a secret
        return "<a malformed URL>"
    netloc = p.netloc.rsplit("@", 1)[1]
    user = f"{p.username}:***@" if p.username else ":***@"
    return p._replace(netloc=user + netloc).geturl()


# --- one RESP connection -----------------------------------------------------------------------

class RedisLink:
    """One Redis connection on a plain socket, replies parsed by hiredis.

    ``call`` sends one command and returns its reply; ``pipeline`` sends many in one write
    and returns every reply (error replies as ``hiredis.ReplyError`` values, not raised);
    ``read_pending`` returns the pub/sub messages that have arrived. Any socket failure
    closes the link and raises RedisUnavailable; the owner reconnects.
    """

    def __init__(self, url: str, username: str | None = None, password: str | None = None,
                 timeout: float = 5.0, name: str | None = None) -> None:
        usage = "use redis://[user:password@]host:port[/db] or unix:///path/to/socket[?db=N]"
        if not isinstance(url, str):
            raise InvalidInput(f"a Redis URL is a str, not {type(url).__name__}; {usage}")
        try:
            p = urlparse(url)
            host = p.hostname
        except ValueError as exc:  # e.g. "redis://[::1" or a bracketed non-address
            raise InvalidInput(f"Redis URL {redact(url)!r}: {exc}; {usage}") from None
        if p.scheme not in ("redis", "unix"):
            raise InvalidInput(f"Redis URL {redact(url)!r}: {usage}")
        if p.scheme == "unix" and not p.path:
            raise InvalidInput(f"Redis URL {redact(url)!r} names no socket path; {usage}")
        self.url = url
        self.path = p.path if p.scheme == "unix" else None
        self.host = host or "127.0.0.1"
        try:
            self.port = 6379 if p.port is None else p.port
        except ValueError:
            raise InvalidInput(f"Redis URL {redact(url)!r} has a bad port") from None
        if p.scheme == "redis" and self.port == 0:  # not "the default port"
            raise InvalidInput(f"Redis URL {redact(url)!r}: port 0 is no port to connect "
                               f"to; {usage}")
        if p.scheme == "redis" and empty_port(p.netloc):
            raise InvalidInput(f"Redis URL {redact(url)!r}: the port after ':' is empty; "
                               f"{usage}")
        db = 0
        if p.scheme == "redis" and p.path.strip("/"):
            db = p.path.strip("/")
        for part in p.query.split("&"):
            k, _, v = part.partition("=")
            if k == "db":
                db = v
            elif k == "password" and password is None:
                password = unquote(v)
        try:
            self.db = int(db)
        except ValueError:
            raise InvalidInput(f"Redis URL {redact(url)!r}: database {db!r} is not a number") \
                from None
        if not 0 <= self.db < 1 << 31:  # Redis' own range (its `databases` setting: 16)
            raise InvalidInput(f"Redis URL {redact(url)!r}: database {db!r} is out of range")
        self.username = username if username is not None else (
            unquote(p.username) if p.username else None)
        self.password = password if password is not None else (
            unquote(p.password) if p.password else None)
        self.timeout = timeout
        self.name = name
        self.sock: socket.socket | None = None
        self.reader: hiredis.Reader | None = None
        self._buf = bytearray(RECV_BYTES)
        self._view = memoryview(self._buf)
        self._pid = os.getpid()

    @property
    def where(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def connect(self, within: float | None = None) -> "RedisLink":
        """Open the socket, authenticate, select the database. Raises RedisUnavailable or
        RedisRefused (credentials). ``within``: seconds the caller can wait, when less than
        the link's timeout; the socket keeps that limit until ``limit(None)``."""
        self.close()
        t = self.timeout if within is None else max(0.01, min(self.timeout, within))
        try:
            if self.path:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(t)
                s.connect(self.path)
            else:
                s = socket.create_connection((self.host, self.port), timeout=t)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise RedisUnavailable(f"cannot connect to Redis at {self.where}: {exc}") from exc
        self.sock = s
        self.reader = hiredis.Reader()
        self._pid = os.getpid()
        cmds = []
        if self.password is not None:
            cmds.append(("AUTH", self.username, self.password) if self.username
                        else ("AUTH", self.password))
        if self.db:
            cmds.append(("SELECT", self.db))
        if self.name:
            cmds.append(("CLIENT", "SETNAME", self.name))
        if cmds:
            for cmd, reply in zip(cmds, self.pipeline(cmds)):
                if transient(reply):
                    self.close()
                    raise RedisUnavailable(f"Redis at {self.where} is not ready: {reply}")
                if isinstance(reply, hiredis.ReplyError):
                    self.close()
                    what = "credentials" if cmd[0] == "AUTH" else cmd[0]
                    raise RedisRefused(f"Redis at {self.where} refused the {what}: {reply}")
        return self

    def limit(self, within: float | None) -> None:
        """Block at most ``within`` seconds (never more than the link's timeout) in each read
        from now on; None: the link's timeout again."""
        if self.sock is not None:
            self.sock.settimeout(self.timeout if within is None
                                 else max(0.01, min(self.timeout, within)))

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.reader = None

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def _lost(self, exc: BaseException | str, by_server: bool = False) -> RedisUnavailable:
        self.close()
        err = RedisUnavailable(f"lost the Redis connection to {self.where}: {exc}")
        if by_server:  # closed or reset by the server: the subscriber asks why (_down)
            err.closed_by_server = self
        return err

    def _check(self) -> None:
        if self.sock is None:
            raise RedisUnavailable(f"not connected to Redis at {self.where}")
        if os.getpid() != self._pid:
            # a forked child must not talk on its parent's socket: the streams would interleave
            self.sock = None
            raise RedisUnavailable("Redis connection inherited across fork: reconnecting")

    def send(self, data: bytes) -> None:
        """Write bytes (packed commands) to the socket."""
        self._check()
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise self._lost(exc) from exc

    def _fill(self) -> None:
        """Read once from the socket into the reader (blocks up to the socket timeout)."""
        try:
            n = self.sock.recv_into(self._buf)
        except socket.timeout as exc:
            raise self._lost("timed out waiting for a reply") from exc
        except ConnectionResetError as exc:
            raise self._lost(exc, by_server=True) from exc
        except OSError as exc:
            raise self._lost(exc) from exc
        if n == 0:
            raise self._lost("connection closed by the server", by_server=True)
        self.reader.feed(self._view, 0, n)

    def read_reply(self):
        """The next reply (blocking up to the socket timeout)."""
        self._check()
        try:
            reply = self.reader.gets()
            while reply is False:
                self._fill()
                reply = self.reader.gets()
        except hiredis.ProtocolError as exc:
            raise self._lost(f"protocol error: {exc}") from exc
        return reply

    def read_replies(self, n: int) -> list:
        """The next ``n`` replies (blocking up to the socket timeout for each read)."""
        self._check()
        out = []
        reader = self.reader
        try:
            while len(out) < n:
                reply = reader.gets()
                if reply is False:
                    self._fill()
                else:
                    out.append(reply)
        except hiredis.ProtocolError as exc:
            raise self._lost(f"protocol error: {exc}") from exc
        return out

    def call(self, *args):
        """Send one command and return its reply; an error reply raises RedisRefused, or
        RedisUnavailable (retried) when it says Redis is not ready yet (``transient``)."""
        self.send(hiredis.pack_command(args))
        reply = self.read_reply()
        if isinstance(reply, hiredis.ReplyError):
            if transient(reply):
                raise RedisUnavailable(f"Redis at {self.where} is not ready for {args[0]}: "
                                       f"{reply}")
            raise RedisRefused(f"Redis refused {args[0]}: {reply}")
        return reply

    def pipeline(self, cmds: list[tuple]) -> list:
        """Send every command in one write; return their replies in order (error replies are
        returned as hiredis.ReplyError values)."""
        self.send(b"".join(hiredis.pack_command(c) for c in cmds))
        return [self.read_reply() for _ in cmds]

    def read_pending(self, timeout: float) -> list:
        """Replies that arrive within ``timeout`` seconds (0: only what is already here):
        one socket read at most, everything complete that it brought."""
        self._check()
        out = []
        reader = self.reader
        try:
            reply = reader.gets()
            while reply is not False:
                out.append(reply)
                reply = reader.gets()
            if out:
                return out
            r, _, _ = select.select((self.sock,), (), (), max(timeout, 0.0))
            if not r:
                return out
            self._fill()
            reply = reader.gets()
            while reply is not False:
                out.append(reply)
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            raise self._lost(f"protocol error: {exc}") from exc
        return out


# --- checkpoints -------------------------------------------------------------------------------

def _crc(doc: dict) -> int:
    return zlib.crc32(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


class _Checkpoint:
    """A remote subscription's position file: locked while used, written atomically."""

    def __init__(self, path: str) -> None:
        spec = os.fspath(path)
        if not spec or "\x00" in spec:
            raise InvalidInput(f"checkpoint must be a non-empty file path without a NUL byte, "
                               f"got {spec!r}")
        self.path = os.path.abspath(spec)
        if os.path.isdir(self.path):
            raise InvalidInput(f"checkpoint {self.path} is a directory; name a file in it, "
                               f"e.g. {os.path.join(self.path, 'strategy.json')}",
                               path=self.path)
        if os.path.exists(self.path) and not os.path.isfile(self.path):  # /dev/null, a fifo
            raise InvalidInput(f"checkpoint {self.path} is not a regular file", path=self.path)
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            why = exc.strerror
            if isinstance(exc, (FileExistsError, NotADirectoryError)):
                why = f"{os.path.dirname(self.path)} is not a directory"
            self._fd = -1
            raise InvalidInput(f"checkpoint {self.path}: {why}", path=self.path) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.pread(self._fd, 32, 0).decode().strip()
            except (OSError, UnicodeDecodeError):
                pid = "?"
            os.close(self._fd)
            self._fd = -1
            raise InvalidInput(_checkpoint_in_use(self.path, pid), path=self.path) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        self.last: dict | None = None

    def load(self, channel: str) -> dict | None:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            if isinstance(doc, dict) and "wayy_checkpoint" in doc:
                raise InvalidInput(f"checkpoint {self.path} is a local subscriber's "
                                   f"(db.subscribe), not a remote one's: give each its own "
                                   f"file", path=self.path)
            if not isinstance(doc, dict) or doc.get("wayy_remote_checkpoint") != \
                    CHECKPOINT_FORMAT:
                raise ValueError(f"not a wayy remote checkpoint of format {CHECKPOINT_FORMAT}")
            crc = doc.pop("crc32")
            if crc != _crc(doc):
                raise ValueError("checksum mismatch")
            pos = {int(k): int(v) for k, v in doc["positions"].items()}
            floor = doc["floor_ms"]
            if floor is not None and (not isinstance(floor, int) or floor < 0):
                raise ValueError("bad floor_ms")
            doc["positions"] = pos
        except InvalidInput:  # another kind of checkpoint: not damage (an InvalidInput is
            raise             # a ValueError, which the next clauses would take for damage)
        except UnicodeDecodeError:
            raise CorruptData(f"checkpoint {self.path} is corrupt (not UTF-8 JSON text); "
                              f"delete it to start over", path=self.path) from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptData(f"checkpoint {self.path} is corrupt ({exc}); delete it to start "
                              f"over", path=self.path) from None
        except RecursionError:  # JSON nested deeper than the parser goes
            raise CorruptData(f"checkpoint {self.path} is corrupt (nested too deeply); "
                              f"delete it to start over", path=self.path) from None
        if doc.get("channel") != channel:
            raise InvalidInput(f"checkpoint {self.path} belongs to channel "
                               f"{doc.get('channel')!r}, not {channel!r}", path=self.path)
        return doc

    def write(self, doc: dict) -> None:
        """Temporary file, fsync, rename, fsync of the directory."""
        doc = dict(doc, wayy_remote_checkpoint=CHECKPOINT_FORMAT, written_ns=time.time_ns(),
                   pid=os.getpid())
        doc["positions"] = {str(k): v for k, v in doc["positions"].items()}
        try:
            doc["crc32"] = _crc(doc)
            data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"on_checkpoint must return JSON-serialisable state: {exc}") \
                from None
        tmp = f"{self.path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# --- one channel -------------------------------------------------------------------------------

class _Pending:
    """Batch mode: rows accepted but not yet handed to the callback, for one shard."""

    __slots__ = ("pieces", "n", "since_ns", "floor_ms", "first_seq")

    def __init__(self) -> None:
        self.pieces: list[wire.WireBatch] = []
        self.n = 0
        self.since_ns = 0
        self.floor_ms: int | None = None
        self.first_seq = -1


class RemoteSubscription:
    """One channel of a :class:`Subscriber`: its callback, its position, its counters.

    ``positions`` maps shard -> the last seq processed (every row of the channel up to it has
    been delivered, or was outside the channel's venue); ``stats()`` gives the counters.
    """

    def __init__(self, owner: "Subscriber", channel: str, callback, batch_size, max_latency_ms,
                 from_ts, from_seq, checkpoint, checkpoint_ms, checkpoint_every, on_checkpoint,
                 on_error) -> None:
        ch = parse_channel(channel)
        self.owner = owner
        self.channel = format_channel(ch)
        self.ch = ch
        self.table = ch.table
        self.stream = stream_key(ch)
        self.venue = ch.venue
        self.callback = callback
        self.on_checkpoint = on_checkpoint
        self.on_error = on_error
        self.batch_mode = batch_size is not None or max_latency_ms is not None
        self.batch_size = int(batch_size) if batch_size is not None else 0
        if self.batch_mode and max_latency_ms is None:
            max_latency_ms = 1000.0
        self.max_latency_ns = int(max_latency_ms * 1e6) if max_latency_ms is not None else 0
        self.positions: dict[int, int] = {}
        self.floor_ms: int | None = None  # XRANGE start bound: <= M of the next entry
        self.from_seq: int | None = from_seq
        self.from_ts: int | None = from_ts  # armed until a row with ts >= from_ts is found
        self.initialized = False  # start point resolved (first connection)
        self.state: Any = None
        # None: waiting for SUBSCRIBE (live messages buffered); True: replaying the stream
        # (live messages buffered); False: live
        self.replaying: bool | None = None
        self.replay_from = b"-"
        self._chain_checked: set[int] = set()
        self.dropped_since_xrange = False
        self.buffer: collections.deque = collections.deque()
        self.buffer_bytes = 0
        self.pending: dict[int, _Pending] = {}
        self.next_flush = 1 << 62
        self.active = True
        # counters
        self.delivered = 0
        self.items = 0
        self.errors = 0
        self.bad_messages = 0
        self.duplicates = 0
        self.replayed = 0
        self.lost_gaps = 0
        self.buffer_drops = 0
        self.stream_error: str | None = None
        self._since_ckpt = 0
        self._ckpt_every = checkpoint_every
        self._ckpt_ns = int(checkpoint_ms * 1e6)
        self._ckpt_due = time.monotonic_ns() + self._ckpt_ns
        self._ckpt: _Checkpoint | None = None
        # the id of the database whose seqs the positions count (the broker's claim on the
        # Redis, wayy:broker:cursors "db"); None until known
        self.database: str | None = None
        self.home_shard: int | None = None  # the symbol's shard, once the shard count is known
        if checkpoint is not None:
            self._ckpt = _Checkpoint(checkpoint)
            try:
                doc = self._ckpt.load(self.channel)
            except BaseException:
                self._ckpt.close()  # refused: the file is not ours to hold (delete, retry)
                raise
            if doc is not None:
                self.database = doc.get("database")
                self.positions = doc["positions"]
                self.floor_ms = doc["floor_ms"]
                self.from_seq = doc.get("from_seq")
                self.from_ts = doc.get("from_ts")
                self.state = doc.get("state")
                self.initialized = True
                self._ckpt.last = self._ckpt_doc()
        if self.from_ts is not None and not self.initialized:
            self.floor_ms = max(0, self.from_ts // 1_000_000)
        # a venue channel's rows at other venues are processed but not delivered
        self._venue_cache: tuple[list, int | None] = ([], None)
        self._tick = self._tick_trades if self.table == "trades" else self._tick_quotes
        self._vcols = wire.VALUE_COLUMNS[self.table]

    # --- accepting rows --------------------------------------------------------------------
    def _venue_index(self, venues: list[str]) -> int | None:
        cached, idx = self._venue_cache
        if cached is venues or cached == venues:
            return idx
        idx = venues.index(self.venue) if self.venue in venues else -1
        self._venue_cache = (venues, idx)
        return idx

    def take(self, wb: wire.WireBatch, replay: bool) -> None:
        """Process one decoded batch of this channel: drop what was processed before, deliver
        the rest (or add it to the pending batch), advance the position."""
        seq = wb.seq
        n = len(seq)
        if n == 0:
            return
        k = wb.shard
        last = self.positions.get(k)
        if last is not None:
            start = 0 if seq[0] > last else int(np.searchsorted(seq, last, "right"))
        elif self.from_seq is not None:
            start = 0 if seq[0] >= self.from_seq else int(
                np.searchsorted(seq, self.from_seq, "left"))
        else:
            start = 0
        if start:
            self.duplicates += min(start, n) if last is not None else 0
            if start >= n:
                return
        end_seq = int(seq[-1])
        ts = wb.ts
        mask = None
        if self.venue is not None:
            vi = self._venue_index(wb.venues)
            if vi < 0:
                self._advance(k, end_seq, ts, start)
                return
            if len(wb.venues) > 1:
                mask = wb.venue[start:] == vi
        if self.from_ts is not None:
            ok = ts[start:] >= self.from_ts
            if mask is not None:
                ok &= mask
            hits = np.flatnonzero(ok)
            if len(hits) == 0:
                self._advance(k, end_seq, ts, start)
                return
            if hits[0]:
                if mask is not None:
                    mask = mask[hits[0]:]
                start += int(hits[0])
            self.from_ts = None  # found: everything after it is delivered
        if replay:
            self.replayed += n - start
        if self.batch_mode:
            self._add_pending(wb, k, start, mask)
            self._advance(k, end_seq, ts, start)
        else:
            self._deliver_ticks(wb, k, start, mask, ts)

    def _advance(self, k: int, end_seq: int, ts: np.ndarray, start: int) -> None:
        self.positions[k] = end_seq
        # a stream id's ms part is never negative (XRANGE refuses it), nor is a checkpoint's
        # floor: a tick stamped before 1970 (the wire allows any int64) counts as 0
        m = max(int(ts[start:].max()) // 1_000_000, 0)
        if self.floor_ms is None or m > self.floor_ms:
            self.floor_ms = m

    def _slice(self, wb: wire.WireBatch, start: int, mask) -> wire.WireBatch:
        if start == 0 and mask is None:
            return wb
        if mask is None:
            sel = slice(start, None)
        else:
            sel = np.flatnonzero(mask) + start
        return wire.WireBatch(wb.table, wb.shard, wb.symbol, wb.venues, wb.venue[sel],
                              wb.ts[sel], wb.seq[sel], {c: v[sel] for c, v in wb.values.items()})

    # --- per-tick delivery ------------------------------------------------------------------
    def _tick_trades(self, wb: wire.WireBatch):
        v = wb.values
        vn = wb.venues
        ven = repeat(vn[0]) if len(vn) == 1 else [vn[i] for i in wb.venue.tolist()]
        none = repeat(None)
        return zip(wb.ts.tolist(), repeat(wb.symbol), ven, v["price"].tolist(),
                   v["size"].tolist(), none, none, none, none, wb.seq.tolist(),
                   repeat(wb.shard), repeat("trades"))

    def _tick_quotes(self, wb: wire.WireBatch):
        v = wb.values
        vn = wb.venues
        ven = repeat(vn[0]) if len(vn) == 1 else [vn[i] for i in wb.venue.tolist()]
        none = repeat(None)
        return zip(wb.ts.tolist(), repeat(wb.symbol), ven, none, none, v["bid"].tolist(),
                   v["ask"].tolist(), v["bid_size"].tolist(), v["ask_size"].tolist(),
                   wb.seq.tolist(), repeat(wb.shard), repeat("quotes"))

    def _deliver_ticks(self, wb: wire.WireBatch, k: int, start: int, mask, ts) -> None:
        part = self._slice(wb, start, mask)
        cb = self.callback
        owner = self.owner
        new = tuple.__new__
        n = 0
        try:
            for row in self._tick(part):
                tick = new(Tick, row)
                try:
                    cb(tick)
                except Exception as exc:  # noqa: BLE001
                    self._failed(exc, tick)
                n += 1
                if owner._stopping:
                    break  # stop() from the callback: the rest stays undelivered
        finally:
            # also on KeyboardInterrupt / SystemExit from the callback: that tick and the
            # rest are not delivered, everything before them is
            self.delivered += n
            self.items += n
            self._since_ckpt += n
            if n == len(part):
                self._advance(k, int(wb.seq[-1]), ts, start)
            elif n:
                self.positions[k] = int(part.seq[n - 1])  # the floor stays a lower bound

    # --- batch delivery ---------------------------------------------------------------------
    def _add_pending(self, wb: wire.WireBatch, k: int, start: int, mask) -> None:
        part = self._slice(wb, start, mask)
        if not len(part):
            return
        p = self.pending.get(k)
        if p is None:
            p = self.pending[k] = _Pending()
        if p.n == 0:
            p.since_ns = time.monotonic_ns()
            p.floor_ms = self.floor_ms
            p.first_seq = int(part.seq[0])
            self.next_flush = min(self.next_flush, p.since_ns + self.max_latency_ns)
        p.pieces.append(part)
        p.n += len(part)
        if self.batch_size and p.n >= self.batch_size:
            self.flush(time.monotonic_ns(), False)

    def flush(self, now: int, everything: bool) -> None:
        """Deliver full batches, and partial ones older than max_latency (or all)."""
        nxt = 1 << 62
        size = self.batch_size
        for k, p in self.pending.items():
            while p.n:
                if size and p.n >= size:
                    self._emit(k, p, size)
                elif everything or now - p.since_ns >= self.max_latency_ns:
                    self._emit(k, p, p.n)
                else:
                    break
            if p.n:
                nxt = min(nxt, p.since_ns + self.max_latency_ns)
        self.next_flush = nxt

    def _emit(self, k: int, p: _Pending, n: int) -> None:
        take, rest, got = [], [], 0
        for i, piece in enumerate(p.pieces):
            m = len(piece)
            if got + m <= n:
                take.append(piece)
                got += m
                if got == n:
                    rest = p.pieces[i + 1:]
                    break
            else:
                cut = n - got
                take.append(_cut(piece, 0, cut))
                rest = [_cut(piece, cut, m)] + p.pieces[i + 1:]
                break
        batch = _to_batch(take, k)
        try:
            self.callback(batch)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc, batch)
        # (KeyboardInterrupt / SystemExit: the batch stays pending, so not checkpointed)
        p.pieces = rest
        p.n -= n
        if p.n:
            p.first_seq = int(rest[0].seq[0])
            # still a lower bound for the rest: they come after the rows just delivered
            p.floor_ms = max(p.floor_ms or 0, int(batch["ts"].max()) // 1_000_000)
        self.delivered += n
        self.items += 1
        self._since_ckpt += 1

    # --- errors, checkpoint -----------------------------------------------------------------
    def _failed(self, exc: Exception, item) -> None:
        self.errors += 1
        n = self.errors
        if self.on_error is not None:
            try:
                self.on_error(exc, item)
            except Exception:  # noqa: BLE001
                log.exception("on_error handler failed")
        elif n <= ERROR_LOG_FIRST or n % ERROR_LOG_EVERY == 0:
            log.error("remote subscriber %s: callback raised on %r (%d errors so far)",
                      self.channel, item, n, exc_info=exc)

    def bad_message(self, exc: Exception, where: str) -> None:
        self.bad_messages += 1
        n = self.bad_messages
        if n <= ERROR_LOG_FIRST or n % ERROR_LOG_EVERY == 0:
            log.error("remote subscriber %s: rejected a message from %s (%d so far): %s",
                      self.channel, where, n, exc)

    def checkpoint_positions(self) -> tuple[dict[int, int], int | None]:
        """Positions and floor covering only what the callback has been handed."""
        pos = dict(self.positions)
        floor = self.floor_ms
        for k, p in self.pending.items():
            if p.n:
                pos[k] = p.first_seq - 1
                floor = p.floor_ms if floor is None or p.floor_ms is None \
                    else min(floor, p.floor_ms)
        return pos, floor

    def _ckpt_doc(self) -> dict:
        pos, floor = self.checkpoint_positions()
        return {"channel": self.channel, "positions": pos, "floor_ms": floor,
                "from_seq": self.from_seq,
                "from_ts": self.from_ts, "database": self.database}

    def save_checkpoint(self) -> None:
        """Write the checkpoint now (no-op without ``checkpoint=``)."""
        if self._ckpt is None:
            return
        self._ckpt_due = time.monotonic_ns() + self._ckpt_ns
        self._since_ckpt = 0
        doc = self._ckpt_doc()
        if self.on_checkpoint is not None:
            doc["state"] = self.on_checkpoint()
        elif doc == self._ckpt.last:
            return
        else:
            doc["state"] = self.state
        self._ckpt.write(doc)
        doc.pop("state", None)
        self._ckpt.last = doc

    def housekeep(self, now: int) -> None:
        if self._ckpt is not None and (now >= self._ckpt_due or (
                self._ckpt_every and self._since_ckpt >= self._ckpt_every)):
            self.save_checkpoint()

    def close(self) -> None:
        if self._ckpt is not None:
            self._ckpt.close()
            self._ckpt = None
        self.active = False

    def stats(self) -> dict:
        return {"channel": self.channel, "positions": dict(self.positions),
                "delivered": self.delivered, "items": self.items, "errors": self.errors,
                "bad_messages": self.bad_messages, "duplicates": self.duplicates,
                "replayed": self.replayed, "lost_gaps": self.lost_gaps,
                "buffer_drops": self.buffer_drops, "replaying": self.replaying,
                "stream_error": self.stream_error}

    def __repr__(self) -> str:
        mode = "batch" if self.batch_mode else "tick"
        return (f"<wayy.remote.RemoteSubscription {self.channel}: {mode} mode, "
                f"{self.delivered} rows delivered>")


def _cut(wb: wire.WireBatch, a: int, b: int) -> wire.WireBatch:
    return wire.WireBatch(wb.table, wb.shard, wb.symbol, wb.venues, wb.venue[a:b], wb.ts[a:b],
                          wb.seq[a:b], {c: v[a:b] for c, v in wb.values.items()})


def _to_batch(pieces: list[wire.WireBatch], k: int) -> Batch:
    """Concatenate wire batches of one channel into a wayy.Batch (venue names merged)."""
    first = pieces[0]
    if len(pieces) == 1:
        venues = list(first.venues)
        cols = {"ts": first.ts, "venue": first.venue.astype(np.int32, copy=False),
                "seq": first.seq}
        for c, v in first.values.items():
            cols[c] = v
    else:
        venues: list[str] = []
        index: dict[str, int] = {}
        vparts = []
        for p in pieces:
            remap = np.empty(len(p.venues), np.int32)
            for i, name in enumerate(p.venues):
                j = index.get(name)
                if j is None:
                    j = index[name] = len(venues)
                    venues.append(name)
                remap[i] = j
            vparts.append(remap[p.venue])
        cols = {"ts": np.concatenate([p.ts for p in pieces]),
                "venue": np.concatenate(vparts),
                "seq": np.concatenate([p.seq for p in pieces])}
        for c in first.values:
            cols[c] = np.concatenate([p.values[c] for p in pieces])
    n = len(cols["ts"])
    cols["symbol"] = np.zeros(n, np.int32)
    names = (np.array([first.symbol]), np.array(venues))
    return Batch(k, first.table, cols, names, False)


# --- the subscriber ----------------------------------------------------------------------------

class Subscriber:
    """Follows channels of a wayy database through Redis, with gapless replay and reconnects.

    ``subscribe`` as many channels as wanted, then ``run()`` (blocking; Ctrl-C or ``stop()``
    ends it, writing checkpoints). One thread, two Redis connections: one for pub/sub, read
    with the hiredis reader on a plain socket, one for stream reads. ``username`` and
    ``password`` override those in the URL.
    """

    def __init__(self, url: str, username: str | None = None, password: str | None = None, *,
                 timeout: float = 5.0, name: str | None = None, max_rows: int = MAX_ROWS,
                 reconnect_max_s: float = RECONNECT_MAX_S) -> None:
        # a socket timeout of 0 never connects, a NaN one never returns, a huge one is an
        # OverflowError at connect: refused here
        timeout = seconds(timeout, "timeout", zero=False, most=MAX_WAIT_S)
        reconnect_max_s = seconds(reconnect_max_s, "reconnect_max_s", zero=False,
                                  most=MAX_WAIT_S)
        if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) \
                or not 1 <= max_rows <= MAX_ROWS_LIMIT:
            raise InvalidInput(f"max_rows must be an int of 1 .. {MAX_ROWS_LIMIT:,}, "
                               f"got {max_rows!r}")
        self.url = url
        self._ps = RedisLink(url, username, password, timeout, name=name)
        self._cmd = RedisLink(url, username, password, timeout, name=name)
        self.max_rows = max_rows
        self.reconnect_max_s = reconnect_max_s
        self._subs: dict[bytes, RemoteSubscription] = {}
        self._connected = False
        self._stopping = False
        self._running = False
        self._retry_at = 0.0
        self._backoff = RECONNECT_MIN_S
        self._last_rx = 0.0
        self._ping_sent = 0.0
        self.reconnects = 0
        self.connects = 0
        self._told_no_broker = False  # warned that no broker publishes to this Redis
        self.last_error: str | None = None
        self._down_logged = 0.0
        self._pid = os.getpid()

    # --- set-up ----------------------------------------------------------------------------
    def subscribe(self, channel: str, callback: Callable, batch_size: int | None = None,
                  max_latency_ms: float | None = None, from_ts: int | None = None,
                  from_seq: int | None = None, checkpoint: str | os.PathLike | None = None, *,
                  checkpoint_ms: float = 1000.0, checkpoint_every: int | None = None,
                  on_checkpoint: Callable | None = None,
                  on_error: Callable | None = None) -> RemoteSubscription:
        """Follow ``channel`` (``ticks:SYM[:VENUE]`` or ``quotes:SYM[:VENUE]``).

        ``callback(tick)`` gets a :class:`wayy.Tick` per row; with ``batch_size`` and/or
        ``max_latency_ms`` it gets a :class:`wayy.Batch` instead. Start point: live (default:
        after the stream's newest entry when subscribing), ``from_seq`` (rows with seq >= it),
        ``from_ts`` (from the first row with ts >= it, int ns or numpy.datetime64), or the
        positions stored in ``checkpoint`` (a file path) when it exists — then ``from_*`` are
        ignored. The checkpoint is written atomically every ``checkpoint_ms``, every
        ``checkpoint_every`` deliveries if given, and on stop; ``on_checkpoint()`` is called
        just before each write and its JSON result is stored (``sub.state`` at the next start).
        """
        if os.getpid() != self._pid:
            raise InvalidInput("Subscriber used in a forked child: create one in the child")
        if not callable(callback):
            raise InvalidInput(f"callback must be callable, got {type(callback).__name__}")
        for name, fn in (("on_checkpoint", on_checkpoint), ("on_error", on_error)):
            if fn is not None and not callable(fn):
                raise InvalidInput(f"{name} must be callable, got {type(fn).__name__}")
        if on_checkpoint is not None and checkpoint is None:
            raise InvalidInput("on_checkpoint needs checkpoint= (where the state is stored)")
        if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
            raise InvalidInput(f"checkpoint must be a file path, got "
                               f"{type(checkpoint).__name__}")
        _positive(batch_size, "batch_size", True)
        _positive(max_latency_ms, "max_latency_ms", False)
        _positive(checkpoint_ms, "checkpoint_ms", False)
        _positive(checkpoint_every, "checkpoint_every", True)
        if from_seq is not None and from_ts is not None:
            raise InvalidInput("give from_seq or from_ts, not both")
        if from_seq is not None and (isinstance(from_seq, bool) or
                                     not isinstance(from_seq, (int, np.integer)) or from_seq < 0):
            raise InvalidInput(f"from_seq must be a non-negative int, got {from_seq!r}")
        if from_seq is not None and from_seq > _INT64_MAX:
            raise InvalidInput(f"from_seq {from_seq} is past any seq a shard can hold")
        if from_ts is not None:
            if isinstance(from_ts, np.datetime64):
                try:
                    from_ts = datetime64_ns_scalar(from_ts)
                except TimeRangeError as exc:
                    raise InvalidInput(f"from_ts {from_ts!r}: {exc}") from None
            if isinstance(from_ts, bool) or not isinstance(from_ts, (int, np.integer)):
                raise InvalidInput(f"from_ts must be int ns since the epoch or "
                                   f"numpy.datetime64, got {from_ts!r}")
            from_ts = int(from_ts)
            if not -_INT64_MAX - 1 <= from_ts <= _INT64_MAX:
                raise InvalidInput(f"from_ts {from_ts} is outside {RANGE_TEXT}")
        ch = parse_channel(channel)
        stream_key(ch)
        name = format_channel(ch).encode()
        if name in self._subs:
            raise InvalidInput(f"channel {channel} is already subscribed on this Subscriber")
        sub = RemoteSubscription(self, channel, callback, batch_size, max_latency_ms, from_ts,
                                 None if from_seq is None else int(from_seq), checkpoint,
                                 checkpoint_ms, checkpoint_every, on_checkpoint, on_error)
        self._subs[name] = sub
        if self._connected:
            try:
                self._ps.send(hiredis.pack_command(("SUBSCRIBE", name)))
                # confirmation arrives on the pub/sub socket; replay starts when it does
                sub.replaying = None  # waiting for the confirmation
            except RedisUnavailable as exc:
                self._down(exc)
        return sub

    @property
    def subscriptions(self) -> list[RemoteSubscription]:
        return list(self._subs.values())

    # --- connection --------------------------------------------------------------------------
    def _connect(self, within: float | None = None) -> None:
        """Both links, SUBSCRIBE every channel (confirmed), then start every replay.
        ``within``: the seconds run()'s timeout leaves, when it has one: no step of the
        handshake waits longer (a silent server holds run() no longer than asked)."""
        try:
            self._ps.connect(within)
            self._cmd.connect(within)
            self._handshake(within)
        finally:
            self._ps.limit(None)
            self._cmd.limit(None)

    def _handshake(self, within: float | None) -> None:
        self._check_database()
        names = list(self._subs)
        if names:
            self._ps.send(hiredis.pack_command(("SUBSCRIBE", *names)))
            want = set(names)
            deadline = time.monotonic() + (self._ps.timeout if within is None
                                           else min(self._ps.timeout, within))
            while want:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RedisUnavailable("no SUBSCRIBE confirmation from Redis")
                for msg in self._ps.read_pending(left):
                    if transient(msg):
                        raise RedisUnavailable(f"Redis is not ready for SUBSCRIBE: {msg}")
                    if isinstance(msg, hiredis.ReplyError):
                        raise RedisRefused(f"Redis refused SUBSCRIBE: {msg}")
                    if isinstance(msg, list) and msg and msg[0] == b"subscribe":
                        want.discard(msg[1])
                    # a message can only follow its channel's confirmation: buffer it
                    elif isinstance(msg, list) and len(msg) == 3 and msg[0] == b"message":
                        self._on_message(msg[1], msg[2])
        self._connected = True
        self.connects += 1
        self._last_rx = time.monotonic()
        self._ping_sent = 0.0
        for sub in self._subs.values():
            self._begin(sub)
        if self.reconnects or self.connects > 1:
            log.info("remote subscriber connected to %s again; replaying %d channel(s) from "
                     "their positions", self._ps.where, len(self._subs))
        self._backoff = RECONNECT_MIN_S
        self.last_error = None

    def _check_database(self) -> None:
        """Which database publishes to this Redis (its id, claimed by its broker); a
        checkpoint written for another one is refused: its seqs would mean other rows."""
        try:
            owner, nshards = self._cmd.call("HMGET", BROKER_CURSORS_KEY, OWNER_FIELD,
                                            SHARDS_FIELD)
        except RedisRefused:  # an ACL user without access to the key: cannot tell
            return
        if nshards and nshards.isdigit() and int(nshards) > 0:
            for sub in self._subs.values():
                sub.home_shard = shard_of(sub.ch.symbol, int(nshards))
        if not owner:
            if not self._told_no_broker:
                # (a wrong database number in the URL, say): live only, nothing to replay
                self._told_no_broker = True
                log.warning("remote subscriber: no wayy broker has published to %s (db %d) "
                            "yet (no %s there): nothing to replay until one does; is the "
                            "URL's database number the one `wayy start` printed?",
                            self._cmd.where, self._cmd.db, BROKER_CURSORS_KEY)
            return
        text = owner.decode(errors="replace")
        dbid = text.split(" ")[0]
        for sub in self._subs.values():
            if sub.database is None:
                sub.database = dbid
            elif sub.database != dbid and sub._ckpt is not None:
                self._ps.close()
                self._cmd.close()
                raise InvalidInput(
                    f"checkpoint {sub._ckpt.path} counts the seqs of database {sub.database}; "
                    f"the database publishing to this Redis now is another one ({text}): "
                    f"delete the checkpoint to start over", path=sub._ckpt.path)

    def _begin(self, sub: RemoteSubscription) -> None:
        """Resolve the start point (first time), then replay from it."""
        try:
            self._begin_replay(sub)
        except RedisRefused as exc:
            self._no_stream(sub, exc)

    def _no_stream(self, sub: RemoteSubscription, exc: Exception) -> None:
        """The channel's stream cannot be read (e.g. WRONGTYPE: another key has its name):
        say so, count it, and go on live (no replay or backfill for this channel)."""
        if sub.stream_error is None:
            log.error("remote subscriber %s: cannot read stream %s (%s): live only, without "
                      "replay or backfill after a disconnect", sub.channel, sub.stream, exc)
        sub.stream_error = str(exc)
        sub.initialized = True
        self._go_live(sub)

    def _go_live(self, sub: RemoteSubscription) -> None:
        sub.replaying = False
        buf = sub.buffer
        sub.buffer = collections.deque()
        sub.buffer_bytes = 0
        for data in buf:
            self._decode_take(sub, data, False, "pub/sub")

    def _begin_replay(self, sub: RemoteSubscription) -> None:
        if not sub.initialized:
            if sub.from_seq is not None:
                sub.floor_ms = self._find_seq(sub.stream, sub.from_seq)
            elif sub.from_ts is None:
                # live: after the newest entry of the stream as of now (SUBSCRIBE is done)
                last = self._cmd.call("XREVRANGE", sub.stream, "+", "-", "COUNT", 1)
                if last:
                    eid, fields = last[0]
                    ms, n = parse_id(eid)
                    f = _fields(fields)
                    try:
                        sub.positions[int(f[F_SHARD])] = n
                    except (KeyError, ValueError):
                        pass
                    sub.floor_ms = ms
            sub.initialized = True
        sub.replaying = True
        sub.dropped_since_xrange = False
        sub.replay_from = b"-" if sub.floor_ms is None else f"{sub.floor_ms}-0".encode()
        sub._chain_checked = set()

    def _find_seq(self, stream: str, seq: int) -> int | None:
        """Start ms for replay from ``seq``: the ms part of an id <= the id of the first entry
        whose last seq >= seq (entries are ordered by ms and by seq alike). Binary search with
        one-entry XRANGE probes (about 40 round trips at most)."""
        first = self._cmd.call("XRANGE", stream, "-", "+", "COUNT", 1)
        if not first:
            return None
        lo = parse_id(first[0][0])[0]
        last = self._cmd.call("XREVRANGE", stream, "+", "-", "COUNT", 1)
        hi = parse_id(last[0][0])[0]
        if parse_id(first[0][0])[1] >= seq:
            return lo
        # invariant: the first entry at or after (lo, 0) has last seq < seq (or is before);
        # find the largest ms whose first entry still has last seq < seq
        while lo < hi:
            mid = (lo + hi + 1) // 2
            r = self._cmd.call("XRANGE", stream, f"{mid}-0", "+", "COUNT", 1)
            if r and parse_id(r[0][0])[1] < seq:
                lo = parse_id(r[0][0])[0]
                if lo < mid:
                    lo = mid
            else:
                hi = mid - 1
        return lo

    def _down(self, exc: BaseException) -> None:
        was = self._connected
        if was and getattr(exc, "closed_by_server", None) is self._ps and self._cmd.connected:
            # the server closed the pub/sub connection: if it still answers on the other,
            # it dropped this subscriber, most likely for its output-buffer limit
            try:
                self._cmd.limit(1.0)
                if self._cmd.call("PING") in (b"PONG", "PONG"):
                    exc = RedisUnavailable(
                        f"{exc}, while it still answers on the command connection: Redis "
                        f"drops a subscriber that falls too far behind "
                        f"(client-output-buffer-limit pubsub) or that CLIENT KILL named; "
                        f"the missed rows come from the streams")
            except (WayyError, OSError):
                pass
        self._connected = False
        self._ps.close()
        self._cmd.close()
        self.last_error = str(exc)
        if was:
            self.reconnects += 1
        now = time.monotonic()
        if was or now - self._down_logged > 30:
            self._down_logged = now
            log.warning("remote subscriber: %s; reconnecting (retry in %.2fs)", exc,
                        self._backoff)
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self.reconnect_max_s)
        for sub in self._subs.values():
            sub.buffer.clear()
            sub.buffer_bytes = 0
            sub.replaying = None

    # --- messages ----------------------------------------------------------------------------
    def _on_message(self, channel: bytes, data: bytes) -> None:
        sub = self._subs.get(channel)
        if sub is None:
            return
        if sub.replaying is not False:
            sub.buffer.append(data)
            sub.buffer_bytes += len(data)
            if sub.buffer_bytes > MAX_BUFFER_BYTES:
                # everything live is also in the stream: drop the buffer, replay further
                sub.buffer.clear()
                sub.buffer_bytes = 0
                sub.buffer_drops += 1
                sub.dropped_since_xrange = True
            return
        self._decode_take(sub, data, False, "pub/sub")

    def _decode_take(self, sub: RemoteSubscription, data: bytes, replay: bool,
                     where: str) -> None:
        try:
            wb = wire.decode(data, self.max_rows)
        except wire.WireError as exc:
            sub.bad_message(exc, where)
            return
        except Exception as exc:  # noqa: BLE001  (a decoder bug must not stop the stream)
            sub.bad_message(exc, where)
            return
        if wb.table != sub.table or wb.symbol != sub.ch.symbol:
            sub.bad_message(WayyError(f"a {wb.table} batch of {wb.symbol} does not belong to "
                                      f"{sub.channel}"), where)
            return
        if sub.home_shard is not None and wb.shard != sub.home_shard:
            # every row of a symbol lives on one shard: a batch naming another is not the
            # broker's, and its seqs must not move the subscription's position
            sub.bad_message(WayyError(f"a batch of {wb.symbol} from shard {wb.shard}; "
                                      f"{wb.symbol} lives on shard {sub.home_shard}"), where)
            return
        sub.take(wb, replay)

    def _pump_pubsub(self, timeout: float) -> int:
        msgs = self._ps.read_pending(timeout)
        if not msgs:
            return 0
        self._last_rx = time.monotonic()
        self._ping_sent = 0.0
        on_message = self._on_message
        for m in msgs:
            if type(m) is list and len(m) == 3 and m[0] == b"message":
                on_message(m[1], m[2])
                if self._stopping:
                    # stop() inside a callback: keep the rest unprocessed (not delivered)
                    break
            elif isinstance(m, list) and m and m[0] == b"subscribe":
                sub = self._subs.get(m[1])
                if sub is not None and sub.replaying is None:
                    self._begin(sub)
            elif isinstance(m, hiredis.ReplyError):
                log.error("remote subscriber: Redis error on the pub/sub connection: %s", m)
        return len(msgs)

    def _replay_step(self, sub: RemoteSubscription) -> int:
        """One XRANGE chunk of a replaying channel; at the stream's end, switch to live."""
        sub.dropped_since_xrange = False
        try:
            entries = self._cmd.call("XRANGE", sub.stream, sub.replay_from, "+", "COUNT",
                                     REPLAY_CHUNK)
        except RedisRefused as exc:
            self._no_stream(sub, exc)
            return 1
        for eid, fields in entries:
            self._replay_entry(sub, eid, fields)
            if self._stopping:
                break
        if entries:
            sub.replay_from = b"(" + entries[-1][0]
        if self._stopping:
            return len(entries)
        if len(entries) < REPLAY_CHUNK:
            # the end as of this XRANGE: switch to live unless live messages were dropped
            # since it was sent (then their rows need another XRANGE)
            self._pump_pubsub(0)
            if not sub.dropped_since_xrange and sub.replaying is not False:
                self._go_live(sub)
        return len(entries) + 1

    def _replay_entry(self, sub: RemoteSubscription, eid: bytes, fields: list) -> None:
        try:
            _ms, n = parse_id(eid)
            f = _fields(fields)
            k = int(f[F_SHARD])
            prev = int(f.get(F_PREV, b"-1"))
            data = f[F_DATA]
        except (KeyError, ValueError, TypeError) as exc:
            sub.bad_message(WayyError(f"stream entry {eid!r} is not a wayy entry: {exc}"),
                            sub.stream)
            return
        last = sub.positions.get(k)
        if last is not None:
            if n <= last:
                sub.duplicates += 1
                return  # every row of it is processed: skip without decoding
            if k not in sub._chain_checked:
                sub._chain_checked.add(k)
                if prev > last:
                    sub.lost_gaps += 1
                    log.warning("remote subscriber %s: rows of shard %d with seq %d..%d were "
                                "not in %s when read (trimmed by retention, or kept out of "
                                "it): lost", sub.channel, k, last + 1, prev, sub.stream)
        else:
            sub._chain_checked.add(k)
            if prev >= 0:
                self._check_start_trimmed(sub, k, eid, _ms, prev)
        self._decode_take(sub, data, True, sub.stream)

    def _check_start_trimmed(self, sub: RemoteSubscription, k: int, eid: bytes, ms: int,
                             prev: int) -> None:
        """The first entry a from_seq / from_ts replay reads follows one that is gone (its
        ``prev`` is set): if retention trimmed rows the start point asked for, count it."""
        lost = None
        if sub.from_seq is not None and prev >= sub.from_seq:
            lost = f"seq {sub.from_seq}..{prev}"
        elif sub.from_ts is not None and ms > sub.from_ts // 1_000_000:
            first = self._cmd.call("XRANGE", sub.stream, "-", "+", "COUNT", 1)
            if first and first[0][0] == eid:  # nothing before it: the one before was trimmed
                lost = f"from ts {sub.from_ts} up to seq {prev}"
        if lost is not None:
            sub.lost_gaps += 1
            log.warning("remote subscriber %s: rows of shard %d (%s) were not in %s for "
                        "this replay (trimmed by retention, or kept out of it): lost",
                        sub.channel, k, lost, sub.stream)

    # --- running -----------------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> None:
        """Deliver until ``stop()``, Ctrl-C / SIGTERM (clean stop), or ``timeout`` seconds.

        Reconnects by itself when Redis goes away (with backoff), replaying what it missed.
        Raises RedisRefused when Redis refuses the credentials. Returning by the timeout
        writes the checkpoints (the subscriptions stay; ``run`` again goes on).
        """
        if os.getpid() != self._pid:
            raise InvalidInput("Subscriber used in a forked child: create one in the child")
        if not self._subs:
            raise InvalidInput("nothing subscribed: call subscribe() first")
        # as a local run(): None or inf for ever, 0 or less not waiting; NaN, str refused
        deadline_ns = _timeout_ns(timeout, "run()")
        deadline = None if deadline_ns is None else deadline_ns / 1e9
        _warm_up()
        main = threading.current_thread() is threading.main_thread()
        old = {}

        def on_signal(signum, _frame):
            self._stopping = True

        if main:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, on_signal)
        self._running = True
        self._stopping = False
        try:
            while not self._stopping:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if not self._connected:
                    if now < self._retry_at:
                        wait = self._retry_at - now
                        if deadline is not None:
                            wait = min(wait, deadline - now)
                        time.sleep(min(wait, 0.1))
                        continue
                    try:
                        self._connect(None if deadline is None else deadline - now)
                    except RedisUnavailable as exc:
                        self._down(exc)
                        continue
                    except RedisRefused:
                        self._ps.close()
                        self._cmd.close()
                        raise
                try:
                    self._step(deadline)
                except RedisUnavailable as exc:
                    self._down(exc)
                self._housekeep()
            if not self._stopping:
                # returned by the timeout, still subscribed: the checkpoints say where it
                # stands, so a process that exits now resumes without a repeat
                for sub in self._subs.values():
                    sub.save_checkpoint()
        finally:
            self._running = False
            for sig, h in old.items():
                signal.signal(sig, h)
            if self._stopping:
                self._finish()

    def _step(self, deadline: float | None) -> None:
        replaying = [s for s in self._subs.values() if s.replaying]
        if replaying:
            for sub in replaying:
                self._replay_step(sub)
                if self._stopping:
                    return
            self._pump_pubsub(0)
            return
        now = time.monotonic()
        wait = 0.1
        nxt = min((s.next_flush for s in self._subs.values() if s.batch_mode),
                  default=1 << 62)
        if nxt < 1 << 62:
            wait = min(wait, max(0.0, (nxt - time.monotonic_ns()) / 1e9))
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - now))
        got = self._pump_pubsub(wait)
        if not got:
            self._health(now)

    def _health(self, now: float) -> None:
        """Ping a silent pub/sub connection; a dead one fails the read or the ping."""
        if now - self._last_rx < HEALTH_PING_S:
            return
        if self._ping_sent and now - self._ping_sent > self._ps.timeout:
            raise RedisUnavailable("no reply to PING on the pub/sub connection")
        if not self._ping_sent:
            self._ps.send(hiredis.pack_command(("PING",)))
            self._ping_sent = now

    def _housekeep(self) -> None:
        now = time.monotonic_ns()
        for sub in self._subs.values():
            if sub.batch_mode and now >= sub.next_flush and not self._stopping:
                sub.flush(now, False)
            sub.housekeep(now)

    def _finish(self) -> None:
        """Deliver pending partial batches, write checkpoints, close the connections (a
        later run() reconnects and replays from the positions: messages read but not
        delivered when stop() came are not lost)."""
        try:
            for sub in self._subs.values():
                if sub.batch_mode:
                    self._stopping = False  # let the flush deliver
                    try:
                        sub.flush(time.monotonic_ns(), True)
                    finally:
                        self._stopping = True
                sub.save_checkpoint()
        finally:
            self._ps.close()
            self._cmd.close()
            if self._connected:
                self._connected = False
                for sub in self._subs.values():
                    sub.buffer.clear()
                    sub.buffer_bytes = 0
                    sub.replaying = None

    def stop(self) -> None:
        """Stop: deliver pending partial batches, write checkpoints, close the connections.
        Safe from a callback, a signal handler or another thread (the loop finishes)."""
        self._stopping = True
        if self._running:
            return
        self._finish()
        self.close()

    def close(self) -> None:
        """Close the connections and release checkpoint files (no final delivery)."""
        self._ps.close()
        self._cmd.close()
        self._connected = False
        for sub in self._subs.values():
            sub.close()

    def stats(self) -> dict:
        """Counters: per channel, and the connection's."""
        return {"connected": self._connected, "connects": self.connects,
                "reconnects": self.reconnects, "last_error": self.last_error,
                "channels": {s.channel: s.stats() for s in self._subs.values()}}

    def __enter__(self) -> "Subscriber":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self._connected else "not connected"
        return (f"<wayy.remote.Subscriber {redact(self.url)}: {len(self._subs)} channel(s), "
                f"{state}>")


def format_tick(t: Tick) -> str:
    """One line for a tick (``wayy tail``): time, symbol@venue, values, shard/seq."""
    sec, ns = divmod(t.timestamp, 1_000_000_000)
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ns:09d}Z"
    where = f"{t.symbol}@{t.venue}" if t.venue else t.symbol
    if t.table == "trades":
        vals = f"trade {t.price:g} x {t.size:g}"
    else:
        vals = f"quote {t.bid:g} / {t.ask:g}  ({t.bid_size:g} x {t.ask_size:g})"
    return f"{when} {where:<16} {vals}  shard {t.shard} seq {t.seq}"


def parse_time(text: str) -> int:
    """``--from-ts``: int nanoseconds since the epoch, or an ISO-8601 time (UTC unless it
    says otherwise)."""
    s = str(text).strip()
    if s.lstrip("-").isdigit():
        return int(s)
    try:
        return iso_ns(s)
    except TimeRangeError as exc:
        raise InvalidInput(f"time {text!r}: {exc}") from None
    except ValueError:
        raise InvalidInput(f"time {text!r}: give nanoseconds since the epoch or an ISO-8601 "
                           f"time such as 2024-01-02T14:30:00Z") from None


_warm = [False]


def _warm_up() -> None:
    """Load the wire codec's kernels once per process, before the first message."""
    if not _warm[0]:
        wire.warm_up()
        _warm[0] = True


def _fields(flat: list) -> dict:
    return dict(zip(flat[::2], flat[1::2]))


def _positive(v, what: str, integer: bool):
    if v is None:
        return None
    ok = isinstance(v, (int, np.integer)) if integer else isinstance(v, (int, float, np.number))
    if isinstance(v, bool) or not ok or not math.isfinite(float(v)) or v <= 0:
        kind = "a positive int" if integer else "a positive number"
        raise InvalidInput(f"{what} must be {kind}, got {v!r}")
    return v


# --- broker status (what `wayy status` shows about the broker) -----------------------------------

BROKER_STATUS_GLOB = "broker-*.status.json"


def read_broker_status(db_path: str) -> list[dict]:
    """Every broker's status file in the database directory (see workers/broker.py), each
    with ``alive`` (its pid still runs) and ``age_s`` (since it was written) added."""
    import glob

    out = []
    now = time.time_ns()
    for p in sorted(glob.glob(os.path.join(os.path.realpath(db_path), BROKER_STATUS_GLOB))):
        try:
            with open(p) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        pid = doc.get("pid")
        alive = False
        if isinstance(pid, int) and pid > 0:
            try:
                os.kill(pid, 0)
                alive = True
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
        doc["alive"] = alive
        doc["age_s"] = (now - int(doc.get("updated_ns", 0))) / 1e9
        out.append(doc)
    return out


__all__ = ["Subscriber", "RemoteSubscription", "RedisLink", "RedisUnavailable", "RedisRefused",
           "stream_key", "parse_id", "read_broker_status", "redact", "format_tick",
           "parse_time"]


_INT64_MAX = (1 << 63) - 1
