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

Why frames are relayed from the protocol callback: websockets' ``recv()``/``send()`` path costs a
task wake-up, a message assembler and a send lock per frame, about twice the latency budget
(bench/value_latency.py). Both legs are websockets connections whose ``process_event`` hands each
data frame straight to :meth:`ChargePointLink._on_frame`, which writes it to the partner leg in
the same event-loop step. Handshakes, ping/pong, keepalive and the closing handshake stay
websockets' job. Inspection (parsing, validation, latency, tap) runs after the frame has been
written, except in enforce mode where a CALL must be checked first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode

from ..logfmt import get_logger
from .inspect import Direction, FrameInspector
from .stats import ChargePointStats

log = get_logger("value")

# Close codes (RFC 6455 §7.4.1).
NORMAL, GOING_AWAY, UNSUPPORTED_DATA, INVALID_DATA, TOO_BIG, INTERNAL_ERROR, SERVICE_RESTART = (
    1000, 1001, 1003, 1007, 1009, 1011, 1012,
)
_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT


class TapSink(Protocol):
    def put(self, time_ns: int, cp_id: str, direction: str, event: str, frame: str | None = None, **extra: object) -> None: ...


class RelayLeg:
    """Mixin for websockets connections: once ``on_data`` is set, data frames bypass the message
    assembler and go to that callback; flow control is coupled to the ``partner`` leg."""

    on_data: Any = None
    partner: Any = None

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
    pass


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
            leg.partner = partner  # type: ignore[attr-defined]
            leg.on_data = self._on_frame  # type: ignore[attr-defined]
        waits = {asyncio.ensure_future(self.charger.wait_closed()): "charger",
                 asyncio.ensure_future(self.upstream.wait_closed()): "upstream"}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self.close(GOING_AWAY, "gateway shutting down")
            raise
        finally:
            for t in waits:
                t.cancel()
            self.charger.on_data = self.upstream.on_data = None  # type: ignore[attr-defined]
            self.charger.partner = self.upstream.partner = None  # type: ignore[attr-defined]
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

    # ---- the hot path: called from the source leg's data_received ---------------------------

    def _on_frame(self, src: Connection, frame: Frame) -> None:
        if src in self._refused:
            return
        try:
            opcode = frame.opcode
            if opcode is _TEXT:
                if not frame.fin:
                    self._partial[src] = [bytes(frame.data)]
                    return
                data = bytes(frame.data)
            elif opcode is _CONT:
                parts = self._partial[src]
                if parts is None:
                    return
                parts.append(bytes(frame.data))
                if not frame.fin:
                    return
                data = b"".join(parts)
                self._partial[src] = None
            else:  # OCPP-J is text only (OCPP-J 1.6 §4.1.2): refuse this leg; the other follows.
                self._refuse(src, UNSUPPORTED_DATA, "binary frames are not OCPP-J")
                return
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self._refuse(src, INVALID_DATA, "invalid UTF-8 in a text frame")
                return
            self._forward(src, text, data)
        except Exception as e:  # noqa: BLE001 - a bug here must cost this link, never the process
            log.exception("link_relay_failed", cp=self.cp_id, error=repr(e))
            self._refuse(src, INTERNAL_ERROR, "gateway error")

    def _forward(self, src: Connection, text: str | None, data: bytes) -> None:
        if text is None:  # a binary message queued before the relay started
            self._refuse(src, UNSUPPORTED_DATA, "binary frames are not OCPP-J")
            return
        up = src is self.charger
        dst = self.upstream if up else self.charger
        direction = Direction.UP if up else Direction.DOWN
        dir_name = "up" if up else "down"
        stats = self.stats
        now = time.time_ns()
        if self._enforce:
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
            if not _write(dst, data):
                return
        else:
            if not _write(dst, data):
                return
            self._count(up, len(data), now)
            asyncio.get_running_loop().call_soon(self._inspect, direction, dir_name, up, text, now)
            return
        self._count(up, len(data), now)
        self._after(obs, dir_name, up, text, now)

    def _inspect(self, direction: Direction, dir_name: str, up: bool, text: str, now: int) -> None:
        self._after(self.inspector.observe(direction, text, now), dir_name, up, text, now)

    def _count(self, up: bool, size: int, now: int) -> None:
        stats = self.stats
        if up:
            stats.frames_up += 1
            stats.bytes_up += size
        else:
            stats.frames_down += 1
            stats.bytes_down += size
        stats.last_frame_ns = now

    def _after(self, obs: Any, dir_name: str, up: bool, text: str, now: int) -> None:
        stats = self.stats
        if obs.error is not None:
            stats.invalid_frames += 1
            self._log_invalid(now, dir_name, obs.error.kind.name, obs.error.detail)
        if obs.latency_ns is not None and not up:
            stats.csms_latency.append(obs.latency_ns)
        self.tap.put(now, self.cp_id, dir_name, "frame", text)

    def _refuse(self, leg: Connection, code: int, reason: str) -> None:
        self._refused[leg] = code
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


def _write(leg: Connection, data: bytes) -> bool:
    """Queue one text frame on ``leg`` and hand it to the transport now; False if the leg is closing
    (the link is ending: that leg will not deliver anything any more)."""
    try:
        leg.protocol.send_text(data)
        leg.send_data()
    except (InvalidState, RuntimeError, OSError):
        return False
    return True
