"""Typed configuration, validated once at the edge.

The TOML file is turned into frozen pydantic models; the rest of the code receives these objects,
never dicts. Every problem is reported with its key path (``value.charge_points[2].id: duplicate
id "CP7"``) so an operator can fix the whole file in one pass. Secrets are never stored in the file:
it only names the files (mode 0600) that hold them.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

DEFAULT_PATH = Path("/etc/omgw/omgw.toml")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _metrics_listen(v: str | None, info: ValidationInfo) -> str | None:
    """``metrics_listen``: "HOST:PORT", loopback unless ``metrics_allow_remote``; "" or "off" disables."""
    if v is None or v.strip().lower() in ("", "off"):
        return None
    from .metrics import listen_problem

    problem = listen_problem(v, bool(info.data.get("metrics_allow_remote")))
    if problem:
        raise ValueError(problem)
    return v


class GatewayConfig(_Model):
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    site: str = ""
    state_dir: Path = Path("/var/lib/omgw")


class ChargerTls(_Model):
    """Optional wss:// on the charger-facing side."""

    cert_file: Path
    key_file: Path


class ChargePointConfig(_Model):
    id: Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9._:*-]+$")]
    password_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    charger_password_hash: str | None = None


class ValueConfig(_Model):
    listen: str = "0.0.0.0:9000"
    csms_url: str
    security_profile: Annotated[int, Field(ge=0, le=3)] = 2
    ca_file: Path | None = None
    allow_insecure: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None
    ping_interval_s: Annotated[float, Field(gt=0, le=3600)] = 30
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10
    max_frame_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 65536
    validation: Literal["off", "log", "enforce"] = "log"
    allow_unknown_charge_points: bool = False
    tap_socket: Path = Path("/run/omgw/tap.sock")
    tap_queue: Annotated[int, Field(ge=16, le=1_000_000)] = 10_000
    tap_secret_file: Path | None = None
    tap_stats_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10
    status_socket: Path = Path("/run/omgw/value.sock")
    metrics_allow_remote: bool = False  # declared before metrics_listen: its validator reads it
    metrics_listen: str | None = "127.0.0.1:9101"  # Prometheus text on GET /metrics; "off" disables
    _check_metrics_listen = field_validator("metrics_listen")(_metrics_listen)
    pending_calls_max: Annotated[int, Field(ge=1, le=100_000)] = 256
    charger_tls: ChargerTls | None = None
    charge_points: list[ChargePointConfig] = []

    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def keepalive(self) -> dict[str, float]:
        """websockets keepalive settings such that a silent peer is dropped within 2 x ping_interval:
        ping at t=interval, no pong by 1.5 x interval, closing handshake abandoned by 2 x interval."""
        half = self.ping_interval_s / 2
        return {"ping_interval": self.ping_interval_s, "ping_timeout": half, "close_timeout": min(10.0, half)}

    def charge_point(self, cp_id: str) -> ChargePointConfig | None:
        for cp in self.charge_points:
            if cp.id == cp_id:
                return cp
        return None

    def tap_secret_path(self, state_dir: Path) -> Path:
        return self.tap_secret_file or state_dir / "tap.key"


class BlackboxConfig(_Model):
    """The flight recorder in ``state_dir/blackbox`` (docs/blackbox.md)."""

    max_mb: Annotated[float, Field(gt=0, le=65536)] = 64
    segment_mb: Annotated[float, Field(gt=0, le=1024)] = 4
    flush_interval_s: Annotated[float, Field(gt=0, le=600)] = 1.0
    flush_bytes: Annotated[int, Field(ge=4096, le=64 * 1024 * 1024)] = 262144
    pre_s: Annotated[float, Field(ge=0, le=86400)] = 60
    post_s: Annotated[float, Field(ge=0, le=86400)] = 30
    snapshot_keep: Annotated[int, Field(ge=1, le=10000)] = 50
    snapshot_max_mb: Annotated[float, Field(gt=0, le=65536)] = 200


class MeterConfig(_Model):
    """One Modbus RTU meter; meters sharing a ``port`` share one half-duplex bus."""

    name: Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9._-]+$")]
    model: str  # a shipped map name (sdm630, sdm120, abb_b23, em340) or a path to a user-defined map
    port: str = "/dev/ttyUSB0"  # serial device, or tcp://host:port for a Modbus TCP gateway
    baud: Annotated[int, Field(ge=1200, le=115200)] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit_id: Annotated[int, Field(ge=1, le=247)] = 1
    timeout_s: Annotated[float, Field(gt=0, le=5)] = 0.3
    retries: Annotated[int, Field(ge=0, le=5)] = 1
    feeds: str | None = None  # cp_id of the charger this meter measures (billing cross-check)


class SensorConfig(_Model):
    name: Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9._-]+$")]
    model: Literal["sht3x", "sht4x", "bme280"]
    # 1 = /dev/i2c-1; "sim": chip models inside the health process (demo); "sim:/abs/path.sock": the
    # simulated bus a bench process serves (drivers/sim/i2c_server.py, the HIL bench)
    bus: int | str = 1
    address: Annotated[int, Field(ge=0x03, le=0x77)] = 0x44

    @field_validator("bus")
    @classmethod
    def _check_bus(cls, v: int | str) -> int | str:
        if isinstance(v, int):
            return v
        if v.isdigit():
            return int(v)
        if v == "sim" or (v.startswith("sim:") and Path(v[4:]).is_absolute()):
            return v
        raise ValueError(f'expected an adapter number (1 for /dev/i2c-1), "sim", or "sim:/absolute/path/to.sock" '
                         f'(a simulated bus served by a bench process), got "{v}"')

    @property
    def sim_socket(self) -> Path | None:
        """The socket of a ``sim:PATH`` bus, else None."""
        return Path(self.bus[4:]) if isinstance(self.bus, str) and self.bus.startswith("sim:") else None


class WebUser(_Model):
    """A technician account for the web page: the hash comes from ``omgw hash-password``."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._@-]+$")]
    password_hash: str


class WebConfig(_Model):
    """``[health.web]``: the technician page, served by the health process (docs/web.md)."""

    listen: str = "127.0.0.1:8443"  # the service interface's address, never the charger-facing one
    cert_file: Path | None = None  # the gateway's certificate (HTTPS); required unless allow_insecure
    key_file: Path | None = None
    allow_insecure: bool = False  # plain HTTP (development only)
    client_ca_file: Path | None = None  # optional: client certificates chaining to this CA log in as their CN
    users: list[WebUser] = []
    lockout_failures: Annotated[int, Field(ge=1, le=1000)] = 5  # failed logins per user and per address ...
    lockout_s: Annotated[float, Field(gt=0, le=86400)] = 60  # ... lock that user / address for this long
    session_idle_s: Annotated[float, Field(ge=60, le=7 * 86400)] = 1800  # a session unused this long ends
    history_minutes: Annotated[int, Field(ge=1, le=60)] = 10  # telemetry kept in memory for the charts


class HealthConfig(_Model):
    transport: Literal["mqtt", "https"] = "mqtt"
    url: str = "mqtts://localhost:8883"  # mqtts://host:port, mqtt://host:port (needs allow_insecure) or https://...
    allow_insecure: bool = False
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    topic_prefix: str = "omgw/v1"
    sample_interval_s: Annotated[float, Field(ge=0.05, le=60)] = 1.0  # 20 Hz at most; a real RS-485 line is slower: overrun ticks are skipped and counted
    soh_interval_s: Annotated[float, Field(ge=1, le=3600)] = 60
    spool_mb: Annotated[float, Field(gt=0, le=4096)] = 32
    bind_interface: str | None = None
    tap_socket: Path | None = None  # default: value.tap_socket, or /run/omgw/tap.sock
    status_socket: Path = Path("/run/omgw/health.sock")
    metrics_allow_remote: bool = False  # declared before metrics_listen: its validator reads it
    metrics_listen: str | None = "127.0.0.1:9102"  # Prometheus text on GET /metrics; "off" disables
    _check_metrics_listen = field_validator("metrics_listen")(_metrics_listen)
    billing_tolerance_wh: Annotated[float, Field(ge=0)] = 50
    billing_tolerance_rel: Annotated[float, Field(ge=0, le=1)] = 0.02
    meters: list[MeterConfig] = []
    sensors: list[SensorConfig] = []
    web: WebConfig | None = None


class WatchdogConfig(_Model):
    enabled: bool = False
    cp_id: str | None = None  # the charger behind the relay
    relay_pin: str = "GPIO17"
    relay_active_high: bool = True
    alive_pin: str | None = None
    require_alive_low: bool = False
    hang_after_s: Annotated[float, Field(gt=0)] = 300
    offline_after_s: Annotated[float, Field(gt=0)] = 600
    off_s: Annotated[float, Field(ge=2, le=600)] = 10
    max_cycles_per_hour: Annotated[int, Field(ge=1, le=60)] = 2


class CommandKey(_Model):
    kid: Annotated[str, Field(min_length=1, max_length=64)]
    public_key: str  # base64 of the raw 32-byte Ed25519 public key (omgw keygen)
    allowed: list[Literal["ping", "snapshot", "read_registers", "relay_cycle", "set_sample_interval", "selftest",
                          "get_config"]]


class CommandsConfig(_Model):
    nonce_file: Path | None = None  # default: state_dir/nonces
    max_skew_s: Annotated[float, Field(ge=0, le=3600)] = 60
    keys: list[CommandKey] = []


class Config(_Model):
    gateway: GatewayConfig
    value: ValueConfig | None = None
    health: HealthConfig | None = None
    blackbox: BlackboxConfig = BlackboxConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    commands: CommandsConfig = CommandsConfig()


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """Raised with every problem found, not only the first."""

    def __init__(self, source: Path | str, problems: list[ConfigProblem]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(map(str, problems)))


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _pydantic_problems(err: ValidationError) -> list[ConfigProblem]:
    problems = []
    for e in err.errors(include_url=False):
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        problems.append(ConfigProblem(_loc_to_path(e["loc"]), msg))
    return problems


def _check_readable(path: Path | None, key: str, problems: list[ConfigProblem]) -> None:
    if path is None:
        return
    if not path.is_file():
        problems.append(ConfigProblem(key, f'file not found "{path}"'))
    elif not os.access(path, os.R_OK):
        problems.append(ConfigProblem(key, f'file not readable "{path}"'))


def _secret_mode(path: Path | None, key: str, problems: list[ConfigProblem]) -> None:
    """Secrets must not be readable by group or others (0600 or stricter)."""
    if path is not None and path.is_file() and path.stat().st_mode & 0o077:
        problems.append(
            ConfigProblem(key, f'secret file "{path}" is accessible by group/others (chmod 600)')
        )


def _value_problems(v: ValueConfig, check_files: bool) -> list[ConfigProblem]:
    p: list[ConfigProblem] = []
    try:
        host, port = v.listen_host_port()
        if not 0 <= port < 65536:  # 0: an ephemeral port (tests, demo)
            raise ValueError
    except ValueError:
        p.append(ConfigProblem("value.listen", f'expected "HOST:PORT", got "{v.listen}"'))
    url = urlsplit(v.csms_url)
    want = "wss" if v.security_profile >= 2 else "ws"
    if url.scheme not in ("ws", "wss") or not url.hostname:
        p.append(ConfigProblem("value.csms_url", f'expected a ws:// or wss:// URL, got "{v.csms_url}"'))
    elif url.scheme != want:
        p.append(
            ConfigProblem(
                "value.csms_url",
                f"security profile {v.security_profile} needs a {want}:// URL, got {url.scheme}://",
            )
        )
    if v.security_profile <= 1 and not v.allow_insecure:
        p.append(
            ConfigProblem(
                "value.security_profile",
                f"profile {v.security_profile} sends OCPP unencrypted; set value.allow_insecure = true to accept that",
            )
        )
    if v.security_profile >= 2 and v.ca_file is None:
        p.append(ConfigProblem("value.ca_file", f"required for security profile {v.security_profile}"))
    seen: dict[str, int] = {}
    for i, cp in enumerate(v.charge_points):
        key = f"value.charge_points[{i}]"
        if cp.id in seen:
            p.append(ConfigProblem(f"{key}.id", f'duplicate id "{cp.id}" (also at [{seen[cp.id]}])'))
        seen.setdefault(cp.id, i)
        if v.security_profile in (1, 2) and cp.password_file is None:
            p.append(
                ConfigProblem(f"{key}.password_file", f"required for security profile {v.security_profile}")
            )
        if v.security_profile == 3:
            cert = cp.client_cert or v.client_cert
            keyf = cp.client_key or v.client_key
            if cert is None or keyf is None:
                p.append(
                    ConfigProblem(
                        f"{key}.client_cert",
                        "security profile 3 needs client_cert and client_key (here or in [value])",
                    )
                )
        if (cp.client_cert is None) != (cp.client_key is None):
            p.append(ConfigProblem(f"{key}.client_key", "client_cert and client_key go together"))
        if cp.charger_password_hash is not None and not cp.charger_password_hash.startswith("scrypt$"):
            p.append(
                ConfigProblem(
                    f"{key}.charger_password_hash", 'expected a hash from "omgw hash-password" (scrypt$...)'
                )
            )
        if check_files:
            _check_readable(cp.password_file, f"{key}.password_file", p)
            _secret_mode(cp.password_file, f"{key}.password_file", p)
            _check_readable(cp.client_cert, f"{key}.client_cert", p)
            _check_readable(cp.client_key, f"{key}.client_key", p)
            _secret_mode(cp.client_key, f"{key}.client_key", p)
    if not v.charge_points and not v.allow_unknown_charge_points:
        p.append(
            ConfigProblem(
                "value.charge_points",
                "no charge points configured and allow_unknown_charge_points = false: every charger would be refused",
            )
        )
    if check_files:
        if v.security_profile >= 2:
            _check_readable(v.ca_file, "value.ca_file", p)
        _check_readable(v.client_cert, "value.client_cert", p)
        _check_readable(v.client_key, "value.client_key", p)
        _secret_mode(v.client_key, "value.client_key", p)
        if v.charger_tls:
            _check_readable(v.charger_tls.cert_file, "value.charger_tls.cert_file", p)
            _check_readable(v.charger_tls.key_file, "value.charger_tls.key_file", p)
            _secret_mode(v.charger_tls.key_file, "value.charger_tls.key_file", p)
    return p


def _health_problems(cfg: Config, check_files: bool) -> list[ConfigProblem]:
    h = cfg.health
    assert h is not None
    p: list[ConfigProblem] = []
    scheme = urlsplit(h.url).scheme
    want = {"mqtt": ("mqtts", "mqtt"), "https": ("https",)}[h.transport]
    if scheme not in want:
        p.append(ConfigProblem("health.url", f'transport {h.transport} needs a {"/".join(want)}:// URL, got "{h.url}"'))
    elif scheme == "mqtt" and not h.allow_insecure:
        p.append(ConfigProblem("health.url", "mqtt:// is unencrypted; use mqtts:// or set health.allow_insecure = true"))
    if scheme in ("mqtts", "https") and (h.client_cert is None) != (h.client_key is None):
        p.append(ConfigProblem("health.client_key", "client_cert and client_key go together"))
    for kind, items in (("meters", h.meters), ("sensors", h.sensors)):
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.name in seen:
                p.append(ConfigProblem(f"health.{kind}[{i}].name", f'duplicate name "{item.name}" (also at [{seen[item.name]}])'))
            seen.setdefault(item.name, i)
    buses: dict[tuple[str, int], int] = {}
    for i, m in enumerate(h.meters):
        if (m.port, m.unit_id) in buses:
            p.append(ConfigProblem(f"health.meters[{i}].unit_id",
                                   f"unit {m.unit_id} on {m.port} is already meters[{buses[(m.port, m.unit_id)]}]"))
        buses.setdefault((m.port, m.unit_id), i)
    cp_ids = {cp.id for cp in cfg.value.charge_points} if cfg.value else set()
    for i, m in enumerate(h.meters):
        if m.feeds is not None and cfg.value is not None and cp_ids and m.feeds not in cp_ids:
            p.append(ConfigProblem(f"health.meters[{i}].feeds", f'no charge point "{m.feeds}" in value.charge_points'))
    if check_files:
        for key in ("ca_file", "client_cert", "client_key"):
            _check_readable(getattr(h, key), f"health.{key}", p)
        _secret_mode(h.client_key, "health.client_key", p)
    if h.web is not None:
        p += _web_problems(h.web, check_files)
    if cfg.watchdog.enabled and cfg.watchdog.cp_id is None:
        p.append(ConfigProblem("watchdog.cp_id", "required when the watchdog is enabled"))
    kids: dict[str, int] = {}
    for i, k in enumerate(cfg.commands.keys):
        if k.kid in kids:
            p.append(ConfigProblem(f"commands.keys[{i}].kid", f'duplicate key id "{k.kid}"'))
        kids.setdefault(k.kid, i)
        try:
            import base64 as _b64

            if len(_b64.b64decode(k.public_key, validate=True)) != 32:
                raise ValueError
        except ValueError:
            p.append(ConfigProblem(f"commands.keys[{i}].public_key", "expected base64 of a 32-byte Ed25519 public key"))
    return p


def _web_problems(w: WebConfig, check_files: bool) -> list[ConfigProblem]:
    from .metrics import parse_listen

    p: list[ConfigProblem] = []
    try:
        parse_listen(w.listen)
    except ValueError as e:
        p.append(ConfigProblem("health.web.listen", str(e)))
    if (w.cert_file is None) != (w.key_file is None):
        p.append(ConfigProblem("health.web.key_file", "cert_file and key_file go together"))
    if w.cert_file is None and not w.allow_insecure:
        p.append(ConfigProblem("health.web.cert_file",
                               "required (HTTPS with the gateway's certificate); set allow_insecure = true for plain HTTP"))
    if w.client_ca_file is not None and w.cert_file is None:
        p.append(ConfigProblem("health.web.client_ca_file", "client certificates need HTTPS (cert_file, key_file)"))
    if not w.users and w.client_ca_file is None:
        p.append(ConfigProblem("health.web.users", "no technician account and no client_ca_file: nobody could log in"))
    seen: dict[str, int] = {}
    for i, u in enumerate(w.users):
        if u.name in seen:
            p.append(ConfigProblem(f"health.web.users[{i}].name", f'duplicate name "{u.name}" (also at [{seen[u.name]}])'))
        seen.setdefault(u.name, i)
        if not u.password_hash.startswith("scrypt$") or u.password_hash.count("$") != 5:
            p.append(ConfigProblem(f"health.web.users[{i}].password_hash",
                                   'expected a hash from "omgw hash-password" (scrypt$...)'))
    if check_files:
        for key in ("cert_file", "key_file", "client_ca_file"):
            _check_readable(getattr(w, key), f"health.web.{key}", p)
        _secret_mode(w.key_file, "health.web.key_file", p)
    return p


def parse(data: dict, source: Path | str = "<config>", check_files: bool = True) -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, _pydantic_problems(e)) from None
    problems: list[ConfigProblem] = []
    if cfg.value is not None:
        problems += _value_problems(cfg.value, check_files)
    if cfg.health is not None:
        problems += _health_problems(cfg, check_files)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load(path: Path | str = DEFAULT_PATH, check_files: bool = True) -> Config:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(path, [ConfigProblem("", f"cannot read config: {e.strerror}")]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(path, [ConfigProblem("", f"not valid TOML: {e}")]) from None
    return parse(data, path, check_files)
