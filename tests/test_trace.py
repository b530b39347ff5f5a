"""Real allocation streams (issue 14): recording the kernel's page allocator,
the trace file, and replaying it through the guest under every design.

Recording needs root and tracefs; those tests skip with the reason where
either is missing.  Everything else runs anywhere."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from cli import ROOT, assert_usage_error, shmalloc

from shmalloc import invariants, replay, tracefile
from shmalloc.layout import (
    E_NOT_OWNER,
    PCP_HEAD,
    PS_ALLOC,
    PS_PCP,
    WC_FOREIGN_CANARY,
    WC_USE_AFTER_DISCARD,
)
from shmalloc.tracefile import OP_ALLOC, OP_FREE, OP_FREE_BATCHED

SHIPPED = os.path.join(ROOT, "traces", "compileall.trace")

# a child that maps, touches and unmaps memory: 8 MiB in base pages, 8 MiB
# asking for transparent huge pages
TOUCH = """
import mmap
for advice in (mmap.MADV_NOHUGEPAGE, mmap.MADV_HUGEPAGE):
    m = mmap.mmap(-1, 8 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(advice)
    for off in range(0, 8 << 20, 4096):
        m[off] = 1
    m.close()
"""


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

@pytest.fixture
def tracefs_root():
    """The tracefs mount, or a skip saying what is missing; held by one test
    at a time across the suite's worker processes.  Their mount namespaces
    are their own, but tracefs's instances and global switches are the
    kernel's: a recording in another worker is an instance this test's
    checks would see (it once failed so: ``instances: shmalloc-10675``)."""
    from launcher.capture import tracefs
    if os.geteuid() != 0:
        pytest.skip("recording needs root (tracefs and the kmem tracepoints are root-only)")
    with open(os.path.join(tempfile.gettempdir(), "shmalloc-tests-tracefs.lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)            # released when the file closes
        try:
            mounted = tracefs.check_environment()
        except tracefs.TraceSetupError as e:
            pytest.skip(f"cannot record here: {e}")
        yield tracefs.TRACEFS
        if mounted:
            tracefs.unmount()


def _state():
    from launcher.capture import tracefs
    return tracefs.global_state()


def _recording(root: str) -> bool:
    """A recorder's instance is tracing its events (``Instance.start``: CMD
    is being released).  tracing_on alone is not enough: a new instance has
    it on from its mkdir until ``Instance.create`` turns it off, and a signal
    sent in that window found no CMD started and no trace written (the test
    once failed so, in a fresh clone's suite)."""
    from launcher.capture import tracefs
    for name in os.listdir(os.path.join(root, "instances")):
        inst = os.path.join(root, "instances", name)
        try:
            with open(os.path.join(inst, "tracing_on")) as f:
                on = f.read().strip() == "1"
            with open(os.path.join(inst, "events", "kmem", tracefs.EVENTS[0], "enable")) as f:
                on = on and f.read().strip() == "1"
        except OSError:
            continue
        if name.startswith("shmalloc-") and on:
            return True
    return False


def _synthetic(path, rows, footer=None):
    """Write a trace of (ts, cpu, op, pfn, order) rows."""
    a = np.array(rows, dtype=np.int64).reshape(-1, 5)
    ev = {"ts": a[:, 0], "cpu": a[:, 1].astype(np.uint16), "pid": np.full(len(a), 7, np.int32),
          "op": a[:, 2].astype(np.uint8), "pfn": a[:, 3], "order": a[:, 4].astype(np.uint8),
          "mt": np.where(a[:, 2] == OP_ALLOC, 1, -1).astype(np.int8)}
    tracefile.write(str(path), ev, {"start_mono_ns": 0, "duration_ns": int(a[-1, 0]) + 1,
                                    "command": ["synthetic"], **(footer or {})}, force=True)
    return str(path)


# ---------------------------------------------------------------------------
# recording (root + tracefs)
# ---------------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_record_a_child_that_maps_touches_and_unmaps(tracefs_root, tmp_path):
    before = _state()
    out = tmp_path / "touch.trace"
    res = shmalloc("trace", "record", "--pid-tree", "--quiet", "--out", str(out), "--",
                   sys.executable, "-c", TOUCH, timeout=220)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert _state() == before                       # nothing left changed, no instance
    tr = tracefile.load(str(out))
    h, ev = tr.header, tr.ev
    assert h["pid_tree"] and h["clock"] in ("mono", "global") and not tr.lossy
    assert h["kernel"] == os.uname().release and h["cpus"] >= 1
    assert set(np.unique(ev["pid"])) <= set(range(h["root_pid"], h["root_pid"] + 1000))
    alloc0 = (ev["op"] == OP_ALLOC) & (ev["order"] == 0)
    assert alloc0.sum() >= 2048                       # the 8 MiB of base pages, at least
    assert ((ev["op"] == OP_FREE) & (ev["order"] == 0)).sum() >= 2048
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        thp = "[never]" not in f.read()
    if thp:                                           # and the huge pages of the second map
        assert ((ev["op"] == OP_ALLOC) & (ev["order"] == 9)).sum() >= 1
    assert np.all(np.diff(ev["ts"]) >= 0)
    info = shmalloc("trace", "info", str(out))
    assert info.returncode == 0 and "lossy        no" in info.stdout


@pytest.mark.timeout(240)
def test_recording_restores_tracing_when_cmd_fails_or_is_interrupted(tracefs_root, tmp_path):
    before = _state()
    res = shmalloc("trace", "record", "--quiet", "--out", str(tmp_path / "f.trace"), "--",
                   "false", timeout=200)
    assert res.returncode == 1 and "exited with status 1" in res.stderr
    assert _state() == before and tracefile.load(str(tmp_path / "f.trace")).header[
        "exit_status"] == 1
    for sig, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        out = tmp_path / f"{sig.name}.trace"
        proc = subprocess.Popen([sys.executable, "-m", "launcher", "trace", "record", "--quiet",
                                 "--out", str(out), "--", "sleep", "60"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 150
            while not _recording(tracefs_root):         # CMD runs, traced
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.05)
            if sig == signal.SIGINT:                     # Ctrl-C: the whole process group
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
        assert proc.returncode == status, err
        assert f"interrupted by {sig.name}" in err
        assert _state() == before, sig.name
        root_pid = tracefile.load(str(out)).header["root_pid"]
        assert not os.path.exists(f"/proc/{root_pid}")    # CMD is gone too


def test_record_refuses_what_it_cannot_do(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "tracefs"
    (fake / "instances").mkdir(parents=True)
    out = tmp_path / "x.trace"
    if os.geteuid() == 0:
        res = shmalloc("trace", "record", "--out", str(out), "--", "true",
                       env={"SHMALLOC_TRACEFS": str(fake)})
        assert_usage_error(res, "shmalloc trace record:", "no kmem:mm_page_alloc tracepoint")
    from launcher.cli.main import main
    monkeypatch.setattr(os, "geteuid", lambda: 1000)      # an ordinary user
    assert main(["trace", "record", "--out", str(out), "--", "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shmalloc trace record: recording needs root")
    monkeypatch.undo()
    assert_usage_error(shmalloc("trace", "record", "--out", str(out)), "no command")
    assert_usage_error(shmalloc("trace", "record", "--out", str(out), "--", "no-such-cmd-x"),
                       "no-such-cmd-x: command not found")
    assert_usage_error(shmalloc("trace", "record", "--out", str(tmp_path / "no" / "x"), "--",
                                "true"), "does not exist")
    assert not out.exists()
    out.write_text("keep")
    assert_usage_error(shmalloc("trace", "record", "--out", str(out), "--", "true"),
                       "exists; use --force")
    assert out.read_text() == "keep"


# ---------------------------------------------------------------------------
# the ring-buffer page parser (no root needed)
# ---------------------------------------------------------------------------

def test_ring_buffer_pages_decode_with_extends_padding_and_lost_events():
    from launcher.capture.tracefs import OP_ALLOC as A
    from launcher.capture.tracefs import parse_pages
    # ids 10 alloc, 11 free, 12 batched; pid at 4; alloc pfn 8 order 16 mt 32;
    # free pfn 8 order 16; batched pfn 8; commit at 8, data at 16; 8-byte pfn
    lay = np.array([10, 11, 12, 4, 8, 16, 32, 8, 16, 8, 8, 16, 8], np.int64)
    words: list[int] = []

    def ev(type_len, delta, payload):
        words.append(type_len | (delta << 5))
        words.extend(payload)

    def common(etype, pid):
        return [etype, pid]

    alloc = common(10, 42) + [0x1234, 0, 3, 0, 0, 0, 1]          # pfn, order 3, gfp, mt 1
    ev(len(alloc), 5, alloc)                                      # t = 1000 + 5
    ev(30, 7, [1])                                                # extend: + (1 << 27) + 7
    free = common(11, 43) + [0x1234, 0, 3]
    ev(0, 2, [4 * (len(free) + 1)] + free)                        # type 0: length word first
    ev(29, 1, [12, 0, 0])                                         # a discarded event (padding)
    batched = common(12, 44) + [0xFFFFFFFF, 0xFFFFFFFF]            # pfn -1
    ev(len(batched), 3, batched)
    ev(29, 0, [])                                                 # null padding: the end
    page = np.zeros(1024, np.uint32)
    page[0:2] = [1000, 0]
    # RB_MISSED_EVENTS is or'ed in as a C int: it sign-extends over the upper word
    page[2] = (len(words) * 4) | (1 << 31) | (1 << 30)
    page[3] = 0xFFFFFFFF
    page[4: 4 + len(words)] = words
    page[4 + len(words): 6 + len(words)] = [17, 0]                # the stored missed count
    arrs = {k: np.zeros(300, dt) for k, dt in tracefile.EVENT_FIELDS.items()}
    lost = np.zeros(3, np.int64)
    n = parse_pages(page, 1, 1024, lay, arrs["ts"], arrs["cpu"], 3, arrs["pid"], arrs["op"],
                    arrs["pfn"], arrs["order"], arrs["mt"], 0, lost)
    assert n == 3
    t2 = 1005 + (1 << 27) + 7 + 2
    assert arrs["ts"][:3].tolist() == [1005, t2, t2 + 1 + 3]
    assert arrs["op"][:3].tolist() == [A, OP_FREE, OP_FREE_BATCHED]
    assert arrs["pfn"][:3].tolist() == [0x1234, 0x1234, -1]
    assert arrs["order"][:3].tolist() == [3, 3, 0]
    assert arrs["mt"][:3].tolist() == [1, -1, -1]
    assert arrs["pid"][:3].tolist() == [42, 43, 44] and set(arrs["cpu"][:3]) == {3}
    assert lost.tolist() == [17, 1, 0]


# ---------------------------------------------------------------------------
# the file
# ---------------------------------------------------------------------------

def test_trace_file_round_trips_across_chunks(tmp_path):
    rng = np.random.default_rng(1)
    n = 5000
    ev = {"ts": np.cumsum(rng.integers(0, 1 << 34, n)), "cpu": rng.integers(0, 300, n),
          "pid": rng.integers(1, 1 << 22, n), "op": rng.integers(0, 3, n),
          "pfn": rng.integers(-1, 1 << 36, n), "order": rng.integers(0, 11, n),
          "mt": rng.integers(-1, 5, n)}
    ev = {k: v.astype(tracefile.EVENT_FIELDS[k]) for k, v in ev.items()}
    path = str(tmp_path / "r.trace")
    tracefile.write(path, ev, {"start_mono_ns": int(ev["ts"][0])}, chunk=999)
    tr = tracefile.load(path)
    assert len(tr) == n and tr.header["events"] == n
    for k, v in ev.items():
        want = v - ev["ts"][0] if k == "ts" else v
        assert np.array_equal(tr.ev[k], want), k


@pytest.mark.timeout(200)
def test_bad_trace_files_exit_2_and_a_lossy_one_replays_with_a_warning(tmp_path):
    data = open(SHIPPED, "rb").read()
    (tmp_path / "truncated.trace").write_bytes(data[: len(data) // 2])
    (tmp_path / "foreign.trace").write_text(json.dumps({"format": "shmalloc-results"}))
    future = bytearray(data)
    struct.pack_into("<I", future, 8, tracefile.VERSION + 1)
    (tmp_path / "future.trace").write_bytes(bytes(future))
    for name, why in (("truncated", "truncated trace file"), ("foreign", "not a shmalloc trace"),
                      ("future", f"trace format version {tracefile.VERSION + 1}"),
                      ("missing", "no such file")):
        path = str(tmp_path / f"{name}.trace")
        assert_usage_error(shmalloc("run", "--workload", f"trace:{path}"),
                           "shmalloc run: --workload: trace:", why)
        assert_usage_error(shmalloc("trace", "info", path), "shmalloc trace info:", why)
    small = shmalloc("run", "--workload", f"trace:{SHIPPED}", "--memory", "8M")
    assert_usage_error(small, "--memory: 8M is too small", "needs at least")

    tr = tracefile.load(SHIPPED)
    footer = {k: v for k, v in tr.header.items() if k not in ("format", "version", "events")}
    footer.update(lossy=True, lost_events=123, start_mono_ns=0)
    lossy = str(tmp_path / "lossy.trace")
    tracefile.write(lossy, tr.ev, footer)
    info = shmalloc("trace", "info", lossy)
    assert info.returncode == 0 and "YES: 123 events lost" in info.stdout
    res = shmalloc("run", "--workload", f"trace:{lossy}", "--workers", "1", "--memory", "256M",
                   "--json", str(tmp_path / "l.json"))
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"shmalloc run: warning: {lossy} is lossy: 123 events were lost while it was recorded; "
        "the replay frees a block whose free was lost when its pfn is allocated again, and "
        "skips frees whose allocation was lost"]
    run = json.load(open(tmp_path / "l.json"))["runs"][0]
    assert run["trace"]["lossy"] and "is lossy" in res.stdout


# ---------------------------------------------------------------------------
# pairing and the replay kernel (in this process)
# ---------------------------------------------------------------------------

def _pair_reference(ev):
    """The pairing, slowly and obviously: a dict of live blocks by head."""
    live: dict[int, int] = {}
    remaining: dict[int, int] = {}
    kind, match = [], []

    def covering(p):
        for o in range(16):
            h = p & ~((1 << o) - 1)
            if h in live and ev["order"][live[h]] >= o:
                return live[h]
        return -1

    for i in range(len(ev["op"])):
        op, p, o = int(ev["op"][i]), int(ev["pfn"][i]), int(ev["order"][i])
        m = -1
        if op == OP_FREE_BATCHED:
            k = replay.K_DUPLICATE
        elif op == OP_ALLOC and p < 0:
            k = replay.K_FAILED_IN_TRACE
        elif op == OP_ALLOC:
            k, m = replay.K_ALLOC, covering(p)
            if m >= 0:
                del live[int(ev["pfn"][m])]
            for r in range(p + 1, p + (1 << o)):
                live.pop(r, None)
            live[p], remaining[i] = i, 1 << o
        else:
            j = covering(p) if p >= 0 else -1
            oj = int(ev["order"][j]) if j >= 0 else 0
            if j < 0:
                k = replay.K_SKIP_BEFORE
            elif o > oj or (o == oj and int(ev["pfn"][j]) != p):
                k = replay.K_SKIP_OTHER
            else:
                m = j
                remaining[j] -= 1 << o
                k = replay.K_FREE if remaining[j] <= 0 else replay.K_PIECE
                if k == replay.K_FREE:
                    del live[int(ev["pfn"][j])]
        kind.append(k)
        match.append(m)
    return np.array(kind), np.array(match)


def test_pairing_matches_a_slow_reference(tmp_path):
    # pieces of a split block, an implicit free, a free of a page allocated
    # before, a free larger than its block, a duplicate and a failed allocation
    rows = [(1, 0, OP_ALLOC, 64, 2), (2, 0, OP_FREE, 65, 0), (3, 1, OP_FREE, 64, 0),
            (4, 1, OP_FREE, 66, 1), (5, 0, OP_ALLOC, 128, 0), (6, 1, OP_ALLOC, 128, 0),
            (7, 0, OP_FREE, 999, 0), (8, 0, OP_ALLOC, 200, 0), (9, 0, OP_FREE, 200, 3),
            (10, 0, OP_FREE_BATCHED, 128, 0), (11, 1, OP_ALLOC, -1, 4)]
    pl = replay.plan(tracefile.load(_synthetic(tmp_path / "s.trace", rows)))
    assert pl.kind.tolist() == [replay.K_ALLOC, replay.K_PIECE, replay.K_PIECE, replay.K_FREE,
                                replay.K_ALLOC, replay.K_ALLOC, replay.K_SKIP_BEFORE,
                                replay.K_ALLOC, replay.K_SKIP_OTHER, replay.K_DUPLICATE,
                                replay.K_FAILED_IN_TRACE]
    assert pl.match.tolist()[:6] == [-1, 0, 0, 0, -1, 4]
    assert pl.peak_live_pages == 4 and pl.superseded == 1
    for trace in (pl.trace, tracefile.load(SHIPPED)):
        kind, match = _pair_reference(trace.ev)
        got = replay.plan(trace)
        assert np.array_equal(got.kind, kind) and np.array_equal(got.match, match)


def test_a_cross_cpu_free_lands_in_the_freeing_workers_pcp_list(make_machine, tmp_path):
    # cpu0 allocates pfn 5000, cpu1 frees it; cpu1 allocates 6000, cpu0 frees it
    rows = [(10, 0, OP_ALLOC, 5000, 0), (20, 1, OP_FREE, 5000, 0), (30, 1, OP_ALLOC, 6000, 0),
            (40, 0, OP_FREE, 6000, 0)]
    pl = replay.plan(tracefile.load(_synthetic(tmp_path / "x.trace", rows)))
    m = make_machine(workers=2)
    sh = replay.Shared(pl, 2, 0.0, 0.001)
    sh.warm(m)
    tpn = m.ticks_per_sec / 1e9

    def play(agent):
        return replay.replay_events(m.frames, m.zs, m.mem, agent, sh.idx[agent], 0, pl.kind,
                                    pl.match, pl.ts, pl.order, sh.slot, sh.rc[agent], 0.0, 0, 0,
                                    tpn, int(0.001 * m.ticks_per_sec), -1, 1 / tpn)

    # worker 0 first: its free of 6000 waits for worker 1's allocation, gives
    # up after the bound and leaves it to worker 1, who frees it at once
    assert play(0) == 2
    g0 = (int(sh.slot[0]) - 1) >> replay.AGENT_BITS
    assert m.frames[g0]["state"] == PS_ALLOC and m.frames[g0]["owner"] == 0
    assert play(1) == 2
    assert m.frames[g0]["state"] == PS_PCP and m.frames[g0]["owner"] == 1
    pcp1, p = [], int(m.zs[m.layout.pcp(1, 0) + PCP_HEAD])
    while p >= 0:
        pcp1.append(p)
        p = int(m.frames[p]["next"])
    assert g0 in pcp1                                   # in worker 1's pcp list
    c0, c1 = sh.counters(0), sh.counters(1)
    assert (c0["gave_up"], c0["waits"], c0["frees"]) == (1, 1, 0)
    assert (c1["cross_frees"], c1["late_frees"], c1["frees"], c1["allocs"]) == (1, 1, 1, 1)
    assert sh.slot[0] == replay.S_FREED and sh.slot[2] == replay.S_FREED
    for a in (0, 1):
        ws = m.layout.wstats(a)
        assert m.zs[ws + WC_USE_AFTER_DISCARD] == 0 and m.zs[ws + WC_FOREIGN_CANARY] == 0
    assert invariants.check(m) == []
    # the owner checks of every other workload are untouched: a block is freed
    # by its holder, or handed over by naming that holder exactly
    from shmalloc.layout import WC_FREE_ERRORS
    from shmalloc.machine import AllocatorError
    g = m.alloc(0, agent=0)
    with pytest.raises(AllocatorError) as e:
        m.free(g, 0, agent=1)
    assert e.value.code == E_NOT_OWNER
    ws1 = m.layout.wstats(1)
    errors = int(m.zs[ws1 + WC_FREE_ERRORS])
    replay.free_block(m.frames, m.zs, m.mem, 1, 2, g, 0, ws1, 1.0)   # the wrong holder named
    assert m.zs[ws1 + WC_FREE_ERRORS] == errors + 1
    assert m.frames[g]["state"] == PS_ALLOC and m.frames[g]["owner"] == 0
    m.free(g, 0, agent=0)


# ---------------------------------------------------------------------------
# the shipped trace under every design
# ---------------------------------------------------------------------------

@pytest.mark.timeout(400)
def test_shipped_trace_replays_under_every_design(tmp_path):
    out = tmp_path / "c.json"
    # at twice its pace the 3.7 s trace fits in the 2 s, exit and cross-CPU frees included
    res = shmalloc("compare", "--workload", f"trace:{SHIPPED}", "--duration", "2",
                   "--trace-speed", "2", "--quiet", "--json", str(out), timeout=380)
    assert res.returncode == 0, res.stderr
    runs = json.load(open(out))["runs"]
    assert len(runs) == 8
    for run in runs:
        t, s = run["trace"], run["safety"]
        assert run["outcome"] == "ok", run["label"]
        assert s["invariant_errors"] == [], run["label"]
        assert s["double_allocations"] == 0 and s["free_errors"] == 0, run["label"]
        if run["label"] != "callback/discard":
            assert s["use_after_discard"] == 0, run["label"]
        assert t["complete"] and t["replayed"] == t["events"], run["label"]
        assert t["allocs"] > 30000 and t["failed"] == 0, run["label"]
        assert t["cross_frees"] > 1000, run["label"]          # handed over between workers
        assert t["skipped_share"] < 0.05, run["label"]
        assert 1.5 < t["pace"] < 2.5, run["label"]           # paced, not as fast as possible
