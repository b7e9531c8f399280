"""The three strategies of the original design (§4.2), live against a running database.

    wayy start --shards 2 --db /tmp/markets          # synthetic feed: AAPL, MSFT, ... ticks
    python examples/strategies.py --db /tmp/markets   # all three in one process, Ctrl-C stops
    python examples/strategies.py --db /tmp/markets --strategy pair --seconds 10

Each strategy is a per-tick callback that queries the database it is subscribed to
(``db["trades"].tail(...)``), exactly as in the design document:

1. mean reversion on AAPL: sell when a trade prints above its 20-trade moving average;
2. momentum on MSFT: buy when the last 50 trades returned more than 1% in total;
3. pair ratio AAPL / MSFT: called for both symbols' trades, prints the price ratio.

Signals are counted and printed at most once a second per strategy, so a busy feed does not
flood the terminal. ``--checkpoint`` makes each strategy resume where it stopped (no tick
seen twice, none missed) when the script is run again.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

# Until db.run() takes Ctrl-C over, it is only noted: numba loads kernels (importing wayy,
# subscribing) through C callbacks that would swallow a KeyboardInterrupt raised inside them
# -- the script then ran on as if no Ctrl-C had come.
_ctrl_c: list[int] = []
signal.signal(signal.SIGINT, lambda *_: _ctrl_c.append(1))

import numpy as np  # noqa: E402

import wayy  # noqa: E402


class Throttle:
    """Print at most once per ``every`` seconds; count the rest."""

    def __init__(self, name: str, every: float = 1.0) -> None:
        self.name = name
        self.every = every
        self.next_at = 0.0
        self.count = 0
        self.ticks = 0

    def say(self, text: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now >= self.next_at:
            print(f"[{self.name}] {text}   ({self.count} signals / {self.ticks} ticks so far)",
                  flush=True)
            self.next_at = now + self.every


def mean_reversion(db: wayy.Database, out: Throttle):
    """Strategy 1: mean reversion on AAPL."""

    def on_trade(trade: wayy.Tick) -> None:
        out.ticks += 1
        recent = db["trades"].tail(20, symbol="AAPL")
        if len(recent) < 20:
            return
        mavg = wayy.ops.mavg(recent["price"], 20)
        if trade["price"] > mavg[-1]:
            out.say(f"SELL AAPL @ {trade['price']:.2f} > mavg20 {mavg[-1]:.2f}")

    return on_trade


def momentum(db: wayy.Database, out: Throttle):
    """Strategy 2: momentum on MSFT."""

    def on_trade(trade: wayy.Tick) -> None:
        out.ticks += 1
        recent = db["trades"].tail(50, symbol="MSFT")
        if len(recent) < 2:
            return
        returns = wayy.ops.pct_change(recent["price"])
        if np.nansum(returns) > 0.01:
            out.say(f"BUY MSFT @ {trade['price']:.2f}: 50-trade return "
                    f"{np.nansum(returns):.2%}")

    return on_trade


def pair_ratio(db: wayy.Database, out: Throttle):
    """Strategy 3: pair trading AAPL vs MSFT (called for both symbols)."""

    def on_trade(trade: wayy.Tick) -> None:
        out.ticks += 1
        aapl = db["trades"].tail(1, symbol="AAPL")
        msft = db["trades"].tail(1, symbol="MSFT")
        if len(aapl) and len(msft):
            ratio = aapl["price"][0] / msft["price"][0]
            out.say(f"pair ratio AAPL/MSFT {ratio:.4f} (on a {trade.symbol} trade)")

    return on_trade


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True, help="database directory (of `wayy start`)")
    ap.add_argument("--strategy", choices=["mean_reversion", "momentum", "pair", "all"],
                    default="all")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this long")
    ap.add_argument("--idle", default="backoff", choices=wayy.subscribe.IDLE_STRATEGIES)
    ap.add_argument("--checkpoint", action="store_true",
                    help="resume each strategy from its checkpoint under the database")
    args = ap.parse_args(argv)
    try:
        db = wayy.attach(args.db)
    except wayy.WayyError as exc:
        print(f"strategies: {exc}", file=sys.stderr)
        return 1
    chosen = ["mean_reversion", "momentum", "pair"] if args.strategy == "all" else [
        args.strategy]
    outs = {}
    for name in chosen:
        out = outs[name] = Throttle(name)
        ck = f"example-{name}" if args.checkpoint else None
        if name == "mean_reversion":
            db.subscribe("trades", symbol="AAPL", callback=mean_reversion(db, out),
                         idle=args.idle, checkpoint=ck)
        elif name == "momentum":
            db.subscribe("trades", symbol="MSFT", callback=momentum(db, out), idle=args.idle,
                         checkpoint=ck)
        else:
            # one subscription that follows both channels: one callback, both symbols
            db.subscribe(["ticks:AAPL", "ticks:MSFT"], callback=pair_ratio(db, out),
                         idle=args.idle, checkpoint=ck)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if _ctrl_c:  # while starting: nothing delivered yet
        db.close()
        return 130
    print(f"running {', '.join(chosen)} against {args.db} "
          f"({'Ctrl-C' if args.seconds is None else f'{args.seconds:g}s'} to stop)", flush=True)
    db.run(timeout=args.seconds)  # Ctrl-C stops cleanly (checkpoints are written)
    for name, out in outs.items():
        print(f"[{name}] done: {out.ticks} ticks, {out.count} signals", flush=True)
    db.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C between the check above and db.run()
        sys.exit(130)
