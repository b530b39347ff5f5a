"""Run the ``shmalloc`` command as users do: ``python -m launcher``."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shmalloc(*args: str, timeout: float = 300, env: dict | None = None, **kw):
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=full_env, **kw)


def assert_usage_error(res, *fragments: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, nothing on stdout."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""
    for f in fragments:
        assert f in lines[0], (f, lines[0])
