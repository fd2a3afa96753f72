"""The byte-level relay on the wire: frames written by hand (RFC 6455 §5.2), split and packed at
awkward places, on both legs. The peers are raw TCP sockets so the test controls every byte."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct

import pytest

from appliance.demo.csms import SimulatedCsms
from peers import proxy_url

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(payload: bytes, opcode: int = 1, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = bytes((b0, n))
    elif n < 65536:
        head = bytes((b0, 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((head[0], head[1] | 0x80)) + head[2:] + key + masked


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4) if b1 & 0x80 else None
    data = await reader.readexactly(n)
    if key:
        data = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    return b0 & 0x0F, data


async def raw_charger(url: str, cp_id: str = "CP001") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ocpp/{cp_id} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _echo(connection, cp_id, received: list[str]) -> None:
    async for msg in connection:
        received.append(msg)
        await connection.send(f'[3,"{json.loads(msg)[1]}",{{}}]')


async def test_packed_split_and_long_frames_are_relayed_in_order(start_proxy) -> None:
    received: list[str] = []
    async with SimulatedCsms(raw_handler=lambda c, cp: _echo(c, cp, received)) as csms:
        proxy = await start_proxy(csms.url, max_frame_bytes=100_000)
        reader, writer = await raw_charger(proxy_url(proxy))
        big = "x" * 70_000
        texts = [
            '[2,"1","Heartbeat",{}]',
            '[2,"2","Heartbeat",{}]',
            f'[2,"3","DataTransfer",{{"vendorId":"V","data":"{"é" * 100}"}}]',  # 16-bit length
            f'[2,"4","DataTransfer",{{"vendorId":"V","data":"{big}"}}]',  # 64-bit length
            '[2,"5","Heartbeat",{}]',
        ]
        wire = [frame(t.encode()) for t in texts]
        writer.write(wire[0] + wire[1] + frame(b"are you there", opcode=9)[:3])  # two frames + a ping's start
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(frame(b"are you there", opcode=9)[3:])  # (a new mask, but the same length)
        for b in wire[2]:  # byte by byte
            writer.write(bytes((b,)))
            await writer.drain()
        writer.write(wire[3] + wire[4])
        got = [await read_frame(reader) for _ in range(6)]
        pongs = [d for op, d in got if op == 10]
        replies = [json.loads(d)[1] for op, d in got if op == 1]
        assert len(pongs) == 1 and len(pongs[0]) == len(b"are you there")
        assert replies == ["1", "2", "3", "4", "5"]
        assert received == texts
        legs = proxy._sessions["CP001"]
        assert legs.charger._pending is not None and legs.upstream._pending is not None  # still byte-level
        writer.close()


async def test_fragmented_message_falls_back_and_later_frames_still_flow(start_proxy) -> None:
    received: list[str] = []
    async with SimulatedCsms(raw_handler=lambda c, cp: _echo(c, cp, received)) as csms:
        proxy = await start_proxy(csms.url)
        reader, writer = await raw_charger(proxy_url(proxy))
        writer.write(frame(b'[2,"1","Heart', fin=False) + frame(b'beat",{}]', opcode=0))
        writer.write(frame(b'[2,"2","Heartbeat",{}]'))
        replies = [json.loads((await read_frame(reader))[1])[1] for _ in range(2)]
        assert replies == ["1", "2"]
        assert received == ['[2,"1","Heartbeat",{}]', '[2,"2","Heartbeat",{}]']
        assert proxy.stats["CP001"].frames_up == 2
        assert proxy._sessions["CP001"].charger._pending is None  # websockets parses this leg now
        writer.close()


@pytest.mark.parametrize(("bad", "code"), [
    (frame(b'[2,"1","Heartbeat",{}]', mask=False), 1002),  # a client must mask (RFC 6455 §5.1)
    (frame(b'[2,"1","Heartbeat",{}]', rsv=0x40), 1002),  # no extension was negotiated
    (frame(b"\x00\x01", opcode=2), 1003),  # binary is not OCPP-J
])
async def test_protocol_errors_close_that_charger_with_websockets_codes(start_proxy, bad: bytes, code: int) -> None:
    async with SimulatedCsms(raw_handler=lambda c, cp: _echo(c, cp, [])) as csms:
        proxy = await start_proxy(csms.url)
        reader, writer = await raw_charger(proxy_url(proxy))
        writer.write(bad)
        op, data = await asyncio.wait_for(read_frame(reader), 5)
        assert op == 8 and struct.unpack("!H", data[:2])[0] == code
        assert proxy.stats["CP001"].frames_up == 0
        writer.close()


async def test_frames_in_the_same_segment_as_the_csms_101_are_relayed(start_proxy) -> None:
    """A raw CSMS writes its 101 response and two CALLs (one split) in one TCP write."""
    got_request = asyncio.Event()
    upstream_frames: list[bytes] = []

    async def csms(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        f2 = frame(b'[2,"c2","GetConfiguration",{}]', mask=False)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n"
                     + frame(b'[2,"c1","TriggerMessage",{"requestedMessage":"BootNotification"}]', mask=False)
                     + f2[:5])
        await writer.drain()
        got_request.set()
        await asyncio.sleep(0.05)
        writer.write(f2[5:])
        try:
            while True:
                op, data = await read_frame(reader)
                upstream_frames.append(data)
                if op == 8:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(csms, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        proxy = await start_proxy(f"ws://127.0.0.1:{port}/ocpp")
        reader, writer = await raw_charger(proxy_url(proxy))
        first = [json.loads((await read_frame(reader))[1])[1] for _ in range(2)]
        assert first == ["c1", "c2"]
        writer.write(frame(b'[3,"c1",{"status":"Accepted"}]'))
        await writer.drain()
        for _ in range(50):
            if upstream_frames:
                break
            await asyncio.sleep(0.02)
        assert upstream_frames[0] == b'[3,"c1",{"status":"Accepted"}]'  # unmasked by the test's reader
        writer.close()
    finally:
        server.close()


async def _raw_csms(frames_to_send: list[bytes], received: bytearray, sent: asyncio.Event):
    """A CSMS that accepts the handshake, records every byte after it and sends ``frames_to_send``
    (in one write) once the first bytes have arrived."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n")
        await writer.drain()
        while chunk := await reader.read(65536):
            received.extend(chunk)
            if not sent.is_set():
                writer.write(b"".join(frames_to_send))
                await writer.drain()
                sent.set()
        writer.close()

    return await asyncio.start_server(handler, "127.0.0.1", 0)


async def _until(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_text_frames_cross_the_proxy_as_the_very_same_bytes_both_ways(start_proxy) -> None:
    """A charger's frame is masked as any client frame must be and a CSMS frame is unmasked as any
    server frame must be, so the relay writes each frame on as it came: mask key, length encoding
    and all. Packed and 16-bit-length frames included."""
    down = [frame(b'[2,"c1","GetConfiguration",{}]', mask=False),
            frame(f'[2,"c2","DataTransfer",{{"vendorId":"V","data":"{"é" * 80}"}}]'.encode(), mask=False)]
    up = [frame(b'[2,"1","Heartbeat",{}]'), frame(b'[2,"2","Heartbeat",{}]'),
          frame(f'[2,"3","DataTransfer",{{"vendorId":"V","data":"{"ü" * 90}"}}]'.encode())]
    received, sent = bytearray(), asyncio.Event()
    server = await _raw_csms(down, received, sent)
    try:
        proxy = await start_proxy(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ocpp")
        reader, writer = await raw_charger(proxy_url(proxy))
        writer.write(b"".join(up))  # one write: the proxy reads them packed
        await writer.drain()
        await _until(lambda: len(received) >= sum(map(len, up)))
        assert bytes(received) == b"".join(up)
        got = await asyncio.wait_for(reader.readexactly(sum(map(len, down))), 5)
        assert got == b"".join(down)
        stats = proxy.stats["CP001"]
        assert (stats.frames_up, stats.frames_down) == (3, 2)
        writer.close()
    finally:
        server.close()


async def test_an_inspector_failure_costs_that_frame_its_bookkeeping_never_its_delivery(
        start_proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.value.inspect import FrameInspector

    def broken(self, direction, text, now_ns):
        raise RuntimeError("inspector bug")

    monkeypatch.setattr(FrameInspector, "account", broken)
    received: list[str] = []
    async with SimulatedCsms(raw_handler=lambda c, cp: _echo(c, cp, received)) as csms:
        proxy = await start_proxy(csms.url)
        reader, writer = await raw_charger(proxy_url(proxy))
        writer.write(frame(b'[2,"1","Heartbeat",{}]') + frame(b'[2,"2","Heartbeat",{}]'))
        replies = [json.loads((await asyncio.wait_for(read_frame(reader), 5))[1])[1] for _ in range(2)]
        assert replies == ["1", "2"] and received == ['[2,"1","Heartbeat",{}]', '[2,"2","Heartbeat",{}]']
        stats = proxy.stats["CP001"]
        assert stats.inspect_failures == 4 and stats.frames_up == 2 and stats.frames_down == 2
        assert stats.snapshot()["inspect_failures"] == 4
        assert proxy._sessions["CP001"].charger._pending is not None  # the link carries on, byte-level
        writer.close()
