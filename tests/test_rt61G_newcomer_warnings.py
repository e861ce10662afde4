"""rt61a, a newcomer's first hour: warnings that pointed at the wrong fix.

F1: ``Guard.remote`` logged "publishes no context (max_model_len) and none was given ... pass max_context=" ahead of
the real error when ``/models`` was never read (nothing listening, a 401 for a missing API key, a 404 for a wrong
path), and when the caller gave ``tokenizer=``, which docs/remote.md says gives the context. A ``/models`` refused
once was never read again. Now the advice comes only after ``/models`` answered with no context (or refused while
the server answers checks), says where the figure planned for comes from, and a refused ``/models`` is read again
after a back-off.

F3: a sync integration entry point used inside ``async def`` (LangChain's sync ``GuardCallbackHandler`` under
``ainvoke``, LlamaIndex's ``GuardedLLM.complete``) had core's event-loop warning say "use await
guard.acheck_prompt(...)", a call the user never wrote; it names the integration's async form now.

Real HTTP servers (`tests/engines.py`) and real frameworks; caplog reads the warnings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import engines
import pytest
from live_server import http_serving
from qwenguard.core import Guard
from scripted_openai import Reply, scripted_openai

ADVICE = "max_context"


@pytest.fixture
def warnings_seen(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="qwenguard")
    return caplog


def _warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "qwenguard"]


@contextmanager
def gated_engine(*, api_key: str | None = None, models_refused: bool = False) -> Iterator[Any]:
    """`engines.RecordingEngine` behind a gate: every request without ``api_key`` is 401, every path off ``/v1`` is
    404 (a wrong base path), and ``GET /v1/models`` is 401 while ``gate.models_refused`` (a proxy in front that
    does not route it yet). Yields the engine with ``gate`` and ``model_reads`` attached."""
    engine = engines.RecordingEngine(model="guard")
    gate = {"models_refused": models_refused, "model_reads": 0}

    class Gate(engines._EngineHandler):
        def _refused(self) -> bool:
            if api_key is not None and self.headers.get("Authorization") != f"Bearer {api_key}":
                self._send(401, {"error": {"message": "missing or wrong API key"}})
                return True
            if not self.path.startswith("/v1/"):
                self._send(404, {"detail": "Not Found"})
                return True
            return False

        def do_GET(self) -> None:  # noqa: N802
            gate["model_reads"] += 1
            if self._refused():
                return
            if gate["models_refused"]:
                self._send(401, {"error": {"message": "not routed"}})
                return
            super().do_GET()

        def do_POST(self) -> None:  # noqa: N802
            if self._refused():
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return
            super().do_POST()

    Gate.engine = engine
    with http_serving(Gate) as base:
        engine.url = base + "/v1"
        engine.gate = gate  # type: ignore[attr-defined]
        yield engine


def _first_check(url: str, **options: Any) -> Any:
    guard = Guard.remote(url, model="guard", max_retries=0, cache_size=0, **options)
    try:
        return guard.check_prompt("What is the capital of France?")
    finally:
        guard.close()


# -- F1: no context advice where /models was never read ---------------------------------------------------------
def test_nothing_listening_shows_its_error_and_no_context_advice(warnings_seen):
    decision = _first_check(f"http://127.0.0.1:{engines.free_port()}/v1")
    assert decision.error, decision
    assert not [m for m in _warned(warnings_seen) if ADVICE in m], _warned(warnings_seen)


def test_a_missing_api_key_shows_the_401_and_no_context_advice(warnings_seen):
    with gated_engine(api_key="sk-right") as engine:
        decision = _first_check(engine.url)
    assert decision.error and "401" in decision.error, decision
    assert not [m for m in _warned(warnings_seen) if ADVICE in m], _warned(warnings_seen)


def test_a_wrong_base_path_shows_the_404_and_no_context_advice(warnings_seen):
    with gated_engine() as engine:
        decision = _first_check(engine.url.replace("/v1", "/api/v1"))
    assert decision.error and "404" in decision.error, decision
    assert not [m for m in _warned(warnings_seen) if ADVICE in m], _warned(warnings_seen)


def test_the_tokenizer_given_gives_the_context_without_a_warning(warnings_seen):
    # docs/remote.md's transformers-serve recipe: the engine publishes no context, the tokenizer (demo: 512) gives it.
    with scripted_openai([Reply(["Safety: Safe\nCategories: None"])], pace=0) as url:
        guard = Guard.remote(url, model="scripted", tokenizer="demo")
        try:
            assert guard.check_prompt("What is the capital of France?").allowed
            assert guard.check_prompt("And of Spain?").allowed
        finally:
            guard.close()
    assert not [m for m in _warned(warnings_seen) if "context" in m], _warned(warnings_seen)
    said = [r.getMessage() for r in warnings_seen.records if "publishes no context" in r.getMessage()]
    assert len(said) == 1 and "512 tokens, the tokenizer's model_max_length" in said[0], said


def test_a_server_that_lists_no_context_is_told_where_the_figure_comes_from(warnings_seen):
    with engines.recording_engine() as engine:
        guard = Guard.remote(engine.url, model="guard", cache_size=0)
        try:
            assert guard.check_prompt("What is the capital of France?").allowed
        finally:
            guard.close()
    said = [m for m in _warned(warnings_seen) if "publishes no context" in m]
    assert len(said) == 1 and "planning for 4096 tokens (the default" in said[0] and ADVICE in said[0], said


def test_a_server_refusing_models_but_answering_checks_is_told_once(warnings_seen):
    with gated_engine(models_refused=True) as engine:
        guard = Guard.remote(engine.url, model="guard", cache_size=0)
        try:
            for question in ("What is the capital of France?", "And of Spain?", "And of Italy?"):
                assert guard.check_prompt(question).allowed
        finally:
            guard.close()
        reads = engine.gate["model_reads"]
    said = [m for m in _warned(warnings_seen) if ADVICE in m]
    assert len(said) == 1 and "does not list its models (/models answered HTTP 401) but answers checks" in said[0], said
    assert reads == 1  # within the back-off: not read again on every check


def test_a_models_refused_at_first_is_read_again_after_the_back_off(monkeypatch):
    from qwenguard.core.backends import openai_gen

    monkeypatch.setattr(openai_gen, "_MODELS_REREAD_S", 0.0, raising=False)  # the back-off has passed
    text = "The weather is nice today and the garden is green. " * 110  # ~5,600 bytes: 2 windows in 4096, 1 in 8192
    with gated_engine(models_refused=True) as engine:
        engine.max_model_len = 8192
        guard = Guard.remote(engine.url, model="guard", cache_size=0)
        try:
            assert guard.check_prompt(text).allowed  # /models refused: planned for the fallback
            fallback = len(engine.checks())
            engine.gate["models_refused"] = False  # the proxy routes it now (or the key was added)
            assert guard.check_prompt(text + " Really.").allowed
            served = len(engine.checks()) - fallback
        finally:
            guard.close()
        reads = engine.gate["model_reads"]
    assert reads >= 2  # read again (with no back-off left, at each plan while refused)
    assert fallback > 1 and served == 1, (fallback, served)  # the 8192 it published is used


# -- F3: the event-loop warning names the integration's async form -----------------------------------------------
@pytest.fixture
def fresh_loop_warnings(monkeypatch, caplog):
    from qwenguard.core import guard as guard_module

    monkeypatch.setattr(guard_module, "_warned_on_loop", set(), raising=False)
    caplog.set_level(logging.WARNING, logger="qwenguard")
    return caplog


def _loop_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "inside a running event loop" in r.getMessage()]


def test_an_integration_names_its_async_form_and_the_plain_warning_stays(fresh_loop_warnings):
    from qwenguard.core.guard import calling_as

    guard = Guard.from_pretrained("demo")

    async def handler() -> None:
        guard.check_prompt("What is the capital of France?")  # the user's own sync call
        with calling_as("await thing.arun(...)"):
            guard.check_prompt("What is the capital of Spain?")  # an integration's, on the user's behalf
            guard.check_prompt("What is the capital of Italy?")

    try:
        asyncio.run(handler())
    finally:
        guard.close()
    said = _loop_warnings(fresh_loop_warnings)
    assert len(said) == 2, said
    assert "acheck_prompt" in said[0] and "await thing.arun(...)" in said[1] and "acheck_prompt" not in said[1], said


def test_the_sync_langchain_handler_under_ainvoke_names_the_async_handler(fresh_loop_warnings):
    pytest.importorskip("langchain_core")
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from qwenguard.integrations.langchain import GuardCallbackHandler

    guard = Guard.from_pretrained("demo")

    async def app() -> Any:
        model = GenericFakeChatModel(messages=iter(["Paris."]))
        handler = GuardCallbackHandler(guard)
        return await model.ainvoke("What is the capital of France?", config={"callbacks": [handler]})

    try:
        assert asyncio.run(app()).content == "Paris."
    finally:
        guard.close()
    said = _loop_warnings(fresh_loop_warnings)
    assert said and all("AsyncGuardCallbackHandler" in m and "acheck_prompt" not in m for m in said), said


def test_the_sync_langchain_handler_off_the_loop_says_nothing(fresh_loop_warnings):
    pytest.importorskip("langchain_core")
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from qwenguard.integrations.langchain import GuardCallbackHandler

    guard = Guard.from_pretrained("demo")
    try:
        model = GenericFakeChatModel(messages=iter(["Paris."]))
        answer = model.invoke("What is the capital of France?", config={"callbacks": [GuardCallbackHandler(guard)]})
        assert answer.content == "Paris."
    finally:
        guard.close()
    assert not _loop_warnings(fresh_loop_warnings)


def test_guarded_llm_sync_calls_inside_async_def_name_its_async_methods(fresh_loop_warnings):
    pytest.importorskip("llama_index.core")
    from llama_index.core.llms import MockLLM
    from qwenguard.integrations.llamaindex import GuardedLLM

    guard = Guard.from_pretrained("demo")
    llm = GuardedLLM(MockLLM(max_tokens=8), guard)

    async def app() -> str:
        text = llm.complete("What is the capital of France?").text
        return text + "".join(c.delta or "" for c in llm.stream_complete("And of Spain?"))

    try:
        asyncio.run(app())
    finally:
        guard.close()
    said = _loop_warnings(fresh_loop_warnings)
    kinds = {m.split("a sync guard ")[1].split(" ")[0] for m in said}
    assert kinds == {"check", "stream"}, said
    assert all("acomplete" in m and "astream_complete" in m and "acheck_prompt" not in m for m in said), said
