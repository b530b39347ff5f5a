"""A guest machine in shared memory: create it, attach to it, use it from Python.

One :class:`Machine` is the guest's memory and its allocator state:

``/shmalloc-<run>-guest``
    the guest memory, ``memory`` bytes of 4 KiB pages, no header.  Workers
    write into pages they own; the hypervisor stub punches holes into it.
    With ``host_page_order`` 9 (``--host-pages 2m``) the host backs it with
    2 MiB transparent huge pages: a file on a tmpfs of its own, mounted
    ``huge=always`` on a directory of that name (:mod:`shmalloc.shm`,
    :mod:`shmalloc.hostpage`).
``/shmalloc-<run>-frames``
    header + one :data:`~shmalloc.layout.FRAME_DTYPE` record per pfn.
``/shmalloc-<run>-zones``
    header + the ``zs`` int64 array (:mod:`shmalloc.layout`).
``/shmalloc-<run>-zone<N>``
    the zone locks: POSIX named semaphores of value 1.

The machine starts with every page free and, with ``start_reported``
(``--start reported``), its free blocks already Reported, as a guest whose
reporter has flushed its zones after registration and gone idle
(:func:`_start_reported`).

Processes are *agents*: workers ``0 .. workers-1``, then the reporter, the
hypervisor stub and a control agent (the launcher, or a test).  A process
binds the agent it plays (:meth:`Machine.bind`), which records its pid and its
``sem_t *`` for every zone lock.

The Python methods validate, call one compiled kernel and turn error codes
into exceptions; anything done in a loop belongs in a compiled kernel.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import shm
from ._libc import measure_ticks_per_sec, mincore_resident, sem_pointer, sem_release_pointer
from .config import (
    DEFAULT_LOCK_SPIN,
    DEFAULT_MAX_ORDER,
    DEFAULT_PCP_BATCH,
    DEFAULT_PCP_HIGH,
    FREE_PAGE_VQ_SIZE,
    MAX_ORDER_LIMIT,
    MAX_WORKERS,
    MAX_ZONES,
    PAGE_REPORTING_CAPACITY,
    PAGE_SIZE,
    PAGEBLOCK_ORDER,
)
from .hostpage import HOST_PAGE_NAMES, HOST_PAGES
from .layout import (
    AG_DRAIN_DONE,
    AG_DRAIN_REQ,
    AG_PID,
    AG_PREF_ZONE,
    AG_ROLE,
    AG_SEM,
    AG_SEM_AUX,
    E_NOMEM,
    ERROR_TEXT,
    FRAME_DTYPE,
    H_BITMAP_WORDS,
    H_CAPACITY,
    H_FREE_HOOK_TICKS,
    H_HOST_PAGE_ORDER,
    H_LOCK_SPIN,
    H_LOCK_STATS,
    H_MAGIC,
    H_NR_WORKERS,
    H_NR_ZONES,
    H_PCP_BATCH,
    H_PCP_HIGH,
    H_REPORT_ORDER,
    H_STRATEGY,
    H_TICKS_PER_SEC,
    HOOK_BITMAP,
    HOOK_BOUNDARY,
    HOOK_HOSTSCAN,
    HOOK_MAINLINE,
    LS_INF,
    LS_MIN_FIELDS,
    MIGRATE_MOVABLE,
    MIGRATE_TYPES,
    NR_CALLERS,
    NR_LS_FIELDS,
    PCP_HEAD,
    PCP_TAIL,
    PG_REPORTED,
    PS_BUDDY,
    ROLE_CONTROL,
    ROLE_NONE,
    Z_BOUNDARY,
    Z_FREE_HEAD,
    Z_FREE_TAIL,
    Z_LOCK_AGENT,
    Z_LOCK_CPU,
    Z_LOCKSTAT,
    Z_NR_PAGES,
    Z_REPORTED,
    Z_START_PFN,
    Z_WMARK_LOW,
    Z_WMARK_MIN,
    ZS_MAGIC,
    Layout,
    bitmap_words,
)
from .lock import now_ticks
from .page_alloc import alloc_pages, free_pages, init_free_lists
from .pcp import drain_pages

#: --free-hook-ns at most 1 ms per free
MAX_FREE_HOOK_NS = 1_000_000

_TICKS_PER_SEC: int | None = None


def ticks_per_sec() -> int:
    """The TSC's frequency, measured once per process (20 ms against
    CLOCK_MONOTONIC) and reused by every machine it creates: the TSC of a
    constant_tsc CPU does not change speed, and a compare of many short
    runs would otherwise pay the 20 ms each time."""
    global _TICKS_PER_SEC
    if _TICKS_PER_SEC is None:
        _TICKS_PER_SEC = measure_ticks_per_sec(now_ticks)
    return _TICKS_PER_SEC


class ConfigError(ValueError):
    """A configuration value is out of range; ``flag`` names the CLI flag."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"{flag}: {message}")
        self.flag = flag
        self.detail = message


class AllocatorError(RuntimeError):
    """A compiled allocator path returned an error code."""

    def __init__(self, code: int, what: str):
        super().__init__(f"{what}: {ERROR_TEXT.get(code, f'error {code}')}")
        self.code = code


@dataclass(frozen=True)
class MachineConfig:
    """The guest's geometry and allocator tunables (one CLI flag each)."""

    memory: int = 1 << 30
    zones: int = 1
    max_order: int = DEFAULT_MAX_ORDER
    workers: int = 2
    pcp_batch: int = DEFAULT_PCP_BATCH
    pcp_high: int = DEFAULT_PCP_HIGH
    lock_spin: int = DEFAULT_LOCK_SPIN
    lock_stats: bool = True
    report_order: int = PAGEBLOCK_ORDER
    capacity: int = PAGE_REPORTING_CAPACITY
    strategy: int = 0          # free-path hook id (HOOK_*), chosen by the reporting design
    free_hook_ns: int = 0      # --free-hook-ns: spin this long on every free to the buddy lists
    free_page_vq: int = FREE_PAGE_VQ_SIZE   # entries of callback's free page virtqueue
    host_page_order: int = 0   # --host-pages: the host backs guest memory with 4 KiB (0) or
                               # 2 MiB (9) pages (shmalloc.hostpage)
    start_reported: bool = False   # --start reported: free blocks start Reported (the design's
                                   # record of it: mainline, boundary, hostscan)

    @property
    def pageblock_order(self) -> int:
        return PAGEBLOCK_ORDER

    @property
    def nr_pages(self) -> int:
        return self.memory // PAGE_SIZE

    @property
    def max_block_bytes(self) -> int:
        return PAGE_SIZE << (self.max_order - 1)

    @property
    def bitmap_words(self) -> int:
        """Words per zone of the per-frame bitmap (a bit per report-order
        block) the bitmap and hostscan designs keep; 0 for other designs."""
        if self.strategy not in (HOOK_BITMAP, HOOK_HOSTSCAN):
            return 0
        return bitmap_words(self.nr_pages // self.zones, self.report_order)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for the first bad value; create nothing."""
        if not PAGEBLOCK_ORDER + 1 <= self.max_order <= MAX_ORDER_LIMIT:
            raise ConfigError("--max-order", f"must be in {PAGEBLOCK_ORDER + 1}..{MAX_ORDER_LIMIT}"
                              f" (pageblock order is {PAGEBLOCK_ORDER}), got {self.max_order}")
        if not 1 <= self.zones <= MAX_ZONES:
            raise ConfigError("--zones", f"must be in 1..{MAX_ZONES}, got {self.zones}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError("--workers", f"must be in 1..{MAX_WORKERS}, got {self.workers}")
        unit = self.zones * self.max_block_bytes
        if self.memory <= 0 or self.memory % unit:
            raise ConfigError("--memory", f"must be a positive multiple of zones x largest block "
                              f"= {self.zones} x {self.max_block_bytes >> 10} KiB "
                              f"= {unit >> 10} KiB, got {self.memory} bytes")
        if self.nr_pages >= 1 << 31:
            raise ConfigError("--memory", "must be below 8 TiB (pfns are 32-bit)")
        if not 0 <= self.pcp_batch <= 4096:
            raise ConfigError("--pcp-batch", f"must be in 0..4096 (0 disables the pcp lists), "
                              f"got {self.pcp_batch}")
        if self.pcp_batch and not self.pcp_batch <= self.pcp_high <= 1 << 20:
            raise ConfigError("--pcp-high", f"must be in --pcp-batch ({self.pcp_batch})..{1 << 20},"
                              f" got {self.pcp_high}")
        if not 0 <= self.lock_spin <= 1_000_000:
            raise ConfigError("--lock-spin", f"must be in 0..1000000, got {self.lock_spin}")
        if not 0 <= self.report_order < self.max_order:
            raise ConfigError("--report-order", f"must be in 0..{self.max_order - 1} "
                              f"(below --max-order), got {self.report_order}")
        if self.capacity < 1:
            raise ConfigError("--capacity", f"must be at least 1, got {self.capacity}")
        if not 0 <= self.free_hook_ns <= MAX_FREE_HOOK_NS:
            raise ConfigError("--free-hook-ns", f"must be in 0..{MAX_FREE_HOOK_NS}, "
                              f"got {self.free_hook_ns}")
        if not 1 <= self.free_page_vq <= 1 << 16:
            raise ConfigError("free_page_vq", f"must be in 1..65536 entries, "
                              f"got {self.free_page_vq}")
        if self.host_page_order not in HOST_PAGE_NAMES:
            raise ConfigError("--host-pages", f"must be {' or '.join(HOST_PAGES)}, got order "
                              f"{self.host_page_order}")
        if self.report_order < self.host_page_order:
            raise ConfigError("--report-order", f"must be >= {self.host_page_order} with "
                              f"--host-pages {HOST_PAGE_NAMES[self.host_page_order]}: a smaller "
                              "discard would split a huge host page, which the model does not "
                              f"follow; got {self.report_order}")
        if self.start_reported and self.strategy not in START_REPORTED_HOOKS:
            raise ConfigError("--start", "reported needs a design that records what the host "
                              "has (mainline, boundary, hostscan)")

    def check_space(self) -> None:
        """The host can give this guest what it asks: the guest and its
        metadata fit in /dev/shm (a tmpfs that runs full under a writing
        worker kills it with SIGBUS), or with 2 MiB host pages the metadata
        there and the guest in the host's available memory, which a huge
        tmpfs can be mounted for; 4 KiB host pages are what /dev/shm gives."""
        meta = self.nr_pages * FRAME_DTYPE.itemsize
        free = shm.shm_free_bytes()
        if self.host_page_order:
            problem = shm.huge_tmpfs_problem()
            if problem:
                raise ConfigError("--host-pages", f"2m: {problem}")
            avail = mem_available_bytes()
            if self.memory > avail:
                raise ConfigError("--memory", f"{self.memory} bytes of guest on huge pages are "
                                  f"more than this host has available ({avail} bytes)")
            need = meta
        else:
            problem = shm.shm_gets_huge_pages()
            if problem:
                raise ConfigError("--host-pages", f"4k: {problem}, so guest memory there "
                                  "would not be on 4 KiB pages; use --host-pages 2m")
            need = self.memory + meta
        if need > free:
            what = (f"{meta} bytes of metadata" if self.host_page_order else
                    f"{self.memory} bytes of guest and {meta} of metadata")
            raise ConfigError("--memory", f"{what} do not fit in {shm.SHM_DIR} "
                              f"({free} bytes free)")

    def as_dict(self) -> dict:
        return asdict(self)


#: the free-path hooks of the designs that keep a record of what the host has,
#: so that a start with the free memory already reported means something
START_REPORTED_HOOKS = (HOOK_MAINLINE, HOOK_BOUNDARY, HOOK_HOSTSCAN)


def mem_available_bytes() -> int:
    """MemAvailable of /proc/meminfo, in bytes (0 if unreadable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# Agent numbering: workers first, then the service roles.
def reporter_agent(cfg: MachineConfig) -> int:
    return cfg.workers


def hypervisor_agent(cfg: MachineConfig) -> int:
    return cfg.workers + 1


def control_agent(cfg: MachineConfig) -> int:
    return cfg.workers + 2


def nr_agents(cfg: MachineConfig) -> int:
    return cfg.workers + 3


def _watermarks(zone_pages: int, total_pages: int) -> tuple[int, int]:
    """The zone's (min, low) watermarks as the kernel sizes them by default:
    min_free_kbytes = sqrt(16 * lowmem_kbytes) (clamped to 128..65536), the
    zone's share of it is min; low adds max(min/4, 0.1% of the zone)
    (__setup_per_zone_wmarks, watermark_scale_factor 10)."""
    kbytes = total_pages * PAGE_SIZE // 1024
    min_free_kb = min(max(int((16 * kbytes) ** 0.5), 128), 65536)
    zone_min = min_free_kb * 1024 // PAGE_SIZE * zone_pages // total_pages
    return zone_min, zone_min + max(zone_min // 4, zone_pages * 10 // 10000)


class Machine:
    """A guest machine in shared memory (see the module docstring)."""

    ROLES = ("zones", "frames", "guest")

    def __init__(self, run_id: str, zones_obj: shm.SharedObject, frames_obj: shm.SharedObject,
                 guest_obj: shm.SharedObject, sems: list, wake, creator: bool):
        self.run_id = run_id
        self.creator = creator
        self._objs = [zones_obj, frames_obj, guest_obj]
        self._guest = guest_obj
        self.zs = zones_obj.array(np.int64)
        self.layout = Layout.from_header(self.zs)
        self.frames = frames_obj.array(FRAME_DTYPE, count=self.layout.nr_pages)
        self.mem = guest_obj.array(np.int64)     # canaries are int64 words
        self._sems = sems
        self._sem_ptrs = [sem_pointer(s.name) for s in sems]
        self.wake = wake                       # the reporting design's wake-up semaphore
        self._wake_ptr = sem_pointer(wake.name)
        self.agent = None
        self._closed = False

    # ------------------------------------------------------------------ life
    @classmethod
    def create(cls, cfg: MachineConfig, run_id: str | None = None) -> Machine:
        """Create and initialise every object of a new machine (O_EXCL, 0600).

        On any failure, whatever was created is removed again."""
        cfg.validate()
        cfg.check_space()
        run_id = run_id or shm.new_run_id()
        layout = Layout(cfg.nr_pages, cfg.zones, cfg.max_order, cfg.pageblock_order,
                        nr_agents(cfg), cfg.zones * cfg.bitmap_words, cfg.free_page_vq,
                        cfg.host_page_order)
        created: list = []
        try:
            zones_obj = shm.SharedObject.create(shm.object_name(run_id, "zones"),
                                                layout.size * 8, "zones")
            created.append(zones_obj)
            frames_obj = shm.SharedObject.create(shm.object_name(run_id, "frames"),
                                                 cfg.nr_pages * FRAME_DTYPE.itemsize, "frames")
            created.append(frames_obj)
            guest_name = shm.object_name(run_id, "guest")
            if cfg.host_page_order:
                guest_obj = shm.SharedObject.create_huge(guest_name, cfg.memory)
            else:
                guest_obj = shm.SharedObject.create(guest_name, cfg.memory, "guest",
                                                    with_header=False)
            created.append(guest_obj)
            sems = []
            for z in range(cfg.zones):
                sems.append(shm.create_semaphore(shm.object_name(run_id, f"zone{z}")))
                created.append(sems[-1])
            wake = shm.create_semaphore(shm.object_name(run_id, "wake"), 0)
            created.append(wake)
            _init_metadata(zones_obj.array(np.int64), frames_obj.array(FRAME_DTYPE), layout, cfg)
            machine = cls(run_id, zones_obj, frames_obj, guest_obj, sems, wake, creator=True)
            # Every agent slot starts with the creator's sem_t pointers: they
            # are valid in the creator and in every process it forks.  A
            # process that attached on its own binds its agent to its own.
            for agent in range(nr_agents(cfg)):
                machine._write_sem_pointers(agent)
            machine.bind(control_agent(cfg), ROLE_CONTROL)
            return machine
        except BaseException:
            for obj in created:
                if isinstance(obj, shm.SharedObject):
                    obj.close()
                    shm.unlink_shm(obj.name)
                else:
                    obj.close()
                    shm.unlink_semaphore(obj.name)
            raise

    @classmethod
    def attach(cls, run_id: str) -> Machine:
        """Map an existing machine by run id (checks owner, magic, version)."""
        objs = []
        try:
            for role in ("zones", "frames"):
                objs.append(shm.SharedObject.attach(shm.object_name(run_id, role)))
            zs = objs[0].array(np.int64)
            if zs[H_MAGIC] != ZS_MAGIC:
                raise shm.IPCError(f"{shm.object_name(run_id, 'zones')} is not initialised "
                                   "(yet)")
            guest_name = shm.object_name(run_id, "guest")
            if zs[H_HOST_PAGE_ORDER]:                  # on a huge tmpfs of its own
                objs.append(shm.SharedObject.attach_huge(guest_name))
            else:
                objs.append(shm.SharedObject.attach(guest_name, with_header=False))
            sems = [shm.open_semaphore(shm.object_name(run_id, f"zone{z}"))
                    for z in range(int(zs[H_NR_ZONES]))]
            wake = shm.open_semaphore(shm.object_name(run_id, "wake"))
            return cls(run_id, *objs, sems, wake, creator=False)
        except BaseException:
            for obj in objs:
                obj.close()
            raise

    def bind(self, agent: int, role: int) -> None:
        """Play ``agent`` in this process: record our pid and sem_t pointers."""
        if not 0 <= agent < self.layout.nr_agents:
            raise ValueError(f"agent {agent} out of range 0..{self.layout.nr_agents - 1}")
        base = self.layout.agent(agent)
        self.zs[base + AG_PID] = os.getpid()
        self.zs[base + AG_ROLE] = role
        self._write_sem_pointers(agent)
        self.agent = agent

    def _write_sem_pointers(self, agent: int) -> None:
        base = self.layout.agent(agent)
        for z, ptr in enumerate(self._sem_ptrs):
            self.zs[base + AG_SEM + z] = ptr
        self.zs[base + AG_SEM_AUX] = self._wake_ptr

    def unbind(self) -> None:
        if self.agent is not None:
            base = self.layout.agent(self.agent)
            self.zs[base + AG_PID] = 0
            self.zs[base + AG_ROLE] = ROLE_NONE
            self.agent = None

    def close(self) -> None:
        """Unmap this process's view (the objects stay until unlinked)."""
        if self._closed:
            return
        self._closed = True
        for ptr in self._sem_ptrs:
            sem_release_pointer(ptr)
        sem_release_pointer(self._wake_ptr)
        for s in self._sems + [self.wake]:
            s.close()
        self.zs = self.frames = self.mem = None
        for obj in self._objs:
            obj.close()

    def object_names(self) -> list[str]:
        names = [shm.object_name(self.run_id, r) for r in self.ROLES]
        return names + [s.name for s in self._sems] + [self.wake.name]

    def unlink(self) -> None:
        """Remove the names of every object of this machine."""
        for role in self.ROLES:
            shm.unlink_shm(shm.object_name(self.run_id, role))
        for z in range(len(self._sems)):
            shm.unlink_semaphore(shm.object_name(self.run_id, f"zone{z}"))
        shm.unlink_semaphore(shm.object_name(self.run_id, "wake"))

    def destroy(self) -> None:
        self.unlink()
        self.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc) -> None:
        if self.creator:
            self.destroy()
        else:
            self.close()

    # ------------------------------------------------------------ geometry
    @property
    def nr_pages(self) -> int:
        return self.layout.nr_pages

    @property
    def nr_zones(self) -> int:
        return self.layout.nr_zones

    @property
    def max_order(self) -> int:
        return self.layout.max_order

    @property
    def nr_workers(self) -> int:
        return int(self.zs[H_NR_WORKERS])

    @property
    def control_agent(self) -> int:
        return self.nr_workers + 2

    @property
    def reporter_agent(self) -> int:
        return self.nr_workers

    @property
    def hypervisor_agent(self) -> int:
        return self.nr_workers + 1

    @property
    def host_page_order(self) -> int:
        """The host's page, in guest pages: 0 (4 KiB) or 9 (2 MiB)."""
        return self.layout.host_page_order

    @property
    def ticks_per_sec(self) -> int:
        return int(self.zs[H_TICKS_PER_SEC])

    def zone_range(self, zone: int) -> tuple[int, int]:
        zb = self.layout.zone(zone)
        start = int(self.zs[zb + Z_START_PFN])
        return start, start + int(self.zs[zb + Z_NR_PAGES])

    def semaphore_values(self) -> list[int]:
        return [s.value for s in self._sems]

    # -------------------------------------------------------- page allocator
    def _agent(self, agent: int | None) -> int:
        if agent is None:
            if self.agent is None:
                raise ValueError("this process has bound no agent (Machine.bind)")
            return self.agent
        if not 0 <= agent < self.layout.nr_agents:
            raise ValueError(f"agent {agent} out of range 0..{self.layout.nr_agents - 1}")
        return agent

    def alloc(self, order: int = 0, agent: int | None = None) -> int:
        """Allocate a block of ``2**order`` pages; returns its pfn."""
        pfn = alloc_pages(self.frames, self.zs, self._agent(agent), int(order))
        if pfn < 0:
            raise AllocatorError(pfn, f"alloc_pages(order={order})")
        return int(pfn)

    def try_alloc(self, order: int = 0, agent: int | None = None) -> int | None:
        """Like :meth:`alloc` but None when memory is exhausted."""
        pfn = alloc_pages(self.frames, self.zs, self._agent(agent), int(order))
        if pfn == E_NOMEM:
            return None
        if pfn < 0:
            raise AllocatorError(pfn, f"alloc_pages(order={order})")
        return int(pfn)

    def free(self, pfn: int, order: int = 0, agent: int | None = None) -> None:
        """Free the block at ``pfn``; raises AllocatorError and changes
        nothing on a double free, a never-allocated block or a wrong order."""
        err = free_pages(self.frames, self.zs, self._agent(agent), int(pfn), int(order))
        if err < 0:
            raise AllocatorError(err, f"free_pages(pfn={pfn}, order={order})")

    def drain_pcp(self, target: int, agent: int | None = None) -> int:
        """Drain ``target``'s pcp lists directly.  Only for an agent that is
        not running (dead, stopped, or this very process)."""
        return int(drain_pages(self.frames, self.zs, self._agent(agent), int(target)))

    def request_drain(self, target: int, timeout: float = 5.0, alive=None) -> bool:
        """Ask a running agent to drain its pcp lists and wait until it has
        (``drain_all_pages`` for one CPU).  ``alive()`` may report that the
        target died, in which case we give up.  Returns True when drained."""
        base = self.layout.agent(target)
        self.zs[base + AG_DRAIN_REQ] += 1
        want = int(self.zs[base + AG_DRAIN_REQ])
        deadline = time.monotonic() + timeout
        while int(self.zs[base + AG_DRAIN_DONE]) != want:
            if time.monotonic() > deadline or (alive is not None and not alive()):
                return False
            time.sleep(0.001)
        return True

    def pcp_count(self, agent: int, zone: int) -> int:
        return int(self.zs[self.layout.pcp(agent, zone) + 2])

    # ------------------------------------------------------------- memory
    def host_resident_bytes(self) -> int:
        """Host memory behind the guest: ``st_blocks * 512`` of the object."""
        return os.fstat(self._guest.fd).st_blocks * 512

    def resident_pages(self, pfn: int, npages: int) -> int:
        """Pages of ``[pfn, pfn + npages)`` the host still backs (mincore)."""
        return mincore_resident(self.mem.ctypes.data + pfn * PAGE_SIZE, npages * PAGE_SIZE,
                                PAGE_SIZE)

    @property
    def guest_fd(self) -> int:
        return self._guest.fd

    @property
    def guest_mmap(self):
        return self._guest.mm


def _init_metadata(zs: np.ndarray, frames: np.ndarray, layout: Layout, cfg: MachineConfig) -> None:
    """Fill a new machine's metadata: every page free, locks unowned."""
    frames["next"] = -1
    frames["prev"] = -1
    frames["gen"] = 0
    frames["owner"] = -1
    frames["order"] = -1
    frames["state"] = 0
    frames["flags"] = 0
    zs[:] = 0
    layout.write_header(zs)
    zs[H_NR_WORKERS] = cfg.workers
    zs[H_PCP_BATCH] = cfg.pcp_batch
    zs[H_PCP_HIGH] = cfg.pcp_high
    zs[H_LOCK_SPIN] = cfg.lock_spin
    zs[H_LOCK_STATS] = 1 if cfg.lock_stats else 0
    zs[H_STRATEGY] = cfg.strategy
    zs[H_REPORT_ORDER] = cfg.report_order
    zs[H_CAPACITY] = cfg.capacity
    zs[H_TICKS_PER_SEC] = ticks_per_sec()
    zs[H_FREE_HOOK_TICKS] = round(cfg.free_hook_ns * int(zs[H_TICKS_PER_SEC]) / 1e9)
    zs[H_BITMAP_WORDS] = cfg.bitmap_words
    nslots = MAX_ORDER_LIMIT * MIGRATE_TYPES
    for z in range(layout.nr_zones):
        zb = layout.zone(z)
        zs[zb + Z_START_PFN] = z * layout.zone_pages
        zs[zb + Z_NR_PAGES] = layout.zone_pages
        zs[zb + Z_WMARK_MIN], zs[zb + Z_WMARK_LOW] = _watermarks(layout.zone_pages,
                                                                layout.nr_pages)
        zs[zb + Z_FREE_HEAD: zb + Z_FREE_HEAD + nslots] = -1
        zs[zb + Z_FREE_TAIL: zb + Z_FREE_TAIL + nslots] = -1
        zs[zb + Z_BOUNDARY: zb + Z_BOUNDARY + nslots] = -1
        zs[zb + Z_LOCK_AGENT] = -1
        zs[zb + Z_LOCK_CPU] = -1
        for c in range(NR_CALLERS):
            ls = zb + Z_LOCKSTAT + c * NR_LS_FIELDS
            for f in LS_MIN_FIELDS:
                zs[ls + f] = LS_INF
    for a in range(layout.nr_agents):
        zs[layout.agent(a) + AG_PREF_ZONE] = a % layout.nr_zones
        for z in range(layout.nr_zones):
            pb = layout.pcp(a, z)
            zs[pb + PCP_HEAD] = -1
            zs[pb + PCP_TAIL] = -1
    zs[layout.off_pageblock: layout.off_pageblock + layout.nr_pageblocks] = MIGRATE_MOVABLE
    init_free_lists(frames, zs)
    # every host page starts HP_NEVER (0, from zs[:] = 0): nothing is backed yet
    if cfg.start_reported:
        _start_reported(zs, frames, layout, cfg)
    zs[H_MAGIC] = ZS_MAGIC                       # ready: others may attach now


def _start_reported(zs: np.ndarray, frames: np.ndarray, layout: Layout,
                    cfg: MachineConfig) -> None:
    """The free memory is already reported, as after the initial flush:
    Linux's ``page_reporting_register`` requests one (mm/page_reporting.c,
    "Begin initial flush of zones"), its passes report every free block of
    the report order and up, budget by budget, and the reporter goes idle.
    Each design's record of that state, on a machine whose pages are all
    free: mainline's PageReported on every free block of at least the report
    order; boundary's too, with its per-order Reported counts (the boundaries
    are off between cycles); hostscan's host-reclaimed mark on every frame.
    The host backs none of it (a fresh guest object), as after the flush.
    The reporter is left idle by the design (``ReporterOptions.start``)."""
    f = frames
    heads = np.flatnonzero((f["state"] == PS_BUDDY) & (f["order"] >= cfg.report_order))
    if cfg.strategy in (HOOK_MAINLINE, HOOK_BOUNDARY):
        f["flags"][heads] |= PG_REPORTED
    if cfg.strategy == HOOK_BOUNDARY:
        for z in range(layout.nr_zones):
            zb = layout.zone(z)
            start = z * layout.zone_pages
            in_zone = heads[(heads >= start) & (heads < start + layout.zone_pages)]
            for o in range(layout.max_order):
                zs[zb + Z_REPORTED + o] = int((f["order"][in_zone] == o).sum())
    if cfg.strategy == HOOK_HOSTSCAN:
        words = cfg.bitmap_words
        nbits = layout.zone_pages >> cfg.report_order
        bits = np.zeros(words * 64, np.uint8)
        bits[:nbits] = 1                        # every frame of the zone: all free now
        packed = np.packbits(bits, bitorder="little").view(np.int64)
        for z in range(layout.nr_zones):
            base = layout.off_strat + z * words
            zs[base: base + words] = packed
