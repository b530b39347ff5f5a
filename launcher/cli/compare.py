"""``shmalloc compare``: the line-up of variants from the command line, the
rounds, and the tables."""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
from dataclasses import replace

from shmalloc.machine import ConfigError

from .. import units
from ..comparison.compare import (
    DEFAULT_LINEUP,
    DEFAULTS,
    Variant,
    build_analysis,
    build_comparison,
    check_labels,
    config_for,
    format_compare,
    format_comparison,
    format_costs,
    format_noise,
    label_items,
    parse_lineup,
    parse_variant,
    prepare,
    run_rounds,
)
from ..errors import UsageError
from ..experiment import interrupt, metadata
from ..experiment.designs import DESIGNS
from ..output import results
from . import flags


def add_parser(sub) -> None:

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
    p.add_argument("--repeat", type=units.int_range(1, 1000), default=1, metavar="N",
                   help="rounds: each runs every variant once, in a fresh random order; with "
                   "N >= 2 the differences come with 95 %% confidence intervals (default 1)")
    p.add_argument("--order-seed", type=units.int_range(0, 2**63 - 1), default=None, metavar="S",
                   help="seed of the rounds' random orders and of the bootstrap (default: "
                   "--seed)")
    flags.add_machine_flags(p, strategy=False)
    flags.add_output_flags(p)
    p.set_defaults(func=cmd_compare, **DEFAULTS)


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


def cmd_compare(args) -> int:

    if args.strategy_typo is not None:
        example = "none," + (args.strategy_typo if args.strategy_typo != "none" else "mainline")
        raise UsageError(f"shmalloc compare: --strategy is shmalloc run's flag (one design); "
                         f"compare takes a comma-separated list: --strategies {example}")
    # flags only some designs take: validated per variant, not for none
    args.only_some = {k: getattr(args, k) for k in ONLY_SOME}
    for key in ONLY_SOME:
        setattr(args, key, None)
    flags.run_config(args)                         # the common flags, before any variant's
    variants = _variants(args)
    flags.check_json_output(args)
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
