"""The status socket both channels serve: a Unix stream socket answering one JSON document per
connection (``omgw status`` reads it). Unavailable (e.g. no /run/omgw) is logged, never fatal."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .logfmt import get_logger

log = get_logger("status")


class StatusSocket:
    def __init__(self, path: Path, status: Callable[[], dict[str, Any]]):
        self.path = path
        self._status = status
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.unlink(missing_ok=True)
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
            os.chmod(self.path, 0o660)
        except OSError as e:
            log.warning("status_socket_unavailable", path=str(self.path), error=e.strerror)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(self._status(), default=str).encode() + b"\n")
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.path.unlink(missing_ok=True)
