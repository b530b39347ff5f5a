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
"""

from __future__ import annotations

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
    try:
        posix_ipc.unlink_shared_memory(name)
        return True
    except posix_ipc.ExistentialError:
        return False


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
