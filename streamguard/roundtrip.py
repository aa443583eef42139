"""Whether an event reads back from its wire format as the event that was sent.

A record that decodes is not always the record that was meant: a wire format can carry
a value in a form its contract reads back as something else. A UUID in a ``str | UUID``
union is read back as the ``str`` (JSON and Avro write both as text), a model of a
union as the first model of the same shape, an offset of ``+00:19:32`` (a zone's local
mean time before 1937) as ``+00:19``, bytes written as base64 but read as text as the
base64 text, and Avro drops the undeclared fields of an ``extra="allow"`` model. The
producer compares what it decodes with what it was given, so that such an event is
refused at ``send()`` instead of reaching every consumer changed.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from streamguard.errors import ErrorDetail

ROUND_TRIP = "round_trip"


def round_trip_changes(sent: BaseModel, got: BaseModel) -> list[ErrorDetail]:
    """Where ``got`` (``sent`` encoded and decoded) differs from ``sent``, without values.

    Equal means ``==``, with three allowances: a NaN equals a NaN, two aware datetimes
    at the same instant are equal, and private attributes and ``exclude=True`` fields,
    which no wire format carries by design, are not compared.
    """
    if _same(sent, got):
        return []
    changes: list[ErrorDetail] = []
    _compare(sent, got, [], changes)
    return changes


def _same(sent: Any, got: Any) -> bool:
    try:
        return bool(sent == got)
    except Exception:  # a signalling Decimal NaN raises on comparison: compare in parts
        return False


def _compare(sent: Any, got: Any, loc: list[str | int], out: list[ErrorDetail]) -> None:
    if isinstance(sent, BaseModel) and type(got) is type(sent):
        for name, info in type(sent).model_fields.items():
            if info.exclude is not True:
                _compare(sent.__dict__.get(name), got.__dict__.get(name), [*loc, name], out)
        sent_extra = sent.__pydantic_extra__ or {}
        got_extra = got.__pydantic_extra__ or {}
        for name in [*sent_extra, *(n for n in got_extra if n not in sent_extra)]:
            if name not in got_extra:
                out.append(_change([*loc, name], "reads the event without it (not in the schema)"))
            elif name not in sent_extra:
                out.append(
                    _change(
                        [*loc, name],
                        "reads it back as an undeclared field, which was not sent (a computed "
                        "field, or a serialization alias, of a model with extra='allow')",
                    )
                )
            else:
                _compare(sent_extra[name], got_extra[name], [*loc, name], out)
        return
    if _same(sent, got) or (_nan(sent) and _nan(got)) or _same_instant(sent, got):
        return
    if type(sent) is type(got):
        if isinstance(sent, dict) and sent.keys() == got.keys():
            for key in sent:  # a map's keys are data: never in a location
                _compare(sent[key], got[key], [*loc, "*"], out)
            return
        if isinstance(sent, list | tuple) and len(sent) == len(got):
            for i, (item, back) in enumerate(zip(sent, got, strict=True)):
                _compare(item, back, [*loc, i], out)
            return
        out.append(_change(loc, f"reads back another {type(sent).__name__} than the one sent"))
        return
    got_type = "None" if got is None else type(got).__name__
    out.append(_change(loc, f"reads it back as {got_type}, not as the {type(sent).__name__} sent"))


def _same_instant(sent: Any, got: Any) -> bool:
    # == between aware datetimes of different zones is False for a time in a repeated
    # hour (PEP 495), so a zoneinfo time in the hour a clock goes back, such as
    # 02:30 Europe/Berlin on the last Sunday of October, never equals the fixed offset
    # or UTC time it reads back as, though both name the same instant.
    if not (isinstance(sent, datetime) and isinstance(got, datetime)):
        return False
    if sent.utcoffset() is None or got.utcoffset() is None:
        return False
    return sent.astimezone(UTC) == got.astimezone(UTC)


def _nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, Decimal) and value.is_nan()


def _change(loc: list[str | int], what: str) -> ErrorDetail:
    return {
        "loc": loc,
        "type": ROUND_TRIP,
        "msg": f"a consumer of the wire format {what}",
    }
