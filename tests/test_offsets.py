"""The commit position is the end of the longest prefix of final outcomes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamguard.offsets import FinalPrefix


def test_empty_prefix_has_no_position() -> None:
    """Nothing joined: nothing to commit."""
    assert FinalPrefix[None]().position is None


def test_advance_moves_the_position_to_the_end() -> None:
    """Records final on arrival move the position past the last of them."""
    prefix = FinalPrefix[None]()
    prefix.advance(10)
    assert prefix.position == 10


def test_position_never_moves_backwards() -> None:
    """A smaller end (a batch seen again) does not lower the position."""
    prefix = FinalPrefix[None]()
    prefix.advance(10)
    prefix.advance(4)
    assert prefix.position == 10


def test_an_open_offset_holds_the_position() -> None:
    """A held offset stops the position at itself, whatever joined after it."""
    prefix = FinalPrefix[str]()
    prefix.hold(3, "dead letter in flight")
    prefix.advance(8)
    assert prefix.position == 3
    assert prefix.release(3) == "dead letter in flight"
    assert prefix.position == 8


def test_the_first_open_offset_wins() -> None:
    """With several open, the lowest holds the position; releasing out of order is fine."""
    prefix = FinalPrefix[int]()
    for offset in (2, 5, 7):
        prefix.hold(offset, offset)
    prefix.release(5)
    assert prefix.position == 2
    assert len(prefix) == 2
    prefix.release(2)
    assert prefix.position == 7
    assert list(prefix.open_items()) == [7]
    prefix.release(7)
    assert prefix.position == 8


def test_releasing_an_unknown_offset_is_harmless() -> None:
    """A late or repeated release returns None and changes nothing."""
    prefix = FinalPrefix[None]()
    prefix.advance(3)
    assert prefix.release(1) is None
    assert prefix.position == 3


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_position_never_passes_an_open_offset(data: st.DataObject) -> None:
    """Records join in offset order, with gaps (compaction, transaction markers), each
    final on arrival or held; releases come in any order, some for offsets never held or
    already released. The position is always the lowest open offset, or the end of
    everything that joined: never past a record without a final outcome."""
    prefix = FinalPrefix[int]()
    offset = data.draw(st.integers(0, 1000))
    open_: set[int] = set()
    last = -1
    for gap in data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=40)):
        while open_:
            if not data.draw(st.booleans()):
                break
            released = data.draw(st.sampled_from(sorted(open_)))
            assert prefix.release(released) == released
            open_.discard(released)
        if data.draw(st.booleans()):
            prefix.hold(offset, offset)
            open_.add(offset)
        else:
            prefix.advance(offset + 1)
        last = offset
        stray = data.draw(st.integers(-1, offset + 5))
        if stray not in open_:
            assert prefix.release(stray) is None
        assert prefix.position == (min(open_) if open_ else last + 1)
        assert prefix.end == last + 1
        assert list(prefix.open_items()) == sorted(open_)
        offset += gap
