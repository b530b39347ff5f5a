"""One QEMU process: its command line, its data channel, and its end.

A guest is ``qemu-system-x86_64`` with the distribution kernel, the
initramfs (:mod:`.initramfs`) and ``-device
virtio-balloon-pci,free-page-reporting=on``; the first serial port (the
console) goes to a file, the second (the workload program's data) to a Unix
socket this process listens on before QEMU starts, so no line is lost.

QEMU is the launcher's child like a worker: it dies with the launcher
(``PR_SET_PDEATHSIG``), sits in a session of its own (a terminal's Ctrl-C
goes to the launcher, which decides), and :meth:`Qemu.stop` ends it within a
second (SIGTERM, then SIGKILL after :data:`TERM_GRACE_S`).  Its ``-name``
carries ``shmalloc-vm-<launcher pid>-<launcher start time>``, so
:func:`cleanup` (``shmalloc cleanup``) finds a QEMU whose launcher is gone
and stops it, and never one of a live run or of another user.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from shmalloc._libc import die_with_parent
from shmalloc.shm import process_start_time

from ..experiment import interrupt

TAG_PREFIX = "shmalloc-vm-"
PROCESS_NAME = "shmalloc-vm"
TERM_GRACE_S = 0.4           # SIGTERM, then SIGKILL: stopped well within a second
CONNECT_TIMEOUT_S = 10.0     # QEMU connects its data channel at startup
_TAG_RE = re.compile(rf"guest={TAG_PREFIX}(\d+)-(\d+)\b")


def tag(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{TAG_PREFIX}{pid}-{process_start_time(pid)}"


def accel_args(accel: str) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def command(qemu: str, *, kernel: str, initrd: str, append: str, memory: int, vcpus: int,
            accel: str, console: str, data_sock: str, name: str) -> list[str]:
    """QEMU's argv for one guest."""
    return [qemu, "-name", f"guest={name},process={PROCESS_NAME}",
            "-machine", "pc", *accel_args(accel),
            "-m", f"{memory >> 20}M", "-smp", str(vcpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            "-no-reboot",
            "-chardev", f"file,id=con,path={console}", "-serial", "chardev:con",
            "-chardev", f"socket,id=data,path={data_sock}", "-serial", "chardev:data",
            "-kernel", kernel, "-initrd", initrd, "-append", append,
            "-device", "virtio-balloon-pci,free-page-reporting=on"]


class QemuFailed(Exception):
    """QEMU exited or never connected; ``console`` holds its last lines."""

    def __init__(self, message: str, console: list[str]):
        super().__init__(message)
        self.console = console


class Qemu:
    """QEMU and its two serial ports; :meth:`stop` on every path."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.console_path = os.path.join(workdir, "console.log")
        self.sock_path = os.path.join(workdir, "data.sock")
        self.proc: subprocess.Popen | None = None
        self.conn: socket.socket | None = None
        self._buf = b""
        self.started_at = 0.0
        self.stderr_path = os.path.join(workdir, "qemu.stderr")

    def start(self, argv: list[str]) -> None:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(self.sock_path)
        srv.listen(1)
        try:
            with interrupt.deferred(), open(self.stderr_path, "wb") as err:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=err,
                                             preexec_fn=die_with_parent, start_new_session=True)
                self.started_at = time.monotonic()
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while True:
                ready, _, _ = select.select([srv], [], [], 0.05)
                if ready:
                    self.conn, _ = srv.accept()
                    self.conn.setblocking(False)
                    return
                if self.proc.poll() is not None:
                    raise QemuFailed(f"QEMU exited with status {self.proc.returncode} at start: "
                                     f"{self.stderr_line()}", self.console_tail())
                if time.monotonic() > deadline:
                    raise QemuFailed(f"QEMU did not open its data channel within "
                                     f"{CONNECT_TIMEOUT_S:g} s", self.console_tail())
        finally:
            srv.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def lines(self, timeout: float) -> list[tuple[float, str]]:
        """The data channel's complete lines that arrive within ``timeout``
        seconds (returns at the first batch), each with the host's
        CLOCK_MONOTONIC when it was read."""
        if self.conn is None:
            time.sleep(max(timeout, 0))
            return []
        ready, _, _ = select.select([self.conn], [], [], max(timeout, 0))
        if not ready:
            return []
        now = time.monotonic()
        try:
            chunk = self.conn.recv(1 << 16)
        except BlockingIOError:
            return []
        if not chunk:                  # QEMU closed the channel (it is exiting)
            self.conn.close()
            self.conn = None
            return []
        self._buf += chunk
        *done, self._buf = self._buf.split(b"\n")
        return [(now, line.decode("ascii", "replace").rstrip("\r")) for line in done]

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """End QEMU now (SIGTERM, then SIGKILL) and close the channel."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def console_tail(self, n: int = 12) -> list[str]:
        try:
            with open(self.console_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.console_path) - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        lines = [x.rstrip("\r") for x in text.splitlines() if x.strip()]
        return lines[-n:]

    def stderr_line(self) -> str:
        try:
            with open(self.stderr_path, errors="replace") as f:
                lines = [x.strip() for x in f if x.strip()]
        except OSError:
            return ""
        return lines[-1] if lines else ""


def workdir() -> str:
    """A private folder for one guest's console and socket, named after
    this launcher so that :func:`cleanup` can tell whose it is."""
    return tempfile.mkdtemp(prefix=f"{tag()}-")


def remove_workdir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------
# leftovers
# ---------------------------------------------------------------------------

def _creator_alive(pid: int, start: int) -> bool:
    return process_start_time(pid) == start


def leftovers() -> list[tuple[int, str, bool]]:
    """This user's shmalloc QEMUs: (pid, tag, launcher alive)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.geteuid():
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == b"-name":
                m = _TAG_RE.search(argv[i + 1].decode(errors="replace"))
                if m:
                    pid, start = int(m.group(1)), int(m.group(2))
                    found.append((int(entry), f"{TAG_PREFIX}{pid}-{start}",
                                  _creator_alive(pid, start)))
    return found


def _dead_workdirs() -> list[str]:
    tmp = tempfile.gettempdir()
    out = []
    for name in os.listdir(tmp):
        m = re.match(rf"{TAG_PREFIX}(\d+)-(\d+)-", name)
        path = os.path.join(tmp, name)
        if m and os.path.isdir(path) and os.stat(path).st_uid == os.geteuid() \
                and not _creator_alive(int(m.group(1)), int(m.group(2))):
            out.append(path)
    return out


def cleanup(dry_run: bool = False, say=None) -> tuple[list[str], int]:
    """Stop the QEMUs whose launcher is gone and remove their folders;
    ``say`` gets a line for each and a total when there was any guest.
    Returns (what was stopped or removed, live guests left alone)."""
    done, live = [], 0
    for pid, name, alive in leftovers():
        if alive:
            live += 1
            continue
        if not dry_run:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        done.append(f"QEMU pid {pid} ({name})")
    if not dry_run:
        _reap_wait([pid for pid, _, alive in leftovers() if not alive])
    stopped = len(done)
    for path in _dead_workdirs():
        if not dry_run:
            remove_workdir(path)
        done.append(path)
    if say is not None and (done or live):
        stop, remove = ("would stop", "would remove") if dry_run else ("stopped", "removed")
        for i, what in enumerate(done):
            say(f"{stop if i < stopped else remove} {what}")
        say(f"{stop} {stopped} QEMU of dead shmalloc vm runs; {live} live guest(s) left alone")
    return done, live


def _reap_wait(pids: list[int], timeout: float = 2.0) -> None:
    """Wait until the killed QEMUs are gone from /proc (another process
    reaps them; a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                break
            if state == b"Z":
                break
            time.sleep(0.01)
