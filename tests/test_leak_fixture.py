"""The leak fixture (tests/conftest.py) sees a leaked message queue, both
where /dev/mqueue is mounted and where it is not (found by name then).

A throwaway test session runs a test that leaks its queues (the machine is
removed, the queues stay, as when a launcher forgets ``unlink_queues``)
beside one that cleans up; the fixture must fail exactly the first (an error
at its teardown), name its queues and remove them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from cli import ROOT
from leaks import mqueue_mounted, queues_by_name

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOTED = os.geteuid() == 0

INNER = '''
from shmalloc import virtqueue
from shmalloc.machine import Machine, MachineConfig


def test_leaks_its_queues():
    m = Machine.create(MachineConfig(memory=16 << 20))
    for q in virtqueue.create_queues(m.run_id, 4):
        q.close()
    m.destroy()                          # the machine goes, the queues stay


def test_removes_its_queues():
    m = Machine.create(MachineConfig(memory=16 << 20))
    for q in virtqueue.create_queues(m.run_id, 4):
        q.close()
    virtqueue.unlink_queues(m.run_id)
    m.destroy()
'''

MOUNT_CALL = "config._shmalloc_mqueue = mount_mqueue()"


def test_the_session_mounts_mqueue_when_root():
    if not ROOTED:
        pytest.skip("not root: the session cannot mount mqueue; queues are checked by name")
    assert mqueue_mounted()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", ["listed in /dev/mqueue", "found by name"])
def test_fixture_fails_a_test_that_leaks_its_queues(tmp_path, where):
    conftest = open(os.path.join(TESTS, "conftest.py")).read()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rE", str(tmp_path)]
    if where.startswith("listed"):
        if not mqueue_mounted():
            pytest.skip("/dev/mqueue is not mounted (and only root can mount it)")
    elif mqueue_mounted():
        if not ROOTED or not shutil.which("unshare"):
            pytest.skip("/dev/mqueue is mounted and only root can unmount it")
        # a session of its own in a mount namespace without the mqueue mount
        assert MOUNT_CALL in conftest
        conftest = conftest.replace(MOUNT_CALL, 'config._shmalloc_mqueue = "unmounted by the test"')
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               'umount /dev/mqueue && exec "$@"', "sh"] + cmd
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_inner.py").write_text(INNER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=280)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    # the fixture fails the test at its teardown: an error, the test's only one
    assert re.search(r"\b2 passed, 1 error\b", out), out
    assert "ERROR test_inner.py::test_leaks_its_queues" in out, out
    leaked = set(re.findall(r"/dev/mqueue/shmalloc-(\d+-[0-9a-f]{6})-(?:report|ack)", out))
    assert len(leaked) == 1, out                      # both queues of the one run, named
    run_id = leaked.pop()
    assert f"shmalloc-{run_id}-report" in out and f"shmalloc-{run_id}-ack" in out
    assert queues_by_name({run_id}) == set()          # and removed


INNER_HUGE = '''
from shmalloc.machine import Machine, MachineConfig


def test_leaks_its_huge_guest():
    m = Machine.create(MachineConfig(memory=16 << 20, host_page_order=9))
    m.mem[0] = 1
    print("MOUNTED", m.run_id)
    m.close()                            # unmapped, never unlinked: the tmpfs stays mounted
'''


@pytest.mark.timeout(300)
def test_fixture_fails_a_test_that_leaves_a_huge_guest_mounted(tmp_path):
    """A guest on 2 MiB host pages left behind is a directory in /dev/shm with
    a tmpfs on it: the fixture fails the test, names it, unmounts and removes
    it (the throwaway session runs in this process's mount namespace)."""
    from shmalloc import shm
    problem = shm.huge_tmpfs_problem()
    if problem:
        pytest.skip(f"--host-pages 2m: {problem}")
    (tmp_path / "conftest.py").write_text(open(os.path.join(TESTS, "conftest.py")).read())
    (tmp_path / "test_inner.py").write_text(INNER_HUGE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                          "-n", "0", "-rE", str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=280)
    out = res.stdout + res.stderr
    assert res.returncode == 1 and re.search(r"\b1 passed, 1 error\b", out), out
    run_id = re.search(r"MOUNTED (\d+-[0-9a-f]{6})", out)[1]
    guest = shm.huge_mount_point(shm.object_name(run_id, "guest"))
    assert guest in out                               # named
    assert not shm.mounted_at(guest) and not os.path.exists(guest)     # and removed


# ---------------------------------------------------------------------------
# xdist workers, each in a namespace of its own (leaks.private_ipc_namespace)
# ---------------------------------------------------------------------------

INSIDE = '''
import os, sys
import posix_ipc
from leaks import private_ipc_namespace
from shmalloc import shm
private_ipc_namespace()
mem = posix_ipc.SharedMemory("/shmalloc-1-inside-x", posix_ipc.O_CREX, size=4096)
q = posix_ipc.MessageQueue("/shmalloc-1-inside-q", posix_ipc.O_CREX)
print(sorted(e for e in os.listdir(shm.SHM_DIR) if "shmalloc" in e), flush=True)
sys.stdin.readline()                 # the test looks from outside meanwhile
'''


@pytest.mark.timeout(60)
def test_a_private_namespace_hides_runs_both_ways():
    """What one xdist worker creates, the others cannot see, and the reverse."""
    from leaks import can_make_namespaces
    if not can_make_namespaces():
        pytest.skip("cannot make mount and IPC namespaces here (root only)")
    import posix_ipc
    outside = posix_ipc.SharedMemory("/shmalloc-1-outside-x", posix_ipc.O_CREX, size=4096)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
    child = subprocess.Popen([sys.executable, "-c", INSIDE], env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        seen_inside = child.stdout.readline().strip()
        assert seen_inside == "['shmalloc-1-inside-x']"       # not the one made outside
        assert "shmalloc-1-inside-x" not in os.listdir("/dev/shm")
        with pytest.raises(posix_ipc.ExistentialError):
            posix_ipc.MessageQueue("/shmalloc-1-inside-q")
    finally:
        child.communicate("\n", timeout=30)
        outside.unlink()
    assert child.returncode == 0


def test_xdist_workers_have_namespaces_of_their_own():
    if "PYTEST_XDIST_WORKER" not in os.environ:
        pytest.skip("not an xdist worker: the tests run in one process")
    for ns in ("ipc", "mnt"):
        mine = os.readlink(f"/proc/self/ns/{ns}")
        controller = os.readlink(f"/proc/{os.getppid()}/ns/{ns}")
        assert mine != controller, ns


MOUNTER = '''
import sys
sys.path.insert(0, sys.argv[1])
import leaks
leaks.shm.MQUEUE_DIR = sys.argv[2]
print(leaks.mount_mqueue(), flush=True)
sys.stdin.readline()
leaks.unmount_mqueue()
print("unmounted", flush=True)
'''


@pytest.mark.timeout(60)
def test_a_session_ending_leaves_another_namespaces_mqueue_mounted(tmp_path):
    """A session that mounted mqueue on a directory it made, ending while
    another mount namespace (a worker of another session) has its own mqueue
    on that directory: the other's mount stays.  Both run in namespaces of
    their own, on a directory under tmp_path standing in for /dev/mqueue."""
    if not ROOTED or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to make mount namespaces")
    where = str(tmp_path / "mqueue")
    unshare = ["unshare", "--mount", "--propagation", "private"]
    session = subprocess.Popen([*unshare, sys.executable, "-c", MOUNTER, TESTS, where],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    other = None
    try:
        assert session.stdout.readline().strip() == "mounted by the test session"
        other = subprocess.Popen(
            [*unshare, "sh", "-c", f'mount -t mqueue none {where} && echo up && read x && '
             f'grep -c " {where} mqueue " /proc/self/mounts'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert other.stdout.readline().strip() == "up"
        session.stdin.write("\n")
        session.stdin.flush()
        assert session.stdout.readline().strip() == "unmounted"
        out, _ = other.communicate("\n", timeout=30)
        assert out.strip() == "1", "the other namespace's mqueue went with the session's end"
    finally:
        for p in (session, other):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
