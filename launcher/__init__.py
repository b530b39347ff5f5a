"""The launcher and the ``shmalloc`` command line: on top of the core
(``shmalloc``), ``reporter`` and ``hypervisor_stub``, none of which imports it.

Its packages, each using only those below it (the ``layers`` contract in
pyproject.toml, checked by import-linter in the test suite):

* :mod:`launcher.cli`: the command line, one module per subcommand;
* :mod:`launcher.comparison`: paired rounds, intervals, costs, sweeps;
* :mod:`launcher.output` and :mod:`launcher.capture` (independent of each
  other): summaries, results files and figures; recording real programs;
* :mod:`launcher.experiment`: one run, its processes and its measurements;
* :mod:`launcher.errors` and :mod:`launcher.units`: the errors several
  layers raise, and sizes and durations.
"""
