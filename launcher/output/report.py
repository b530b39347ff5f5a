"""``shmalloc report``: saved runs grouped by their whole configuration.

Runs are repeats of each other only when every flag is the same; a sweep's
results mix configurations (worker counts, capacities, ...), and pooling
them as repeats would print the median of a 1-worker and a 2-worker run
under a "1 worker" heading.  :func:`label_runs` names each run by the label
``shmalloc compare`` gave it (its design, ``none#2`` in an A/A check, a
``--variant``'s LABEL), else by its design, and, where runs under one name
differ, by the flags in which they differ (``mainline workers=2``), so the
side-by-side table has one row per configuration and per compare variant;
:func:`heading` says what the rows share and where they differ.
"""

from __future__ import annotations

import json

from ..units import fmt_bytes

#: flags that name the design (its label says them already)
DESIGN_KEYS = ("strategy", "callback_mode")
#: flags whose value follows from the design (its defaults, or set only for
#: the designs that take them): runs of different designs differ in them
#: without being different experiments
DESIGN_DEPENDENT = DESIGN_KEYS + ("delay", "capacity", "putback", "walk_order", "callback_ns",
                                  "free_page_vq", "start")
#: config keys a run is never named by (--inject's list; a real guest's
#: schedule of page faults, vm compare's, different in every round)
IGNORED = ("inject", "page_schedule")


def run_label(run: dict) -> str:
    """A run's name in tables and plots: its design, with callback's mode."""
    if run.get("label"):
        return run["label"]
    c = run["config"]
    return f"callback/{c['callback_mode']}" if c["strategy"] == "callback" else c["strategy"]


def config_key(run: dict) -> str:
    """The whole configuration of a run, as a comparable string."""
    return json.dumps(run["config"], sort_keys=True)


def differing(runs: list[dict], skip=DESIGN_KEYS) -> list[str]:
    """Config keys with more than one value among ``runs``."""
    keys = sorted({k for r in runs for k in r["config"]})
    return [k for k in keys if k not in skip and k not in IGNORED
            and len({json.dumps(r["config"].get(k)) for r in runs}) > 1]


def _value(v, key: str = "") -> str:
    if key in ("memory", "working_set") and isinstance(v, int):
        return fmt_bytes(v).replace(" ", "")
    return f"{v:g}" if isinstance(v, float) else str(v)


def label_runs(runs: list[dict]) -> None:
    """Set each run's ``label``: compare's label for it if it has one, else
    its design (:func:`run_label`); plus ``key=value`` for
    every flag in which runs under the same name differ."""
    by_name: dict[str, list[dict]] = {}
    for r in runs:
        by_name.setdefault(run_label(r), []).append(r)
    for name, group in by_name.items():
        keys = differing(group)
        for r in group:
            r["label"] = " ".join([name] + [f"{k}={_value(r['config'][k], k)}" for k in keys])


def heading(runs: list[dict]) -> str | None:
    """The first line of the side-by-side table of ``runs`` when they differ
    in more than their design (None: compare's own heading says it all)."""
    groups = {config_key(r) for r in runs}
    repeats = max(sum(config_key(r) == g for r in runs) for g in groups)
    keys = differing(runs, skip=DESIGN_DEPENDENT)
    first = runs[0]["config"]
    dur = f", {first['duration']:g} s each" if "duration" not in keys else ""
    med = f", median of {repeats} runs of each configuration" if repeats > 1 else ""
    if not keys:
        return None
    vary = "; ".join(f"{k} " + ", ".join(dict.fromkeys(_value(r["config"][k], k) for r in runs))
                     for k in keys)
    return (f"shmalloc report: {len(groups)} configurations differing in {vary} (see the "
            f"rows); all {_common(first, keys)}{dur}{med}")


def _common(c: dict, keys: list[str]) -> str:
    """describe() of what the configurations share."""
    parts = []
    if "workload" not in keys:
        parts.append(c["workload"])
    if "workers" not in keys:
        parts.append(f"{c['workers']} worker{'s' if c['workers'] != 1 else ''}")
    if "memory" not in keys:
        parts.append(f"{fmt_bytes(c['memory'])} guest")
    if "host_pages" not in keys:
        parts.append(f"host pages {c.get('host_pages') or '4k'}")
    if "zones" not in keys:
        parts.append(f"{c['zones']} zone{'s' if c['zones'] != 1 else ''}")
    if not {"pcp_batch", "pcp_high"} & set(keys):
        parts.append(f"pcp {c['pcp_batch']}/{c['pcp_high']}" if c["pcp_batch"] else "pcp off")
    if "seed" not in keys:
        parts.append(f"seed {c['seed']}")
    return ", ".join(parts)
