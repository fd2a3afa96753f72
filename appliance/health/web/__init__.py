"""The technician web page, served by the health process (docs/web.md).

``auth`` (login throttling, sessions, CSRF: pure), ``data`` (the JSON documents and the bounded
telemetry history: pure), ``server`` (the asyncio HTTPS shell), ``static/`` (the page itself:
hand-written HTML/CSS/JS, no third-party code, no build step).
"""
