"""Vectorised analytics on 1-D float64 columns, compiled with numba.

Every function takes array-likes (numpy arrays, lists, integer columns, ...),
converts them with ``np.ascontiguousarray(x, dtype=np.float64)``, validates its
arguments (raising ``wayy.errors.InvalidInput``, a ``ValueError``, with a
clear message), and runs a
``numba.njit(cache=True, nogil=True)`` kernel that returns a new float64 array
of the same length as the input.  Kernels release the GIL, so they may run on
several threads at once.

Functions
---------
mavg(x, window)
    Trailing simple moving average; equals
    ``pandas.Series(x).rolling(window).mean()``.
pct_change(x, periods=1)
    ``x[i] / x[i - periods] - 1``; equals
    ``pandas.Series(x).pct_change(periods, fill_method=None)``.
ema(x, span=None, alpha=None)
    Exponential moving average; equals
    ``pandas.Series(x).ewm(span=span | alpha=alpha, adjust=False).mean()``.
vwap(price, size, window=None)
    Cumulative volume-weighted average price ``cumsum(p*s) / cumsum(s)``, or a
    rolling VWAP over the last ``window`` rows.
rolling_std(x, window, ddof=1)
    Rolling standard deviation; equals
    ``pandas.Series(x).rolling(window).std(ddof=ddof)``.
warmup()
    Compile (or load from the on-disk cache) every kernel, so that the first
    call on a live path pays no JIT cost.

Common conventions
------------------
* Empty input returns an empty float64 array.
* Rolling functions emit NaN for the first ``window - 1`` rows; a window
  larger than the input gives all NaN.
* Windows are complete: a window that contains a NaN or +-inf gives NaN (as
  pandas, which treats +-inf as missing and defaults to
  ``min_periods=window``).  ``pct_change`` and ``ema`` work row by row and
  follow IEEE arithmetic and pandas respectively (see their docstrings).
* Running sums are Neumaier-compensated, and the rolling variance keeps a
  bound on its rounding error and is recomputed exactly (two-pass) whenever
  that bound becomes significant, so error does not grow with the length of
  the input (see ``rolling_std``).
* Division by zero follows IEEE rules (``inf`` / NaN), never raises.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from wayy.errors import InvalidInput

__all__ = ["mavg", "pct_change", "ema", "vwap", "rolling_std", "warmup"]

_JIT = dict(cache=True, nogil=True, error_model="numpy")

_EPS = float(np.finfo(np.float64).eps)
# rolling_std rebuilds its running sum of squares exactly (two-pass) whenever
# the bound on its accumulated rounding error exceeds this fraction of it.
_STD_REL_TOL = 1e-10


# --------------------------------------------------------------------------- kernels


@numba.njit(inline="always", **_JIT)
def _neumaier_add(s, c, v):
    """Add v to the compensated sum (s, c); return the new (s, c)."""
    t = s + v
    if abs(s) >= abs(v):
        c += (s - t) + v
    else:
        c += (v - t) + s
    return t, c


@numba.njit(**_JIT)
def _window_sums(x, window):
    """Sums of x over trailing windows of `window` rows (0 = expanding).

    Rows before the first complete window are NaN, and so is every window
    holding a NaN or +-inf (pandas treats +-inf as missing in rolling
    windows).  Non-finite values are counted apart from the compensated
    finite sum, so one of them spoils only the windows that contain it.
    """
    n = x.shape[0]
    out = np.empty(n, dtype=np.float64)
    s = 0.0
    c = 0.0
    n_bad = 0
    for i in range(n):
        v = x[i]
        if math.isfinite(v):
            s, c = _neumaier_add(s, c, v)
        else:
            n_bad += 1
        if window > 0 and i >= window:
            o = x[i - window]
            if math.isfinite(o):
                s, c = _neumaier_add(s, c, -o)
            else:
                n_bad -= 1
        if (window > 0 and i < window - 1) or n_bad > 0:
            out[i] = np.nan
        else:
            out[i] = s + c
    return out


@numba.njit(**_JIT)
def _mavg_kernel(x, window):
    n = x.shape[0]
    out = _window_sums(x, window)
    run = 0  # length of the run of equal values ending at row i
    w = float(window)
    for i in range(n):
        if i > 0 and x[i] == x[i - 1]:
            run += 1
        else:
            run = 1
        if i >= window - 1:
            if run >= window and math.isfinite(x[i]):
                # Constant window: the mean is exactly the value.
                out[i] = x[i]
            else:
                out[i] = out[i] / w
    return out


@numba.njit(**_JIT)
def _pct_change_kernel(x, periods):
    n = x.shape[0]
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        j = i - periods
        if 0 <= j < n:
            out[i] = x[i] / x[j] - 1.0
        else:
            out[i] = np.nan
    return out


@numba.njit(**_JIT)
def _ema_kernel(x, alpha):
    # pandas' ewm(adjust=False, ignore_na=False).mean(), step for step;
    # like pandas, +-inf counts as missing.
    n = x.shape[0]
    out = np.empty(n, dtype=np.float64)
    if n == 0:
        return out
    old_wt_factor = 1.0 - alpha
    new_wt = alpha
    weighted = x[0] if math.isfinite(x[0]) else np.nan
    old_wt = 1.0
    out[0] = weighted
    for i in range(1, n):
        cur = x[i]
        is_obs = math.isfinite(cur)
        if weighted == weighted:
            old_wt *= old_wt_factor
            if is_obs:
                if weighted != cur:
                    weighted = (old_wt * weighted + new_wt * cur) / (old_wt + new_wt)
                old_wt = 1.0
        elif is_obs:
            weighted = cur
        out[i] = weighted
    return out


@numba.njit(**_JIT)
def _vwap_kernel(price, size, window):
    n = price.shape[0]
    ps = np.empty(n, dtype=np.float64)
    for i in range(n):
        ps[i] = price[i] * size[i]
    num = _window_sums(ps, window)
    den = _window_sums(size, window)
    for i in range(n):
        num[i] = num[i] / den[i]
    return num


@numba.njit(**_JIT)
def _rolling_std_kernel(x, window, ddof):
    n = x.shape[0]
    out = np.empty(n, dtype=np.float64)
    out[:] = np.nan
    if window > n or window <= ddof:
        return out
    w = float(window)
    denom = w - ddof
    eps = _EPS
    n_bad = 0  # non-finite values in the current window
    run = 0  # length of the run of equal values ending at row i
    stale = True  # state must be rebuilt from the window
    s = 0.0  # compensated sum (s + c) of the window
    c = 0.0
    mean = 0.0
    m2 = 0.0  # sum of squared deviations from the mean
    err = 0.0  # bound on the absolute error of m2
    for i in range(n):
        v = x[i]
        if not math.isfinite(v):
            n_bad += 1
        if i > 0 and v == x[i - 1]:
            run += 1
        else:
            run = 1
        old = 0.0
        if i >= window:
            old = x[i - window]
            if not math.isfinite(old):
                n_bad -= 1
        if i < window - 1:
            continue
        if n_bad > 0:
            stale = True
            continue
        if window == 1 or run >= window:
            out[i] = 0.0  # constant window: exactly zero (as pandas)
            stale = True
            continue
        if not stale:
            # Welford: replace `old` by `v` in the full window; the mean
            # comes from a compensated sum, so it does not drift.
            s, c = _neumaier_add(s, c, v)
            s, c = _neumaier_add(s, c, -old)
            new_mean = (s + c) / w
            delta = v - old
            spread = abs(v - new_mean) + abs(old - mean)
            m2 += delta * ((v - new_mean) + (old - mean))
            mean = new_mean
            err += 4.0 * eps * (abs(m2) + abs(delta) * (spread + 2.0 * abs(mean)))
            # Rebuild once the error bound passes 1e-10 of m2 plus the
            # uncertainty that rounding the inputs themselves puts in m2
            # (~eps*|mean|*sum|x-mean|): tighter is meaningless, and the
            # floor keeps a quiet stretch after a volatile one O(1) a row.
            floor = eps * abs(mean) * math.sqrt(w * max(m2, 0.0))
            if m2 < 0.0 or err > _STD_REL_TOL * m2 + floor:
                stale = True
        if stale:
            # Exact two-pass rebuild over x[i-window+1 .. i].
            start = i - window + 1
            s = 0.0
            c = 0.0
            for k in range(start, i + 1):
                s, c = _neumaier_add(s, c, x[k])
            mean = (s + c) / w
            m2 = 0.0
            cc = 0.0
            for k in range(start, i + 1):
                d = x[k] - mean
                m2, cc = _neumaier_add(m2, cc, d * d)
            m2 += cc
            err = 4.0 * eps * m2
            stale = False
        out[i] = math.sqrt(m2 / denom)
    return out


# --------------------------------------------------------------------------- validation


def _as_1d(x: ArrayLike, name: str = "x") -> NDArray[np.float64]:
    try:
        ndim = np.ndim(x)
    except ValueError as exc:  # numpy refuses ragged nested sequences
        raise InvalidInput(f"{name} must be a 1-dimensional array: {exc}") from None
    if ndim != 1:
        raise InvalidInput(f"{name} must be 1-dimensional, got {ndim} dimensions")
    try:
        return np.ascontiguousarray(x, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"{name} must be numeric: {exc}") from None


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _check_window(window: object, name: str = "window") -> int:
    # (past 2**62 it no longer fits the kernels' int64; no array is that long anyway)
    if not _is_int(window) or not 1 <= int(window) <= 1 << 62:  # type: ignore[call-overload]
        raise InvalidInput(f"{name} must be an int of 1 .. 2**62, got {window!r}")
    return int(window)  # type: ignore[call-overload]


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _as_float(v: object) -> Optional[float]:
    """``v`` as a float, or None when it is not a real number (or too large for one)."""
    if not _is_real(v):
        return None
    try:
        return float(v)  # type: ignore[arg-type]
    except OverflowError:  # an int beyond the float range
        return None


# --------------------------------------------------------------------------- public API


def mavg(x: ArrayLike, window: int) -> NDArray[np.float64]:
    """Trailing simple moving average over ``window`` rows.

    ``out[i] = mean(x[i-window+1 .. i])``; the first ``window - 1`` values are
    NaN, exactly like ``pandas.Series(x).rolling(window).mean()``.  A window
    containing NaN or +-inf gives NaN, and one of equal values gives exactly
    that value.  The running sum is Neumaier-compensated, so the
    result stays accurate to ~1 ulp over arbitrarily long inputs.

    Raises ``InvalidInput`` (a ``ValueError``) if ``window`` is not an int >= 1
    or ``x`` is not 1-D.
    """
    w = _check_window(window)
    a = _as_1d(x)
    return _mavg_kernel(a, w)


def pct_change(x: ArrayLike, periods: int = 1) -> NDArray[np.float64]:
    """Fractional change ``x[i] / x[i - periods] - 1``.

    The first ``periods`` values are NaN (the last ``-periods`` if negative),
    as ``pandas.Series(x).pct_change(periods, fill_method=None)``.  Division by
    zero gives ``inf`` or NaN.

    Raises ``InvalidInput`` (a ``ValueError``) if ``periods`` is not an int or
    ``x`` is not 1-D.
    """
    if not _is_int(periods) or not -(1 << 62) <= int(periods) <= 1 << 62:  # type: ignore
        raise InvalidInput(f"periods must be an int of -2**62 .. 2**62, got {periods!r}")
    a = _as_1d(x)
    return _pct_change_kernel(a, int(periods))  # type: ignore[call-overload]


def ema(
    x: ArrayLike, span: Optional[float] = None, alpha: Optional[float] = None
) -> NDArray[np.float64]:
    """Exponential moving average ``y[i] = (1-alpha)*y[i-1] + alpha*x[i]``, ``y[0] = x[0]``.

    Give exactly one of ``span`` (>= 1; ``alpha = 2 / (span + 1)``) or
    ``alpha`` (0 < alpha <= 1).  Matches
    ``pandas.Series(x).ewm(span=span, adjust=False).mean()`` (or ``alpha=``),
    including its handling of missing values (``ignore_na=False``; NaN and
    +-inf are missing): leading missing rows stay NaN; a missing row repeats
    the previous average; the next observation after ``gap`` missing rows
    gives ``y = (b*y_prev + alpha*x) / (b + alpha)`` with
    ``b = (1-alpha)**(gap+1)`` (weights by absolute position, renormalised).
    This is pandas' rule in 2.x and 3.x, except that pandas 3.0/3.1 use a
    different one when ``alpha == 0.5`` exactly (pandas issue #31178,
    a regression fixed upstream); wayy does not copy that special case.

    Raises ``InvalidInput`` (a ``ValueError``) unless exactly one valid
    ``span`` / ``alpha`` is given.
    """
    if (span is None) == (alpha is None):
        raise InvalidInput("give exactly one of span or alpha")
    if span is not None:
        s = _as_float(span)
        if s is None or not (1.0 <= s < math.inf):
            raise InvalidInput(f"span must be a finite number >= 1, got {span!r}")
        a = 2.0 / (s + 1.0)
    else:
        a = _as_float(alpha)  # type: ignore[assignment]
        if a is None or not (0.0 < a <= 1.0):
            raise InvalidInput(f"alpha must be a number with 0 < alpha <= 1, got {alpha!r}")
    arr = _as_1d(x)
    return _ema_kernel(arr, a)


def vwap(
    price: ArrayLike, size: ArrayLike, window: Optional[int] = None
) -> NDArray[np.float64]:
    """Volume-weighted average price.

    With ``window=None`` (default) the cumulative VWAP
    ``cumsum(price*size) / cumsum(size)``; with ``window=N`` the rolling VWAP
    over the last ``N`` rows, whose first ``N - 1`` values are NaN.  Rows where
    the summed size is zero give NaN (0/0) or ``inf``.  A NaN or +-inf in
    ``price * size`` or ``size`` makes every later cumulative value NaN (as
    ``np.cumsum`` would for NaN), but in the rolling form only the windows
    that contain it.

    Raises ``InvalidInput`` (a ``ValueError``) if the inputs differ in length or
    are not 1-D, or ``window`` is not None or an int >= 1.
    """
    w = 0 if window is None else _check_window(window)
    p = _as_1d(price, "price")
    s = _as_1d(size, "size")
    if p.shape[0] != s.shape[0]:
        raise InvalidInput(
            f"price and size must have equal lengths, got {p.shape[0]} and {s.shape[0]}"
        )
    return _vwap_kernel(p, s, w)


def rolling_std(x: ArrayLike, window: int, ddof: int = 1) -> NDArray[np.float64]:
    """Rolling standard deviation over ``window`` rows with ``ddof`` degrees of freedom.

    Matches ``pandas.Series(x).rolling(window).std(ddof=ddof)``: the first
    ``window - 1`` values are NaN, all values are NaN if ``window <= ddof``, a
    window of equal values gives exactly 0, and a window containing NaN or inf
    gives NaN.  Uses a sliding Welford update (mean from a compensated sum)
    that is rebuilt exactly (two-pass) whenever its rounding-error bound
    exceeds 1e-10 of the sum of squares or the uncertainty that rounding the
    inputs already implies (relative ~eps*|mean|/std), whichever is larger.
    So the result is as accurate as the inputs allow -- often far more so
    than pandas when the spread is tiny next to the price level -- at a
    bounded O(len(x)) cost.

    Raises ``InvalidInput`` (a ``ValueError``) if ``window`` is not an int >= 1,
    ``ddof`` is not an int >= 0, or ``x`` is not 1-D.
    """
    w = _check_window(window)
    if not _is_int(ddof) or int(ddof) < 0:  # type: ignore[call-overload]
        raise InvalidInput(f"ddof must be an int >= 0, got {ddof!r}")
    a = _as_1d(x)
    return _rolling_std_kernel(a, w, int(ddof))  # type: ignore[call-overload]


def warmup() -> None:
    """Compile or load every kernel for writeable and read-only float64 input."""
    a = np.arange(4, dtype=np.float64)
    r = a.copy()
    r.flags.writeable = False
    for arr in (a, r):
        _mavg_kernel(arr, 2)
        _pct_change_kernel(arr, 1)
        _ema_kernel(arr, 0.5)
        _vwap_kernel(arr, arr, 0)
        _rolling_std_kernel(arr, 2, 1)
