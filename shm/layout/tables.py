"""The two tables: their ids, their stored columns, and their inbound (producer) columns.

These names are the contract for producers and query results alike:

    trades: ts, symbol, venue, price, size, seq
    quotes: ts, symbol, venue, bid, ask, bid_size, ask_size, seq

``ts`` is int64 nanoseconds since the epoch (UTC). ``symbol`` and ``venue`` are stored as
int32 ids interned per shard and returned as strings; on the inbound ring they travel as
fixed 16-byte ASCII names (NUL-padded). ``seq`` is assigned by the shard writer: one strictly
increasing counter per shard, shared by both tables.

Every table's value columns are float64 (sizes too: crypto sizes are fractional, and doubles
hold every integer share count up to 2**53 exactly).
"""

from __future__ import annotations

TRADES = 0
QUOTES = 1
TABLE_IDS = {"trades": TRADES, "quotes": QUOTES}
TABLE_NAMES = ("trades", "quotes")

NAME_BYTES = 16  # max symbol / venue length, ASCII

# value columns after ts/symbol/venue, all float64, in stored and inbound order
VALUE_COLUMNS = {
    TRADES: ("price", "size"),
    QUOTES: ("bid", "ask", "bid_size", "ask_size"),
}
MAX_VALUE_COLUMNS = 4

# public column order of query results
COLUMNS = {
    TRADES: ("ts", "symbol", "venue") + VALUE_COLUMNS[TRADES] + ("seq",),
    QUOTES: ("ts", "symbol", "venue") + VALUE_COLUMNS[QUOTES] + ("seq",),
}

# inbound record payload bytes per row: ts 8 + symbol 16 + venue 16 + 8 per value column
INBOUND_ROW_BYTES = {t: 8 + 2 * NAME_BYTES + 8 * len(v) for t, v in VALUE_COLUMNS.items()}

# reject reasons, counted per shard; index into the control segment's reject counters
REJECT_OK = 0
REJECT_PRICE = 1  # price/bid/ask NaN, infinite, zero or negative
REJECT_SIZE = 2  # size NaN, infinite, zero or negative
REJECT_CROSSED = 3  # quote with bid > ask
REJECT_TS = 4  # timestamp before 1990 or more than a day in the future
REJECT_SYMBOL = 5  # empty, non-ASCII, or characters outside [A-Za-z0-9._-]
REJECT_VENUE = 6  # non-ASCII or characters outside [A-Za-z0-9._-]
REJECT_FULL = 7  # the batch does not fit in the table's remaining capacity (whole batch)
REJECT_SYMBOLS_FULL = 8  # the shard's symbol table is full (--max-symbols)
REJECT_MALFORMED = 9  # a record on the inbound ring with an impossible header
REJECT_DEAD_PRODUCER = 10  # a claim whose producer died before committing (padded over)
REJECT_VENUES_FULL = 11  # the shard's venue table is full (1,023 named venues and "")
N_REJECT_REASONS = 12
REJECT_NAMES = (
    "ok",
    "price",
    "size",
    "crossed",
    "timestamp",
    "symbol",
    "venue",
    "full",
    "symbols_full",
    "malformed",
    "dead_producer",
    "venues_full",
)

MIN_TS_NS = 631_152_000_000_000_000  # 1990-01-01T00:00:00Z
MAX_FUTURE_NS = 86_400_000_000_000  # one day
