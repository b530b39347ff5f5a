"""The command line: one module per ``shmalloc`` subcommand and
:mod:`launcher.cli.main`, which builds the parser and dispatches.  On top of
everything: it may use every other package of the launcher and the core,
and nothing imports it."""
