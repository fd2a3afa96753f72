"""Simulated devices: one more backend beside the real ones (gpiozero's ``mock`` pin factory idea).

Each simulator implements the backend a driver is given, at the wire level, so the driver code
path that runs on the gateway runs unchanged in CI and in the demo:

- :mod:`drivers.sim.i2c`: ``SimulatedSMBus``, byte-level SHT3x, SHT4x and BME280 models behind the
  smbus2 calls the I2C drivers use.
- :mod:`drivers.sim.i2c_server`: that bus served on a Unix socket (``I2cSimServer``) and the client
  the gateway opens for ``bus = "sim:/path.sock"`` (``RemoteSMBus``), so a bench process owns the
  chips and injects faults into a separate ``omgw health`` process.
- :mod:`drivers.sim.gpio`: the relay output looped back to an input on gpiozero's ``MockFactory``.
- :mod:`drivers.sim.modbus_meter`: energy meters as Modbus RTU slaves on a pseudo-terminal pair
  (socat), or behind a Modbus TCP gateway, with run-time fault injection.
"""

__all__ = ["SimulationRefused"]


class SimulationRefused(RuntimeError):
    """A simulation hook was asked for where it must not act (a real pin factory, a bad setting).

    Defined here, without importing any simulator, so that the CLI can catch it cheaply."""
