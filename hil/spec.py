"""The bench description (YAML), validated into typed models with key-path errors.

Why this exists: the same suite runs on the simulated bench in CI and on the lab bench; everything
that differs between the two (how to reach the gateway, which serial port a meter hangs on, which
faults the bench can inject) is data in one YAML file, not code in the tests. ``load_bench(path)``
raises :class:`BenchSpecError` listing every problem with its key path, like ``omgw check-config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Pin = Annotated[str, Field(pattern=r"^(GPIO|BOARD)\d{1,2}$")]
Ident = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[A-Za-z0-9._-]+$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalDut(_Model):
    """The gateway as processes on this machine (``omgw run`` from this checkout)."""

    kind: Literal["local"] = "local"


class SshDut(_Model):
    """A flashed gateway reached over SSH; the suite runs ``omgw status``/``blackbox dump`` there."""

    kind: Literal["ssh"]
    host: str
    user: str = "root"
    port: int = 22
    identity_file: Path | None = None
    config: Path = Path("/etc/omgw/omgw.toml")
    charger_url: str  # how the bench's charger simulator reaches the value channel, e.g. ws://10.0.0.2:9000/ocpp
    health_unit: str = "omgw-health.service"
    blackbox_dir: str = "/var/lib/omgw/health/blackbox"


class LabPki(_Model):
    """What the bench host's CSMS and broker present and what the suite signs with; the gateway
    trusts the same CA and operator key through its Ansible inventory (pki role, [commands] keys)."""

    ca_file: Path
    csms_cert: Path
    csms_key: Path
    broker_cert: Path
    broker_key: Path
    observer_cert: Path  # the suite's MQTT client certificate
    observer_key: Path
    operator_kid: str
    operator_key_file: Path  # base64 Ed25519 private key (omgw keygen), allowed relay_cycle/snapshot/ping
    charger_passwords: Path  # YAML mapping cp_id -> the Basic-auth password the gateway sends upstream


class Endpoint(_Model):
    """A peer the suite runs itself (CSMS, broker) and the address it listens on: loopback on the
    simulated bench, the bench host's address on the lab network that the gateway can reach."""

    listen_host: str = "127.0.0.1"
    port: int = 0  # 0: a free port (simulated bench); fixed on the lab bench (the gateway's config names it)
    advertise_host: str | None = None  # the name the gateway uses (certificate SAN); default listen_host


class ReferenceMeter(_Model):
    """A reference meter on the bench host's own RS-485 adapter, in series with the meter under test."""

    port: str
    model: str
    unit_id: Annotated[int, Field(ge=1, le=247)] = 1
    baud: int = 9600


class Switch(_Model):
    """A bench-host GPIO driving a relay/bus switch that breaks a line (fault injection on the lab bench)."""

    gpio: Pin
    active_high: bool = True


class Meter(_Model):
    name: Ident
    model: str = "sdm630"
    unit_id: Annotated[int, Field(ge=1, le=247)]
    port: str = "sim"  # "sim": a simulated RS-485 line on a pty; else the gateway's serial device
    accuracy_class: Annotated[float, Field(gt=0, le=5)] = 1.0  # percent of reading (class 1 / EN 50470 B)
    feeds: str | None = None  # the charger it measures
    reference: Literal["sim"] | ReferenceMeter = "sim"
    disconnect: Literal["sim"] | Switch | None = "sim"  # how the bench cuts its line; None: it cannot


class Sensor(_Model):
    name: Ident
    model: Literal["sht3x", "sht4x", "bme280"]
    bus: int | Literal["sim"] = "sim"
    address: Annotated[int, Field(ge=0x03, le=0x77)]
    remove: Literal["sim"] | Switch | None = "sim"  # how the bench takes it off the bus; None: it cannot
    crc_faults: bool = True  # the bench can corrupt its CRCs (simulated bench only)
    # plausible ranges on a lab bench without a reference instrument
    temperature_c: tuple[float, float] = (-20.0, 60.0)
    humidity_rh: tuple[float, float] = (5.0, 95.0)


class Relay(_Model):
    cp_id: Ident
    relay_pin: Pin = "GPIO17"
    alive_pin: Pin = "GPIO27"  # the loop-back input: relay contact -> charger supply -> this input
    off_s: Annotated[float, Field(ge=2, le=600)] = 2.0
    tolerance_s: Annotated[float, Field(gt=0, le=1)] = 0.05
    hang_after_s: Annotated[float, Field(gt=0)] = 8.0


class Charger(_Model):
    id: Ident
    version: Literal["ocpp1.6", "ocpp2.0.1"] = "ocpp1.6"
    # "sim": the suite's ocpp-library charger; on the lab bench its supply is read from power_input
    # (a bench-host GPIO behind the relay contact), on the simulated bench from the gateway's relay events
    power_input: Pin | None = None


class Faults(_Model):
    """Faults the bench can inject besides those per meter/sensor; a test that needs a missing one
    is skipped with the reason (never on the simulated bench)."""

    broker_down: bool = True
    csms_down: bool = True
    kill_health: bool = True


class Bench(_Model):
    name: Ident
    description: str = ""
    gateway_id: Ident = "gw-hil"
    dut: LocalDut | SshDut = LocalDut()
    csms: Endpoint = Endpoint()
    broker: Endpoint = Endpoint()
    meters: list[Meter] = []
    sensors: list[Sensor] = []
    relay: Relay | None = None
    chargers: list[Charger] = []
    faults: Faults = Faults()
    pki: LabPki | None = None  # lab bench only: the simulated bench makes its own

    @model_validator(mode="after")
    def _consistent(self) -> Bench:
        problems = []
        for what, names in (("meters", [m.name for m in self.meters]), ("sensors", [s.name for s in self.sensors]),
                            ("chargers", [c.id for c in self.chargers])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                problems.append(f"{what}: duplicate names {dup}")
        cps = {c.id for c in self.chargers}
        if self.relay is not None and self.relay.cp_id not in cps:
            problems.append(f"relay.cp_id: {self.relay.cp_id!r} is not one of the chargers {sorted(cps)}")
        for m in self.meters:
            if m.feeds is not None and m.feeds not in cps:
                problems.append(f"meters: {m.name}.feeds {m.feeds!r} is not one of the chargers")
        if isinstance(self.dut, LocalDut):
            for m in self.meters:
                if m.port != "sim" or m.reference != "sim" or m.disconnect not in ("sim", None):
                    problems.append(f"meters: {m.name}: a local gateway uses simulated meters (port/reference 'sim')")
            for s in self.sensors:
                if s.bus != "sim" or s.remove not in ("sim", None):
                    problems.append(f"sensors: {s.name}: a local gateway uses simulated sensors (bus 'sim')")
        if isinstance(self.dut, SshDut) and self.pki is None:
            problems.append("pki: required with dut.kind 'ssh' (the lab's CSMS/broker certificates and operator key)")
        if isinstance(self.dut, SshDut) and (self.csms.port == 0 or self.broker.port == 0):
            problems.append("csms.port/broker.port: fixed ports are required on a lab bench (the gateway's config names them)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def simulated(self) -> bool:
        return isinstance(self.dut, LocalDut)


class BenchSpecError(Exception):
    def __init__(self, source: Path, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_bench(path: Path) -> Bench:
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except OSError as e:
        raise BenchSpecError(path, [f"cannot read: {e.strerror}"]) from None
    except yaml.YAMLError as e:
        raise BenchSpecError(path, [f"not valid YAML: {e}"]) from None
    if not isinstance(raw, dict):
        raise BenchSpecError(path, ["the top level must be a mapping"])
    try:
        return Bench.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            # union members each report their own error; keep the path readable
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p[:1].isupper() and p not in raw))
            where = _path(loc)
            problems.append(f"{where}: {err['msg']}" if where else err["msg"])
        raise BenchSpecError(path, problems) from None
