"""``shmalloc sweep``: a grid over run flags, each point an independent run
written to its own results file.

``--grid workers=1,2,4 --grid strategy=none,mainline`` (or a TOML file with
a ``[grid]`` table and an optional ``[base]`` table of flags) expands to the
cartesian product of the values, in the order given.  Each point runs as
``shmalloc run`` would with the sweep's other flags plus the point's values,
and is written to ``DIR/<key>-<value>_<key>-<value>.json``.  A point whose
file is already there (and loads) is skipped, so an interrupted sweep resumes
where it stopped.  ``--list`` prints one self-contained ``shmalloc run``
command per point instead, every flag spelled out, so any job runner (GNU
parallel, a Slurm array) can spread a sweep over many machines and the files
land where ``--merge`` expects them.  ``--merge`` gathers the files of DIR
into one CSV.
"""

from __future__ import annotations

import copy
import csv
import itertools
import os
import re
import shlex
import sys
import time
import tomllib
from dataclasses import dataclass, fields

from ..experiment import compile as kernels
from ..experiment import interrupt
from ..experiment.config import RunConfig
from ..experiment.run import execute
from ..output import results
from .compare import flat_metrics

CSV_NAME = "sweep.csv"


class SweepError(Exception):
    """Bad grid or folder: one line, exit 2."""


@dataclass
class Point:
    values: dict[str, str]        # grid key -> value as given
    config: RunConfig

    @property
    def slug(self) -> str:
        parts = [f"{k}-{v}" for k, v in self.values.items()]
        return re.sub(r"[^A-Za-z0-9._-]+", "+", "_".join(parts)) or "point"


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["workers=1,2", "strategy=none,mainline"]`` -> {key: [values]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise SweepError(f"--grid {item!r}: expected KEY=V1,V2,...")
        if key in grid:
            raise SweepError(f"--grid: {key} given twice")
        grid[key] = vals
    return grid


def load_grid_file(path: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """A TOML file: ``[grid]`` key = [values], optional ``[base]`` key = value."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise SweepError(f"{path}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SweepError(f"{path}: not a TOML grid file: {e}") from None
    if not isinstance(doc.get("grid"), dict) or not doc["grid"]:
        raise SweepError(f"{path}: no [grid] table")
    grid = {}
    for key, values in doc["grid"].items():
        values = values if isinstance(values, list) else [values]
        grid[key.replace("-", "_")] = [str(v).lower() if isinstance(v, bool) else str(v)
                                       for v in values]
    base = {k.replace("-", "_"): str(v) for k, v in doc.get("base", {}).items()}
    return grid, base


def build_points(grid: dict[str, list[str]], base_args, run_parser, make_config) -> list[Point]:
    """Every grid point as a validated RunConfig.  Values go through the
    same flag parser as ``shmalloc run``'s, so a bad value fails here, before
    anything runs."""
    known = {f.name for f in fields(RunConfig)}
    for key in grid:
        if key not in known or key == "lock_stats":
            raise SweepError(f"--grid: {key!r} is not a run flag (one of "
                             f"{', '.join(sorted(known - {'lock_stats'}))})")
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        argv = []
        for key, value in values.items():
            argv += [f"--{key.replace('_', '-')}", value]
        ns = run_parser.parse_args(argv, namespace=copy.copy(base_args))
        points.append(Point(values, make_config(ns)))
    slugs = [p.slug for p in points]
    if len(set(slugs)) != len(slugs):
        raise SweepError("--grid: two points map to the same file name")
    return points


def path_of(out_dir: str, point: Point) -> str:
    return os.path.join(out_dir, point.slug + ".json")


def done(out_dir: str, point: Point) -> bool:
    try:
        results.load(path_of(out_dir, point))
        return True
    except results.ResultsError:
        return False


def list_commands(points: list[Point], out_dir: str, config_argv) -> list[str]:
    return [shlex.join(["shmalloc", "run", *config_argv(p.config), "--json",
                        path_of(out_dir, p), "--quiet"]) for p in points]


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_points(points: list[Point], out_dir: str, metadata, progress: bool = False,
               command: str = "shmalloc sweep") -> dict:
    """Run the points not done yet; returns counts (ran, skipped, aborted).
    Kernels not compiled yet are compiled first, saying so on stderr
    prefixed with ``command`` (``shmalloc sweep`` has done it already)."""
    todo = [p for p in points if not done(out_dir, p)]
    counts = {"ran": 0, "skipped": len(points) - len(todo), "aborted": 0}
    kernels.prepare(kernels.groups_for([p.config for p in todo]), command=command,
                    stream=sys.stderr)
    t_start = time.monotonic()
    for i, point in enumerate(todo):
        if i:
            interrupt.enter(f"between sweep points ({i} of {len(todo)} done; a rerun "
                            "resumes)")
            interrupt.checkpoint("between-points")
        if progress:
            elapsed = time.monotonic() - t_start
            per = elapsed / i if i else (point.config.duration or 5) + 2
            sys.stderr.write(f"\r[{i + 1}/{len(todo)}] {100 * i // len(todo):3d}%  ETA "
                             f"{_eta(per * (len(todo) - i))}  {point.slug[:60]:<60}")
            sys.stderr.flush()
            interrupt.partial_line(True)
        run = execute(point.config)
        run.pop("exit_status")
        if "interrupted" in run:             # not done: a rerun runs this point again
            raise run["interrupted"]
        warm = run.pop("numba_cache_warm")
        run["point"] = point.values
        with interrupt.deferred():          # a point is written whole, or not at all
            results.write(path_of(out_dir, point), results.document([run], metadata(warm)),
                          force=True)
        counts["ran"] += 1
        counts["aborted"] += run["outcome"] != "ok"
    if progress and todo:
        sys.stderr.write("\r" + " " * 100 + "\r")
        interrupt.partial_line(False)
    return counts


def merge(out_dir: str, csv_path: str | None = None) -> tuple[str, int]:
    """All results files of ``out_dir`` as one CSV; returns (path, rows)."""

    files = sorted(f for f in os.listdir(out_dir) if f.endswith(".json"))
    rows, keys = [], []
    for name in files:
        doc = results.load(os.path.join(out_dir, name))
        for run in doc["runs"]:
            row = {"file": name}
            for k, v in run.get("point", {}).items():
                row[f"point.{k}"] = v
            row.update({f"config.{k}": v for k, v in run["config"].items()})
            row.update(flat_metrics(run))
            rows.append(row)
            keys += [k for k in row if k not in keys]
    if not rows:
        raise SweepError(f"{out_dir}: no results files to merge")
    path = csv_path or os.path.join(out_dir, CSV_NAME)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path, len(rows)
