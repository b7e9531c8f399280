"""Agents and their runner, as in Aeron: every long-running worker is an agent.

    on_start()            map segments, recover, announce readiness
    do_work() -> int      one pass; 0 means there was nothing to do
    idle(work)            the agent's idle strategy, called by the runner after each pass
    on_close()            announce stopping, unmap

The runner owns the loop, SIGTERM/SIGINT and error counting; tests call do_work() directly.
"""

from __future__ import annotations

import logging
import signal
from typing import Protocol

log = logging.getLogger("wayy.agent")


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
        agent.on_start()
        try:
            while self.running:
                work = agent.do_work()
                agent.idle(work)
        finally:
            agent.on_close()
