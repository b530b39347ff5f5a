"""``shmalloc compare`` in rounds, end to end: labels, the rounds' seeded
orders, the results file's contract (format version 3, ``comparison``,
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
            "lock_wait_ratio", "lock_wait_ci95", "passes"}
COST_KEYS = {"lock_wait_behind_reporter_ns", "refault_ns", "hook_ns", "design_cpu_ns",
             "total_pct_of_worker_time", "refault_ns_each", "refault_source",
             "refaults_timed"}


@pytest.mark.timeout(600)
def test_aa_rounds_labels_order_and_results_file(tmp_path):
    out = tmp_path / "aa.json"
    # the first compare of a session may compile every kernel (minutes, cold cache)
    res = shmalloc("compare", "--strategies", "none,none", "--repeat", "6", "--seed", "5",
                   "--workload", "page_fault1", *SMALL, "--json", str(out), timeout=580)
    assert res.returncode == 0, res.stderr
    # stderr is not a terminal: one line per run as it ends, and nothing else
    assert re.fullmatch(r"(shmalloc compare: \[\d+/\d+\] round \d+ \S+ +ok\n)+", res.stderr), \
        res.stderr
    assert res.stderr.count("\n") == 12
    assert res.stdout.startswith("shmalloc compare: 1 variant against none; 64.00 MiB guest")
    assert "what it costs the allocator: 6 paired rounds of 0.3 s against none" in res.stdout
    # throughput only in the paired table: no medians side by side, no percentage
    assert "M pages/s" not in res.stdout and "vs none" not in res.stdout
    doc = results.load(str(out))
    assert doc["version"] == 3
    comp = doc["comparison"]
    assert set(comp) == {"baseline", "rounds", "order_seed", "confidence", "min_rounds", "rows"}
    assert comp["baseline"] == "none" and comp["rounds"] == 6 and comp["confidence"] == 0.95
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
    assert len(runs) == 12 and {r["part"] for r in runs} == {"cost"}
    # every round runs each label once, in the order the seed draws
    orders = round_orders(2, 6, order_seed=5)
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
    assert "paired against none: 6 rounds" in rep.stdout
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
    assert "what it gives back" in rep.stdout and "vs none" not in rep.stdout


@pytest.mark.timeout(600)
def test_one_round_says_there_is_no_interval(tmp_path):
    out = tmp_path / "one.json"
    res = shmalloc("compare", "--variant", "a=", "--variant", "b=--lock-spin 10",
                   "--workload", "random", *SMALL, "--json", str(out), timeout=580)
    assert res.returncode == 0, res.stderr
    assert "no interval: 1 complete round; an interval of a median at 95 % needs 6" in res.stdout
    assert "(median over rounds)" not in res.stdout          # one run each: no medians
    doc = results.load(str(out))
    row = doc["comparison"]["rows"][0]
    assert row["label"] == "b" and row["ci95"] is None
    assert row["verdict"] == "no interval (fewer than 6 rounds)"
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
                   "--repeat", "6", *SMALL, "--json", str(out), timeout=580)
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


@pytest.mark.timeout(600)
def test_the_main_job_costs_from_rounds_and_gives_back_from_its_own_runs(tmp_path, monkeypatch,
                                                                         capsys):
    """The main job in small (its parts shrunk, in this process): the paired
    rounds of one experiment, then one run per variant of another, each run
    marked with its part, the cost only from the rounds."""
    from launcher.cli import compare as cli_compare
    from launcher.cli.main import main
    monkeypatch.setattr(cli_compare, "COST", dict(workload="page_fault1", workers=1,
                                                  duration=0.2))
    monkeypatch.setattr(cli_compare, "COST_ROUNDS", 6)
    monkeypatch.setattr(cli_compare, "GIVE_BACK", dict(workload="hog", workers=1,
                                                       duration=0.6))
    out = tmp_path / "main.json"
    status = main(["compare", "--strategies", "none,boundary", "--memory", "64M",
                   "--hog-hold", "0.05", "--json", str(out), "--quiet"])
    assert status == 0
    doc = results.load(str(out))
    parts = [(r["part"], r["config"]["workload"]) for r in doc["runs"]]
    assert parts == [("cost", "page_fault1")] * 12 + [("give-back", "hog")] * 2
    assert doc["comparison"]["rounds"] == 6
    assert doc["analysis"]["parts"]["give-back"] == {"workload": "hog", "workers": 1,
                                                     "duration_s": 0.6}
    lines = "\n".join(cli_compare.format_main(doc["runs"], doc["comparison"], doc["analysis"],
                                             ["none", "boundary"], ["compare"])).splitlines()
    text = "\n".join(lines)
    assert lines[0].startswith("shmalloc compare: 1 variant against none; 64.00 MiB guest")
    assert lines[1] == "  what it costs:      6 paired rounds of 0.2 s, page_fault1, 1 worker"
    assert lines[2] == "  what it gives back: one 0.6 s run each, hog, 1 worker"
    assert "what it gives back, and at what risk: one 0.6 s run per variant, hog" in text
    assert capsys.readouterr().out == ""                      # --quiet


@pytest.mark.timeout(600)
def test_budget_plans_its_rounds_and_mmtests_prints_them(tmp_path):
    out = tmp_path / "b.json"
    res = shmalloc("compare", "--strategies", "none,none", "--budget", "8s", "--format",
                   "mmtests", "--workload", "page_fault1", "--workers", "1", "--duration",
                   "0.2", "--memory", "64M", "--json", str(out), timeout=580)
    assert res.returncode == 0, res.stderr
    doc = results.load(str(out))
    cost = doc["analysis"]["parts"]["cost"]
    # 8 s buys 8 rounds of two 0.2 s runs (0.45 s each, planned); the clock may cut, not add
    assert cost["budget_s"] == 8 and cost["rounds_planned"] == 8
    assert 1 <= cost["rounds_complete"] <= 8 and len(doc["runs"]) == 2 * cost["rounds_complete"]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("shmalloc compare: 1 variant against none;")
    header = lines[2].split()
    assert header == ["none", "none#2"]
    rows = [line.split()[:2] for line in lines[3:21]]
    assert rows == [[stat, fig] for fig in ("Mpages/s", "alloc-p99-ns", "lockwait-ms")
                    for stat in ("Min", "Amean", "Hmean", "Stddev", "CoeffVar", "Max")]
    # the baseline's own column: 0.00 % against itself (or '-' where it had nothing)
    assert all(line[21:44].endswith(("(   0.00%)", "(      - )")) for line in lines[3:21])
