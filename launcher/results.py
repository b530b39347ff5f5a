"""The results file: versioned JSON, written atomically, never overwritten
unless asked (pyperf's ``_bench.py`` is the model).

Format history:

* version 1 — ``{"format": "shmalloc-results", "version": 1, "metadata": {...},
  "runs": [RUN, ...]}``.  ``metadata`` holds what is common to every run (the
  machine, the versions, the command line); each RUN has ``config`` (every
  flag's value), ``outcome`` (``ok`` or ``aborted``, with ``abort_reason``),
  ``throughput``, ``latency_ns``, ``locks``, ``memory``, ``refaults``,
  ``safety`` and, with a reporting design, ``reporting``.

:func:`load` rejects other formats and versions with one clear message.
"""

from __future__ import annotations

import json
import os
import tempfile

FORMAT = "shmalloc-results"
VERSION = 1


class ResultsError(Exception):
    """A results file cannot be written or read; the message is one line."""


def document(runs: list[dict], metadata: dict) -> dict:
    return {"format": FORMAT, "version": VERSION, "metadata": metadata, "runs": runs}


def check_output(path: str, force: bool) -> None:
    """Refuse, before anything runs, an output we could not write."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ResultsError(f"{path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise ResultsError(f"{path} is a folder")
    if os.path.exists(path) and not force:
        raise ResultsError(f"{path} exists; use --force to overwrite it")
    if not os.access(folder, os.W_OK):
        raise ResultsError(f"{path}: folder {folder} is not writable")


def write(path: str, doc: dict, force: bool = False) -> None:
    """Write ``doc`` to ``path`` atomically: a temporary file in the same
    folder, fsync'd, then linked (no overwrite) or renamed (``force``)."""
    check_output(path, force)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".shmalloc-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)        # fails if path appeared meanwhile
            except FileExistsError:
                raise ResultsError(f"{path} exists; use --force to overwrite it") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: str) -> dict:
    """Read a results file; one-line ResultsError for anything else."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ResultsError(f"{path} is a folder") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON (truncated or damaged?): "
                           f"{e.msg} at line {e.lineno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot read: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ResultsError(f"{path}: not a shmalloc results file")
    version = doc.get("version")
    if version != VERSION:
        raise ResultsError(f"{path}: results format version {version!r}; this shmalloc "
                           f"reads version {VERSION}")
    if not isinstance(doc.get("runs"), list) or not isinstance(doc.get("metadata"), dict):
        raise ResultsError(f"{path}: damaged results file (no runs or metadata)")
    return doc
