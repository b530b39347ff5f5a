"""``shmalloc run``: one experiment, from creating the machine to removing it.

The launcher is the watchdog (there is no EOWNERDEAD for a semaphore):

1. validate every value (done before this module is reached); have the
   kernels compiled in this process (:mod:`launcher.experiment.compile`: ``compare``
   and ``sweep`` did it for all their runs already) so forked children start
   at once and nothing compiles while a run is measured;
2. create the machine, fork the workers (and a design's processes), wait
   until every child has bound its agent, then set the start flag;
3. every 100 ms sample free and host-resident memory; notice within one
   sample a child that died, and a zone lock held by one owner (same pid,
   same acquisition) for ``--stall-timeout`` seconds;
4. at the end set the stop flag, wait (bounded) for the workers to give
   their memory back, check every invariant, collect the results;
   throughput is counted twice: over the whole run, and over the *steady
   window* (:meth:`Run.steady_window`), which opens once every worker has
   written its whole working set once (the guest's first-touch page faults,
   the same in every design, are over) and closes when the stop flag is set;
5. on success, error, fault, Ctrl-C or SIGTERM alike: kill what still runs
   and remove every IPC object of the run.

A signal raises :class:`launcher.experiment.interrupt.Interrupted` wherever the
launcher is; this module only makes sure that what it creates is recorded
before the signal is honoured, so the cleanup finds it.

A fault makes the run *aborted*: the message names the process, its role and
how it ended, and the page accounting says where every page was.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace

import multiprocess as mp
import numpy as np

from hypervisor_stub import hypervisor_main
from reporter import reporter_main
from shmalloc import hostpage, invariants, lockstat, procstat, snapshot, virtqueue
from shmalloc.config import PAGE_SIZE, forbid_compile
from shmalloc.layout import (
    AG_PID,
    H_GO,
    H_STOP,
    HIST_ALLOC,
    HIST_FREE,
    NR_HIST_BUCKETS,
    REPORT_FIELDS,
    RS_ACK_PENDING_SINCE,
    RS_HV_PAGES_DISCARDED,
    RS_PAGES_REPORTED,
    RUSAGE_COUNTERS,
    STOP_ABORT,
    STOP_HYPERVISOR,
    STOP_REPORTER,
    STOP_WORKERS,
    WC_REFAULTS,
    WORKER_COUNTERS,
    WS_HIST,
    Z_LOCK_PID,
    Z_LOCK_SEQ,
)
from shmalloc.lock import now_ticks
from shmalloc.machine import Machine

from ..errors import RunAborted
from . import compile as kernels
from . import faults, interrupt, measure, replay
from .config import RunConfig
from .metrics import (
    footprint_gib_s,
    free_below_order,
    half_returned_s,
    launcher_rss_bytes,
    percentiles,
    returned_share,
)
from .proc import describe_exit, process_state
from .worker import worker_main

SAMPLE_S = 0.1
BIND_TIMEOUT_S = 60.0        # forked children bind their agent within this
STOP_TIMEOUT_S = 10.0        # workers give their memory back within this
DEATH_NOTICE_S = 5.0         # documented bound; the loop notices within one sample
ABORT_GRACE_S = 2.0          # on abort, children may finish their operation this long
INTERRUPT_GRACE_S = 0.3      # the same on Ctrl-C / SIGTERM, which must end within 1 s


@dataclass
class Child:
    name: str            # "worker 0", "reporter", "hypervisor stub"
    role: str
    agent: int
    proc: object

    @property
    def pid(self) -> int:
        return self.proc.pid


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

class Run:
    def __init__(self, cfg: RunConfig, progress: bool = False, label: str = "", until=None):
        self.cfg = cfg
        self.progress = progress
        self.label = label
        # a predicate on this Run, checked at every watch step: the run ends
        # as at the end of --duration once it holds (tests wait for an event
        # this way, with --duration as the backstop)
        self.until = until
        self.machine: Machine | None = None
        self.children: list[Child] = []
        self.timeline = {"t_s": [], "free_bytes": [], "host_resident_bytes": [],
                         "reported_bytes": [], "discarded_bytes": [], "launcher_rss_bytes": [],
                         "free_unreportable_bytes": [], "refaults": [], "first_touches": []}
        if cfg.host_pages == "2m":          # is the host really giving huge pages?
            self.timeline["host_huge_bytes"] = []
        self.queues: tuple = ()
        self.stall: dict[int, tuple[int, int, float]] = {}
        self.t_go = 0.0
        self.t_stop = 0.0
        self.cache_warm: bool | None = None
        self.injector = faults.Injector([faults.parse(x) for x in cfg.inject], self)
        self.stopped_since: dict[int, float] = {}
        # the steady window's ends (measure.snapshot)
        self.window_open: dict | None = None
        self.window_close: dict | None = None
        self.sched_at_stop: dict[int, tuple[int, int] | None] = {}
        self.warm_pages = (cfg.working_set or 0) // PAGE_SIZE
        self.jiffies: list[list[int]] = []          # /proc/stat at the start and the stop
        self.rusage0 = None                         # the launcher's own, at the start
        self.marks: dict[str, float] = {}           # phase -> time.monotonic(), for timing
        self.record: dict | None = None
        self.replay = None                 # trace:FILE: the replay's shared state

    # -- process management ------------------------------------------------
    def _start(self, name: str, role: str, agent: int, target, *args) -> None:
        proc = mp.get_context("fork").Process(target=_child_main, args=(target, *args),
                                              name=name, daemon=True)
        with interrupt.deferred():          # a started child is always in the list
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

    # the stop level at which each role is told to exit
    EXIT_LEVEL = {"worker": STOP_WORKERS, "reporter": STOP_REPORTER,
                  "hypervisor": STOP_HYPERVISOR}

    def check_children(self) -> None:
        """Abort if a child ended before it was told to (or failed)."""
        level = int(self.machine.zs[H_STOP])
        for c in self.children:
            code = c.proc.exitcode
            if code is None:
                continue
            told = level >= self.EXIT_LEVEL[c.role] or (c.role == "worker" and
                                                        (self.cfg.ops or not self.cfg.duration))
            if code == 0 and told:
                continue
            raise RunAborted(f"{c.name} (pid {c.pid}) {describe_exit(code)}"
                             + self._held_locks_note(c.pid))

    def _held_locks_note(self, pid: int) -> str:
        """Say so when a dead process held a zone lock: it died inside the
        allocator and that zone's lists may be half updated."""
        m = self.machine
        zones = [z for z in range(m.nr_zones) if int(m.zs[m.layout.zone(z) + Z_LOCK_PID]) == pid]
        if not zones:
            return ""
        return (f"; it died holding the zone {', '.join(map(str, zones))} lock, so the lists "
                "may be half updated")

    def check_stalls(self, now: float) -> None:
        """Stalls without a lock: a child stopped (SIGSTOP) for
        --stall-timeout, or a report the hypervisor has not acknowledged
        for that long."""
        m = self.machine
        holders = {int(m.zs[m.layout.zone(z) + Z_LOCK_PID]) for z in range(m.nr_zones)}
        for c in self.children:
            if c.pid in holders:
                continue                  # check_locks names it, with the lock it holds
            if c.proc.exitcode is None and process_state(c.pid) == "stopped":
                since = self.stopped_since.setdefault(c.pid, now)
                if now - since >= self.cfg.stall_timeout:
                    raise RunAborted(f"{c.name} (pid {c.pid}) has been stopped for "
                                     f"{now - since:.1f} s: longer than --stall-timeout "
                                     f"{self.cfg.stall_timeout:g} s")
            else:
                self.stopped_since.pop(c.pid, None)
        since = int(m.zs[m.layout.off_report + RS_ACK_PENDING_SINCE])
        if since:
            waited = (int(now_ticks()) - since) / m.ticks_per_sec
            if waited >= self.cfg.stall_timeout:
                stub = next((c for c in self.children if c.role == "hypervisor"), None)
                who = f"the {stub.name} (pid {stub.pid})" if stub else "the hypervisor"
                raise RunAborted(f"{who} has not acknowledged a report for {waited:.1f} s: "
                                 f"longer than --stall-timeout {self.cfg.stall_timeout:g} s")

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

    # -- sampling ----------------------------------------------------------
    def sample(self, now: float) -> None:
        m = self.machine
        rep = m.layout.off_report
        point = {"t_s": round(now - self.t_go, 3),
                 "free_bytes": snapshot.free_pages(m) * PAGE_SIZE,
                 "host_resident_bytes": m.host_resident_bytes(),
                 "reported_bytes": int(m.zs[rep + RS_PAGES_REPORTED]) * PAGE_SIZE,
                 "discarded_bytes": int(m.zs[rep + RS_HV_PAGES_DISCARDED]) * PAGE_SIZE,
                 "launcher_rss_bytes": launcher_rss_bytes(),
                 "free_unreportable_bytes": free_below_order(m, self.cfg.report_order) * PAGE_SIZE,
                 # host faults so far: host pages faulted back in, and backed for the first time
                 "refaults": self.worker_counter(WC_REFAULTS),
                 "first_touches": hostpage.first_touches(m)}
        if "host_huge_bytes" in self.timeline:
            # what a worker maps with 2 MiB pages is guest memory on huge host pages
            point["host_huge_bytes"] = max((hostpage.shmem_pmd_mapped_bytes(c.pid)
                                            for c in self.workers()), default=0)
        with interrupt.deferred():      # a signal must not leave the series of unequal length
            for key, value in point.items():
                self.timeline[key].append(value)

    def pages_done(self) -> int:
        return self.worker_counter(WORKER_COUNTERS.index("pages_allocated"))

    def worker_counter(self, idx: int) -> int:
        """A per-worker counter (``WC_*``), summed over the workers."""
        m = self.machine
        return sum(int(m.zs[m.layout.wstats(c.agent) + idx]) for c in self.workers())

    def _maybe_open_window(self) -> None:
        """The steady window (:mod:`launcher.experiment.measure`) opens once every
        worker has written its working set once; a replay has no working
        set, and its own first touches are part of the recorded program."""
        if self.window_open is None and not self.cfg.ops and not self.cfg.trace:
            self.window_open = measure.window_opens(self.machine, self._agents(),
                                                    self.warm_pages)

    def _agents(self) -> list[tuple[int, int]]:
        return [(c.agent, c.pid) for c in self.workers()]

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
        interrupt.partial_line(True)

    # -- phases ------------------------------------------------------------
    def _wait_bound(self) -> None:
        m = self.machine
        deadline = time.monotonic() + BIND_TIMEOUT_S
        while not all(m.zs[m.layout.agent(c.agent) + AG_PID] == c.pid for c in self.children):
            self.check_children()
            if time.monotonic() > deadline:
                late = [c.name for c in self.children
                        if m.zs[m.layout.agent(c.agent) + AG_PID] != c.pid]
                raise RunAborted(f"{', '.join(late)} did not start within {BIND_TIMEOUT_S:g} s")
            time.sleep(0.002)

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
            self.injector.step(now - self.t_go)
            self._maybe_open_window()
            self.check_children()
            self.check_locks(now)
            self.check_stalls(now)
            if cfg.duration and now - self.t_go >= cfg.duration:
                return
            if self.until is not None and self.until(self):
                return
            if (cfg.ops or not cfg.duration) and all(c.proc.exitcode == 0
                                                     for c in self.workers()):
                return
            time.sleep(max(0.0, min(0.02, next_sample - time.monotonic())))

    def _stop(self) -> None:
        """Stop in stages: workers give their memory back, then the reporter
        puts its batch back, then the hypervisor stub goes."""
        self.t_stop = time.monotonic()
        interrupt.enter("while stopping the run")
        if self.window_open is not None:
            self.window_close = measure.snapshot(self.machine, self._agents())
        self.sched_at_stop = {c.pid: procstat.schedstat(c.pid) for c in self.children}
        self.jiffies.append(procstat.cpu_jiffies())
        for level, role in ((STOP_WORKERS, "worker"), (STOP_REPORTER, "reporter"),
                            (STOP_HYPERVISOR, "hypervisor")):
            self.machine.zs[H_STOP] = level
            if level == STOP_WORKERS:
                interrupt.checkpoint("stopping")
            group = [c for c in self.children if c.role == role]
            timeout = STOP_TIMEOUT_S + 2 * self.cfg.hv_latency
            deadline = time.monotonic() + timeout
            while any(c.proc.exitcode is None for c in group):
                now = time.monotonic()
                self.check_children()
                self.check_locks(now)
                self.check_stalls(now)
                if now > deadline:
                    late = [c.name for c in group if c.proc.exitcode is None]
                    raise RunAborted(f"{', '.join(late)} did not stop within {timeout:g} s")
                time.sleep(0.005)
            self.check_children()
            for c in group:
                c.proc.join()

    def _abort_children(self, grace_s: float = ABORT_GRACE_S) -> None:
        """Everyone stops now: children (stopped ones resumed) leave their
        current operation and exit, the memory they hold staying where it is
        for the accounting; whoever has not exited after a grace period is
        killed."""
        self.machine.zs[H_STOP] = STOP_ABORT
        for c in self.children:           # a stopped child may sit inside the allocator:
            if c.proc.exitcode is None:   # let it finish its operation and leave
                try:
                    os.kill(c.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        while any(c.proc.exitcode is None for c in self.children):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self._kill_all()

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
        ended).  Every IPC object is removed and every child is gone before
        this returns or raises (:class:`launcher.experiment.interrupt.Interrupted` on a
        signal: then the children are killed at once)."""
        cfg = self.cfg
        outcome, reason, status = "ok", None, 0
        interrupted = None
        with interrupt.handling():
            self.marks["begin"] = time.monotonic()
            self.cache_warm = kernels.prepare(kernels.groups_for([cfg]))
            self.marks["compiled"] = time.monotonic()
            try:
                self._create()
                self.marks["created"] = time.monotonic()
                self._start_children()
                self.jiffies.append(procstat.cpu_jiffies())
                self.rusage0 = resource.getrusage(resource.RUSAGE_SELF)
                self.t_go = time.monotonic()
                try:
                    # from the go on, a signal aborts the run and keeps its
                    # record; a signal during the test checkpoint (which
                    # creates its flag file, then writes it) used to escape
                    # to the caller, which then printed no tables
                    self.machine.zs[H_GO] = 1
                    interrupt.enter("while running"
                                    f"{' ' + self.label.strip() if self.label else ''}")
                    interrupt.checkpoint("running")
                    self._watch()
                    self._stop()
                except RunAborted as e:
                    outcome, reason, status = ("aborted", str(e) + self.injector.notes(),
                                               e.exit_status)
                    self.t_stop = self.t_stop or time.monotonic()
                    self._abort_children()
                except interrupt.Interrupted as e:
                    # a signal during the run or its stop: the run is aborted
                    # and its record kept (further signals are ignored now);
                    # the children get a short grace to leave the allocator
                    outcome, reason, status = "aborted", str(e), e.exit_status
                    interrupted = e
                    self.t_stop = self.t_stop or time.monotonic()
                    self._abort_children(INTERRUPT_GRACE_S)
                self.marks["stopped"] = time.monotonic()
                interrupt.enter("while collecting the results")
                interrupt.checkpoint("collecting")
                self.sample(time.monotonic())
                if self.progress:
                    sys.stderr.write("\r" + " " * 60 + "\r")
                    interrupt.partial_line(False)
                record = self.collect(outcome, reason)
                record["exit_status"] = status
                if interrupted is not None:
                    record["interrupted"] = interrupted
                self.record = record
                return record
            finally:
                with interrupt.deferred():
                    self._cleanup()
                if self.record is not None:      # the caller's dict: teardown included
                    self.record["timing"] = measure.timing(self.marks, self.t_go, self.t_stop,
                                                           time.monotonic())

    def _create(self) -> None:
        cfg = self.cfg
        interrupt.enter("while creating the machine")
        with interrupt.deferred():          # the machine is recorded as soon as it exists
            self.machine = Machine.create(cfg.machine_config())
        m = self.machine
        if cfg.design.reporter:
            with interrupt.deferred():
                self.queues = virtqueue.create_queues(m.run_id, cfg.capacity)
        if cfg.trace:                       # an anonymous mapping: nothing to clean up
            self.replay = replay.prepare(cfg, m)
        self.host_start = m.host_resident_bytes()
        interrupt.checkpoint("machine")

    def _start_children(self) -> None:
        cfg, m = self.cfg, self.machine
        interrupt.enter("while starting the processes")
        if cfg.design.hypervisor:
            self._start("hypervisor stub", "hypervisor", m.hypervisor_agent, hypervisor_main,
                        m, m.hypervisor_agent, cfg.stub_options())
        if cfg.design.reporter:
            self._start("reporter", "reporter", m.reporter_agent, reporter_main, m,
                        m.reporter_agent, cfg.reporter_options())
        for w in range(cfg.workers):
            plan = replace(cfg.plan(w), replay=self.replay)
            self._start(f"worker {w}", "worker", w, worker_main, m, w, plan)
        interrupt.checkpoint("forking")
        self._wait_bound()

    def _cleanup(self) -> None:
        """Kill what still runs (after a signal, everything: children are
        not waited for) and remove every IPC object of the run."""
        self._kill_all()
        for q in self.queues:
            q.close()
        if self.machine is not None:
            virtqueue.unlink_queues(self.machine.run_id)
            self.machine.destroy()
            self.machine = None

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
                 if not k.startswith("t_") and not k.endswith("_max")
                 and k not in RUSAGE_COUNTERS}
        throughput = {
            "elapsed_s": round(elapsed, 4),
            "pages": total["pages_allocated"],
            "ops": total["ops"],
            "pages_per_sec": round(total["pages_allocated"] / elapsed, 1),
            "ops_per_sec": round(total["ops"] / elapsed, 1),
            "steady": measure.steady_window(self.window_open, self.window_close, elapsed,
                                            total, tps, starts),
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
        rep = m.layout.off_report
        reporting = {name: int(m.zs[rep + i]) for i, name in enumerate(REPORT_FIELDS)}
        reporting["ack_wait_s"] = round(reporting.pop("ack_wait_ticks") / tps, 4)
        reporting["hv_discard_s"] = round(reporting.pop("hv_discard_ticks") / tps, 4)
        for internal in ("state", "refcnt", "ack_pending_since", "hv_extra_latency_ms"):
            del reporting[internal]
        t_freed = min((w["t_freed"] for w in per_worker if w["t_freed"]), default=0)
        freed_at = (t_freed - min(starts)) / tps if t_freed and starts else None
        t_freeing = min((w["t_freeing"] for w in per_worker if w["t_freeing"]), default=0)
        freeing_at = (t_freeing - min(starts)) / tps if t_freeing and starts else None
        memory = {
            "guest_bytes": cfg.memory,
            "host_resident_bytes_start": self.host_start,
            "host_resident_bytes_end": resident[-1],
            "host_resident_bytes_min": min(resident),
            "host_resident_bytes_max": max(resident),
            "free_bytes_end": snapshot.free_pages(m) * PAGE_SIZE,
            "free_unreportable_bytes_end": free_below_order(m, cfg.report_order) * PAGE_SIZE,
            "reported_bytes": reporting["pages_reported"] * PAGE_SIZE,
            "discarded_bytes": reporting["hv_pages_discarded"] * PAGE_SIZE,
            "footprint_gib_s": round(footprint_gib_s(self.timeline), 4),
            "freed_at_s": None if freed_at is None else round(freed_at, 3),
            "freeing_at_s": None if freeing_at is None else round(freeing_at, 3),
            "released_bytes": total["released_pages"] * PAGE_SIZE,
            "half_returned_s": half_returned_s(self.timeline, freed_at,
                                               total["released_pages"] * PAGE_SIZE),
            "host_page_bytes": hostpage.host_page_bytes(m.host_page_order),
            "refaulted_bytes": total["refaults"] * hostpage.host_page_bytes(m.host_page_order),
            "host_huge_share_at_max": huge_share_at_max(self.timeline),
            "returned_share_end": returned_share(self.timeline, freed_at,
                                                 total["released_pages"] * PAGE_SIZE),
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
            "stopped_at_s": round((self.t_stop or time.monotonic()) - self.t_go, 3),
            "injected": self.injector.record(),
            "throughput": throughput,
            "latency_ns": latency,
            "locks": lockstat.lock_records(m.zs, m.nr_zones, tps),
            "memory": memory,
            "refaults": total["refaults"],
            "first_touches": hostpage.first_touches(m),
            "minor_faults": total["minor_faults"],
            "reporting": reporting,
            "safety": {
                "use_after_discard": total["use_after_discard"],
                "double_allocations": total["foreign_canary"],
                "free_errors": total["free_errors"],
                "invariant_errors": errors,
            },
            "workers": per_worker,
            "attribution": measure.attribution(m, self.window_open, self.window_close,
                                               per_worker, total),
            "noise": measure.noise(m, [(c.name, c.role, c.agent, c.pid) for c in self.children],
                                   self.jiffies, self.sched_at_stop, self.rusage0),
            "numba_cache_warm": self.cache_warm,
        }
        if self.replay is not None:
            record["trace"] = replay.replay_results(self.replay, cfg, elapsed)
        if outcome != "ok":
            record["page_accounting"] = [{"where": w, "pages": n}
                                         for w, n in snapshot.page_accounting(m)]
        return record


def huge_share_at_max(timeline: dict) -> float | None:
    """With 2 MiB host pages: the share of host-resident guest memory a
    worker mapped with huge pages, at the sample of most resident memory
    (QEMU's is ``AnonHugePages`` over its guest RAM's Rss); None with 4 KiB
    host pages or when nothing was resident."""
    huge, resident = timeline.get("host_huge_bytes"), timeline["host_resident_bytes"]
    if not huge or not max(resident, default=0):
        return None
    i = max(range(len(resident)), key=resident.__getitem__)
    return round(huge[i] / resident[i], 4)


def execute(cfg: RunConfig, progress: bool = False, label: str = "", until=None) -> dict:
    return Run(cfg, progress=progress, label=label, until=until).execute()


def _child_main(target, *args) -> None:
    """Every forked child starts here: ``target(*args)``, then leave at once.

    With SHMALLOC_FORBID_CHILD_COMPILE set (the test suite sets it) a kernel
    that was not compiled before the fork fails the child instead of
    compiling during the run.  The child has written everything it had to
    say into shared memory; multiprocess's and the interpreter's teardown of
    a forked copy of the launcher took 50 ms per child here, a fixed cost of
    every run, so it leaves with ``os._exit``.  An exception still ends the
    child the usual way (traceback, status 1)."""
    if os.environ.get("SHMALLOC_FORBID_CHILD_COMPILE"):
        forbid_compile()
    target(*args)
    os._exit(0)
