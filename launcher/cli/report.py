"""``shmalloc report``: saved results printed again, and drawn."""

from __future__ import annotations

import os

from ..comparison.compare import PART_COST, PART_GIVE_BACK
from ..comparison.tables import format_comparison, format_costs, format_noise, format_tables
from ..errors import UsageError
from ..output import results
from ..output.plots import PlotError, draw_all
from ..output.report import heading, label_runs
from ..output.summary import format_run
from ..vm.summary import format_run as format_guest_run


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="print saved results again, and draw them",
                       description="Print the tables of saved results files again (one summary "
                       "per run, and a side-by-side table when there are several) and, with "
                       "--plot DIR, draw PNG figures.")
    p.add_argument("files", nargs="+", metavar="FILE", help="results files (--json output)")
    p.add_argument("--plot", metavar="DIR", help="draw the figures into this folder")
    p.add_argument("--quiet", action="store_true", help="print only the paths of the figures")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:

    for path in args.files:
        if path.lower().endswith(".csv"):
            raise UsageError(f"shmalloc report: {path}: report reads results files (JSON, "
                             "written by --json or into a sweep's --out folder); the CSV is "
                             "what shmalloc sweep --merge makes of them")
    try:
        docs = [results.load(path) for path in args.files]
    except results.ResultsError as e:
        raise UsageError(f"shmalloc report: {e}") from None
    runs = [run for doc in docs for run in doc["runs"]]
    if args.plot and not os.path.isdir(os.path.dirname(os.path.abspath(args.plot))):
        raise UsageError(f"shmalloc report: --plot {args.plot}: its folder does not exist")
    label_runs(runs)
    runs_of_model = [run for run in runs if run.get("system") != "qemu"]  # not shmalloc vm's
    if not args.quiet:
        for run in runs:
            guest = run.get("system") == "qemu"
            print("\n".join(format_guest_run(run) if guest else format_run(run)))
            print()
        for doc in docs:                     # compare files: the paired tables
            if doc.get("comparison") and doc["comparison"]["rounds"] >= 2:
                analysis = doc.get("analysis") or {}
                lines = format_comparison(doc["comparison"])
                if analysis:
                    lines += [""] + format_costs(analysis) + [""] + format_noise(
                        analysis, doc["comparison"]["baseline"])
                print("\n".join(lines + [""]))
        if len(runs_of_model) > 1:
            # a main job's give-back runs and its rounds are different experiments
            parts = {r.get("part") for r in runs_of_model}
            for part in (PART_GIVE_BACK, PART_COST, None):
                group = [r for r in runs_of_model if r.get("part") == part]
                if len(group) > 1 or (group and len(parts) > 1):
                    title = heading(group)          # None: the runs' own heading
                    if title and len(parts) > 1:
                        title += f" ({part or 'other'} runs)"
                    print("\n".join(format_tables(group, title=title)))
    if args.plot:
        try:
            for path in draw_all(runs, args.plot):
                print(f"wrote {path}")
        except PlotError as e:
            raise UsageError(f"shmalloc report: {e}") from None
    return 0
