"""The ``trace:FILE`` workload: what ``run``, ``compare`` and ``sweep`` need
to replay a recorded trace (:mod:`launcher.capture.record` makes one).

The trace is decoded and paired once per file (:func:`load_plan`, which
compiles the pairing kernels first and says so); its peak live memory sets
the default guest and the least guest the replay fits in; :func:`prepare`
creates the replay's shared state (:mod:`shmalloc.replay`) in the launcher
before the workers fork, and :func:`replay_results` is the RUN record's
``trace``.
"""

from __future__ import annotations

import os
import sys

from shmalloc import tracefile
from shmalloc.config import PAGE_SIZE
from shmalloc.machine import ConfigError
from shmalloc.replay import Shared
from shmalloc.replay import plan as replay_plan

from ..units import fmt_bytes, format_size
from . import compile as kernels

TRACE_PREFIX = "trace:"
HEADROOM = 1.25                  # default guest: peak live memory x this ...
HEADROOM_BYTES = 16 << 20        # ... + this + every worker's pcp high watermark
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
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    if key is not None and key in _plans:
        return _plans[key]
    kernels.prepare(["trace"], _prog(), sys.stderr)     # say so when it compiles
    try:
        pl = replay_plan(tracefile.load(path))
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
    return cfg.zones * (PAGE_SIZE << (cfg.max_order - 1))


def _round_up(n: int, unit: int) -> int:
    return max(unit, -(-n // unit) * unit)


def needed_memory(cfg) -> tuple[int, int]:
    """(least guest the trace fits in: its peak live memory, rounded up to
    the guest's unit; the default guest: that with headroom for the pcp
    lists and fragmentation)."""
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
