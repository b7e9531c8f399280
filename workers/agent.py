"""Agents and their runner, as in Aeron: every long-running worker is an agent.

    on_start()            map segments, recover, announce readiness
    do_work() -> int      one pass; 0 means there was nothing to do
    idle(work)            the agent's idle strategy, called by the runner after each pass
    on_close()            announce stopping, unmap

The runner owns the loop, SIGTERM/SIGINT and error counting; tests call do_work() directly.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from typing import Protocol

log = logging.getLogger("wayy.agent")

# A full collection walks every object the process holds: with numba, the kernels and their
# modules loaded, 15-75 ms here, and an agent paused that long holds up every tick behind it
# (at 100k ticks/s, one pause a run was enough to move the broker's p99). What exists once an
# agent has started lives as long as the process: it is frozen (gc.freeze: never walked
# again; freezing itself takes no time) after on_start, and once more after FREEZE_AGAIN_S,
# when what the first passes load lazily (Redis connections, kernels of a first batch) is
# there too. The one full collection is made before on_start, while nothing waits.
FREEZE_AGAIN_S = 2.0


class Agent(Protocol):
    name: str

    def on_start(self) -> None: ...

    def do_work(self) -> int: ...

    def idle(self, work: int) -> None: ...

    def on_close(self) -> None: ...


class Runner:
    """Runs one agent until stopped by a signal or :meth:`stop`."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.running = True
        self.errors = 0

    def stop(self, *_args) -> None:
        self.running = False

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def run(self) -> None:
        """on_start, then do_work/idle until stopped, then on_close (always)."""
        agent = self.agent
        gc.collect()
        agent.on_start()
        gc.freeze()
        again = time.monotonic() + FREEZE_AGAIN_S
        try:
            while self.running:
                work = agent.do_work()
                agent.idle(work)
                if again and time.monotonic() >= again:
                    gc.freeze()
                    again = 0.0
        finally:
            agent.on_close()

