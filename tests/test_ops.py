"""Tests for wayy.ops: each op against pandas (or an exact numpy reference) and edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from wayy import ops


def random_walk(n: int, seed: int, start: float = 100.0, step: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return start + np.cumsum(rng.normal(0.0, step, n))


def exact_std(x: np.ndarray, window: int, ddof: int = 1) -> np.ndarray:
    """Two-pass rolling std, one window at a time."""
    out = np.full(len(x), np.nan)
    if window <= len(x):
        out[window - 1 :] = sliding_window_view(x, window).std(axis=1, ddof=ddof)
    return out


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float = 0.0) -> None:
    assert actual.dtype == np.float64
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


@pytest.fixture(scope="module")
def walk_1e6() -> np.ndarray:
    return random_walk(1_000_000, seed=1)


@pytest.fixture(scope="module")
def uniform_1e5() -> np.ndarray:
    return np.random.default_rng(2).uniform(100.0, 200.0, 100_000)


# --------------------------------------------------------------------------- mavg


@pytest.mark.parametrize("window", [1, 2, 20, 1000])
def test_mavg_matches_pandas_on_long_random_walk(walk_1e6, window):
    expected = pd.Series(walk_1e6).rolling(window).mean().to_numpy()
    assert_close(ops.mavg(walk_1e6, window), expected, rtol=1e-9)


def test_mavg_nan_and_inf_spoil_only_their_windows():
    x = np.array([1, 2, np.nan, 4, 5, np.inf, 7, 8, -np.inf, 10, 11, 12.0])
    got = ops.mavg(x, 2)
    assert_close(got, pd.Series(x).rolling(2).mean().to_numpy(), rtol=1e-15)
    assert np.isnan(got[2]) and np.isnan(got[3]) and got[4] == 4.5 and got[-1] == 11.5


def test_mavg_constant_window_is_exact():
    x = np.concatenate([np.full(50, 0.1), np.full(50, 1e9 + 0.3), np.full(50, 0.1)])
    got = ops.mavg(x, 10)
    np.testing.assert_array_equal(got[59:100], np.full(41, 1e9 + 0.3))
    np.testing.assert_array_equal(got[109:], np.full(41, 0.1))


# --------------------------------------------------------------------------- pct_change


@pytest.mark.parametrize("periods", [1, 3, 250, -2])
def test_pct_change_matches_pandas(periods):
    x = random_walk(10_000, seed=3)
    expected = pd.Series(x).pct_change(periods, fill_method=None).to_numpy()
    assert_close(ops.pct_change(x, periods), expected, rtol=1e-15, atol=1e-17)


def test_pct_change_default_and_zero_division():
    got = ops.pct_change([2, 4, 0, 5, 0, 0])
    np.testing.assert_array_equal(got[:5], [np.nan, 1.0, -1.0, np.inf, -1.0])
    assert np.isnan(got[5])  # 0/0


def test_pct_change_periods_beyond_length_is_all_nan():
    assert np.isnan(ops.pct_change([1.0, 2.0, 3.0], 3)).all()


# --------------------------------------------------------------------------- ema


@pytest.mark.parametrize("span", [1, 2, 10, 30.5, 500])
def test_ema_span_matches_pandas(walk_1e6, span):
    x = walk_1e6[:100_000]
    expected = pd.Series(x).ewm(span=span, adjust=False).mean().to_numpy()
    assert_close(ops.ema(x, span=span), expected, rtol=1e-12)


@pytest.mark.parametrize("alpha", [0.01, 0.3, 0.5, 1.0])
def test_ema_alpha_matches_pandas(alpha):
    x = random_walk(10_000, seed=4)
    expected = pd.Series(x).ewm(alpha=alpha, adjust=False).mean().to_numpy()
    assert_close(ops.ema(x, alpha=alpha), expected, rtol=1e-12)
    assert_close(ops.ema(x, span=2.0 / alpha - 1.0), expected, rtol=1e-12)


def test_ema_missing_values_documented_rule():
    # Leading missing rows stay NaN, a missing row repeats the last average, and after a
    # gap of g missing rows: y = (b*y_prev + a*x) / (b + a) with b = (1-a)**(g+1).
    a = 0.3
    x = np.array([np.nan, np.inf, 1.0, 2.0, np.nan, -np.inf, 5.0, 6.0, np.nan])
    y2 = 1.0
    y3 = (1 - a) * y2 + a * 2.0
    b = (1 - a) ** 3
    y6 = (b * y3 + a * 5.0) / (b + a)
    y7 = (1 - a) * y6 + a * 6.0
    expected = np.array([np.nan, np.nan, y2, y3, y3, y3, y6, y7, y7])
    got = ops.ema(x, alpha=a)
    assert_close(got, expected, rtol=1e-14)
    # Same as pandas (which also treats +-inf as missing) for alpha != 0.5.
    assert_close(got, pd.Series(x).ewm(alpha=a, adjust=False).mean().to_numpy(), rtol=1e-14)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"span": 10, "alpha": 0.1},
        {"span": 0.5},
        {"span": float("nan")},
        {"span": float("inf")},
        {"span": "10"},
        {"span": True},
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"alpha": -0.1},
        {"alpha": float("nan")},
    ],
)
def test_ema_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        ops.ema([1.0, 2.0, 3.0], **kwargs)


# --------------------------------------------------------------------------- vwap


def test_vwap_cumulative_matches_reference():
    rng = np.random.default_rng(5)
    price = random_walk(100_000, seed=6)
    size = rng.integers(1, 1000, 100_000)
    expected = np.cumsum(price * size) / np.cumsum(size)
    assert_close(ops.vwap(price, size), expected, rtol=1e-12)


@pytest.mark.parametrize("window", [1, 2, 50, 5000])
def test_vwap_rolling_matches_pandas(window):
    rng = np.random.default_rng(7)
    price = random_walk(100_000, seed=8)
    size = rng.integers(1, 1000, 100_000).astype(np.float64)
    ps = pd.Series(price * size).rolling(window).sum()
    expected = (ps / pd.Series(size).rolling(window).sum()).to_numpy()
    assert_close(ops.vwap(price, size, window=window), expected, rtol=1e-9)
    if window == 1:
        np.testing.assert_allclose(ops.vwap(price, size, window=1), price, rtol=1e-15)


def test_vwap_small_example_and_zero_size():
    price = [10.0, 11.0, 12.0, 13.0]
    size = [0, 1, 3, 0]
    got = ops.vwap(price, size)
    assert np.isnan(got[0])  # 0 / 0
    np.testing.assert_allclose(got[1:], [11.0, 11.75, 11.75])
    rolling = ops.vwap(price, size, window=2)
    assert np.isnan(rolling[0])
    np.testing.assert_allclose(rolling[1:], [11.0, 11.75, 12.0])


def test_vwap_nan_spoils_later_cumulative_but_only_its_rolling_windows():
    price = np.array([10.0, np.nan, 12.0, 13.0, 14.0])
    size = np.ones(5)
    assert np.isnan(ops.vwap(price, size)[1:]).all()
    np.testing.assert_allclose(ops.vwap(price, size, window=2), [np.nan, np.nan, np.nan, 12.5, 13.5])


def test_vwap_rejects_unequal_lengths_and_bad_window():
    with pytest.raises(ValueError, match="equal lengths"):
        ops.vwap([1.0, 2.0, 3.0], [1.0, 2.0])
    for window in (0, -3, 2.5, "2", True):
        with pytest.raises(ValueError, match="window"):
            ops.vwap([1.0, 2.0], [1.0, 1.0], window=window)


# --------------------------------------------------------------------------- rolling_std


@pytest.mark.parametrize("window", [2, 3, 20, 500, 20_000])
@pytest.mark.parametrize("ddof", [0, 1])
def test_rolling_std_matches_pandas_on_prices(uniform_1e5, window, ddof):
    expected = pd.Series(uniform_1e5).rolling(window).std(ddof=ddof).to_numpy()
    assert_close(ops.rolling_std(uniform_1e5, window, ddof=ddof), expected, rtol=1e-7)


@pytest.mark.parametrize("window", [2, 20, 500])
def test_rolling_std_exact_on_quiet_random_walk(window):
    # Tiny steps on a price level of 100: pandas' sliding update loses digits here, so
    # compare with an exact per-window two-pass computation instead.
    x = random_walk(50_000, seed=9, step=0.01)
    assert_close(ops.rolling_std(x, window), exact_std(x, window), rtol=1e-8)


def test_rolling_std_quiet_stretch_after_volatile_one():
    rng = np.random.default_rng(10)
    x = np.concatenate([rng.uniform(0.0, 1e6, 2000), 500.0 + rng.normal(0.0, 1e-3, 20_000)])
    for window in (10, 1000):
        assert_close(ops.rolling_std(x, window), exact_std(x, window), rtol=1e-6)


def test_rolling_std_constant_windows_are_zero():
    x = np.repeat([150.25, 1e9 + 0.1, 99.99], 100)
    got = ops.rolling_std(x, 30)
    assert (got[129:200] == 0.0).all() and (got[229:] == 0.0).all()
    assert (got[100:129] > 0).all()


def test_rolling_std_window_and_ddof_edges():
    x = np.arange(10.0)
    np.testing.assert_array_equal(ops.rolling_std(x, 1, ddof=0), np.zeros(10))
    assert np.isnan(ops.rolling_std(x, 1)).all()  # window <= ddof
    assert np.isnan(ops.rolling_std(x, 2, ddof=2)).all()
    np.testing.assert_allclose(ops.rolling_std(x, 2)[1:], np.full(9, np.sqrt(0.5)))
    for ddof in (-1, 1.0, None):
        with pytest.raises(ValueError, match="ddof"):
            ops.rolling_std(x, 3, ddof=ddof)


def test_rolling_std_non_finite_values_match_pandas():
    x = np.array([1, 2, np.nan, 4, 5, np.inf, 7, 8, -np.inf, 10, 11, 12.0])
    assert_close(ops.rolling_std(x, 2), pd.Series(x).rolling(2).std().to_numpy(), rtol=1e-14)


# --------------------------------------------------------------------------- common edges

WINDOWED = [
    lambda x, w: ops.mavg(x, w),
    lambda x, w: ops.rolling_std(x, w),
    lambda x, w: ops.vwap(x, np.ones(len(x)), window=w),
]
ALL_OPS = WINDOWED + [
    lambda x, w: ops.pct_change(x, w),
    lambda x, w: ops.ema(x, span=w),
    lambda x, w: ops.vwap(x, np.ones(len(x))),
]


@pytest.mark.parametrize("op", ALL_OPS)
def test_empty_input_returns_empty_float64(op):
    for empty in ([], np.array([], dtype=np.int64), np.empty(0)):
        got = op(empty, 3)
        assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (0,)


@pytest.mark.parametrize("op", WINDOWED)
def test_window_larger_than_input_is_all_nan(op):
    got = op(np.arange(5.0), 6)
    assert got.shape == (5,) and np.isnan(got).all()


def test_window_of_one_and_full_length():
    x = random_walk(100, seed=11)
    np.testing.assert_array_equal(ops.mavg(x, 1), x)
    full = ops.mavg(x, 100)
    assert np.isnan(full[:99]).all() and full[99] == pytest.approx(x.mean(), rel=1e-14)


@pytest.mark.parametrize("op", WINDOWED)
@pytest.mark.parametrize("window", [0, -1, 2.0, "3", True, [2]])
def test_bad_window_raises(op, window):
    with pytest.raises(ValueError, match="window"):
        op(np.arange(5.0), window)


def test_window_none_raises_except_for_cumulative_vwap():
    for fn in (ops.mavg, ops.rolling_std):
        with pytest.raises(ValueError, match="window"):
            fn(np.arange(5.0), None)
    assert ops.vwap(np.arange(5.0), np.ones(5), window=None).shape == (5,)


def test_pct_change_rejects_non_int_periods():
    for periods in (1.0, "1", None, True):
        with pytest.raises(ValueError, match="periods"):
            ops.pct_change([1.0, 2.0], periods)


@pytest.mark.parametrize("op", ALL_OPS)
def test_integer_and_list_input_accepted(op):
    ints = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3], dtype=np.int64)
    expected = op(ints.astype(np.float64), 3)
    for x in (ints, ints.tolist(), ints.astype(np.int32), ints.astype(np.uint16)):
        assert_close(op(x, 3), expected, rtol=0.0)
    assert_close(op(ints, np.int64(3)), expected, rtol=0.0)  # numpy integer window


@pytest.mark.parametrize("op", ALL_OPS)
def test_readonly_and_strided_input(op):
    base = random_walk(200, seed=12)
    expected = op(base[::2].copy(), 5)
    readonly = base[::2].copy()
    readonly.flags.writeable = False
    assert_close(op(base[::2], 5), expected, rtol=0.0)
    assert_close(op(readonly, 5), expected, rtol=0.0)


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), 5.0, ["a", "b"]])
def test_non_1d_or_non_numeric_input_raises(bad):
    with pytest.raises(ValueError):
        ops.mavg(bad, 2)


BAD_CALLS = [
    ("mavg window", lambda: ops.mavg([1.0, 2.0], 0)),
    ("mavg 2-D", lambda: ops.mavg(np.zeros((3, 3)), 2)),
    ("mavg strings", lambda: ops.mavg(["a", "b"], 2)),
    ("mavg ragged", lambda: ops.mavg([[1.0], [1.0, 2.0]], 2)),
    ("mavg huge int", lambda: ops.mavg([10**400, 1], 1)),
    ("pct_change periods", lambda: ops.pct_change([1.0, 2.0], 1.0)),
    ("ema neither", lambda: ops.ema([1.0, 2.0])),
    ("ema span", lambda: ops.ema([1.0, 2.0], span=0.5)),
    ("ema huge span", lambda: ops.ema([1.0, 2.0], span=10**400)),
    ("ema alpha", lambda: ops.ema([1.0, 2.0], alpha=2.0)),
    ("vwap lengths", lambda: ops.vwap([1.0, 2.0, 3.0], [1.0, 2.0])),
    ("vwap window", lambda: ops.vwap([1.0, 2.0], [1.0, 1.0], window="2")),
    ("rolling_std ddof", lambda: ops.rolling_std([1.0, 2.0, 3.0], 2, ddof=-1)),
]


@pytest.mark.parametrize("what,call", BAD_CALLS, ids=[w for w, _ in BAD_CALLS])
def test_bad_arguments_raise_invalid_input(what, call):
    # a WayyError for `except wayy.WayyError`, and still a ValueError for older callers
    from wayy.errors import InvalidInput, WayyError

    with pytest.raises(InvalidInput) as info:
        call()
    assert isinstance(info.value, WayyError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_public_names_and_warmup():
    assert set(ops.__all__) == {"mavg", "pct_change", "ema", "vwap", "rolling_std", "warmup"}
    for name in ops.__all__:
        assert getattr(ops, name).__doc__
        assert name in ops.__doc__
    ops.warmup()
