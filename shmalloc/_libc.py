"""libc and CPU entry points reachable from compiled code.

The zone lock is a POSIX named semaphore; compiled kernels call glibc's
``sem_trywait``/``sem_wait``/``sem_post`` on the ``sem_t *`` that ``sem_open``
returned in this process.  They are declared as LLVM external symbols inside
numba intrinsics, not as ctypes function objects: a ctypes pointer is baked
into the machine code as a constant and defeats numba's on-disk cache, while a
symbol name is resolved again by the dynamic linker whenever the cached object
is loaded.

Timestamps: lock_stat needs two timestamps per acquisition.  Measured on this
machine from compiled code: ``clock_gettime(CLOCK_MONOTONIC)`` 24 ns,
``rdtscp`` 18 ns, ``rdtsc`` 10 ns; for the cpu number ``sched_getcpu`` 2 ns
(glibc reads the rseq area) and ``rdpid`` 0.5 ns.  So on x86-64 the hot path
reads the TSC with ``rdtsc`` (what the kernel's ``local_clock`` does too) and
the machine header records the TSC frequency, measured against
``CLOCK_MONOTONIC`` when the machine is created; the bounce counters take the
cpu from ``rdpid`` where the CPU has it.  Elsewhere
``clock_gettime`` is used and a tick is a nanosecond.

With ``NUMBA_DISABLE_JIT=1`` intrinsics cannot run, so every function here has
a ctypes/``time`` twin with the same behaviour and the twins are exported.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import time

import numpy as np

from .config import JIT_DISABLED

HAVE_TSC = platform.machine() in ("x86_64", "AMD64")


def _cpu_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return flag in line.split()
    except OSError:
        pass
    return False


#: RDPID reads TSC_AUX, where Linux keeps the cpu number: 0.5 ns, no call.
HAVE_RDPID = HAVE_TSC and _cpu_has("rdpid")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sem_open.restype = ctypes.c_void_p
_libc.sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.sem_close.argtypes = [ctypes.c_void_p]
for _name in ("sem_trywait", "sem_wait", "sem_post"):
    getattr(_libc, _name).argtypes = [ctypes.c_void_p]
    getattr(_libc, _name).restype = ctypes.c_int


_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mincore.restype = ctypes.c_int


def mincore_resident(addr: int, length: int, page_size: int) -> int:
    """How many pages of the mapping at ``addr`` are resident (mincore(2)):
    for a shared tmpfs mapping, whether the host still backs them."""
    return int(mincore_vector(addr, length, page_size).sum())


def mincore_vector(addr: int, length: int, page_size: int) -> np.ndarray:
    """mincore(2) of the mapping at ``addr``: 1 per resident page, else 0."""
    vec = np.zeros((length + page_size - 1) // page_size, np.uint8)
    if _libc.mincore(addr, length, vec.ctypes.data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mincore: {os.strerror(err)}")
    return vec & 1


def sem_pointer(name: str) -> int:
    """Open the named semaphore ``name`` in this process and return its sem_t*.

    glibc maps each named semaphore once per process and reference-counts the
    mapping, so this pointer and posix_ipc's own handle share one ``sem_t``.
    """
    ptr = _libc.sem_open(name.encode(), 0)
    if not ptr:
        err = ctypes.get_errno()
        raise OSError(err, f"sem_open({name}): {os.strerror(err)}")
    return int(ptr)


def sem_release_pointer(ptr: int) -> None:
    _libc.sem_close(ctypes.c_void_p(ptr))


if JIT_DISABLED:
    # --- pure-Python twins -------------------------------------------------
    def sem_trywait(sem):
        return _libc.sem_trywait(int(sem))

    def sem_wait(sem):
        return _libc.sem_wait(int(sem))

    def sem_post(sem):
        return _libc.sem_post(int(sem))

    def ticks():
        return time.perf_counter_ns()

    def current_cpu():
        return _libc.sched_getcpu()

    def atomic_cas(arr, idx, old, new):
        """Compare-and-swap ``arr[idx]``; returns the previous value."""
        prev = int(arr[idx])
        if prev == old:
            arr[idx] = new
        return prev

    def atomic_add(arr, idx, delta):
        prev = int(arr[idx])
        arr[idx] = prev + delta
        return prev

    def bit_length(v):
        return int(v).bit_length()

    def atomic_xchg(arr, idx, new):
        prev = int(arr[idx])
        arr[idx] = new
        return prev

    def atomic_or(arr, idx, bits):
        prev = int(arr[idx])
        arr[idx] = prev | bits
        return prev

else:
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    _i32 = ir.IntType(32)
    _i64 = ir.IntType(64)
    _voidp = ir.IntType(8).as_pointer()

    def _sem_call(symbol):
        """An intrinsic ``int symbol(sem_t *)`` taking the pointer as int64."""

        @intrinsic
        def _call(typingctx, sem):
            sig = types.int32(types.int64)

            def codegen(context, builder, signature, args):
                fnty = ir.FunctionType(_i32, [_voidp])
                fn = cgutils.get_or_insert_function(builder.module, fnty, symbol)
                return builder.call(fn, [builder.inttoptr(args[0], _voidp)])

            return sig, codegen

        return _call

    sem_trywait = _sem_call("sem_trywait")
    sem_wait = _sem_call("sem_wait")
    sem_post = _sem_call("sem_post")

    def _clock_gettime_ns(builder):
        ts_t = ir.LiteralStructType([_i64, _i64])
        ts = cgutils.alloca_once(builder, ts_t)
        fnty = ir.FunctionType(_i32, [_i32, ts_t.as_pointer()])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "clock_gettime")
        builder.call(fn, [ir.Constant(_i32, 1), ts])          # CLOCK_MONOTONIC
        sec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 0))
        nsec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 1))
        return builder.add(builder.mul(sec, ir.Constant(_i64, 1_000_000_000)), nsec)

    def _rdtsc(builder):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_i64, []),
                                            "llvm.x86.rdtsc")
        return builder.call(fn, [])

    @intrinsic
    def ticks(typingctx):
        """A timestamp in ticks (TSC cycles on x86-64, else nanoseconds)."""
        sig = types.int64()

        def codegen(context, builder, signature, args):
            if HAVE_TSC:
                return _rdtsc(builder)
            return _clock_gettime_ns(builder)

        return sig, codegen

    @intrinsic
    def current_cpu(typingctx):
        """The cpu we run on: ``rdpid`` where the CPU has it (Linux keeps
        ``node << 12 | cpu`` in TSC_AUX), else glibc's ``sched_getcpu``."""
        sig = types.int64()

        def codegen(context, builder, signature, args):
            if HAVE_RDPID:
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_i32, []),
                                                    "llvm.x86.rdpid")
                aux = builder.zext(builder.call(fn, []), _i64)
                return builder.and_(aux, ir.Constant(_i64, 0xFFF))
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_i32, []),
                                                "sched_getcpu")
            return builder.sext(builder.call(fn, []), _i64)

        return sig, codegen

    @intrinsic
    def bit_length(typingctx, v):
        """``int.bit_length`` for a non-negative int64: 64 - ctlz(v)."""
        sig = types.int64(types.int64)

        def codegen(context, builder, signature, args):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_i64, [_i64, ir.IntType(1)]), "llvm.ctlz.i64")
            lz = builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 0)])
            return builder.sub(ir.Constant(_i64, 64), lz)

        return sig, codegen

    def _item_pointer(context, builder, signature, args):
        """Address of ``arr[idx]`` for an intrinsic whose first two arguments
        are an int64 array and an index."""
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        return cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]],
                                        wraparound=False)

    @intrinsic
    def atomic_cas(typingctx, arr, idx, old, new):
        """Sequentially consistent compare-and-swap of ``arr[idx]`` (int64 array).

        Returns the value found; the swap happened iff it equals ``old``.
        The arrays live in shared memory, so this is atomic across processes.
        """
        sig = types.int64(arr, types.int64, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            ptr = _item_pointer(context, builder, signature, args)
            res = builder.cmpxchg(ptr, args[2], args[3], "seq_cst", "seq_cst")
            return builder.extract_value(res, 0)

        return sig, codegen

    def _atomic_rmw(op: str, doc: str):
        """An intrinsic ``f(arr, idx, value)``: atomic ``op`` on ``arr[idx]``
        across processes, returning the old value."""

        @intrinsic
        def rmw(typingctx, arr, idx, value):
            sig = types.int64(arr, types.int64, types.int64)

            def codegen(context, builder, signature, args):
                ptr = _item_pointer(context, builder, signature, args)
                return builder.atomic_rmw(op, ptr, args[2], "seq_cst")

            return sig, codegen

        rmw.__doc__ = doc
        return rmw

    atomic_xchg = _atomic_rmw("xchg", "Atomic exchange of ``arr[idx]``; returns the old value.")
    atomic_add = _atomic_rmw("add", "Atomic ``arr[idx] += value``; returns the old value.")
    atomic_or = _atomic_rmw("or", "Atomic ``arr[idx] |= value`` (a ``lock or``, or a ``lock "
                            "bts`` for one bit whose old value is used); returns the old value.")


def measure_ticks_per_sec(ticks_fn, interval_s: float = 0.02) -> int:
    """Ticks per second of ``ticks_fn`` against CLOCK_MONOTONIC."""
    if JIT_DISABLED or not HAVE_TSC:
        return 1_000_000_000
    ticks_fn()                                    # compile or load it first
    t0, c0 = time.perf_counter_ns(), ticks_fn()
    while time.perf_counter_ns() - t0 < interval_s * 1e9:
        pass
    t1, c1 = time.perf_counter_ns(), ticks_fn()
    return int((c1 - c0) * 1e9 / (t1 - t0))


def die_with_parent() -> None:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)``: a child process dies with the
    process that started it, so a killed launcher leaves no orphans waiting
    on a zone lock forever."""
    PR_SET_PDEATHSIG = 1
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
