"""HTTPS uplink of the health channel: the MQTT alternative for sites that only allow HTTPS out.

Messages are POSTed in batches as a JSON array ``[{"topic": ..., "payload": <the JSON payload>,
"t": "<RFC 3339 original time>"}]`` to ``url`` with mutual TLS (client certificate, server
certificate and host name verified against ``ca_file``). Any 2xx answer acknowledges the whole batch;
anything else (or no answer) means "not delivered": the batch is retried later (at-least-once).

Spool semantics are those of ``MqttUplink``: a live message goes into the in-memory send queue
unless the endpoint is unreachable or an older message of its topic is still in the ``Spool``; then
it is spooled. Spooled messages are sent oldest-first, at most ``replay_rate`` per second, in the same
POSTs as live ones (spooled entries first), so live data keeps flowing during a replay.

HTTP runs on stdlib ``http.client`` in a worker thread (``asyncio.to_thread``): no extra dependency.
``upload_snapshot`` PUTs a black-box archive to ``{snapshot_url}{file name}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import ssl
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.health.mqtt import tls_context
from appliance.health.payloads import iso_ts
from appliance.health.spool import Spool
from appliance.logfmt import get_logger

log = get_logger("health.https")


class HttpsUploadError(RuntimeError):
    """The endpoint did not accept an upload (carries the URL and the HTTP status or the error)."""


@dataclass(frozen=True)
class HttpsSettings:
    url: str  # batches are POSTed here
    ca_file: str
    cert_file: str
    key_file: str
    snapshot_url: str | None = None  # default: "{url}/snapshots/"
    batch_max: int = 200
    flush_interval_s: float = 1.0
    timeout_s: float = 10.0
    replay_rate: float = 50.0
    retry_min_s: float = 1.0
    retry_max_s: float = 30.0
    live_queue_max: int = 1000  # beyond this, live messages are spooled


class HttpsUplink:
    def __init__(self, settings: HttpsSettings, spool: Spool):
        self.s = settings
        self.spool = spool
        u = urllib.parse.urlsplit(settings.url)
        if u.scheme != "https" or not u.hostname:
            raise ValueError(f"health https url must be https://host[:port]/path, got {settings.url!r}")
        self._ctx: ssl.SSLContext = tls_context(settings.ca_file, settings.cert_file, settings.key_file)
        self._live: deque[tuple[str, bytes, int]] = deque()
        self._reachable = True
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._kick = asyncio.Event()
        self.counters = {"posted_batches": 0, "published": 0, "spooled": 0, "replayed": 0,
                         "failures": 0, "snapshots": 0}

    async def start(self) -> None:
        self._running = True
        self._task = asyncio.create_task(self._send_loop(), name="https-uplink")

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Try to send what is queued, then spool the rest: nothing in memory is lost at a clean stop."""
        deadline = time.monotonic() + drain_timeout_s
        while self._live and self._reachable and time.monotonic() < deadline:
            self._kick.set()
            await asyncio.sleep(0.05)
        self._running = False
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._live:
            topic, payload, t = self._live.popleft()
            self.spool.append(topic, payload, 1, False, t)
        self.spool.sync()

    @property
    def reachable(self) -> bool:
        return self._reachable

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                time_ns: int | None = None) -> str:
        """Queue one message (a JSON document); returns "queued" or "spooled". ``qos``/``retain`` are
        accepted for interface parity with ``MqttUplink`` and kept in the spool."""
        json.loads(payload)  # the batch embeds payloads as JSON values: refuse anything else now
        t = time.time_ns() if time_ns is None else time_ns
        if self._reachable and len(self._live) < self.s.live_queue_max and not self.spool.pending_for(topic):
            self._live.append((topic, bytes(payload), t))
            if len(self._live) >= self.s.batch_max:
                self._kick.set()
            return "queued"
        self.spool.append(topic, payload, qos, retain, t)
        self.counters["spooled"] += 1
        return "spooled"

    # ---- sending ----------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        rate = self.s.replay_rate
        tokens, last = 0.0, time.monotonic()
        delay = self.s.retry_min_s
        while self._running:
            try:
                async with asyncio.timeout(self.s.flush_interval_s if self._reachable else delay):
                    await self._kick.wait()
            except TimeoutError:
                pass
            self._kick.clear()
            now = time.monotonic()
            tokens = min(rate, tokens + (now - last) * rate)  # burst <= 1 s worth
            last = now
            self.spool.maybe_sync()
            n_replay = min(int(tokens), self.s.batch_max) if self._reachable else 1  # probe with 1
            replay = self.spool.next_batch(n_replay) if n_replay and len(self.spool) else []
            live = [self._live.popleft() for _ in range(min(len(self._live), self.s.batch_max - len(replay)))]
            if not replay and not live:
                continue
            body = [{"topic": m.topic, "payload": json.loads(m.payload), "t": iso_ts(m.time_ns)} for m in replay]
            body += [{"topic": tp, "payload": json.loads(p), "t": iso_ts(t)} for tp, p, t in live]
            try:
                status = await asyncio.to_thread(self._request, "POST", self.s.url,
                                                 json.dumps(body, separators=(",", ":")).encode(),
                                                 "application/json")
                ok = 200 <= status < 300
                err = f"http {status}"
            except (OSError, http.client.HTTPException) as e:
                ok, err = False, repr(e)
            if ok:
                if replay:
                    self.spool.ack(replay[-1].id)
                    tokens -= len(replay)
                    self.counters["replayed"] += len(replay)
                self.counters["published"] += len(live)
                self.counters["posted_batches"] += 1
                if not self._reachable:
                    log.info("https_reachable", url=self.s.url, spool_pending=len(self.spool))
                self._reachable, delay = True, self.s.retry_min_s
            else:
                self.counters["failures"] += 1
                if self._reachable:
                    log.warning("https_unreachable", url=self.s.url, error=err)
                self._reachable = False
                delay = min(delay * 2, self.s.retry_max_s)
                # Undelivered live messages go to the spool *in front of* newer live ones of their topic:
                # whatever is still in the live queue now follows them into the spool, in order.
                for tp, p, t in [*live, *self._live]:
                    self.spool.append(tp, p, 1, False, t)
                    self.counters["spooled"] += 1
                self._live.clear()

    def _request(self, method: str, url: str, body: bytes | Any, content_type: str,
                 length: int | None = None, headers: dict[str, str] | None = None) -> int:
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPSConnection(u.hostname or "", u.port or 443, context=self._ctx,
                                           timeout=self.s.timeout_s)
        try:
            path = u.path or "/"
            if u.query:
                path += "?" + u.query
            hdrs = {"Content-Type": content_type,
                    "Content-Length": str(length if length is not None else len(body))}
            conn.request(method, path, body=body, headers=hdrs | (headers or {}))
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    async def upload_snapshot(self, path: str | os.PathLike[str]) -> str:
        """PUT a black-box archive to ``{snapshot_url}{file name}`` (streamed from disk, with its
        SHA-256 in ``X-Omgw-Sha256``); returns the URL. Raises ``HttpsUploadError`` unless 2xx.
        Not spooled: the archive already sits on disk, the caller retries."""
        p = Path(path)
        base = self.s.snapshot_url or self.s.url.rstrip("/") + "/snapshots/"
        url = base + urllib.parse.quote(p.name)
        digest = await asyncio.to_thread(lambda: hashlib.sha256(p.read_bytes()).hexdigest())

        def put() -> int:
            with p.open("rb") as f:
                return self._request("PUT", url, f, "application/octet-stream", p.stat().st_size,
                                     {"X-Omgw-Sha256": digest})

        try:
            status = await asyncio.to_thread(put)
        except (OSError, http.client.HTTPException) as e:
            raise HttpsUploadError(f"PUT {url}: {e!r}") from e
        if not 200 <= status < 300:
            raise HttpsUploadError(f"PUT {url}: http {status}")
        self.counters["snapshots"] += 1
        log.info("snapshot_uploaded", url=url, bytes=p.stat().st_size)
        return url

    def stats(self) -> dict[str, Any]:
        sp = self.spool.stats()
        return {"reachable": self._reachable, **self.counters, "live_queued": len(self._live),
                "spool_pending": sp["pending"], "dropped": sp["dropped"]}
