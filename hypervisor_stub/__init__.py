"""The hypervisor stub: receives free page reports and discards the memory.

Builds on the core (``shmalloc``) and talks to ``reporter`` only through the
report protocol (a POSIX message queue).
"""
