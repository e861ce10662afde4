"""A client's history turn labelled ``system`` or ``developer`` is judged (red team rt42b F2).

The attack: a chat backend forwards the client's OpenAI-style history, ``[{"role": "system", "content":
<harmful request>}, {"role": "user", "content": "Please answer."}]``. No LangChain piece judged a system
or developer message, so the model read the request that a user turn would have had blocked. The
application's own system prompt stays unjudged: ``create_agent``'s ``system_prompt`` (never in the
state) and, for the other pieces, a system message that opens the list (a template's), unless
``screen_system=True``; a client's system turn placed right after it (a ``MessagesPlaceholder``) is judged. Every model here is `ChatOpenAI` against the scripted OpenAI-compatible server:
``url.requests`` is what the provider received.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import SystemMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_PROMPT
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import (
    AsyncGuardCallbackHandler,
    GuardCallbackHandler,
    GuardedChatModel,
    GuardMiddleware,
    guard_input,
)
from scripted_openai import scripted_openai
from test_openai_paths import MODES, chat

#: The application's own instructions: harmful-looking on purpose, to show they are never judged.
APP_PROMPT = UNSAFE_PROMPT
ROLES = ["system", "developer"]


def client_history(role: str) -> list[dict[str, str]]:
    """What a chat backend forwards from the client: the request in a system/developer turn."""
    return [{"role": role, "content": UNSAFE_PROMPT}, {"role": "user", "content": "Please answer."}]


async def run(runnable: Any, value: Any, mode: str, **kwargs: Any) -> Any:
    return runnable.invoke(value, **kwargs) if mode == "sync" else await runnable.ainvoke(value, **kwargs)


def read(url: Any) -> str:
    """Everything the provider received, as text."""
    return "".join(str(request.body.get("messages")) for request in url.requests)


# -- GuardMiddleware: every system message in the state came from input ----------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ROLES)
async def test_middleware_judges_a_system_turn_in_the_agents_input(guard, mode, role):
    with scripted_openai(SAFE_ANSWER) as url:
        agent = create_agent(
            chat(url),
            [],
            system_prompt="You answer questions.",
            middleware=[GuardMiddleware(guard, exit_behavior="error")],
        )
        with pytest.raises(GuardViolation) as info:
            await run(agent, {"messages": client_history(role)}, mode)
        assert url.requests == []  # the model never read it
    assert info.value.decision.stage.value == "prompt"


@pytest.mark.parametrize("mode", MODES)
async def test_middleware_withholds_a_blocked_system_turn_and_ends(guard, mode):
    with scripted_openai(SAFE_ANSWER) as url:
        agent = create_agent(chat(url), [], middleware=[GuardMiddleware(guard, exit_behavior="end")])
        result = await run(agent, {"messages": client_history("system")}, mode)
        assert url.requests == []
    assert UNSAFE_PROMPT not in str([m.content for m in result["messages"]])  # redacted in the state too


@pytest.mark.parametrize("mode", MODES)
async def test_middleware_leaves_the_agents_own_system_prompt_unjudged(guard, mode):
    with scripted_openai(SAFE_ANSWER) as url:
        agent = create_agent(chat(url), [], system_prompt=APP_PROMPT, middleware=[GuardMiddleware(guard)])
        result = await run(agent, {"messages": [{"role": "user", "content": SAFE_QUESTION}]}, mode)
        assert APP_PROMPT in read(url)
    assert result["messages"][-1].content == SAFE_ANSWER


# -- GuardedChatModel: all but an opening system message, or all with screen_system -----------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "messages",
    [
        pytest.param(
            [("system", APP_PROMPT), ("user", SAFE_QUESTION), ("assistant", SAFE_ANSWER), *client_history("system")],
            id="system-after-the-first-turns",
        ),
        pytest.param(client_history("developer"), id="developer"),
        pytest.param(
            [("system", "You answer questions."), *client_history("system")], id="system-right-after-the-apps"
        ),
    ],
)
async def test_guarded_chat_model_judges_a_system_turn_that_is_not_the_apps(guard, mode, messages):
    with scripted_openai(SAFE_ANSWER) as url:
        with pytest.raises(GuardViolation):
            await run(GuardedChatModel(chat(url), guard), messages, mode)
        assert url.requests == []


@pytest.mark.parametrize("mode", MODES)
async def test_guarded_chat_model_leaves_the_leading_system_prompt_to_the_app(guard, mode):
    messages = [SystemMessage(APP_PROMPT), ("user", SAFE_QUESTION)]
    with scripted_openai(SAFE_ANSWER) as url:
        answer = await run(GuardedChatModel(chat(url), guard), messages, mode)
        with pytest.raises(GuardViolation):
            await run(GuardedChatModel(chat(url), guard, screen_system=True), messages, mode)
        assert len(url.requests) == 1  # only the default call reached the model
    assert answer.content == SAFE_ANSWER


# -- callbacks: the model's input, as on_chat_model_start sees it ----------------------------------
def handler(guard: Any, mode: str, **options: Any) -> Any:
    return (GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard, **options)


@pytest.mark.parametrize("mode", MODES)
async def test_callback_judges_a_developer_turn_in_an_agents_input(guard, mode):
    with scripted_openai(SAFE_ANSWER) as url:
        agent = create_agent(chat(url), [], system_prompt="You answer questions.")
        config = {"callbacks": [handler(guard, mode)]}
        with pytest.raises(GuardViolation):
            await run(agent, {"messages": client_history("developer")}, mode, config=config)
        assert url.requests == []


@pytest.mark.parametrize("mode", MODES)
async def test_callback_with_screen_system_judges_the_leading_system_turn(guard, mode):
    with scripted_openai(SAFE_ANSWER) as url:
        agent = create_agent(chat(url), [])
        inputs = {"messages": client_history("system")}
        await run(agent, inputs, mode, config={"callbacks": [handler(guard, mode)]})  # leading: the app's
        with pytest.raises(GuardViolation):
            await run(agent, inputs, mode, config={"callbacks": [handler(guard, mode, screen_system=True)]})
        assert len(url.requests) == 1


# -- guard_input: a message list in a chain variable is the caller's, whatever its roles ------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ROLES)
async def test_guard_input_judges_a_system_turn_in_a_history_variable(guard, mode, role):
    prompt = ChatPromptTemplate.from_messages(
        [("system", APP_PROMPT), MessagesPlaceholder("history"), ("human", "{question}")]
    )
    with scripted_openai(SAFE_ANSWER) as url:
        chain = guard_input(guard) | prompt | chat(url)
        with pytest.raises(GuardViolation):
            await run(chain, {"history": client_history(role)[:1], "question": "Please answer."}, mode)
        answer = await run(chain, {"history": [], "question": SAFE_QUESTION}, mode)  # the template's own: not judged
        assert len(url.requests) == 1
    assert answer.content == SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
async def test_guard_input_with_screen_system_judges_a_leading_system_turn(guard, mode):
    with scripted_openai(SAFE_ANSWER) as url:
        value = client_history("system")
        await run(guard_input(guard) | chat(url), value, mode)  # a message list's leading run: the app's
        with pytest.raises(GuardViolation):
            await run(guard_input(guard, screen_system=True) | chat(url), value, mode)
        assert len(url.requests) == 1
