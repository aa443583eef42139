"""The ``streamguard`` command: run a service, a local broker, the demo, and the tools.

Each command group lives beside the concept it drives (``schema`` in
``streamguard.schema.commands``, ``dlq`` in ``streamguard.dlqtools.commands``); this
module only wires them together. Exit codes are in ``streamguard.exitcodes``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial

from confluent_kafka import KafkaError, KafkaException

from streamguard import __version__, exitcodes
from streamguard.dlqtools.commands import add_dlq_parser
from streamguard.errors import ConfigurationError, RegistryUnavailable, StreamguardError
from streamguard.interrupts import sigterm_as_ctrl_c
from streamguard.registry.commands import add_registry_parser
from streamguard.runtime.commands import add_run_parser
from streamguard.schema.commands import add_schema_parser
from streamguard.settings import bind_address, refused_setting_text, tcp_port


def _cmd_broker(args: argparse.Namespace) -> int:
    from streamguard.devbroker import DevBroker

    broker = DevBroker(port=args.port, host=args.host)
    address = broker.start()
    # This process's pid, not the broker binary's: stopping this one stops both.
    print(f"streamguard broker listening on {address} (pid {os.getpid()})", flush=True)
    print(f"  export STREAMGUARD_BOOTSTRAP_SERVERS={address}", flush=True)
    print("  in-memory: nothing is kept when it stops. Ctrl-C stops it.", flush=True)

    try:
        with sigterm_as_ctrl_c():
            status = broker.wait()
    except KeyboardInterrupt:
        broker.stop()
        print("streamguard broker stopped", flush=True)
        return exitcodes.OK
    print(f"streamguard broker exited unexpectedly (status {status})", file=sys.stderr)
    return exitcodes.FAILED


def _cmd_demo(args: argparse.Namespace) -> int:
    from streamguard.demo.run import run_demo

    code: int = run_demo(bootstrap_servers=args.bootstrap_servers)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamguard",
        description="Schema-guarded Kafka consumers, schema checks and dead-letter tools.",
    )
    parser.add_argument("--version", action="version", version=f"streamguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    broker = sub.add_parser("broker", help="run the embedded Kafka broker in the foreground")
    broker.add_argument(
        "--port",
        type=partial(tcp_port, lowest=1),  # it advertises its port: 0 cannot be advertised
        default=9092,
        help="port to listen on (9092)",
    )
    broker.add_argument(
        "--host", type=bind_address, default="127.0.0.1", help="address to bind (loopback)"
    )
    broker.set_defaults(func=_cmd_broker)

    demo = sub.add_parser("demo", help="run the end-to-end demo on an embedded broker")
    demo.add_argument(
        "--bootstrap-servers", default=None, help="use this cluster instead of an embedded one"
    )
    demo.set_defaults(func=_cmd_demo)

    add_run_parser(sub)
    add_schema_parser(sub)
    add_registry_parser(sub)
    add_dlq_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Without argv, main() is the program (the console script, python -m): a command
    # may then decide how the process exits; a caller's own process is left alone.
    args.program = argv is None
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a reader that left (`| head`) shows here, not at exit
    except BrokenPipeError:
        # Nobody reads the rest: no traceback, and none again when Python flushes
        # stdout at exit (it would print "Exception ignored ... BrokenPipeError").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exitcodes.FAILED
    except ConfigurationError as exc:
        print(f"streamguard: error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except RegistryUnavailable as exc:
        # Its text says records wait, as they do in a service; a command stops here.
        print(f"streamguard: {type(exc).__name__}: {exc.registry}", file=sys.stderr)
        return exitcodes.FAILED
    except StreamguardError as exc:
        print(f"streamguard: {type(exc).__name__}: {exc}", file=sys.stderr)
        return exitcodes.FAILED
    except KafkaException as exc:
        # librdkafka refusing a -X/--kafka-config setting (an unknown key, a bad value)
        # when a client is built: a usage error, like a bad option, not a traceback.
        error = exc.args[0] if exc.args else None
        if not (isinstance(error, KafkaError) and error.code() == KafkaError._INVALID_ARG):
            raise
        refused = refused_setting_text(error.str())
        print(f"streamguard: error: a Kafka setting was refused: {refused}", file=sys.stderr)
        return exitcodes.USAGE
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
