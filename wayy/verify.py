"""`wayy verify`: check every write-ahead log and historical partition of a database.

Each file gets one report: fine, or what is damaged and where. Nothing is repaired here (a
writer repairs its own WAL when it starts, and keeps a copy of anything it cut off).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from shm import wal
from shm.errors import ShmError
from wayy.manifest import lock_holder


@dataclass
class Report:
    """What `verify` found in one file or partition."""

    path: str
    ok: bool
    summary: str
    problems: list[str] = field(default_factory=list)


def _wal_report(path: str, running: bool) -> Report:
    rel = path
    try:
        found = wal.scan(path)
    except (ShmError, OSError) as exc:
        return Report(rel, False, "unreadable", [str(exc)])
    summary = (f"shard {found.shard}, {len(found.records)} records, {found.rows} rows, "
               f"next seq {found.next_seq if found.next_seq is not None else 0}, "
               f"{found.file_size} bytes")
    if found.damage is None:
        return Report(rel, True, summary)
    if running and found.damage_kind == "tail" and ".damaged-" not in path:
        # a live writer's append in progress looks exactly like a torn tail
        return Report(rel, True, summary + f" (+{found.damaged_bytes} bytes being appended)")
    return Report(rel, False, summary, [found.reason])


def verify(db_path: str) -> list[Report]:
    """Reports for every WAL (``wal/*.wal*``) and historical partition under ``db_path``."""
    path = os.path.realpath(db_path)
    if not os.path.isdir(path):
        from wayy.errors import InvalidInput

        raise InvalidInput(f"no database directory at {db_path}")
    running, _pid = lock_holder(path)
    reports = []
    for f in sorted(glob.glob(os.path.join(path, "wal", "*.wal*"))):
        if ".tmp." in os.path.basename(f):
            continue
        r = _wal_report(f, running)
        if ".damaged-" in f:
            r.ok = False
            r.problems.insert(0, "a damaged WAL copied aside at recovery (remove it once "
                                 "inspected)")
        reports.append(r)
    try:
        from wayy import history
    except ImportError:  # pragma: no cover - history arrives with the durability issue
        history = None
    if history is not None and hasattr(history, "verify_history"):
        for part, problems in sorted(history.verify_history(path).items()):
            reports.append(Report(part, not problems, "history partition", list(problems)))
    return reports
