"""A broker of the test's own behind a fault proxy: every client byte crosses the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from streamguard.devbroker import DevBroker, free_port
from tests.faults.proxy import FaultProxy


@dataclass
class ProxiedBroker:
    """A broker that advertises the proxy's port, and the proxy in front of it."""

    broker: DevBroker
    proxy: FaultProxy

    @property
    def bootstrap(self) -> str:
        return self.proxy.address


@pytest.fixture
def proxied() -> Iterator[ProxiedBroker]:
    """Start a broker advertising a proxy port, then the proxy; stop both at the end."""
    port = free_port()
    broker = DevBroker(advertised_port=port)
    broker.start()
    assert broker.port is not None
    proxy = FaultProxy(broker.port, port)
    try:
        proxy.start()
        yield ProxiedBroker(broker, proxy)
    finally:
        proxy.stop()
        broker.stop()
