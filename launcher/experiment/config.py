"""What one experiment is: every flag of ``shmalloc run`` as a
:class:`RunConfig`, validated before anything is created.  The results
file's ``config`` is this, resolved."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from hypervisor_stub import DISCARD_MODES, StubOptions
from reporter import ReporterOptions
from shmalloc import shm, virtqueue
from shmalloc.config import (
    DEFAULT_LOCK_SPIN,
    DEFAULT_MAX_ORDER,
    FREE_PAGE_VQ_SIZE,
    PAGE_REPORTING_CAPACITY,
    PAGE_SIZE,
    PAGEBLOCK_ORDER,
)
from shmalloc.hostpage import HOST_PAGES
from shmalloc.machine import ConfigError, MachineConfig
from shmalloc.workload import THP_ORDER, WORKLOADS

from . import designs, faults, replay
from .worker import WorkerPlan

GIB = 1 << 30
PAGE_FAULT1_BYTES = 128 << 20    # will-it-scale's page_fault1 maps 128 MiB per task
#: --host-pages by default: what QEMU's guest memory gets on a typical host,
#: transparent huge pages (docs/run.md says whose measurement)
DEFAULT_HOST_PAGES = "2m"
#: --blocks: how random and phased get a block of order n (shmalloc.workload)
BLOCKS = ("buddy", "user")
USER_BLOCK_WORKLOADS = ("random", "phased")


def default_host_pages(report_order: int = PAGEBLOCK_ORDER) -> str:
    """:data:`DEFAULT_HOST_PAGES` where it can be had, else 4k: where this
    process may not mount a huge tmpfs (``shm.huge_tmpfs_problem`` says
    why), and below report order 9, whose discards would split huge host
    pages (which the model does not follow; QEMU's host would give nothing
    back until it split them)."""
    if DEFAULT_HOST_PAGES == "2m" and (report_order < HOST_PAGES["2m"]
                                       or shm.huge_tmpfs_problem()):
        return "4k"
    return DEFAULT_HOST_PAGES


@dataclass(frozen=True)
class RunConfig:
    """Every flag of ``shmalloc run``; the JSON ``config`` is this, resolved."""

    strategy: str = "none"
    workload: str = "page_fault1"
    workers: int = 2
    duration: float | None = None       # None: 5 s, or unlimited with --ops
    ops: int = 0                        # per worker; 0: no budget
    memory: int | None = None           # None: 1 GiB, or what a trace needs
    zones: int = 1
    max_order: int = DEFAULT_MAX_ORDER
    working_set: int | None = None      # per worker; None: min(128 MiB, 80 % / workers)
    hog_share: float = 0.9
    hog_hold: float = 1.0
    pcp_batch: int = 63
    pcp_high: int = 378
    lock_spin: int = DEFAULT_LOCK_SPIN
    lock_stats: bool = True
    pin: bool = True                    # worker i runs on allowed cpu i mod ncpus
    seed: int = 1
    stall_timeout: float = 10.0
    report_order: int = PAGEBLOCK_ORDER
    capacity: int | None = None         # None: the design's default (32, bitmap 16)
    delay: float | None = None          # None: the design's default
    hv_latency: float = 0.0
    discard: str = "punch"
    callback_mode: str = "hint"
    putback: str | None = None          # None: the design's (head, as 5.7) where it applies
    walk_order: int | None = None       # callback: None: 0, as v14
    callback_ns: int | None = None      # callback: None: calibrated at start
    free_page_vq: int | None = None     # callback: entries of the free page virtqueue
    scan_interval: float = 5.0
    free_hook_ns: int = 0               # spin this long on every free to the buddy lists
    inject: tuple = ()                  # --inject WHAT@SECONDS, as given
    trace_speed: float = 0.0            # trace:FILE: X times the recorded pace; 0: at once
    trace_wait: float = 1.0             # trace:FILE: a free waits this long for its allocation
    trace_loops: int = 1                # trace:FILE: passes over the trace; 0: until --duration
    host_pages: str | None = None       # 4k or 2m; None: DEFAULT_HOST_PAGES where it can be had
    start: str | None = None            # designs that record what the host has: unreported
                                        # (None: that) or reported (the initial flush done)
    blocks: str = "buddy"               # random, phased: buddy blocks or user mappings
    page_rate: float = 0.0              # --blocks user: page faults per second per worker
    page_schedule: tuple = ()           # --blocks user: ((seconds, faults by then), ...) per
                                        # worker, a real guest's (vm compare), not a flag

    @property
    def trace(self) -> str | None:
        """The trace file of a ``trace:FILE`` workload, else None."""
        return replay.trace_path(self.workload)

    @property
    def design(self) -> designs.Design:
        return designs.DESIGNS[self.strategy]

    def resolved(self) -> RunConfig:
        """Defaults that depend on other values filled in; validated."""
        cfg = self
        if cfg.strategy in designs.DESIGNS and cfg.delay is None:
            cfg = replace(cfg, delay=float(cfg.design.defaults.get("delay", 0.0)))
        if cfg.strategy in designs.DESIGNS and cfg.capacity is None:
            cfg = replace(cfg, capacity=int(cfg.design.defaults.get("capacity",
                                                                    PAGE_REPORTING_CAPACITY)))
        if cfg.strategy in designs.DESIGNS and cfg.putback is None:
            cfg = replace(cfg, putback=cfg.design.putback)
        if cfg.strategy in designs.DESIGNS and cfg.design.walks and cfg.walk_order is None:
            cfg = replace(cfg, walk_order=0)
        if cfg.strategy in designs.DESIGNS and cfg.design.records_host and cfg.start is None:
            cfg = replace(cfg, start="unreported")
        if cfg.host_pages is None:
            cfg = replace(cfg, host_pages=default_host_pages(cfg.report_order))
        if cfg.memory is None:
            cfg = replace(cfg, memory=replay.default_memory(cfg) if cfg.trace else GIB)
        if cfg.duration is None:
            cfg = replace(cfg, duration=0.0 if cfg.ops or cfg.trace else 5.0)
        if cfg.working_set is None:
            unit = PAGE_SIZE << (THP_ORDER if cfg.workload == "thp" else 0)
            share = int(cfg.memory * 0.8) // max(cfg.workers, 1)
            cfg = replace(cfg, working_set=max(unit, min(PAGE_FAULT1_BYTES, share) // unit * unit))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.strategy not in designs.DESIGNS:
            raise ConfigError("--strategy", f"unknown design {self.strategy!r}; choose from "
                              f"{', '.join(designs.names())}")
        if self.workload not in WORKLOADS and not self.trace:
            raise ConfigError("--workload", f"unknown workload {self.workload!r}; choose from "
                              f"{', '.join(WORKLOADS)} or trace:FILE")
        if self.trace:
            replay.check_config(self)
        if self.host_pages not in HOST_PAGES:
            raise ConfigError("--host-pages", f"must be {' or '.join(HOST_PAGES)}, "
                              f"got {self.host_pages!r}")
        if self.start is not None:
            if self.start not in designs.START_STATES:
                raise ConfigError("--start", f"must be {' or '.join(designs.START_STATES)}, "
                                  f"got {self.start!r}")
            if not self.design.records_host:
                takes = ", ".join(n for n, d in designs.DESIGNS.items() if d.records_host)
                raise ConfigError("--start", f"applies to {takes}, not {self.strategy}: it "
                                  "keeps no record of what the host has, so it starts the "
                                  "same either way")
        self.machine_config().validate()
        self.machine_config().check_space()
        if self.duration is not None and (self.duration < 0 or
                                          (self.duration == 0 and not self.ops
                                           and not self.trace)):
            raise ConfigError("--duration", "must be > 0 (or 0 with --ops: until the ops are done)")
        if self.working_set is not None:
            unit = PAGE_SIZE << (THP_ORDER if self.workload == "thp" else 0)
            if self.working_set < unit or self.working_set % PAGE_SIZE:
                raise ConfigError("--working-set", f"must be a multiple of 4 KiB and at least "
                                  f"{unit >> 10} KiB for {self.workload}, got {self.working_set}")
            if self.working_set > self.memory:
                raise ConfigError("--working-set", f"{self.working_set} bytes per worker is more "
                                  f"than the guest ({self.memory} bytes)")
        if self.blocks not in BLOCKS:
            raise ConfigError("--blocks", f"must be {' or '.join(BLOCKS)}, got {self.blocks!r}")
        if self.blocks == "user" and self.workload not in USER_BLOCK_WORKLOADS:
            raise ConfigError("--blocks", f"user applies to {' and '.join(USER_BLOCK_WORKLOADS)}"
                              f", not {self.workload} (its blocks are order-0 pages or THPs "
                              "already)")
        if self.page_rate < 0:
            raise ConfigError("--page-rate", f"must be >= 0, got {self.page_rate}")
        if self.page_rate and self.blocks != "user":
            raise ConfigError("--page-rate", "paces the page faults of user mappings: needs "
                              "--blocks user")
        if self.page_schedule:      # vm compare's --model-rate timeline, not a flag of run
            pts = [tuple(p) for p in self.page_schedule]
            if self.blocks != "user" or self.page_rate:
                raise ConfigError("--model-rate", "a schedule of page faults paces user "
                                  "mappings (--blocks user), instead of --page-rate")
            if any(len(p) != 2 or p[0] < 0 or p[1] < 0 for p in pts) or any(
                    b[0] < a[0] or b[1] < a[1] for a, b in zip(pts, pts[1:])):
                raise ConfigError("--model-rate", "a schedule of page faults is (seconds, "
                                  "faults by then) pairs, both rising")
        if not 0 < self.hog_share <= 1:
            raise ConfigError("--hog-share", f"must be in (0, 1], got {self.hog_share}")
        if self.stall_timeout <= 0:
            raise ConfigError("--stall-timeout", f"must be > 0, got {self.stall_timeout}")
        if self.discard not in DISCARD_MODES:
            raise ConfigError("--discard", f"must be one of {', '.join(DISCARD_MODES)}, "
                              f"got {self.discard!r}")
        if self.delay is not None and self.delay < 0:
            raise ConfigError("--delay", f"must be >= 0, got {self.delay}")
        if self.hv_latency < 0:
            raise ConfigError("--hv-latency", f"must be >= 0, got {self.hv_latency}")
        if self.callback_mode not in ("hint", "discard"):
            raise ConfigError("--callback-mode", f"must be hint or discard, got "
                              f"{self.callback_mode!r}")
        if self.putback is not None:
            if self.putback not in ("head", "tail"):
                raise ConfigError("--putback", f"must be head or tail, got {self.putback!r}")
            if self.design.putback is None:
                fixed = designs.FIXED_PUTBACK.get(self.strategy, "nothing is put back")
                raise ConfigError("--putback", f"applies to mainline and isolate, not "
                                  f"{self.strategy} ({fixed})")
        for flag, value in (("--walk-order", self.walk_order), ("--callback-ns", self.callback_ns),
                            ("--free-page-vq", self.free_page_vq)):
            if value is not None and not self.design.walks:
                raise ConfigError(flag, f"applies to callback only, not {self.strategy}")
        if self.walk_order is not None and not 0 <= self.walk_order <= self.report_order:
            raise ConfigError("--walk-order", f"must be 0..--report-order ({self.report_order}), "
                              f"got {self.walk_order}")
        if self.report_order < self.design.min_report_order:
            raise ConfigError("--report-order", f"{self.strategy} isolates whole pageblocks: "
                              f"must be >= {self.design.min_report_order}, got {self.report_order}")
        try:
            faults.check([faults.parse(x) for x in self.inject], self)
        except faults.FaultError as e:
            raise ConfigError("--inject", str(e)) from None
        if self.scan_interval <= 0:
            raise ConfigError("--scan-interval", f"must be > 0, got {self.scan_interval}")
        if self.design.reporter:
            try:
                virtqueue.check_limits(self.capacity)
            except virtqueue.ProtocolError as e:
                raise ConfigError(e.flag or "--capacity", str(e)) from None

    def machine_config(self) -> MachineConfig:
        return MachineConfig(memory=self.memory, zones=self.zones, max_order=self.max_order,
                             workers=self.workers, pcp_batch=self.pcp_batch,
                             pcp_high=self.pcp_high, lock_spin=self.lock_spin,
                             lock_stats=self.lock_stats, report_order=self.report_order,
                             capacity=self.capacity or PAGE_REPORTING_CAPACITY,
                             strategy=self.design.hook, free_hook_ns=self.free_hook_ns,
                             free_page_vq=self.free_page_vq or FREE_PAGE_VQ_SIZE,
                             host_page_order=HOST_PAGES.get(self.host_pages or "4k", -1),
                             start_reported=self.start == "reported")

    def reporter_options(self) -> ReporterOptions:
        return ReporterOptions(design=self.strategy, delay=self.delay, capacity=self.capacity,
                               report_order=self.report_order, callback_mode=self.callback_mode,
                               putback=self.putback, walk_order=self.walk_order or 0,
                               callback_ns=self.callback_ns,
                               start_reported=self.start == "reported")

    def stub_options(self) -> StubOptions:
        return StubOptions(discard=self.discard, hv_latency=self.hv_latency,
                           host_scan=self.design.host_scan, scan_interval=self.scan_interval,
                           capacity=self.capacity, free_page_vq=self.strategy == "callback")

    def plan(self, worker: int) -> WorkerPlan:
        hog_pages = int(self.hog_share * (self.memory // PAGE_SIZE)) // self.workers
        cpus = sorted(os.sched_getaffinity(0))
        return WorkerPlan(workload=self.workload, working_set=self.working_set,
                          cpu=cpus[worker % len(cpus)] if self.pin else None,
                          hog_pages=hog_pages, hog_hold_s=self.hog_hold,
                          max_ops=self.ops if self.ops else -1,
                          seed=self.seed * 1_000_003 + worker, max_order=self.max_order,
                          duration_s=self.duration, blocks=self.blocks,
                          page_rate=self.page_rate,
                          page_schedule=tuple(tuple(p) for p in self.page_schedule))
