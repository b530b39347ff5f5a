"""Where compiled kernels are kept on disk, shared by every clone and venv.

The default place is a per-user directory after the XDG convention::

    ${XDG_CACHE_HOME:-~/.cache}/shmalloc/numba/<key>/<package>/<module.function>-<line>.pyXY.*

``<key>`` is a hash of every kernel source file, the numba version and the
CPU name (what numba compiles for), so a second clone, a reinstall or a CI
rerun of the same sources starts warm, and any change starts afresh.
``NUMBA_CACHE_DIR`` overrides the whole path (``$NUMBA_CACHE_DIR/<package>``).

numba's own cache locators would not share: they put a hash of the source
file's absolute directory into the path, so every clone gets its own cache.
numba's freshness stamp covers only the file a kernel is defined in, while a
kernel's machine code also holds the helpers inlined into it from other
files: editing ``freelist.py`` would leave stale code in every cached caller.
:class:`KernelCacheLocator` replaces both: one directory per key, and the key
as the stamp of every entry.

Bad cache states never fail a run:

* a directory that cannot be created or written: :data:`PROBLEM` says why,
  the kernels compile in memory (:mod:`shmalloc.config` switches the disk
  cache off) and the launcher warns once;
* an entry that cannot be read (a truncated or corrupt index or data file):
  :class:`KernelCache` removes that kernel's files and numba compiles it
  again, saving a fresh entry.

``stale_dirs()`` lists the directories of other keys (older sources, another
numba, another CPU) for ``shmalloc cleanup --cache``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import pathlib
import shutil
import tempfile

import llvmlite.binding as llvm
import numba
from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: Packages whose sources hold compiled kernels.
KERNEL_PACKAGES = ("shmalloc", "reporter", "hypervisor_stub")


def kernel_source_hash() -> str:
    """A hash of every source file compiled code may come from."""
    h = hashlib.sha256()
    for pkg in KERNEL_PACKAGES:
        for path in sorted((ROOT / pkg).glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def cpu_name() -> str:
    """The CPU numba compiles for (its ``NUMBA_CPU_NAME`` or the host's)."""
    if numba.config.CPU_NAME:
        return numba.config.CPU_NAME
    return llvm.get_host_cpu_name()


def cache_key() -> str:
    """Kernel sources + numba version + CPU name, as a directory name."""
    h = hashlib.sha256()
    for part in (kernel_source_hash(), numba.__version__, cpu_name()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def cache_base() -> pathlib.Path:
    """``$XDG_CACHE_HOME/shmalloc/numba`` (``~/.cache`` when unset or not
    absolute, as the XDG Base Directory specification says)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = pathlib.Path(xdg) if os.path.isabs(xdg) else pathlib.Path.home() / ".cache"
    return base / "shmalloc" / "numba"


def writable_problem(path: pathlib.Path) -> str | None:
    """None if ``path`` can be created and written, else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    return None


#: the key of this checkout's kernels and the directory they are cached in
KEY = cache_key()
OVERRIDDEN = bool(os.environ.get("NUMBA_CACHE_DIR"))
CACHE_DIR = pathlib.Path(os.environ["NUMBA_CACHE_DIR"]) if OVERRIDDEN else cache_base() / KEY
#: why the disk cache cannot be used (None: it can)
PROBLEM = writable_problem(CACHE_DIR)
ENABLED = PROBLEM is None and not numba.config.DISABLE_JIT

if ENABLED:
    # Kernels defined outside the packages above (the tests' own) go through
    # numba's locator, under the same directory.
    numba.config.CACHE_DIR = str(CACHE_DIR)


class KernelCacheLocator(_CacheLocator):
    """Cache files of the kernels in ``CACHE_DIR/<package>``, stamped with
    the cache key (see the module docstring)."""

    def __init__(self, py_func, py_file):
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = str(CACHE_DIR / pathlib.Path(py_file).resolve().parent.name)

    def ensure_cache_path(self):
        os.makedirs(self._cache_path, exist_ok=True)

    def get_cache_path(self):
        return self._cache_path

    def get_source_stamp(self):
        return KEY

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        path = pathlib.Path(py_file).resolve()
        if path.parent.parent != ROOT or path.parent.name not in KERNEL_PACKAGES:
            return None
        return cls(py_func, py_file)


class _KernelCacheImpl(CompileResultCacheImpl):
    # numba's own locators after ours, for kernels defined elsewhere (tests)
    _locator_classes = [KernelCacheLocator, *CompileResultCacheImpl._locator_classes]


class KernelCache(FunctionCache):
    """numba's per-function cache with our locator; an entry that cannot
    be read is removed and compiled again instead of failing the run."""

    _impl_class = _KernelCacheImpl

    def files(self) -> list[str]:
        cf = self._cache_file
        base = cf._index_path[: -len(".nbi")]
        return [cf._index_path] + glob.glob(glob.escape(base) + ".*.nbc")

    def drop(self) -> None:
        for path in self.files():
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception:              # truncated or foreign: compile afresh
            self.drop()
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except OSError:
            pass                       # a full or vanished disk: stay in memory
        except Exception:              # an unreadable index: start it anew
            self.drop()
            try:
                super().save_overload(sig, data)
            except Exception:
                pass


def enable(dispatcher) -> None:
    """Give a kernel's dispatcher the disk cache (what ``cache=True`` does,
    with :class:`KernelCache`)."""
    dispatcher._cache = KernelCache(dispatcher.py_func)


def stale_dirs() -> list[pathlib.Path]:
    """Cache directories under :func:`cache_base` of other keys."""
    base = cache_base()
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and p.name != KEY)


def dir_bytes(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def remove_dir(path: pathlib.Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
