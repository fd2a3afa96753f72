"""``omgw demo``: simulated chargers -> value channel -> simulated CSMS, with the live traffic.

Everything runs on loopback with nothing to configure: a throw-away CA, a CSMS that requires
TLS + Basic auth (security profile 2), chargers that only speak plain ws:// (as many installed
chargers do), and the gateway upgrading the leg in between. The traffic shown is what the health
side receives over the tap: already redacted (idTags appear as ``hmac:...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..devpki import DevCA
from ..tap import TapReceiver, TapSender
from ..value.redact import Redactor
from ..value.server import ValueChannel
from .chargers import connect_charger
from .csms import SimulatedCsms

ARROWS = {"up": "CP  → CSMS", "down": "CSMS → CP "}
CHARGERS = [("CP001", "ocpp1.6"), ("CP002", "ocpp2.0.1"), ("CP003", "ocpp1.6"), ("CP004", "ocpp2.0.1")]


def _colour(text: str, code: str) -> str:
    return f"\033[{code}m{text}\033[0m" if sys.stdout.isatty() else text


def _show(rec: Any, width: int) -> None:
    ts = time.strftime("%H:%M:%S", time.localtime(rec.time_ns / 1e9)) + f".{rec.time_ns // 1_000_000 % 1000:03d}"
    if rec.event == "frame":
        arrow = ARROWS.get(rec.direction, rec.direction)
        body = rec.frame or ""
        line = f"{ts} {rec.cp_id:6} {arrow}  {body}"
        if len(line) > width:
            line = line[: width - 1] + "…"
        print(_colour(line, "36" if rec.direction == "up" else "33"), flush=True)
    else:
        extra = " ".join(f"{k}={v}" for k, v in rec.extra.items())
        print(_colour(f"{ts} {rec.cp_id:6} ** {rec.event} {extra}", "1;35"), flush=True)


async def _charger_life(url: str, cp_id: str, version: str, stop: asyncio.Event) -> None:
    """Boot, then sessions with pauses; reconnect after a drop as a real charger would."""
    while not stop.is_set():
        try:
            cp, ws, task = await connect_charger(url, cp_id, version)
        except OSError:
            await asyncio.sleep(2)
            continue
        try:
            await cp.boot()
            await cp.status("Available")
            while not stop.is_set():
                await asyncio.sleep(random.uniform(1.0, 3.0))
                await cp.heartbeat()
                tag = f"04{random.randrange(16**8):08X}"
                await cp.session(tag, wh_start=random.randrange(10_000), samples=2, interval_s=1.0)
        except Exception:  # noqa: BLE001 - a dropped demo charger just reconnects
            await asyncio.sleep(1)
        finally:
            task.cancel()
            await ws.close()


async def _demo(duration: float | None, chargers: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="omgw-demo-"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fleet = [(f"CP{i + 1:03d}", CHARGERS[i % len(CHARGERS)][1]) for i in range(chargers)]
    tasks: list[asyncio.Task[Any]] = []
    channel: ValueChannel | None = None
    receiver: TapReceiver | None = None
    try:
        ca = DevCA(work / "pki")
        leaf = ca.issue("csms", hosts=("localhost", "127.0.0.1"))
        import ssl

        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(leaf.cert, leaf.key)
        passwords = {cp_id: os.urandom(12).hex() for cp_id, _ in fleet}
        csms = SimulatedCsms(ssl_context=server_ctx, basic_auth=passwords, heartbeat_s=60)
        await csms.start()
        charge_points = []
        for cp_id, pw in passwords.items():
            pw_file = work / f"{cp_id}.pass"
            pw_file.write_text(pw)
            pw_file.chmod(0o600)
            charge_points.append({"id": cp_id, "password_file": str(pw_file)})
        cfg = config_mod.parse({
            "gateway": {"id": "gw-demo", "state_dir": str(work / "state")},
            "value": {
                "listen": "127.0.0.1:0", "csms_url": csms.url, "security_profile": 2,
                "ca_file": str(ca.cert_file), "validation": "log",
                "tap_socket": str(work / "tap.sock"), "status_socket": str(work / "value.sock"),
                "charge_points": charge_points,
            },
        })
        assert cfg.value is not None
        receiver = TapReceiver(str(cfg.value.tap_socket))
        receiver.start()
        # Cut lines to the terminal's width; piped output keeps whole frames.
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 1 << 20

        async def show_tap() -> None:
            assert receiver is not None
            async for dgram in receiver.datagrams():
                for rec in dgram.records:
                    _show(rec, width)

        tasks.append(asyncio.create_task(show_tap()))
        redactor = Redactor(os.urandom(32))
        tap = TapSender(str(cfg.value.tap_socket), cfg.gateway.id, max_queue=cfg.value.tap_queue,
                        redact=redactor.redact)
        tasks.append(asyncio.create_task(tap.run()))
        channel = ValueChannel(cfg, tap)
        await channel.start()
        print(_colour(f"omgw demo: {len(fleet)} chargers (ws://) -> gateway 127.0.0.1:{channel.port} -> "
                      f"CSMS {csms.url} (TLS, profile 2). Ctrl-C to stop.", "1"), flush=True)
        url = f"ws://127.0.0.1:{channel.port}/ocpp"
        tasks += [asyncio.create_task(_charger_life(url, cp_id, v, stop)) for cp_id, v in fleet]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        stop.set()
        status = channel.status()
        print(_colour("\nper charge point:", "1"))
        for cp in status["charge_points"]:
            print(f"  {cp['cp_id']} {cp['subprotocol']:10} frames up {cp['frames_up']:4} down {cp['frames_down']:4} "
                  f"invalid {cp['invalid_frames']} csms p50 {cp['csms_latency_ms']['p50']} ms")
        print(f"  tap: {json.dumps(status['tap'])}")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if channel is not None:
            await channel.stop()
        if receiver is not None:
            receiver.close()
        with contextlib.suppress(NameError):
            await csms.stop()
        shutil.rmtree(work, ignore_errors=True)


def run_demo(duration: float | None = None, chargers: int = 3) -> int:
    from .. import logfmt

    logfmt.setup("warning")
    asyncio.run(_demo(duration, chargers))
    return 0
