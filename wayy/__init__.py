"""wayy: a real-time tick database for trading systems.

    import wayy
    db = wayy.attach("/data/markets")                 # map a running database read-only
    db["trades"].tail(20, symbol="AAPL")              # last 20 AAPL trades, O(20)
    db["quotes"].between(start_ts=t0, end_ts=t1)      # time range, merged across shards
    wayy.Producer("/data/markets").publish("trades", symbol="AAPL", price=150.25, size=100)
    wayy.ops.mavg(prices, 20)
    db.subscribe("ticks:AAPL", callback=on_tick); db.run()   # every new AAPL trade, live

Start a database with ``wayy start --shards 8 --db /data/markets`` (see ``wayy --help``).
"""

from wayy import channels, ops, remote, subscribe
from wayy.channels import Channel, parse_channel
from wayy.db import Database, Result, Table, attach
from wayy.errors import (
    AlreadyRunning,
    Backpressure,
    CorruptData,
    IncompatibleVersion,
    InsufficientSpace,
    InvalidInput,
    InvalidName,
    InvalidTick,
    NotRunning,
    RedisRefused,
    RedisUnavailable,
    RowsRejected,
    RunEnded,
    UnknownTable,
    WayyError,
    WriterUnavailable,
)
from wayy.names import shard_of
from wayy.producer import Producer
from wayy.subscribe import Batch, Overrun, Subscription, Tick

__version__ = "0.1.0"

__all__ = [
    "attach",
    "Database",
    "Table",
    "Result",
    "Producer",
    "ops",
    "shard_of",
    "Subscription",
    "Tick",
    "Batch",
    "Overrun",
    "Channel",
    "parse_channel",
    # modules users reach into, like ops: wayy.channels (channel names), wayy.subscribe,
    # wayy.remote (remote subscribers through Redis)
    "channels",
    "subscribe",
    "remote",
    "WayyError",
    "InvalidInput",
    "InvalidName",
    "InvalidTick",
    "UnknownTable",
    "NotRunning",
    "AlreadyRunning",
    "IncompatibleVersion",
    "InsufficientSpace",
    "Backpressure",
    "WriterUnavailable",
    "RunEnded",
    "CorruptData",
    "RedisUnavailable",
    "RedisRefused",
    "RowsRejected",
    "__version__",
]
