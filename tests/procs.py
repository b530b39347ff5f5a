"""Start, watch and always end child processes in tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import multiprocess as mp

from shmalloc._libc import die_with_parent

CTX = mp.get_context("fork")


def _child(target, args, queue):
    die_with_parent()
    try:
        queue.put((True, target(*args)))
    except BaseException as e:          # report, never hang the parent
        queue.put((False, repr(e)))
        raise


class Children:
    """A group of forked processes; ``with`` guarantees they are gone after."""

    def __init__(self):
        self.procs = []
        self.queue = CTX.Queue()

    def start(self, target, *args):
        p = CTX.Process(target=_child, args=(target, args, self.queue), daemon=True)
        p.start()
        self.procs.append(p)
        return p

    def results(self, timeout: float) -> list:
        """Every child's return value; fails if one raised or time ran out."""
        deadline = time.monotonic() + timeout
        out = []
        for _ in self.procs:
            ok, value = self.queue.get(timeout=max(0.1, deadline - time.monotonic()))
            assert ok, f"child failed: {value}"
            out.append(value)
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            assert p.exitcode == 0, f"child {p.pid} exited with {p.exitcode}"
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.is_alive():
                p.kill()
            p.join(5)
        self.queue.close()


def killed_creator_run_id(config: str = "memory=16 << 20, zones=2", touch: bool = False) -> str:
    """Create a machine (``MachineConfig(<config>)``) in a child process that
    is then SIGKILLed, leaving its objects behind; return its run id.  With
    ``touch`` the child writes one guest page first."""
    code = textwrap.dedent(f"""
        import sys
        from shmalloc.machine import Machine, MachineConfig
        m = Machine.create(MachineConfig({config}))
        if {touch!r}:
            m.mem[0] = 1
        print(m.run_id, flush=True)
        sys.stdin.read()          # wait to be killed
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        run_id = p.stdout.readline().strip()
    finally:
        p.kill()
        p.wait(30)
    assert run_id, "child did not create a machine"
    return run_id
