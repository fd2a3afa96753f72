"""The black box: the health side's flight recorder.

It keeps the last hours of everything the health process sees (telemetry samples, redacted OCPP
frames from the tap, events, commands) in a bounded ring of append-only, CRC-checked segment files
that survives power loss on an SD card, and cuts fault snapshots out of it.

- :mod:`appliance.blackbox.record`: the on-disk format (pure: bytes in, records out).
- :mod:`appliance.blackbox.store`: :class:`~appliance.blackbox.store.BlackBox`, the ring of segment
  files (batched fdatasync, recovery on open, reads by time range and kind) and ``verify()``.
- :mod:`appliance.blackbox.snapshot`: fault snapshots cut from the store into archives.

See docs/blackbox.md.
"""
