"""What several commands share: the parser class whose errors are usage
errors, the flags of one experiment (``run``, ``compare``, ``sweep``) and
the RunConfig they describe, the output flags, and the compile step every
measuring command takes before it creates anything."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from shmalloc.config import DEFAULT_LOCK_SPIN, MAX_ORDER_LIMIT, MAX_WORKERS, MAX_ZONES
from shmalloc.machine import MAX_FREE_HOOK_NS, ConfigError
from shmalloc.workload import WORKLOADS

from .. import units
from ..errors import UsageError
from ..experiment import compile as kernels
from ..experiment.config import RunConfig
from ..experiment.designs import names
from ..output import results


class Parser(argparse.ArgumentParser):
    def error(self, message: str):          # one line, no usage dump
        raise UsageError(f"{self.prog}: {message}")


def run_flags_parser(prog: str = "shmalloc sweep --grid") -> argparse.ArgumentParser:
    p = Parser(prog=prog, add_help=False)
    add_machine_flags(p)
    return p


def add_machine_flags(p, strategy: bool = True) -> None:
    """Flags of one experiment, shared by run, compare and sweep."""
    g = p.add_argument_group("experiment")
    g.add_argument("--workload", default="page_fault1", metavar="NAME",
                   help=f"what workers do: {', '.join(WORKLOADS)}, or trace:FILE to replay a "
                   "recorded trace (shmalloc trace record) (default page_fault1)")
    g.add_argument("--workers", type=units.int_range(1, MAX_WORKERS), default=2, metavar="N",
                   help="worker processes (default 2)")
    g.add_argument("--duration", type=units.duration_range(0, 86400, lo_open=True), default=None,
                   metavar="TIME", help="run time: seconds, or with a unit (500ms, 5s, 2m) "
                   "(default 5 s; without limit with --ops)")
    g.add_argument("--ops", type=units.int_range(1), default=0, metavar="N",
                   help="stop each worker after this many alloc+free calls")
    g.add_argument("--seed", type=units.int_range(0, 2**31 - 1), default=1, metavar="N",
                   help="random seed of the workers (default 1)")
    g.add_argument("--working-set", type=units.size_range(4096), default=None, metavar="SIZE",
                   help="per worker: page_fault1/thp round size, random's target "
                   "(default min(128M, 80%% of memory / workers))")
    g.add_argument("--blocks", default="buddy", metavar="HOW",
                   help="random, phased: a block of order n is taken from the buddy allocator "
                   "(buddy: the kernel's own multi-page allocations) or, as a user program's "
                   "mmap gets it, as 2^n order-0 pages faulted in and freed one by one (user) "
                   "(default buddy)")
    g.add_argument("--page-rate", type=units.float_range(0, 1e9), default=0.0, metavar="N",
                   help="--blocks user: at most N page faults per second per worker, as a "
                   "slower guest (a real one under TCG: vm compare sets the guest's rate); "
                   "0: as fast as the model goes (default 0)")
    g.add_argument("--hog-share", type=units.float_range(0, 1, lo_open=True), default=0.9,
                   metavar="FRACTION", help="hog: share of guest memory allocated (default 0.9)")
    g.add_argument("--hog-hold", type=units.duration_range(0, 86400), default=1.0, metavar="TIME",
                   help="hog: how long the memory is held before it is freed (default 1 s)")
    g.add_argument("--trace-speed", type=units.float_range(0, 1e6), default=0.0, metavar="X",
                   help="trace:FILE: replay at X times the recorded pace; 0 as fast as possible "
                   "(default 0)")
    g.add_argument("--trace-wait", type=units.duration_range(0, 3600, lo_open=True), default=1.0,
                   metavar="TIME", help="trace:FILE: how long a free waits for its allocation "
                   "on another worker before it is left to that worker (default 1 s)")
    g.add_argument("--trace-loops", type=units.int_range(0, 1 << 30), default=1, metavar="N",
                   help="trace:FILE: replay the trace N times; 0 until --duration (default 1)")
    g = p.add_argument_group("guest and allocator")
    g.add_argument("--memory", type=units.size_range(1 << 20), default=None, metavar="SIZE",
                   help="guest memory, K/M/G/T suffixes, 1.5G allowed (default 1G; for "
                   "trace:FILE its peak live memory plus headroom)")
    g.add_argument("--zones", type=units.int_range(1, MAX_ZONES), default=1, metavar="N",
                   help="zones, equal pfn ranges with a lock each (default 1)")
    g.add_argument("--max-order", type=units.int_range(10, MAX_ORDER_LIMIT), default=11,
                   metavar="N", help="MAX_ORDER: orders 0..N-1 (default 11, blocks up to 4 MiB)")
    g.add_argument("--pcp-batch", type=units.int_range(0, 4096), default=63, metavar="N",
                   help="per-worker page cache batch; 0 disables the pcp lists (default 63)")
    g.add_argument("--pcp-high", type=units.int_range(1, 1 << 20), default=378, metavar="N",
                   help="pcp high watermark (default 378)")
    g.add_argument("--lock-spin", type=units.int_range(0, 1_000_000), default=DEFAULT_LOCK_SPIN,
                   metavar="N",
                   help=f"sem_trywait retries before sleeping on a contended zone lock "
                   f"(default {DEFAULT_LOCK_SPIN})")
    g.add_argument("--no-lock-stats", dest="lock_stats", action="store_false",
                   help="switch lock_stat accounting off")
    g.add_argument("--free-hook-ns", type=units.int_range(0, MAX_FREE_HOOK_NS), default=0,
                   metavar="N", help="busy-wait N ns (of running time) inside the zone lock on "
                   "every free of a block to the buddy lists: a known cost for calibration "
                   "(default 0)")
    g.add_argument("--host-pages", default=None, metavar="SIZE",
                   help="the host's page behind guest memory: 4k, or 2m (transparent huge "
                   "pages: a refault faults and zeroes 2 MiB; needs root to mount a huge "
                   "tmpfs; needs --report-order >= 9) (default 2m, what QEMU's guest memory "
                   "gets on a typical host; 4k where 2m cannot be had)")
    g.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let the scheduler place the workers (default: worker i on cpu i mod "
                   "ncpus, as will-it-scale pins its tasks)")
    g = p.add_argument_group("reporting")
    if strategy:
        g.add_argument("--strategy", default="none", metavar="NAME",
                       help=f"reporting design: {', '.join(names())}; callback/hint and "
                       "callback/discard also choose callback's mode (default none)")
    g.add_argument("--report-order", type=units.int_range(0, MAX_ORDER_LIMIT - 1), default=9,
                   metavar="N", help="smallest order reported (default 9, pageblock order); "
                   "the page_reporting_order module parameter of Linux 5.14 and later "
                   "(5.7 fixed it at pageblock_order)")
    g.add_argument("--start", default=None, metavar="STATE",
                   help="mainline, boundary, hostscan: the free memory the guest starts with "
                   "is unreported (the reporter's initial flush still to come; the default) "
                   "or reported (flushed, reporter idle, as a guest some time after boot)")
    g.add_argument("--putback", default=None, metavar="WHERE",
                   help="mainline, isolate: where a reported block goes back on its free list: "
                   "head (Linux 5.7, the default) or tail (5.10's FPI_TO_TAIL)")
    g.add_argument("--walk-order", type=units.int_range(0, MAX_ORDER_LIMIT - 1), default=None,
                   metavar="N", help="callback: lowest order walk_free_mem_block visits under "
                   "the zone lock (default 0, as v14); blocks below --report-order are visited "
                   "and paid for, not reported")
    g.add_argument("--callback-ns", type=units.int_range(0, 10_000_000), default=None,
                   metavar="NS", help="callback: what each block's virtqueue_kick costs under "
                   "the zone lock, standing in for its VM exit (default: calibrated at start as "
                   "one message on a POSIX queue)")
    g.add_argument("--free-page-vq", type=units.int_range(1, 1 << 16), default=None,
                   metavar="N", help="callback: entries of the free page virtqueue the walk "
                   "puts each block on (default 1024, QEMU's size for it); a block that finds "
                   "it full is not reported, as in v14")
    g.add_argument("--capacity", type=units.int_range(1, 1 << 20), default=None, metavar="N",
                   help="ranges per report (default 32, PAGE_REPORTING_CAPACITY; bitmap 16)")
    g.add_argument("--delay", type=units.duration_range(0, 3600), default=None, metavar="TIME",
                   help="from a request to the reporting pass, and between passes "
                   "(default: the design's: mainline, callback, isolate 2 s; boundary 0.1 s; "
                   "bitmap 0)")
    g.add_argument("--scan-interval", type=units.duration_range(0, 3600, lo_open=True),
                   default=5.0, metavar="TIME", help="hostscan: time between host scans "
                   "(default 5 s, as HyperAlloc)")
    g.add_argument("--callback-mode", default=None, metavar="MODE",
                   help="callback: hint (the host records the ranges) or discard (the host "
                   "discards them: unsafe) (default hint)")
    g.add_argument("--hv-latency", type=units.duration_range(0, 60), default=0.0, metavar="TIME",
                   help="hypervisor stub: wait this long per report before discarding "
                   "(default 0)")
    g.add_argument("--discard", default="punch", metavar="HOW",
                   help="hypervisor stub: punch (fallocate PUNCH_HOLE), remove (madvise "
                   "MADV_REMOVE) or none (record only) (default punch)")
    g = p.add_argument_group("watchdog and faults")
    g.add_argument("--stall-timeout", type=units.duration_range(0, 86400, lo_open=True),
                   default=10.0, metavar="TIME", help="abort when one owner holds a zone lock "
                   "this long, a child stays stopped this long, or a report waits this long "
                   "(default 10 s)")
    g.add_argument("--inject", action="append", default=[], metavar="WHAT@TIME",
                   help="inject a fault: kill-worker[:N], stop-worker[:N], kill-reporter, "
                   "kill-hypervisor, slow-hypervisor, at TIME after the start (repeatable)")


def run_config(args, resolve: bool = True):
    """The RunConfig the parsed flags describe (flag dest == field name);
    ``resolve=False`` leaves the design-dependent defaults open."""
    values = {f.name: getattr(args, f.name) for f in fields(RunConfig) if hasattr(args, f.name)}
    values["inject"] = tuple(values.get("inject", ()))
    name, slash, mode = values.get("strategy", "").partition("/")
    if slash:                       # compare's name for callback's modes, e.g. callback/discard
        if name != "callback" or mode not in ("hint", "discard"):
            raise ConfigError("--strategy", f"{values['strategy']!r}: only callback takes a "
                              "mode (callback/hint, callback/discard)")
        if values.get("callback_mode") not in (None, mode):
            raise ConfigError("--callback-mode", f"{values['callback_mode']} contradicts "
                              f"--strategy {values['strategy']}")
        values["strategy"], values["callback_mode"] = name, mode
    if values.get("callback_mode") is None:
        values.pop("callback_mode", None)
    cfg = RunConfig(**values)
    return cfg.resolved() if resolve else cfg


def config_argv(cfg) -> list[str]:
    """``shmalloc run`` flags that reproduce ``cfg`` exactly: every value
    spelled out, so a command line stands alone (``sweep --list``)."""
    argv = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool):            # on by default: --no-<flag> turns it off
            argv += [] if value else [f"--no-{f.name.replace('_', '-')}"]
        elif f.name == "inject":
            for fault in value:
                argv += ["--inject", fault]
        elif f.name == "page_schedule":        # vm compare's, from a real guest: no flag
            if value:
                raise ConfigError("--model-rate", "a schedule of page faults has no flag of "
                                  "shmalloc run (vm compare takes it from the guest)")
        elif value is None or (f.name in ("ops", "duration") and not value):
            continue
        else:
            argv += [f"--{f.name.replace('_', '-')}", str(value)]
    return argv


def add_output_flags(p) -> None:
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="PATH", default=None,
                   help="write the results file (versioned JSON) here")
    g.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    g.add_argument("--quiet", action="store_true",
                   help="no progress display and no summary (errors still go to stderr)")


def check_json_output(args) -> None:
    """Refuse an unwritable --json before anything is created."""
    if args.json:
        try:
            results.check_output(args.json, args.force)
        except results.ResultsError as e:
            raise UsageError(f"shmalloc {args.command}: --json: {e}") from None


def compile_for(args, cfgs) -> None:
    """Have the kernels of ``cfgs`` compiled before anything is created or
    measured, saying so on stderr when that takes a while."""
    kernels.prepare(kernels.groups_for(cfgs), command=f"shmalloc {args.command}",
                    stream=sys.stderr, progress=not getattr(args, "quiet", False))
