"""Health channel: sampler, state of health, transports (MQTT/HTTPS with a disk spool) and commands."""
