"""Capturing a real program: recording the kernel's page allocator through
tracefs into a trace file, and describing one.  Uses the core, the bottom of
the launcher, and :mod:`launcher.experiment` (a run's metadata, the replay
plan a trace's description reports)."""
