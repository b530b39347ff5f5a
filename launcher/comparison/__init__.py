"""Comparing experiments: the line-up of variants run in paired, interleaved
rounds, the intervals and verdicts, where a cost went, and sweeps over a
grid of flags.  Uses :mod:`launcher.experiment` to run, :mod:`launcher.output`
to describe and save, the core, and the bottom of the launcher."""
