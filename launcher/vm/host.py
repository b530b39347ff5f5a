"""What the real guest needs from the host, found before anything starts.

Three Debian packages (``qemu-system-x86``, ``linux-image-amd64``,
``busybox-static``) and a C compiler that links static programs.  Where one
is missing, :func:`find` raises :class:`VmUsageError` with one line naming
the packages, and ``shmalloc vm`` exits 2 before anything is created.

The guest kernel is the newest ``/boot/vmlinuz-<release>`` whose modules are
in ``/lib/modules/<release>`` (``--kernel``, ``--modules`` choose others);
``linux-image-amd64`` is Debian's meta-package for it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from ..errors import UsageError

PACKAGES = {"qemu": "qemu-system-x86", "kernel": "linux-image-amd64",
            "busybox": "busybox-static"}
INSTALL = ("apt-get install qemu-system-x86 linux-image-amd64 busybox-static "
           "(as root)")
QEMU = "qemu-system-x86_64"
BOOT = "/boot"
MODULES = "/lib/modules"


class VmUsageError(UsageError):
    """Bad input or a missing facility: one line on stderr, exit 2 (the
    command line prefixes ``shmalloc vm:``)."""


@dataclass(frozen=True)
class Tools:
    qemu: str
    kernel: str          # the guest kernel image
    release: str         # its release (uname -r in the guest)
    modules: str         # /lib/modules/<release>
    busybox: str
    cc: str


def _release_of(kernel: str) -> str | None:
    m = re.match(r"vmlinuz-(.+)$", os.path.basename(kernel))
    return m.group(1) if m else None


def _release_key(release: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.-]", release))


def default_kernel() -> str | None:
    """The newest /boot/vmlinuz-<release> with a modules folder."""
    try:
        names = os.listdir(BOOT)
    except OSError:
        return None
    found = [n for n in names if _release_of(n) and os.path.isfile(
        os.path.join(MODULES, _release_of(n), "modules.dep"))]
    if not found:
        return None
    return os.path.join(BOOT, max(found, key=lambda n: _release_key(_release_of(n))))


def _busybox() -> str | None:
    path = shutil.which("busybox")
    if path is None and os.access("/bin/busybox", os.X_OK):
        path = "/bin/busybox"
    if path is None:
        return None
    try:                                 # busybox-static: no dynamic interpreter
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return None
    return None if b"ld-linux" in head else path


def find(kernel: str | None = None, modules: str | None = None) -> Tools:
    """The host's QEMU, guest kernel and modules, busybox and cc; one
    :class:`VmUsageError` line naming what is missing."""
    qemu = shutil.which(QEMU)
    busybox = _busybox()
    cc = shutil.which("cc")
    if kernel is not None:
        if not os.path.isfile(kernel):
            raise VmUsageError(f"--kernel {kernel}: no such file")
    missing = [PACKAGES["qemu"]] if qemu is None else []
    if kernel is None:
        kernel = default_kernel()
        if kernel is None:
            missing.append(PACKAGES["kernel"])
    if busybox is None:
        missing.append(PACKAGES["busybox"])
    if missing:
        raise VmUsageError(f"needs the Debian package{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(missing)}, not installed here: {INSTALL}")
    if cc is None:
        raise VmUsageError("needs a C compiler (cc) to build the guest's workload program: "
                           "apt-get install gcc libc6-dev")
    release = _release_of(kernel)
    if modules is None:
        if release is None:
            raise VmUsageError(f"--kernel {kernel}: cannot tell its release from the name "
                               "(vmlinuz-<release>); give --modules /lib/modules/<release>")
        modules = os.path.join(MODULES, release)
    if not os.path.isfile(os.path.join(modules, "modules.dep")):
        raise VmUsageError(f"no modules for the guest kernel: {modules}/modules.dep is missing "
                           "(--modules DIR)")
    return Tools(qemu=qemu, kernel=kernel, release=release or os.path.basename(kernel),
                 modules=modules, busybox=busybox, cc=cc)


def _run(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_version(name: str) -> str | None:
    return _run(["dpkg-query", "-W", "-f", "${Version}", name])


def versions(tools: Tools) -> dict:
    """What a results file records about the real system's software."""
    qemu = _run([tools.qemu, "--version"])
    owner = _run(["dpkg-query", "-S", tools.kernel])
    kernel_pkg = owner.split(":")[0] if owner else None
    return {
        "qemu": qemu.splitlines()[0] if qemu else None,
        "qemu_package": package_version(PACKAGES["qemu"]),
        "kernel_release": tools.release,
        "kernel_image": tools.kernel,
        "kernel_package": (f"{kernel_pkg} {package_version(kernel_pkg)}"
                           if kernel_pkg else None),
        "busybox_package": package_version(PACKAGES["busybox"]),
        "cc": (_run([tools.cc, "--version"]) or "").splitlines()[0] or None,
    }


def kvm_device_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0
