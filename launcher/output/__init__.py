"""What a run leaves: its text summary, the versioned results file, the
side-by-side grouping of saved runs, and the figures.  Uses the core, the
bottom of the launcher and :mod:`launcher.experiment` (design names), and
reads RUN records, never a live machine."""
