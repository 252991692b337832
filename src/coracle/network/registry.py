"""The network drivers a daemon offers, by Docker's driver name."""

from __future__ import annotations

from collections.abc import Iterable

from coracle.errors import InvalidParameter
from coracle.network.driver import NetworkDriver

__all__ = ["DriverRegistry"]


class DriverRegistry:
    """Drivers by name; `network create -d NAME` and every endpoint go through `get`."""

    def __init__(self, drivers: Iterable[NetworkDriver] = ()) -> None:
        self._drivers: dict[str, NetworkDriver] = {}
        for driver in drivers:
            self.register(driver)

    def register(self, driver: NetworkDriver) -> None:
        self._drivers[driver.name] = driver

    def __contains__(self, name: object) -> bool:
        return name in self._drivers

    def get(self, name: str) -> NetworkDriver:
        try:
            return self._drivers[name]
        except KeyError:
            offered = ", ".join(sorted(self._drivers))
            raise InvalidParameter(f"network driver {name!r} is not supported ({offered} are)") from None

    def all(self) -> list[NetworkDriver]:
        return list(self._drivers.values())
