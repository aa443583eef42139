"""Fixtures for the deployment assets: the Prometheus tools, and the runtime fixtures.

``promtool`` and ``prometheus`` come from Debian's ``prometheus`` package,
``docker-compose`` from its ``docker-compose`` package. Without them these tests skip
with the install command, unless ``STREAMGUARD_REQUIRE_PROMETHEUS=1`` (set by
``.ci/run``, which installs all three), which turns the skip into a failure so CI
cannot pass by not checking.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamguard.devbroker import free_port
from tests.runtime.conftest import raw_producer, start_service  # noqa: F401  (re-exported fixtures)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
REQUIRE_ENV = "STREAMGUARD_REQUIRE_PROMETHEUS"

# The `service` label is what deploy/prometheus/prometheus.yml (static targets) and
# scrape-kubernetes.yml (from app.kubernetes.io/name) add; the dashboard filters on it.
SERVICE_LABEL = "billing"
SCRAPE_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: streamguard
    static_configs:
      - targets: ["127.0.0.1:{target}"]
        labels:
          service: {service}
"""


def require_tool(name: str, package: str = "prometheus") -> str:
    """The path of ``name``; skip without it, or fail when the environment requires it."""
    path = shutil.which(name)
    if path is not None:
        return path
    reason = f"{name} is not installed; install it with `apt-get install -y {package}`"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def promtool() -> str:
    """The ``promtool`` binary."""
    return require_tool("promtool")


@pytest.fixture
def prometheus_binary() -> str:
    """The ``prometheus`` server binary."""
    return require_tool("prometheus")


@pytest.fixture
def docker_compose() -> str:
    """Docker Compose (Debian's 1.29), which validates a compose file without a daemon."""
    return require_tool("docker-compose", "docker-compose")


class PrometheusServer:
    """A ``prometheus`` process on loopback, queried through its HTTP API."""

    def __init__(self, binary: str, workdir: Path, target_port: int) -> None:
        config = workdir / "prometheus.yml"
        config.write_text(
            SCRAPE_CONFIG.format(
                rules=PROMETHEUS_DIR / "alerts.yml", target=target_port, service=SERVICE_LABEL
            )
        )
        self.log = workdir / "prometheus.log"
        # The port is found free, then bound by Prometheus: another process may take it
        # in between, and Prometheus then exits at once. Try again on another port.
        for _ in range(5):
            self.port = free_port()
            with self.log.open("wb") as out:
                self.process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            deadline = time.monotonic() + 30
            while self.process.poll() is None and time.monotonic() < deadline:
                if self.api("status/buildinfo") is not None:
                    return  # it answers on its port
                time.sleep(0.1)
            if self.process.poll() is None:
                return  # slow to start: the callers wait for its answers anyway
            if "address already in use" not in self.log.read_text(errors="replace"):
                return  # another failure: the callers report it with the log's tail

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response)["data"]
        except OSError:
            return None  # not listening yet

    def query(self, expr: str, label: str) -> dict[str, float]:
        """The instant vector ``expr`` as {value of ``label``: sample value}."""
        data = self.api("query", query=expr)
        if data is None:
            return {}
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in data["result"]}

    def stop(self) -> None:
        """Stop the server by its PID; kill it if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def sees_ready(self) -> bool:
        """Whether Prometheus has scraped the service as ready (``streamguard_ready``)."""
        ready = self.query('streamguard_ready{job="streamguard"}', "service")
        return ready == {SERVICE_LABEL: 1.0}


@pytest.fixture
def prometheus_server(
    prometheus_binary: str, tmp_path: Path
) -> Iterator[Callable[[int], PrometheusServer]]:
    """Start a Prometheus server scraping 127.0.0.1:PORT every second; stopped at the end."""
    started: list[PrometheusServer] = []

    def start(target_port: int) -> PrometheusServer:
        server = PrometheusServer(prometheus_binary, tmp_path, target_port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
