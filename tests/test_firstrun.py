"""The first ten minutes (issue 15): the kernel cache, the compile message,
and the rough edges a newcomer hit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from cli import ROOT, assert_usage_error, shmalloc

from launcher.output import results
from shmalloc import jitcache

TINY = ["--strategy", "none", "--workload", "hog", "--memory", "16M", "--duration", "0.2",
        "--hog-hold", "0.05"]


def run_timed(argv, env, cwd=ROOT):
    """Run ``python -m launcher argv`` (``env`` on top of ours, a None value
    removes a variable); (result, seconds to the first stderr line or None).
    stderr is read line by line as it comes, stdout by a thread."""
    full_env = dict(os.environ, **env)
    full_env = {k: v for k, v in full_env.items() if v is not None}
    proc = subprocess.Popen([sys.executable, "-m", "launcher", *argv], cwd=cwd,
                            env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))
    reader.start()
    err, t_first = [], None
    try:
        for line in proc.stderr:
            if t_first is None:
                t_first = time.monotonic() - t0
            err.append(line)
        proc.wait(timeout=280)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join()
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(out),
                                       "".join(err)), t_first


def cache_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.nb[ic]"))


@pytest.mark.timeout(600)
def test_cold_cache_is_said_then_shared_then_repaired(tmp_path):
    """Cold: the first line within 2 s, a line per kernel group (stderr is
    not a terminal), the cache under XDG_CACHE_HOME keyed by sources, numba
    and CPU.  A second clone elsewhere starts warm and says nothing.  A
    truncated cache file is compiled again, and the run does not fail."""
    xdg = tmp_path / "xdg"
    env = {"XDG_CACHE_HOME": str(xdg), "NUMBA_CACHE_DIR": None}
    res, t_first = run_timed(["run", *TINY, "--json", str(tmp_path / "cold.json")], env)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("shmalloc run: compiling 8 kernels (first run only, about ")
    assert t_first is not None and t_first < 2.0, t_first
    assert sorted(line.split(" (")[0] for line in lines[1:]) == [
        "shmalloc run: compiled allocator", "shmalloc run: compiled hog"], lines
    assert results.load(str(tmp_path / "cold.json"))["metadata"]["numba_cache_warm"] is False
    key_dirs = list((xdg / "shmalloc" / "numba").iterdir())
    assert [d.name for d in key_dirs] == [jitcache.KEY]
    assert "shmalloc/workload.hog_alloc" in " ".join(cache_files(key_dirs[0]))

    clone = tmp_path / "clone"
    for pkg in ("shmalloc", "reporter", "hypervisor_stub", "launcher"):
        shutil.copytree(os.path.join(ROOT, pkg), clone / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    res, _ = run_timed(["run", *TINY, "--json", str(tmp_path / "clone.json")], env, cwd=clone)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert results.load(str(tmp_path / "clone.json"))["metadata"]["numba_cache_warm"] is True

    data = sorted(key_dirs[0].glob("shmalloc/workload.hog_alloc-*.nbc"))
    index = sorted(key_dirs[0].glob("shmalloc/workload.free_blocks-*.nbi"))
    assert data and index
    data[0].write_bytes(data[0].read_bytes()[:100])          # truncated mid-write
    index[0].write_bytes(index[0].read_bytes()[:20])
    res, _ = run_timed(["run", *TINY, "--json", str(tmp_path / "repaired.json")], env)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert results.load(str(tmp_path / "repaired.json"))["runs"][0]["outcome"] == "ok"
    res, _ = run_timed(["run", *TINY], env)                # and saved whole again
    assert res.returncode == 0 and res.stderr == "", res.stderr


@pytest.mark.timeout(600)
def test_unwritable_cache_warns_once_and_compiles_in_memory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res, _ = run_timed(["run", *TINY, "--json", str(tmp_path / "r.json")],
                       {"NUMBA_CACHE_DIR": str(blocker / "cache")})
    assert res.returncode == 0, res.stderr
    lines = res.stderr.strip().splitlines()
    warnings = [line for line in lines if "warning" in line]
    assert warnings == [f"shmalloc run: warning: numba cache {blocker / 'cache'}: Not a "
                        "directory: compiling in memory, every run compiles again"], lines
    assert lines[1].startswith("shmalloc run: compiling 8 kernels")
    assert results.load(str(tmp_path / "r.json"))["runs"][0]["outcome"] == "ok"
    assert not (blocker.parent / "cache").exists()


def test_cache_location_follows_xdg_and_numba_cache_dir(tmp_path):
    code = ("from shmalloc import jitcache; print(jitcache.CACHE_DIR); "
            "print(jitcache.PROBLEM)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(env, XDG_CACHE_HOME=str(tmp_path / "x"))).stdout.split()
    assert out == [str(tmp_path / "x" / "shmalloc" / "numba" / jitcache.KEY), "None"]
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(env, XDG_CACHE_HOME="relative", HOME=str(tmp_path))
                         ).stdout.split()
    assert out[0] == str(tmp_path / ".cache" / "shmalloc" / "numba" / jitcache.KEY)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(env, NUMBA_CACHE_DIR=str(tmp_path / "n"))).stdout.split()
    assert out[0] == str(tmp_path / "n")


def test_cleanup_cache_removes_only_stale_entries(tmp_path):
    base = tmp_path / "shmalloc" / "numba"
    for name in ("0123456789abcdef", "fedcba9876543210", jitcache.KEY):
        (base / name / "shmalloc").mkdir(parents=True)
        (base / name / "shmalloc" / "x.nbi").write_bytes(b"x" * 1000)
    env = {"XDG_CACHE_HOME": str(tmp_path), "NUMBA_CACHE_DIR": ""}
    res = shmalloc("cleanup", "--cache", "--dry-run", env=env)
    assert res.returncode == 0, res.stderr
    # (the checkout's old .numba_cache/, where one is left, is stale too)
    assert res.stdout.count(f"would remove {base}/") == 2, res.stdout
    assert "stale kernel cache folders" in res.stdout
    assert len(list(base.iterdir())) == 3
    res = shmalloc("cleanup", "--cache", env=env)
    assert res.returncode == 0, res.stderr
    assert [p.name for p in base.iterdir()] == [jitcache.KEY]
    assert res.stdout.count(f"removed {base}/") == 2, res.stdout


def test_helpers_are_compiled_once_whatever_constants_callers_pass():
    """A constant argument does not make a helper compile again (literal
    specialisation would: 141 compilations of 94 functions, not 99)."""
    from shmalloc.config import inline, jit

    @inline
    def helper(a, k):
        return a[0] + k

    @jit
    def caller(a):
        return helper(a, 1) + helper(a, 2) + helper(a, True)

    assert caller(np.ones(1, np.int64)) == 7
    assert len(helper.signatures) == 2                      # int64 and bool, not 1, 2, True


def test_faults_imports_no_run():
    code = "import sys, launcher.experiment.faults; print('launcher.experiment.run' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.stdout.strip() == "False", res.stderr


# ---------------------------------------------------------------------------
# The rough edges
# ---------------------------------------------------------------------------

def test_durations_take_units_and_sizes_fractions(tmp_path):
    out = tmp_path / "r.json"
    res = shmalloc("run", "--duration", "300ms", "--memory", "0.0625G", "--hog-hold", "50ms",
                   "--workload", "hog", "--stall-timeout", "1m", "--delay", "1.5s",
                   "--scan-interval", "2s", "--hv-latency", "0ms", "--json", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    c = results.load(str(out))["runs"][0]["config"]
    assert (c["duration"], c["memory"], c["hog_hold"], c["stall_timeout"], c["delay"],
            c["scan_interval"]) == (0.3, 64 << 20, 0.05, 60.0, 1.5, 2.0)


@pytest.mark.parametrize("argv,fragments", [
    (["run", "--duration", "5 parsecs"], ("shmalloc run: argument --duration", "500ms, 5s, 2m")),
    (["run", "--hv-latency", "2h"], ("--hv-latency", "<= 60 s, got 2h")),
    (["run", "--memory", "1.3M"], ("--memory", "not a whole number of 4 KiB pages")),
    (["run", "--inject", "kill-worker@soon"], ("--inject", "not a number of seconds or a time")),
    (["run", "--strategy", "mainline/discard"], ("--strategy", "only callback takes a mode")),
    (["run", "--strategy", "callback/discard", "--callback-mode", "hint"],
     ("--callback-mode", "contradicts --strategy callback/discard")),
    (["compare", "--strategy", "mainline"], ("shmalloc compare:", "--strategies none,mainline")),
    (["run", "--bogus"], ("shmalloc run: unrecognized arguments: --bogus",)),
    (["compare", "--bogus"], ("shmalloc compare: unrecognized arguments: --bogus",)),
    (["sweep", "--out", "x", "--bogus"], ("shmalloc sweep: unrecognized arguments",)),
    (["report", "x.json", "--bogus"], ("shmalloc report: unrecognized arguments",)),
    (["bench", "--bogus"], ("shmalloc bench: unrecognized arguments",)),
    (["cleanup", "--bogus"], ("shmalloc cleanup: unrecognized arguments",)),
    (["report", "sweep.csv"], ("shmalloc report: sweep.csv: report reads results files (JSON",
                               "shmalloc sweep --merge")),
])
def test_newcomer_mistakes_get_one_clear_line(argv, fragments):
    assert_usage_error(shmalloc(*argv), *fragments)


@pytest.mark.timeout(300)
def test_compare_variant_flags_take_units(tmp_path):
    """A --variant's flags are parsed as the command line's: durations with
    units, sizes with fractions."""
    out = tmp_path / "c.json"
    res = shmalloc("compare", "--variant", "a=", "--variant",
                   "b=--duration 100ms --hog-hold 20ms --memory 0.03125G", "--workload", "hog",
                   "--memory", "16M", "--duration", "0.2", "--hog-hold", "0.05",
                   "--json", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    by = {r["label"]: r["config"] for r in results.load(str(out))["runs"]}
    assert (by["a"]["duration"], by["a"]["hog_hold"], by["a"]["memory"]) == (0.2, 0.05, 16 << 20)
    assert (by["b"]["duration"], by["b"]["hog_hold"], by["b"]["memory"]) == (0.1, 0.02, 32 << 20)


def test_run_takes_compares_callback_names(tmp_path):
    out = tmp_path / "r.json"
    res = shmalloc("run", "--strategy", "callback/discard", "--duration", "0.3", "--memory", "64M",
                   "--json", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    c = results.load(str(out))["runs"][0]["config"]
    assert (c["strategy"], c["callback_mode"]) == ("callback", "discard")


@pytest.mark.timeout(300)
def test_report_never_pools_configurations_as_repeats(tmp_path):
    files = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.json"
        res = shmalloc("run", "--workers", str(workers), "--duration", "0.3", "--memory", "64M",
                       "--json", str(out), "--quiet")
        assert res.returncode == 0, res.stderr
        files.append(str(out))
    res = shmalloc("report", *files, "--plot", str(tmp_path / "plots"))
    assert res.returncode == 0, res.stderr
    table = res.stdout[res.stdout.index("shmalloc report: 2 configurations"):]
    assert table.splitlines()[0].startswith(
        "shmalloc report: 2 configurations differing in workers 1, 2; working_set 51.20MiB, "
        "25.60MiB (see the rows); all page_fault1, 64.00 MiB guest")
    assert "median" not in table.splitlines()[0]
    rows = [line.split()[:2] for line in table.splitlines() if line.startswith("none ")]
    assert rows[:2] == [["none", "workers=1"], ["none", "workers=2"]]


@pytest.mark.timeout(300)
def test_report_takes_version_1_and_2_runs_of_one_configuration_as_repeats(tmp_path):
    """A version 1 file has no --free-hook-ns in its configs (the flag came
    with version 2): its runs are the same configuration as a version 2
    run with the hook off, not a different one, and not a crash."""
    new = tmp_path / "v2.json"
    res = shmalloc("run", "--duration", "0.3", "--memory", "64M", "--json", str(new), "--quiet")
    assert res.returncode == 0, res.stderr
    doc = json.loads(new.read_text())
    doc["version"] = 1
    for run in doc["runs"]:
        del run["config"]["free_hook_ns"]
        for key in ("attribution", "noise", "timing"):
            del run[key]
        del run["throughput"]["steady"]
    old = tmp_path / "v1.json"
    old.write_text(json.dumps(doc))
    res = shmalloc("report", str(new), str(old), "--plot", str(tmp_path / "plots"))
    assert res.returncode == 0, res.stderr
    table = res.stdout[res.stdout.index("shmalloc compare: "):].splitlines()
    assert table[0].endswith("median of 2 runs"), table[0]
    assert sum(line.startswith("none ") for line in table) == 3     # one row in each table


def test_report_keeps_compares_labels_and_still_splits_configurations():
    """compare's own labels (an A/A check's none#2, a --variant's LABEL)
    name report's rows; runs under one label that differ in a flag (two
    compare files, 1 and 2 workers) are still told apart."""
    from launcher.output.report import label_runs

    def run(label, **config):
        base = {"strategy": "none", "callback_mode": "hint", "workers": 1, "free_hook_ns": 0}
        r = {"config": {**base, **config}}
        if label is not None:
            r["label"] = label
        return r

    runs = [run("none"), run("none#2"), run("hook", free_hook_ns=200),
            run("none", workers=2), run(None, strategy="mainline"),
            run(None, strategy="mainline")]
    label_runs(runs)
    assert [r["label"] for r in runs] == ["none workers=1", "none#2", "hook", "none workers=2",
                                          "mainline", "mainline"]


def test_plot_titles_say_when_they_show_a_subset(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    from launcher.output import plots

    titles = []
    original = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle",
                        lambda fig, t, **kw: titles.append(t) or original(fig, t, **kw))
    runs = []
    for workers in (1, 2):
        runs.append({"config": {"strategy": "none", "callback_mode": "hint", "workers": workers,
                                "workload": "page_fault1", "memory": 1 << 26, "seed": 1},
                     "memory": {"timeline": {"t_s": [0, 1], "host_resident_bytes": [0, 1],
                                             "free_bytes": [0, 1]}}})
    plt = plots.pyplot()
    plots.memory_over_time(plt, runs, str(tmp_path / "m.png"))
    assert "showing one run per design: the one with the most workers (2), 1 of 2 runs" \
        in titles[0]
    titles.clear()
    plots.memory_over_time(plt, runs[:1], str(tmp_path / "m.png"))
    assert "showing" not in titles[0]


def test_compile_groups_cover_what_a_command_needs():
    from launcher.experiment import compile as kernels
    from launcher.experiment.config import RunConfig

    cfg = RunConfig(strategy="mainline", workload="phased").resolved()
    assert kernels.groups_for([cfg]) == ["allocator", "random/phased", "mainline"]
    every = [RunConfig(strategy=s, workload=w).resolved()
             for s in ("none", "mainline", "boundary", "callback", "isolate", "bitmap",
                       "hostscan") for w in ("page_fault1", "thp", "random", "hog", "phased",
                                             f"trace:{ROOT}/traces/compileall.trace")]
    every.append(RunConfig(workload="phased", blocks="user").resolved())
    assert set(kernels.groups_for(every)) == set(kernels.GROUPS) - {"bench", "unit costs"}


@pytest.mark.timeout(300)
def test_compare_prepare_leaves_nothing_to_compile():
    """compare's prepare() has launcher.experiment.compile compile the unit-cost
    kernels with the rest: measuring the unit costs afterwards compiles
    nothing (a fresh process, compiling forbidden once prepare is done)."""
    code = ("from launcher.comparison.compare import Variant, config_for, prepare\n"
            "from launcher.experiment.config import RunConfig\n"
            "from shmalloc import bench, config\n"
            "measure = bench.unit_costs\n"
            "def forbidden_then_measured(*args, **kw):\n"
            "    config.forbid_compile()\n"
            "    return measure(*args, **kw)\n"
            "bench.unit_costs = forbidden_then_measured\n"
            "variants = [Variant('none', config_for(RunConfig(duration=1.0), 'none'))]\n"
            "prepare(variants)\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=280)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_sample_signatures_match_a_machine(make_machine):
    """The compile step types its kernels from sample arrays: they must be
    the types of a real machine's arrays, or the run would compile again."""
    import numba

    from launcher.experiment.compile import _sample_values

    m = make_machine()
    f, z, mem = _sample_values("fzm")
    assert numba.typeof(m.frames) == numba.typeof(f)
    assert numba.typeof(m.zs) == numba.typeof(z)
    assert numba.typeof(m.mem) == numba.typeof(mem)


def test_bench_compile_table_formats():
    from launcher.experiment.compile import format_measure
    res = {"serial": {"import_s": 0.5, "kernels": [
        {"group": "allocator", "kernel": "page_alloc.alloc_pages", "s": 4.8, "cpu_s": 4.0},
        {"group": "hog", "kernel": "workload.hog_alloc", "s": 1.0, "cpu_s": 0.9}]},
        "launcher": [{"s": 6.0, "cpu_s": 5.0, "jobs": 1}, {"s": 4.0, "cpu_s": 7.0, "jobs": 2}],
        "warm": {"s": 0.4}, "cpus": 2}
    text = "\n".join(format_measure(res))
    assert "page_alloc.alloc_pages" in text and "4.80" in text
    assert "one after another in one process: 5.8 s (4.9 s CPU)" in text
    assert "2 processes filling the cache, then loaded: 4.0 s (7.0 s CPU)" in text
    assert json.dumps(res)
