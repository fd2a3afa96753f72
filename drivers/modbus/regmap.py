"""Meter register maps: data files (``maps/*.toml``, or any user TOML file) loaded and validated.

Device knowledge lives in data, not code: one TOML file per meter model says which registers hold
which quantity, in which type, word order and scale (format: ``docs/drivers-modbus.md``). This
module turns such a file into a frozen :class:`RegisterMap` or raises :class:`RegisterMapError`
listing *every* problem, each prefixed with the file and the offending key, e.g.
``sdm630.toml: value[3].register: overlaps value[2] (voltage_l2, registers 2..3)``.

Guarantees of a loaded map:

- every value has a quantity from the fixed vocabulary (:class:`Quantity`) and the quantity's
  canonical unit (:data:`UNITS`; meters reporting other units convert with ``scale``);
- names are unique, and no two values share a (quantity, phase);
- per function (holding/input), no two values share a register, and ``register + width <= 65536``;
- ``max_registers`` is within 1..125 and every value fits in one request.

Register addresses are *protocol addresses*, 0-based, as sent in the request PDU and as printed in
the manufacturers' "hex address" columns. Manuals that number registers 30001/40001-style use
``protocol address = number - 30001`` (input registers) or ``number - 40001`` (holding registers):
Eastron's "30001 Phase 1 line to neutral volts" is input register 0x0000.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeGuard

from drivers.modbus.codec import (
    MAX_READ_REGISTERS,
    DataType,
    Function,
    WordOrder,
    decode_raw,
    register_count,
)

__all__ = [
    "DEFAULT_RANGES",
    "MAPS_DIR",
    "UNITS",
    "DataType",
    "Function",
    "Identify",
    "Phase",
    "Quantity",
    "RegisterMap",
    "RegisterMapError",
    "ValueDef",
    "WordOrder",
    "available_maps",
    "load_map",
    "loads_map",
    "parse_map",
]

MAPS_DIR = Path(__file__).with_name("maps")


class Quantity(StrEnum):
    """The fixed vocabulary of what a meter value measures."""

    VOLTAGE = "voltage"  # line to neutral
    CURRENT = "current"
    POWER_ACTIVE = "power_active"
    POWER_REACTIVE = "power_reactive"
    POWER_APPARENT = "power_apparent"
    POWER_FACTOR = "power_factor"
    FREQUENCY = "frequency"
    ENERGY_IMPORT = "energy_import"
    ENERGY_EXPORT = "energy_export"


class Phase(StrEnum):
    """Which conductor a value belongs to; ``None`` (no phase) is used for e.g. frequency."""

    L1 = "L1"
    L2 = "L2"
    L3 = "L3"
    TOTAL = "total"


# The unit each quantity is reported in, whatever the meter sends (convert with ``scale``).
UNITS: Mapping[Quantity, str] = {
    Quantity.VOLTAGE: "V",
    Quantity.CURRENT: "A",
    Quantity.POWER_ACTIVE: "W",
    Quantity.POWER_REACTIVE: "var",
    Quantity.POWER_APPARENT: "VA",
    Quantity.POWER_FACTOR: "",
    Quantity.FREQUENCY: "Hz",
    Quantity.ENERGY_IMPORT: "kWh",
    Quantity.ENERGY_EXPORT: "kWh",
}

# Plausibility ranges (inclusive, in the units above) used when a value sets no ``valid_range``.
# Wide on purpose: they are meant to catch garbage (wrong word order or scale, "not available"
# sentinels such as ABB's 0xFFFF..., NaN), never an unusual but real operating point.
DEFAULT_RANGES: Mapping[Quantity, tuple[float, float]] = {
    Quantity.VOLTAGE: (0.0, 500.0),
    Quantity.CURRENT: (-10_000.0, 10_000.0),
    Quantity.POWER_ACTIVE: (-10e6, 10e6),
    Quantity.POWER_REACTIVE: (-10e6, 10e6),
    Quantity.POWER_APPARENT: (-10e6, 10e6),
    Quantity.POWER_FACTOR: (-1.0, 1.0),
    Quantity.FREQUENCY: (40.0, 70.0),
    Quantity.ENERGY_IMPORT: (0.0, 1e9),
    Quantity.ENERGY_EXPORT: (0.0, 1e9),
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class ValueDef:
    """One meter value: where it lives on the bus and how to turn its registers into a number."""

    name: str
    quantity: Quantity
    phase: Phase | None
    unit: str
    register: int
    function: Function = Function.INPUT
    type: DataType = DataType.FLOAT32
    word_order: WordOrder = WordOrder.BIG
    scale: float = 1.0
    valid_range: tuple[float, float] | None = None  # None: DEFAULT_RANGES[quantity]

    def __post_init__(self) -> None:
        # Accept plain strings/ints from callers (simulators, tests) and store the enums.
        object.__setattr__(self, "quantity", Quantity(self.quantity))
        if self.phase is not None:
            object.__setattr__(self, "phase", Phase(self.phase))
        object.__setattr__(self, "function", Function(self.function))
        object.__setattr__(self, "type", DataType(self.type))
        object.__setattr__(self, "word_order", WordOrder(self.word_order))
        object.__setattr__(self, "scale", float(self.scale))
        if self.valid_range is not None:
            lo, hi = self.valid_range
            object.__setattr__(self, "valid_range", (float(lo), float(hi)))
        if self.register < 0 or self.register + self.count > 0x10000:
            raise ValueError(f"{self.name}: registers {self.register}..{self.end - 1} outside 0..65535")

    @property
    def count(self) -> int:
        """Registers occupied."""
        return register_count(self.type)

    @property
    def end(self) -> int:
        """First register after this value."""
        return self.register + self.count

    @property
    def plausible_range(self) -> tuple[float, float]:
        """The inclusive range outside which a decoded value is reported as out of range."""
        return self.valid_range if self.valid_range is not None else DEFAULT_RANGES[self.quantity]


@dataclass(frozen=True)
class Identify:
    """A register whose value recognises the model (used by ``omgw probe modbus``).

    Read ``count`` registers at ``register`` with ``function``; the model matches when
    :meth:`matches` is true for the returned words.
    """

    function: Function
    register: int
    type: DataType
    values: tuple[int, ...]
    word_order: WordOrder = WordOrder.BIG

    @property
    def count(self) -> int:
        return register_count(self.type)

    def matches(self, regs: Sequence[int]) -> bool:
        try:
            return decode_raw(self.type, self.word_order, regs) in self.values
        except ValueError:
            return False


@dataclass(frozen=True)
class RegisterMap:
    """A validated register map: which values a model has and how to read them."""

    model: str
    manufacturer: str
    values: tuple[ValueDef, ...]
    identify: Identify | None
    source: str  # the file the map was loaded from ("<string>" when parsed from text)
    reference: str = ""  # the manufacturer document(s) the addresses come from
    max_registers: int = MAX_READ_REGISTERS  # the device's limit of registers per read request
    max_gap: int | None = None  # most unused registers one request may span; None: no device limit
    aliases: tuple[str, ...] = field(default=())

    def value(self, name: str) -> ValueDef:
        for v in self.values:
            if v.name == name:
                return v
        raise KeyError(name)


class RegisterMapError(ValueError):
    """A register map could not be loaded; ``errors`` lists every problem, one line each."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


def available_maps() -> list[str]:
    """Names of the shipped maps (file stems), for :func:`load_map`."""
    return sorted(p.stem for p in MAPS_DIR.glob("*.toml"))


def load_map(name_or_path: str | os.PathLike[str]) -> RegisterMap:
    """Load a shipped map by name (``"sdm630"``, case-insensitive; a model name or alias such as
    ``"B24"`` also works) or any TOML file by path (a ``Path``, a string ending in ``.toml``, or
    a string with a ``/`` that names no shipped map)."""
    if isinstance(name_or_path, os.PathLike) or name_or_path.lower().endswith(".toml"):
        path = Path(name_or_path)
        return _load_file(path, display=str(path))
    key = name_or_path.strip().lower()
    if key in available_maps():
        return _load_file(MAPS_DIR / f"{key}.toml", display=f"{key}.toml")
    for stem in available_maps():
        m = _load_file(MAPS_DIR / f"{stem}.toml", display=f"{stem}.toml")
        if key in (m.model.lower(), *(a.lower() for a in m.aliases)):
            return m
    if "/" in name_or_path:
        return _load_file(Path(name_or_path), display=name_or_path)
    shipped = ", ".join(available_maps())
    raise RegisterMapError(
        [f"{name_or_path}: no such register map (shipped: {shipped}; or a TOML file path)"]
    )


def _load_file(path: Path, display: str) -> RegisterMap:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RegisterMapError([f"{display}: cannot read: {e.strerror or e}"]) from None
    return loads_map(text, source=str(path), display=display)


def loads_map(text: str, source: str = "<string>", display: str | None = None) -> RegisterMap:
    """Parse and validate map text (``display`` names the file in error messages)."""
    display = display or Path(source).name
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RegisterMapError([f"{display}: not valid TOML: {e}"]) from None
    return parse_map(data, source=source, display=display)


def _is_int(x: object) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> TypeGuard[int | float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


_METER_KEYS = {
    "model",
    "manufacturer",
    "description",
    "reference",
    "function",
    "word_order",
    "max_registers",
    "max_gap",
    "no_gaps",
    "aliases",
    "identify",
}
_VALUE_KEYS = {
    "quantity",
    "phase",
    "name",
    "unit",
    "register",
    "function",
    "type",
    "word_order",
    "scale",
    "valid_range",
}
_IDENTIFY_KEYS = {"function", "register", "type", "word_order", "values"}
_INTEGER_TYPES = {DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32, DataType.UINT64}


def _enum(cls: Any, raw: object, where: str, errors: list[str]) -> Any:
    try:
        return cls(raw)
    except ValueError:
        allowed = ", ".join(str(m.value) if isinstance(m.value, str) else m.name.lower() for m in cls)
        errors.append(f"{where}: {raw!r} is not one of: {allowed}")
        return None


def _function(raw: object, where: str, errors: list[str]) -> Function | None:
    names = {"holding": Function.HOLDING, "input": Function.INPUT}
    if isinstance(raw, str) and raw.lower() in names:
        return names[raw.lower()]
    errors.append(f"{where}: {raw!r} is not one of: holding, input")
    return None


def parse_map(data: Mapping[str, Any], source: str = "<string>", display: str | None = None) -> RegisterMap:
    """Validate an already-parsed TOML document into a :class:`RegisterMap`."""
    f = display or Path(source).name
    errors: list[str] = []
    for k in data:
        if k not in ("meter", "value"):
            errors.append(f"{f}: {k}: unknown key (expected [meter] and [[value]])")

    meter = data.get("meter")
    has_meter = isinstance(meter, Mapping)
    if not isinstance(meter, Mapping):
        errors.append(f"{f}: meter: missing [meter] table")
        meter = {}
    for k in meter:
        if k == "value":
            # TOML puts every key after a [meter] header into the meter table.
            errors.append(
                f"{f}: meter.value: values must be [[value]] tables (a `value = [...]` key after "
                "[meter] belongs to the meter table)"
            )
        elif k not in _METER_KEYS:
            errors.append(f"{f}: meter.{k}: unknown key")

    def text(key: str, required: bool) -> str:
        v = meter.get(key)
        if v is None:
            if required and has_meter:
                errors.append(f"{f}: meter.{key}: missing")
            return ""
        if not isinstance(v, str) or (required and not v.strip()):
            errors.append(f"{f}: meter.{key}: must be a non-empty string")
            return ""
        return v

    model = text("model", True)
    manufacturer = text("manufacturer", True)
    text("description", False)
    reference = text("reference", False)

    default_function = Function.INPUT
    if "function" in meter:
        default_function = _function(meter["function"], f"{f}: meter.function", errors) or Function.INPUT
    default_order = WordOrder.BIG
    if "word_order" in meter:
        default_order = (
            _enum(WordOrder, meter["word_order"], f"{f}: meter.word_order", errors) or WordOrder.BIG
        )

    max_registers = meter.get("max_registers", MAX_READ_REGISTERS)
    if not _is_int(max_registers) or not 1 <= max_registers <= MAX_READ_REGISTERS:
        errors.append(f"{f}: meter.max_registers: must be an integer in 1..{MAX_READ_REGISTERS}")
        max_registers = MAX_READ_REGISTERS

    max_gap: int | None = None
    if "max_gap" in meter:
        if not _is_int(meter["max_gap"]) or meter["max_gap"] < 0:
            errors.append(f"{f}: meter.max_gap: must be an integer >= 0")
        else:
            max_gap = meter["max_gap"]
    if "no_gaps" in meter:
        if not isinstance(meter["no_gaps"], bool):
            errors.append(f"{f}: meter.no_gaps: must be true or false")
        elif meter["no_gaps"]:
            if max_gap not in (None, 0):
                errors.append(f"{f}: meter.no_gaps: contradicts max_gap = {max_gap}")
            max_gap = 0

    aliases: tuple[str, ...] = ()
    if "aliases" in meter:
        a = meter["aliases"]
        if not isinstance(a, list) or not all(isinstance(x, str) and x for x in a):
            errors.append(f"{f}: meter.aliases: must be a list of strings")
        else:
            aliases = tuple(a)

    identify = None
    if "identify" in meter:
        identify = _parse_identify(meter["identify"], f"{f}: meter.identify", errors)

    values = _parse_values(data.get("value"), f, default_function, default_order, max_registers, errors)

    if errors:
        raise RegisterMapError(errors)
    return RegisterMap(
        model=model,
        manufacturer=manufacturer,
        values=tuple(values),
        identify=identify,
        source=source,
        reference=reference,
        max_registers=max_registers,
        max_gap=max_gap,
        aliases=aliases,
    )


def _parse_identify(raw: object, where: str, errors: list[str]) -> Identify | None:
    if not isinstance(raw, Mapping):
        errors.append(f"{where}: must be a table")
        return None
    n = len(errors)
    for k in raw:
        if k not in _IDENTIFY_KEYS:
            errors.append(f"{where}.{k}: unknown key")
    function = _function(raw.get("function", "holding"), f"{where}.function", errors)
    register = raw.get("register")
    if not (_is_int(register) and 0 <= register <= 0xFFFF):
        errors.append(f"{where}.register: must be an integer in 0..65535")
    type_ = _enum(DataType, raw.get("type", "uint16"), f"{where}.type", errors)
    if type_ is not None and type_ not in _INTEGER_TYPES:
        errors.append(f"{where}.type: must be an integer type")
    order = _enum(WordOrder, raw.get("word_order", "big"), f"{where}.word_order", errors)
    values = raw.get("values")
    if not isinstance(values, list) or not values or not all(_is_int(v) for v in values):
        errors.append(f"{where}.values: must be a non-empty list of integers")
    if len(errors) > n or function is None or not isinstance(register, int) or not isinstance(values, list):
        return None
    if register + register_count(type_) > 0x10000:
        errors.append(f"{where}.register: register + width exceeds 65536")
        return None
    return Identify(function, register, type_, tuple(values), order)


def _parse_values(
    raw: object,
    f: str,
    default_function: Function,
    default_order: WordOrder,
    max_registers: int,
    errors: list[str],
) -> list[ValueDef]:
    if not isinstance(raw, list) or not raw:
        errors.append(f"{f}: value: no [[value]] tables")
        return []
    out: list[ValueDef] = []
    seen: list[tuple[int, ValueDef]] = []  # (file index, def) of values that parsed
    names: dict[str, int] = {}
    pairs: dict[tuple[Quantity, Phase | None], int] = {}
    for i, item in enumerate(raw):
        w = f"{f}: value[{i}]"
        if not isinstance(item, Mapping):
            errors.append(f"{w}: must be a table")
            continue
        n = len(errors)
        for k in item:
            if k not in _VALUE_KEYS:
                errors.append(f"{w}.{k}: unknown key")

        quantity = None
        if "quantity" not in item:
            errors.append(f"{w}.quantity: missing (one of: {', '.join(q.value for q in Quantity)})")
        else:
            quantity = _enum(Quantity, item["quantity"], f"{w}.quantity", errors)

        phase = None
        if "phase" in item:
            phase = _enum(Phase, item["phase"], f"{w}.phase", errors)

        unit = UNITS[quantity] if quantity is not None else ""
        if "unit" in item and quantity is not None and item["unit"] != unit:
            errors.append(
                f"{w}.unit: {item['unit']!r}, but {quantity} is reported in {unit!r} "
                "(convert with scale, e.g. Wh -> kWh is scale = 0.001)"
            )

        function = default_function
        if "function" in item:
            function = _function(item["function"], f"{w}.function", errors) or default_function

        type_ = None
        if "type" not in item:
            errors.append(f"{w}.type: missing (one of: {', '.join(t.value for t in DataType)})")
        else:
            type_ = _enum(DataType, item["type"], f"{w}.type", errors)

        order = default_order
        if "word_order" in item:
            order = _enum(WordOrder, item["word_order"], f"{w}.word_order", errors) or default_order

        scale = item.get("scale", 1.0)
        if not _is_number(scale) or not math.isfinite(scale) or scale == 0:
            errors.append(f"{w}.scale: must be a finite, non-zero number")
            scale = 1.0

        valid_range = None
        if "valid_range" in item:
            vr = item["valid_range"]
            if (
                not isinstance(vr, list)
                or len(vr) != 2
                or not all(_is_number(x) and not math.isnan(x) for x in vr)
                or vr[0] > vr[1]
            ):
                errors.append(f"{w}.valid_range: must be [low, high] with low <= high")
            else:
                valid_range = (float(vr[0]), float(vr[1]))

        register = item.get("register")
        if register is None:
            errors.append(f"{w}.register: missing")
        elif not _is_int(register) or register < 0:
            errors.append(f"{w}.register: must be an integer >= 0 (0-based protocol address)")
            register = None
        elif register > 0xFFFF:
            errors.append(f"{w}.register: {register} exceeds 65535")
            register = None
        elif type_ is not None and register + register_count(type_) > 0x10000:
            errors.append(
                f"{w}.register: {register} + {register_count(type_)} registers of {type_} exceeds 65536"
            )
            register = None

        name = item.get("name")
        if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
            errors.append(f"{w}.name: must match [a-z][a-z0-9_]*")
            name = None
        if name is None and quantity is not None:
            name = quantity.value if phase is None else f"{quantity.value}_{phase.value.lower()}"

        if len(errors) > n or quantity is None or type_ is None or register is None or name is None:
            continue

        key = (quantity, phase)
        if key in pairs:
            errors.append(f"{w}: {quantity} {phase or '(no phase)'} is already value[{pairs[key]}]")
            continue
        if name in names:
            errors.append(f"{w}.name: {name!r} is already value[{names[name]}]")
            continue
        vdef = ValueDef(name, quantity, phase, unit, register, function, type_, order, scale, valid_range)
        if vdef.count > max_registers:
            errors.append(f"{w}.type: {type_} needs {vdef.count} registers, max_registers is {max_registers}")
            continue
        clash = next(
            (
                (j, o)
                for j, o in seen
                if o.function == function and o.register < vdef.end and vdef.register < o.end
            ),
            None,
        )
        if clash is not None:
            j, o = clash
            errors.append(
                f"{w}.register: overlaps value[{j}] ({o.name}, registers {o.register}..{o.end - 1})"
            )
            continue
        names[name] = i
        pairs[key] = i
        seen.append((i, vdef))
        out.append(vdef)
    return out
