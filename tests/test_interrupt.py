"""Ctrl-C (SIGINT) and SIGTERM at every phase of a command (issue 17).

Each case waits for its phase by an event: the launcher's test checkpoint
(``SHMALLOC_TEST_PHASE``, :mod:`launcher.experiment.interrupt`) creates a file when the
phase is reached and, for the short phases, pauses there until the signal
comes.  Then it checks what a user sees: the command exits within a second
(of the time it ran or could have: the time it waited for a busy cpu is left
out), with 128 + the signal, one line on stderr naming the phase and no
traceback, no IPC object left and no process of its own left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import pytest
from cli import ROOT
from conftest import ipc_objects

from launcher.experiment.config import RunConfig
from launcher.experiment.proc import process_state
from launcher.output import results

EXIT_WITHIN_S = 1.0
RUN = ["run", "--duration", "60", "--memory", "64M", "--strategy", "mainline"]
SHORT_RUN = ["run", "--duration", "0.3", "--memory", "64M", "--strategy", "mainline"]
COMPARE = ["compare", "--duration", "0.3", "--memory", "64M", "--strategies", "none,mainline",
           "--repeat", "2"]

PHASES = [
    # (checkpoint, pause there, command, the phrase of the message)
    ("arguments", True, RUN, "while checking arguments"),
    ("machine", True, RUN, "while creating the machine"),
    ("forking", True, RUN, "while starting the processes"),
    ("running", False, RUN, "while running"),
    ("stopping", True, SHORT_RUN, "while stopping the run"),
    ("collecting", True, SHORT_RUN, "while collecting the results"),
    ("unit-costs", True, COMPARE, "while measuring unit costs"),
    ("between-designs", True, COMPARE, "between designs"),
    ("between-rounds", True, COMPARE, "between rounds"),
]


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def runqueue_wait_s(pid: int) -> float | None:
    """Seconds ``pid`` has spent runnable but waiting for a cpu
    (/proc/<pid>/schedstat), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def interrupt_at(tmp_path, checkpoint: str, pause: bool, argv: list[str], sig: int,
                 env: dict | None = None, want_children: bool = False,
                 stdout: list | None = None):
    """Start ``shmalloc argv``, wait until it reaches ``checkpoint``, send
    ``sig``; returns (status, stderr, seconds to exit, its processes then),
    and appends what it printed on stdout to ``stdout`` if given.  The
    seconds to exit leave out the time the command waited for a cpu: on two
    busy cores (the suite's other worker, a busy loop) a command that would
    exit at once can sit runnable for most of a second, which says nothing
    about how it handles the signal."""
    flag = tmp_path / "reached"
    full_env = dict(os.environ, SHMALLOC_TEST_PHASE=checkpoint, SHMALLOC_TEST_PHASE_FILE=str(flag),
                    **(env or {}))
    if pause:
        full_env["SHMALLOC_TEST_PHASE_PAUSE"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "launcher", *argv], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not flag.exists():
            assert proc.poll() is None, f"exited before {checkpoint}: {proc.communicate()}"
            assert time.monotonic() < deadline, f"{checkpoint} never reached"
            time.sleep(0.01)
        kids = descendants(proc.pid)
        while want_children and not kids:          # the compile processes are forked
            assert time.monotonic() < deadline     # right after the checkpoint
            time.sleep(0.005)
            kids = descendants(proc.pid)
        waited0 = runqueue_wait_s(proc.pid) or 0.0
        t0 = time.monotonic()
        proc.send_signal(sig)
        done: dict = {}
        reader = threading.Thread(target=lambda: done.update(
            zip(("out", "err"), proc.communicate(timeout=30))))
        reader.start()
        waited = waited0
        while reader.is_alive():               # the last reading before it is reaped
            w = runqueue_wait_s(proc.pid)
            waited = w if w is not None else waited
            time.sleep(0.002)
        reader.join()
        took = time.monotonic() - t0 - (waited - waited0)
        assert done, f"{argv[0]} did not exit within 30 s of {signal.Signals(sig).name}"
        out, err = done["out"], done["err"]
        if stdout is not None:
            stdout.append(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err, took, kids


def check_outcome(status, err, took, kids, sig, phrase, command="run", extra_lines=()):
    name = signal.Signals(sig).name
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert status == 128 + sig, err
    assert lines, err
    assert lines[-1].startswith(f"shmalloc {command}: interrupted by {name} {phrase}"), err
    # before it only the compile messages, and compare's line per finished run
    allowed = tuple(extra_lines) + (("[",) if command == "compare" else ())
    for line in lines[:-1]:
        assert any(line.startswith(f"shmalloc {command}: {x}") for x in allowed), err
    assert took < EXIT_WITHIN_S, f"took {took:.2f} s to exit"
    left = [p for p in kids if process_state(p) != "gone"]
    assert not left, f"processes left: {left}"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("checkpoint,pause,argv,phrase", PHASES,
                         ids=[p[0] for p in PHASES])
def test_signal_at_every_phase(tmp_path, checkpoint, pause, argv, phrase, sig):
    before = ipc_objects()
    status, err, took, kids = interrupt_at(tmp_path, checkpoint, pause, argv, sig)
    check_outcome(status, err, took, kids, sig, phrase, command=argv[0])
    if checkpoint in ("forking", "running", "stopping"):
        assert kids, "no children were running at that phase"
    assert ipc_objects() == before


@pytest.mark.timeout(300)
def test_compare_interrupted_during_a_run_reports_the_runs_so_far(tmp_path):
    """A signal during one of compare's runs: that run is kept as aborted,
    the tables of the runs so far are printed and saved, and the one line
    and 130 follow."""
    before = ipc_objects()
    out = tmp_path / "c.json"
    printed: list[str] = []
    status, err, took, kids = interrupt_at(tmp_path, "running", False,
                                           [*COMPARE, "--duration", "60", "--json", str(out)],
                                           signal.SIGINT, stdout=printed)
    check_outcome(status, err, took, kids, signal.SIGINT, "while running [1/4] round 1",
                  command="compare")
    assert "what it costs the allocator" in printed[0]
    assert "no interval: 0 complete round" in printed[0]
    doc = results.load(str(out))
    assert [r["outcome"] for r in doc["runs"]] == ["aborted"]
    assert doc["runs"][0]["abort_reason"].startswith("interrupted by SIGINT while running")
    assert doc["comparison"]["rounds"] == 0
    assert ipc_objects() == before


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_compiling_cold(tmp_path, sig):
    """A cold compile (an empty numba cache) of one small kernel group: the
    compile processes are killed, nothing is left."""
    before = ipc_objects()
    argv = ["run", "--strategy", "none", "--workload", "hog", "--memory", "16M",
            "--duration", "1"]
    status, err, took, kids = interrupt_at(
        tmp_path, "compiling", False, argv, sig,
        env={"NUMBA_CACHE_DIR": str(tmp_path / "empty-cache")}, want_children=True)
    check_outcome(status, err, took, kids, sig, "while compiling kernels",
                  extra_lines=("compiling ", "compiled "))
    assert "compiling 8 kernels (first run only" in err
    assert ipc_objects() == before


@pytest.mark.timeout(300)
def test_signal_while_compiling_in_this_process(tmp_path):
    """No usable disk cache: the launcher compiles in memory itself, and
    the signal handler cuts the compile short."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = ["run", "--strategy", "none", "--workload", "hog", "--memory", "16M",
            "--duration", "1"]
    status, err, took, kids = interrupt_at(
        tmp_path, "compiling", False, argv, signal.SIGINT,
        env={"NUMBA_CACHE_DIR": str(blocker / "cache")})
    check_outcome(status, err, took, kids, signal.SIGINT, "while compiling kernels",
                  extra_lines=("warning: numba cache", "compiling "))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sweep_interrupted_between_points_resumes(tmp_path, sig):
    out = tmp_path / "sweep"
    argv = ["sweep", "--grid", "strategy=none,mainline", "--duration", "0.3", "--memory", "64M",
            "--out", str(out)]
    before = ipc_objects()
    status, err, took, kids = interrupt_at(tmp_path, "between-points", True, argv, sig)
    check_outcome(status, err, took, kids, sig, "between sweep points", command="sweep")
    assert ipc_objects() == before
    done = sorted(f for f in os.listdir(out) if f.endswith(".json"))
    assert len(done) == 1                          # the point before the signal stays done
    stamp = (out / done[0]).stat().st_mtime_ns
    res = subprocess.run([sys.executable, "-m", "launcher", *argv], cwd=ROOT,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr
    assert "2 points: 1 run, 1 already done" in res.stdout
    assert (out / done[0]).stat().st_mtime_ns == stamp
    for f in os.listdir(out):
        if f.endswith(".json"):
            assert results.load(str(out / f))["runs"][0]["outcome"] == "ok"


@pytest.mark.timeout(300)
def test_second_signal_during_cleanup_leaves_nothing(tmp_path):
    """A second Ctrl-C while the first is being honoured is ignored: the
    cleanup finishes, every object is removed, the status is the first's."""
    before = ipc_objects()
    flag = tmp_path / "reached"
    env = dict(os.environ, SHMALLOC_TEST_PHASE="running", SHMALLOC_TEST_PHASE_FILE=str(flag))
    proc = subprocess.Popen([sys.executable, "-m", "launcher", *RUN, "--workers", "4"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not flag.exists():
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        for _ in range(50):                        # keep pressing while it cleans up
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGINT)
            time.sleep(0.002)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["shmalloc run: interrupted by SIGINT while running"]
    assert ipc_objects() == before


@pytest.mark.timeout(120)
def test_unexpected_error_is_one_line_with_a_debug_hint(tmp_path):
    """A bug (here: a results file whose run lacks its throughput) is one
    line and status 1; --debug adds the traceback."""
    doc = results.document([{"config": asdict(RunConfig().resolved()), "outcome": "ok"}], {})
    path = tmp_path / "odd.json"
    results.write(str(path), doc)
    res = subprocess.run([sys.executable, "-m", "launcher", "report", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "shmalloc report: internal error: KeyError: 'throughput' (rerun with --debug for the "
        "traceback)"]
    res = subprocess.run([sys.executable, "-m", "launcher", "report", str(path), "--debug"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "Traceback" in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "shmalloc report: internal error: KeyError: 'throughput'")
