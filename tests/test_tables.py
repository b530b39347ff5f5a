"""The words of compare's and run's tables that carry a verdict, pinned on
records made by hand (no process): no throughput without its interval, no
design above the baseline unless its interval says so, the points the
counts leave unexplained, every figure explained where it stands."""

from __future__ import annotations

import records

from launcher.comparison import stats, tables
from launcher.output.summary import discard_time, half_back, structure

GIB = records.GIB


def joined(lines: list[str]) -> str:
    """The lines as one text, wrapped legends joined back into sentences."""
    return " ".join(line.strip() for line in lines)


def _row(label, ratio, ci, passes=0, strategy=None):
    return {"label": label, "strategy": strategy or label.split("/")[0], "ratio": ratio,
            "ci95": ci, "verdict": stats.verdict(ratio, *(ci or (None, None))),
            "p99_ratio": 1.0, "p99_ci95": [1.0, 1.0], "lock_wait_ratio": None,
            "lock_wait_ci95": None, "passes": passes}


def test_no_ratio_without_its_interval_and_no_design_above_the_baseline_without_one():
    comparison = {"baseline": "none", "rounds": 9, "order_seed": 1,
                  "rows": [_row("mainline", 1.03, [0.98, 1.07]),
                           _row("bitmap", 0.21, [0.19, 0.24], passes=11),
                           _row("hostscan", 1.06, [1.01, 1.09])]}
    lines = tables.format_comparison(comparison, "what it costs")
    text = joined(lines)
    mainline = next(x for x in lines if x.startswith("mainline "))
    # above 1, but its interval holds 1: the verdict says so, not "faster"
    assert "1.030 [0.980, 1.070]" in mainline and "indistinguishable" in mainline
    assert "slower by 79.0 % [76.0, 81.0]" in text
    assert "faster by 6.0 % [1.0, 9.0]" in text          # only because its interval excludes 1
    assert "0 passes (mainline, hostscan): the run ended before the design's first pass" in text
    # a ratio whose interval is missing (rounds without data) is not printed either
    lonely = {**comparison, "rows": [_row("isolate", 1.05, None)]}
    assert "1.050" not in joined(tables.format_comparison(lonely, "what it costs"))
    # fewer than 6 rounds: no ratio is printed at all
    few = tables.format_comparison({**comparison, "rounds": 5}, "what it costs")
    assert "1.030" not in joined(few) and "no interval: 5 complete rounds" in few[2]


def test_the_cost_table_says_how_many_points_are_unexplained():
    base = {"lock_wait_behind_reporter_pct": 0.0, "refault_pct": 0.0, "hook_pct": 0.0,
            "design_cpu_s": 0.0, "total_pct": 0.0, "total_pct_ci95": [0.0, 0.0]}
    costs = [{"label": "none", **base},
             {"label": "mainline", **base, "measured_slowdown_pct": 2.3,
              "measured_slowdown_ci95": [0.5, 4.4],
              "unexplained": {"points": 2.3, "at_least": 0.5}},
             {"label": "bitmap", **base, "refault_pct": 80.0, "total_pct": 80.0,
              "total_pct_ci95": [78.0, 82.0], "measured_slowdown_pct": 70.0,
              "measured_slowdown_ci95": [68.0, 72.0], "refault_ns_each": 3142.0,
              "unexplained": {"points": -10.0, "at_least": 6.0}},
             {"label": "boundary", **base, "measured_slowdown_pct": 1.0,
              "measured_slowdown_ci95": [-2.0, 4.0], "unexplained": None}]
    analysis = {"costs": costs, "unit_costs": {
        "refault": {"cost_ns_per_page": 2610.0},
        "free_path_hooks": {"mainline": 0.9, "boundary": 1.2, "bitmap": 2.1}}}
    lines = tables.format_costs(analysis)
    text = joined(lines)
    row = {x.split()[0]: x for x in lines[3:7]}
    assert row["mainline"].split()[-4:] == ["2.3", "(>=", "0.5)", "0.000"]
    assert "over by 10.0 (>= 6.0)" in row["bitmap"]
    assert row["boundary"].split()[-2] == "-"                 # the intervals agree
    assert "(baseline)" in row["none"]
    assert "a refault is charged what one cost in its own run" in text
    assert "median ns: bitmap 3,142" in text and "the 2,610 ns measured before round 1" in text
    assert "--free-hook-ns as spun" not in text and "a busy-wait on every free" in text


def test_what_it_gives_back_explains_every_figure():
    runs = [records.run("none"),
            records.run("callback/discard", memory={"reported_bytes": 3 * GIB,
                                                    "discarded_bytes": 3 * GIB,
                                                    "half_returned_s": 0.1},
                        safety={"use_after_discard": 3072},
                        reporting={"cycles": 2, "re_reports": 600},
                        locks=[records._lock(1000, 88)]),
            records.run("hostscan", memory={"discarded_bytes": GIB // 2,
                                            "returned_share_end": 0.43},
                        reporting={"scans": 1})]
    lines = tables.format_tables(runs, ["none", "callback/discard", "hostscan"], "gives back")
    text = joined(lines)
    assert "M pages/s" not in text and "vs none" not in text       # no throughput, no %
    assert "(cumulative)" in text and "a block reported again counts again" in text
    assert "can report more than the guest's 1.00 GiB" in text
    assert "backed or not (a range no worker wrote gives nothing back" in text
    hostscan = next(x for x in lines if x.startswith("hostscan ") and "never" in x)
    assert "never (43 % back by the end)" in hostscan
    unsafe = next(x for x in lines if x.rstrip().endswith("<-- UNSAFE"))
    assert unsafe.startswith("callback/discard") and " ok " not in f" {unsafe} "
    assert "consistent" in unsafe and "allocator structure" in text
    assert "consistent says nothing of what the host did to a page" in text
    assert "UNSAFE: callback/discard: 3072 pages discarded while a worker owned them" in text


def test_the_sharper_line_names_its_rounds_time_and_command():
    analysis = {"sharper": {"label": "boundary", "halfwidth": 0.071, "spread": 0.076,
                            "target": 0.02, "rounds": 120, "seconds": 588}}
    line = joined(tables.format_sharper(
        analysis, ["compare", "--strategies", "none,boundary", "--repeat", "12"], "none"))
    assert line == ("+-2 %: the widest throughput interval (boundary's, +-7.1 % of none's "
                    "throughput) would narrow to +-2 % in about 120 rounds, about 9 min 48 s of "
                    "rounds, at the spread these rounds showed (robust sd of the log ratios "
                    "0.076): shmalloc compare --strategies none,boundary --repeat 120")
    narrow = {"sharper": {**analysis["sharper"], "halfwidth": 0.015}}
    assert joined(tables.format_sharper(narrow, [], "none")) == (
        "+-2 %: every throughput interval is within it (the widest: boundary's, +-1.5 % of "
        "none's throughput).")


def test_the_widest_interval_is_measured_in_the_baselines_throughput():
    """bitmap's 0.010 [0.007, 0.014] is +-0.35 % of none's throughput, not
    the +-37 % its logs spread: the +-2 % line names the design whose verdict
    is least sure, and asks for the rounds that would sharpen it."""
    from launcher.comparison.compare import sharper
    widths = {"bitmap": (0.0035, 0.010), "mainline": (0.184, 0.956)}
    spreads = {"bitmap": 0.292, "mainline": 0.10}
    s = sharper(widths, spreads, round_s=4.0, confidence=stats.family_confidence(7))
    assert s["label"] == "mainline" and s["halfwidth"] == 0.184
    assert s["rounds"] == stats.rounds_for_halfwidth(0.10 * 0.956,
                                                     confidence=stats.family_confidence(7))
    assert s["seconds"] == round(4.0 * s["rounds"])


def test_runs_memory_words():
    assert half_back({"half_returned_s": 0.1, "freed_at_s": 2.0}) == "0.10 s"
    assert half_back({"half_returned_s": None, "freed_at_s": 2.0,
                      "returned_share_end": 0.55}) == "never (55 % back by the end)"
    assert half_back({"half_returned_s": None, "freed_at_s": None}) == "-"
    assert structure(0) == "consistent" and structure(3) == "3 violations"
    rep = {"hv_ranges": 510, "hv_errors": 0, "hv_pages_discarded": 261120, "hv_discard_s": 0.154}
    assert discard_time(rep) == ", 0.30 ms of the host's time per discard"
    assert discard_time({**rep, "hv_pages_discarded": 0}) == ""


def test_a_refault_costs_what_it_cost_in_its_own_run():
    from launcher.comparison.cost import refault_cost
    unit = {"refault": {"cost_ns_per_page": 2610.0}}
    timed = {"refault_sample": {"refaults": 600, "resident": 9000, "refault_ns": 3162.0,
                                "resident_ns": 19.7}}
    assert refault_cost(timed, unit) == (3142.3, "run", 600)
    few = {"refault_sample": {**timed["refault_sample"], "refaults": 31}}
    assert refault_cost(few, unit) == (2610.0, "bench", 31)
    assert refault_cost({}, unit) == (2610.0, "bench", 0)       # a record without samples


def test_the_headline_says_what_the_variants_ran_and_where_they_differ():
    from launcher.cli.compare import headline
    runs = [records.run("w1", "none", part="cost", config={"workers": 1, "duration": 1.0}),
            records.run("w2", "none", part="cost", config={"workers": 2, "duration": 1.0})]
    line = headline({"cost": {"rounds_complete": 12}}, ["w1", "w2"], runs)
    assert line == ("shmalloc compare: 1 variant against w1; 1.00 GiB guest, host pages 4k, "
                    "1 zone, pcp 63/378, seed 1; 12 paired rounds of 1 s, phased, "
                    "workers per variant (1, 2)")


def test_refaults_are_counted_in_the_runs_host_pages():
    from launcher.comparison import tables
    for host_pages, size in (("2m", "2 MiB"), ("4k", "4 KiB"), (None, "4 KiB")):
        runs = [records.run(v, config={"host_pages": host_pages}) for v in ("none", "mainline")]
        text = joined(tables.format_tables(runs, ["none", "mainline"], "gives back"))
        assert f"refaults: first writes to host pages ({size}) the host had discarded" in text
    mixed = [records.run("none", config={"host_pages": "4k"}),
             records.run("mainline", config={"host_pages": "2m"})]
    text = joined(tables.format_tables(mixed, ["none", "mainline"], "gives back"))
    assert "host pages (of each run's size)" in text
