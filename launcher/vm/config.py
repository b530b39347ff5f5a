"""What one real-guest run is: every flag of ``shmalloc vm`` as a
:class:`GuestConfig`, checked before anything starts.  The results file's
``config`` is :meth:`GuestConfig.record`: these flags plus the guest
kernel's own constants under the model's names (``strategy`` mainline,
``capacity`` 32, ``delay`` 2 s, ``max_order`` 11), so a real run and a model
run compare flag by flag."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .host import VmUsageError, mem_available_bytes

WORKLOADS = ("hog", "page_fault1", "thp", "random", "phased")   # what shmguest knows
MIN_MEMORY = 256 << 20       # the distribution kernel and the initramfs, with room to work
GUEST_MAX_ORDER = 11         # Linux 6.1: orders 0..MAX_ORDER-1
#: mm/page_reporting.c and include/linux/page_reporting.h in the guest kernel
GUEST_KERNEL_CONSTANTS = {"strategy": "mainline", "capacity": 32, "delay": 2.0,
                          "max_order": GUEST_MAX_ORDER, "putback": "tail"}


@dataclass(frozen=True)
class GuestConfig:
    workload: str = "hog"
    workers: int = 1
    duration: float = 15.0
    seed: int = 1
    working_set: int | None = None      # per worker; None: min(128M, 80 % / workers)
    hog_share: float = 0.9
    hog_hold: float = 1.0
    memory: int = 1 << 30
    vcpus: int = 1
    report_order: int = 9
    guest_thp: str = "never"
    start: str = "idle"
    settle_timeout: float = 90.0
    accel: str = "auto"
    kernel: str | None = None
    modules: str | None = None
    append: str = ""
    boot_timeout: float = 60.0
    sample_interval: float = 0.1
    guest_scan: float = 1.0

    def resolved(self) -> GuestConfig:
        cfg = self
        if cfg.working_set is None:
            share = int(cfg.memory * 0.8) // cfg.workers
            unit = 2 << 20 if cfg.workload == "thp" else 4096
            cfg = GuestConfig(**{**asdict(cfg),
                                 "working_set": max(unit, min(128 << 20, share) // unit * unit)})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.memory % (1 << 20):
            raise VmUsageError(f"--memory {self.memory}: QEMU gives a guest whole MiB; "
                               "give a multiple of 1M")
        if self.memory < MIN_MEMORY:
            raise VmUsageError(f"--memory {self.memory >> 20}M: the guest needs at least "
                               f"{MIN_MEMORY >> 20}M to boot and run a workload")
        avail = mem_available_bytes()
        if self.memory > avail:
            raise VmUsageError(f"--memory {self.memory >> 20}M: more than this host can give "
                               f"a guest (MemAvailable {avail >> 20} MiB)")
        if not 0 <= self.report_order < GUEST_MAX_ORDER:
            raise VmUsageError(f"--report-order {self.report_order}: the guest kernel reports "
                               f"orders 0..{GUEST_MAX_ORDER - 1} (MAX_ORDER {GUEST_MAX_ORDER})")
        if self.working_set is not None and self.working_set > self.memory:
            raise VmUsageError(f"--working-set {self.working_set}: more than the guest")
        for flag, value, choices in (("--guest-thp", self.guest_thp, ("never", "always")),
                                     ("--start", self.start, ("idle", "boot")),
                                     ("--accel", self.accel, ("auto", "kvm", "tcg"))):
            if value not in choices:
                raise VmUsageError(f"{flag} {value}: choose {' or '.join(choices)}")
        if any(c in self.append for c in "\n\0"):
            raise VmUsageError("--append: one line of kernel parameters")

    def guest_pairs(self) -> dict:
        """The workload program's configuration (``shmguest.KEY=VALUE``)."""
        return {"workload": self.workload, "memory": self.memory, "workers": self.workers,
                "duration_ms": round(self.duration * 1000), "hog_share": self.hog_share,
                "hold_ms": round(self.hog_hold * 1000), "working_set": self.working_set,
                "seed": self.seed, "thp": int(self.guest_thp == "always"),
                "sample_ms": max(1, round(self.sample_interval * 1000)),
                "scan_ms": round(self.guest_scan * 1000), "start_idle": int(self.start == "idle"),
                "settle_ms": round(self.settle_timeout * 1000),
                "report_order": self.report_order}

    def record(self) -> dict:
        return {**asdict(self), **GUEST_KERNEL_CONSTANTS}
