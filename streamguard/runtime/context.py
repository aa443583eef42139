"""What a handler knows about the message it is handling, besides the event itself."""

from __future__ import annotations

from typing import Any

from streamguard import headers as h

# A longer sg-version is not a version anyone wrote: forged, or garbage.
MAX_VERSION_DIGITS = 18


class MessageContext:
    """Where a message came from, and which attempt this is.

    Built once per handler call and cheap by design: fields are read from the
    underlying record on access, so a handler that only looks at the event pays for
    none of them.
    """

    __slots__ = ("_msg", "attempt")

    def __init__(self, msg: Any, attempt: int = 1) -> None:
        self._msg = msg
        self.attempt = attempt
        """1 on the first try; 2 on the first retry, and so on."""

    @property
    def topic(self) -> str:
        """The topic the record was consumed from."""
        return str(self._msg.topic())

    @property
    def partition(self) -> int:
        """The record's partition."""
        return int(self._msg.partition())

    @property
    def offset(self) -> int:
        """The record's offset in its partition."""
        return int(self._msg.offset())

    @property
    def key(self) -> bytes | None:
        """The record's key bytes, or None for a keyless record."""
        key: bytes | None = self._msg.key()
        return key

    @property
    def headers(self) -> list[tuple[str, bytes | None]]:
        """All headers in order, repeats included (a copy)."""
        return list(h.read(self._msg))

    @property
    def timestamp_ms(self) -> int | None:
        """The record's timestamp (CreateTime or LogAppendTime) in epoch ms, if any.

        None as well for a negative one: Kafka's "no timestamp" is -1, and a producer
        may write any number (librdkafka reports either as a CreateTime).
        """
        kind, value = self._msg.timestamp()
        # kind 0: TIMESTAMP_NOT_AVAILABLE
        return int(value) if kind != 0 and value >= 0 else None

    @property
    def timestamp(self) -> int | None:
        """Same as ``timestamp_ms``."""
        # A property of its own, not ``timestamp = timestamp_ms``: compiled with mypyc
        # (benchmarks/compiled.py) an aliased property raises on every read.
        return self.timestamp_ms

    @property
    def raw_value(self) -> bytes | None:
        """The bytes as they arrived, for handlers that need to forward them."""
        value: bytes | None = self._msg.value()
        return value

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as text, or None."""
        return h.last(h.read(self._msg), name)

    @property
    def writer_subject(self) -> str | None:
        """The subject the producer stamped (``sg-subject``), if it did."""
        return self.header(h.SUBJECT)

    @property
    def writer_version(self) -> int | None:
        """The contract version the producer stamped (``sg-version``), if it did.

        None as well when the header is not a plain decimal number: anyone can write
        it, and ``int()`` refuses digits ``str.isdigit`` accepts (``²``) and more than
        4,300 of them, which would fail the handler that reads this.
        """
        text = self.header(h.VERSION)
        if not text or len(text) > MAX_VERSION_DIGITS or not text.isascii() or not text.isdigit():
            return None
        return int(text)

    def __repr__(self) -> str:
        return (
            f"MessageContext(topic={self.topic!r}, partition={self.partition}, "
            f"offset={self.offset}, attempt={self.attempt})"
        )
