"""rt63h F4: a `RichPromptTemplate` that failed to format leaves nothing for the next request on its thread or task.

User A's template call fails to format after LlamaIndex logged its TEMPLATING event (a function mapping raised: the
context store is down). `GuardCallbackHandler` kept that record in the thread's (or the task's) context, and this
stop's Jinja rule (rt63f F1: a Jinja template not found as rendered has its variables judged with the call) judged
the next request there, user B's harmless ``complete``, with A's unsafe question: B was blocked. rt52b F7 protected
a `PromptTemplate` (by its wording), not Jinja. A template belongs to the call its LLM method (``predict``,
``stream``, ``apredict``, ``astream``) makes while it runs; one whose method returned is nobody's call.

Judge: `faults.keyword_verdict` (unsafe when the judged turn says "ammonium"); real `CallbackManager`, LlamaIndex's
own LLM methods over `li_scripted.ScriptedLLM`, completion and chat models."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from li_scripted import UNSAFE_CLAUSE, ScriptedLLM
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage, CompletionResponse, LLMMetadata
from llama_index.core.callbacks import CallbackManager
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.prompts import PromptTemplate, RichPromptTemplate
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.llamaindex import GuardCallbackHandler

SAFE = "What is the capital of France?"
ANSWER = "Paris."
JINJA = "Question: {{ question }}\nContext: {{ context }}"
JINJA_CHAT = (
    "{% chat role='system' %}Answer from the context.{% endchat %}"
    "{% chat role='user' %}Question: {{ question }}\nContext: {{ context }}{% endchat %}"
)
PLAIN = "Question: {question}\nContext: {context}"


class ChatScriptedLLM(ScriptedLLM):
    """`ScriptedLLM` as a chat model: LlamaIndex hands it the template's messages."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="scripted-chat", is_chat_model=True)


def store_down(**kwargs: Any) -> str:
    raise LookupError("the context store is down")


def _failing(text: str) -> PromptTemplate | RichPromptTemplate:
    """User A's template: its context comes from a store that is down, so it fails to format once logged."""
    kind = PromptTemplate if text == PLAIN else RichPromptTemplate
    return kind(text, function_mappings={"context": store_down})


def _setup(model_class: type[ScriptedLLM]) -> tuple[ScriptedLLM, ScriptedBackend]:
    backend = ScriptedBackend(keyword_verdict, name="judge")
    handler = GuardCallbackHandler(Guard(backend, Policy(timeout_s=None), cache_size=0))
    return model_class(chunks=[ANSWER], callback_manager=CallbackManager([handler])), backend


def _judged(backend: ScriptedBackend, since: int) -> list[str]:
    """The text of each turn the judge read from call ``since`` on."""
    return [turn["content"] for call in backend.calls[since:] for conversation in call for turn in conversation]


def _user_b(model: ScriptedLLM) -> str:
    """User B's harmless request, as the model's kind takes it."""
    if model.metadata.is_chat_model:
        return str(model.chat([ChatMessage(role="user", content=SAFE)]).message.content)
    return model.complete(SAFE).text


async def _auser_b(model: ScriptedLLM) -> str:
    if model.metadata.is_chat_model:
        return str((await model.achat([ChatMessage(role="user", content=SAFE)])).message.content)
    return (await model.acomplete(SAFE)).text


def _user_a(model: ScriptedLLM, text: str, method: str) -> None:
    if method == "predict":
        model.predict(_failing(text), question=UNSAFE_CLAUSE)
    else:
        model.stream(_failing(text), question=UNSAFE_CLAUSE)


async def _auser_a(model: ScriptedLLM, text: str, method: str) -> None:
    if method == "predict":
        await model.apredict(_failing(text), question=UNSAFE_CLAUSE)
    else:
        await model.astream(_failing(text), question=UNSAFE_CLAUSE)


CASES = pytest.mark.parametrize(
    ("model_class", "text"),
    [(ScriptedLLM, JINJA), (ChatScriptedLLM, JINJA), (ChatScriptedLLM, JINJA_CHAT), (ScriptedLLM, PLAIN)],
    ids=["jinja-completion", "jinja-chat-model", "jinja-chat-template", "plain"],
)
METHODS = pytest.mark.parametrize("method", ["predict", "stream"])


@CASES
@METHODS
def test_a_failed_template_call_leaves_nothing_for_the_next_request_on_its_thread(model_class, text, method):
    model, backend = _setup(model_class)
    with ThreadPoolExecutor(max_workers=1) as worker:  # one thread, reused across requests
        with pytest.raises(LookupError):
            worker.submit(_user_a, model, text, method).result()
        assert model.calls == 0  # A's question never reached the model
        since = len(backend.calls)
        answer = worker.submit(_user_b, model).result()  # another user's request on that thread
    assert answer == ANSWER and model.calls >= 1
    judged = _judged(backend, since)
    assert SAFE in judged and not any(UNSAFE_CLAUSE in turn for turn in judged)  # B judged as B, never with A's text


@CASES
@METHODS
async def test_a_failed_template_call_leaves_nothing_for_the_next_turn_of_its_task(model_class, text, method):
    model, backend = _setup(model_class)
    with pytest.raises(LookupError):
        await _auser_a(model, text, method)
    assert model.calls == 0
    since = len(backend.calls)
    assert await _auser_b(model) == ANSWER  # the next turn, in the same task
    judged = _judged(backend, since)
    assert SAFE in judged and not any(UNSAFE_CLAUSE in turn for turn in judged)


def test_a_jinja_call_after_a_stale_one_still_has_what_its_model_reads_judged():
    # rt63f F1 kept: B's own Jinja call, whose function mapping writes the unsafe clause (the event does not show it),
    # is this call's template: judged with all the model reads, though a stale record of A came first.
    model, backend = _setup(ScriptedLLM)
    writes_clause = RichPromptTemplate(JINJA, function_mappings={"context": lambda **_: UNSAFE_CLAUSE})
    with ThreadPoolExecutor(max_workers=1) as worker:
        with pytest.raises(LookupError):
            worker.submit(_user_a, model, JINJA, "predict").result()
        with pytest.raises(GuardViolation):
            worker.submit(model.predict, writes_clause, question=SAFE).result()
    assert model.calls == 0 and any(UNSAFE_CLAUSE in turn for turn in _judged(backend, 0))


async def test_a_jinja_call_after_a_stale_one_still_has_what_its_model_reads_judged_async():
    model, backend = _setup(ScriptedLLM)
    writes_clause = RichPromptTemplate(JINJA, function_mappings={"context": lambda **_: UNSAFE_CLAUSE})
    with pytest.raises(LookupError):
        await _auser_a(model, JINJA, "predict")
    with pytest.raises(GuardViolation):
        await model.apredict(writes_clause, question=SAFE)
    assert model.calls == 0 and any(UNSAFE_CLAUSE in turn for turn in _judged(backend, 0))


# -- A model call a function mapping makes while the template formats is not the template's call --------------------
# Found beside F4: the call a `summary` function mapping makes (inside LlamaIndex's ``_get_prompt``) took the
# template's record, so the query engine's own call after it was judged by the query string alone: a whole unsafe
# clause in another variable reached the model. The record waits for the method's own call.

QA_PLAIN = "Context: {context_str}\nNote: {note}\nQuestion: {query_str}"
QA_JINJA = "Context: {{ context_str }}\nNote: {{ note }}\nQuestion: {{ query_str }}"


class ReadingLLM(ScriptedLLM):
    """`ScriptedLLM` that keeps each prompt it was given: what the model read."""

    read: list[str] = []

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.read.append(prompt)
        return CompletionResponse(text=ANSWER)


@pytest.fixture
def install():
    """Install a `GuardCallbackHandler` over `keyword_verdict` through ``Settings.callback_manager``."""
    previous = Settings._callback_manager
    Settings.callback_manager = CallbackManager(
        [GuardCallbackHandler(Guard(ScriptedBackend(keyword_verdict), Policy(timeout_s=None), cache_size=0))]
    )
    yield
    Settings._callback_manager = previous


def _summarizing_engine(text: str, note: str) -> tuple[Any, ReadingLLM]:
    """A query engine whose QA template's context is a summary the model writes (a function mapping asks it)."""
    model = ReadingLLM(chunks=[ANSWER], read=[])

    def summary(**kwargs: Any) -> str:
        return model.complete("Summarize: " + str(kwargs.get("context_str", ""))).text

    kind = PromptTemplate if text == QA_PLAIN else RichPromptTemplate
    template = kind(text, function_mappings={"context_str": summary}).partial_format(note=note)
    index = VectorStoreIndex.from_documents(
        [Document(text="Paris is in France.")], embed_model=MockEmbedding(embed_dim=8)
    )
    return index.as_query_engine(llm=model, text_qa_template=template), model


TEMPLATES = pytest.mark.parametrize("text", [QA_PLAIN, QA_JINJA], ids=["plain", "jinja"])


@TEMPLATES
def test_a_model_call_inside_a_function_mapping_leaves_the_template_to_its_own_call(install, text):
    engine, model = _summarizing_engine(text, note=UNSAFE_CLAUSE)
    with pytest.raises(GuardViolation):
        engine.query("What is it?")
    assert model.read and not any(UNSAFE_CLAUSE in prompt for prompt in model.read)


@TEMPLATES
async def test_a_model_call_inside_a_function_mapping_leaves_the_template_to_its_own_call_async(install, text):
    engine, model = _summarizing_engine(text, note=UNSAFE_CLAUSE)
    with pytest.raises(GuardViolation):
        await engine.aquery("What is it?")
    assert model.read and not any(UNSAFE_CLAUSE in prompt for prompt in model.read)


@TEMPLATES
async def test_a_safe_summarizing_template_is_answered(install, text):
    # Control: the summary call and the template's own call both reach the model.
    engine, model = _summarizing_engine(text, note="Answer briefly.")
    assert str(await engine.aquery("What is it?")) == ANSWER
    assert any(prompt.startswith("Context: ") and "Answer briefly." in prompt for prompt in model.read)
