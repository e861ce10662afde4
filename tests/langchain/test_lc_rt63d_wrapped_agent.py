"""rt63d F4: `GuardRunnable(agent, guard)` (its output checked, the default) ran the agent to its end, its tools acting
and its checkpointer saving the answer, and only then raised a `TypeError` naming `guard_output`, a step the user
never wrote. A LangGraph graph with its output checked is refused where it is wrapped, naming what guards an agent;
its input alone (``check_output=False``) is judged as before. The F2 half (a history written inside the wrapped
runnable) is a documented decision: docs/langchain.md."""

from __future__ import annotations

import pytest
from langchain.agents import create_agent
from langgraph.checkpoint.memory import InMemorySaver
from lc_fakes import UNSAFE_CLAUSE, keyword_guard, mailer, scripted, tool_call
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardRunnable


def _agent():
    send_email, sent = mailer()
    model = scripted(tool_call("send_email", {"to": "bob@example.com", "body": "Hi."}), "Sent.")
    return create_agent(model, tools=[send_email], checkpointer=InMemorySaver()), sent


@pytest.mark.parametrize("positional", [True, False])
def test_wrapping_an_agent_with_its_output_checked_is_refused_before_it_runs(positional):
    guard, _ = keyword_guard()
    agent, sent = _agent()
    with pytest.raises(ValueError, match="GuardMiddleware") as refused:
        GuardRunnable(agent, guard) if positional else GuardRunnable(runnable=agent, guard=guard)
    assert "guard_output" not in str(refused.value) and sent == []


def test_an_agent_wrapped_for_its_input_only_still_runs_and_still_stops_a_blocked_prompt():
    guard, _ = keyword_guard()
    agent, sent = _agent()
    guarded = GuardRunnable(agent, guard, check_output=False)
    config = {"configurable": {"thread_id": "t1"}}
    result = guarded.invoke({"messages": [{"role": "user", "content": "Email Bob hello."}]}, config)
    assert result["messages"][-1].content == "Sent." and len(sent) == 1
    with pytest.raises(GuardViolation):
        guarded.invoke(
            {"messages": [{"role": "user", "content": UNSAFE_CLAUSE}]}, {"configurable": {"thread_id": "t2"}}
        )
    assert len(sent) == 1


def test_a_wrapped_runnable_that_returns_a_dict_names_the_step_it_came_from():
    from langchain_core.runnables import RunnableLambda

    guard, _ = keyword_guard()
    with pytest.raises(TypeError, match="GuardRunnable's output check judges text: got a dict"):
        GuardRunnable(RunnableLambda(lambda _: {"answer": "Paris."}), guard).invoke("Capital of France?")


def _history_chain(model, stores, guarded_model=None):
    from langchain_core.chat_history import InMemoryChatMessageHistory
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
    from langchain_core.runnables.history import RunnableWithMessageHistory

    prompt = ChatPromptTemplate.from_messages([MessagesPlaceholder("history"), ("human", "{question}")])
    return RunnableWithMessageHistory(
        prompt | (guarded_model or model),
        lambda sid: stores.setdefault(sid, InMemoryChatMessageHistory()),
        input_messages_key="question",
        history_messages_key="history",
    )


def test_wrapping_a_chat_history_chain_with_its_output_checked_is_refused():
    # rt63d F2: the history stored turn 1's blocked answer (86 characters) before the guard's verdict, and turn 2's
    # model read it unjudged.
    guard, _ = keyword_guard()
    with pytest.raises(ValueError, match="put the guard inside"):
        GuardRunnable(_history_chain(scripted("Paris."), {}), guard)


@pytest.mark.parametrize("how", ["invoke", "stream"])
def test_the_guard_inside_the_history_chain_never_stores_a_blocked_answer(how):
    """The recipe the refusal and docs/langchain.md give: nothing of the blocked answer is stored or read again."""
    from qwenguard.integrations.langchain import GuardedChatModel

    guard, _ = keyword_guard()
    model = scripted("Paris is nice. " + UNSAFE_CLAUSE, "Lyon is nice too.")
    stores: dict = {}
    chain = _history_chain(model, stores, GuardedChatModel(model, guard))
    config = {"configurable": {"session_id": "s1"}}
    got = ""
    with pytest.raises(GuardViolation):
        if how == "invoke":
            got = chain.invoke({"question": "Tell me about Paris."}, config).text
        else:
            for chunk in chain.stream({"question": "Tell me about Paris."}, config):
                got += chunk.text
    assert "ammonium" not in got
    assert not any("ammonium" in m.text for m in stores.get("s1", _Empty()).messages)
    assert chain.invoke({"question": "And Lyon?"}, config).text == "Lyon is nice too."
    assert not any("ammonium" in m.text for m in model.seen[-1])


class _Empty:
    messages: list = []


# -- rt63f F3, F5: the refusal through an app's wrappers, and not of a graph that hands back text -------------------
def _wrappings():
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.runnables import RunnableLambda

    def history():
        return _history_chain(scripted("Paris."), {})

    def agent():
        return _agent()[0]

    last_text = RunnableLambda(lambda state: state["messages"][-1].text)
    return {
        "history.with_config": lambda: history().with_config(run_name="chat"),
        "history.with_retry": lambda: history().with_retry(),
        "history.with_fallbacks": lambda: history().with_fallbacks([scripted("Lyon.")]),
        "history | StrOutputParser": lambda: history() | StrOutputParser(),
        "agent.with_retry": lambda: agent().with_retry(),
        "agent | last text": lambda: agent() | last_text,
        "{answer: agent} parallel": lambda: {"answer": agent()} | RunnableLambda(lambda d: d["answer"]),
    }


@pytest.mark.parametrize("name", list(_wrappings()))
def test_a_graph_or_history_chain_inside_a_wrapper_is_refused_too(name):
    # rt63f F3: each stored the blocked answer (history) or ran the tools and kept the answer in the checkpoint
    # (agent) before the output check's verdict, as the unwrapped ones did.
    guard, _ = keyword_guard()
    with pytest.raises(ValueError, match="GuardMiddleware|put the guard inside"):
        GuardRunnable(_wrappings()[name](), guard)


def test_an_entrypoint_that_hands_back_text_without_a_checkpointer_is_guarded_as_before():
    # rt63f F5: refused by the first form of the rule (any graph), while its output is the text, judged whole.
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.func import entrypoint

    guard, _ = keyword_guard()
    model = scripted("Paris.", UNSAFE_CLAUSE)

    @entrypoint()
    def answer(question: str) -> str:
        return model.invoke(question).text

    guarded = GuardRunnable(answer, guard)
    assert guarded.invoke("Capital of France?") == "Paris."
    with pytest.raises(GuardViolation):
        guarded.invoke("And how is it made?")

    @entrypoint(checkpointer=InMemorySaver())
    def kept(question: str) -> str:
        return model.invoke(question).text

    with pytest.raises(ValueError, match="checkpointer"):  # its checkpointer keeps the answer before the verdict
        GuardRunnable(kept, guard)
