"""The KEDA ScaledObject scales the Deployment's own group and topic, within its partitions.

No cluster runs here, so the manifest is checked against deployment.yaml and the code
it deploys: names and labels, the cluster, the group and topic of the example service,
the security settings, and scaling bounds derived from the runtime's own timeouts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

import streamguard as sg
from streamguard.demo.billing import Billing
from streamguard.runtime.service import CONSUMER_DEFAULTS
from streamguard.settings import BOOTSTRAP_ENV
from tests.deploy.conftest import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
# librdkafka's default session.timeout.ms (streamguard does not change it): how long the
# group waits for a member that vanished before its partitions move.
SESSION_TIMEOUT_S = 45
# librdkafka's sasl.mechanisms as KEDA's Kafka scaler spells them.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


def load(path: Path) -> dict[str, dict[str, Any]]:
    """The YAML documents of ``path`` by kind."""
    return {doc["kind"]: doc for doc in yaml.safe_load_all(path.read_text()) if doc}


DEPLOYMENT = load(KUBERNETES / "deployment.yaml")["Deployment"]
KEDA = load(KUBERNETES / "keda-scaledobject.yaml")
SCALED = KEDA["ScaledObject"]
AUTH = KEDA["TriggerAuthentication"]
CONTAINER = DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]


def trigger() -> dict[str, Any]:
    (only,) = SCALED["spec"]["triggers"]
    assert only["type"] == "kafka"
    return dict(only)


def env(name: str) -> dict[str, Any]:
    (entry,) = [item for item in CONTAINER["env"] if item["name"] == name]
    return dict(entry)


def kafka_config(key: str) -> str:
    """The value the Deployment passes as ``--kafka-config=KEY=VALUE``."""
    values = [
        arg.split("=", 2)[2]
        for arg in CONTAINER["args"]
        if arg.startswith(f"--kafka-config={key}=")
    ]
    assert len(values) == 1, key
    return values[0]


def topic_partitions() -> int:
    """The partition count deploy/README.md creates the topic with."""
    text = (ROOT / "deploy" / "README.md").read_text()
    counts = re.findall(rf"--topic {re.escape(Billing.topic)} --partitions (\d+)", text)
    assert len(counts) == 1, counts
    return int(counts[0])


def test_scaled_object_targets_the_deployment() -> None:
    """scaleTargetRef names the Deployment by apiVersion, kind and name; both objects carry
    the Deployment's labels, so a label selector finds them together."""
    ref = SCALED["spec"]["scaleTargetRef"]
    assert ref == {
        "apiVersion": DEPLOYMENT["apiVersion"],
        "kind": DEPLOYMENT["kind"],
        "name": DEPLOYMENT["metadata"]["name"],
    }
    assert SCALED["apiVersion"] == AUTH["apiVersion"] == "keda.sh/v1alpha1"
    assert SCALED["metadata"]["labels"] == DEPLOYMENT["metadata"]["labels"]
    assert AUTH["metadata"]["labels"] == DEPLOYMENT["metadata"]["labels"]


def test_trigger_reads_the_services_cluster_group_and_topic() -> None:
    """The Kafka trigger watches the cluster the Deployment connects to and the group and
    topic of the service it runs, from the offset the service starts at."""
    meta = trigger()["metadata"]
    assert meta["bootstrapServers"] == env(BOOTSTRAP_ENV)["value"]
    # deployment.yaml deploys the example billing service: its name is the group.
    assert DEPLOYMENT["metadata"]["name"] == Billing.group_id
    assert meta["consumerGroup"] == Billing.group_id
    assert meta["topic"] == Billing.topic
    assert meta["offsetResetPolicy"] == CONSUMER_DEFAULTS["auto.offset.reset"]
    assert float(meta["lagThreshold"]) > 0


def test_trigger_authenticates_like_the_service() -> None:
    """SASL mechanism and TLS match the service's --kafka-config, and the credentials come
    from the same Secret keys the Deployment reads."""
    spec = trigger()
    meta = spec["metadata"]
    assert meta["sasl"] == KEDA_SASL[kafka_config("sasl.mechanisms")]
    assert kafka_config("security.protocol") == "SASL_SSL"
    assert meta["tls"] == "enable"
    assert spec["authenticationRef"]["name"] == AUTH["metadata"]["name"]
    refs = {ref["parameter"]: ref for ref in AUTH["spec"]["secretTargetRef"]}
    for parameter, variable in (("username", "KAFKA_USERNAME"), ("password", "KAFKA_PASSWORD")):
        secret = env(variable)["valueFrom"]["secretKeyRef"]
        assert (refs[parameter]["name"], refs[parameter]["key"]) == (secret["name"], secret["key"])


def test_replica_bounds_stay_within_the_partitions() -> None:
    """1 <= minReplicaCount <= the Deployment's replicas <= maxReplicaCount <= the topic's
    partitions, and the scaler never asks for idle consumers."""
    spec = SCALED["spec"]
    partitions = topic_partitions()
    assert 1 <= spec["minReplicaCount"] <= DEPLOYMENT["spec"]["replicas"]
    assert DEPLOYMENT["spec"]["replicas"] <= spec["maxReplicaCount"] <= partitions
    assert trigger()["metadata"]["allowIdleConsumers"] == "false"


def test_scaling_waits_out_a_rebalance() -> None:
    """Scale-up looks back further than a new member takes to start and join, scale-down
    further still, one replica at a time, so a rebalance's lag bump starts no new one."""
    behavior = SCALED["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    options = sg.ServiceOptions()
    rebalance = options.startup_timeout + options.revoke_timeout + SESSION_TIMEOUT_S
    assert up["stabilizationWindowSeconds"] >= rebalance
    assert up["stabilizationWindowSeconds"] >= SCALED["spec"]["pollingInterval"]
    assert down["stabilizationWindowSeconds"] > up["stabilizationWindowSeconds"]
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    assert DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 1
    for direction in (up, down):
        assert direction["selectPolicy"] == "Min"
        assert all(policy["periodSeconds"] >= rebalance for policy in direction["policies"])
