"""Channel names: the four tick/quote shapes parse, everything else is refused with a reason."""

from __future__ import annotations

import pytest

from wayy.channels import Channel, channel_of, format_channel, parse_channel
from wayy.errors import InvalidInput, InvalidName


@pytest.mark.parametrize("text, want", [
    ("ticks:AAPL", Channel("trades", "AAPL", None)),
    ("ticks:AAPL:NYSE", Channel("trades", "AAPL", "NYSE")),
    ("quotes:MSFT", Channel("quotes", "MSFT", None)),
    ("quotes:MSFT:NASDAQ", Channel("quotes", "MSFT", "NASDAQ")),
    ("ticks:BTC-USD.X_1:coinbase", Channel("trades", "BTC-USD.X_1", "coinbase")),
    ("ticks:ABCDEFGHIJKLMNOP", Channel("trades", "ABCDEFGHIJKLMNOP", None)),
])
def test_parse_and_format_round_trip(text, want):
    assert parse_channel(text) == want
    assert format_channel(want) == text
    assert want.name == text


@pytest.mark.parametrize("text, words", [
    ("ticks", "expected ticks:SYMBOL"),
    ("ticks:", "empty"),
    ("ticks:AAPL:", "empty venue"),
    ("ticks:AAPL:NYSE:X", "expected ticks:SYMBOL"),
    ("trade:AAPL", "unknown kind"),
    ("TICKS:AAPL", "unknown kind"),
    ("ticks:AA PL", "characters outside"),
    ("ticks:*", "characters outside"),
    ("ticks:AAPL*", "characters outside"),
    ("ticks:ABCDEFGHIJKLMNOPQ", "longer than 16"),
    ("ticks:AAPL:NY[SE]", "characters outside"),
    ("ticks:AAPL:stream", "Redis stream behind"),
    ("ohlc:SPY:5m", "ohlc"),
    ("tenant:t1:ticks:AAPL", "tenant"),
    ("ticks:ÄPPLE", "characters outside"),
    ("x" * 500, "longer than 64"),
    ("", "unknown kind"),
])
def test_bad_channels_are_refused_with_a_reason(text, words):
    with pytest.raises(InvalidName) as e:
        parse_channel(text)
    assert words in str(e.value)


def test_non_string_channel():
    with pytest.raises(InvalidName, match="must be a str"):
        parse_channel(42)
    with pytest.raises(InvalidName, match="table or channel"):
        channel_of(None)


def test_channel_of_table_form():
    assert channel_of("trades") == Channel("trades", None, None)
    assert channel_of("trades", "AAPL") == Channel("trades", "AAPL", None)
    assert channel_of("quotes", "MSFT", "NASDAQ") == Channel("quotes", "MSFT", "NASDAQ")
    assert channel_of("trades", venue="IEX") == Channel("trades", None, "IEX")
    assert format_channel(channel_of("trades")) == "trades:*"
    assert format_channel(channel_of("quotes", venue="IEX")) == "quotes:*:IEX"
    assert channel_of("ticks:AAPL") == Channel("trades", "AAPL", None)


def test_channel_of_rejects_mixtures_and_bad_parts():
    with pytest.raises(InvalidName, match="leave symbol= and venue= out"):
        channel_of("ticks:AAPL", "MSFT")
    with pytest.raises(InvalidName, match="unknown table or channel"):
        channel_of("bars")
    with pytest.raises(InvalidName, match="symbol"):
        channel_of("trades", "A:B")
    with pytest.raises(InvalidName, match="venue is empty"):
        channel_of("trades", "AAPL", "")
    with pytest.raises(InvalidName):
        channel_of("trades", "AAPL", "N Y")
    # every name error is an input error the caller can fix
    assert issubclass(InvalidName, InvalidInput)
