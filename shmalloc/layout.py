"""Shared-memory layout: ``struct page`` stand-in and the zone state array.

A machine is two metadata arrays in shared memory, and compiled kernels take
exactly these two (every array argument costs reference counting at every
call, so there are no others):

``frames``
    one 16-byte record per pfn, the ``struct page`` stand-in (:data:`FRAME_DTYPE`).
``zs``
    one int64 array holding everything else: a header, the zones
    (``free_area``, ``nr_free``, the zone lock's owner and lock_stat
    counters), the agents (the processes taking part, with their ``sem_t *``),
    the per-agent pcp lists, the per-pageblock migratetypes, per-worker
    counters and latency histograms, and the reporting designs' state.

Field by field, ``frames``:

========= ====== ==========================================================
field     type   meaning
========= ====== ==========================================================
next      int32  next pfn on the list this page heads (a free_area list or
                 a pcp list); -1 at the end.  Undefined when not listed.
prev      int32  previous pfn on that list; -1 at the head.
gen       uint16 allocation generation of a block head: bumped each time
                 the block is handed out; part of the worker's canary.
owner     int16  agent holding the block (ALLOC), owning the pcp list
                 (PCP) or holding it in a reporting batch (INFLIGHT); -1.
order     int8   block order when the page is a block head; -1 otherwise.
state     uint8  ``PS_*`` below: what the block headed here is.
flags     uint8  ``PG_*`` below.
========= ====== ==========================================================

Invariants (checked by :mod:`shmalloc.invariants`), for every zone::

    sum over heads h of 2**order(h)  ==  zone pages        (heads tile the zone)
    state(p) == PS_NONE              for every p that is not a head
    nr_free[o][mt]  == len(free_area[o][mt])
    NR_FREE_PAGES   == sum_o nr_free[o][MOVABLE] * 2**o    (isolated pages excluded)
    PS_BUDDY heads  == the entries of the free_area lists, each on the list of
                       its order and of its pageblock's migratetype, aligned
                       to its order
    no PS_BUDDY head outside an isolated pageblock has a PS_BUDDY buddy of
    the same order outside one (they would have merged; isolation moves
    blocks without merging them)
    PG_REPORTED     => PS_BUDDY and order >= report order

The kernel keeps tail pages of a free block unmarked too; unlike the kernel
every head carries its state, so a quiescent machine can be walked pfn by pfn
and every page found in exactly one place.
"""

from __future__ import annotations

import numpy as np

from .config import FREE_PAGE_VQ_SIZE, MAX_ORDER_LIMIT, MAX_ZONES, inline

FRAME_DTYPE = np.dtype(
    [("next", "<i4"), ("prev", "<i4"), ("gen", "<u2"), ("owner", "<i2"),
     ("order", "i1"), ("state", "u1"), ("flags", "u1")],
    align=True,
)
assert FRAME_DTYPE.itemsize == 16

# ---------------------------------------------------------------------------
# Page states and flags
# ---------------------------------------------------------------------------
PS_NONE = 0        # not a block head: a tail page of some block
PS_BUDDY = 1       # head of a free block on free_area[order][mt] (PageBuddy)
PS_PCP = 2         # order-0 page on an agent's per-cpu-pages list
PS_ALLOC = 3       # head of an allocated block; owner = agent
PS_INFLIGHT = 4    # free block pulled off the lists into a reporting batch
STATE_NAMES = {PS_NONE: "tail", PS_BUDDY: "buddy", PS_PCP: "pcp",
               PS_ALLOC: "allocated", PS_INFLIGHT: "in-flight"}

PG_REPORTED = 1    # PageReported: the hypervisor has this free block
PG_TOUCHED = 2     # a worker has written this page since the guest started

# Migratetypes: only what the designs need.  MIGRATE_ISOLATE keeps a
# pageblock's free pages away from the allocator (mm/page_isolation.c).
MIGRATE_MOVABLE = 0
MIGRATE_ISOLATE = 1
MIGRATE_TYPES = 2
MIGRATETYPE_NAMES = ("Movable", "Isolate")

# Who takes a zone lock: the per-caller split of the lock statistics.
CALLER_ALLOC = 0
CALLER_FREE = 1
CALLER_REPORTER = 2
CALLER_HOST = 3
NR_CALLERS = 4
CALLER_NAMES = ("alloc", "free", "reporter", "host")

# Error codes returned by compiled paths (negative, never a pfn).
E_NOMEM = -1          # no free block of the order in any zone
E_BAD_PFN = -2        # pfn outside the machine or not aligned to the order
E_NOT_ALLOCATED = -3  # not the head of an allocated block (never allocated)
E_DOUBLE_FREE = -4    # the block is already free (buddy or pcp)
E_WRONG_ORDER = -5    # allocated with another order
E_NOT_OWNER = -6      # allocated to another agent
E_BAD_ORDER = -7      # order outside 0..MAX_ORDER-1
ERROR_TEXT = {
    E_NOMEM: "out of memory: no free block of that order in any zone",
    E_BAD_PFN: "pfn is outside the machine or not aligned to the order",
    E_NOT_ALLOCATED: "not the head of an allocated block (never allocated, or freed and merged)",
    E_DOUBLE_FREE: "double free: the block is already free",
    E_WRONG_ORDER: "the block was allocated with a different order",
    E_NOT_OWNER: "the block is allocated to another agent",
    E_BAD_ORDER: "order out of range",
}

# ---------------------------------------------------------------------------
# lock_stat fields, declared once: the counters, the table and the JSON all
# come from this list (Documentation/locking/lockstat.rst).
# ---------------------------------------------------------------------------
LOCKSTAT_FIELDS = ("con_bounces", "contentions", "wait_min", "wait_max", "wait_total",
                   "acq_bounces", "acquisitions", "hold_min", "hold_max", "hold_total")
(LS_CON_BOUNCES, LS_CONTENTIONS, LS_WAIT_MIN, LS_WAIT_MAX, LS_WAIT_TOTAL,
 LS_ACQ_BOUNCES, LS_ACQUISITIONS, LS_HOLD_MIN, LS_HOLD_MAX, LS_HOLD_TOTAL) = range(10)
NR_LS_FIELDS = len(LOCKSTAT_FIELDS)
LS_MIN_FIELDS = (LS_WAIT_MIN, LS_HOLD_MIN)   # start at "infinity", not 0
LS_TIME_FIELDS = (LS_WAIT_MIN, LS_WAIT_MAX, LS_WAIT_TOTAL,
                  LS_HOLD_MIN, LS_HOLD_MAX, LS_HOLD_TOTAL)
LS_INF = np.iinfo(np.int64).max

# ---------------------------------------------------------------------------
# Per-worker counters, declared once (workload kernels bump them, the summary
# and the JSON read them by name).
# ---------------------------------------------------------------------------
WORKER_COUNTERS = (
    "ops",               # alloc + free calls
    "allocs", "frees",
    "pages_allocated", "pages_freed",
    "alloc_failures",    # E_NOMEM seen (the workload frees and retries)
    "iterations",        # workload rounds completed
    "use_after_discard", # canary found zeroed: discarded under its owner
    "foreign_canary",    # canary of another owner: one page given to two
    "refaults",          # first write to a page discarded since it was written
    "free_errors",       # free_pages() returned an error
    "lock_acquisitions", # zone locks this agent took (its own count)
    "alloc_ns_max",      # slowest alloc_pages() call, ns
    "free_ns_max",       # slowest free_pages() call, ns
    "minor_faults",      # getrusage ru_minflt over the run (host page faults)
    "t_start",           # ticks when the workload started
    "t_end",             # ticks when it stopped
    "t_freed",           # ticks when hog/phased had freed everything (the shrink)
    "released_pages",    # pages freed at that moment
    # what the process cost the machine, written by the process itself at its
    # exit (getrusage(RUSAGE_SELF), /proc/self/sched): workers, reporter and
    # hypervisor stub alike, each in its own agent's slots
    "cpu_user_us", "cpu_sys_us",
    "nvcsw", "nivcsw",   # voluntary / involuntary context switches
    "nr_migrations",     # se.nr_migrations; -1: the kernel does not show it
    "t_freeing",         # ticks when hog/phased began to free everything (the shrink)
    # what a refault costs in this run (shmalloc.workload.write_block): blocks
    # written, whether the last one refaulted, and over the sampled blocks
    # the ticks of each first write to a page written before, split by
    # whether it refaulted, and the writes too long to be a fault alone
    "blocks_written", "refault_streak",
    "sample_refault_ticks", "sample_refaults",
    "sample_resident_ticks", "sample_resident",
    "sample_dropped",
)
(WC_OPS, WC_ALLOCS, WC_FREES, WC_PAGES_ALLOCATED, WC_PAGES_FREED, WC_ALLOC_FAILURES,
 WC_ITERATIONS, WC_USE_AFTER_DISCARD, WC_FOREIGN_CANARY, WC_REFAULTS, WC_FREE_ERRORS,
 WC_LOCK_ACQUISITIONS, WC_ALLOC_NS_MAX, WC_FREE_NS_MAX, WC_MINOR_FAULTS, WC_T_START,
 WC_T_END, WC_T_FREED, WC_RELEASED_PAGES, WC_CPU_USER_US, WC_CPU_SYS_US, WC_NVCSW,
 WC_NIVCSW, WC_NR_MIGRATIONS, WC_T_FREEING, WC_BLOCKS_WRITTEN, WC_REFAULT_STREAK,
 WC_SAMPLE_REFAULT_TICKS, WC_SAMPLE_REFAULTS, WC_SAMPLE_RESIDENT_TICKS, WC_SAMPLE_RESIDENT,
 WC_SAMPLE_DROPPED) = range(32)
#: the refault-cost sample counters, in the order above
REFAULT_SAMPLE_COUNTERS = ("sample_refault_ticks", "sample_refaults", "sample_resident_ticks",
                           "sample_resident", "sample_dropped")
#: the counters above that describe the process, not its workload
RUSAGE_COUNTERS = ("cpu_user_us", "cpu_sys_us", "nvcsw", "nivcsw", "nr_migrations")
NR_WORKER_COUNTERS = len(WORKER_COUNTERS)
# Latency histograms: 4 sub-buckets per power of two of nanoseconds.
HIST_SUB_BITS = 2
NR_HIST_BUCKETS = 64 << HIST_SUB_BITS
HIST_ALLOC = 0
HIST_FREE = 1
NR_HISTS = 2

# ---------------------------------------------------------------------------
# Free page reporting: the free-path hook a design installs, and its state and
# statistics, declared once (the reporter, the hypervisor stub, the summary
# and the JSON all read them by name).
# ---------------------------------------------------------------------------
HOOK_NONE = 0         # nothing on the free path (none, callback, isolate)
HOOK_MAINLINE = 1     # page_reporting_notify_free (Linux 5.7)
HOOK_BOUNDARY = 2     # Duyck v9: boundary pointers kept by add/del
HOOK_BITMAP = 3       # Nitesh v12: a bit per report-order block
HOOK_HOSTSCAN = 4     # HyperAlloc-style host scan: an install counted on allocation

# prdev->state
REPORTING_IDLE = 0
REPORTING_REQUESTED = 1
REPORTING_ACTIVE = 2

REPORT_FIELDS = (
    "state",             # REPORTING_IDLE / _REQUESTED / _ACTIVE
    "requests",          # IDLE -> REQUESTED edges: the reporter was woken
    "cycles",            # passes over all zones (page_reporting_process)
    "reports",           # report() calls: messages to the hypervisor (callback: blocks
                         # put on the free page virtqueue, each with its kick)
    "ranges_reported",   # blocks in those reports
    "pages_reported",    # pages in those reports
    "re_reports",        # blocks reported again, unchanged since (bitmap)
    "ack_wait_ticks",    # time waiting for the hypervisor's acknowledgements
    "pages_not_taken",   # free pages a cycle found but could not take
    "report_errors",     # reports the hypervisor failed
    "budget_exhausted",  # lists left early with the budget spent
    "hv_requests",       # reports the hypervisor stub received
    "hv_ranges",
    "hv_pages_discarded",
    "hv_discard_ticks",  # time the stub spent discarding
    "hv_errors",         # discards that failed (acknowledged as done all the same)
    "installs",          # hostscan: reclaimed blocks the guest allocated again
    "scans",             # hostscan: passes of the host scanner
    "refcnt",            # boundary: zones requesting, +1 while a pass runs
    "ack_pending_since", # ticks when the report now in flight was sent; 0: none
    "hv_extra_latency_ms",  # fault injection: the stub waits this much more per report
    "pcp_drains",        # isolate: drain_all_pages() calls, one per pageblock isolated
    "drain_requests",    # isolate: pcp drains asked of workers (those with pcp pages)
    "blocks_walked",     # callback: free blocks the walk visited under the zone lock
    "callback_ns",       # callback: the per-block cost paid under the lock, ns
    "reported_skipped",  # mainline: PageReported blocks a walk stepped over under the lock
    "vq_full",           # callback: blocks not sent, the free page virtqueue being full
)
(RS_STATE, RS_REQUESTS, RS_CYCLES, RS_REPORTS, RS_RANGES_REPORTED, RS_PAGES_REPORTED,
 RS_RE_REPORTS, RS_ACK_WAIT_TICKS, RS_PAGES_NOT_TAKEN, RS_REPORT_ERRORS, RS_BUDGET_EXHAUSTED,
 RS_HV_REQUESTS, RS_HV_RANGES, RS_HV_PAGES_DISCARDED, RS_HV_DISCARD_TICKS, RS_HV_ERRORS,
 RS_INSTALLS, RS_SCANS, RS_REFCNT, RS_ACK_PENDING_SINCE, RS_HV_EXTRA_LATENCY_MS,
 RS_PCP_DRAINS, RS_DRAIN_REQUESTS, RS_BLOCKS_WALKED, RS_CALLBACK_NS,
 RS_REPORTED_SKIPPED, RS_VQ_FULL) = range(27)
REPORT_SLOTS = 64

# ---------------------------------------------------------------------------
# zs: header slots
# ---------------------------------------------------------------------------
ZS_MAGIC = 0x53484D414C4C4F43          # "SHMALLOC"
ZS_VERSION = 3                         # 2: the free page virtqueue (H_OFF_VQ, H_VQ_SIZE);
                                       # 3: the host's pages (H_HOST_PAGE_ORDER, H_OFF_HOST_PAGES)
(H_MAGIC, H_VERSION, H_NR_PAGES, H_NR_ZONES, H_ZONE_PAGES, H_MAX_ORDER,
 H_PAGEBLOCK_ORDER, H_NR_AGENTS, H_NR_WORKERS, H_PCP_BATCH, H_PCP_HIGH, H_LOCK_SPIN,
 H_LOCK_STATS, H_TICKS_PER_SEC, H_STRATEGY, H_REPORT_ORDER, H_CAPACITY, H_STOP,
 H_GO, H_OFF_AGENTS, H_OFF_PCP, H_OFF_PAGEBLOCK, H_OFF_WSTATS, H_OFF_STRAT,
 H_STRAT_SLOTS, H_SIZE, H_NR_PAGEBLOCKS, H_ZONE_SHIFT, H_OFF_REPORT, H_BITMAP_WORDS,
 H_FREE_HOOK_TICKS, H_OFF_VQ, H_VQ_SIZE) = range(33)
# H_FREE_HOOK_TICKS: --free-hook-ns converted to ticks once, at creation
# The host's page size (--host-pages), in slots of their own: H_HOST_PAGE_ORDER
# is 0 (4 KiB) or 9 (2 MiB, a PMD-sized transparent huge page); with 9 the
# state of every host page is kept from H_OFF_HOST_PAGES on (HP_* below).
H_HOST_PAGE_ORDER = 48
H_OFF_HOST_PAGES = 49
HEADER_SLOTS = 64

# zs: the free page virtqueue from H_OFF_VQ (callback: :mod:`shmalloc.freepagevq`),
# a ring of H_VQ_SIZE entries after a header
VQ_AVAIL = 0          # entries the guest has added, ever (the avail index)
VQ_USED = 1           # entries the host has taken, ever (the used index)
VQ_NOTIFY = 2         # 1 while the host waits for a kick (notifications enabled)
VQ_KIND = 3           # virtqueue.KIND_HINT or KIND_REPORT: what the host does with them
VQ_RING = 8           # [H_VQ_SIZE] entries, pfn << 8 | order

# A host page's state, kept only when host pages are larger than guest pages
# (shmalloc.workload.host_fault, the hypervisor stub's discard): with 4 KiB
# host pages the page itself says it (PG_TOUCHED, and a zeroed canary).
HP_NEVER = 0          # the host has never backed it: the next write is a first touch
HP_RESIDENT = 1       # the host backs it
HP_DISCARDED = 2      # backed once, discarded since: the next write refaults

# H_STOP: the launcher stops the run in stages, so that the reporter can put
# its batch back before the hypervisor stub goes away.
STOP_WORKERS = 1      # workers free everything and exit
STOP_REPORTER = 2     # the reporter finishes its report, drains and exits
STOP_HYPERVISOR = 3   # the hypervisor stub exits
STOP_ABORT = 9        # everyone stops now; the launcher kills what remains

# zs: per-zone struct, fixed stride from ZONES_OFF
ZONES_OFF = HEADER_SLOTS
Z_START_PFN = 0       # zone_start_pfn
Z_NR_PAGES = 1        # spanned_pages
Z_WMARK_LOW = 2       # low watermark in pages (mainline's reporting threshold)
Z_LOCK_PID = 3        # pid holding the zone lock, 0 when free
Z_LOCK_AGENT = 4      # agent holding it, -1 when free
Z_LOCK_SEQ = 5        # acquisitions ever; a stall is an owner whose seq stands
Z_LOCK_T0 = 6         # ticks at acquisition (only with lock statistics on)
Z_LOCK_CPU = 7        # cpu of the last acquirer (for the bounce counters)
Z_LOCK_CALLER = 8     # caller class of the current holder
Z_WMARK_MIN = 9       # min watermark in pages (__isolate_free_page keeps above it)
Z_FREE_HEAD = 16                                      # [order][mt] first pfn or -1
Z_FREE_TAIL = Z_FREE_HEAD + MAX_ORDER_LIMIT * MIGRATE_TYPES  # [order][mt] last pfn
Z_NR_FREE = Z_FREE_TAIL + MAX_ORDER_LIMIT * MIGRATE_TYPES    # [order][mt] list length
Z_STRAT = Z_NR_FREE + MAX_ORDER_LIMIT * MIGRATE_TYPES        # 64 slots for a design
Z_STRAT_SLOTS = 64
Z_BOUNDARY = Z_STRAT                          # boundary: [order][mt] first pfn of the
                                              # Reported run at the list's tail, -1: none
Z_REPORTED = Z_BOUNDARY + MAX_ORDER_LIMIT * MIGRATE_TYPES     # boundary: [order] Reported count
Z_REPORT_FLAGS = Z_REPORTED + MAX_ORDER_LIMIT  # ZRF_* bits of the zone
Z_BITMAP_COUNT = Z_REPORT_FLAGS + 1            # bitmap: bits set in this zone's bitmap
Z_LOCKSTAT = Z_STRAT + Z_STRAT_SLOTS                          # [caller][field]
ZRF_REQUESTED = 1     # ZONE_PAGE_REPORTING_REQUESTED (boundary)
ZRF_ACTIVE = 2        # ZONE_PAGE_REPORTING_ACTIVE: boundaries in use (boundary)
# Where the workers' time went (compare's attributed cost), kept under the
# zone lock like lock_stat:
Z_WAIT_BEHIND = Z_LOCKSTAT + NR_CALLERS * NR_LS_FIELDS  # [waiter][holder] wait ticks: the
                      # holder is the caller class seen when the first trywait failed
Z_FREE_HOOK_TICKS = Z_WAIT_BEHIND + NR_CALLERS * NR_CALLERS  # --free-hook-ns: ticks spun
Z_FREE_HOOK_CALLS = Z_FREE_HOOK_TICKS + 1     # --free-hook-ns: spins
Z_DESIGN_HOOK_CALLS = Z_FREE_HOOK_TICKS + 2   # a design's free-path hook past its order check
ZONE_STRIDE = ((Z_DESIGN_HOOK_CALLS + 1 + 7) // 8) * 8

# zs: per-agent struct, fixed stride from H_OFF_AGENTS
AG_PID = 0            # pid of the process bound to this agent, 0 if none
AG_ROLE = 1           # ROLE_* below
AG_DRAIN_REQ = 2      # pcp drain requests posted by others (a sequence)
AG_DRAIN_DONE = 3     # last request this agent served
AG_SEM_AUX = 4        # sem_t* of the design's wake-up semaphore in this process
AG_PREF_ZONE = 5      # first zone of this agent's zonelist (agent % zones)
AG_SEM = 8            # [zone] sem_t* of each zone lock in this process
AGENT_STRIDE = AG_SEM + MAX_ZONES

ROLE_NONE, ROLE_WORKER, ROLE_REPORTER, ROLE_HYPERVISOR, ROLE_CONTROL = range(5)
ROLE_NAMES = ("none", "worker", "reporter", "hypervisor", "control")

# zs: pcp lists, [agent][zone] x PCP_STRIDE from H_OFF_PCP
PCP_HEAD = 0
PCP_TAIL = 1
PCP_COUNT = 2
PCP_STRIDE = 4

# zs: per-agent workload statistics from H_OFF_WSTATS
WS_COUNTERS = 0
WS_HIST = ((NR_WORKER_COUNTERS + 7) // 8) * 8
WSTATS_STRIDE = WS_HIST + NR_HISTS * NR_HIST_BUCKETS

# ---------------------------------------------------------------------------
# Compiled index helpers (tiny; LLVM inlines them into every caller)
# ---------------------------------------------------------------------------


@inline
def zone_base(zone):
    return ZONES_OFF + zone * ZONE_STRIDE


@inline
def free_list_slot(order, mt):
    return order * MIGRATE_TYPES + mt


@inline
def agent_base(zs, agent):
    return zs[H_OFF_AGENTS] + agent * AGENT_STRIDE


@inline
def pcp_base(zs, agent, zone):
    return zs[H_OFF_PCP] + (agent * zs[H_NR_ZONES] + zone) * PCP_STRIDE


@inline
def wstats_base(zs, agent):
    return zs[H_OFF_WSTATS] + agent * WSTATS_STRIDE


@inline
def report_slot(zs, field):
    return zs[H_OFF_REPORT] + field


@inline
def bitmap_word(zs, zone, index):
    """Slot of bit ``index`` of ``zone``'s bitmap (the bitmap design)."""
    return zs[H_OFF_STRAT] + zone * zs[H_BITMAP_WORDS] + (index >> 6)


def bitmap_words(zone_pages: int, report_order: int) -> int:
    """int64 words of one zone's bitmap: a bit per report-order block."""
    return ((zone_pages >> report_order) + 63) // 64


@inline
def host_page_slot(zs, pfn):
    """Slot of the state of the host page holding ``pfn`` (host pages
    larger than guest pages only)."""
    return zs[H_OFF_HOST_PAGES] + (pfn >> zs[H_HOST_PAGE_ORDER])


@inline
def pfn_to_zone(zs, pfn):
    shift = zs[H_ZONE_SHIFT]          # zones are usually a power of two pages
    if shift >= 0:
        return pfn >> shift
    return pfn // zs[H_ZONE_PAGES]


@inline
def next_zone(zs, zone):
    """The zone after ``zone`` in a zonelist (wrapping, no division)."""
    zone += 1
    if zone == zs[H_NR_ZONES]:
        zone = 0
    return zone


@inline
def pageblock_slot(zs, pfn):
    return zs[H_OFF_PAGEBLOCK] + (pfn >> zs[H_PAGEBLOCK_ORDER])


@inline
def get_pageblock_migratetype(zs, pfn):
    return zs[pageblock_slot(zs, pfn)]


class Layout:
    """Offsets of a machine's ``zs`` array, computed from its geometry."""

    def __init__(self, nr_pages: int, nr_zones: int, max_order: int, pageblock_order: int,
                 nr_agents: int, strat_slots: int = 0, vq_size: int = FREE_PAGE_VQ_SIZE,
                 host_page_order: int = 0):
        self.nr_pages = nr_pages
        self.nr_zones = nr_zones
        self.zone_pages = nr_pages // nr_zones
        self.max_order = max_order
        self.pageblock_order = pageblock_order
        self.nr_agents = nr_agents
        self.nr_pageblocks = nr_pages >> pageblock_order
        off = ZONES_OFF + nr_zones * ZONE_STRIDE
        self.off_agents = off
        off += nr_agents * AGENT_STRIDE
        self.off_pcp = off
        off += nr_agents * nr_zones * PCP_STRIDE
        self.off_pageblock = off
        off += ((self.nr_pageblocks + 7) // 8) * 8
        self.off_wstats = off
        off += nr_agents * WSTATS_STRIDE
        self.off_report = off
        off += REPORT_SLOTS
        self.off_strat = off
        self.strat_slots = ((strat_slots + 7) // 8) * 8
        off += self.strat_slots
        self.off_vq = off
        self.vq_size = vq_size
        off += VQ_RING + ((vq_size + 7) // 8) * 8
        self.host_page_order = host_page_order
        self.off_host_pages = off
        self.nr_host_pages = nr_pages >> host_page_order if host_page_order else 0
        off += ((self.nr_host_pages + 7) // 8) * 8
        self.size = off

    def write_header(self, zs: np.ndarray) -> None:
        """Everything but ``H_MAGIC``, which the creator writes last, once
        the machine is initialised: attaching waits for it."""
        zs[H_VERSION] = ZS_VERSION
        zs[H_NR_PAGES] = self.nr_pages
        zs[H_NR_ZONES] = self.nr_zones
        zs[H_ZONE_PAGES] = self.zone_pages
        pow2 = self.zone_pages & (self.zone_pages - 1) == 0
        zs[H_ZONE_SHIFT] = self.zone_pages.bit_length() - 1 if pow2 else -1
        zs[H_MAX_ORDER] = self.max_order
        zs[H_PAGEBLOCK_ORDER] = self.pageblock_order
        zs[H_NR_AGENTS] = self.nr_agents
        zs[H_NR_PAGEBLOCKS] = self.nr_pageblocks
        zs[H_OFF_AGENTS] = self.off_agents
        zs[H_OFF_PCP] = self.off_pcp
        zs[H_OFF_PAGEBLOCK] = self.off_pageblock
        zs[H_OFF_WSTATS] = self.off_wstats
        zs[H_OFF_STRAT] = self.off_strat
        zs[H_OFF_REPORT] = self.off_report
        zs[H_STRAT_SLOTS] = self.strat_slots
        zs[H_OFF_VQ] = self.off_vq
        zs[H_VQ_SIZE] = self.vq_size
        zs[H_HOST_PAGE_ORDER] = self.host_page_order
        zs[H_OFF_HOST_PAGES] = self.off_host_pages
        zs[H_SIZE] = self.size

    @classmethod
    def from_header(cls, zs: np.ndarray) -> Layout:
        return cls(int(zs[H_NR_PAGES]), int(zs[H_NR_ZONES]), int(zs[H_MAX_ORDER]),
                   int(zs[H_PAGEBLOCK_ORDER]), int(zs[H_NR_AGENTS]), int(zs[H_STRAT_SLOTS]),
                   int(zs[H_VQ_SIZE]),
                   int(zs[H_HOST_PAGE_ORDER]))

    # Python-side index helpers mirroring the compiled ones
    @staticmethod
    def zone(zone: int) -> int:
        return ZONES_OFF + zone * ZONE_STRIDE

    def agent(self, agent: int) -> int:
        return self.off_agents + agent * AGENT_STRIDE

    def pcp(self, agent: int, zone: int) -> int:
        return self.off_pcp + (agent * self.nr_zones + zone) * PCP_STRIDE

    def wstats(self, agent: int) -> int:
        return self.off_wstats + agent * WSTATS_STRIDE

    @staticmethod
    def lockstat(zone: int, caller: int) -> int:
        return ZONES_OFF + zone * ZONE_STRIDE + Z_LOCKSTAT + caller * NR_LS_FIELDS
