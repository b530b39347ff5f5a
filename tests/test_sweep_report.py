"""shmalloc sweep (resume, --list, --merge) and shmalloc report."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict

import pytest
from cli import ROOT, assert_usage_error, shmalloc

from launcher.cli.flags import run_config
from launcher.cli.main import build_parser
from launcher.output import results

GRID = ["--grid", "workers=1,2", "--grid", "strategy=none,mainline", "--duration", "0.5",
        "--memory", "64M", "--seed", "7"]


@pytest.mark.timeout(300)
def test_interrupted_sweep_finishes_only_the_missing_points(tmp_path):
    out = tmp_path / "sweep"
    res = shmalloc("sweep", *GRID, "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "4 points: 4 run, 0 already done" in res.stdout
    files = sorted(f for f in os.listdir(out) if f.endswith(".json"))
    assert len(files) == 4
    kept = out / files[0]
    stamp = kept.stat().st_mtime_ns
    os.unlink(out / files[1])                             # never finished
    (out / files[2]).write_text('{"format": "shmalloc-res')   # killed while writing
    res = shmalloc("sweep", *GRID, "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "4 points: 2 run, 2 already done" in res.stdout
    assert kept.stat().st_mtime_ns == stamp
    for f in files:
        assert results.load(str(out / f))["runs"][0]["outcome"] == "ok"


@pytest.mark.timeout(300)
def test_listed_commands_stand_alone(tmp_path):
    out = tmp_path / "listed"
    res = shmalloc("sweep", *GRID, "--out", str(out), "--list")
    assert res.returncode == 0, res.stderr
    commands = res.stdout.strip().splitlines()
    assert len(commands) == 4 and not out.exists()        # --list runs nothing
    argv = shlex.split(commands[3])
    assert argv[:2] == ["shmalloc", "run"]
    out.mkdir()
    run = subprocess.run([sys.executable, "-m", "launcher", *argv[1:]], cwd=ROOT,
                         capture_output=True, text=True, timeout=280)
    assert run.returncode == 0, run.stderr
    target = argv[argv.index("--json") + 1]
    listed = results.load(target)["runs"][0]
    assert listed["config"]["workers"] == 2 and listed["config"]["strategy"] == "mainline"
    assert listed["config"]["seed"] == 7
    # the sweep runs the other points; each listed command, read by shmalloc
    # run's own parser, is exactly the configuration its point ran with
    res = shmalloc("sweep", *GRID, "--out", str(out))
    assert "3 run, 1 already done" in res.stdout
    for command in commands:
        argv = shlex.split(command)[1:]
        cfg = asdict(run_config(build_parser().parse_args(argv)))
        ran = results.load(argv[argv.index("--json") + 1])["runs"][0]["config"]
        assert json.loads(json.dumps(cfg)) == ran, command


@pytest.mark.timeout(300)
def test_grid_file_and_merge(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('[grid]\nworkload = ["thp", "page_fault1"]\n\n[base]\nduration = 0.5\n'
                    'memory = "64M"\n')
    out = tmp_path / "g"
    res = shmalloc("sweep", "--grid-file", str(grid), "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    res = shmalloc("sweep", "--merge", "--out", str(out), "--csv", str(tmp_path / "m.csv"))
    assert res.returncode == 0 and "2 runs merged" in res.stdout
    header = (tmp_path / "m.csv").read_text().splitlines()[0].split(",")
    assert "point.workload" in header and "pages_per_sec" in header


@pytest.mark.timeout(300)
def test_report_reprints_and_plots(tmp_path):
    out = tmp_path / "r.json"
    res = shmalloc("run", "--duration", "0.5", "--memory", "64M", "--json", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    res = shmalloc("report", str(out), "--plot", str(tmp_path / "png"))
    assert res.returncode == 0, res.stderr
    assert "shmalloc run: page_fault1, strategy none" in res.stdout
    assert "lock_stat version 0.4" in res.stdout
    assert len([f for f in os.listdir(tmp_path / "png") if f.endswith(".png")]) == 4


BAD_REPORTS = [
    ({"format": "shmalloc-results", "version": 4, "metadata": {}, "runs": []},
     "results format version 4; this shmalloc reads versions 1, 2, 3"),
    ({"hello": "world"}, "not a shmalloc results file"),
    ([1, 2, 3], "not a shmalloc results file"),
]


@pytest.mark.parametrize("doc,message", BAD_REPORTS, ids=["future", "foreign", "list"])
def test_report_refuses_other_files(tmp_path, doc, message):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(doc))
    assert_usage_error(shmalloc("report", str(path)), message)


def test_report_truncated_and_missing(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"format": "shmalloc-results", "version": 1, "runs": [')
    assert_usage_error(shmalloc("report", str(path)), "truncated or damaged")
    assert_usage_error(shmalloc("report", str(tmp_path / "nope.json")), "no such file")
