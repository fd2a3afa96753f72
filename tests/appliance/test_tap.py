"""The tap: pure codec and packing, then sender and receiver over real Unix datagram sockets."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.tap import (
    RESERVED_KEYS,
    DatagramPacker,
    SeqTracker,
    TapDatagram,
    TapFormatError,
    TapReceiver,
    TapRecord,
    TapSender,
    decode_datagram,
    encode_batches,
    encode_record,
    record_budget,
)

GW = "gw-test"

METER_VALUES = (
    '[2,"{n}","MeterValues",{{"connectorId":1,"transactionId":42,"meterValue":[{{"timestamp":'
    '"2026-11-25T17:10:51Z","sampledValue":[{{"value":"{n}","measurand":"Energy.Active.Import.Register",'
    '"unit":"Wh"}},{{"value":"7.2","measurand":"Power.Active.Import","unit":"kW"}}]}}]}}]'
)


def frame(n: int) -> str:
    return METER_VALUES.format(n=n)


def decode_all(datagrams: list[bytes]) -> list[TapRecord]:
    return [r for d in datagrams for r in decode_datagram(d).records]


# --------------------------------------------------------------------------------------------------
# Pure core

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
# Frames include lone surrogates and control characters: the codec must carry any str.
any_text = st.text(st.characters(exclude_categories=()), max_size=3000)
records_strategy = st.builds(
    TapRecord,
    time_ns=st.integers(min_value=0, max_value=2**64),
    cp_id=st.text(max_size=20),
    direction=st.sampled_from(["up", "down", ""]),
    event=st.sampled_from(["frame", "connect", "disconnect", "upstream_closed", "stats"]),
    frame=st.none() | any_text,
    extra=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in RESERVED_KEYS), json_values, max_size=3),
)


def test_round_trip_of_frames_and_connection_events() -> None:
    records = [
        TapRecord(1_764_090_651_123_456_789, "CP7", "up", "frame", frame(1)),
        TapRecord(1_764_090_651_200_000_000, "CP7", "down", "frame", '[3,"1",{"currentTime":"2026-11-25T17:10:51Z"}]'),
        TapRecord(1_764_090_652_000_000_000, "CP7", "", "disconnect", None, {"code": 1006, "reason": ""}),
        TapRecord(1_764_090_653_000_000_000, "", "", "stats", None, {"stats": {"frames_up": 10, "cps": ["CP7"]}}),
        TapRecord(1_764_090_654_000_000_000, "CP-é", "up", "frame", '[2,"2","DataTransfer",{"data":"ü€😀"}]'),
    ]
    datagrams = encode_batches(records, GW, first_seq=7, dropped=3, max_bytes=65_000)
    assert len(datagrams) == 1
    decoded = decode_datagram(datagrams[0])
    assert decoded == TapDatagram(gateway_id=GW, seq=7, dropped=3, records=tuple(records))


def test_datagram_is_compact_ascii_json_in_the_documented_layout() -> None:
    rec = TapRecord(5, "CP7", "", "disconnect", None, {"code": 1006})
    (data,) = encode_batches([rec], "gw-01", first_seq=1, dropped=0, max_bytes=65_000)
    assert data == (
        b'{"v":1,"gw":"gw-01","seq":1,"drop":0,"recs":[{"t":5,"cp":"CP7","dir":"","ev":"disconnect","code":1006}]}'
    )
    assert json.loads(data) == {
        "v": 1, "gw": "gw-01", "seq": 1, "drop": 0,
        "recs": [{"t": 5, "cp": "CP7", "dir": "", "ev": "disconnect", "code": 1006}],
    }  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(records_strategy, max_size=40),
    max_bytes=st.integers(min_value=300, max_value=4000),
    first_seq=st.integers(min_value=1, max_value=10**9),
    dropped=st.integers(min_value=0, max_value=10**9),
)
def test_packing_respects_max_bytes_and_keeps_every_sendable_record_in_order(
    records: list[TapRecord], max_bytes: int, first_seq: int, dropped: int
) -> None:
    datagrams = encode_batches(records, GW, first_seq, dropped, max_bytes)
    budget = record_budget(GW, max_bytes)

    assert all(len(d) <= max_bytes for d in datagrams)
    decoded = [decode_datagram(d) for d in datagrams]
    assert [d.seq for d in decoded] == list(range(first_seq, first_seq + len(datagrams)))
    assert all(d.dropped == dropped and d.gateway_id == GW and d.records for d in decoded)

    sendable = [r for r in records if encode_record(r, budget) is not None]
    got = [r for d in decoded for r in d.records]
    assert len(got) == len(sendable)
    empty = len(b'{"v":1,"gw":"gw-test","seq":1,"drop":0,"recs":[]}')
    for want, have in zip(sendable, got, strict=True):
        fits_whole = len(encode_batches([want], GW, 1, 0, 10**9)[0]) - empty <= budget
        if fits_whole:
            assert have == want
        else:  # cut to fit, flagged with the original size
            assert want.frame is not None and have.frame is not None
            assert want.frame.startswith(have.frame)
            assert have.truncated_from == len(want.frame.encode("utf-8", "surrogatepass"))
            assert (have.time_ns, have.cp_id, have.direction, have.event, have.extra) == (
                want.time_ns, want.cp_id, want.direction, want.event, want.extra,
            )  # fmt: skip

    # Greedy: a datagram was closed only because the next record did not fit in it. The envelope
    # reserves room for 20-digit seq and drop numbers, hence the slack.
    for prev, nxt in zip(datagrams, decoded[1:]):
        first = encode_record(nxt.records[0], budget)
        assert first is not None
        assert len(prev) + 1 + len(first[0]) > max_bytes - 40


@settings(max_examples=200, deadline=None)
@given(records=st.lists(records_strategy, max_size=60), first_seq=st.integers(min_value=1, max_value=99))
def test_records_that_fit_come_back_exactly_in_order(records: list[TapRecord], first_seq: int) -> None:
    # Frames of at most 3000 characters (at most 36 kB escaped) always fit the default 65,000 bytes.
    datagrams = encode_batches(records, GW, first_seq, 0, 65_000)
    assert all(len(d) <= 65_000 for d in datagrams)
    assert decode_all(datagrams) == records


def test_oversize_frame_is_truncated_to_fit_and_flagged_with_its_original_byte_length() -> None:
    huge = '[2,"9","DataTransfer",{"data":"' + "é" * 100_000 + '"}]'
    records = [
        TapRecord(1, "CP1", "up", "frame", frame(1)),
        TapRecord(2, "CP1", "up", "frame", huge),
        TapRecord(3, "CP1", "down", "frame", '[3,"9",{"status":"Accepted"}]'),
    ]
    datagrams = encode_batches(records, GW, 1, 0, 65_000)
    assert all(len(d) <= 65_000 for d in datagrams)
    got = decode_all(datagrams)
    assert got[0] == records[0] and got[2] == records[2]
    cut = got[1]
    assert cut.truncated_from == len(huge.encode("utf-8")) == 200_034
    assert cut.frame is not None and huge.startswith(cut.frame)
    assert len(cut.frame) > 60_000 // 6  # "é" is escaped as \u00e9: about a sixth of the bytes
    # The oversize record got a datagram of its own, filled close to the limit.
    assert len(datagrams) == 3 and len(datagrams[1]) > 65_000 - 100


def test_record_whose_metadata_alone_exceeds_the_limit_is_left_out_and_counted() -> None:
    packer = DatagramPacker(GW, max_bytes=1000)
    assert packer.add(TapRecord(1, "CP1", "", "stats", None, {"blob": "x" * 5000}), dropped=0) is None
    assert packer.add(TapRecord(2, "CP1", "", "connect"), dropped=0) is None
    sealed = packer.flush(dropped=0)
    assert packer.unencodable == 1
    assert sealed is not None and sealed.count == 1
    assert [r.time_ns for r in decode_datagram(sealed.data).records] == [2]


def test_extra_keys_that_clash_with_record_keys_are_ignored_and_odd_values_become_strings() -> None:
    rec = TapRecord(1, "CP1", "up", "frame", "[]", {"t": 99, "f": "forged", "code": 1000, "path": Path("/x")})
    (got,) = decode_all(encode_batches([rec], GW, 1, 0, 65_000))
    assert (got.time_ns, got.frame) == (1, "[]")
    assert got.extra == {"code": 1000, "path": "/x"}


def valid_datagram() -> bytes:
    return encode_batches([TapRecord(1, "CP1", "up", "frame", "[]")], GW, 1, 0, 65_000)[0]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[1,2]",
        b'{"v":2,"gw":"g","seq":1,"drop":0,"recs":[]}',
        b'{"v":true,"gw":"g","seq":1,"drop":0,"recs":[]}',
        b'{"v":1,"gw":"g","seq":0,"drop":0,"recs":[]}',
        b'{"v":1,"gw":"g","seq":true,"drop":0,"recs":[]}',
        b'{"v":1,"gw":"g","seq":1,"drop":-1,"recs":[]}',
        b'{"v":1,"gw":7,"seq":1,"drop":0,"recs":[]}',
        b'{"v":1,"gw":"g","seq":1,"drop":0}',
        b'{"v":1,"gw":"g","seq":1,"drop":0,"recs":[7]}',
        b'{"v":1,"gw":"g","seq":1,"drop":0,"recs":[{"cp":"C","dir":"","ev":"x"}]}',
        b'{"v":1,"gw":"g","seq":1,"drop":0,"recs":[{"t":1.5,"cp":"C","dir":"","ev":"x"}]}',
        b'{"v":1,"gw":"g","seq":1,"drop":0,"recs":[{"t":1,"cp":"C","dir":"","ev":"frame","f":3}]}',
        b'{"v":1,"gw":"g","seq":1,"drop":0,"recs":[{"t":1,"cp":"C","dir":"","ev":"frame","f":"","trunc":-1}]}',
        b"[" * 100_000,
    ],
)
def test_decode_rejects_malformed_datagrams(data: bytes) -> None:
    with pytest.raises(TapFormatError):
        decode_datagram(data)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300) | st.builds(lambda d, i, b: d[:i] + bytes([b]) + d[i + 1 :],
       st.just(valid_datagram()), st.integers(0, 90), st.integers(0, 255)))  # fmt: skip
def test_decode_of_arbitrary_bytes_returns_a_datagram_or_raises_tap_format_error(data: bytes) -> None:
    try:
        assert isinstance(decode_datagram(data), TapDatagram)
    except TapFormatError:
        pass


def test_seq_tracker_counts_gaps_per_sender_and_survives_a_restart() -> None:
    t = SeqTracker()
    assert [t.observe("a", s) for s in (5, 6, 9)] == [0, 0, 2]  # first seen at 5: not a loss
    assert t.observe("b", 1) == 0  # another gateway has its own sequence
    assert t.observe("a", 1) == 0 and t.restarts == 1  # sender restarted
    assert t.observe("a", 2) == 0
    assert t.observe("a", 2) == 1 and t.restarts == 2  # restarted again and missed its datagram 1
    assert t.lost == 3


# --------------------------------------------------------------------------------------------------
# Sender and receiver over real sockets


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    path = tmp_path / "run" / "tap.sock"
    assert len(os.fsencode(path)) < 100, "AF_UNIX paths are limited to 108 bytes"
    return path


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def collect(rx: TapReceiver, n_records: int, timeout: float = 10.0) -> list[TapDatagram]:
    out: list[TapDatagram] = []

    async def read() -> None:
        async for d in rx.datagrams():
            out.append(d)
            if sum(len(x.records) for x in out) >= n_records:
                return

    await asyncio.wait_for(read(), timeout)
    return out


def accounted(tx: TapSender) -> int:
    return tx.sent_records + tx.dropped


async def test_burst_of_5000_records_arrives_complete_and_in_order(sock_path: Path) -> None:
    async with TapReceiver(sock_path) as rx:
        tx = TapSender(sock_path, GW)
        task = asyncio.create_task(tx.run())
        for i in range(5000):
            tx.put(i, f"CP{i % 7}", "up" if i % 2 else "down", "frame", frame(i))
        got = await collect(rx, 5000)
        task.cancel()

        records = [r for d in got for r in d.records]
        assert [r.time_ns for r in records] == list(range(5000))
        assert all(r.frame == frame(r.time_ns) and r.truncated_from is None for r in records)
        assert [d.seq for d in got] == list(range(1, len(got) + 1))
        assert 5 < len(got) < 50  # batched: far fewer datagrams than records
        assert tx.dropped == 0 and all(d.dropped == 0 for d in got)
        assert (tx.sent_records, tx.sent_datagrams) == (5000, len(got))
        assert (rx.received, rx.records, rx.lost, rx.malformed, rx.overflow) == (len(got), 5000, 0, 0, 0)
        # One way: nothing ever came back to the sender's socket.
        assert tx._sock is not None
        with pytest.raises(BlockingIOError):
            tx._sock.recv(1, socket.MSG_DONTWAIT)


async def test_stopping_the_sender_mid_burst_loses_no_record_uncounted(sock_path: Path) -> None:
    async with TapReceiver(sock_path) as rx:
        tx = TapSender(sock_path, GW)
        for i in range(3000):
            tx.put(i, "CP1", "up", "frame", frame(i))
        task = asyncio.create_task(tx.run())
        for _ in range(100):  # the sender yields after each datagram: stop it between two of them
            await asyncio.sleep(0)
            if tx.sent_datagrams >= 2:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert 0 < tx.queued < 3000
        assert tx.sent_records + tx.dropped + tx.queued == 3000 and tx.dropped == 0
        await wait_until(lambda: rx.records == tx.sent_records)


async def test_absent_socket_counts_drops_without_raising_and_reconnects_when_the_receiver_appears(
    sock_path: Path,
) -> None:
    tx = TapSender(sock_path, GW, reconnect_interval=0.1, linger=0)
    task = asyncio.create_task(tx.run())
    for i in range(300):
        tx.put(i, "CP1", "up", "frame", frame(i))
    await wait_until(lambda: tx.queued == 0 and accounted(tx) == 300)
    assert (tx.dropped_socket, tx.sent_records, tx.connected) == (300, 0, False)

    async with TapReceiver(sock_path) as rx:
        await asyncio.sleep(0.15)  # past the reconnect interval
        for i in range(300, 310):
            tx.put(i, "CP1", "up", "frame", frame(i))
        got = await collect(rx, 10)
        assert [r.time_ns for d in got for r in d.records] == list(range(300, 310))
        assert got[0].dropped == 300  # the receiver learns what it missed
        assert not task.done()
        task.cancel()


async def test_connect_is_retried_at_most_once_per_second(sock_path: Path) -> None:
    tx = TapSender(sock_path, GW, linger=0)
    task = asyncio.create_task(tx.run())
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 1.5:
        tx.put(i, "CP1", "up", "frame", frame(i))
        i += 1
        await asyncio.sleep(0.01)
    task.cancel()
    assert tx.connect_attempts == 2  # at t=0 and t=1 s, not once per datagram
    assert tx.dropped_socket == i and tx.sent_records == 0


async def test_sender_reconnects_after_the_receiver_restarts(sock_path: Path) -> None:
    tx = TapSender(sock_path, GW, reconnect_interval=0.05, linger=0)
    task = asyncio.create_task(tx.run())
    async with TapReceiver(sock_path) as rx1:
        tx.put(1, "CP1", "", "connect")
        await collect(rx1, 1)
    async with TapReceiver(sock_path) as rx2:
        tx.put(2, "CP1", "", "disconnect")  # refused: the connected peer is gone
        await wait_until(lambda: tx.dropped_socket == 1)
        await asyncio.sleep(0.06)
        tx.put(3, "CP1", "", "connect")
        got = await collect(rx2, 1)
        assert [r.time_ns for r in got[0].records] == [3]
        assert got[0].dropped == 1
    task.cancel()


async def test_slow_reader_never_blocks_the_sender_and_drops_are_counted(sock_path: Path) -> None:
    sock_path.parent.mkdir()
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # bound, never read
    reader.bind(os.fspath(sock_path))
    loop = asyncio.get_running_loop()
    tx = TapSender(sock_path, GW)
    task = asyncio.create_task(tx.run())
    max_late = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal max_late
        while not stop:
            due = loop.time() + 0.005
            await asyncio.sleep(0.005)
            max_late = max(max_late, loop.time() - due)

    tick = asyncio.create_task(ticker())
    total = 0
    for _ in range(50):  # 50,000 records in 0.5 s
        for _ in range(1000):
            tx.put(total, "CP1", "up", "frame", frame(total))
            total += 1
        await asyncio.sleep(0.01)
    await wait_until(lambda: tx.queued == 0 and accounted(tx) == total)
    stop = True
    await tick
    task.cancel()

    assert max_late < 0.05, f"event loop stalled for {max_late * 1000:.1f} ms"
    assert tx.dropped_socket > 0 and tx.dropped_queue == 0
    assert tx.sent_records + tx.dropped_socket == total
    queued_in_kernel = 0
    reader.setblocking(False)
    with pytest.raises(BlockingIOError):
        while True:
            reader.recv(1 << 17)
            queued_in_kernel += 1
    assert queued_in_kernel == tx.sent_datagrams <= 11  # net.unix.max_dgram_qlen (10) + 1
    reader.close()


async def test_full_queue_drops_new_records_counts_them_and_memory_stays_bounded(sock_path: Path) -> None:
    tx = TapSender(sock_path, GW, max_queue=1000)
    payload = frame(0)
    for i in range(1000):
        tx.put(i, "CP1", "up", "frame", payload)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(1000, 101_000):
        tx.put(i, "CP1", "up", "frame", payload, code=1000)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert (tx.queued, tx.dropped_queue) == (1000, 100_000)
    assert grown < 16_384

    async with TapReceiver(sock_path) as rx:
        task = asyncio.create_task(tx.run())
        got = await collect(rx, 1000)
        task.cancel()
    assert [r.time_ns for d in got for r in d.records] == list(range(1000))  # the new ones were dropped
    assert got[0].dropped == 100_000


async def test_frames_are_redacted_before_they_leave_and_unredactable_frames_are_dropped(sock_path: Path) -> None:
    def redact(f: str) -> str:
        if "broken" in f:
            raise ValueError("cannot parse")
        return f.replace("TAG-123", "hmac:0123456789abcdef")

    async with TapReceiver(sock_path) as rx:
        tx = TapSender(sock_path, GW, redact=redact)
        task = asyncio.create_task(tx.run())
        tx.put(1, "CP1", "up", "frame", '[2,"1","Authorize",{"idTag":"TAG-123"}]')
        tx.put(2, "CP1", "up", "frame", '[2,"2","Authorize",{"idTag":"TAG-123" broken')
        tx.put(3, "CP1", "", "disconnect", None, code=1000)
        got = await collect(rx, 2)
        task.cancel()
    records = [r for d in got for r in d.records]
    assert [r.frame for r in records] == ['[2,"1","Authorize",{"idTag":"hmac:0123456789abcdef"}]', None]
    assert (tx.dropped_encode, tx.dropped) == (1, 1)


async def test_receiver_counts_sequence_gaps_as_lost_and_bad_datagrams_as_malformed(sock_path: Path) -> None:
    async with TapReceiver(sock_path, recv_buffer=4096) as rx:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        raw.connect(os.fspath(sock_path))
        rec = [TapRecord(1, "CP1", "", "connect")]

        def send(seq: int) -> None:
            raw.send(encode_batches(rec, GW, seq, 0, 65_000)[0])

        for seq in (1, 2, 5):  # 3 and 4 lost
            send(seq)
        raw.send(b"garbage")
        raw.send(b'{"v":2}')
        raw.send(b"x" * 5000)  # larger than the receive buffer
        send(1)  # sender restarted
        send(3)  # and its datagram 2 was lost
        await wait_until(lambda: rx.received + rx.malformed == 8)
        raw.close()
        assert (rx.received, rx.lost, rx.malformed, rx.seq.restarts) == (5, 3, 3, 1)
        assert rx.stats()["lost"] == 3


async def test_receiver_replaces_a_stale_socket_sets_mode_0660_and_removes_it_on_close(sock_path: Path) -> None:
    sock_path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(os.fspath(sock_path))
    stale.close()  # the file stays behind, as after a crash
    rx = TapReceiver(sock_path)
    rx.start()
    st_ = sock_path.stat()
    assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o660
    rx.close()
    assert not sock_path.exists()


async def test_receiver_refuses_to_replace_a_file_that_is_not_a_socket(sock_path: Path) -> None:
    sock_path.parent.mkdir()
    sock_path.write_text("precious")
    with pytest.raises(FileExistsError):
        TapReceiver(sock_path).start()
    assert sock_path.read_text() == "precious"


async def test_receiver_drops_and_counts_datagrams_when_its_consumer_falls_behind(sock_path: Path) -> None:
    async with TapReceiver(sock_path, max_pending=3) as rx:
        tx = TapSender(sock_path, GW, linger=0)
        task = asyncio.create_task(tx.run())
        for i in range(5):
            tx.put(i, "CP1", "", "connect")
            await wait_until(lambda: rx.received == i + 1)  # noqa: B023 - awaited in this iteration
        task.cancel()
        assert (rx.received, rx.overflow) == (5, 2)
        got = await collect(rx, 3)
        assert [d.records[0].time_ns for d in got] == [0, 1, 2]


def test_put_works_without_an_event_loop_and_never_raises_on_odd_input() -> None:
    tx = TapSender("/nonexistent/tap.sock", GW, max_queue=2)
    weird: Any = object()
    tx.put(1, "CP1", "up", "frame", "[]", meta=weird)
    tx.put(2, "CP1", "", "stats")
    tx.put(3, "CP1", "", "stats")
    assert tx.stats()["queued"] == 2 and tx.stats()["dropped_queue"] == 1
