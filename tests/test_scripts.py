"""The launch scripts, each in its --quick size: results files, the CSV
with the expected columns, and real PNG figures."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
from cli import ROOT

from launcher.output import results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CSV_COLUMNS = {"file", "design", "outcome", "pages_per_sec", "alloc_p99_ns",
               "lock_wait_ms_workers", "lock_wait_ms_reporter", "reported_bytes",
               "footprint_gib_s", "half_returned_s", "refaults", "re_reports",
               "use_after_discard", "invariant_errors", "config.strategy", "config.workload"}
SCRIPTS = {
    "contention": ["throughput_vs_workers.png", "lock_wait_by_caller.png"],
    "reclaim": ["memory_over_time.png"],
    "race": ["use_after_discard.png"],
    "tune": ["mainline_tuning.png"],
    "lockhold": ["lockhold_vs_memory.png"],
    "footprint": ["footprint.png", "memory_over_time.png"],
    "soak": ["launcher_memory.png"],
    "lockspin": ["lockspin.png"],
    "replay": ["memory_over_time.png"],
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_quick(tmp_path, script):
    out = tmp_path / script
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), "--quick",
                          "--out", str(out)], capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stdout + res.stderr
    files = sorted(p for p in os.listdir(out) if p.endswith(".json"))
    assert files
    for name in files:
        run = results.load(str(out / name))["runs"][0]
        assert run["outcome"] == "ok"
        assert run["safety"]["invariant_errors"] == []
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(files)
    assert CSV_COLUMNS <= set(rows[0])
    for png in SCRIPTS[script]:
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, png


def test_every_script_has_help():
    for script in SCRIPTS:
        res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), "--help"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and "--quick" in res.stdout and "--out" in res.stdout
