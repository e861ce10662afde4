import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qwenguard.core import CATEGORIES, Risk, VerdictParseError, parse_verdict


def test_prompt_answer():
    v = parse_verdict("Safety: Unsafe\nCategories: Violent")
    assert (v.risk, v.categories, v.refusal) == (Risk.UNSAFE, ("Violent",), None)


def test_response_answer_with_refusal():
    v = parse_verdict("Safety: Safe\nCategories: None\nRefusal: Yes", mode="response")
    assert (v.risk, v.categories, v.refusal) == (Risk.SAFE, (), True)


def test_several_categories_split_on_commas():
    v = parse_verdict("Safety: Controversial\nCategories: Politically Sensitive Topics, Non-violent Illegal Acts")
    assert v.categories == ("Politically Sensitive Topics", "Non-violent Illegal Acts")


def test_violent_is_not_found_inside_non_violent():
    v = parse_verdict("Safety: Unsafe\nCategories: Non-violent Illegal Acts")
    assert v.categories == ("Non-violent Illegal Acts",)


def test_trailing_special_token_is_tolerated():
    assert parse_verdict("Safety: Safe\nCategories: None<|im_end|>").risk is Risk.SAFE


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Safety: Safe",
        "safety: safe\ncategories: none",
        "Safety: Probably Safe\nCategories: None",
        "Safety: Safe\nCategories: Bombs",
        "Safety: Safe\nCategory: None",
        "Safety: Safe\nCategories: None\nRefusal: Maybe",
        "Safety: Safe\nCategories: None\nRefusal: No\nextra",
        "I think this is Safety: Safe\nCategories: None",
        "Categories: None\nSafety: Safe",
        "Safety: Safe\nCategories: Violent",  # a Safe naming unsafe categories contradicts itself (rt53d F6)
        "Safety: Safe\nCategories: None, Violent\nRefusal: No",
    ],
)
def test_malformed_answers_raise(text):
    with pytest.raises(VerdictParseError):
        parse_verdict(text)


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("Safety: Unsafe\nCategories: Illegal Acts", "prompt"),
        ("Safety: Unsafe\nCategories: Violent, Bombs", "prompt"),
        ("Safety: Unsafe\nCategories: PII, Violent.", "prompt"),
        ("Safety: Unsafe\nCategories: PII\nCategories: Violent", "prompt"),
        ("Safety: Unsafe\nCategory: Violent", None),
        ("Safety: Unsafe", "prompt"),
        ("Safety: Unsafe\nCategories: Violent", "response"),
        ("Safety: Unsafe\nCategories: PII\nRefusal: No\nextra", None),
    ],
)
def test_an_answer_that_says_unsafe_is_unsafe_whatever_follows_with_no_category(text, mode):
    """rt49d R2: the demo said "Safety: Unsafe" with a category of its own making; as a guard error, a policy with
    ``on_error="allow"`` let the text through. It is unsafe, with no category: the known names alone ("PII" of
    "PII, Violent.") let a policy ignoring PII allow it (rt49e F1)."""
    v = parse_verdict(text, mode=mode)
    assert (v.risk, v.categories, v.refusal) == (Risk.UNSAFE, (), None)


@pytest.mark.parametrize(
    "text", ["Safety: Controversial\nCategories: Violent Crimes", "Safety: Controversial\nCategories: None\nRefusal: Y"]
)
def test_a_garbled_controversial_answer_is_still_an_error(text):
    """A loose policy allows a controversial verdict unless its categories hit ``block_categories``: one whose
    categories cannot be read must not be allowed so (rt49e F1)."""
    with pytest.raises(VerdictParseError):
        parse_verdict(text)


def test_mode_checks_refusal_line():
    with pytest.raises(VerdictParseError):
        parse_verdict("Safety: Safe\nCategories: None", mode="response")
    with pytest.raises(VerdictParseError):
        parse_verdict("Safety: Safe\nCategories: None\nRefusal: No", mode="prompt")


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_garbage_never_parses_silently_as_safe(text):
    # Any text either parses into a well-formed verdict whose first line really says so, or raises.
    try:
        v = parse_verdict(text)
    except VerdictParseError:
        return
    first = text.strip().split("\n")[0].strip()
    assert first == f"Safety: {v.risk.value.capitalize()}"


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["Safe", "Unsafe", "Controversial"]),
    st.lists(st.sampled_from(CATEGORIES), max_size=3),
    st.sampled_from([None, "Yes", "No"]),
)
def test_well_formed_answers_round_trip(safety, cats, refusal):
    cats = [] if safety == "Safe" else cats  # the format: "If the content is safe, use 'Categories: None'"
    text = f"Safety: {safety}\nCategories: {', '.join(cats) if cats else 'None'}"
    if refusal:
        text += f"\nRefusal: {refusal}"
    v = parse_verdict(text)
    assert v.risk.value == safety.lower()
    assert v.categories == tuple(dict.fromkeys(cats))
    assert v.refusal == (None if refusal is None else refusal == "Yes")
