"""``omgw status``: exit codes and JSON shape against stand-in status sockets (one JSON per connection)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

OMGW = [sys.executable, "-m", "appliance.cli"]

VALUE_DOC = {"schema": 1, "channel": "value", "gateway_id": "GW1", "pid": 1, "uptime_s": 5.0, "connected": 0,
             "handshake_refusals": {}, "tap": {"dropped": 0}, "charge_points": []}


def health_doc(state: str = "up", reasons: list[str] | None = None) -> dict[str, Any]:
    return {"schema": 1, "channel": "health", "gateway_id": "GW1", "pid": 2, "uptime_s": 5.0, "state": state,
            "reasons": reasons or [], "uplink": {"transport": "mqtt", "connected": True, "down_for_s": None,
                                                 "spool_pending": 0, "dropped": 0},
            "sampler": {"ticks": 5, "late": 0, "skipped": 0}, "devices": {}, "blackbox": {},
            "tap": {"received": 0, "lost": 0, "malformed": 0}, "watchdog": None}


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "omgw.toml"
    cfg.write_text(f"""
[gateway]
id = "GW1"
state_dir = "{tmp_path / 'state'}"
[value]
csms_url = "ws://localhost:9/"
security_profile = 0
allow_insecure = true
allow_unknown_charge_points = true
status_socket = "{tmp_path / 'value.sock'}"
[health]
url = "mqtt://localhost:1883"
allow_insecure = true
status_socket = "{tmp_path / 'health.sock'}"
""")
    return cfg


async def serve_doc(path: Path, doc: dict[str, Any]) -> asyncio.AbstractServer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps(doc).encode() + b"\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(answer, path=str(path))


async def run_status(cfg: Path, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*OMGW, "status", "-c", str(cfg), *extra,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def with_servers(tmp_path: Path, docs: dict[str, dict[str, Any]], *extra: str) -> tuple[int, str]:
    servers = [await serve_doc(tmp_path / f"{name}.sock", doc) for name, doc in docs.items()]
    try:
        return await run_status(write_config(tmp_path), *extra)
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


async def test_status_exits_0_when_both_channels_are_up(tmp_path: Path) -> None:
    rc, out = await with_servers(tmp_path, {"value": VALUE_DOC, "health": health_doc()})
    assert rc == 0, out
    assert "GW1: healthy" in out and "value   up" in out and "health  up" in out


async def test_status_exits_1_when_the_value_channel_is_down(tmp_path: Path) -> None:
    rc, out = await with_servers(tmp_path, {"health": health_doc()})
    assert rc == 1
    assert "DEGRADED (value down)" in out and "no answer on" in out


async def test_status_exits_1_and_shows_the_reason_when_health_is_degraded(tmp_path: Path) -> None:
    doc = health_doc("degraded", ["uplink_down: not connected for 75 s"])
    rc, out = await with_servers(tmp_path, {"value": VALUE_DOC, "health": doc})
    assert rc == 1
    assert "DEGRADED (health degraded)" in out and "! uplink_down: not connected for 75 s" in out


async def test_status_json_has_both_channels_with_state_and_reasons(tmp_path: Path) -> None:
    doc = health_doc("degraded", ["blackbox_write_failing: 2 error(s)"])
    rc, out = await with_servers(tmp_path, {"value": VALUE_DOC, "health": doc}, "--json")
    assert rc == 1
    result = json.loads(out)
    assert result["gateway_id"] == "GW1" and result["state"] == "degraded" and result["healthy"] is False
    assert set(result["channels"]) == {"value", "health"}
    assert result["channels"]["value"]["state"] == "up" and result["channels"]["value"]["reasons"] == []
    assert result["channels"]["health"]["reasons"] == ["blackbox_write_failing: 2 error(s)"]


async def test_status_treats_a_socket_answering_as_the_wrong_channel_as_down(tmp_path: Path) -> None:
    rc, out = await with_servers(tmp_path, {"value": VALUE_DOC, "health": VALUE_DOC}, "--json")
    assert rc == 1 and json.loads(out)["channels"]["health"]["state"] == "down"
