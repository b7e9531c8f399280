#!/usr/bin/env python3
"""List wayy shared-memory segments in /dev/shm, grouped by database, with their owner state.

    python scripts/shm_ls.py            # list
    python scripts/shm_ls.py --reclaim  # unlink segments whose owner process is gone

A segment records its creator's pid in its header; `wayy start` reclaims stale segments of its
own database automatically, this helper is for looking at (or cleaning up) all of them.
"""

from __future__ import annotations

import argparse
import collections
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shm.layout import common  # noqa: E402
from shm.segment import NAME_PREFIX, SHM_DIR, pid_alive, unlink_quiet  # noqa: E402


def owner_pid(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            head = f.read(common.COMMON_END)
    except OSError:
        return None
    if len(head) < common.COMMON_END:
        return None
    return struct.unpack_from("<q", head, common.OWNER_PID_OFFSET)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reclaim", action="store_true", help="unlink segments of dead owners")
    args = ap.parse_args()
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for name in sorted(os.listdir(SHM_DIR)):
        if name.startswith(NAME_PREFIX):
            groups[".".join(name.split(".")[:2])].append(name)
    if not groups:
        print("no wayy segments in", SHM_DIR)
        return 0
    for db, names in groups.items():
        pids = {owner_pid(os.path.join(SHM_DIR, n)) for n in names}
        live = any(pid_alive(p) for p in pids)
        size = sum(os.path.getsize(os.path.join(SHM_DIR, n)) for n in names)
        print(f"{db}: {len(names)} segments, {size / 2**20:.1f} MiB, owner pid(s) "
              f"{sorted(p for p in pids if p)} {'alive' if live else 'gone'}")
        if args.reclaim and not live:
            for n in names:
                unlink_quiet("/" + n)
            print(f"  reclaimed {len(names)} segments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
