"""tracefs: a private trace instance, the kmem page-allocator events, and a
compiled reader of the raw per-CPU ring-buffer pages.

Recording never touches the global tracing state.  It creates its own
instance (``instances/shmalloc-<pid>``: a ring buffer with its own event
switches, ``tracing_on``, buffer size, clock, pid filters and options,
Documentation/trace/ftrace.rst, "Instances"), enables the three kmem events
there, and removes the whole instance when it is done, on every path.  So the
state found (top-level events, ``tracing_on``, buffer size, clock, other
instances) is the state left.  An instance left behind by a recorder killed
with SIGKILL is removed by the next recording (its pid is gone).  If tracefs
had to be mounted, it is unmounted again.

The events, as include/trace/events/kmem.h defines them (Linux 4.x to 6.x;
offsets are read from each event's ``format`` file, never assumed):

``mm_page_alloc``
    ``pfn``, ``order``, ``gfp_flags``, ``migratetype``, fired at the end of
    ``__alloc_pages`` for every allocation, pcp or buddy; ``pfn`` is -1UL
    when the allocation failed (the page was NULL).
``mm_page_free``
    ``pfn``, ``order``, fired in ``free_pages_prepare`` for every free.
``mm_page_free_batched``
    ``pfn`` (order 0), fired in ``free_unref_folios`` (``free_hot_cold_page_list``
    before 5.x) for each page of a batch *after* that page's ``free_pages_prepare``
    fired ``mm_page_free``: it duplicates a free already seen.  It is recorded
    (``trace info`` counts it) and never replayed.

The reader uses ``per_cpu/cpuN/trace_pipe_raw``: binary ring-buffer pages, a
header (``events/header_page``: timestamp, commit) followed by events with a
32-bit header (``events/header_event``: 5-bit type_len, 27-bit time delta;
type 29 padding, 30 time extend, 31 absolute time stamp, 0 a data event whose
length is in the next word, 1..28 a data event of type_len * 4 bytes).  This
layout is what tools/lib/traceevent/kbuffer-parse.c (trace-cmd) decodes; the
page parser below follows it.  Measured on this machine against
``trace_pipe`` (text): see docs/real-programs.md, "Recording".
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import numpy as np

from shmalloc.config import jit

TRACEFS = os.environ.get("SHMALLOC_TRACEFS", "/sys/kernel/tracing")
EVENTS = ("mm_page_alloc", "mm_page_free", "mm_page_free_batched")
INSTANCE_PREFIX = "shmalloc-"

# operations in the recorded event arrays
OP_ALLOC = 0
OP_FREE = 1
OP_FREE_BATCHED = 2

# ring buffer event types (include/linux/ring_buffer.h)
RB_PADDING = 29
RB_TIME_EXTEND = 30
RB_TIME_STAMP = 31
RB_MISSED_EVENTS = 1 << 31    # commit flag: events were lost before this page
RB_MISSED_STORED = 1 << 30    # ... and their count is stored after the data
COMMIT_MASK = (1 << 27) - 1   # the data length in the commit word (kbuffer-parse.c)


class TraceSetupError(Exception):
    """Recording is impossible here; the message is one line and says how
    to fix it (exit status 2)."""


# ---------------------------------------------------------------------------
# What the kernel offers
# ---------------------------------------------------------------------------

def _tracefs_mounted(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "instances"))


def check_environment(root: str = TRACEFS) -> bool:
    """Root, tracefs (mounted here if it is not) and the three events.

    Returns True when this call mounted tracefs (the caller unmounts it
    again).  Raises :class:`TraceSetupError` naming what is missing."""
    if os.geteuid() != 0:
        raise TraceSetupError("recording needs root (tracefs and the kmem tracepoints are "
                              "root-only): run it as root, e.g. with sudo")
    mounted = False
    if not _tracefs_mounted(root):
        if not os.path.isdir(root):
            raise TraceSetupError(f"no tracefs mount point {root}: the kernel lacks tracing "
                                  "(CONFIG_TRACING); use a kernel built with it")
        res = subprocess.run(["mount", "-t", "tracefs", "nodev", root], capture_output=True,
                             text=True)
        if res.returncode != 0 or not _tracefs_mounted(root):
            why = (res.stderr or res.stdout).strip().splitlines()
            raise TraceSetupError(f"tracefs is not mounted at {root} and mounting it failed"
                                  f"{': ' + why[-1] if why else ''}; mount it with "
                                  f"'mount -t tracefs nodev {root}'")
        mounted = True
    for ev in EVENTS:
        if not os.path.exists(os.path.join(root, "events", "kmem", ev, "format")):
            if mounted:
                unmount(root)
            raise TraceSetupError(f"the kernel has no kmem:{ev} tracepoint (events/kmem/{ev} "
                                  f"is missing under {root}); use a kernel with "
                                  "CONFIG_TRACEPOINTS and the kmem events")
    return mounted


def unmount(root: str = TRACEFS) -> None:
    subprocess.run(["umount", root], capture_output=True)


_FIELD_RE = re.compile(r"field:(.*?)\s+(\w+)(\[\d*\])?;\s*offset:(\d+);\s*size:(\d+);")


def event_format(root: str, event: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """(id, {field: (offset, size)}) from an event's ``format`` file."""
    with open(os.path.join(root, "events", "kmem", event, "format")) as f:
        text = f.read()
    m = re.search(r"^ID:\s*(\d+)", text, re.M)
    if not m:
        raise TraceSetupError(f"events/kmem/{event}/format has no ID line")
    fields = {name: (int(off), int(size)) for _, name, _, off, size in _FIELD_RE.findall(text)}
    return int(m.group(1)), fields


def header_page_layout(root: str) -> tuple[int, int]:
    """(offset of the commit word, offset of the data) of a ring-buffer page."""
    with open(os.path.join(root, "events", "header_page")) as f:
        fields = {name: (int(off), int(size)) for _, name, _, off, size in
                  _FIELD_RE.findall(f.read())}
    return fields["commit"][0], fields["data"][0]


class EventLayout:
    """Where the fields the recording keeps sit, for this kernel."""

    def __init__(self, root: str):
        ids, fmts = {}, {}
        for ev in EVENTS:
            ids[ev], fmts[ev] = event_format(root, ev)
        need = {"mm_page_alloc": ("pfn", "order", "migratetype"),
                "mm_page_free": ("pfn", "order"), "mm_page_free_batched": ("pfn",)}
        for ev, names in need.items():
            for name in names + ("common_pid",):
                if name not in fmts[ev]:
                    raise TraceSetupError(f"kmem:{ev} has no {name} field on this kernel")
        self.commit_off, self.data_off = header_page_layout(root)
        offsets = [self.commit_off, self.data_off] + [fmts[ev][name][0]
                                                      for ev, names in need.items()
                                                      for name in names + ("common_pid",)]
        if any(off % 4 for off in offsets) or fmts["mm_page_alloc"]["pfn"][1] not in (4, 8):
            raise TraceSetupError("the kmem events' fields are laid out in a way this reader "
                                  "does not know (an offset not a multiple of 4)")
        a, f, b = (fmts[e] for e in EVENTS)
        # one int64 vector the page parser takes
        self.vector = np.array([
            ids["mm_page_alloc"], ids["mm_page_free"], ids["mm_page_free_batched"],
            a["common_pid"][0], a["pfn"][0], a["order"][0], a["migratetype"][0],
            f["pfn"][0], f["order"][0], b["pfn"][0],
            self.commit_off, self.data_off, a["pfn"][1]], np.int64)


# ---------------------------------------------------------------------------
# The page parser (compiled)
# ---------------------------------------------------------------------------

@jit
def parse_pages(words, npages, page_words, lay, ts, cpu_out, cpu, pid, op, pfn, order, mt, n,
                lost):
    """Decode ``npages`` raw ring-buffer pages of one CPU (``words``: the
    pages as little-endian uint32 words, ``page_words`` per page) into the
    event arrays from index ``n``; ``lay`` is :attr:`EventLayout.vector`
    (byte offsets, all multiples of 4).  Adds the events the pages say were
    lost (RB_MISSED_EVENTS with a stored count) to ``lost[0]``, the pages
    flagged so to ``lost[1]``, and pages whose events run past their
    committed data (never seen; the rest of such a page is dropped) to
    ``lost[2]``.  Every read stays inside the page.  Returns the new event
    count, or -1 when the arrays are full."""
    id_alloc, id_free, id_batched = lay[0], lay[1], lay[2]
    pid_w, a_pfn, a_order, a_mt = lay[3] >> 2, lay[4] >> 2, lay[5] >> 2, lay[6] >> 2
    f_pfn, f_order, b_pfn = lay[7] >> 2, lay[8] >> 2, lay[9] >> 2
    commit_w, data_w, wide_pfn = lay[10] >> 2, lay[11] >> 2, lay[12] == 8
    # words of an event's data the parser reads, at most
    need_alloc = max(pid_w, a_pfn + 1, a_order, a_mt) + 1
    need_free = max(pid_w, f_pfn + 1, f_order) + 1
    need_batched = max(pid_w, b_pfn + 1) + 1
    cap = len(ts)
    for p in range(npages):
        base = p * page_words
        t = np.int64(words[base]) | (np.int64(words[base + 1]) << 32)
        # the flags are or'ed in as C ints: RB_MISSED_EVENTS sign-extends over
        # the upper half of the 64-bit local_t, so only the low word counts
        commit = np.int64(words[base + commit_w])
        length = (commit & COMMIT_MASK) >> 2                        # in words
        if length > page_words - data_w:
            length = page_words - data_w           # a damaged page: stay inside it
            lost[2] += 1
        if commit & RB_MISSED_EVENTS:
            lost[1] += 1
            at = base + data_w + length
            if commit & RB_MISSED_STORED and at + 2 <= base + page_words:
                lost[0] += np.int64(words[at]) | (np.int64(words[at + 1]) << 32)
        pos = base + data_w
        end = pos + length
        while pos < end:
            hdr = np.int64(words[pos])
            type_len = hdr & 31
            delta = hdr >> 5
            arg = np.int64(0)
            if type_len >= RB_PADDING or type_len == 0:
                if pos + 2 > end:
                    if not (type_len == RB_PADDING and delta == 0):
                        lost[2] += 1
                    break
                arg = np.int64(words[pos + 1])
            if type_len == RB_PADDING:
                if delta == 0:
                    break                          # null padding: the rest is empty
                t += delta
                pos += 1 + ((arg + 3) >> 2)
                continue
            if type_len == RB_TIME_EXTEND:
                t += (arg << 27) + delta
                pos += 2
                continue
            if type_len == RB_TIME_STAMP:
                t = (arg << 27) + delta
                pos += 2
                continue
            t += delta
            if type_len == 0:
                data = pos + 2
                pos = data + ((arg - 4 + 3) >> 2)
            else:
                data = pos + 1
                pos = data + type_len
            if pos > end or pos <= data:
                lost[2] += 1
                break
            etype = np.int64(words[data]) & 0xFFFF
            if etype == id_alloc:
                need = need_alloc
            elif etype == id_free:
                need = need_free
            elif etype == id_batched:
                need = need_batched
            else:
                continue
            if data + need > pos:
                lost[2] += 1
                continue
            if n >= cap:
                return -1
            ts[n] = t
            cpu_out[n] = cpu
            pid[n] = np.int32(words[data + pid_w])
            if etype == id_alloc:
                op[n] = OP_ALLOC
                w = data + a_pfn
                order[n] = words[data + a_order]
                mt[n] = np.int8(words[data + a_mt])
            elif etype == id_free:
                op[n] = OP_FREE
                w = data + f_pfn
                order[n] = words[data + f_order]
                mt[n] = -1
            else:
                op[n] = OP_FREE_BATCHED
                w = data + b_pfn
                order[n] = 0
                mt[n] = -1
            v = np.int64(words[w])
            if wide_pfn:
                v |= np.int64(words[w + 1]) << 32  # -1UL (a failed allocation) reads -1
            pfn[n] = v
            n += 1
    return n


# ---------------------------------------------------------------------------
# The instance
# ---------------------------------------------------------------------------

def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_instances(root: str = TRACEFS) -> list[str]:
    """Remove ``shmalloc-<pid>`` instances whose recorder is gone."""
    gone = []
    inst = os.path.join(root, "instances")
    for name in os.listdir(inst):
        m = re.fullmatch(re.escape(INSTANCE_PREFIX) + r"(\d+)", name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                _write(os.path.join(inst, name, "tracing_on"), "0")
                os.rmdir(os.path.join(inst, name))
                gone.append(name)
            except OSError:
                pass
    return gone


class Instance:
    """A private trace instance with the kmem events, read raw per CPU."""

    def __init__(self, root: str = TRACEFS):
        self.root = root
        self.name = f"{INSTANCE_PREFIX}{os.getpid()}"
        self.path = os.path.join(root, "instances", self.name)
        self.fds: list[int] = []
        self.cpus: list[int] = []
        self.page_size = 4096
        self.created = False

    def f(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def create(self, buffer_kib: int) -> None:
        remove_stale_instances(self.root)
        os.mkdir(self.path)
        self.created = True
        _write(self.f("tracing_on"), "0")
        _write(self.f("buffer_size_kb"), str(buffer_kib))
        # CLOCK_MONOTONIC: one clock for every CPU (the default "local" clock
        # is per CPU and not ordered across them), and the launcher's own
        if "mono" in _read(self.f("trace_clock")).replace("[", " ").replace("]", " ").split():
            _write(self.f("trace_clock"), "mono")
        else:
            _write(self.f("trace_clock"), "global")
        sub = self.f("buffer_subbuf_size_kb")
        if os.path.exists(sub):
            self.page_size = int(_read(sub).split()[0]) * 1024
        self.cpus = sorted(int(d[3:]) for d in os.listdir(self.f("per_cpu"))
                           if d.startswith("cpu") and d[3:].isdigit())

    @property
    def clock(self) -> str:
        text = _read(self.f("trace_clock"))
        return re.search(r"\[(\w+)\]", text).group(1)

    def filter_pids(self, trace_pids: list[int] | None, notrace_pids: list[int]) -> None:
        """``trace_pids``: only these and their descendants (event-fork);
        ``notrace_pids``: never these."""
        if trace_pids:
            _write(self.f("options", "event-fork"), "1")
            _write(self.f("set_event_pid"), " ".join(map(str, trace_pids)))
        elif notrace_pids and os.path.exists(self.f("set_event_notrace_pid")):
            _write(self.f("set_event_notrace_pid"), " ".join(map(str, notrace_pids)))

    def start(self) -> None:
        for ev in EVENTS:
            _write(self.f("events", "kmem", ev, "enable"), "1")
        self.fds = [os.open(self.f("per_cpu", f"cpu{c}", "trace_pipe_raw"),
                            os.O_RDONLY | os.O_NONBLOCK) for c in self.cpus]
        _write(self.f("tracing_on"), "1")

    def stop(self) -> None:
        if self.created:
            _write(self.f("tracing_on"), "0")

    def read_available(self, i: int, out: bytearray, max_pages: int) -> int:
        """Read up to ``max_pages`` pages of CPU index ``i`` into ``out``
        (appended, each padded to the page size); returns pages read."""
        got = 0
        fd = self.fds[i]
        while got < max_pages:
            try:
                data = os.read(fd, self.page_size)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (11, 16):            # EAGAIN, EBUSY
                    break
                raise
            if not data:
                break
            out += data
            if len(data) < self.page_size:
                out += bytes(self.page_size - len(data))
            got += 1
        return got

    def stats(self) -> dict[int, dict[str, int]]:
        """per_cpu/cpuN/stats: overrun, commit overrun, dropped events, ..."""
        out = {}
        for c in self.cpus:
            vals = {}
            for line in _read(self.f("per_cpu", f"cpu{c}", "stats")).splitlines():
                key, _, value = line.partition(":")
                value = value.strip()
                if re.fullmatch(r"\d+", value):
                    vals[key.strip().replace(" ", "_")] = int(value)
            out[c] = vals
        return out

    def remove(self) -> None:
        """Stop and remove the instance (idempotent)."""
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        if not self.created:
            return
        try:
            _write(self.f("tracing_on"), "0")
        except OSError:
            pass
        for attempt in range(50):                  # EBUSY while a reader lingers
            try:
                os.rmdir(self.path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02 * (attempt + 1))
        self.created = False


def global_state(root: str = TRACEFS) -> dict[str, str]:
    """The top-level tracing state a recording must leave as it found it
    (the tests compare it before and after)."""
    state = {}
    for name in ("tracing_on", "buffer_size_kb", "trace_clock", "set_event", "set_event_pid",
                 "current_tracer", "options/event-fork"):
        p = os.path.join(root, name)
        if os.path.exists(p):
            state[name] = _read(p)
    for ev in EVENTS:
        state[f"events/kmem/{ev}/enable"] = _read(os.path.join(root, "events", "kmem", ev,
                                                               "enable"))
    state["instances"] = " ".join(sorted(os.listdir(os.path.join(root, "instances"))))
    return state
