"""The ``shmalloc`` command: subcommands dispatch to ``cmd_<name>(args)``.

Bad input never produces a traceback: a usage error or an out-of-range value
prints one line on stderr and exits with status 2, before anything is created.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback

from . import interrupt
from . import options as opt
from .proc import RunAborted


class UsageError(Exception):
    """Bad command line or bad value: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):          # one line, no usage dump
        raise UsageError(f"{self.prog}: {message}")


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------

def add_machine_flags(p, strategy: bool = True) -> None:
    """Flags of one experiment, shared by run, compare and sweep."""
    from shmalloc.config import DEFAULT_LOCK_SPIN, MAX_ORDER_LIMIT, MAX_WORKERS, MAX_ZONES
    from shmalloc.machine import MAX_FREE_HOOK_NS
    from shmalloc.workload import WORKLOADS

    from .designs import names

    g = p.add_argument_group("experiment")
    g.add_argument("--workload", default="page_fault1", metavar="NAME",
                   help=f"what workers do: {', '.join(WORKLOADS)}, or trace:FILE to replay a "
                   "recorded trace (shmalloc trace record) (default page_fault1)")
    g.add_argument("--workers", type=opt.int_range(1, MAX_WORKERS), default=2, metavar="N",
                   help="worker processes (default 2)")
    g.add_argument("--duration", type=opt.duration_range(0, 86400, lo_open=True), default=None,
                   metavar="TIME", help="run time: seconds, or with a unit (500ms, 5s, 2m) "
                   "(default 5 s; without limit with --ops)")
    g.add_argument("--ops", type=opt.int_range(1), default=0, metavar="N",
                   help="stop each worker after this many alloc+free calls")
    g.add_argument("--seed", type=opt.int_range(0, 2**31 - 1), default=1, metavar="N",
                   help="random seed of the workers (default 1)")
    g.add_argument("--working-set", type=opt.size_range(4096), default=None, metavar="SIZE",
                   help="per worker: page_fault1/thp round size, random's target "
                   "(default min(128M, 80%% of memory / workers))")
    g.add_argument("--hog-share", type=opt.float_range(0, 1, lo_open=True), default=0.9,
                   metavar="FRACTION", help="hog: share of guest memory allocated (default 0.9)")
    g.add_argument("--hog-hold", type=opt.duration_range(0, 86400), default=1.0, metavar="TIME",
                   help="hog: how long the memory is held before it is freed (default 1 s)")
    g.add_argument("--trace-speed", type=opt.float_range(0, 1e6), default=0.0, metavar="X",
                   help="trace:FILE: replay at X times the recorded pace; 0 as fast as possible "
                   "(default 0)")
    g.add_argument("--trace-wait", type=opt.duration_range(0, 3600, lo_open=True), default=1.0,
                   metavar="TIME", help="trace:FILE: how long a free waits for its allocation "
                   "on another worker before it is left to that worker (default 1 s)")
    g.add_argument("--trace-loops", type=opt.int_range(0, 1 << 30), default=1, metavar="N",
                   help="trace:FILE: replay the trace N times; 0 until --duration (default 1)")
    g = p.add_argument_group("guest and allocator")
    g.add_argument("--memory", type=opt.size_range(1 << 20), default=None, metavar="SIZE",
                   help="guest memory, K/M/G/T suffixes, 1.5G allowed (default 1G; for "
                   "trace:FILE its peak live memory plus headroom)")
    g.add_argument("--zones", type=opt.int_range(1, MAX_ZONES), default=1, metavar="N",
                   help="zones, equal pfn ranges with a lock each (default 1)")
    g.add_argument("--max-order", type=opt.int_range(10, MAX_ORDER_LIMIT), default=11, metavar="N",
                   help="MAX_ORDER: orders 0..N-1 (default 11, blocks up to 4 MiB)")
    g.add_argument("--pcp-batch", type=opt.int_range(0, 4096), default=63, metavar="N",
                   help="per-worker page cache batch; 0 disables the pcp lists (default 63)")
    g.add_argument("--pcp-high", type=opt.int_range(1, 1 << 20), default=378, metavar="N",
                   help="pcp high watermark (default 378)")
    g.add_argument("--lock-spin", type=opt.int_range(0, 1_000_000), default=DEFAULT_LOCK_SPIN,
                   metavar="N",
                   help=f"sem_trywait retries before sleeping on a contended zone lock "
                   f"(default {DEFAULT_LOCK_SPIN})")
    g.add_argument("--no-lock-stats", dest="lock_stats", action="store_false",
                   help="switch lock_stat accounting off")
    g.add_argument("--free-hook-ns", type=opt.int_range(0, MAX_FREE_HOOK_NS), default=0,
                   metavar="N", help="busy-wait N ns (of running time) inside the zone lock on "
                   "every free of a block to the buddy lists: a known cost for calibration "
                   "(default 0)")
    g.add_argument("--no-pin", dest="pin", action="store_false",
                   help="let the scheduler place the workers (default: worker i on cpu i mod "
                   "ncpus, as will-it-scale pins its tasks)")
    g = p.add_argument_group("reporting")
    if strategy:
        g.add_argument("--strategy", default="none", metavar="NAME",
                       help=f"reporting design: {', '.join(names())}; callback/hint and "
                       "callback/discard also choose callback's mode (default none)")
    g.add_argument("--report-order", type=opt.int_range(0, MAX_ORDER_LIMIT - 1), default=9,
                   metavar="N", help="smallest order reported (default 9, pageblock order); "
                   "the page_reporting_order module parameter of Linux 5.14 and later "
                   "(5.7 fixed it at pageblock_order)")
    g.add_argument("--putback", default=None, metavar="WHERE",
                   help="mainline, isolate: where a reported block goes back on its free list: "
                   "head (Linux 5.7, the default) or tail (5.10's FPI_TO_TAIL)")
    g.add_argument("--walk-order", type=opt.int_range(0, MAX_ORDER_LIMIT - 1), default=None,
                   metavar="N", help="callback: lowest order walk_free_mem_block visits under "
                   "the zone lock (default 0, as v14); blocks below --report-order are visited "
                   "and paid for, not reported")
    g.add_argument("--callback-ns", type=opt.int_range(0, 10_000_000), default=None,
                   metavar="NS", help="callback: cost of v14's per-block callback (add_one_sg, "
                   "virtqueue_kick) under the zone lock (default: calibrated at start as one "
                   "message on a POSIX queue, the virtqueue stand-in)")
    g.add_argument("--capacity", type=opt.int_range(1, 1 << 20), default=None, metavar="N",
                   help="ranges per report (default 32, PAGE_REPORTING_CAPACITY; bitmap 16)")
    g.add_argument("--delay", type=opt.duration_range(0, 3600), default=None, metavar="TIME",
                   help="from a request to the reporting pass, and between passes "
                   "(default: the design's: mainline, callback, isolate 2 s; boundary 0.1 s; "
                   "bitmap 0)")
    g.add_argument("--scan-interval", type=opt.duration_range(0, 3600, lo_open=True),
                   default=5.0, metavar="TIME", help="hostscan: time between host scans "
                   "(default 5 s, as HyperAlloc)")
    g.add_argument("--callback-mode", default=None, metavar="MODE",
                   help="callback: hint (the host records the ranges) or discard (the host "
                   "discards them: unsafe) (default hint)")
    g.add_argument("--hv-latency", type=opt.duration_range(0, 60), default=0.0, metavar="TIME",
                   help="hypervisor stub: wait this long per report before discarding "
                   "(default 0)")
    g.add_argument("--discard", default="punch", metavar="HOW",
                   help="hypervisor stub: punch (fallocate PUNCH_HOLE), remove (madvise "
                   "MADV_REMOVE) or none (record only) (default punch)")
    g = p.add_argument_group("watchdog and faults")
    g.add_argument("--stall-timeout", type=opt.duration_range(0, 86400, lo_open=True),
                   default=10.0, metavar="TIME", help="abort when one owner holds a zone lock "
                   "this long, a child stays stopped this long, or a report waits this long "
                   "(default 10 s)")
    g.add_argument("--inject", action="append", default=[], metavar="WHAT@TIME",
                   help="inject a fault: kill-worker[:N], stop-worker[:N], kill-reporter, "
                   "kill-hypervisor, slow-hypervisor, at TIME after the start (repeatable)")


def run_config(args, resolve: bool = True):
    """The RunConfig the parsed flags describe (flag dest == field name);
    ``resolve=False`` leaves the design-dependent defaults open."""
    from dataclasses import fields

    from shmalloc.machine import ConfigError

    from .config import RunConfig

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
    from dataclasses import fields

    argv = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool):            # on by default: --no-<flag> turns it off
            argv += [] if value else [f"--no-{f.name.replace('_', '-')}"]
        elif f.name == "inject":
            for fault in value:
                argv += ["--inject", fault]
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


def _check_json_output(args) -> None:
    """Refuse an unwritable --json before anything is created."""
    from . import results

    if args.json:
        try:
            results.check_output(args.json, args.force)
        except results.ResultsError as e:
            raise UsageError(f"shmalloc {args.command}: --json: {e}") from None


def _compile(args, cfgs) -> None:
    """Have the kernels of ``cfgs`` compiled before anything is created or
    measured, saying so on stderr when that takes a while."""
    from . import compile as kernels
    kernels.prepare(kernels.groups_for(cfgs), command=f"shmalloc {args.command}",
                    stream=sys.stderr, progress=not getattr(args, "quiet", False))


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="one experiment: workers (and a reporting design) on one guest",
                       description="Create a guest, run worker processes through its page "
                       "allocator (and a reporting design), then print throughput, latency, the "
                       "lock_stat table, memory and safety. Exit 0 when the run is ok, 3 when "
                       "it was aborted by a fault, 2 on bad input.")
    add_machine_flags(p)
    add_output_flags(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from . import metadata, results
    from .run import execute
    from .summary import format_run

    cfg = run_config(args)
    _check_json_output(args)
    progress = sys.stderr.isatty() and not args.quiet
    _compile(args, [cfg])
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


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------

def _add_compare(sub) -> None:
    from .compare import DEFAULT_LINEUP, DEFAULTS

    p = sub.add_parser("compare", help="the same experiment under every design, side by side",
                       description="Run the same workload, seed and flags under several "
                       "variants (none and each reporting design by default), in rounds, each "
                       "round every variant once in a random order, and print how each differs "
                       "from the first (with --repeat N >= 2: median ratios with 95 %% "
                       "confidence intervals), where its cost went, and side-by-side tables: "
                       "what each costs the allocator and what it gives back. With no flags: "
                       f"{DEFAULTS['workload']} for {DEFAULTS['duration']:g} s on a 1 GiB guest "
                       "with 2 workers. Exit 0 when every run was ok, 3 when one aborted.")
    p.add_argument("--strategies", default=None, metavar="LIST",
                   help="designs to run, comma-separated, the first being the baseline; "
                   "callback/hint and callback/discard choose callback's mode; a design named "
                   "twice is labelled NAME#2 (an A/A check) (default "
                   f"{','.join(DEFAULT_LINEUP)}, or none with --variant)")
    p.add_argument("--strategy", dest="strategy_typo", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", action="append", default=[], metavar="LABEL='FLAGS'",
                   help="a variant: shmalloc run flags on top of this command's, e.g. "
                   "hook='--free-hook-ns 200' or ml='--strategy mainline --capacity 64' "
                   "(repeatable); the line-up is --strategies, if given, then the variants in "
                   "order; the first of all is the baseline")
    p.add_argument("--repeat", type=opt.int_range(1, 1000), default=1, metavar="N",
                   help="rounds: each runs every variant once, in a fresh random order; with "
                   "N >= 2 the differences come with 95 %% confidence intervals (default 1)")
    p.add_argument("--order-seed", type=opt.int_range(0, 2**63 - 1), default=None, metavar="S",
                   help="seed of the rounds' random orders and of the bootstrap (default: "
                   "--seed)")
    add_machine_flags(p, strategy=False)
    add_output_flags(p)
    p.set_defaults(func=cmd_compare, **DEFAULTS)


#: run flags only some designs take (launcher.designs): on compare's command
#: line they apply to the variants whose design takes them
ONLY_SOME = ("putback", "walk_order", "callback_ns")


def _variants(args) -> list:
    """The line-up: --strategies (given, or the default without --variant),
    then each --variant; every configuration validated, nothing created.
    ``args`` holds the common flags, with those of :data:`ONLY_SOME` moved
    to ``args.only_some``."""
    import copy
    import shlex
    from dataclasses import replace

    from shmalloc.machine import ConfigError

    from .compare import (
        DEFAULT_LINEUP,
        Variant,
        check_labels,
        config_for,
        label_items,
        parse_lineup,
        parse_variant,
    )
    from .designs import DESIGNS

    def takes(strategy: str, key: str) -> bool:
        design = DESIGNS[strategy]
        return design.putback is not None if key == "putback" else design.walks

    variants = []
    if args.strategies is not None or not args.variant:
        try:
            items = parse_lineup(args.strategies or ",".join(DEFAULT_LINEUP))
        except ValueError as e:
            raise UsageError(f"shmalloc compare: --strategies: {e}") from None
        base = replace(run_config(args, resolve=False), **args.only_some)
        variants += [Variant(label, config_for(base, item))
                     for label, item in zip(label_items(items), items)]
    for text in args.variant:
        try:
            label, flags = parse_variant(text)
        except ValueError as e:
            raise UsageError(f"shmalloc compare: --variant {e}") from None
        ns = _run_flags_parser(f"shmalloc compare: --variant {label}:").parse_args(
            shlex.split(flags), namespace=copy.copy(args))
        try:
            cfg = run_config(ns, resolve=False)
            for key, value in args.only_some.items():    # the command's, where they apply
                if value is not None and getattr(cfg, key) is None and takes(cfg.strategy, key):
                    cfg = replace(cfg, **{key: value})
            cfg = cfg.resolved()
        except ConfigError as e:
            raise UsageError(f"shmalloc compare: --variant {label}: {e}") from None
        variants.append(Variant(label, cfg, flags))
    for key, value in args.only_some.items():
        if value is not None and not any(takes(v.config.strategy, key) for v in variants):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"shmalloc compare: {flag}: no design in the line-up takes it")
    try:
        check_labels(variants)
    except ValueError as e:
        raise UsageError(f"shmalloc compare: {e}") from None
    return variants


def cmd_compare(args) -> int:
    from . import metadata, results
    from .compare import (
        build_analysis,
        build_comparison,
        format_compare,
        format_comparison,
        format_costs,
        format_noise,
        prepare,
        run_rounds,
    )

    if args.strategy_typo is not None:
        example = "none," + (args.strategy_typo if args.strategy_typo != "none" else "mainline")
        raise UsageError(f"shmalloc compare: --strategy is shmalloc run's flag (one design); "
                         f"compare takes a comma-separated list: --strategies {example}")
    # flags only some designs take: validated per variant, not for none
    args.only_some = {k: getattr(args, k) for k in ONLY_SOME}
    for key in ONLY_SOME:
        setattr(args, key, None)
    run_config(args)                         # the common flags, before any variant's
    variants = _variants(args)
    _check_json_output(args)
    order_seed = args.seed if args.order_seed is None else args.order_seed
    progress = sys.stderr.isatty() and not args.quiet
    warm, unit = prepare(variants, command="shmalloc compare", stream=sys.stderr,
                         progress=not args.quiet)
    # on a terminal a progress bar per run; otherwise (a log, CI) a line per
    # run as it ends, so a long compare never sits silent
    runs = run_rounds(variants, args.repeat, order_seed, unit, progress=progress,
                      lines=not args.quiet)
    interrupt.enter("while computing the comparison")
    status = max(run.pop("exit_status") for run in runs)
    interrupted = runs[-1].pop("interrupted", None)
    warm = all(run.pop("numba_cache_warm") for run in runs) and warm
    comparison = build_comparison(runs, variants, order_seed)
    analysis = build_analysis(runs, variants, order_seed, unit)
    labels = [v.label for v in variants]
    if not args.quiet:
        tables = format_compare(runs, labels)
        if comparison["rounds"] >= 2:
            out = (format_comparison(comparison) + [""] + format_costs(analysis) + [""]
                   + format_noise(analysis, labels[0]) + [""] + tables)
        else:
            out = (tables + ["", f"no interval: {comparison['rounds']} complete round; "
                             "--repeat N (N >= 2) pairs every variant with the baseline "
                             "round by round and gives 95 % confidence intervals", ""]
                   + format_costs(analysis) + [""] + format_noise(analysis, labels[0]))
        print("\n".join(out))
    if interrupted is not None:
        print(f"shmalloc compare: {interrupted}", file=sys.stderr)
    elif runs[-1]["outcome"] != "ok":
        print(f"shmalloc compare: {runs[-1]['label']} aborted: {runs[-1]['abort_reason']}",
              file=sys.stderr)
    if args.json:
        doc = results.document(runs, metadata.collect(warm), comparison=comparison,
                               analysis=analysis)
        results.write(args.json, doc, force=args.force)
    return status


# ---------------------------------------------------------------------------
# sweep
# ---------------------------------------------------------------------------

def _run_flags_parser(prog: str = "shmalloc sweep --grid") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, add_help=False)
    add_machine_flags(p)
    return p


def _add_sweep(sub) -> None:
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
    add_machine_flags(p)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    from . import metadata, sweep

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
            args = _run_flags_parser().parse_args(base_argv, namespace=args)
        if not grid:
            raise sweep.SweepError("nothing to sweep: give --grid KEY=V1,V2 or --grid-file")
        points = sweep.build_points(grid, args, _run_flags_parser(), run_config)
        if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            raise sweep.SweepError(f"--out {out}: its folder does not exist")
    except sweep.SweepError as e:
        raise UsageError(f"shmalloc sweep: {e}") from None
    if args.list:
        print("\n".join(sweep.list_commands(points, out, config_argv)))
        return 0
    _compile(args, [p.config for p in points if not sweep.done(out, p)])
    os.makedirs(out, exist_ok=True)
    counts = sweep.run_points(points, out, metadata.collect,
                              progress=sys.stderr.isatty() and not args.quiet)
    path, rows = sweep.merge(out, args.csv)
    print(f"{len(points)} points: {counts['ran']} run, {counts['skipped']} already done, "
          f"{counts['aborted']} aborted; {rows} runs in {path}")
    return 3 if counts["aborted"] else 0


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def _add_report(sub) -> None:
    p = sub.add_parser("report", help="print saved results again, and draw them",
                       description="Print the tables of saved results files again (one summary "
                       "per run, and a side-by-side table when there are several) and, with "
                       "--plot DIR, draw PNG figures.")
    p.add_argument("files", nargs="+", metavar="FILE", help="results files (--json output)")
    p.add_argument("--plot", metavar="DIR", help="draw the figures into this folder")
    p.add_argument("--quiet", action="store_true", help="print only the paths of the figures")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from . import results
    from .compare import format_compare
    from .plots import PlotError, draw_all
    from .report import heading, label_runs
    from .summary import format_run

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
    if not args.quiet:
        for run in runs:
            print("\n".join(format_run(run)))
            print()
        from .compare import format_comparison, format_costs, format_noise
        for doc in docs:                     # version 2 compare files: the paired tables
            if doc.get("comparison") and doc["comparison"]["rounds"] >= 2:
                analysis = doc.get("analysis") or {}
                lines = format_comparison(doc["comparison"])
                if analysis:
                    lines += [""] + format_costs(analysis) + [""] + format_noise(
                        analysis, doc["comparison"]["baseline"])
                print("\n".join(lines + [""]))
        if len(runs) > 1:
            lines = format_compare(runs)
            lines[0] = heading(runs) or lines[0]    # compare's own, for one configuration
            print("\n".join(lines))
    if args.plot:
        try:
            for path in draw_all(runs, args.plot):
                print(f"wrote {path}")
        except PlotError as e:
            raise UsageError(f"shmalloc report: {e}") from None
    return 0


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
    p.add_argument("--compile", action="store_true",
                   help="instead: where a cold numba compile goes, kernel by kernel, each "
                   "measurement in a fresh process with an empty temporary NUMBA_CACHE_DIR "
                   "(takes a minute or two)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from shmalloc.bench import failures, format_bench, run_bench
    from shmalloc.machine import ConfigError, MachineConfig

    try:
        MachineConfig(memory=args.init_memory).validate()
    except ConfigError as e:
        raise ConfigError("--init-memory", e.detail) from None
    if args.compile:
        from .compile import format_measure, measure
        res = measure()
        print(json.dumps(res, indent=2) if args.json else "\n".join(format_measure(res)))
        return 0
    from . import compile as kernels
    kernels.prepare(["allocator", "bench", "unit costs"], command="shmalloc bench",
                    stream=sys.stderr)
    res = run_bench(reps=args.reps, iters=args.iters, init_memory=args.init_memory)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print("\n".join(format_bench(res)))
    failed = failures(res)
    if failed:
        print(f"shmalloc bench: operations failed, figures void: "
              f"{', '.join(f'{k} ({n})' for k, n in failed.items())}", file=sys.stderr)
        return 1
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
    p.add_argument("--cache", action="store_true",
                   help="instead: remove the stale compiled kernels under "
                   "$XDG_CACHE_HOME/shmalloc/numba (~/.cache by default): those of other "
                   "sources, numba versions or CPUs, and the old .numba_cache/ of this checkout")
    p.set_defaults(func=cmd_cleanup)


def cmd_cleanup(args) -> int:
    from shmalloc import shm

    if args.cache:
        return _cleanup_cache(args.dry_run)

    removed, live = shm.cleanup(dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for name in removed:
        print(f"{verb} {name}")
    print(f"{verb} {len(removed)} objects of dead runs; "
          f"{len(live)} live run(s) left alone" + (f": {', '.join(live)}" if live else ""))
    return 0


def _cleanup_cache(dry_run: bool) -> int:
    from shmalloc import jitcache
    from shmalloc.jitcache import dir_bytes, remove_dir, stale_dirs

    stale = stale_dirs()
    legacy = jitcache.ROOT / ".numba_cache"
    if legacy.is_dir():
        stale.append(legacy)
    verb = "would remove" if dry_run else "removed"
    total = 0
    for path in stale:
        size = dir_bytes(path)
        total += size
        if not dry_run:
            remove_dir(path)
        print(f"{verb} {path} ({size / 2**20:.1f} MiB)")
    keep = "" if jitcache.OVERRIDDEN else f"; kept {jitcache.CACHE_DIR} (this checkout's)"
    print(f"{verb} {len(stale)} stale kernel cache folders, {total / 2**20:.1f} MiB{keep}")
    return 0


# ---------------------------------------------------------------------------

def _nested(sub):
    """Every parser under ``sub``, the actions of a command with actions
    (``trace record``) included."""
    for p in sub.choices.values():
        yield p
        for action in p._subparsers._group_actions if p._subparsers else ():
            yield from _nested(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shmalloc",
                     description="Free page reporting designs from the 2019 Linux mm debate, "
                     "measured side by side with real processes and real zone-lock contention.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_run(sub)
    _add_compare(sub)
    _add_sweep(sub)
    _add_report(sub)
    _add_bench(sub)
    _add_cleanup(sub)
    from .trace import add_trace_parser
    add_trace_parser(sub)
    for p in (parser, *_nested(sub)):
        p.add_argument("--debug", action="store_true",
                       help="on an unexpected error, print its traceback too")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``shmalloc`` command.  Nothing escapes as a traceback: bad input
    is one line and status 2; a signal is one line naming the phase and
    128 + the signal (:mod:`launcher.interrupt`); an aborted run one line and
    its status; anything unexpected one line, status 1 and a hint to rerun
    with ``--debug``, which prints the traceback as well."""
    interrupt.install()
    try:
        return _main(argv)
    finally:
        if interrupt.honoured() is not None:
            interrupt.ignore_from_now()     # the status stays 128 + the first signal


def _main(argv: list[str] | None) -> int:
    interrupt.enter("while checking arguments")
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    command = "shmalloc"
    try:
        from shmalloc.machine import ConfigError
        try:
            args, extra = build_parser().parse_known_args(argv)
            command = f"shmalloc {args.command}"
            if extra:
                raise UsageError(f"{command}: unrecognized arguments: {' '.join(extra)}")
            interrupt.checkpoint("arguments")
            return args.func(args)
        except UsageError as e:
            print(e, file=sys.stderr)
            return 2
        except ConfigError as e:
            print(f"{command}: {e}", file=sys.stderr)
            return 2
    except interrupt.Interrupted as e:
        interrupt.end_partial_line()
        print(f"{command}: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:                # before our handler, or from a library
        interrupt.end_partial_line()
        print(f"{command}: interrupted by SIGINT {interrupt.phase()}", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:                  # e.g. piped into head: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except RunAborted as e:
        interrupt.end_partial_line()
        print(f"{command}: aborted: {e}", file=sys.stderr)
        return e.exit_status
    except Exception as e:                   # a bug: one line, the traceback on request
        interrupt.end_partial_line()
        if debug:
            traceback.print_exc()
        print(f"{command}: internal error: {type(e).__name__}: {e}"
              + ("" if debug else " (rerun with --debug for the traceback)"), file=sys.stderr)
        return 1
