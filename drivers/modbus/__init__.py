"""Modbus RTU energy meters: register maps as data, a read planner, decoding, typed readings.

Everything here except :mod:`drivers.modbus.meter` (and the bus beside it) is sans-I/O: pure
functions and frozen values that never sleep, read a clock or touch a port, so the live sampler,
the RTU simulator, ``omgw probe modbus`` and the bus benchmark all share one core.

- :mod:`~drivers.modbus.errors`: the exceptions a bus raises, each carrying port, unit, function,
  address and count.
- :mod:`~drivers.modbus.regmap`: loads and validates the per-model register maps in ``maps/*.toml``
  (or any user-supplied TOML file) into frozen :class:`~drivers.modbus.regmap.RegisterMap` values.
- :mod:`~drivers.modbus.codec`: register words <-> numbers (types, word order, scale), the Modbus
  RTU CRC-16 and RTU frame sizes.
- :mod:`~drivers.modbus.plan`: coalesces a meter's values into the fewest read requests and
  computes the theoretical bus time of a plan.
- :mod:`~drivers.modbus.reading`: :class:`~drivers.modbus.reading.MeterReading` with per-value
  quality, built purely from a plan and the registers (or errors) each request returned.
- :mod:`~drivers.modbus.meter`: the thin async shell that runs a plan on a bus.

See ``docs/drivers-modbus.md`` for the map format, the planner arithmetic and the qualities.
"""
