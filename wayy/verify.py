"""`wayy verify`: check every write-ahead log and historical partition of a database.

Each file gets one report: fine, or what is damaged and where. Nothing is repaired here (a
writer repairs its own WAL when it starts, and keeps a copy of anything it cut off).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field

from shm import wal
from shm.errors import ShmError
from wayy.manifest import lock_holder

# a writer opens only wal/shard-<k>.wal, and refuses one whose header names another shard
_WAL_NAME = re.compile(r"shard-(\d+)\.wal(?:$|\.)")


def expected_shard(path: str) -> int | None:
    """The shard a WAL belongs to by its file name (``shard-<k>.wal``, and the
    ``.damaged-<ns>`` copies of it), or None for a name no writer uses."""
    m = _WAL_NAME.match(os.path.basename(path))
    return int(m.group(1)) if m else None


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
    if found.shard is None:  # no file header: nothing was ever logged in it (or emptied)
        summary = (f"empty ({found.file_size} bytes, no file header), shard "
                   f"{expected_shard(path)} by its name")
    else:
        summary = (f"shard {found.shard}, {len(found.records)} records, {found.rows} rows, "
                   f"next seq {found.next_seq if found.next_seq is not None else 0}, "
                   f"{found.file_size} bytes")
    problems = []
    expected = expected_shard(path)
    if expected is not None and found.shard is not None and found.shard != expected:
        # scan() itself takes no expected shard here, so that the rest of the file is still
        # checked and summarised; the message is the one a writer refuses this file with
        problems.append(f"{path}: WAL belongs to shard {found.shard}, expected shard "
                        f"{expected} (from its file name); its writer will refuse to start")
    if found.damage is not None:
        if running and found.damage_kind == "tail" and ".damaged-" not in path:
            # a live writer's append in progress looks exactly like a torn tail
            summary += f" (+{found.damaged_bytes} bytes being appended)"
        else:
            problems.append(found.reason)
    return Report(rel, not problems, summary, problems)


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
