"""The zone lock: ``spin_lock(&zone->lock)`` with lock_stat accounting.

Models ``zone->lock`` plus ``CONFIG_LOCK_STAT`` (kernel/locking/lockdep.c,
Documentation/locking/lockstat.rst).  The lock is a POSIX named semaphore of
value 1, one per zone, taken through the ``sem_t *`` this process's agent slot
holds.  Every acquisition in the project goes through :func:`zone_lock` and
every release through :func:`zone_unlock`.

Acquisition: ``sem_trywait`` first; if that fails the acquisition is
*contended*, and we retry ``sem_trywait`` up to ``lock_spin`` times (the
kernel's qspinlock spins; a futex-backed semaphore sleeps at once) before
``sem_wait``.  The statistics are recorded after the lock is ours, so they
need no atomics: whoever holds a zone lock owns that zone's counters.

Deviations from lock_stat: times are in TSC ticks (see ``shmalloc._libc``) and
converted when printed; the per-call-site breakdown is a per-*caller class*
breakdown (alloc path, free path, reporter, host), which is the split the 2019
thread argued about; lock statistics can be switched off per machine
(``H_LOCK_STATS = 0``) to measure what they cost.  Beyond lock_stat, a
contended acquisition adds its wait to ``Z_WAIT_BEHIND[waiter][holder]``, the
holder being the caller class the lock's holder had recorded when our first
``sem_trywait`` failed: how long the workers waited behind the reporter (the
attributed cost ``shmalloc compare`` reports).  A waiter queued behind
another waiter is charged to the holder it first saw.

The owner's pid and a sequence number are stored on every acquisition, with
statistics on or off: the launcher's watchdog names a dead or stalled owner
from them.
"""

from __future__ import annotations

from ._libc import current_cpu, sem_post, sem_trywait, sem_wait, ticks
from .config import inline, jit
from .layout import (
    AG_PID,
    AG_SEM,
    H_LOCK_SPIN,
    H_LOCK_STATS,
    LS_ACQ_BOUNCES,
    LS_ACQUISITIONS,
    LS_CON_BOUNCES,
    LS_CONTENTIONS,
    LS_HOLD_MAX,
    LS_HOLD_MIN,
    LS_HOLD_TOTAL,
    LS_WAIT_MAX,
    LS_WAIT_MIN,
    LS_WAIT_TOTAL,
    NR_CALLERS,
    NR_LS_FIELDS,
    WC_LOCK_ACQUISITIONS,
    Z_LOCK_AGENT,
    Z_LOCK_CALLER,
    Z_LOCK_CPU,
    Z_LOCK_PID,
    Z_LOCK_SEQ,
    Z_LOCK_T0,
    Z_LOCKSTAT,
    Z_WAIT_BEHIND,
    agent_base,
    wstats_base,
    zone_base,
)


@jit
def now_ticks():
    """The lock clock, callable from Python too (calibration, tests)."""
    return ticks()


@inline
def zone_lock(zs, agent, zone, caller):
    """Take ``zone``'s lock for ``agent``; ``caller`` is a CALLER_* class."""
    ab = agent_base(zs, agent)
    sem = zs[ab + AG_SEM + zone]
    zb = zone_base(zone)
    stats = zs[H_LOCK_STATS] != 0
    # Read the clock before trying: an uncontended acquisition is over by the
    # time rdtsc's result is ready, and the two overlap.
    t = ticks() if stats else 0
    wait = 0
    holder = 0
    contended = sem_trywait(sem) != 0
    if contended:
        # Who are we waiting behind?  The holder's class as it set it (racy
        # by design: the class seen when the first trywait failed).
        holder = zs[zb + Z_LOCK_CALLER]
        # Spin with trywait, then sleep in the kernel.
        got = False
        for _ in range(zs[H_LOCK_SPIN]):
            if sem_trywait(sem) == 0:
                got = True
                break
        if not got:
            while sem_wait(sem) != 0:      # EINTR: a signal woke us; wait again
                pass
        if stats:
            now = ticks()
            wait = now - t
            t = now
    # --- the zone lock is held from here ---
    zs[zb + Z_LOCK_PID] = zs[ab + AG_PID]
    zs[zb + Z_LOCK_AGENT] = agent
    zs[zb + Z_LOCK_CALLER] = caller
    zs[zb + Z_LOCK_SEQ] += 1
    zs[wstats_base(zs, agent) + WC_LOCK_ACQUISITIONS] += 1
    if stats:
        cpu = current_cpu()
        zs[zb + Z_LOCK_T0] = t
        ls = zb + Z_LOCKSTAT + caller * NR_LS_FIELDS
        zs[ls + LS_ACQUISITIONS] += 1
        bounce = cpu != zs[zb + Z_LOCK_CPU]
        zs[zb + Z_LOCK_CPU] = cpu
        if bounce:
            zs[ls + LS_ACQ_BOUNCES] += 1
        if contended:
            zs[ls + LS_CONTENTIONS] += 1
            if bounce:
                zs[ls + LS_CON_BOUNCES] += 1
            zs[ls + LS_WAIT_TOTAL] += wait
            zs[ls + LS_WAIT_MIN] = min(zs[ls + LS_WAIT_MIN], wait)
            zs[ls + LS_WAIT_MAX] = max(zs[ls + LS_WAIT_MAX], wait)
            zs[zb + Z_WAIT_BEHIND + caller * NR_CALLERS + holder] += wait


@inline
def zone_unlock(zs, agent, zone, caller):
    """Release ``zone``'s lock; records the hold time under the lock."""
    zb = zone_base(zone)
    if zs[H_LOCK_STATS] != 0:
        hold = ticks() - zs[zb + Z_LOCK_T0]
        if hold < 0:                       # TSC read on another cpu, skewed
            hold = 0
        ls = zb + Z_LOCKSTAT + caller * NR_LS_FIELDS
        zs[ls + LS_HOLD_TOTAL] += hold
        zs[ls + LS_HOLD_MIN] = min(zs[ls + LS_HOLD_MIN], hold)
        zs[ls + LS_HOLD_MAX] = max(zs[ls + LS_HOLD_MAX], hold)
    zs[zb + Z_LOCK_PID] = 0
    zs[zb + Z_LOCK_AGENT] = -1
    # --- the zone lock is dropped here ---
    sem_post(zs[agent_base(zs, agent) + AG_SEM + zone])
