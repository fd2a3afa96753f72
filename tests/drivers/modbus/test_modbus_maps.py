"""Shipped register maps load and match their sources; the validator names file and value index."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.modbus.codec import DataType, Function, WordOrder, encode_raw
from drivers.modbus.regmap import (
    DEFAULT_RANGES,
    UNITS,
    Phase,
    Quantity,
    RegisterMap,
    RegisterMapError,
    ValueDef,
    available_maps,
    load_map,
    loads_map,
)

SHIPPED = ["abb_b23", "em340", "sdm120", "sdm630"]
THREE_PHASE = ["abb_b23", "em340", "sdm630"]


def test_available_maps_lists_the_shipped_models() -> None:
    assert available_maps() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_map_loads_and_validates(name: str) -> None:
    m = load_map(name)
    assert isinstance(m, RegisterMap)
    assert m.model and m.manufacturer and m.reference
    assert m.source.endswith(f"{name}.toml")
    assert m.identify is not None and m.identify.values
    assert m.values
    for v in m.values:
        assert v.unit == UNITS[v.quantity]
        assert v.count <= m.max_registers
    # Cites its sources in the header, as the file format asks.
    header = Path(m.source).read_text().split("[meter]")[0]
    assert "Sources" in header


@pytest.mark.parametrize("name", THREE_PHASE)
def test_three_phase_maps_have_the_per_phase_vocabulary(name: str) -> None:
    m = load_map(name)
    have = {(v.quantity, v.phase) for v in m.values}
    for q in (
        Quantity.VOLTAGE,
        Quantity.CURRENT,
        Quantity.POWER_ACTIVE,
        Quantity.POWER_REACTIVE,
        Quantity.POWER_APPARENT,
        Quantity.POWER_FACTOR,
        Quantity.ENERGY_IMPORT,
    ):
        for p in (Phase.L1, Phase.L2, Phase.L3):
            assert (q, p) in have, (q, p)
    for q in (Quantity.POWER_ACTIVE, Quantity.ENERGY_IMPORT, Quantity.ENERGY_EXPORT):
        assert (q, Phase.TOTAL) in have
    assert (Quantity.FREQUENCY, None) in have


def test_sdm630_addresses_match_eastron_table() -> None:
    m = load_map("sdm630")
    assert (m.manufacturer, m.model, m.max_registers, m.max_gap) == ("Eastron", "SDM630", 80, None)
    assert all(
        v.type is DataType.FLOAT32 and v.word_order is WordOrder.BIG and v.function is Function.INPUT
        for v in m.values
    )
    reg = {v.name: v.register for v in m.values}
    # Eastron's 3xxxx numbers minus 30001.
    assert reg["voltage_l1"] == 30001 - 30001
    assert reg["current_l3"] == 30011 - 30001
    assert reg["power_factor_l1"] == 30031 - 30001
    assert reg["power_active_total"] == 30053 - 30001
    assert reg["frequency"] == 30071 - 30001
    assert reg["energy_import_total"] == 30073 - 30001
    assert reg["energy_export_total"] == 30075 - 30001
    assert reg["energy_import_l1"] == 0x015A and reg["energy_export_l3"] == 0x0164
    assert m.identify is not None and m.identify.register == 0xFC02 and 112 in m.identify.values


def test_sdm120_is_single_phase() -> None:
    m = load_map("sdm120")
    assert {v.phase for v in m.values} == {Phase.L1, Phase.TOTAL, None}
    assert m.value("power_active_l1").register == 0x000C
    assert m.value("energy_import_total").register == 0x0048


def test_abb_b23_types_scales_and_addresses() -> None:
    m = load_map("abb_b23")
    assert all(v.function is Function.HOLDING and v.word_order is WordOrder.BIG for v in m.values)
    v = m.value("voltage_l1")
    assert (v.register, v.type, v.scale) == (0x5B00, DataType.UINT32, 0.1)
    v = m.value("current_l1")
    assert (v.register, v.type, v.scale) == (0x5B0C, DataType.UINT32, 0.01)
    v = m.value("power_active_total")
    assert (v.register, v.type, v.scale) == (0x5B14, DataType.INT32, 0.01)
    v = m.value("frequency")
    assert (v.register, v.type, v.scale) == (0x5B2C, DataType.UINT16, 0.01)
    v = m.value("power_factor_total")
    assert (v.register, v.type, v.scale) == (0x5B3A, DataType.INT16, 0.001)
    v = m.value("energy_export_l2")
    assert (v.register, v.type, v.scale) == (21616, DataType.UINT64, 0.01)  # 0x5470
    assert m.identify is not None
    assert m.identify.matches(encode_raw("uint32", "big", int.from_bytes(b"B24 ", "big")))
    assert not m.identify.matches(encode_raw("uint32", "big", int.from_bytes(b"A44 ", "big")))


def test_em340_is_little_word_order_with_a_50_register_limit() -> None:
    m = load_map("em340")
    assert m.max_registers == 50
    assert all(v.word_order is WordOrder.LITTLE for v in m.values if v.count > 1)
    assert m.value("energy_export_total").register == 0x004E  # kWh(-) TOT
    assert m.value("energy_import_total").register == 0x0034  # kWh(+) TOT
    assert m.value("frequency").type is DataType.INT16
    assert m.identify is not None and m.identify.register == 0x000B and m.identify.matches([341])
    assert not m.identify.matches([112]) and not m.identify.matches([1, 2])


@pytest.mark.parametrize(
    ("key", "model"),
    [
        ("SDM630", "SDM630"),
        ("sdm120", "SDM120"),
        ("B24", "B23/B24"),
        ("b23/b24", "B23/B24"),
        ("EM341", "EM340"),
    ],
)
def test_load_map_by_name_model_or_alias(key: str, model: str) -> None:
    assert load_map(key).model == model


def test_unknown_map_name_lists_the_shipped_ones() -> None:
    with pytest.raises(RegisterMapError, match=r"sdm999: no such register map \(shipped: .*sdm630"):
        load_map("sdm999")


USER_MAP = """
# A meter the gateway does not ship: one float32 and one scaled int16, holding registers.
[meter]
model = "Acme-1"
manufacturer = "Acme"
function = "holding"
no_gaps = true

[[value]]
quantity = "voltage"
phase = "L1"
register = 100
type = "float32"

[[value]]
quantity = "frequency"
name = "grid_hz"
register = 102
type = "uint16"
scale = 0.01
valid_range = [45, 55]
"""


def test_a_user_defined_map_is_just_a_toml_path(tmp_path: Path) -> None:
    path = tmp_path / "acme.toml"
    path.write_text(USER_MAP)
    for ref in (path, str(path)):
        m = load_map(ref)
        assert (m.model, m.max_gap, m.identify, m.source) == ("Acme-1", 0, None, str(path))
        f = m.value("grid_hz")
        assert (f.function, f.scale, f.valid_range, f.plausible_range) == (
            Function.HOLDING,
            0.01,
            (45.0, 55.0),
            (45.0, 55.0),
        )
        assert m.value("voltage_l1").plausible_range == DEFAULT_RANGES[Quantity.VOLTAGE]


def test_user_map_errors_name_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(USER_MAP.replace('type = "float32"', 'type = "float"'))
    with pytest.raises(RegisterMapError) as e:
        load_map(path)
    assert e.value.errors == [
        f"{path}: value[0].type: 'float' is not one of: float32, int32, uint32, int16, uint16, uint64"
    ]
    with pytest.raises(RegisterMapError, match="cannot read"):
        load_map(tmp_path / "missing.toml")


def errors(text: str) -> list[str]:
    with pytest.raises(RegisterMapError) as e:
        loads_map(text, source="/x/sdm630.toml")
    return e.value.errors


HEAD = '[meter]\nmodel = "M"\nmanufacturer = "X"\n'


def value(
    register: int, quantity: str = "voltage", phase: str = "L1", type_: str = "float32", **extra: str
) -> str:
    lines = [
        f'[[value]]\nquantity = "{quantity}"\nphase = "{phase}"\nregister = {register}\ntype = "{type_}"'
    ]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def test_overlapping_registers_name_both_values() -> None:
    text = HEAD + value(0) + value(2, phase="L2") + value(4, phase="L3") + value(3, "current")
    assert errors(text) == ["sdm630.toml: value[3].register: overlaps value[1] (voltage_l2, registers 2..3)"]


def test_overlap_is_per_function() -> None:
    text = HEAD + value(0) + value(0, "current", function='"holding"')
    m = loads_map(text)
    assert [v.function for v in m.values] == [Function.INPUT, Function.HOLDING]


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        (value(0, type_="float64"), "value[0].type: 'float64' is not one of"),
        (value(0, word_order='"middle"'), "value[0].word_order: 'middle' is not one of: big, little"),
        (value(65535), "value[0].register: 65535 + 2 registers of float32 exceeds 65536"),
        (value(65534, type_="uint64"), "value[0].register: 65534 + 4 registers of uint64 exceeds 65536"),
        (value(70000), "value[0].register: 70000 exceeds 65535"),
        (value(-1), "value[0].register: must be an integer >= 0"),
        (value(0, quantity="temperature"), "value[0].quantity: 'temperature' is not one of"),
        (value(0, phase="L4"), "value[0].phase: 'L4' is not one of: L1, L2, L3, total"),
        (value(0, unit='"kV"'), "value[0].unit: 'kV', but voltage is reported in 'V'"),
        (value(0, scale="0"), "value[0].scale: must be a finite, non-zero number"),
        (value(0, valid_range="[5, 1]"), "value[0].valid_range: must be [low, high] with low <= high"),
        (value(0, sacle="0.1"), "value[0].sacle: unknown key"),
        (value(0, function='"coil"'), "value[0].function: 'coil' is not one of: holding, input"),
        (value(0, name='"Voltage L1"'), "value[0].name: must match [a-z][a-z0-9_]*"),
        ('[[value]]\nquantity = "voltage"\ntype = "int16"\n', "value[0].register: missing"),
        ('[[value]]\nregister = 1\ntype = "int16"\n', "value[0].quantity: missing"),
    ],
)
def test_value_errors_name_file_index_and_key(snippet: str, message: str) -> None:
    errs = errors(HEAD + snippet)
    assert len(errs) == 1
    assert errs[0].startswith("sdm630.toml: " + message), errs


def test_duplicate_names_and_quantity_phase_pairs_are_rejected() -> None:
    assert errors(HEAD + value(0) + value(2)) == ["sdm630.toml: value[1]: voltage L1 is already value[0]"]
    assert errors(HEAD + value(0) + value(2, phase="L2", name='"voltage_l1"')) == [
        "sdm630.toml: value[1].name: 'voltage_l1' is already value[0]"
    ]


@pytest.mark.parametrize(
    ("meter", "message"),
    [
        ('manufacturer = "X"\n', "meter.model: missing"),
        ('model = ""\nmanufacturer = "X"\n', "meter.model: must be a non-empty string"),
        (
            'model = "M"\nmanufacturer = "X"\nmax_registers = 126\n',
            "meter.max_registers: must be an integer in 1..125",
        ),
        ('model = "M"\nmanufacturer = "X"\nmax_gap = -1\n', "meter.max_gap: must be an integer >= 0"),
        (
            'model = "M"\nmanufacturer = "X"\nmax_gap = 4\nno_gaps = true\n',
            "meter.no_gaps: contradicts max_gap = 4",
        ),
        (
            'model = "M"\nmanufacturer = "X"\nword_order = "swapped"\n',
            "meter.word_order: 'swapped' is not one of",
        ),
        ('model = "M"\nmanufacturer = "X"\nbaud = 9600\n', "meter.baud: unknown key"),
        (
            'model = "M"\nmanufacturer = "X"\nidentify = { register = 11, values = [] }\n',
            "meter.identify.values: must be a non-empty list of integers",
        ),
        (
            'model = "M"\nmanufacturer = "X"\nidentify = { register = 11, type = "float32", values = [1] }\n',
            "meter.identify.type: must be an integer type",
        ),
    ],
)
def test_meter_errors(meter: str, message: str) -> None:
    errs = errors("[meter]\n" + meter + value(0))
    assert errs == [f"sdm630.toml: {message}"] or errs[0].startswith(f"sdm630.toml: {message}"), errs


def test_a_value_wider_than_the_device_limit_is_rejected() -> None:
    errs = errors(HEAD + "max_registers = 2\n" + value(0, type_="uint64"))
    assert errs == ["sdm630.toml: value[0].type: uint64 needs 4 registers, max_registers is 2"]


def test_every_error_is_reported_at_once() -> None:
    text = "[meter]\nmodel = 1\n" + value(0, type_="bogus") + value(2, phase="L9")
    assert errors(text) == [
        "sdm630.toml: meter.model: must be a non-empty string",
        "sdm630.toml: meter.manufacturer: missing",
        "sdm630.toml: value[0].type: 'bogus' is not one of: float32, int32, uint32, int16, uint16, uint64",
        "sdm630.toml: value[1].phase: 'L9' is not one of: L1, L2, L3, total",
    ]


def test_values_array_after_the_meter_header_gets_a_helpful_message() -> None:
    text = HEAD + 'value = [{ quantity = "voltage", register = 0, type = "float32" }]\n'
    assert errors(text) == [
        (
            "sdm630.toml: meter.value: values must be [[value]] tables (a `value = [...]` key after "
            "[meter] belongs to the meter table)"
        ),
        "sdm630.toml: value: no [[value]] tables",
    ]


def test_invalid_toml_and_missing_sections() -> None:
    assert errors("[meter\n")[0].startswith("sdm630.toml: not valid TOML:")
    assert errors(value(0)) == ["sdm630.toml: meter: missing [meter] table"]
    assert errors(HEAD) == ["sdm630.toml: value: no [[value]] tables"]
    assert errors(HEAD + value(0) + "[extra]\n") == [
        "sdm630.toml: extra: unknown key (expected [meter] and [[value]])"
    ]


def test_register_values_accept_hex_and_derive_names() -> None:
    m = loads_map(
        HEAD + value(0x10, "power_active", "total") + value(0x12, "frequency").replace('phase = "L1"\n', "")
    )
    assert [(v.name, v.register, v.phase) for v in m.values] == [
        ("power_active_total", 16, Phase.TOTAL),
        ("frequency", 18, None),
    ]


def test_valuedef_coerces_strings_and_checks_bounds() -> None:
    v = ValueDef("v", "voltage", "L1", "V", 0, 4, "int16", "little", 1)
    assert (v.quantity, v.phase, v.function, v.type, v.word_order, v.count, v.end) == (
        Quantity.VOLTAGE,
        Phase.L1,
        Function.INPUT,
        DataType.INT16,
        WordOrder.LITTLE,
        1,
        1,
    )
    with pytest.raises(ValueError):
        ValueDef("v", "voltage", "L1", "V", 65535, 4, "float32")
