"""Named IPC objects of a run: shared memory, semaphores, message queues.

Every object a run creates is named ``/shmalloc-<run id>-<role>`` and the run
id starts with the creator's pid (``<pid>-<6 hex digits>``), so each object
says who made it.  Objects are created with ``O_CREAT | O_EXCL`` and mode
0600; others attach with size 0 (attaching with a size would resize the object
under everyone's feet).  The metadata objects start with a 64-byte header
(magic, format version, creator pid and start time, payload size); attaching
refuses an object owned by another user or one without our magic and version.

``multiprocessing.shared_memory`` is never used on these objects: its resource
tracker unlinks what it thinks it owns.

:func:`cleanup` removes the objects of runs whose creator is gone (pid not
running, or running with another start time, i.e. a recycled pid) and never a
live run's.

**Guest memory on huge host pages** (``--host-pages 2m``).  POSIX shared
memory lives in the ``/dev/shm`` tmpfs, which gets transparent huge pages
only when it was mounted with ``huge=`` (it is not, here) or the kernel
forces it (``shmem_enabled`` ``force``; ``always``/``advise`` there govern
only the kernel's internal mount, behind ``MAP_SHARED | MAP_ANONYMOUS`` and
memfd).  So such a guest gets a tmpfs of its own, mounted ``huge=always``
(mount(2): root, or CAP_SYS_ADMIN), on a directory that carries the
object's name: ``/dev/shm/shmalloc-<run id>-guest/`` holds one file,
``memory``.  Everything the names promise still holds: the run id is in the
directory's name, so :func:`list_runs` and :func:`cleanup` find it like any
object (cleanup unmounts it, lazily, and removes the directory), a process
attaches by the same name (:meth:`SharedObject.attach_huge`), ``mkdir`` is
exclusive as ``O_CREAT | O_EXCL`` is, and a mount made inside a private
mount namespace (the test suite's, ``tests/leaks.py``) goes with it.  The
mount is sized to the guest and detached (``MNT_DETACH``) when the object is
unlinked: its memory goes back to the host once the last process unmaps it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import secrets
import time
from dataclasses import dataclass, field

import numpy as np
import posix_ipc

PREFIX = "shmalloc"
SHM_DIR = "/dev/shm"
MQUEUE_DIR = "/dev/mqueue"
MODE = 0o600
#: Message-queue roles a run may create (cleanup tries these even when
#: /dev/mqueue is not mounted and queues cannot be listed).
MQ_ROLES = ("report", "ack")

HEADER_MAGIC = b"SHMALLOC"
HEADER_VERSION = 1
HEADER_SIZE = 64
HEADER_DTYPE = np.dtype([
    ("magic", "S8"), ("version", "<u4"), ("header_size", "<u4"),
    ("creator_pid", "<i8"), ("creator_start", "<i8"), ("payload_size", "<i8"),
    ("created_unix", "<f8"), ("role", "S16"),
])
assert HEADER_DTYPE.itemsize <= HEADER_SIZE

#: the file inside a huge guest's own tmpfs (see the module docstring)
HUGE_FILE = "memory"
#: the kernel's THP switches; "deny" keeps huge pages from every tmpfs,
#: "force" gives them to every tmpfs (/dev/shm included)
SHMEM_ENABLED = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2
CAP_SYS_ADMIN = 21

_libc = ctypes.CDLL(None, use_errno=True)

_NAME_RE = re.compile(r"^(?P<sem>sem\.)?" + PREFIX
                      + r"-(?P<pid>\d+)-(?P<tag>[0-9a-f]{6})-(?P<role>[a-z0-9_]+)$")


class IPCError(Exception):
    """A named object could not be created, attached or trusted."""


def new_run_id() -> str:
    return f"{os.getpid()}-{secrets.token_hex(3)}"


def object_name(run_id: str, role: str) -> str:
    return f"/{PREFIX}-{run_id}-{role}"


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])


def _check_owner(st: os.stat_result, name: str) -> None:
    if st.st_uid != os.geteuid():
        raise IPCError(f"{name} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); "
                       "refusing to attach")


@dataclass
class SharedObject:
    """A mapped POSIX shared-memory object, with an optional header."""

    name: str
    fd: int
    size: int
    mm: mmap.mmap
    header: np.ndarray | None = None
    payload_offset: int = 0
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, name: str, payload_size: int, role: str, with_header: bool = True
               ) -> SharedObject:
        total = payload_size + (HEADER_SIZE if with_header else 0)
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=MODE, size=total)
        except posix_ipc.ExistentialError as e:
            raise IPCError(f"{name} already exists") from e
        except (OSError, ValueError) as e:
            raise IPCError(f"cannot create {name}: {e}") from e
        fd = shm.fd
        try:
            mm = mmap.mmap(fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            os.close(fd)
            posix_ipc.unlink_shared_memory(name)
            raise IPCError(f"cannot map {name} ({total} bytes): {e}") from e
        obj = cls(name, fd, total, mm, None, HEADER_SIZE if with_header else 0)
        if with_header:
            hdr = np.frombuffer(mm, HEADER_DTYPE, count=1, offset=0)
            hdr["magic"] = HEADER_MAGIC
            hdr["version"] = HEADER_VERSION
            hdr["header_size"] = HEADER_SIZE
            hdr["creator_pid"] = os.getpid()
            hdr["creator_start"] = process_start_time(os.getpid()) or 0
            hdr["payload_size"] = payload_size
            hdr["created_unix"] = time.time()
            hdr["role"] = role.encode()
            obj.header = hdr
        return obj

    @classmethod
    def attach(cls, name: str, with_header: bool = True) -> SharedObject:
        try:
            shm = posix_ipc.SharedMemory(name)          # flags 0, size 0: never resize
        except posix_ipc.ExistentialError as e:
            raise IPCError(f"{name} does not exist") from e
        except posix_ipc.PermissionsError as e:
            raise IPCError(f"{name}: permission denied") from e
        except (posix_ipc.Error, OSError) as e:        # e.g. a huge guest's directory
            raise IPCError(f"cannot open {name} as shared memory: {e}") from e
        fd = shm.fd
        try:
            st = os.fstat(fd)
            _check_owner(st, name)
            total = st.st_size
            if with_header and total < HEADER_SIZE:
                raise IPCError(f"{name} is too small to be a shmalloc object")
            mm = mmap.mmap(fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        obj = cls(name, fd, total, mm, None, HEADER_SIZE if with_header else 0)
        if with_header:
            hdr = np.frombuffer(mm, HEADER_DTYPE, count=1, offset=0)
            if bytes(hdr["magic"][0]) != HEADER_MAGIC:
                obj.close()
                raise IPCError(f"{name} was not made by shmalloc (bad magic); refusing to attach")
            if int(hdr["version"][0]) != HEADER_VERSION:
                obj.close()
                raise IPCError(f"{name} has format version {int(hdr['version'][0])}, "
                               f"this shmalloc reads version {HEADER_VERSION}")
            obj.header = hdr
        return obj

    @classmethod
    def create_huge(cls, name: str, size: int) -> SharedObject:
        """A guest memory object of ``size`` bytes on a tmpfs of its own,
        mounted ``huge=always`` (see the module docstring); no header.  On
        any failure nothing is left: no directory, no mount."""
        mnt = huge_mount_point(name)
        try:
            os.mkdir(mnt, 0o700)                         # exclusive, as O_CREX
        except FileExistsError as e:
            raise IPCError(f"{name} already exists") from e
        except OSError as e:
            raise IPCError(f"cannot create {mnt}: {e.strerror}") from e
        mounted, fd = False, -1
        try:
            opts = f"huge=always,size={size},nr_inodes=8,mode=0700"
            if _libc.mount(b"tmpfs", mnt.encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                           opts.encode()) != 0:
                err = ctypes.get_errno()
                raise IPCError(f"cannot mount a huge tmpfs on {mnt}: {os.strerror(err)}")
            mounted = True
            fd = os.open(os.path.join(mnt, HUGE_FILE), os.O_RDWR | os.O_CREAT | os.O_EXCL,
                         MODE)
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException as e:
            if fd >= 0:
                os.close(fd)
            if mounted:
                _libc.umount2(mnt.encode(), MNT_DETACH)
            try:
                os.rmdir(mnt)
            except OSError:
                pass                  # what cannot be removed, cleanup names later
            if isinstance(e, OSError):
                raise IPCError(f"cannot create {name} on a huge tmpfs: {e}") from e
            raise
        return cls(name, fd, size, mm, None, 0)

    @classmethod
    def attach_huge(cls, name: str) -> SharedObject:
        """Map a guest memory object made by :meth:`create_huge`."""
        path = os.path.join(huge_mount_point(name), HUGE_FILE)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError as e:
            raise IPCError(f"{name} does not exist") from e
        except OSError as e:
            raise IPCError(f"cannot open {path}: {e.strerror}") from e
        try:
            st = os.fstat(fd)
            _check_owner(st, name)
            mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd, st.st_size, mm, None, 0)

    def array(self, dtype, count: int | None = None, offset: int = 0) -> np.ndarray:
        """A numpy view of the payload (shares the mapping)."""
        n = -1 if count is None else count
        return np.frombuffer(self.mm, dtype, count=n, offset=self.payload_offset + offset)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.header = None
        try:
            self.mm.close()
        except BufferError:
            pass     # numpy views still alive somewhere; the mapping goes with them
        try:
            os.close(self.fd)
        except OSError:
            pass


def unlink_shm(name: str) -> bool:
    """Remove a shared-memory object's name; a huge guest's directory is
    unmounted (lazily: its memory goes once nobody maps it) and removed."""
    if os.path.isdir(huge_mount_point(name)):
        return unmount_huge(huge_mount_point(name))
    try:
        posix_ipc.unlink_shared_memory(name)
        return True
    except posix_ipc.ExistentialError:
        return False


def huge_mount_point(name: str) -> str:
    """Where the huge tmpfs of guest memory object ``name`` is mounted."""
    return os.path.join(SHM_DIR, name.lstrip("/"))


def mounted_at(path: str) -> bool:
    """Is something mounted on ``path`` in this mount namespace?"""
    path = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f)
    except OSError:
        return False


def unmount_huge(mnt: str) -> bool:
    """Detach the huge tmpfs on ``mnt`` (if any) and remove the directory."""
    while mounted_at(mnt):                      # a run killed twice may have stacked two
        if _libc.umount2(mnt.encode(), MNT_DETACH) != 0:
            break
    try:
        os.rmdir(mnt)
        return True
    except OSError:                             # gone already, or still mounted (no root)
        return False


def huge_tmpfs_problem() -> str | None:
    """Why guest memory cannot have 2 MiB huge pages here (one line), or
    None: the kernel must have transparent huge pages for tmpfs, not
    denied, and this process must be allowed to mount(2)."""
    try:
        with open(SHMEM_ENABLED) as f:
            setting = f.read()
    except OSError:
        return "this kernel has no transparent huge pages for tmpfs (no " + SHMEM_ENABLED + ")"
    if "[deny]" in setting:
        return f"{SHMEM_ENABLED} is deny: no tmpfs gets huge pages"
    if not has_cap_sys_admin():
        return ("mounting a tmpfs with huge=always needs root (CAP_SYS_ADMIN); without it "
                "use --host-pages 4k")
    return None


def shm_gets_huge_pages() -> str | None:
    """Why objects in /dev/shm itself would get huge pages (so a 4 KiB host
    page would be a fiction), or None: ``shmem_enabled`` ``force``, or
    /dev/shm mounted with a ``huge=`` other than never."""
    try:
        with open(SHMEM_ENABLED) as f:
            if "[force]" in f.read():
                return f"{SHMEM_ENABLED} is force: every tmpfs gets huge pages"
    except OSError:
        return None
    want = os.path.realpath(SHM_DIR)
    try:
        with open("/proc/self/mountinfo") as f:
            lines = [line.split() for line in f]
    except OSError:
        return None
    opts = [ln[ln.index("-") + 3] for ln in lines if ln[4] == want and "-" in ln]
    if opts:                                    # the last mount on it is the one seen
        huge = [o for o in opts[-1].split(",") if o.startswith("huge=")]
        if huge and huge[0] != "huge=never":
            return f"{SHM_DIR} is mounted with {huge[0]}"
    return None


def has_cap_sys_admin() -> bool:
    """Does this process hold CAP_SYS_ADMIN (mount(2))?"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def create_semaphore(name: str, value: int = 1) -> posix_ipc.Semaphore:
    try:
        return posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=MODE, initial_value=value)
    except posix_ipc.ExistentialError as e:
        raise IPCError(f"semaphore {name} already exists") from e


def open_semaphore(name: str) -> posix_ipc.Semaphore:
    path = os.path.join(SHM_DIR, "sem." + name.lstrip("/"))
    try:
        _check_owner(os.stat(path), name)
    except FileNotFoundError as e:
        raise IPCError(f"semaphore {name} does not exist") from e
    try:
        return posix_ipc.Semaphore(name)
    except posix_ipc.ExistentialError as e:
        raise IPCError(f"semaphore {name} does not exist") from e


def unlink_semaphore(name: str) -> bool:
    try:
        posix_ipc.unlink_semaphore(name)
        return True
    except posix_ipc.ExistentialError:
        return False


def unlink_message_queue(name: str) -> bool:
    try:
        posix_ipc.unlink_message_queue(name)
        return True
    except posix_ipc.ExistentialError:
        return False


# ---------------------------------------------------------------------------
# Listing and cleanup
# ---------------------------------------------------------------------------

@dataclass
class RunObjects:
    run_id: str
    pid: int
    shm: list[str] = field(default_factory=list)
    sems: list[str] = field(default_factory=list)
    mqueues: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return self.shm + self.sems + self.mqueues


def list_runs() -> dict[str, RunObjects]:
    """Every shmalloc object of this user in /dev/shm (and /dev/mqueue if
    mounted)."""
    runs: dict[str, RunObjects] = {}

    def note(entry: str, kind: str) -> None:
        m = _NAME_RE.match(entry)
        if not m:
            return
        try:                                   # other users' runs are not ours to judge
            if os.stat(os.path.join(MQUEUE_DIR if kind == "mq" else SHM_DIR,
                                    entry)).st_uid != os.geteuid():
                return
        except OSError:
            return
        run_id = f"{m['pid']}-{m['tag']}"
        run = runs.setdefault(run_id, RunObjects(run_id, int(m["pid"])))
        name = object_name(run_id, m["role"])
        if kind == "mq":
            run.mqueues.append(name)
        elif m["sem"]:
            run.sems.append(name)
        else:
            run.shm.append(name)

    for entry in _listdir(SHM_DIR):
        note(entry, "shm")
    for entry in _listdir(MQUEUE_DIR):
        note(entry, "mq")
    return runs


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def run_creator_alive(run: RunObjects) -> bool:
    """Is the process that created ``run`` still running?

    The pid comes from the names; the start time from the metadata header
    when it can be read, so a recycled pid does not keep a dead run's objects.
    """
    start_now = process_start_time(run.pid)
    if start_now is None:
        return False
    # the zones object is created first and carries the run's header
    for name in sorted(run.shm, key=lambda n: not n.endswith("-zones")):
        try:
            obj = SharedObject.attach(name)
        except IPCError:
            continue
        try:
            if int(obj.header["creator_pid"][0]) == run.pid:
                recorded = int(obj.header["creator_start"][0])
                return recorded == 0 or recorded == start_now
        finally:
            obj.close()
    return True     # no readable header: trust the pid alone, never remove a live run


def remove_run(run: RunObjects) -> list[str]:
    removed = []
    for name in run.shm:
        if unlink_shm(name):
            removed.append(name)
    for name in run.sems:
        if unlink_semaphore(name):
            removed.append(name)
    mqs = set(run.mqueues) | {object_name(run.run_id, r) for r in MQ_ROLES}
    for name in sorted(mqs):
        if unlink_message_queue(name):
            removed.append(name)
    return removed


def cleanup(dry_run: bool = False) -> tuple[list[str], list[str]]:
    """Remove the objects of dead runs.  Returns (removed names, live run ids)."""
    removed, live = [], []
    for run in list_runs().values():
        if run_creator_alive(run):
            live.append(run.run_id)
        elif dry_run:
            removed.extend(run.names)
        else:
            removed.extend(remove_run(run))
    return removed, live


def shm_free_bytes() -> int:
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize
