"""The guest's data channel: its lines parsed, its clock mapped onto the host's.

``guest/shmguest.c`` documents the lines (``H``, ``W``, ``S``, ``G``, ``P``,
``K``, ``E``, ``X``, ``F``).  Each carries the guest's CLOCK_MONOTONIC (``t=``
in ns; a kprobe event's ``ts=`` in s, the trace clock being ``mono``); the
host notes its own CLOCK_MONOTONIC when it reads the line.

Clock mapping: every stamped line gives ``host_read - guest_t``, the offset
between the two clocks plus the line's delay in the serial port, the socket
and the host's loop (never negative).  The smallest of them over the run is
the offset (the line that went through fastest), as NTP takes its best
sample; ``spread_s`` (their median minus the smallest) says how late lines
usually arrive, and ``drift_s`` compares the smallest of the first and the
last quarter of the run: the guest's clock under TCG follows the host's, so
it stays within a millisecond here.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


def parse(line: str) -> tuple[str, dict] | None:
    """``"G t=5 memfree_kb=3"`` -> ``("G", {"t": "5", "memfree_kb": "3"})``;
    an ``F`` line's text is its ``message``; None for a line that is not ours."""
    if len(line) < 2 or line[1] != " " or line[0] not in "HWSGPKEXF":
        return None
    tag, rest = line[0], line[2:]
    if tag == "F":
        return tag, {"message": rest}
    out = {}
    for word in rest.split():
        key, eq, value = word.partition("=")
        if eq:
            out[key] = value
        else:                                   # free text (W)
            out.setdefault("text", []).append(word)
    if "text" in out:
        out["text"] = " ".join(out["text"])
    return tag, out


def guest_seconds(fields: dict) -> float | None:
    if "t" in fields:
        return int(fields["t"]) / 1e9
    if "ts" in fields:
        return float(fields["ts"])
    return None


@dataclass
class ClockMap:
    """Guest CLOCK_MONOTONIC -> host CLOCK_MONOTONIC."""

    pairs: list = field(default_factory=list)     # (guest s, host s)

    def add(self, guest_s: float, host_s: float) -> None:
        self.pairs.append((guest_s, host_s))

    @property
    def offset(self) -> float:
        return min(h - g for g, h in self.pairs)

    def to_host(self, guest_s: float) -> float:
        return guest_s + self.offset

    def quality(self) -> dict:
        if not self.pairs:
            return {"pairs": 0}
        d = [h - g for g, h in self.pairs]
        q = max(1, len(d) // 4)
        return {"pairs": len(d), "offset_s": round(min(d), 6),
                "spread_s": round(statistics.median(d) - min(d), 6),
                "drift_s": round(min(d[-q:]) - min(d[:q]), 6)}


def report_bytes(fields: dict) -> int:
    """Bytes in one virtballoon_free_page_report call: the first ``n`` of
    the scatterlist entries' lengths the kprobe fetched (``l0``..``l31``)."""
    n = int(fields.get("n", 0))
    return sum(int(fields.get(f"l{i}", 0)) for i in range(min(n, 32)))
