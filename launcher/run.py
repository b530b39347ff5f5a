"""``shmalloc run``: one experiment, from creating the machine to removing it.

The launcher is the watchdog (there is no EOWNERDEAD for a semaphore):

1. validate every value (done before this module is reached), compile the
   kernels in this process so forked children start at once;
2. create the machine, fork the workers (and a design's processes), wait
   until every child has bound its agent, then set the start flag;
3. every 100 ms sample free and host-resident memory; notice within one
   sample a child that died, and a zone lock held by one owner (same pid,
   same acquisition) for ``--stall-timeout`` seconds;
4. at the end set the stop flag, wait (bounded) for the workers to give
   their memory back, check every invariant, collect the results;
5. on success, error, fault, Ctrl-C or SIGTERM alike: kill what still runs
   and remove every IPC object of the run.

A fault makes the run *aborted*: the message names the process, its role and
how it ended, and the page accounting says where every page was.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from shmalloc import invariants, lockstat, snapshot
from shmalloc.config import DEFAULT_LOCK_SPIN, DEFAULT_MAX_ORDER, PAGE_SIZE
from shmalloc.layout import (AG_PID, H_GO, H_STOP, HIST_ALLOC, HIST_FREE, NR_HIST_BUCKETS,
                             WORKER_COUNTERS, WS_HIST, Z_LOCK_PID, Z_LOCK_SEQ)
from shmalloc.machine import ConfigError, Machine, MachineConfig
from shmalloc.workload import THP_ORDER, WORKLOADS

from . import designs
from .worker import WorkerPlan, worker_main

SAMPLE_S = 0.1
BIND_TIMEOUT_S = 60.0        # forked children bind their agent within this
STOP_TIMEOUT_S = 10.0        # workers give their memory back within this
DEATH_NOTICE_S = 5.0         # documented bound; the loop notices within one sample
GIB = 1 << 30
PAGE_FAULT1_BYTES = 128 << 20    # will-it-scale's page_fault1 maps 128 MiB per task


@dataclass(frozen=True)
class RunConfig:
    """Every flag of ``shmalloc run``; the JSON ``config`` is this, resolved."""

    strategy: str = "none"
    workload: str = "page_fault1"
    workers: int = 2
    duration: float | None = None       # None: 5 s, or unlimited with --ops
    ops: int = 0                        # per worker; 0: no budget
    memory: int = GIB
    zones: int = 1
    max_order: int = DEFAULT_MAX_ORDER
    working_set: int | None = None      # per worker; None: min(128 MiB, 80 % / workers)
    hog_share: float = 0.9
    hog_hold: float = 1.0
    pcp_batch: int = 63
    pcp_high: int = 378
    lock_spin: int = DEFAULT_LOCK_SPIN
    lock_stats: bool = True
    seed: int = 1
    stall_timeout: float = 10.0

    def resolved(self) -> "RunConfig":
        """Defaults that depend on other values filled in; validated."""
        cfg = self
        if cfg.duration is None:
            cfg = replace(cfg, duration=0.0 if cfg.ops else 5.0)
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
        if self.workload not in WORKLOADS:
            raise ConfigError("--workload", f"unknown workload {self.workload!r}; choose from "
                              f"{', '.join(WORKLOADS)}")
        self.machine_config().validate()
        self.machine_config().check_space()
        if self.duration is not None and (self.duration < 0 or
                                          (self.duration == 0 and not self.ops)):
            raise ConfigError("--duration", "must be > 0 (or 0 with --ops: until the ops are done)")
        if self.working_set is not None:
            unit = PAGE_SIZE << (THP_ORDER if self.workload == "thp" else 0)
            if self.working_set < unit or self.working_set % PAGE_SIZE:
                raise ConfigError("--working-set", f"must be a multiple of 4 KiB and at least "
                                  f"{unit >> 10} KiB for {self.workload}, got {self.working_set}")
            if self.working_set > self.memory:
                raise ConfigError("--working-set", f"{self.working_set} bytes per worker is more "
                                  f"than the guest ({self.memory} bytes)")
        if not 0 < self.hog_share <= 1:
            raise ConfigError("--hog-share", f"must be in (0, 1], got {self.hog_share}")
        if self.stall_timeout <= 0:
            raise ConfigError("--stall-timeout", f"must be > 0, got {self.stall_timeout}")

    def machine_config(self) -> MachineConfig:
        return MachineConfig(memory=self.memory, zones=self.zones, max_order=self.max_order,
                             workers=self.workers, pcp_batch=self.pcp_batch,
                             pcp_high=self.pcp_high, lock_spin=self.lock_spin,
                             lock_stats=self.lock_stats,
                             strategy=designs.DESIGNS[self.strategy].hook)

    def plan(self, worker: int) -> WorkerPlan:
        hog_pages = int(self.hog_share * (self.memory // PAGE_SIZE)) // self.workers
        return WorkerPlan(workload=self.workload, working_set=self.working_set,
                          hog_pages=hog_pages, hog_hold_s=self.hog_hold,
                          max_ops=self.ops if self.ops else -1,
                          seed=self.seed * 1_000_003 + worker, max_order=self.max_order)


class RunAborted(Exception):
    """The run had to stop: a process died or stalled, or a signal came."""

    def __init__(self, reason: str, exit_status: int = 3):
        super().__init__(reason)
        self.exit_status = exit_status


@dataclass
class Child:
    name: str            # "worker 0", "reporter", "hypervisor stub"
    role: str
    agent: int
    proc: object

    @property
    def pid(self) -> int:
        return self.proc.pid


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "?"
        return f"was killed by signal {-code} ({name})"
    return f"exited with status {code}"


def process_state(pid: int) -> str:
    """'running', 'sleeping', 'stopped', ... from /proc/<pid>/stat, or 'gone'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return "gone"
    code = data[data.rindex(b")") + 2:].split()[0].decode()
    return {"R": "running", "S": "sleeping", "D": "in uninterruptible sleep",
            "T": "stopped", "t": "stopped by a tracer", "Z": "a zombie"}.get(code, code)


# ---------------------------------------------------------------------------
# Kernels compiled before forking
# ---------------------------------------------------------------------------

def warm_kernels(machine: Machine) -> bool:
    """Compile (or load from the cache) every kernel a child will call, in
    this process, so the children inherit them.  True if all came from the
    numba cache."""
    from shmalloc import pcp, workload
    from shmalloc.lock import now_ticks

    a = machine.control_agent
    z = np.zeros(1, np.int64)
    f, zs, mem = machine.frames, machine.zs, machine.mem
    workload.run_chunks(f, zs, mem, a, 0, 1, 0, 1.0, z, z)            # max_ops 0: returns
    workload.run_random(f, zs, mem, a, 1, machine.max_order, 0, 1, 1.0, z, z, z)
    workload.hog_alloc(f, zs, mem, a, 0, 0, 1.0, z, z)
    workload.free_blocks(f, zs, mem, a, z, z, 0, 1.0)
    pcp.drain_pages(f, zs, a, a)
    pcp.pcp_service_drain(f, zs, a)
    now_ticks()
    kernels = [workload.run_chunks, workload.run_random, workload.hog_alloc,
               workload.free_blocks, pcp.drain_pages, pcp.pcp_service_drain]
    return all(sum(k.stats.cache_misses.values()) == 0 for k in kernels
               if hasattr(k, "stats"))


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

class Run:
    def __init__(self, cfg: RunConfig, progress: bool = False, label: str = ""):
        self.cfg = cfg
        self.progress = progress
        self.label = label
        self.machine: Machine | None = None
        self.children: list[Child] = []
        self.timeline = {"t_s": [], "free_bytes": [], "host_resident_bytes": []}
        self.stall: dict[int, tuple[int, int, float]] = {}
        self.signal_received: int | None = None
        self.t_go = 0.0
        self.t_stop = 0.0
        self.cache_warm: bool | None = None

    # -- process management ------------------------------------------------
    def _start(self, name: str, role: str, agent: int, target, *args) -> None:
        import multiprocess as mp
        proc = mp.get_context("fork").Process(target=target, args=args, name=name, daemon=True)
        proc.start()
        self.children.append(Child(name, role, agent, proc))

    def workers(self) -> list[Child]:
        return [c for c in self.children if c.role == "worker"]

    def _who(self, pid: int) -> str:
        for c in self.children:
            if c.pid == pid:
                return f"{c.name} (pid {pid}, {process_state(pid)})"
        if pid == os.getpid():
            return f"the launcher (pid {pid})"
        return f"pid {pid} ({process_state(pid)})"

    def check_children(self, stopping: bool) -> None:
        for c in self.children:
            code = c.proc.exitcode
            if code is None:
                continue
            if code == 0 and c.role == "worker" and (stopping or self.cfg.ops):
                continue
            raise RunAborted(f"{c.name} (pid {c.pid}) {describe_exit(code)}")

    def check_locks(self, now: float) -> None:
        m = self.machine
        for z in range(m.nr_zones):
            zb = m.layout.zone(z)
            pid, seq = int(m.zs[zb + Z_LOCK_PID]), int(m.zs[zb + Z_LOCK_SEQ])
            if pid == 0:
                self.stall.pop(z, None)
                continue
            last = self.stall.get(z)
            if last is None or last[:2] != (pid, seq):
                self.stall[z] = (pid, seq, now)
                continue
            held = now - last[2]
            if held >= self.cfg.stall_timeout:
                raise RunAborted(f"zone {z} lock held for {held:.1f} s by {self._who(pid)}: "
                                 f"longer than --stall-timeout {self.cfg.stall_timeout:g} s")

    def _on_signal(self, signum, frame) -> None:
        self.signal_received = signum

    # -- sampling ----------------------------------------------------------
    def sample(self, now: float) -> None:
        m = self.machine
        self.timeline["t_s"].append(round(now - self.t_go, 3))
        self.timeline["free_bytes"].append(snapshot.free_pages(m) * PAGE_SIZE)
        self.timeline["host_resident_bytes"].append(m.host_resident_bytes())

    def pages_done(self) -> int:
        m = self.machine
        idx = WORKER_COUNTERS.index("pages_allocated")
        return sum(int(m.zs[m.layout.wstats(c.agent) + idx]) for c in self.workers())

    def _progress(self, now: float, last: list) -> None:
        if not self.progress:
            return
        pages = self.pages_done()
        t, p = last
        rate = (pages - p) / (now - t) if now > t else 0.0
        last[:] = [now, pages]
        total = f"/{self.cfg.duration:.1f}" if self.cfg.duration else ""
        sys.stderr.write(f"\r{self.label}{now - self.t_go:6.1f}{total} s  "
                         f"{rate / 1e6:7.3f} M pages/s   ")
        sys.stderr.flush()

    # -- phases ------------------------------------------------------------
    def _wait_bound(self) -> None:
        m = self.machine
        deadline = time.monotonic() + BIND_TIMEOUT_S
        while not all(m.zs[m.layout.agent(c.agent) + AG_PID] == c.pid for c in self.children):
            self.check_children(stopping=False)
            if self.signal_received:
                raise RunAborted(self._signal_reason(), 128 + self.signal_received)
            if time.monotonic() > deadline:
                late = [c.name for c in self.children
                        if m.zs[m.layout.agent(c.agent) + AG_PID] != c.pid]
                raise RunAborted(f"{', '.join(late)} did not start within {BIND_TIMEOUT_S:g} s")
            time.sleep(0.002)

    def _signal_reason(self) -> str:
        return f"interrupted by {signal.Signals(self.signal_received).name}"

    def _watch(self) -> None:
        cfg = self.cfg
        next_sample = self.t_go
        last = [self.t_go, 0]
        while True:
            now = time.monotonic()
            if now >= next_sample:
                self.sample(now)
                self._progress(now, last)
                next_sample += SAMPLE_S
            self.check_children(stopping=False)
            self.check_locks(now)
            if self.signal_received:
                raise RunAborted(self._signal_reason(), 128 + self.signal_received)
            if cfg.duration and now - self.t_go >= cfg.duration:
                return
            if cfg.ops and all(c.proc.exitcode == 0 for c in self.workers()):
                return
            time.sleep(max(0.0, min(0.02, next_sample - time.monotonic())))

    def _stop_workers(self) -> None:
        m = self.machine
        m.zs[H_STOP] = 1
        self.t_stop = time.monotonic()
        deadline = self.t_stop + STOP_TIMEOUT_S
        while any(c.proc.exitcode is None for c in self.workers()):
            now = time.monotonic()
            self.check_children(stopping=True)
            self.check_locks(now)
            if now > deadline:
                late = [c.name for c in self.workers() if c.proc.exitcode is None]
                raise RunAborted(f"{', '.join(late)} did not stop within {STOP_TIMEOUT_S:g} s")
            time.sleep(0.005)
        self.check_children(stopping=True)
        for c in self.workers():
            c.proc.join()

    def _kill_all(self) -> None:
        for c in self.children:
            if c.proc.exitcode is None:
                try:
                    os.kill(c.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for c in self.children:
            c.proc.join(DEATH_NOTICE_S)

    def execute(self) -> dict:
        """Run the experiment; returns the RUN record (``outcome`` says how it
        ended).  Every IPC object is removed before this returns or raises."""
        cfg = self.cfg
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        outcome, reason, status = "ok", None, 0
        try:
            self.machine = Machine.create(cfg.machine_config())
            self.cache_warm = warm_kernels(self.machine)
            self.host_start = self.machine.host_resident_bytes()
            for w in range(cfg.workers):
                self._start(f"worker {w}", "worker", w, worker_main, self.machine, w, cfg.plan(w))
            self._wait_bound()
            self.t_go = time.monotonic()
            self.machine.zs[H_GO] = 1
            try:
                self._watch()
                self._stop_workers()
            except RunAborted as e:
                outcome, reason, status = "aborted", str(e), e.exit_status
                self.t_stop = self.t_stop or time.monotonic()
                self.machine.zs[H_STOP] = 2
                self._kill_all()
            self.sample(time.monotonic())
            if self.progress:
                sys.stderr.write("\r" + " " * 60 + "\r")
            record = self.collect(outcome, reason)
            record["exit_status"] = status
            return record
        finally:
            self._kill_all()
            if self.machine is not None:
                self.machine.destroy()
            for s, h in old.items():
                signal.signal(s, h)

    # -- results -----------------------------------------------------------
    def collect(self, outcome: str, reason: str | None) -> dict:
        m, cfg = self.machine, self.cfg
        tps = m.ticks_per_sec
        per_worker = []
        hist = np.zeros((2, NR_HIST_BUCKETS), np.int64)
        for c in self.workers():
            ws = m.layout.wstats(c.agent)
            counters = {name: int(m.zs[ws + i]) for i, name in enumerate(WORKER_COUNTERS)}
            for h in (HIST_ALLOC, HIST_FREE):
                base = ws + WS_HIST + h * NR_HIST_BUCKETS
                hist[h] += m.zs[base: base + NR_HIST_BUCKETS]
            per_worker.append(counters)
        starts = [w["t_start"] for w in per_worker if w["t_start"]]
        ends = [w["t_end"] for w in per_worker if w["t_end"]]
        if starts and len(ends) == len(per_worker):
            elapsed = (max(ends) - min(starts)) / tps
        else:
            elapsed = (self.t_stop or time.monotonic()) - self.t_go
        elapsed = max(elapsed, 1e-9)
        total = {k: sum(w[k] for w in per_worker) for k in WORKER_COUNTERS
                 if not k.startswith("t_") and not k.endswith("_max")}
        throughput = {
            "elapsed_s": round(elapsed, 4),
            "pages": total["pages_allocated"],
            "ops": total["ops"],
            "pages_per_sec": round(total["pages_allocated"] / elapsed, 1),
            "ops_per_sec": round(total["ops"] / elapsed, 1),
            "per_worker": [],
        }
        for i, w in enumerate(per_worker):
            w_el = (w["t_end"] - w["t_start"]) / tps if w["t_end"] > w["t_start"] else elapsed
            throughput["per_worker"].append({
                "worker": i, "elapsed_s": round(w_el, 4), "pages": w["pages_allocated"],
                "ops": w["ops"], "pages_per_sec": round(w["pages_allocated"] / w_el, 1),
                "ops_per_sec": round(w["ops"] / w_el, 1)})
        latency = {
            "alloc": percentiles(hist[HIST_ALLOC], max((w["alloc_ns_max"] for w in per_worker),
                                                       default=0)),
            "free": percentiles(hist[HIST_FREE], max((w["free_ns_max"] for w in per_worker),
                                                     default=0)),
        }
        resident = self.timeline["host_resident_bytes"] or [m.host_resident_bytes()]
        memory = {
            "guest_bytes": cfg.memory,
            "host_resident_bytes_start": self.host_start,
            "host_resident_bytes_end": resident[-1],
            "host_resident_bytes_min": min(resident),
            "host_resident_bytes_max": max(resident),
            "free_bytes_end": snapshot.free_pages(m) * PAGE_SIZE,
            "timeline": self.timeline,
        }
        if outcome == "ok":
            errors = invariants.check(m, held={c.agent: [] for c in self.workers()})
        else:
            errors = invariants.check(m, allow_inflight=True, check_locks=False)
        record = {
            "config": asdict(cfg),
            "outcome": outcome,
            "abort_reason": reason,
            "throughput": throughput,
            "latency_ns": latency,
            "locks": lockstat.lock_records(m.zs, m.nr_zones, tps),
            "memory": memory,
            "refaults": total["refaults"],
            "minor_faults": total["minor_faults"],
            "safety": {
                "use_after_discard": total["use_after_discard"],
                "double_allocations": total["foreign_canary"],
                "free_errors": total["free_errors"],
                "invariant_errors": errors,
            },
            "workers": per_worker,
            "numba_cache_warm": self.cache_warm,
        }
        if outcome != "ok":
            record["page_accounting"] = [{"where": w, "pages": n}
                                         for w, n in snapshot.page_accounting(m)]
        return record


def percentiles(hist: np.ndarray, exact_max: int) -> dict:
    """p50/p99/p99.9 of a log-bucketed histogram (each reported as the upper
    edge of its bucket, so a true value is at most that), and the exact max."""
    count = int(hist.sum())
    out = {"count": count}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p99_9", 0.999)):
        if count == 0:
            out[name] = 0
            continue
        rank = math.ceil(q * count)
        idx = int(np.searchsorted(np.cumsum(hist), rank))
        out[name] = min(bucket_upper(idx), exact_max) if exact_max else bucket_upper(idx)
    out["max"] = int(exact_max)
    return out


def bucket_upper(idx: int) -> int:
    """Largest value in histogram bucket ``idx`` (see workload.hist_index)."""
    if idx < 4:
        return idx
    msb, sub = idx >> 2, idx & 3
    return ((5 + sub) << (msb - 2)) - 1


def execute(cfg: RunConfig, progress: bool = False, label: str = "") -> dict:
    return Run(cfg, progress=progress, label=label).execute()
