"""PNG figures of saved results (``shmalloc report --plot DIR``).

Four figures, each drawn from whatever runs it is given that have its data
(a real guest's run, ``shmalloc vm``, has only the memory timeline), one
line or bar group per design:

``throughput_vs_workers.png``  pages/s against worker count
``lock_wait_by_caller.png``    zone-lock wait split by caller (the 2019 question)
``memory_over_time.png``       host-resident memory over time, free memory beside it
``alloc_latency_cdf.png``      allocation latency CDF

matplotlib draws off-screen (Agg).  Axes carry units, every figure a legend
and a title naming the workload, guest memory and seed.  Runs of different
configurations are never averaged as repeats: throughput is one line per
design and configuration, against workers; a figure that draws one run per
design (when a design has several) says in its title which one.
"""

from __future__ import annotations

import os
from collections import defaultdict

from ..units import fmt_bytes
from .report import differing

FIGURES = ("throughput_vs_workers.png", "lock_wait_by_caller.png", "memory_over_time.png",
           "alloc_latency_cdf.png")
CALLERS = ("alloc", "free", "reporter", "host")


class PlotError(Exception):
    """matplotlib missing, or nothing to draw."""


def pyplot():
    """matplotlib's pyplot, drawing to files (the Agg backend)."""
    try:
        # imported here, not at the top: matplotlib is an optional dependency
        # (the plot extra), needed only to draw
        import matplotlib
    except ImportError:
        raise PlotError("matplotlib is not installed: pip install 'shmalloc[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # the optional dependency, after its backend is set
    return plt


def title_of(runs: list[dict]) -> str:
    def one(key, fmt=str):
        vals = sorted({r["config"][key] for r in runs})
        if len(vals) == 1:
            return fmt(vals[0])
        if all(isinstance(v, (int, float)) for v in vals):
            return f"{fmt(vals[0])}-{fmt(vals[-1])}"
        return "mixed"
    return (f"{one('workload')}, {one('memory', fmt_bytes)} guest, {one('workers')} workers, "
            f"seed {one('seed')}")


def _design(r) -> str:
    c = r["config"]
    if r.get("system") == "qemu":               # a real guest (shmalloc vm)
        return "real guest"
    return f"callback/{c['callback_mode']}" if c["strategy"] == "callback" else c["strategy"]


def _by_design(runs):
    groups = defaultdict(list)
    for r in runs:
        groups[_design(r)].append(r)
    return groups


def _series(runs):
    """Throughput lines: one per design and configuration other than the
    worker count (e.g. ``mainline capacity=64``); each point the mean of
    the runs of exactly that configuration."""
    groups = defaultdict(list)
    for design, group in _by_design(runs).items():
        keys = [k for k in differing(group) if k != "workers"]
        for r in group:
            label = " ".join([design] + [f"{k}={r['config'][k]}" for k in keys])
            groups[label].append(r)
    return groups


def _one_per_design(runs):
    """The run drawn for each design (its most workers, the first of
    equals), and a title note when that is a subset of the runs."""
    picked = {label: max(group, key=lambda r: r["config"]["workers"])
              for label, group in _by_design(runs).items()}
    if len(picked) == len(runs):
        return picked, ""
    return picked, ("\nshowing one run per design: the one with the most workers "
                    f"({', '.join(sorted({str(r['config']['workers']) for r in picked.values()}))})"
                    f", {len(picked)} of {len(runs)} runs")


def throughput_vs_workers(plt, runs, path):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, group in _series(runs).items():
        per_w = defaultdict(list)
        for r in group:
            per_w[r["config"]["workers"]].append(r["throughput"]["pages_per_sec"] / 1e6)
        xs = sorted(per_w)
        ax.plot(xs, [sum(per_w[x]) / len(per_w[x]) for x in xs], marker="o", label=label)
    ax.set_xticks(sorted({r["config"]["workers"] for r in runs}))
    ax.set_xlabel("worker processes")
    ax.set_ylabel("throughput (million pages/s)")
    ax.set_title(f"Throughput against workers\n{title_of(runs)}", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def lock_wait_by_caller(plt, runs, path):
    picked, note = _one_per_design(runs)
    labels = list(picked)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels) + 2), 4.5))
    width = 0.8 / len(CALLERS)
    for ci, caller in enumerate(CALLERS):
        values = []
        for label in labels:
            top = picked[label]
            values.append(sum(lk["by_caller"][caller]["waittime_total_us"]
                              for lk in top["locks"]) / 1000)
        ax.bar([i + ci * width for i in range(len(labels))], values, width, label=caller)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("zone-lock wait, total (ms)")
    ax.set_title(f"Zone-lock wait by caller\n{title_of(runs)}{note}", fontsize=9)
    ax.legend(title="caller", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def memory_over_time(plt, runs, path):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    picked, note = _one_per_design(runs)
    for label, r in picked.items():
        tl = r["memory"]["timeline"]
        line, = ax1.plot(tl["t_s"], _mib(tl["host_resident_bytes"]), label=label)
        ax2.plot(tl["t_s"], _mib(tl["free_bytes"]), label=label, color=line.get_color())
    ax1.set_ylabel("host-resident guest memory (MiB)")
    ax2.set_ylabel("free guest memory (MiB)")
    for ax in (ax1, ax2):
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    fig.suptitle(f"Host-resident memory over time, and the guest's free memory\n"
                 f"{title_of(runs)}{note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _mib(values) -> list[float]:
    """Bytes as MiB; a value not sampled yet (a real guest's, None) as a gap."""
    return [float("nan") if b is None else b / 2**20 for b in values]


def alloc_latency_cdf(plt, runs, path):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    picked, note = _one_per_design(runs)
    for label, r in picked.items():
        hist = r["latency_ns"]["alloc"].get("histogram", [])
        total = sum(c for _, c in hist)
        if not total:
            continue
        xs, ys, acc = [], [], 0
        for upper, count in hist:
            acc += count
            xs.append(max(upper, 1))
            ys.append(acc / total)
        ax.step(xs, ys, where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("alloc_pages() latency (ns, log scale)")
    ax.set_ylabel("fraction of allocations")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"Allocation latency CDF\n{title_of(runs)}{note}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _has(figure: str, run: dict) -> bool:
    """Whether ``run`` has what ``figure`` draws: a real guest's run (shmalloc
    vm) has a memory timeline and no throughput, locks or latency."""
    if figure == "memory_over_time.png":
        return bool(run.get("memory", {}).get("timeline"))
    return "throughput" in run


def draw_all(runs: list[dict], out_dir: str) -> list[str]:
    """Draw into ``out_dir`` (created if missing's parent exists) every
    figure that some of the runs have data for, from those runs."""
    if not runs:
        raise PlotError("no runs to plot")
    plt = pyplot()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, draw in zip(FIGURES, (throughput_vs_workers, lock_wait_by_caller,
                                    memory_over_time, alloc_latency_cdf)):
        drawn = [r for r in runs if _has(name, r)]
        if not drawn:
            continue
        path = os.path.join(out_dir, name)
        draw(plt, drawn, path)
        paths.append(path)
    return paths
