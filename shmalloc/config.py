"""Compiler flags and model constants, in one place.

Every compiled kernel in the project is decorated with :func:`jit` from this
module, so the numba options (nopython, the on-disk cache, no bounds checks)
are chosen once.  ``NUMBA_DISABLE_JIT=1`` turns every kernel into plain Python;
the libc entry points in :mod:`shmalloc._libc` switch to ctypes then.

The constants are the kernel's, with the kernel's names where one exists.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import numba

#: nopython mode is njit's only mode.  ``cache=True`` keeps compiled kernels
#: on disk (see :func:`_choose_cache_dir`) so worker processes and later runs
#: start at once; ``_nrt=False`` compiles without numba's reference counting
#: (kernels never allocate: every array comes from the caller), which an
#: incref/decref pair per array per inlined call otherwise costs;
#: ``boundscheck=False`` because the shared arrays are sized by the layout and
#: every index is derived from it; ``error_model="numpy"`` drops the
#: division-by-zero checks.
JIT_OPTIONS = dict(nogil=True, cache=True, _nrt=False, boundscheck=False,
                   error_model="numpy")

JIT_DISABLED = bool(numba.config.DISABLE_JIT)

#: Packages whose sources hold compiled kernels.
KERNEL_PACKAGES = ("shmalloc", "reporter", "hypervisor_stub")


def _kernel_source_hash() -> str:
    """A hash of every source file that compiled code may come from."""
    root = pathlib.Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pkg in KERNEL_PACKAGES:
        for path in sorted((root / pkg).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _choose_cache_dir() -> None:
    """numba's cache checks only the timestamp of the file a kernel is
    defined in, but an inlined helper from another file is compiled into it:
    editing freelist.py would leave stale code in the cached bench loop.  So,
    unless NUMBA_CACHE_DIR says otherwise, the cache lives in a directory named
    after a hash of all kernel sources, and any source change starts afresh."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    root = pathlib.Path(__file__).resolve().parent.parent
    numba.config.CACHE_DIR = str(root / ".numba_cache" / _kernel_source_hash())


_choose_cache_dir()


def jit(fn):
    """Compile ``fn`` with the project's numba options: a loop or an entry
    point called from Python."""
    return numba.njit(**JIT_OPTIONS)(fn)


def inline(fn):
    """Compile ``fn`` and inline it into every compiled caller.

    The allocator is written as small helpers (one per kernel function), but
    a call between separately compiled numba functions passes each array as a
    reference-counted struct: measured on this machine, an order-0 alloc+free
    cost 82 ns as calls and 8 ns as one flat loop.  Inlining at numba-IR level
    lets the compiler see one function and drop the reference counting, so the
    helpers cost nothing.  Still callable from Python like any ``jit``."""
    return numba.njit(inline="always", **JIT_OPTIONS)(fn)


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

#: sem_trywait retries before sleeping in sem_wait on a contended zone lock
#: (measured: see README, "Choosing --lock-spin").
DEFAULT_LOCK_SPIN = 1000
