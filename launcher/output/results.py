"""The results file: versioned JSON, written atomically, never overwritten
unless asked (pyperf's ``_bench.py`` is the model).

Format history:

* version 1 — ``{"format": "shmalloc-results", "version": 1, "metadata": {...},
  "runs": [RUN, ...]}``.  ``metadata`` holds what is common to every run (the
  machine, the versions, the command line); each RUN has ``config`` (every
  flag's value), ``outcome`` (``ok`` or ``aborted``, with ``abort_reason``),
  ``throughput``, ``latency_ns``, ``locks``, ``memory``, ``refaults``,
  ``safety`` and, with a reporting design, ``reporting``.

* version 2 — each RUN also has ``throughput.steady`` (the steady window:
  ``kind`` ``steady`` or ``whole run``, ``start_s``, ``elapsed_s``, ``pages``,
  ``ops``, ``pages_per_sec``, ``ops_per_sec``), ``attribution`` (the raw
  counts: zone-lock wait by waiter and holder class, ``--free-hook-ns``
  spins, design hook calls, worker time), ``noise`` (``steal_pct``; per
  process ``cpu_s``, context switches, migrations) and ``timing`` (where the
  wall time went, ``fixed_s`` beyond ``--duration``); ``config`` has
  ``free_hook_ns``.  Written by ``shmalloc compare``, each RUN has ``label``,
  ``round``, ``position`` (in its round) and ``cost`` (``lock_wait_behind_
  reporter_ns``, ``refault_ns``, ``hook_ns``, ``design_cpu_ns``,
  ``worker_ns``, ``total_pct_of_worker_time``), and the document has
  ``comparison`` (``baseline``, ``rounds``, ``order_seed``, ``rows``: per
  variant ``label``, ``strategy``, ``ratio``, ``ci95``, ``verdict``,
  ``p99_ratio``, ``p99_ci95``, ``lock_wait_ratio``, ``lock_wait_ci95``) and
  ``analysis`` (how the intervals were computed, each round's order, the
  cost table, unit costs, fixed cost, noise and warnings).

* version 3 — a RUN may have ``system``: absent (or ``model``) for a run of
  the model, ``qemu`` for a real guest (``shmalloc vm``, :mod:`launcher.vm`,
  whose ``record`` module documents that RUN: ``config`` with the guest's
  flags and its kernel's constants under the model's names, ``guest``
  (kernel, effective report order, start state, clock mapping), ``qemu``
  (versions, accelerator, argv), ``memory`` with the model's keys and its
  ``timeline``, ``reporting.passes``, ``figures``, ``host_faults``,
  ``guest_scans``, ``events``, ``safety``, ``timing``; no ``throughput``,
  ``latency_ns`` or ``locks``).  And compare's intervals are order-statistic intervals of the median
  (``analysis.ci``: ``method``, ``confidence``, ``min_rounds``; no
  resamples, no seed), and none below 6 rounds.  Each RUN of a compare has
  ``part``: ``cost`` for the paired rounds, ``give-back`` for the main job's
  one run per design (``analysis.parts`` says what each part ran, rounds
  planned and complete, and ``--budget``).  A RUN's ``attribution`` (and its
  ``whole_run``) has ``refault_sample`` (first writes timed by the workers:
  ``refaults``, ``resident``, ``dropped``, ``refault_ns``, ``resident_ns``),
  its ``cost`` ``refault_ns_each``, ``refault_source`` (``run`` or
  ``bench``) and ``refaults_timed``; ``memory`` has ``returned_share_end``;
  each worker has the sample counters.  ``comparison.rows`` have
  ``passes``; ``analysis.costs`` rows have ``unexplained``,
  ``refault_ns_each`` and ``refault_rounds_timed``; ``analysis`` has
  ``spreads``, ``round_s`` and ``sharper``.

:func:`load` reads versions 1 to 3 and rejects other formats and versions
with one clear message.  A version 1 RUN's ``config`` gets ``free_hook_ns``
0 (the flag came with version 2; nothing spun), so that runs of both
versions compare flag by flag (``shmalloc report`` groups runs by their
whole configuration).

Within version 2, ``config`` gained ``host_pages`` (4k or 2m) and
``start`` (unreported or reported, for the designs that record what the
host has; null for the others), each RUN ``first_touches`` (host pages
backed for the first time), ``memory.host_page_bytes``,
``memory.refaulted_bytes``, ``memory.host_huge_share_at_max`` and the
timeline's ``refaults``, ``first_touches`` (and with 2m
``host_huge_bytes``), and ``metadata`` ``huge_tmpfs_problem``; the
refault in ``analysis.unit_costs`` is keyed by host page size.  No version
bump: nothing a reader of version 2 reads changed, and :func:`load` gives a
run written before them what it ran with, 4 KiB host pages and (mainline,
boundary, hostscan) an unreported start.
"""

from __future__ import annotations

import json
import os
import tempfile

from ..experiment.designs import DESIGNS

FORMAT = "shmalloc-results"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)


class ResultsError(Exception):
    """A results file cannot be written or read; the message is one line."""


def document(runs: list[dict], metadata: dict, comparison: dict | None = None,
             analysis: dict | None = None) -> dict:
    version = VERSION
    doc = {"format": FORMAT, "version": version, "metadata": metadata, "runs": runs}
    if comparison is not None:
        doc["comparison"] = comparison
        doc["analysis"] = analysis
    return doc


def check_output(path: str, force: bool) -> None:
    """Refuse, before anything runs, an output we could not write."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ResultsError(f"{path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise ResultsError(f"{path} is a folder")
    if os.path.exists(path) and not force:
        raise ResultsError(f"{path} exists; use --force to overwrite it")
    if not os.access(folder, os.W_OK):
        raise ResultsError(f"{path}: folder {folder} is not writable")


def write(path: str, doc: dict, force: bool = False) -> None:
    """Write ``doc`` to ``path`` atomically: a temporary file in the same
    folder, fsync'd, then linked (no overwrite) or renamed (``force``)."""
    check_output(path, force)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".shmalloc-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)        # fails if path appeared meanwhile
            except FileExistsError:
                raise ResultsError(f"{path} exists; use --force to overwrite it") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: str, inner: str | None = None) -> dict:
    """Read a results file; one-line ResultsError for anything else.  With
    ``inner``, a file of another shmalloc format holding a results document
    under that key (``vm compare --json``'s ``results``) is read for it."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ResultsError(f"{path} is a folder") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON (truncated or damaged?): "
                           f"{e.msg} at line {e.lineno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot read: {e}") from None
    if inner and isinstance(doc, dict) and str(doc.get("format", "")).startswith("shmalloc-") \
            and isinstance(doc.get(inner), dict):
        doc = doc[inner]
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ResultsError(f"{path}: not a shmalloc results file")
    version = doc.get("version")
    if version not in READABLE_VERSIONS:
        raise ResultsError(f"{path}: results format version {version!r}; this shmalloc "
                           f"reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    if not isinstance(doc.get("runs"), list) or not isinstance(doc.get("metadata"), dict):
        raise ResultsError(f"{path}: damaged results file (no runs or metadata)")
    for run in doc["runs"]:
        if isinstance(run, dict) and isinstance(run.get("config"), dict) \
                and run.get("system", "model") == "model":
            config = run["config"]
            if version == 1:
                config.setdefault("free_hook_ns", 0)
            config.setdefault("host_pages", "4k")         # before --host-pages
            design = DESIGNS.get(config.get("strategy"))
            config.setdefault("start", "unreported" if design and design.records_host else None)
    return doc
