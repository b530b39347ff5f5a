"""``shmalloc vm``: boot a real guest kernel under QEMU and run a workload in
it (:mod:`launcher.vm`); its flags and its command.

Exit status: 0 ok, 2 bad input or a missing package (one line, nothing
started), 3 when the guest fails (did not come up within --boot-timeout,
QEMU exited, the workload program failed: the message ends with the
console's last lines), 128 + the signal when interrupted (QEMU is stopped
within a second).
"""

from __future__ import annotations

from dataclasses import fields

from .. import units as opt
from ..errors import UsageError
from ..experiment import metadata
from ..output import results
from ..vm.config import WORKLOADS, GuestConfig
from ..vm.host import INSTALL, VmUsageError
from ..vm.run import execute
from ..vm.summary import format_run


def add_guest_flags(p) -> None:
    """The flags of one real-guest run (``vm``, and later ``vm compare``)."""
    g = p.add_argument_group("workload (the model's names and meanings)")
    g.add_argument("--workload", default="hog", metavar="NAME",
                   help=f"what the guest's workers do: {', '.join(WORKLOADS)} (default hog)")
    g.add_argument("--workers", type=opt.int_range(1, 64), default=1, metavar="N",
                   help="worker processes in the guest (default 1)")
    g.add_argument("--duration", type=opt.duration_range(0, 3600, lo_open=True), default=15.0,
                   metavar="TIME", help="the workload's run time from its start (default 15 s)")
    g.add_argument("--seed", type=opt.int_range(0, 2**31 - 1), default=1, metavar="N",
                   help="seed of random and phased (default 1)")
    g.add_argument("--working-set", type=opt.size_range(4096), default=None, metavar="SIZE",
                   help="per worker: page_fault1/thp round, random's target (default "
                   "min(128M, 80%% of memory / workers))")
    g.add_argument("--hog-share", type=opt.float_range(0, 1, lo_open=True), default=0.9,
                   metavar="FRACTION", help="hog: share of guest memory written (default 0.9)")
    g.add_argument("--hog-hold", type=opt.duration_range(0, 3600), default=1.0, metavar="TIME",
                   help="hog: how long it is held before it is freed (default 1 s)")
    g.add_argument("--guest-thp", default="never", choices=("never", "always"),
                   help="never: the workload's memory faults in 4 KiB pages (MADV_NOHUGEPAGE), "
                   "as the model allocates order-0 pages; always: 2 MiB-aligned order >= 9 "
                   "regions with MADV_HUGEPAGE (default never)")
    g = p.add_argument_group("guest")
    g.add_argument("--memory", type=opt.size_range(1 << 20), default=1 << 30, metavar="SIZE",
                   help="guest memory, whole MiB (default 1G)")
    g.add_argument("--vcpus", type=opt.int_range(1, 16), default=1, metavar="N",
                   help="virtual cpus (default 1)")
    g.add_argument("--report-order", type=opt.int_range(0, 10), default=9, metavar="N",
                   help="page_reporting_order, 0..MAX_ORDER-1 (default 9, pageblock_order); "
                   "written to /sys/module/page_reporting/parameters after virtio_balloon "
                   "loads, as Linux 6.1 overwrites the boot parameter when it registers")
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
    p = sub.add_parser("vm", help="boot a real guest kernel under QEMU and run a workload in it",
                       description="Boot the installed distribution kernel under QEMU with "
                       "virtio-balloon free page reporting, run one of the model's workloads in "
                       "it, and record what the host sees (QEMU's resident memory and page "
                       "faults every 100 ms) and what the guest sees (free memory, Reported "
                       "pages, each reporting pass), as a run of the results file. Needs "
                       f"{INSTALL}. Exit 0 ok, 2 bad input or missing packages, 3 when the "
                       "guest fails.")
    add_guest_flags(p)
    g = p.add_argument_group("output")
    g.add_argument("--json", metavar="PATH", default=None,
                   help="write the results file (versioned JSON) here")
    g.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    g.add_argument("--quiet", action="store_true", help="no progress lines and no summary")
    p.set_defaults(func=cmd_vm)


def guest_config(args) -> GuestConfig:
    return GuestConfig(**{f.name: getattr(args, f.name) for f in fields(GuestConfig)
                          if hasattr(args, f.name)})


def cmd_vm(args) -> int:
    try:
        if args.json:
            try:
                results.check_output(args.json, args.force)
            except results.ResultsError as e:
                raise VmUsageError(f"--json: {e}") from None
        run = execute(guest_config(args), quiet=args.quiet)
    except VmUsageError as e:
        raise UsageError(f"shmalloc vm: {e}") from None
    if not args.quiet:
        print("\n".join(format_run(run)))
    if args.json:
        results.write(args.json, results.document([run], metadata.collect()), force=args.force)
    return 0
