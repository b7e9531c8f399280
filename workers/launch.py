"""The `wayy` command's entry point.

Importing ``wayy`` loads numba and the kernels' modules: most of a second in which Python
would answer Ctrl-C with a KeyboardInterrupt traceback through the import machinery, before
``wayy.cli`` could catch it. This module imports nothing of wayy until SIGINT ends the
command quietly (status 130, as it does once the command runs).
"""

from __future__ import annotations

import signal
import sys


def _quiet_exit(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Run the `wayy` command line (``wayy.cli.main``)."""
    mine = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if mine:  # (a SIGINT ignored by whoever started us stays ignored)
        signal.signal(signal.SIGINT, _quiet_exit)
    try:
        from wayy.cli import main as cli_main
    finally:
        if mine:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    cli_main()


if __name__ == "__main__":
    sys.exit(main())
