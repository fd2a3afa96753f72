"""``omgw value``: run the value channel until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import secrets
import signal
from pathlib import Path

from ..config import Config
from ..logfmt import get_logger
from ..metrics import start_metrics
from ..tap import TapSender
from .redact import Redactor
from .server import ValueChannel

log = get_logger("value")


def raise_fd_limit() -> int:
    """Two sockets per charger: lift the soft RLIMIT_NOFILE to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def load_tap_key(path: Path) -> bytes:
    """The per-gateway secret that keys idTag pseudonyms; created (0600) on first start."""
    try:
        key = path.read_bytes()
        if len(key) >= 16:
            return key
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("tap_key_unreadable", path=str(path), error=e.strerror)
        return secrets.token_bytes(32)
    key = secrets.token_bytes(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        log.info("tap_key_created", path=str(path))
    except OSError as e:
        # Still redacted, but pseudonyms will not be stable across restarts.
        log.warning("tap_key_ephemeral", path=str(path), error=e.strerror)
    return key


async def serve_value(config: Config, stop: asyncio.Event | None = None) -> None:
    assert config.value is not None
    cfg = config.value
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    nofile = raise_fd_limit()
    redactor = Redactor(load_tap_key(cfg.tap_secret_path(config.gateway.state_dir)))
    tap = TapSender(str(cfg.tap_socket), config.gateway.id, max_queue=cfg.tap_queue, redact=redactor.redact)
    tap_task = asyncio.create_task(tap.run())
    channel = ValueChannel(config, tap)
    await channel.start()
    # Scrape-time only: the collector reads channel.status(); nothing on the forwarding path changes.
    metrics = await start_metrics(cfg.metrics_listen, channel.status, channel="value")
    # Everything loaded so far (modules, schemas, config) lives as long as the process: keep it out
    # of the collector's full passes, which would otherwise walk all of it each time.
    gc.freeze()
    log.info("value_started", gateway=config.gateway.id, nofile=nofile)
    try:
        await stop.wait()
    finally:
        log.info("value_stopping")
        if metrics is not None:
            await metrics.close()
        await channel.stop()
        tap_task.cancel()
        await asyncio.gather(tap_task, return_exceptions=True)
