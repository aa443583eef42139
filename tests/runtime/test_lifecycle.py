"""Declaration checks, start-up, health endpoints, tombstones and secrets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

import streamguard as sg
from streamguard.demo.contracts import OrderPlaced
from streamguard.devbroker import DevBroker, free_port
from tests.conftest import FAST_GROUP, port_of, refusing_port
from tests.runtime.conftest import Running, committed, dlq_headers, order, wait_for


def answer(base: str, path: str) -> tuple[int, bytes]:
    """A health endpoint's status and body; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(base + path, timeout=2) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def test_missing_declaration_fails_at_class_creation() -> None:
    """A service without group_id fails when the class is defined, naming the attribute."""
    with pytest.raises(sg.ConfigurationError, match="group_id"):

        class Broken(sg.ConsumerService):
            topic = "orders"
            contract = OrderPlaced

            def handle(self, event: Any, ctx: sg.MessageContext) -> None: ...


def test_a_shared_base_is_named_in_the_missing_declaration_hint() -> None:
    """A base holding what two services share (the database, transient, retry) had no
    documented way past the check: the error now names ``__abstract__ = True``, and a
    base that sets it lets its subclasses declare the rest."""
    with pytest.raises(sg.ConfigurationError, match="__abstract__ = True"):

        class Shared(sg.ConsumerService):
            group_id = "ledger"

    class Base(sg.ConsumerService):
        __abstract__ = True
        group_id = "ledger"
        transient = (TimeoutError,)

    class Payments(Base):
        topic = "payments"
        contract = OrderPlaced

        def handle(self, event: Any, ctx: sg.MessageContext) -> None: ...

    assert Payments.transient == (TimeoutError,)
    assert Payments.group_id == "ledger"
    Payments(bootstrap_servers="127.0.0.1:1")  # a service to run, not a base


@pytest.mark.parametrize(
    ("attrs", "match"),
    [
        ({"topic": "bad name!"}, "not a valid Kafka topic name"),
        ({"dead_letter_topic": "orders"}, "must differ"),
        # A legal 247-character topic whose default DLQ (+ ".dlq") no broker accepts.
        ({"topic": "o" * 247}, r"default dead-letter topic .*\(251 characters"),
        ({"contract": dict}, "sg.Contract subclass"),
        ({"contract": sg.Contract}, "a base for contracts"),
        ({"transient": [TimeoutError]}, "tuple of exception types"),
        # Raised by a handler, it stops the service: it can never be retried.
        ({"transient": (TimeoutError, asyncio.CancelledError)}, "CancelledError, which is not"),
        ({"retry": 3}, "RetryPolicy"),
        ({"drift": "ignore"}, "'count' or 'dead_letter'"),
    ],
)
def test_invalid_declarations_name_the_fix(attrs: dict[str, Any], match: str) -> None:
    """Each invalid class attribute is refused at class creation with a hint."""
    namespace: dict[str, Any] = {
        "topic": "orders",
        "contract": OrderPlaced,
        "group_id": "billing",
        "handle": lambda self, event, ctx: None,
        **attrs,
    }
    with pytest.raises(sg.ConfigurationError, match=match):
        type("Broken", (sg.ConsumerService,), namespace)


def test_handle_is_required() -> None:
    """A service that does not implement handle() is refused at class creation."""
    with pytest.raises(sg.ConfigurationError, match="handle"):
        type(
            "NoHandler",
            (sg.ConsumerService,),
            {"topic": "orders", "contract": OrderPlaced, "group_id": "g"},
        )


def test_unreachable_broker_fails_fast_with_a_clear_error() -> None:
    """Against a port where nothing listens, run() raises BrokerUnavailable within the
    start-up timeout, naming the address and what to check (in code, the argument)."""

    class Billing(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "billing"
        options = sg.ServiceOptions(startup_timeout=2.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    with refusing_port() as down:
        address = f"127.0.0.1:{port_of(down)}"
        start = time.monotonic()
        with pytest.raises(sg.BrokerUnavailable, match=address) as info:
            Billing(bootstrap_servers=address).run()
    assert "in Python, bootstrap_servers" in str(info.value)
    assert time.monotonic() - start < 10


def test_a_dlq_setting_librdkafka_refuses_fails_the_start_before_the_cluster_is_reached(
    bootstrap: str, topic_factory: Callable[..., str]
) -> None:
    """A DLQ producer setting librdkafka refuses (acks=1 with idempotence) fails run()
    at once, naming it: it did so only once the cluster was reached, so an unreachable
    cluster hid it behind BrokerUnavailable after startup_timeout, and a reachable one
    had the DLQ created first."""
    src = topic_factory("orders")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = "billing"
        options = sg.ServiceOptions(startup_timeout=3.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    with refusing_port() as down:
        start = time.monotonic()
        with pytest.raises(KafkaException, match="acks") as info:
            Billing(f"127.0.0.1:{port_of(down)}", dead_letter_config={"acks": "1"}).run()
        assert time.monotonic() - start < 2.0  # not after the 3 s start-up wait
    assert info.value.args[0].code() == KafkaError._INVALID_ARG  # `streamguard run`: exit 2
    with pytest.raises(KafkaException, match="acks"):
        Billing(bootstrap, dead_letter_config={"acks": "1"}).run()
    topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
    assert f"{src}.dlq" not in topics


def test_secrets_never_reach_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    """A SASL password in kafka_config appears neither in repr() nor in any log line."""

    class Billing(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "billing"
        options = sg.ServiceOptions(startup_timeout=1.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    config = {"sasl.username": "svc", "sasl.password": "hunter2-secret"}
    down = refusing_port()
    service = Billing(bootstrap_servers=f"127.0.0.1:{port_of(down)}", kafka_config=config)
    assert "hunter2-secret" not in repr(service)
    caplog.set_level(logging.DEBUG)
    with down, pytest.raises(sg.BrokerUnavailable) as info:
        service.run()
    assert "hunter2-secret" not in str(info.value)
    assert "hunter2-secret" not in caplog.text


def test_an_oauth_callback_bound_to_a_secret_stays_out_of_repr() -> None:
    """An ``oauth_cb`` written as ``functools.partial(get_token, args)``, as
    confluent-kafka's OAuth example does, shows in no repr the secret bound in it."""
    from functools import partial

    def get_token(args: dict[str, str], config: str) -> tuple[str, float]:
        return "token", time.time() + 3600

    config = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "OAUTHBEARER",
        "oauth_cb": partial(get_token, {"client_secret": "hunter2-secret"}),
    }
    registry = {
        "url": "http://127.0.0.1:1",
        "bearer.auth.credentials.source": "CUSTOM",
        "bearer.auth.custom.provider.function": lambda config: {},
        "bearer.auth.custom.provider.config": {"client_secret": "hunter2-secret"},
    }

    class Billing(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "billing"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    service = Billing("127.0.0.1:1", kafka_config=config, schema_registry=registry)
    assert "hunter2-secret" not in repr(service)
    assert "'oauth_cb': '<partial>'" in repr(service)


def test_the_admin_clients_get_every_tls_and_sasl_setting() -> None:
    """The admin clients that read the source's size limit and create the DLQ connect
    as the consumer and the DLQ producer do: an ``oauth_cb`` (OAUTHBEARER, as AWS MSK
    IAM uses) or ``enable.ssl.certificate.verification`` left out made them fail to
    authenticate, and the DLQ was not created."""
    from streamguard.runtime.runner import _admin_config

    def get_token(config: str) -> tuple[str, float]:
        return "token", time.time() + 3600

    security = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "OAUTHBEARER",
        "oauth_cb": get_token,
        "enable.sasl.oauthbearer.unsecure.jwt": "false",
        "ssl.ca.location": "/etc/ca.pem",
        "enable.ssl.certificate.verification": "false",
        "https.ca.location": "/etc/idp-ca.pem",
    }
    config = {**security, "bootstrap.servers": "127.0.0.1:1", "group.id": "billing"}
    admin = _admin_config(config)
    assert {k: admin.get(k) for k in security} == security
    assert "group.id" not in admin  # a consumer's setting, which an admin client warns of


def test_tombstones_are_dead_lettered_unless_handled(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    read_all: Callable[..., list[Any]],
    bootstrap: str,
) -> None:
    """By default a null value goes to the DLQ as decode_error (never silently dropped);
    a service that overrides handle_tombstone receives it instead."""
    src = topic_factory("orders")
    raw_producer.produce(src, None, key=b"customer-9")
    raw_producer.produce(src, order(1).model_dump_json().encode())  # keyless
    raw_producer.flush(10)
    group, group2 = unique("g"), unique("g")
    handled_keys: list[bytes | None] = []

    class Default(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled_keys.append(ctx.key)

    start_service(Default)
    (record,) = read_all(f"{src}.dlq", 1)
    assert record.value() is None
    assert record.key() == b"customer-9"
    assert dlq_headers(record)["sg-dlq-reason"] == "decode_error"
    assert "tombstone" in dlq_headers(record)["sg-dlq-error-message"]
    assert wait_for(lambda: handled_keys == [None])  # the keyless message is handled

    deletes: list[bytes | None] = []

    class Deletes(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group2
        dead_letter_topic = f"{src}.dlq2"

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

        def handle_tombstone(self, ctx: sg.MessageContext) -> None:
            deletes.append(ctx.key)

    running = start_service(Deletes)
    assert wait_for(lambda: committed(bootstrap, group2, src).get(0) == 2)
    assert deletes == [b"customer-9"]
    assert running.metric("streamguard_messages_total", topic=src, outcome="dead_lettered") == 0


def test_health_endpoints_report_liveness_readiness_and_metrics(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    bootstrap: str,
) -> None:
    """/healthz is 200 while alive, /readyz turns 200 once partitions are assigned, and
    /metrics serves the streamguard families."""
    src = topic_factory("orders")
    producer = sg.GuardedProducer(bootstrap)
    producer.send(src, order(1))
    producer.flush()
    port = free_port()
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    running = start_service(Billing, metrics_port=port)
    base = f"http://127.0.0.1:{port}"

    def status(path: str) -> int:
        return answer(base, path)[0]

    assert wait_for(lambda: status("/healthz") == 200)
    assert wait_for(lambda: status("/readyz") == 200)
    with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
        report = json.loads(response.read())
    assert report["checks"] == {
        "running": True, "assigned": True, "polling": True, "dlq_writable": True,
        "broker_reachable": True,
        "breaker_closed": True,
    }  # fmt: skip
    assert wait_for(
        lambda: running.metric("streamguard_messages_total", topic=src, outcome="handled") == 1
    )
    with urllib.request.urlopen(base + "/metrics", timeout=2) as response:
        text = response.read().decode()
    assert (
        f'streamguard_messages_total{{outcome="handled",runtime="consumer",topic="{src}"}} 1.0'
        in text
    )
    assert "streamguard_handler_seconds_bucket" in text
    assert 'streamguard_ready{runtime="consumer"} 1.0' in text
    # Series exist at zero before their first event, so rate() sees the first one.
    assert (
        f'streamguard_dead_letters_total{{reason="oversize",runtime="consumer",topic="{src}"}} 0.0'
        in text
    )
    assert status("/nope") == 404
    running.stop()
    assert status("/healthz") == 0  # the server is gone with the service


def test_a_revoke_waiting_for_a_slow_handler_still_counts_as_polling(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    raw_producer: Producer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A revoke waits up to revoke_timeout for the handlers of the partitions it takes
    away, inside the poll that runs it. revoke_timeout may be longer than the 10 s after
    which /readyz says "polling": false, the check's "the poll loop is stuck": a slow
    handler made a healthy member unready. Here the bound is 1 s, the wait seconds."""
    monkeypatch.setattr("streamguard.runtime.runner.POLL_STALE_AFTER", 1.0)
    src = topic_factory("orders", partitions=2)
    group = unique("slow")
    revoked: list[list[int]] = []
    started: list[int] = []

    class Slow(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(revoke_timeout=8.0, shutdown_timeout=8.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started.append(ctx.partition)
            time.sleep(5.0)

        def on_revoke(self, partitions: list[int]) -> None:
            revoked.append(partitions)

    first = start_service(Slow)
    assert wait_for(lambda: first.service.health()["checks"]["assigned"])
    for part in (0, 1):
        raw_producer.produce(src, order(part).model_dump_json().encode(), partition=part)
    raw_producer.flush(10)
    assert wait_for(lambda: len(started) == 2)  # every partition's handler is busy
    second = start_service(Slow)
    polling: list[bool] = []
    deadline = time.monotonic() + 20
    while not revoked and time.monotonic() < deadline:
        polling.append(first.service.health()["checks"]["polling"])
        time.sleep(0.05)
    assert revoked, "no partition was revoked"
    assert all(polling), f"not polling in {polling.count(False)} of {len(polling)} looks"
    first.stop()
    second.stop()
    assert not first.error
    assert not second.error


def test_a_base_class_is_refused_as_a_service_to_run(capsys: pytest.CaptureFixture[str]) -> None:
    """ConsumerService itself, or a base marked ``__abstract__``, is a usage error with a
    hint (exit 2 from ``streamguard run``), not an AttributeError about group_id."""
    from streamguard.cli import main

    class Base(sg.ConsumerService):
        __abstract__ = True

    for cls in (sg.ConsumerService, Base):
        with pytest.raises(sg.ConfigurationError, match="is a base class"):
            cls(bootstrap_servers="127.0.0.1:1")
    assert main(["run", "streamguard:ConsumerService", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "is a base class" in capsys.readouterr().err


def test_a_service_module_raising_at_import_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``streamguard run`` of a module that raises at import (a NameError, a missing
    setting) exits 2 naming the error and its line, as ``schema check`` does for a
    contracts module: not a traceback with exit 1."""
    from streamguard.cli import main

    name = f"sg_raises_at_import_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import os\n\nos.environ['SG_NO_SUCH_SETTING']\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", f"{name}:Billing", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot import {name!r}: KeyError: 'SG_NO_SUCH_SETTING'" in err
    assert f"{name}.py:3" in err
    assert "Traceback" not in err


def test_a_bad_declaration_names_its_own_line_not_the_generated_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ServiceOptions and RetryPolicy refuse bad values in the ``__init__`` a dataclass
    generates, whose code has no file ("<string>"): the line named was "<string>:19"."""
    from streamguard.cli import main

    name = f"sg_bad_options_{uuid.uuid4().hex[:8]}"
    source = "import streamguard as sg\n\nOPTIONS = sg.ServiceOptions(shutdown_timeout=2.0)\n"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    assert main(["run", f"{name}:Billing", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert f"(at {tmp_path / name}.py:3)" in err
    assert "<string>" not in err


@pytest.mark.parametrize("layout", ["package", "module"])
def test_a_service_installed_in_site_packages_raising_at_import_names_its_own_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    layout: str,
) -> None:
    """A project installed into site-packages (a container image's ``pip install .``)
    is the project's code too: the line named is its own, not os.py's, where
    ``os.environ[...]`` raised. Everything under site-packages counted as a library."""
    import sysconfig

    from streamguard.cli import main

    site = tmp_path / "site-packages"
    name = f"sg_installed_{uuid.uuid4().hex[:8]}"
    source = "import os\n\nos.environ['SG_NO_SUCH_SETTING']\n"
    if layout == "package":
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text("")
        (site / name / "service.py").write_text(source)
        module, where = f"{name}.service", f"{site / name / 'service.py'}:3"
    else:
        site.mkdir()
        (site / f"{name}.py").write_text(source)
        module, where = name, f"{site / name}.py:3"
    paths = sysconfig.get_paths()
    monkeypatch.setattr(
        sysconfig, "get_paths", lambda: {**paths, "purelib": str(site), "platlib": str(site)}
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(tmp_path)
    assert main(["run", f"{module}:Billing", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot import {module!r}: KeyError: 'SG_NO_SUCH_SETTING' (at {where})" in err


@pytest.mark.parametrize(
    "source",
    [
        # No frame of the project's code: the error named importlib's
        # (``<frozen importlib._bootstrap>:241``), not the file and line of the mistake.
        "import os\n\ndef broken(:\n",
        # Text parsed at import (``ast.literal_eval``): the error's file is "<unknown>",
        # so the line named is the module's own that parsed it.
        'import ast\n\nLIMITS = ast.literal_eval("(1,")\n',
    ],
    ids=["in-the-file", "raised-by-its-code"],
)
def test_a_syntax_error_at_import_names_the_modules_line(
    source: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A service module whose import raises SyntaxError is a usage error naming the
    line of the module where it happened."""
    from streamguard.cli import main

    name = f"sg_syntax_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["run", f"{name}:Billing", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot import {name!r}: SyntaxError: " in err
    assert f"(at {tmp_path / name}.py:3)" in err


@pytest.mark.parametrize(
    "args", [["--log-level", "bogus"], ["--metrics-port", "99999"], ["--metrics-port", "x"]]
)
def test_run_refuses_bad_options_as_usage_errors(args: list[str]) -> None:
    """Bad --log-level and --metrics-port values stop at argument parsing (exit 2)."""
    from streamguard.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", "tests.runtime.apps:Anything", *args])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "command",
    [
        ["run", "tests.runtime.apps:Recorder"],
        ["dlq", "inspect", "orders.dlq"],
        ["dlq", "replay", "orders.dlq", "--dry-run"],
    ],
)
def test_a_kafka_setting_librdkafka_refuses_is_a_usage_error(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped -X key reaches librdkafka only when a client is built: the command
    exits 2 naming it, as for a bad option, rather than with a KafkaException traceback."""
    from streamguard.cli import main

    args = [*command, "--bootstrap-servers", "127.0.0.1:1", "-X", "sesion.timeout.ms=6000"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "a Kafka setting was refused" in err
    assert "sesion.timeout.ms" in err


@pytest.mark.parametrize(
    "command",
    [
        ["run", "tests.runtime.apps:Recorder", "--log-format", "text"],
        ["run", "tests.runtime.apps:Recorder", "--log-format", "json"],
        ["dlq", "inspect", "orders.dlq"],
    ],
)
def test_a_refused_setting_read_from_the_environment_is_not_echoed(
    command: list[str],
) -> None:
    """A secret given to the wrong key (``--kafka-config-env security.protocol=
    KAFKA_PASSWORD``) is refused by librdkafka in a message that quoted the value: the
    error names the property only."""
    cmd = [
        sys.executable, "-m", "streamguard.cli", *command,
        "--bootstrap-servers", "127.0.0.1:9",
        "--kafka-config-env", "security.protocol=SG_TEST_PASSWORD",
    ]  # fmt: skip
    env = {**os.environ, "SG_TEST_OUT": os.devnull, "SG_TEST_PASSWORD": "Hunter2Secret"}
    done = subprocess.run(cmd, env=env, capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "a Kafka setting was refused" in err
    assert "security.protocol" in err
    assert "Hunter2Secret" not in err


@pytest.mark.parametrize(
    ("setting", "kind"),
    [
        ('{"bootstrap.servers": ["127.0.0.1:1"]}', "a JSON array"),
        ('{"sasl.password": {"v": "Hunter2Secret"}}', "a JSON object"),
        ('{"client.id": null}', "null"),
    ],
)
def test_kafka_config_json_refuses_a_value_librdkafka_cannot_take(
    setting: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A list, object or null in --kafka-config-json reached the client as its Python
    text (bootstrap.servers "['127.0.0.1:1']" failed to resolve until startup_timeout):
    it is a usage error naming the key, never the value."""
    from streamguard.cli import main

    args = ["run", "tests.runtime.apps:Recorder", "--log-format", "text"]
    assert main([*args, "--kafka-config-json", setting]) == 2
    err = capsys.readouterr().err
    assert f"the value of {next(iter(json.loads(setting)))!r} is {kind};" in err
    assert "Hunter2Secret" not in err
    assert "127.0.0.1:1" not in err


def test_kafka_config_json_refuses_a_callable_setting(capsys: pytest.CaptureFixture[str]) -> None:
    """``{"stats_cb": "x"}`` reached the client as text: a TypeError traceback."""
    from streamguard.cli import main

    args = ["run", "tests.runtime.apps:Recorder", "--log-format", "text"]
    setting = '{"stats_cb": "Hunter2Secret"}'
    assert main([*args, "--bootstrap-servers", "127.0.0.1:1", "--kafka-config-json", setting]) == 2
    err = capsys.readouterr().err
    assert "--kafka-config-json stats_cb: this setting takes a Python callable" in err
    assert "Hunter2Secret" not in err


def test_a_metrics_port_in_use_is_a_configuration_error() -> None:
    """The health server names the port it cannot bind, as a ConfigurationError (exit 2
    from ``streamguard run``) rather than an OSError traceback."""
    import socket

    from prometheus_client import CollectorRegistry

    from streamguard.observe.health import HealthServer

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        with pytest.raises(sg.ConfigurationError, match=f"127.0.0.1:{port}"):
            HealthServer(CollectorRegistry(), dict, "127.0.0.1", port)
    finally:
        taken.close()


def test_health_endpoints_answer_while_the_service_waits_for_the_cluster(
    start_service: Callable[..., Running],
) -> None:
    """While run() waits for a cluster it cannot reach yet, /healthz answers 200 (a
    liveness probe must not kill a process that waits) and /readyz 503, not assigned."""

    class Billing(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "billing"
        # Longer than the test: it stops the service itself, still connecting. A start-up
        # timeout that ran out first (a loaded machine) would fail run() instead.
        options = sg.ServiceOptions(startup_timeout=120.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    port = free_port()
    down = refusing_port()
    running = start_service(
        Billing, bootstrap_servers=f"127.0.0.1:{port_of(down)}", metrics_port=port
    )
    base = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: answer(base, "/healthz")[0] == 200, timeout=20)
    status, body = answer(base, "/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["assigned"] is False
    running.stop(20)
    down.close()
    assert running.error == []  # stopped while connecting: a clean return


def test_a_metrics_port_in_use_fails_the_start_before_the_cluster_is_reached() -> None:
    """run() with a metrics port that is taken raises ConfigurationError at once, not
    after waiting for (or connecting to) the cluster and creating the DLQ."""
    import socket

    class Billing(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "billing"
        options = sg.ServiceOptions(startup_timeout=20.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        down = refusing_port()
        service = Billing(bootstrap_servers=f"127.0.0.1:{port_of(down)}", metrics_port=port)
        start = time.monotonic()
        with down, pytest.raises(sg.ConfigurationError, match=f"127.0.0.1:{port}"):
            service.run()
        assert time.monotonic() - start < 5
    finally:
        taken.close()


def _run_against(address: str, log_format: str = "text", **env: str) -> subprocess.Popen[bytes]:
    """``streamguard run`` of ``tests.runtime.apps:Recorder`` at ``address``, logging in
    ``log_format`` to a pipe (a real process and Kafka client, nothing mocked)."""
    cmd = [
        sys.executable, "-m", "streamguard.cli", "run", "tests.runtime.apps:Recorder",
        "--bootstrap-servers", address, "--log-format", log_format,
    ]  # fmt: skip
    return subprocess.Popen(
        cmd,
        env={**os.environ, "SG_TEST_OUT": os.devnull, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_streamguard_run_against_an_unreachable_cluster_says_what_it_waits_for() -> None:
    """``streamguard run`` against a port where nothing listens first says which servers
    it connects to (it was silent for all of startup_timeout), then fails, exit 1,
    without the outage line of a running service ("fetching and dead-lettering wait"),
    which it wrote just before exiting. Its error names the command's option, not only
    the Python argument (``bootstrap_servers``), which the command has not.
    librdkafka's connect failures come as they happen, each kind once and then counted:
    some 20 identical lines a second were held until the wait ended and then written
    all at once."""
    with refusing_port() as down:
        address = f"127.0.0.1:{port_of(down)}"
        process = _run_against(address, SG_TEST_STARTUP_TIMEOUT="3", SG_TEST_TOPIC="orders-up")
        _, err = process.communicate(timeout=60)
    lines = err.decode().splitlines()
    assert process.returncode == 1, lines
    assert "connecting to the cluster" in lines[0], lines
    assert f"bootstrap_servers={address}" in lines[0]
    assert "service=Recorder topic=orders-up " in lines[0]  # whose: a process may run several
    assert lines[-1].startswith(
        f"streamguard: BrokerUnavailable: could not reach Kafka at {address}"
    )
    assert "check the servers (--bootstrap-servers or $STREAMGUARD_BOOTSTRAP_SERVERS" in lines[-1]
    assert not [line for line in lines if "cannot reach the cluster" in line]
    failures = [line for line in lines if "Connection refused" in line]
    counted = [line for line in failures if "more line(s) like this not shown" in line]
    assert 1 <= len(failures) - len(counted) <= 2, failures  # the consumer's, maybe a retry's
    assert len(counted) == 1, failures
    # The first one written during the wait, not with the count when it ended.
    first, last = (datetime.fromisoformat(line.split()[0]) for line in (failures[0], counted[0]))
    assert (last - first).total_seconds() > 1.5, failures


def test_streamguard_run_in_json_ends_with_a_json_line_saying_why_it_failed() -> None:
    """In the JSON format, the error that ends ``streamguard run`` is a JSON line too:
    the CLI printed it as text (``streamguard: BrokerUnavailable: ...``), the one line a
    log pipeline could not parse (jq stopped on it), and the one that says why."""
    with refusing_port() as down:
        address = f"127.0.0.1:{port_of(down)}"
        process = _run_against(address, "json", SG_TEST_STARTUP_TIMEOUT="2")
        _, err = process.communicate(timeout=60)
    lines = [json.loads(line) for line in err.decode().splitlines()]
    assert process.returncode == 1, lines
    last = lines[-1]
    assert last["event"] == "service failed; exiting", lines
    assert last["level"] == "error"
    assert last["error_class"] == "BrokerUnavailable"
    assert last["error"].startswith(f"could not reach Kafka at {address}")
    assert last["exit_code"] == 1


def test_streamguard_run_in_json_ends_with_a_json_line_for_a_refused_kafka_setting() -> None:
    """A ``-X`` setting librdkafka refuses ends ``streamguard run`` with exit 2, as
    before, and in the JSON format with a JSON line: it was the CLI's text line
    (``streamguard: error: a Kafka setting was refused: ...``)."""
    cmd = [
        sys.executable, "-m", "streamguard.cli", "run", "tests.runtime.apps:Recorder",
        "--bootstrap-servers", "127.0.0.1:9", "--log-format", "json", "-X", "bogus.key=1",
    ]  # fmt: skip
    done = subprocess.run(
        cmd, env={**os.environ, "SG_TEST_OUT": os.devnull}, capture_output=True, timeout=60
    )
    lines = [json.loads(line) for line in done.stderr.decode().splitlines()]
    assert done.returncode == 2, lines
    last = lines[-1]
    assert last["event"] == "service failed; exiting", lines
    assert last["exit_code"] == 2
    assert "bogus.key" in last["error"]


WARNS_AT_IMPORT = """
import warnings
from tests.runtime.apps import Recorder
warnings.warn("Default value of Billing.tags is not JSON serializable", UserWarning)
"""


def test_streamguard_run_in_json_writes_python_warnings_as_json_lines(tmp_path: Path) -> None:
    """A Python warning (pydantic's about a contract's default, say) is a JSON line of
    the logger ``py.warnings``: Python wrote it to stderr as raw text, two lines a log
    pipeline could not parse (jq stopped on them)."""
    (tmp_path / "warns_at_import.py").write_text(WARNS_AT_IMPORT)
    cmd = [
        sys.executable, "-m", "streamguard.cli", "run", "warns_at_import:Recorder",
        "--bootstrap-servers", "127.0.0.1:9", "--log-format", "json",
    ]  # fmt: skip
    path = os.pathsep.join([str(tmp_path), os.getcwd(), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "SG_TEST_OUT": os.devnull, "SG_TEST_STARTUP_TIMEOUT": "1"}
    with refusing_port() as down:
        cmd[cmd.index("127.0.0.1:9")] = f"127.0.0.1:{port_of(down)}"
        done = subprocess.run(cmd, env={**env, "PYTHONPATH": path}, capture_output=True, timeout=60)
    lines = [json.loads(line) for line in done.stderr.decode().splitlines()]
    assert done.returncode == 1, lines
    (warning,) = [line for line in lines if line["logger"] == "py.warnings"]
    assert warning["level"] == "warning"
    assert "UserWarning: Default value of Billing.tags" in warning["event"]


# `streamguard run` as the program, SIGTERMing itself in Python's exit (atexit): where a
# supervisor's second SIGTERM lands once the stop it asked for has finished.
SIGTERM_AT_EXIT = """
import atexit, os, signal, sys
atexit.register(os.kill, os.getpid(), signal.SIGTERM)
from streamguard.cli import main
sys.exit(main())
"""


def test_a_sigterm_after_a_finished_stop_leaves_exit_0(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """A stop asked by SIGTERM settled, committed and closed: a second SIGTERM while the
    process exits changes nothing, the exit status is 0 (was 143: run() had given SIGTERM
    back its default, and the randomized drive saw a double SIGTERM exit so)."""
    topic = topic_factory("orders")
    err = tmp_path / "err"
    cmd = [
        sys.executable, "-c", SIGTERM_AT_EXIT, "run", "tests.runtime.apps:Recorder",
        "--bootstrap-servers", bootstrap,
        *(f"-X{key}={value}" for key, value in FAST_GROUP.items()),
    ]  # fmt: skip
    env = {**os.environ, "SG_TEST_OUT": os.devnull, "SG_TEST_TOPIC": topic}
    with err.open("wb") as out:
        process = subprocess.Popen(
            cmd, env={**env, "SG_TEST_GROUP": unique("g")}, stdout=out, stderr=out
        )
        try:
            assert wait_for(lambda: "partitions assigned" in err.read_text(), 30), err.read_text()
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, err.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    assert "service stopped" in err.read_text()


def test_a_cluster_that_comes_up_during_the_wait_is_no_outage(
    start_service: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cluster that comes up while the service waits for it (started before Kafka):
    what librdkafka queued in the wait the cluster answered, the dead-letter producer's
    included, is served with the start-up's, not once connected. Its connect failures
    were written one by one after their count, as though an outage had begun; its
    statistics of before the answer made the link, watching by then, report one
    ("cannot reach the cluster", then "reachable again" a second later)."""

    class Billing(sg.ConsumerService):
        topic = f"orders-{uuid.uuid4().hex[:8]}"
        contract = OrderPlaced
        group_id = "billing"
        options = sg.ServiceOptions(startup_timeout=120.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    down = refusing_port()
    port = port_of(down)
    cluster: list[DevBroker] = []

    class ComesUpInAWait(Consumer):
        """The real consumer; in its fourth wait for the cluster, that comes up, after
        some connect failures and statistics (each second) that tell of it down."""

        waits = 0

        def list_topics(self, *args: Any, **kwargs: Any) -> Any:
            self.waits += 1
            if self.waits == 4:
                time.sleep(1.5)
                down.close()
                cluster.append(DevBroker(port=port))
                cluster[0].start()
            return super().list_topics(*args, **kwargs)

    monkeypatch.setattr("streamguard.runtime.runner.Consumer", ComesUpInAWait)
    caplog.set_level(logging.INFO)
    try:
        running = start_service(Billing, bootstrap_servers=f"127.0.0.1:{port}")
        assert wait_for(lambda: "service started" in caplog.messages, timeout=60)
        time.sleep(1.0)  # the first polls: what was queued is served by now
        running.stop(30)
    finally:
        down.close()
        for broker in cluster:
            broker.stop()
    assert running.error == []
    assert not [m for m in caplog.messages if m.startswith("cannot reach the cluster")]
    # The dead-letter producer's too: built before the wait, it queued its own connect
    # failures, written one by one at its first poll once the service ran.
    refused = [m for m in caplog.messages if "rdkafka#" in m and "refused" in m]
    assert len(refused) <= 2, refused  # the first, maybe a retry's; the rest counted


def test_a_topic_missing_at_the_start_is_warned_of_naming_the_service_and_topic(
    start_service: Callable[..., Running],
    unique: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The warning for a topic not created yet names the service and its topic: a
    process may run several services, some on one topic."""
    src = unique("orders")  # never created

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    message = "topic does not exist yet; waiting for it"
    caplog.set_level(logging.INFO, logger="streamguard.runtime")
    running = start_service(Billing)
    try:
        assert wait_for(lambda: message in caplog.messages, timeout=30)
    finally:
        running.stop(30)
    assert running.error == []
    (warned,) = [r.__dict__ for r in caplog.records if r.getMessage() == message]
    assert (warned["levelname"], warned["service"], warned["topic"]) == ("WARNING", "Billing", src)


def test_sigterm_while_waiting_for_the_cluster_stops_at_once() -> None:
    """``streamguard run`` against a cluster it cannot reach yet stops on SIGTERM within
    a second, exit 0, instead of sitting out the 30 s start-up timeout (librdkafka held
    the main thread for all of it, and the signal's handler ran only afterwards). It
    says that it stopped before reaching the cluster, and where it tried: the stop left
    only a flood of librdkafka's connect failures (now one, and its count)."""
    import signal

    down = refusing_port()
    address = f"127.0.0.1:{port_of(down)}"
    process = _run_against(address, SG_TEST_TOPIC="orders-up")
    try:
        # Signal only once it waits for the cluster: its Kafka client exists (librdkafka's
        # threads are named rdk:*), so its SIGTERM handler is in place. Any earlier, and
        # the signal finds Python's default action (exit status -15).
        assert wait_for(
            lambda: process.poll() is not None or _has_librdkafka_threads(process.pid), 60
        ), "streamguard run built no Kafka client in time"
        assert process.poll() is None
        time.sleep(1.0)  # into the wait: some connect failures to collapse
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=20)
        assert process.returncode == 0
        assert time.monotonic() - signalled < 5
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        down.close()
    lines = err.decode().splitlines()
    (stopped,) = [line for line in lines if "stopped before reaching the cluster" in line]
    assert f"bootstrap_servers={address}" in stopped
    assert "service=Recorder topic=orders-up " in stopped  # whose: a process may run several
    # Then "service stopped"; a client closed last may still count its collapsed lines.
    after = [line for line in lines[lines.index(stopped) + 1 :] if "not shown" not in line]
    assert ["service stopped" in line for line in after] == [True], lines
    refused = [line for line in lines if "Connection refused" in line]
    assert len([line for line in refused if "not shown" not in line]) <= 2, lines


def _has_librdkafka_threads(pid: int) -> bool:
    """Whether process ``pid`` runs librdkafka's threads (Linux /proc), i.e. has built
    a Kafka client."""
    names = []
    for comm in Path(f"/proc/{pid}/task").glob("*/comm"):
        with contextlib.suppress(OSError):  # a thread that just ended
            names.append(comm.read_text())
    return any(name.startswith("rdk:") for name in names)


def test_an_async_service_reports_its_last_counts_when_it_stops(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The event loop writes handled counts, retries and handler times on a timer; the
    ones it still holds when the service stops reach the metrics too. They were lost:
    a stop within half a second of the last records left them uncounted for good (here
    the timer is an hour, so every count is one the stop must write)."""
    monkeypatch.setattr("streamguard.runtime.eventloop.METRICS_EVERY", 3600.0)
    src = topic_factory("orders")
    send_orders(src, 5)
    group = unique("g")
    seen: list[int] = []

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        retry = sg.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            seen.append(ctx.offset)
            if ctx.offset == 4 and ctx.attempt == 1:
                raise sg.TransientError("try again")

    running = start_service(Billing)
    assert wait_for(lambda: len(seen) == 6)
    running.stop()
    assert not running.error
    assert running.metric("streamguard_messages_total", topic=src, outcome="handled") == 5
    assert running.metric("streamguard_retries_total", topic=src) == 1
    assert running.metric("streamguard_handler_seconds_count", topic=src) == 5


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_handler_a_stop_waits_for_is_still_in_flight(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    kind: str,
) -> None:
    """While a stop waits for a handler, its record is still in ``streamguard_inflight``
    (docs/operations.md: a hung handler shows there). Shutdown took the lanes out of the
    assignment before that wait, and the gauge read 0 for up to twice shutdown_timeout;
    an event-loop lane, whose close drops its count, read 0 even once it was counted."""
    src = topic_factory("orders")
    send_orders(src, 3)
    entered, release = threading.Event(), threading.Event()

    def hold(ctx: sg.MessageContext) -> bool:
        if ctx.offset != 1:
            return False
        entered.set()
        return True

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if hold(ctx):
                release.wait(20)

    class AsyncBilling(Billing):
        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:  # type: ignore[override]
            if hold(ctx):
                await asyncio.to_thread(release.wait, 20)

    running = start_service(Billing if kind == "sync" else AsyncBilling)
    # The held record, and (worker threads) the one fetched with it, which goes back to
    # Kafka; an async run counts what is in its handlers.
    held = 2 if kind == "sync" else 1
    try:
        assert entered.wait(20)
        stopping = threading.Thread(target=running.service.stop)
        stopping.start()
        assert wait_for(lambda: not running.service.health()["checks"]["running"])
        time.sleep(0.3)  # the shutdown is past closing the lanes, waiting for the handler
        assert running.metric("streamguard_inflight", topic=src) == held
    finally:
        release.set()
    running.thread.join(20)
    stopping.join(5)
    assert not running.error
    assert running.metric("streamguard_messages_total", topic=src, outcome="handled") == 2


def test_an_exception_in_on_assign_stops_the_service_and_run_raises_it(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
) -> None:
    """A rebalance hook that fails leaves the service's own state in doubt (whatever it
    set up per partition): the service stops, nothing is committed past a final
    outcome, and ``run()`` raises the hook's exception, as docs/consumer.md says."""
    src = topic_factory("orders")
    send_orders(src, 3)
    group = unique("g")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def on_assign(self, partitions: list[int]) -> None:
            raise RuntimeError("cannot open the per-partition store")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

    running = start_service(Billing)
    running.thread.join(30)
    assert not running.thread.is_alive()
    assert [type(e) for e in running.error] == [RuntimeError]
    assert committed(bootstrap, group, src) == {}


def test_a_stopped_service_runs_again(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    send_orders: Callable[..., None],
    bootstrap: str,
) -> None:
    """run() after stop() consumes again, and /readyz does not report the previous
    run's assignment meanwhile. The stop() that ended the first run used to stay in
    force: the second run() connected, logged "service started" and returned at once,
    having consumed nothing."""
    import threading

    from tests.conftest import FAST_GROUP

    src = topic_factory("orders")
    group = unique("g")
    handled: list[int] = []

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled.append(ctx.offset)

    service = Billing(bootstrap, kafka_config=FAST_GROUP)
    for run in range(1, 3):
        send_orders(src, 3)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        try:
            if run == 2:
                assert wait_for(lambda: service.health()["checks"]["running"])
                assert not service.health()["checks"]["assigned"]
            assert wait_for(lambda want=3 * run: len(handled) == want), f"run {run}: {handled}"
            assert thread.is_alive(), f"run {run} returned before stop()"
        finally:
            service.stop()
            thread.join(30)
        assert not thread.is_alive()
    assert handled == list(range(6))
    assert committed(bootstrap, group, src) == {0: 6}


@pytest.mark.parametrize("late_stop", ["on_stop", "service stopped"])
def test_a_stop_landing_as_a_run_returns_never_stops_the_next_run(
    late_stop: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    send_orders: Callable[..., None],
    bootstrap: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop() made while run() is returning applies to that run: the next run()
    consumes. A stop() landing after the run had cleared its stop flag (here: as it
    logs "service stopped", its last line) used to stay set, and the next run()
    connected and returned at once, having consumed nothing."""
    import threading

    from tests.conftest import FAST_GROUP

    src = topic_factory("orders")
    handled: list[int] = []
    late = [late_stop]  # one late stop, in the first run only

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled.append(ctx.offset)

        def on_stop(self) -> None:
            if late == ["on_stop"]:
                late.clear()
                self.stop()

    service = Billing(bootstrap, kafka_config=FAST_GROUP)

    class StopOnLastLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "service stopped" and late == ["service stopped"]:
                late.clear()
                service.stop()

    caplog.set_level(logging.INFO, logger="streamguard.runtime")
    hook = StopOnLastLine()
    logging.getLogger("streamguard.runtime").addHandler(hook)
    try:
        for run in range(1, 3):
            send_orders(src, 3)
            thread = threading.Thread(target=service.run, daemon=True)
            thread.start()
            try:
                assert wait_for(lambda want=3 * run: len(handled) == want), f"run {run}"
                assert thread.is_alive(), f"run {run} returned before stop()"
                assert service.health()["checks"]["running"]
            finally:
                service.stop()
                thread.join(30)
            assert not thread.is_alive()
            assert late == [], "the late stop() was not made"
    finally:
        logging.getLogger("streamguard.runtime").removeHandler(hook)
    assert handled == list(range(6))


def test_a_stop_before_run_stops_that_run_at_once_and_only_it(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    send_orders: Callable[..., None],
    bootstrap: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A thread told to stop before it got to ``run()`` must not run on: that run()
    returns at once, having handled nothing and never joined the group (a member
    leaving at once would rebalance the others), and the run() after it consumes."""
    import threading

    from tests.conftest import FAST_GROUP

    src = topic_factory("orders")
    handled: list[int] = []

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled.append(ctx.offset)

    send_orders(src, 3)
    caplog.set_level(logging.INFO, logger="streamguard.runtime")
    service = Billing(bootstrap, kafka_config=FAST_GROUP)
    service.stop()
    stopped = threading.Thread(target=service.run, daemon=True)
    stopped.start()
    stopped.join(30)
    assert not stopped.is_alive(), "a stop() made before run() was lost"
    assert handled == []
    assert "service started" not in caplog.messages  # it never subscribed
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: len(handled) == 3)
        assert thread.is_alive()
    finally:
        service.stop()
        thread.join(30)
    assert not thread.is_alive()


@pytest.mark.parametrize("event_loop", ["auto", "asyncio"])
def test_runs_of_an_async_service_leave_no_event_loop_open(
    event_loop: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    send_orders: Callable[..., None],
    bootstrap: str,
) -> None:
    """Each run of a service with an event loop closes its loop as it ends. uvloop's
    (the default where installed) was only stopped: never collected, each one kept its
    descriptors (five per run) for the life of the process."""
    import asyncio
    import gc
    import os
    import threading

    from tests.conftest import FAST_GROUP

    def open_loops() -> int:
        gc.collect()
        return sum(
            1
            for o in gc.get_objects()
            if isinstance(o, asyncio.AbstractEventLoop) and not o.is_closed()
        )

    src = topic_factory("orders")
    send_orders(src, 3)
    handled: list[int] = []

    class Enrich(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")
        options = sg.ServiceOptions(event_loop=event_loop)  # type: ignore[arg-type]

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            handled.append(ctx.offset)

    loops_before = open_loops()
    descriptors: list[int] = []
    for run in range(3):
        service = Enrich(bootstrap, kafka_config={**FAST_GROUP, "group.id": unique("g")})
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        try:
            assert wait_for(lambda want=3 * (run + 1): len(handled) == want)
        finally:
            service.stop()
            thread.join(30)
        assert not thread.is_alive()
        del service
        assert open_loops() == loops_before
        descriptors.append(len(os.listdir("/proc/self/fd")))
    # A leak was five a run, ten from the first run to the third. Clients of earlier
    # tests in this process may still hold a socket or two at either moment (in a full
    # run, 67 then 69 without any leak), so a difference under one run's leak passes.
    assert descriptors[2] - descriptors[0] < 5, descriptors


def test_a_hurried_stop_still_closes_an_event_loop_that_is_not_blocked(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    send_orders: Callable[..., None],
    start_service: Callable[..., Running],
) -> None:
    """A stop hurried before the loop was stopped (a second signal while a handler
    awaits) gives the loop's thread a short join and closes the loop: it was left
    open, its descriptors kept, whenever the hurry came first."""
    src = topic_factory("orders")
    send_orders(src, 1)
    started = threading.Event()

    class Awaits(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")
        options = sg.ServiceOptions(shutdown_timeout=20.0)

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started.set()
            await asyncio.sleep(30)  # cancellable: the loop's thread is not blocked

    running = start_service(Awaits)
    assert started.wait(20)
    runtime = running.service._ConsumerService__runtime  # type: ignore[attr-defined]
    began = time.monotonic()
    running.service.stop()
    # What a second SIGTERM does (runner's on_signal): run() is on a thread here, where
    # no signal handler is installed.
    runtime._poller.assignment.hurry.set()
    running.thread.join(10)
    assert not running.thread.is_alive()
    assert time.monotonic() - began < 10  # hurried: not the 20 s shutdown_timeout
    assert running.error == []
    assert runtime._loop_runner.loop.is_closed()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_hurried_stop_does_not_wait_to_record_a_stuck_handler_s_crash(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    send_orders: Callable[..., None],
    start_service: Callable[..., Running],
    kind: str,
) -> None:
    """Once the stop is hurried (a second signal), the wind-down's waits for a crash to
    be recorded (the workers', the event loop's barrier) end at once: with a handler
    stuck (a sync one, or a blocking call inside ``async def``), each still waited its
    whole CRASH_RECORD_WAIT (0.5 s) before ``on_stop`` ran."""
    src = topic_factory("orders")
    send_orders(src, 1)
    started, release = threading.Event(), threading.Event()
    stopped_at: list[float] = []

    class Stuck(sg.ConsumerService):
        __abstract__ = True  # handle comes below, sync or async
        topic = src
        contract = OrderPlaced
        group_id = unique("g")
        options = sg.ServiceOptions(shutdown_timeout=20.0)

        def on_stop(self) -> None:
            stopped_at.append(time.monotonic())

    if kind == "sync":

        def handle(self: Any, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started.set()
            release.wait(30)

    else:

        async def handle(self: Any, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            started.set()
            release.wait(30)  # blocks the loop's thread: no cancel can end it

    Service = type("Service", (Stuck,), {"handle": handle})
    running = start_service(Service)
    try:
        assert started.wait(20)
        runtime = running.service._ConsumerService__runtime  # type: ignore[attr-defined]
        running.service.stop()
        time.sleep(0.5)  # the stop waits for the handler meanwhile (shutdown_timeout)
        hurried = time.monotonic()
        runtime._poller.assignment.hurry.set()  # what a second SIGTERM does
        assert wait_for(lambda: bool(stopped_at), 10)
        assert stopped_at[0] - hurried < 0.4  # one HURRY_CHECK, not 0.1 + 0.5 s
    finally:
        release.set()
        running.thread.join(10)
    assert not running.thread.is_alive()
    assert running.error == []


def test_a_hurried_stop_does_not_wait_for_a_worker_holding_the_consumer(
    bootstrap: str, unique: Callable[[str], str]
) -> None:
    """The shutdown's wait for the poll lock, held by a worker inside a rebalance
    callback (a slow ``on_revoke`` hook), ends once the stop is hurried (a second
    signal): it waited its whole ``revoke_timeout + shutdown_timeout``. The runtime's
    own Poller, over a real consumer and DLQ producer of the broker."""

    class Idle(sg.ConsumerService):
        topic = unique("never-subscribed")
        contract = OrderPlaced
        group_id = unique("g")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

    runtime = Idle(bootstrap)._ConsumerService__runtime  # type: ignore[attr-defined]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("g")})
    producer = Producer({"bootstrap.servers": bootstrap})
    stopping, hurry = threading.Event(), threading.Event()
    poller, _ = runtime._assemble(consumer, producer, None, stopping, hurry)
    done = threading.Event()

    def shut_down() -> None:
        poller.shutdown(stopping, 20.0, clean=True)
        done.set()

    poller.lock.acquire()  # the worker in its slow on_revoke hook
    shutting = threading.Thread(target=shut_down, daemon=True)
    try:
        shutting.start()
        assert not done.wait(0.5)  # it waits for the worker meanwhile
        hurried = time.monotonic()
        hurry.set()  # what a second SIGTERM does (runner's on_signal)
        assert done.wait(5), "the hurried shutdown still waited for the poll lock"
        assert time.monotonic() - hurried < 1
        assert poller.assignment.closed  # settled: the run goes on to close the clients
    finally:
        poller.lock.release()
        shutting.join(25)
        runtime.metrics.untrack(Idle.topic)
        runtime._publisher.release()
        consumer.close()


def test_a_hurried_stop_leaves_the_consumer_to_a_worker_inside_a_rebalance(
    bootstrap: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop hurried while a worker's poll runs a slow ``on_revoke`` hook returns at
    once, and leaves the consumer unclosed to that worker: the stop's synchronous
    commit, then its ``close()`` (unsafe under a running poll besides), waited for the
    rebalance, as long as the hook took. The hook returning later ends the poll as usual."""
    caplog.set_level(logging.INFO, logger="streamguard.runtime")
    src = topic_factory("orders", partitions=2)
    group = unique("g")
    in_hook, release = threading.Event(), threading.Event()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = group
        options = sg.ServiceOptions(revoke_timeout=1.0, shutdown_timeout=1.0)

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            pass

        def on_revoke(self, partitions: list[int]) -> None:
            # A worker's poll only: the supervisor's runs on the thread that stops.
            if threading.current_thread().name == "streamguard-worker" and not in_hook.is_set():
                in_hook.set()
                release.wait(20)

    def feed() -> None:
        # A record every 50 ms keeps a worker lingering: it polls, not the supervisor.
        producer = sg.GuardedProducer(bootstrap)
        deadline = time.monotonic() + 60
        for i in range(1200):
            if in_hook.is_set() or time.monotonic() > deadline:
                break
            producer.send(src, order(i))
            producer.flush(5)
            time.sleep(0.05)

    running = start_service(Billing)
    runtime = running.service._ConsumerService__runtime  # type: ignore[attr-defined]
    threading.Thread(target=feed, daemon=True).start()
    assert wait_for(lambda: running.service.health()["checks"]["assigned"])
    other: Consumer | None = None
    try:
        for _ in range(5):  # a member joining revokes a partition; until a worker's poll
            other = Consumer(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": group,
                    "partition.assignment.strategy": "cooperative-sticky",
                    **FAST_GROUP,
                }
            )
            other.subscribe([src])
            deadline = time.monotonic() + 8
            while not in_hook.is_set() and time.monotonic() < deadline:
                other.poll(0.1)
            if in_hook.is_set():
                break
            other.close()
            other = None
        assert in_hook.is_set(), "no revoke ran on a worker's poll"
        # Past FALLBACK_POLL_GAP: the supervisor waits for the poll lock meanwhile.
        time.sleep(0.3)
        hurried = time.monotonic()
        running.service.stop()
        runtime._poller.assignment.hurry.set()  # what a second SIGTERM does
        running.thread.join(5)
        assert not running.thread.is_alive(), "the hurried stop waited for the hook"
        assert time.monotonic() - hurried < 2
        assert not release.is_set()  # the worker was inside the poll all along
        assert "consumer left unclosed" in caplog.text
        # Both lines say whose consumer: a process may run several services.
        names = ("consumer left unclosed", "a worker held the consumer past the shutdown wait")
        lines = [r for r in caplog.records if r.getMessage().startswith(names)]
        assert len(lines) == 2
        assert {(r.service, r.topic) for r in lines} == {(runtime.spec.name, src)}  # type: ignore[attr-defined]
        assert running.error == []
    finally:
        release.set()
        if other is not None:
            other.close()
    poller, publisher = runtime._poller, runtime._publisher

    def closed() -> bool:
        try:
            poller.consumer.assignment()
        except RuntimeError:  # "Consumer closed"
            return True
        return False

    # Its poll ends once the hook returns; the runtime then closes the consumer (left
    # open, it heartbeated on and kept its partitions until max.poll.interval.ms) and
    # releases the DLQ producer.
    try:
        assert wait_for(closed, timeout=10), "the consumer was left open"
        assert not hasattr(publisher, "_producer"), "the DLQ producer was not released"
    finally:
        if not closed() and wait_for(poller.take_consumer, timeout=10):
            poller.consumer.close()


def test_services_of_one_process_share_a_registry(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    bootstrap: str,
) -> None:
    """Two services on two topics, one registry: both run (the second used to fail at
    construction with prometheus-client's duplicate-name error), each counts its own
    topic, and streamguard_ready is 1 only while both are ready."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    topics = topic_factory("orders"), topic_factory("refunds")
    producer = sg.GuardedProducer(bootstrap)
    for i, src in enumerate(topics):
        for n in range(i + 1):
            producer.send(src, order(n))
    producer.flush()

    def service(src: str) -> type[sg.ConsumerService]:
        class Counting(sg.ConsumerService):
            topic = src
            contract = OrderPlaced
            group_id = unique("g")

            def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

        return Counting

    running = [start_service(service(src), registry=registry) for src in topics]
    for count, src in enumerate(topics, start=1):
        assert wait_for(
            lambda src=src, count=count: (
                running[0].metric("streamguard_messages_total", topic=src, outcome="handled")
                == count
            )
        )
    assert wait_for(lambda: running[0].metric("streamguard_ready") == 1)
    running[1].stop()
    assert running[0].metric("streamguard_ready") == 0  # one of them is not ready
    assert running[0].service.health()["ready"]


@pytest.mark.parametrize("handler", ["sync", "async"])
def test_services_sharing_a_registry_release_their_clients_once_dropped(
    handler: str,
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    send_orders: Callable[..., None],
    bootstrap: str,
) -> None:
    """A service that ran and was dropped releases its Kafka clients even though the
    registry it shared lives on, and leaves no gauge series of its topic behind. The
    gauges computed at scrape time (in flight, paused partitions, handlers) held the
    run's state: each dropped service kept its DLQ producer (three librdkafka threads,
    five descriptors) and its consumer for the life of the registry."""
    import gc
    import threading

    from confluent_kafka import Consumer
    from prometheus_client import CollectorRegistry

    from tests.conftest import FAST_GROUP

    def live_clients() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, Producer | Consumer))

    registry = CollectorRegistry()
    handled: list[int] = []
    before = live_clients()
    for run in range(1, 4):
        src = topic_factory("orders")
        send_orders(src, 1)

        class Sync(sg.ConsumerService):
            topic = src
            contract = OrderPlaced
            group_id = unique("g")

            def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
                handled.append(ctx.offset)

        class Async(sg.ConsumerService):
            topic = src
            contract = OrderPlaced
            group_id = unique("g")

            async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
                handled.append(ctx.offset)

        cls = Sync if handler == "sync" else Async
        service = cls(bootstrap, kafka_config=FAST_GROUP, registry=registry)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        try:
            assert wait_for(lambda want=run: len(handled) == want)
        finally:
            service.stop()
            thread.join(30)
        assert not thread.is_alive()
        del service, cls, Sync, Async
        for gauge in ("streamguard_inflight", "streamguard_paused_partitions"):
            labels = {"runtime": "consumer", "topic": src}
            assert registry.get_sample_value(gauge, labels) is None, gauge
    assert live_clients() == before


def test_a_stopped_service_holds_no_producer(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    send_orders: Callable[..., None],
    bootstrap: str,
) -> None:
    """Once run() returned, the service (kept, say, to run again) holds no DLQ
    producer: it used to keep it until the next run or its own end, connected (three
    librdkafka threads, five descriptors) and reconnecting to a cluster that went away.
    It still runs again, and dead-letters in the next run."""
    import gc
    import threading

    from tests.conftest import FAST_GROUP

    def live_producers() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, Producer))

    src = topic_factory("orders")
    dead: list[int] = []

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            raise sg.PermanentError("refused")

        def on_dead_letter(self, ctx: sg.MessageContext, failure: sg.Failure) -> None:
            dead.append(ctx.offset)

    before = live_producers()
    service = Billing(bootstrap, kafka_config=FAST_GROUP)
    for run in range(1, 3):
        send_orders(src, 1)
        thread = threading.Thread(target=service.run, daemon=True)
        thread.start()
        try:
            assert wait_for(lambda want=run: len(dead) == want), f"run {run}: {dead}"
        finally:
            service.stop()
            thread.join(30)
        assert not thread.is_alive()
        assert live_producers() == before


def test_a_run_that_fails_to_start_its_event_loop_leaves_no_signal_handler_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run whose event loop cannot be made (no descriptor left for its epoll) raises
    that error, and gives SIGTERM back to its previous handler: left to the run, SIGTERM
    only set the stop request of a run that had ended, and the process ignored it. The
    service is not left "already running" either."""
    import signal

    import streamguard.runtime.eventloop as eventloop

    def no_descriptors(kind: str = "auto") -> asyncio.AbstractEventLoop:
        raise OSError(24, "Too many open files")

    class Orders(sg.ConsumerService):
        topic = "orders"
        contract = OrderPlaced
        group_id = "g-orders"

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    monkeypatch.setattr(eventloop, "new_event_loop", no_descriptors)
    before = signal.getsignal(signal.SIGTERM)
    service = Orders(bootstrap_servers="127.0.0.1:1")
    for _ in range(2):  # the second run is refused for the same reason, not as running
        with pytest.raises(OSError, match="Too many open files"):
            service.run()
        assert signal.getsignal(signal.SIGTERM) is before


def test_a_stop_while_waiting_for_a_dlq_cluster_that_is_down_returns_at_once(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
) -> None:
    """A DLQ on another cluster is waited for up to 5 s at start-up. A stop (SIGTERM)
    meanwhile returns at once, as one while the source's cluster is waited for: the
    wait was a single call that held the thread, and the stop, for all of it."""
    src = topic_factory("orders")

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")

        def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None: ...

    with refusing_port() as down:
        running = start_service(
            Billing, dead_letter_config={"bootstrap.servers": f"127.0.0.1:{port_of(down)}"}
        )
        time.sleep(1.0)  # the source's cluster answered at once: into the DLQ's wait
        stopped = time.monotonic()
        running.stop()
        assert time.monotonic() - stopped < 2.0
    assert running.error == []
    assert not running.service.health()["checks"]["assigned"]  # it never joined


@pytest.mark.parametrize("ordering", ["key", "none"])
def test_a_record_a_clean_stop_lets_finish_is_still_in_flight(
    topic_factory: Callable[..., str],
    unique: Callable[[str], str],
    start_service: Callable[..., Running],
    send_orders: Callable[..., None],
    ordering: str,
) -> None:
    """Under key or no ordering a clean stop first lets fetched records reach their
    outcome; meanwhile they are still in ``streamguard_inflight``. The stop took the
    lanes out of the assignment before that wait, and the gauge read 0 throughout it."""
    src = topic_factory("orders")
    send_orders(src, 3, key=str)
    entered, release = threading.Event(), threading.Event()

    class Billing(sg.ConsumerService):
        topic = src
        contract = OrderPlaced
        group_id = unique("g")

        async def handle(self, event: OrderPlaced, ctx: sg.MessageContext) -> None:
            if ctx.offset == 1:
                entered.set()
                await asyncio.to_thread(release.wait, 20)

    Billing.ordering = ordering  # type: ignore[assignment]
    running = start_service(Billing)
    try:
        assert entered.wait(20)
        assert wait_for(
            lambda: running.metric("streamguard_messages_total", topic=src, outcome="handled") == 2
        )
        stopping = threading.Thread(target=running.service.stop)
        stopping.start()
        assert wait_for(lambda: not running.service.health()["checks"]["running"])
        time.sleep(0.3)  # the stop waits for the held record to finish
        assert running.metric("streamguard_inflight", topic=src) == 1
    finally:
        release.set()
    running.thread.join(20)
    stopping.join(5)
    assert not running.error
    assert running.metric("streamguard_messages_total", topic=src, outcome="handled") == 3
