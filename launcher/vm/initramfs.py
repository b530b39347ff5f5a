"""The guest's initramfs: busybox, the virtio modules, the workload program.

Built once per set of inputs into the cache folder
(``${XDG_CACHE_HOME:-~/.cache}/shmalloc/vm``) and reused while none of them
changes (the name carries a hash of every input):

* ``/shmguest``: ``guest/shmguest.c`` compiled static with the host's ``cc``;
* ``/init``: ``guest/init`` (a busybox script), ``/bin/busybox`` and a
  ``/bin/sh`` link to it;
* ``/lib/modules/*.ko``: ``virtio_pci`` and ``virtio_balloon`` with their
  dependencies, resolved from the kernel's ``modules.dep`` (a module the
  kernel has built in, per ``modules.builtin``, is left out), in load order
  in ``/modules.order``; ``.ko.xz`` and ``.ko.gz`` are stored decompressed
  (busybox's insmod reads plain ELF).

The archive is a gzip-compressed newc cpio written here (the kernel's
``Documentation/driver-api/early-userspace/buffer-format.rst``), so no
``cpio`` tool is needed.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import stat
import subprocess
import tempfile
from importlib import resources

from .host import Tools, VmUsageError

MODULES = ("virtio_pci", "virtio_balloon")
GUEST_SOURCE = "shmguest.c"
INIT_SCRIPT = "init"


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "shmalloc", "vm")
    os.makedirs(path, exist_ok=True)
    return path


def guest_file(name: str) -> bytes:
    return resources.files(__package__).joinpath("guest", name).read_bytes()


def _atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------
# the workload program
# ---------------------------------------------------------------------------

def guest_program(cc: str) -> str:
    """``shmguest``, compiled static (cached by source and compiler)."""
    source = guest_file(GUEST_SOURCE)
    version = subprocess.run([cc, "--version"], capture_output=True).stdout
    key = hashlib.sha256(source + version).hexdigest()[:16]
    path = os.path.join(cache_dir(), f"shmguest-{key}")
    if os.access(path, os.X_OK):
        return path
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        src = os.path.join(tmp, GUEST_SOURCE)
        with open(src, "wb") as f:
            f.write(source)
        out = os.path.join(tmp, "shmguest")
        res = subprocess.run([cc, "-static", "-O2", "-Wall", "-o", out, src],
                             capture_output=True, text=True)
        if res.returncode != 0:
            first = (res.stderr.strip().splitlines() or ["?"])[-1]
            raise VmUsageError(f"{cc} cannot build the guest program statically ({first}); "
                               "a static C library is needed: apt-get install libc6-dev")
        os.replace(out, path)
    return path


def check_config(program: str, pairs: dict) -> None:
    """Ask the guest program itself whether it takes this configuration
    (a workload it does not know, for one): one line, exit 2."""
    argv = [program, "--check"] + [f"{k}={v}" for k, v in pairs.items()]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise VmUsageError(res.stdout.strip() or f"the guest program refused {pairs}")


# ---------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------

def _module_name(path: str) -> str:
    base = os.path.basename(path)
    return base.split(".ko")[0].replace("-", "_")


def resolve_modules(modules_dir: str, wanted=MODULES) -> list[str]:
    """Paths (relative to ``modules_dir``) of ``wanted`` and their
    dependencies from modules.dep, dependencies first; built-in ones left
    out.  A module that is neither is a :class:`VmUsageError`."""
    deps: dict[str, tuple[str, list[str]]] = {}
    with open(os.path.join(modules_dir, "modules.dep")) as f:
        for line in f:
            if ":" not in line:
                continue
            mod, rest = line.split(":", 1)
            deps[_module_name(mod)] = (mod.strip(), rest.split())
    builtin = set()
    try:
        with open(os.path.join(modules_dir, "modules.builtin")) as f:
            builtin = {_module_name(line.strip()) for line in f if line.strip()}
    except OSError:
        pass
    order: list[str] = []

    def visit(name: str) -> None:
        if name in builtin:
            return
        if name not in deps:
            raise VmUsageError(f"the guest kernel has no module {name} "
                               f"({modules_dir}/modules.dep does not list it)")
        path, needs = deps[name]
        for dep in needs:
            if dep not in order:
                visit(_module_name(dep))
        if path not in order:
            order.append(path)

    for name in wanted:
        visit(name)
    for rel in order:
        if not os.path.isfile(os.path.join(modules_dir, rel)):
            raise VmUsageError(f"module file missing: {os.path.join(modules_dir, rel)}")
    return order


def _module_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.endswith(".ko.zst"):
        raise VmUsageError(f"{path}: zstd-compressed modules are not supported "
                           "(busybox insmod reads plain .ko)")
    return data


# ---------------------------------------------------------------------------
# the archive
# ---------------------------------------------------------------------------

def newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data) entries; a symbolic link's
    data is its target."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], start=1):
        nb = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(nb), 0)
        out += b"070701" + "".join(f"{v:08X}" for v in fields).encode() + nb
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build(tools: Tools) -> tuple[str, dict]:
    """The initramfs for ``tools`` (cached); returns its path and what went
    into it (program, modules)."""
    program = guest_program(tools.cc)
    mods = resolve_modules(tools.modules)
    dirs = ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules")
    files = [("init", guest_file(INIT_SCRIPT), 0o755)]
    with open(tools.busybox, "rb") as f:
        files.append(("bin/busybox", f.read(), 0o755))
    with open(program, "rb") as f:
        files.append(("shmguest", f.read(), 0o755))
    names = []
    for rel in mods:
        name = _module_name(rel) + ".ko"
        names.append(name)
        files.append((f"lib/modules/{name}", _module_bytes(os.path.join(tools.modules, rel)),
                      0o644))
    files.append(("modules.order", "".join(n + "\n" for n in names).encode(), 0o644))
    h = hashlib.sha256()
    for name, data, mode in files:
        h.update(name.encode() + b"\0" + str(mode).encode() + hashlib.sha256(data).digest())
    path = os.path.join(cache_dir(), f"initramfs-{tools.release}-{h.hexdigest()[:16]}.cpio.gz")
    if not os.path.isfile(path):
        entries = [(d, stat.S_IFDIR | 0o755, b"") for d in dirs]
        entries += [(name, stat.S_IFREG | mode, data) for name, data, mode in files]
        entries.append(("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
        _atomic_write(path, gzip.compress(newc(entries), compresslevel=6))
    return path, {"program": program, "modules": names}
