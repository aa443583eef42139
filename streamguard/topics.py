"""Topic names and topic creation.

Topic names are checked here rather than left to the broker: some Kafka-compatible
brokers accept names Apache Kafka refuses, and a replay tool reads topic names from
message headers, which are untrusted input.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # public, not in __all__
    AdminClient,
    ConfigResource,
    ResourceType,
)
from confluent_kafka.cimpl import NewTopic

from streamguard.errors import BrokerUnavailable, ConfigurationError

_LEGAL = re.compile(r"[A-Za-z0-9._-]{1,249}")


def is_valid_topic_name(name: str) -> bool:
    """Apache Kafka's rule: 1-249 of ``[A-Za-z0-9._-]``, and not ``.`` or ``..``."""
    return bool(_LEGAL.fullmatch(name)) and name not in (".", "..")


DEAD_LETTER_SUFFIX = ".dlq"
# The largest record any client of ours must be able to write. A dead letter can be a
# record the consumer fetched that was too large to decode (``oversize``), so the DLQ
# and replay producers take what a consumer can receive (librdkafka's
# receive.message.max.bytes is 100 MB); the producer's own 1 MiB default would refuse it.
MAX_RECORD_BYTES = 100 * 1024 * 1024
# What a dead letter adds to its record: the sg-dlq-* headers (error locations capped at
# 8 KiB, an error text at 1000 characters, positions and names), with room to spare.
DEAD_LETTER_HEADROOM = 100_000
# librdkafka's default batch.size: a producer fills a batch up to it, and never splits
# one the broker refuses as too large, so a topic must take a batch of this size.
PRODUCER_BATCH_BYTES = 1_000_000


def dead_letter_max_message_bytes(
    source_limit: int | None, producer_config: Mapping[str, Any]
) -> int:
    """The ``max.message.bytes`` a DLQ needs: its source topic's (when known) plus room
    for the sg-dlq-* headers, and never below a whole batch of the DLQ producer
    (``producer_config``'s ``batch.size``, capped by its ``message.max.bytes``).

    librdkafka batches small dead letters up to batch.size and never splits a batch the
    broker refuses as too large, so a flood of them into a smaller DLQ was refused,
    batch after batch, for good (a source of 100000 made a DLQ of 200000).
    """
    batch = min(
        int(producer_config.get("batch.size", PRODUCER_BATCH_BYTES)),
        int(producer_config.get("message.max.bytes", MAX_RECORD_BYTES)),
    )
    return max(source_limit or 0, batch) + DEAD_LETTER_HEADROOM


def warn_if_dead_letter_topic_small(
    log: logging.Logger,
    names: Mapping[str, Any],
    bootstrap_servers: str,
    size: int | None,
    needed: int,
) -> None:
    """Warn, with the command that raises it, when an existing DLQ takes ``size`` bytes,
    less than the ``needed`` it would have been created with: the first flood of dead
    letters would then stall the consumer. One line for a ``ConsumerService`` and a
    guarded agent alike.

    Not a refusal to start: an operator may know the records to be small. A DLQ whose
    setting could not be read (``size`` None: no ``DescribeConfigs``, no answer) is not
    warned of.

    Args:
        names: the consumer's ``service``, ``topic`` and ``dlq``.
    """
    if size is None or size >= needed:
        return
    log.warning(
        "dead-letter topic smaller than the dead letters it may get",
        extra={
            **names,
            "max_message_bytes": size,
            "needed": needed,
            "command": (
                f"kafka-configs.sh --bootstrap-server {bootstrap_servers} --alter "
                f"--entity-type topics --entity-name {names['dlq']} --add-config "
                f"max.message.bytes={needed}"
            ),
        },
    )


def dead_letter_topic_for(topic: str) -> str:
    """The default dead-letter topic of ``topic``: ``orders`` -> ``orders.dlq``."""
    return topic + DEAD_LETTER_SUFFIX


def check_default_dead_letter_topic(topic: str, owner: str) -> str:
    """``topic``'s default dead-letter topic, or ``ConfigurationError`` if it is illegal.

    A legal source name of 246 to 249 characters makes an illegal default (``.dlq`` adds
    four), which no broker lets anyone create or write to: every dead letter would fail.

    Args:
        owner: the declaration to name in the error.
    """
    default = dead_letter_topic_for(topic)
    if not is_valid_topic_name(default):
        raise ConfigurationError(
            f"{owner}: the default dead-letter topic {topic!r} + '.dlq' is not a valid "
            f"Kafka topic name ({len(default)} characters, at most 249): set "
            "dead_letter_topic to a legal name"
        )
    return default


def is_dead_letter_topic(topic: str) -> bool:
    """True for names that follow the dead-letter naming rule."""
    return topic.endswith(DEAD_LETTER_SUFFIX)


def check_topic_name(name: str) -> str:
    """Return ``name`` if legal, else raise ``ConfigurationError`` saying why."""
    if not is_valid_topic_name(name):
        raise ConfigurationError(
            f"{name!r} is not a valid Kafka topic name: use 1-249 characters from "
            "letters, digits, '.', '_' and '-'"
        )
    return name


def create_topics(
    bootstrap_servers: str,
    names: Iterable[str],
    *,
    partitions: int = 1,
    config: Mapping[str, Any] | None = None,
    timeout: float = 15.0,
    topic_config: Mapping[str, str] | None = None,
) -> None:
    """Create topics, treating "already exists" as success.

    Raises ``BrokerUnavailable`` when the cluster does not answer within ``timeout``
    (exit 1 from the command line, as for every unreachable cluster), and
    ``ConfigurationError`` when it refuses (a bad name or setting, no permission).

    Args:
        config: the admin client's settings (security, a ``logger``) besides the
            bootstrap servers.
        topic_config: the new topics' settings (``max.message.bytes``, ...).
    """
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **(config or {})})
    new = [
        NewTopic(check_topic_name(n), num_partitions=partitions, config=dict(topic_config or {}))
        for n in names
    ]
    if not new:
        return
    try:
        for topic, future in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                future.result(timeout=timeout)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise ConfigurationError(f"could not create topic {topic!r}: {exc}") from exc
            except TimeoutError:  # the cluster did not answer (down, or unreachable from here)
                raise BrokerUnavailable(
                    f"could not create topic {topic!r}: no answer from {bootstrap_servers} "
                    f"within {timeout:g}s"
                ) from None
    finally:
        # Nothing else serves the admin client: the lines it logged to a ``logger``
        # setting (streamguard.observe.librdkafka_logs) are handed over here or never.
        admin.poll(0)


def max_message_bytes(
    bootstrap_servers: str,
    topic: str,
    *,
    config: Mapping[str, Any] | None = None,
    timeout: float = 5.0,
) -> int | None:
    """The ``max.message.bytes`` a topic's description gives, or None when it gives none
    or cannot be read (a principal without ``DescribeConfigs``, an unreachable cluster).

    Apache Kafka describes the value in force, set on the topic or the broker's default.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **(config or {})})
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        described = admin.describe_configs([resource], request_timeout=timeout)[resource]
        entry = described.result(timeout=timeout).get("max.message.bytes")
    except (KafkaException, TimeoutError):
        return None
    finally:
        admin.poll(0)  # its log lines, as in create_topics
    return None if entry is None else message_bytes_value(entry.value)


def message_bytes_value(value: object) -> int | None:
    """A described ``max.message.bytes`` as a number, or None when it is not one."""
    if value is None or not str(value).isdigit():
        return None
    return int(str(value))
