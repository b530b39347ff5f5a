"""What the launch scripts share: flags, running a set of points into a
folder of results files (resumable, as ``shmalloc sweep``), the CSV, plots
and a printed table.  Each script is a thin description of one experiment.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from launcher.comparison.compare import (
    DEFAULT_LINEUP,
    build_analysis,
    build_comparison,
    flat_metrics,
    prepare,
    run_rounds,
)
from launcher.comparison.sweep import Point, merge, path_of, run_points
from launcher.experiment import designs
from launcher.experiment.config import RunConfig
from launcher.experiment.metadata import collect as collect_metadata
from launcher.output import results
from launcher.output.plots import pyplot
from launcher.output.report import run_label
from launcher.units import duration_range, float_range, int_range, parse_size, size_range

__all__ = [
    "DEFAULT_LINEUP",
    "bar_chart",
    "compare_file",
    "designs",
    "duration_range",
    "flat_metrics",
    "float_range",
    "int_range",
    "lineup",
    "parse_size",
    "parser",
    "points",
    "run_all",
    "run_label",
    "size_range",
    "table",
]


def csv_list(conv):
    def parse(text: str) -> list:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("an empty list")
        return [conv(x) for x in items]
    parse.__name__ = "list"
    return parse


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    first, _, rest = doc.strip().partition("\n\n")
    p = argparse.ArgumentParser(prog=f"scripts/{name}", description=first,
                                epilog=rest or None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join("results", name), metavar="DIR",
                   help=f"folder for results files, CSV and PNGs (default results/{name}); "
                   "points already there are not run again")
    p.add_argument("--quick", action="store_true",
                   help="a small, fast version (for tests): a few short points on a small guest")
    p.add_argument("--seed", type=int_range(0, 2**31 - 1), default=1, help="workers' seed")
    return p


def lineup(text: str) -> list[tuple[str, dict]]:
    """'none,callback/discard' -> [(label, RunConfig overrides)]."""
    out = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        name, _, mode = item.partition("/")
        if name not in designs.DESIGNS:
            raise argparse.ArgumentTypeError(f"unknown design {name!r}")
        over = {"strategy": name}
        if mode:
            over["callback_mode"] = mode
        out.append((item, over))
    return out


def points(base: dict, grid: list[tuple[dict, dict]]) -> list[Point]:
    """``grid``: (values naming the point, RunConfig overrides) pairs."""
    out = []
    for values, over in grid:
        cfg = RunConfig(**{**base, **over}).resolved()
        out.append(Point({k: str(v) for k, v in values.items()}, cfg))
    return out


def run_all(pts: list[Point], out: str) -> list[dict]:
    """Run the points not yet in ``out``; returns every run, labelled."""
    os.makedirs(out, exist_ok=True)
    counts = run_points(pts, out, collect_metadata, progress=sys.stderr.isatty(),
                        command=f"scripts/{os.path.basename(sys.argv[0])}")
    runs = []
    for p in pts:
        run = results.load(path_of(out, p))["runs"][0]
        run["label"] = run_label(run)
        runs.append(run)
    merge(out)
    print(f"{len(pts)} points ({counts['ran']} run now, {counts['skipped']} already done, "
          f"{counts['aborted']} aborted); results, sweep.csv and figures in {out}")
    return runs


def compare_file(out: str, name: str, variants: list, rounds: int, order_seed: int) -> dict:
    """Run one compare into ``out/name.json``, or read it if it is there.
    The document's ``analysis["rounds_wall_s"]`` is the wall time of its
    rounds, fixed costs and the launcher's gaps included."""
    path = os.path.join(out, f"{name}.json")
    if os.path.exists(path):
        try:
            return results.load(path)
        except results.ResultsError:
            os.unlink(path)                          # killed while writing: run again
    script = f"scripts/{os.path.basename(sys.argv[0])}"
    warm, unit = prepare(variants, command=script, stream=sys.stderr)
    t0 = time.monotonic()
    runs = run_rounds(variants, rounds, order_seed, unit, progress=sys.stderr.isatty())
    wall = time.monotonic() - t0
    for run in runs:
        run.pop("exit_status")
        warm = run.pop("numba_cache_warm") and warm
    if runs[-1]["outcome"] != "ok":
        raise SystemExit(f"{script}: {name}: {runs[-1]['label']} aborted: "
                         f"{runs[-1]['abort_reason']}")
    analysis = build_analysis(runs, variants, unit)
    analysis["rounds_wall_s"] = round(wall, 3)
    doc = results.document(runs, collect_metadata(warm),
                           comparison=build_comparison(runs, variants, order_seed),
                           analysis=analysis)
    results.write(path, doc)
    return doc


def table(rows: list[list], header: list[str]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return [fmt.format(*header)] + [fmt.format(*map(str, r)) for r in rows]


def bar_chart(labels: list[str], values: list[float], ylabel: str, title: str, path: str,
              colors: list[str] | None = None) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(labels) + 2), 4))
    ax.bar(range(len(labels)), values, color=colors)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
