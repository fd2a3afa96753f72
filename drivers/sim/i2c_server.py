"""A simulated I2C bus served on a Unix socket, so a bench process can own the sensors.

Why it exists: on the simulated HIL bench the device under test is a separate ``omgw health``
process. With ``bus = "sim"`` its chip models live inside it and a test cannot reach them. Here the
test process keeps the :class:`~drivers.sim.i2c.SimulatedSMBus` (its chip models, ``set_climate``,
faults ``nack``/``corrupt_crc``/``stick``, ``attach``/``detach``) and serves it with
:class:`I2cSimServer`; the gateway opens the bus as ``bus = "sim:/path/to.sock"``, which gives it a
:class:`RemoteSMBus`. The drivers run unchanged: ``RemoteSMBus`` is the same smbus2 decomposition
(:class:`~drivers.sim.i2c.WireSMBus`) with the two wire transfers sent over the socket.

Wire format (``SOCK_SEQPACKET``: one message per wire transfer, one reply per request)::

    request  = op:u8  address:u8  length:u16be  payload
    reply    = status:u8  data

- ``op`` bits 0-6: ``0x01`` WRITE (``payload`` = the ``length`` bytes written), ``0x02`` READ
  (``length`` bytes wanted, no payload). Bit 7 (``0x80``, REPEATED_START): the transfer ends in a
  repeated START, not a STOP: the server keeps the bus for this client until a transfer without the
  bit (or a failed one, or ``HOLD_TIMEOUT_S`` of silence, or the client leaving), so SMBus "read
  byte data" and multi-message ``i2c_rdwr`` stay atomic against other clients.
- ``status`` 0: done; ``data`` is the bytes read (empty for a write). Otherwise ``status`` is the
  errno the transfer failed with and ``data`` is empty: 121 ``EREMOTEIO`` for a NACK (what the
  Linux i2c-bcm2835 driver returns; a missing address NACKs too, as on a real bus), 9 ``EBADF`` if
  the bus was closed, 22 ``EINVAL`` for a malformed request, 5 ``EIO`` for a chip-model bug.

Guarantees: several clients at once, served one transfer at a time in arrival order by one thread;
a client that disappears (even holding the bus) is dropped without affecting the others;
``close()`` stops the thread, closes every connection and removes the socket file. The client never
raises anything but ``OSError`` from a transfer: when the server is unreachable or goes away it
raises ``OSError(ENXIO)`` (the drivers report that like an unplugged sensor) and reconnects on the
next call.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from .i2c import SimulatedSMBus, WireSMBus

__all__ = [
    "HOLD_TIMEOUT_S",
    "I2cSimServer",
    "RemoteSMBus",
    "WireRequest",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "serve_request",
]

_log = logging.getLogger("drivers.sim")

OP_WRITE: Final = 0x01
OP_READ: Final = 0x02
REPEATED_START: Final = 0x80
HEADER_LEN: Final = 4
MAX_LENGTH: Final = 0xFFFF
#: A client holding the bus (REPEATED_START) and silent this long loses the bus.
HOLD_TIMEOUT_S: Final = 1.0


# --------------------------------------------------------------------------------------------------
# Codec (pure)


@dataclass(frozen=True)
class WireRequest:
    """One wire transfer: ``write`` (with ``data``) or a read of ``length`` bytes."""

    write: bool
    address: int
    length: int
    data: bytes = b""
    stop: bool = True  # False: a repeated START follows (the client keeps the bus)


def encode_request(request: WireRequest) -> bytes:
    if not 0 <= request.address <= 0x7F:
        raise ValueError(f"invalid 7-bit address {request.address}")
    if not 0 <= request.length <= MAX_LENGTH:
        raise ValueError(f"transfer length {request.length} outside 0..{MAX_LENGTH}")
    if request.write and len(request.data) != request.length:
        raise ValueError("a write's length must equal len(data)")
    op = (OP_WRITE if request.write else OP_READ) | (0 if request.stop else REPEATED_START)
    head = bytes([op, request.address]) + request.length.to_bytes(2, "big")
    return head + (request.data if request.write else b"")


def decode_request(message: bytes) -> WireRequest:
    """Parse one request; ``ValueError`` says what is wrong with it."""
    if len(message) < HEADER_LEN:
        raise ValueError(f"a request of {len(message)} bytes is shorter than the header")
    op, address = message[0], message[1]
    length = int.from_bytes(message[2:4], "big")
    payload = message[HEADER_LEN:]
    kind = op & ~REPEATED_START
    if address > 0x7F:
        raise ValueError(f"invalid 7-bit address {address}")
    if kind == OP_WRITE:
        if len(payload) != length:
            raise ValueError(f"write announces {length} bytes but carries {len(payload)}")
        return WireRequest(True, address, length, bytes(payload), not op & REPEATED_START)
    if kind == OP_READ:
        if payload:
            raise ValueError("a read request carries no payload")
        return WireRequest(False, address, length, b"", not op & REPEATED_START)
    raise ValueError(f"unknown op 0x{op:02x}")


def encode_reply(status: int, data: bytes = b"") -> bytes:
    if not 0 <= status <= 0xFF:
        raise ValueError(f"status {status} does not fit in a byte")
    return bytes([status]) + (data if status == 0 else b"")


def decode_reply(message: bytes, request: WireRequest) -> bytes:
    """The data of a reply to ``request``, or the ``OSError`` it reports (raised)."""
    if not message:
        raise OSError(errno.EPROTO, "empty reply from the simulated I2C bus")
    status, data = message[0], bytes(message[1:])
    if status:
        raise OSError(status, os.strerror(status))
    want = 0 if request.write else request.length
    if len(data) != want:
        raise OSError(errno.EPROTO, f"reply carries {len(data)} bytes, expected {want}")
    return data


def serve_request(bus: WireSMBus, message: bytes) -> tuple[bytes, bool]:
    """Run one request against ``bus``: (reply, whether the client keeps the bus afterwards)."""
    try:
        req = decode_request(message)
    except ValueError as exc:
        _log.warning("i2c_sim_bad_request", extra={"kv": {"error": str(exc)}})
        return encode_reply(errno.EINVAL), False
    try:
        if req.write:
            bus.wire_write(req.address, req.data, stop=req.stop)
            data = b""
        else:
            data = bus.wire_read(req.address, req.length, stop=req.stop)
    except OSError as exc:  # a NACK (or a closed bus) ends the transfer with STOP
        return encode_reply(exc.errno if exc.errno and 0 < exc.errno < 256 else errno.EIO), False
    except Exception as exc:  # a chip model's bug must not stop the bus for everyone
        kv = {"addr": f"0x{req.address:02x}", "error": repr(exc)}
        _log.error("i2c_sim_model_error", extra={"kv": kv})
        return encode_reply(errno.EIO), False
    if len(data) != (0 if req.write else req.length):  # a model that answered the wrong size
        return encode_reply(errno.EIO), False
    return encode_reply(0, data), not req.stop


# --------------------------------------------------------------------------------------------------
# Server (one thread)


class I2cSimServer:
    """Serve ``bus`` on the Unix ``SOCK_SEQPACKET`` socket ``path`` from a daemon thread.

    Serving starts in the constructor: ``server = I2cSimServer(bus, path)`` ... ``server.close()``,
    or ``with I2cSimServer(bus, path):``. ``start()`` serves again after ``close()``. A stale socket
    file at ``path`` (a server that died) is replaced. Faults are injected on ``bus`` and its chip
    models directly, from any thread.
    """

    def __init__(
        self, bus: SimulatedSMBus, path: Path | str, *, hold_timeout_s: float = HOLD_TIMEOUT_S
    ) -> None:
        self.bus = bus
        self.path = Path(path)
        self.hold_timeout_s = hold_timeout_s
        self.requests = 0
        self.dropped_clients = 0
        self._listener: socket.socket | None = None
        self._clients: dict[int, socket.socket] = {}
        self._holder: int | None = None  # fd of the client that keeps the bus (repeated START)
        self._hold_deadline = 0.0
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.start()

    @property
    def clients(self) -> int:
        return len(self._clients)

    def start(self) -> Self:
        """Serve (again); a no-op while serving."""
        if self._thread is not None:
            return self
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()  # left behind by a server that did not close
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            listener.bind(str(self.path))
            listener.listen(16)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._wake_r, self._wake_w = os.pipe()
        name = f"i2c-sim {self.path.name}"
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        kv = {"path": str(self.path), "devices": sorted(self.bus.devices)}
        _log.info("i2c_sim_serving", extra={"kv": kv})
        return self

    def close(self) -> None:
        """Stop serving: connected clients see the bus vanish (their next transfer raises ENXIO)."""
        if self._thread is None:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(5)
        self._thread = None
        for sock in self._clients.values():
            sock.close()
        self._clients.clear()
        self._holder = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._stopping = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the thread --------------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._listener is not None
        listen_fd = self._listener.fileno()
        while not self._stopping:
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            poller.register(listen_fd, select.POLLIN)
            # While a client holds the bus (from a repeated START to its STOP), only it is served.
            serving = [self._holder] if self._holder is not None else list(self._clients)
            for fd in serving:
                poller.register(fd, select.POLLIN)
            timeout_ms = None
            if self._holder is not None:
                timeout_ms = max(0, int((self._hold_deadline - time.monotonic()) * 1000))
            events = poller.poll(timeout_ms)
            if self._holder is not None and time.monotonic() >= self._hold_deadline:
                _log.warning("i2c_sim_hold_timeout", extra={"kv": {"path": str(self.path)}})
                self._holder = None
            for fd, mask in events:
                if fd == self._wake_r:
                    return
                if fd == listen_fd:
                    self._accept()
                elif fd in self._clients and self._holder in (None, fd):
                    self._service(fd)  # (the holder check: a hold may start within this batch)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except OSError as exc:
            _log.warning("i2c_sim_accept_failed", extra={"kv": {"error": repr(exc)}})
            return
        self._clients[sock.fileno()] = sock

    def _service(self, fd: int) -> None:
        sock = self._clients[fd]
        try:
            message = sock.recv(HEADER_LEN + MAX_LENGTH)
        except OSError:
            message = b""
        if not message:  # EOF: the client left (POLLHUP/POLLERR also end here)
            self._drop(fd)
            return
        self.requests += 1
        reply, keep = serve_request(self.bus, message)
        try:
            sock.send(reply)
        except OSError:
            self._drop(fd)
            return
        if keep:
            self._holder, self._hold_deadline = fd, time.monotonic() + self.hold_timeout_s
        elif self._holder == fd:
            self._holder = None

    def _drop(self, fd: int) -> None:
        sock = self._clients.pop(fd, None)
        if sock is not None:
            sock.close()
            self.dropped_clients += 1
        if self._holder == fd:
            self._holder = None


# --------------------------------------------------------------------------------------------------
# Client


class RemoteSMBus(WireSMBus):
    """The smbus2 calls of :class:`~drivers.sim.i2c.WireSMBus`, each wire transfer sent to an
    :class:`I2cSimServer` at ``path``.

    Connects on first use and after any connection failure. A transfer that cannot reach the server
    raises ``OSError(ENXIO)`` naming the socket (the drivers turn it into a missing sensor);
    ``timeout_s`` bounds the wait for a reply (``OSError(ETIMEDOUT)``). ``bus`` is the adapter
    number drivers print in errors.
    """

    def __init__(self, path: Path | str, *, bus: int = 0, timeout_s: float = 0.5) -> None:
        super().__init__(bus=bus)
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.connections = 0
        self._sock: socket.socket | None = None

    def _write(self, address: int, data: bytes, *, stop: bool = True) -> None:
        self._transfer(WireRequest(True, address, len(data), data, stop))

    def _read(self, address: int, length: int, *, stop: bool = True) -> bytes:
        return self._transfer(WireRequest(False, address, length, b"", stop))

    def _transfer(self, request: WireRequest) -> bytes:
        message = encode_request(request)
        sock = self._send(message)
        try:
            # One byte more than a good reply needs, so that a too-long reply is seen as one.
            reply = sock.recv(2 + (0 if request.write else request.length))
        except TimeoutError:
            self._disconnect()  # the reply may still come: do not read it as the next one's
            why = f"simulated I2C bus {self.path}: no reply within {self.timeout_s:g} s"
            raise OSError(errno.ETIMEDOUT, why) from None
        except OSError as exc:
            self._disconnect()
            raise self._gone(exc) from None
        if not reply:
            self._disconnect()
            raise self._gone(None)
        return decode_reply(reply, request)

    def _send(self, message: bytes) -> socket.socket:
        """Send on the open connection; if the server went away since (EPIPE), the request never
        reached it, so it is sent once more on a new connection."""
        fresh = self._sock is None
        sock = self._connect()
        try:
            sock.send(message)
            return sock
        except OSError as exc:
            self._disconnect()
            if fresh:
                raise self._gone(exc) from None
        sock = self._connect()
        try:
            sock.send(message)
        except OSError as exc:
            self._disconnect()
            raise self._gone(exc) from None
        return sock

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise self._gone(exc) from None
        self._sock = sock
        self.connections += 1
        return sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _gone(self, cause: OSError | None) -> OSError:
        why = "connection closed" if cause is None else (cause.strerror or type(cause).__name__)
        return OSError(errno.ENXIO, f"simulated I2C bus {self.path} not reachable: {why}")

    def close(self) -> None:
        with self._lock:
            self._disconnect()
            super().close()

    def __repr__(self) -> str:
        return f"RemoteSMBus(path={str(self.path)!r}, bus={self.bus})"
