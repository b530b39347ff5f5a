"""The hypervisor stub: receives free page reports and discards the memory.

Builds on the core (``shmalloc``) and talks to ``reporter`` only through the
report protocol (a POSIX message queue).
"""

from .stub import DISCARD_MODES, StubOptions, hypervisor_main

__all__ = ["DISCARD_MODES", "StubOptions", "hypervisor_main"]
