"""ChargePointLink: the two legs of one proxied charge point and the frames between them.

Guarantees:
- Text frames are forwarded as the exact same UTF-8 bytes (websockets validates UTF-8; decoding and
  re-encoding valid UTF-8 is the identity), one at a time, in arrival order, per direction.
- Nothing is invented: the only frame the proxy ever writes itself is the CALLERROR that
  ``validation = "enforce"`` prescribes for an invalid CALL, sent back to its sender.
- Back-pressure: each direction is one loop "recv, then await send"; while the destination is slow,
  the source is not read, websockets stops reading the socket when its small queue is full, and TCP
  pushes back on the peer. Memory per link is bounded by max_queue x max_frame_bytes.
- Inspection (parsing, validation, latency, tap) runs after the frame has been handed to the
  destination socket, except in enforce mode where the CALL must be checked first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

from ..logfmt import get_logger
from .inspect import Direction, FrameInspector
from .stats import ChargePointStats

log = get_logger("value")

# Close codes (RFC 6455 §7.4.1).
NORMAL, GOING_AWAY, UNSUPPORTED_DATA, TOO_BIG, INTERNAL_ERROR, SERVICE_RESTART = (
    1000, 1001, 1003, 1009, 1011, 1012,
)


class TapSink(Protocol):
    def put(self, time_ns: int, cp_id: str, direction: str, event: str, frame: str | None = None, **extra: object) -> None: ...


class _BinaryFrame(Exception):
    pass


def _close_info(exc: ConnectionClosed) -> tuple[int | None, str]:
    frame = exc.rcvd or exc.sent
    return (frame.code, frame.reason) if frame else (None, "")


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
        self._next_invalid_log = 0
        self._invalid_unlogged = 0

    async def run(self) -> None:
        """Pump both directions until either leg ends, then close the other one."""
        up = asyncio.create_task(self._pump(self.charger, self.upstream, Direction.UP))
        down = asyncio.create_task(self._pump(self.upstream, self.charger, Direction.DOWN))
        try:
            done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self.close(GOING_AWAY, "gateway shutting down")
            raise
        finally:
            for t in (up, down):
                t.cancel()
        ended_up = up in done
        if self._closing is not None:
            code, reason = self._closing
            await self._close_both(code, reason)
            return
        if ended_up:  # the charger leg ended: take the upstream leg down with it
            code, reason = self._ended(up, "charger")
            await self.upstream.close(GOING_AWAY, "charger disconnected")
        else:  # the CSMS leg ended: close the charger so its own offline queue and retries apply
            code, reason = self._ended(down, "upstream")
            charger_code = SERVICE_RESTART if code in (NORMAL, GOING_AWAY, 1006, None) else INTERNAL_ERROR
            await self.charger.close(charger_code, "upstream connection lost")
        self.stats.last_close = f"{'charger' if ended_up else 'upstream'}:{code}"

    def _ended(self, task: asyncio.Task[None], leg: str) -> tuple[int | None, str]:
        exc = task.exception()
        code: int | None = None
        reason = ""
        if isinstance(exc, ConnectionClosed):
            code, reason = _close_info(exc)
        elif isinstance(exc, _BinaryFrame):
            code, reason = UNSUPPORTED_DATA, "binary frame"
        elif exc is not None:
            log.error("link_pump_failed", cp=self.cp_id, leg=leg, error=repr(exc))
            code = INTERNAL_ERROR
        level = log.info if code in (NORMAL, GOING_AWAY) else log.warning
        level(f"{leg}_closed", cp=self.cp_id, code=code, reason=reason)
        self.tap.put(time.time_ns(), self.cp_id, "", f"{leg}_closed", code=code, reason=reason)
        return code, reason

    async def close(self, code: int, reason: str) -> None:
        """Close both legs (shutdown, or a newer connection for the same cp_id)."""
        self._closing = (code, reason)
        await self._close_both(code, reason)

    async def _close_both(self, code: int, reason: str) -> None:
        await asyncio.gather(self.charger.close(code, reason), self.upstream.close(code, reason))

    def _log_invalid(self, now_ns: int, dir_name: str, code: str, detail: str, rejected: bool = False) -> None:
        """At most one line per charge point every 10 s: a broken charger must not flood the journal."""
        if now_ns < self._next_invalid_log:
            self._invalid_unlogged += 1
            return
        self._next_invalid_log = now_ns + 10_000_000_000
        log.warning("call_rejected" if rejected else "invalid_frame", cp=self.cp_id, dir=dir_name, code=code,
                    detail=detail, suppressed=self._invalid_unlogged)
        self._invalid_unlogged = 0

    async def _pump(self, src: Connection, dst: Connection, direction: Direction) -> None:
        up = direction is Direction.UP
        dir_name = "up" if up else "down"
        stats, inspector, tap, cp_id = self.stats, self.inspector, self.tap, self.cp_id
        while True:
            msg = await src.recv()
            if not isinstance(msg, str):
                # OCPP-J is text only (OCPP-J 1.6 §4.1.2): refuse this leg; the other follows.
                await src.close(UNSUPPORTED_DATA, "binary frames are not OCPP-J")
                raise _BinaryFrame()
            now = time.time_ns()
            if self._enforce:
                obs = inspector.observe(direction, msg, now)
                if not obs.forward:
                    stats.invalid_frames += 1
                    stats.rejected_calls += 1
                    if obs.reply is not None:
                        await src.send(obs.reply)
                    code = obs.error.kind.name if obs.error else "?"
                    self._log_invalid(now, dir_name, code, obs.error.detail if obs.error else "", rejected=True)
                    tap.put(now, cp_id, dir_name, "rejected", msg, code=code)
                    continue
                await dst.send(msg)
            else:
                await dst.send(msg)
                obs = inspector.observe(direction, msg, now)
            # Bookkeeping only after the frame is on its way.
            size = len(msg) if msg.isascii() else len(msg.encode())
            if up:
                stats.frames_up += 1
                stats.bytes_up += size
            else:
                stats.frames_down += 1
                stats.bytes_down += size
            stats.last_frame_ns = now
            if obs.error is not None:
                stats.invalid_frames += 1
                self._log_invalid(now, dir_name, obs.error.kind.name, obs.error.detail)
            if obs.latency_ns is not None and not up:
                stats.csms_latency.append(obs.latency_ns)
            tap.put(now, cp_id, dir_name, "frame", msg)
