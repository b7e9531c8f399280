"""The broker (``python -m workers.broker``) with one probe: when each transaction is sent.

Used by bench_remote.py's breakdown phase, which splits producer -> remote callback latency
at the broker's send. For every stream entry a transaction carries, the time.time_ns() just
after its bytes were written to the Redis socket is recorded under the entry's last seq;
the map is written as JSON to $WAYY_PROBE_OUT when the broker exits (SIGTERM).

    WAYY_PROBE_OUT=/tmp/sent.json python benchmarks/_broker_probe.py --db PATH --redis URL
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import workers.broker as broker  # noqa: E402

_sent: dict[int, int] = {}
_real_send = broker.Broker._send


def _send(self, txn) -> None:
    _real_send(self, txn)
    now = time.time_ns()
    for _ms, last in txn.ids.values():
        _sent[last] = now


def _dump() -> None:
    with open(os.environ["WAYY_PROBE_OUT"], "w") as f:
        json.dump(_sent, f)


if __name__ == "__main__":
    broker.Broker._send = _send
    atexit.register(_dump)
    broker.main(sys.argv[1:])
