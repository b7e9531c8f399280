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
    """Turns WayyError into one line and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except WayyError as exc:
            click.echo(f"wayy: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)


db_option = click.option(
    "--db", "db", default=default_db, show_default=f"${DEFAULT_DB_ENV} or ~/.wayy/db",
    type=click.Path(file_okay=False), help="Database directory (segments are named after it).")


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wayy", prog_name="wayy")
def main() -> None:
    """wayy: real-time tick database — sharded shared-memory columns, local and Redis fan-out.

    Start a database with `wayy start`, look at it with `wayy status`, stop it with
    `wayy stop`. From Python: `db = wayy.attach(PATH)`, `wayy.Producer(PATH)`.
    """


@main.command()
@db_option
@click.option("--shards", type=int, default=default_shards, show_default="min(8, CPUs)",
              help="Writer processes; symbols are spread over them by a stable hash.")
@click.option("--capacity", type=int, default=None, show_default="2097152",
              help="Rows per table per shard held in shared memory. When a table is full "
                   "its writer rejects further rows with reason 'full' (never overwrites).")
@click.option("--ring-bytes", type=int, default=None, show_default="16 MiB",
              help="Bytes of each shard's inbound ring (power of two). Producers meet "
                   "backpressure only when it is full.")
@click.option("--max-symbols", type=int, default=None, show_default="65536",
              help="Distinct symbols per shard.")
@click.option("--feed", "feeds", multiple=True, default=("synthetic",), show_default=True,
              help="Feed to run: 'synthetic', 'synthetic:rate=5000,symbols=100,seed=1,"
                   "quote_ratio=0.7,venues=NYSE+NASDAQ', or 'none' for producers of your "
                   "own. Repeat for several feeds.")
@click.option("--detach", is_flag=True, help="Run in the background; log to DB/wayy.log.")
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def start(db: str, shards: int, capacity: int | None, ring_bytes: int | None,
          max_symbols: int | None, feeds: tuple[str, ...], detach: bool, verbose: bool) -> None:
    """Start a database: shared-memory segments, one writer per shard, and feeds.

    Runs in the foreground until Ctrl-C (or `wayy stop`), which stops everything and
    removes its shared memory. Prints where the data is and how to attach.
    """
    from shm.layout import inbound as L
    from shm.layout import shard as S
    from workers.feeds import parse_feed_spec
    from workers.supervisor import Config, Supervisor

    specs = [parse_feed_spec(f) for f in feeds]
    specs = [s for s in specs if s.kind != "none"]
    cfg = Config(db=db, shards=shards,
                 capacity=S.DEFAULT_CAPACITY if capacity is None else capacity,
                 ring_capacity=L.DEFAULT_CAPACITY if ring_bytes is None else ring_bytes,
                 max_symbols=S.DEFAULT_MAX_SYMBOLS if max_symbols is None else max_symbols,
                 feeds=specs)
    cfg.check()
    path = os.path.realpath(db)
    level = logging.DEBUG if verbose else logging.INFO
    fmt = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"
    t0 = time.monotonic()

    def banner() -> None:
        feeds_txt = ", ".join(f.to_string() for f in specs) or "none (publish with wayy.Producer)"
        click.echo(
            f"wayy: {cfg.shards} shard(s) running at {path} "
            f"(ready in {time.monotonic() - t0:.2f}s)\n"
            f"  feeds:   {feeds_txt}\n"
            f"  attach:  python -c \"import wayy; db = wayy.attach('{path}'); "
            f"print(db['trades'].tail(5))\"\n"
            f"  status:  wayy status --db {path}\n"
            f"  stop:    wayy stop --db {path}" + ("" if detach else "   (or Ctrl-C)"))

    if not detach:
        logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
        sup = Supervisor(cfg)
        sup.run(on_ready=lambda err: banner() if err is None else None)
        return
    _start_detached(cfg, path, level, fmt, banner)


def _start_detached(cfg, path: str, level: int, fmt: str, banner) -> None:
    from workers.supervisor import Supervisor

    os.makedirs(path, exist_ok=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
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
    with os.fdopen(r) as f:
        line = f.readline().strip()
    if line == "ok":
        banner()
        click.echo(f"  log:     {os.path.join(path, 'wayy.log')}")
        return
    raise WayyError(line.removeprefix("error: ") or
                    f"supervisor exited during start; see {os.path.join(path, 'wayy.log')}")


@main.command()
@db_option
@click.option("--timeout", type=float, default=15.0, show_default=True,
              help="Seconds to wait for a clean stop before killing the supervisor.")
def stop(db: str, timeout: float) -> None:
    """Stop a running database and remove its shared memory."""
    from shm.segment import db_prefix, list_segments, unlink_quiet
    from wayy.manifest import lock_holder

    path = os.path.realpath(db)
    running, pid = lock_holder(path)
    if not running or not pid:
        raise NotRunning(f"no database is running at {path}")
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


@main.command()
@db_option
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON; exit status 1 when the database is not running.")
def status(db: str, as_json: bool) -> None:
    """Per shard: state, writer pid and uptime, symbols, rows per table, ingest rate,
    rejects by reason; then every live local subscriber: pid, channels, lag, overruns."""
    from wayy.status import read_status

    path = os.path.realpath(db)
    try:
        st = read_status(path)
    except NotRunning as exc:
        if as_json:
            click.echo(json.dumps({"running": False, "path": path, "error": str(exc)}))
            sys.exit(1)
        raise
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(format_status(st))


def format_status(st: dict) -> str:
    """The human-readable status table."""
    up = _dur(st["uptime_s"])
    lines = [f"wayy database {st['path']}: running, supervisor pid {st['supervisor_pid']}, "
             f"up {up}, {len(st['shards'])} shard(s)",
             f"{'shard':>5} {'state':<10} {'pid':>7} {'uptime':>9} {'symbols':>8} "
             f"{'trades':>12} {'quotes':>12} {'rows/s':>9}  rejects"]
    for s in st["shards"]:
        rej = ", ".join(f"{k}={v}" for k, v in s["rejects"].items() if v) or "-"
        lines.append(f"{s['shard']:>5} {s['state']:<10} {s['writer_pid']:>7} "
                     f"{_dur(s['writer_uptime_s']):>9} {s['symbols']:>8} {s['trades']:>12,} "
                     f"{s['quotes']:>12,} {s['rate']:>9,}  {rej}")
    t = st["totals"]
    rej = ", ".join(f"{k}={v}" for k, v in t["rejects"].items() if v) or "-"
    lines.append(f"{'total':>5} {'':<10} {'':>7} {'':>9} {t['symbols']:>8} {t['trades']:>12,} "
                 f"{t['quotes']:>12,} {t['rate']:>9,}  {rej}")
    subs = st.get("subscribers") or []
    lines.append(f"subscribers: {len(subs) or 'none'}")
    if subs:
        lines.append(f"{'pid':>7} {'mode':<5} {'idle':<7} {'delivered':>12} {'lag rows':>9} "
                     f"{'lag s':>7} {'overruns':>8} {'errors':>6}  channels")
        for s in subs:
            lines.append(f"{s['pid']:>7} {s['mode']:<5} {s['idle']:<7} {s['delivered']:>12,} "
                         f"{s['lag_rows']:>9,} {s['lag_s']:>7.3f} {s['overruns']:>8,} "
                         f"{s['errors']:>6,}  {s['channels']}")
    return "\n".join(lines)


def _dur(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


if __name__ == "__main__":
    main()
