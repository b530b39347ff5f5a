"""What a results file says about where it was measured (DESIGN §7)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata as importlib_metadata

import numba
import numpy

from shmalloc import __version__
from shmalloc.shm import SHM_DIR, huge_tmpfs_problem, shm_free_bytes


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cpu_model() -> str | None:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _version(dist: str) -> str | None:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "-uno"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def collect(numba_cache_warm: bool | None = None, start_method: str = "fork") -> dict:
    return {
        "shmalloc_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["shmalloc"] + sys.argv[1:]),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "posix_ipc": _version("posix_ipc"),
        "multiprocess": _version("multiprocess"),
        "scipy": _version("scipy"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "hostname": platform.node(),
        "shm_dir": SHM_DIR,
        "shm_free_bytes": shm_free_bytes(),
        "thp_enabled": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "thp_shmem_enabled": _read("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        # why guest memory cannot be on 2 MiB host pages here (--host-pages), or None
        "huge_tmpfs_problem": huge_tmpfs_problem(),
        "mqueue_msg_max": _read("/proc/sys/fs/mqueue/msg_max"),
        "mqueue_msgsize_max": _read("/proc/sys/fs/mqueue/msgsize_max"),
        "git_commit": _git_commit(),
        "start_method": start_method,
        "numba_cache_warm": numba_cache_warm,
    }
