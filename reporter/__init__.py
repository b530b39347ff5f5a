"""Free page reporting designs: the reporter process and one module per design.

Builds on the core (``shmalloc``): the core offers the free-path hook, the
zone lock and the free-list primitives; a design supplies its cycle; the
hypervisor stub is only what stands behind ``report(batch)``.
"""

from . import bitmap, boundary, callback, isolate, mainline  # noqa: F401  (registers them)
from .process import IMPLEMENTATIONS, ReporterOptions, reporter_main

__all__ = ["IMPLEMENTATIONS", "ReporterOptions", "reporter_main"]
