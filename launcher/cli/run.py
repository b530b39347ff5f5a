"""``shmalloc run``: one experiment, its summary and its results file."""

from __future__ import annotations

import sys

from ..experiment import metadata
from ..experiment.run import execute
from ..output import results
from ..output.summary import format_run
from . import flags


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="one experiment: workers (and a reporting design) on one guest",
                       description="Create a guest, run worker processes through its page "
                       "allocator (and a reporting design), then print throughput, latency, the "
                       "lock_stat table, memory and safety. Exit 0 when the run is ok, 3 when "
                       "it was aborted by a fault, 2 on bad input.")
    flags.add_machine_flags(p)
    flags.add_output_flags(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:

    cfg = flags.run_config(args)
    flags.check_json_output(args)
    progress = sys.stderr.isatty() and not args.quiet
    flags.compile_for(args, [cfg])
    run = execute(cfg, progress=progress)
    status = run.pop("exit_status")
    interrupted = run.pop("interrupted", None)
    if not args.quiet:
        print("\n".join(format_run(run)))
    if interrupted is not None:
        print(f"shmalloc run: {interrupted}", file=sys.stderr)
    elif run["outcome"] != "ok":
        print(f"shmalloc run: aborted: {run['abort_reason']}", file=sys.stderr)
    if args.json:
        doc = results.document([run], metadata.collect(run.pop("numba_cache_warm")))
        results.write(args.json, doc, force=args.force)
    return status
