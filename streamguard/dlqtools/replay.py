"""Replaying dead letters: republish the records a fix addresses, safely and once.

Safety rules, in the order they are checked for each record:

1. **Selection.** Records outside ``--where``/``--since``/``--until`` are left alone.
2. **Loop protection.** A record whose ``sg-replay-count`` already reached
   ``max_replays`` is refused, so a poison message cannot cycle DLQ -> topic -> DLQ
   forever. An unreadable count counts as over the limit.
3. **Topic checks.** The original topic comes from a header, which is untrusted input:
   it must be a legal topic name and, unless ``--to`` is given (the target is then the
   operator's choice, checked once), must not be the DLQ itself, another DLQ or an
   internal topic, and must already exist. A refused record is reported and never
   written anywhere else.
4. **Revalidation** (optional). The value must pass its subject's current contract.

A replayed record keeps key, value and every non-``sg-dlq-*`` header byte for byte, and
gets ``sg-replay-count`` (incremented) and ``sg-replay-at`` (epoch ms). Written to its
original topic, it also goes to its original partition when that still exists, so
per-key order is what the original producer chose, whatever its partitioner.

Idempotence: progress is committed under the replay group only for the longest prefix
(per DLQ partition) of records that reached a final outcome: acknowledged by the
broker (acks=all, idempotent producer), or refused/skipped. A second run of the same
replay starts after that prefix and sends nothing twice. Two windows remain, both
at-least-once and both small: if the process dies between an acknowledgement and the
commit that follows it, or if the broker refuses a record *after* later records of the
same batch were acknowledged, those later records are sent again by the next run.
Batches are flushed and committed at least every ``COMMIT_INTERVAL`` seconds to keep
the first window short (under a slow ``--rate``, before a record's turn rather than
after it); a record the client refuses at ``produce()`` stops the run
before anything after it is sent. Every replayed record carries ``sg-replay-count``, so
a consumer that must be exactly-once can recognise a replay.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streamguard import headers as h
from streamguard.deadletter import DeadLetter
from streamguard.delivery import enqueue
from streamguard.dlqtools.progress import Progress
from streamguard.dlqtools.reader import DlqReader, DlqRecord, PartitionRange, existing_topics
from streamguard.dlqtools.revalidate import Revalidator
from streamguard.dlqtools.selection import Selection
from streamguard.errors import BrokerUnavailable, ConfigurationError
from streamguard.observe.untrusted import escaped, printable, quoted
from streamguard.observe.untrusted import shown as safe_text
from streamguard.offsets import FinalPrefix
from streamguard.producer import PRODUCER_DEFAULTS
from streamguard.topics import (
    MAX_RECORD_BYTES,
    check_topic_name,
    is_dead_letter_topic,
    is_valid_topic_name,
)

REPLAY_LIMIT = "replay_limit"
NO_ORIGINAL_TOPIC = "no_original_topic"
INVALID_TOPIC = "invalid_topic"
REFUSED_TOPIC = "refused_topic"
MISSING_TOPIC = "missing_topic"
STILL_INVALID = "still_invalid"

BATCH_SIZE = 500
COMMIT_INTERVAL = 1.0  # seconds between flush+commit, bounding re-sends after a crash
MAX_REPORTED = 1000  # refused records listed one by one; counts are always complete
PRODUCER_OVERRIDES = {"message.max.bytes": MAX_RECORD_BYTES}
FLUSH_TIMEOUT = 60.0
MAX_COUNT_DIGITS = 9  # a longer sg-replay-count is forged: unreadable, over the limit
# The headers whose values a dry run shows without --show-values: streamguard's own
# stamps, which carry schema identity and replay counts, not data.
SHOWN_HEADERS = frozenset(
    {h.SUBJECT, h.VERSION, h.FINGERPRINT, h.PRODUCER, h.REPLAY_COUNT, h.REPLAY_AT}
)


def default_group(dlq_topic: str, selection: Selection | None = None) -> str:
    """The replay group of a DLQ when ``--group`` is not given.

    A run commits past the records it did not select, so a filtered run gets a group
    of its own (named after its filters): otherwise ``--until T`` would silently hide
    every later record from the next, unfiltered run.
    """
    base = f"streamguard-replay.{dlq_topic}"
    if selection is None or not selection.filters():
        return base
    digest = hashlib.sha256(selection.identity().encode()).hexdigest()[:10]
    return f"{base}.{digest}"


def _protected(topic: str, dlq_topic: str) -> bool:
    """Topics a header may never send a replay to: this DLQ, another DLQ, internal ones.

    Internal topics start with ``_`` (``__consumer_offsets``, ``_schemas``, Confluent's
    ``_confluent-*``); a DLQ follows the dead-letter naming rule.
    """
    return topic == dlq_topic or topic.startswith("_") or is_dead_letter_topic(topic)


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how; the CLI builds one from its flags."""

    to: str | None = None
    selection: Selection = field(default_factory=Selection)
    limit: int | None = None
    rate: float | None = None
    dry_run: bool = False
    max_replays: int = 3
    revalidator: Revalidator | None = None
    show_values: bool = False


@dataclass
class ReplayReport:
    """What a run did; ``failed`` > 0 means some records were not acknowledged in time,
    and the run stopped there, short of the end; ``stopped_idle`` that the cluster sent
    nothing for the reader's idle timeout before the end, and the run stopped short too.

    ``replayed`` counts the records the broker acknowledged (a dry run: those it would
    send), so that an interrupted or failed run says what actually reached the topics.
    """

    dlq_topic: str
    group_id: str
    dry_run: bool
    # The range to read was fixed (to_read is known): a stop before it read nothing.
    planned: bool = False
    to_read: int = 0
    read: int = 0
    replayed: int = 0
    not_selected: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)
    committed: dict[int, int] = field(default_factory=dict)
    # The broker refused or did not answer a commit: the run stopped there.
    commit_error: str | None = None
    # Another run committed under the group meanwhile (two operators, one group): the
    # run stopped and left the group's offsets to the other run.
    group_moved: str | None = None
    errors: list[str] = field(default_factory=list)
    stopped_idle: bool = False
    # --limit records were sent: the rest of the range stays for the next run.
    limit_reached: bool = False

    @property
    def still_invalid(self) -> int:
        return self.skipped[STILL_INVALID]

    @property
    def ok(self) -> bool:
        # Stopped idle, the run did not reach the end: a script that purges the DLQ
        # after a replay that exits 0 would purge records that were never replayed.
        return (
            self.failed == 0
            and self.commit_error is None
            and self.group_moved is None
            and not self.stopped_idle
        )


@dataclass(frozen=True, slots=True)
class _Send:
    topic: str
    partition: int | None
    headers: list[tuple[str, bytes | None]]


class _HeldSignals:
    """Ctrl-C and SIGTERM held while ``holding``, then passed on to the handlers before.

    Delivery reports run inside the producer's poll() and flush(): a KeyboardInterrupt
    raised in one skipped its bookkeeping, so an acknowledged record stayed open,
    nothing after it in its DLQ partition was committed (the next run sent it all
    again) and flush() failed with a SystemError. Installed once per run, so that a
    record costs two attribute writes, not four signal() calls. Only a run's first
    signal is held: an operator who presses Ctrl-C again need not wait for a broker
    that stalls.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.holding = False
        self.held: list[int] = []
        self.stopping = False  # a signal came: the next ones pass on at once
        self._previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may set handlers; its caller owns the signals
            return
        self.stopping, self.held = False, []  # a run of its own
        for s in self.SIGNALS:
            previous = signal.getsignal(s)
            if previous is not None:  # None: a handler Python did not set; leave it
                self._previous[s] = previous
                signal.signal(s, self._on_signal)
        try:
            yield
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous.clear()

    def release(self) -> None:
        """End a held stretch, passing on the signal that came during it."""
        self.holding = False
        if self.held:
            self._pass_on(self.held.pop(), None)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        held = self.holding and not self.stopping
        self.stopping = True
        if held:
            self.held.append(signum)
        else:
            self._pass_on(signum, frame)

    def _pass_on(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.default_int_handler)
        if callable(previous):
            previous(signum, frame)  # default_int_handler: KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        # The handler let the run go on (a caller's that sets a flag, or SIG_IGN): the
        # next signal is held again, or it would land inside a delivery report.
        self.stopping = False


def replay_count(headers: h.Headers) -> int | None:
    """The record's ``sg-replay-count``: 0 if absent, None if unreadable.

    Headers are untrusted, so every occurrence counts: one that is null, empty or not a
    number makes the count unreadable (over the limit), and of several the highest wins.
    Otherwise a forged second header could reset the count and loop a message forever.
    """
    counts: list[int] = []
    for key, value in headers or []:
        if key != h.REPLAY_COUNT:
            continue
        text = value.decode("ascii", "replace").strip() if value is not None else ""
        if not text.isdigit() or len(text) > MAX_COUNT_DIGITS:
            return None  # also too long for int(), which refuses over 4,300 digits
        counts.append(int(text))
    return max(counts, default=0)


class Replayer:
    """Runs one replay of one DLQ; see the module docstring for the rules.

    Args:
        reader: a reader of the DLQ whose ``group_id`` is the replay group.
        options: the selection and the limits.
        out: where dry-run lines go (the summary is the caller's to print).
    """

    def __init__(self, reader: DlqReader, options: ReplayOptions, out: TextIO | None = None):
        self.reader = reader
        self.options = options
        self.out = out if out is not None else sys.stdout  # resolved now, not at import
        self.report = ReplayReport(reader.topic, reader.group_id, options.dry_run)
        self._topics: dict[str, int] = {}  # the cluster's, from check_target
        self._target_checked = False
        # Each open offset says whether it was handed to the producer: open and sent is
        # a failure to publish, open and unsent was stopped before its turn (Ctrl-C in
        # the --rate wait, an unreachable registry), and nothing failed.
        self._prefixes: dict[int, FinalPrefix[bool]] = {}
        # The group's offsets as this run last saw or committed them (None: none).
        self._group_offsets: dict[int, int | None] = {}
        self._sent = 0  # records handed to the producer (a dry run: decided to send)
        self._unsettled = 0  # records produced since the last settle
        self._next_send = 0.0  # monotonic time the next record may go under --rate
        self._last_settle = 0.0  # monotonic time of the last flush and commit
        # A plain client, not GuardedProducer: the bytes are already encoded, and the
        # replay must see a record refused at produce() at once, to stop before sending
        # anything after it (GuardedProducer defers such refusals to flush()).
        self._producer: Producer | None = None
        self._progress = Progress(0)
        self._signals = _HeldSignals()
        self.errors = self.report.errors

    def check_target(self) -> None:
        """Read the cluster's topics and refuse a ``--to`` that cannot be the target
        (``run`` does it first if not done): a command calls it before saying that it
        replays, which it printed before this refusal."""
        options = self.options
        self._topics = existing_topics(
            self.reader.admin, servers=self.reader.client_config["bootstrap.servers"]
        )
        self._target_checked = True
        if options.to is not None:
            check_topic_name(options.to)
            if options.to == self.reader.topic or options.to.startswith("_"):
                raise ConfigurationError(
                    f"--to {options.to!r} is the DLQ being replayed or an internal topic"
                )
            if options.to not in self._topics:
                raise ConfigurationError(
                    f"--to topic {options.to!r} does not exist: create it first, or check "
                    "the name (replay never creates topics)"
                )

    def run(self) -> ReplayReport:
        """Replay up to the DLQ's end at start (or ``limit``); return what happened."""
        options = self.options
        if not self._target_checked:
            self.check_target()
        self._group_offsets = self.reader.committed()
        ranges = self.reader.plan(self._group_offsets)
        self.report.to_read = sum(r.size for r in ranges)
        self.report.planned = True
        if not options.dry_run:
            # acks=all + idempotence, as GuardedProducer: an acknowledged replay is
            # durable and not duplicated by the client's own retries.
            self._producer = Producer(
                {**PRODUCER_DEFAULTS, **PRODUCER_OVERRIDES, **self.reader.client_config}
            )
        progress = self._progress = Progress(self.report.to_read)
        self._last_settle = time.monotonic()
        with self._signals.installed():
            return self._run(ranges, progress)

    def _run(self, ranges: list[PartitionRange], progress: Progress) -> ReplayReport:
        options = self.options
        try:
            for record in self.reader.read(ranges):
                if not self._handle(record):
                    break  # stop, so nothing after it is sent
                report = self.report
                if progress.enabled:
                    progress.update(
                        report.read,
                        f"replayed {report.replayed}  skipped {sum(report.skipped.values())}"
                        f"  not selected {report.not_selected}",
                    )
                if options.limit is not None and self._sent >= options.limit:
                    report.limit_reached = report.read < report.to_read
                    break
                if (
                    time.monotonic() - self._last_settle >= COMMIT_INTERVAL
                    or self._unsettled >= BATCH_SIZE
                ) and not self._settle():
                    break
        finally:
            self._settle()
            progress.update(self.report.read, "done", force=True)
            progress.close()
        self.report.stopped_idle = self.reader.stopped_idle
        return self.report

    def _handle(self, record: DlqRecord) -> bool:
        """Decide on one record and send it; False to stop the run: the producer refused
        the record outright, or a record sent before it failed."""
        if (
            self._unsettled
            and self._next_send - self._last_settle >= COMMIT_INTERVAL
            and not self._settle()
        ):
            # Under a --rate below one a second the records sent so far are committed
            # before the next one's turn, not after it; a failure among them stops the run.
            return False
        letter = record.letter
        report = self.report
        report.read += 1
        prefix = self._prefixes.setdefault(letter.dlq_partition, FinalPrefix())
        # Open from the start: anything that stops the run before the record's outcome
        # (Ctrl-C in the rate's wait, an unreachable registry, a bug) must leave it
        # uncommitted, for the next run to consider again.
        prefix.hold(letter.dlq_offset, False)
        if not self.options.selection.matches(record):
            report.not_selected += 1
            prefix.release(letter.dlq_offset)
            return True
        decision = self._decide(record)
        if not isinstance(decision, _Send):
            prefix.release(letter.dlq_offset)
            reason, detail = decision
            report.skipped[reason] += 1
            if len(report.refused) < MAX_REPORTED:
                report.refused.append(
                    {
                        "dlq": f"{letter.dlq_partition}@{letter.dlq_offset}",
                        "reason": reason,
                        "detail": detail,
                    }
                )
            return True
        if self._producer is None:
            report.replayed += 1
            self._sent += 1
            self._progress.clear()  # on a terminal the line would follow the bar's text
            self.out.write(self._describe(record, decision) + "\n")
            prefix.release(letter.dlq_offset)
            return True
        if self.options.rate:
            self._pace(self.options.rate)
        prefix.hold(letter.dlq_offset, True)  # sent: open until the broker acknowledges it
        self._sent += 1
        self._unsettled += 1
        self._signals.holding = True
        try:
            self._produce(record, decision, prefix)
        except KafkaException as exc:
            # Refused before sending (e.g. larger than message.max.bytes): a failure to
            # publish like any other, so it stays open (uncommitted) and the run stops.
            self.errors.append(f"dlq {letter.dlq_partition}@{letter.dlq_offset}: {exc}")
            return False
        finally:
            self._signals.release()
        return True

    def _pace(self, rate: float) -> None:
        """Wait for this record's turn under ``--rate``: one interval after the last one.

        Each turn follows the previous *turn*, not the moment the wait ended, so the time
        produce() takes does not slow the average. A run that fell behind (a slow first
        fetch, a broker that stalled a flush, records not selected) starts from now: it
        never sends a burst to catch up, since the rate is a cap that protects whatever
        consumes the topic, not an average over the run.
        """
        now = time.monotonic()
        if self._next_send > now:
            time.sleep(self._next_send - now)
            now = self._next_send
        self._next_send = now + 1.0 / rate

    def _produce(self, record: DlqRecord, send: _Send, prefix: FinalPrefix[bool]) -> None:
        assert self._producer is not None
        letter = record.letter
        refused = enqueue(
            self._producer,
            send.topic,
            letter.value,
            key=letter.key,
            headers=send.headers,
            partition=send.partition,
            on_delivery=self._report(letter, prefix),
        )
        if refused is not None:
            raise KafkaException(refused)
        self._producer.poll(0)

    def _report(
        self, letter: DeadLetter, prefix: FinalPrefix[bool]
    ) -> Callable[[KafkaError | None, Message], None]:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                prefix.release(letter.dlq_offset)
                self.report.replayed += 1
            else:  # stays open: nothing from it on is committed, the next run retries
                self.errors.append(
                    f"dlq {letter.dlq_partition}@{letter.dlq_offset} -> {msg.topic()}: {err.str()}"
                )

        return report

    def _decide(self, record: DlqRecord) -> _Send | tuple[str, str]:
        letter = record.letter
        options = self.options
        count = replay_count(letter.original_headers)
        if count is None:
            return REPLAY_LIMIT, f"unreadable {h.REPLAY_COUNT} header; treated as over the limit"
        if count >= options.max_replays:
            return (
                REPLAY_LIMIT,
                f"replayed {count} time(s) already (--max-replays {options.max_replays})",
            )
        original = letter.original_topic
        if not original:
            return NO_ORIGINAL_TOPIC, f"no {h.DLQ_ORIGINAL_TOPIC} header"
        if not is_valid_topic_name(original):
            return INVALID_TOPIC, f"{h.DLQ_ORIGINAL_TOPIC} {original!r} is not a legal topic name"
        if options.to is None and _protected(original, self.reader.topic):
            return (
                REFUSED_TOPIC,
                f"{h.DLQ_ORIGINAL_TOPIC} {original!r} is this DLQ, another DLQ or an internal "
                "topic (use --to to choose a target deliberately)",
            )
        if options.to is None and original not in self._topics:
            return MISSING_TOPIC, f"original topic {original!r} does not exist"
        if options.revalidator is not None:
            problems = options.revalidator.problems(letter)
            if problems:
                shown = "; ".join(f"{p['loc'] or '<root>'}: {p['msg']}" for p in problems[:3])
                more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
                return STILL_INVALID, shown + more
        headers = [
            (k, v) for k, v in letter.original_headers if k not in (h.REPLAY_COUNT, h.REPLAY_AT)
        ]
        headers.append((h.REPLAY_COUNT, str(count + 1).encode()))
        headers.append((h.REPLAY_AT, str(int(time.time() * 1000)).encode()))
        partition: int | None = None
        if options.to is None:
            wanted = letter.int_context(h.DLQ_ORIGINAL_PARTITION)
            if 0 <= wanted < self._topics[original]:
                partition = wanted
        return _Send(options.to or original, partition, headers)

    def _describe(self, record: DlqRecord, send: _Send) -> str:
        """One dry-run line: destination, key, value (digest unless shown) and headers."""
        letter = record.letter
        value = letter.value
        if value is None:
            shown = "null (tombstone)"
        elif self.options.show_values:
            shown = quoted(escaped(value))
        else:
            shown = f"{len(value)} bytes sha256:{hashlib.sha256(value).hexdigest()[:16]}"
        where = send.topic if send.partition is None else f"{send.topic}[{send.partition}]"
        if self.options.show_values:
            # Escaped so that a backslash always starts an escape: a value's byte 0xff
            # and a "\\xff" typed in it read apart.
            key = quoted(None if letter.key is None else escaped(letter.key))
            headers = ", ".join(
                f"{escaped(k.encode())}={'' if v is None else escaped(v)}" for k, v in send.headers
            )
        else:  # keys and header values may be personal data too
            key = "None" if letter.key is None else f"<{len(letter.key)} bytes>"
            # Only streamguard's own headers show a value, and every name and value is
            # reduced to safe characters: the original producer wrote them, so an
            # "sg-email" header, a newline that forges a line or a terminal escape
            # could be among them.
            headers = ", ".join(
                f"{safe_text(k)}={safe_text(v.decode('utf-8', 'replace'))}"
                if k in SHOWN_HEADERS and v is not None
                else str(safe_text(k))
                for k, v in send.headers
            )
        return printable(  # --show-values shows header values as they are
            f"would send dlq {letter.dlq_partition}@{letter.dlq_offset} -> {where} "
            f"key={key} value={shown} headers: {headers}"
        )

    def _settle(self) -> bool:
        """Wait for acknowledgements, then commit each partition's finished prefix.

        Returns False when a record failed: the run stops there, and nothing at or
        after the failed record is committed, so the next run retries it. Ctrl-C waits
        for both: the reports flush() runs and the commit of what they acknowledged.
        """
        self._signals.holding = True
        try:
            return self._settle_held()
        finally:
            self._signals.release()

    def _settle_held(self) -> bool:
        self._last_settle = time.monotonic()
        if self._producer is not None:
            # Each record's outcome arrives through its own delivery report.
            left = self._producer.flush(FLUSH_TIMEOUT)
            if left:
                self.errors.append(f"{left} record(s) not acknowledged within {FLUSH_TIMEOUT}s")
        self._unsettled = 0
        offsets = {
            partition: position
            for partition, prefix in self._prefixes.items()
            if (position := prefix.position) is not None
        }
        # Open now means refused, failed, not acknowledged in time, or left unfinished by
        # an interruption. The run stops at the first settle that finds any, and stays
        # failed: the final settle may yet see a record acknowledged late (a broker
        # back after FLUSH_TIMEOUT) and commit it, but the records after it were never
        # read, and a run that stopped short must not report success. Only records
        # that were sent failed to publish; one interrupted before its turn was not.
        unpublished = sum(sent for p in self._prefixes.values() for sent in p.open_items())
        self.report.failed = max(self.report.failed, unpublished)
        healthy = not any(len(p) for p in self._prefixes.values())
        if offsets and not self.options.dry_run and self.report.commit_error is None:
            if self.report.group_moved is not None or self._group_moved():
                return False
            try:
                self.reader.commit(offsets)
            except KafkaException as exc:
                # Refused (a --group that a running consumer belongs to) or unanswered:
                # stop sending records whose progress cannot be kept, and say so; what
                # was sent since the last commit is sent again by the next run.
                error = exc.args[0] if exc.args else exc
                self.report.commit_error = (
                    error.str() if isinstance(error, KafkaError) else str(error)
                )
                return False
            self.report.committed.update(offsets)
            self._group_offsets.update(offsets)
        return healthy

    def _group_moved(self) -> bool:
        """Whether another run committed under the group since this one last did.

        Two replays under one group (two operators running the same command) would
        each send every record, and each exit 0. Checked before each commit (a round
        trip a settle, not a record), so the second run stops within one settle of
        the other's first commit, and commits nothing over it.
        """
        try:
            now = self.reader.committed()
        except BrokerUnavailable:
            return False  # the commit that follows reports the cluster's trouble
        moved = [f"p{p}={o}" for p, o in sorted(now.items()) if o != self._group_offsets.get(p)]
        if moved:
            self.report.group_moved = ", ".join(moved)
        return bool(moved)
