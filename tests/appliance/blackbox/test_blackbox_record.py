"""The black-box record format: pure codec tests (no files) and hypothesis properties."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.blackbox.record import (
    BAD_FLAGS,
    BAD_KIND,
    BAD_LENGTH,
    CRC_MISMATCH,
    INDEX_SIZE,
    MAX_PAYLOAD,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    TORN_HEADER,
    TORN_PAYLOAD,
    ZERO_FILL,
    Record,
    RecordError,
    RecordKind,
    ScanEnd,
    SegmentHeaderError,
    SegmentIndex,
    decode_index,
    decode_records,
    decode_segment_header,
    encode_index,
    encode_record,
    encode_segment_header,
    kinds_mask,
    next_record_offset,
    scan_records,
    summarize_records,
)

kinds = st.sampled_from(list(RecordKind))
times = st.integers(min_value=0, max_value=(1 << 64) - 1)
payloads = st.binary(max_size=600)
records = st.builds(Record, kinds, times, payloads)


def stream(recs: list[Record]) -> tuple[bytes, list[int]]:
    """Encoded records back to back, and the offset where each one starts."""
    out, offsets, off = [], [], 0
    for r in recs:
        b = encode_record(r.kind, r.time_ns, r.payload)
        offsets.append(off)
        out.append(b)
        off += len(b)
    return b"".join(out), offsets


# ---- examples ------------------------------------------------------------------------------------


def test_record_layout_is_crc_length_kind_flags_reserved_time_then_payload() -> None:
    b = encode_record(RecordKind.OCPP, 0x0102030405060708, b'{"a":1}')
    assert len(b) == RECORD_HEADER_SIZE + 7 == 27
    crc, length, kind, flags, reserved, t = struct.unpack_from("<IIBBHQ", b)
    assert (length, kind, flags, reserved, t) == (7, 2, 0, 0, 0x0102030405060708)
    assert crc == zlib.crc32(b[4:])
    assert b[20:] == b'{"a":1}'


def test_record_json_parses_the_payload() -> None:
    assert Record(RecordKind.EVENT, 1, b'{"event":"fault","cp":"CP7"}').json() == {"event": "fault", "cp": "CP7"}


def test_kind_numbers_are_the_on_disk_values() -> None:
    assert [(k.name, int(k)) for k in RecordKind] == [
        ("TELEMETRY", 1), ("OCPP", 2), ("EVENT", 3), ("COMMAND", 4), ("SOH", 5), ("MARK", 6)]


@pytest.mark.parametrize(
    ("kind", "t", "payload"),
    [(0, 1, b""), (7, 1, b""), (RecordKind.OCPP, -1, b""), (RecordKind.OCPP, 1 << 64, b""),
     (RecordKind.OCPP, 1, bytes(MAX_PAYLOAD + 1))],
)
def test_encode_rejects_what_could_not_be_decoded(kind: int, t: int, payload: bytes) -> None:
    with pytest.raises(RecordError):
        encode_record(kind, t, payload)


def test_largest_payload_round_trips() -> None:
    b = encode_record(RecordKind.MARK, 5, bytes(MAX_PAYLOAD))
    got, end = decode_records(b)
    assert end == ScanEnd(len(b), None)
    assert got[0][1].payload == bytes(MAX_PAYLOAD)


def test_decode_starts_at_offset_and_reports_record_offsets() -> None:
    a = encode_record(RecordKind.TELEMETRY, 1, b"{}")
    b = encode_record(RecordKind.OCPP, 2, b"[2]")
    head = encode_segment_header(1, 0)
    got, end = decode_records(head + a + b, SEGMENT_HEADER_SIZE)
    assert [o for o, _ in got] == [SEGMENT_HEADER_SIZE, SEGMENT_HEADER_SIZE + len(a)]
    assert end == ScanEnd(SEGMENT_HEADER_SIZE + len(a) + len(b), None)


def test_decode_accepts_memoryview_and_bytearray() -> None:
    buf, _ = stream([Record(RecordKind.EVENT, 9, b"{}")] * 3)
    for b in (memoryview(buf), bytearray(buf)):
        got, end = decode_records(b)
        assert len(got) == 3 and end.reason is None
        assert all(type(r.payload) is bytes for _, r in got)


def test_stop_reasons() -> None:
    rec = encode_record(RecordKind.OCPP, 1, b"x" * 10)
    assert decode_records(rec[:5])[1] == ScanEnd(0, TORN_HEADER)
    assert decode_records(rec[:-1])[1] == ScanEnd(0, TORN_PAYLOAD)
    bad_len = rec[:4] + struct.pack("<I", MAX_PAYLOAD + 1) + rec[8:]
    assert decode_records(bad_len)[1] == ScanEnd(0, BAD_LENGTH)
    flipped = rec[:-1] + bytes([rec[-1] ^ 1])
    assert decode_records(flipped)[1] == ScanEnd(0, CRC_MISMATCH)
    assert decode_records(bytes(64))[1] == ScanEnd(0, ZERO_FILL)


def _with_valid_crc(body: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(body)) + body


def test_crc_valid_but_unknown_kind_or_flags_is_not_served() -> None:
    unknown = _with_valid_crc(struct.pack("<IBBHQ", 0, 9, 0, 0, 1))
    assert decode_records(unknown)[1] == ScanEnd(0, BAD_KIND)
    flagged = _with_valid_crc(struct.pack("<IBBHQ", 0, 1, 1, 0, 1))
    assert decode_records(flagged)[1] == ScanEnd(0, BAD_FLAGS)


def test_scan_skips_a_corrupt_record_and_keeps_the_rest() -> None:
    recs = [Record(RecordKind.OCPP, i, b'{"i":%d}' % i) for i in range(5)]
    buf, offs = stream(recs)
    bad = bytearray(buf)
    bad[offs[2] + RECORD_HEADER_SIZE] ^= 0x40
    scan = scan_records(bytes(bad))
    assert [r for _, r in scan.records] == recs[:2] + recs[3:]
    assert [(g.offset, g.end, g.reason) for g in scan.gaps] == [(offs[2], offs[3], CRC_MISMATCH)]
    assert scan.inner_gaps == scan.gaps and scan.tail_gap is None and scan.intact_end == len(buf)


def test_scan_reports_garbage_after_the_last_record_as_the_tail() -> None:
    buf, _ = stream([Record(RecordKind.EVENT, 1, b"{}")])
    scan = scan_records(buf + b"\xff" * 7)
    assert scan.tail_gap is not None and scan.tail_gap.offset == len(buf)
    assert scan.intact_end == len(buf) and not scan.inner_gaps


def test_next_record_offset_finds_a_record_after_zeros_and_noise() -> None:
    rec = encode_record(RecordKind.SOH, 3, b'{"ok":true}')
    junk = bytes(4096) + b"\x01\x00\x00\x00" * 5 + b"\x02\x00\x00\x00garbage"
    assert next_record_offset(junk + rec, 0) == len(junk)
    assert next_record_offset(junk, 0) is None


def test_segment_header_round_trip_and_foreign_files() -> None:
    h = encode_segment_header(42, 1_764_090_651_000_000_000)
    assert len(h) == SEGMENT_HEADER_SIZE == 32
    got = decode_segment_header(h + b"records...")
    assert (got.seq, got.created_ns, got.version) == (42, 1_764_090_651_000_000_000, 1)
    with pytest.raises(SegmentHeaderError, match="bad magic"):
        decode_segment_header(b"PK\x03\x04 a zip file, not a segment at all")
    with pytest.raises(SegmentHeaderError, match="torn"):
        decode_segment_header(h[:20])
    with pytest.raises(SegmentHeaderError, match="crc"):
        decode_segment_header(h[:12] + bytes([h[12] ^ 1]) + h[13:])
    v2 = bytearray(h[:28])
    v2[8] = 2
    with pytest.raises(SegmentHeaderError, match="version 2"):
        decode_segment_header(bytes(v2) + struct.pack("<I", zlib.crc32(v2)))


def test_index_round_trip_and_corruption_means_no_index() -> None:
    ix = SegmentIndex(seq=7, data_len=4096, records=12, min_ns=5, max_ns=99, kinds=kinds_mask([1, 2]))
    b = encode_index(ix)
    assert len(b) == INDEX_SIZE and decode_index(b) == ix
    for i in range(len(b)):
        bad = bytearray(b)
        bad[i] ^= 0x10
        assert decode_index(bytes(bad)) is None
    assert decode_index(b[:-1]) is None


# ---- properties ----------------------------------------------------------------------------------


@given(st.lists(records, max_size=20))
def test_round_trip(recs: list[Record]) -> None:
    buf, offs = stream(recs)
    got, end = decode_records(buf)
    assert got == list(zip(offs, recs))
    assert end == ScanEnd(len(buf), None)


@given(st.lists(records, min_size=1, max_size=8), st.data())
def test_any_truncation_yields_exactly_the_complete_prefix(recs: list[Record], data: st.DataObject) -> None:
    buf, offs = stream(recs)
    cut = data.draw(st.integers(0, len(buf)))
    got, end = decode_records(buf[:cut])
    complete = [i for i, o in enumerate(offs) if o + len(encode_record(recs[i].kind, 0, recs[i].payload)) <= cut]
    assert [r for _, r in got] == [recs[i] for i in complete]
    boundary = cut in offs or cut == len(buf)
    assert end.reason is None if boundary else end.reason in (TORN_HEADER, TORN_PAYLOAD)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, min_size=1, max_size=8), st.data())
def test_a_flipped_byte_never_yields_a_record_that_was_not_written(recs: list[Record], data: st.DataObject) -> None:
    buf, offs = stream(recs)
    pos = data.draw(st.integers(0, len(buf) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(buf)
    bad[pos] ^= 1 << bit
    victim = max(i for i, o in enumerate(offs) if o <= pos)
    got, end = decode_records(bytes(bad))
    # decode: exactly the records before the damaged one, then a stop at the damaged one
    assert [r for _, r in got] == recs[:victim]
    assert end.offset == offs[victim] and end.reason is not None
    # scan: every record except the damaged one, each at its own offset
    scan = scan_records(bytes(bad))
    assert [(o, r) for o, r in scan.records] == [(offs[i], recs[i]) for i in range(len(recs)) if i != victim]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, max_size=8), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
       st.integers(0, 40))
def test_summary_agrees_with_a_full_scan(recs: list[Record], flips: list[tuple[int, int]], cut: int) -> None:
    buf = bytearray(stream(recs)[0])
    for pos, value in flips:
        if buf:
            buf[pos % len(buf)] = value
    data = bytes(buf[: max(0, len(buf) - cut)])
    scan, summary = scan_records(data), summarize_records(data)
    times = [r.time_ns for _, r in scan.records]
    assert summary.records == len(scan.records)
    assert (summary.min_ns, summary.max_ns) == ((min(times), max(times)) if times else (None, None))
    assert summary.kinds == kinds_mask(r.kind for _, r in scan.records)
    assert list(summary.gaps) == scan.gaps
    assert (summary.intact_end, summary.tail_gap, list(summary.inner_gaps)) == (
        scan.intact_end, scan.tail_gap, scan.inner_gaps)


@given(st.binary(max_size=2000))
def test_garbage_never_decodes_to_records(junk: bytes) -> None:
    # random bytes pass a CRC-32 with probability 2**-32 per candidate offset
    got, end = decode_records(junk)
    assert got == []
    assert (end.reason is None) == (junk == b"")
    assert scan_records(junk).records == []


@given(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1))
def test_segment_header_round_trip(seq: int, created: int) -> None:
    got = decode_segment_header(encode_segment_header(seq, created))
    assert (got.seq, got.created_ns) == (seq, created)
