"""``shmalloc trace``: ``record`` the kernel's page allocator while a
command runs (:mod:`launcher.capture.record`), and ``info`` on a trace file
(:mod:`launcher.capture.info`)."""

from __future__ import annotations

import argparse

from shmalloc.machine import ConfigError

from .. import units
from ..capture.info import format_info
from ..capture.record import DEFAULT_BUFFER_KIB, Recorder, RecordError, check_record_args
from ..capture.tracefs import TraceSetupError
from ..errors import UsageError


def cmd_trace_record(args) -> int:
    try:
        cmd = check_record_args(args)
        return Recorder(args.out, cmd, args.buffer_kib, args.pid_tree, args.force,
                        quiet=args.quiet).run()
    except (RecordError, TraceSetupError) as e:
        raise UsageError(f"shmalloc trace record: {e}") from None


def cmd_trace_info(args) -> int:
    try:
        print("\n".join(format_info(args.file)))
    except ConfigError as e:
        raise UsageError(f"shmalloc trace info: {e.detail.removeprefix('trace:')}") from None
    return 0


def add_parser(sub) -> None:
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
    r.add_argument("--buffer-kib", type=units.int_range(64, 1 << 20), default=DEFAULT_BUFFER_KIB,
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
