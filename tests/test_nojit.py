"""The compiled kernels also run as plain Python (NUMBA_DISABLE_JIT=1).

Runs the tests marked ``nojit`` in a fresh interpreter with the JIT off, on
fewer random examples (Python is slow)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cli import ROOT


@pytest.mark.timeout(600)
def test_kernels_pass_without_jit():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", SHMALLOC_MODEL_EXAMPLES="4")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "nojit",
                          "-p", "no:cacheprovider", "tests/test_model.py",
                          "tests/test_invariants.py"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=580)
    tail = "\n".join(res.stdout.splitlines()[-15:])
    assert res.returncode == 0, tail + res.stderr[-2000:]
    assert " passed" in tail and "failed" not in tail
