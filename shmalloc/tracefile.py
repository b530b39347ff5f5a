"""The trace file: a recorded page-allocator event stream, compact and versioned.

A file is written as it is recorded (so long commands fit): a fixed head,
chunks of events, and a JSON footer that ends with a fixed tail.  A file
without its tail was cut short (truncated); one whose head is not ours is
foreign; one whose version is newer than this code reads is refused with the
version named.

Layout (all integers little-endian)::

    head     b"SHMTRACE"  u32 version  u32 reserved(0)
    chunk*   b"CHNK"  u32 events  i64 first_ts  i64 first_pfn
             per column (COLUMNS order): u8 dtype code, u32 bytes, zlib data
    footer   JSON (utf-8)  u32 its length  b"SHMTEND\\n"

Each column of a chunk is compressed on its own with zlib; ``ts`` and ``pfn``
are stored as differences from the previous event (deltas of sorted times are
small, and page-allocator streams hand out runs of neighbouring pfns), each
column in the narrowest integer type its values fit.  Events are in time
order across the whole file.

Per event (:data:`EVENT_FIELDS`): ``ts`` (ns since the recording started,
CLOCK_MONOTONIC), ``cpu``, ``pid``, ``op`` (:data:`OP_NAMES`), ``pfn`` (-1
for an allocation the kernel failed), ``order`` and ``mt`` (the allocation's
migratetype; -1 for frees).  The footer records the kernel release, the page
size, the CPU count, the command, the recording start (wall clock and
monotonic), the events lost while recording per CPU and whether the file is
lossy.

Format history:

* version 1 — the layout above.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from .config import jit

FORMAT = "shmalloc-trace"
VERSION = 1
MAGIC = b"SHMTRACE"
TAIL = b"SHMTEND\n"
CHUNK_MAGIC = b"CHNK"
_HEAD = struct.Struct("<8sII")
_CHUNK = struct.Struct("<4sIqq")
_COL = struct.Struct("<BI")
_FOOT = struct.Struct("<I8s")

OP_ALLOC, OP_FREE, OP_FREE_BATCHED = 0, 1, 2
OP_NAMES = ("mm_page_alloc", "mm_page_free", "mm_page_free_batched")

#: the event arrays in memory: name -> dtype
EVENT_FIELDS = {"ts": np.int64, "cpu": np.uint16, "pid": np.int32, "op": np.uint8,
                "pfn": np.int64, "order": np.uint8, "mt": np.int8}
COLUMNS = tuple(EVENT_FIELDS)
DELTA_COLUMNS = ("ts", "pfn")
#: stored dtypes by code; a column is stored in the narrowest that holds it
_DTYPES = (np.dtype("<u1"), np.dtype("<i1"), np.dtype("<u2"), np.dtype("<i2"),
           np.dtype("<u4"), np.dtype("<i4"), np.dtype("<i8"))
ZLIB_LEVEL = 6


class TraceFileError(Exception):
    """The file cannot be read as a trace; the message is one line."""


def _narrowest(values: np.ndarray) -> int:
    if len(values) == 0:
        return 0
    lo, hi = int(values.min()), int(values.max())
    for code, dt in enumerate(_DTYPES):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return code
    return len(_DTYPES) - 1


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

class TraceWriter:
    """Stream chunks of time-ordered events into ``path``: written to a
    temporary file beside it and moved into place by :meth:`close` (never
    over an existing file unless ``force``)."""

    def __init__(self, path: str, force: bool = False, level: int = ZLIB_LEVEL):
        self.path = path
        self.level = level
        self.force = force
        folder = os.path.dirname(os.path.abspath(path))
        fd, self.tmp = tempfile.mkstemp(prefix=".shmalloc-trace-", dir=folder)
        self.f = os.fdopen(fd, "wb")
        self.f.write(_HEAD.pack(MAGIC, VERSION, 0))
        self.events = 0
        self.last_ts = 0
        self.bytes_raw = 0

    def add(self, ev: dict[str, np.ndarray]) -> None:
        """Append events (a dict of the :data:`EVENT_FIELDS` arrays, in time
        order and later than everything added before)."""
        n = len(ev["ts"])
        if n == 0:
            return
        first_ts, first_pfn = int(ev["ts"][0]), int(ev["pfn"][0])
        parts = [_CHUNK.pack(CHUNK_MAGIC, n, first_ts, first_pfn)]
        for name in COLUMNS:
            col = np.asarray(ev[name], dtype=EVENT_FIELDS[name])
            if name in DELTA_COLUMNS:
                col = np.diff(col.astype(np.int64), prepend=col[:1].astype(np.int64))
            code = _narrowest(col)
            raw = col.astype(_DTYPES[code]).tobytes()
            self.bytes_raw += len(raw)
            data = zlib.compress(raw, self.level)
            parts.append(_COL.pack(code, len(data)))
            parts.append(data)
        self.f.write(b"".join(parts))
        self.events += n
        self.last_ts = int(ev["ts"][-1])

    def close(self, footer: dict) -> None:
        """Write the footer and move the file into place."""
        doc = {"format": FORMAT, "version": VERSION, **footer, "events": self.events}
        data = json.dumps(doc, indent=1).encode()
        self.f.write(data)
        self.f.write(_FOOT.pack(len(data), TAIL))
        self.f.flush()
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(self.f.fileno(), 0o666 & ~umask)      # as open() would have made it
        os.fsync(self.f.fileno())
        self.f.close()
        try:
            if self.force:
                os.replace(self.tmp, self.path)
            else:
                os.link(self.tmp, self.path)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)

    def discard(self) -> None:
        if not self.f.closed:
            self.f.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def write(path: str, ev: dict[str, np.ndarray], footer: dict, force: bool = False,
          chunk: int = 1 << 20) -> None:
    """Write a whole trace at once (tests, conversions)."""
    w = TraceWriter(path, force=force)
    try:
        for s in range(0, len(ev["ts"]), chunk):
            w.add({k: v[s: s + chunk] for k, v in ev.items()})
        w.close(footer)
    except BaseException:
        w.discard()
        raise


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

@jit
def prefix_sum(delta, first, out):
    """``out = first + cumsum(delta) - delta[0]``: a delta-coded column back
    (numpy's cumsum from a narrow type costs 3x more)."""
    acc = np.int64(first)
    for i in range(len(delta)):
        if i:
            acc += np.int64(delta[i])
        out[i] = acc


@jit
def ordered(ts):
    for i in range(1, len(ts)):
        if ts[i] < ts[i - 1]:
            return False
    return True


@dataclass
class Trace:
    """A decoded trace: the footer (``header``) and the event arrays."""

    path: str
    header: dict
    ev: dict[str, np.ndarray] = field(repr=False)

    def __len__(self) -> int:
        return len(self.ev["ts"])

    @property
    def lossy(self) -> bool:
        return bool(self.header.get("lossy"))

    @property
    def lost_events(self) -> int:
        return int(self.header.get("lost_events", 0))

    @property
    def duration_s(self) -> float:
        """Recorded duration: the recording's own, else first to last event."""
        if self.header.get("duration_ns"):
            return self.header["duration_ns"] / 1e9
        ts = self.ev["ts"]
        return float(ts[-1] - ts[0]) / 1e9 if len(ts) else 0.0


def _fail(path: str, why: str):
    raise TraceFileError(f"{path}: {why}")


def read_header(path: str, data: bytes | None = None) -> tuple[dict, bytes]:
    """The footer of ``path`` (and the file's bytes), after checking head,
    version and tail."""
    try:
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
    except FileNotFoundError:
        _fail(path, "no such file")
    except IsADirectoryError:
        _fail(path, "is a folder, not a trace file")
    except OSError as e:
        _fail(path, f"cannot read: {e.strerror}")
    if len(data) < _HEAD.size or data[:8] != MAGIC:
        _fail(path, "not a shmalloc trace file (no SHMTRACE header)")
    _, version, _ = _HEAD.unpack_from(data, 0)
    if version != VERSION:
        _fail(path, f"trace format version {version}; this shmalloc reads version {VERSION}")
    if len(data) < _HEAD.size + _FOOT.size or data[-8:] != TAIL:
        _fail(path, "truncated trace file (its end is missing: the recording was cut short "
              "or the file was damaged)")
    flen, _ = _FOOT.unpack_from(data, len(data) - _FOOT.size)
    start = len(data) - _FOOT.size - flen
    if flen <= 0 or start < _HEAD.size:
        _fail(path, "damaged trace file (bad footer length)")
    try:
        header = json.loads(data[start: len(data) - _FOOT.size])
    except (ValueError, UnicodeDecodeError):
        _fail(path, "damaged trace file (its footer is not JSON)")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        _fail(path, "not a shmalloc trace file (foreign footer)")
    if header.get("version") != VERSION:
        _fail(path, f"trace format version {header.get('version')!r}; this shmalloc reads "
              f"version {VERSION}")
    header["_chunks_end"] = start
    return header, data


def load(path: str) -> Trace:
    """Read and decode a trace file; :class:`TraceFileError` (one line) for
    anything that is not a whole trace of a version we read."""
    header, data = read_header(path)
    end = header.pop("_chunks_end")
    total = header.get("events")
    if not isinstance(total, int) or total < 0:
        _fail(path, "damaged trace file (no event count in the footer)")
    ev = {name: np.empty(total, dt) for name, dt in EVENT_FIELDS.items()}
    pos = _HEAD.size
    at = 0
    try:
        while pos < end:
            magic, n, first_ts, first_pfn = _CHUNK.unpack_from(data, pos)
            if magic != CHUNK_MAGIC or at + n > total:
                _fail(path, f"damaged trace file (no chunk at byte {pos}, or more events than "
                      "the footer says)")
            pos += _CHUNK.size
            for name in COLUMNS:
                code, size = _COL.unpack_from(data, pos)
                pos += _COL.size
                if code >= len(_DTYPES) or pos + size > end:
                    _fail(path, f"damaged trace file (column {name} at byte {pos})")
                col = np.frombuffer(zlib.decompress(data[pos: pos + size]), dtype=_DTYPES[code])
                pos += size
                if len(col) != n:
                    _fail(path, f"damaged trace file ({name}: {len(col)} values, {n} events)")
                if name in DELTA_COLUMNS:
                    prefix_sum(col, first_ts if name == "ts" else first_pfn,
                               ev[name][at: at + n])
                else:
                    ev[name][at: at + n] = col
            at += n
    except (struct.error, zlib.error) as e:
        _fail(path, f"damaged trace file ({e})")
    if at != total:
        _fail(path, f"damaged trace file ({at} events, the footer says {total})")
    start = header.get("start_mono_ns")
    if not isinstance(start, int):
        start = int(ev["ts"].min()) if total else 0
    ev["ts"] -= start
    if total and not ordered(ev["ts"]):
        order = np.argsort(ev["ts"], kind="stable")
        ev = {k: v[order] for k, v in ev.items()}
    return Trace(path, header, ev)
