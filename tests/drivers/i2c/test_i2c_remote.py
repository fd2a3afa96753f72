"""The simulated I2C bus across a Unix socket: drivers, faults, clients coming and going, the codec."""

from __future__ import annotations

import errno
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.i2c import Bme280, I2cBus, I2cDeviceMissing, Quality, Sht3x, Sht4x
from drivers.i2c.probe import probe_i2c
from drivers.sim.i2c import ManualClock, SimulatedBme280, SimulatedSht3x, SimulatedSht4x, SimulatedSMBus
from drivers.sim.i2c_server import (
    I2cSimServer,
    RemoteSMBus,
    WireRequest,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    serve_request,
)

SHT_T_LSB = 175 / 65535


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="i2c") as d:  # short: a socket path is at most 107 bytes
        yield Path(d) / "bus.sock"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def chips(clock: ManualClock) -> dict[int, object]:
    return {
        0x44: SimulatedSht3x(temperature_c=24.5, humidity_rh=38.0, clock=clock.monotonic),
        0x45: SimulatedSht4x(temperature_c=-12.0, humidity_rh=81.0, clock=clock.monotonic),
        0x76: SimulatedBme280(temperature_c=31.0, humidity_rh=55.0, pressure_hpa=987.0, clock=clock.monotonic),
    }


@pytest.fixture
def served(chips: dict[int, object], sock_path: Path) -> Iterator[tuple[SimulatedSMBus, I2cSimServer]]:
    sim = SimulatedSMBus(chips)  # type: ignore[arg-type]
    with I2cSimServer(sim, sock_path) as server:
        yield sim, server


def remote_bus(path: Path, number: int = 3) -> tuple[RemoteSMBus, I2cBus]:
    smbus = RemoteSMBus(path, bus=number)
    return smbus, I2cBus(lambda: smbus, number)


# --------------------------------------------------------------------------------------------------
# The drivers, unchanged, through the socket


def test_sht3x_sht4x_and_bme280_read_ground_truth_through_the_remote_bus(served, sock_path, clock) -> None:
    _, bus = remote_bus(sock_path)
    opts = {"sleep": clock.sleep, "clock_ns": clock.time_ns}
    sht3x, sht4x, bme = Sht3x(bus, 0x44, **opts).measure(), Sht4x(bus, 0x45, **opts).measure(), Bme280(bus, **opts).measure()
    assert sht3x.ok and sht4x.ok and bme.ok, (sht3x.detail, sht4x.detail, bme.detail)
    assert sht3x.temperature_c == pytest.approx(24.5, abs=3 * SHT_T_LSB)
    assert sht3x.humidity_rh == pytest.approx(38.0, abs=0.01)
    assert sht4x.temperature_c == pytest.approx(-12.0, abs=3 * SHT_T_LSB)
    assert sht4x.humidity_rh == pytest.approx(81.0, abs=0.01)
    assert bme.temperature_c == pytest.approx(31.0, abs=0.02)
    assert bme.pressure_hpa == pytest.approx(987.0, abs=0.1)
    assert bme.humidity_rh == pytest.approx(55.0, abs=0.05)
    bus.close()


def test_set_climate_on_the_server_side_is_what_the_next_reading_reports(served, sock_path, clock, chips) -> None:
    _, bus = remote_bus(sock_path)
    sensor = Sht3x(bus, 0x44, sleep=clock.sleep, clock_ns=clock.time_ns)
    chips[0x44].set_climate(40.0, 90.0)  # type: ignore[attr-defined]
    reading = sensor.measure()
    assert reading.temperature_c == pytest.approx(40.0, abs=3 * SHT_T_LSB)
    assert reading.humidity_rh == pytest.approx(90.0, abs=0.01)


def test_a_corrupted_crc_is_retried_once_and_two_give_quality_crc(served, sock_path, clock, chips) -> None:
    _, bus = remote_bus(sock_path)
    sensor = Sht3x(bus, 0x44, sleep=clock.sleep, clock_ns=clock.time_ns)
    chip = chips[0x44]
    chip.corrupt_crc(1)  # type: ignore[attr-defined]
    before = chip.measurements  # type: ignore[attr-defined]
    assert sensor.measure().quality is Quality.OK  # the retry read clean data
    assert chip.measurements == before + 2  # type: ignore[attr-defined]
    chip.corrupt_crc(None)  # type: ignore[attr-defined]
    reading = sensor.measure()
    assert reading.quality is Quality.CRC and "after 1 retry" in reading.detail
    assert reading.temperature_c is None


def test_a_detached_sensor_is_missing_naming_bus_and_address(served, sock_path, clock) -> None:
    sim, _ = served
    _, bus = remote_bus(sock_path, number=3)
    sensor = Sht3x(bus, 0x44, sleep=clock.sleep, clock_ns=clock.time_ns)
    assert sensor.measure().ok
    sim.detach(0x44)
    with pytest.raises(I2cDeviceMissing) as exc:
        sensor.measure()
    assert "bus 3 address 0x44" in str(exc.value)
    assert (exc.value.bus, exc.value.address) == (3, 0x44)


def test_a_nack_arrives_as_errno_121_like_the_kernel_driver(served, sock_path) -> None:
    smbus, _ = remote_bus(sock_path)
    with pytest.raises(OSError) as exc:
        smbus.read_byte(0x50)  # nothing there
    assert exc.value.errno == errno.EREMOTEIO
    assert smbus.read_byte_data(0x76, 0xD0) == 0x60  # and the connection is still good


def test_the_probe_finds_the_same_chips_remotely_as_locally(served, sock_path, clock) -> None:
    sim, _ = served
    smbus, _ = remote_bus(sock_path)
    remote = probe_i2c(smbus, sleep=clock.sleep)
    local = probe_i2c(sim, sleep=clock.sleep)
    assert [(r.address, r.chip) for r in remote] == [(0x44, "SHT3x"), (0x45, "SHT4x"), (0x76, "BME280")]
    assert [str(r) for r in remote] == [str(r) for r in local]


# --------------------------------------------------------------------------------------------------
# The server going away, clients going away


def test_server_stopped_gives_oserror_and_a_restarted_server_works_again(chips, sock_path, clock) -> None:
    sim = SimulatedSMBus(chips)  # type: ignore[arg-type]
    smbus, bus = remote_bus(sock_path)
    sensor = Sht3x(bus, 0x44, sleep=clock.sleep, clock_ns=clock.time_ns)
    server = I2cSimServer(sim, sock_path)  # serving from here on
    assert sensor.measure().ok
    server.close()
    assert not sock_path.exists()
    with pytest.raises(OSError) as exc:
        smbus.read_byte(0x44)
    assert exc.value.errno == errno.ENXIO and str(sock_path) in str(exc.value)
    with pytest.raises(I2cDeviceMissing):  # what the sampler turns into a "missing" reading
        sensor.measure()
    with I2cSimServer(sim, sock_path):
        assert sensor.measure().ok  # reconnected on the first call, no error in between
    with pytest.raises(OSError):
        smbus.read_byte(0x44)
    server.start()  # the same server object serves again
    assert sensor.measure().ok
    server.close()
    bus.close()


def test_a_stale_socket_file_is_replaced_on_start(chips, sock_path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(sock_path))
    stale.close()  # the file stays, nobody listens
    with I2cSimServer(SimulatedSMBus(chips), sock_path):  # type: ignore[arg-type]
        assert RemoteSMBus(sock_path).read_byte_data(0x76, 0xD0) == 0x60


def test_a_client_that_vanishes_holding_the_bus_does_not_break_the_server(served, sock_path) -> None:
    _, server = served
    rogue = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rogue.connect(str(sock_path))
    rogue.send(encode_request(WireRequest(True, 0x76, 1, b"\xd0", stop=False)))  # repeated START follows ...
    assert rogue.recv(16) == b"\x00"
    rogue.close()  # ... but the client is gone
    assert RemoteSMBus(sock_path).read_byte_data(0x76, 0xD0) == 0x60
    assert server.dropped_clients >= 1


def test_a_silent_holder_loses_the_bus_after_the_hold_timeout(chips, sock_path) -> None:
    with I2cSimServer(SimulatedSMBus(chips), sock_path, hold_timeout_s=0.2):  # type: ignore[arg-type]
        holder = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        holder.connect(str(sock_path))
        holder.send(encode_request(WireRequest(True, 0x76, 1, b"\xd0", stop=False)))
        assert holder.recv(16) == b"\x00"
        other = RemoteSMBus(sock_path, timeout_s=2.0)
        assert other.read_byte(0x76) is not None  # served once the hold expired
        holder.close()


def test_garbage_gets_einval_and_the_connection_stays_usable(served, sock_path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(str(sock_path))
    for junk in (b"", b"\x01", b"\x07\x44\x00\x00", b"\x01\x44\x00\x05ab", b"\x02\x44\x00\x01x", b"\x02\xff\x00\x01"):
        if not junk:
            continue
        s.send(junk)
        assert s.recv(16) == bytes([errno.EINVAL])
    s.send(encode_request(WireRequest(False, 0x76, 0)))
    assert s.recv(16) == b"\x00"
    s.close()


def test_transactions_of_two_clients_do_not_interleave(served, sock_path) -> None:
    """read_byte_data is write-register + repeated START + read: with two clients pointing the BME280
    at different registers as fast as they can, each must always read its own register."""
    sim, _ = served
    calib0 = sim.devices[0x76].regs[0x88]  # type: ignore[attr-defined]
    wrong: list[tuple[int, int]] = []

    def hammer(register: int, expected: int) -> None:
        smbus = RemoteSMBus(sock_path, timeout_s=2.0)
        for _ in range(300):
            got = smbus.read_byte_data(0x76, register)
            if got != expected:
                wrong.append((register, got))
        smbus.close()

    threads = [threading.Thread(target=hammer, args=(0xD0, 0x60)), threading.Thread(target=hammer, args=(0x88, calib0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not wrong, wrong[:5]


def test_a_closed_client_refuses_like_smbus(served, sock_path) -> None:
    smbus = RemoteSMBus(sock_path)
    assert smbus.read_byte_data(0x76, 0xD0) == 0x60
    smbus.close()
    with pytest.raises(OSError) as exc:
        smbus.read_byte(0x76)
    assert exc.value.errno == errno.EBADF


def test_a_closed_simulated_bus_answers_ebadf_through_the_server(served, sock_path) -> None:
    sim, _ = served
    sim.close()
    with pytest.raises(OSError) as exc:
        RemoteSMBus(sock_path).read_byte(0x76)
    assert exc.value.errno == errno.EBADF


# --------------------------------------------------------------------------------------------------
# Codec (pure)


@given(
    write=st.booleans(),
    address=st.integers(0, 0x7F),
    data=st.binary(max_size=64),
    length=st.integers(0, 0xFFFF),
    stop=st.booleans(),
)
def test_requests_round_trip(write: bool, address: int, data: bytes, length: int, stop: bool) -> None:
    req = WireRequest(write, address, len(data) if write else length, data if write else b"", stop)
    assert decode_request(encode_request(req)) == req


@given(st.binary(max_size=80))
def test_any_bytes_decode_to_a_request_or_a_value_error(message: bytes) -> None:
    try:
        decode_request(message)
    except ValueError:
        pass


@given(st.binary(max_size=80))
def test_serving_any_bytes_never_raises(message: bytes) -> None:
    sim = SimulatedSMBus({0x76: SimulatedBme280(), 0x44: SimulatedSht3x()})
    reply, _ = serve_request(sim, message)
    assert len(reply) >= 1


def test_replies_carry_data_or_an_errno() -> None:
    read = WireRequest(False, 0x44, 3)
    assert decode_reply(encode_reply(0, b"abc"), read) == b"abc"
    with pytest.raises(OSError) as exc:
        decode_reply(encode_reply(errno.EREMOTEIO), read)
    assert exc.value.errno == errno.EREMOTEIO
    with pytest.raises(OSError) as exc:
        decode_reply(encode_reply(0, b"ab"), read)  # short
    assert exc.value.errno == errno.EPROTO
    with pytest.raises(ValueError):
        encode_request(WireRequest(False, 0x80, 1))
