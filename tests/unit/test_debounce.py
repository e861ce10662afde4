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


# -- categories of a run the policy let go on (rt65k F1, rt65m R4) ------------------------------------------------
P, V, N = "Politically Sensitive Topics", "Violent", "Non-violent Illegal Acts"


def pushed(d, tokens):
    """Push (risk, category) pairs; the flags raised, as (index, start, risk, categories)."""
    return [(f.index, f.start, f.risk, f.categories) for r, c in tokens if (f := d.push(r, c)) is not None]


def test_one_token_of_another_category_in_a_flagged_run_flags_nothing():
    # rt65m R4: the category head misreads one token of a political run; two misreadings apart do not add up.
    run = [(U, P)] * 4 + [(U, V)] + [(U, P)] * 4 + [(U, V)] + [(U, P)] * 4
    assert pushed(Debounce(), run) == [(1, 0, U, (P,))]


@pytest.mark.parametrize("window", [2, 3])
def test_a_category_joins_the_run_on_window_consecutive_tokens_of_it(window):
    d = Debounce(window)
    run = [(U, P)] * 5 + [(U, V)] * (window - 1)
    assert pushed(d, run) == [(window - 1, 0, U, (P,))]
    assert d.pending == window - 1  # the new category's tokens may yet flag the run: a release stops before them
    # The flag's window is the new category's tokens: the run is stopped where they start.
    assert pushed(d, [(U, V)]) == [(5 + window - 1, 5, U, (P, V))]
    assert d.pending == 0
    assert pushed(d, [(U, V), (U, P), (U, V)] * 3) == []  # categories it was judged with flag no more


def test_alternating_new_categories_each_need_their_own_window():
    d = Debounce()
    pushed(d, [(U, P), (U, P)])
    assert pushed(d, [(U, V), (U, N), (U, V), (U, V)]) == [(5, 4, U, (P, V))]


def test_the_first_flag_of_a_run_names_the_category_of_the_token_that_raised_it():
    # The official rule: token i's category is the response's, when no category held for a window yet.
    d = Debounce()
    assert pushed(d, [(U, V), (U, P)]) == [(1, 0, U, (P,))]
    assert pushed(d, [(U, P)] * 5) == []  # judged with it already
    assert pushed(Debounce(), [(C, None), (C, None)]) == [(1, 0, C, ())]


def test_one_unsafe_token_in_a_controversial_run_does_not_turn_it_unsafe():
    d = Debounce()
    assert pushed(d, [(C, P), (C, P), (U, P), (C, P), (U, P)]) == [(1, 0, C, (P,))]
    assert pushed(d, [(U, P)]) == [(5, 4, U, (P,))]


def test_a_safe_token_ends_the_pending_tokens():
    d = Debounce()
    pushed(d, [(U, P), (U, P), (U, V)])
    assert d.pending == 1
    d.push(S)
    assert d.pending == 0


labelled = st.lists(st.tuples(st.sampled_from([S, U, C]), st.sampled_from([None, P, V, N])), max_size=40)


@given(labelled, st.integers(1, 4))
def test_a_category_a_flag_names_held_for_a_window_or_raised_the_runs_first_flag(seq, window):
    """No category reaches a flag from fewer than ``window`` consecutive tokens, but the official one: that of the
    token that raises a run's first flag, or a flag of a risk the run had not flagged (controversial -> unsafe: the
    official rule names the flagging token's category; the CI run of 36c62a5 found that case)."""
    d = Debounce(window)
    allowed: set[str] = set()
    streak: list[str | None] = []
    flagged: set[Risk] = set()  # the risks the run flagged
    for risk, category in seq:
        flag = d.push(risk, category)
        if risk is S:  # ends the run
            allowed, streak, flagged = set(), [], set()
            continue
        streak = streak + [category] if streak and streak[-1] == category else [category]
        if category and len(streak) >= window:
            allowed.add(category)
        if flag is not None:
            if flag.risk not in flagged and category:
                allowed.add(category)
            flagged.add(flag.risk)
            assert set(flag.categories) <= allowed
