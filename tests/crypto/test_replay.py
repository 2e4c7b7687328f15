"""Sliding replay window: NEW, SEEN and TOO_OLD, checked by hand and against a set model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.device_keys import MAX_COUNTER
from crypto.replay import WINDOW_BITS, Freshness, ReplayWindow


def _window(*counters: int, size: int = WINDOW_BITS) -> ReplayWindow:
    window = ReplayWindow(size)
    for counter in counters:
        window.record(counter)
    return window


def test_empty_window_says_new():
    """An empty window calls every positive counter NEW."""
    window = ReplayWindow()
    assert (window.size, window.highest) == (WINDOW_BITS, 0)
    assert window.check(1) is Freshness.NEW
    assert window.check(MAX_COUNTER) is Freshness.NEW


def test_recorded_counter_is_seen():
    """A recorded counter is SEEN; its neighbours are still NEW."""
    window = _window(5)
    assert window.check(5) is Freshness.SEEN
    assert window.check(4) is Freshness.NEW
    assert window.check(6) is Freshness.NEW
    assert window.highest == 5


def test_check_does_not_change_the_window():
    """Check classifies without recording."""
    window = ReplayWindow()
    assert window.check(3) is Freshness.NEW
    assert window.check(3) is Freshness.NEW
    assert window.highest == 0


def test_out_of_order_in_window():
    """Counters below the highest but inside the window are NEW once, then SEEN."""
    window = _window(10, 12)
    assert window.check(11) is Freshness.NEW
    window.record(11)
    assert [window.check(c) for c in (10, 11, 12)] == [Freshness.SEEN] * 3
    assert window.highest == 12


def test_record_old_counter_inside_window():
    """Recording an old counter still inside the window marks it SEEN without moving highest."""
    window = _window(300)
    window.record(300 - WINDOW_BITS + 1)
    assert window.check(300 - WINDOW_BITS + 1) is Freshness.SEEN
    assert window.highest == 300


def test_edge_of_window():
    """Offset size-1 is still in the window; offset size is TOO_OLD."""
    window = _window(1000, size=16)
    assert window.check(1000 - 15) is Freshness.NEW
    assert window.check(1000 - 16) is Freshness.TOO_OLD


def test_record_below_window_is_ignored():
    """Recording a counter below the window changes nothing; it stays TOO_OLD."""
    window = _window(1000, size=16)
    window.record(10)
    assert window.check(10) is Freshness.TOO_OLD
    assert window.highest == 1000
    assert window.check(999) is Freshness.NEW


def test_window_slides():
    """As the highest counter advances, old counters move from SEEN to TOO_OLD."""
    window = _window(1, 2, 3, size=4)
    window.record(5)
    assert [window.check(c) for c in (1, 2, 3, 4, 5)] == [
        Freshness.TOO_OLD,
        Freshness.SEEN,
        Freshness.SEEN,
        Freshness.NEW,
        Freshness.SEEN,
    ]
    window.record(6)
    assert window.check(2) is Freshness.TOO_OLD


@pytest.mark.parametrize("jump", [15, 16, 17, 1000, 2**20])
def test_large_jump_clears_window(jump: int):
    """A jump forward of any size keeps only the counters still within the window as SEEN."""
    window = _window(1, 2, size=16)
    window.record(2 + jump)
    assert window.check(2 + jump) is Freshness.SEEN
    expected = Freshness.SEEN if jump < 16 else Freshness.TOO_OLD
    assert window.check(2) is expected
    for counter in range(max(3, 2 + jump - 15), 2 + jump):
        assert window.check(counter) is Freshness.NEW


def test_first_record_at_max_counter():
    """The first counter of a window may be the largest counter a frame can carry."""
    window = _window(MAX_COUNTER)
    assert window.check(MAX_COUNTER) is Freshness.SEEN
    assert window.check(MAX_COUNTER - 1) is Freshness.NEW
    assert window.check(1) is Freshness.TOO_OLD


def test_jump_to_max_counter_after_a_frame():
    """After counter 1, an authenticated frame with counter 2**63-1 is recorded in O(window)."""
    window = _window(1)
    window.record(MAX_COUNTER)
    assert window.check(MAX_COUNTER) is Freshness.SEEN
    assert window.check(1) is Freshness.TOO_OLD


def _model(seen: set[int], highest: int, size: int, counter: int) -> Freshness:
    if counter > highest:
        return Freshness.NEW
    if highest - counter >= size:
        return Freshness.TOO_OLD
    return Freshness.SEEN if counter in seen else Freshness.NEW


@given(
    size=st.integers(1, 40),
    ops=st.lists(st.tuples(st.booleans(), st.integers(1, 120)), max_size=80),
)
def test_matches_set_model(size: int, ops: list[tuple[bool, int]]):
    """Check never says SEEN for an unseen counter, nor NEW for a seen one inside the window."""
    window = ReplayWindow(size)
    seen: set[int] = set()
    for do_record, counter in ops:
        verdict = window.check(counter)
        if counter not in seen:
            assert verdict is not Freshness.SEEN
        elif window.highest - counter < size:
            assert verdict is Freshness.SEEN
        assert verdict is _model(seen, max(seen, default=0), size, counter)
        if do_record:
            window.record(counter)
            seen.add(counter)
            assert window.highest == max(seen)
