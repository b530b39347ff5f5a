"""The ``shmalloc`` command: subcommands dispatch to ``cmd_<name>(args)``.

Bad input never produces a traceback: a usage error or an out-of-range value
prints one line on stderr and exits with status 2, before anything is created.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import options as opt


class UsageError(Exception):
    """Bad command line or bad value: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):          # one line, no usage dump
        raise UsageError(f"{self.prog}: {message}")


# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------

def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="micro-benchmark of the allocator engine (one process)",
                       description="Time order-0/order-9 alloc+free pairs through the zone "
                       "lock and the pcp lists, with lock statistics on and off, against the "
                       "pure-Python reference allocator.")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--reps", type=opt.int_range(1, 1000), default=5,
                   help="repetitions per case; the median is reported (default 5)")
    p.add_argument("--iters", type=opt.int_range(1, 100000), default=20,
                   help="alloc/free rounds per repetition (default 20)")
    p.add_argument("--init-memory", type=opt.size_range(4 << 20), default=16 << 30,
                   metavar="SIZE", help="guest size for the create-and-initialise timing "
                   "(default 16G; the figure is reported as init_16gib_s)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from shmalloc.bench import format_bench, run_bench
    from shmalloc.machine import ConfigError, MachineConfig

    try:
        MachineConfig(memory=args.init_memory).validate()
    except ConfigError as e:
        raise ConfigError("--init-memory", e.detail) from None
    res = run_bench(reps=args.reps, iters=args.iters, init_memory=args.init_memory)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print("\n".join(format_bench(res)))
    return 0


# ---------------------------------------------------------------------------
# cleanup
# ---------------------------------------------------------------------------

def _add_cleanup(sub) -> None:
    p = sub.add_parser("cleanup", help="remove IPC objects left behind by dead runs",
                       description="Remove the /dev/shm objects, semaphores and message queues "
                       "of shmalloc runs whose creating process is gone. Objects of live runs "
                       "are never touched.")
    p.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    p.set_defaults(func=cmd_cleanup)


def cmd_cleanup(args) -> int:
    from shmalloc import shm

    removed, live = shm.cleanup(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for name in removed:
        print(f"{verb} {name}")
    print(f"{verb} {len(removed)} objects of dead runs; "
          f"{len(live)} live run(s) left alone" + (f": {', '.join(live)}" if live else ""))
    return 0


# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shmalloc",
                     description="Free page reporting designs from the 2019 Linux mm debate, "
                     "measured side by side with real processes and real zone-lock contention.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_bench(sub)
    _add_cleanup(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from shmalloc.machine import ConfigError

    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except UsageError as e:
        print(e, file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"shmalloc {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shmalloc {args.command}: interrupted", file=sys.stderr)
        return 130
