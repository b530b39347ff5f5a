"""The registry of reporting designs ``--strategy`` can name.

A design is what the launcher needs to run it: the core's free-path hook id,
the processes it adds beside the workers, its defaults, the kernels its
processes call (compiled before forking), and under which configuration it is
unsafe by construction.  Tests are parametrized over :data:`DESIGNS`, so a
design registered here is checked by the same suite without new test code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shmalloc.config import BITMAP_MAX_PAGES
from shmalloc.layout import HOOK_BITMAP, HOOK_BOUNDARY, HOOK_HOSTSCAN, HOOK_MAINLINE, HOOK_NONE


@dataclass(frozen=True)
class Design:
    name: str
    summary: str
    hook: int = HOOK_NONE               # shmalloc.layout.HOOK_* run on the free path
    reporter: bool = False              # runs a reporter process (reporter.IMPLEMENTATIONS)
    hypervisor: bool = False            # runs the hypervisor stub
    host_scan: bool = False             # the stub scans the guest instead of taking reports
    defaults: dict = field(default_factory=dict)     # flag defaults of this design
    unsafe_when: dict = field(default_factory=dict)  # config under which it may lose data
    min_report_order: int = 0           # isolate works on whole pageblocks
    putback: str | None = None          # default --putback where the design takes it
    walks: bool = False                 # takes --walk-order and --callback-ns (callback)
    records_host: bool = False          # keeps a record of what the host has (Reported,
                                        # host-reclaimed marks): takes --start

    def unsafe(self, config) -> bool:
        return bool(self.unsafe_when) and all(getattr(config, k) == v
                                              for k, v in self.unsafe_when.items())


DESIGNS: dict[str, Design] = {d.name: d for d in (
    Design("none", "no reporting: the baseline"),
    Design("mainline", "Linux 5.7 mm/page_reporting.c: PageReported, list rotation, budget, "
           "2 s delay", hook=HOOK_MAINLINE, reporter=True, hypervisor=True,
           defaults={"delay": 2.0}, putback="head", records_host=True),
    Design("boundary", "Duyck v9: Reported run behind per-list boundary pointers, kept by "
           "the allocator; 0.1 s delay", hook=HOOK_BOUNDARY, reporter=True, hypervisor=True,
           defaults={"delay": 0.1}, records_host=True),
    Design("callback", "Wang v14: walk_free_mem_block under the zone lock, ranges sent after; "
           "hint or discard", reporter=True, hypervisor=True, defaults={"delay": 2.0},
           unsafe_when={"callback_mode": "discard"}, walks=True),
    Design("isolate", "Hocko: callback walk, then start/undo_isolate_page_range around the "
           "report", reporter=True, hypervisor=True, defaults={"delay": 2.0},
           min_report_order=9, putback="head"),
    Design("bitmap", "Nitesh v12: a bit per report-order block set on free, 16 bits wake the "
           "reporter, no Reported state", hook=HOOK_BITMAP, reporter=True, hypervisor=True,
           defaults={"delay": 0.0, "capacity": BITMAP_MAX_PAGES}),
    Design("hostscan", "after HyperAlloc (EuroSys'25): the host scans the free lists every 5 s, "
           "reclaims 2 MiB frames, the guest installs on allocation", hook=HOOK_HOSTSCAN,
           hypervisor=True, host_scan=True, records_host=True),
)}


#: what --putback means where it does not apply (docs/designs.md's table)
FIXED_PUTBACK = {"boundary": "it puts blocks back at the tail by construction (v9's Reported run)",
                 "bitmap": "it returns blocks through __free_one_page, as v12 did",
                 "hostscan": "the host puts reclaimed blocks back at the tail"}


#: --start: whether the free memory a run starts with is already reported
#: (shmalloc.machine._start_reported says what each design records of it)
START_STATES = ("unreported", "reported")


def names() -> list[str]:
    return list(DESIGNS)
