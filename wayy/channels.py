"""Channel names: what a subscriber follows, written the way the original design writes it.

    ticks:{symbol}             trades of one symbol, every venue
    ticks:{symbol}:{venue}     trades of one symbol at one venue
    quotes:{symbol}            quotes of one symbol, every venue
    quotes:{symbol}:{venue}    quotes of one symbol at one venue

``parse_channel("ticks:AAPL:NYSE")`` gives ``Channel(table="trades", symbol="AAPL",
venue="NYSE")``; ``format_channel`` is its inverse. A subscription may also name a table and
leave the symbol out (``db.subscribe("trades")``): ``Channel("trades", None, None)``, every
symbol of every shard, which has no channel name (no glob characters are allowed).

Symbols and venues follow `wayy.names` ([A-Za-z0-9._-], 1-16 characters), so a channel name
has exactly one reading. ``ohlc:`` channels and ``:stream`` suffixes are not followed by local
subscribers (bars and Redis streams come with their own issues) and are refused with a
message that says so, as is every other shape.
"""

from __future__ import annotations

from typing import NamedTuple

from wayy.errors import InvalidName
from wayy.names import check_symbol, check_venue

# channel kind -> table, and back
KINDS = {"ticks": "trades", "quotes": "quotes"}
TABLE_KINDS = {v: k for k, v in KINDS.items()}
MAX_CHANNEL_CHARS = 64  # "quotes:" + 16 + ":" + 16 is 41; anything longer is not a channel


class Channel(NamedTuple):
    """One followed stream: a table, and optionally one symbol and one venue of it."""

    table: str
    symbol: str | None = None
    venue: str | None = None

    @property
    def name(self) -> str:
        """The channel name (``ticks:AAPL``), or ``trades:*`` for a whole table."""
        return format_channel(self)


def parse_channel(text: object) -> Channel:
    """Parse ``ticks:SYM``, ``ticks:SYM:VENUE``, ``quotes:SYM``, ``quotes:SYM:VENUE``.

    Raises InvalidName naming what is wrong (kind, symbol, venue, shape).
    """
    if not isinstance(text, str):
        raise InvalidName(f"channel must be a str, got {type(text).__name__}")
    if len(text) > MAX_CHANNEL_CHARS:
        raise InvalidName(f"channel {text[:40]!r}... is longer than {MAX_CHANNEL_CHARS} "
                          f"characters")
    parts = text.split(":")
    kind = parts[0]
    if kind == "ohlc":
        raise InvalidName(f"channel {text!r}: ohlc bars are not published yet; follow "
                          f"ticks:{{symbol}} and aggregate")
    if kind == "tenant":
        raise InvalidName(f"channel {text!r}: private tenant channels are served through Redis, "
                          f"not to local subscribers")
    if kind not in KINDS:
        raise InvalidName(f"channel {text!r}: unknown kind {kind!r}; channels are "
                          f"ticks:SYMBOL[:VENUE] and quotes:SYMBOL[:VENUE]")
    if len(parts) == 3 and parts[2] == "stream":
        raise InvalidName(f"channel {text!r}: ':stream' names the Redis stream behind a "
                          f"channel; subscribe to {kind}:{parts[1]} with from_seq=, from_ts= or "
                          f"checkpoint= to replay it")
    if len(parts) not in (2, 3):
        raise InvalidName(f"channel {text!r}: expected {kind}:SYMBOL or {kind}:SYMBOL:VENUE")
    symbol = check_symbol(parts[1], f"symbol of channel {text!r}")
    venue = None
    if len(parts) == 3:
        if parts[2] == "":
            raise InvalidName(f"channel {text!r}: empty venue (leave out ':' for every venue)")
        venue = check_venue(parts[2])
    return Channel(KINDS[kind], symbol, venue)


def format_channel(ch: Channel) -> str:
    """The channel name of ``ch`` (``ticks:AAPL:NYSE``); ``trades:*`` for a whole table."""
    if ch.symbol is None:
        return f"{ch.table}:*" if ch.venue is None else f"{ch.table}:*:{ch.venue}"
    kind = TABLE_KINDS[ch.table]
    return f"{kind}:{ch.symbol}" if ch.venue is None else f"{kind}:{ch.symbol}:{ch.venue}"


def channel_of(table_or_channel: object, symbol: object = None, venue: object = None) -> Channel:
    """The Channel for ``subscribe``'s first arguments: a table name with optional symbol and
    venue, or one channel name (then ``symbol``/``venue`` must be left out)."""
    if not isinstance(table_or_channel, str):
        raise InvalidName(f"expected a table or channel name, got "
                          f"{type(table_or_channel).__name__}")
    if ":" in table_or_channel:
        if symbol is not None or venue is not None:
            raise InvalidName(f"channel {table_or_channel!r} already names its symbol and venue: "
                              f"leave symbol= and venue= out")
        return parse_channel(table_or_channel)
    if table_or_channel not in TABLE_KINDS:
        raise InvalidName(f"unknown table or channel {table_or_channel!r}; use trades, quotes, "
                          f"ticks:SYMBOL[:VENUE] or quotes:SYMBOL[:VENUE]")
    if symbol is not None:
        check_symbol(symbol)
    if venue is not None:
        if venue == "":
            raise InvalidName("venue is empty (use venue=None for every venue)")
        check_venue(venue)
    return Channel(table_or_channel, symbol, venue)


__all__ = ["Channel", "parse_channel", "format_channel", "channel_of", "KINDS"]
