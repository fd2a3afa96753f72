"""Hardware drivers: they know hardware and nothing else (no MQTT, no OCPP, no config files)."""
