"""ChargePointLink: the two legs of one proxied charge point and the frames between them.

Guarantees:
- Text frames are forwarded as the exact same bytes, one message at a time, in arrival order, per
  direction. The payload is never re-serialised; it is only decoded once (UTF-8 validity, RFC 6455
  §8.1, and the inspector).
- Nothing is invented: the only frame the proxy ever writes itself is the CALLERROR that
  ``validation = "enforce"`` prescribes for an invalid CALL, sent back to its sender.
- Back-pressure: when a destination's transport buffer passes websockets' write limit, reading from
  its partner's socket is paused until it drains, so TCP pushes back on the sender and memory per
  link stays bounded.

Why frames are relayed as bytes: websockets' ``recv()``/``send()`` path costs a task wake-up, a
message assembler and a send lock per frame, and even its protocol callback builds a Frame through
a generator-based parser and re-serialises it; together about twice the latency budget
(bench/value_latency.py). Both legs are websockets connections (:class:`RelayLeg`) that keep the
HTTP handshake, ping/pong, keepalive and the closing handshake, but relay each complete text frame
themselves: once its UTF-8 is checked, the frame is written to the partner leg exactly as it was
received (a charger's frame is masked as a client frame must be, a CSMS frame unmasked as a server
frame must be), in the same event-loop step, and only then does the link do its bookkeeping
(counters, parsing, validation, latency, tap). In enforce mode the link checks a CALL before it is
written. Fragmented, binary or otherwise unusual frames make that leg fall back to websockets'
parser for good, so its close codes (1002, 1003, 1009) stay websockets'.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode, apply_mask
from websockets.protocol import CLOSED, CONNECTING, OPEN

from ..logfmt import get_logger
from ..ocppj import FrameError
from .inspect import Direction, FrameInspector
from .stats import ChargePointStats

log = get_logger("value")

# Close codes (RFC 6455 §7.4.1).
NORMAL, GOING_AWAY, UNSUPPORTED_DATA, INVALID_DATA, TOO_BIG, INTERNAL_ERROR, SERVICE_RESTART = (
    1000, 1001, 1003, 1007, 1009, 1011, 1012,
)
_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT
_NO_HEADERS = Headers()
_UP, _DOWN = Direction.UP, Direction.DOWN
_time_ns = time.time_ns


class TapSink(Protocol):
    def put(self, time_ns: int, cp_id: str, direction: str, event: str, frame: str | None = None, **extra: object) -> None: ...


class _MaskSource:
    """Frame masks from the kernel's CSPRNG, fetched 1,024 at a time: RFC 6455 §5.3 wants each
    mask unpredictable, not one getrandom() system call per frame."""

    def __init__(self, batch: int = 1024) -> None:
        self._size = 4 * batch
        self._buf = b""
        self._pos = 0

    def take(self) -> bytes:
        pos = self._pos
        if pos >= len(self._buf):
            self._buf, pos = os.urandom(self._size), 0
        self._pos = pos + 4
        return self._buf[pos:pos + 4]


_masks = _MaskSource()


class RelayLeg:
    """Mixin for websockets connections that relays complete text frames as bytes.

    websockets does the HTTP handshake and every control frame (ping/pong, keepalive, the closing
    handshake); a complete unfragmented text frame never reaches its parser. Everything after the
    handshake's header block goes through :meth:`_relay`, which writes each valid UTF-8 text frame
    to the ``partner`` leg as received and then reports it to ``on_relayed`` (or, when that is None,
    as in enforce mode, hands the payload to ``on_text`` to decide), and feeds control frames to
    websockets as whole frames, so its parser always sits on a frame boundary. Anything unusual
    (binary, fragments, RSV bits, a wrong mask bit, a frame over ``max_size``) makes the leg fall
    back for good: websockets parses the rest and its data frames go to ``on_data`` (the
    Frame-level path), keeping websockets' own close codes.
    Until ``start_relay`` is called, post-handshake bytes wait in ``_pending``.

    Flow control is coupled to the ``partner`` leg: when this leg's transport buffer passes the
    write limit, reading from the partner is paused until it drains.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Every attribute is set here, before websockets' own: an attribute added to an instance
        # later unshares its __dict__ (~1.5 KB per leg, 3 MB at 1,000 chargers).
        self.on_data: Any = None
        self.on_text: Any = None
        self.on_relayed: Any = None
        self.partner: Any = None
        self._pending: bytearray | None = None  # None until the handshake's header block has gone by
        self._handshake_tail = b""
        self._held = False  # reading paused while bytes wait for start_relay
        self._raw = True  # False once websockets parses everything (fallback, closing, failed handshake)
        super().__init__(*args, **kwargs)

    _masked_in = False  # frames from a client are masked (RFC 6455 §5.3)

    # ---- receiving --------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            if self._raw:
                self._handshake_received(data)
            else:
                super().data_received(data)  # type: ignore[misc]
            return
        if self.on_text is None:
            pending += data
            if not self._held and len(pending) > (self.protocol.max_message_size or 1 << 20) + 16:  # type: ignore[attr-defined]
                self._held = True
                self.transport.pause_reading()  # type: ignore[attr-defined]
            return
        if pending:
            pending += data
            self._pending = bytearray()
            self._relay(pending)
        else:
            self._relay(data)

    def _handshake_received(self, data: bytes) -> None:
        joined = self._handshake_tail + data
        end = joined.find(b"\r\n\r\n")
        if end < 0:
            self._handshake_tail = joined[-3:]
            super().data_received(data)  # type: ignore[misc]
            return
        cut = end + 4 - len(self._handshake_tail)
        super().data_received(data[:cut])  # type: ignore[misc]
        rest = data[cut:]
        state = self.protocol.state  # type: ignore[attr-defined]
        # A server is still CONNECTING here (its response goes out later); a client is OPEN
        # unless the handshake failed, and then websockets reads the response body itself.
        if state is OPEN or (state is CONNECTING and self._masked_in):
            self._pending = bytearray(rest)
        else:
            self._raw = False
            if rest:
                super().data_received(rest)  # type: ignore[misc]

    def start_relay(self, on_text: Any, on_data: Any, partner: Any, on_relayed: Any = None) -> None:
        """Install the link's callbacks and relay what arrived since the handshake."""
        self.partner = partner
        self.on_relayed = on_relayed
        self.on_data = on_data
        # The handshake is over: its headers (~4 KB per leg) are not needed any more. websockets
        # still tests request/response for None, so only their headers go.
        for message in (self.request, self.response):  # type: ignore[attr-defined]
            if message is not None:
                message.headers = _NO_HEADERS
        if self._pending is None:  # websockets parses this leg (see the class docstring)
            return
        self.on_text = on_text
        pending, self._pending = self._pending, bytearray()
        if self._held:
            self._held = False
            self.transport.resume_reading()  # type: ignore[attr-defined]
        if pending:
            self._relay(pending)

    def stop_relay(self) -> None:
        """Hand the leg back to websockets (the link is ending): buffered bytes included."""
        self.on_text = self.on_data = self.on_relayed = self.partner = None
        self._fall_back(self._pending or b"", 0)

    def _fall_back(self, buf: bytes | bytearray, pos: int) -> None:
        self._pending = None
        self._raw = False
        if pos < len(buf) and self.protocol.state is not CLOSED:  # type: ignore[attr-defined]
            super().data_received(bytes(buf[pos:]))  # type: ignore[misc]

    def _relay(self, buf: bytes | bytearray) -> None:
        """Relay every complete frame in ``buf``; keep an incomplete tail for the next read."""
        n = len(buf)
        pos = 0
        masked = self._masked_in
        max_size = self.protocol.max_message_size  # type: ignore[attr-defined]
        on_text = self.on_text
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            h = pos + 2
            if length == 126:
                if n < h + 2:
                    break
                length = int.from_bytes(buf[h:h + 2], "big")
                h += 2
            elif length == 127:
                if n < h + 8:
                    break
                length = int.from_bytes(buf[h:h + 8], "big")
                h += 8
            if b0 != 0x81 or (b1 >> 7) != masked or (max_size is not None and length > max_size):
                if b0 & 0x78 == 0x08 and length <= 125 and (b1 >> 7) == masked:
                    # A well-formed control frame: websockets answers pings and closes.
                    end = h + 4 * masked + length
                    if n < end:
                        break
                    super().data_received(bytes(buf[pos:end]))  # type: ignore[misc]
                    pos = end
                    if self.protocol.state is not OPEN:  # type: ignore[attr-defined]
                        self._fall_back(buf, pos)  # closing: websockets ignores what follows
                        return
                    continue
                self._fall_back(buf, pos)  # websockets reports it or reassembles fragments
                return
            if masked:
                end = h + 4 + length
                if n < end:
                    break
                payload = apply_mask(buf[h + 4:end], buf[h:h + 4])
            else:
                end = h + length
                if n < end:
                    break
                payload = bytes(buf[h:end])
            # The frame as it came: usually the whole read, then no copy at all.
            wire = buf if pos == 0 and end == n and type(buf) is bytes else bytes(buf[pos:end])
            pos = end
            on_relayed = self.on_relayed
            if on_relayed is None:
                on_text(self, payload, wire)  # the link decides before anything is written
            else:
                # The hot path: nothing but the UTF-8 check between reading a frame and writing it.
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    on_text(self, payload, wire)  # the link refuses the leg (1007)
                else:
                    if self.partner.send_wire(wire):
                        on_relayed(self, text, len(payload))
            if self._pending is None:  # the callback handed the leg back to websockets
                self._fall_back(buf, pos)
                return
        if pos < n:
            self._pending += buf[pos:]  # type: ignore[operator]

    # ---- sending ----------------------------------------------------------------------------

    def send_wire(self, wire: bytes) -> bool:
        """Write a complete text frame as received from the partner leg; False when this leg no longer
        sends data. No re-framing is needed: a charger's frame is masked as a client's frame must be
        (RFC 6455 §5.3), and a CSMS frame is unmasked as a server's frame must be, so each is already a
        valid frame for the other leg's direction, byte for byte."""
        if self.protocol.state is not OPEN:  # type: ignore[attr-defined]
            return False
        try:
            self.transport.write(wire)  # type: ignore[attr-defined]
        except (RuntimeError, OSError):  # the transport is closing: the link is ending
            return False
        return True

    def send_raw_text(self, payload: bytes) -> bool:
        """Write ``payload`` as one text frame; False when the leg no longer sends data."""
        if self.protocol.state is not OPEN:  # type: ignore[attr-defined]
            return False
        n = len(payload)
        if n < 126:
            size, ext = n, b""
        elif n < 65536:
            size, ext = 126, n.to_bytes(2, "big")
        else:
            size, ext = 127, n.to_bytes(8, "big")
        if self._masked_in:
            head = bytes((0x81, size)) + ext
        else:  # a client masks what it sends (RFC 6455 §5.3)
            mask = _masks.take()
            head = bytes((0x81, 0x80 | size)) + ext + mask
            payload = apply_mask(payload, mask)
        self.transport.write(head + payload)  # type: ignore[attr-defined]
        return True

    async def close(self, code: int = NORMAL, reason: str = "") -> None:
        if self._pending is not None:
            self.stop_relay()
        await super().close(code, reason)  # type: ignore[misc]

    def process_event(self, event: Any) -> None:
        on_data = self.on_data
        if on_data is not None and type(event) is Frame and event.opcode in (_TEXT, _CONT, _BINARY):
            on_data(self, event)
        else:
            super().process_event(event)  # type: ignore[misc]

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self.partner is not None:
            self.partner.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        if self.partner is not None:
            self.partner.transport.resume_reading()


class RelayServerConnection(RelayLeg, ServerConnection):
    _masked_in = True


class RelayClientConnection(RelayLeg, ClientConnection):
    pass


class ChargePointLink:
    def __init__(
        self,
        cp_id: str,
        charger: Connection,
        upstream: Connection,
        stats: ChargePointStats,
        inspector: FrameInspector,
        tap: TapSink,
    ):
        self.cp_id = cp_id
        self.charger = charger
        self.upstream = upstream
        self.stats = stats
        self.inspector = inspector
        self.tap = tap
        self._enforce = inspector.mode == "enforce"
        self._closing: tuple[int, str] | None = None
        self._refused: dict[Connection, int] = {}  # leg -> close code we sent it (binary, bad UTF-8)
        self._partial: dict[Connection, list[bytes] | None] = {charger: None, upstream: None}
        self._next_invalid_log = 0
        self._invalid_unlogged = 0

    async def run(self) -> None:
        """Relay until either leg ends, then close the other one."""
        for leg, partner in ((self.charger, self.upstream), (self.upstream, self.charger)):
            # Frames that arrived before the relay was installed wait in websockets' assembler:
            # forward them first, then switch (no await between the last check and the switch).
            while len(leg.recv_messages.frames):
                msg = await leg.recv()
                self._forward(leg, msg if isinstance(msg, str) else None, msg if isinstance(msg, bytes) else msg.encode())
            leg.start_relay(self._on_text, self._on_frame, partner,  # type: ignore[attr-defined]
                            None if self._enforce else self._relayed)
        # connection_lost_waiter is what wait_closed() awaits; waiting on the futures themselves
        # spares two tasks per link. They must never be cancelled (websockets sets them).
        waits = {self.charger.connection_lost_waiter: "charger", self.upstream.connection_lost_waiter: "upstream"}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self.close(GOING_AWAY, "gateway shutting down")
            raise
        finally:
            self.charger.stop_relay()  # type: ignore[attr-defined]
            self.upstream.stop_relay()  # type: ignore[attr-defined]
        if self._closing is not None:
            await self._close_both(*self._closing)
            return
        leg = waits[next(iter(done))]
        ended, other = (self.charger, self.upstream) if leg == "charger" else (self.upstream, self.charger)
        code = self._refused.get(ended, ended.close_code)
        reason = ended.close_reason or ""
        level = log.info if code in (NORMAL, GOING_AWAY) else log.warning
        level(f"{leg}_closed", cp=self.cp_id, code=code, reason=reason)
        self.tap.put(time.time_ns(), self.cp_id, "", f"{leg}_closed", code=code, reason=reason)
        if leg == "charger":  # take the upstream leg down with it
            await other.close(GOING_AWAY, "charger disconnected")
        else:  # close the charger so its own offline queue and retries apply
            charger_code = SERVICE_RESTART if code in (NORMAL, GOING_AWAY, 1006, None) else INTERNAL_ERROR
            await other.close(charger_code, "upstream connection lost")
        self.stats.last_close = f"{leg}:{code}"

    async def close(self, code: int, reason: str) -> None:
        """Close both legs (shutdown, or a newer connection for the same cp_id)."""
        self._closing = (code, reason)
        await self._close_both(code, reason)

    async def _close_both(self, code: int, reason: str) -> None:
        await asyncio.gather(self.charger.close(code, reason), self.upstream.close(code, reason))

    # ---- called from the source leg's data_received ------------------------------------------

    def _relayed(self, src: Connection, text: str, size: int) -> None:
        """The hot path's second half: ``src``'s leg has just written this frame to its partner
        (modes off and log). Count it, then account for it."""
        now = _time_ns()
        up = src is self.charger
        self._count(up, size, now)
        try:
            error, latency_ns = self.inspector.account(_UP if up else _DOWN, text, now)
        except Exception as e:  # noqa: BLE001 - the frame is delivered; an inspector bug costs its bookkeeping only
            error = latency_ns = None
            self.stats.inspect_failures += 1
            log.exception("inspect_failed", cp=self.cp_id, dir="up" if up else "down", error=repr(e))
        self._after(error, latency_ns, up, text, now)

    def _on_text(self, src: Connection, data: bytes, wire: bytes | None = None) -> None:
        """A complete text frame's payload (and, from the byte-level relay, the frame as received)
        that the leg did not write itself: enforce mode, invalid UTF-8, websockets' fallback path."""
        if self._refused and src in self._refused:
            return
        try:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self._refuse(src, INVALID_DATA, "invalid UTF-8 in a text frame")
                return
            self._forward(src, text, data, wire)
        except Exception as e:  # noqa: BLE001 - a bug here must cost this link, never the process
            log.exception("link_relay_failed", cp=self.cp_id, error=repr(e))
            self._refuse(src, INTERNAL_ERROR, "gateway error")

    def _on_frame(self, src: Connection, frame: Frame) -> None:
        """A data frame websockets parsed (fallback path: fragments, binary, before the relay)."""
        if src in self._refused:
            return
        opcode = frame.opcode
        if opcode is _TEXT:
            if frame.fin:
                self._on_text(src, bytes(frame.data))
            else:
                self._partial[src] = [bytes(frame.data)]
        elif opcode is _CONT:
            parts = self._partial[src]
            if parts is None:
                return
            parts.append(bytes(frame.data))
            if frame.fin:
                self._partial[src] = None
                self._on_text(src, b"".join(parts))
        else:  # OCPP-J is text only (OCPP-J 1.6 §4.1.2): refuse this leg; the other follows.
            self._refuse(src, UNSUPPORTED_DATA, "binary frames are not OCPP-J")

    def _forward(self, src: Connection, text: str | None, data: bytes, wire: bytes | None = None) -> None:
        if text is None:  # a binary message queued before the relay started
            self._refuse(src, UNSUPPORTED_DATA, "binary frames are not OCPP-J")
            return
        up = src is self.charger
        dst = self.upstream if up else self.charger
        if not self._enforce:
            if _write(dst, data, wire):
                self._relayed(src, text, len(data))
            return
        now = _time_ns()
        direction = Direction.UP if up else Direction.DOWN
        dir_name = "up" if up else "down"
        stats = self.stats
        # enforce: a CALL is checked before it may pass
        obs = self.inspector.observe(direction, text, now)
        if not obs.forward:
            stats.invalid_frames += 1
            stats.rejected_calls += 1
            if obs.reply is not None:
                _write(src, obs.reply.encode())
            code = obs.error.kind.name if obs.error else "?"
            self._log_invalid(now, dir_name, code, obs.error.detail if obs.error else "", rejected=True)
            self.tap.put(now, self.cp_id, dir_name, "rejected", text, code=code)
            return
        if not _write(dst, data, wire):
            return
        self._count(up, len(data), now)
        self._after(obs.error, obs.latency_ns, up, text, now)

    def _count(self, up: bool, size: int, now: int) -> None:
        stats = self.stats
        if up:
            stats.frames_up += 1
            stats.bytes_up += size
        else:
            stats.frames_down += 1
            stats.bytes_down += size
        stats.last_frame_ns = now

    def _after(self, error: FrameError | None, latency_ns: int | None, up: bool, text: str, now: int) -> None:
        """A forwarded frame's bookkeeping: its validation error, the CSMS response time, the tap."""
        dir_name = "up" if up else "down"
        if error is not None:
            self.stats.invalid_frames += 1
            self._log_invalid(now, dir_name, error.kind.name, error.detail)
        if latency_ns is not None and not up:
            self.stats.csms_latency.append(latency_ns)
        self.tap.put(now, self.cp_id, dir_name, "frame", text)

    def _refuse(self, leg: Connection, code: int, reason: str) -> None:
        self._refused[leg] = code
        leg.on_relayed = None  # type: ignore[attr-defined]  # later frames of the same read stop at _on_text
        asyncio.ensure_future(leg.close(code, reason))

    def _log_invalid(self, now_ns: int, dir_name: str, code: str, detail: str, rejected: bool = False) -> None:
        """At most one line per charge point every 10 s: a broken charger must not flood the journal."""
        if now_ns < self._next_invalid_log:
            self._invalid_unlogged += 1
            return
        self._next_invalid_log = now_ns + 10_000_000_000
        log.warning("call_rejected" if rejected else "invalid_frame", cp=self.cp_id, dir=dir_name, code=code,
                    detail=detail, suppressed=self._invalid_unlogged)
        self._invalid_unlogged = 0


def _write(leg: Connection, data: bytes, wire: bytes | None = None) -> bool:
    """Queue one text frame on ``leg`` (``wire`` as received, else framed from ``data``) and hand it
    to the transport now; False if the leg is closing (the link is ending: that leg will not deliver
    anything any more)."""
    try:
        if wire is not None:
            return leg.send_wire(wire)  # type: ignore[attr-defined, no-any-return]
        return leg.send_raw_text(data)  # type: ignore[attr-defined, no-any-return]
    except (RuntimeError, OSError):
        return False
