"""One real-guest run: build, boot, wait for the start state, run, record.

Phases, each named for a signal's message (:mod:`launcher.interrupt`):

1. find the packages (:mod:`.host`), build the initramfs (:mod:`.initramfs`)
   and ask the workload program whether it takes the configuration;
2. choose the accelerator: ``--accel auto`` uses KVM when a probe boot (the
   same kernel and initramfs, saying hello and powering off) reaches the
   workload program within :data:`PROBE_TIMEOUT_S`, else TCG; the probe's
   verdict is kept in the cache folder for this host kernel, QEMU and guest
   kernel;
3. boot: QEMU starts, the guest must say hello within ``--boot-timeout``
   (else exit 3 with the console's last lines);
4. start state: with ``--start idle`` (the default) the guest waits until its
   reporter has gone idle after boot: the boot's free memory is reported in
   passes of ``budget`` reports every 2 s, about 16 s for a 2 GiB guest;
   ``--start boot`` starts at once, with the reporter still at work;
5. the workload runs ``--duration``; the host samples QEMU every
   ``--sample-interval``; the guest sends its samples and events;
6. the guest powers off; QEMU is stopped on every path (a signal stops it
   within a second).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time

from ..errors import RunAborted
from ..experiment import interrupt
from . import channel, host, initramfs, qemu, record
from .config import GuestConfig
from .sample import HostSampler

PROBE_TIMEOUT_S = 10.0
END_GRACE_S = 60.0            # after --duration: the workers free and the guest powers off
POWEROFF_S = 10.0


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"shmalloc vm: {text}", file=sys.stderr, flush=True)


def kernel_cmdline(cfg: GuestConfig, probe: bool = False) -> str:
    pairs = cfg.guest_pairs()
    if probe:
        pairs = {"probe": 1, "report_order": cfg.report_order}
    words = ["console=ttyS0", "panic=-1", "quiet",
             f"page_reporting.page_reporting_order={cfg.report_order}"]
    words += [f"shmguest.{k}={v}" for k, v in pairs.items()]
    return " ".join(words + ([cfg.append] if cfg.append else []))


# ---------------------------------------------------------------------------
# the accelerator
# ---------------------------------------------------------------------------

def _probe_key(tools: host.Tools) -> str:
    """What KVM's verdict depends on: the host kernel, QEMU, the guest kernel."""
    st = os.stat(tools.kernel)
    raw = json.dumps([platform.release(), tools.qemu, os.stat(tools.qemu).st_mtime,
                      tools.kernel, st.st_mtime, st.st_size])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def probe_kvm(tools: host.Tools, initrd: str, cfg: GuestConfig) -> dict:
    """Boot the guest under KVM until its workload program says hello."""
    work = qemu.workdir()
    q = qemu.Qemu(work)
    try:
        argv = qemu.command(tools.qemu, kernel=tools.kernel, initrd=initrd,
                            append=kernel_cmdline(cfg, probe=True).replace(" quiet", ""),
                            memory=256 << 20, vcpus=1, accel="kvm", console=q.console_path,
                            data_sock=q.sock_path, name=qemu.tag())
        t0 = time.monotonic()
        try:
            q.start(argv)
        except qemu.QemuFailed as e:
            return {"kvm_boots": False, "detail": str(e)}
        while time.monotonic() - t0 < PROBE_TIMEOUT_S and q.running():
            for _, line in q.lines(0.1):
                if line.startswith("H "):
                    return {"kvm_boots": True,
                            "detail": f"hello after {time.monotonic() - t0:.1f} s"}
        last = q.console_tail(1)
        said = f"last console line: {last[-1]!r}" if last else "the console stayed empty"
        return {"kvm_boots": False,
                "detail": f"no hello within {PROBE_TIMEOUT_S:g} s; {said}"}
    finally:
        q.stop()
        qemu.remove_workdir(work)


def choose_accel(cfg: GuestConfig, tools: host.Tools, initrd: str, quiet: bool) -> dict:
    if cfg.accel != "auto":
        return {"accel": cfg.accel, "chosen_by": "--accel"}
    if not host.kvm_device_usable():
        return {"accel": "tcg", "chosen_by": "auto: /dev/kvm is missing or not usable"}
    path = os.path.join(initramfs.cache_dir(), "kvm-probe.json")
    key = _probe_key(tools)
    try:
        with open(path) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    if key not in known:
        interrupt.enter("while probing KVM")
        _say(quiet, f"probing whether KVM boots a guest here (once; up to "
                    f"{PROBE_TIMEOUT_S:g} s)")
        known[key] = probe_kvm(tools, initrd, cfg)
        initramfs._atomic_write(path, json.dumps(known, indent=1).encode())
    res = known[key]
    accel = "kvm" if res["kvm_boots"] else "tcg"
    return {"accel": accel, "chosen_by": f"auto: KVM probe: {res['detail']}"}


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------

class GuestRun:
    """What one run collected; :mod:`.record` turns it into the RUN record."""

    def __init__(self, cfg: GuestConfig):
        self.cfg = cfg
        self.clock = channel.ClockMap()
        self.hello: dict = {}
        self.lines: dict[str, list] = {tag: [] for tag in "WSGPKEXF"}
        self.host: list[tuple[float, dict]] = []      # (host s, sample)
        self.marks: dict[str, float] = {}             # host times of the phases
        self.qemu_argv: list[str] = []
        self.exit_status: int | None = None

    def take(self, host_s: float, line: str) -> str | None:
        parsed = channel.parse(line)
        if parsed is None:
            return None
        tag, fields = parsed
        g = channel.guest_seconds(fields)
        if g is not None:
            self.clock.add(g, host_s)
            fields["_g"] = g
        if tag == "H":
            self.hello = fields
        else:
            self.lines[tag].append(fields)
        return tag


def execute(cfg: GuestConfig, quiet: bool = False) -> dict:
    """Run ``cfg`` in a real guest; returns the RUN record.  Raises
    :class:`~launcher.vm.host.VmUsageError` (exit 2) before anything runs,
    :class:`~launcher.proc.RunAborted` (exit 3) when the guest fails."""
    t_begin = time.monotonic()
    cfg = cfg.resolved()
    interrupt.enter("while looking for QEMU and the guest kernel")
    tools = host.find(cfg.kernel, cfg.modules)
    interrupt.enter("while building the initramfs")
    initrd, contents = initramfs.build(tools)
    initramfs.check_config(contents["program"], cfg.guest_pairs())
    t_built = time.monotonic()
    accel = choose_accel(cfg, tools, initrd, quiet)
    versions = host.versions(tools)
    t_accel = time.monotonic()
    run = GuestRun(cfg)
    work = qemu.workdir()
    q = qemu.Qemu(work)
    try:
        argv = qemu.command(tools.qemu, kernel=tools.kernel, initrd=initrd,
                            append=kernel_cmdline(cfg), memory=cfg.memory, vcpus=cfg.vcpus,
                            accel=accel["accel"], console=q.console_path,
                            data_sock=q.sock_path, name=qemu.tag())
        run.qemu_argv = argv
        interrupt.enter("while booting the guest")
        _say(quiet, f"booting {tools.release} under QEMU ({accel['accel'].upper()}), "
                    f"{cfg.memory >> 20} MiB, {cfg.vcpus} vCPU{'s' if cfg.vcpus > 1 else ''}, "
                    f"report order {cfg.report_order}")
        try:
            q.start(argv)
        except qemu.QemuFailed as e:
            if "cannot set up guest memory" in str(e):
                raise host.VmUsageError(f"--memory {cfg.memory >> 20}M: QEMU cannot give the "
                                        f"guest that much: {q.stderr_line()}") from None
            raise RunAborted(_with_console(str(e), e.console)) from None
        _watch(run, q, cfg, accel, quiet)
    finally:
        q.stop()
        run.exit_status = q.proc.returncode if q.proc is not None else None
        qemu.remove_workdir(work)
    run.marks.update(begin=t_begin, built=t_built, accel=t_accel, end=time.monotonic())
    return record.build(run, versions, accel, contents)


def _with_console(message: str, console: list[str]) -> str:
    if not console:
        return message + " (the console was empty)"
    return message + "; the console's last lines:\n" + "\n".join(f"    {x}" for x in console)


def _watch(run: GuestRun, q: qemu.Qemu, cfg: GuestConfig, accel: dict, quiet: bool) -> None:
    """Sample the host and read the guest until the guest has said ``X``
    and powered off."""
    sampler = HostSampler(q.pid, cfg.memory)
    interval = cfg.sample_interval
    next_sample = time.monotonic()
    phase = "boot"
    deadline = q.started_at + cfg.boot_timeout
    while True:
        now = time.monotonic()
        if now >= next_sample:
            s = sampler.sample()
            if s is not None:
                run.host.append((now, s))
            next_sample += interval
            if next_sample < now:
                next_sample = now + interval
        for host_s, line in q.lines(max(0.0, next_sample - time.monotonic())):
            tag = run.take(host_s, line)
            if tag == "F":
                raise RunAborted(_with_console(f"the guest failed: "
                                               f"{run.lines['F'][-1]['message']}",
                                               q.console_tail()))
            if tag == "H" and phase == "boot":
                run.marks["hello"] = host_s
                phase = "settle"
                deadline = host_s + cfg.settle_timeout + 30
                interrupt.enter("while waiting for the guest's reporter to go idle")
                if cfg.start == "idle":
                    _say(quiet, f"guest up after {host_s - q.started_at:.1f} s; waiting for its "
                                "reporter to go idle (its start state after boot)")
            elif tag == "S":
                run.marks["start"] = host_s
                phase = "run"
                deadline = host_s + cfg.duration + END_GRACE_S
                interrupt.enter("while the guest runs its workload")
                _say(quiet, f"running {cfg.workload} for {cfg.duration:g} s")
            elif tag == "X":
                run.marks["x"] = host_s
                phase = "poweroff"
                deadline = host_s + POWEROFF_S
                interrupt.enter("while the guest powers off")
        if not q.running():
            if phase == "poweroff":
                return
            what = {"boot": "before the guest came up", "settle": "before the workload began",
                    "run": "during the workload"}[phase]
            raise RunAborted(_with_console(f"QEMU exited (status {q.proc.returncode}) {what}",
                                           q.console_tail()))
        if time.monotonic() > deadline:
            if phase == "poweroff":
                return                       # the data is in; stop() ends QEMU
            if phase == "boot":
                raise RunAborted(_with_console(
                    f"the guest did not come up within --boot-timeout {cfg.boot_timeout:g} s "
                    f"({accel['accel'].upper()})", q.console_tail()))
            raise RunAborted(_with_console(f"the guest stopped answering ({phase})",
                                           q.console_tail()))
