"""``shmalloc vm``: a real guest kernel under QEMU (launcher/vm/).

The tests that boot a guest skip, with the reason ``shmalloc vm`` itself
gives, where QEMU, the guest kernel, busybox-static or cc are missing
(``.ci/run`` installs them).  Each checks that nothing of the run is left:
no QEMU named after its launcher, no working folder.  The rest run
everywhere: the parsing of the guest's lines, the clock mapping, the
module resolution, the archive, a canned run through the
results file and ``shmalloc report``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import pytest
from cli import assert_usage_error, shmalloc, start_shmalloc

from launcher.vm import channel, host, initramfs, qemu, record
from launcher.vm.config import GuestConfig


def _unavailable() -> str | None:
    try:
        host.find()
    except host.VmUsageError as e:
        return f"shmalloc vm: {e}"
    return None


needs_guest = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))


def _left_by(pid: int) -> list:
    """QEMUs and working folders named after launcher ``pid``."""
    prefix = f"{qemu.TAG_PREFIX}{pid}-"
    procs = [p for p, tag, _ in qemu.leftovers() if tag.startswith(prefix)]
    dirs = [d for d in os.listdir(tempfile.gettempdir()) if d.startswith(prefix)]
    return procs + dirs


def _wait_for_qemu(proc: subprocess.Popen, timeout: float = 120.0) -> int:
    """The pid of the QEMU that launcher ``proc`` started, once it runs."""
    deadline = time.monotonic() + timeout
    prefix = f"{qemu.TAG_PREFIX}{proc.pid}-"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        found = [p for p, tag, _ in qemu.leftovers() if tag.startswith(prefix)]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError("the launcher never started QEMU")


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


# ---------------------------------------------------------------------------
# a real guest
# ---------------------------------------------------------------------------

@needs_guest
@pytest.mark.timeout(420)
def test_guest_gives_freed_memory_back_to_the_host(tmp_path):
    """A short hog in a real guest: QEMU's guest memory must shrink on the
    host by at least half of what the guest freed (free page reporting
    working end to end: the order set, the passes seen, the host's RSS).
    The hog's 128 MiB come back as order-10 blocks, one report's worth."""
    out = tmp_path / "vm.json"
    proc = start_shmalloc("vm", "--memory", "256M", "--hog-share", "0.5", "--hog-hold", "0.5",
                          "--duration", "8", "--report-order", "10", "--json", str(out),
                          "--quiet")
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    assert err == ""
    assert _left_by(proc.pid) == []
    doc = json.loads(out.read_text())
    assert doc["version"] == 3
    run = doc["runs"][0]
    # 10, not the 9 Linux 6.1 sets when virtio_balloon registers
    assert run["system"] == "qemu" and run["guest"]["report_order_effective"] == 10
    assert run["qemu"]["qemu"] and run["guest"]["kernel_release"]
    m = run["memory"]
    freed = m["released_bytes"]
    assert freed >= 120 << 20, m                       # the hog's 128 MiB
    resident = m["timeline"]["host_resident_bytes"]
    assert max(resident) - resident[0] >= freed // 2, "the hog's memory never became resident"
    assert max(resident) - resident[-1] >= freed // 2, (max(resident), resident[-1], freed)
    assert run["reporting"]["passes_count"] >= 1
    assert run["safety"]["use_after_discard"] == 0
    # the workers' page faults as the guest program read them (/proc/PID/stat):
    # one a page of the hog, rising, none before the start
    wf = run["guest"]["worker_faults"]
    assert wf["t_s"][0] <= 0 < wf["t_s"][-1] and wf["faults"] == sorted(wf["faults"])
    assert wf["faults"][-1] - wf["faults"][0] >= freed // 4096


@needs_guest
@pytest.mark.timeout(120)
def test_a_guest_that_does_not_come_up_stops_with_its_console():
    """rdinit=/bin/sh: the kernel boots, the workload program never runs."""
    proc = start_shmalloc("vm", "--accel", "tcg", "--memory", "256M", "--boot-timeout", "15",
                          "--append", "rdinit=/bin/sh loglevel=7", "--quiet")
    _, err = proc.communicate(timeout=100)
    assert proc.returncode == 3, err
    assert "did not come up within --boot-timeout 15 s (TCG)" in err, err
    assert "the console's last lines:" in err, err
    console = err.split("the console's last lines:\n", 1)[1].rstrip("\n").splitlines()
    assert console and all(line.startswith("    ") for line in console), err
    assert "Traceback" not in err
    assert _left_by(proc.pid) == []


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 180.0) -> list[str]:
    """stderr's lines up to the first that holds ``text``."""
    seen, deadline = [], time.monotonic() + timeout
    while not seen or text not in seen[-1]:
        assert time.monotonic() < deadline, f"no {text!r} on stderr: {seen}"
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if ready:
            line = proc.stderr.readline()
            assert line, f"stderr closed before {text!r}: {seen}"
            seen.append(line)
    return seen


@needs_guest
@pytest.mark.timeout(180)
def test_a_signal_stops_qemu_within_a_second():
    """SIGTERM while the guest is up (waiting for its start state): the
    launcher stops QEMU, within a second, before it exits."""
    proc = start_shmalloc("vm", "--accel", "tcg", "--memory", "256M", "--duration", "60")
    guest = _wait_for_qemu(proc)
    _wait_for_line(proc, "guest up after")
    assert not _gone(guest)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    while not _gone(guest):
        assert time.monotonic() - sent < 1.0, "QEMU outlived the signal by a second"
        time.sleep(0.005)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1].startswith("shmalloc vm: interrupted by SIGTERM while "
                                                   "waiting for the guest's reporter"), err
    assert _left_by(proc.pid) == []


@pytest.mark.skipif(host.shutil.which(host.QEMU) is None, reason="QEMU is not installed")
@pytest.mark.timeout(60)
def test_cleanup_stops_a_qemu_whose_launcher_is_gone():
    """A QEMU named after a dead launcher is stopped and its folder removed;
    one of a live launcher (this test) is left alone."""
    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([host.shutil.which(host.QEMU), "-name",
                                 f"guest={name},process={qemu.PROCESS_NAME}", "-machine", "none",
                                 "-S", "-nodefaults", "-display", "none", "-monitor", "none",
                                 "-serial", "none"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    dead = f"{qemu.TAG_PREFIX}{os.getpid()}-1"          # our pid, another start time
    live = qemu.tag()
    folder = tempfile.mkdtemp(prefix=f"{dead}-")
    orphan, kept = start(dead), start(live)
    try:
        deadline = time.monotonic() + 30
        while {orphan.pid, kept.pid} - {p for p, _, _ in qemu.leftovers()}:
            assert time.monotonic() < deadline and orphan.poll() is None and kept.poll() is None
            time.sleep(0.02)
        res = shmalloc("cleanup")
        assert res.returncode == 0, res.stderr
        out = res.stdout.splitlines()
        orphan.wait(5)                                  # gone, reaped here
        # another test's cleanup (the same code) may have got it first
        assert f"stopped QEMU pid {orphan.pid} ({dead})" in out or orphan.returncode is not None
        assert kept.poll() is None, "a live launcher's QEMU was stopped"
        totals = [re.match(r"stopped (\d+) QEMU of dead shmalloc vm runs; (\d+) live guest",
                           line) for line in out]
        assert any(m and int(m.group(2)) >= 1 for m in totals), out
        assert not os.path.exists(folder)
        assert "objects of dead runs" in out[-1]        # the IPC summary stays last
    finally:
        for p in (orphan, kept):
            p.kill()
            p.wait()
        if os.path.exists(folder):
            os.rmdir(folder)


# ---------------------------------------------------------------------------
# bad input: one line, exit 2, nothing started
# ---------------------------------------------------------------------------

BAD = [
    (["--report-order", "11"], "--report-order: must be 0..10, got 11"),
    (["--report-order", "-1"], "--report-order: must be 0..10, got -1"),
    (["--memory", "100T"], "more than this host can give a guest"),
    (["--memory", "300000K"], "QEMU gives a guest whole MiB"),
    (["--memory", "128M"], "the guest needs at least 256M"),
    (["--kernel", "/nonexistent/vmlinuz-9.9"], "--kernel /nonexistent/vmlinuz-9.9: no such file"),
    (["--accel", "xen"], "invalid choice: 'xen'"),
]


@pytest.mark.parametrize("argv,fragment", BAD, ids=[" ".join(a) for a, _ in BAD])
@pytest.mark.timeout(60)
def test_bad_input(argv, fragment):
    proc = start_shmalloc("vm", *argv)
    out, err = proc.communicate(timeout=50)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_usage_error(res, "shmalloc vm", fragment)
    assert _left_by(proc.pid) == []


@needs_guest
@pytest.mark.timeout(60)
def test_a_workload_the_guest_program_does_not_know():
    proc = start_shmalloc("vm", "--workload", "page_fault2")
    out, err = proc.communicate(timeout=50)
    assert_usage_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                       "unknown workload 'page_fault2'; the guest program knows hog")
    assert _left_by(proc.pid) == []


@needs_guest
@pytest.mark.timeout(60)
def test_a_missing_module(tmp_path):
    (tmp_path / "modules.dep").write_text("kernel/drivers/virtio/virtio.ko:\n")
    proc = start_shmalloc("vm", "--modules", str(tmp_path))
    out, err = proc.communicate(timeout=50)
    assert_usage_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                       "the guest kernel has no module virtio_pci")
    assert _left_by(proc.pid) == []


@pytest.mark.timeout(60)
def test_missing_packages_are_named():
    env = {"PATH": "/nonexistent"}                     # no qemu-system-x86_64, no cc
    res = shmalloc("vm", env=env)
    assert_usage_error(res, "shmalloc vm: needs the Debian package", "qemu-system-x86",
                       "apt-get install qemu-system-x86 linux-image-amd64 busybox-static")


# ---------------------------------------------------------------------------
# the pieces, without a guest
# ---------------------------------------------------------------------------

def test_parse_lines():
    assert channel.parse("G t=5 memfree_kb=3 buddy=1,2") == (
        "G", {"t": "5", "memfree_kb": "3", "buddy": "1,2"})
    assert channel.parse("F worker 0 ended") == ("F", {"message": "worker 0 ended"})
    assert channel.parse("W t=9 waiting for the reporter") == (
        "W", {"t": "9", "text": "waiting for the reporter"})
    assert channel.parse("[    3.2] virtio_balloon: something") is None
    fields = {"n": "2", "l0": "4194304", "l1": "2097152", "l2": "4194304"}
    assert channel.report_bytes(fields) == 6 << 20


def test_clock_map_takes_the_fastest_line():
    c = channel.ClockMap()
    for g, delay in ((1.0, 0.004), (2.0, 0.001), (3.0, 0.002), (4.0, 0.003)):
        c.add(g, 100.0 + g + delay)
    assert c.offset == pytest.approx(100.001)
    assert c.to_host(10.0) == pytest.approx(110.001)
    q = c.quality()
    assert q["pairs"] == 4 and q["spread_s"] == pytest.approx(0.0015)


def test_resolve_modules(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/virtio_ring.ko:\n"
        "kernel/virtio.ko: kernel/virtio_ring.ko\n"
        "kernel/virtio_pci_modern_dev.ko:\n"
        "kernel/virtio_pci.ko: kernel/virtio_pci_modern_dev.ko kernel/virtio.ko "
        "kernel/virtio_ring.ko\n"
        "kernel/virtio_balloon.ko.xz: kernel/virtio.ko kernel/virtio_ring.ko\n")
    (tmp_path / "kernel").mkdir()
    for name in ("virtio_ring.ko", "virtio.ko", "virtio_pci_modern_dev.ko", "virtio_pci.ko",
                 "virtio_balloon.ko.xz"):
        (tmp_path / "kernel" / name).write_bytes(b"")
    order = initramfs.resolve_modules(str(tmp_path))
    assert sorted(order) == sorted(f"kernel/{n}" for n in (
        "virtio_ring.ko", "virtio.ko", "virtio_pci_modern_dev.ko", "virtio_pci.ko",
        "virtio_balloon.ko.xz"))
    for mod, deps in (("virtio.ko", ["virtio_ring.ko"]),       # each after what it needs
                      ("virtio_pci.ko", ["virtio_pci_modern_dev.ko", "virtio.ko"]),
                      ("virtio_balloon.ko.xz", ["virtio.ko", "virtio_ring.ko"])):
        assert all(order.index(f"kernel/{d}") < order.index(f"kernel/{mod}") for d in deps)
    (tmp_path / "modules.builtin").write_text("kernel/virtio_ring.ko\nkernel/virtio.ko\n")
    assert initramfs.resolve_modules(str(tmp_path)) == [
        "kernel/virtio_pci_modern_dev.ko", "kernel/virtio_pci.ko", "kernel/virtio_balloon.ko.xz"]
    with pytest.raises(host.VmUsageError, match="has no module virtio_mem"):
        initramfs.resolve_modules(str(tmp_path), ("virtio_mem",))


def _read_newc(data: bytes) -> dict:
    out, at = {}, 0
    while True:
        head = data[at:at + 110]
        assert head[:6] == b"070701"
        fields = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[at + 110:at + 110 + namesize - 1].decode()
        at += 110 + namesize
        at += -at % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, data[at:at + size])
        at += size
        at += -at % 4


def test_newc_archive_reads_back():
    import stat
    entries = [("bin", stat.S_IFDIR | 0o755, b""), ("init", stat.S_IFREG | 0o755, b"#!x\n"),
               ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"), ("odd", stat.S_IFREG | 0o644, b"1")]
    got = _read_newc(initramfs.newc(entries))
    assert got == {name: (mode, data) for name, mode, data in entries}


def test_guest_config_pairs_follow_the_flags():
    cfg = GuestConfig(workload="phased", memory=2 << 30, duration=20, hog_hold=3,
                      report_order=10, guest_thp="always").resolved()
    pairs = cfg.guest_pairs()
    assert pairs["duration_ms"] == 20000 and pairs["hold_ms"] == 3000
    assert pairs["report_order"] == 10 and pairs["thp"] == 1
    assert pairs["working_set"] == 128 << 20
    assert cfg.record()["strategy"] == "mainline" and cfg.record()["delay"] == 2.0


# ---------------------------------------------------------------------------
# a canned run: the record, the results file, shmalloc report
# ---------------------------------------------------------------------------

def _canned_run():
    """What a 2 GiB hog guest says and what the host samples, as the
    launcher would collect it: the guest's clock is the host's minus 1000 s,
    lines arrive 1 ms late; RSS falls 256 MiB at each of two passes."""
    from launcher.vm.run import GuestRun

    mib = 1 << 20
    run = GuestRun(GuestConfig(memory=2 << 30, hog_share=0.5, duration=10).resolved())
    lines = [(1.0, "H t={} kernel=6.1.0-57-amd64 order=9 memtotal_kb=2012380 cpus=1 "
                   "thp=[always]_madvise_never kprobes=1 workload=hog"),
             (1.1, "W t={} waiting for the reporter to go idle"),
             (4.0, "P t={} dur_ns=150000000 pfns=524288 free_pages=480000 "
                   "reported_pages=470000 reported_blocks=0,0,0,0,0,0,0,0,0,2,458"),
             (5.0, "S t={}"),
             (7.0, "E t={} w=0 ev=touched bytes=1073741824"),
             (8.0, "E t={} w=0 ev=freeing bytes=1073741824"),
             (8.1, "K ts={:.6f} ev=notify"),
             (8.5, "E t={} w=0 ev=freed bytes=1073741824")]
    for pass_at in (10.0, 12.0):
        lens = " ".join(f"l{i}=4194304" for i in range(32))
        lines += [(pass_at, "K ts={:.6f} ev=pstart"),
                  (pass_at + 0.001, "K ts={:.6f} ev=rep n=32 " + lens),
                  (pass_at + 0.002, "K ts={:.6f} ev=repdone ret=0"),
                  (pass_at + 0.003, "K ts={:.6f} ev=rep n=32 " + lens),
                  (pass_at + 0.004, "K ts={:.6f} ev=repdone ret=0"),
                  (pass_at + 0.005, "K ts={:.6f} ev=pend")]
    lines += [(15.0, "E t={} w=0 ev=end bytes=0"), (15.1, "X t={} guest_minflt=262159 "
                                                            "guest_majflt=0")]
    for s, text in lines:             # the scenario's seconds: host s + 1, guest s - 1000
        guest = s - 1000.0
        run.take(s + 1.0 + 0.001, text.format(guest if "ts=" in text else int(guest * 1e9)))
    for i in range(5 * 10, 15 * 10 + 1):           # the host's samples, every 100 ms
        t = i / 10
        rss = 100 * mib + (1024 * mib if 7.0 <= t else int((t - 5.0) / 2 * 1024) * mib
                           if t > 5.0 else 0)
        rss -= 256 * mib * sum(t >= p + 0.05 for p in (10.0, 12.0))
        run.host.append((t + 1.0, {"rss_bytes": rss + 200 * mib, "guest_rss_bytes": rss,
                                   "anon_huge_bytes": rss - 4 * mib,
                                   "minflt": 1000 + int(t * 10), "majflt": 0, "cpu_s": t}))
    run.marks.update(begin=0.5, built=0.6, hello=1.001 + 1.0, start=6.001, x=16.101, end=17.0)
    run.qemu_argv = ["qemu-system-x86_64", "-append", "console=ttyS0"]
    run.exit_status = 0
    return run


def test_record_of_a_canned_run():
    run = _canned_run()
    rec = record.build(run, {"qemu": "QEMU emulator version 7.2.22"},
                       {"accel": "tcg", "chosen_by": "--accel"}, {"modules": ["virtio.ko"]})
    m, f = rec["memory"], rec["figures"]
    assert rec["guest"]["clock"]["offset_s"] == pytest.approx(1001.001, abs=1e-6)
    assert m["freed_at_s"] == pytest.approx(3.5, abs=1e-3)     # host 8.5 + 1 - start 6.001
    assert m["released_bytes"] == 1 << 30
    assert [p["reported_bytes"] for p in rec["reporting"]["passes"]] == [256 << 20] * 2
    assert f["pass_interval_s_median"] == pytest.approx(2.0, abs=1e-3)
    assert f["step_bytes"] == 256 << 20 and f["pass_returned_bytes_median"] == 256 << 20
    assert f["first_pass_after_free_s"] == pytest.approx(1.5, abs=2e-3)
    assert f["first_request_after_free_s"] == pytest.approx(-0.4, abs=2e-3)   # during the free
    assert f["first_pass_after_request_s"] == pytest.approx(1.9, abs=2e-3)
    assert rec["reporting"]["passes"][0]["requested_s"] is not None
    assert rec["reporting"]["passes"][1]["requested_s"] is None          # a reschedule
    assert f["half_back_s"] == pytest.approx(3.6, abs=0.11)   # the second pass, seen 0.05 s on
    assert f["refaulted_bytes"] == 0 and f["host_faults"] == 65     # 1000 + 10 s, 8.5 s to 15 s
    assert m["freeing_at_s"] == pytest.approx(3.0, abs=1e-3)
    assert rec["guest"]["start_state"]["idle"] and rec["guest"]["report_order_effective"] == 9


def test_report_prints_and_plots_a_guest_run(tmp_path):
    pytest.importorskip("matplotlib")
    from launcher.output import results

    run = _canned_run()
    rec = record.build(run, {"qemu": "QEMU emulator version 7.2.22"},
                       {"accel": "tcg", "chosen_by": "--accel"}, {"modules": []})
    path = tmp_path / "guest.json"
    results.write(str(path), results.document([rec], {"command": "test"}))
    assert json.loads(path.read_text())["version"] == 3
    res = shmalloc("report", str(path), "--plot", str(tmp_path / "png"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("shmalloc vm: hog, 1 worker, 2.00 GiB guest, 1 vCPU")
    assert "half of it back on the host 3.6" in res.stdout
    assert os.listdir(tmp_path / "png") == ["memory_over_time.png"]


def test_initramfs_holds_init_program_and_modules(tmp_path, monkeypatch):
    if _unavailable() is not None:
        pytest.skip(_unavailable())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tools = host.find()
    path, contents = initramfs.build(tools)
    with open(path, "rb") as f:
        files = _read_newc(gzip.decompress(f.read()))
    order = files["modules.order"][1].decode().split()
    assert order[-1] == "virtio_balloon.ko" and "virtio_pci.ko" in order
    for name in order:
        assert files[f"lib/modules/{name}"][1][:4] == b"\x7fELF"
    assert files["init"][1] == initramfs.guest_file("init")
    assert files["shmguest"][1][:4] == b"\x7fELF" and files["bin/sh"][1] == b"busybox"
    assert sys.byteorder == "little"


# ---------------------------------------------------------------------------
# vm compare
# ---------------------------------------------------------------------------

BAD_COMPARE = [
    (["compare", "--report-order", "9,9"], "shmalloc vm: argument --report-order: an order "
     "given twice: '9,9'"),
    (["compare", "--report-order", "9,11"], "--report-order: must be 0..10, got 11"),
    (["--report-order", "9,10"], "shmalloc vm: --report-order: one order; a list is for vm "
     "compare"),
    (["--plot", "x.png"], "shmalloc vm: --plot belongs to vm compare"),
    (["compare", "--real", "/nonexistent/guest.json"], "shmalloc vm compare: --real: "),
    (["compare", "--plot", "/nonexistent/dir/x.png"], "shmalloc vm compare: --plot: "
     "/nonexistent/dir/x.png: folder /nonexistent/dir does not exist"),
    (["compare", "--workload", "page_fault2"], "shmalloc vm compare: --workload page_fault2: "
     "vm compare runs hog, page_fault1, thp, random, phased"),
    (["compare", "--model-pcp", "none"], "invalid choice: 'none'"),
    (["compare", "--memory", "128M"], "the guest needs at least 256M"),
    (["compare", "--rounds", "0"], "--rounds: must be 1-20, got 0"),
    (["compare", "--rounds", "two"], "--rounds: a whole number 1-20, got 'two'"),
    (["--rounds", "3"], "shmalloc vm: --rounds belongs to vm compare"),
]


@pytest.mark.parametrize("argv,fragment", BAD_COMPARE, ids=[" ".join(a) for a, _ in BAD_COMPARE])
@pytest.mark.timeout(60)
def test_bad_input_of_compare(argv, fragment):
    proc = start_shmalloc("vm", *argv)
    out, err = proc.communicate(timeout=50)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_usage_error(res, fragment)
    assert _left_by(proc.pid) == []


@pytest.mark.timeout(60)
def test_compare_refuses_a_file_without_a_guest_and_the_same_file_twice(tmp_path):
    from launcher.output import results

    path = tmp_path / "model.json"
    results.write(str(path), results.document([{"config": {}, "memory": {}}], {}))
    assert_usage_error(shmalloc("vm", "compare", "--real", str(path)),
                       f"shmalloc vm compare: --real {path}: no real guest's run in it")
    rec = _canned_record()
    results.write(str(tmp_path / "guest.json"), results.document([rec], {}))
    assert_usage_error(shmalloc("vm", "compare", "--real", str(tmp_path / "guest.json"),
                                "--report-order", "10"),
                       "no real guest's run at report order 10")
    assert_usage_error(shmalloc("vm", "compare", "--json", "a.png", "--plot", "a.png"),
                       "--json and --plot name the same file")


def _canned_record(**config) -> dict:
    rec = record.build(_canned_run(), {"qemu": "QEMU emulator version 7.2.22"},
                       {"accel": "tcg", "chosen_by": "--accel"}, {"modules": []})
    rec["config"].update(config)
    return rec


def test_the_guest_workers_page_faults_become_the_models_schedule():
    """--model-rate timeline: the G lines' minflt (the workers' page faults
    so far) are kept as the guest's clock says, from the last sample before
    the start; the model's schedule counts from the start, per worker, and
    never falls."""
    from launcher.vm import compare

    run = _canned_run()
    for s, k in ((4.9, 40), (5.5, 100040), (7.0, 262199), (7.5, 262190), (12.0, 262199)):
        run.take(s + 1.001, f"G t={int((s - 1000.0) * 1e9)} memfree_kb=1 pcp=0 pcp_high=14078 "
                            f"minflt={k} buddy=0")
    rec = record.build(run, {"qemu": "QEMU emulator version 7.2.22"},
                       {"accel": "tcg", "chosen_by": "--accel"}, {"modules": []})
    wf = rec["guest"]["worker_faults"]
    assert wf["t_s"] == pytest.approx([-0.1, 0.5, 2.0, 2.5, 7.0], abs=2e-3)
    assert wf["faults"] == [40, 100040, 262199, 262190, 262199]
    rec["config"].update(workload="phased", duration=20.0)
    sched = compare.guest_fault_schedule(rec)
    assert [k for _, k in sched] == [0, 100000, 262159, 262159, 262159]
    assert sched[0][0] == 0 and sched[1][0] == pytest.approx(0.5, abs=2e-3)
    cfg = compare.model_config(rec)
    assert cfg.blocks == "user" and cfg.page_rate == 0 and cfg.page_schedule == sched
    from launcher.cli import flags
    from shmalloc.machine import ConfigError
    with pytest.raises(ConfigError, match="no flag"):       # sweep --list cannot spell it
        flags.config_argv(cfg)
    assert "--page-schedule" not in flags.config_argv(replace(cfg, page_schedule=()))
    avg = compare.model_config(rec, compare.ModelChoices(rate="average"))
    assert avg.page_schedule == () and avg.page_rate == pytest.approx(262159 / 14, abs=0.1)
    rec["config"]["workers"] = 2
    assert [k for _, k in compare.guest_fault_schedule(rec)][1] == 50000


def test_the_heading_gives_what_each_round_took_from_its_guest_as_a_range():
    """Over rounds the pcp high mark and the fault rate come from each
    round's guest: the heading gives their range, not the first round's."""
    from launcher.experiment.config import RunConfig
    from launcher.vm import compare

    a = RunConfig(workload="phased", blocks="user", pcp_high=12243, page_rate=26817.0,
                  strategy="mainline").resolved()
    b = replace(a, pcp_high=13897, page_rate=34471.4)
    assert "pcp high 12243-13897 pages, user mappings at 26,817-34,471 faults/s" in \
        compare.describe(a, [a, b, a])
    assert "pcp high 12243 pages, user mappings at 26,817 faults/s" in compare.describe(a)
    c = replace(a, page_rate=0.0, page_schedule=((0.0, 0), (1.0, 10)))
    assert compare.describe(c, [c, replace(c, pcp_high=13897)]).endswith(
        "pcp high 12243-13897 pages, user mappings faulted as the guest's were")


def test_the_model_is_configured_as_the_guest_was():
    """vm compare's model: mainline with the guest kernel's constants, the
    order the guest used, reported when its reporter was idle, the host page
    its THP share says, its pcp high mark; user mappings at its fault rate
    for random and phased."""
    from launcher.experiment.config import default_host_pages
    from launcher.vm import compare

    rec = _canned_record()
    rec["guest"]["pcp_high_bytes"] = 54 << 20
    cfg = compare.model_config(rec)
    assert (cfg.strategy, cfg.capacity, cfg.delay, cfg.putback) == ("mainline", 32, 2.0, "tail")
    assert (cfg.workload, cfg.memory, cfg.hog_share, cfg.duration) == ("hog", 2 << 30, 0.5, 10)
    assert cfg.report_order == 9 and cfg.start == "reported"
    assert cfg.host_pages == default_host_pages(9)            # 2m where root can have it
    assert cfg.pcp_high == 54 << 8 and cfg.blocks == "buddy" and cfg.page_rate == 0
    assert compare.model_config(rec, compare.ModelChoices(pcp="default")).pcp_high == 378
    # the lists' lowest from the start to the free: what the workload could not use
    tl, freeing = rec["memory"]["timeline"], rec["memory"]["freeing_at_s"]
    tl["pcp_bytes"] = [7 << 20 if t < 0 else 6 << 20 if t <= freeing else 1 << 20
                       for t in tl["t_s"]]
    assert compare.guest_pcp_floor(rec) == 6 << 20
    assert compare.model_config(rec).pcp_high == (54 - 6) << 8
    assert compare.model_config(rec, compare.ModelChoices(pcp="high")).pcp_high == 54 << 8
    rec["guest"]["report_order_effective"] = 10             # what the guest really used
    rec["guest"]["start_state"]["idle"] = False
    rec["memory"]["anon_huge_share_at_max"] = 0.2
    cfg = compare.model_config(rec)
    assert (cfg.report_order, cfg.start, cfg.host_pages) == (10, "unreported", "4k")
    ph = _canned_record(workload="phased", duration=20.0)
    cfg = compare.model_config(ph)
    assert cfg.blocks == "user"                  # 262159 faults in 14 s (the idle 6 s aside)
    assert cfg.page_rate == pytest.approx(262159 / 14, abs=0.1)
    assert compare.model_config(ph, compare.ModelChoices(rate="full")).page_rate == 0
    assert compare.model_config(ph, compare.ModelChoices(blocks="buddy")).blocks == "buddy"


@pytest.mark.timeout(180)
def test_compare_a_recorded_guest_with_the_model(tmp_path):
    """vm compare --real: the model runs the recorded guest's workload (made
    small here: 512 MiB, 8 s), prints the table, writes the JSON with both
    runs, draws the plot; nothing is left behind."""
    pytest.importorskip("matplotlib")
    from launcher.output import results

    rec = _canned_record(memory=512 << 20, duration=8.0)    # its passes: 5 and 7 s in
    path = tmp_path / "guest.json"
    results.write(str(path), results.document([rec], {"command": "test"}))
    out, png = tmp_path / "compare.json", tmp_path / "compare.png"
    proc = start_shmalloc("vm", "compare", "--real", str(path), "--json", str(out),
                          "--plot", str(png))
    stdout, stderr = proc.communicate(timeout=170)
    assert proc.returncode == 0, stderr
    assert _left_by(proc.pid) == []
    lines = stdout.splitlines()
    assert lines[0].startswith("hog, report order 9: real guest (TCG, start idle) against the "
                               "model (mainline, report order 9, start reported, host pages")
    assert lines[1].split()[:4] == ["figure", "real", "guest", "model"]
    per_pass = next(line for line in lines if line.startswith("memory returned per pass"))
    assert "256.00 MiB" in per_pass                          # the canned guest's two passes
    assert "the model: mainline, report order 9" in stderr
    doc = json.loads(out.read_text())
    assert doc["format"] == "shmalloc-vm-compare" and list(doc["pairs"]) == ["hog, report order 9"]
    pair = doc["pairs"]["hog, report order 9"]
    assert pair["real"]["system"] == "qemu" and pair["model"]["system"] == "model"
    assert pair["model"]["start"] == "reported" and pair["model"]["memory"] == 512 << 20
    runs = doc["results"]["runs"]
    assert [r.get("system", "model") for r in runs] == ["qemu", "model"]
    assert runs[1]["outcome"] == "ok" and runs[1]["memory"]["released_bytes"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rounds_interleave_the_orders_and_the_two_systems(monkeypatch):
    """--rounds 2 at orders 9,10: guest 9, model 9, guest 10, model 10, then
    again; each pair knows its round; round r runs seed + r - 1 on both
    sides (the model takes the guest's), so the rounds sample the workload's
    draws as well as the machine's timing."""
    from launcher.vm import compare

    calls = []

    def guest(cfg, quiet):
        calls.append(("guest", cfg.report_order, cfg.seed))
        return _canned_record(report_order=cfg.report_order, seed=cfg.seed)

    def model(real, choices, quiet):
        calls.append(("model", real["config"]["report_order"], real["config"]["seed"]))
        return {"config": {}, "label": "model"}

    monkeypatch.setattr(compare, "execute_guest", guest)
    monkeypatch.setattr(compare, "run_model", model)
    cfg = GuestConfig(workload="phased", duration=20.0, seed=5)
    pairs = compare.execute(cfg, [9, 10], compare.ModelChoices(), quiet=True, rounds=2)
    assert calls == [(who, order, seed) for seed in (5, 6) for order in (9, 10)
                     for who in ("guest", "model")]
    assert [(p["round"], p["order"]) for p in pairs] == [(1, 9), (1, 10), (2, 9), (2, 10)]
    assert [[p["order"] for p in r] for r in compare.rounds_of(pairs)] == [[9, 10], [9, 10]]


def test_a_recorded_comparison_gives_its_rounds_back(tmp_path):
    """vm compare --real reads an earlier vm compare --json: its guests'
    runs, a round per run at each order, in the file's order; a file whose
    orders have unequal runs is refused, naming the counts."""
    from launcher.output import results
    from launcher.vm import compare
    from launcher.vm.host import VmUsageError

    guests = [_canned_record(report_order=o, seed=k) for k in (1, 2) for o in (9, 10)]
    model = {"config": {}, "memory": {}}
    doc = {"format": "shmalloc-vm-compare", "version": 1, "pairs": {},
           "results": results.document([x for g in guests for x in (g, model)], {})}
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(doc))
    rounds = compare.load_real(str(path), None)
    assert [[(r["config"]["report_order"], r["config"]["seed"]) for r in rnd]
            for rnd in rounds] == [[(9, 1), (10, 1)], [(9, 2), (10, 2)]]
    assert [[r["config"]["seed"] for r in rnd] for rnd in compare.load_real(str(path), [10])] \
        == [[1], [2]]
    doc["results"]["runs"].pop(0)                      # round 1's order-9 guest
    path.write_text(json.dumps(doc))
    with pytest.raises(VmUsageError, match="a round needs one run at each order, and it has "
                       "1 at order 9, 2 at order 10"):
        compare.load_real(str(path), None)
    assert_usage_error(shmalloc("vm", "compare", "--real", str(path), "--rounds", "2"),
                       "--rounds: with --real the rounds are the file's")
