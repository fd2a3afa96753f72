"""Black-box on-disk format: segment headers, records and the recovery scan. Pure: no I/O, no clock.

Everything that decides whether bytes on the card are a record lives here, so the writer, recovery,
``read()``, ``verify()`` and the tests share one definition. Guarantees:

- **A record is served only if its CRC matches.** ``decode_records`` stops at the first byte range
  that is not a complete, CRC-valid record of a known kind and says where and why (``ScanEnd``).
  ``scan_records`` goes on past such a range (``next_record_offset``, a CRC-checked resync) so one
  flipped bit in an old segment costs one record, not the rest of the segment.
- **Garbage lengths cannot make us allocate or skip megabytes**: a payload is at most
  ``MAX_PAYLOAD`` (1 MiB); anything longer is reported as ``bad length``.
- **Foreign files are recognised**: every segment starts with a 32-byte header (magic, format
  version, segment sequence number, creation time) with its own CRC.

Checksum: CRC-32 (IEEE 802.3 polynomial, as computed by ``zlib.crc32``), not CRC-32C. zlib ships with
Python and is fast on the Pi's Cortex-A72 (no extra wheel to build or pin); for random corruption of
records this short the two detect equally well. The format has exactly one checksum: there is no
fallback and no flag.

Record layout (little-endian, 20-byte header, then the payload)::

    0       4       8   9   10      12                      20
    +-------+-------+---+---+-------+-----------------------+----------------------+
    | crc32 |length |knd|flg| rsvd  |        time_ns        | payload (length B)   |
    +-------+-------+---+---+-------+-----------------------+----------------------+
    crc32 covers bytes 4 .. 20+length (the rest of the header and the payload);
    flg and rsvd are 0 in format version 1.

Segment file header (32 bytes)::

    0         8        10       12                20                28      32
    +---------+--------+--------+-----------------+-----------------+-------+
    |  magic  |version |hdr size|   segment seq   |   created_ns    | crc32 |
    +---------+--------+--------+-----------------+-----------------+-------+
    magic = 89 'B' 'B' 'X' 0D 0A 1A 0A (PNG-style: a text-mode transfer or a 7-bit channel breaks it);
    crc32 covers bytes 0 .. 28.

Index file (written when a segment is sealed; a cache of what a scan would find, 64 bytes)::

    magic 89 'B' 'B' 'I' 0D 0A 1A 0A | version u16 | 0 u16 | 0 u32 | seq u64 | data_len u64 |
    records u64 | min_ns u64 | max_ns u64 | kinds bitmask u32 | crc32 u32 (over bytes 0 .. 60)
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

FORMAT_VERSION: Final = 1
MAX_PAYLOAD: Final = 1 << 20  # 1 MiB: larger lengths are garbage, not records

SEGMENT_MAGIC: Final = b"\x89BBX\r\n\x1a\n"
INDEX_MAGIC: Final = b"\x89BBI\r\n\x1a\n"

_RECORD_CRC = struct.Struct("<I")
_RECORD_BODY = struct.Struct("<IBBHQ")  # length, kind, flags, reserved, time_ns
_RECORD_HEAD = struct.Struct("<IIBBHQ")  # crc + body, for decoding in one call
RECORD_HEADER_SIZE: Final = _RECORD_HEAD.size  # 20

_SEGMENT_HEAD = struct.Struct("<8sHHQQ")  # magic, version, header size, seq, created_ns
SEGMENT_HEADER_SIZE: Final = _SEGMENT_HEAD.size + 4  # 32

_INDEX = struct.Struct("<8sHHIQQQQQI")  # magic, version, 0, 0, seq, data_len, records, min, max, kinds
INDEX_SIZE: Final = _INDEX.size + 4  # 64

_U64_MAX: Final = (1 << 64) - 1


class RecordKind(IntEnum):
    """What a record holds. The numbers are the on-disk ``kind`` byte: never renumber."""

    TELEMETRY = 1  # a 1 Hz sample (meters, sensors, gateway internals)
    OCPP = 2  # a tap record: one redacted OCPP frame or connection event
    EVENT = 3  # faults, watchdog actions, state changes
    COMMAND = 4  # remote command audit
    SOH = 5  # state-of-health summary
    MARK = 6  # reserved for snapshots and annotations


_KINDS: Final[tuple[RecordKind | None, ...]] = (None, *RecordKind)  # index by kind byte
ALL_KINDS_MASK: Final = sum(1 << k for k in RecordKind)


def kinds_mask(kinds: Iterable[RecordKind | int]) -> int:
    """Bitmask (bit k set for kind k) of an iterable of kinds; used in the index and by read()."""
    mask = 0
    for k in kinds:
        mask |= 1 << RecordKind(k)
    return mask


@dataclass(frozen=True, slots=True)
class Record:
    kind: RecordKind
    time_ns: int  # ns since the epoch, as stamped by the writer (or the tap)
    payload: bytes  # by convention a UTF-8 JSON object

    def json(self) -> Any:
        return json.loads(self.payload)


class RecordError(ValueError):
    """A record that cannot be encoded (unknown kind, time out of range, payload too large)."""


def encode_record(kind: RecordKind | int, time_ns: int, payload: bytes) -> bytes:
    """The bytes of one record, header and CRC included."""
    if not (isinstance(kind, int) and 0 < kind < len(_KINDS)):
        raise RecordError(f"unknown record kind {kind!r}")
    if not 0 <= time_ns <= _U64_MAX:
        raise RecordError(f"time_ns {time_ns} out of range (0 .. 2**64-1)")
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise RecordError(f"payload of {n} bytes exceeds the maximum of {MAX_PAYLOAD}")
    body = _RECORD_BODY.pack(n, kind, 0, 0, time_ns) + payload
    return _RECORD_CRC.pack(zlib.crc32(body)) + body


@dataclass(frozen=True, slots=True)
class ScanEnd:
    """Where a scan stopped: ``reason`` None means a clean end (exactly at the end of the buffer)."""

    offset: int
    reason: str | None


# Reasons a scan stops. "torn" = the buffer ends inside a record; the others are corruption.
TORN_HEADER: Final = "torn header"
TORN_PAYLOAD: Final = "torn payload"
BAD_LENGTH: Final = "bad length"
CRC_MISMATCH: Final = "crc mismatch"
ZERO_FILL: Final = "zero fill"  # what a power loss after a size update but before the data leaves
BAD_KIND: Final = "bad kind"  # CRC-valid but unknown to this version
BAD_FLAGS: Final = "bad flags"

_ZERO_HEADER: Final = bytes(RECORD_HEADER_SIZE)


def _check(buf: bytes | memoryview, off: int, n: int) -> tuple[int, str | None]:
    """Validate the record at ``off``: (end offset, None) if intact, else (off, reason)."""
    if n - off < RECORD_HEADER_SIZE:
        return off, TORN_HEADER
    crc, length, kind, flags, reserved, _ = _RECORD_HEAD.unpack_from(buf, off)
    if length > MAX_PAYLOAD:
        return off, ZERO_FILL if buf[off : off + RECORD_HEADER_SIZE] == _ZERO_HEADER else BAD_LENGTH
    end = off + RECORD_HEADER_SIZE + length
    if end > n:
        return off, TORN_PAYLOAD
    if zlib.crc32(buf[off + 4 : end]) != crc:
        return off, ZERO_FILL if buf[off : off + RECORD_HEADER_SIZE] == _ZERO_HEADER else CRC_MISMATCH
    if not 0 < kind < len(_KINDS):
        return off, BAD_KIND
    if flags or reserved:
        return off, BAD_FLAGS
    return end, None


def _intact(mv: memoryview, off: int, n: int) -> tuple[int, int, int] | None:
    """``(end, kind, time_ns)`` if a complete, CRC-valid record with a known kind starts at ``off``
    (at least a header's worth of bytes must remain), else None. The fast path of the record rules;
    :func:`_check` applies the same rules slowly to say why a record is not intact."""
    crc, length, kind, flags, reserved, time_ns = _RECORD_HEAD.unpack_from(mv, off)
    end = off + RECORD_HEADER_SIZE + length
    if (
        length > MAX_PAYLOAD
        or end > n
        or zlib.crc32(mv[off + 4 : end]) != crc
        or not 0 < kind < len(_KINDS)
        or flags
        or reserved
    ):
        return None
    return end, kind, time_ns


def decode_records(
    buf: bytes | bytearray | memoryview, offset: int = 0
) -> tuple[list[tuple[int, Record]], ScanEnd]:
    """Decode consecutive records from ``offset``; stop at the first one that is not intact.

    Returns ``[(offset, record), ...]`` and the ``ScanEnd``. Every returned record passed its CRC.
    """
    mv = memoryview(buf).cast("B")
    n = len(mv)
    out: list[tuple[int, Record]] = []
    kinds = _KINDS
    hs = RECORD_HEADER_SIZE
    off = offset
    while off < n:
        if n - off < hs:
            return out, ScanEnd(off, TORN_HEADER)
        rec = _intact(mv, off, n)
        if rec is None:
            return out, ScanEnd(off, _check(mv, off, n)[1])
        end, kind, time_ns = rec
        out.append((off, Record(kinds[kind], time_ns, bytes(mv[off + hs : end]))))
        off = end
    return out, ScanEnd(off, None)


# Resync: an intact record has ``kind, 0, 0, 0`` at bytes 8..12 (kind byte, flags, reserved).
# UTF-8 JSON never contains NUL bytes, so candidates inside payloads are rare, and each candidate
# is confirmed by its CRC before it is believed.
_SYNC = re.compile(b"[\\x%02x-\\x%02x]\\x00\\x00\\x00" % (min(RecordKind), max(RecordKind)))


def next_record_offset(buf: bytes | bytearray | memoryview, start: int) -> int | None:
    """Offset of the first intact record at or after ``start``, or None if there is none."""
    mv = memoryview(buf).cast("B")
    n = len(mv)
    pos = start + 8
    while True:
        m = _SYNC.search(mv, pos)
        if m is None:
            return None
        cand = m.start() - 8
        pos = m.start() + 1
        if cand >= start and _check(mv, cand, n)[1] is None:
            return cand


@dataclass(frozen=True, slots=True)
class Gap:
    """Bytes ``[offset, end)`` that are not intact records; ``reason`` is why the first failed."""

    offset: int
    end: int
    reason: str


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """Every intact record of a buffer and the gaps between them (see ``scan_records``)."""

    records: list[tuple[int, Record]]
    gaps: list[Gap]
    end: int  # length of the buffer

    @property
    def intact_end(self) -> int:
        """Where the last intact record ends: recovery of the tail keeps ``[0, intact_end)``."""
        if self.gaps and self.gaps[-1].end == self.end:
            return self.gaps[-1].offset
        return self.end

    @property
    def tail_gap(self) -> Gap | None:
        """Garbage after the last intact record (a torn or interrupted write), if any."""
        return self.gaps[-1] if self.gaps and self.gaps[-1].end == self.end else None

    @property
    def inner_gaps(self) -> list[Gap]:
        """Corruption followed by intact records: not a torn write, the data went bad."""
        tail = self.tail_gap
        return [g for g in self.gaps if g is not tail]


def scan_records(buf: bytes | bytearray | memoryview, offset: int = 0) -> SegmentScan:
    """All intact records from ``offset`` on, skipping corrupt ranges by CRC-checked resync."""
    records: list[tuple[int, Record]] = []
    gaps: list[Gap] = []
    n = len(buf)
    off = offset
    while True:
        got, end = decode_records(buf, off)
        records.extend(got)
        if end.reason is None:
            return SegmentScan(records, gaps, n)
        nxt = next_record_offset(buf, end.offset + 1)
        gaps.append(Gap(end.offset, n if nxt is None else nxt, end.reason))
        if nxt is None:
            return SegmentScan(records, gaps, n)
        off = nxt


@dataclass(frozen=True, slots=True)
class SegmentSummary:
    """What ``summarize_records`` found: counts and bounds of the intact records, and the gaps."""

    records: int
    min_ns: int | None
    max_ns: int | None
    kinds: int  # bitmask of the kinds present
    gaps: tuple[Gap, ...]
    end: int  # length of the buffer

    @property
    def intact_end(self) -> int:
        tail = self.tail_gap
        return self.end if tail is None else tail.offset

    @property
    def tail_gap(self) -> Gap | None:
        return self.gaps[-1] if self.gaps and self.gaps[-1].end == self.end else None

    @property
    def inner_gaps(self) -> tuple[Gap, ...]:
        return self.gaps[:-1] if self.tail_gap is not None else self.gaps


def summarize_records(buf: bytes | bytearray | memoryview, offset: int = 0) -> SegmentSummary:
    """The same walk as ``scan_records`` (CRC of every record, resync past damage) without building
    ``Record`` objects: what recovery and ``verify()`` need, at about a third of the cost."""
    mv = memoryview(buf).cast("B")
    n = len(mv)
    hs = RECORD_HEADER_SIZE
    count, lo, hi, mask = 0, _U64_MAX + 1, -1, 0
    gaps: list[Gap] = []
    off = offset
    while True:
        while off < n:
            if n - off < hs:
                break
            rec = _intact(mv, off, n)
            if rec is None:
                break
            end, kind, time_ns = rec
            count += 1
            if time_ns < lo:  # noqa: PLR1730 - hot loop: a compare is cheaper than calling min()
                lo = time_ns
            if time_ns > hi:  # noqa: PLR1730
                hi = time_ns
            mask |= 1 << kind
            off = end
        if off >= n:
            break
        reason = _check(mv, off, n)[1] or CRC_MISMATCH
        nxt = next_record_offset(mv, off + 1)
        gaps.append(Gap(off, n if nxt is None else nxt, reason))
        if nxt is None:
            break
        off = nxt
    if count == 0:
        return SegmentSummary(0, None, None, 0, tuple(gaps), n)
    return SegmentSummary(count, lo, hi, mask, tuple(gaps), n)


# ---- segment header -----------------------------------------------------------------------------


class SegmentHeaderError(ValueError):
    """The first bytes of a file are not a segment header this version understands."""


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    seq: int
    created_ns: int
    version: int = FORMAT_VERSION
    size: int = SEGMENT_HEADER_SIZE  # records start here


def encode_segment_header(seq: int, created_ns: int) -> bytes:
    if not (0 <= seq <= _U64_MAX and 0 <= created_ns <= _U64_MAX):
        raise ValueError("segment seq and created_ns must fit in 64 bits")
    head = _SEGMENT_HEAD.pack(SEGMENT_MAGIC, FORMAT_VERSION, SEGMENT_HEADER_SIZE, seq, created_ns)
    return head + _RECORD_CRC.pack(zlib.crc32(head))


def decode_segment_header(buf: bytes | memoryview) -> SegmentHeader:
    """Parse the first bytes of a segment file; raise ``SegmentHeaderError`` saying what is wrong."""
    if len(buf) < len(SEGMENT_MAGIC) or bytes(buf[: len(SEGMENT_MAGIC)]) != SEGMENT_MAGIC:
        if len(buf) < len(SEGMENT_MAGIC) and SEGMENT_MAGIC.startswith(bytes(buf)):
            raise SegmentHeaderError("torn segment header")
        raise SegmentHeaderError("not a black-box segment (bad magic)")
    if len(buf) < SEGMENT_HEADER_SIZE:
        raise SegmentHeaderError("torn segment header")
    _, version, size, seq, created = _SEGMENT_HEAD.unpack_from(buf, 0)
    (crc,) = _RECORD_CRC.unpack_from(buf, _SEGMENT_HEAD.size)
    if zlib.crc32(buf[: _SEGMENT_HEAD.size]) != crc:
        raise SegmentHeaderError("segment header crc mismatch")
    if version != FORMAT_VERSION or size != SEGMENT_HEADER_SIZE:
        raise SegmentHeaderError(f"unsupported format version {version} (header size {size})")
    return SegmentHeader(seq, created, version, size)


# ---- index (a cache of a sealed segment's scan) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentIndex:
    seq: int
    data_len: int  # file length: header + records
    records: int
    min_ns: int  # 0 and 0 when records == 0
    max_ns: int
    kinds: int  # bitmask of the kinds present


def encode_index(ix: SegmentIndex) -> bytes:
    body = _INDEX.pack(
        INDEX_MAGIC, FORMAT_VERSION, 0, 0, ix.seq, ix.data_len, ix.records, ix.min_ns, ix.max_ns, ix.kinds
    )
    return body + _RECORD_CRC.pack(zlib.crc32(body))


def decode_index(buf: bytes) -> SegmentIndex | None:
    """The index, or None if the bytes are not a complete, CRC-valid index (then: rescan)."""
    if len(buf) != INDEX_SIZE:
        return None
    magic, version, _, _, seq, data_len, records, min_ns, max_ns, kinds = _INDEX.unpack_from(buf, 0)
    (crc,) = _RECORD_CRC.unpack_from(buf, _INDEX.size)
    if magic != INDEX_MAGIC or version != FORMAT_VERSION or zlib.crc32(buf[: _INDEX.size]) != crc:
        return None
    return SegmentIndex(seq, data_len, records, min_ns, max_ns, kinds)
