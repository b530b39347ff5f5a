"""The real guest (``shmalloc vm``): it boots the installed distribution kernel under QEMU with
free page reporting, runs a workload in it and records host and guest as a results-file run,
using the launcher's layers below it (experiment, output, comparison, errors, units), never the
command line."""
