"""``shmalloc vm``: boot a real guest kernel under QEMU and run a workload in
it (:mod:`launcher.vm`); its flags and its command.

Exit status: 0 ok, 2 bad input or a missing package (one line, nothing
started), 3 when the guest fails (did not come up within --boot-timeout,
QEMU exited, the workload program failed: the message ends with the
console's last lines), 128 + the signal when interrupted (QEMU is stopped
within a second).
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from .. import units as opt
from ..errors import UsageError
from ..experiment import metadata
from ..output import plots, results
from ..vm import compare
from ..vm.config import WORKLOADS, GuestConfig
from ..vm.host import INSTALL, VmUsageError
from ..vm.run import execute
from ..vm.summary import format_run


def _orders(text: str) -> tuple[int, ...]:
    """--report-order: N, or for vm compare a list N,N (each 0..10, no repeats)."""
    one = opt.int_range(0, 10)
    orders = tuple(one(x) for x in text.split(","))
    if len(set(orders)) != len(orders):
        raise argparse.ArgumentTypeError(f"an order given twice: {text!r}")
    return orders


def _rounds(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number 1-20, got {text!r}") from None
    if not 1 <= n <= 20:
        raise argparse.ArgumentTypeError(f"must be 1-20, got {n}")
    return n


def add_guest_flags(p) -> None:
    """The flags of one real-guest run (``vm`` and ``vm compare``)."""
    g = p.add_argument_group("workload (the model's names and meanings)")
    g.add_argument("--workload", default="hog", metavar="NAME",
                   help=f"what the guest's workers do: {', '.join(WORKLOADS)} (default hog)")
    g.add_argument("--workers", type=opt.int_range(1, 64), default=1, metavar="N",
                   help="worker processes in the guest (default 1)")
    g.add_argument("--duration", type=opt.duration_range(0, 3600, lo_open=True), default=None,
                   metavar="TIME", help="the workload's run time from its start (default 15 s; "
                   "vm compare: 22 s for hog, 20 s otherwise)")
    g.add_argument("--seed", type=opt.int_range(0, 2**31 - 1), default=1, metavar="N",
                   help="seed of random and phased (default 1)")
    g.add_argument("--working-set", type=opt.size_range(4096), default=None, metavar="SIZE",
                   help="per worker: page_fault1/thp round, random's target (default "
                   "min(128M, 80%% of memory / workers))")
    g.add_argument("--hog-share", type=opt.float_range(0, 1, lo_open=True), default=None,
                   metavar="FRACTION", help="hog: share of guest memory written (default 0.9; "
                   "vm compare: 0.5)")
    g.add_argument("--hog-hold", type=opt.duration_range(0, 3600), default=None, metavar="TIME",
                   help="hog: how long it is held before it is freed (default 1 s; vm compare: "
                   "3 s)")
    g.add_argument("--guest-thp", default="never", choices=("never", "always"),
                   help="never: the workload's memory faults in 4 KiB pages (MADV_NOHUGEPAGE), "
                   "as the model allocates order-0 pages; always: 2 MiB-aligned order >= 9 "
                   "regions with MADV_HUGEPAGE (default never)")
    g = p.add_argument_group("guest")
    g.add_argument("--memory", type=opt.size_range(1 << 20), default=1 << 30, metavar="SIZE",
                   help="guest memory, whole MiB (default 1G)")
    g.add_argument("--vcpus", type=opt.int_range(1, 16), default=1, metavar="N",
                   help="virtual cpus (default 1)")
    g.add_argument("--report-order", type=_orders, default=None, metavar="N",
                   help="page_reporting_order, 0..MAX_ORDER-1 (default 9, pageblock_order); "
                   "written to /sys/module/page_reporting/parameters after virtio_balloon "
                   "loads, as Linux 6.1 overwrites the boot parameter when it registers; "
                   "vm compare takes a list, e.g. 9,10: a guest and a model run at each")
    g.add_argument("--start", default="idle", choices=("idle", "boot"),
                   help="idle: start the workload once the guest's reporter has gone idle "
                   "after boot (every free block reported); boot: at once (default idle)")
    g.add_argument("--settle-timeout", type=opt.duration_range(0, 3600, lo_open=True),
                   default=90.0, metavar="TIME", help="--start idle: start anyway after this "
                   "long, recording that the reporter was not idle (default 90 s)")
    g.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"),
                   help="auto: KVM when a probe boot shows it works here (checked once, "
                   "remembered), else TCG (default auto)")
    g.add_argument("--kernel", default=None, metavar="PATH",
                   help="guest kernel image (default the newest /boot/vmlinuz-* with modules)")
    g.add_argument("--modules", default=None, metavar="DIR",
                   help="its modules (default /lib/modules/<release>)")
    g.add_argument("--append", default="", metavar="PARAMS",
                   help="more kernel command-line parameters, e.g. 'page_alloc.shuffle=1'")
    g.add_argument("--boot-timeout", type=opt.duration_range(0, 3600, lo_open=True),
                   default=60.0, metavar="TIME",
                   help="the guest must be up within this long (default 60 s)")
    g = p.add_argument_group("sampling")
    g.add_argument("--sample-interval", type=opt.duration_range(0.01, 1), default=0.1,
                   metavar="TIME", help="host and guest sample period (default 100 ms)")
    g.add_argument("--guest-scan", type=opt.duration_range(0, 3600), default=1.0,
                   metavar="TIME", help="period of the guest's /proc/kpageflags scan for "
                   "Reported pages; it costs the guest about 0.15 s of its vCPU per 2 GiB under "
                   "TCG; 0: at the start and the end only (default 1 s)")


def add_parser(sub) -> None:
    p = sub.add_parser("vm", help="boot a real guest kernel under QEMU and run a workload in it; "
                       "vm compare: the same workload in the model beside it",
                       usage="shmalloc vm [compare] [flags]",
                       description="Boot the installed distribution kernel under QEMU with "
                       "virtio-balloon free page reporting, run one of the model's workloads in "
                       "it, and record what the host sees (QEMU's resident memory and page "
                       "faults every 100 ms) and what the guest sees (free memory, Reported "
                       "pages, each reporting pass), as a run of the results file. "
                       "'shmalloc vm compare' (compare first) then runs the same workload in the "
                       "model, configured as the guest was (mainline, its report order, "
                       "capacity, delay, start state, host page size and per-cpu high mark), "
                       "and prints a table of figures (real, model, difference), flagging those "
                       "that differ by more than the sampling interval or 15 %. Needs "
                       f"{INSTALL}. Exit 0 ok, 2 bad input or missing packages, 3 when the "
                       "guest or the model's run fails.")
    p.add_argument("action", nargs="?", choices=("compare",), default=None,
                   help="compare: the real guest, then the model, side by side")
    add_guest_flags(p)
    g = p.add_argument_group("vm compare")
    g.add_argument("--real", metavar="FILE", default=None,
                   help="take the real guest's runs from this results file (shmalloc vm "
                   "--json) instead of booting one: the workload and guest flags are the "
                   "file's; --report-order picks its runs (default all)")
    g.add_argument("--rounds", type=_rounds, default=1, metavar="N",
                   help="run the real guest and the model N times at each order, interleaved "
                   "(round 1: order 9 guest, model, order 10 guest, model; then round 2 ..., "
                   "round r with --seed + r - 1 on both sides), "
                   "and print each figure's median and range over the rounds on either side, "
                   "flagging a model median outside the guest's range: under churn one guest "
                   "run is not a measurement (1-20, default 1)")
    g.add_argument("--plot", metavar="FILE", default=None,
                   help="draw both timelines of host-resident memory (PNG), a panel per order")
    g.add_argument("--model-pcp", default="guest", choices=("guest", "high", "default"),
                   help="the model's per-cpu lists' high mark: the guest kernel's (measured "
                   "in the guest; 6.1 derives it from the low watermark) less what its lists "
                   "held that the workload could not use (guest: their lowest while the "
                   "workload faulted, some 6 MiB of other migratetypes' and orders' lists "
                   "under the same mark), the guest kernel's as is (high), or the model's "
                   "default 378 pages (default guest)")
    g.add_argument("--model-blocks", default="user", choices=("user", "buddy"),
                   help="random, phased: the model's blocks are user mappings, 2^n order-0 "
                   "pages as the guest program's mmap (user), or physical blocks of order n "
                   "from the buddy allocator, the model's own workload (buddy) (default user)")
    g.add_argument("--model-rate", default="timeline", choices=("timeline", "average", "full"),
                   help="--model-blocks user: the model's k-th page fault no sooner than the "
                   "guest's worker made its k-th (timeline: from the guest's samples, the grow's "
                   "pace and the churn's each as they were), at the guest's average rate over "
                   "the time its workers ran (average; under TCG some 30,000 a second), or as "
                   "fast as the model goes, 100 times that (full) (default timeline)")
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="PATH", default=None,
                   help="write the results file (versioned JSON) here; vm compare: the "
                   "comparison, with both systems' runs")
    g.add_argument("--force", action="store_true", help="overwrite an existing --json or --plot")
    g.add_argument("--quiet", action="store_true", help="no progress lines and no summary")
    p.set_defaults(func=cmd_vm)


#: vm's defaults of the workload flags left open (None) by the parser
VM_DEFAULTS = {"duration": 15.0, "hog_share": 0.9, "hog_hold": 1.0}
#: vm compare's: the issue's hog (half the guest, held 3 s), and a run long
#: enough for the passes after the free under TCG, where the guest writes
#: 1 GiB in 5-9 s and frees it in 0.6-1.5 s (docs/real-guest.md)
COMPARE_DEFAULTS = {"hog_share": 0.5, "hog_hold": 3.0}
COMPARE_DURATION = {"hog": 22.0}
COMPARE_DURATION_OTHERS = 20.0


def guest_config(args, order: int | None = None) -> GuestConfig:
    values = {f.name: getattr(args, f.name) for f in fields(GuestConfig) if hasattr(args, f.name)}
    if args.action == "compare":
        defaults = {**COMPARE_DEFAULTS, "duration": COMPARE_DURATION.get(
            args.workload, COMPARE_DURATION_OTHERS)}
    else:
        defaults = VM_DEFAULTS
    for key, value in defaults.items():
        if values[key] is None:
            values[key] = value
    values["report_order"] = (args.report_order or (9,))[0] if order is None else order
    return GuestConfig(**values)


def _check_outputs(args) -> None:
    for flag, path in (("--json", args.json), ("--plot", getattr(args, "plot", None))):
        if path:
            try:
                results.check_output(path, args.force)
            except results.ResultsError as e:
                raise VmUsageError(f"{flag}: {e}") from None
    if args.json and args.plot and args.json == args.plot:
        raise VmUsageError("--json and --plot name the same file")


def cmd_vm(args) -> int:
    if args.action == "compare":
        return cmd_compare(args)
    try:
        for flag in ("real", "plot"):     # and the --model-* flags are left unused
            if getattr(args, flag) is not None:
                raise VmUsageError(f"--{flag} belongs to vm compare (shmalloc vm compare ...)")
        if args.rounds != 1:
            raise VmUsageError("--rounds belongs to vm compare (shmalloc vm compare ...)")
        if args.report_order and len(args.report_order) > 1:
            raise VmUsageError("--report-order: one order; a list is for vm compare")
        _check_outputs(args)
        run = execute(guest_config(args), quiet=args.quiet)
    except VmUsageError as e:
        raise UsageError(f"shmalloc vm: {e}") from None
    if not args.quiet:
        print("\n".join(format_run(run)))
    if args.json:
        results.write(args.json, results.document([run], metadata.collect()), force=args.force)
    return 0


def cmd_compare(args) -> int:
    choices = compare.ModelChoices(pcp=args.model_pcp, blocks=args.model_blocks,
                                   rate=args.model_rate)
    try:
        _check_outputs(args)
        orders = list(args.report_order or (9,))
        real_runs = cfg = None
        if args.real:
            if args.rounds != 1:
                raise VmUsageError("--rounds: with --real the rounds are the file's (a run "
                                   "at each order per round)")
            real_runs = compare.load_real(args.real, args.report_order and orders)
            orders = [r["config"]["report_order"] for r in real_runs[0]]
        else:
            cfg = guest_config(args).resolved()
            compare.check(cfg, orders, choices)
        if args.plot:
            try:
                plots.pyplot()
            except plots.PlotError as e:
                raise VmUsageError(f"--plot: {e}") from None
        pairs = compare.execute(cfg, orders, choices, real_runs, quiet=args.quiet,
                                rounds=args.rounds)
    except VmUsageError as e:
        raise UsageError(f"shmalloc vm compare: {e}") from None
    if not args.quiet:
        print("\n".join(compare.format_lines(pairs)))
    if args.json:
        results.write(args.json, compare.document(pairs), force=args.force)
    if args.plot:
        compare.plot(pairs, args.plot)
    return 0
