"""The report protocol: virtio-balloon's free page reporting virtqueue as two
POSIX message queues (include/uapi/linux/virtio_balloon.h in spirit).

``/shmalloc-<run>-report``  guest -> host: a report, a request id and up to
                            ``capacity`` (pfn, order) ranges;
``/shmalloc-<run>-ack``     host -> guest: the request id and a status.

The reporter sends one report and waits for its acknowledgement before the
pages go back to the free lists, as ``virtballoon_free_page_report`` waits
for the host to use the buffer.  ``KIND_HINT`` is Wang's free page hinting
(the host records the ranges, as for live migration); ``KIND_REPORT`` asks
the host to discard them.

Linux's default queue limits are 10 messages of 8 KiB (fs.mqueue.msg_max,
fs.mqueue.msgsize_max).  A report is a 24-byte header and 8 bytes per range,
so the default limits allow 1021 ranges; :func:`check_limits` says which
sysctl to raise when a configuration does not fit.
"""

from __future__ import annotations

import struct

import posix_ipc

from . import shm

MAGIC = 0x54525052           # "RPRT"
VERSION = 1
KIND_REPORT = 1
KIND_HINT = 2
HEADER = struct.Struct("<IHHQI4x")      # magic, version, kind, request id, ranges
ACK = struct.Struct("<IHHQi4x")         # magic, version, 0, request id, status
RANGE_BYTES = 8                         # pfn << 8 | order, little-endian uint64
QUEUE_DEPTH = 4                         # one report is in flight at a time
ROLES = ("report", "ack")


class ProtocolError(Exception):
    """A malformed message, or queues the system's limits do not allow."""

    def __init__(self, message: str, flag: str | None = None):
        super().__init__(message)
        self.flag = flag


def message_size(capacity: int) -> int:
    return HEADER.size + capacity * RANGE_BYTES


def max_capacity(msgsize_max: int) -> int:
    return (msgsize_max - HEADER.size) // RANGE_BYTES


def _sysctl(name: str, default: int) -> int:
    try:
        with open(f"/proc/sys/fs/mqueue/{name}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


def check_limits(capacity: int) -> None:
    """Raise ProtocolError naming the sysctl to raise if the system's
    message-queue limits cannot carry reports of ``capacity`` ranges."""
    size_max = _sysctl("msgsize_max", 8192)
    if message_size(capacity) > size_max:
        raise ProtocolError(
            f"a report of {capacity} ranges needs {message_size(capacity)}-byte messages but "
            f"fs.mqueue.msgsize_max is {size_max} (at most {max_capacity(size_max)} ranges); "
            f"lower --capacity or raise it: sysctl -w fs.mqueue.msgsize_max="
            f"{message_size(capacity)}", flag="--capacity")
    msg_max = _sysctl("msg_max", 10)
    if msg_max < 2:
        raise ProtocolError(f"fs.mqueue.msg_max is {msg_max}; the report queue needs 2 "
                            "messages: sysctl -w fs.mqueue.msg_max=10")


def queue_names(run_id: str) -> list[str]:
    return [shm.object_name(run_id, role) for role in ROLES]


def create_queues(run_id: str, capacity: int) -> tuple:
    """Create the report and ack queues (O_CREX, 0600)."""
    check_limits(capacity)
    depth = min(QUEUE_DEPTH, _sysctl("msg_max", 10))
    created = []
    try:
        for name, size in zip(queue_names(run_id), (message_size(capacity), ACK.size)):
            created.append(posix_ipc.MessageQueue(name, posix_ipc.O_CREX, mode=shm.MODE,
                                                  max_messages=depth, max_message_size=size))
    except (posix_ipc.Error, OSError, ValueError) as e:
        for q in created:
            q.close()
            q.unlink()
        raise ProtocolError(f"cannot create the report queues: {e} (see fs.mqueue.queues_max "
                            "and ulimit -q)") from e
    return tuple(created)


def open_queues(run_id: str) -> tuple:
    return tuple(posix_ipc.MessageQueue(name) for name in queue_names(run_id))


def unlink_queues(run_id: str) -> None:
    for name in queue_names(run_id):
        shm.unlink_message_queue(name)


def encode_report(kind: int, req_id: int, pfns, orders, n: int) -> bytes:
    body = bytearray(HEADER.pack(MAGIC, VERSION, kind, req_id, n))
    for i in range(n):
        body += struct.pack("<Q", (int(pfns[i]) << 8) | int(orders[i]))
    return bytes(body)


def decode_report(msg: bytes) -> tuple[int, int, list[tuple[int, int]]]:
    """(kind, request id, [(pfn, order), ...])."""
    if len(msg) < HEADER.size:
        raise ProtocolError(f"short report ({len(msg)} bytes)")
    magic, version, kind, req_id, n = HEADER.unpack_from(msg)
    if magic != MAGIC or version != VERSION or kind not in (KIND_REPORT, KIND_HINT):
        raise ProtocolError("not a report message of this protocol version")
    if len(msg) != HEADER.size + n * RANGE_BYTES:
        raise ProtocolError(f"report {req_id}: {n} ranges but {len(msg)} bytes")
    ranges = []
    for (word,) in struct.iter_unpack("<Q", msg[HEADER.size:]):
        ranges.append((word >> 8, word & 0xFF))
    return kind, req_id, ranges


def encode_ack(req_id: int, status: int) -> bytes:
    return ACK.pack(MAGIC, VERSION, 0, req_id, status)


def decode_ack(msg: bytes) -> tuple[int, int]:
    magic, version, _, req_id, status = ACK.unpack(msg)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError("not an acknowledgement of this protocol version")
    return req_id, status
