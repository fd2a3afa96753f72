"""The black-box store: a bounded ring of append-only segment files that survives power loss.

This is the I/O shell around :mod:`appliance.blackbox.record` (the pure format). Guarantees:

- **Append never blocks and never raises on I/O.** ``append()`` encodes the record and puts it in a
  bounded in-memory buffer. Under :meth:`BlackBox.run`, the buffer is written and ``fdatasync``-ed
  every ``flush_interval_s`` or as soon as ``flush_bytes`` are buffered, in a worker thread. Without
  ``run()`` (tools, tests), ``append()`` flushes inline when ``flush_bytes`` are buffered.
- **What flush() returned from is on the card**, and comes back after a crash or power loss.
  Recovery on :meth:`BlackBox.open` keeps every intact record and cuts only the garbage after the
  last one in the newest segment (a torn write). A corrupt record is never returned to a reader.
- **Old data is never rewritten in place.** Records go to the newest segment at its end. A full
  segment is sealed (its time bounds go to a small index file) and a new one is started. The only
  in-place changes are a truncation of the newest segment's torn tail and whole-file deletion.
- **Bounded.** The segment and index files never take more than ``max_mb`` together. To make room,
  the oldest segment is deleted (the ring). Subdirectories (snapshots) and foreign files are never
  touched. The in-memory buffer is bounded too: if the card refuses writes (ENOSPC, EIO), records are
  kept up to ``buffer_max_bytes``, then the oldest are dropped and counted. Writing resumes by
  itself when the card accepts writes again.
- **Reads are cheap.** Every segment's time bounds and kinds are kept in memory (from the index,
  or from a scan), so ``read()`` opens only the segments that can hold matching records.
- **One writer.** ``open()`` takes an exclusive ``flock`` on the directory. ``open(read_only=True)``
  takes no lock: it reads what was intact at open time and changes nothing (CLI tools on a live store).

Files in the store directory: ``seg-<12-digit seq>.bbx`` (segments) and ``seg-<seq>.idx`` (the index
of a sealed segment, a cache rebuilt from a scan when it is missing or does not match). See
docs/blackbox.md.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from appliance.blackbox.record import (
    ALL_KINDS_MASK,
    INDEX_SIZE,
    MAX_PAYLOAD,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Gap,
    Record,
    RecordError,
    RecordKind,
    SegmentHeaderError,
    SegmentIndex,
    decode_index,
    decode_records,
    decode_segment_header,
    encode_index,
    encode_record,
    encode_segment_header,
    kinds_mask,
    scan_records,
    summarize_records,
)
from appliance.logfmt import get_logger

log = get_logger("blackbox")

MIB: Final = 1024 * 1024
DEFAULT_BUFFER_MAX_BYTES: Final = 8 * MIB
ERROR_EVENT_INTERVAL_S: Final = 60.0  # while writes keep failing, at most one event per minute

_SEGMENT_RE: Final = re.compile(r"seg-(\d{12})\.bbx")
_INDEX_RE: Final = re.compile(r"seg-(\d{12})\.idx")


def segment_name(seq: int) -> str:
    return f"seg-{seq:012d}.bbx"


def index_name(seq: int) -> str:
    return f"seg-{seq:012d}.idx"


class BlackBoxError(Exception):
    """Misuse of the store (not open, read-only, already open)."""


class StoreLockedError(BlackBoxError):
    """Another process holds the store directory open for writing."""


class Disk:
    """The system calls the writer makes on segment files. Tests swap it to inject ENOSPC/EIO or
    short writes; everything else goes through ``os`` directly."""

    def pwrite(self, fd: int, data: memoryview, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)

    def fsync_dir(self, fd: int) -> None:
        os.fsync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)


# ---- reports ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentReport:
    """What recovery found in one segment."""

    name: str
    seq: int
    records: int
    bytes: int  # header + intact records: what is kept
    oldest_ns: int | None
    newest_ns: int | None
    indexed: bool  # bounds came from the index file (no scan was needed)
    cut_offset: int | None = None  # the newest segment's torn tail: where it was cut
    cut_bytes: int = 0
    cut_reason: str | None = None
    corrupt: tuple[Gap, ...] = ()  # corruption followed by intact records: left in place, skipped


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One segment as the store sees it (``BlackBox.segments()``)."""

    name: str
    seq: int
    records: int
    bytes: int  # header + intact records
    oldest_ns: int | None
    newest_ns: int | None
    kinds: frozenset[RecordKind]
    sealed: bool  # no longer takes appends
    readable: bool


@dataclass(frozen=True, slots=True)
class SkippedFile:
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    directory: Path
    segments: tuple[SegmentReport, ...]
    skipped: tuple[SkippedFile, ...]  # foreign, unreadable or corrupt-header files (left in place)
    removed: tuple[str, ...]  # files deleted on open: ring bound, torn new segment, orphan index
    duration_s: float

    @property
    def records(self) -> int:
        return sum(s.records for s in self.segments)

    @property
    def cut_bytes(self) -> int:
        return sum(s.cut_bytes for s in self.segments)

    @property
    def clean(self) -> bool:
        return not self.skipped and all(s.cut_bytes == 0 and not s.corrupt for s in self.segments)


# ---- in-memory state of one segment ---------------------------------------------------------------


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    length: int  # header + intact records: readers read [0, length)
    disk_bytes: int  # size of the file (counts towards max_mb)
    records: int = 0
    min_ns: int | None = None
    max_ns: int | None = None
    kinds: int = 0
    readable: bool = True
    indexed: bool = False  # an index file exists (counts INDEX_SIZE towards max_mb)
    sealed: bool = False

    def add(self, n: int, size: int, lo: int, hi: int, kinds: int) -> None:
        self.records += n
        self.length += size
        self.disk_bytes = max(self.disk_bytes, self.length)
        self.min_ns = lo if self.min_ns is None else min(self.min_ns, lo)
        self.max_ns = hi if self.max_ns is None else max(self.max_ns, hi)
        self.kinds |= kinds

    def footprint(self) -> int:
        return self.disk_bytes + (INDEX_SIZE if self.indexed else 0)

    def index(self) -> SegmentIndex:
        return SegmentIndex(self.seq, self.length, self.records, self.min_ns or 0, self.max_ns or 0,
                            self.kinds)


_Pending = tuple[int, int, bytes]  # (time_ns, kind, encoded record)


def _bounds(items: Iterable[_Pending]) -> tuple[int, int, int]:
    lo, hi, mask = -1, -1, 0
    for t, k, _ in items:
        if lo < 0 or t < lo:
            lo = t
        hi = max(hi, t)
        mask |= 1 << k
    return lo, hi, mask


def _read_file(path: Path, length: int | None = None) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read() if length is None else f.read(length)


# ---- the store ----------------------------------------------------------------------------------


class BlackBox:
    """The flight recorder's store. ``open()``, then ``append()`` from anywhere, ``run()`` as a task."""

    def __init__(
        self,
        directory: Path,
        *,
        max_mb: float = 64,
        segment_mb: float = 4,
        flush_interval_s: float = 1.0,
        flush_bytes: int = 262144,
        clock: Callable[[], int] = time.time_ns,
        on_error: Callable[[str, str], None] | None = None,
        buffer_max_bytes: int = DEFAULT_BUFFER_MAX_BYTES,
        disk: Disk | None = None,
    ) -> None:
        self._dir = Path(directory)
        self._max_bytes = int(max_mb * MIB)
        self._segment_bytes = int(segment_mb * MIB)
        if self._segment_bytes < 4096:
            raise ValueError(f"segment_mb={segment_mb}: a segment must be at least 4 KiB")
        if self._max_bytes < 2 * self._segment_bytes:
            raise ValueError(f"max_mb={max_mb} must be at least 2 x segment_mb={segment_mb}")
        if flush_interval_s <= 0 or flush_bytes <= 0:
            raise ValueError("flush_interval_s and flush_bytes must be positive")
        if buffer_max_bytes < flush_bytes:
            raise ValueError("buffer_max_bytes must be at least flush_bytes")
        # A segment's data stops INDEX_SIZE short of segment_mb, so a sealed segment with its index
        # fits in segment_mb and two segments always fit in max_mb (the ring can always make room).
        self._data_limit = self._segment_bytes - INDEX_SIZE
        self.max_payload = min(MAX_PAYLOAD, self._data_limit - SEGMENT_HEADER_SIZE - RECORD_HEADER_SIZE)
        self._flush_interval_s = flush_interval_s
        self._flush_bytes = flush_bytes
        self._buffer_max = buffer_max_bytes
        self._clock = clock
        self._on_error = on_error
        self._disk = disk or Disk()

        self._lock = threading.Lock()  # buffer, segment list, counters (held briefly, never for I/O)
        self._io_lock = threading.Lock()  # one flush at a time (run()'s thread, flush(), close())
        self._buf: collections.deque[_Pending] = collections.deque()
        self._buf_bytes = 0
        self._inflight: list[_Pending] | None = None  # the batch being written, from _inflight_pos on
        self._inflight_pos = 0
        self._segments: list[_Segment] = []
        self._next_seq = 1  # never reused, even when the ring has deleted every older segment
        self._active_fd: int | None = None  # fd of self._segments[-1] while it takes appends
        self._dir_fd: int | None = None
        self._state = "new"  # new -> open | read_only -> closed
        self._flush_requested = False
        self._runner: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        # counters
        self._records = 0
        self._bytes_appended = 0
        self._bytes_written = 0
        self._fsyncs = 0
        self._dropped = 0
        self._errors = 0
        self._segment_reads = 0
        self._failing_since: float | None = None
        self._episode_failures = 0
        self._episode_dropped_at = 0
        self._last_error_event = 0.0

    # ---- properties ----

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def read_only(self) -> bool:
        return self._state == "read_only"

    # ---- open / recovery ----

    def open(self, *, read_only: bool = False) -> RecoveryReport:
        """Scan the directory, recover the newest segment, enforce the ring bound; report all of it.

        With ``read_only`` nothing is changed on disk (no lock, no truncation, no index written, no
        deletion) and ``append()`` raises: for tools that read a store another process writes.
        """
        if self._state != "new":
            raise BlackBoxError(f"store {self._dir} is already {self._state}")
        t0 = time.perf_counter()
        if not read_only:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._dir_fd = os.open(self._dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._dir_fd)
                self._dir_fd = None
                raise StoreLockedError(f"black box {self._dir} is open for writing by another process") from None
        try:
            reports, skipped, removed = self._recover(read_only)
        except BaseException:
            self._release()
            raise
        self._state = "read_only" if read_only else "open"
        if not read_only:
            removed.extend(self._enforce_ring(0))  # max_mb may have shrunk since the last run
            self._resume_tail()
        report = RecoveryReport(self._dir, tuple(reports), tuple(skipped), tuple(removed),
                                time.perf_counter() - t0)
        log.info("blackbox_opened", dir=self._dir, segments=len(self._segments), records=report.records,
                 cut_bytes=report.cut_bytes, skipped=len(skipped), read_only=read_only,
                 ms=round(report.duration_s * 1000, 1))
        return report

    def _recover(self, read_only: bool) -> tuple[list[SegmentReport], list[SkippedFile], list[str]]:
        segs: dict[int, Path] = {}
        idxs: dict[int, Path] = {}
        skipped: list[SkippedFile] = []
        removed: list[str] = []
        self._segments = []
        try:
            entries = sorted(os.scandir(self._dir), key=lambda e: e.name)
        except FileNotFoundError:
            entries = []  # read-only open of a store that does not exist (yet): empty
        for entry in entries:
            if m := _SEGMENT_RE.fullmatch(entry.name):
                segs[int(m.group(1))] = Path(entry.path)
            elif m := _INDEX_RE.fullmatch(entry.name):
                idxs[int(m.group(1))] = Path(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                continue  # snapshots and other directories are not the store's business
            else:
                skipped.append(SkippedFile(entry.name, "foreign file (not a segment or index)"))
        for seq, path in idxs.items():
            if seq not in segs:
                if not read_only:
                    path.unlink(missing_ok=True)
                    removed.append(path.name)
                else:
                    skipped.append(SkippedFile(path.name, "index without a segment"))

        reports: list[SegmentReport] = []
        newest = max(segs, default=None)
        self._next_seq = (newest or 0) + 1
        for seq in sorted(segs):
            path = segs[seq]
            is_tail = seq == newest
            try:
                data, size = self._read_head(path, whole=is_tail)
            except OSError as e:
                skipped.append(SkippedFile(path.name, f"unreadable: {e.strerror or e}"))
                self._add_unreadable(seq, path)
                continue
            try:
                header = decode_segment_header(data)
            except SegmentHeaderError as e:
                if is_tail and size < SEGMENT_HEADER_SIZE and not read_only:
                    # Power was lost while a new segment was being created: nothing in it.
                    path.unlink()
                    idxs.pop(seq, None)
                    removed.append(path.name)
                    log.warning("blackbox_torn_segment_removed", segment=path.name, bytes=size)
                    continue
                skipped.append(SkippedFile(path.name, str(e)))
                self._add_unreadable(seq, path, size)
                continue
            if header.seq != seq:
                skipped.append(SkippedFile(path.name, f"header says segment {header.seq}"))
                self._add_unreadable(seq, path, size)
                continue
            idx = self._load_index(idxs.get(seq), seq, size)
            if idx is not None and not is_tail:
                seg = _Segment(seq, path, idx.data_len, size, idx.records,
                               idx.min_ns if idx.records else None, idx.max_ns if idx.records else None,
                               idx.kinds, indexed=True, sealed=True)
                self._segments.append(seg)
                reports.append(SegmentReport(path.name, seq, seg.records, seg.length, seg.min_ns,
                                             seg.max_ns, indexed=True))
                continue
            if not is_tail:
                data, size = self._read_head(path, whole=True)
            reports.append(self._scan_segment(seq, path, data, is_tail, idx, idxs.get(seq), read_only))
        return reports, skipped, removed

    def _read_head(self, path: Path, whole: bool) -> tuple[bytes, int]:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            return (f.read() if whole else f.read(SEGMENT_HEADER_SIZE)), size

    @staticmethod
    def _load_index(path: Path | None, seq: int, size: int) -> SegmentIndex | None:
        if path is None:
            return None
        try:
            ix = decode_index(_read_file(path))
        except OSError:
            return None
        if ix is None or ix.seq != seq or ix.data_len != size:
            return None
        return ix

    def _add_unreadable(self, seq: int, path: Path, size: int | None = None) -> None:
        """A file named like a segment that cannot be used: not read, but still in the ring."""
        if size is None:
            try:
                size = path.stat().st_size if path.is_file() else 0
            except OSError:
                size = 0
        self._segments.append(_Segment(seq, path, 0, size, readable=False, sealed=True))

    def _scan_segment(
        self, seq: int, path: Path, data: bytes, is_tail: bool, idx: SegmentIndex | None,
        idx_path: Path | None, read_only: bool,
    ) -> SegmentReport:
        scan = summarize_records(data, SEGMENT_HEADER_SIZE)
        seg = _Segment(seq, path, SEGMENT_HEADER_SIZE, len(data))
        if scan.min_ns is not None and scan.max_ns is not None:
            seg.add(scan.records, 0, scan.min_ns, scan.max_ns, scan.kinds)
        seg.length = scan.intact_end
        inner = scan.inner_gaps
        for g in inner:
            log.error("blackbox_corrupt_record", segment=path.name, offset=g.offset, bytes=g.end - g.offset,
                      reason=g.reason)
        cut_offset, cut_bytes, cut_reason = None, 0, None
        tail = scan.tail_gap
        if tail is not None and not is_tail:
            # Only the newest segment is ever truncated; elsewhere garbage is reported and skipped.
            inner = (*inner, tail)
            log.error("blackbox_corrupt_record", segment=path.name, offset=tail.offset,
                      bytes=tail.end - tail.offset, reason=tail.reason)
        elif tail is not None:
            cut_offset, cut_bytes, cut_reason = tail.offset, tail.end - tail.offset, tail.reason
            if not read_only:
                with open(path, "r+b", buffering=0) as f:
                    os.ftruncate(f.fileno(), tail.offset)
                    os.fdatasync(f.fileno())
                seg.disk_bytes = tail.offset
            log.warning("blackbox_tail_truncated", segment=path.name, offset=tail.offset, cut_bytes=cut_bytes,
                        reason=tail.reason, records_kept=seg.records, read_only=read_only)
        # A segment with corruption inside it is sealed: appends go to a fresh segment so the damage
        # stays where it is (and the index never describes a segment that might still change).
        valid_index = idx is not None and idx.data_len == seg.length
        seg.sealed = not is_tail or bool(inner) or valid_index
        if idx_path is not None:
            if read_only or (seg.sealed and valid_index):
                seg.indexed = True
            else:  # stale, or the newest segment goes on taking appends: no index
                idx_path.unlink(missing_ok=True)
        if seg.sealed and not seg.indexed and not read_only:
            self._write_index(seg)
        self._segments.append(seg)
        return SegmentReport(path.name, seq, seg.records, seg.length, seg.min_ns, seg.max_ns, indexed=False,
                             cut_offset=cut_offset, cut_bytes=cut_bytes, cut_reason=cut_reason, corrupt=inner)

    def _resume_tail(self) -> None:
        """Keep appending to the newest segment if it is intact and has room; else seal it."""
        last = self._segments[-1] if self._segments else None
        if last is None or not last.readable or last.sealed:
            return
        if last.length + RECORD_HEADER_SIZE < self._data_limit:
            self._active_fd = os.open(last.path, os.O_WRONLY | os.O_CLOEXEC)
        else:
            last.sealed = True
            self._write_index(last)

    def _write_index(self, seg: _Segment) -> None:
        """Best effort: the index is a cache. Not fsynced: a torn index fails its CRC -> rescan."""
        data = encode_index(seg.index())
        path = seg.path.with_suffix(".idx")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("blackbox_index_not_written", segment=seg.path.name, error=e.strerror)
            path.unlink(missing_ok=True)
            return
        with self._lock:
            seg.indexed = True
            self._bytes_written += len(data)

    # ---- append ----

    def append(
        self, kind: RecordKind | int, payload: bytes | Mapping[str, Any], time_ns: int | None = None
    ) -> None:
        """Buffer one record. Never does I/O when ``run()`` is active; never raises on I/O errors.

        ``payload`` is bytes (by convention UTF-8 JSON) or a mapping, encoded as compact JSON.
        Raises ``RecordError`` (a ValueError) for an unknown kind, a time out of range or a payload
        over ``max_payload`` bytes, and ``BlackBoxError`` if the store is not open for writing.
        """
        if isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, (bytearray, memoryview)):
            data = bytes(payload)
        else:
            data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        if len(data) > self.max_payload:
            raise RecordError(f"payload of {len(data)} bytes exceeds this store's maximum of {self.max_payload}")
        t = self._clock() if time_ns is None else time_ns
        blob = encode_record(kind, t, data)
        with self._lock:
            if self._state != "open":
                raise BlackBoxError(f"store {self._dir} is not open for writing ({self._state})")
            self._buf.append((t, int(kind), blob))
            self._buf_bytes += len(blob)
            self._records += 1
            self._bytes_appended += len(blob)
            if self._buf_bytes > self._buffer_max:
                self._trim_buffer()
            wake = self._buf_bytes >= self._flush_bytes and not self._flush_requested
            if wake:
                self._flush_requested = True
            runner = self._runner
        if wake:
            if runner is not None:
                loop, event = runner
                loop.call_soon_threadsafe(event.set)
            else:
                self.flush()

    def _trim_buffer(self) -> None:
        """Drop the oldest buffered records beyond the bound (caller holds the lock)."""
        while self._buf_bytes > self._buffer_max and len(self._buf) > 1:
            _, _, blob = self._buf.popleft()
            self._buf_bytes -= len(blob)
            self._dropped += 1

    # ---- flush ----

    def flush(self) -> None:
        """Write and fdatasync what is buffered; rotate segments; keep the ring bound. Never raises
        OSError: a failed write keeps the records buffered and reports through ``on_error``."""
        self._deliver(self._flush_collect())

    def _flush_collect(self) -> list[tuple[str, str]]:
        """flush() minus calling on_error: returns the events, so run() can deliver them on the loop."""
        events: list[tuple[str, str]] = []
        with self._io_lock:
            with self._lock:
                self._flush_requested = False
                if self._state != "open" or not self._buf:
                    return events
                batch = list(self._buf)
                self._buf.clear()
                self._buf_bytes = 0
                self._inflight, self._inflight_pos = batch, 0
            try:
                self._write_batch(batch)
            except OSError as e:
                with self._lock:
                    rest = batch[self._inflight_pos :]
                    self._inflight = None
                    self._buf.extendleft(reversed(rest))
                    self._buf_bytes += sum(len(b) for _, _, b in rest)
                    self._trim_buffer()
                    self._errors += 1
                    buffered, dropped = len(self._buf), self._dropped
                events.extend(self._write_failed(e, buffered, dropped))
            else:
                with self._lock:
                    self._inflight = None
                    dropped = self._dropped
                if self._failing_since is not None:
                    lost = dropped - self._episode_dropped_at
                    detail = (f"writes succeed again after {self._episode_failures} failed attempts in "
                              f"{time.monotonic() - self._failing_since:.0f} s; {lost} records dropped")
                    log.warning("blackbox_write_resumed", failures=self._episode_failures, dropped=lost)
                    events.append(("write_resumed", detail))
                    self._failing_since = None
        return events

    def _write_failed(self, e: OSError, buffered: int, dropped: int) -> list[tuple[str, str]]:
        now = time.monotonic()
        first = self._failing_since is None
        if first:
            self._failing_since = now
            self._episode_failures = 0
            self._episode_dropped_at = dropped
        self._episode_failures += 1
        if not first and now - self._last_error_event < ERROR_EVENT_INTERVAL_S:
            return []
        self._last_error_event = now
        name = errno.errorcode.get(e.errno or 0, "OSError")
        detail = (f"{name}: {e.strerror or e} ({self._dir}); {buffered} records buffered, "
                  f"{dropped - self._episode_dropped_at} dropped since the first failure")
        log.error("blackbox_write_failed", error=name, dir=self._dir, buffered=buffered,
                  dropped=dropped - self._episode_dropped_at, failures=self._episode_failures)
        return [("write_failed", detail)]

    def _deliver(self, events: list[tuple[str, str]]) -> None:
        if self._on_error is None:
            return
        for kind, detail in events:
            try:
                self._on_error(kind, detail)
            except Exception:  # boundary: a broken callback must not stop the recorder
                log.exception("blackbox_on_error_callback_failed", kind=kind)

    def _write_batch(self, batch: list[_Pending]) -> None:
        """Write ``batch`` in pieces that each fit the active segment; commit each piece when synced."""
        i, n = 0, len(batch)
        while i < n:
            seg = self._segments[-1] if self._active_fd is not None else None
            room = self._data_limit - seg.length if seg is not None else 0
            j, size = i, 0
            while j < n and size + len(batch[j][2]) <= room:
                size += len(batch[j][2])
                j += 1
            if j == i:
                self._rotate()
                continue
            assert seg is not None and self._active_fd is not None
            piece = batch[i:j]
            for name in self._enforce_ring(size):
                log.debug("blackbox_segment_deleted", segment=name)
            self._write_piece(self._active_fd, seg, b"".join(b for _, _, b in piece))
            lo, hi, mask = _bounds(piece)
            with self._lock:
                seg.add(j - i, size, lo, hi, mask)
                self._inflight_pos = j
                self._bytes_written += size
                self._fsyncs += 1
            i = j

    def _write_piece(self, fd: int, seg: _Segment, data: bytes) -> None:
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                done += self._disk.pwrite(fd, view[done:], seg.length + done)
            self._disk.fdatasync(fd)
        except OSError:
            # Take back what part of the batch reached the file; if even that fails, the garbage
            # past seg.length is overwritten by the next write, or cut by recovery.
            try:
                self._disk.ftruncate(fd, seg.length)
            except OSError:
                with self._lock:
                    seg.disk_bytes = max(seg.disk_bytes, seg.length + done)
            raise

    def _rotate(self) -> None:
        """Seal the active segment (write its index) and start the next one (header, fsync, dir fsync)."""
        old = self._segments[-1] if self._segments else None
        if self._active_fd is not None and old is not None:
            os.close(self._active_fd)
            self._active_fd = None
            with self._lock:
                old.sealed = True
            self._write_index(old)
        seq = self._next_seq
        path = self._dir / segment_name(seq)
        header = encode_segment_header(seq, self._clock())
        for name in self._enforce_ring(len(header)):
            log.debug("blackbox_segment_deleted", segment=name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            view = memoryview(header)
            done = 0
            while done < len(view):
                done += self._disk.pwrite(fd, view[done:], done)
            self._disk.fdatasync(fd)
            assert self._dir_fd is not None
            self._disk.fsync_dir(self._dir_fd)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        with self._lock:
            self._segments.append(_Segment(seq, path, len(header), len(header)))
            self._bytes_written += len(header)
            self._fsyncs += 2
        self._next_seq = seq + 1
        self._active_fd = fd

    def _enforce_ring(self, incoming: int) -> list[str]:
        """Delete the oldest sealed segments until ``incoming`` more bytes fit in max_mb."""
        removed: list[str] = []
        while True:
            with self._lock:
                total = sum(s.footprint() for s in self._segments)
                candidates = self._segments[:-1] if self._active_fd is not None else self._segments
                if total + incoming <= self._max_bytes or not candidates:
                    return removed
                victim = candidates[0]
                self._segments.remove(victim)
            try:
                victim.path.unlink(missing_ok=True)
            except OSError as e:  # e.g. a directory named like a segment: keep counting it out
                log.error("blackbox_segment_not_deleted", segment=victim.path.name, error=e.strerror)
            victim.path.with_suffix(".idx").unlink(missing_ok=True)
            removed.append(victim.path.name)

    # ---- the flusher task ----

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Flush every ``flush_interval_s`` (or at once when ``flush_bytes`` are buffered) in a worker
        thread, so fdatasync never blocks the event loop. Returns after a final flush once ``stop``
        is set. If cancelled instead, call ``close()`` to write what is buffered."""
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        with self._lock:
            if self._runner is not None:
                raise BlackBoxError("run() is already running")
            self._runner = (loop, wake)
            if self._buf_bytes >= self._flush_bytes:
                wake.set()
        relay = asyncio.create_task(self._relay(stop, wake)) if stop is not None else None
        try:
            next_at = loop.time() + self._flush_interval_s
            while stop is None or not stop.is_set():
                timeout = next_at - loop.time()
                if timeout > 0 and not wake.is_set():
                    try:
                        await asyncio.wait_for(wake.wait(), timeout)
                    except TimeoutError:
                        pass
                wake.clear()
                if stop is not None and stop.is_set():
                    break
                next_at = loop.time() + self._flush_interval_s
                self._deliver(await asyncio.to_thread(self._flush_collect))
            self._deliver(await asyncio.to_thread(self._flush_collect))
        finally:
            if relay is not None:
                relay.cancel()
            with self._lock:
                self._runner = None

    @staticmethod
    async def _relay(stop: asyncio.Event, wake: asyncio.Event) -> None:
        await stop.wait()
        wake.set()

    # ---- read ----

    def read(
        self,
        since_ns: int | None = None,
        until_ns: int | None = None,
        kinds: Iterable[RecordKind] | None = None,
        include_unflushed: bool = True,
    ) -> Iterator[Record]:
        """Records with ``since_ns <= time_ns <= until_ns`` (both inclusive, None = unbounded) of the
        given kinds, in append order. Only segments whose time bounds and kinds overlap are read.

        The set of records is fixed when read() is called (thread-safe: call it from any thread);
        ``include_unflushed`` adds what is still buffered in memory. A segment the ring deletes
        before the iterator gets to it is skipped. Never yields a record that fails its CRC.
        """
        lo = 0 if since_ns is None else since_ns
        hi = (1 << 64) if until_ns is None else until_ns
        mask = ALL_KINDS_MASK if kinds is None else kinds_mask(kinds)
        with self._lock:
            if self._state not in ("open", "read_only"):
                raise BlackBoxError(f"store {self._dir} is not open ({self._state})")
            segs = [
                (s.path, s.length)
                for s in self._segments
                if s.readable and s.records and s.kinds & mask
                and s.max_ns is not None and s.min_ns is not None and s.max_ns >= lo and s.min_ns <= hi
            ]
            pending: list[_Pending] = []
            if include_unflushed:
                if self._inflight is not None:
                    pending.extend(self._inflight[self._inflight_pos :])
                pending.extend(self._buf)
        return self._iter(segs, pending, lo, hi, mask)

    def _iter(
        self, segs: list[tuple[Path, int]], pending: list[_Pending], lo: int, hi: int, mask: int
    ) -> Iterator[Record]:
        for path, length in segs:
            try:
                data = _read_file(path, length)
            except FileNotFoundError:
                continue  # deleted by the ring since read() was called
            with self._lock:
                self._segment_reads += 1
            records, end = decode_records(data, SEGMENT_HEADER_SIZE)
            if end.reason is not None:  # corruption (or a short read): resync past it
                records.extend(scan_records(data, end.offset).records)
            for _, r in records:
                if lo <= r.time_ns <= hi and mask >> r.kind & 1:
                    yield r
        for t, k, blob in pending:
            if lo <= t <= hi and mask >> k & 1:
                yield Record(RecordKind(k), t, blob[RECORD_HEADER_SIZE:])

    def segments(self) -> list[SegmentInfo]:
        """The segments, oldest first, with the bounds read() uses to choose what to open."""
        with self._lock:
            return [
                SegmentInfo(s.path.name, s.seq, s.records, s.length, s.min_ns, s.max_ns,
                            frozenset(k for k in RecordKind if s.kinds >> k & 1),
                            s.sealed or s is not self._segments[-1] or self._active_fd is None, s.readable)
                for s in self._segments
            ]

    # ---- stats / close ----

    def stats(self) -> dict[str, Any]:
        """Counters since open() and the store's current extent (for telemetry and ``omgw status``)."""
        with self._lock:
            segs = [s for s in self._segments if s.records]
            times = [s.min_ns for s in segs if s.min_ns is not None] + [s.max_ns for s in segs if s.max_ns is not None]
            if self._inflight is not None:
                times.extend(t for t, _, _ in self._inflight[self._inflight_pos :])
            times.extend(t for t, _, _ in self._buf)
            return {
                "records": self._records,
                "bytes_appended": self._bytes_appended,
                "bytes_written": self._bytes_written,
                "fsyncs": self._fsyncs,
                "segments": len(self._segments),
                "dropped": self._dropped,
                "errors": self._errors,
                "oldest_ns": min(times) if times else None,
                "newest_ns": max(times) if times else None,
                "stored_records": sum(s.records for s in self._segments),
                "stored_bytes": sum(s.footprint() for s in self._segments),
                "buffered_records": len(self._buf),
                "buffered_bytes": self._buf_bytes,
                "segment_reads": self._segment_reads,
                "write_failing": self._failing_since is not None,
            }

    def close(self) -> None:
        """Final flush, then release files and the lock. Idempotent; never raises on I/O errors."""
        if self._state in ("open",):
            self.flush()
            with self._lock:
                lost = len(self._buf)
            if lost:
                log.error("blackbox_closed_with_unwritten_records", records=lost)
        with self._io_lock, self._lock:
            self._state = "closed"
        self._release()

    def _release(self) -> None:
        if self._active_fd is not None:
            os.close(self._active_fd)
            self._active_fd = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)  # releases the flock
            self._dir_fd = None

    def __enter__(self) -> Self:
        if self._state == "new":
            self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"BlackBox({str(self._dir)!r}, {self._state})"


# ---- verify ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    file: str
    offset: int | None
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.offset}: {self.reason}" if self.offset is not None else f"{self.file}: {self.reason}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """``problems`` are corruption (``ok`` is False); ``notes`` are harmless (foreign files, a torn
    last write that recovery will cut, a stale index)."""

    directory: Path
    segments: int
    records: int
    bytes: int
    oldest_ns: int | None
    newest_ns: int | None
    problems: tuple[Finding, ...]
    notes: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(directory: Path) -> VerifyReport:
    """Read every segment of a store and check every record's CRC. Changes nothing.

    Raises FileNotFoundError if the directory does not exist. Safe on a live store, with one
    caveat: a write in progress may show as a torn last write (a note, not a problem).
    """
    directory = Path(directory)
    problems: list[Finding] = []
    notes: list[Finding] = []
    segs: dict[int, os.DirEntry[str]] = {}
    idxs: dict[int, os.DirEntry[str]] = {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if m := _SEGMENT_RE.fullmatch(entry.name):
            segs[int(m.group(1))] = entry
        elif m := _INDEX_RE.fullmatch(entry.name):
            idxs[int(m.group(1))] = entry
        elif not entry.is_dir(follow_symlinks=False):
            notes.append(Finding(entry.name, None, "foreign file, skipped"))
    for seq in sorted(idxs.keys() - segs.keys()):
        notes.append(Finding(idxs[seq].name, None, "index without a segment"))
    newest = max(segs, default=None)
    records = total = 0
    oldest_ns: int | None = None
    newest_ns: int | None = None
    for seq in sorted(segs):
        name = segs[seq].name
        try:
            data = _read_file(Path(segs[seq].path))
        except OSError as e:
            problems.append(Finding(name, None, f"unreadable: {e.strerror or e}"))
            continue
        try:
            header = decode_segment_header(data)
        except SegmentHeaderError as e:
            if seq == newest and len(data) < SEGMENT_HEADER_SIZE:
                notes.append(Finding(name, 0, f"{e} ({len(data)} bytes): recovery removes it"))
            else:
                problems.append(Finding(name, 0, str(e)))
            continue
        if header.seq != seq:
            problems.append(Finding(name, 0, f"header says segment {header.seq}"))
            continue
        scan = summarize_records(data, SEGMENT_HEADER_SIZE)
        records += scan.records
        total += len(data)
        if scan.min_ns is not None and scan.max_ns is not None:
            oldest_ns = scan.min_ns if oldest_ns is None else min(oldest_ns, scan.min_ns)
            newest_ns = scan.max_ns if newest_ns is None else max(newest_ns, scan.max_ns)
        for g in scan.gaps:
            what = f"{g.reason}: {g.end - g.offset} bytes not readable"
            if g is scan.tail_gap and seq == newest:
                notes.append(Finding(name, g.offset, f"torn last write ({g.reason}, {g.end - g.offset} bytes): "
                                                     "recovery cuts it"))
            else:
                problems.append(Finding(name, g.offset, what))
        if seq in idxs:
            ix = decode_index(_read_file(Path(idxs[seq].path)))
            if ix is None:
                notes.append(Finding(idxs[seq].name, None, "index unreadable: recovery rescans the segment"))
            elif ix.data_len != len(data) or ix.records != scan.records:
                notes.append(Finding(idxs[seq].name, None,
                                     f"index does not match the segment ({ix.records} records / {ix.data_len} "
                                     f"bytes vs {scan.records} / {len(data)}): recovery rescans it"))
    return VerifyReport(directory, len(segs), records, total, oldest_ns, newest_ns, tuple(problems), tuple(notes))
