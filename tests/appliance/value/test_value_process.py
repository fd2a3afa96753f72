"""``omgw value`` as its own process: SIGTERM, sd_notify, the status command, the tap end to end."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from appliance.demo.chargers import connect_charger
from appliance.demo.csms import SimulatedCsms, wait_for
from appliance.tap import TapReceiver

OMGW = [sys.executable, "-m", "appliance.cli"]


def write_config(tmp_path: Path, csms_url: str, port: int, **extra: str) -> Path:
    lines = [
        "[gateway]", 'id = "gw-proc"', f'state_dir = "{tmp_path / "state"}"',
        "[value]", f'listen = "127.0.0.1:{port}"', f'csms_url = "{csms_url}"', "security_profile = 0",
        "allow_insecure = true", f'tap_socket = "{tmp_path / "tap.sock"}"',
        f'status_socket = "{tmp_path / "value.sock"}"',
        *(f"{k} = {v}" for k, v in extra.items()),
        "[[value.charge_points]]", 'id = "CP001"', "[[value.charge_points]]", 'id = "CP002"',
    ]
    path = tmp_path / "omgw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class ValueProcess:
    def __init__(self, config: Path, env: dict[str, str] | None = None):
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.log = config.parent / "value.log"

    async def __aenter__(self) -> ValueProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *OMGW, "value", "-c", str(self.config), stdout=self.log.open("wb"), stderr=asyncio.subprocess.STDOUT,
            env=self.env)
        await wait_for(lambda: "value_listening" in self.log.read_text() or self.proc.returncode is not None, 15)
        assert self.proc.returncode is None, self.log.read_text()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def test_sigterm_closes_every_leg_with_1001_and_exits_0(csms: SimulatedCsms, tmp_path, unused_tcp_port) -> None:
    cfg = write_config(tmp_path, csms.url, unused_tcp_port)
    async with ValueProcess(cfg) as vp:
        url = f"ws://127.0.0.1:{unused_tcp_port}/ocpp"
        cp, ws, task = await connect_charger(url, "CP001")
        await cp.boot()
        vp.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 1001
        assert await asyncio.wait_for(vp.proc.wait(), 10) == 0
        upstream = csms.connection_for("CP001").connection
        await asyncio.wait_for(upstream.wait_closed(), 5)
        assert upstream.close_code == 1001
        task.cancel()
        with pytest.raises(OSError):  # no longer accepting
            async with connect(url + "/CP002"):
                pass
        log = vp.log.read_text()
        assert "event=value_stopping" in log and "event=value_stopped" in log


async def test_sd_notify_ready_watchdog_stopping(csms: SimulatedCsms, tmp_path, unused_tcp_port) -> None:
    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.setblocking(False)
    cfg = write_config(tmp_path, csms.url, unused_tcp_port)
    try:
        async with ValueProcess(cfg, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"}) as vp:
            await asyncio.sleep(0.5)
            vp.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(vp.proc.wait(), 10) == 0
        messages = []
        while True:
            try:
                messages.append(notify.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        notify.close()
    assert messages[0].startswith("READY=1")
    assert messages.count("WATCHDOG=1") >= 3  # every 100 ms over ~0.5 s
    assert "STOPPING=1" in messages


async def test_status_command_reads_the_value_channel(csms: SimulatedCsms, tmp_path, unused_tcp_port) -> None:
    cfg = write_config(tmp_path, csms.url, unused_tcp_port)
    async with ValueProcess(cfg):
        cp, ws, task = await connect_charger(f"ws://127.0.0.1:{unused_tcp_port}/ocpp", "CP001")
        await cp.boot()
        proc = await asyncio.create_subprocess_exec(*OMGW, "status", "-c", str(cfg), "--json",
                                                    stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        status = json.loads(out)
        value = status["channels"]["value"]
        assert value["state"] == "up" and value["connected"] == 1
        assert value["charge_points"][0]["frames_up"] == 1
        task.cancel()
        await ws.close()
    proc = await asyncio.create_subprocess_exec(*OMGW, "status", "-c", str(cfg), stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 1 and b"DEGRADED" in out  # the channel is down now


async def test_tap_records_reach_the_health_side_redacted(csms: SimulatedCsms, tmp_path, unused_tcp_port) -> None:
    cfg = write_config(tmp_path, csms.url, unused_tcp_port, tap_stats_interval_s="0.2")
    receiver = TapReceiver(str(tmp_path / "tap.sock"))
    receiver.start()
    records = []

    async def read() -> None:
        async for dgram in receiver.datagrams():
            records.extend(dgram.records)

    reader = asyncio.create_task(read())
    try:
        async with ValueProcess(cfg):
            cp, ws, task = await connect_charger(f"ws://127.0.0.1:{unused_tcp_port}/ocpp", "CP001")
            await cp.boot()
            await cp.session("SECRET-TAG-0042", samples=1)
            await wait_for(lambda: sum(r.event == "frame" for r in records) >= 18, 5)  # 9 CALLs and their results
            await wait_for(lambda: any(r.event == "stats" and r.extra["frames_up"] == 9 for r in records), 5)
            task.cancel()
            await ws.close()
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        receiver.close()
    frames = [r for r in records if r.event == "frame"]
    assert {r.cp_id for r in frames} == {"CP001"}
    assert {r.direction for r in frames} == {"up", "down"}
    assert any(r.event == "connect" for r in records)
    text = json.dumps([r.frame for r in frames])
    assert "SECRET-TAG-0042" not in text
    authorize = next(json.loads(r.frame) for r in frames if '"Authorize"' in (r.frame or ""))
    assert authorize[3]["idTag"].startswith("hmac:")
    assert receiver.lost == 0
    stats = [r for r in records if r.event == "stats" and r.extra["frames_up"] == 9][-1]
    assert stats.cp_id == "CP001" and stats.extra["connected"] and stats.extra["frames_down"] == 9
    assert stats.extra["csms_latency_ms"]["n"] == 9


async def test_tap_socket_absent_changes_nothing(csms: SimulatedCsms, tmp_path, unused_tcp_port) -> None:
    cfg = write_config(tmp_path, csms.url, unused_tcp_port)
    async with ValueProcess(cfg) as vp:
        cp, ws, task = await connect_charger(f"ws://127.0.0.1:{unused_tcp_port}/ocpp", "CP001")
        await cp.boot()
        await cp.session("TAG", samples=2)
        from appliance.cli import read_status_socket

        status = await asyncio.to_thread(read_status_socket, tmp_path / "value.sock")
        assert status["charge_points"][0]["frames_up"] == 10  # Boot + 9 CALLs of the session
        # The tap batches for a few ms before it finds nobody listening: drops show up shortly after.
        for _ in range(100):
            if status["tap"]["queued"] == 0 and status["tap"]["dropped_socket"] > 0:
                break
            await asyncio.sleep(0.05)
            status = await asyncio.to_thread(read_status_socket, tmp_path / "value.sock")
        assert status["tap"]["dropped_socket"] == 21  # every record counted (20 frames + connect), none sent
        assert status["tap"]["sent_records"] == 0
        task.cancel()
        await ws.close()
        assert "Traceback" not in vp.log.read_text()
