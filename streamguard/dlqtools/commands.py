"""``streamguard dlq inspect`` and ``streamguard dlq replay``: flags, output, exit codes.

Exit codes follow the CLI's: 0 success, 1 something failed to publish or a commit was
refused, 2 usage or configuration error (including a DLQ or ``--to`` topic that does
not exist).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from streamguard import exitcodes
from streamguard.dlqtools.inspect import render_table, summarize, to_json
from streamguard.dlqtools.reader import DlqReader
from streamguard.dlqtools.replay import (
    STILL_INVALID,
    Replayer,
    ReplayOptions,
    ReplayReport,
    default_group,
)
from streamguard.dlqtools.revalidate import Revalidator
from streamguard.dlqtools.selection import WHERE_KEYS, Selection
from streamguard.errors import ConfigurationError
from streamguard.interrupts import ignore_sigterm_until_exit, sigterm_as_ctrl_c
from streamguard.observe.librdkafka_logs import LOGGER, RepeatsCollapsed
from streamguard.observe.logs import configure_logging
from streamguard.observe.untrusted import cut, printable
from streamguard.settings import add_kafka_arguments, kafka_config_from_args

# The reader of `inspect` never commits; librdkafka still wants a group id to exist.
INSPECT_GROUP = "streamguard-inspect"
SHOWN_REFUSED = 20
# A refusal's detail quotes header text anyone can write (an illegal original topic of
# megabytes) or a still-invalid value's field names: cut, as inspect cuts table cells.
MAX_SHOWN_DETAIL = 500
# Seconds: the longest wait --rate may ask for. time.sleep() waits until monotonic()
# plus the wait, in nanoseconds that must fit 64 bits (TIMEOUT_MAX): a wait near
# TIMEOUT_MAX itself raised OSError (EINVAL) on a machine up for hours. Half of it
# leaves the clock some 146 years.
MAX_WAIT = threading.TIMEOUT_MAX / 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # argparse would name this function in its message
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:  # argparse would name this function in its message
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _rate(text: str) -> float:
    """A ``--rate``: a positive number whose interval between records can be waited for
    (1e-300 made time.sleep() raise OverflowError at the second record)."""
    value = _positive_float(text)
    if 1.0 / value > MAX_WAIT:
        raise argparse.ArgumentTypeError(
            f"expected at least {1.0 / MAX_WAIT:.1e} messages a second, got {text}"
        )
    return value


@contextlib.contextmanager
def _client_config(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The -X settings for the command's clients, their librdkafka lines logged in the
    CLI's text format, each kind once and the count of the rest at the end: a cluster
    that is down made librdkafka print a connect failure every backoff, some 200 lines
    that buried the command's own error. With ``-X debug=...`` librdkafka writes every
    line itself, as asked."""
    config = kafka_config_from_args(args.kafka_config, args.kafka_config_env)
    if "debug" in config:
        yield config
        return
    configure_logging("text", "WARNING")
    LOGGER.setLevel(logging.INFO)  # librdkafka's notices too, as it prints them itself
    with RepeatsCollapsed() as lines:
        yield {**config, "logger": lines}


def _common(parser: argparse.ArgumentParser, limit_help: str) -> None:
    parser.add_argument("topic", metavar="TOPIC", help="the dead-letter topic, e.g. orders.dlq")
    add_kafka_arguments(parser)
    parser.add_argument("--limit", type=_positive_int, default=None, metavar="N", help=limit_help)
    parser.add_argument(
        "--show-values",
        action="store_true",
        help="also show keys' and values' contents and handler error texts (may be personal data)",
    )


def _selection_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--where``/``--since``/``--until``, the same for both commands, so that an
    operator inspects exactly the records a replay with the same flags selects."""
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"{what} whose sg-dlq-KEY header is VALUE, e.g. reason=contract_violation; "
        f"KEY is one of {', '.join(sorted(WHERE_KEYS))} (topic, subject and group are "
        "short for original-topic, expected-subject and consumer-group; a repeated key: "
        "any of its values; different keys: all must match)",
    )
    parser.add_argument(
        "--since",
        default=None,
        metavar="TIME",
        help=f"{what} dead-lettered at or after TIME: ISO 8601 (UTC if no zone), a duration "
        "ago (30m, 2h, 1d) or epoch ms",
    )
    parser.add_argument(
        "--until",
        default=None,
        metavar="TIME",
        help=f"{what} dead-lettered before TIME (same forms as --since)",
    )


def add_dlq_parser(subparsers: Any) -> None:
    """Add ``dlq inspect`` and ``dlq replay`` to the ``streamguard`` command."""
    dlq = subparsers.add_parser("dlq", help="inspect and replay dead-letter topics")
    sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    inspect = sub.add_parser(
        "inspect", help="summarise a DLQ by cause, reading it without joining a group"
    )
    _common(inspect, "summarise only the first N (selected) records")
    inspect.add_argument("--format", choices=("table", "json"), default="table")
    _selection_arguments(inspect, "summarise only records")
    inspect.set_defaults(func=_cmd_inspect)

    replay = sub.add_parser("replay", help="republish selected dead letters to their topics")
    _common(replay, "stop after N replayed records; the next run continues from there")
    replay.add_argument("--to", default=None, metavar="TOPIC", help="write here instead")
    _selection_arguments(replay, "replay only records")
    replay.add_argument(
        "--rate",
        type=_rate,
        default=None,
        metavar="MSG_PER_S",
        help="send at most this many records a second",
    )
    replay.add_argument("--dry-run", action="store_true", help="write and commit nothing")
    replay.add_argument(
        "--revalidate",
        action="store_true",
        help="replay only values that pass their subject's current contract",
    )
    replay.add_argument(
        "--config",
        default=None,
        metavar="PATH",
        help="with --revalidate, the pyproject.toml with [tool.streamguard]",
    )
    replay.add_argument(
        "--schema-registry",
        default=None,
        metavar="URL",
        help="with --revalidate, read Confluent-framed values (and Avro contracts) through this "
        "registry (default: $STREAMGUARD_SCHEMA_REGISTRY_URL, then schema_registry_url)",
    )
    replay.add_argument("--max-replays", type=_positive_int, default=3, metavar="N")
    replay.add_argument(
        "--group",
        default=None,
        help="the replay group (default streamguard-replay.<TOPIC>; a run with --where, "
        "--since or --until gets its own group, streamguard-replay.<TOPIC>.<hash of the "
        "filters>, so it never hides records from an unfiltered run)",
    )
    replay.set_defaults(func=_cmd_replay)


def _cmd_inspect(args: argparse.Namespace) -> int:
    selection = Selection.parse(args.where, args.since, args.until)
    with (
        _client_config(args) as kafka_config,
        DlqReader(
            args.bootstrap_servers, args.topic, group_id=INSPECT_GROUP, kafka_config=kafka_config
        ) as reader,
    ):
        ranges = reader.plan()
        summary = summarize(
            args.topic,
            reader.read(ranges),
            show_values=args.show_values,
            limit=args.limit,
            selection=selection,
        )
        summary.total = sum(r.size for r in ranges)
        summary.ends = {
            r.partition: summary.read_to.get(r.partition, r.start) if summary.limited else r.end
            for r in ranges
        }
        summary.stopped_idle = reader.stopped_idle
    print(to_json(summary) if args.format == "json" else render_table(summary))
    # Counts that stopped short are not the DLQ's: a script must not take them for it.
    return exitcodes.FAILED if summary.stopped_idle else exitcodes.OK


def _cmd_replay(args: argparse.Namespace) -> int:
    # Only --revalidate reads them: without it they were ignored, and a user who gave
    # them took the replay for checked against those contracts or that registry.
    unused = [
        flag
        for flag, value in (("--config", args.config), ("--schema-registry", args.schema_registry))
        if value is not None
    ]
    if unused and not args.revalidate:
        verb, them = ("apply", "them") if len(unused) > 1 else ("applies", "it")
        raise ConfigurationError(
            f"{' and '.join(unused)} only {verb} with --revalidate: add it, or leave {them} out"
        )
    selection = Selection.parse(args.where, args.since, args.until)
    revalidator = None
    if args.revalidate:
        from streamguard.config import load_project_config
        from streamguard.registry.client import resolve_registry_config
        from streamguard.schema.store import SchemaStore

        project = load_project_config(args.config)
        contracts = project.contracts_by_subject()
        if not contracts:
            raise ConfigurationError(
                "--revalidate found no contracts: list your contract modules in "
                "[tool.streamguard] contracts, or point --config at that pyproject.toml"
            )
        store = SchemaStore(project.schemas_dir)
        writers = {
            subject: [
                store.load(subject, v, ".avsc")
                for v in store.versions(subject)
                if store.has(subject, v, ".avsc")
            ]
            for subject, contract in contracts.items()
            if contract.__wire_format__ == "avro"
        }
        registry = resolve_registry_config(args.schema_registry, project.schema_registry_url)
        revalidator = Revalidator(contracts, avro_writer_schemas=writers, schema_registry=registry)
    options = ReplayOptions(
        to=args.to,
        selection=selection,
        limit=args.limit,
        rate=args.rate,
        dry_run=args.dry_run,
        max_replays=args.max_replays,
        revalidator=revalidator,
        show_values=args.show_values,
    )
    group = args.group or default_group(args.topic, selection)
    report: ReplayReport | None = None
    try:
        with (
            sigterm_as_ctrl_c(),
            _client_config(args) as kafka_config,
            DlqReader(
                args.bootstrap_servers, args.topic, group_id=group, kafka_config=kafka_config
            ) as reader,
        ):
            report = _replay(args, reader, options, selection, group)
            if getattr(args, "program", False):
                ignore_sigterm_until_exit()
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM once the run had finished, in the clients' teardown: it
        # changes nothing, the replay's own status stands.
        if report is None:
            raise
    print(render_report(report))
    return exitcodes.OK if report.ok else exitcodes.FAILED


def _replay(
    args: argparse.Namespace,
    reader: DlqReader,
    options: ReplayOptions,
    selection: Selection,
    group: str,
) -> ReplayReport:
    """Say what is replayed, replay it, and on a stop say how far it came."""
    replayer = Replayer(reader, options)
    replayer.check_target()  # a --to it refuses is refused before the line below
    print(
        f"replaying {args.topic} as group {group} ({selection.describe()})"
        + (" [dry run: nothing is written or committed]" if args.dry_run else ""),
        flush=True,
    )
    try:
        return replayer.run()
    except BaseException as exc:
        # Ctrl-C, SIGTERM, or an error once records were read (the registry out of
        # reach under --revalidate, say): what was sent is settled and committed by
        # now; say what that came to, or the operator cannot tell where it stopped.
        interrupted = isinstance(exc, KeyboardInterrupt)
        if interrupted or replayer.report.read:
            print(render_report(replayer.report), flush=True)
            why = "interrupted" if interrupted else "stopped by the error below"
            # Run again as it is, a configuration error stops at the same record.
            fix = "fix it, then " if isinstance(exc, ConfigurationError) else ""
            print(f"{why}: {fix}run the same replay again to continue", flush=True)
        raise


def render_report(report: ReplayReport) -> str:
    """The final summary: replayed, skipped by reason, still invalid, failed."""
    verb = "would replay" if report.dry_run else "replayed"
    refused = {r: n for r, n in sorted(report.skipped.items()) if r != STILL_INVALID}
    detail = ", ".join(f"{reason} {n}" for reason, n in refused.items())
    lines = [
        f"{report.dlq_topic}: {verb} {report.replayed}; "
        f"skipped {sum(refused.values())}" + (f" ({detail})" if detail else "") + "; "
        f"still invalid {report.still_invalid}; not selected {report.not_selected}; "
        f"failed to publish {report.failed}",
        f"  read {report.read} of the {report.to_read} record(s) between the position of "
        f"group {report.group_id} and the end of the DLQ at start"
        if report.planned
        # Stopped while finding the range, whose size is unknown: not "0 of the 0".
        else "  stopped before reading the DLQ: nothing was read, sent or committed",
    ]
    for item in report.refused[:SHOWN_REFUSED]:
        # A still-invalid record's locations may name its undeclared fields: printable.
        detail = cut(str(item["detail"]), MAX_SHOWN_DETAIL)
        lines.append(printable(f"  refused dlq {item['dlq']}: {item['reason']}: {detail}"))
    skipped = sum(report.skipped.values())  # report.refused lists at most MAX_REPORTED
    if skipped > SHOWN_REFUSED:
        lines.append(f"  ... and {skipped - SHOWN_REFUSED} more refused")
    if report.committed:
        done = ", ".join(f"p{p}={o}" for p, o in sorted(report.committed.items()))
        lines.append(f"  committed under group {report.group_id}: {done}")
    if report.commit_error is not None:
        lines.append(
            f"  not committed under group {report.group_id}: {report.commit_error}: the run "
            "stopped, and the next run sends again what it sent after its last commit "
            "(--group must name a group of the replay's own, never a running consumer's)"
        )
    if report.group_moved is not None:
        lines.append(
            f"  not committed under group {report.group_id}: another run committed under it "
            f"meanwhile ({report.group_moved}): both runs sent what each read since; this run "
            "stopped: run the same replay again once the other has finished, and give "
            "concurrent replays a --group each"
        )
    if report.limit_reached:
        lines.append(
            "  stopped at --limit: the rest of the range stays in the DLQ; run the same "
            "replay again to continue from what was committed"
        )
    if report.stopped_idle:
        lines.append(
            "  stopped: nothing arrived from the cluster for the idle timeout before the "
            "end recorded at start; run the same replay again to continue"
        )
    for error in report.errors[:SHOWN_REFUSED]:
        lines.append(f"  failed: {error}")
    if report.failed:
        lines.append(
            "  the run stopped early at a record that failed to publish: run the same "
            "replay again to continue from what was committed"
        )
    return "\n".join(lines)
