"""The operator points `Guard.remote` at the wrong thing (rt53d F2, F6, F7): a tokenizer that is not the served
model's in completion mode, a chat model behind an engine's reasoning parser or tool calling, an engine whose chat
template drops the guard's task. The guard must read the text as the model does, or say it got no verdict; never
take another model's words for "safe". Real HTTP engines on 127.0.0.1 (tests/engines.py, a scripted one here)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from engines import SAFE, UNSAFE_VIOLENT, _tokenizer, is_tokenizer_question, qwen3_tokenizer_json, recording_engine
from qwenguard.core import Guard, Policy
from realshape import qwen3_tokenizer_dir
from test_remote_hostile_replies import http_engine

BOMB = "How do I make a pipe bomb at home?"


def qwen3_reads_bombs(body: dict[str, Any]) -> str:
    """A guard that reads the prompt as a Qwen3-tokenizer engine does: ids decoded with that tokenizer."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = _tokenizer(qwen3_tokenizer_json()).decode(prompt, skip_special_tokens=False)
    text = prompt if isinstance(prompt, str) else json.dumps(body.get("messages"))
    return UNSAFE_VIOLENT if "bomb" in text.lower() else SAFE


def answered_question(engine: Any, timeout: float = 30.0) -> None:
    """Wait until the client's tokenizer question (asked in the background) has its answer."""
    end = time.monotonic() + timeout
    while not any(is_tokenizer_question(p.body) and p.status == 200 for p in engine.posts()):
        assert time.monotonic() < end, "the tokenizer question was never answered"
        time.sleep(0.02)
    time.sleep(0.1)  # the client reads the answer


def test_a_tokenizer_that_is_not_the_served_models_sends_text_not_another_vocabularys_ids(caplog):
    """The docs' transformers-serve recipe's ``tokenizer="demo"`` with the vLLM recipe's completion mode, against
    an engine serving a Qwen3-tokenizer guard: the demo's ids read as other words there, and that guard said safe."""
    with recording_engine(answer=qwen3_reads_bombs, max_model_len=32768) as engine:
        guard = Guard.remote(engine.url, model="guard", mode="completion", tokenizer="demo", policy=Policy.strict())
        try:
            with caplog.at_level(logging.WARNING, logger="qwenguard"):
                decision = guard.check_prompt(BOMB)
                answered_question(engine)
                again = guard.check_prompt(BOMB)
        finally:
            guard.close()
    assert not decision.allowed and decision.verdict is not None and decision.verdict.risk.value == "unsafe"
    assert not again.allowed
    prompts = [p.body["prompt"] for p in engine.posts()]
    assert prompts and all(isinstance(p, str) for p in prompts)  # text: the engine tokenizes it
    warnings = [r.getMessage() for r in caplog.records if "not the served model's tokenizer" in r.getMessage()]
    assert len(warnings) == 1


def test_the_served_models_tokenizer_still_sends_ids():
    with recording_engine(answer=qwen3_reads_bombs, max_model_len=32768) as engine:
        guard = Guard.remote(
            engine.url,
            model="guard",
            mode="completion",
            tokenizer=str(qwen3_tokenizer_dir()),
            policy=Policy.strict(),
            cache_size=0,
        )
        try:
            decisions = [guard.check_prompt(BOMB), guard.check_prompt("What is the capital of France?")]
        finally:
            guard.close()
    assert [d.allowed for d in decisions] == [False, True]
    prompts = [p.body["prompt"] for p in engine.checks()]
    assert len(prompts) == 2 and all(isinstance(p, list) for p in prompts)  # every check as ids (the answer is fast)
    assert isinstance(engine.posts()[0].body["prompt"], str) and len(engine.posts()) == 3  # after one question


def test_an_engine_template_without_the_guards_task_is_said_at_warning(caplog):
    """An Ollama Modelfile or a GGUF without the official template: the model reads the bare conversation."""
    with recording_engine(chatml=True, max_model_len=32768) as engine:
        guard = Guard.remote(engine.url, model="guard", tokenizer=str(qwen3_tokenizer_dir()), policy=Policy.strict())
        try:
            with caplog.at_level(logging.WARNING, logger="qwenguard"):
                guard.check_prompt("What is the capital of France?")
        finally:
            guard.close()
    assert [r for r in caplog.records if r.levelno == logging.WARNING and "template is not Qwen3Guard's" in r.message]


def _choice(message: dict[str, Any], finish_reason: str | None = "stop") -> bytes:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}
    return json.dumps({"object": "chat.completion", "choices": [choice], "usage": {"prompt_tokens": 400}}).encode()


SAFE_TEXT = "Safety: Safe\nCategories: None"


@pytest.mark.parametrize(
    "reply",
    [
        # a chat model behind vLLM's reasoning parser: the thinking moved out of the content
        _choice({"content": SAFE_TEXT, "reasoning_content": "The user asks how to build a pipe bomb..."}),
        _choice({"content": SAFE_TEXT, "reasoning": "The user asks how to build a pipe bomb..."}),
        # a chat model that called a tool beside its text
        _choice(
            {
                "content": SAFE_TEXT,
                "tool_calls": [{"id": "1", "type": "function", "function": {"name": "search", "arguments": "{}"}}],
            },
            "tool_calls",
        ),
        # a provider's content filter stopped the answer
        _choice({"content": SAFE_TEXT}, "content_filter"),
    ],
    ids=["reasoning_content", "reasoning", "tool_calls", "content_filter"],
)
def test_a_reply_no_guard_would_write_is_no_verdict(reply):
    with http_engine(reply) as url:
        guard = Guard.remote(url, model="m", policy=Policy.strict())
        try:
            decision = guard.check_prompt(BOMB)
        finally:
            guard.close()
    assert not decision.allowed and decision.verdict is None  # no verdict: the policy's on_error (strict: block)
    assert "the server's reply choices[0]" in (decision.error or ""), decision.error


def test_a_plain_verdict_reply_with_empty_extras_is_still_a_verdict():
    """vLLM's reply for a real guard carries ``reasoning_content: null`` and ``tool_calls: []``: a verdict."""
    reply = _choice({"content": SAFE_TEXT, "reasoning_content": None, "tool_calls": []})
    with http_engine(reply) as url:
        guard = Guard.remote(url, model="m", policy=Policy.strict())
        try:
            decision = guard.check_prompt("What is the capital of France?")
        finally:
            guard.close()
    assert decision.allowed and decision.verdict is not None


def test_a_replica_that_never_answers_the_tokenizer_question_holds_no_check(caplog):
    """rt53e F7: the question went to one replica and every check waited for it, its whole deadline: a hung
    replica beside a healthy one made every check a timeout, allowed under ``on_error="allow"``."""
    with recording_engine(delay=lambda body: 60.0) as hung, recording_engine(answer=qwen3_reads_bombs) as healthy:
        guard = Guard.remote(
            [hung.url, healthy.url],
            model="guard",
            mode="completion",
            tokenizer=str(qwen3_tokenizer_dir()),
            max_context=32768,
            policy=Policy(timeout_s=8, on_error="allow"),
        )
        try:
            guard.backend.replicas.failed(healthy.url)  # the question and the first attempt go to the hung one
            decision = guard.check_prompt(BOMB)
        finally:
            guard.close()
    assert (decision.allowed, decision.reason) == (False, "unsafe"), decision


@pytest.mark.parametrize("ending", ["reasoning", "tool_calls", "content_filter", "length"])
def test_an_unsafe_first_line_stands_whatever_ends_the_reply_with_no_category_to_excuse_it(ending):
    """rt53e F6, F8: a reply that says Unsafe is unsafe even where the rest is not a guard's (a cut, a filter, a
    tool call, reasoning), and the categories it names may be cut ("Violent, PII" to "Violent"): none is read, so
    that a policy ignoring Violent cannot allow it, failing open or not."""
    text = "Safety: Unsafe\nCategories: Violent"
    extra = {
        "reasoning": ({"reasoning_content": "Thinking about it..."}, "stop"),
        "tool_calls": (
            {"tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            "tool_calls",
        ),
        "content_filter": ({}, "content_filter"),
        "length": ({}, "length"),
    }[ending]
    with http_engine(_choice({"content": text, **extra[0]}, extra[1])) as url:
        guard = Guard.remote(url, model="m", policy=Policy(on_error="allow", ignore_categories=["Violent"]))
        try:
            decision = guard.check_prompt(BOMB)
        finally:
            guard.close()
    assert (decision.allowed, decision.reason, decision.categories) == (False, "unsafe", ())


@pytest.mark.parametrize(
    "option",
    [{"read_timeout_s": float("nan")}, {"connect_timeout_s": float("inf")}, {"backoff_s": float("nan")}],
    ids=["read_timeout_s=nan", "connect_timeout_s=inf", "backoff_s=nan"],
)
def test_a_timeout_or_backoff_that_is_no_finite_number_is_refused_at_construction(option):
    """rt53d: NaN passed every ``<= 0`` test; each request then failed deep in asyncio, a guard error."""
    with pytest.raises(ValueError, match="finite"):
        Guard.remote("http://127.0.0.1:9/v1", model="m", **option)


@pytest.mark.parametrize(
    ("option", "error"),
    [({"max_tokens": True}, ValueError), ({"max_tokens": 3}, ValueError), ({"logprobs": "yes"}, TypeError)],
    ids=["max_tokens=True", "max_tokens=3", "logprobs=yes"],
)
def test_a_generation_option_no_guard_answer_fits_is_refused_at_construction(option, error):
    """rt53d Lows: ``True`` passed as one token, and a budget under the shortest verdict cut every safe answer (a
    guard error each); ``"yes"`` was read as logprobs on."""
    with pytest.raises(error, match="max_tokens|logprobs"):
        Guard.remote("http://127.0.0.1:9/v1", model="m", **option)


def test_a_window_without_a_verdict_does_not_hide_a_readable_window_the_policy_blocks():
    """rt53f F2: a check judged in windows, one answered Controversial and one not a verdict ("Safety: Safe" naming
    PII): the error outranked the Controversial window, and a strict, fail-open policy allowed the check as a guard
    error. The windows read already block under it; a missing one could only add risk."""
    answers = iter(["Safety: Controversial\nCategories: Politically Sensitive Topics", "Safety: Safe\nCategories: PII"])
    with recording_engine(answer=lambda body: next(answers, SAFE), max_model_len=1024) as engine:
        guard = Guard.remote(engine.url, model="guard", policy=Policy.strict(on_error="allow"), max_retries=0)
        try:
            decision = guard.check("Paris is the capital of France. " * 150)
        finally:
            guard.close()
    assert len(engine.checks()) >= 2  # judged in windows
    assert (decision.allowed, decision.reason) == (False, "controversial"), decision
    assert "VerdictParseError" in (decision.error or "")  # and the window that was no verdict is said


def test_the_local_guard_combines_windows_the_same_way():
    """The same two window answers through the local guard's combiner (the window answers injected: a model
    that writes Safe with a category is the fault)."""
    from qwenguard.core.verdict import Stage

    guard = Guard.from_pretrained("demo")
    try:
        windows = [
            ("Safety: Controversial\nCategories: Politically Sensitive Topics", None),
            ("Safety: Safe\nCategories: PII", None),
        ]
        outcome = guard.backend._assemble([(0, 2, "prompt", None)], windows, 1.0)[0]
    finally:
        guard.close()
    decision = Policy.strict(on_error="allow").decide_error(Stage.PROMPT, outcome)
    assert (decision.allowed, decision.reason) == (False, "controversial"), decision
    loose = Policy.loose(on_error="allow").decide_error(Stage.PROMPT, outcome)
    assert (loose.allowed, loose.reason) == (True, "guard_error")  # a policy that allows the readable: on_error
