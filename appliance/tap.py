"""The tap: a one-way, lossy, non-blocking link from the value process to the health process.

The OCPP proxy's forwarding code calls :meth:`TapSender.put` for every frame and connection event.
The health process binds a :class:`TapReceiver` and reads continuously. Guarantees:

- **Never blocks the forwarding path.** ``put()`` appends one tuple to an in-process queue and, only
  when the queue was empty, sets an :class:`asyncio.Event`. It does no JSON, no redaction, no I/O and
  never awaits. The background task :meth:`TapSender.run` does the rest in small steps (one datagram
  of work between yields) and sends with ``MSG_DONTWAIT`` on a non-blocking socket: a slow, dead or
  absent health side costs the value process a failed ``send()``, never a wait.
- **Bounded memory.** The queue holds at most ``max_queue`` records (default 10,000); when it is full
  the *new* record is dropped. At most one partly filled datagram is held, and the kernel holds at
  most ``net.unix.max_dgram_qlen`` datagrams (bounded again by the socket send buffer).
- **Drops are counted on both sides.** The sender counts records dropped because the queue was full,
  because the socket refused the datagram (absent, refusing, or full), or because a record could not
  be redacted or encoded. Each datagram carries the cumulative drop count and a per-sender sequence
  number, so the receiver sees both the sender's drops and any datagram that never arrived.
- **One way.** The receiver never writes to the socket; the sender never reads from it.
- **Redaction before the record leaves the value process.** Frames pass through the injected
  ``redact`` callable (idTag/idToken values become ``hmac:<16 hex>``) in the value process. If it
  raises, the record is dropped and counted: an unredacted frame is never sent.

Datagram format (UTF-8 JSON, compact, ASCII-only because non-ASCII is escaped)::

    {"v":1,"gw":"gw-01","seq":7,"drop":0,"recs":[
        {"t":1764090651123456789,"cp":"CP7","dir":"up","ev":"frame","f":"[2,\\"1\\",\\"Heartbeat\\",{}]"},
        {"t":1764090651200000000,"cp":"CP7","dir":"","ev":"disconnect","code":1006}]}

A record whose frame alone does not fit in a datagram is sent with the frame cut to fit and
``"trunc": <original length of the frame in UTF-8 bytes>``. Extra keys named like the record's own
keys (``t cp dir ev f trunc``) are ignored. Encoding, packing, decoding and sequence-gap accounting are
pure (sans-I/O); the classes that touch sockets are thin shells around them. See docs/tap.md.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from appliance.logfmt import get_logger

log = get_logger("tap")

FORMAT_VERSION: Final = 1
DEFAULT_SOCKET_PATH: Final = "/run/omgw/tap.sock"
DEFAULT_MAX_QUEUE: Final = 10_000
DEFAULT_MAX_DATAGRAM: Final = 65_000

# Keys of a record object; extra metadata may not use them.
RESERVED_KEYS: Final = frozenset({"t", "cp", "dir", "ev", "f", "trunc"})

# Envelope size is reserved for the widest possible "seq" and "drop" (20 digits, i.e. up to 10**20-1)
# so that a batch sized while it is being filled still fits whatever numbers it is sealed with.
_NUMBER_DIGITS: Final = 20
_MIN_RECORD_BUDGET: Final = 64

# ensure_ascii: output is plain ASCII, lone surrogates round-trip, and the C encoder is used.
# default=str: extra metadata that is not JSON-able is sent as its str() rather than failing.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, default=str)


class TapFormatError(ValueError):
    """A datagram is not a valid tap datagram; the message says which part is wrong."""


@dataclass(frozen=True, slots=True)
class TapRecord:
    """One tap record: a forwarded frame or a connection event."""

    time_ns: int
    cp_id: str
    direction: str  # "up" (charger -> CSMS), "down" (CSMS -> charger), "" for connection events
    event: str  # "frame" or a connection event name ("connect", "disconnect", "stats", ...)
    frame: str | None = None  # redacted frame text, for frames only
    extra: Mapping[str, Any] = field(default_factory=dict)
    truncated_from: int | None = None  # original UTF-8 length of a frame that was cut to fit


@dataclass(frozen=True, slots=True)
class TapDatagram:
    """One decoded datagram."""

    gateway_id: str
    seq: int
    dropped: int  # records the sender has dropped so far (cumulative)
    records: tuple[TapRecord, ...]


@dataclass(frozen=True, slots=True)
class OutgoingDatagram:
    """A sealed datagram and the number of records it carries (for drop accounting)."""

    seq: int
    count: int
    data: bytes


# --------------------------------------------------------------------------------------------------
# Sans-I/O core: record encoding, packing, decoding, sequence accounting


def _record_object(record: TapRecord, frame: str | None, truncated_from: int | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"t": record.time_ns, "cp": record.cp_id, "dir": record.direction, "ev": record.event}
    if frame is not None:
        obj["f"] = frame
    if truncated_from is not None:
        obj["trunc"] = truncated_from
    for k, v in record.extra.items():
        if k not in RESERVED_KEYS:
            obj[k] = v
    return obj


def encode_record(record: TapRecord, budget: int) -> tuple[bytes, bool] | None:
    """Encode one record in at most ``budget`` bytes.

    Returns ``(encoded, truncated)``. A frame that does not fit is cut (at a character boundary) and
    the record gets ``"trunc": <original UTF-8 length>``. Returns None when the record cannot be
    sent: its metadata alone exceeds the budget, or it is not encodable at all.
    """
    try:
        frame = record.frame
        # A frame longer (in characters) than the budget cannot fit: skip encoding it whole.
        if frame is None or len(frame) < budget:
            data = _ENCODER.encode(_record_object(record, frame, record.truncated_from)).encode("ascii")
            if len(data) <= budget:
                return data, False
        if not frame:
            return None
        original = record.truncated_from
        if original is None:
            original = len(frame.encode("utf-8", "surrogatepass"))
        # Room for the frame's JSON string (quotes included) beside the metadata and "trunc".
        room = budget - len(_ENCODER.encode(_record_object(record, "", original))) + 2
        if room < 2:
            return None
        # Longest prefix whose escaped form fits; escaping only grows text, so at most room-2 chars.
        lo, hi = 0, min(len(frame), room - 2)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(_ENCODER.encode(frame[:mid])) <= room:
                lo = mid
            else:
                hi = mid - 1
        data = _ENCODER.encode(_record_object(record, frame[:lo], original)).encode("ascii")
        return data, True
    except (TypeError, ValueError, RecursionError):
        # Non-str dict keys, circular references: the record cannot be represented; the caller counts it.
        return None


def _envelope_head(gateway_id: str, seq: int, dropped: int) -> bytes:
    gw = _ENCODER.encode(gateway_id)
    return f'{{"v":{FORMAT_VERSION},"gw":{gw},"seq":{seq},"drop":{dropped},"recs":['.encode("ascii")


def record_budget(gateway_id: str, max_bytes: int) -> int:
    """Bytes available for the records of one datagram (commas included) under ``max_bytes``."""
    widest = 10**_NUMBER_DIGITS - 1
    return max_bytes - len(_envelope_head(gateway_id, widest, widest)) - len(b"]}")


class DatagramPacker:
    """Greedy, incremental packing of records into datagrams of at most ``max_bytes`` (sans-I/O).

    ``add()`` places a record in the open datagram; when it does not fit, the open datagram is sealed
    and returned, and the record starts the next one. ``flush()`` seals the open datagram. Sequence
    numbers are given at sealing, consecutively from ``first_seq``.
    """

    def __init__(self, gateway_id: str, max_bytes: int, first_seq: int = 1) -> None:
        self.gateway_id = gateway_id
        self.max_bytes = max_bytes
        self.budget = record_budget(gateway_id, max_bytes)
        if self.budget < _MIN_RECORD_BUDGET:
            raise ValueError(
                f"max_bytes={max_bytes} leaves {self.budget} bytes for records (need {_MIN_RECORD_BUDGET})"
            )
        self.next_seq = first_seq
        self.truncated = 0  # records whose frame was cut to fit
        self.unencodable = 0  # records that could not be sent at all
        self._parts: list[bytes] = []
        self._size = 0  # bytes of self._parts joined with commas

    @property
    def pending(self) -> int:
        """Records in the open (not yet sealed) datagram."""
        return len(self._parts)

    def add(self, record: TapRecord, dropped: int) -> OutgoingDatagram | None:
        encoded = encode_record(record, self.budget)
        if encoded is None:
            self.unencodable += 1
            return None
        data, truncated = encoded
        if truncated:
            self.truncated += 1
        sealed = None
        if self._parts and self._size + 1 + len(data) > self.budget:
            sealed = self.flush(dropped)
        self._size += len(data) + (1 if self._parts else 0)
        self._parts.append(data)
        return sealed

    def flush(self, dropped: int) -> OutgoingDatagram | None:
        if not self._parts:
            return None
        seq = self.next_seq
        self.next_seq += 1
        data = _envelope_head(self.gateway_id, seq, dropped) + b",".join(self._parts) + b"]}"
        sealed = OutgoingDatagram(seq=seq, count=len(self._parts), data=data)
        self._parts = []
        self._size = 0
        return sealed

    def discard(self) -> int:
        """Drop the open datagram; return how many records it held."""
        n = len(self._parts)
        self._parts = []
        self._size = 0
        return n


def encode_batches(
    records: Iterable[TapRecord], gateway_id: str, first_seq: int, dropped: int, max_bytes: int
) -> list[bytes]:
    """Pack records greedily into datagrams, each at most ``max_bytes``, in order.

    Records that cannot be sent (metadata alone over the limit, not encodable) are left out; use
    :class:`DatagramPacker` directly to count them.
    """
    packer = DatagramPacker(gateway_id, max_bytes, first_seq)
    out = [sealed.data for r in records if (sealed := packer.add(r, dropped)) is not None]
    last = packer.flush(dropped)
    if last is not None:
        out.append(last.data)
    return out


def _field(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise TapFormatError(f"{where}: missing {key!r}")
    value = obj[key]
    if type(value) is not kind:  # exact: a JSON true is not an int here
        raise TapFormatError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _decode_record(obj: Any, where: str) -> TapRecord:
    if not isinstance(obj, dict):
        raise TapFormatError(f"{where}: expected an object")
    frame = obj.get("f")
    if frame is not None and type(frame) is not str:
        raise TapFormatError(f"{where}.f: expected str")
    trunc = obj.get("trunc")
    if trunc is not None and (type(trunc) is not int or trunc < 0):
        raise TapFormatError(f"{where}.trunc: expected a non-negative int")
    return TapRecord(
        time_ns=_field(obj, "t", int, where),
        cp_id=_field(obj, "cp", str, where),
        direction=_field(obj, "dir", str, where),
        event=_field(obj, "ev", str, where),
        frame=frame,
        extra={k: v for k, v in obj.items() if k not in RESERVED_KEYS},
        truncated_from=trunc,
    )


def decode_datagram(data: bytes) -> TapDatagram:
    """Decode one datagram; raise :class:`TapFormatError` naming the first problem found."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise TapFormatError(f"datagram: not UTF-8 JSON ({e.__class__.__name__})") from e
    if not isinstance(obj, dict):
        raise TapFormatError("datagram: expected an object")
    version = obj.get("v")
    if version != FORMAT_VERSION or type(version) is not int:
        raise TapFormatError(f"datagram.v: unsupported version {version!r}")
    seq = _field(obj, "seq", int, "datagram")
    if seq < 1:
        raise TapFormatError(f"datagram.seq: {seq} < 1")
    dropped = _field(obj, "drop", int, "datagram")
    if dropped < 0:
        raise TapFormatError(f"datagram.drop: {dropped} < 0")
    recs = _field(obj, "recs", list, "datagram")
    return TapDatagram(
        gateway_id=_field(obj, "gw", str, "datagram"),
        seq=seq,
        dropped=dropped,
        records=tuple(_decode_record(r, f"datagram.recs[{i}]") for i, r in enumerate(recs)),
    )


class SeqTracker:
    """Counts datagrams missing from each sender's sequence (sans-I/O).

    A sender numbers its datagrams 1, 2, 3, ...; a jump forward counts the skipped numbers as lost.
    A number at or below the last one seen means the sender restarted: the datagrams of the new run
    before this one (``seq - 1``) count as lost. The first datagram seen from a sender starts its
    accounting (datagrams sent before the receiver existed are the sender's ``dropped``, not ours).
    """

    def __init__(self) -> None:
        self.last_seq: dict[str, int] = {}
        self.lost = 0
        self.restarts = 0

    def observe(self, gateway_id: str, seq: int) -> int:
        """Record one datagram; return how many datagrams it shows as lost."""
        last = self.last_seq.get(gateway_id)
        self.last_seq[gateway_id] = seq
        if last is None:
            return 0
        if seq > last:
            lost = seq - last - 1
        else:
            self.restarts += 1
            lost = seq - 1
        self.lost += lost
        return lost


# --------------------------------------------------------------------------------------------------
# I/O shells


_NO_EXTRA: Mapping[str, Any] = {}


def _identity(frame: str) -> str:
    return frame


QueuedRecord = tuple[int, str, str, str, str | None, dict[str, Any] | None]


YIELD_EVERY = 16  # records redacted and packed between two yields to the event loop


class TapSender:
    """Value-process side of the tap. Create it, start ``run()`` as a task, call ``put()`` freely.

    ``put()`` must be called from the event loop's thread (it may set an asyncio.Event).
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        gateway_id: str,
        *,
        redact: Callable[[str], str] = _identity,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
        linger: float = 0.02,
        reconnect_interval: float = 1.0,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.socket_path = os.fspath(socket_path)
        self.gateway_id = gateway_id
        self.max_queue = max_queue
        self.max_datagram = max_datagram
        self.linger = linger
        self.reconnect_interval = reconnect_interval
        self._redact = redact
        self._packer = DatagramPacker(gateway_id, max_datagram)
        self._queue: collections.deque[QueuedRecord] = collections.deque()
        self._wake = asyncio.Event()
        self._sock: socket.socket | None = None
        self._next_connect = float("-inf")
        self._next_slow_log = float("-inf")
        self._next_redact_log = float("-inf")
        # counters
        self.sent_records = 0
        self.sent_datagrams = 0
        self.dropped_queue = 0
        self.dropped_socket = 0
        self.dropped_redact = 0
        self.connect_attempts = 0

    # -- hot path ---------------------------------------------------------------------------------

    def put(self, time_ns: int, cp_id: str, direction: str, event: str, frame: str | None = None, **extra: Any) -> None:
        """Queue one record. O(1); never raises, blocks, awaits or encodes. Full queue: drop it."""
        q = self._queue
        n = len(q)
        if n >= self.max_queue:
            self.dropped_queue += 1
            return
        # `extra or None`: a tuple holding only atomic values is untracked by the garbage collector,
        # so a full queue of plain frames adds nothing to GC passes (4x cheaper put() measured).
        q.append((time_ns, cp_id, direction, event, frame, extra or None))
        if not n:
            self._wake.set()

    # -- counters ---------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Records waiting in the queue now."""
        return len(self._queue)

    @property
    def dropped_encode(self) -> int:
        """Records dropped because they could not be redacted or encoded."""
        return self.dropped_redact + self._packer.unencodable

    @property
    def truncated(self) -> int:
        """Records sent with their frame cut to fit in one datagram."""
        return self._packer.truncated

    @property
    def dropped(self) -> int:
        """All records dropped so far (this is the datagram's "drop" field)."""
        return self.dropped_queue + self.dropped_socket + self.dropped_encode

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def stats(self) -> dict[str, int | bool]:
        return {
            "queued": self.queued,
            "sent_records": self.sent_records,
            "sent_datagrams": self.sent_datagrams,
            "dropped_queue": self.dropped_queue,
            "dropped_socket": self.dropped_socket,
            "dropped_encode": self.dropped_encode,
            "dropped": self.dropped,
            "truncated": self.truncated,
            "connected": self.connected,
            "connect_attempts": self.connect_attempts,
        }

    # -- background task --------------------------------------------------------------------------

    async def run(self) -> None:
        """Drain the queue into datagrams until cancelled. Never raises for I/O errors."""
        try:
            while True:
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    if self.linger > 0:
                        # Batch records that arrive close together: the kernel queue is counted in
                        # datagrams, so fuller datagrams let the health side stall longer without loss.
                        await asyncio.sleep(self.linger)
                await self._drain()
        finally:
            # Cancelled between datagrams: send the open one now (non-blocking) rather than lose it
            # uncounted. Records still queued stay queued.
            sealed = self._packer.flush(self.dropped)
            if sealed is not None:
                self._send(sealed)
            self.close()

    async def _drain(self) -> None:
        """Send everything queued now, yielding to the event loop after each datagram and every
        ``YIELD_EVERY`` records: redaction and encoding cost ~6 us per record, and a full datagram
        (~570 Heartbeats) would otherwise hold the forwarding path for ~3 ms (bench/value_latency.py
        measured +1.1 ms at p99 before this)."""
        q = self._queue
        packer = self._packer
        redact = self._redact
        if self._sock is None and not self._connect():
            self._drop_all()
            return
        since_yield = 0
        while q:
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
                if not q:
                    break
            t, cp, direction, event, frame, extra = q.popleft()
            if frame is not None and redact is not _identity:
                try:
                    frame = redact(frame)
                except Exception as e:  # noqa: BLE001 - the redactor is injected; never send it unredacted
                    self.dropped_redact += 1
                    now = time.monotonic()
                    if now >= self._next_redact_log:
                        self._next_redact_log = now + 10.0
                        log.error("tap_redact_failed", cp=cp, error=e.__class__.__name__, dropped=self.dropped_redact)
                    continue
            sealed = packer.add(TapRecord(t, cp, direction, event, frame, extra or _NO_EXTRA), self.dropped)
            if sealed is not None:
                self._send(sealed)
                if self._sock is None:
                    self._drop_all()
                    return
                since_yield = 0
                await asyncio.sleep(0)
        sealed = packer.flush(self.dropped)
        if sealed is not None:
            self._send(sealed)

    def _drop_all(self) -> None:
        n = len(self._queue) + self._packer.discard()
        self._queue.clear()
        self.dropped_socket += n

    def _connect(self) -> bool:
        """Try to connect, at most once per ``reconnect_interval``; True when connected."""
        now = time.monotonic()
        if now < self._next_connect:
            return False
        self._next_connect = now + self.reconnect_interval
        self.connect_attempts += 1
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            # Room for a full kernel queue of full datagrams (the kernel caps it at net.core.wmem_max).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.max_datagram * 12)
            sock.connect(self.socket_path)
        except OSError as e:
            sock.close()
            if self.connect_attempts == 1:
                log.info("tap_absent", path=self.socket_path, error=e.__class__.__name__)
            return False
        self._sock = sock
        log.info("tap_connected", path=self.socket_path)
        return True

    def _send(self, sealed: OutgoingDatagram) -> None:
        sock = self._sock
        if sock is None and self._connect():
            sock = self._sock
        if sock is None:
            self.dropped_socket += sealed.count
            return
        try:
            sock.send(sealed.data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            # Reader slow: its queue (net.unix.max_dgram_qlen) or our send buffer is full.
            self.dropped_socket += sealed.count
            now = time.monotonic()
            if now >= self._next_slow_log:
                self._next_slow_log = now + 10.0
                log.warning("tap_reader_slow", dropped_socket=self.dropped_socket)
        except OSError as e:
            # Reader gone (ECONNREFUSED, then ENOTCONN) or the datagram refused: reconnect later.
            self.dropped_socket += sealed.count
            self._close_socket()
            log.warning("tap_disconnected", path=self.socket_path, error=e.__class__.__name__)
        else:
            self.sent_datagrams += 1
            self.sent_records += sealed.count

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """Close the socket. Records still queued are left for a later run() or discarded."""
        self._close_socket()


class TapReceiver:
    """Health-process side of the tap: binds the socket, reads continuously, never writes.

    Reading happens in a ``loop.add_reader`` callback, independent of how fast ``datagrams()`` is
    consumed; decoded datagrams wait in a bounded buffer (``max_pending``; beyond it they are dropped
    and counted in ``overflow``), so the kernel queue is always emptied.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        max_pending: int = 10_000,
        mode: int = 0o660,
        recv_buffer: int = 1 << 17,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.max_pending = max_pending
        self.mode = mode
        self.seq = SeqTracker()
        self.received = 0  # valid datagrams
        self.records = 0  # records in valid datagrams
        self.malformed = 0
        self.overflow = 0  # valid datagrams dropped because datagrams() was not consumed fast enough
        self.sender_dropped: dict[str, int] = {}  # latest "drop" per gateway id
        self._buf = bytearray(recv_buffer)
        self._view = memoryview(self._buf)
        self._pending: collections.deque[TapDatagram] = collections.deque()
        self._ready = asyncio.Event()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inode: int | None = None
        self._closed = False
        self._next_malformed_log = float("-inf")

    @property
    def lost(self) -> int:
        """Datagrams missing from the senders' sequences."""
        return self.seq.lost

    def stats(self) -> dict[str, int]:
        return {
            "received": self.received,
            "records": self.records,
            "lost": self.lost,
            "malformed": self.malformed,
            "overflow": self.overflow,
            "restarts": self.seq.restarts,
            "sender_dropped": sum(self.sender_dropped.values()),
        }

    def start(self) -> None:
        """Bind the socket (replacing a stale one) and start reading. Needs a running event loop."""
        loop = asyncio.get_running_loop()
        if self._sock is not None or self._closed:
            raise RuntimeError("TapReceiver.start() may be called once")
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        try:
            st = path.lstat()
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise FileExistsError(f"{path}: exists and is not a socket; refusing to replace it")
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.bind(os.fspath(path))
            os.chmod(path, self.mode)
            self._inode = path.stat().st_ino
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop = loop
        loop.add_reader(sock.fileno(), self._on_readable)
        log.info("tap_listening", path=str(path))

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        buf = self._buf
        for _ in range(64):  # bounded work per callback; the loop calls again while readable
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("tap_recv_failed", error=e.__class__.__name__)
                return
            self._accept(self._view[:n].tobytes() if n < len(buf) else None)

    def _accept(self, data: bytes | None) -> None:
        """Account for one datagram (None: larger than the receive buffer)."""
        try:
            if data is None:
                raise TapFormatError(f"datagram: larger than {len(self._buf) - 1} bytes")
            dgram = decode_datagram(data)
        except TapFormatError as e:
            self.malformed += 1
            now = time.monotonic()
            if now >= self._next_malformed_log:
                self._next_malformed_log = now + 10.0
                log.warning("tap_malformed", reason=str(e), malformed=self.malformed)
            return
        self.received += 1
        self.records += len(dgram.records)
        self.seq.observe(dgram.gateway_id, dgram.seq)
        self.sender_dropped[dgram.gateway_id] = dgram.dropped
        if len(self._pending) >= self.max_pending:
            self.overflow += 1
            return
        self._pending.append(dgram)
        self._ready.set()

    async def datagrams(self) -> AsyncIterator[TapDatagram]:
        """Yield decoded datagrams as they arrive, until ``close()``."""
        while True:
            while self._pending:
                yield self._pending.popleft()
            if self._closed:
                return
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """Stop reading, close the socket and remove its file (if it is still ours)."""
        self._closed = True
        self._ready.set()
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        sock.close()
        try:
            if self.socket_path.stat().st_ino == self._inode:
                self.socket_path.unlink()
        except FileNotFoundError:
            pass
