"""``shmalloc compare``: the line-up of variants from the command line, the
rounds, and the tables."""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from dataclasses import replace

from shmalloc.machine import ConfigError

from .. import units
from ..comparison import budget
from ..comparison.compare import (
    COST,
    COST_ROUNDS,
    DEFAULT_LINEUP,
    EXPERIMENT_KEYS,
    GIVE_BACK,
    PART_COST,
    PART_GIVE_BACK,
    Variant,
    build_analysis,
    build_comparison,
    check_labels,
    config_for,
    label_items,
    parse_lineup,
    parse_variant,
    prepare,
    run_rounds,
)
from ..comparison.stats import MIN_ROUNDS
from ..comparison.tables import (
    format_comparison,
    format_costs,
    format_mmtests_comparison,
    format_noise,
    format_sharper,
    format_tables,
)
from ..errors import UsageError
from ..experiment import interrupt, metadata
from ..experiment.designs import DESIGNS
from ..output import results
from ..output.summary import describe
from . import flags


def add_parser(sub) -> None:

    cost, give = COST, GIVE_BACK
    p = sub.add_parser("compare", help="the same experiment under every design, side by side",
                       description="What each reporting design costs the allocator and what "
                       "it gives back, against the first of the line-up (none by default). "
                       "With no --workload, --workers, --duration or --ops, in two parts: the "
                       f"cost from {COST_ROUNDS} paired rounds of {cost['duration']:g} s of "
                       f"{cost['workload']} with {cost['workers']} worker (each round every "
                       "design once, in a random order; throughput compared only as a median "
                       "ratio with its 95 % interval), then what it gives back, and at what "
                       f"risk, from one {give['duration']:g} s run per design of "
                       f"{give['workload']} with {give['workers']} workers; about 1 min 40 s. "
                       "With an experiment of your own, its rounds serve both. Exit 0 when "
                       "every run was ok, 3 when one aborted.")
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
    p.add_argument("--repeat", type=units.int_range(1, 100_000), default=None, metavar="N",
                   help="rounds: each runs every variant once, in a fresh random order; from "
                   f"{MIN_ROUNDS} rounds on every difference comes with a 95 %% interval "
                   f"(default {COST_ROUNDS} for the main job, 1 for an experiment of your own)")
    p.add_argument("--budget", type=units.duration_range(1, 7 * 86400), default=None,
                   metavar="TIME", help="spend about TIME on rounds (10m, 1h): the number of "
                   "rounds is fixed from it before the first, never changed by what they "
                   "show (a stop at the first significant round would report differences "
                   "that are not there), and a round is not started that would end past it; "
                   "the main job's give-back runs come on top")
    p.add_argument("--order-seed", type=units.int_range(0, 2**63 - 1), default=None, metavar="S",
                   help="seed of the rounds' random orders (default: --seed)")
    p.add_argument("--format", choices=("text", "mmtests"), default="text",
                   help="text (default) or mmtests: the paired rounds in the layout of mmtests' "
                   "compare-kernels.sh (Min, Amean, Hmean, Stddev, CoeffVar, Max per figure, "
                   "for a cover letter); the main job then runs its rounds only")
    flags.add_machine_flags(p, strategy=False)
    flags.add_output_flags(p)
    p.set_defaults(func=cmd_compare, **dict.fromkeys(EXPERIMENT_KEYS))


#: run flags only some designs take (launcher.experiment.designs): on compare's command
#: line they apply to the variants whose design takes them
ONLY_SOME = ("putback", "walk_order", "callback_ns", "free_page_vq", "start")


def _variants(args) -> list:
    """The line-up: --strategies (given, or the default without --variant),
    then each --variant; every configuration validated, nothing created.
    ``args`` holds the common flags, with those of :data:`ONLY_SOME` moved
    to ``args.only_some``."""

    def takes(strategy: str, key: str) -> bool:
        design = DESIGNS[strategy]
        if key == "start":
            return design.records_host
        return design.putback is not None if key == "putback" else design.walks

    variants = []
    if args.strategies is not None or not args.variant:
        try:
            items = parse_lineup(args.strategies or ",".join(DEFAULT_LINEUP))
        except ValueError as e:
            raise UsageError(f"shmalloc compare: --strategies: {e}") from None
        base = replace(flags.run_config(args, resolve=False), **args.only_some)
        variants += [Variant(label, config_for(base, item))
                     for label, item in zip(label_items(items), items)]
    for text in args.variant:
        try:
            label, text_flags = parse_variant(text)
        except ValueError as e:
            raise UsageError(f"shmalloc compare: --variant {e}") from None
        ns = flags.run_flags_parser(f"shmalloc compare: --variant {label}:").parse_args(
            shlex.split(text_flags), namespace=copy.copy(args))
        try:
            cfg = flags.run_config(ns, resolve=False)
            for key, value in args.only_some.items():    # the command's, where they apply
                if value is not None and getattr(cfg, key) is None and takes(cfg.strategy, key):
                    cfg = replace(cfg, **{key: value})
            cfg = cfg.resolved()
        except ConfigError as e:
            raise UsageError(f"shmalloc compare: --variant {label}: {e}") from None
        variants.append(Variant(label, cfg, text_flags))
    for key, value in args.only_some.items():
        if value is not None and not any(takes(v.config.strategy, key) for v in variants):
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"shmalloc compare: {flag}: no design in the line-up takes it")
    try:
        check_labels(variants)
    except ValueError as e:
        raise UsageError(f"shmalloc compare: {e}") from None
    return variants


def _experiment(args, values: dict):
    """``args`` with the experiment flags of one part of the main job."""
    ns = copy.copy(args)
    for key, value in values.items():
        setattr(ns, key, value)
    return ns


def _rounds(args, main_job: bool, n_variants: int, duration: float):
    """(rounds, deadline or None): --budget's plan, --repeat, or the default."""
    if args.budget is not None:
        if args.repeat is not None:
            raise UsageError("shmalloc compare: --budget and --repeat both choose the rounds; "
                             "give one")
        try:
            plan = budget.plan(args.budget, n_variants, duration)
        except budget.BudgetError as e:
            raise UsageError(f"shmalloc compare: {e}") from None
        return plan.rounds, budget.Deadline(args.budget)
    if args.repeat is not None:
        return args.repeat, None
    return (COST_ROUNDS if main_job else 1), None


def cmd_compare(args) -> int:

    if args.strategy_typo is not None:
        example = "none," + (args.strategy_typo if args.strategy_typo != "none" else "mainline")
        raise UsageError(f"shmalloc compare: --strategy is shmalloc run's flag (one design); "
                         f"compare takes a comma-separated list: --strategies {example}")
    # the main job unless the command names an experiment of its own
    main_job = all(getattr(args, k) is None for k in EXPERIMENT_KEYS)
    if not main_job:
        for key, value in (("workload", "page_fault1"), ("workers", 2), ("ops", 0)):
            if getattr(args, key) is None:
                setattr(args, key, value)
    # flags only some designs take: validated per variant, not for none
    args.only_some = {k: getattr(args, k) for k in ONLY_SOME}
    for key in ONLY_SOME:
        setattr(args, key, None)
    cost_args = _experiment(args, COST) if main_job else args
    flags.run_config(cost_args)                    # the common flags, before any variant's
    variants = _variants(cost_args)
    give_back = []
    if main_job and args.format == "text":
        give_back = _variants(_experiment(args, GIVE_BACK))
    flags.check_json_output(args)
    rounds, deadline = _rounds(args, main_job, len(variants), variants[0].config.duration or 0)
    order_seed = args.seed if args.order_seed is None else args.order_seed
    progress = sys.stderr.isatty() and not args.quiet
    warm, unit = prepare(variants + give_back, command="shmalloc compare", stream=sys.stderr,
                         progress=not args.quiet)
    # on a terminal a progress bar per run; otherwise (a log, CI) a line per
    # run as it ends, so a long compare never sits silent
    total = rounds * len(variants) + len(give_back)
    t0 = time.monotonic()
    runs = run_rounds(variants, rounds, order_seed, unit, progress=progress,
                      lines=not args.quiet, deadline=deadline, total=total)
    rounds_wall = time.monotonic() - t0
    done_rounds = max(r["round"] for r in runs)
    if give_back and runs[-1]["outcome"] == "ok" and "interrupted" not in runs[-1]:
        runs += run_rounds(give_back, 1, order_seed, unit, progress=progress,
                           lines=not args.quiet, part=PART_GIVE_BACK, done=len(runs),
                           total=len(runs) + len(give_back))
    interrupt.enter("while computing the comparison")
    status = max(run.pop("exit_status") for run in runs)
    interrupted = runs[-1].pop("interrupted", None)
    warm = all(run.pop("numba_cache_warm") for run in runs) and warm
    cost_runs = [r for r in runs if r["part"] == PART_COST]
    comparison = build_comparison(cost_runs, variants, order_seed)
    analysis = build_analysis(cost_runs, variants, unit, round_s=rounds_wall / done_rounds)
    analysis["parts"] = _parts(variants, give_back, rounds, comparison["rounds"], deadline)
    labels = [v.label for v in variants]
    if not args.quiet:
        if args.format == "mmtests":
            out = format_mmtests_comparison(cost_runs, labels, comparison,
                                            headline(analysis["parts"], labels, cost_runs))
        else:
            argv = sys.argv[sys.argv.index("compare"):] if "compare" in sys.argv else []
            out = format_main(runs, comparison, analysis, labels, argv)
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


def _parts(variants: list, give_back: list, planned: int, complete: int, deadline) -> dict:
    """What ran, for the results file and the headline: the rounds'
    experiment, how many were planned and complete, and the give-back runs'."""
    cost = variants[0].config
    out = {PART_COST: {"workload": cost.workload, "workers": cost.workers,
                       "duration_s": cost.duration, "rounds_planned": planned,
                       "rounds_complete": complete,
                       "budget_s": None if deadline is None else deadline.budget_s}}
    if give_back:
        g = give_back[0].config
        out[PART_GIVE_BACK] = {"workload": g.workload, "workers": g.workers,
                               "duration_s": g.duration}
    return out


def _workers(n: int) -> str:
    return f"{n} worker{'s' if n != 1 else ''}"


def headline(parts: dict, labels: list, runs: list) -> str:
    """The first line: the line-up, what its runs share, and each part's
    experiment."""
    cfg = runs[0]["config"]
    common = describe(cfg, strategy=False).split(", ", 2)[2]     # guest, zones, pcp, seed
    putbacks = {r["config"].get("putback") for r in runs} - {None}
    if len(putbacks) == 1:
        common += f", putback {putbacks.pop()} (mainline, isolate)"
    starts = {r["config"].get("start") for r in runs} - {None}
    if len(starts) == 1:
        common += f", start {starts.pop()} (mainline, boundary, hostscan)"
    cost = parts[PART_COST]
    n = cost["rounds_complete"]
    own = [r["config"] for r in runs if r.get("part", PART_COST) == PART_COST]

    def each(key: str, say) -> str:          # the variants' own flags may differ
        values = list(dict.fromkeys(c[key] for c in own))
        if len(values) == 1:
            return say(values[0])
        return f"{key} per variant ({', '.join(map(str, values))})"

    rounds = ", ".join([f"{n} paired round{'s' if n != 1 else ''} "
                        + each("duration", lambda v: f"of {v:g} s"),
                        each("workload", str), each("workers", _workers)])
    others = len(labels) - 1
    line = (f"shmalloc compare: {others} variant{'s' if others != 1 else ''} against "
            f"{labels[0]}; {common}")
    if PART_GIVE_BACK not in parts:
        return f"{line}; {rounds}"
    g = parts[PART_GIVE_BACK]
    return (f"{line}\n  what it costs:      {rounds}\n  what it gives back: one "
            f"{g['duration_s']:g} s run each, {g['workload']}, {_workers(g['workers'])}")


def format_main(runs: list, comparison: dict, analysis: dict, labels: list,
                argv: list) -> list[str]:
    """compare's text output: the headline, the paired table, where the cost
    went, the tables of what each design gave back (the give-back runs, or
    the rounds' medians), what +-2 % would take, the noise."""
    parts = analysis["parts"]
    cost = parts[PART_COST]
    give = [r for r in runs if r["part"] == PART_GIVE_BACK]
    base = labels[0]
    n = comparison["rounds"]
    title = (f"what it costs the allocator: {n} paired round{'s' if n != 1 else ''} of "
             f"{cost['duration_s']:g} s against {base} (each round every variant once, in a "
             f"random order; order seed {comparison['order_seed']})")
    out = [headline(parts, labels, runs), ""] + format_comparison(comparison, title)
    out += [""] + format_costs(analysis)
    if give:
        g = parts[PART_GIVE_BACK]
        gtitle = (f"what it gives back, and at what risk: one {g['duration_s']:g} s run per "
                  f"variant, {g['workload']}, {_workers(g['workers'])}")
        out += [""] + format_tables(give, labels, gtitle)
    else:
        out += [""] + format_tables([r for r in runs if r["part"] == PART_COST], labels,
                                    "what it gives back, and at what risk: the rounds' runs")
    out += [""] + format_sharper(analysis, argv, base) + format_noise(analysis, base)
    return out
