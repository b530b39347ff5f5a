"""``shmalloc vm compare``: the same workload in a real guest and in the
model, side by side (issue 23).

For each report order asked for, the real guest runs first
(:func:`launcher.vm.run.execute`), then the model runs the same workload
with the configuration the real guest had (:func:`model_config`):

* the design is mainline, the guest kernel's (mm/page_reporting.c), with its
  constants: ``capacity`` 32 (PAGE_REPORTING_CAPACITY), ``delay`` 2 s
  (PAGE_REPORTING_DELAY), ``putback`` tail (6.1's
  ``__putback_isolated_page`` passes FPI_TO_TAIL), ``max_order`` 11;
* the report order the guest really used (``guest.report_order_effective``:
  /init writes it to sysfs after virtio_balloon loads);
* the start state: ``reported`` when the guest's reporter had gone idle
  after boot (``guest.start_state.idle``: every free block of the report
  order reported, no request pending, as ``page_reporting_register``'s
  initial flush leaves it), else ``unreported``;
* the host page the guest's memory had: ``2m`` when QEMU's guest RAM was
  mostly transparent huge pages at its largest (``anon_huge_share_at_max``
  at least one half), else ``4k``;
* the per-cpu lists' high mark the guest kernel computed
  (``guest.pcp_high_bytes``; 6.1's ``zone_highsize`` follows the low
  watermark, which khugepaged raises): ``--model-pcp guest`` (the default);
  ``--model-pcp default`` keeps the model's 378 pages.  It moves what stays
  below the report order after a free, so it is a flag;
* the workload with the same flags (``--workload``, ``--workers``,
  ``--duration``, ``--seed``, ``--working-set``, ``--hog-share``,
  ``--hog-hold``, guest memory); for ``random`` and ``phased`` the model's
  blocks are user mappings (``--blocks user``: a block of order n is 2^n
  order-0 pages, as the guest program's mmap), unless ``--model-blocks
  buddy`` asks for the model's own physical blocks.

The figures, the table, the JSON and the plot are
:mod:`launcher.comparison.realguest`'s.  ``--real FILE`` takes the real
guest's run from a results file instead of booting one (``shmalloc vm
--json``), so a recorded guest can be compared again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from shmalloc.config import PAGE_SIZE
from shmalloc.machine import ConfigError
from shmalloc.workload import PHASED_REGROW_AT, PHASED_SHRINK_AT

from ..comparison import realguest
from ..errors import RunAborted
from ..experiment import metadata
from ..experiment.config import RunConfig, default_host_pages
from ..experiment.run import execute as execute_model
from ..output import results
from .config import GUEST_KERNEL_CONSTANTS, GuestConfig
from .host import VmUsageError
from .run import execute as execute_guest

#: the workloads both the guest program and the model know, with the same meaning
WORKLOADS = ("hog", "page_fault1", "thp", "random", "phased")
#: where the model's blocks are user mappings under --model-blocks user
USER_BLOCK_WORKLOADS = ("random", "phased")


@dataclass(frozen=True)
class ModelChoices:
    """What the model takes from the real guest, and what the user chose."""

    pcp: str = "guest"            # guest: the guest's pcp high mark; default: the model's
    blocks: str = "user"          # random/phased: user mappings, or the model's buddy blocks
    rate: str = "guest"           # user blocks: the guest's page-fault rate, or the model's own


def host_pages_of(real: dict, report_order: int) -> str:
    """The real guest's host page, if the model can have it here (2m needs
    root, for its huge tmpfs: else 4k, which the heading then shows)."""
    if realguest.host_pages(real) == "2m":
        return default_host_pages(report_order)
    return "4k"


def start_of(real: dict) -> str:
    state = real.get("guest", {}).get("start_state", {})
    return "reported" if state.get("idle") else "unreported"


def guest_fault_rate(real: dict) -> float | None:
    """Page faults per second of one of the guest's workers while its
    workload ran (random: the whole run; phased: all but the idle from 40 %
    to 70 %): with THP never, each is one order-0 allocation."""
    faults = real.get("guest", {}).get("minor_faults")
    c = real["config"]
    if not faults or c["workload"] not in USER_BLOCK_WORKLOADS:
        return None
    active = c["duration"] * (1 - (PHASED_REGROW_AT - PHASED_SHRINK_AT)
                              if c["workload"] == "phased" else 1)
    return faults / c["workers"] / active


def model_config(real: dict, choices: ModelChoices = ModelChoices()) -> RunConfig:
    """The model's configuration for the workload ``real`` (a real guest's
    RUN record) ran: the guest's flags, its kernel's constants, and what it
    was measured to have (report order, start state, host page, pcp high)."""
    c = real["config"]
    order = real.get("guest", {}).get("report_order_effective")
    order = c["report_order"] if order is None else order
    values = dict(strategy="mainline", workload=c["workload"], workers=c["workers"],
                  duration=c["duration"], seed=c["seed"], working_set=c.get("working_set"),
                  hog_share=c["hog_share"], hog_hold=c["hog_hold"], memory=c["memory"],
                  report_order=order,
                  capacity=GUEST_KERNEL_CONSTANTS["capacity"],
                  delay=GUEST_KERNEL_CONSTANTS["delay"],
                  putback=GUEST_KERNEL_CONSTANTS["putback"],
                  max_order=GUEST_KERNEL_CONSTANTS["max_order"],
                  start=start_of(real), host_pages=host_pages_of(real, order))
    high = real.get("guest", {}).get("pcp_high_bytes")
    if choices.pcp == "guest" and high:
        values["pcp_high"] = max(1, high // PAGE_SIZE)
    if choices.blocks == "user" and c["workload"] in USER_BLOCK_WORKLOADS:
        values["blocks"] = "user"
        rate = guest_fault_rate(real)
        if choices.rate == "guest" and rate:
            values["page_rate"] = round(rate, 1)
    return RunConfig(**values).resolved()


def check(cfg: GuestConfig, orders: list[int], choices: ModelChoices) -> None:
    """Refuse, before a guest boots, what the model cannot run: the model's
    configuration as the guest is expected to give it (its start state, 2 MiB
    host pages)."""
    if cfg.workload not in WORKLOADS:
        raise VmUsageError(f"--workload {cfg.workload}: vm compare runs "
                           f"{', '.join(WORKLOADS)} (both systems know these)")
    for order in orders:
        real = {"config": {**cfg.resolved().record(), "report_order": order},
                "guest": {"start_state": {"idle": cfg.start == "idle"}},
                "memory": {"anon_huge_share_at_max": 1.0}}
        try:
            model_config(real, choices)
        except ConfigError as e:
            raise VmUsageError(f"the model cannot run this workload: {e}") from None


def describe(cfg: RunConfig) -> str:
    """How the model was set up, in one phrase."""
    out = (f"mainline, report order {cfg.report_order}, start {cfg.start}, host pages "
           f"{cfg.host_pages}, pcp high {cfg.pcp_high} pages")
    if cfg.blocks == "user":
        out += ", user mappings" + (f" at {cfg.page_rate:,.0f} faults/s" if cfg.page_rate else "")
    return out


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"shmalloc vm compare: {text}", file=sys.stderr, flush=True)


def run_model(real: dict, choices: ModelChoices, quiet: bool) -> dict:
    cfg = model_config(real, choices)
    _say(quiet, f"the model: {describe(cfg)}, {cfg.workload} for {cfg.duration:g} s")
    run = execute_model(cfg, label=" model")
    status = run.pop("exit_status")
    interrupted = run.pop("interrupted", None)
    run.pop("numba_cache_warm", None)
    if interrupted is not None:
        raise RunAborted(f"the model's run: {interrupted}", status)
    if run["outcome"] != "ok":
        raise RunAborted(f"the model's run: {run['abort_reason']}", status)
    run["label"] = "model"
    return run


def execute(cfg: GuestConfig, orders: list[int], choices: ModelChoices,
            real_runs: list[dict] | None = None, quiet: bool = False) -> list[dict]:
    """For each report order: the real guest's run (or the recorded one of
    ``real_runs``), then the model's.  Returns ``[{"order", "real",
    "model"}]``."""
    out = []
    for i, order in enumerate(orders):
        if real_runs is not None:
            real = real_runs[i]
        else:
            real = execute_guest(replace(cfg, report_order=order), quiet=quiet)
        model = run_model(real, choices, quiet)
        out.append({"order": real["config"]["report_order"], "real": real, "model": model})
    return out


def load_real(path: str, orders: list[int] | None) -> list[dict]:
    """The real guests' runs of a results file, one per report order (in
    ``orders``' order if given)."""
    try:
        doc = results.load(path)
    except results.ResultsError as e:
        raise VmUsageError(f"--real: {e}") from None
    runs = [r for r in doc["runs"] if r.get("system") == "qemu"]
    if not runs:
        raise VmUsageError(f"--real {path}: no real guest's run in it (shmalloc vm --json)")
    by_order = {r["config"]["report_order"]: r for r in runs}
    if orders is None:
        return [by_order[o] for o in sorted(by_order)]
    missing = [o for o in orders if o not in by_order]
    if missing:
        raise VmUsageError(f"--real {path}: no real guest's run at report order "
                           f"{', '.join(map(str, missing))}")
    return [by_order[o] for o in orders]


def _name(pair: dict) -> str:
    return f"{pair['real']['config']['workload']}, report order {pair['order']}"


def tables(pairs: list[dict]) -> tuple[dict, dict | None]:
    """The comparison documents: one per pair, and the order-9/10 ratios
    when both orders ran."""
    docs = {_name(p): realguest.compare(p["real"], p["model"]) for p in pairs}
    by_order = {p["order"]: p for p in pairs}
    ratio_doc = None
    if 9 in by_order and 10 in by_order:
        ratio_doc = realguest.ratios(by_order[9]["real"], by_order[10]["real"],
                                     by_order[9]["model"], by_order[10]["model"])
    return docs, ratio_doc


def format_lines(pairs: list[dict], docs: dict, ratio_doc: dict | None) -> list[str]:
    lines = []
    for p in pairs:
        name = _name(p)
        doc = docs[name]
        r = p["real"]
        model = RunConfig(**p["model"]["config"])
        lines += [f"{name}: real guest ({r['qemu']['accel'].upper() if 'qemu' in r else '?'}, "
                  f"start {r['config']['start']}) against the model ({describe(model)})"]
        lines += realguest.format_table(doc) + [""]
    if ratio_doc is not None:
        lines += realguest.format_table(ratio_doc, "order 9 against order 10") + [""]
    flagged = sum(len(d["flagged"]) for d in docs.values())
    if ratio_doc is not None:
        flagged += len(ratio_doc["flagged"])
    lines.append(f"{flagged} figure{'' if flagged == 1 else 's'} differ beyond the sampling "
                 "interval or 15 % (DIFFERS); docs/real-guest.md says why"
                 if flagged else "no figure differs beyond the sampling interval or 15 %")
    return lines


def document(pairs: list[dict], docs: dict, ratio_doc: dict | None) -> dict:
    """The ``--json`` file: the comparison and both systems' runs (a results
    document, which ``shmalloc report`` reads once saved on its own)."""
    doc = realguest.document(docs, ratio_doc)
    runs = [run for p in pairs for run in (p["real"], p["model"])]
    doc["results"] = results.document(runs, metadata.collect())
    return doc


def plot(pairs: list[dict], path: str) -> str:
    return realguest.plot([(_name(p), p["real"], p["model"]) for p in pairs], path)
