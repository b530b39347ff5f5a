"""``shmalloc compare`` in rounds, end to end: labels, the rounds' seeded
orders, the results file's contract (format version 2, ``comparison``,
``cost``, noise), ``report`` reading it back, and a signal far beyond any
noise (a 20 us hook on every free) found slower with an interval that
excludes 1 and attributed to the hook as N x frees.  Nothing here depends on
how fast this machine is."""

from __future__ import annotations

import re

import pytest
from cli import shmalloc

from launcher.comparison.compare import round_orders
from launcher.output import results

SMALL = ["--workers", "1", "--duration", "0.3", "--memory", "64M"]
ROW_KEYS = {"label", "strategy", "ratio", "ci95", "verdict", "p99_ratio", "p99_ci95",
            "lock_wait_ratio", "lock_wait_ci95"}
COST_KEYS = {"lock_wait_behind_reporter_ns", "refault_ns", "hook_ns", "design_cpu_ns",
             "total_pct_of_worker_time"}


@pytest.mark.timeout(600)
def test_aa_rounds_labels_order_and_results_file(tmp_path):
    out = tmp_path / "aa.json"
    # the first compare of a session may compile every kernel (minutes, cold cache)
    res = shmalloc("compare", "--strategies", "none,none", "--repeat", "3", "--seed", "5",
                   "--workload", "page_fault1", *SMALL, "--json", str(out), timeout=580)
    assert res.returncode == 0, res.stderr
    # stderr is not a terminal: one line per run as it ends, and nothing else
    assert re.fullmatch(r"(shmalloc compare: \[\d+/\d+\] round \d+ \S+ +ok\n)+", res.stderr), \
        res.stderr
    assert res.stderr.count("\n") == 6
    assert res.stdout.startswith("paired against none: median of 3 per-round ratios")
    # the plain table's ratio of medians says it has no interval
    assert "vs none: the ratio of the medians, without an interval" in res.stdout
    doc = results.load(str(out))
    assert doc["version"] == 2
    comp = doc["comparison"]
    assert set(comp) == {"baseline", "rounds", "order_seed", "rows"}
    assert comp["baseline"] == "none" and comp["rounds"] == 3
    assert comp["order_seed"] == 5                            # derived from --seed
    assert len(comp["rows"]) == 1 and set(comp["rows"][0]) == ROW_KEYS
    row = comp["rows"][0]
    assert row["label"] == "none#2" and row["strategy"] == "none"
    assert row["ci95"][0] <= row["ratio"] <= row["ci95"][1]
    # the cost table's measured slowdown is the paired table's ratio, as a slowdown
    cost = next(c for c in doc["analysis"]["costs"] if c["label"] == "none#2")
    assert cost["measured_slowdown_pct"] == pytest.approx(100 * (1 - row["ratio"]), abs=0.01)
    assert cost["measured_slowdown_ci95"] == pytest.approx(
        [100 * (1 - row["ci95"][1]), 100 * (1 - row["ci95"][0])], abs=0.01)
    runs = doc["runs"]
    assert len(runs) == 6
    # every round runs each label once, in the order the seed draws
    orders = round_orders(2, 3, order_seed=5)
    labels = ["none", "none#2"]
    for r, order in enumerate(orders, 1):
        in_round = sorted((x for x in runs if x["round"] == r), key=lambda x: x["position"])
        assert [x["label"] for x in in_round] == [labels[i] for i in order]
    assert doc["analysis"]["round_order"] == [[labels[i] for i in o] for o in orders]
    for run in runs:
        assert run["outcome"] == "ok"
        assert COST_KEYS <= set(run["cost"])
        assert run["cost"]["hook_ns"] == 0 and run["cost"]["refault_ns"] == 0
        assert run["throughput"]["steady"]["kind"] in ("steady", "whole run")
        assert run["noise"]["steal_pct"] is None or run["noise"]["steal_pct"] >= 0
        worker = next(p for p in run["noise"]["processes"] if p["role"] == "worker")
        assert worker["cpu_s"] > 0 and worker["involuntary_switches"] >= 0
        assert run["timing"]["fixed_s"] > 0
    rep = shmalloc("report", str(out))
    assert rep.returncode == 0, rep.stderr
    assert "paired against none: median of 3 per-round ratios" in rep.stdout
    # a version 1 file (no rounds, window, costs or comparison) still reads
    import json
    old = {"format": "shmalloc-results", "version": 1, "metadata": doc["metadata"],
           "runs": []}
    for run in runs[:2]:
        run = {k: v for k, v in run.items() if k not in (
            "round", "position", "cost", "attribution", "noise", "timing", "label")}
        run["throughput"] = {k: v for k, v in run["throughput"].items() if k != "steady"}
        old["runs"].append(run)
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps(old))
    rep = shmalloc("report", str(v1))
    assert rep.returncode == 0, rep.stderr
    assert "paired against" not in rep.stdout
    assert "what it costs the allocator" in rep.stdout and "vs none" in rep.stdout


@pytest.mark.timeout(600)
def test_one_round_says_there_is_no_interval(tmp_path):
    out = tmp_path / "one.json"
    res = shmalloc("compare", "--variant", "a=", "--variant", "b=--lock-spin 10",
                   "--workload", "random", *SMALL, "--json", str(out), timeout=580)
    assert res.returncode == 0, res.stderr
    assert "no interval: 1 complete round" in res.stdout
    assert "paired against" not in res.stdout
    assert "the ratio of the medians" not in res.stdout       # one run each: no medians
    doc = results.load(str(out))
    row = doc["comparison"]["rows"][0]
    assert row["label"] == "b" and row["ci95"] is None
    assert row["verdict"] == "no interval (one round)"
    assert [r["variant_flags"] for r in doc["runs"]] in (["", "--lock-spin 10"],
                                                        ["--lock-spin 10", ""])
    assert {r["config"]["lock_spin"] for r in doc["runs"]} == {10, 1000}


@pytest.mark.timeout(600)
def test_a_known_signal_is_found_and_attributed(tmp_path):
    """20 us on every free, pcp lists off, 1 worker on the random workload:
    about 50 times the cost of an operation, so slower in every round.  A
    4 MiB working set keeps the first-touch faults (the same in both) short
    on a loaded machine too."""
    out = tmp_path / "hook.json"
    n = 20000
    res = shmalloc("compare", "--variant", "base=", "--variant", f"hook=--free-hook-ns {n}",
                   "--workload", "random", "--pcp-batch", "0", "--working-set", "4M",
                   "--repeat", "3", *SMALL, "--json", str(out), timeout=580)
    assert res.returncode == 0, res.stderr
    doc = results.load(str(out))
    row = doc["comparison"]["rows"][0]
    assert row["label"] == "hook" and row["verdict"].startswith("slower by ")
    assert row["ci95"][1] < 1
    for run in doc["runs"]:
        whole = run["attribution"]["whole_run"]
        frees = sum(w["frees"] for w in run["workers"])
        if run["label"] == "base":
            assert whole["free_hook_calls"] == 0 and run["cost"]["hook_ns"] == 0
            continue
        # with the pcp lists off every free reaches the buddy lists: one spin each
        assert whole["free_hook_calls"] == frees > 0
        assert abs(whole["free_hook_ns"] - n * frees) <= 0.1 * n * frees
        assert run["cost"]["hook_ns"] > 0
        assert run["cost"]["total_pct_of_worker_time"] > 0


@pytest.mark.timeout(600)
def test_calibrate_quick(tmp_path):
    import os
    import subprocess
    import sys

    from cli import ROOT
    script = os.path.join(ROOT, "scripts", "calibrate")
    res = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "--quick" in res.stdout and "--hook-ns" in res.stdout
    out = tmp_path / "cal"
    res = subprocess.run([sys.executable, script, "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=580)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "false-positive rate" in res.stdout and "predicted" in res.stdout
    for png in ("aa_intervals.png", "known_signal.png", "attribution.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    doc = results.load(str(out / "known_signal.json"))
    assert [r["label"] for r in doc["comparison"]["rows"]] == ["hook100", "hook200", "hook400"]
