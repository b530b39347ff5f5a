"""What stands behind ``report(batch)``: the virtio-balloon driver's side of
the report virtqueue (drivers/virtio/virtio_balloon.c,
``virtballoon_free_page_report``).

The contract a design sees is include/linux/page_reporting.h's: one call,
``report(pfns, orders, n) -> err``, that returns when the host is done with
the ranges.  Here it sends a message to the hypervisor stub and waits for the
acknowledgement; tests plug in a device that records instead.
"""

from __future__ import annotations

import posix_ipc

from shmalloc import virtqueue
from shmalloc.layout import H_STOP, STOP_HYPERVISOR

ACK_POLL_S = 0.1
E_NO_HOST = -100          # the hypervisor stub went away before answering


class QueueDevice:
    """Reports travel on the run's message queues to the hypervisor stub."""

    def __init__(self, machine, kind: int = virtqueue.KIND_REPORT):
        self.machine = machine
        self.kind = kind
        self.report_q, self.ack_q = virtqueue.open_queues(machine.run_id)
        self.req_id = 0

    def report(self, pfns, orders, n: int) -> int:
        """Send ``n`` ranges and wait for the host: 0 on success, else an error."""
        self.req_id += 1
        self.report_q.send(virtqueue.encode_report(self.kind, self.req_id, pfns, orders, n))
        while True:
            try:
                ack, _ = self.ack_q.receive(ACK_POLL_S)
            except posix_ipc.BusyError:
                if self.machine.zs[H_STOP] >= STOP_HYPERVISOR:
                    return E_NO_HOST
                continue
            req_id, status = virtqueue.decode_ack(ack)
            if req_id == self.req_id:
                return status

    def close(self) -> None:
        self.report_q.close()
        self.ack_q.close()
