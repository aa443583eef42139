"""The embedded broker starts, answers Kafka clients, and stops by its own PID."""

from __future__ import annotations

import os

import pytest
from confluent_kafka.admin import AdminClient

from streamguard.devbroker import DevBroker, broker_binary
from streamguard.errors import ConfigurationError


def test_broker_answers_metadata_requests(broker: DevBroker) -> None:
    """The session broker serves metadata to a real Kafka client."""
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    metadata = admin.list_topics(timeout=10)
    assert metadata.brokers, "the broker listed no brokers"


def test_stop_kills_exactly_its_process() -> None:
    """stop() kills the process it started and nothing else."""
    dev = DevBroker()
    dev.start()
    pid = dev.pid
    assert pid is not None
    os.kill(pid, 0)  # alive
    dev.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_taken_port_is_a_clear_error(broker: DevBroker) -> None:
    """Asking for a port that is in use fails with a hint instead of a silent no-op."""
    with pytest.raises(ConfigurationError, match="already in use"):
        DevBroker(port=broker.port).start()


def test_missing_binary_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A binary override that is not executable names the variable to fix."""
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(ConfigurationError, match="CALF_TANSU_BIN"):
        broker_binary()
