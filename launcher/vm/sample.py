"""Host-side samples of a QEMU process: what free page reporting is
measured by on a real host.

* ``rss_bytes``: QEMU's whole resident set (``/proc/PID/statm``), its own
  code, heap and TCG's translation cache included;
* ``guest_rss_bytes`` and ``anon_huge_bytes``: ``Rss`` and ``AnonHugePages``
  of the guest-RAM mapping alone, from ``/proc/PID/smaps`` (the anonymous
  mapping of exactly the guest's size: QEMU's ``pc.ram``): the host-resident
  guest memory, the model's ``host_resident_bytes``;
* ``minflt``, ``majflt``: QEMU's page faults, all threads
  (``/proc/PID/stat`` fields 10 and 12).  A fault on guest memory the host
  discarded after a report is the real refault; with transparent huge pages
  one fault brings back (and zeroes) 2 MiB.
* ``cpu_s``: QEMU's user + system time (fields 14 and 15).
"""

from __future__ import annotations

import os

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


class HostSampler:
    def __init__(self, pid: int, guest_bytes: int):
        self.pid = pid
        self.guest_kib = guest_bytes >> 10
        self.ram_range: str | None = None       # "start-end" of the guest-RAM mapping

    def _stat(self) -> list[bytes]:
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            data = f.read()
        return data[data.rindex(b")") + 2:].split()

    def _guest_ram(self) -> tuple[int, int]:
        """(Rss, AnonHugePages) of the guest-RAM mapping, bytes."""
        with open(f"/proc/{self.pid}/smaps", "rb") as f:
            text = f.read()
        if self.ram_range is None:
            self.ram_range = self._find_ram(text)
            if self.ram_range is None:
                return 0, 0
        at = text.find(self.ram_range.encode() + b" ")
        if at < 0:
            return 0, 0
        rss = huge = 0
        for line in text[at:].split(b"\n")[1:]:
            if line.startswith(b"Rss:"):
                rss = int(line.split()[1]) << 10
            elif line.startswith(b"AnonHugePages:"):
                huge = int(line.split()[1]) << 10
            elif line and not line[:1].isupper():      # the next mapping's header
                break
        return rss, huge

    def _find_ram(self, text: bytes) -> str | None:
        header = None
        for line in text.split(b"\n"):
            if line and not line[:1].isupper():
                parts = line.split()
                header = parts[0].decode() if len(parts) == 5 else None   # anonymous
            elif header and line.startswith(b"Size:") and int(line.split()[1]) == self.guest_kib:
                return header
        return None

    def sample(self) -> dict | None:
        """One sample, or None once QEMU is gone."""
        try:
            fields = self._stat()
            with open(f"/proc/{self.pid}/statm", "rb") as f:
                rss = int(f.read().split()[1]) * PAGE
            guest_rss, huge = self._guest_ram()
        except (OSError, ValueError, IndexError):
            return None
        return {"rss_bytes": rss, "guest_rss_bytes": guest_rss, "anon_huge_bytes": huge,
                "minflt": int(fields[7]), "majflt": int(fields[9]),
                "cpu_s": (int(fields[11]) + int(fields[12])) / TICK}
