"""The hypervisor stub's discard path and the report protocol."""

from __future__ import annotations

import numpy as np
import pytest

from hypervisor_stub.stub import Hypervisor, StubOptions
from shmalloc import virtqueue
from shmalloc.layout import RS_HV_PAGES_DISCARDED, RS_HV_REQUESTS


def touch(m, pfn: int, pages: int) -> None:
    m.mem[pfn * 512:(pfn + pages) * 512:512] = np.arange(1, pages + 1, dtype=np.int64)


@pytest.mark.parametrize("how", ["punch", "remove"])
def test_acknowledged_report_frees_host_blocks(make_machine, how):
    m = make_machine(memory=16 << 20)
    touch(m, 0, 2048)                                  # 8 MiB resident
    before = m.host_resident_bytes()
    assert before == 2048 * 4096
    hv = Hypervisor(m, StubOptions(discard=how))
    assert hv.handle(virtqueue.KIND_REPORT, [(512, 9), (1024, 8)]) == 0
    assert m.host_resident_bytes() == before - (512 + 256) * 4096
    assert m.mem[512 * 512] == 0                       # a discarded page reads as zero
    assert m.mem[511 * 512] == 511 + 1                 # its neighbour is untouched
    assert m.zs[m.layout.off_report + RS_HV_PAGES_DISCARDED] == 768
    assert m.zs[m.layout.off_report + RS_HV_REQUESTS] == 1


def test_hints_and_discard_none_keep_the_memory(make_machine):
    m = make_machine(memory=16 << 20)
    touch(m, 0, 1024)
    before = m.host_resident_bytes()
    assert Hypervisor(m, StubOptions(discard="punch")).handle(virtqueue.KIND_HINT,
                                                               [(0, 9)]) == 0
    assert Hypervisor(m, StubOptions(discard="none")).handle(virtqueue.KIND_REPORT,
                                                              [(512, 9)]) == 0
    assert m.host_resident_bytes() == before


def test_report_message_round_trip():
    pfns, orders = np.array([0, 512, 1 << 30]), np.array([9, 10, 0])
    msg = virtqueue.encode_report(virtqueue.KIND_REPORT, 7, pfns, orders, 3)
    assert len(msg) == virtqueue.message_size(3)
    assert virtqueue.decode_report(msg) == (virtqueue.KIND_REPORT, 7,
                                            [(0, 9), (512, 10), (1 << 30, 0)])
    assert virtqueue.decode_ack(virtqueue.encode_ack(7, -5)) == (7, -5)
    with pytest.raises(virtqueue.ProtocolError):
        virtqueue.decode_report(msg[:-1])


def test_capacity_beyond_the_queue_limit_names_the_sysctl():
    big = virtqueue.max_capacity(int(open("/proc/sys/fs/mqueue/msgsize_max").read())) + 1
    with pytest.raises(virtqueue.ProtocolError, match="fs.mqueue.msgsize_max"):
        virtqueue.check_limits(big)
    virtqueue.check_limits(32)
