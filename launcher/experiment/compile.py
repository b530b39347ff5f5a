"""Compiling the kernels a command needs, before anything is measured.

Every compiled entry point a process of a run calls from Python is listed
here, in groups: the allocator (what the launcher and every worker call),
one group per workload and one per reporting design (what its reporter or
hypervisor stub calls), the engine bench, and the unit costs ``compare``
measures before its first round (:func:`launcher.comparison.compare.prepare`).
:func:`prepare` is called once per command, before the first machine is
created: ``run`` prepares its design and workload, ``compare`` its whole
line-up and the unit costs, ``sweep`` every point, so nothing compiles
during or between measured runs; the forked children inherit the compiled
code.

A kernel not in the on-disk cache (:mod:`shmalloc.jitcache`) is compiled in
up to two child processes at once (this machine has 2 cores), which fill the
cache; this process then loads every kernel from it.  A child can simply be
killed when a signal comes.  While it compiles, a line on stderr says so
(``shmalloc run: compiling 8 kernels (first run only, about 10 s)``),
followed by a progress bar when stderr is a terminal or one line per group
when it is not; a warm cache shows nothing.  When the disk cache cannot be
used the kernels compile in this process, in memory.

``shmalloc bench --compile`` measures where a cold compile goes, kernel by
kernel, each measurement in a fresh process with an empty temporary
``NUMBA_CACHE_DIR`` (:func:`measure`).
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import numba
import numpy as np

from shmalloc import jitcache
from shmalloc._libc import die_with_parent
from shmalloc.config import JIT_DISABLED
from shmalloc.layout import FRAME_DTYPE

from . import interrupt

# ---------------------------------------------------------------------------
# The kernels
# ---------------------------------------------------------------------------

#: argument codes of the signatures: the arrays of a machine and scalars
#: f frames, z zs, m guest memory, a int64 array, B bool array, k int8
#: array, u uint8 array, w int32 array, i int, d float, b bool (Python
#: values, as the callers pass them)
GROUPS: dict[str, list[tuple[str, str]]] = {
    "allocator": [("shmalloc.lock.now_ticks", ""),
                  ("shmalloc.page_alloc.init_free_lists", "fz"),
                  ("shmalloc.page_alloc.alloc_pages", "fzii"),
                  ("shmalloc.page_alloc.free_pages", "fziii"),
                  ("shmalloc.pcp.drain_pages", "fzii"),
                  ("shmalloc.pcp.pcp_service_drain", "fzi"),
                  ("shmalloc.workload.free_blocks", "fzmiaaid")],
    "page_fault1/thp": [("shmalloc.workload.run_chunks", "fzmiiiidaa")],
    "random/phased": [("shmalloc.workload.run_random", "fzmiiiiidaaai")],
    "user blocks": [("shmalloc.workload.run_random_user", "fzmiiiiidaaaaaaiiaai"),
                    ("shmalloc.workload.user_pages", "aiaaaa")],
    "hog": [("shmalloc.workload.hog_alloc", "fzmiiidaa")],
    "mainline": [("reporter.mainline.reporting_cycle_step", "fziiiiaaiibib"),
                 ("reporter.mainline.drain_batch", "fziiaaibb"),
                 ("shmalloc.reporting.page_reporting_request", "zi"),
                 ("shmalloc.reporting.page_reporting_begin_pass", "z"),
                 ("shmalloc.reporting.page_reporting_end_pass", "z"),
                 ("shmalloc.layout.zone_base", "i"),
                 ("shmalloc.page_alloc.zone_free_pages", "zi"),
                 ("shmalloc.freelist.free_list_first", "ziii"),
                 ("shmalloc.freelist.free_list_count", "ziii")],
    "boundary": [("reporter.boundary.boundary_cycle_step", "fziiaaib"),
                 ("reporter.boundary.boundary_request_all", "zi"),
                 ("shmalloc.layout.zone_base", "i")],
    "callback": [("reporter.callback.walk_free_mem_block", "fziiiiaibbi"),
                 ("shmalloc.freepagevq.free_page_vq_wait", "z")],
    "isolate": [("reporter.callback.walk_free_mem_block", "fziiiiaibbi"),
                ("reporter.isolate.isolate_pageblock", "fziiiii"),
                ("reporter.isolate.undo_isolate_page_range", "fziiiib")],
    "bitmap": [("reporter.bitmap.bitmap_scan", "fziiaai"),
               ("reporter.bitmap.bitmap_return", "fziiaai"),
               ("reporter.bitmap.bitmap_pass_done", "z"),
               ("shmalloc.layout.zone_base", "i")],
    "hostscan": [("hypervisor_stub.hostscan.host_scan_take", "fziiiaai"),
                 ("hypervisor_stub.hostscan.host_scan_mark", "fziiaaiai"),
                 ("shmalloc.layout.zone_base", "i"),
                 ("shmalloc.layout.free_list_slot", "ii")],
    # --workload trace:FILE: pairing the events (while the flags are
    # checked) and the replay (shmalloc.replay); decoding's prefix sums
    # compile per stored column type, in this process (a fraction of a second)
    "trace": [("shmalloc.tracefile.ordered", "a"),
              ("shmalloc.replay.pair_events", "uauiwakaa"),
              ("shmalloc.replay.replay_events", "fzmiaikaakaadiidiid"),
              ("shmalloc.replay.replay_release", "fzmiakkad"),
              ("shmalloc.replay.reset_slots", "aka"),
              ("shmalloc.replay.common_start", "ai")],
    "bench": [("shmalloc.bench._rounds", "fziiiia"),
              ("shmalloc.layout.free_list_slot", "ii")],
    # what compare's prepare() (and bench) measure the unit costs with
    "unit costs": [("shmalloc.bench._touch_pages", "miii"),
                   ("shmalloc.bench._time_hook", "ziaiib")],
}

WORKLOAD_GROUP = {"page_fault1": "page_fault1/thp", "thp": "page_fault1/thp",
                  "random": "random/phased", "phased": "random/phased", "hog": "hog"}

#: CPU seconds to compile each kernel after the ones before it in GROUPS,
#: measured with ``shmalloc bench --compile`` on this 2-core machine; a
#: kernel not listed costs 0.1 s.  A fresh compile process pays STARTUP_S
#: first (numba's typing and target set-up); the allocator's alloc path
#: holds most of the helpers every other kernel inlines.  Only for the
#: "about N s" of the first line.
ESTIMATE_S = {"lock.now_ticks": 0.2, "page_alloc.init_free_lists": 0.7,
              "page_alloc.alloc_pages": 4.5, "page_alloc.free_pages": 0.8,
              "workload.free_blocks": 1.1, "workload.run_chunks": 1.7,
              "workload.run_random": 1.3, "workload.hog_alloc": 0.5,
              "workload.run_random_user": 1.3,
              "mainline.reporting_cycle_step": 1.3, "boundary.boundary_cycle_step": 0.8,
              "isolate.isolate_pageblock": 0.4, "isolate.undo_isolate_page_range": 0.4,
              "bitmap.bitmap_scan": 0.9, "bitmap.bitmap_return": 0.2,
              "hostscan.host_scan_take": 0.4, "hostscan.host_scan_mark": 0.3,
              "bench._rounds": 0.8, "bench._touch_pages": 0.1, "bench._time_hook": 0.2}
STARTUP_S = 1.0
#: with two compile processes, the first stage splits the allocator's helpers
#: between its alloc and its free side, so the second stage finds them cached
ALLOC_SIDE = ("shmalloc.lock.now_ticks", "shmalloc.page_alloc.init_free_lists",
              "shmalloc.page_alloc.alloc_pages")
FREE_SIDE = ("shmalloc.page_alloc.free_pages", "shmalloc.pcp.drain_pages",
             "shmalloc.pcp.pcp_service_drain")
#: groups whose kernels inline the same workload helpers: one process
WORKLOADS = ("allocator", "page_fault1/thp", "random/phased", "user blocks", "hog", "trace",
             "bench")


@dataclass(frozen=True)
class Kernel:
    name: str          # module.function
    args: str          # argument codes (see GROUPS)

    @property
    def short(self) -> str:
        return self.name.split(".", 1)[1]

    def dispatcher(self):
        module, func = self.name.rsplit(".", 1)
        return getattr(importlib.import_module(module), func)

    def signature(self) -> tuple:
        return tuple(numba.typeof(v) for v in _sample_values(self.args))


def _sample_values(codes: str) -> list:
    make = {"f": lambda: np.zeros(1, FRAME_DTYPE), "z": lambda: np.zeros(1, np.int64),
            "m": lambda: np.zeros(1, np.int64), "a": lambda: np.zeros(1, np.int64),
            "B": lambda: np.zeros(1, np.bool_), "i": lambda: 0, "d": lambda: 1.0,
            "b": lambda: True, "k": lambda: np.zeros(1, np.int8),
            "u": lambda: np.zeros(1, np.uint8), "w": lambda: np.zeros(1, np.int32)}
    return [make[c]() for c in codes]


def group_kernels(groups) -> list[tuple[str, Kernel]]:
    """(group, kernel) for the groups, each kernel once, in group order."""
    seen, out = set(), []
    for g in groups:
        for name, args in GROUPS[g]:
            if name not in seen:
                seen.add(name)
                out.append((g, Kernel(name, args)))
    return out


def groups_for(cfgs) -> list[str]:
    """The groups the runs of ``cfgs`` (RunConfigs) need, allocator first."""
    groups = ["allocator"]
    for cfg in cfgs:
        user = getattr(cfg, "blocks", "buddy") == "user"
        for g in (WORKLOAD_GROUP.get(cfg.workload, "trace"), "user blocks" if user else None,
                  cfg.strategy):
            if g in GROUPS and g not in groups:
                groups.append(g)
    return groups


def jit_disabled() -> bool:
    return JIT_DISABLED


# ---------------------------------------------------------------------------
# Is it compiled, is it cached?
# ---------------------------------------------------------------------------

#: kernel name -> True if this process found it in the disk cache
_LOADED: dict[str, bool] = {}


def in_memory(k: Kernel) -> bool:
    return k.name in _LOADED


def cached(k: Kernel) -> bool:
    """Whether the disk cache holds ``k`` for this source, numba and CPU
    (reads the kernel's index file; loads nothing)."""
    try:
        disp = k.dispatcher()
        cache = disp._cache
        key = cache._index_key(k.signature(), disp.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:                    # no cache, an unreadable index: compile it
        return False


def _load(k: Kernel) -> bool:
    """Compile or load ``k`` in this process; True if it came from the cache."""
    disp = k.dispatcher()
    sig = k.signature()
    hits = sum(disp.stats.cache_hits.values())
    disp.compile(sig)
    loaded = sum(disp.stats.cache_hits.values()) > hits or _LOADED.get(k.name, False)
    _LOADED[k.name] = loaded
    return loaded


# ---------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------

def prepare(groups: list[str], command: str = "shmalloc", stream=None,
            progress: bool = True) -> bool:
    """Have every kernel of ``groups`` compiled in this process, compiling
    what the disk cache lacks first (see the module docstring).  ``stream``
    (stderr, or None for silence) gets the messages, prefixed with
    ``command``; without ``progress`` only the first line.  Returns True
    when every kernel came from the cache."""
    if jit_disabled():
        return False
    interrupt.enter("while compiling kernels")
    kernels = group_kernels(groups)
    todo = [(g, k) for g, k in kernels if not in_memory(k)]
    if jitcache.PROBLEM:
        _warn_once(command, stream, f"warning: numba cache {jitcache.PROBLEM}: compiling in "
                   "memory, every run compiles again")
    cold = [(g, k) for g, k in todo if not (jitcache.ENABLED and cached(k))]
    interrupt.checkpoint("compiling")
    if cold:
        display = Display(command, stream, cold, _estimate(cold), progress)
        if jitcache.ENABLED:
            _compile_in_children(cold, display)
            display.loading()
        for _, k in todo:                    # load (or compile, without a cache) here
            _load(k)
            if not jitcache.ENABLED:
                display.done(k.name)
        for _, k in cold:                    # compiled for this command, not found warm
            _LOADED[k.name] = False
        display.finish()
    else:
        for _, k in todo:
            _load(k)
    return all(_LOADED.get(k.name, False) for _, k in kernels)


_WARNED: set[str] = set()


def _warn_once(command: str, stream, text: str) -> None:
    if stream is not None and text not in _WARNED:
        _WARNED.add(text)
        interrupt.end_partial_line()
        stream.write(f"{command}: {text}\n")
        stream.flush()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except OSError:
        return 1


def jobs() -> int:
    """Compile processes: ``SHMALLOC_COMPILE_JOBS``, else 2 where a second
    cpu is idle (1-minute load average below cpus - 1), else 1.  Two
    processes spend more CPU in all (each starts numba, and they share a few
    small helpers), so they only pay when the second cpu would otherwise
    idle: measured on this 2-core machine while other work kept it busy
    (load average 6), 2 processes took 57 s and 1 took 38 s."""
    try:
        return max(1, int(os.environ.get("SHMALLOC_COMPILE_JOBS", "")))
    except ValueError:
        pass
    cpus = _cpus()
    return 2 if cpus >= 2 and os.getloadavg()[0] < cpus - 1 else 1


def _cost(part) -> float:
    return STARTUP_S + sum(ESTIMATE_S.get(k.short, 0.1) for _, k in part)


def _stages(cold: list[tuple[str, Kernel]]) -> list[list[list[tuple[str, Kernel]]]]:
    """How to compile ``cold``: stages one after another, each a list of
    parts compiled in parallel processes.  With one job: one stage, one
    part.  With two: the alloc and the free side of the allocator, then the
    workload kernels beside the design kernels (balanced), so that no two
    processes compile the same helpers."""
    if jobs() < 2:
        return [[cold]]
    first = [[x for x in cold if x[1].name in side] for side in (ALLOC_SIDE, FREE_SIDE)]
    rest = [x for x in cold if x[1].name not in ALLOC_SIDE + FREE_SIDE]
    units: dict[str, list] = {}
    for g, k in rest:
        units.setdefault("workloads" if g in WORKLOADS else g, []).append((g, k))
    parts: list[list] = [[], []]
    for unit in sorted(units.values(), key=_cost, reverse=True):
        min(parts, key=lambda p: _cost(p) if p else 0.0).extend(unit)
    stages = [[p for p in first if p], [p for p in parts if p]]
    return [s for s in stages if s]


def _estimate(cold) -> float:
    return sum(max(_cost(p) for p in stage) for stage in _stages(cold)) + 1.0


def _child_compile(part, wfd: int) -> None:
    """In a forked child: compile ``part`` into the disk cache, one line
    per kernel on ``wfd``; never returns."""
    status = 0
    try:
        die_with_parent()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for _, k in part:
            t0 = time.monotonic()
            try:
                _load(k)
                os.write(wfd, f"ok {k.name} {time.monotonic() - t0:.3f}\n".encode())
            except Exception as e:      # the launcher compiles it again, and says why
                os.write(wfd, f"fail {k.name} {type(e).__name__}\n".encode())
                status = 1
    except BaseException:
        status = 2
    finally:
        os._exit(status)


def _compile_in_children(cold, display) -> None:
    """Compile ``cold`` in forked children that fill the disk cache, stage
    by stage (:func:`_stages`); kills them on any exit (a signal, an
    error)."""
    for stage in _stages(cold):
        _compile_stage(stage, display)


def _compile_stage(stage, display) -> None:
    children: dict[int, int] = {}        # pid -> read end of its pipe
    buffers: dict[int, bytes] = {}
    try:
        for part in stage:
            with interrupt.deferred():   # a child is recorded as soon as it exists
                rfd, wfd = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.close(rfd)
                    _child_compile(part, wfd)
                os.close(wfd)
                children[pid] = rfd
                buffers[rfd] = b""
        open_fds = set(children.values())
        while open_fds:
            ready, _, _ = select.select(list(open_fds), [], [], 0.2)
            for fd in ready:
                data = os.read(fd, 4096)
                if not data:
                    open_fds.discard(fd)
                    continue
                buffers[fd] += data
                *lines, buffers[fd] = buffers[fd].split(b"\n")
                for line in lines:
                    kind, name, *_ = line.decode().split()
                    if kind == "ok":
                        display.done(name)
            display.tick()
    finally:
        with interrupt.deferred():
            for pid, fd in children.items():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                os.close(fd)


class Display:
    """The first line, then a bar on a terminal or a line per group."""

    def __init__(self, command: str, stream, cold, estimate_s: float, progress: bool = True):
        self.command = command
        self.stream = stream
        self.progress = progress and stream is not None
        self.total = len(cold)
        self.groups: dict[str, set[str]] = {}
        for g, k in cold:
            self.groups.setdefault(g, set()).add(k.name)
        self.group_size = {g: len(v) for g, v in self.groups.items()}
        self.done_names: set[str] = set()
        self.t0 = time.monotonic()
        self.tty = stream is not None and stream.isatty()
        self.last = ""
        self.phase = ""
        if stream is not None:
            about = max(5, int(5 * round(estimate_s / 5)))
            interrupt.end_partial_line()
            stream.write(f"{command}: compiling {self.total} kernel"
                         f"{'s' if self.total != 1 else ''} (first run only, about {about} s)\n")
            stream.flush()
            self.tick()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def done(self, name: str) -> None:
        if name in self.done_names:
            return
        self.done_names.add(name)
        for g, names in self.groups.items():
            if name in names:
                names.discard(name)
                if not names and not self.tty and self.progress:
                    n = self.group_size[g]
                    self.stream.write(f"{self.command}: compiled {g} ({n} kernel"
                                      f"{'s' if n > 1 else ''}) at {self.elapsed():.1f} s\n")
                    self.stream.flush()
        self.tick()

    def loading(self) -> None:
        self.phase = "loading"
        self.tick()

    def tick(self) -> None:
        if not (self.tty and self.progress):
            return
        width = max(10, min(40, shutil.get_terminal_size((80, 24)).columns - 40))
        n = len(self.done_names)
        fill = width * n // max(1, self.total)
        line = (f"\r  [{'#' * fill}{'-' * (width - fill)}] {n}/{self.total} kernels "
                f"{self.elapsed():5.1f} s {self.phase}")
        if line != self.last:
            self.last = line
            self.stream.write(line + "\033[K")
            self.stream.flush()
            interrupt.partial_line(True)

    def finish(self) -> None:
        if self.tty and self.progress:
            self.stream.write(f"\r  compiled {self.total} kernels in {self.elapsed():.1f} s"
                              "\033[K\n")
            self.stream.flush()
            interrupt.partial_line(False)


# ---------------------------------------------------------------------------
# shmalloc bench --compile
# ---------------------------------------------------------------------------

def _breakdown(import_s: float) -> dict:
    """In a fresh process with an empty cache: compile every group in order,
    one kernel at a time, timing each (wall and CPU seconds)."""
    rows = []
    for g, k in group_kernels(GROUPS):
        k.dispatcher()                   # import the module outside the timing
        w0, c0 = time.perf_counter(), time.process_time()
        _load(k)
        rows.append({"group": g, "kernel": k.short, "s": round(time.perf_counter() - w0, 3),
                     "cpu_s": round(time.process_time() - c0, 3)})
    return {"import_s": round(import_s, 3), "kernels": rows}


def _prepare_all(t0: float) -> dict:
    prepare(list(GROUPS), stream=None)
    cpu = sum(getattr(resource.getrusage(who), f)
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return {"s": round(time.perf_counter() - t0, 3), "cpu_s": round(cpu, 3), "jobs": jobs()}


def child_main(what: str, t0: float, import_s: float) -> dict:
    """The measurement ``what`` in the fresh process :data:`_CHILD` starts."""
    return _breakdown(import_s) if what == "breakdown" else _prepare_all(t0)


#: the fresh process of a measurement: it times the import of numba and the
#: kernel modules itself, before this module (which imports them) loads; a
#: prepare's time counts from its start, imports included, as a command's does
_CHILD = ("import time; t0 = time.perf_counter(); import shmalloc.config; "
          "import_s = time.perf_counter() - t0; import json, sys; "
          "from launcher.experiment.compile import child_main; "
          "print(json.dumps(child_main(sys.argv[1], t0, import_s)))")


def _fresh_process(what: str, cache_dir: str, **env_extra) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, **env_extra)
    res = subprocess.run([sys.executable, "-c", _CHILD, what], env=env,
                         capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"compile measurement failed: {res.stderr.strip()[-500:]}")
    return json.loads(res.stdout)


def measure() -> dict:
    """Where a cold compile goes (``shmalloc bench --compile``): per kernel
    in one process, every group as the launcher compiles it, and loading
    every kernel from the filled cache; each from a fresh process."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="shmalloc-compile-") as tmp:
        out["serial"] = _fresh_process("breakdown", os.path.join(tmp, "serial"))
        out["launcher"] = [_fresh_process("prepare", os.path.join(tmp, f"jobs{n}"),
                                          SHMALLOC_COMPILE_JOBS=str(n)) for n in (1, 2)]
        out["warm"] = _fresh_process("prepare", os.path.join(tmp, "jobs1"))
    out["cpus"] = _cpus()
    return out


def format_measure(res: dict) -> list[str]:
    rows = res["serial"]["kernels"]
    lines = ["shmalloc bench --compile: a cold numba compile, each measurement in a fresh "
             "process with an empty NUMBA_CACHE_DIR", "",
             f"{'group':<17}{'kernel':<42}{'s':>7}{'cpu s':>8}"]
    for r in rows:
        lines.append(f"{r['group']:<17}{r['kernel']:<42}{r['s']:>7.2f}{r['cpu_s']:>8.2f}")
    by_group: dict[str, float] = {}
    for r in rows:
        by_group[r["group"]] = by_group.get(r["group"], 0.0) + r["s"]
    total = sum(r["s"] for r in rows)
    cpu = sum(r["cpu_s"] for r in rows)
    lines += ["", "per group, s: " + ", ".join(f"{g} {s:.1f}" for g, s in by_group.items()),
              f"importing the kernel modules: {res['serial']['import_s']:.2f} s",
              f"every kernel, one after another in one process: {total:.1f} s "
              f"({cpu:.1f} s CPU)",
              *(f"every kernel as the launcher compiles them, {r['jobs']} process"
                f"{'es' if r['jobs'] > 1 else ''} filling the cache, then loaded: {r['s']:.1f} s "
                f"({r['cpu_s']:.1f} s CPU)" for r in res["launcher"]),
              f"loading every kernel from the filled cache: {res['warm']['s']:.2f} s"]
    return lines

