"""Finding the IPC objects a test leaves behind, message queues included.

Shared memory and semaphores live in /dev/shm and are listed.  Message
queues are listed in /dev/mqueue only where the mqueue filesystem is mounted
there (:func:`mount_mqueue` mounts it when running as root); everywhere
else a queue can only be found by name.  Every queue a run creates is named
after its run id (``/shmalloc-<run id>-report`` and ``-ack``), and every run
that creates queues first creates its shared-memory objects, so the run ids
of a test are the ids in the names of the /dev/shm objects created while it
ran.  Those objects may come and go between the test's start and end, so
:class:`ShmCreations` watches /dev/shm with inotify and sees every one.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import struct
import subprocess

import posix_ipc

from shmalloc import shm

_NAME_RE = re.compile(r"^(?:sem\.)?shmalloc-(?P<run>\d+-[0-9a-f]{6})-[a-z0-9_]+$")

IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")          # wd, mask, cookie, len (struct inotify_event)


def mqueue_mounted() -> bool:
    """Is the mqueue filesystem mounted at /dev/mqueue in this mount namespace?"""
    with open("/proc/self/mounts") as f:
        return any(line.split()[1:3] == [shm.MQUEUE_DIR, "mqueue"] for line in f)


def mount_mqueue() -> str:
    """Mount the mqueue filesystem at /dev/mqueue when running as root and it
    is missing, so leaked queues can be listed; says what it did."""
    if mqueue_mounted():
        return "mounted"
    if os.geteuid() != 0:
        return "not mounted (not root): queues are checked by name"
    created = not os.path.isdir(shm.MQUEUE_DIR)
    try:
        os.makedirs(shm.MQUEUE_DIR, exist_ok=True)
        res = subprocess.run(["mount", "-t", "mqueue", "none", shm.MQUEUE_DIR],
                             capture_output=True, text=True)
    except OSError as e:
        return f"not mounted ({e}): queues are checked by name"
    if res.returncode != 0 or not mqueue_mounted():
        if created:
            _rmdir(shm.MQUEUE_DIR)
        return f"not mounted ({res.stderr.strip()}): queues are checked by name"
    _MOUNTED.append(created)
    return "mounted by the test session"


#: what mount_mqueue did, for unmount_mqueue: [created the directory too]
_MOUNTED: list[bool] = []


def unmount_mqueue() -> None:
    """Unmount what mount_mqueue mounted.  The directory stays, even one
    this session made: removing a mount point detaches whatever is mounted
    on it in every other mount namespace too (Linux >= 3.18), so a session
    that ended beside another one took the other's workers' /dev/mqueue with
    it (their check that the session mounted it failed, and their leak
    fixture could no longer list queues).  An empty directory on devtmpfs
    harms nothing and is gone at the next boot."""
    while _MOUNTED:
        _MOUNTED.pop()
        subprocess.run(["umount", shm.MQUEUE_DIR], capture_output=True)


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def run_id_of(name: str) -> str | None:
    """The run id in an object name ('sem.shmalloc-12-abcdef-zone0' ->
    '12-abcdef'), or None for a name that is not a run's."""
    m = _NAME_RE.match(os.path.basename(name.lstrip("/")))
    return m["run"] if m else None


def listed_objects() -> set[str]:
    """Paths of every shmalloc object listed in /dev/shm (and /dev/mqueue if
    it is mounted).  A guest on huge host pages is a directory there with a
    tmpfs mounted on it (:mod:`shmalloc.shm`); a mount point cannot be
    removed while mounted, so a mount left behind is always listed."""
    found = set()
    for d in (shm.SHM_DIR, shm.MQUEUE_DIR):
        try:
            found |= {os.path.join(d, e) for e in os.listdir(d) if "shmalloc" in e}
        except OSError:
            pass
    return found


def queues_by_name(run_ids) -> set[str]:
    """Names of the message queues of ``run_ids`` that exist, found by
    opening each possible name (no /dev/mqueue needed)."""
    found = set()
    for run_id in run_ids:
        for role in shm.MQ_ROLES:
            name = shm.object_name(run_id, role)
            try:
                posix_ipc.MessageQueue(name).close()
            except posix_ipc.ExistentialError:
                continue
            except posix_ipc.PermissionsError:
                pass                         # it exists, whoever owns it
            found.add(name)
    return found


class ShmCreations:
    """Every name created in /dev/shm from now on (inotify IN_CREATE)."""

    def __init__(self, path: str = shm.SHM_DIR):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(self.fd, path.encode(), IN_CREATE | IN_MOVED_TO) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch({path}) failed")
        self.names: set[str] = set()
        self.overflowed = False

    def poll(self) -> set[str]:
        """Read what has queued up; returns every name seen so far."""
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            pos = 0
            while pos < len(buf):
                _, mask, _, length = _EVENT.unpack_from(buf, pos)
                pos += _EVENT.size
                if mask & IN_Q_OVERFLOW:
                    self.overflowed = True
                name = buf[pos:pos + length].rstrip(b"\0").decode(errors="replace")
                pos += length
                if name:
                    self.names.add(name)
        return self.names

    def close(self) -> None:
        os.close(self.fd)


# ---------------------------------------------------------------------------
# A private IPC namespace per test process (pytest-xdist workers)
# ---------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REC = 0x4000
MS_PRIVATE = 0x40000


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def private_ipc_namespace() -> None:
    """Give this process, and every process it starts, a /dev/shm and
    message queues of its own: a new mount and IPC namespace (unshare(2))
    with a fresh tmpfs on /dev/shm (the size of the one it hides) and, where
    /dev/mqueue exists, the new namespace's mqueue filesystem on it.

    Two test processes running side by side then never see each other's
    runs: the leak fixture's before/after listing and ``shmalloc cleanup``
    see only their own.  Mounts are made private first, so nothing
    propagates back to the machine, and they go with the namespace when the
    last process in it exits.  Root only (CAP_SYS_ADMIN); call it from the
    main thread before starting anything (namespaces are per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = os.statvfs(shm.SHM_DIR)
    size = size.f_blocks * size.f_frsize
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    _check(libc.mount(b"tmpfs", shm.SHM_DIR.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                      f"mode=1777,size={size}".encode()), f"tmpfs on {shm.SHM_DIR}")
    if os.path.isdir(shm.MQUEUE_DIR):
        _check(libc.mount(b"mqueue", shm.MQUEUE_DIR.encode(), b"mqueue", MS_NOSUID | MS_NODEV,
                          None), f"mqueue on {shm.MQUEUE_DIR}")


def can_make_namespaces() -> bool:
    """Can this process create a mount and IPC namespace (tried in a
    forked child, which exits at once)?"""
    if os.geteuid() != 0 or not hasattr(os, "fork"):
        return False
    pid = os.fork()
    if pid == 0:                                    # the child: try, and say
        libc = ctypes.CDLL(None, use_errno=True)
        os._exit(0 if libc.unshare(CLONE_NEWNS | CLONE_NEWIPC) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
