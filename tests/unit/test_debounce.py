"""The official Qwen3Guard-Stream decision rule (technical report §4.4, eval_stream.py)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from qwenguard.core.streaming.debounce import Debounce, Flag, flag_position
from qwenguard.core.verdict import Risk

S, U, C = Risk.SAFE, Risk.UNSAFE, Risk.CONTROVERSIAL
risks = st.lists(st.sampled_from([S, U, C]), max_size=40)


def test_two_consecutive_unsafe_flag_at_second():
    assert flag_position([S, U, S, U, U, S]) == Flag(U, 4, 3)


def test_single_unsafe_tokens_never_flag():
    assert flag_position([U, S, U, S, C, S, U]) is None


def test_unsafe_pair_wins_over_earlier_controversial_pair_offline():
    # The evaluation script scans for unsafe pairs first.
    assert flag_position([C, C, S, U, U]) == Flag(U, 4, 3)


def test_controversial_pair_and_mixed_pair_report_controversial():
    assert flag_position([S, C, C]) == Flag(C, 2, 1)
    assert flag_position([S, U, C]) == Flag(C, 2, 1)
    assert flag_position([C, U]) == Flag(C, 1, 0)


def test_strings_are_accepted():
    assert flag_position(["safe", "unsafe", "unsafe"]) == Flag(U, 2, 1)


@pytest.mark.parametrize("window", [1, 3])
def test_window_is_configurable(window):
    seq = [S, U, U, S, U, U, U]
    flag = flag_position(seq, window=window)
    assert flag == (Flag(U, 1, 1) if window == 1 else Flag(U, 6, 4))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_window(bad):
    with pytest.raises(ValueError):
        Debounce(bad)
    with pytest.raises(ValueError):
        flag_position([S], window=bad)


def test_online_flags_controversial_then_unsafe_in_one_run():
    d = Debounce()
    flags = d.extend([S, C, C, U, U, U, S, U, U])
    assert flags == [Flag(C, 2, 1), Flag(U, 4, 3), Flag(U, 8, 7)]


def test_reset():
    d = Debounce()
    d.push(U)
    d.reset()
    assert d.push(U) is None


@given(risks, st.integers(1, 4))
def test_online_first_unsafe_flag_matches_offline_rule(seq, window):
    """The first UNSAFE flag online is exactly the offline rule's unsafe answer."""
    offline = flag_position(seq, window)
    online = Debounce(window).extend(seq)
    first_unsafe = next((f for f in online if f.risk is U), None)
    if offline is not None and offline.risk is U:
        assert first_unsafe == offline
    else:
        assert first_unsafe is None
        # Offline controversial answer == the first online flag (nothing unsafe anywhere).
        assert (online[0] if online else None) == offline


@given(risks, st.integers(1, 4))
def test_first_online_flag_is_the_earliest_nonsafe_run(seq, window):
    """Strict mode (controversial counts as unsafe) flags at the first run of `window` non-safe tokens."""
    online = Debounce(window).extend(seq)
    strict = [U if r is not S else S for r in seq]
    expected = flag_position(strict, window)
    assert (online[0].index if online else None) == (expected.index if expected else None)
