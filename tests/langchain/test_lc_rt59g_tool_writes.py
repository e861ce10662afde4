"""What a LangChain tool writes to the graph besides its message text (red team rt59c F1-F4).

- F1: a ``response_format="content_and_artifact"`` tool's artifact that is a dataclass, a pydantic model, a slotted
  object or bytes: the artifact reader walked only strings, mappings, lists and documents.
- F2: a tool's ``Command(update={...})`` writing to a state key other than ``messages`` (a custom key,
  ``structured_response``; a sub-agent's ``Command.PARENT`` handoff too): only the update's messages were judged.
- F3: the ``name`` (and an id that is words) of a message a tool writes: only its content and artifact were judged.
- F4: a tool's ``Command(goto=Send(node, payload))``: the payload went to the ``"tasks"``/``"debug"`` streams and
  the checkpointer unjudged.

Each test is the attack on a real `create_agent` agent with an `InMemorySaver`, guarded by `GuardMiddleware` or
`GuardCallbackHandler` (sync and async), counted in characters: no item of the ``"updates"``, ``"values"``,
``"tasks"``, ``"debug"`` or ``"checkpoints"`` streams, nor the thread's state, nor any checkpoint carries the unsafe
word. The keyword judge flags "ammonium"; scripted chat models.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations (InjectedToolCallId).

import dataclasses
from typing import Annotated, Any, ClassVar, NotRequired

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import AgentState, create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, Send
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, scripted, tool_call
from lc_streams import streamed
from pydantic import BaseModel, computed_field
from qwenguard.core import Guard, GuardViolation, InputTooLarge
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware
from qwenguard.integrations.langchain._messages import artifact_text

WORD = "ammonium"
PAGE = f"Page says: {UNSAFE_CLAUSE}"
SAFE_PAGE = "Page says: Paris has about two million inhabitants."
MODES = ["sync", "async"]
STREAM_MODES = ["updates", "values", "tasks", "debug", "checkpoints"]
INPUTS = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
NOTICE = "withheld by the safety guard"


class State(AgentState):
    notes: NotRequired[Any]


@dataclasses.dataclass
class Hit:
    source: str
    text: str


@dataclasses.dataclass(slots=True)
class SlottedHit:
    text: str


class Hits(BaseModel):
    text: str


class Summary(BaseModel):
    parts: list[str]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def joined(self) -> str:
        return " ".join(self.parts)


class Plain:
    """An object with attributes, no dataclass."""

    def __init__(self, text: str) -> None:
        self.text = text


@pytest.fixture
def kw() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0)


def guarded(guard: Guard, tools: list[Any], piece: str, mode: str, exit_behavior: str = "end") -> tuple[Any, Any]:
    """An agent whose model calls ``tools[0]`` once (``fetch_page``), guarded by ``piece``; and its run's config."""
    middleware = [GuardMiddleware(guard, exit_behavior=exit_behavior)] if piece == "middleware" else []
    model = scripted(tool_call(tools[0].name, {"url": "http://x"}, "c1"), SAFE_ANSWER, SAFE_ANSWER)
    agent = create_agent(model, tools, state_schema=State, middleware=middleware, checkpointer=InMemorySaver())
    config: dict[str, Any] = {"configurable": {"thread_id": "t"}}
    if piece == "callback":
        config["callbacks"] = [(GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard)]
    return agent, config


def run(agent: Any, config: Any, mode: str) -> tuple[list[str], Exception | None]:
    """Every item of every stream mode, as text, and the guard's stop the run ended with."""
    return streamed(agent, INPUTS, config, mode, STREAM_MODES)


def leaks(agent: Any, config: Any, seen: list[str]) -> list[str]:
    """Where the unsafe word went: stream items (by mode), the thread's state, the checkpointer."""
    found = [item[:120] for item in seen if WORD in item.lower()]
    thread = {"configurable": {"thread_id": "t"}}
    if WORD in repr(agent.get_state(thread).values).lower():
        found.append("state")
    if WORD in repr(list(agent.checkpointer.list(thread))).lower():
        found.append("checkpointer")
    return found


def stopped_or_withheld(piece: str, exit_behavior: str, seen: list[str], error: Exception | None) -> bool:
    if piece == "callback" or exit_behavior == "error":
        return isinstance(error, GuardViolation)
    return error is None and any(NOTICE in item for item in seen)


PIECES = [("middleware", "end"), ("middleware", "replace"), ("middleware", "error"), ("callback", None)]


# -- F1: an artifact that is an object or bytes -------------------------------------------------------------------
ARTIFACTS = {
    "dataclass": lambda text: [Hit("forum", text)],
    "slotted dataclass": lambda text: [SlottedHit(text)],
    "pydantic model": lambda text: Hits(text=text),
    "pydantic computed field": lambda text: Summary(parts=text.split(" ")),
    "attributes": lambda text: {"hits": [Plain(text)]},
    "bytes": lambda text: text.encode("utf-8"),
    "utf-16 bytes": lambda text: text.encode("utf-16"),
}


def artifact_tool(artifact: Any) -> Any:
    @tool(response_format="content_and_artifact")
    def fetch_page(url: str) -> Any:
        """Fetch a web page."""
        return "Found 1 document.", artifact

    return fetch_page


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("piece", "exit_behavior"), PIECES)
@pytest.mark.parametrize("shape", list(ARTIFACTS))
def test_an_unsafe_artifact_object_never_reaches_streams_state_or_checkpoints(kw, mode, piece, exit_behavior, shape):
    agent, config = guarded(kw, [artifact_tool(ARTIFACTS[shape](PAGE))], piece, mode, exit_behavior or "end")
    seen, error = run(agent, config, mode)
    assert leaks(agent, config, seen) == []
    assert stopped_or_withheld(piece, exit_behavior, seen, error)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", ["middleware", "callback"])
def test_a_safe_artifact_object_is_kept(kw, mode, piece):
    agent, config = guarded(kw, [artifact_tool([Hit("forum", SAFE_PAGE)])], piece, mode)
    seen, error = run(agent, config, mode)
    assert error is None
    tool_message = next(m for m in agent.get_state(config).values["messages"] if isinstance(m, ToolMessage))
    assert SAFE_PAGE in repr(tool_message.artifact)  # (the checkpointer gives the dataclass back as a dict)


def test_media_bytes_in_an_artifact_are_no_text_and_text_past_the_limit_is_refused():
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    assert artifact_text({"image": png}, 1000) == "image"
    # Items that are no text cost the walk a visit each: a sentence after a few of them is read, and a walk cut short
    # (many of them, then a sentence) is refused, never judged as its start.
    assert PAGE in artifact_text([*([0] * 2000), Hit("forum", PAGE)], 1000)
    with pytest.raises(InputTooLarge):
        artifact_text([*([0] * 100_000), Hit("forum", PAGE)], 1000)


# -- F2: a Command writing to other state keys ----------------------------------------------------------------------
def command_tool(extra: Any, as_pairs: bool = False) -> Any:
    @tool
    def fetch_page(url: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Any:
        """Fetch a web page."""
        update = {"messages": [ToolMessage("Fetched.", tool_call_id=tool_call_id)], **extra}
        return Command(update=list(update.items()) if as_pairs else update)

    return fetch_page


WRITES = {
    "custom key": ({"notes": PAGE}, False),
    "custom key as pairs": ({"notes": {"page": [PAGE]}}, True),
    "structured_response": ({"structured_response": {"page": PAGE}}, False),
    "custom key holding an object": ({"notes": Hits(text=PAGE)}, False),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("piece", "exit_behavior"), PIECES)
@pytest.mark.parametrize("write", list(WRITES))
def test_a_commands_unsafe_write_to_another_state_key_is_withheld(kw, mode, piece, exit_behavior, write):
    extra, as_pairs = WRITES[write]
    agent, config = guarded(kw, [command_tool(extra, as_pairs)], piece, mode, exit_behavior or "end")
    seen, error = run(agent, config, mode)
    assert leaks(agent, config, seen) == []
    assert stopped_or_withheld(piece, exit_behavior, seen, error)


class DefaultUpdate:
    """A state update object whose ``notes`` is a class-level default: LangGraph writes every annotated key, read
    with ``getattr``; the instance holds only its messages (rt59f F1)."""

    notes: str = PAGE
    messages: list

    def __init__(self, messages: list) -> None:
        self.messages = messages


class PropertyUpdate:
    """``notes`` a property built from a class template and an instance word (neither holds the clause)."""

    notes: str
    messages: list
    _template = PAGE.replace(WORD, "{0}")

    def __init__(self, messages: list) -> None:
        self.messages = messages
        self._word = WORD

    @property  # type: ignore[no-redef]
    def notes(self) -> str:
        return self._template.format(self._word)


class ModelUpdate(BaseModel):
    notes: ClassVar[str] = PAGE
    messages: list


@dataclasses.dataclass
class DataUpdate:
    messages: list
    notes: ClassVar[str] = PAGE


OBJECT_UPDATES = {
    "class default": DefaultUpdate,
    "property": PropertyUpdate,
    "pydantic ClassVar": lambda messages: ModelUpdate(messages=messages),
    "dataclass ClassVar": DataUpdate,
}


def object_update_tool(make: Any) -> Any:
    @tool
    def fetch_page(url: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Any:
        """Fetch a web page."""
        return Command(update=make([ToolMessage("Fetched.", tool_call_id=tool_call_id)]))

    return fetch_page


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("piece", "exit_behavior"), PIECES)
@pytest.mark.parametrize("shape", list(OBJECT_UPDATES))
def test_an_update_objects_class_level_write_is_judged_as_langgraph_reads_it(kw, mode, piece, exit_behavior, shape):
    agent, config = guarded(kw, [object_update_tool(OBJECT_UPDATES[shape])], piece, mode, exit_behavior or "end")
    seen, error = run(agent, config, mode)
    assert leaks(agent, config, seen) == []
    assert stopped_or_withheld(piece, exit_behavior, seen, error)


@pytest.mark.parametrize("mode", MODES)
def test_a_withheld_command_leaves_the_call_its_notice_and_replace_goes_on(kw, mode):
    agent, config = guarded(kw, [command_tool({"notes": PAGE})], "middleware", mode, "replace")
    seen, error = run(agent, config, mode)
    assert error is None
    state = agent.get_state(config).values
    assert "notes" not in state
    tool_message = next(m for m in state["messages"] if isinstance(m, ToolMessage))
    assert tool_message.tool_call_id == "c1" and NOTICE in tool_message.text and tool_message.status == "error"
    assert state["messages"][-1].text == SAFE_ANSWER  # the agent went on to its answer


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", ["middleware", "callback"])
def test_a_commands_safe_write_to_another_state_key_is_kept(kw, mode, piece):
    agent, config = guarded(kw, [command_tool({"notes": SAFE_PAGE})], piece, mode)
    _, error = run(agent, config, mode)
    assert error is None
    assert agent.get_state(config).values["notes"] == SAFE_PAGE


# A sub-agent run inside the tool hands back to the parent with Command.PARENT: raised out of the tool.
def handoff_tools(notes: str) -> list[Any]:
    @tool
    def finish(report: str) -> Command:
        """Hand the report back to the main agent."""
        update = {"messages": [ToolMessage("Report ready.", tool_call_id="c1")], "notes": notes}
        return Command(graph=Command.PARENT, update=update)

    inner = create_agent(scripted(tool_call("finish", {"report": "r"}, "i1"), "x"), [finish], state_schema=State)

    @tool
    def research(url: str) -> str:
        """Delegate the research to the sub-agent."""
        return inner.invoke({"messages": [{"role": "user", "content": url}]})["messages"][-1].text

    return [research]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("piece", "exit_behavior"), PIECES)
def test_a_parent_handoffs_unsafe_write_to_another_state_key_is_withheld(kw, mode, piece, exit_behavior):
    agent, config = guarded(kw, handoff_tools(PAGE), piece, mode, exit_behavior or "end")
    seen, error = run(agent, config, mode)
    assert leaks(agent, config, seen) == []
    assert stopped_or_withheld(piece, exit_behavior, seen, error)


@pytest.mark.parametrize("mode", MODES)
def test_a_parent_handoffs_safe_write_reaches_the_parent(kw, mode):
    agent, config = guarded(kw, handoff_tools(SAFE_PAGE), "middleware", mode, "replace")
    _, error = run(agent, config, mode)
    assert error is None
    assert agent.get_state(config).values["notes"] == SAFE_PAGE


# -- F3: the name and id of a message a tool writes ------------------------------------------------------------------
def labelled_tool(where: str) -> Any:
    @tool
    def fetch_page(url: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Any:
        """Fetch a web page."""
        if where == "tool message name":
            return ToolMessage("Fetched.", tool_call_id=tool_call_id, name=PAGE)
        if where == "tool message id":
            return ToolMessage("Fetched.", tool_call_id=tool_call_id, id=PAGE)
        handoff = AIMessage("Over to you.", name=PAGE)
        return Command(update={"messages": [ToolMessage("ok", tool_call_id=tool_call_id), handoff]})

    return fetch_page


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("piece", "exit_behavior"), PIECES)
@pytest.mark.parametrize("where", ["tool message name", "tool message id", "handoff turn name"])
def test_an_unsafe_name_or_id_of_a_message_a_tool_writes_is_withheld(kw, mode, piece, exit_behavior, where):
    agent, config = guarded(kw, [labelled_tool(where)], piece, mode, exit_behavior or "end")
    seen, error = run(agent, config, mode)
    assert leaks(agent, config, seen) == []
    assert stopped_or_withheld(piece, exit_behavior, seen, error)


@pytest.mark.parametrize("mode", MODES)
def test_the_tools_own_name_on_its_message_is_not_judged_as_words(mode):
    backend = ScriptedBackend(keyword_verdict, name="kw")

    @tool
    def fetch_page(url: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Any:
        """Fetch a web page."""
        return ToolMessage("Fetched.", tool_call_id=tool_call_id, name="fetch_page")

    agent, config = guarded(Guard(backend, cache_size=0), [fetch_page], "middleware", mode)
    _, error = run(agent, config, mode)
    assert error is None
    judged = [str(conversation[-1]["content"]) for batch in backend.calls for conversation in batch]
    assert "Fetched." in "\n".join(judged)
    assert not any("Fetched." in text and "fetch_page" in text for text in judged)


# -- F4: a Send's payload ----------------------------------------------------------------------------------------------
def send_tool(many: bool) -> Any:
    @tool
    def fetch_page(url: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Any:
        """Fetch a web page."""
        sends = [Send("model", {"messages": [HumanMessage(text)]}) for text in ([SAFE_PAGE, PAGE] if many else [PAGE])]
        return Command(
            update={"messages": [ToolMessage("ok", tool_call_id=tool_call_id)]}, goto=sends if many else sends[0]
        )

    return fetch_page


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("piece", "exit_behavior"), PIECES)
@pytest.mark.parametrize("many", [False, True], ids=["one send", "list of sends"])
def test_an_unsafe_send_payload_from_a_tool_is_never_scheduled(kw, mode, piece, exit_behavior, many):
    agent, config = guarded(kw, [send_tool(many)], piece, mode, exit_behavior or "end")
    seen, error = run(agent, config, mode)
    assert leaks(agent, config, seen) == []
    assert stopped_or_withheld(piece, exit_behavior, seen, error)


# -- the async paths read an artifact of objects off the loop --------------------------------------------------------
class Row:
    """A search hit as a slotted object: what `_screening.built_off_loop` cannot size (one item each)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


async def test_an_artifact_of_objects_is_read_off_the_loop_by_the_callback_handler():
    # (GuardMiddleware reads it off the loop too, `_read_off_loop`; but its hooks size the agent's state on the loop
    # first, `_screening._size`, about 2 us an object: that, not this reading, is what a probe of it measures.)
    from loop_lag import compare, in_thread
    from test_lc_rt55b_loop_stalls import _guard

    # 15,000 objects (under the size past which a result is read off the loop, counted one each), built once off the
    # clock: reading each by its slots is the guard's work, and LangChain reads none of it.
    rows = [Row(f"Row {i}: Paris has about two million inhabitants.") for i in range(15_000)]

    @tool(response_format="content_and_artifact")
    def search(query: str) -> tuple[str, list[Row]]:
        """Search the web."""
        return "Found 15,000 rows.", rows

    def agent() -> Any:
        return create_agent(scripted(tool_call("search", {"query": "Paris"}), "Done."), tools=[search])

    async def run(guarded: bool) -> None:
        config = {"callbacks": [AsyncGuardCallbackHandler(_guard())] if guarded else []}
        result = await agent().ainvoke({"messages": [HumanMessage("Search for Paris.")]}, config)
        assert result["messages"][2].artifact is rows and result["messages"][-1].content == "Done."

    def sync_run() -> None:
        config = {"callbacks": [GuardCallbackHandler(_guard())]}
        agent().invoke({"messages": [HumanMessage("Search for Paris.")]}, config)

    failure = await compare(lambda: run(True), lambda: run(False), in_thread(sync_run))
    assert failure is None, failure


async def test_a_model_call_after_an_artifact_of_objects_sizes_its_history_once_on_the_loop(monkeypatch):
    # CI (stop 63): the test above failed three rounds running, 27-29 ms against baselines of 4-7: the async handler's
    # model start sized the whole history on the loop twice, once for the question it compares retries by (which
    # reads only the last user turn) and once for its reading. What one hook walks on the loop to decide where to
    # read stays within the budget the off-loop rule allows (`OFF_LOOP_SIZE`), counted item by item.
    from qwenguard.integrations import _off_loop

    rows = [Row(f"Row {i}: Paris has about two million inhabitants.") for i in range(15_000)]
    walked: list[int] = []
    sized = _off_loop.size

    def counting(value: Any, budget: int) -> int:
        walked.append(sized(value, budget))
        return walked[-1]

    @tool(response_format="content_and_artifact")
    def search(query: str) -> tuple[str, list[Row]]:
        """Search the web."""
        return "Found 15,000 rows.", rows

    handler = AsyncGuardCallbackHandler(Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0))
    starts: list[int] = []
    on_start = handler.on_chat_model_start

    async def start(*args: Any, **kwargs: Any) -> None:
        before = len(walked)
        await on_start(*args, **kwargs)
        starts.append(sum(walked[before:]))

    monkeypatch.setattr(_off_loop, "size", counting)
    monkeypatch.setattr(handler, "on_chat_model_start", start)
    agent = create_agent(scripted(tool_call("search", {"query": "Paris"}), "Done."), tools=[search])
    result = await agent.ainvoke({"messages": [HumanMessage("Search for Paris.")]}, {"callbacks": [handler]})
    assert result["messages"][-1].content == "Done." and len(starts) == 2
    assert starts[1] <= _off_loop.OFF_LOOP_SIZE + 100, starts
