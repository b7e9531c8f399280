"""Cross-process atomics for numba kernels, built from llvmlite's IR builder.

Every field that one process writes and another reads concurrently goes through these:

    load_acquire(arr, i)          -> arr[i], an acquire load
    store_release(arr, i, v)      arr[i] = v, a release store
    fetch_add(arr, i, v)          -> old arr[i]; arr[i] += v atomically (seq_cst)
    compare_exchange(arr, i, e, v)-> old arr[i]; arr[i] = v iff it was e (seq_cst)
    fence_acquire() / fence_release() / fence_full()
    cpu_relax()                   spin-loop hint (x86 PAUSE; a no-op elsewhere)
    futex_wait(arr, i, expected, timeout_ns) / futex_wake(arr, i, n)   on int32 words
    clock_realtime_ns() / clock_monotonic_ns()

`arr` is a 1-D numpy array of int32/int64/uint64 (read-only arrays are accepted by the loads),
usually a view into a POSIX shared-memory mapping; `i` is an element index. Plain array loads
are not enough for a seqlock: LLVM folds two reads of the same word into one, so the version
re-check becomes a no-op and torn records pass. Atomic loads cannot be folded.

The futex calls are shared (not FUTEX_PRIVATE) so they work across processes, including on a
read-only mapping for the waiter.
"""

from __future__ import annotations

import ctypes
import platform

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from llvmlite import binding as llvm_binding
from llvmlite import ir

__all__ = [
    "load_acquire",
    "store_release",
    "fetch_add",
    "compare_exchange",
    "fence_acquire",
    "fence_release",
    "fence_full",
    "cpu_relax",
    "futex_wait",
    "futex_wake",
    "clock_realtime_ns",
    "clock_monotonic_ns",
    "as_pointer",
]


def _item_pointer(context, builder, aryty, ary_val, idx_val, idx_ty):
    ary = context.make_array(aryty)(context, builder, ary_val)
    idx = context.cast(builder, idx_val, idx_ty, types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx], wraparound=False)


def _check_array(arr) -> bool:
    return (
        isinstance(arr, types.Array)
        and arr.ndim == 1
        and isinstance(arr.dtype, types.Integer)
        and arr.dtype.bitwidth in (32, 64)
    )


@intrinsic
def load_acquire(typingctx, arr, idx):
    """Acquire load of ``arr[idx]``: later loads cannot move before it."""
    if not _check_array(arr) or not isinstance(idx, types.Integer):
        return None
    sig = arr.dtype(arr, idx)

    def codegen(context, builder, sig, args):
        ptr = _item_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.load_atomic(ptr, "acquire", sig.args[0].dtype.bitwidth // 8)

    return sig, codegen


@intrinsic
def store_release(typingctx, arr, idx, val):
    """Release store ``arr[idx] = val``: earlier stores become visible before it."""
    if not _check_array(arr) or not arr.mutable or not isinstance(idx, types.Integer):
        return None
    sig = types.void(arr, idx, arr.dtype)

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ptr = _item_pointer(context, builder, aryty, args[0], args[1], sig.args[1])
        builder.store_atomic(args[2], ptr, "release", aryty.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def fetch_add(typingctx, arr, idx, val):
    """Atomically add ``val`` to ``arr[idx]`` and return the previous value (seq_cst)."""
    if not _check_array(arr) or not arr.mutable or not isinstance(idx, types.Integer):
        return None
    sig = arr.dtype(arr, idx, arr.dtype)

    def codegen(context, builder, sig, args):
        ptr = _item_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return sig, codegen


@intrinsic
def compare_exchange(typingctx, arr, idx, expected, new):
    """Set ``arr[idx] = new`` iff it equals ``expected``; return the value seen (seq_cst).

    The exchange succeeded exactly when the returned value equals ``expected``.
    """
    if not _check_array(arr) or not arr.mutable or not isinstance(idx, types.Integer):
        return None
    sig = arr.dtype(arr, idx, arr.dtype, arr.dtype)

    def codegen(context, builder, sig, args):
        ptr = _item_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        res = builder.cmpxchg(ptr, args[2], args[3], "seq_cst", "seq_cst")
        return builder.extract_value(res, 0)

    return sig, codegen


def _make_fence(ordering: str):
    @intrinsic
    def _fence(typingctx):
        sig = types.void()

        def codegen(context, builder, sig, args):
            builder.fence(ordering)
            return context.get_dummy_value()

        return sig, codegen

    return _fence


fence_acquire = _make_fence("acquire")
fence_release = _make_fence("release")
fence_full = _make_fence("seq_cst")

_IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@intrinsic
def cpu_relax(typingctx):
    """Spin-loop hint: PAUSE on x86 (LLVM intrinsic; inline asm would abort), else nothing."""
    sig = types.void()

    def codegen(context, builder, sig, args):
        if _IS_X86:
            fnty = ir.FunctionType(ir.VoidType(), [])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


# --- syscalls through libc, as external symbols so kernels that use them stay cacheable -----

_libc = ctypes.CDLL(None, use_errno=True)
for _name in ("syscall", "clock_gettime"):
    llvm_binding.add_symbol(_name, ctypes.cast(getattr(_libc, _name), ctypes.c_void_p).value)

_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(
    platform.machine().lower(), 202
)
_FUTEX_WAIT = 0  # shared, not FUTEX_PRIVATE_FLAG: waiter and waker are different processes
_FUTEX_WAKE = 1
_CLOCK_REALTIME = 0
_CLOCK_MONOTONIC = 1


@intrinsic
def _syscall4(typingctx, nr, a1, a2, a3, a4):
    """``syscall(nr, a1, a2, a3, a4)`` with int64 arguments (pointers passed as integers)."""
    sig = types.int64(types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [i64], var_arg=True)
        fn = cgutils.get_or_insert_function(builder.module, fnty, "syscall")
        return builder.call(fn, list(args))

    return sig, codegen


@intrinsic
def as_pointer(typingctx, addr):
    """``addr`` (an int64 address) as a void pointer, for ``numba.carray``: a view made so has
    no reference count to update, which a slice of an array has (two atomic operations),
    and costs nothing to make. Only for memory an array the caller holds keeps mapped."""
    sig = types.voidptr(types.int64)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return sig, codegen


@intrinsic
def _clock_gettime(typingctx, clk, tsptr):
    sig = types.int32(types.int32, types.int64)

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        ptr_t = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(i32, [i32, ptr_t])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "clock_gettime")
        return builder.call(fn, [args[0], builder.inttoptr(args[1], ptr_t)])

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def _clock_ns(clk):
    ts = np.zeros(2, np.int64)
    _clock_gettime(np.int32(clk), ts.ctypes.data)
    return ts[0] * 1_000_000_000 + ts[1]


@numba.njit(cache=True, nogil=True)
def clock_realtime_ns() -> int:
    """Wall-clock time in integer nanoseconds since the epoch (UTC)."""
    return _clock_ns(_CLOCK_REALTIME)


@numba.njit(cache=True, nogil=True)
def clock_monotonic_ns() -> int:
    """Monotonic clock in integer nanoseconds (for deadlines and latency)."""
    return _clock_ns(_CLOCK_MONOTONIC)


@numba.njit(cache=True, nogil=True)
def futex_wait(arr, idx, expected, timeout_ns) -> int:
    """Sleep while the int32 word ``arr[idx]`` equals ``expected``, at most ``timeout_ns``.

    Returns 0 when woken (or the value already differed), -1 on timeout or interruption;
    callers always re-check their condition.
    """
    ts = np.zeros(2, np.int64)
    ts[0] = timeout_ns // 1_000_000_000
    ts[1] = timeout_ns % 1_000_000_000
    addr = arr.ctypes.data + idx * 4
    r = _syscall4(_SYS_FUTEX, addr, _FUTEX_WAIT, expected, ts.ctypes.data)
    return 0 if r == 0 else -1


@numba.njit(cache=True, nogil=True)
def futex_wake(arr, idx, n) -> int:
    """Wake up to ``n`` processes waiting on the int32 word ``arr[idx]``; returns how many."""
    addr = arr.ctypes.data + idx * 4
    return _syscall4(_SYS_FUTEX, addr, _FUTEX_WAKE, n, 0)
