"""rt63f F2: the LangChain integrations told a message's role by its ``type`` string, and the chunk classes name
themselves ("ChatMessageChunk", "SystemMessageChunk", "FunctionMessageChunk") while provider classes send them as the
class they extend (langchain-openai converts by ``isinstance``): a `ChatMessageChunk(role="user")` holding the clause,
or one rebuilt by `messages_from_dict` from a stored history, or a `FunctionMessageChunk` tool output, reached the
model through `guard_input`, `GuardedChatModel` and `GuardCallbackHandler` unjudged. The keyword judge flags
"ammonium" (`lc_fakes.keyword_guard`); the model is a scripted chat model recording what it read."""

from __future__ import annotations

import pytest
from langchain_core.messages import (
    AIMessage,
    ChatMessageChunk,
    FunctionMessageChunk,
    HumanMessage,
    SystemMessageChunk,
    messages_from_dict,
    messages_to_dict,
)
from lc_fakes import UNSAFE_CLAUSE, keyword_guard, scripted
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardCallbackHandler, GuardedChatModel, guard_input

CASES = {
    "ChatMessageChunk user": lambda: [ChatMessageChunk(role="user", content=UNSAFE_CLAUSE)],
    "stored ChatMessageChunk": lambda: messages_from_dict(
        messages_to_dict([ChatMessageChunk(role="user", content=UNSAFE_CLAUSE)])
    ),
    "FunctionMessageChunk tool output": lambda: [
        HumanMessage("Look it up."),
        AIMessage("", additional_kwargs={"function_call": {"name": "search", "arguments": "{}"}}),
        FunctionMessageChunk(name="search", content=UNSAFE_CLAUSE),
    ],
    "ChatMessageChunk user after an answer": lambda: [
        HumanMessage("Hello."),
        AIMessage("Hi! How can I help?"),
        ChatMessageChunk(role="user", content=UNSAFE_CLAUSE),
    ],
}


def _run(how: str, messages, guard, model) -> None:
    if how == "guard_input":
        (guard_input(guard) | model).invoke(messages)
    elif how == "GuardedChatModel":
        GuardedChatModel(model, guard).invoke(messages)
    else:
        model.invoke(messages, {"callbacks": [GuardCallbackHandler(guard)]})


@pytest.mark.parametrize("how", ["guard_input", "GuardedChatModel", "GuardCallbackHandler"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_chunk_class_message_is_judged_as_the_class_it_is_sent_as(case, how):
    guard, _ = keyword_guard()
    model = scripted("ok")
    with pytest.raises(GuardViolation):
        _run(how, CASES[case](), guard, model)
    assert not any("ammonium" in str(m.content) for read in model.seen for m in read)


def test_a_system_message_chunk_is_judged_with_screen_system():
    guard, backend = keyword_guard()
    model = scripted("ok")
    with pytest.raises(GuardViolation):
        (guard_input(guard, screen_system=True) | model).invoke(
            [SystemMessageChunk(content=UNSAFE_CLAUSE), HumanMessage("Hello.")]
        )
    assert model.seen == []
