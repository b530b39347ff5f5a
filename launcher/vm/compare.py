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
  watermark, which khugepaged raises), less what the guest's lists held
  that the workload's pages could not use (:func:`guest_pcp_floor`: 6.1
  keeps a list per migratetype and order under one count and one high
  mark, and the boot leaves some 6 MiB on the others, so the workload's
  movable order-0 list fills at the mark less those): ``--model-pcp guest``
  (the default); ``--model-pcp high`` the mark as is; ``--model-pcp
  default`` the model's 378 pages.  It moves what stays below the report
  order after a free, so it is a flag;
* the workload with the same flags (``--workload``, ``--workers``,
  ``--duration``, ``--seed``, ``--working-set``, ``--hog-share``,
  ``--hog-hold``, guest memory); for ``random`` and ``phased`` the model's
  blocks are user mappings (``--blocks user``: a block of order n is 2^n
  order-0 pages, as the guest program's mmap), unless ``--model-blocks
  buddy`` asks for the model's own physical blocks;
* the pace of those page faults: the model's k-th no sooner than the
  guest's workers made their k-th (``--model-rate timeline``, the default:
  :func:`guest_fault_schedule`, from the guest program's samples of its
  workers' minflt).  Under TCG the guest's pace changes from phase to
  phase and from run to run (grow 22-47 thousand faults a second, churn,
  which also unmaps, 18-41 thousand, in docs/real-guest.md's 36 runs), and
  the churn made before the free decides how fragmented the freed memory
  is, so one average rate (``--model-rate average``, what a file from
  before the samples gets) moves the refaults under churn; it is a flag.

The figures, the table, the JSON and the plot are
:mod:`launcher.comparison.realguest`'s.  ``--real FILE`` takes the real
guest's run from a results file instead of booting one (``shmalloc vm
--json``, or an earlier ``vm compare --json``), so a recorded guest can be
compared again.

``--rounds N`` repeats the whole, interleaved (round 1: order 9's guest and
model, order 10's guest and model; round 2 ..., round r with ``--seed`` + r
- 1 on both sides), and the table gives each
figure's median and range over the rounds on either side
(:func:`realguest.across_rounds`).  Under churn a single guest run is not a
measurement: the same workload, seed and kernel faulted back 14 MiB in one
run and 104 MiB in the next (docs/real-guest.md, "Churn over rounds").
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

    pcp: str = "guest"            # guest: the guest's pcp high mark less its other lists;
                                  # high: the mark as is; default: the model's
    blocks: str = "user"          # random/phased: user mappings, or the model's buddy blocks
    rate: str = "timeline"        # user blocks: the guest's page faults as they came (timeline),
                                  # at their average rate (average), or the model's own (full)


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


def guest_pcp_floor(real: dict) -> int:
    """Bytes the guest's per-cpu lists held that the workload's pages could
    not use: their lowest count from the workload's start to its free
    (``memory.timeline.pcp_bytes``; the whole run when nothing was freed).
    The workload's faults empty its own list, movable order 0, again and
    again (each refill takes a batch, 63 pages), so what stays is on the
    other lists, which count against the same high mark in 6.1
    (``free_unref_page_commit`` compares ``pcp->count``, all lists, with
    ``high``; ``free_pcppages_bulk`` drains the list of the page freed
    first).  0 when the guest did not sample them."""
    tl = real.get("memory", {}).get("timeline", {})
    until = real.get("memory", {}).get("freeing_at_s")
    until = float("inf") if until is None else until
    held = [b for t, b in zip(tl.get("t_s", []), tl.get("pcp_bytes", []))
            if b is not None and 0 <= t <= until]
    return min(held, default=0)


def guest_fault_schedule(real: dict) -> tuple:
    """The page faults one of the guest's workers had made by each of its
    samples (``guest.worker_faults``: the sum over the workers of
    /proc/PID/stat's minflt, read by the guest program every sample), from
    the workload's start: ((seconds, faults), ...), starting at (0, 0),
    rising; () when the guest did not record them (a file from before)."""
    wf = real.get("guest", {}).get("worker_faults")
    if not wf or not wf.get("t_s"):
        return ()
    workers = max(1, real["config"]["workers"])
    pts = [(t, k) for t, k in zip(wf["t_s"], wf["faults"]) if t > 0]
    before = [k for t, k in zip(wf["t_s"], wf["faults"]) if t <= 0]
    base = before[-1] if before else 0       # the workers' own faults before the start
    out, top = [(0.0, 0)], 0
    for t, k in pts:
        top = max(top, (k - base) // workers)
        out.append((round(t, 4), top))
    return tuple(out)


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
    if choices.pcp in ("guest", "high") and high:
        usable = high - (guest_pcp_floor(real) if choices.pcp == "guest" else 0)
        values["pcp_high"] = max(RunConfig.pcp_batch, usable // PAGE_SIZE)
    if choices.blocks == "user" and c["workload"] in USER_BLOCK_WORKLOADS:
        values["blocks"] = "user"
        rate, schedule = guest_fault_rate(real), guest_fault_schedule(real)
        if choices.rate == "timeline" and schedule:
            values["page_schedule"] = schedule
        elif choices.rate in ("timeline", "average") and rate:
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


def _span(values: list, fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if lo == hi else f"{format(lo, fmt)}-{format(hi, fmt)}"


def describe(cfg: RunConfig, rounds: list[RunConfig] | None = None) -> str:
    """How the model was set up, in one phrase; with ``rounds`` (each
    round's configuration) the figures taken from each round's guest, the
    pcp high mark and the fault rate, as their range."""
    each = rounds or [cfg]
    out = (f"mainline, report order {cfg.report_order}, start {cfg.start}, host pages "
           f"{cfg.host_pages}, pcp high {_span([c.pcp_high for c in each], 'd')} pages")
    if cfg.blocks == "user":
        rates = [c.page_rate for c in each]
        out += ", user mappings" + (f" at {_span(rates, ',.0f')} faults/s" if max(rates) else
                                    " faulted as the guest's were" if cfg.page_schedule else "")
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
            real_runs: list[list[dict]] | None = None, quiet: bool = False,
            rounds: int = 1) -> list[dict]:
    """For each round, and in it each report order: the real guest's run (or
    the recorded one of ``real_runs[round][i]``), then the model's, so that
    the two systems and the orders interleave and a slow spell of the
    machine falls on all of them.  Round k (from 0) runs ``--seed`` + k in
    both (the model takes the guest's): under churn which blocks the
    workload draws moves the refaults as much as the machine's timing does,
    and rounds of one seed would sample only the timing.  Returns
    ``[{"round", "order", "real", "model"}]``."""
    out = []
    n = rounds if real_runs is None else len(real_runs)
    for k in range(n):
        for i, order in enumerate(orders):
            if n > 1:
                _say(quiet, f"round {k + 1} of {n}, report order {order}")
            if real_runs is not None:
                real = real_runs[k][i]
            else:
                real = execute_guest(replace(cfg, report_order=order, seed=cfg.seed + k),
                                     quiet=quiet)
            model = run_model(real, choices, quiet)
            out.append({"round": k + 1, "order": real["config"]["report_order"], "real": real,
                        "model": model})
    return out


def load_real(path: str, orders: list[int] | None) -> list[list[dict]]:
    """The real guests' runs of a results file (``shmalloc vm --json``) or of
    a comparison (``vm compare --json``), as rounds: ``[round][i]`` is the
    k-th run at report order ``orders[i]`` (default: every order the file
    has, ascending).  Each order needs as many runs as the others."""
    try:
        doc = results.load(path, inner="results")
    except results.ResultsError as e:
        raise VmUsageError(f"--real: {e}") from None
    runs = [r for r in doc["runs"] if r.get("system") == "qemu"]
    if not runs:
        raise VmUsageError(f"--real {path}: no real guest's run in it (shmalloc vm --json)")
    by_order: dict[int, list[dict]] = {}
    for r in runs:
        by_order.setdefault(r["config"]["report_order"], []).append(r)
    if orders is None:
        orders = sorted(by_order)
    missing = [o for o in orders if o not in by_order]
    if missing:
        raise VmUsageError(f"--real {path}: no real guest's run at report order "
                           f"{', '.join(map(str, missing))}")
    counts = {o: len(by_order[o]) for o in orders}
    if len(set(counts.values())) > 1:
        raise VmUsageError(f"--real {path}: a round needs one run at each order, and it has "
                           + ", ".join(f"{c} at order {o}" for o, c in counts.items()))
    return [[by_order[o][k] for o in orders] for k in range(counts[orders[0]])]


def _name(pair: dict) -> str:
    return f"{pair['real']['config']['workload']}, report order {pair['order']}"


def rounds_of(pairs: list[dict]) -> list[list[dict]]:
    """``pairs`` grouped by round, in order."""
    out: dict[int, list[dict]] = {}
    for p in pairs:
        out.setdefault(p.get("round", 1), []).append(p)
    return [out[k] for k in sorted(out)]


def tables(pairs: list[dict]) -> tuple[dict, dict | None]:
    """The comparison documents of one round: one per pair, and the
    order-9/10 ratios when both orders ran."""
    docs = {_name(p): realguest.compare(p["real"], p["model"]) for p in pairs}
    by_order = {p["order"]: p for p in pairs}
    ratio_doc = None
    if 9 in by_order and 10 in by_order:
        ratio_doc = realguest.ratios(by_order[9]["real"], by_order[10]["real"],
                                     by_order[9]["model"], by_order[10]["model"])
    return docs, ratio_doc


def rounds_tables(pairs: list[dict]) -> tuple[list, dict, dict | None]:
    """Each round's :func:`tables`, and over the rounds one
    :func:`realguest.across_rounds` document per order and one for the
    order-9/10 ratios."""
    per_round = [tables(r) for r in rounds_of(pairs)]
    names = list(per_round[0][0])
    across = {name: realguest.across_rounds([docs[name] for docs, _ in per_round])
              for name in names}
    ratio_across = None
    if per_round[0][1] is not None:
        ratio_across = realguest.across_rounds([ratio for _, ratio in per_round])
    return per_round, across, ratio_across


def _heading(pairs_of_order: list[dict]) -> str:
    """Who ran, for one order: the real guest (accelerator, start state)
    and the model's set-up, what it took from each round's guest as a
    range over the rounds."""
    first = pairs_of_order[0]
    r = first["real"]
    rounds = [RunConfig(**p["model"]["config"]) for p in pairs_of_order]
    text = describe(rounds[0], rounds)
    n = len(pairs_of_order)
    return (f"{_name(first)}{f', {n} rounds' if n > 1 else ''}: real guest "
            f"({r['qemu']['accel'].upper() if 'qemu' in r else '?'}, start "
            f"{r['config']['start']}) against the model ({text})")


def _flag_line(flagged: int, rounds: int) -> str:
    if not flagged:
        return ("no figure differs beyond the sampling interval or 15 %" if rounds == 1 else
                "no model median lies outside the real guest's range over the rounds, widened "
                "by the sampling interval or 15 %")
    s = "" if flagged == 1 else "s"
    if rounds == 1:
        return (f"{flagged} figure{s} differ beyond the sampling interval or 15 % (DIFFERS); "
                "docs/real-guest.md says why")
    return (f"{flagged} figure{s}: the model's median outside the real guest's range over "
            f"{rounds} rounds, widened by the sampling interval or 15 % (DIFFERS); "
            "docs/real-guest.md says why")


def format_lines(pairs: list[dict]) -> list[str]:
    """The tables as printed: with one round, each order's figures (real,
    model, difference); with more, each figure's median and range over the
    rounds on either side."""
    by_round = rounds_of(pairs)
    lines = []
    if len(by_round) == 1:
        docs, ratio_doc = tables(pairs)
        for p in pairs:
            lines += [_heading([p])] + realguest.format_table(docs[_name(p)]) + [""]
        if ratio_doc is not None:
            lines += realguest.format_table(ratio_doc, "order 9 against order 10") + [""]
        flagged = sum(len(d["flagged"]) for d in docs.values())
    else:
        _, across, ratio_doc = rounds_tables(pairs)
        for i, name in enumerate(across):
            lines += ([_heading([r[i] for r in by_round])]
                      + realguest.format_rounds_table(across[name]) + [""])
        if ratio_doc is not None:
            lines += realguest.format_rounds_table(
                ratio_doc, f"order 9 against order 10, {len(by_round)} rounds") + [""]
        flagged = sum(len(d["flagged"]) for d in across.values())
    if ratio_doc is not None:
        flagged += len(ratio_doc["flagged"])
    lines.append(_flag_line(flagged, len(by_round)))
    return lines


def document(pairs: list[dict]) -> dict:
    """The ``--json`` file: the comparison and both systems' runs (a results
    document, which ``shmalloc report`` reads once saved on its own, and
    ``vm compare --real`` reads as it is).  With more than one round,
    ``pairs`` and ``ratios`` are over the rounds
    (:func:`realguest.across_rounds`) and ``per_round`` holds each round's
    own."""
    by_round = rounds_of(pairs)
    if len(by_round) == 1:
        doc = realguest.document(*tables(pairs))
    else:
        per_round, across, ratio_across = rounds_tables(pairs)
        doc = realguest.document(across, ratio_across)
        doc["rounds"] = len(by_round)
        doc["per_round"] = [realguest.document(docs, ratio) for docs, ratio in per_round]
        for d in doc["per_round"]:
            del d["format"], d["version"]
    runs = [run for p in pairs for run in (p["real"], p["model"])]
    doc["results"] = results.document(runs, metadata.collect())
    return doc


def plot(pairs: list[dict], path: str) -> str:
    """Both timelines, a panel per order, every round's run drawn."""
    by_round = rounds_of(pairs)
    return realguest.plot([(_name(p), [r[i]["real"] for r in by_round],
                            [r[i]["model"] for r in by_round])
                           for i, p in enumerate(by_round[0])], path)
