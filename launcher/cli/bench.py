"""``shmalloc bench``: the allocator engine alone (:mod:`shmalloc.bench`),
and with ``--compile`` where a cold compile goes."""

from __future__ import annotations

import json
import sys

from shmalloc import bench
from shmalloc.machine import ConfigError, MachineConfig

from .. import units
from ..experiment import compile as kernels


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="micro-benchmark of the allocator engine (one process)",
                       description="Time order-0/order-9 alloc+free pairs through the zone "
                       "lock and the pcp lists, with lock statistics on and off, against the "
                       "pure-Python reference allocator.")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--reps", type=units.int_range(1, 1000), default=5,
                   help="repetitions per case; the median is reported (default 5)")
    p.add_argument("--iters", type=units.int_range(1, 100000), default=20,
                   help="alloc/free rounds per repetition (default 20)")
    p.add_argument("--init-memory", type=units.size_range(4 << 20), default=16 << 30,
                   metavar="SIZE", help="guest size for the create-and-initialise timing "
                   "(default 16G; reported as init_s, the size as init_memory_bytes)")
    p.add_argument("--compile", action="store_true",
                   help="instead: where a cold numba compile goes, kernel by kernel, each "
                   "measurement in a fresh process with an empty temporary NUMBA_CACHE_DIR "
                   "(takes a minute or two)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:

    try:
        MachineConfig(memory=args.init_memory).validate()
    except ConfigError as e:
        raise ConfigError("--init-memory", e.detail) from None
    if args.compile:
        res = kernels.measure()
        print(json.dumps(res, indent=2) if args.json else "\n".join(kernels.format_measure(res)))
        return 0
    kernels.prepare(["allocator", "bench", "unit costs"], command="shmalloc bench",
                    stream=sys.stderr)
    res = bench.run_bench(reps=args.reps, iters=args.iters, init_memory=args.init_memory)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print("\n".join(bench.format_bench(res)))
    failed = bench.failures(res)
    if failed:
        print(f"shmalloc bench: operations failed, figures void: "
              f"{', '.join(f'{k} ({n})' for k, n in failed.items())}", file=sys.stderr)
        return 1
    return 0
