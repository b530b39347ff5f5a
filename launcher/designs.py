"""The registry of reporting designs ``--strategy`` can name.

A design is what the launcher needs to run it: the core's free-path hook id,
the processes it adds beside the workers, its defaults, and whether it is
safe by construction.  Tests are parametrized over :data:`DESIGNS`, so a
design registered here is checked by the same suite without new test code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shmalloc.layout import HOOK_MAINLINE


@dataclass(frozen=True)
class Design:
    name: str
    summary: str
    hook: int = 0                       # shmalloc.layout.HOOK_* run on the free path
    reporter: bool = False              # runs a reporter process
    hypervisor: bool = False            # runs the hypervisor stub
    defaults: dict = field(default_factory=dict)   # flag defaults of this design
    unsafe_when: dict = field(default_factory=dict)  # config under which it may lose data


DESIGNS: dict[str, Design] = {
    "none": Design("none", "no reporting: the baseline"),
    "mainline": Design("mainline", "Linux 5.7 mm/page_reporting.c: Reported flag, budget, "
                       "2 s delay", hook=HOOK_MAINLINE, reporter=True, hypervisor=True,
                       defaults={"delay": 2.0}),
}


def names() -> list[str]:
    return list(DESIGNS)
