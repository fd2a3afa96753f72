"""Channel A, the value channel: an OCPP-J WebSocket proxy that carries billing traffic unchanged."""
