"""``shmalloc trace``: record the kernel's page allocator while a command
runs, and describe a recorded trace; and the glue that lets ``run``,
``compare`` and ``sweep`` replay one (``--workload trace:FILE``).

Recording (``trace record``) streams the three kmem events from a private
trace instance (:mod:`launcher.tracefs`) while CMD runs: every round it reads
each CPU's ring buffer until it is empty, decodes the pages with a compiled
parser, and writes the events older than what every CPU has certainly
delivered (a time cut) as one time-ordered chunk of the file
(:mod:`shmalloc.tracefile`).  When CMD ends, tracing stops, the buffers are
drained, the per-CPU overrun counters are read, and the footer says how many
events were lost.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

from shmalloc import tracefile
from shmalloc.tracefile import EVENT_FIELDS, OP_ALLOC, OP_FREE, OP_FREE_BATCHED, OP_NAMES

DEFAULT_BUFFER_KIB = 16384       # per CPU; see the README on loss
RECORD_ZLIB_LEVEL = 1            # the reader compresses as it goes: cheap beats small
ROUND_S = 0.02                   # the reader sleeps this long when every buffer was empty
COMMIT_MARGIN_NS = 2_000_000     # an event may commit this long after its timestamp
CHUNK_EVENTS = 1 << 18           # events per chunk of the file (at least, but the last)
CHILD_GRACE_S = 5.0              # after a signal, CMD has this long to exit before SIGKILL


class RecordError(Exception):
    """Bad input or a missing facility: one line, exit 2."""


# ---------------------------------------------------------------------------
# record
# ---------------------------------------------------------------------------

def _migratetype_names() -> list[str]:
    """Migratetype names in index order, from /proc/pagetypeinfo."""
    names: list[str] = []
    try:
        with open("/proc/pagetypeinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 5 and parts[0] == "Node" and parts[4] == "type":
                    if parts[5] in names:
                        break
                    names.append(parts[5])
    except OSError:
        pass
    return names


class _Staging:
    """Decoded events not yet written: grown as pages arrive, cut by time."""

    def __init__(self):
        self.ev = {k: np.zeros(0, dt) for k, dt in EVENT_FIELDS.items()}

    def add(self, ev: dict[str, np.ndarray]) -> None:
        self.ev = {k: np.concatenate([self.ev[k], ev[k]]) for k in EVENT_FIELDS}

    def take_before(self, cut: int) -> dict[str, np.ndarray]:
        ts = self.ev["ts"]
        sel = ts < cut
        out = {k: v[sel] for k, v in self.ev.items()}
        self.ev = {k: v[~sel] for k, v in self.ev.items()}
        order = np.argsort(out["ts"], kind="stable")
        return {k: v[order] for k, v in out.items()}


class Recorder:
    """One recording: the instance, CMD, the reader loop and the file."""

    def __init__(self, out: str, cmd: list[str], buffer_kib: int, pid_tree: bool,
                 force: bool, root: str | None = None, quiet: bool = False):
        from . import tracefs
        self.tracefs = tracefs
        self.root = root or tracefs.TRACEFS
        self.out, self.cmd, self.buffer_kib = out, cmd, buffer_kib
        self.pid_tree, self.force, self.quiet = pid_tree, force, quiet
        self.signal_received: int | None = None
        self.staging = _Staging()
        self.ready: list[dict] = []
        self.ready_n = 0
        self.missed = np.zeros(3, np.int64)
        self.pages_read = 0
        self.first_ts: int | None = None

    def _on_signal(self, signum, frame) -> None:
        self.signal_received = signum

    # -- reading -----------------------------------------------------------
    def _read_round(self, inst, layout, drain_all: bool) -> int:
        """Read every CPU's buffer until empty (or a bounded number of
        pages); decode; move what is old enough into ``ready``."""
        from .tracefs import parse_pages
        cut = None
        total = 0
        for i, cpu in enumerate(inst.cpus):
            started = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            buf = bytearray()
            limit = 1 << 30 if drain_all else 4096
            got = inst.read_available(i, buf, limit)
            total += got
            last_ts = None
            if got:
                self.pages_read += got
                cap = got * (inst.page_size // 16) + 1
                arrs = {k: np.zeros(cap, dt) for k, dt in EVENT_FIELDS.items()}
                n = parse_pages(np.frombuffer(bytes(buf), dtype="<u4"), got,
                                inst.page_size // 4, layout.vector, arrs["ts"], arrs["cpu"],
                                cpu, arrs["pid"], arrs["op"], arrs["pfn"], arrs["order"],
                                arrs["mt"], 0, self.missed)
                if n < 0:
                    raise RuntimeError("ring-buffer pages held more events than they can")
                if n > 0:
                    self.staging.add({k: v[:n] for k, v in arrs.items()})
                    last_ts = int(arrs["ts"][n - 1])
            # everything this CPU committed before we started reading it is in
            safe = started - COMMIT_MARGIN_NS if got < limit else (last_ts or started)
            cut = safe if cut is None else min(cut, safe)
        if drain_all:
            cut = np.iinfo(np.int64).max
        batch = self.staging.take_before(cut)
        if len(batch["ts"]) and self.first_ts is None:
            self.first_ts = int(batch["ts"][0])
        if len(batch["ts"]):
            self.ready.append(batch)
            self.ready_n += len(batch["ts"])
        return total

    def _flush(self, writer, final: bool) -> None:
        if self.ready_n and (final or self.ready_n >= CHUNK_EVENTS):
            batch = {k: np.concatenate([b[k] for b in self.ready]) for k in EVENT_FIELDS}
            writer.add(batch)
            self.ready, self.ready_n = [], 0

    # -- the child -----------------------------------------------------------
    def _spawn(self):
        """Start CMD held before its exec, so that it is traced (and, with
        --pid-tree, filtered by pid) from its first instruction: a small
        shell waits for one byte on a pipe, then execs CMD in its own pid.
        (Forking this process instead would trace the freeing of a copy of
        the recorder's page tables at exec.)  Returns the child and the
        pipe's write end; closing it unsent makes the shell exit 127."""
        r, w = os.pipe()
        hold = f'read go <&{r} && exec {r}<&- && exec "$@"; exit 127'
        try:
            child = subprocess.Popen(["/bin/sh", "-c", hold, "sh", *self.cmd], pass_fds=(r,))
        finally:
            os.close(r)
        return child, w

    def _end_child(self, child) -> None:
        """After a signal: SIGTERM is passed on to CMD at once; Ctrl-C
        reached CMD from the terminal already, so it gets a second to exit
        before SIGINT is passed on; SIGKILL after a grace period."""
        if self.signal_received == signal.SIGINT:
            try:
                child.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
        if child.poll() is None:
            child.send_signal(self.signal_received)
        try:
            child.wait(CHILD_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    # -- the whole recording -------------------------------------------------
    def run(self) -> int:
        tfs = self.tracefs
        mounted = tfs.check_environment(self.root)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        inst = tfs.Instance(self.root)
        writer = child = None
        go_fd = None
        try:
            layout = tfs.EventLayout(self.root)
            inst.create(self.buffer_kib)
            # compile (or load) the parser now, with the types the reader
            # passes (a read-only word view), not while the buffers fill
            z = {k: np.zeros(1, dt) for k, dt in EVENT_FIELDS.items()}
            tfs.parse_pages(np.frombuffer(bytes(4), dtype="<u4"), 0, 1, layout.vector, z["ts"],
                            z["cpu"], 0, z["pid"], z["op"], z["pfn"], z["order"], z["mt"], 0,
                            self.missed)
            if self.signal_received is not None:          # before CMD started: nothing to keep
                print(f"shmalloc trace record: interrupted by "
                      f"{signal.Signals(self.signal_received).name} before {self.cmd[0]} "
                      "started; nothing recorded", file=sys.stderr)
                return 128 + self.signal_received
            writer = tracefile.TraceWriter(self.out, force=self.force, level=RECORD_ZLIB_LEVEL)
            child, go_fd = self._spawn()
            inst.filter_pids([child.pid] if self.pid_tree else None, [os.getpid()])
            inst.start()
            start_wall = datetime.datetime.now(datetime.timezone.utc)
            start_mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            os.write(go_fd, b"go\n")
            os.close(go_fd)
            go_fd = None
            while child.poll() is None and self.signal_received is None:
                if self._read_round(inst, layout, drain_all=False) == 0:
                    time.sleep(ROUND_S)
                self._flush(writer, final=False)
            if self.signal_received is not None:
                self._end_child(child)
            end_mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            inst.stop()
            self._read_round(inst, layout, drain_all=True)
            self._flush(writer, final=True)
            stats = inst.stats()
            footer = self._footer(inst, stats, start_wall, start_mono, end_mono, child)
            writer.close(footer)
            writer = None
            self._report(footer)
            if self.signal_received is not None:
                return 128 + self.signal_received
            return 0 if child.returncode == 0 else 1
        finally:
            if go_fd is not None:
                os.close(go_fd)                 # an unstarted CMD sees EOF and exits
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()
            if writer is not None:
                writer.discard()
            inst.remove()
            if mounted:
                tfs.unmount(self.root)
            for s, h in old.items():
                signal.signal(s, h)

    def _footer(self, inst, stats, start_wall, start_mono, end_mono, child) -> dict:
        lost_by_cpu = {str(c): {k: s.get(k, 0) for k in ("overrun", "commit_overrun",
                                                          "dropped_events")}
                       for c, s in stats.items()}
        lost = sum(sum(v.values()) for v in lost_by_cpu.values())
        missed_pages = int(self.missed[1])
        lost = max(lost, int(self.missed[0]))
        from . import metadata
        return {
            "kernel": os.uname().release,
            "machine": os.uname().machine,
            "page_size": os.sysconf("SC_PAGE_SIZE"),
            "cpus": len(inst.cpus),
            "command": self.cmd,
            "cwd": os.getcwd(),
            "pid_tree": self.pid_tree,
            "root_pid": child.pid,
            "exit_status": child.returncode,
            "interrupted": (signal.Signals(self.signal_received).name
                            if self.signal_received else None),
            "start_wall": start_wall.isoformat(timespec="milliseconds"),
            # the events' clock: CLOCK_MONOTONIC for "mono"; else the
            # recording is taken to start at its first event
            "start_mono_ns": start_mono if inst.clock == "mono" else self.first_ts,
            "duration_ns": end_mono - start_mono,
            "clock": inst.clock,
            "reader": "trace_pipe_raw",
            "buffer_kib": self.buffer_kib,
            "subbuf_bytes": inst.page_size,
            "pages_read": self.pages_read,
            "reader_cpu_s": round(sum(getattr(resource.getrusage(resource.RUSAGE_SELF), k)
                                      for k in ("ru_utime", "ru_stime")), 3),
            "lost_events": lost,
            "lost_by_cpu": lost_by_cpu,
            "missed_pages": missed_pages,
            "damaged_pages": int(self.missed[2]),
            "lossy": bool(lost or missed_pages),
            "migratetypes": _migratetype_names(),
            "recorder": f"shmalloc {metadata._version('shmalloc')}",
            "git_commit": metadata._git_commit(),
        }

    def _report(self, footer: dict) -> None:
        n = tracefile.read_header(self.out)[0]["events"]
        dur = footer["duration_ns"] / 1e9
        size = os.path.getsize(self.out)
        cmd = shlex.join(self.cmd)
        if not self.quiet:
            print(f"shmalloc trace record: {n} events in {dur:.2f} s ({n / max(dur, 1e-9):,.0f} "
                  f"events/s) while running {cmd}; {size / 2**20:.2f} MiB written to {self.out}")
        if footer["lossy"]:
            per = ", ".join(f"cpu{c} {sum(v.values())}" for c, v in footer["lost_by_cpu"].items()
                            if sum(v.values()))
            print(f"shmalloc trace record: LOST {footer['lost_events']} events"
                  f"{' (' + per + ')' if per else ''}; the file is marked lossy: record again "
                  f"with a larger --buffer-kib (now {self.buffer_kib})", file=sys.stderr)
        elif not self.quiet:
            print("shmalloc trace record: no events lost")
        if footer["interrupted"]:
            print(f"shmalloc trace record: interrupted by {footer['interrupted']}; the trace "
                  "holds what was recorded until then", file=sys.stderr)
        elif footer["exit_status"] != 0:
            print(f"shmalloc trace record: {cmd} exited with status {footer['exit_status']}",
                  file=sys.stderr)


def check_record_args(args) -> list[str]:
    """Validate ``trace record``'s command line before anything is created."""
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise RecordError("no command to record: give one after --, e.g. "
                          "shmalloc trace record --out t.trace -- python3 -c pass")
    if shutil.which(cmd[0]) is None:
        raise RecordError(f"{cmd[0]}: command not found")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise RecordError(f"--out {args.out}: folder {folder} does not exist")
    if os.path.isdir(args.out):
        raise RecordError(f"--out {args.out} is a folder")
    if os.path.exists(args.out) and not args.force:
        raise RecordError(f"--out {args.out} exists; use --force to overwrite it")
    return cmd


def cmd_trace_record(args) -> int:
    from .cli import UsageError
    from .tracefs import TraceSetupError
    try:
        cmd = check_record_args(args)
        return Recorder(args.out, cmd, args.buffer_kib, args.pid_tree, args.force,
                        quiet=args.quiet).run()
    except (RecordError, TraceSetupError) as e:
        raise UsageError(f"shmalloc trace record: {e}") from None


# ---------------------------------------------------------------------------
# --workload trace:FILE
# ---------------------------------------------------------------------------

TRACE_PREFIX = "trace:"
HEADROOM = 1.25                  # default guest: peak live memory x this ...
HEADROOM_BYTES = 16 << 20        # ... + this + every worker's pcp high watermark
SKIP_NOTE_SHARE = 0.05           # a replay that skips more than this says so
_plans: dict = {}
_warned: set = set()


def trace_path(workload: str | None) -> str | None:
    if workload and workload.startswith(TRACE_PREFIX):
        return workload[len(TRACE_PREFIX):]
    return None


def _prog() -> str:
    """The command's name for messages: 'shmalloc run', 'shmalloc compare'..."""
    base = os.path.basename(sys.argv[0]) if sys.argv else "shmalloc"
    if base in ("shmalloc", "__main__.py") and len(sys.argv) > 1:
        return f"shmalloc {sys.argv[1]}"
    return base


def load_plan(path: str):
    """The decoded, paired trace (cached per file); a bad file is a
    ConfigError naming --workload (one line, exit 2)."""
    from shmalloc import replay
    from shmalloc.machine import ConfigError
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    if key is not None and key in _plans:
        return _plans[key]
    from . import compile as kernels
    kernels.prepare(["trace"], _prog(), sys.stderr)     # say so when it compiles
    try:
        pl = replay.plan(tracefile.load(path))
    except tracefile.TraceFileError as e:
        raise ConfigError("--workload", f"trace:{e}") from None
    if len(pl.kind) and pl.replayable == 0:
        raise ConfigError("--workload", f"trace:{path}: nothing to replay (no allocation or "
                          "free events)")
    _plans.clear()
    _plans[key] = pl
    if pl.trace.lossy and key not in _warned:
        _warned.add(key)
        print(f"{_prog()}: warning: {path} is lossy: {pl.trace.lost_events} events were lost "
              "while it was recorded; the replay frees a block whose free was lost when its pfn "
              "is allocated again, and skips frees whose allocation was lost", file=sys.stderr)
    return pl


def _unit(cfg) -> int:
    from shmalloc.config import PAGE_SIZE
    return cfg.zones * (PAGE_SIZE << (cfg.max_order - 1))


def _round_up(n: int, unit: int) -> int:
    return max(unit, -(-n // unit) * unit)


def needed_memory(cfg) -> tuple[int, int]:
    """(least guest the trace fits in: its peak live memory, rounded up to
    the guest's unit; the default guest: that with headroom for the pcp
    lists and fragmentation)."""
    from shmalloc.config import PAGE_SIZE
    pl = load_plan(cfg.trace)
    peak = pl.peak_live_pages * PAGE_SIZE
    unit = _unit(cfg)
    least = _round_up(peak, unit)
    default = _round_up(int(peak * HEADROOM) + HEADROOM_BYTES
                        + cfg.workers * cfg.pcp_high * PAGE_SIZE, unit)
    return least, default


def default_memory(cfg) -> int:
    return needed_memory(cfg)[1]


def check_config(cfg) -> None:
    """A trace's demands on the guest, before anything is created."""
    from shmalloc.machine import ConfigError

    from .options import format_size
    from .summary import fmt_bytes
    pl = load_plan(cfg.trace)
    if pl.max_order > cfg.max_order:
        raise ConfigError("--max-order", f"{cfg.trace} allocates blocks of order "
                          f"{pl.max_order - 1}: needs --max-order {pl.max_order} or more, got "
                          f"{cfg.max_order}")
    if cfg.memory is not None:
        least, default = needed_memory(cfg)
        if cfg.memory < least:
            raise ConfigError("--memory", f"{format_size(cfg.memory)} is too small for "
                              f"{cfg.trace}: its peak live memory is "
                              f"{fmt_bytes(pl.peak_live_pages * 4096)}, so it needs at least "
                              f"{format_size(least)} (without --memory: {format_size(default)})")
    if cfg.trace_speed < 0:
        raise ConfigError("--trace-speed", f"must be >= 0, got {cfg.trace_speed}")
    if cfg.trace_wait <= 0:
        raise ConfigError("--trace-wait", f"must be > 0, got {cfg.trace_wait}")
    if cfg.trace_loops < 0 or (cfg.trace_loops == 0 and not cfg.duration):
        raise ConfigError("--trace-loops", f"must be >= 1, or 0 (until --duration) with "
                          f"--duration, got {cfg.trace_loops}")


def prepare(cfg, machine):
    """The replay's shared state, created (and its kernels compiled) in the
    launcher before the workers fork."""
    from shmalloc.replay import Shared
    shared = Shared(load_plan(cfg.trace), cfg.workers, cfg.trace_speed, cfg.trace_wait,
                    cfg.trace_loops)
    shared.warm(machine)
    return shared


def replay_results(shared, cfg, elapsed: float) -> dict:
    """The RUN record's ``trace``: what the file held, what was replayed,
    skipped and failed, and the pace against the recording."""
    pl = shared.plan
    per = [shared.counters(w) for w in range(shared.workers)]
    total = {k: sum(p[k] for p in per) for k in per[0] if k not in ("last_ts", "loops")}
    wait_ticks = total.pop("wait_ticks")
    replayed = total.pop("events")
    replayed_s = max(p["last_ts"] for p in per) / 1e9
    skipped = total["skipped_before"] + total["skipped_failed"] + total["skipped_other"]
    stream = sum(len(i) for i in shared.idx)
    h = pl.trace.header
    return {
        "file": cfg.trace,
        "command": h.get("command"),
        "kernel": h.get("kernel"),
        "recorded_s": round(pl.trace.duration_s, 3),
        "pid_tree": h.get("pid_tree"),
        "lossy": pl.trace.lossy,
        "lost_events": pl.trace.lost_events,
        "events_in_file": len(pl.kind),
        "kinds": pl.counts(),
        "peak_live_bytes": pl.peak_live_pages * 4096,
        "speed": cfg.trace_speed,
        "events": stream,
        "replayed": replayed,
        **total,
        "wait_s": round(wait_ticks / shared.ticks_per_sec, 4),
        "skipped": skipped,
        "skipped_share": round(skipped / replayed, 4) if replayed else 0.0,
        "loops": cfg.trace_loops,
        "passes": min(p["loops"] for p in per),
        "complete": bool(cfg.trace_loops) and min(p["loops"] for p in per) >= cfg.trace_loops,
        "replayed_trace_s": round(replayed_s, 4),
        "pace": round(replayed_s / elapsed, 3) if elapsed > 0 else None,
        "per_worker": per,
    }


def summary_lines(run: dict) -> list[str]:
    """The summary's trace section, and its notes."""
    t = run.get("trace")
    if not t:
        return []
    k = t["kinds"]
    speed = "as fast as possible" if not t["speed"] else f"at {t['speed']:g}x the recorded pace"
    cmd = shlex.join(t["command"]) if t.get("command") else "?"
    pace = f"{t['pace']:.2f}x the recorded pace" if t.get("pace") is not None else "-"
    lines = ["", f"trace replay: {t['file']} ({cmd}; {t['recorded_s']:.2f} s recorded"
             f"{', --pid-tree' if t.get('pid_tree') else ''})",
             f"  events       {t['replayed']} replayed ({t['events']} per pass, {t['passes']} "
             f"whole pass{'es' if t['passes'] != 1 else ''}), {speed}: {pace}"
             + (" (stopped before the end)" if t["loops"] and not t["complete"] else ""),
             f"  not replayed {k['duplicate']} mm_page_free_batched (each repeats a free), "
             f"{k['failed_in_trace']} allocations the kernel failed",
             f"  allocations  {t['allocs']} satisfied, {t['failed']} failed (the guest could "
             "not satisfy them)",
             f"  frees        {t['frees']}: {t['cross_frees']} on another worker than the "
             f"allocation's, {t['implicit_frees']} implicit (pfn allocated again), "
             f"{t['late_frees']} late; {t['pieces']} pieces of split blocks",
             f"  skipped      {t['skipped']} ({100 * t['skipped_share']:.1f} %): "
             f"{t['skipped_before']} frees of pages allocated before the recording, "
             f"{t['skipped_failed']} of failed allocations, {t['skipped_other']} other",
             f"  waits        {t['waits']} frees waited {t['wait_s']:.3f} s for another "
             f"worker's allocation; {t['gave_up']} gave up"]
    lines += [f"  NOTE: {n}" for n in notes(run)]
    return lines


def notes(run: dict) -> list[str]:
    """What a reader of a replay's results must not miss."""
    t = run.get("trace")
    if not t:
        return []
    out = []
    if t["skipped_share"] > SKIP_NOTE_SHARE:
        out.append(f"{t['file']}: {100 * t['skipped_share']:.1f} % of the events were skipped "
                   "(more than 5 %): the replay differs from the recording")
    if t["lossy"]:
        out.append(f"{t['file']} is lossy: {t['lost_events']} events were lost while it was "
                   "recorded")
    return out


# ---------------------------------------------------------------------------
# info, and the command line
# ---------------------------------------------------------------------------

def format_info(path: str) -> list[str]:
    """``trace info``: what a trace holds (lines)."""
    from types import SimpleNamespace

    from .options import format_size
    from .summary import fmt_bytes
    pl = load_plan(path)
    tr = pl.trace
    h, ev = tr.header, tr.ev
    n = len(tr)
    dur = tr.duration_s
    ops = np.bincount(ev["op"], minlength=3)
    c = pl.counts()
    interrupted = f", interrupted by {h['interrupted']}" if h.get("interrupted") else ""
    lines = [f"shmalloc trace info: {path}",
             f"  command      {shlex.join(h.get('command') or ['?'])} (exit status "
             f"{h.get('exit_status')}{interrupted})",
             f"  recorded     {h.get('start_wall', '?')} on Linux {h.get('kernel', '?')} "
             f"({h.get('machine', '?')}), {h.get('cpus', '?')} CPUs, "
             f"{h.get('page_size', 4096) >> 10} KiB pages, clock {h.get('clock', '?')}, "
             + ("only CMD's process tree (--pid-tree)" if h.get("pid_tree") else "machine-wide"),
             f"  events       {n} in {dur:.2f} s: {n / dur if dur > 0 else 0:,.0f} events/s ("
             + ", ".join(f"{ops[i]} {OP_NAMES[i]}" for i in range(3)) + ")",
             "  per CPU      " + ", ".join(f"cpu{cpu} {cnt}" for cpu, cnt in
                                          enumerate(np.bincount(ev["cpu"])) if cnt)]
    if tr.lossy:
        per = ", ".join(f"cpu{cpu} {sum(v.values())}" for cpu, v in
                        (h.get("lost_by_cpu") or {}).items() if sum(v.values()))
        lines.append(f"  lossy        YES: {tr.lost_events} events lost while recording"
                     + (f" ({per})" if per else "")
                     + f"; {h.get('missed_pages', 0)} ring-buffer pages flagged")
    else:
        lines.append("  lossy        no: no events lost (per-CPU overrun and dropped counters 0)")
    least, default = needed_memory(SimpleNamespace(trace=path, zones=1, max_order=11,
                                                   workers=2, pcp_high=378))
    lines += [f"  peak live    {fmt_bytes(pl.peak_live_pages * 4096)} (allocated in the "
              f"recording and not yet freed, in time order); a replay needs --memory "
              f"{format_size(least)} or more (default for 2 workers: {format_size(default)})",
              f"  pairing      {c['free']} frees of recorded allocations, {c['piece']} pieces of "
              f"split blocks, {c['skipped_before']} frees of pages allocated before the "
              f"recording, {c['skipped_other']} unmatched; {pl.superseded} allocations of a "
              "pfn whose free was not seen"]
    t = time.perf_counter()                  # again, now that the decoder is loaded
    tracefile.load(path)
    decode_s = time.perf_counter() - t
    lines.append(f"  decoding     {n} events in {decode_s:.4f} s: "
                 f"{n / max(decode_s, 1e-9) / 1e6:.1f} M events/s")
    pids, cnt = np.unique(ev["pid"], return_counts=True)
    top = np.argsort(-cnt, kind="stable")[:8]
    lines.append(f"  pids         {len(pids)}: " + ", ".join(f"{pids[i]} ({cnt[i]})" for i in top)
                 + (", ..." if len(pids) > len(top) else ""))
    max_o = int(ev["order"][ev["op"] != OP_FREE_BATCHED].max()) + 1 if n else 1
    lines += ["", "orders       " + "".join(f"{o:>8}" for o in range(max_o))]
    for op, name in ((OP_ALLOC, "alloc"), (OP_FREE, "free")):
        hist = np.bincount(ev["order"][ev["op"] == op], minlength=max_o)[:max_o]
        lines.append(f"  {name:<11}" + "".join(f"{v:>8}" for v in hist))
    names = h.get("migratetypes") or []
    mts = ev["mt"][ev["op"] == OP_ALLOC]
    lines += ["", "migratetypes of the allocations"]
    for mt, cnt_mt in enumerate(np.bincount(mts[mts >= 0].astype(np.int64))):
        if cnt_mt:
            name = names[mt] if mt < len(names) else f"type {mt}"
            lines.append(f"  {name:<12}{cnt_mt:>10}")
    return lines


def cmd_trace_info(args) -> int:
    from shmalloc.machine import ConfigError

    from .cli import UsageError
    try:
        print("\n".join(format_info(args.file)))
    except ConfigError as e:
        raise UsageError(f"shmalloc trace info: {e.detail.removeprefix('trace:')}") from None
    return 0


def add_trace_parser(sub) -> None:
    from . import options as opt
    p = sub.add_parser("trace", help="record the kernel's page allocator while a command runs; "
                       "describe a trace",
                       description="Record the page allocator's events (kmem:mm_page_alloc, "
                       "mm_page_free, mm_page_free_batched) while a command runs, into a trace "
                       "file that --workload trace:FILE replays under any design; or describe "
                       "one.")
    acts = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    acts.required = True
    r = acts.add_parser("record", help="record while CMD runs (root, tracefs)",
                        description="Run CMD and record the kernel's page allocator meanwhile, "
                        "machine-wide (or only CMD's process tree with --pid-tree), from a "
                        "private trace instance; the tracing state is left as it was found. "
                        "Exit 0 when CMD succeeded, 1 when it failed (the trace is written), "
                        "2 on bad input or when recording is impossible here.")
    r.add_argument("--out", required=True, metavar="FILE", help="the trace file to write")
    r.add_argument("--buffer-kib", type=opt.int_range(64, 1 << 20), default=DEFAULT_BUFFER_KIB,
                   metavar="N", help=f"ring buffer per CPU, KiB (default {DEFAULT_BUFFER_KIB})")
    r.add_argument("--pid-tree", action="store_true",
                   help="only events of CMD and its descendants (drops kernel work done for "
                   "them in other contexts)")
    r.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    r.add_argument("--quiet", action="store_true", help="print only problems")
    r.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                   help="the command to run while recording")
    r.set_defaults(func=cmd_trace_record)
    i = acts.add_parser("info", help="describe a trace file",
                        description="Print what a trace file holds: events, duration, events "
                        "per second, orders and migratetypes, the peak live memory, the pids, "
                        "and whether events were lost.")
    i.add_argument("file", metavar="FILE")
    i.set_defaults(func=cmd_trace_info)
