"""The value channel end to end: ocpp-library chargers -> omgw -> ocpp-library CSMS, real sockets."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from appliance.demo.chargers import connect_charger
from appliance.demo.csms import SimulatedCsms, wait_for
from peers import proxy_url


async def _close(*tasks_and_ws: object) -> None:
    for x in tasks_and_ws:
        if isinstance(x, asyncio.Task):
            x.cancel()
            await asyncio.gather(x, return_exceptions=True)
        else:
            await x.close()  # type: ignore[attr-defined]


async def test_ocpp16_session_passes_through(csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url)
    cp, ws, task = await connect_charger(proxy_url(proxy), "CP001", "ocpp1.6")
    assert ws.subprotocol == "ocpp1.6"
    boot = await cp.boot()
    assert boot.status == "Accepted"
    await cp.heartbeat()
    await cp.status("Available")
    wh = await cp.session("04A1B2C3D4", wh_start=1000, samples=2)
    assert wh > 1000
    assert csms.actions("CP001") == [
        "connected", "BootNotification", "Heartbeat", "StatusNotification", "Authorize", "StatusNotification",
        "StartTransaction", "StatusNotification", "MeterValues", "MeterValues", "StopTransaction",
        "StatusNotification", "StatusNotification",
    ]
    assert csms.connection_for("CP001").subprotocol == "ocpp1.6"
    stats = proxy.stats["CP001"]
    assert stats.frames_up == 12 and stats.frames_down == 12
    assert stats.invalid_frames == 0
    assert len(stats.csms_latency) == 12
    await _close(task, ws)
    await wait_for(lambda: "disconnected" in csms.actions("CP001"))


async def test_ocpp201_session_passes_through(csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url, validation="enforce")
    cp, ws, task = await connect_charger(proxy_url(proxy), "CP002", "ocpp2.0.1")
    assert ws.subprotocol == "ocpp2.0.1"
    assert (await cp.boot()).status == "Accepted"
    await cp.heartbeat()
    await cp.status("Available")
    await cp.session("RFID-0001", samples=2)
    actions = csms.actions("CP002")
    assert actions.count("TransactionEvent") == 4
    assert "Authorize" in actions and "MeterValues" not in actions
    ev = [f for c, a, f in csms.events if a == "TransactionEvent"]
    assert [e["event_type"] for e in ev] == ["Started", "Updated", "Updated", "Ended"]
    assert proxy.stats["CP002"].invalid_frames == 0
    await _close(task, ws)


async def test_subprotocol_is_the_one_the_csms_selected(start_proxy) -> None:
    async with SimulatedCsms(subprotocols=["ocpp1.6"]) as csms:
        proxy = await start_proxy(csms.url)
        async with connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp2.0.1", "ocpp1.6"]) as ws:
            assert ws.subprotocol == "ocpp1.6"
        seen = csms.connection_for("CP001")
        # The upstream leg offered exactly what the charger offered, in its order.
        assert seen.headers["Sec-WebSocket-Protocol"] == "ocpp2.0.1, ocpp1.6"


async def test_both_url_forms_are_accepted(csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url)
    async with connect(f"ws://127.0.0.1:{proxy.port}/CP003", subprotocols=["ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp1.6"
    assert csms.connection_for("CP003") is not None


async def _echo_raw(connection, cp_id, received: list[str]) -> None:
    """CSMS side that records raw text and answers each CALL with a hand-formatted CALLRESULT."""
    async for msg in connection:
        received.append(msg)
        uid = json.loads(msg)[1]
        await connection.send(f'[3 ,  "{uid}",{{ "currentTime" :"2026-11-25T00:00:00Z" , "ünï" : "çødé ⚡"}} ]')


async def test_frames_are_forwarded_byte_for_byte(start_proxy) -> None:
    received: list[str] = []
    async with SimulatedCsms(raw_handler=lambda c, cp: _echo_raw(c, cp, received)) as csms:
        proxy = await start_proxy(csms.url)
        frames = [
            '[2,"1","Heartbeat",{}]',
            '[ 2 , "2" , "Heartbeat" , { } ]',
            '[2,\n\t"3",\r\n"DataTransfer",{"vendorId":"ACME","data":"z\\u00e9\\ud83d\\ude00 ⚡ 日本","messageId":"x"}]',
            '[2,"4","BootNotification",{"chargePointVendor":"V","chargePointModel":"M","b":1.50,"a":1e3}]',
        ]
        async with connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"]) as ws:
            replies = []
            for f in frames:
                await ws.send(f)
                replies.append(await ws.recv())
        assert received == frames
        for r, f in zip(replies, frames):
            uid = json.loads(f)[1]
            assert r == f'[3 ,  "{uid}",{{ "currentTime" :"2026-11-25T00:00:00Z" , "ünï" : "çødé ⚡"}} ]'


async def test_1000_pipelined_frames_keep_order(start_proxy) -> None:
    received: list[str] = []
    async with SimulatedCsms(raw_handler=lambda c, cp: _echo_raw(c, cp, received)) as csms:
        proxy = await start_proxy(csms.url)
        async with connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"]) as ws:
            sent = [f'[2,"{i}","Heartbeat",{{}}]' for i in range(1000)]
            for f in sent:  # pipelined: no waiting for answers
                await ws.send(f)
            replies = [json.loads(await ws.recv())[1] for _ in range(1000)]
        assert received == sent
        assert replies == [str(i) for i in range(1000)]
        stats = proxy.stats["CP001"]
        assert stats.frames_up == 1000 and stats.frames_down == 1000


async def test_unknown_charge_point_gets_404(csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url)
    with pytest.raises(InvalidStatus) as e:
        await connect(proxy_url(proxy) + "/NOPE", subprotocols=["ocpp1.6"])
    assert e.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as e:
        await connect(proxy_url(proxy) + "/a/b/c", subprotocols=["ocpp1.6"])
    assert e.value.response.status_code == 404
    assert csms.connections == []  # nothing was opened upstream


async def test_unknown_charge_point_allowed_when_configured(csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url, allow_unknown_charge_points=True)
    async with connect(proxy_url(proxy) + "/NEW-CP", subprotocols=["ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp1.6"
    assert csms.connection_for("NEW-CP") is not None


async def test_charger_basic_auth_checked_against_salted_hash(csms: SimulatedCsms, start_proxy) -> None:
    from appliance.passwords import hash_password

    proxy = await start_proxy(csms.url, charge_points=[
        {"id": "CP001", "charger_password_hash": hash_password("s3cret-charger")}])
    base = f"127.0.0.1:{proxy.port}/ocpp/CP001"
    for bad in (f"ws://{base}", f"ws://CP001:wrong@{base}", f"ws://CP999:s3cret-charger@{base}"):
        with pytest.raises(InvalidStatus) as e:
            await connect(bad, subprotocols=["ocpp1.6"])
        assert e.value.response.status_code == 401
        assert "Basic" in e.value.response.headers["WWW-Authenticate"]
    async with connect(f"ws://CP001:s3cret-charger@{base}", subprotocols=["ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp1.6"
    assert len(csms.connections) == 1  # only the authenticated charger reached the CSMS
    assert "Authorization" not in csms.connections[0].headers  # profile 0: no credentials upstream


async def test_csms_unreachable_gives_503(start_proxy, unused_tcp_port: int) -> None:
    proxy = await start_proxy(f"ws://127.0.0.1:{unused_tcp_port}/ocpp")
    with pytest.raises(InvalidStatus) as e:
        await connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"])
    assert e.value.response.status_code == 503
    assert proxy.stats["CP001"].upstream_failures == 1


async def test_csms_refusing_gives_502(start_proxy) -> None:
    async with SimulatedCsms(basic_auth={"CP001": "other"}) as csms:
        proxy = await start_proxy(csms.url)
        with pytest.raises(InvalidStatus) as e:
            await connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"])
        assert e.value.response.status_code == 502
        assert csms.refused == [("CP001", 401)]


async def test_binary_frame_closes_that_charger_only_with_1003(csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url)
    good, good_ws, good_task = await connect_charger(proxy_url(proxy), "CP002")
    async with connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"]) as bad:
        await bad.send(b"\x00\x01binary")
        with pytest.raises(ConnectionClosed):
            await bad.recv()
        assert bad.close_code == 1003
    await wait_for(lambda: csms.actions("CP001")[-1:] == ["disconnected"])
    assert (await good.heartbeat()).current_time
    await _close(good_task, good_ws)


async def test_oversize_frame_closes_that_charger_only_with_1009(csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url, max_frame_bytes=4096)
    good, good_ws, good_task = await connect_charger(proxy_url(proxy), "CP002")
    async with connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"]) as bad:
        await bad.send('[2,"1","DataTransfer",{"vendorId":"X","data":"' + "A" * 5000 + '"}]')
        with pytest.raises(ConnectionClosed):
            await bad.recv()
        assert bad.close_code == 1009
    assert (await good.heartbeat()).current_time
    assert proxy.stats["CP001"].frames_up == 0  # never forwarded
    await _close(good_task, good_ws)


MALFORMED = ['[2,"7","Heartbeat"', '[2,"8","BootNotification",{"chargePointVendor":"V"}]', '{"not":"an array"}']


@pytest.mark.parametrize("mode", ["off", "log", "enforce"])
async def test_malformed_frames_under_each_validation_mode(start_proxy, mode: str) -> None:
    received: list[str] = []

    async def record(connection, cp_id):
        async for msg in connection:
            received.append(msg)

    async with SimulatedCsms(raw_handler=record) as csms:
        proxy = await start_proxy(csms.url, validation=mode)
        async with connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"]) as ws:
            for f in MALFORMED:
                await ws.send(f)
            await ws.send('[2,"9","Heartbeat",{}]')
            if mode == "enforce":
                replies = [json.loads(await ws.recv()) for _ in MALFORMED]
            await wait_for(lambda: '[2,"9","Heartbeat",{}]' in received)
    stats = proxy.stats["CP001"]
    if mode == "enforce":
        # Invalid CALLs are answered by the spec's CALLERROR and never reach the CSMS.
        assert received == ['[2,"9","Heartbeat",{}]']
        assert [r[0] for r in replies] == [4, 4, 4]
        assert replies[0][1] == "-1" and replies[0][2] == "FormationViolation"
        assert replies[1][1] == "8" and replies[1][2] in ("OccurenceConstraintViolation", "ProtocolError")
        assert stats.rejected_calls == 3
    else:
        assert received == MALFORMED + ['[2,"9","Heartbeat",{}]']
        assert stats.rejected_calls == 0
    if mode == "log":
        assert stats.invalid_frames == 3
    if mode == "off":
        assert stats.invalid_frames <= 2  # framing is still parsed for latency tracking; schemas are not checked


async def test_upstream_loss_closes_charger_with_1012_and_charger_reconnects(csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url)
    cp, ws, task = await connect_charger(proxy_url(proxy), "CP001")
    await cp.boot()
    await csms.connection_for("CP001").connection.close(1001, "CSMS going down")
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1012
    await _close(task)
    cp, ws, task = await connect_charger(proxy_url(proxy), "CP001")  # the charger's own retry
    await cp.boot()
    stats = proxy.stats["CP001"]
    assert stats.connects == 2 and stats.reconnects == 1 and stats.connected
    await _close(task, ws)


async def test_charger_loss_closes_upstream_leg(csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url)
    cp, ws, task = await connect_charger(proxy_url(proxy), "CP001")
    await cp.boot()
    ws.transport.abort()  # the charger vanishes (no closing handshake)
    await wait_for(lambda: csms.actions("CP001")[-1] == "disconnected")
    await wait_for(lambda: not proxy.stats["CP001"].connected)
    await _close(task)


async def test_dead_upstream_detected_within_two_ping_intervals(start_proxy) -> None:
    release = asyncio.Event()

    async def go_silent(connection, cp_id):
        connection.transport.pause_reading()  # no more pongs: a hung CSMS or a dead NAT path
        await release.wait()
        connection.transport.abort()

    async with SimulatedCsms(raw_handler=go_silent) as csms:
        proxy = await start_proxy(csms.url, ping_interval_s=0.5)
        loop = asyncio.get_running_loop()
        async with connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"], ping_interval=None) as ws:
            t0 = loop.time()
            await asyncio.wait_for(ws.wait_closed(), 5)
            elapsed = loop.time() - t0
        release.set()
        assert ws.close_code in (1011, 1012)
        assert elapsed <= 2 * 0.5 + 0.5  # 2 x ping interval, plus scheduling slack


async def test_second_connection_for_same_cp_id_replaces_the_first(csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url)
    cp1, ws1, t1 = await connect_charger(proxy_url(proxy), "CP001")
    await cp1.boot()
    cp2, ws2, t2 = await connect_charger(proxy_url(proxy), "CP001")
    await asyncio.wait_for(ws1.wait_closed(), 5)
    assert ws1.close_code == 1000
    assert (await cp2.boot()).status == "Accepted"
    ups = [c for c in csms.connections if c.cp_id == "CP001"]
    assert len(ups) == 2
    assert ups[0].connection.close_code == 1000  # the first upstream leg was closed before the second opened
    assert proxy.stats["CP001"].connected
    await _close(t1, t2, ws2)


async def test_slow_csms_pushes_back_on_the_charger(start_proxy) -> None:
    stalled, release = asyncio.Event(), asyncio.Event()

    async def stall(connection, cp_id):
        connection.transport.pause_reading()
        stalled.set()
        await release.wait()
        connection.transport.abort()

    async with SimulatedCsms(raw_handler=stall) as csms:
        proxy = await start_proxy(csms.url, ping_interval_s=60)
        async with connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"], ping_interval=None,
                           write_limit=2**14) as ws:
            await stalled.wait()
            frame = '[2,"x","DataTransfer",{"vendorId":"X","data":"' + "D" * 16000 + '"}]'
            sent = 0
            with pytest.raises(TimeoutError):
                for _ in range(5000):  # 80 MB if nothing pushed back
                    await asyncio.wait_for(ws.send(frame), 2)
                    sent += 1
            # The charger got blocked long before 80 MB: kernel buffers plus bounded queues only.
            assert sent < 1000
            assert proxy.stats["CP001"].frames_up < sent
            ws.transport.abort()
            release.set()


async def test_status_snapshot_counts_frames_and_latency(csms: SimulatedCsms, start_proxy) -> None:
    from appliance.cli import read_status_socket

    proxy = await start_proxy(csms.url)
    cp, ws, task = await connect_charger(proxy_url(proxy), "CP001")
    await cp.boot()
    await cp.heartbeat()
    status = await asyncio.to_thread(read_status_socket, proxy.cfg.status_socket)
    assert status["channel"] == "value" and status["connected"] == 1
    (snap,) = status["charge_points"]
    assert snap["cp_id"] == "CP001" and snap["frames_up"] == 2 and snap["frames_down"] == 2
    assert snap["csms_latency_ms"]["n"] == 2 and snap["csms_latency_ms"]["p50"] > 0
    await _close(task, ws)


async def test_invalid_utf8_text_frame_closes_that_charger_with_1007(csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url)
    async with connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"]) as bad:
        await bad.send(b'[2,"1","Heartbeat",{"x":"\xff\xfe"}]', text=True)
        with pytest.raises(ConnectionClosed):
            await bad.recv()
        assert bad.close_code == 1007
    assert proxy.stats["CP001"].frames_up == 0


async def test_csms_call_sent_right_after_the_handshake_is_delivered_first(start_proxy) -> None:
    """Frames that arrive before the relay is installed (CSMS talks first) are not lost or reordered."""
    async def talk_first(connection, cp_id):
        await connection.send('[2,"csms-1","TriggerMessage",{"requestedMessage":"BootNotification"}]')
        await connection.send('[2,"csms-2","GetConfiguration",{}]')
        async for _ in connection:
            pass

    async with SimulatedCsms(raw_handler=talk_first) as csms:
        proxy = await start_proxy(csms.url)
        async with connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"]) as ws:
            assert json.loads(await ws.recv())[1] == "csms-1"
            assert json.loads(await ws.recv())[1] == "csms-2"
        assert proxy.stats["CP001"].frames_down == 2
