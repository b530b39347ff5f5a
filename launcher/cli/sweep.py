"""``shmalloc sweep``: a grid over run flags, one results file per point."""

from __future__ import annotations

import os
import sys

from ..comparison import sweep
from ..errors import UsageError
from ..experiment import metadata
from . import flags


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="a grid over run flags, one results file per point",
                       description="Run every point of a grid over run flags (--grid KEY=V1,V2 "
                       "..., or a TOML file with [grid] and [base] tables) as an independent "
                       "run, each written to its own results file in --out DIR; points already "
                       "there are skipped, so an interrupted sweep resumes. The other flags are "
                       "those of shmalloc run and apply to every point.")
    g = p.add_argument_group("sweep")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a run flag and its values (repeat for more dimensions)")
    g.add_argument("--grid-file", metavar="FILE", help="TOML: [grid] KEY = [values], "
                   "optional [base] KEY = value")
    g.add_argument("--out", required=True, metavar="DIR", help="folder of the results files")
    g.add_argument("--list", action="store_true", help="print one self-contained shmalloc run "
                   "command per point (for a job runner) instead of running")
    g.add_argument("--merge", action="store_true", help="only gather the results files of DIR "
                   "into one CSV")
    g.add_argument("--csv", metavar="PATH", help="where --merge writes (default DIR/sweep.csv)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    flags.add_machine_flags(p)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:

    out = args.out
    try:
        if args.merge:
            if not os.path.isdir(out):
                raise sweep.SweepError(f"--out {out}: no such folder")
            path, rows = sweep.merge(out, args.csv)
            print(f"{rows} runs merged into {path}")
            return 0
        grid = sweep.parse_grid(args.grid)
        if args.grid_file:
            file_grid, base = sweep.load_grid_file(args.grid_file)
            for key in set(grid) & set(file_grid):
                raise sweep.SweepError(f"--grid {key} is also in {args.grid_file}")
            grid.update(file_grid)
            base_argv = []
            for key, value in base.items():
                base_argv += [f"--{key.replace('_', '-')}", value]
            args = flags.run_flags_parser().parse_args(base_argv, namespace=args)
        if not grid:
            raise sweep.SweepError("nothing to sweep: give --grid KEY=V1,V2 or --grid-file")
        points = sweep.build_points(grid, args, flags.run_flags_parser(), flags.run_config)
        if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise sweep.SweepError(f"--out {out}: its folder does not exist")
    except sweep.SweepError as e:
        raise UsageError(f"shmalloc sweep: {e}") from None
    if args.list:
        print("\n".join(sweep.list_commands(points, out, flags.config_argv)))
        return 0
    flags.compile_for(args, [p.config for p in points if not sweep.done(out, p)])
    os.makedirs(out, exist_ok=True)
    counts = sweep.run_points(points, out, metadata.collect,
                              progress=sys.stderr.isatty() and not args.quiet)
    path, rows = sweep.merge(out, args.csv)
    print(f"{len(points)} points: {counts['ran']} run, {counts['skipped']} already done, "
          f"{counts['aborted']} aborted; {rows} runs in {path}")
    return 3 if counts["aborted"] else 0
