"""deploy/compose.yaml is a valid stack whose parts point at each other and at real code.

No container engine runs here, so nothing is started: Docker Compose validates the file,
and the rest is checked against the code and the other files it uses: the service's
command parses with the real `streamguard run` parser and names a real service class,
Prometheus scrapes the port that service serves, Grafana loads the dashboard from
Prometheus, and Kafka runs in KRaft mode.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from streamguard.cli import build_parser
from streamguard.runtime.commands import load_service_class
from streamguard.topics import dead_letter_max_message_bytes
from tests.deploy.conftest import PROMETHEUS_DIR, ROOT

DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# repository[:port]/name:X.Y.Z, never "latest" and never untagged.
PINNED_IMAGE = re.compile(r"[a-z0-9./_-]+(?::\d+)?/?[a-z0-9._/-]*:v?\d+\.\d+\.\d+")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def run_args() -> Any:
    """The billing service's command as `streamguard run` parses it."""
    return build_parser().parse_args(["run", *SERVICES["billing"]["command"]])


def env(service: str) -> dict[str, str]:
    """The service's environment (empty if it sets none)."""
    return {key: str(value) for key, value in SERVICES[service].get("environment", {}).items()}


def mounts(service: str) -> dict[str, Path]:
    """Container path -> file or directory of the repository, for each bind mount."""
    result = {}
    for volume in SERVICES[service].get("volumes", ()):
        source, target, *_ = volume.split(":")
        result[target] = (DEPLOY / source).resolve()
    return result


def container_ports(service: str) -> dict[int, int]:
    """Container port -> host port (empty for a service that publishes none)."""
    pairs = (str(port).split(":") for port in SERVICES[service].get("ports", ()))
    return {int(container): int(host) for host, container in pairs}


def listeners(variable: str) -> dict[str, str]:
    """Kafka's NAME://host:port list as {NAME: host:port}."""
    return dict(item.split("://") for item in env("kafka")[variable].split(","))


def test_docker_compose_accepts_the_file(docker_compose: str) -> None:
    """`docker-compose config` validates the file against the Compose schema."""
    result = run(docker_compose, "-f", str(COMPOSE_FILE), "config", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr


def test_stack_has_its_five_parts_and_pinned_images() -> None:
    """Kafka, a schema registry, Prometheus, Grafana and the service, each image pinned to
    a version; the one built image is the Dockerfile's."""
    assert {"kafka", "schema-registry", "prometheus", "grafana", "billing"} <= set(SERVICES)
    for name, service in SERVICES.items():
        assert PINNED_IMAGE.fullmatch(service["image"]) or "build" in service, name
    build = SERVICES["billing"]["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert {".git", ".venv"} <= set(ignored)


def test_dependencies_mounts_and_host_ports_are_consistent() -> None:
    """Every depends_on names a service, every bind mount a file of the repository, and
    no two services publish the same host port."""
    for name, service in SERVICES.items():
        assert set(service.get("depends_on", ())) <= set(SERVICES), name
        for target, source in mounts(name).items():
            assert source.exists(), f"{name} mounts missing {source} at {target}"
    published = [host for name in SERVICES for host in container_ports(name).values()]
    assert len(published) == len(set(published)), published


def test_kafka_runs_in_kraft_mode() -> None:
    """One node is broker and controller with its own quorum, no ZooKeeper; containers use
    the internal listener and the host the published one."""
    kafka = env("kafka")
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{kafka['KAFKA_NODE_ID']}@kafka:9093"
    assert not any("ZOOKEEPER" in key for name in SERVICES for key in env(name))
    assert listeners("KAFKA_ADVERTISED_LISTENERS")["HOST"] == "localhost:9092"
    assert container_ports("kafka")[9092] == 9092
    registry = env("schema-registry")["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"]
    assert registry == f"PLAINTEXT://{listeners('KAFKA_ADVERTISED_LISTENERS')['INTERNAL']}"


def test_service_command_parses_with_the_real_cli_and_names_a_real_service() -> None:
    """The billing command is accepted by `streamguard run`, loads a ConsumerService whose
    topic and DLQ kafka-init creates, reaches Kafka on its internal listener and serves
    its metrics on the published port."""
    args = run_args()
    (target,) = args.target
    service = load_service_class(target)
    init = " ".join(SERVICES["kafka-init"]["command"])
    for topic in (service.topic, service.dead_letter_topic):
        assert f"--topic {topic} " in init, topic
    assert args.bootstrap_servers == listeners("KAFKA_ADVERTISED_LISTENERS")["INTERNAL"]
    assert args.metrics_host == "0.0.0.0"
    assert args.metrics_port in container_ports("billing")
    assert SERVICES["billing"]["depends_on"]["kafka-init"] == {
        "condition": "service_completed_successfully"
    }


# Apache Kafka's max.message.bytes when a topic sets none: 1 MiB plus the record batch's
# 12-byte log overhead (KAFKA-4203), what the broker describes for the source topic.
APACHE_KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024 + 12


def test_the_dlq_of_kafka_init_and_the_readme_is_as_large_as_the_service_needs() -> None:
    """kafka-init and deploy/README.md created the DLQ with 1148576 (1 MiB + 100000), 12
    bytes below what the service needs for a source at Apache Kafka's default, so the
    stack's own service warned at every start that its DLQ was too small."""
    needed = dead_letter_max_message_bytes(APACHE_KAFKA_DEFAULT_MAX_MESSAGE_BYTES, {})
    init = " ".join(SERVICES["kafka-init"]["command"])
    dlq = init[
        init.index(f"--topic {load_service_class(run_args().target[0]).dead_letter_topic} ") :
    ]
    (composed,) = re.findall(r"--config max\.message\.bytes=(\d+)", dlq)
    readme = re.findall(r"max\.message\.bytes=(\d+)", (DEPLOY / "README.md").read_text())
    assert int(composed) >= needed
    assert [int(size) for size in readme] == [int(composed)]


def test_prometheus_scrapes_the_service_and_loads_the_alerts(promtool: str) -> None:
    """Prometheus's config is valid with alerts.yml beside it and scrapes the billing
    service's metrics port with the labels the dashboard filters on."""
    volumes = mounts("prometheus")
    config_path = volumes["/etc/prometheus/prometheus.yml"]
    assert volumes["/etc/prometheus/alerts.yml"] == PROMETHEUS_DIR / "alerts.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]
    result = run(promtool, "check", "config", str(config_path))
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = yaml.safe_load(config_path.read_text())["scrape_configs"]
    assert job["job_name"].startswith("streamguard")
    (static,) = job["static_configs"]
    assert static["targets"] == [f"billing:{run_args().metrics_port}"]
    assert static["labels"] == {"service": "billing"}


def test_grafana_provisions_the_dashboard_on_the_stacks_prometheus() -> None:
    """Grafana's provisioning loads streamguard.json from where it is mounted and adds the
    stack's Prometheus as the default datasource the dashboard's variable picks."""
    volumes = mounts("grafana")
    provisioning = volumes["/etc/grafana/provisioning"]
    dashboard_target = next(t for t, s in volumes.items() if s.name == "streamguard.json")
    assert volumes[dashboard_target] == DEPLOY / "grafana" / "streamguard.json"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "streamguard.yaml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    assert str(Path(dashboard_target).parent) == provider["options"]["path"]
    assert env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_target
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    dashboard = json.loads(volumes[dashboard_target].read_text())
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert source["type"] == variable["query"] == "prometheus"
    assert source["isDefault"] is True
    assert source["url"] == f"http://prometheus:{next(iter(container_ports('prometheus')))}"
