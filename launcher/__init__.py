"""The launcher and the ``shmalloc`` command line: on top of everything.

Creates machines, starts and watches processes, prints and saves results.
Imports the core (``shmalloc``), ``reporter`` and ``hypervisor_stub``; none of
them imports this package.
"""
