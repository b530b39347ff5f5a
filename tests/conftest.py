"""Fixtures shared by the test suite.

``_no_ipc_leak`` (autouse) fails any test that leaves a ``shmalloc`` object in
/dev/shm or /dev/mqueue behind, after removing it.
"""

from __future__ import annotations

import os

import pytest

from shmalloc.machine import Machine, MachineConfig


def ipc_objects() -> set[str]:
    found = set()
    for d in ("/dev/shm", "/dev/mqueue"):
        try:
            found |= {os.path.join(d, e) for e in os.listdir(d) if "shmalloc" in e}
        except OSError:
            pass
    return found


def _remove(path: str) -> None:
    import posix_ipc
    name = "/" + os.path.basename(path)
    try:
        if path.startswith("/dev/mqueue"):
            posix_ipc.unlink_message_queue(name)
        elif os.path.basename(path).startswith("sem."):
            posix_ipc.unlink_semaphore("/" + os.path.basename(path)[4:])
        else:
            posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


@pytest.fixture(autouse=True)
def _no_ipc_leak():
    before = ipc_objects()
    yield
    left = ipc_objects() - before
    if left:
        for path in left:
            _remove(path)
        pytest.fail(f"test left IPC objects behind: {sorted(left)}")


@pytest.fixture
def make_machine():
    """Create machines that are destroyed at teardown."""
    made = []

    def make(**kw) -> Machine:
        kw.setdefault("memory", 16 << 20)
        m = Machine.create(MachineConfig(**kw))
        made.append(m)
        return m

    yield make
    for m in made:
        m.destroy()
