"""``shmalloc trace record``: record the kernel's page allocator while a
command runs, into a trace file that ``--workload trace:FILE`` replays
(:mod:`launcher.experiment.replay`).

Recording streams the three kmem events from a private
trace instance (:mod:`launcher.capture.tracefs`) while CMD runs: every round it reads
each CPU's ring buffer until it is empty, decodes the pages with a compiled
parser, and writes the events older than what every CPU has certainly
delivered (a time cut) as one time-ordered chunk of the file
(:mod:`shmalloc.tracefile`).  When CMD ends, tracing stops, the buffers are
drained, the per-CPU overrun counters are read, and the footer says how many
events were lost.
"""

from __future__ import annotations

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
from shmalloc.tracefile import EVENT_FIELDS

from ..experiment import metadata
from . import tracefs
from .tracefs import parse_pages

DEFAULT_BUFFER_KIB = 16384       # per CPU; see docs/real-programs.md on loss
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
