"""The runner's own lines, without a broker."""

from __future__ import annotations

import logging

import pytest

from streamguard.runtime.runner import _close_consumer


class _Closed:
    """A consumer whose close() fails as confluent-kafka's does once closed."""

    def close(self) -> None:
        raise RuntimeError("Consumer closed")


def test_a_failed_close_names_the_service_and_topic(caplog: pytest.LogCaptureFixture) -> None:
    """A process may run several services: the line says whose consumer it was."""
    caplog.set_level(logging.WARNING, logger="streamguard.runtime")
    _close_consumer(_Closed(), {"service": "billing", "topic": "orders"})  # type: ignore[arg-type]
    (line,) = [r for r in caplog.records if r.getMessage() == "consumer close failed"]
    assert (line.service, line.topic) == ("billing", "orders")  # type: ignore[attr-defined]
    assert line.error == "Consumer closed"  # type: ignore[attr-defined]
