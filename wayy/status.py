"""What `wayy status` shows, read straight from shared memory (no process is asked) — except
Redis, whose health only Redis can tell (one INFO with a short timeout; never raises)."""

from __future__ import annotations

import time

import numpy as np

from shm.layout import control as C
from shm.layout import shard as S
from shm.layout import subscribers as RL
from shm.layout import tables as T
from shm.errors import SegmentMissing
from shm.shard import Control, ShardData
from shm.subscribers import Registry
from wayy.errors import translate
from wayy.manifest import read_database_id, read_manifest

# The writer's rate (C_RATE) is rows committed over its last window of >= 1 s, counted from
# the segment's row counts, which a roll resets and a restart reloads: the first window
# after either spans the jump (negative after a roll, the whole WAL after a restart). It is
# shown as unknown (0, "rate_known": false) until a window has passed since then; the
# writer recomputes it at most ~0.1 s late when idle, so two windows are waited for.
_RATE_SETTLE_NS = 2_500_000_000

# a running writer refreshes its heartbeat at least once a second, idle or not
WRITER_SILENT_S = 5.0
# a subscriber in run() / poll() refreshes its heartbeat every 50 ms, also inside a long
# pass; older than this, it is stopped (SIGSTOP), stuck in a callback, or not polling
SUBSCRIBER_SILENT_S = 5.0


def _age_s(now: int, then: int) -> float:
    """Seconds from ``then`` to ``now`` (both wall-clock ns), never negative: the writer may
    stamp a time later than a clock read here, or the wall clock may step back."""
    return max(0, now - then) / 1e9


def _rate(c: np.ndarray, now: int) -> int | None:
    """The writer's rows/s, or None while it may span a roll or a writer start."""
    rate = int(c[C.C_RATE])
    last_jump = max(int(c[C.C_LAST_ROLL_NS]), int(c[C.C_WRITER_START_NS]))
    if rate < 0 or (last_jump and now - last_jump < _RATE_SETTLE_NS):
        return None
    return rate


def read_status(path: str, redis: bool = True) -> dict:
    """Status of the database at ``path`` as a JSON-ready dict; NotRunning if it is not.

    ``redis=False`` skips the Redis round trip (``"redis"`` is then None). A shard's
    ``rate`` is the rows/s its writer committed over its last second; for a few seconds
    after a roll or a writer start, when that second may span the reset row count, and
    while the shard is restarting, it is 0 with ``rate_known`` False. A restarting shard's
    ``writer_pid`` and ``writer_uptime_s`` are None (its writer is dead). Ages and uptimes
    are never negative.
    """
    with translate(path):
        m = read_manifest(path)
        now = time.time_ns()
        shards = []
        heads: list[tuple[int, int]] = []  # per shard: committed next seq, newest ts
        totals = {"symbols": 0, "trades": 0, "quotes": 0, "rate": 0, "rate_known": True,
                  "rejects": {name: 0 for name in T.REJECT_NAMES[1:]}}
        for k in range(m.shards):
            ctl = Control.attach(m.prefix, k)
            data = ShardData.attach(m.prefix, k)
            try:
                c = ctl.counters.copy()
                # the clock after the counters: a heartbeat stamped between an earlier
                # clock read and the copy would be in this reader's future
                now_k = time.time_ns()
                rejects = {name: int(ctl.rejects[i]) for i, name in enumerate(T.REJECT_NAMES)
                           if i > 0}
                snap = data.snapshot()
                newest = max((int(data.cols[t]["ts"][int(snap[t]) - 1])
                              for t in (T.TRADES, T.QUOTES) if snap[t] > 0), default=0)
                heads.append((int(snap[S.COMMIT_NEXT_SEQ]), newest))
                state = int(c[C.C_STATE])
                # a restarting shard's pid, start time and rate are its dead writer's
                gone = state == C.STATE_DEAD
                age = (_age_s(now_k, int(c[C.C_HEARTBEAT_NS])) if c[C.C_HEARTBEAT_NS]
                       else None)
                silent = state == C.STATE_RUNNING and age is not None and age > WRITER_SILENT_S
                # a restarting shard's rate is its dead writer's, a silent one's stale
                rate = None if gone or silent else _rate(c, now_k)
                s = {
                    "shard": k,
                    "state": C.STATE_NAMES[state] if 0 <= state < len(C.STATE_NAMES) else "?",
                    "writer_pid": None if gone else int(c[C.C_WRITER_PID]),
                    "writer_uptime_s": None if gone else
                    _age_s(now_k, int(c[C.C_WRITER_START_NS])) if c[C.C_WRITER_START_NS]
                    else 0.0,
                    "heartbeat_age_s": age,
                    # running, but not reporting (SIGSTOP, a debugger, stuck): its rate is stale
                    "silent": silent,
                    "symbols": data.n_symbols(),
                    "trades": int(snap[T.TRADES]),
                    "quotes": int(snap[T.QUOTES]),
                    "next_seq": int(snap[S.COMMIT_NEXT_SEQ]),
                    "capacity": data.capacity,
                    "rate": rate or 0,
                    "rate_known": rate is not None,
                    "restarts": int(c[C.C_RESTARTS]),
                    "last_exit": int(c[C.C_LAST_EXIT]),
                    "generation": int(data.hdr64[S.GENERATION_I64]),
                    "rolls": int(c[C.C_ROLLS]),
                    "roll_failures": int(c[C.C_ROLL_FAILS]),
                    "last_roll_failure_ns": int(c[C.C_LAST_ROLL_FAIL_NS]) or None,
                    # the writer's idle polling (`--writer-poll-us`): paused while other
                    # processes wait for the CPU it would spin on
                    "polling": bool(c[C.C_POLLING]),
                    "poll_pauses": int(c[C.C_POLL_BACKOFFS]),
                    "rejects": rejects,
                }
            finally:
                ctl.close()
                data.close()
            shards.append(s)
            for key in ("symbols", "trades", "quotes", "rate"):
                totals[key] += s[key]
            totals["rate_known"] &= s["rate_known"]
            for name, v in rejects.items():
                totals["rejects"][name] += v
        subscribers = read_subscribers(m.prefix, heads, now)
    redis_st = read_redis(m, heads) if redis else None
    return {
        "running": True,
        "path": m.path,
        "supervisor_pid": m.supervisor_pid,
        # the clock now, not at the start of this read: the shards' uptimes are read later
        # (attaching 8 shards takes a while) and a writer is never older than its database
        "uptime_s": _age_s(time.time_ns(), m.started_ns),
        "shards": shards,
        "totals": totals,
        "subscribers": subscribers,
        "redis": redis_st,
        "durability": {"wal": m.wal, "fsync": m.fsync if m.wal else None,
                       "fsync_interval_ms": m.fsync_interval_ms if m.wal else None,
                       "roll_daily": m.roll_daily, "roll_fill": m.roll_fill,
                       "history_days": m.history_days},
    }


# a broker rewrites its status file every 0.5 s (a connect attempt may hold it up to 5 s):
# one older than this is stopped or stuck
BROKER_STALE_S = 10.0


def read_redis(m, heads: list[tuple[int, int]]) -> dict:
    """Redis' health (up, URL, memory, clients), the brokers, and their lag per shard.

    ``{"enabled": False}`` for a local-only database. The password comes from the 0600
    file the manifest names; a reader who may not open it still learns whether Redis is up
    (an auth error is an answer). Lag per shard: committed rows the brokers have not yet
    published, from the cursors they commit to Redis with what they publish
    (:func:`broker_cursors`) — fresh, and right even when a broker is dead. ``brokers``:
    each broker's own report (its status file, workers/broker.py) from this run.
    """
    from wayy import redis_server
    from wayy.remote import read_broker_status

    if not m.redis_url:
        return {"enabled": False}
    password = redis_server.read_password(m.redis_credentials)
    out = redis_server.info(m.redis_url, password, timeout=0.5)
    out.update(enabled=True, embedded=m.redis_embedded, credentials=m.redis_credentials,
               credentials_readable=password is not None or not m.redis_credentials,
               wire=m.wire)
    progress = None
    cursors = broker_cursors(m, password) if out["up"] and "error" not in out else None
    if cursors is not None:
        other = foreign_owner(m, cursors)
        if other is not None:  # its cursors measure nothing of this database
            out["error"] = (f"used by another wayy database ({other}): this database's "
                            f"brokers are refused and publish nothing")
            out["foreign_owner"] = other
        else:
            progress = broker_progress(m, cursors)
    # a shard with no cursor in Redis yet: the brokers `wayy start` runs publish it from its
    # first row (they start at "earliest"), so all its rows are still to publish
    out["broker_lag"] = None if progress is None else _lag_per_shard(
        m, len(heads), progress, [0, 0] if m.brokers else None)
    reports = [b for b in read_broker_status(m.path)
               if int(b.get("updated_ns") or 0) >= m.started_ns]
    if progress is None and "foreign_owner" not in out:
        # Redis cannot say: count from the cursors the brokers last reported having in
        # Redis (their status files), against the shards as they are now
        reported = {}
        for b in reports:
            for key, v in (b.get("per_shard") or {}).items():
                c = v.get("cursor") if isinstance(v, dict) else None
                if key.isdigit() and isinstance(c, list) and len(c) == 2:
                    reported[int(key)] = [int(x) for x in c]
        if reported:
            out["broker_lag"] = _lag_per_shard(m, len(heads), reported, None,
                                               from_broker_report=True)
    if "foreign_owner" not in out:
        # another database's broker on the same server under another database number: the
        # claim above (one number's hash) cannot see it, this database's brokers can
        refused = next((b["redis_error"] for b in reports if b.get("alive")
                        and "another wayy database" in (b.get("redis_error") or "")), None)
        if refused is not None:
            out["error"] = refused
            out["foreign_owner"] = refused
    keep = ("index", "pid", "alive", "age_s", "shards", "redis", "redis_error",
            "published_rows", "errors", "reconnects")
    out["brokers"] = [dict({k: b.get(k) for k in keep},
                           responding=bool(b.get("alive")) and (b.get("age_s") or 0.0)
                           <= BROKER_STALE_S)
                      for b in reports]
    out["broker_count"] = m.brokers
    return out


def _lag_per_shard(m, nshards: int, cursors: dict[int, list[int]], default, **extra
                   ) -> list[dict]:
    """``broker_lag``: per shard its cursor and the rows at or past it (counted from
    ``default`` for a shard without one; None when that is None too)."""
    out = []
    for k in range(nshards):
        c = cursors.get(k, default)
        out.append({"shard": k, "cursor": cursors.get(k), **extra,
                    "lag_rows": None if c is None else unpublished(m, k, c)})
    return out


def unpublished(m, k: int, cursor: list[int]) -> int | None:
    """Committed rows of shard ``k`` of database ``m`` at or past the broker's cursor (next
    seq per table), in memory or already rolled to history; None when its shared memory is
    gone."""
    try:
        data = ShardData.attach(m.prefix, k)
    except SegmentMissing:  # stopped since the caller looked
        return None
    try:
        return lag_rows(m.path, k, data, data.snapshot(), cursor)
    finally:
        data.close()


def lag_rows(db_path: str, k: int, data: ShardData, snap: np.ndarray, cursor: list[int],
             cache: dict | None = None) -> int:
    """Rows of shard ``k`` at or past ``cursor`` (next seq to publish, per table).

    Counted per table, not as ``next_seq - min(cursor)``: seqs are shared by the two tables
    of a shard, so a table that has no new rows keeps an old cursor without lagging. Rows a
    roll moved out of memory before they were published are counted from history (read only
    when the cursor is below a table's first row in memory; ``cache`` keeps the answer for
    the same cursor and memory start, as a broker asks twice a second).
    """
    from wayy.history import rows_in_seq_range

    lag = 0
    for t in (T.TRADES, T.QUOTES):
        n = int(snap[t])
        seq = data.cols[t]["seq"]
        lag += n - int(np.searchsorted(seq[:n], cursor[t]))
        # history holds rows below the first in memory (all of them when memory is empty)
        first = int(seq[0]) if n else int(snap[S.COMMIT_NEXT_SEQ])
        if cursor[t] < first:
            # what history holds changes only at a roll (a new generation)
            key = (k, t, int(cursor[t]),
                   first if n else ("gen", int(data.hdr64[S.GENERATION_I64])))
            got = None if cache is None else cache.get(key)
            if got is None:
                got = rows_in_seq_range(db_path, k, t, int(cursor[t]), first)
                if cache is not None:
                    if len(cache) > 64:  # old cursors are never asked for again
                        cache.clear()
                    cache[key] = got
            lag += got
    return lag


def broker_cursors(m, password: str | None) -> dict | None:
    """The brokers' cursor hash in Redis (``wayy:broker:cursors``: "<shard>:<table>" -> next
    seq to publish, "db" -> the database that claimed the Redis), one HGETALL; None when
    Redis cannot say."""
    from wayy import redis_server
    from wayy.remote import BROKER_CURSORS_KEY

    try:
        flat = redis_server.command(m.redis_url, "HGETALL", BROKER_CURSORS_KEY,
                                    password=password, timeout=0.5)
    except (OSError, ConnectionError, redis_server.RedisReplyError, ValueError):
        return None
    return dict(zip(flat[::2], flat[1::2]))


def foreign_broker(m, password: str | None) -> str | None:
    """A broker of another wayy database connected to the server of ``m``'s Redis, under
    any database number (pub/sub channels are shared by all of them): "id ..., database
    number N". None when there is none or Redis cannot say (CLIENT LIST not allowed)."""
    from wayy import redis_server
    from wayy.remote import broker_database, client_list

    mine = read_database_id(m.path)
    try:
        listing = redis_server.command(m.redis_url, "CLIENT", "LIST", "TYPE", "normal",
                                       password=password, timeout=0.5)
    except (OSError, ConnectionError, redis_server.RedisReplyError, ValueError):
        return None
    if mine is None or not isinstance(listing, bytes):
        return None
    for c in client_list(listing):
        theirs = broker_database(c)
        if theirs is not None and theirs != mine:
            return f"id {theirs}, database number {c.get('db', '?')}"
    return None


def foreign_owner(m, cursors: dict) -> str | None:
    """Who claimed the Redis ("<id> <host>:<path>"), when it is another database than
    ``m``'s (whose brokers are then refused); None otherwise."""
    from wayy.remote import OWNER_FIELD

    raw = cursors.get(OWNER_FIELD)
    mine = read_database_id(m.path)
    if not raw or mine is None:
        return None
    text = raw.decode(errors="replace")
    return text if text.split(" ")[0] != mine else None


def broker_progress(m, cursors: dict) -> dict[int, list[int]]:
    """Per shard, ``[trades, quotes]``: the next seq of each table the brokers will publish,
    from the cursor hash (``broker_cursors``)."""
    out: dict[int, list[int]] = {}
    for key, val in cursors.items():
        shard, _, table = key.decode(errors="replace").partition(":")
        if not shard.isdigit() or table not in ("trades", "quotes"):
            continue
        out.setdefault(int(shard), [0, 0])[table == "quotes"] = int(val)
    return {k: v for k, v in out.items() if k < m.shards}


def read_subscribers(prefix: str, heads: list[tuple[int, int]], now: int) -> list[dict]:
    """Every live local subscriber of the database, from the subscriber registry.

    ``heads`` gives per shard the committed next seq and the newest row's ts: a subscriber's
    lag is how many committed rows of its shards it has not processed yet, and how far (in
    the rows' own timestamps) the newest of them is ahead of the last one it processed (of
    the moment it subscribed, when it has processed none yet).
    """
    reg = Registry.attach_readonly(prefix)
    if reg is None:
        return []
    out = []
    try:
        for slot in reg.live():
            i64, i32 = slot.i64, slot.i32
            claimed_ns = int(i64[RL.CLAIMED_NS_I64])
            heartbeat_ns = int(i64[RL.HEARTBEAT_NS_I64])
            # the clock after the stamps, or a heartbeat just stamped is in the future
            now = max(now, time.time_ns())
            lag_rows = 0
            lag_ns = 0
            nshards = min(int(i32[RL.NSHARDS_I32]), len(heads), RL.MAX_SHARDS)
            for k in range(nshards):
                row = slot.shards[k]
                if not row[RL.SHARD_FOLLOWED]:
                    continue
                behind = max(0, heads[k][0] - int(row[RL.SHARD_NEXT_SEQ]))
                lag_rows += behind
                if behind:
                    # nothing processed yet on this shard: at least as far behind as the
                    # newest row is after the moment it subscribed (not 0)
                    done_ts = int(row[RL.SHARD_LAST_TS]) or claimed_ns
                    lag_ns = max(lag_ns, heads[k][1] - done_ts)
            idle = int(i32[RL.IDLE_I32])
            mode = int(i32[RL.MODE_I32])
            state = int(i32[RL.STATE_I32])
            out.append({
                "pid": slot.owner,
                "channels": slot.channels(),
                "mode": RL.MODE_NAMES[mode] if 0 <= mode < len(RL.MODE_NAMES) else "?",
                "idle": RL.IDLE_NAMES[idle] if 0 <= idle < len(RL.IDLE_NAMES) else "?",
                "state": RL.STATE_NAMES[state] if 0 <= state < len(RL.STATE_NAMES) else "?",
                "uptime_s": _age_s(now, claimed_ns),
                "heartbeat_age_s": _age_s(now, heartbeat_ns),
                "silent": _age_s(now, heartbeat_ns) > SUBSCRIBER_SILENT_S,
                "delivered": int(i64[RL.DELIVERED_I64]),
                "items": int(i64[RL.ITEMS_I64]),
                "lag_rows": lag_rows,
                "lag_s": max(0, lag_ns) / 1e9,
                "overruns": int(i64[RL.OVERRUNS_I64]),
                "backfilled": int(i64[RL.BACKFILLED_I64]),
                "errors": int(i64[RL.ERRORS_I64]),
                "lost": int(i64[RL.LOST_I64]),
                "gaps": int(i64[RL.GAPS_I64]),
            })
    finally:
        reg.close()
    return out
