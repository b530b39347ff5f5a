"""Named objects: creation, attaching, refusing, and cleanup of dead runs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import posix_ipc
import pytest
from procs import killed_creator_run_id

from shmalloc import invariants, shm
from shmalloc.machine import Machine, MachineConfig
from shmalloc.shm import IPCError


def test_objects_are_named_private_and_exclusive(make_machine):
    m = make_machine()
    names = m.object_names()
    assert {n.rsplit("-", 1)[1] for n in names} == {"zones", "frames", "guest", "zone0", "wake"}
    for n in names:
        assert n.startswith(f"/shmalloc-{m.run_id}-")
        path = f"/dev/shm/{'sem.' if n[-5:] in ('zone0', '-wake') else ''}{n[1:]}"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert m.run_id.split("-")[0] == str(os.getpid())
    with pytest.raises(IPCError, match="already exists"):
        Machine.create(MachineConfig(memory=16 << 20), run_id=m.run_id)
    assert sorted(m.object_names()) == sorted(names)    # the failed create removed nothing


def test_attach_from_an_unrelated_process(make_machine):
    """A process that is not a fork child attaches by run id with its own
    sem_t pointers, allocates and frees through the same zone lock."""
    m = make_machine(zones=2, workers=1)
    held = m.alloc(4)
    code = textwrap.dedent(f"""
        from shmalloc.machine import Machine
        from shmalloc.layout import ROLE_WORKER
        m = Machine.attach({m.run_id!r})
        m.bind(0, ROLE_WORKER)
        pfns = [m.alloc(0) for _ in range(100)] + [m.alloc(5)]
        for p in pfns[:-1]:
            m.free(p, 0)
        m.drain_pcp(0)
        print(pfns[-1])
        m.close()
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    p5 = int(out.stdout)
    assert invariants.check(m, held={m.control_agent: [(held, 4)], 0: [(p5, 5)]}) == []


#: giving an object to another user takes root (fchown)
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root: makes an object another user's (fchown)")


@needs_root
def test_attach_refuses_another_users_objects(make_machine):
    m = make_machine()
    fd = os.open(f"/dev/shm/{m.object_names()[0][1:]}", os.O_RDWR)
    try:
        os.fchown(fd, 4242, -1)
        with pytest.raises(IPCError, match="owned by uid 4242"):
            Machine.attach(m.run_id)
    finally:
        os.fchown(fd, os.geteuid(), -1)
        os.close(fd)


def test_attach_refuses_foreign_objects(make_machine):
    # not made by shmalloc: no magic
    name = shm.object_name(f"{os.getpid()}-abcdef", "zones")
    obj = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=4096)
    os.close(obj.fd)
    try:
        with pytest.raises(IPCError, match="not made by shmalloc"):
            shm.SharedObject.attach(name)
    finally:
        shm.unlink_shm(name)
    # a future format version
    m = make_machine()
    zones = shm.SharedObject.attach(shm.object_name(m.run_id, "zones"))
    zones.header["version"] = 99
    try:
        with pytest.raises(IPCError, match="format version 99"):
            Machine.attach(m.run_id)
    finally:
        zones.header["version"] = shm.HEADER_VERSION
        zones.close()


def test_attach_missing_run():
    with pytest.raises(IPCError, match="does not exist"):
        Machine.attach(f"{os.getpid()}-000000")


@pytest.mark.timeout(120)
def test_cleanup_removes_dead_runs_only(make_machine):
    live = make_machine()
    dead = killed_creator_run_id()
    runs = shm.list_runs()
    assert len(runs[dead].names) == 6           # zones, frames, guest, 2 zone locks, wake
    removed, live_ids = shm.cleanup(dry_run=True)
    assert set(runs[dead].names) <= set(removed)
    assert dead in shm.list_runs()              # a dry run removes nothing
    removed, live_ids = shm.cleanup()
    assert set(runs[dead].names) <= set(removed)
    assert not set(live.object_names()) & set(removed)
    assert live.run_id in live_ids
    assert dead not in shm.list_runs()
    # the live run is untouched and works
    p = live.alloc(0)
    live.free(p, 0)
    assert invariants.check(live) == []


def test_recycled_pid_is_not_alive(make_machine):
    """Same pid, another start time: the creator is gone."""
    m = make_machine()
    zones = shm.SharedObject.attach(shm.object_name(m.run_id, "zones"))
    try:
        zones.header["creator_start"] = 1
        assert not shm.run_creator_alive(shm.list_runs()[m.run_id])
    finally:
        zones.header["creator_start"] = shm.process_start_time(os.getpid())
        zones.close()
    assert shm.run_creator_alive(shm.list_runs()[m.run_id])


def test_host_resident_bytes_follow_writes(make_machine):
    m = make_machine(memory=16 << 20)
    assert m.host_resident_bytes() == 0
    m.mem[: 512 * 100: 512] = np.arange(1, 101, dtype=np.int64)   # touch 100 pages
    assert m.host_resident_bytes() == 100 * 4096


@needs_root
def test_cleanup_ignores_other_users_objects(make_machine):
    """A run of another user is never listed, judged or removed."""
    m = make_machine()
    dead = f"{2**22 + 17}-abcdef"                  # a pid that cannot be running
    obj = shm.SharedObject.create(shm.object_name(dead, "zones"), 64, "zones")
    try:
        os.fchown(obj.fd, 4242, -1)
        assert dead not in shm.list_runs()
        shm.cleanup()
        assert os.path.exists(f"/dev/shm/shmalloc-{dead}-zones")
    finally:
        obj.close()
        shm.unlink_shm(shm.object_name(dead, "zones"))
    assert m.run_id in shm.list_runs()
