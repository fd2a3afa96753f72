"""Simulated devices: one more backend beside the real ones (gpiozero's ``mock`` pin factory idea).

Each simulator implements the backend a driver is given, at the wire level, so the driver code
path that runs on the gateway runs unchanged in CI and in the demo:

- :mod:`drivers.sim.i2c`: ``SimulatedSMBus``, byte-level SHT3x, SHT4x and BME280 models behind the
  smbus2 calls the I2C drivers use.
- :mod:`drivers.sim.modbus_meter`: energy meters as Modbus RTU slaves on a pseudo-terminal pair
  (socat), or behind a Modbus TCP gateway, with run-time fault injection.
"""
