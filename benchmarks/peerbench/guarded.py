"""streamguard's rows: a ConsumerService per row, metrics on, default options."""

from __future__ import annotations

import json
import os
from typing import Any

import streamguard as sg
from peerbench.dataset import OrderPlacedAvro
from peerbench.kafka import FAST_JOIN, fetch_wait
from peerbench.registry import Run, contender
from streamguard.demo.contracts import OrderPlaced

KAFKA_ENV = "PEERBENCH_SG_KAFKA_CONFIG"
OPTIONS_ENV = "PEERBENCH_SG_OPTIONS"


def serve(
    run: Run,
    model: type[OrderPlaced],
    *,
    asynchronous: bool,
    order: str = "partition",
    schema_registry: dict[str, Any] | None = None,
) -> None:
    """Run a service whose handler reports to the probe, on this (the main) thread."""
    probe = run.probe
    hit = probe.handle
    io_bound = run.work_s > 0

    if asynchronous:

        class Service(sg.ConsumerService):
            topic = run.topic
            group_id = run.group
            contract = model
            ordering = order  # partition order is also the default where this is unknown

            async def handle(self, event: Any, ctx: sg.MessageContext) -> None:
                if io_bound:
                    await probe.ahandle(event)
                else:
                    hit(event)

    else:

        class Service(sg.ConsumerService):  # type: ignore[no-redef]
            topic = run.topic
            group_id = run.group
            contract = model

            def handle(self, event: Any, ctx: sg.MessageContext) -> None:
                hit(event)

    # A metrics port makes it the service as deployed: counters, histograms, /metrics.
    # Profiling knobs (docs/benchmark-notes.md): extra kafka_config and ServiceOptions as JSON.
    config = {**FAST_JOIN, **fetch_wait(run), **json.loads(os.environ.get(KAFKA_ENV, "{}"))}
    options = json.loads(os.environ.get(OPTIONS_ENV, "{}"))
    if options:
        Service.options = sg.ServiceOptions(**options)
    Service(
        bootstrap_servers=run.bootstrap,
        kafka_config=config,
        metrics_port=0,  # a port the OS picks
        schema_registry=schema_registry,
    ).run()


@contender(
    "sg-sync",
    "streamguard, sync handler",
    modes=("throughput", "io", "latency"),
    baseline="loop-untuned",
    keeps_order=True,
    concurrency=3,  # one partition at a time per worker: 3 partitions
)
def sg_sync(run: Run) -> None:
    serve(run, OrderPlaced, asynchronous=False)


@contender(
    "sg-async",
    "streamguard, async handler",
    modes=("throughput", "io", "latency"),
    baseline="loop-untuned",
    keeps_order=True,
    concurrency=3,
)
def sg_async(run: Run) -> None:
    serve(run, OrderPlaced, asynchronous=True)


@contender(
    "sg-avro",
    "streamguard, Avro single-object",
    data="avro",
    baseline="fastavro-loop",
)
def sg_avro(run: Run) -> None:
    serve(run, OrderPlacedAvro, asynchronous=False)


@contender(
    "sg-avro-registry",
    "streamguard, Avro in Confluent framing (schema registry)",
    data="avro-registry",
    baseline="fastavro-registry-loop",
)
def sg_avro_registry(run: Run) -> None:
    serve(run, OrderPlacedAvro, asynchronous=False, schema_registry={"url": run.registry_url})


@contender(
    "sg-dlq",
    "streamguard, 100% invalid input (every record dead-lettered)",
    data="invalid",
    baseline="loop-untuned",
)
def sg_dlq(run: Run) -> None:
    # The handler never runs: count acknowledged dead letters instead.
    from streamguard.runtime.pipeline import Pipeline

    original = Pipeline.dead_lettered
    hit = run.probe.hit

    def dead_lettered(self: Pipeline, msg: Any, failure: Any) -> None:
        original(self, msg, failure)
        hit(None)

    Pipeline.dead_lettered = dead_lettered  # type: ignore[method-assign]
    serve(run, OrderPlaced, asynchronous=False)


# Key-ordered and unordered concurrency (ConsumerService.ordering).
@contender(
    "sg-keyed",
    'streamguard, async handler, ordering = "key"',
    modes=("throughput", "io"),
    baseline="loop-untuned",
    keeps_order=True,
    needs=("streamguard:ConsumerService.ordering",),
    note='io: ordering="key" (ServiceOptions.max_in_flight)',
)
def sg_keyed(run: Run) -> None:
    serve(run, OrderPlaced, asynchronous=True, order="key")


@contender(
    "sg-unordered",
    'streamguard, async handler, ordering = "none"',
    modes=("io",),
    keeps_order=False,
    needs=("streamguard:ConsumerService.ordering",),
    note='io: ordering="none" (ServiceOptions.max_in_flight)',
)
def sg_unordered(run: Run) -> None:
    serve(run, OrderPlaced, asynchronous=True, order="none")
