"""The peer frameworks, each validating with the same pydantic model.

Each is set up the way its documentation shows, with its own defaults, except the
group timings (a 2 s session) that only shorten the join, which is not measured.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

from peerbench.events import OrderPlaced
from peerbench.kafka import FAST_JOIN, fetch_wait
from peerbench.registry import Run, contender, import_quietly


def _faststream(run: Run, broker_module: str) -> None:
    import importlib

    from faststream import FastStream

    broker_cls = importlib.import_module(broker_module).KafkaBroker
    broker = broker_cls(run.bootstrap, logger=None)
    probe = run.probe
    hit = probe.handle
    io_bound = run.work_s > 0
    extra: dict[str, Any] = {"max_workers": run.concurrency} if run.concurrency > 1 else {}
    if run.fetch_wait_ms:
        extra["fetch_max_wait_ms"] = run.fetch_wait_ms

    @broker.subscriber(  # type: ignore[untyped-decorator]
        run.topic,
        group_id=run.group,
        auto_offset_reset="earliest",
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        **extra,
    )
    async def handle(event: OrderPlaced) -> None:  # FastStream validates by the annotation
        if io_bound:
            await probe.ahandle(event)
        else:
            hit(event)

    asyncio.run(FastStream(broker, logger=None).run())


@contender(
    "faststream-aiokafka",
    "FastStream (aiokafka broker), pydantic-typed subscriber",
    modes=("throughput", "io", "latency"),
    baseline="loop-untuned",
    keeps_order=False,
    concurrency=16,
    needs=("faststream.kafka",),
    note="io: max_workers=16",
)
def faststream_aiokafka(run: Run) -> None:
    _faststream(run, "faststream.kafka")


@contender(
    "faststream-confluent",
    "FastStream (confluent broker), pydantic-typed subscriber",
    modes=("throughput", "io", "latency"),
    baseline="loop-untuned",
    keeps_order=False,
    concurrency=16,
    needs=("faststream.confluent",),
    note="io: max_workers=16",
)
def faststream_confluent(run: Run) -> None:
    _faststream(run, "faststream.confluent")


@contender(
    "quix",
    "Quix Streams, a deserializer validating with the model",
    modes=("throughput", "io", "latency"),
    baseline="loop-untuned",
    keeps_order=True,
    needs=("quixstreams",),
    note="io: no concurrency setting (one thread)",
)
def quix(run: Run) -> None:
    import_quietly("quixstreams")  # its import-time warning (see import_quietly) unprinted
    from quixstreams import Application
    from quixstreams.models.serializers import Deserializer

    class ModelDeserializer(Deserializer):
        def __call__(self, value: bytes, ctx: Any) -> Any:
            return OrderPlaced.model_validate_json(value)

    app = Application(
        broker_address=run.bootstrap,
        consumer_group=run.group,
        auto_offset_reset="earliest",
        consumer_extra_config={**FAST_JOIN, **fetch_wait(run)},
        state_dir=tempfile.mkdtemp(prefix="quix-bench-"),
        use_changelog_topics=False,
        loglevel="WARNING",
    )
    topic = app.topic(run.topic, value_deserializer=ModelDeserializer())
    sdf = app.dataframe(topic)
    sdf.update(run.probe.handle)
    app.run()


@contender(
    "aiokafka",
    "aiokafka getmany loop + model_validate_json",
    modes=("throughput", "latency"),
    baseline="loop-untuned",
    needs=("aiokafka",),
)
def aiokafka_loop(run: Run) -> None:
    from aiokafka import AIOKafkaConsumer

    async def main() -> None:
        consumer = AIOKafkaConsumer(
            run.topic,
            bootstrap_servers=run.bootstrap,
            group_id=run.group,
            auto_offset_reset="earliest",
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
            fetch_max_wait_ms=run.fetch_wait_ms or 500,  # 500: aiokafka's default
        )
        await consumer.start()
        validate = OrderPlaced.model_validate_json
        handle = run.probe.handle
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batches.values():
                for record in records:
                    handle(validate(record.value))

    asyncio.run(main())


def _faust_app(run: Run) -> Any:
    """The Faust app both Faust rows run: in-memory store, fast session, no web server."""
    import faust

    return faust.App(
        run.group,
        broker=f"kafka://{run.bootstrap}",
        store="memory://",
        web_enabled=False,
        broker_session_timeout=2,
        broker_heartbeat_interval=0.5,
        consumer_auto_offset_reset="earliest",
        topic_partitions=3,
        datadir=tempfile.mkdtemp(prefix="faust-bench-"),
    )


@contender(
    "faust",
    "Faust agent (faust-streaming) + model_validate_json",
    modes=("throughput", "io"),
    baseline="loop-untuned",
    keeps_order=False,
    concurrency=16,
    needs=("faust",),
    # Faust fixes aiokafka's fetch_max_wait_ms at 1500, which the embedded broker waits
    # out in full, so its latency here would measure that wait.
    note="io: agent concurrency=16; no latency row (fetch wait fixed at 1.5 s)",
)
def faust_agent(run: Run) -> None:
    import faust

    app = _faust_app(run)
    topic = app.topic(run.topic, value_serializer="raw")
    probe = run.probe
    hit = probe.handle
    io_bound = run.work_s > 0
    validate = OrderPlaced.model_validate_json

    @app.agent(topic, concurrency=run.concurrency)  # type: ignore[misc]
    async def agent(stream: Any) -> None:
        async for value in stream:
            event = validate(value)
            if io_bound:
                await probe.ahandle(event)
            else:
                hit(event)

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


@contender(
    "sg-faust",
    "streamguard guarded Faust agent (streamguard.faust)",
    modes=("throughput", "io"),
    baseline="faust",
    keeps_order=True,
    needs=("faust", "streamguard.faust"),
    note="one handler per partition at a time (acks in offset order); next to the plain agent",
)
def sg_faust_agent(run: Run) -> None:
    import faust

    from streamguard.demo.contracts import OrderPlaced as Contract
    from streamguard.faust import guarded_agent

    app = _faust_app(run)
    probe = run.probe
    hit = probe.handle
    io_bound = run.work_s > 0

    @guarded_agent(app, run.topic, contract=Contract)
    async def agent(event: Contract, ctx: Any) -> None:
        if io_bound:
            await probe.ahandle(event)
        else:
            hit(event)

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
