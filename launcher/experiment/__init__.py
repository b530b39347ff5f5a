"""Running one experiment: its configuration, the kernels it compiles, the
processes it starts and watches, the faults it injects, and the RUN record
it measures.  Uses the core (``shmalloc``), ``reporter``, ``hypervisor_stub``
and the bottom of the launcher (:mod:`launcher.errors`, :mod:`launcher.units`)."""
