"""A local Prometheus endpoint per channel process, built from the channel's ``status()`` document.

Nothing is instrumented: a scrape calls ``status()`` (the same document the status socket serves),
and :class:`StatusCollector` turns the counters the channel keeps anyway into metric families. The
value channel's forwarding path is therefore untouched; a scrape costs one ``status()`` call on the
event loop. The HTTP side is a minimal asyncio server (``GET /metrics`` only, one request per
connection) on the loop itself, so ``status()`` never runs on another thread while the loop mutates
the counters it reads.

Loopback only by default (``127.0.0.1:9101`` value, ``127.0.0.1:9102`` health); a non-loopback
address is refused by config validation unless ``metrics_allow_remote = true`` (the endpoint has no
authentication and no TLS: put it behind the node's own scraper or an SSH tunnel instead).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from . import __version__
from .logfmt import get_logger

log = get_logger("metrics")

StatusFn = Callable[[], dict[str, Any]]


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9101"`` / ``"[::1]:9101"`` -> (host, port); ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f'expected "HOST:PORT", got "{text}"')
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_problem(text: str, allow_remote: bool) -> str | None:
    """Config validation for ``metrics_listen``: None when acceptable, else the reason."""
    try:
        host, _ = parse_listen(text)
    except ValueError as e:
        return str(e)
    if not allow_remote and not is_loopback(host):
        return (f'"{host}" is not a loopback address; the metrics endpoint has no authentication '
                f"(set metrics_allow_remote = true to expose it anyway)")
    return None


# ---- collector ------------------------------------------------------------------------------------


class StatusCollector:
    """A prometheus_client custom collector over one channel's ``status()``."""

    def __init__(self, status: StatusFn):
        self._status = status

    def collect(self) -> Iterator[Metric]:
        st = self._status()
        channel = str(st.get("channel", "unknown"))
        info = GaugeMetricFamily("omgw_info", "Constant 1; labels identify the gateway and build",
                                 labels=["channel", "gateway_id", "version"])
        info.add_metric([channel, str(st.get("gateway_id", "")), __version__], 1)
        yield info
        yield GaugeMetricFamily("omgw_uptime_seconds", "Seconds since the channel process started",
                                value=float(st.get("uptime_s", 0)))
        if channel == "value":
            yield from _value_metrics(st)
        elif channel == "health":
            yield from _health_metrics(st)


def _value_metrics(st: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily("omgw_value_chargers_connected", "Chargers with an established link",
                            value=float(st.get("connected", 0)))
    cps = st.get("charge_points", [])
    connected = GaugeMetricFamily("omgw_value_charge_point_connected", "1 while the charger's link is up",
                                  labels=["cp_id"])
    frames = CounterMetricFamily("omgw_value_frames", "OCPP frames forwarded", labels=["cp_id", "direction"])
    bytes_ = CounterMetricFamily("omgw_value_bytes", "OCPP payload bytes forwarded", labels=["cp_id", "direction"])
    simple = {k: CounterMetricFamily(f"omgw_value_{k}", doc, labels=["cp_id"]) for k, doc in (
        ("connects", "Charger links established"),
        ("reconnects", "Charger links established after the first"),
        ("invalid_frames", "Frames that failed OCPP-J validation"),
        ("rejected_calls", "CALLs rejected in enforce mode"),
        ("upstream_failures", "Failed attempts to open the CSMS leg"),
        ("inspect_failures", "Frames forwarded whose inspection raised (logged as inspect_failed)"),
    )}
    latency = GaugeMetricFamily("omgw_value_csms_latency_ms", "CSMS response latency over the recent window",
                                labels=["cp_id", "quantile"])
    for cp in cps:
        cp_id = str(cp["cp_id"])
        connected.add_metric([cp_id], 1 if cp.get("connected") else 0)
        frames.add_metric([cp_id, "up"], cp.get("frames_up", 0))
        frames.add_metric([cp_id, "down"], cp.get("frames_down", 0))
        bytes_.add_metric([cp_id, "up"], cp.get("bytes_up", 0))
        bytes_.add_metric([cp_id, "down"], cp.get("bytes_down", 0))
        for k, fam in simple.items():
            fam.add_metric([cp_id], cp.get(k, 0))
        for q in ("p50", "p95", "p99"):
            v = cp.get("csms_latency_ms", {}).get(q)
            if v is not None:
                latency.add_metric([cp_id, q], v)
    yield from (connected, frames, bytes_, *simple.values(), latency)
    refusals = CounterMetricFamily("omgw_value_handshake_refusals", "Charger handshakes refused, by HTTP status",
                                   labels=["status"])
    for code, n in st.get("handshake_refusals", {}).items():
        refusals.add_metric([str(code)], n)
    yield refusals
    tap = st.get("tap", {})
    if tap:
        yield CounterMetricFamily("omgw_value_tap_sent_records", "Tap records sent to the health channel",
                                  value=tap.get("sent_records", 0))
        dropped = CounterMetricFamily("omgw_value_tap_dropped_records", "Tap records dropped, by cause",
                                      labels=["cause"])
        for cause in ("queue", "socket", "encode"):
            dropped.add_metric([cause], tap.get(f"dropped_{cause}", 0))
        yield dropped
        yield GaugeMetricFamily("omgw_value_tap_queued_records", "Tap records waiting in the queue",
                                value=tap.get("queued", 0))


def _health_metrics(st: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily("omgw_health_degraded", "1 when the health channel's state is degraded",
                            value=0 if st.get("state") == "up" else 1)
    reasons = GaugeMetricFamily("omgw_health_degraded_reason", "1 per active degradation reason", labels=["code"])
    for r in st.get("reasons", []):
        reasons.add_metric([r.split(":", 1)[0]], 1)
    yield reasons
    up = st.get("uplink", {})
    yield GaugeMetricFamily("omgw_health_uplink_connected", "1 while the MQTT/HTTPS uplink is connected",
                            value=1 if up.get("connected") else 0)
    for key, doc in (("published", "Messages delivered to the uplink"), ("spooled", "Messages spooled"),
                     ("dropped", "Spooled messages dropped (spool full)")):
        yield CounterMetricFamily(f"omgw_health_uplink_{key}_messages", doc, value=up.get(key, 0))
    yield GaugeMetricFamily("omgw_health_uplink_spool_pending_messages", "Messages waiting in the spool",
                            value=up.get("spool_pending", 0))
    smp = st.get("sampler", {})
    for name, key, doc in (("ticks", "ticks", "Sampler ticks"), ("late_ticks", "late", "Ticks that started late"),
                           ("skipped_ticks", "skipped", "Ticks skipped (the previous cycle overran)")):
        yield CounterMetricFamily(f"omgw_health_sampler_{name}", doc, value=smp.get(key, 0))
    jitter = GaugeMetricFamily("omgw_health_sampler_jitter_ms", "Tick lateness over the recent window",
                               labels=["quantile"])
    for q, v in (smp.get("jitter_ms") or {}).items():
        if q != "n" and v is not None:
            jitter.add_metric([q], v)
    yield jitter
    dev_ok = GaugeMetricFamily("omgw_health_device_ok", "1 when the last reading of a meter/sensor was fully ok",
                               labels=["device", "kind", "quality"])
    dev_missing = GaugeMetricFamily("omgw_health_device_missing_cycles",
                                    "Consecutive sampler cycles without a usable reading", labels=["device"])
    for name, d in sorted(st.get("devices", {}).items()):
        dev_ok.add_metric([name, d.get("kind", ""), d.get("quality", "")], 1 if d.get("quality") == "ok" else 0)
        dev_missing.add_metric([name], d.get("missing_cycles", 0))
    yield dev_ok
    yield dev_missing
    bb = st.get("blackbox", {})
    yield GaugeMetricFamily("omgw_health_blackbox_write_failing", "1 while black-box writes fail",
                            value=1 if bb.get("write_failing") else 0)
    yield CounterMetricFamily("omgw_health_blackbox_errors", "Black-box I/O errors", value=bb.get("errors", 0))
    yield CounterMetricFamily("omgw_health_blackbox_records", "Records appended to the black box",
                              value=bb.get("records", 0))
    tap = st.get("tap", {})
    for key, doc in (("received", "Valid tap datagrams received"),
                     ("lost", "Tap datagrams missing from the sender's sequence"),
                     ("malformed", "Malformed tap datagrams")):
        yield CounterMetricFamily(f"omgw_health_tap_{key}_datagrams", doc, value=tap.get(key, 0))
    wd = st.get("watchdog")
    if wd:
        state = GaugeMetricFamily("omgw_health_watchdog_state", "1 for the relay watchdog's current state",
                                  labels=["cp_id", "state"])
        state.add_metric([str(wd.get("cp_id")), str(wd.get("state"))], 1)
        yield state
        cycles = CounterMetricFamily("omgw_health_relay_cycles", "Lifetime relay power cycles", labels=["cp_id"])
        cycles.add_metric([str(wd.get("cp_id"))], wd.get("relay_cycles", 0))
        yield cycles


def render(status: StatusFn) -> bytes:
    """The Prometheus text exposition of ``status()`` (one collection, no global registry)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))  # type: ignore[arg-type]
    return generate_latest(registry)


# ---- HTTP -----------------------------------------------------------------------------------------


class MetricsServer:
    """``GET /metrics`` on one TCP address; everything else is 404/405. One request per connection."""

    def __init__(self, listen: str, status: StatusFn, *, channel: str = ""):
        self.host, self._port = parse_listen(listen)
        self.status = status
        self.channel = channel
        self._server: asyncio.AbstractServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._port, limit=8192)
        log.info("metrics_listening", channel=self.channel, address=f"{self.host}:{self.port}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path not in ("/metrics", "/"):
                status, ctype, body = "404 Not Found", "text/plain", b"try /metrics\n"
            else:
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, render(self.status)
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, UnicodeError):
            pass  # a scraper that went away or sent garbage: nothing to answer
        finally:
            writer.close()


async def start_metrics(listen: str | None, status: StatusFn, *, channel: str) -> MetricsServer | None:
    """Start the endpoint if configured; a taken port is logged, never fatal to the channel."""
    if not listen:
        return None
    server = MetricsServer(listen, status, channel=channel)
    try:
        await server.start()
    except OSError as e:
        log.warning("metrics_unavailable", channel=channel, address=listen, error=e.strerror or str(e))
        return None
    return server


__all__ = ["MetricsServer", "StatusCollector", "is_loopback", "listen_problem", "parse_listen", "render",
           "start_metrics"]
