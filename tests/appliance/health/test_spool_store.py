"""Spool: order, ack, persistence across reopen, torn-tail recovery, bounded size with counted drops."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.health.spool import Spool, SpoolError


def fill(sp: Spool, n: int, topic: str = "omgw/v1/GW1/telemetry", start: int = 0, size: int = 20) -> None:
    for i in range(start, start + n):
        sp.append(topic, b'{"seq":%d,"pad":"%s"}' % (i, b"x" * size), 1, False, 1_000 + i)


def seqs(msgs) -> list[int]:
    return [int(m.payload.split(b",")[0].split(b":")[1]) for m in msgs]


def test_next_batch_is_oldest_first_and_ack_removes(tmp_path: Path) -> None:
    with Spool(tmp_path, 1) as sp:
        fill(sp, 10)
        b = sp.next_batch(4)
        assert seqs(b) == [0, 1, 2, 3] and [m.time_ns for m in b] == [1000, 1001, 1002, 1003]
        assert seqs(sp.next_batch(4)) == [0, 1, 2, 3]  # peek: nothing removed yet
        sp.ack(b[-1].id)
        assert seqs(sp.next_batch(100)) == list(range(4, 10))
        assert len(sp) == 6 and sp.pending_for("omgw/v1/GW1/telemetry") == 6 and sp.pending_for("x") == 0


def test_reopen_resumes_after_the_acked_position(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 1, segment_bytes=4096)
    fill(sp, 300)
    sp.ack(sp.next_batch(120)[-1].id)
    sp.close()
    sp = Spool(tmp_path, 1, segment_bytes=4096)
    assert len(sp) == 180 and seqs(sp.next_batch(1)) == [120]
    fill(sp, 5, start=300)
    assert sp.next_batch(1000)[-1].id == 305 and seqs(sp.next_batch(1000)) == list(range(120, 305))
    sp.close()


def test_torn_tail_is_cut_and_appends_continue(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 1)
    fill(sp, 10)
    sp.close()
    seg = sorted(tmp_path.glob("seg-*.spool"))[-1]
    size = seg.stat().st_size
    with open(seg, "r+b") as f:  # power loss in the middle of the 10th record
        f.truncate(size - 7)
    with open(seg, "ab") as f:  # ... or a zero-filled block after a size update
        f.write(bytes(64))
    sp = Spool(tmp_path, 1)
    assert seqs(sp.next_batch(100)) == list(range(9))
    fill(sp, 2, start=100)
    sp.close()
    sp = Spool(tmp_path, 1)
    assert seqs(sp.next_batch(100)) == [*range(9), 100, 101]
    sp.close()


def test_corrupt_record_in_an_old_segment_costs_only_that_record(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 1, segment_bytes=4096)
    fill(sp, 200)
    sp.close()
    first = sorted(tmp_path.glob("seg-*.spool"))[0]
    data = bytearray(first.read_bytes())
    data[32 + 25] ^= 0xFF  # inside the first record's payload
    first.write_bytes(bytes(data))
    sp = Spool(tmp_path, 1, segment_bytes=4096)
    assert seqs(sp.next_batch(1000)) == list(range(1, 200))
    assert sp.stats()["corrupt"] == 1
    sp.close()


def test_overflow_drops_oldest_whole_segments_and_counts_them(tmp_path: Path) -> None:
    sp = Spool(tmp_path, 64 / 1024, segment_bytes=8192)  # 64 KiB, 8 KiB segments
    fill(sp, 3000, size=40)
    st_ = sp.stats()
    assert st_["bytes"] <= 64 * 1024
    assert st_["dropped"] > 0 and st_["dropped"] + st_["pending"] == 3000
    got = seqs(sp.next_batch(10_000))
    assert got == list(range(3000 - len(got), 3000))  # the newest survive, contiguous, in order
    disk = sum(p.stat().st_size for p in tmp_path.glob("seg-*.spool"))
    assert disk <= 64 * 1024
    sp.close()


def test_topic_that_cannot_be_spooled_is_refused(tmp_path: Path) -> None:
    with Spool(tmp_path, 1) as sp, pytest.raises(SpoolError):
        sp.append("a\nb", b"{}")


def test_fully_acked_segments_are_deleted(tmp_path: Path) -> None:
    with Spool(tmp_path, 1, segment_bytes=4096) as sp:
        fill(sp, 500)
        assert len(list(tmp_path.glob("seg-*.spool"))) > 3
        sp.ack(sp.next_batch(500)[-1].id)
        assert len(list(tmp_path.glob("seg-*.spool"))) == 1 and len(sp) == 0


@settings(max_examples=30, deadline=None)
@given(cut=st.integers(min_value=0, max_value=4000), ops=st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_any_truncation_recovers_a_prefix(tmp_path_factory, cut: int, ops: list[int]) -> None:
    d = tmp_path_factory.mktemp("sp")
    sp = Spool(d, 1, segment_bytes=1 << 16)
    n = 0
    for k in ops:
        fill(sp, k, start=n)
        n += k
    sp.close()
    seg = sorted(d.glob("seg-*.spool"))[-1]
    size = seg.stat().st_size
    os.truncate(seg, max(0, size - cut))
    sp = Spool(d, 1, segment_bytes=1 << 16)
    got = seqs(sp.next_batch(10_000))
    assert got == list(range(len(got)))  # a prefix, never garbage or a gap
    sp.close()
