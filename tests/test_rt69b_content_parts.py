"""rt69b F3: a guard engine behind a gateway that sends a chat choice's ``message.content`` as a list of text parts
(``[{"type": "text", "text": "Safety: Unsafe\\nCategories: Violent"}]``) had its answer refused as no text: a guard
error, and ``on_error="allow"`` let through what the engine called Unsafe. The text parts are now read as the answer
they hold (at most 16 parts, and no more text than a reply may hold); a part that is no text (an image, an object
without text) still leaves the reply no verdict.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import engines
import pytest
from qwenguard.core import Guard, Policy

HARM = "How do I build a bomb?"
FAIL_OPEN = Policy(on_error="allow", timeout_s=5)


def text_part(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


#: Replies as gateways send them: the verdict in one part, split over parts, and a part that is a plain string.
UNSAFE_PARTS = {
    "one part": [text_part("Safety: Unsafe\nCategories: Violent")],
    "split parts": [text_part("Safety: Uns"), text_part("afe\nCategories: "), text_part("Violent")],
    "string part": ["Safety: Unsafe\n", text_part("Categories: Violent")],
}
SAFE_PARTS = [text_part("Safety: Safe\n"), text_part("Categories: None")]
#: A list with a part that is no text: no verdict, whatever the text parts say.
NOT_TEXT_PARTS = {
    "image part": [
        text_part("Safety: Safe\nCategories: None"),
        {"type": "image_url", "image_url": {"url": "data:,"}},
    ],
    "object without text": [{"type": "text"}, text_part("Safety: Safe\nCategories: None")],
}


#: The content the engine answers every request with: set by each test (`_answering`).
ANSWERED: list[Any] = [None]


@pytest.fixture(scope="module")
def engine() -> Iterator[engines.RecordingEngine]:
    with engines.recording_engine(answer=lambda body: ANSWERED[0], max_model_len=32768) as running:
        yield running


def _answering(value: Any) -> None:
    ANSWERED[0] = value


@pytest.mark.parametrize("parts", list(UNSAFE_PARTS.values()), ids=list(UNSAFE_PARTS))
def test_an_unsafe_answer_in_text_parts_blocks_under_on_error_allow(
    engine: engines.RecordingEngine, parts: Any
) -> None:
    _answering(parts)
    with Guard.remote(engine.url, model="guard", policy=FAIL_OPEN, cache_size=0) as guard:
        decision = guard.check_prompt(HARM)
    assert not decision.allowed and decision.reason == "unsafe", (decision.reason, decision.error)
    assert decision.verdict is not None and decision.verdict.categories == ("Violent",)


@pytest.mark.parametrize("parts", list(UNSAFE_PARTS.values()), ids=list(UNSAFE_PARTS))
async def test_an_unsafe_answer_in_text_parts_blocks_under_on_error_allow_async(
    engine: engines.RecordingEngine, parts: Any
) -> None:
    _answering(parts)
    guard = Guard.remote(engine.url, model="guard", policy=FAIL_OPEN, cache_size=0)
    try:
        decision = await guard.acheck_prompt(HARM)
    finally:
        await guard.aclose()
    assert not decision.allowed and decision.reason == "unsafe", (decision.reason, decision.error)


def test_a_safe_answer_in_text_parts_is_allowed(engine: engines.RecordingEngine) -> None:
    _answering(SAFE_PARTS)
    with Guard.remote(engine.url, model="guard", policy=Policy(timeout_s=5), cache_size=0) as guard:
        decision = guard.check_prompt("What is the capital of France?")
    assert decision.allowed and decision.reason == "safe", (decision.reason, decision.error)


async def test_a_safe_answer_in_text_parts_is_allowed_async(engine: engines.RecordingEngine) -> None:
    _answering(SAFE_PARTS)
    guard = Guard.remote(engine.url, model="guard", policy=Policy(timeout_s=5), cache_size=0)
    try:
        decision = await guard.acheck_prompt("What is the capital of France?")
    finally:
        await guard.aclose()
    assert decision.allowed and decision.reason == "safe", (decision.reason, decision.error)


@pytest.mark.parametrize("parts", list(NOT_TEXT_PARTS.values()), ids=list(NOT_TEXT_PARTS))
def test_a_part_that_is_no_text_is_a_guard_error(engine: engines.RecordingEngine, parts: Any) -> None:
    _answering(parts)
    with Guard.remote(engine.url, model="guard", policy=Policy(timeout_s=5), cache_size=0) as guard:
        decision = guard.check_prompt("What is the capital of France?")
    assert not decision.allowed and decision.reason == "guard_error", (decision.reason, decision.error)
    assert "not text" in (decision.error or ""), decision.error


@pytest.mark.parametrize("parts", list(NOT_TEXT_PARTS.values()), ids=list(NOT_TEXT_PARTS))
async def test_a_part_that_is_no_text_is_a_guard_error_async(engine: engines.RecordingEngine, parts: Any) -> None:
    _answering(parts)
    guard = Guard.remote(engine.url, model="guard", policy=Policy(timeout_s=5), cache_size=0)
    try:
        decision = await guard.acheck_prompt("What is the capital of France?")
    finally:
        await guard.aclose()
    assert not decision.allowed and decision.reason == "guard_error", (decision.reason, decision.error)


def test_parts_past_the_first_16_leave_only_an_unsafe_standing(engine: engines.RecordingEngine) -> None:
    """More parts than are read: what the first 16 say is a cut answer, of which only an Unsafe stands (with no
    category: the ones named may be cut), and a Safe is no verdict."""
    _answering([text_part("Safety: Safe\n"), text_part("Categories: None")] + [text_part("")] * 15)
    with Guard.remote(engine.url, model="guard", policy=Policy(timeout_s=5), cache_size=0) as guard:
        safe = guard.check_prompt("What is the capital of France?")
        _answering([text_part("Safety: Unsafe\n"), text_part("Categories: PII")] + [text_part("")] * 15)
        unsafe = Guard.remote(
            engine.url, model="guard", policy=Policy(on_error="allow", ignore_categories={"PII"}), cache_size=0
        )
        with unsafe:
            excused = unsafe.check_prompt(HARM)
    assert not safe.allowed and safe.reason == "guard_error" and "content parts" in (safe.error or ""), safe.error
    assert not excused.allowed and excused.reason == "unsafe", (excused.reason, excused.error)


# rt69m F3 (second look): a text part saying Unsafe beside any part that is no text (a refusal part, an image, an
# object without text) was dropped whole, and the Responses API's `output_text` parts were not read: a guard error,
# let through by on_error="allow". Such a list is read as a cut answer is: its first line saying Unsafe stands.
ODD_UNSAFE_PARTS = {
    "refusal part": [text_part("Safety: Unsafe\nCategories: Violent"), {"type": "refusal", "refusal": "no"}],
    "image part": [text_part("Safety: Unsafe\nCategories: Violent"), {"type": "image_url", "image_url": {"url": "x"}}],
    "text part without text": [{"type": "text", "text": None}, text_part("Safety: Unsafe\nCategories: Violent")],
}


@pytest.mark.parametrize("parts", list(ODD_UNSAFE_PARTS.values()), ids=list(ODD_UNSAFE_PARTS))
def test_an_unsafe_text_part_beside_a_part_that_is_no_text_still_blocks(
    engine: engines.RecordingEngine, parts: Any
) -> None:
    _answering(parts)
    with Guard.remote(engine.url, model="guard", policy=FAIL_OPEN, cache_size=0) as guard:
        decision = guard.check_prompt(HARM)
    assert not decision.allowed and decision.reason == "unsafe", (decision.reason, decision.error)
    assert decision.verdict is not None and decision.verdict.categories == ()  # read as cut: no category stands


def test_output_text_parts_are_read(engine: engines.RecordingEngine) -> None:
    _answering([{"type": "output_text", "text": "Safety: Unsafe\nCategories: Violent", "annotations": []}])
    with Guard.remote(engine.url, model="guard", policy=FAIL_OPEN, cache_size=0) as guard:
        decision = guard.check_prompt(HARM)
    assert not decision.allowed and decision.verdict is not None and decision.verdict.categories == ("Violent",)
