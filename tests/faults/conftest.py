"""A broker of the test's own behind a fault proxy: every client byte crosses the proxy."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from streamguard.devbroker import DevBroker
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
    """Start the proxy on a free port, then a broker advertising that port behind it;
    stop both at the end.

    The proxy binds first: a port found free and bound only later could be taken in
    between (by another worker's broker, say).
    """
    proxy = FaultProxy(target_port=0).start()
    broker = DevBroker(advertised_port=proxy.port)
    try:
        broker.start()
        assert broker.port is not None
        proxy.target_port = broker.port  # no client has connected yet
        yield ProxiedBroker(broker, proxy)
    finally:
        proxy.stop()
        broker.stop()
