"""One Linux I2C adapter shared by several drivers: the SMBus object and the lock that guards it.

Why it exists: every sensor on ``/dev/i2c-1`` goes through one file descriptor, and smbus2 selects
the target address with a separate ``ioctl(I2C_SLAVE)`` before each SMBus call. Two threads using
one ``SMBus`` at once can therefore send a command to the wrong chip. ``I2cBus`` holds a
``threading.Lock`` that every driver takes for each bus transaction (a command, a read, a register
write). The lock is *not* held while a sensor is measuring, so two sensors can measure at once.

Drivers are synchronous (SMBus calls block); their async ``read()`` runs the blocking transaction in
a worker thread (``asyncio.to_thread``), which is why this is a thread lock and not an asyncio lock.

The bus never opens a device node by itself: it calls the injected ``smbus_factory`` once, on
first use. On the gateway that is ``functools.partial(smbus2.SMBus, 1)``; tests and the demo pass a
factory returning ``drivers.sim.i2c.SimulatedSMBus``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, Self

from smbus2 import i2c_msg

__all__ = ["I2cBus", "SMBusLike"]


class SMBusLike(Protocol):
    """The subset of ``smbus2.SMBus`` the drivers and the probe use."""

    def i2c_rdwr(self, *i2c_msgs: i2c_msg) -> None: ...

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int: ...

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None: ...

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int: ...

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None: ...

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]: ...

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None
    ) -> None: ...

    def close(self) -> None: ...


class I2cBus:
    """A shared I2C adapter: ``with bus.transaction() as smbus: smbus.i2c_rdwr(...)``.

    ``number`` is the adapter number (``/dev/i2c-<number>``) and is only used in error messages.
    """

    def __init__(self, smbus_factory: Callable[[], SMBusLike], number: int = 1) -> None:
        self.number = number
        self._factory = smbus_factory
        self._smbus: SMBusLike | None = None
        self._lock = threading.Lock()

    @property
    def lock(self) -> threading.Lock:
        return self._lock

    @contextmanager
    def transaction(self) -> Iterator[SMBusLike]:
        """Hold the bus for one transaction; opens the adapter on first use."""
        with self._lock:
            if self._smbus is None:
                self._smbus = self._factory()
            yield self._smbus

    def close(self) -> None:
        with self._lock:
            if self._smbus is not None:
                self._smbus.close()
                self._smbus = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"I2cBus(number={self.number})"
