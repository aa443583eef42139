"""``streamguard run MODULE:CLASS [MODULE:CLASS ...]``: run consumer services from the
command line, several in one process as ``run_services`` runs them."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys
import sysconfig
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from streamguard import exitcodes
from streamguard.config import load_project_config
from streamguard.errors import ConfigurationError, RegistryUnavailable, StreamguardError
from streamguard.interrupts import ignore_sigterm_until_exit
from streamguard.observe.health import HealthServer
from streamguard.observe.logs import configure_logging, frames
from streamguard.registry.client import REGISTRY_URL_ENV, resolve_registry_config
from streamguard.runtime.runner import exited_in
from streamguard.runtime.service import ConsumerService, service_name
from streamguard.runtime.together import run_services
from streamguard.settings import (
    add_kafka_arguments,
    kafka_config_from_args,
    refuse_callable_setting,
    refused_setting_text,
    tcp_port,
)

log = logging.getLogger("streamguard.runtime")


def load_service_class(target: str) -> type[ConsumerService]:
    """Import ``module:Class`` (the current directory is importable, as with ``python -m``)."""
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigurationError(
            f"expected MODULE:CLASS, e.g. myapp.billing:Billing; got {target!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:  # the module raised at import: name where, as schema check does
        raise ConfigurationError(
            f"cannot import {module_name!r}: {type(exc).__name__}: {exc} "
            f"(at {_user_line(exc, module_name)})"
        ) from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigurationError(f"module {module_name!r} has no attribute {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, ConsumerService)):
        raise ConfigurationError(f"{target} is not an sg.ConsumerService subclass")
    return cls


def _user_line(exc: BaseException, module_name: str) -> str:
    """``file:line`` of the innermost frame of the project's own code: where a module
    raised at import, even when the raise itself is in a library it called
    (``os.environ[...]`` raises in os.py, a bad declaration in streamguard or pydantic).
    The project's code is what lies outside the libraries, or inside the package
    imported (a project installed into site-packages, as in a container image)."""
    if isinstance(exc, SyntaxError) and exc.filename and not exc.filename.startswith("<"):
        # Raised by the compiler, not in a frame of the file: the traceback holds only
        # importlib's (``<frozen importlib._bootstrap>:241``); the error knows the line.
        # Not one of code with no file (``ast.literal_eval`` at import: "<unknown>"),
        # raised in a frame of the project's code, which the frames below find.
        return f"{exc.filename}:{exc.lineno}"
    libraries = (
        *(os.path.join(sysconfig.get_paths()[k], "") for k in ("stdlib", "purelib", "platlib")),
        os.path.join(os.path.dirname(os.path.dirname(__file__)), ""),  # streamguard
        # Code with no file: "<frozen ...>", and "<string>", the __init__ a dataclass
        # generates (ServiceOptions, RetryPolicy), which named "<string>:19", not the
        # declaration's line.
        "<",
    )
    frames = traceback.extract_tb(exc.__traceback__)
    project = _package_paths(module_name)
    ours = [
        f for f in frames if not f.filename.startswith(libraries) or f.filename.startswith(project)
    ]
    frame = (ours or frames)[-1]
    return f"{frame.filename}:{frame.lineno}"


def _package_paths(module_name: str) -> tuple[str, ...]:
    """The file of ``module_name``'s top-level module, or the folders of its package
    (found without running it); none if it cannot be found."""
    try:
        spec = importlib.util.find_spec(module_name.partition(".")[0])
    except (ImportError, ValueError):
        return ()
    if spec is None:
        return ()
    if spec.submodule_search_locations:
        return tuple(os.path.join(p, "") for p in spec.submodule_search_locations)
    return (spec.origin,) if spec.origin else ()


def _cmd_run(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    if args.log_format != "json":
        try:
            return _run(args)
        except StreamguardError:
            raise  # main's plain `streamguard: ...` lines
        except KafkaException as exc:
            if _refused_setting(exc) is not None:
                raise  # main's `streamguard: error: a Kafka setting was refused: ...`
            # Another one (a fatal consumer error, one on_start raised): main let it out
            # as Python's traceback, with its text, unlike the JSON format.
            return _failed(exc)
        except Exception as exc:
            # The user's code (on_start, say): Python's traceback printed its text,
            # which the JSON format leaves out as it may quote a record or a secret.
            return _failed(exc)
    try:
        return _run(args)
    except StreamguardError as exc:
        # The CLI would print it as text (`streamguard: BrokerUnavailable: ...`): the
        # last line, and the one that says why, was then no JSON line, which a log
        # pipeline could not parse (jq stopped on it). The same text, as main writes it.
        code = exitcodes.USAGE if isinstance(exc, ConfigurationError) else exitcodes.FAILED
        text = exc.registry if isinstance(exc, RegistryUnavailable) else str(exc)
        log.error(
            "service failed; exiting",
            extra={"error_class": type(exc).__name__, "error": text, "exit_code": code},
        )
        return code
    except KafkaException as exc:
        # A -X setting librdkafka refuses: main's usage error, which was a text line too.
        error = _refused_setting(exc)
        if error is None:
            return _failed(exc)
        log.error(
            "service failed; exiting",
            extra={
                "error_class": "KafkaException",
                "error": f"a Kafka setting was refused: {refused_setting_text(error.str())}",
                "exit_code": exitcodes.USAGE,
            },
        )
        return exitcodes.USAGE
    except Exception as exc:
        return _failed(exc)


def _refused_setting(exc: KafkaException) -> KafkaError | None:
    """The error of a Kafka setting librdkafka refused, None for another ``exc``."""
    error = exc.args[0] if exc.args else None
    if isinstance(error, KafkaError) and error.code() == KafkaError._INVALID_ARG:
        return error
    return None


def _failed(exc: Exception) -> int:
    """The JSON line of a run the user's code ended (``on_start`` raised, say): Python's
    traceback was no JSON line. Its class and frames only, as the runtime logs the
    user's errors: its text may quote what the code held (a record, a secret)."""
    log.error(
        "service failed; exiting",
        extra={
            "error_class": type(exc).__name__,
            "error": f"{type(exc).__name__} (its text is not logged; see traceback)",
            "exit_code": exitcodes.FAILED,
            "traceback": frames(exc),
        },
    )
    return exitcodes.FAILED


def _run(args: argparse.Namespace) -> int:
    classes = [load_service_class(target) for target in args.target]
    if len(set(classes)) != len(classes):
        raise ConfigurationError("streamguard run: a service class is given twice")
    kafka_config = kafka_config_from_args(args.kafka_config, args.kafka_config_env)
    if args.kafka_config_json:
        kafka_config.update(_json_config(args.kafka_config_json))
    # --schema-registry, then $STREAMGUARD_SCHEMA_REGISTRY_URL, then pyproject's URL.
    schema_registry = resolve_registry_config(
        args.schema_registry, load_project_config().schema_registry_url
    )
    if len(classes) == 1:
        service = classes[0](
            bootstrap_servers=args.bootstrap_servers,
            kafka_config=kafka_config,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            schema_registry=schema_registry,
        )
        run: Callable[[], None] = service.run
    else:
        registry = CollectorRegistry()  # one /metrics for them all
        services = [
            cls(
                bootstrap_servers=args.bootstrap_servers,
                kafka_config=kafka_config,
                registry=registry,
                schema_registry=schema_registry,
            )
            for cls in classes
        ]
        _refuse_clashes(classes)  # once built: a base class is refused as such first

        def run() -> None:
            _run_together(services, registry, args.metrics_host, args.metrics_port)

    try:
        run()
    except (Exception, KeyboardInterrupt):
        raise  # for main, as before: streamguard's errors; KeyboardInterrupt exits 130
    except SystemExit as exc:
        hook = exited_in(exc)
        if hook is None:
            return _crashed(exc)
        # sys.exit(n) in on_start, on_assign, on_revoke, or in on_stop after a clean
        # stop: the service's own stop, with the code Python would exit with (its text,
        # if it carried one, is not printed: exit 1, as Python).
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        extra = {"error_class": "SystemExit", "exit_code": code}
        if hook == "on_start":  # literal events: the runbook's table is checked against them
            log.warning("on_start exited; exiting", extra=extra)
        elif hook == "on_assign":
            log.warning("on_assign exited; exiting", extra=extra)
        elif hook == "on_revoke":
            log.warning("on_revoke exited; exiting", extra=extra)
        else:
            log.warning("on_stop exited; exiting", extra=extra)
        return code
    except BaseException as exc:
        return _crashed(exc)
    if getattr(args, "program", False):
        # Stopped, committed and closed: a SIGTERM in Python's exit now (a supervisor's
        # second one) must not turn this exit 0 into 143, as the run gave SIGTERM back
        # its default.
        ignore_sigterm_until_exit()
    return exitcodes.OK


def _refuse_clashes(classes: list[type[ConsumerService]]) -> None:
    """Several services of one command need names and topics of their own: the
    ``/readyz`` body holds each report under its service's name (the log lines and dead
    letters tell services apart by it too), and the one registry's gauges are per topic
    (in flight, paused, lag): two of one topic wrote each other's series, and the first
    to stop dropped both."""
    names = Counter(service_name(cls) for cls in classes)
    for name, count in names.items():
        if count > 1:
            raise ConfigurationError(
                f"streamguard run: two services are named {name!r}; give one a "
                "service_name of its own"
            )
    topics = Counter(cls.topic for cls in classes)
    for topic, count in topics.items():
        if count > 1:
            raise ConfigurationError(
                f"streamguard run: two services consume {topic!r}; run them in processes "
                "of their own (one /metrics holds one series per topic)"
            )


def _run_together(
    services: list[ConsumerService], registry: CollectorRegistry, host: str, port: int | None
) -> None:
    """``run_services``, with one ``/metrics`` for all and a ``/readyz`` that is ready
    when every service is: one service's own endpoint would answer for it alone, and a
    readiness probe would pass while another had no partition."""
    health = None
    if port is not None:

        def report() -> dict[str, Any]:
            reports = {service_name(type(service)): service.health() for service in services}
            return {
                "ready": all(each["ready"] for each in reports.values()),
                "services": reports,
            }

        health = HealthServer(registry, report, host, port)
        health.start()
    try:
        run_services(*services)
    finally:
        if health is not None:
            health.stop()


def _crashed(exc: BaseException) -> int:
    """What a handler raised that is no outcome (SystemExit, its own CancelledError):
    Python would print its text, which may quote the record, in a traceback that is no
    JSON line. The runtime logged its frames already: name its class."""
    log.error(
        "service crashed; exiting",
        extra={"error_class": type(exc).__name__, "exit_code": exitcodes.FAILED},
    )
    return exitcodes.FAILED


def _json_config(text: str) -> dict[str, Any]:
    """``--kafka-config-json``: a JSON object of librdkafka settings, or a usage error."""
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(
            f"--kafka-config-json is not valid JSON ({exc}); pass an object such as "
            """'{"session.timeout.ms": 6000}' (quote it for your shell)"""
        ) from None
    if not isinstance(parsed, dict):
        raise ConfigurationError(
            "--kafka-config-json must be a JSON object of librdkafka settings, got "
            f"{type(parsed).__name__}"
        )
    for key, value in parsed.items():
        refuse_callable_setting(key, "--kafka-config-json")
        if value is None or not isinstance(value, str | int | float):  # bool is an int
            # The Kafka client would take its Python text: ["a:9092", "b:9092"] as
            # bootstrap.servers failed to resolve "['a:9092'" for startup_timeout.
            # The value is not shown: it may be a secret.
            raise ConfigurationError(
                f"--kafka-config-json: the value of {key!r} is "
                f"{'null' if value is None else 'a JSON ' + _json_kind(value)}; librdkafka "
                "takes a string, a number or a boolean (a list as one comma-separated "
                'string, such as "a:9092,b:9092")'
            )
    return parsed


def _json_kind(value: Any) -> str:
    return "array" if isinstance(value, list) else "object"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def add_run_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run", help="run ConsumerService subclasses (one process) until SIGTERM/SIGINT"
    )
    run.add_argument(
        "target",
        metavar="MODULE:CLASS",
        nargs="+",
        help="e.g. myapp.billing:Billing; several run in one process, one /metrics and "
        "/readyz for all",
    )
    add_kafka_arguments(run)
    run.add_argument("--kafka-config-json", default=None, help="librdkafka settings as JSON")
    run.add_argument(
        "--schema-registry",
        default=None,
        metavar="URL",
        help=(
            "read the Confluent wire format with this registry (default: "
            f"${REGISTRY_URL_ENV}, else pyproject's [tool.streamguard] schema_registry_url)"
        ),
    )
    run.add_argument(
        "--metrics-port", type=tcp_port, default=None, help="serve /metrics, /healthz, /readyz"
    )
    run.add_argument("--metrics-host", default="127.0.0.1", help="address for the HTTP endpoints")
    run.add_argument(
        "--log-format",
        choices=["json", "text"],
        default="json",
        help="one JSON object per line (default), or text for a terminal",
    )
    run.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        metavar="LEVEL",
        help=f"the lowest level logged: {', '.join(LOG_LEVELS)} (default: INFO)",
    )
    run.set_defaults(func=_cmd_run)
