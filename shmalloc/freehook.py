"""``--free-hook-ns N``: a known cost on the free path, for calibration.

Every free of a block to the buddy lists (``free_one_page`` with ``notify``:
a worker's free and the pcp lists' bulk frees, not a reporting design's
put-backs) busy-waits N ns on the TSC inside the zone lock, where Duyck's
boundary bookkeeping and every design's ``page_reporting_notify_free`` sit.
It gives ``shmalloc compare`` a cost it must recover (its measured slowdown
and its attributed hook time), and it answers the 2019 reviewers' question
the other way round: how much work can the free path take on before
throughput shows it?

The spin counts only time the process ran: two TSC reads further apart than
a microsecond (a preemption, an interrupt, the vCPU descheduled) are not
counted, since in the kernel this code would run under ``spin_lock_irqsave``
and could not be preempted.  Without that, on a loaded machine every hook
would end early by the time the process sat off its cpu, and its cost would
depend on the load.  Each spin adds the ticks it counted and one execution
to the zone's ``Z_FREE_HOOK_TICKS`` / ``Z_FREE_HOOK_CALLS`` (under the zone
lock, like lock_stat), so the time attributed to the hook is measured, not
N times an assumed count.

N is converted to ticks once, when the machine is created
(``H_FREE_HOOK_TICKS``); 0 (the default) costs one load and a branch.
"""

from __future__ import annotations

from ._libc import ticks
from .config import inline
from .layout import H_FREE_HOOK_TICKS, H_TICKS_PER_SEC, Z_FREE_HOOK_CALLS, Z_FREE_HOOK_TICKS

#: two TSC reads further apart than this did not both run: not counted
GAP_NS = 1000


@inline
def spin_running(zs, target):
    """Busy-wait until ``target`` ticks of running time have passed (gaps
    between two TSC reads of :data:`GAP_NS` or more are not counted);
    returns the ticks counted.  Also the cost of callback's per-block work
    (``--callback-ns``), so that neither depends on the machine's load."""
    gap = zs[H_TICKS_PER_SEC] * GAP_NS // 1_000_000_000
    ran = 0
    last = ticks()
    while ran < target:
        now = ticks()
        step = now - last
        if 0 <= step < gap:
            ran += step
        last = now
    return ran


@inline
def free_hook_spin(zs, zb):
    """Spin ``H_FREE_HOOK_TICKS`` ticks of running time; zone lock held
    (``zb``: the zone's base slot)."""
    target = zs[H_FREE_HOOK_TICKS]
    if target <= 0:
        return
    zs[zb + Z_FREE_HOOK_TICKS] += spin_running(zs, target)
    zs[zb + Z_FREE_HOOK_CALLS] += 1
