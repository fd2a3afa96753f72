"""MQTT 5 uplink of the health channel: TLS with client certificates, QoS 1, store-and-forward.

Guarantees and decisions (docs/mqtt.md has the operator's view):

- **Payload bytes are the caller's.** The uplink never edits a payload: ``seq`` and ``ts`` are stamped
  by the caller (``payloads.SeqCounters``), so a replayed message is byte-identical to the original.
  The one payload the uplink builds itself is ``status`` (birth "online", last will "offline").
- **Publish path** (``publish``): connected, the in-flight window has room and no older message for
  the same topic waits in the spool -> handed to paho now; otherwise -> appended to the ``Spool``.
  Order is preserved *per topic*: a live message never overtakes a spooled one of its topic, while
  topics without a backlog (status, events, charge-point state) keep flowing during a replay.
- **Replay** after (re)connect drains the spool oldest-first at ``replay_rate`` msg/s (token bucket),
  sharing the in-flight window with live traffic; a spooled message is acknowledged in the spool only
  after its PUBACK (in id order), so a crash during replay means at-least-once, never loss.
- **In flight at a disconnect**: a QoS 1 message already handed to paho stays in paho's session state
  and is re-sent by paho (DUP) right after the next CONNACK, before anything we publish after it;
  we do not spool it a second time. Such messages (at most ``max_inflight``) live in memory only.
  QoS 1 is at-least-once: a PUBACK lost in the instant the broker dies makes the broker see a resend
  as a new message; receivers can detect it by ``seq``.
- **Threads**: paho's network loop thread only hands events to the asyncio loop
  (``call_soon_threadsafe``); all uplink state is owned by the loop thread.
- **Session**: MQTT 5, ``clean_start=False`` with ``session_expiry_s``, so the broker keeps our
  subscription and paho's in-flight messages survive a reconnect.
- **TLS**: CA file + client certificate/key, TLS >= 1.2, the broker's host name is verified
  against its certificate (``host`` must be a name or IP in the broker certificate's SAN).
- **bind_interface**: the TCP socket gets ``SO_BINDTODEVICE`` (Linux; no capability needed since 5.7 for a socket not yet bound to a device) before it
  connects, so the health channel uses that interface whatever the routing table prefers. paho 2.2
  has no socket hook for this, so ``_InterfaceBoundClient`` overrides paho's socket factory
  ``_create_socket_connection`` (a private method; pinned paho-mqtt 2.2.x). paho's ``bind_address``
  only chooses the source IP, which on Linux does not choose the egress interface.
- **Commands**: subscribed at ``{prefix}/{gw}/cmd/+`` (QoS 1); each message is handed to
  ``on_command`` with its MQTT 5 response topic and correlation data; ``reply`` answers. Replies are
  not spooled (a late answer to a request nobody waits for is noise): ``reply`` returns False offline.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from appliance.health import payloads
from appliance.health.spool import Spool
from appliance.health.topics import DEFAULT_PREFIX, Topics
from appliance.logfmt import get_logger

log = get_logger("health.mqtt")


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    gateway_id: str
    ca_file: str | None  # None: the system's trust store
    cert_file: str | None  # None: no client certificate (the broker authenticates otherwise)
    key_file: str | None
    topic_prefix: str = DEFAULT_PREFIX
    client_id: str | None = None  # default: "omgw-{gateway_id}"
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    bind_interface: str | None = None
    max_inflight: int = 20
    replay_rate: float = 50.0  # spooled messages per second after a reconnect
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    boot_id: str | None = None  # default: a fresh uuid4 per process
    tls: bool = True  # False only for mqtt:// (config: health.allow_insecure)
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    topic: str
    payload: bytes
    response_topic: str | None
    correlation_data: bytes | None


class _InterfaceBoundClient(mqtt.Client):
    """paho client whose TCP socket is bound to one network interface (SO_BINDTODEVICE)."""

    bind_interface: str | None = None

    def _create_socket_connection(self) -> socket.socket:
        if not self.bind_interface:
            return super()._create_socket_connection()
        err: OSError | None = None
        for af, kind, proto, _, addr in socket.getaddrinfo(self._host, self._port, 0, socket.SOCK_STREAM):
            sock = socket.socket(af, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.bind_interface.encode())
                sock.settimeout(self._connect_timeout)
                sock.connect(addr)
                return sock
            except OSError as e:
                sock.close()
                err = e
        raise err or OSError(f"cannot resolve {self._host}")


def tls_context(ca_file: str | None, cert_file: str | None, key_file: str | None) -> ssl.SSLContext:
    """Client-side TLS context: trust only ``ca_file`` (the system store without one), present the
    client certificate when there is one, check names."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class MqttUplink:
    def __init__(self, settings: MqttSettings, spool: Spool,
                 on_command: Callable[[Command], Any] | None = None):
        self.s = settings
        self.spool = spool
        self.topics = Topics(settings.gateway_id, settings.topic_prefix)
        self.on_command = on_command
        self.boot_id = settings.boot_id or uuid.uuid4().hex
        if settings.bind_interface:
            socket.if_nametoindex(settings.bind_interface)  # OSError now, not at every reconnect
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: _InterfaceBoundClient | None = None
        self._connected = False
        self._connected_ev = asyncio.Event()
        self._wake = asyncio.Event()
        self._replay_task: asyncio.Task[None] | None = None
        self._running = False
        self._inflight: dict[int, tuple[str, bytes, int, bool, int, int | None]] = {}
        self._replay_outstanding: deque[list[int]] = deque()  # [spool id, done 0/1], id order
        self._replay_sent_upto = 0  # highest spool id handed to paho
        self._status_lock = threading.Lock()
        self._status_seq = -1  # one per connection attempt: the will and the birth share it
        self.counters = {"published": 0, "spooled": 0, "replayed": 0, "queued_in_client": 0,
                         "rejected": 0, "connects": 0, "disconnects": 0, "connect_failures": 0,
                         "commands": 0, "replies": 0}

    # ---- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        s = self.s
        c = _InterfaceBoundClient(CallbackAPIVersion.VERSION2, client_id=s.client_id or f"omgw-{s.gateway_id}",
                                  protocol=mqtt.MQTTv5)
        c.bind_interface = s.bind_interface
        if s.tls:
            c.tls_set_context(tls_context(s.ca_file, s.cert_file, s.key_file))
        c.max_inflight_messages_set(s.max_inflight)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(int(max(1, s.reconnect_min_s)), int(max(1, s.reconnect_max_s)))
        c.on_pre_connect = self._t_pre_connect
        c.on_connect = self._t_connect
        c.on_connect_fail = self._t_connect_fail
        c.on_disconnect = self._t_disconnect
        c.on_publish = self._t_publish
        c.on_message = self._t_message
        self._client = c
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry_s
        c.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=props)
        c.loop_start()
        self._running = True
        self._replay_task = asyncio.create_task(self._replay_loop(), name="mqtt-replay")
        log.info("mqtt_starting", host=s.host, port=s.port, interface=s.bind_interface or "-")

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Wait for in-flight messages, publish retained "offline", disconnect. Undelivered live
        messages still in paho's memory are appended to the spool (they may then follow newer
        spooled messages of their topic: documented ordering exception at shutdown)."""
        self._running = False
        if self._replay_task is not None:
            self._replay_task.cancel()
            try:
                await self._replay_task
            except asyncio.CancelledError:
                pass
        c = self._client
        if c is None:
            return
        deadline = time.monotonic() + drain_timeout_s
        while self._inflight and self._connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._connected:
            info = c.publish(self.topics.status, self._status_bytes("offline", self._status_seq, "stopped"),
                             qos=1, retain=True)
            while not info.is_published() and self._connected and time.monotonic() < deadline + 1:
                await asyncio.sleep(0.02)
        c.disconnect()
        await asyncio.to_thread(c.loop_stop)
        for topic, payload, qos, retain, t, sid in self._inflight.values():
            if sid is None:
                self.spool.append(topic, payload, qos, retain, t)
        self._inflight.clear()
        self.spool.sync()
        self._client = None
        self._connected = False
        log.info("mqtt_stopped", **self.stats())

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected_ev.wait(), timeout)

    @property
    def connected(self) -> bool:
        return self._connected

    # ---- publishing -------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                time_ns: int | None = None) -> str:
        """Send or spool one message. Returns "sent", "queued" (paho holds it: the connection dropped
        a moment ago; it goes out after reconnect) or "spooled". Call from the event loop thread."""
        t = time.time_ns() if time_ns is None else time_ns
        c = self._client
        if (c is not None and self._connected and len(self._inflight) < self.s.max_inflight
                and not self.spool.pending_for(topic)):
            info = c.publish(topic, payload, qos=qos, retain=retain)
            if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN) and qos > 0:
                self._inflight[info.mid] = (topic, payload, qos, retain, t, None)
                key = "published" if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else "queued_in_client"
                self.counters[key] += 1
                return "sent" if key == "published" else "queued"
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:  # QoS 0
                self.counters["published"] += 1
                return "sent"
        self.spool.append(topic, payload, qos, retain, t)
        self.counters["spooled"] += 1
        self._wake.set()
        return "spooled"

    def reply(self, response_topic: str, correlation_data: bytes | None, payload: bytes) -> bool:
        """Answer a command on its MQTT 5 response topic with its correlation data (QoS 1)."""
        c = self._client
        if c is None or not self._connected:
            return False
        props = Properties(PacketTypes.PUBLISH)
        if correlation_data is not None:
            props.CorrelationData = correlation_data
        info = c.publish(response_topic, payload, qos=1, properties=props)
        self.counters["replies"] += 1
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    async def _replay_loop(self) -> None:
        rate = self.s.replay_rate
        tokens, last = 1.0, time.monotonic()
        while self._running:
            now = time.monotonic()
            tokens = min(max(1.0, rate / 5), tokens + (now - last) * rate)  # burst <= 0.2 s worth
            last = now
            self.spool.maybe_sync()
            c = self._client
            room = self.s.max_inflight - len(self._inflight)
            if c is None or not self._connected or room <= 0 or tokens < 1 or not len(self.spool):
                self._wake.clear()
                try:
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel (gh-86296)
                    async with asyncio.timeout(0.02 if len(self.spool) else 1.0):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            n = min(room, int(tokens))
            batch = [m for m in self.spool.next_batch(len(self._replay_outstanding) + n)
                     if m.id > self._replay_sent_upto][:n]
            for m in batch:
                info = c.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    break
                self._replay_sent_upto = m.id
                self.counters["replayed"] += 1
                tokens -= 1
                if m.qos > 0:
                    self._inflight[info.mid] = (m.topic, m.payload, m.qos, m.retain, m.time_ns, m.id)
                    self._replay_outstanding.append([m.id, 0])
                else:
                    self._replay_outstanding.append([m.id, 1])
            self._ack_replayed()
            await asyncio.sleep(0)

    def _ack_replayed(self) -> None:
        upto = None
        while self._replay_outstanding and self._replay_outstanding[0][1]:
            upto = self._replay_outstanding.popleft()[0]
        if upto is not None:
            self.spool.ack(upto)

    # ---- status payloads --------------------------------------------------------------------------

    def _status_bytes(self, state: str, seq: int, reason: str | None = None) -> bytes:
        return payloads.encode(payloads.status_payload(
            max(seq, 0), time.time_ns(), gateway_id=self.s.gateway_id, state=state, boot_id=self.boot_id,
            version=self.s.version, reason=reason))

    # ---- paho callbacks: network thread -> loop thread --------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _t_pre_connect(self, client: mqtt.Client, _ud: Any) -> None:
        # A fresh will for every connection attempt: its ts says when this connection began.
        with self._status_lock:
            self._status_seq += 1
            seq = self._status_seq
        client.will_set(self.topics.status, self._status_bytes("offline", seq, "connection lost"),
                        qos=1, retain=True)

    def _t_connect(self, _c: mqtt.Client, _ud: Any, flags: mqtt.ConnectFlags, rc: ReasonCode,
                   _p: Properties | None) -> None:
        self._post(self._on_connected, rc.is_failure, str(rc), flags.session_present)

    def _t_connect_fail(self, _c: mqtt.Client, _ud: Any) -> None:
        self._post(self._on_connect_failed)

    def _t_disconnect(self, _c: mqtt.Client, _ud: Any, _f: mqtt.DisconnectFlags, rc: ReasonCode,
                      _p: Properties | None) -> None:
        self._post(self._on_disconnected, str(rc))

    def _t_publish(self, _c: mqtt.Client, _ud: Any, mid: int, rc: ReasonCode, _p: Properties) -> None:
        self._post(self._on_puback, mid, rc.is_failure, str(rc))

    def _t_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        rt = getattr(props, "ResponseTopic", None) if props is not None else None
        cd = getattr(props, "CorrelationData", None) if props is not None else None
        self._post(self._on_message, msg.topic, bytes(msg.payload), rt, cd)

    # ---- loop-thread handlers ---------------------------------------------------------------------

    def _on_connected(self, failed: bool, reason: str, session_present: bool) -> None:
        if failed:
            self.counters["connect_failures"] += 1
            log.warning("mqtt_connect_refused", reason=reason)
            return
        c = self._client
        if c is None:
            return
        self._connected = True
        self._connected_ev.set()
        self.counters["connects"] += 1
        c.publish(self.topics.status, self._status_bytes("online", self._status_seq), qos=1, retain=True)
        c.subscribe(self.topics.cmd_filter, qos=1)
        log.info("mqtt_connected", session_present=session_present, spool_pending=len(self.spool),
                 inflight=len(self._inflight))
        self._wake.set()

    def _on_connect_failed(self) -> None:
        self.counters["connect_failures"] += 1
        if self.counters["connect_failures"] in (1, 10) or self.counters["connect_failures"] % 100 == 0:
            log.warning("mqtt_connect_failed", host=self.s.host, port=self.s.port,
                        failures=self.counters["connect_failures"])

    def _on_disconnected(self, reason: str) -> None:
        was = self._connected
        self._connected = False
        self._connected_ev.clear()
        if was:
            self.counters["disconnects"] += 1
            log.warning("mqtt_disconnected", reason=reason, inflight=len(self._inflight))
        else:  # closed before CONNACK, e.g. the broker refused our client certificate
            self._on_connect_failed()

    def _on_puback(self, mid: int, failed: bool, reason: str) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        if failed:  # the broker refused it (e.g. not authorised): resending would not help
            self.counters["rejected"] += 1
            log.warning("mqtt_publish_rejected", topic=entry[0], reason=reason)
        sid = entry[5]
        if sid is not None:
            for item in self._replay_outstanding:
                if item[0] == sid:
                    item[1] = 1
                    break
            self._ack_replayed()
        self._wake.set()

    def _on_message(self, topic: str, payload: bytes, response_topic: str | None,
                    correlation_data: bytes | None) -> None:
        name = self.topics.command_name(topic)
        if name is None:
            return
        self.counters["commands"] += 1
        if self.on_command is not None:
            self.on_command(Command(name, topic, payload, response_topic, correlation_data))

    # ---- introspection ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        sp = self.spool.stats()
        return {"connected": self._connected, **self.counters, "inflight": len(self._inflight),
                "spool_pending": sp["pending"], "dropped": sp["dropped"]}
