"""Fixtures shared by the test suite, and the session record.

``_no_ipc_leak`` (autouse) fails any test that leaves a ``shmalloc`` object
behind (after removing it): shared memory and semaphores in /dev/shm, and
message queues, listed in /dev/mqueue when the mqueue filesystem is mounted
there (the session mounts it when running as root and it is missing, and
unmounts it at its end) and in
every case opened by name for every run the test made (see tests/leaks.py).

The suite runs in pytest-xdist workers (``-n auto``, pyproject.toml): one per
cpu where namespaces can be made (root), each in a mount and IPC namespace
of its own (``leaks.private_ipc_namespace``), so a worker's /dev/shm and
queues hold only its own runs and the leak fixture and ``shmalloc cleanup``
never see the other worker's; elsewhere one process runs every test.

``_kernels_compiled`` (session, autouse) compiles every kernel group once,
before the first test, as a command would before its first run (two
processes filling the numba cache when it is cold); every ``shmalloc``
started by a test then loads them.  ``SHMALLOC_FORBID_CHILD_COMPILE`` makes
a run's worker, reporter or stub fail if it would compile anything: every
test that runs a design checks that nothing compiles while a run is measured.

With ``SHMALLOC_SESSION_REPORT=PATH`` the session writes a JSON record to PATH
at its end: whether the JIT was off (``shmalloc.config.JIT_DISABLED``, numba's
own flag, and the type of a kernel), the tests selected and each one's
outcome.  tests/test_nojit.py reads it from the session it starts.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest

os.environ["SHMALLOC_FORBID_CHILD_COMPILE"] = "1"

from leaks import (
    ShmCreations,
    can_make_namespaces,
    listed_objects,
    mount_mqueue,
    private_ipc_namespace,
    queues_by_name,
    run_id_of,
    unmount_mqueue,
)

from shmalloc import shm
from shmalloc.machine import Machine, MachineConfig


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except OSError:
        return 1


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (the default, pyproject.toml): a worker per cpu, each in
    a private IPC namespace (see pytest_configure), where namespaces can be
    made (root); else the tests run in this one process, one after another."""
    cpus = _cpus()
    return cpus if cpus >= 2 and can_make_namespaces() else 0


def pytest_configure(config):
    if hasattr(config, "workerinput"):       # an xdist worker: its own /dev/shm and queues
        private_ipc_namespace()
    config._shmalloc_mqueue = mount_mqueue()


def pytest_unconfigure(config):
    unmount_mqueue()


#: what this session selected and how each test ended (the session record)
_SESSION: dict = {"selected": [], "outcomes": {}}


def pytest_collection_finish(session):
    _SESSION["selected"] = [item.nodeid for item in session.items]


def pytest_runtest_logreport(report):
    outcomes = _SESSION["outcomes"]
    if report.when == "call" or report.outcome != "passed":
        if outcomes.get(report.nodeid) in (None, "passed"):
            outcomes[report.nodeid] = report.outcome


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("SHMALLOC_SESSION_REPORT")
    if not path:
        return
    import numba

    from shmalloc import config as shmalloc_config
    from shmalloc.page_alloc import alloc_pages
    record = dict(_SESSION, exitstatus=int(exitstatus),
                  jit_disabled=shmalloc_config.JIT_DISABLED,
                  numba_disable_jit=bool(numba.config.DISABLE_JIT),
                  kernel_type=type(alloc_pages).__name__)
    with open(path, "w") as f:
        json.dump(record, f)


def pytest_report_header(config):
    return f"shmalloc: /dev/mqueue {config._shmalloc_mqueue}; running as uid {os.geteuid()}"


def ipc_objects() -> set[str]:
    """Paths of the shmalloc objects that can be listed (/dev/shm, and
    /dev/mqueue when mounted)."""
    return listed_objects()


def _queue_paths(run_ids) -> set[str]:
    """The queues of ``run_ids`` that exist, found by name, as /dev/mqueue
    paths (whether or not that filesystem is mounted)."""
    return {os.path.join(shm.MQUEUE_DIR, name.lstrip("/")) for name in queues_by_name(run_ids)}


def _remove(path: str) -> None:
    import posix_ipc
    if os.path.isdir(path):                       # a huge guest's tmpfs, and its directory
        shm.unmount_huge(path)
        return
    base = os.path.basename(path)
    try:
        if path.startswith(shm.MQUEUE_DIR):
            posix_ipc.unlink_message_queue("/" + base)
        elif base.startswith("sem."):
            posix_ipc.unlink_semaphore("/" + base[4:])
        else:
            posix_ipc.unlink_shared_memory("/" + base)
    except posix_ipc.ExistentialError:
        pass


def _run_ids(paths) -> set[str]:
    return {r for r in map(run_id_of, paths) if r}


@pytest.fixture(scope="session", autouse=True)
def _kernels_compiled():
    """Every kernel, compiled or loaded.  xdist workers take turns (a lock
    on this file) while the disk cache lacks any, so on a cold cache one
    compiles and the others then load; loading needs no turn."""
    import fcntl

    from launcher.experiment import compile as kernels
    groups = list(kernels.GROUPS)
    with open(__file__) as me:
        fcntl.flock(me, fcntl.LOCK_EX)
        if not all(kernels.cached(k) for _, k in kernels.group_kernels(groups)):
            kernels.prepare(groups)
    kernels.prepare(groups)


@pytest.fixture(autouse=True)
def _no_ipc_leak():
    watch = ShmCreations()
    before = ipc_objects()
    queues_before = _queue_paths(_run_ids(before))
    try:
        yield
        after = ipc_objects()
        seen = watch.poll()
        if watch.overflowed:
            warnings.warn("the inotify queue overflowed: queues of some runs were not "
                          "checked by name", stacklevel=1)
        run_ids = _run_ids(before | after | seen)
        left = (after - before) | (_queue_paths(run_ids) - queues_before)
        if left:
            for path in left:
                _remove(path)
            pytest.fail(f"test left IPC objects behind: {sorted(left)}")
    finally:
        watch.close()


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
