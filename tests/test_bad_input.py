"""Bad input, every subcommand: one clear line on stderr, exit 2, no
traceback, nothing created (no IPC object, no output file)."""

from __future__ import annotations

import json
import os

import pytest
from cli import assert_usage_error, shmalloc
from conftest import ipc_objects

# argv ({tmp} is a fresh folder, {truncated} etc. files made there), fragments
BAD_INPUTS = [
    # ranges
    (["run", "--workers", "0"], "--workers", "1..256"),
    (["run", "--workers", "1000"], "--workers"),
    (["run", "--zones", "0"], "--zones"),
    (["run", "--duration", "0"], "--duration"),
    (["run", "--duration", "-1"], "--duration"),
    (["run", "--pcp-batch", "100", "--pcp-high", "50"], "--pcp-high"),
    (["run", "--max-order", "9"], "--max-order"),
    (["run", "--hog-share", "1.5"], "--hog-share"),
    (["run", "--stall-timeout", "0"], "--stall-timeout"),
    (["run", "--lock-spin", "-1"], "--lock-spin"),
    (["run", "--ops", "0"], "--ops"),
    (["run", "--seed", "-3"], "--seed"),
    (["run", "--hv-latency", "-1"], "--hv-latency"),
    (["run", "--scan-interval", "0"], "--scan-interval"),
    (["bench", "--reps", "0"], "--reps", "1..1000"),
    (["bench", "--reps", "many"], "--reps", "not an integer"),
    (["bench", "--iters", "-5"], "--iters"),
    # sizes not aligned to the largest block, zones that do not divide memory
    (["run", "--memory", "5M"], "--memory", "multiple of"),
    (["run", "--memory", "12M", "--zones", "2"], "--memory", "2 x 4096 KiB"),
    (["run", "--memory", "1X"], "--memory", "not a size"),
    (["run", "--memory", "1T", "--host-pages", "4k"], "--memory", "do not fit in /dev/shm"),
    (["run", "--memory", "64T"], "--memory", "below 8 TiB"),
    (["run", "--working-set", "100"], "--working-set"),
    (["run", "--working-set", "1M", "--workload", "thp"], "--working-set", "2048 KiB"),
    (["run", "--working-set", "2G"], "--working-set", "more than the guest"),
    (["bench", "--init-memory", "5M"], "--init-memory", "multiple of"),
    (["bench", "--init-memory", "12X"], "--init-memory", "not a size"),
    (["compare", "--memory", "6M", "--strategies", "none"], "--memory", "multiple of"),
    # orders and capacities
    (["run", "--report-order", "11"], "--report-order"),
    (["run", "--report-order", "10", "--max-order", "10"], "--report-order"),
    (["run", "--strategy", "isolate", "--report-order", "5"], "--report-order", "pageblocks"),
    (["run", "--strategy", "mainline", "--capacity", "5000"], "--capacity",
     "fs.mqueue.msgsize_max"),
    (["run", "--capacity", "0"], "--capacity"),
    # the host's pages and the start state
    (["run", "--host-pages", "1g"], "--host-pages", "must be 4k or 2m, got '1g'"),
    (["run", "--host-pages", "2m", "--report-order", "8"], "--report-order",
     "must be >= 9 with --host-pages 2m"),
    (["run", "--strategy", "callback", "--start", "reported"], "--start", "not callback"),
    (["run", "--strategy", "mainline", "--start", "later"], "--start",
     "must be unreported or reported"),
    (["compare", "--strategies", "none,isolate", "--start", "reported"], "--start",
     "no design in the line-up takes it"),
    # unknown names
    (["run", "--strategy", "bogus"], "--strategy", "unknown design 'bogus'"),
    (["run", "--workload", "bogus"], "--workload", "unknown workload 'bogus'"),
    (["run", "--discard", "shred"], "--discard"),
    (["run", "--callback-mode", "maybe"], "--callback-mode"),
    (["compare", "--strategies", "none,bogus"], "--strategies", "unknown design 'bogus'"),
    (["compare", "--strategies", "mainline/hint"], "--strategies", "only callback"),
    (["compare", "--repeat", "0"], "--repeat", "1..100000"),
    (["compare", "--budget", "30s"], "--budget 30 s buys 5 rounds of 8 variants x 0.4 s",
     "an interval for each needs 9: give at least 47 s"),
    (["compare", "--budget", "10m", "--repeat", "20"], "--budget and --repeat both"),
    (["compare", "--budget", "soon"], "--budget", "500ms, 5s, 2m"),
    (["compare", "--format", "latex"], "--format", "invalid choice"),
    (["compare", "--repeat", "-2"], "--repeat"),
    (["compare", "--variant", "nolabel"], "--variant", "an = is missing"),
    (["compare", "--variant", "=--workers 1"], "--variant", "label before = is empty"),
    (["compare", "--variant", "a=", "--variant", "a=--workers 1"], "'a' is given twice"),
    (["compare", "--strategies", "none,none", "--variant", "none#2="], "'none#2' is given twice"),
    (["compare", "--variant", "hook=--free-hook-ns x"], "--variant hook:", "--free-hook-ns",
     "not an integer"),
    (["compare", "--variant", "w=--workers 0"], "--variant w:", "--workers"),
    (["compare", "--variant", "b=--bogus"], "--variant b:", "unrecognized arguments"),
    (["compare", "--variant", "m=--memory 5M"], "--variant m:", "--memory", "multiple of"),
    (["compare", "--variant", "q=--strategy 'unclosed"], "--variant", "cannot split"),
    (["run", "--free-hook-ns", "-5"], "--free-hook-ns", "0..1000000"),
    (["run", "--free-hook-ns", "1.5"], "--free-hook-ns", "not an integer"),
    (["compare", "--free-hook-ns", "ten"], "--free-hook-ns", "not an integer"),
    (["sweep", "--out", "{tmp}/s", "--grid", "free_hook_ns=0,-1"], "--free-hook-ns"),
    (["compare", "--strategy", "none"], "shmalloc compare:", "--strategies none,mainline"),
    (["compare", "--variant", "d=--duration 5parsecs"], "--variant d:", "--duration",
     "500ms, 5s, 2m"),
    (["compare", "--variant", "s=--memory 1.3M"], "--variant s:", "--memory",
     "not a whole number of 4 KiB pages"),
    (["sweep", "--out", "{tmp}/s", "--grid", "colour=red,blue"], "not a run flag"),
    (["sweep", "--out", "{tmp}/s", "--grid", "workers"], "KEY=V1,V2"),
    (["sweep", "--out", "{tmp}/s", "--grid", "workers=1,0"], "--workers"),
    (["sweep", "--out", "{tmp}/s"], "nothing to sweep"),
    (["sweep", "--grid", "workers=1"], "--out"),
    (["sweep", "--out", "{tmp}/s", "--grid-file", "{tmp}/missing.toml"], "no such file"),
    (["sweep", "--out", "{tmp}/s", "--grid-file", "{not_toml}"], "not a TOML grid file"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
    (["cleanup", "now"], "unrecognized arguments: now"),
    (["vm", "--report-order", "11"], "--report-order", "must be 0..10"),
    (["vm", "--memory", "100T"], "--memory", "more than this host can give"),
    (["vm", "--json", "{existing}"], "--json", "exists; use --force"),
    # results files: truncated, foreign, future, missing
    (["report", "{truncated}"], "truncated or damaged"),
    (["report", "{foreign}"], "not a shmalloc results file"),
    (["report", "{future}"], "results format version 4"),
    (["report", "{tmp}/nope.json"], "no such file"),
    (["report", "{tmp}"], "is a folder"),
    # output paths
    (["run", "--json", "/nonexistent/folder/r.json"], "--json", "does not exist"),
    (["run", "--json", "{existing}"], "--json", "exists; use --force"),
    (["compare", "--json", "{existing}"], "--json", "exists; use --force"),
    (["compare", "--json", "{tmp}/missing/c.json"], "--json", "does not exist"),
    (["sweep", "--out", "{tmp}/missing/deeper", "--grid", "workers=1"], "does not exist"),
    (["report", "{foreign}", "--plot", "{tmp}/missing/png"], "not a shmalloc results file"),
    (["run", "--inject", "explode@1"], "--inject", "WHAT@SECONDS"),
    # traces (tests/test_trace.py has the truncated and future-version files)
    (["run", "--workload", "trace:{foreign}"], "--workload", "not a shmalloc trace file"),
    (["run", "--workload", "trace:{tmp}/none.trace"], "--workload", "no such file"),
    (["run", "--trace-speed", "-1"], "--trace-speed"),
    (["run", "--trace-loops", "-1"], "--trace-loops"),
    (["run", "--trace-wait", "0"], "--trace-wait"),
    (["trace"], "required"),
    (["trace", "info", "{existing}"], "shmalloc trace info:", "not a shmalloc trace file"),
    (["trace", "record", "--out", "{tmp}/t.trace"], "shmalloc trace record:", "no command"),
    (["trace", "record", "--out", "{existing}", "--", "true"], "exists; use --force"),
    (["trace", "record", "--out", "{tmp}/t.trace", "--buffer-kib", "1", "--", "true"],
     "--buffer-kib"),
]


@pytest.fixture
def files(tmp_path):
    made = {"tmp": str(tmp_path)}
    for name, text in {
        "truncated": '{"format": "shmalloc-results", "version": 1, "runs": [',
        "foreign": json.dumps({"name": "something else"}),
        "future": json.dumps({"format": "shmalloc-results", "version": 4, "metadata": {},
                              "runs": []}),
        "existing": "{}",
        "not_toml": "this is [not toml",
    }.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        made[name] = str(path)
    return made


def subcommands() -> set[str]:
    from launcher.cli.main import build_parser
    return set(next(a for a in build_parser()._actions if a.dest == "command").choices)


def test_every_subcommand_is_given_bad_input():
    assert subcommands() <= {argv[0] for argv, *_ in BAD_INPUTS if argv}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[" ".join(a[0]) or "(none)" for a in BAD_INPUTS])
def test_bad_input(files, tmp_path, case):
    argv, fragments = case[0], case[1:]
    before_ipc = ipc_objects()
    before_files = sorted(os.listdir(tmp_path))
    res = shmalloc(*[a.format(**files) for a in argv])
    assert_usage_error(res, *fragments)
    assert ipc_objects() == before_ipc
    assert sorted(os.listdir(tmp_path)) == before_files       # nothing written
