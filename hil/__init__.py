"""The hardware-in-the-loop suite: the same tests on a simulated bench and on the lab bench (docs/hil.md)."""
