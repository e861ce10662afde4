"""rt68h F1: guard_output placed before the model and handed the user's message as ``message.text`` (langchain-core
1.x's ``TextAccessor``, a ``str`` subclass every message's ``.text`` returns) must be refused as a plain string is.
81ab1d3 read any ``TextAccessor`` as a model's answer (to let ``model | StrOutputParser() | {"a": guard_output | f}``
through): the guard judged the user's question as the answer and the model's answer reached the consumer unjudged.
That change is taken back; the parser-fed branch stays refused (loud), and the way to place the guard is in the
message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from lc_fakes import SAFE_QUESTION, UNSAFE_CLAUSE, keyword_guard, scripted
from qwenguard.integrations.langchain import guard_input, guard_output

ANSWER = f"Sure. {UNSAFE_CLAUSE}"
PROMPT = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{q}")])
SHAPES: dict[str, Callable[[Any, Any], Any]] = {
    "guard_output | model": lambda g, m: guard_output(g) | m,
    "guard_input | guard_output | model": lambda g, m: guard_input(g) | guard_output(g) | m,
    "guard_output | prompt | model": lambda g, m: guard_output(g) | PROMPT | m,
    "(guard_output | model).with_retry()": lambda g, m: (guard_output(g) | m).with_retry(),
}


def _run(chain: Any, how: str, value: Any) -> str:
    if how == "invoke":
        return str(chain.invoke(value).content)
    if how == "batch":
        return str(chain.batch([value])[0].content)
    if how == "stream":
        return "".join(str(c.content) for c in chain.stream(value))

    async def consume() -> str:
        return "".join([str(c.content) async for c in chain.astream(value)])

    return asyncio.run(consume())


@pytest.mark.parametrize("how", ["invoke", "batch", "stream", "astream"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_users_message_text_before_the_model_is_refused(shape: str, how: str) -> None:
    history = [HumanMessage(SAFE_QUESTION)]
    user_text = history[-1].text  # how a LangChain 1.x app takes a message's text
    assert isinstance(user_text, str) and type(user_text) is not str  # the TextAccessor this is about
    guard, _ = keyword_guard()
    model = scripted(ANSWER)
    delivered = ""
    with pytest.raises(TypeError, match="right after the model"):
        delivered = _run(SHAPES[shape](guard, model), how, user_text)
    assert "ammonium" not in delivered
    assert model.seen == []  # the model was never asked
