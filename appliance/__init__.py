"""omgw appliance: the value channel, the health channel and the CLI that wires them."""

__version__ = "0.1.0"
