"""Which DLQ records a replay picks: ``--where``, ``--since`` and ``--until``.

Filters match the ``sg-dlq-*`` context headers, so an operator can replay exactly the
records a fix addresses (``--where reason=contract_violation``) and leave the rest in
the DLQ. Repeating a key means "any of these values"; different keys must all match.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from streamguard import headers as h
from streamguard.deadletter import REASONS
from streamguard.dlqtools.reader import DlqRecord
from streamguard.errors import ConfigurationError

# --where keys: the sg-dlq-* header names without their prefix, plus short aliases.
WHERE_KEYS: dict[str, str] = {
    name.removeprefix(h.DLQ_PREFIX): name
    for name in (
        h.DLQ_REASON,
        h.DLQ_ORIGINAL_TOPIC,
        h.DLQ_ORIGINAL_PARTITION,
        h.DLQ_ERROR_CLASS,
        h.DLQ_EXPECTED_SUBJECT,
        h.DLQ_EXPECTED_VERSION,
        h.DLQ_CONSUMER_GROUP,
        h.DLQ_SERVICE,
        h.DLQ_HOST,
    )
}
WHERE_KEYS |= {
    "topic": h.DLQ_ORIGINAL_TOPIC,
    "subject": h.DLQ_EXPECTED_SUBJECT,
    "group": h.DLQ_CONSUMER_GROUP,
}

# The last epoch millisecond a UTC ISO time shows: 9999-12-31T23:59:59.999Z.
MAX_SHOWN_MS = 253_402_300_799_999
_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, *, now: datetime | None = None) -> int:
    """A ``--since``/``--until`` value as epoch milliseconds.

    Accepts ISO 8601 (``2026-11-27T14:05:00Z``, ``2026-11-27``; no zone means UTC),
    a duration ago (``30m``, ``2h``, ``1d``), or epoch milliseconds (``1795788000000``).
    """
    value = text.strip()
    try:
        if value.isdigit() and len(value) >= 12:
            return int(value)  # ValueError past Python's 4,300 digits
        relative = _RELATIVE.fullmatch(value)
        if relative:
            amount, unit = int(relative.group(1)), relative.group(2)
            moment = (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
            return int(moment.timestamp() * 1000)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp() * 1000)
    except (ValueError, OverflowError):  # OverflowError: a duration beyond year 1
        raise ConfigurationError(
            f"cannot read time {text!r}: use ISO 8601 (2026-11-27T14:05:00Z), a duration "
            "ago (30m, 2h, 1d) or epoch milliseconds"
        ) from None


def duration_ago(text: str) -> str | None:
    """``text`` as a normalised duration ago (``" 01d"`` -> ``"1d"``), None if it is not one."""
    relative = _RELATIVE.fullmatch(text.strip())
    return f"{int(relative.group(1))}{relative.group(2)}" if relative else None


def dead_lettered_ms(record: DlqRecord) -> int:
    """When the record was dead-lettered: its header, else the DLQ record's timestamp.

    The header is untrusted input: a value that is no time a date can show (garbled,
    negative, past the year 9999) counts as missing.
    """
    moment = record.letter.int_context(h.DLQ_DEAD_LETTERED_MS)
    return moment if 0 <= moment <= MAX_SHOWN_MS else record.timestamp_ms


# The most digits a --where integer may have: int() converts this many under any limit
# Python may be set to (sys.int_info.str_digits_check_threshold), and no partition or
# version comes near it.
_MAX_DIGITS = 640
# Keys whose headers streamguard writes as decimal integers, and the least value each takes.
_INTEGER_KEYS: dict[str, tuple[int, str]] = {
    h.DLQ_ORIGINAL_PARTITION: (0, "a partition number, 0 or more"),
    h.DLQ_EXPECTED_VERSION: (1, "a contract version, 1 or more"),
}


def _where_value(item: str, header: str, value: str) -> str:
    """A ``--where`` value as the header holds it; one that streamguard never writes
    (empty, a reason's typo, a partition that is no number) would select nothing,
    silently, and show in the report as a filter: refused, naming the form expected."""
    text = value.strip()
    if not text:
        raise ConfigurationError(f"--where {item!r}: expected a value after the =")
    if header == h.DLQ_REASON and text not in REASONS:
        raise ConfigurationError(
            f"--where {item!r}: no such reason; the reasons are {', '.join(REASONS)}"
        )
    if header in _INTEGER_KEYS:
        least, form = _INTEGER_KEYS[header]
        # Decimal digits only: int() also reads "1_0" as 10 and "\u0663" as 3; and no
        # more than int() converts (4,300 by default): past that it raised a traceback.
        digits = text.isascii() and text.isdigit() and len(text) <= _MAX_DIGITS
        number = int(text) if digits else least - 1
        if number < least:
            raise ConfigurationError(f"--where {item!r}: expected {form}")
        return str(number)  # as written ("%d"): 07 selects partition 7
    return text


@dataclass(frozen=True)
class Selection:
    """The records an operator asked for; ``describe()`` says it in words for reports."""

    where: dict[str, frozenset[str]] = field(default_factory=dict)
    since_ms: int | None = None
    until_ms: int | None = None
    # A --since/--until given as a duration ago ("1d"), as typed: it names the same
    # filter on every run, where since_ms moves with the clock.
    since_ago: str | None = None
    until_ago: str | None = None

    @classmethod
    def parse(
        cls, where: Iterable[str] = (), since: str | None = None, until: str | None = None
    ) -> Selection:
        """Build a selection from CLI text, refusing unknown keys with the known ones."""
        wanted: dict[str, set[str]] = {}
        for item in where:
            key, sep, value = item.partition("=")
            header = WHERE_KEYS.get(key.strip().lower())
            if not sep or header is None:
                raise ConfigurationError(
                    f"--where {item!r}: expected KEY=VALUE with KEY one of "
                    f"{', '.join(sorted(WHERE_KEYS))}"
                )
            wanted.setdefault(header, set()).add(_where_value(item, header, value))
        now = datetime.now(UTC)  # one clock for both: "--since 1h --until 1h" is one time
        since_ms = parse_time(since, now=now) if since else None
        until_ms = parse_time(until, now=now) if until else None
        # The window includes --since and excludes --until: equal, it selects nothing.
        if since_ms is not None and until_ms is not None and since_ms >= until_ms:
            raise ConfigurationError(
                f"--since {since!r} is not before --until {until!r}: the window selects nothing"
            )
        return cls(
            {k: frozenset(v) for k, v in wanted.items()},
            since_ms,
            until_ms,
            since_ago=duration_ago(since) if since else None,
            until_ago=duration_ago(until) if until else None,
        )

    def matches(self, record: DlqRecord) -> bool:
        """True if the record passes every filter."""
        context = record.letter.context
        for header, values in self.where.items():
            value = context.get(header)
            if value in values:
                continue
            # `inspect` shows error classes without their module (KeyError, not
            # builtins.KeyError): the name an operator copies from it selects them too.
            if header == h.DLQ_ERROR_CLASS and value and value.rsplit(".", 1)[-1] in values:
                continue
            return False
        if self.since_ms is not None or self.until_ms is not None:
            moment = dead_lettered_ms(record)
            if self.since_ms is not None and moment < self.since_ms:
                return False
            if self.until_ms is not None and moment >= self.until_ms:
                return False
        return True

    def filters(self) -> bool:
        """True when the selection narrows the DLQ at all."""
        return bool(self.where) or self.since_ms is not None or self.until_ms is not None

    def describe(self) -> str:
        """The selection in words, its times resolved (for reports)."""
        return self._words(resolved=True)

    def identity(self) -> str:
        """The selection as the operator gave it: the same on every run of one command,
        a relative time as typed (``since 1d ago``), so that the replay group named
        after it (``default_group``) resumes instead of starting over."""
        return self._words(resolved=False)

    def _words(self, *, resolved: bool) -> str:
        parts = [
            f"{header.removeprefix(h.DLQ_PREFIX)} in {{{', '.join(sorted(values))}}}"
            for header, values in sorted(self.where.items())
        ]
        for word, ms, ago in (
            ("since", self.since_ms, self.since_ago),
            ("before", self.until_ms, self.until_ago),
        ):
            if ms is not None:
                when = f"{ago} ago" if ago and not resolved else _boundary(ms)
                parts.append(f"dead-lettered {word} {when}")
        return "; ".join(parts) or "all records"


def _boundary(ms: int) -> str:
    """A ``--since``/``--until`` time to the millisecond it compares with.

    To the second when that is exact (as before), else with milliseconds: the replay
    group is named after these words, and two windows that differ within a second
    (``--until 1795788000100`` and ``--until 1795788000900``) must not share one, or the
    second run would resume past the records the first did not select.
    """
    if ms % 1000 == 0 or ms > MAX_SHOWN_MS:  # past the year 9999: the number, as format_ms
        return format_ms(ms)
    return format_ms(ms - ms % 1000).removesuffix("Z") + f".{ms % 1000:03d}Z"


def format_ms(ms: int) -> str:
    """Epoch milliseconds as a UTC ISO time to the second, '-' when unknown, the number
    itself past the year 9999 (a producer may set any timestamp)."""
    if ms < 0:
        return "-"
    if ms > MAX_SHOWN_MS:
        return str(ms)
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
