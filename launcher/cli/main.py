"""The ``shmalloc`` command: the parser of every subcommand, and
:func:`main`, which turns every way a command can end into one line and an
exit status.  Each subcommand is a module of this package with
``add_parser(sub)`` and a ``cmd_<name>(args)`` it dispatches to.

Bad input never produces a traceback: a usage error or an out-of-range value
prints one line on stderr and exits with status 2, before anything is created.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

from ..errors import RunAborted, UsageError
from ..experiment import interrupt


def _nested(sub):
    """Every parser under ``sub``, the actions of a command with actions
    (``trace record``) included."""
    for p in sub.choices.values():
        yield p
        for action in p._subparsers._group_actions if p._subparsers else ():
            yield from _nested(action)


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top, for start-up: the commands bring in
    # numba and the kernel modules (half a second), and main() installs the
    # signal handlers first, so a Ctrl-C meanwhile ends as one line.
    from . import bench, cleanup, compare, report, run, sweep, trace, vm
    from .flags import Parser

    parser = Parser(prog="shmalloc",
                     description="Free page reporting designs from the 2019 Linux mm debate, "
                     "measured side by side with real processes and real zone-lock contention.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in (run, compare, sweep, report, bench, cleanup, trace, vm):
        command.add_parser(sub)
    for p in (parser, *_nested(sub)):
        p.add_argument("--debug", action="store_true",
                       help="on an unexpected error, print its traceback too")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``shmalloc`` command.  Nothing escapes as a traceback: bad input
    is one line and status 2; a signal is one line naming the phase and
    128 + the signal (:mod:`launcher.experiment.interrupt`); an aborted run one line and
    its status; anything unexpected one line, status 1 and a hint to rerun
    with ``--debug``, which prints the traceback as well."""
    interrupt.install()
    try:
        return _main(argv)
    finally:
        if interrupt.honoured() is not None:
            interrupt.ignore_from_now()     # the status stays 128 + the first signal


def _main(argv: list[str] | None) -> int:
    interrupt.enter("while checking arguments")
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    command = "shmalloc"
    try:
        # the same start-up reason as build_parser's imports
        from shmalloc.machine import ConfigError
        try:
            args, extra = build_parser().parse_known_args(argv)
            command = f"shmalloc {args.command}"
            if extra:
                raise UsageError(f"{command}: unrecognized arguments: {' '.join(extra)}")
            interrupt.checkpoint("arguments")
            return args.func(args)
        except UsageError as e:
            print(e, file=sys.stderr)
            return 2
        except ConfigError as e:
            print(f"{command}: {e}", file=sys.stderr)
            return 2
    except interrupt.Interrupted as e:
        interrupt.end_partial_line()
        print(f"{command}: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:                # before our handler, or from a library
        interrupt.end_partial_line()
        print(f"{command}: interrupted by SIGINT {interrupt.phase()}", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:                  # e.g. piped into head: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except RunAborted as e:
        interrupt.end_partial_line()
        print(f"{command}: aborted: {e}", file=sys.stderr)
        return e.exit_status
    except Exception as e:                   # a bug: one line, the traceback on request
        interrupt.end_partial_line()
        if debug:
            traceback.print_exc()
        print(f"{command}: internal error: {type(e).__name__}: {e}"
              + ("" if debug else " (rerun with --debug for the traceback)"), file=sys.stderr)
        return 1
