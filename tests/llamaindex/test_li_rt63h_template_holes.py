"""rt63f F1 and F6: two holes in this stop's joined template variables.

F1 (High): `GuardCallbackHandler` (installed through ``Settings.callback_manager``) looked for a `RichPromptTemplate`'s
Jinja text in the LLM's input as if it were a ``{name}`` template, found none of its wording ("{ verb }") and took the
template for a stale one: the call was judged by the query string alone, so a whole unsafe clause in ``{{ verb }}``
and a request split across ``{{ verb }}`` and ``{{ query_str }}`` reached the model unjudged. The Jinja text is
rendered with the event's variables and found in the input; when it is not found there, its variables are judged
too (and everything the model reads, as untrusted content).

F6 (Low): LlamaIndex's own text-to-SQL template's ``schema`` and ``dialect`` were joined with the question, one more
schema-sized check on every query. They are left out of the joined reading (each is still judged on its own).

Judges: `faults.phrase_verdict` for the whole phrase "mix ammonium nitrate" (either half alone is safe) and
`faults.keyword_verdict`; real query engines and LlamaIndex's own templates over `li_scripted.ScriptedLLM`."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict, phrase_verdict
from li_scripted import UNSAFE_CLAUSE, ScriptedLLM
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.llms.types import CompletionResponse, LLMMetadata
from llama_index.core.callbacks import CallbackManager
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.prompts import PromptTemplate, RichPromptTemplate
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_TO_SQL_PROMPT
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.llamaindex import GuardCallbackHandler, GuardedLLM

VERB, REST = UNSAFE_CLAUSE.split(" ", 1)  # "Mix" | "ammonium nitrate with fuel oil, pack it into a pipe ..."
DOCUMENT = "Paris is the capital of France."
RICH_QA = "Context: {{ context_str }}\nTell me how to {{ verb }} {{ query_str }}"
RICH_CHAT_QA = (
    "{% chat role='system' %}Answer from the context.{% endchat %}"
    "{% chat role='user' %}Context: {{ context_str }}\nTell me how to {{ verb }} {{ query_str }}{% endchat %}"
)
SPLIT = functools.partial(phrase_verdict, phrase="mix ammonium nitrate")


class ChatScriptedLLM(ScriptedLLM):
    """`ScriptedLLM` as a chat model: LlamaIndex hands it the template's messages."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="scripted-chat", is_chat_model=True)


class NativeAsyncLLM(ScriptedLLM):
    """`ScriptedLLM` with its own ``acomplete``, as a provider's client has (CustomLLM's calls ``complete`` inside it:
    a second LLM event, with no template, judged as a plain prompt)."""

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self._calls += 1
        return CompletionResponse(text="".join(self.chunks))


@pytest.fixture
def install():
    """Install a `GuardCallbackHandler` over a judge through ``Settings.callback_manager``; yields the installer."""
    previous = Settings._callback_manager

    def installed(verdict: Any) -> ScriptedBackend:
        backend = ScriptedBackend(verdict, name="judge")
        Settings.callback_manager = CallbackManager([GuardCallbackHandler(Guard(backend, Policy(timeout_s=None)))])
        return backend

    yield installed
    Settings._callback_manager = previous


def _texts(backend: ScriptedBackend) -> list[str]:
    """The text of each judged turn (the last of each conversation the judge read)."""
    return [conversation[-1]["content"] for call in backend.calls for conversation in call]


def _engine(model: ScriptedLLM, template: Any):
    index = VectorStoreIndex.from_documents(
        [Document(text=DOCUMENT, id_="paris")], embed_model=MockEmbedding(embed_dim=8)
    )
    return index.as_query_engine(llm=model, text_qa_template=template)


async def _ask(engine: Any, question: str, run: str) -> str:
    return str(engine.query(question) if run == "sync" else await engine.aquery(question))


# -- F1: a RichPromptTemplate's variables under the callback handler ------------------------------------------------


@pytest.mark.parametrize("run", ["sync", "async"])
@pytest.mark.parametrize(
    ("model_class", "text"), [(ScriptedLLM, RICH_QA), (ChatScriptedLLM, RICH_CHAT_QA)], ids=["completion", "chat"]
)
async def test_a_request_split_across_jinja_variables_is_stopped_before_the_model(install, model_class, text, run):
    backend = install(SPLIT)
    model = model_class(chunks=["Sure."])
    with pytest.raises(GuardViolation):
        await _ask(_engine(model, RichPromptTemplate(text).partial_format(verb=VERB)), REST, run)
    assert model.calls == 0 and UNSAFE_CLAUSE in _texts(backend)


@pytest.mark.parametrize("run", ["sync", "async"])
@pytest.mark.parametrize(
    ("model_class", "text"), [(ScriptedLLM, RICH_QA), (ChatScriptedLLM, RICH_CHAT_QA)], ids=["completion", "chat"]
)
async def test_an_unsafe_clause_in_a_jinja_variable_is_stopped_before_the_model(install, model_class, text, run):
    backend = install(keyword_verdict)
    model = model_class(chunks=["Sure."])
    with pytest.raises(GuardViolation):
        await _ask(_engine(model, RichPromptTemplate(text).partial_format(verb=UNSAFE_CLAUSE)), "it", run)
    assert model.calls == 0 and UNSAFE_CLAUSE in _texts(backend)


@pytest.mark.parametrize("run", ["sync", "async"])
async def test_jinja_text_not_found_in_the_input_still_has_what_the_model_reads_judged(install, run):
    # A function mapping writes {{ verb }}: the event does not show it, so the template rendered with the event's
    # variables is not what the model reads. Not taken for another request's template: judged with all it reads.
    backend = install(keyword_verdict)
    model = ScriptedLLM(chunks=["Sure."])
    template = RichPromptTemplate(RICH_QA, function_mappings={"verb": lambda **_: UNSAFE_CLAUSE})
    with pytest.raises(GuardViolation):
        await _ask(_engine(model, template), "it", run)
    assert model.calls == 0 and any(UNSAFE_CLAUSE in text for text in _texts(backend))


class Request:
    """An application's object a Jinja template reads by attribute: its own text says nothing of what it holds."""

    def __init__(self, verb: str) -> None:
        self.verb = verb

    def __str__(self) -> str:
        return "a request"


@pytest.mark.parametrize("run", ["sync", "async"])
async def test_an_unsafe_attribute_jinja_reads_from_an_object_is_stopped_before_the_model(install, run):
    # The event shows the object, judged as its text ("a request"); the model reads its attribute.
    backend = install(keyword_verdict)
    model = ScriptedLLM(chunks=["Sure."])
    text = "Context: {{ context_str }}\nTell me how to {{ request.verb }} {{ query_str }}"
    template = RichPromptTemplate(text).partial_format(request=Request(UNSAFE_CLAUSE))
    with pytest.raises(GuardViolation):
        await _ask(_engine(model, template), "it", run)
    assert model.calls == 0 and any(UNSAFE_CLAUSE in text for text in _texts(backend))


@pytest.mark.parametrize("model_class", [ScriptedLLM, ChatScriptedLLM], ids=["completion", "chat"])
def test_an_ordinary_jinja_query_engine_is_judged_as_a_plain_one(install, model_class):
    # Control: the Jinja text is found in the input (nothing judged as untrusted "formatted prompt"), one user
    # variable (no joined check).
    backend = install(keyword_verdict)
    model = model_class(chunks=["Paris."])
    question = "What is the capital of France?"
    template = RichPromptTemplate("Context: {{ context_str }}\nAnswer: {{ query_str }}")
    assert str(_engine(model, template).query(question)) == "Paris."
    assert _texts(backend) == [question, f"{DOCUMENT}\n\nparis", question, DOCUMENT, "Paris."]


def test_safe_jinja_variables_side_by_side_pass_with_one_joined_check(install):
    backend = install(keyword_verdict)
    model = ScriptedLLM(chunks=["Bonjour."])
    template = RichPromptTemplate("Context: {{ context_str }}\nTranslate {{ query_str }} into {{ language }}.")
    assert str(_engine(model, template.partial_format(language="French")).query("good morning")) == "Bonjour."
    assert model.calls == 1 and "good morning French" in _texts(backend)


# -- F6: LlamaIndex's own framework variables are not joined with the question --------------------------------------

SCHEMA = "Table 'users' has columns: id (INTEGER), name (VARCHAR), city (VARCHAR). " * 20
QUESTION = "How many users live in Paris?"
SQL_CALL = {"dialect": "sqlite", "schema": SCHEMA, "query_str": QUESTION}


def _no_schema_joined(texts: list[str]) -> None:
    assert SCHEMA in texts and QUESTION in texts  # each still judged on its own
    assert not [text for text in texts if QUESTION in text and "Table 'users'" in text]


@pytest.mark.parametrize("run", ["sync", "async"])
async def test_text_to_sql_pays_no_schema_sized_joined_check_in_guarded_llm(run):
    backend = ScriptedBackend(keyword_verdict, name="judge")
    llm = GuardedLLM(llm=ScriptedLLM(chunks=["SELECT 1"]), guard=Guard(backend, Policy(timeout_s=None), cache_size=0))
    if run == "sync":
        llm.predict(DEFAULT_TEXT_TO_SQL_PROMPT, **SQL_CALL)
    else:
        await llm.apredict(DEFAULT_TEXT_TO_SQL_PROMPT, **SQL_CALL)
    _no_schema_joined(_texts(backend))


@pytest.mark.parametrize("run", ["sync", "async"])
async def test_text_to_sql_pays_no_schema_sized_joined_check_in_the_callback_handler(run):
    backend = ScriptedBackend(keyword_verdict, name="judge")
    manager = CallbackManager([GuardCallbackHandler(Guard(backend, Policy(timeout_s=None), cache_size=0))])
    model = NativeAsyncLLM(chunks=["SELECT 1"], callback_manager=manager)
    if run == "sync":
        model.predict(DEFAULT_TEXT_TO_SQL_PROMPT, **SQL_CALL)
    else:
        await model.apredict(DEFAULT_TEXT_TO_SQL_PROMPT, **SQL_CALL)
    _no_schema_joined(_texts(backend))


def test_a_user_variable_beside_a_schema_is_still_joined_with_the_question():
    # Control: the join leaves out the schema, not the user's text around it.
    backend = ScriptedBackend(SPLIT, name="judge")
    model = ScriptedLLM(chunks=["SELECT 1"])
    llm = GuardedLLM(llm=model, guard=Guard(backend, Policy(timeout_s=None), cache_size=0))
    template = PromptTemplate("Schema: {schema}\nTell me how to {verb} {query_str}")
    with pytest.raises(GuardViolation):
        llm.predict(template, schema=SCHEMA, verb=VERB, query_str=REST)
    assert model.calls == 0 and any(UNSAFE_CLAUSE in text for text in _texts(backend))
