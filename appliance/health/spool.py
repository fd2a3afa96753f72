"""Store-and-forward spool: messages the uplink could not send, kept on disk and replayed in order.

Guarantees:

- **Order.** Messages get increasing ids (persistent across restarts); ``next_batch`` returns the
  oldest unacknowledged messages in id order; ``ack(upto_id)`` removes everything up to that id.
- **Crash safety.** The on-disk format is the black-box record codec (``appliance.blackbox.record``:
  per-record CRC-32, segment headers): a torn or zero-filled tail left by a power loss is found by the
  CRC scan and cut off on reopen; damage inside an older segment costs the damaged records only.
  Appends are written with ``os.write`` (no user-space buffer) and ``fsync``-ed in batches: every
  ``sync_interval_s`` seconds or ``sync_every`` messages, whichever comes first. A power loss can thus
  lose at most that last batch.
- **At-least-once after a crash.** The acknowledged position is persisted (atomically: temp file,
  fsync, rename) on the same batched cadence, so after a crash up to one batch of already-sent
  messages may be replayed again; receivers can tell by the payload's ``seq``/``ts``. A clean
  ``close()`` persists everything: no duplicates across an orderly restart.
- **Bounded.** Total size of the segment files stays at or under ``max_mb``; when an append would
  exceed it, whole oldest segments (``segment_bytes`` each) are dropped and their unsent messages
  are counted in ``stats()["dropped"]``.

Layout of ``directory``: ``seg-{seq:012d}.spool`` (a 32-byte segment header, then records) and
``acked`` (``<Q upto_id><I crc32>``). Each record is ``RecordKind.MARK`` with ``time_ns`` = the
message's original timestamp and the payload ``b"{id} {qos} {retain} {topic}\\n" + message payload``.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from appliance.blackbox.record import (
    SEGMENT_HEADER_SIZE,
    RecordKind,
    SegmentHeaderError,
    decode_segment_header,
    encode_record,
    encode_segment_header,
    scan_records,
)
from appliance.logfmt import get_logger

log = get_logger("health.spool")

SPOOL_KIND: Final = RecordKind.MARK  # the spool does not use the kind byte; one constant value
_ACK = struct.Struct("<QI")
_ACK_FILE: Final = "acked"


class SpoolError(ValueError):
    """A message the spool cannot hold (topic with a newline, payload larger than a segment...)."""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    id: int  # spool sequence number: strictly increasing, persistent
    topic: str
    payload: bytes
    qos: int
    retain: bool
    time_ns: int  # the message's original timestamp (when it was produced)


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    size: int
    last_id: int = 0
    topics: Counter[str] = field(default_factory=Counter)  # unacked messages per topic


def _encode(msg: SpooledMessage) -> bytes:
    head = b"%d %d %d %s\n" % (msg.id, msg.qos, int(msg.retain), msg.topic.encode())
    return encode_record(SPOOL_KIND, msg.time_ns, head + msg.payload)


def _decode(time_ns: int, body: bytes) -> SpooledMessage | None:
    nl = body.find(b"\n")
    try:
        mid, qos, retain, topic = body[:nl].split(b" ", 3)
        return SpooledMessage(int(mid), topic.decode(), body[nl + 1:], int(qos), retain == b"1", time_ns)
    except ValueError:  # CRC-valid but not ours (wrong file): skip it
        return None


class Spool:
    """A bounded, crash-safe FIFO of MQTT/HTTPS messages on disk. Not thread-safe: one owner."""

    def __init__(self, directory: str | os.PathLike[str], max_mb: float = 50.0, *,
                 segment_bytes: int | None = None, sync_interval_s: float = 1.0,
                 sync_every: int = 100):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.segment_bytes = segment_bytes or min(max(self.max_bytes // 16, 4096), 4 << 20)
        if self.max_bytes < 2 * self.segment_bytes:
            raise ValueError(f"max_mb={max_mb} must hold at least two segments of {self.segment_bytes} B")
        self.sync_interval_s = sync_interval_s
        self.sync_every = sync_every
        self._segments: deque[_Segment] = deque()
        self._pending: Counter[str] = Counter()
        self._buffer: deque[tuple[SpooledMessage, _Segment]] = deque()  # read-ahead, unacked
        self._read_seg: _Segment | None = None  # where the read-ahead continues
        self._read_off = 0
        self._acked = 0
        self._acked_synced = 0
        self._fd: int | None = None
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.appended = 0
        self.dropped = 0
        self.corrupt = 0  # damaged byte ranges skipped on open
        self._last_drop_log = -1e9
        self._open()

    # ---- recovery ---------------------------------------------------------------------------------

    def _open(self) -> None:
        self._acked = self._acked_synced = self._load_ack()
        next_id = self._acked + 1
        paths = sorted(self.dir.glob("seg-*.spool"))
        for i, path in enumerate(paths):
            data = path.read_bytes()
            try:
                hdr = decode_segment_header(data)
            except SegmentHeaderError as e:
                if len(data) < SEGMENT_HEADER_SIZE:  # torn at creation: nothing was in it
                    path.unlink()
                else:
                    log.warning("spool_segment_rejected", path=str(path), reason=str(e))
                    path.rename(path.with_suffix(".bad"))
                continue
            seg = _Segment(hdr.seq, path, len(data))
            scan = scan_records(data, SEGMENT_HEADER_SIZE)
            if scan.inner_gaps:
                self.corrupt += len(scan.inner_gaps)
                log.warning("spool_segment_damaged", path=str(path), gaps=len(scan.inner_gaps))
            tail = scan.tail_gap
            if tail is not None and i == len(paths) - 1:
                # A torn write at power loss: cut it so appends continue after the last intact record.
                log.warning("spool_torn_tail", path=str(path), offset=tail.offset, reason=tail.reason)
                with open(path, "r+b") as f:
                    f.truncate(tail.offset)
                    os.fsync(f.fileno())
                seg.size = tail.offset
            elif tail is not None:
                self.corrupt += 1
            for _, rec in scan.records:
                msg = _decode(rec.time_ns, rec.payload)
                if msg is None:
                    continue
                seg.last_id = max(seg.last_id, msg.id)
                next_id = max(next_id, msg.id + 1)
                if msg.id > self._acked:
                    seg.topics[msg.topic] += 1
                    self._pending[msg.topic] += 1
            self._segments.append(seg)
        self._next_id = next_id
        # Fully acknowledged old segments are garbage (a crash between ack and unlink leaves them).
        while len(self._segments) > 1 and self._segments[0].last_id <= self._acked:
            self._segments.popleft().path.unlink()
        if self._segments:
            self._read_seg, self._read_off = self._segments[0], SEGMENT_HEADER_SIZE
            last = self._segments[-1]
            self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND)
        else:
            self._new_segment(1)
        if self._pending:
            log.info("spool_recovered", pending=sum(self._pending.values()), next_id=self._next_id)

    def _load_ack(self) -> int:
        try:
            raw = (self.dir / _ACK_FILE).read_bytes()
        except FileNotFoundError:
            return 0
        if len(raw) == _ACK.size:
            upto, crc = _ACK.unpack(raw)
            if zlib.crc32(raw[:8]) == crc:
                return int(upto)
        log.warning("spool_ack_file_invalid")
        return 0

    # ---- writing ----------------------------------------------------------------------------------

    def _new_segment(self, seq: int) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
        path = self.dir / f"seg-{seq:012d}.spool"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        os.write(self._fd, encode_segment_header(seq, time.time_ns()))
        os.fsync(self._fd)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the new directory entry survives a power loss
        finally:
            os.close(dfd)
        seg = _Segment(seq, path, SEGMENT_HEADER_SIZE)
        self._segments.append(seg)
        if self._read_seg is None:
            self._read_seg, self._read_off = seg, SEGMENT_HEADER_SIZE

    def append(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
               time_ns: int | None = None) -> int:
        """Store one message; returns its id. Durable after the next (batched) sync."""
        if "\n" in topic or " " in topic or not topic:
            raise SpoolError(f"topic {topic!r} cannot be spooled")
        msg = SpooledMessage(self._next_id, topic, bytes(payload), qos, retain,
                             time.time_ns() if time_ns is None else time_ns)
        rec = _encode(msg)
        if len(rec) + SEGMENT_HEADER_SIZE > self.segment_bytes:
            raise SpoolError(f"message of {len(rec)} B exceeds the segment size {self.segment_bytes} B")
        active = self._segments[-1]
        if active.size + len(rec) > self.segment_bytes:
            self._new_segment(active.seq + 1)
            active = self._segments[-1]
        while self._total_bytes() + len(rec) > self.max_bytes and len(self._segments) > 1:
            self._drop_oldest()
        assert self._fd is not None
        os.write(self._fd, rec)
        self._next_id += 1
        active.size += len(rec)
        active.last_id = msg.id
        active.topics[topic] += 1
        self._pending[topic] += 1
        self.appended += 1
        self._unsynced += 1
        now = time.monotonic()
        if self._unsynced >= self.sync_every or now - self._last_sync >= self.sync_interval_s:
            self.sync()
        return msg.id

    def _total_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def _drop_oldest(self) -> None:
        seg = self._segments.popleft()
        lost = sum(seg.topics.values())
        self._pending.subtract(seg.topics)
        self._pending = +self._pending  # drop zero counts
        self.dropped += lost
        self._acked = max(self._acked, seg.last_id)
        while self._buffer and self._buffer[0][1] is seg:
            self._buffer.popleft()
        if self._read_seg is seg:
            self._read_seg, self._read_off = self._segments[0], SEGMENT_HEADER_SIZE
        seg.path.unlink()
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:  # rate-limited: a long outage drops a segment often
            self._last_drop_log = now
            log.warning("spool_overflow_dropped", messages=lost, segment=seg.seq, dropped_total=self.dropped)

    def sync(self) -> None:
        """fsync appended data and persist the acknowledged position (called by the batching)."""
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
        self._unsynced = 0
        self._last_sync = time.monotonic()
        if self._acked != self._acked_synced:
            tmp = self.dir / (_ACK_FILE + ".tmp")
            body = struct.pack("<Q", self._acked)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, body + struct.pack("<I", zlib.crc32(body)))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.dir / _ACK_FILE)
            self._acked_synced = self._acked

    def maybe_sync(self) -> None:
        """Sync if the batching interval has passed (call periodically from the owner's loop)."""
        if (self._unsynced or self._acked != self._acked_synced) and \
                time.monotonic() - self._last_sync >= self.sync_interval_s:
            self.sync()

    # ---- reading ----------------------------------------------------------------------------------

    def _fill(self, n: int) -> None:
        while len(self._buffer) < n and self._read_seg is not None:
            seg = self._read_seg
            if self._read_off < seg.size:
                with open(seg.path, "rb") as f:
                    data = f.read(seg.size)
                scan = scan_records(data, self._read_off)
                for _, rec in scan.records:
                    msg = _decode(rec.time_ns, rec.payload)
                    if msg is not None and msg.id > self._acked:
                        self._buffer.append((msg, seg))
                self._read_off = seg.size
            idx = self._segments.index(seg)
            if idx + 1 < len(self._segments):
                self._read_seg, self._read_off = self._segments[idx + 1], SEGMENT_HEADER_SIZE
            else:
                return  # caught up with the writer

    def next_batch(self, n: int) -> list[SpooledMessage]:
        """The oldest ``n`` (or fewer) unacknowledged messages, oldest first. Does not remove them."""
        self._fill(n)
        return [m for m, _ in list(self._buffer)[:n]]

    def ack(self, upto_id: int) -> None:
        """Remove every message with id <= ``upto_id`` (they were delivered)."""
        while True:
            if not self._buffer:
                self._fill(64)
                if not self._buffer:
                    break
            msg, seg = self._buffer[0]
            if msg.id > upto_id:
                break
            self._buffer.popleft()
            seg.topics[msg.topic] -= 1
            if not seg.topics[msg.topic]:
                del seg.topics[msg.topic]
            self._pending[msg.topic] -= 1
            if not self._pending[msg.topic]:
                del self._pending[msg.topic]
        self._acked = max(self._acked, min(upto_id, self._next_id - 1))
        while len(self._segments) > 1 and self._segments[0].last_id <= self._acked \
                and self._read_seg is not self._segments[0]:
            self._segments.popleft().path.unlink()

    # ---- introspection ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(self._pending.values())

    def pending_for(self, topic: str) -> int:
        """Unsent messages for ``topic``: a live message must go behind them (per-topic order)."""
        return self._pending.get(topic, 0)

    def stats(self) -> dict[str, Any]:
        return {"pending": len(self), "bytes": self._total_bytes(), "max_bytes": self.max_bytes,
                "segments": len(self._segments), "appended": self.appended, "dropped": self.dropped,
                "corrupt": self.corrupt, "acked_id": self._acked, "next_id": self._next_id}

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
