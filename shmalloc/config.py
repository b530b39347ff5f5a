"""Compiler flags and model constants, in one place.

Every compiled kernel in the project is decorated with :func:`jit` from this
module, so the numba options (nopython, the on-disk cache, no bounds checks)
are chosen once.  ``NUMBA_DISABLE_JIT=1`` turns every kernel into plain Python;
the libc entry points in :mod:`shmalloc._libc` switch to ctypes then.

The constants are the kernel's, with the kernel's names where one exists.
"""

from __future__ import annotations

import numba
from numba.core import types
from numba.core.registry import CPUDispatcher

from . import jitcache

#: nopython mode is njit's only mode.  The on-disk cache (switched on per kernel,
#: :mod:`shmalloc.jitcache` for where and how) keeps compiled kernels so
#: worker processes and later runs start at once; ``_nrt=False`` compiles
#: without numba's reference counting (kernels never allocate: every array
#: comes from the caller), which an incref/decref pair per array per call
#: otherwise costs and which would keep LLVM from merging inlined helpers;
#: ``boundscheck=False`` because the shared arrays are sized by the layout and
#: every index is derived from it; ``error_model="numpy"`` drops the
#: division-by-zero checks.
JIT_OPTIONS = dict(nopython=True, nogil=True, _nrt=False, boundscheck=False,
                   error_model="numpy")

JIT_DISABLED = bool(numba.config.DISABLE_JIT)


class _Kernel(CPUDispatcher):
    """A kernel or helper; a helper's callers do not specialise it on the
    constants they pass.

    numba compiles a function called from compiled code once per distinct
    argument *type*, and a constant argument has its own literal type
    (``Literal[int](1)``): ``zone_lock(zs, agent, zone, CALLER_FREE)`` and
    ``zone_lock(..., CALLER_ALLOC)`` were two compilations of the whole lock,
    141 compilations of 94 functions in all, 99 without.  The helpers are
    inlined into their callers, where LLVM folds the constants anyway, so
    specialising on them only costs compile time: measured, 23.5 s of CPU to
    compile every kernel with literal specialisation, 17.6 s without.
    """

    def get_call_template(self, args, kws):
        return super().get_call_template(tuple(types.unliteral(a) for a in args), kws)


#: every kernel and helper of the project (for :func:`forbid_compile`)
KERNELS: list = []


def _compile(fn, **extra):
    if JIT_DISABLED:
        return fn
    disp = _Kernel(py_func=fn, locals={}, targetoptions={**JIT_OPTIONS, **extra})
    if jitcache.ENABLED:
        jitcache.enable(disp)
    KERNELS.append(disp)
    return disp


def forbid_compile() -> None:
    """From now on, calling a kernel with a signature not compiled yet
    fails instead of compiling (the test suite's check that nothing
    compiles in a run's processes)."""
    for disp in KERNELS:
        disp._can_compile = False        # disable_compile() insists on a signature


def jit(fn):
    """Compile ``fn`` with the project's numba options: a loop or an entry
    point called from Python."""
    return _compile(fn)


def inline(fn):
    """Compile ``fn`` once and inline it into every compiled caller.

    The allocator is written as small helpers (one per kernel function), and
    a call between separately compiled numba functions costs: measured on
    this machine, an order-0 alloc+free took 98 ns through calls and 41 ns
    inlined (``shmalloc bench``, lock_stat off).  ``forceinline`` marks the
    helper ``alwaysinline`` for LLVM, which inlines it wherever it links the
    helper into a caller; ``shmalloc bench`` gives the same ns per pair as
    numba's own ``inline="always"``, which inlines numba IR instead and so
    types and compiles every helper again at every call site, nested: 215 s
    of CPU to compile every kernel that way, 18 s this way.  Still callable
    from Python like any ``jit``."""
    return _compile(fn, forceinline=True)


PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT            # 4 KiB pages, as on x86
WORDS_PER_PAGE = PAGE_SIZE // 8        # guest memory is viewed as int64 words

DEFAULT_MAX_ORDER = 11                 # orders 0..10, blocks up to 4 MiB
MAX_ORDER_LIMIT = 16                   # room in the zone struct for free_area[]
PAGEBLOCK_ORDER = 9                    # 2 MiB pageblocks (HPAGE_PMD_ORDER)
MAX_ZONES = 64
MAX_WORKERS = 256

# The kernel's per-cpu page list defaults (mm/page_alloc.c, zone_batchsize()
# and pageset_set_high_and_batch(): batch 63, high = 6 * batch).
DEFAULT_PCP_BATCH = 63
DEFAULT_PCP_HIGH = 378

# Free page reporting defaults (mm/page_reporting.h / page_reporting.c, 5.7).
PAGE_REPORTING_CAPACITY = 32
PAGE_REPORTING_DELAY_S = 2.0
PAGE_REPORTING_HWM = 32        # Duyck v9: request at nr_free >= reported + HWM
BITMAP_MAX_PAGES = 16          # Nitesh v12: PAGE_REPORTING_MAX_PAGES, batch and wake-up
#: callback's free page virtqueue, in entries: QEMU's size for it
#: (virtio_add_queue(vdev, VIRTQUEUE_MAX_SIZE, ...) in hw/virtio/virtio-balloon.c)
FREE_PAGE_VQ_SIZE = 1024

#: sem_trywait retries before sleeping in sem_wait on a contended zone lock
#: (measured: see docs/engine.md, "How long to spin").
DEFAULT_LOCK_SPIN = 1000
