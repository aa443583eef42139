"""Reading a dead-letter topic up to where it ended when the tool started.

Both ``inspect`` and ``replay`` read a DLQ with ``assign()`` and explicit offsets, never
``subscribe()``: a tool must not join a consumer group (that would trigger rebalances of
nothing, and on some setups steal partitions from a real consumer), and it must never
commit unless the caller asks it to. ``replay`` commits its progress explicitly under
its own group id through ``commit()``; ``inspect`` never does.

Where the end is. The end of each partition is fixed once, before the first record is
read, and nothing at or past it is ever processed, so a DLQ that keeps being written
cannot make a run endless:

1. ``ListOffsets`` (``get_watermark_offsets(cached=False)``) gives the high watermark. On
   Apache Kafka this is the true end.
2. Some Kafka-compatible brokers (Tansu, our local broker; see docs/local-broker.md, item 1) answer
   ``ListOffsets`` with the last *batch's* base offset + 1 after a batched produce,
   which is too low. Fetch responses carry the true high watermark on every broker, so
   a probe fetches once from that offset and reads the watermark the fetch brought
   back. The end is the larger of the two. On Apache Kafka the probe agrees with step 1
   (up to records written during the few milliseconds the probe takes).
3. While reading, partition EOF (``enable.partition.eof``) also ends a partition: on
   Apache Kafka, transaction markers occupy the last offsets of a transactional DLQ, so
   the record at ``end - 1`` may never be delivered. And if nothing at all arrives for
   ``idle_timeout`` seconds, the read stops and says so (``stopped_idle``), rather than
   hang on a broker that went away.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streamguard import headers as h
from streamguard.deadletter import DeadLetter
from streamguard.errors import BrokerUnavailable, ConfigurationError
from streamguard.settings import BOOTSTRAP_ENV, client_config

# Settings that make the reader a passive reader. ``group.id`` is required by the
# client even for assign(); it is only used for explicit commits (replay).
READER_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
    "auto.offset.reset": "earliest",
    # A DLQ record can be as large as the largest record of any topic it serves.
    "fetch.max.bytes": 104_857_600,
    "max.partition.fetch.bytes": 104_857_600,
}
METADATA_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """The offsets of one DLQ partition this run reads: ``start`` up to, not incl., ``end``."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


@dataclass(frozen=True, slots=True)
class DlqRecord:
    """One record read from the DLQ, with the broker timestamp of the DLQ record itself."""

    letter: DeadLetter
    timestamp_ms: int


def existing_topics(
    admin: AdminClient, timeout: float = METADATA_TIMEOUT, servers: str = "the cluster"
) -> dict[str, int]:
    """Every topic of the cluster and its partition count.

    Asks for *all* topics: asking for one by name creates it on brokers with topic
    auto-creation, and a tool that checks whether a topic exists must not create it.
    """
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        # The first thing a dlq command asks: say where, how long, and what to check.
        error = exc.args[0] if exc.args else None
        why = error.str() if isinstance(error, KafkaError) else str(exc)
        raise BrokerUnavailable(
            f"could not reach Kafka at {servers} within {timeout:g}s ({why}); "
            f"check --bootstrap-servers (or ${BOOTSTRAP_ENV}), the network and the security "
            "settings (-X)"
        ) from exc
    finally:
        # Nothing else serves an admin client: its log lines (a ``logger`` setting,
        # see streamguard.observe.librdkafka_logs) are handed over here or never.
        admin.poll(0)
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


class DlqReader:
    """A group-less reader of one DLQ topic.

    Args:
        bootstrap_servers: the cluster; else ``kafka_config`` or the environment.
        topic: the dead-letter topic. It must exist; the reader never creates it.
        group_id: used only for ``committed()`` and ``commit()``; the reader never joins.
        kafka_config: librdkafka settings passed through (TLS, SASL, ...).
        idle_timeout: seconds without any record or event after which reading stops.
    """

    def __init__(
        self,
        bootstrap_servers: str | None,
        topic: str,
        *,
        group_id: str,
        kafka_config: Mapping[str, Any] | None = None,
        idle_timeout: float = 10.0,
    ) -> None:
        self.topic = topic
        self.group_id = group_id
        self.idle_timeout = idle_timeout
        self.stopped_idle = False
        self.client_config = client_config(bootstrap_servers, kafka_config, {})
        self.admin = AdminClient(self.client_config)
        self._config = {**READER_DEFAULTS, **self.client_config, "group.id": group_id}
        servers = self.client_config["bootstrap.servers"]
        partitions = existing_topics(self.admin, servers=servers).get(topic)
        if partitions is None:
            raise ConfigurationError(
                f"topic {topic!r} does not exist on {servers}: "
                "check the name (the dlq commands read a dead-letter topic, such as "
                "'orders.dlq')"
            )
        self.partitions = list(range(partitions))
        self._consumer = Consumer(self._config)

    def close(self) -> None:
        """Leave nothing behind: the reader has no group membership to give up."""
        self.admin.poll(0)  # its last log lines, if any (see existing_topics)
        self._consumer.close()

    def __enter__(self) -> DlqReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def committed(self) -> dict[int, int | None]:
        """The offset committed under ``group_id`` for each partition, None where none is."""
        tps = [TopicPartition(self.topic, p) for p in self.partitions]
        try:
            found = self._consumer.committed(tps, timeout=METADATA_TIMEOUT)
        except KafkaException as exc:
            raise BrokerUnavailable(f"could not read committed offsets: {exc}") from exc
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit ``{partition: next offset to read}`` synchronously under ``group_id``."""
        if not offsets:
            return
        tps = [TopicPartition(self.topic, p, o) for p, o in sorted(offsets.items())]
        self._consumer.commit(offsets=tps, asynchronous=False)

    def plan(self, start: Mapping[int, int | None] | None = None) -> list[PartitionRange]:
        """Fix each partition's range for this run: from ``start`` (else the log start)
        to the end as it is now (see the module docstring for how the end is found)."""
        low: dict[int, int] = {}
        listed: dict[int, int] = {}
        for p in self.partitions:
            try:
                lo, hi = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=METADATA_TIMEOUT, cached=False
                )
            except KafkaException as exc:
                raise BrokerUnavailable(f"could not read offsets of {self.topic}: {exc}") from exc
            low[p], listed[p] = lo, hi
        fetched = self._probe_high_watermarks(listed)
        ranges = []
        for p in self.partitions:
            begin = (start or {}).get(p)
            first = low[p] if begin is None else max(begin, low[p])
            ranges.append(PartitionRange(p, first, max(listed[p], fetched.get(p, -1))))
        return ranges

    def _probe_high_watermarks(self, listed: Mapping[int, int]) -> dict[int, int]:
        """The high watermark each partition's first fetch from ``listed`` brings back."""
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in listed.items()])
        pending = set(listed)
        found: dict[int, int] = {}
        deadline = time.monotonic() + self.idle_timeout
        try:
            while pending and time.monotonic() < deadline:
                for msg in self._consumer.consume(num_messages=1000, timeout=0.2):
                    err = msg.error()
                    if err is not None and err.fatal():
                        raise BrokerUnavailable(f"probing {self.topic}: {err.str()}")
                    partition = msg.partition()
                    if partition is None or partition not in pending:
                        continue
                    if err is not None and err.code() != KafkaError._PARTITION_EOF:
                        continue
                    _, high = self._consumer.get_watermark_offsets(
                        TopicPartition(self.topic, partition), cached=True
                    )
                    if high >= 0:
                        found[partition] = high
                        pending.discard(partition)
        finally:
            self._consumer.unassign()
        return found

    def read(self, ranges: list[PartitionRange]) -> Iterator[DlqRecord]:
        """Yield each record of ``ranges`` in offset order per partition, then stop."""
        todo = {r.partition: r for r in ranges if r.size > 0}
        if not todo:
            return
        self._consumer.assign([TopicPartition(self.topic, p, r.start) for p, r in todo.items()])
        last_event = time.monotonic()
        try:
            while todo:
                batch = self._consumer.consume(num_messages=500, timeout=0.2)
                if not batch:
                    if time.monotonic() - last_event > self.idle_timeout:
                        self.stopped_idle = True
                        return
                    continue
                for msg in batch:
                    err = msg.error()
                    if err is not None and err.fatal():
                        raise BrokerUnavailable(f"reading {self.topic}: {err.str()}")
                    partition, offset = msg.partition(), msg.offset()
                    limit = todo.get(-1 if partition is None else partition)
                    if partition is None or limit is None:
                        continue  # not about a partition we still read (or prefetched past it)
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            del todo[partition]
                        continue  # other errors are retried by the client itself
                    if offset is None or offset >= limit.end:
                        del todo[partition]
                        continue
                    if offset == limit.end - 1:
                        del todo[partition]
                    yield DlqRecord(_letter(msg, self.topic), msg.timestamp()[1])
                # Idle from here: the caller's work on the batch (a --rate wait, a
                # revalidation) is no silence of the cluster.
                last_event = time.monotonic()
        finally:
            self._consumer.unassign()


def _letter(msg: Any, topic: str) -> DeadLetter:
    return DeadLetter.from_record(
        topic=topic,
        partition=msg.partition(),
        offset=msg.offset(),
        key=msg.key(),
        value=msg.value(),
        headers=h.read(msg),
    )
