"""The Deployment and the Dockerfile agree with what ``streamguard run`` really does.

No cluster or container engine is available here, so these check the files against
the code: the arguments parse with the real CLI, the probe paths are served by the real
health server, and the grace period covers the real shutdown timeouts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from packaging.requirements import Requirement
from prometheus_client import CollectorRegistry

import streamguard as sg
from streamguard.cli import build_parser
from streamguard.observe.health import HealthServer
from streamguard.settings import BOOTSTRAP_ENV, kafka_config_from_args
from tests.deploy.conftest import ROOT

DEPLOYMENT = (ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text()
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()


def scalar(key: str) -> str:
    """The value of the only ``key: value`` line in deployment.yaml."""
    pattern = rf"^\s*{re.escape(key)}:\s*\"?([^\"#\n]+?)\"?\s*(?:#.*)?$"
    values = re.findall(pattern, DEPLOYMENT, re.M)
    assert len(values) == 1, f"{key}: {values}"
    return str(values[0])


def container_args() -> list[str]:
    """The container's ``args:`` list, comments removed."""
    block = DEPLOYMENT.split("args:\n", 1)[1]
    args = []
    for line in block.splitlines():
        match = re.match(r"\s+- (\S+)", line)
        if not match:
            break
        args.append(match.group(1))
    return args


def probe_path(probe: str) -> str:
    match = re.search(rf"{probe}:\n\s+httpGet:\n\s+path: (\S+)\n\s+port: metrics", DEPLOYMENT)
    assert match, f"{probe} is not an httpGet on the metrics port"
    return match.group(1)


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    """A real health server on a free loopback port, reporting a service not yet ready."""
    report: dict[str, Any] = {
        "ready": False,
        "checks": {"running": True, "assigned": False, "polling": True, "dlq_writable": True},
    }
    server = HealthServer(CollectorRegistry(), lambda: report, port=0)
    server.start()
    yield server
    server.stop()


def get(server: HealthServer, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_container_args_parse_with_the_real_cli() -> None:
    """The Deployment's args are accepted by `streamguard run` and expose the metrics port."""
    args = build_parser().parse_args(["run", *container_args()])
    assert args.metrics_host == "0.0.0.0"
    assert args.metrics_port == int(scalar("containerPort"))
    assert args.metrics_port == int(scalar("prometheus.io/port"))
    assert all("=" in item for item in args.kafka_config)


def test_no_secret_reaches_the_container_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials from the Secret reach librdkafka through the environment by name:
    no ``$(VAR)`` of a Secret is expanded into the args (a command line every process
    on the node can read), and the args still give the consumer the password."""
    secret_vars = re.findall(r"- name: (\w+)\n\s+valueFrom:\n\s+secretKeyRef:", DEPLOYMENT, re.M)
    assert "KAFKA_PASSWORD" in secret_vars
    args = container_args()
    for variable in secret_vars:
        assert not any(f"$({variable})" in arg for arg in args), variable
        monkeypatch.setenv(variable, f"zq{variable}qz")
    parsed = build_parser().parse_args(["run", *args])
    config = kafka_config_from_args(parsed.kafka_config, parsed.kafka_config_env)
    assert config["sasl.password"] == "zqKAFKA_PASSWORDqz"


def test_probes_hit_the_endpoints_the_health_server_serves(health_server: HealthServer) -> None:
    """Liveness is /healthz (200 while alive); readiness is /readyz (503 with the checks)."""
    assert probe_path("livenessProbe") == "/healthz"
    assert probe_path("readinessProbe") == "/readyz"
    status, _ = get(health_server, probe_path("livenessProbe"))
    assert status == 200
    status, body = get(health_server, probe_path("readinessProbe"))
    assert status == 503
    assert json.loads(body)["checks"]["assigned"] is False


def test_grace_period_outlasts_the_shutdown() -> None:
    """terminationGracePeriodSeconds covers a revoke that the SIGTERM lands in, then two
    shutdown timeouts (handlers, DLQ acknowledgements), and the commit and close."""
    grace = int(scalar("terminationGracePeriodSeconds"))
    options = sg.ServiceOptions()
    assert grace >= options.revoke_timeout + 2 * options.shutdown_timeout + 10


def test_bootstrap_servers_come_from_the_environment_variable_the_runtime_reads() -> None:
    """The Deployment sets STREAMGUARD_BOOTSTRAP_SERVERS, the variable settings.py reads."""
    assert re.search(rf"- name: {BOOTSTRAP_ENV}\n\s+value: \S+", DEPLOYMENT)


def test_dockerfile_runs_streamguard_as_a_non_root_user() -> None:
    """The image is python:3.12-slim, runs as a numeric non-root user, enters `streamguard run`."""
    assert re.search(r"^FROM python:3\.12-slim$", DOCKERFILE, re.M)
    user = re.findall(r"^USER (\d+)(?::\d+)?$", DOCKERFILE, re.M)
    assert user, "the Dockerfile sets no numeric USER"
    assert int(user[-1]) != 0
    assert scalar("runAsUser") == user[-1]
    assert '\nENTRYPOINT ["streamguard", "run"]\n' in DOCKERFILE


def test_the_runbooks_readyz_command_prints_the_failing_checks(
    health_server: HealthServer,
) -> None:
    """docs/operations.md's in-pod command (the image has Python, not curl) prints the
    /readyz body of a pod that is not ready, which is when the runbook runs it: a
    urlopen() raised HTTPError on the 503 and printed a traceback instead."""
    runbook = (ROOT / "docs" / "operations.md").read_text()
    commands = re.findall(r'^kubectl exec <pod> -- python -c "(.+)"$', runbook, re.M)
    assert commands, "docs/operations.md has no in-pod /readyz command"
    for code in commands:
        assert "9102" in code
        local = code.replace("9102", str(health_server.port))
        result = subprocess.run(
            [sys.executable, "-c", local], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("503 "), result.stdout
        assert json.loads(result.stdout[4:])["checks"]["assigned"] is False


def test_the_image_guide_depends_on_streamguard_by_a_direct_reference() -> None:
    """deploy/README.md's pyproject.toml for a service names this project's wheel by
    URL, with hatchling allowed to take it: streamguard is not on PyPI, where a bare
    ``streamguard`` requirement resolves to an unrelated project."""
    guide = (ROOT / "deploy" / "README.md").read_text()
    section = guide.split("## 5. Image", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "section 5 shows no pyproject.toml"
    example = tomllib.loads(blocks[0])
    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = [Requirement(d) for d in example["project"]["dependencies"]]
    assert requirement.name == ours["name"]
    assert requirement.url is not None, "a bare requirement would be looked up on PyPI"
    wheel = f"{ours['name']}-{ours['version']}-py3-none-any.whl"
    assert requirement.url.endswith(f"/wheels/{wheel}")
    assert requirement.url.startswith("file:///app/")  # where the Dockerfile copies it
    assert "\nWORKDIR /app\n" in DOCKERFILE
    assert example["tool"]["hatch"]["metadata"]["allow-direct-references"] is True
