"""The database directory: its manifest (what is running, with which parameters) and lock.

    <db>/wayy.json   manifest, written atomically by the supervisor at start
    <db>/wayy.lock   held with flock(LOCK_EX) by the running supervisor; its pid inside
    <db>/wayy.id     the database's identity: random, made at its first start, kept for
                     good (it moves with the directory; names the database to Redis)
    <db>/wayy.shards its shard count, fixed at the first start: WALs and history are per
                     shard, and a symbol's shard depends on the count
    <db>/redis/      the embedded Redis: config, append-only file, log, 0600 password
                     (wayy/redis_server.py)

A database is running exactly when the lock is held: the kernel drops an flock when its
holder dies, SIGKILL included, so a stale manifest is never mistaken for a live database.
"""

from __future__ import annotations

import fcntl
import glob
import json
import math
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass

from shm.segment import db_prefix
from wayy.errors import CorruptData, InvalidInput, NotRunning

MANIFEST_NAME = "wayy.json"
LOCK_NAME = "wayy.lock"
LOCK_RETRY_S = 0.25  # how long a start retries a lock held by someone looking at it
PID_WAIT_S = 1.0  # how long a look at a held lock waits for its holder's pid to be written
ID_NAME = "wayy.id"
SHARDS_NAME = "wayy.shards"
FORMAT_VERSION = 1


@dataclass
class Manifest:
    """Parameters of a running database, as every attaching process needs them."""

    path: str
    prefix: str
    shards: int
    capacity: int
    ring_capacity: int
    max_symbols: int
    max_venues: int
    supervisor_pid: int
    started_ns: int
    # Redis fan-out: the URL never holds a password (this file is world-readable); the
    # password is in the 0600 file redis_credentials (None: no password, or no Redis)
    redis_url: str | None = None
    redis_credentials: str | None = None
    redis_embedded: bool = False  # wayy runs the server (in <db>/redis/)
    brokers: int = 0  # broker processes (0: local only)
    wire: str | None = None  # what the brokers publish: json | binary | binary+lz4
    # records per shard change ring (one record per committed batch; a power of two)
    change_ring_records: int = 65_536
    # write-ahead log: on/off and the fsync policy (batch | interval | off)
    wal: bool = True
    fsync: str = "interval"
    fsync_interval_ms: float = 10.0
    wal_compress: bool = False
    # rolls to history (workers/roll.py)
    roll_daily: bool = True
    roll_fill: float | None = 0.9
    history_days: int | None = None
    # how long writers poll for input after a pass while ticks come often (workers/writer.py)
    writer_poll_us: float = 250.0
    format_version: int = FORMAT_VERSION

    def write(self) -> None:
        """Write atomically (temporary name, fsync, rename)."""
        final = os.path.join(self.path, MANIFEST_NAME)
        tmp = final + f".tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)


def check_db_path(path, what: str = "the database directory") -> str:
    """``path`` as a str, or InvalidInput: a non-empty str or path without a NUL byte."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path or "\x00" in path:
        raise InvalidInput(f"{what} must be a non-empty str or path (no NUL byte), "
                           f"got {path!r}")
    return path


def read_manifest(path: str) -> Manifest:
    """The manifest of the database at ``path``; NotRunning if it is not running."""
    path = check_db_path(path)
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        what = "a file, not a database directory" if os.path.exists(real) else \
            "directory does not exist"
        raise NotRunning(f"no database at {path} ({what})", path=path)
    running, _pid = lock_holder(real)
    if not running:
        raise NotRunning(f"no database is running at {path} (start it with: wayy start --db {path})",
                         path=path)
    try:
        with open(os.path.join(real, MANIFEST_NAME)) as f:
            data = json.load(f)
    except FileNotFoundError as exc:
        raise NotRunning(f"database at {path} is still starting (no manifest yet)",
                         path=path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptData(f"manifest {real}/{MANIFEST_NAME} is not valid JSON", path=path) from exc
    if not isinstance(data, dict):
        raise CorruptData(f"manifest {real}/{MANIFEST_NAME} is damaged: a JSON "
                          f"{type(data).__name__}, not an object", path=path)
    if data.get("format_version") != FORMAT_VERSION:
        raise CorruptData(f"manifest format {data.get('format_version')} is not "
                          f"{FORMAT_VERSION}", path=path)
    data.pop("format_version")
    bad = _bad_fields(data)
    if bad:
        raise CorruptData(f"manifest {real}/{MANIFEST_NAME} is damaged: {bad}", path=path)
    m = Manifest(**data)
    if m.prefix != db_prefix(real) or m.path != real:
        raise CorruptData(f"manifest {real}/{MANIFEST_NAME} is damaged: it names another "
                          f"path ({m.path})", path=path)
    try:  # the count the database was created with (one small file, not the WAL listing)
        with open(os.path.join(real, SHARDS_NAME), "rb") as f:
            created = int(f.read(64).strip())
    except (OSError, ValueError):
        created = None
    if created is not None and created != m.shards:
        raise CorruptData(f"manifest {real}/{MANIFEST_NAME} is damaged: shards is "
                          f"{m.shards}, the database has {created} ({SHARDS_NAME})", path=path)
    return m


# each manifest field's JSON types (an edited or damaged file must fail as CorruptData, not
# as a TypeError deep in whatever reads the field first)
_INT, _NUM, _STR, _BOOL = (int,), (int, float), (str,), (bool,)
_FIELD_TYPES = {
    "path": (_STR, False), "prefix": (_STR, False), "shards": (_INT, False),
    "capacity": (_INT, False), "ring_capacity": (_INT, False), "max_symbols": (_INT, False),
    "max_venues": (_INT, False), "supervisor_pid": (_INT, False), "started_ns": (_INT, False),
    "redis_url": (_STR, True), "redis_credentials": (_STR, True),
    "redis_embedded": (_BOOL, False), "brokers": (_INT, False), "wire": (_STR, True),
    "change_ring_records": (_INT, False), "wal": (_BOOL, False), "fsync": (_STR, False),
    "fsync_interval_ms": (_NUM, False), "wal_compress": (_BOOL, False),
    "roll_daily": (_BOOL, False), "roll_fill": (_NUM, True), "history_days": (_INT, True),
    "writer_poll_us": (_NUM, False),
}


def _bad_fields(data: object) -> str | None:
    """What is wrong with a manifest's fields (None: nothing)."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    for k, v in data.items():
        if k not in _FIELD_TYPES:
            return f"unknown field {k!r}"
        types, nullable = _FIELD_TYPES[k]
        if v is None and nullable:
            continue
        if not isinstance(v, types) or (isinstance(v, bool) and types is not _BOOL):
            return f"{k} is {v!r}"
    missing = [k for k in ("path", "prefix", "shards", "capacity", "ring_capacity",
                           "max_symbols", "max_venues", "supervisor_pid", "started_ns")
               if k not in data]
    if missing:
        return f"no {', '.join(missing)}"
    url = data.get("redis_url")
    if url is not None and not _explicit_redis_url(url):
        # status sends the database's password to the server it names: never to one a
        # hand edit left implicit (a redis:// URL without its port means 6379)
        return f"redis_url is {url!r}, not redis://HOST:PORT/DB or unix:///PATH"
    for k, v in data.items():
        if v is None or isinstance(v, (bool, str)):
            choices = _FIELD_CHOICES.get(k)
            if choices is not None and v is not None and v not in choices:
                return f"{k} is {v!r}, not one of {', '.join(choices)}"
            continue
        low, high = _FIELD_RANGES.get(k, (0, math.inf))
        # NaN fails both comparisons, so the check is written to refuse it
        if not (low <= v <= high) or (isinstance(v, float) and not math.isfinite(v)):
            return f"{k} is {v!r}"
    return None


def _explicit_redis_url(url: str) -> bool:
    """A URL as the supervisor writes it: unix:///path, or redis://host:port[/db]."""
    import urllib.parse

    try:
        p = urllib.parse.urlsplit(url)
        port = p.port
    except ValueError:
        return False
    if p.scheme == "unix":
        return bool(p.path)
    return p.scheme == "redis" and bool(p.hostname) and port is not None and port > 0


# what the supervisor can have written (an edited value outside them would misguide readers)
_FIELD_CHOICES = {"fsync": ("batch", "interval", "off"), "wire": ("json", "binary", "binary+lz4")}
_FIELD_RANGES = {
    "shards": (1, 1 << 16), "capacity": (1, 1 << 40), "ring_capacity": (1, 1 << 40),
    "max_symbols": (1, 1 << 32), "max_venues": (1, 1 << 32), "supervisor_pid": (1, 1 << 31),
    "change_ring_records": (1, 1 << 40), "roll_fill": (1e-9, 1.0), "history_days": (1, 1 << 31),
    "fsync_interval_ms": (0.0, 3.6e6), "writer_poll_us": (0.0, 1e9),
}


def lock_holder(path: str) -> tuple[bool, int | None]:
    """(running, pid): whether a supervisor holds the database lock, and its pid."""
    lock = os.path.join(path, LOCK_NAME)
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            # held: a start writes its pid just after taking the lock (acquire_lock), so a
            # look in between waits a moment for it rather than answer "held, pid unknown"
            deadline = time.monotonic() + PID_WAIT_S
            while True:
                try:
                    pid = int(os.pread(fd, 32, 0).decode().strip() or 0) or None
                except ValueError:
                    pid = None
                if pid is not None or time.monotonic() >= deadline:
                    return True, pid
                time.sleep(0.001)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, None
    finally:
        os.close(fd)


def acquire_lock(path: str) -> int | None:
    """Take the database lock for this process; returns its fd, or None if held elsewhere."""
    fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    # lock_holder() (wayy status, attach, a script waiting for the start) holds the lock
    # shared for a moment to look: a start that met one of those looks retries, and is
    # refused only when the lock stays held
    deadline = time.monotonic() + LOCK_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.001)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


_ID_RE = re.compile(rb"[0-9a-f]{32}")  # uuid4().hex, what database_id makes


def read_database_id(path: str) -> str | None:
    """The identity in ``<db>/wayy.id`` if it can be read (never made here: readers may not
    write the directory), else None."""
    try:
        with open(os.path.join(path, ID_NAME), "rb") as f:
            got = f.read(64).strip()
    except OSError:
        return None
    return got.decode() if _ID_RE.fullmatch(got) else None


def database_id(path: str) -> str:
    """The database's identity (``<db>/wayy.id``), made on first use: a random hex string that
    stays with the directory when it moves and changes only when the directory is recreated.
    Safe when several processes ask at once (the first file linked into place wins)."""
    final = os.path.join(path, ID_NAME)
    for _attempt in range(3):
        try:
            with open(final, "rb") as f:
                got = f.read(64).strip()
            if _ID_RE.fullmatch(got):
                return got.decode()
            if got:
                raise CorruptData(f"{final} holds no database id (32 hex digits) but "
                                  f"{got[:40]!r}; delete it and start the database again "
                                  f"(remote checkpoints made for the old id are then refused)",
                                  path=path)
        except FileNotFoundError:
            if os.path.islink(final):
                raise CorruptData(f"{final} is a symlink to nowhere; delete it and start the "
                                  f"database again", path=path) from None
        except OSError as exc:  # a directory, unreadable, ...
            raise CorruptData(f"{final} cannot be read as the database id ({exc.strerror}); "
                              f"delete it and start the database again", path=path) from None
        tmp = f"{final}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(uuid.uuid4().hex + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)  # never replaces one another process made first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    raise CorruptData(f"{final} is empty; delete it and start the database again", path=path)


def stored_shards(path: str) -> int | None:
    """The shard count the database at ``path`` was created with: ``<db>/wayy.shards``, or
    for a database made before that file, what its WAL and history files say (the highest
    shard number + 1). None for a database that holds nothing yet."""
    name = os.path.join(path, SHARDS_NAME)
    fix = "put the number of shards the database was created with in it"
    stored = None
    try:
        with open(name, "rb") as f:
            stored = int(f.read(64).strip())
    except (FileNotFoundError, NotADirectoryError):
        pass
    except ValueError:
        raise CorruptData(f"{name} does not hold a shard count; {fix}", path=path) from None
    if stored is not None and stored < 1:
        raise CorruptData(f"{name} holds {stored}, not a shard count; {fix}", path=path)
    seen = [(int(m.group(1)), f) for f in glob.glob(os.path.join(path, "wal", "shard-*.wal"))
            if (m := re.search(r"shard-(\d+)\.wal$", f))]
    seen += [(int(m.group(1)), f)
             for f in glob.glob(os.path.join(path, "hist", "*", "*", "shard-*"))
             if (m := re.search(r"shard-(\d+)\.seq-\d+$", f))]
    wals = max((k for k, f in seen if f.endswith(".wal")), default=None)
    seen += [(int(m.group(1)), f) for f in glob.glob(os.path.join(path, "shard-*.next-seq"))
             if (m := re.search(r"shard-(\d+)\.next-seq$", f))]
    top = max(seen, default=None)
    if stored is None:
        return top[0] + 1 if top is not None else None
    if top is not None and top[0] >= stored:
        # a count lowered by hand: that shard's rows would be ignored, its symbols routed
        # to other shards
        raise CorruptData(f"{name} holds {stored}, but the database has files of shard "
                          f"{top[0]} ({os.path.relpath(top[1], path)}); {fix}", path=path)
    if wals is not None and wals + 1 < stored:
        # a count raised by hand: every writer that ran with the WAL made its file, so
        # shards above these never ran, and symbols would move to them
        raise CorruptData(f"{name} holds {stored}, but the write-ahead logs are of shards "
                          f"0..{wals} only; {fix}", path=path)
    return stored


def store_shards(path: str, shards: int) -> None:
    """Record the shard count (atomically; see stored_shards)."""
    final = os.path.join(path, SHARDS_NAME)
    tmp = f"{final}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{shards}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
